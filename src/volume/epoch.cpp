#include "volume/epoch.hpp"

#include <ctime>

namespace ispace::volume {

LabelBook::LabelBook(Label truth, std::vector<Written> written)
    : _truth(std::move(truth)), _written(std::move(written)) {
    _written.resize(_truth.members.size());
}

void LabelBook::raise_epoch() {
    _truth.previous_generation = _truth.generation;
    _truth.generation = random_u64();
    ++_truth.epoch;
    ++_truth.sequence;
    _truth.updated = uint64_t(std::time(nullptr));
}

void LabelBook::bump_sequence() {
    ++_truth.sequence;
    _truth.updated = uint64_t(std::time(nullptr));
}

void LabelBook::member_out(uint32_t slot, MemberState state, bool raise) {
    MemberEntry& e = _truth.members[slot];
    if (e.state == MemberState::active || e.state == MemberState::rebuilding) {
        e.out_epoch = _truth.epoch + 1;
        e.last_epoch = _written[slot].epoch;
        e.last_generation = _written[slot].generation;
        e.last_previous_generation = _written[slot].previous;
    }
    // A member that was rebuilding keeps its mode: what it lacks is still what the bitmap (delta) or the
    // recovery offset (full) says.
    if (e.state != MemberState::rebuilding) {
        e.rebuild = RebuildMode::delta;
        e.recovery_offset = 0;
    }
    e.state = state;
    if (raise) {
        raise_epoch();
    }
}

void LabelBook::member_rejoins(uint32_t slot, RebuildMode mode, bool raise) {
    MemberEntry& e = _truth.members[slot];
    bool was_full = e.state != MemberState::active && e.rebuild == RebuildMode::full;
    e.state = MemberState::rebuilding;
    // A full rebuild interrupted stays full, from where it got to.
    e.rebuild = was_full ? RebuildMode::full : mode;
    if (!was_full) {
        e.recovery_offset = 0;
    }
    e.out_epoch = 0;
    if (raise) {
        raise_epoch();
    }
}

void LabelBook::member_in_sync(uint32_t slot) {
    MemberEntry& e = _truth.members[slot];
    e.state = MemberState::active;
    e.rebuild = RebuildMode::none;
    e.recovery_offset = 0;
    e.out_epoch = 0;
    e.last_epoch = 0;
    e.last_generation = 0;
    e.last_previous_generation = 0;
    raise_epoch();
}

void LabelBook::checkpoint(uint32_t slot, uint64_t recovery_offset) {
    _truth.members[slot].recovery_offset = recovery_offset;
    bump_sequence();
}

void LabelBook::replace_member(uint32_t slot, MemberEntry entry) {
    entry.state = MemberState::rebuilding;
    entry.rebuild = RebuildMode::full;
    entry.recovery_offset = 0;
    entry.out_epoch = 0;
    entry.last_epoch = 0;
    entry.last_generation = 0;
    entry.last_previous_generation = 0;
    _truth.members[slot] = std::move(entry);
    _truth.checksum_errors[slot] = 0; // a new device: the old one's errors are not its own
    _written[slot] = {};
    raise_epoch();
}

void LabelBook::add_member(MemberEntry entry) {
    entry.state = MemberState::active;
    entry.rebuild = RebuildMode::none;
    entry.recovery_offset = 0;
    entry.out_epoch = 0;
    entry.last_epoch = 0;
    entry.last_generation = 0;
    entry.last_previous_generation = 0;
    _truth.members.push_back(std::move(entry));
    _written.push_back({});
    raise_epoch();
}

Label LabelBook::label_for(uint32_t slot, uint64_t member_size, uint64_t data_offset) const {
    Label l = _truth;
    l.slot = slot;
    l.member_uuid = _truth.members[slot].uuid;
    l.data_size = _truth.members[slot].data_bytes;
    l.member_size = member_size;
    l.data_offset = data_offset;
    return l;
}

void LabelBook::written(uint32_t slot) {
    _written[slot] = Written::of(_truth);
}

} // namespace ispace::volume
