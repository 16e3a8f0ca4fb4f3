#include "volume/thin/metadata_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ispace::volume::thin {

MemoryMetadataStore::MemoryMetadataStore(uint64_t pages, unsigned copies)
    : _pages(pages), _durable(std::max(copies, 1u)) {}

std::vector<uint8_t>* MemoryMetadataStore::durable_page(unsigned copy, uint64_t page) {
    auto& pages = _durable[copy];
    auto it = pages.find(page);
    if (it == pages.end()) {
        it = pages.emplace(page, std::vector<uint8_t>(page_size, 0)).first;
    }
    return &it->second;
}

Result<void> MemoryMetadataStore::read(uint64_t page, unsigned copy, std::span<uint8_t> out) {
    if (page >= _pages || copy >= _durable.size() || out.size() != page_size) {
        return make_error(fmt::format("metadata page {} copy {}: out of range", page, copy), EINVAL);
    }
    // The latest write wins, flushed or not (a reader sees its own writes).
    for (auto it = _pending.rbegin(); it != _pending.rend(); ++it) {
        if (it->page == page) {
            std::memcpy(out.data(), it->bytes.data(), page_size);
            return {};
        }
    }
    auto found = _durable[copy].find(page);
    if (found == _durable[copy].end()) {
        std::memset(out.data(), 0, page_size);
    } else {
        std::memcpy(out.data(), found->second.data(), page_size);
    }
    return {};
}

Result<void> MemoryMetadataStore::write(uint64_t page, std::span<const uint8_t> data) {
    if (page >= _pages || data.size() != page_size) {
        return make_error(fmt::format("metadata page {}: out of range", page), EINVAL);
    }
    if (_stop_after >= 0 && _writes >= _stop_after) {
        return make_error("metadata store stopped (simulated crash)", EIO);
    }
    ++_writes;
    _pending.push_back({page, std::vector<uint8_t>(data.begin(), data.end())});
    return {};
}

Result<void> MemoryMetadataStore::flush() {
    if (_stop_after >= 0 && _writes >= _stop_after && !_pending.empty()) {
        // Stopped: the flush never happens (its writes stay unflushed until crash() decides).
        return make_error("metadata store stopped (simulated crash)", EIO);
    }
    for (Pending& p : _pending) {
        for (unsigned c = 0; c < _durable.size(); ++c) {
            *durable_page(c, p.page) = p.bytes;
        }
    }
    _pending.clear();
    return {};
}

void MemoryMetadataStore::stop_after(long writes) {
    _stop_after = writes < 0 ? -1 : _writes + writes;
}

void MemoryMetadataStore::crash(CrashKeeps keeps) {
    for (size_t i = 0; i < _pending.size(); ++i) {
        bool keep = keeps == CrashKeeps::everything || (keeps == CrashKeeps::even && i % 2 == 0) ||
                    (keeps == CrashKeeps::torn_last);
        if (!keep) {
            continue;
        }
        for (unsigned c = 0; c < _durable.size(); ++c) {
            std::vector<uint8_t>& target = *durable_page(c, _pending[i].page);
            if (keeps == CrashKeeps::torn_last && i + 1 == _pending.size()) {
                std::copy_n(_pending[i].bytes.begin(), page_size / 2, target.begin());
            } else {
                target = _pending[i].bytes;
            }
        }
    }
    _pending.clear();
    _stop_after = -1;
}

void MemoryMetadataStore::corrupt(uint64_t page, unsigned copy, size_t offset) {
    (*durable_page(copy, page))[offset % page_size] ^= 0x5a;
}

} // namespace ispace::volume::thin
