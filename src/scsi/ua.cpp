#include "scsi/ua.hpp"

#include "scsi_spec/sense.hpp"

#include <algorithm>

namespace ispace::scsi {
namespace {

bool is_reset(uint16_t code) {
    return (code >> 8) == 0x29;
}

} // namespace

void UnitAttentions::add_nexus(uint64_t nexus) {
    _queues.try_emplace(nexus);
}

void UnitAttentions::remove_nexus(uint64_t nexus) {
    auto it = _queues.find(nexus);
    if (it != _queues.end()) {
        _pending -= it->second.size();
        _queues.erase(it);
    }
}

std::vector<uint64_t> UnitAttentions::nexuses() const {
    std::vector<uint64_t> ids;
    ids.reserve(_queues.size());
    for (const auto& [id, queue] : _queues) {
        ids.push_back(id);
    }
    return ids;
}

void UnitAttentions::establish(uint64_t nexus, uint16_t code) {
    auto it = _queues.find(nexus);
    if (it == _queues.end()) {
        return;
    }
    auto& q = it->second;
    if (std::find(q.begin(), q.end(), code) != q.end()) {
        return;
    }
    if (is_reset(code)) {
        size_t before = q.size();
        std::erase_if(
            q, [](uint16_t c) { return is_reset(c) || c == asc::commands_cleared_by_another_initiator; });
        _pending -= before - q.size();
        q.insert(q.begin(), code);
        ++_pending;
        return;
    }
    if (q.size() >= max_queued) {
        return;
    }
    q.push_back(code);
    ++_pending;
}

void UnitAttentions::establish_all(uint16_t code) {
    for (auto& [id, queue] : _queues) {
        establish(id, code);
    }
}

std::optional<uint16_t> UnitAttentions::take(uint64_t nexus) {
    auto it = _queues.find(nexus);
    if (it == _queues.end() || it->second.empty()) {
        return std::nullopt;
    }
    uint16_t code = it->second.front();
    it->second.erase(it->second.begin());
    --_pending;
    return code;
}

std::optional<uint16_t> UnitAttentions::peek(uint64_t nexus) const {
    auto it = _queues.find(nexus);
    if (it == _queues.end() || it->second.empty()) {
        return std::nullopt;
    }
    return it->second.front();
}

void UnitAttentions::clear(uint64_t nexus, uint16_t code) {
    auto it = _queues.find(nexus);
    if (it == _queues.end()) {
        return;
    }
    _pending -= std::erase(it->second, code);
}

} // namespace ispace::scsi
