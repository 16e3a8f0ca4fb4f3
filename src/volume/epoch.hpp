// The holder's view of a space's labels, and the only code that changes them: every change of
// membership raises the epoch (with a new generation id); every other label write raises the sequence.
// Pure (no I/O): the volume writes what this produces, and the tests drive the same transitions.
#pragma once

#include "volume/label.hpp"

#include <cstdint>
#include <vector>

namespace ispace::volume {

// What a member's own label says, as far as the writer knows: its epoch, generation and previous
// generation.
struct Written {
    uint64_t epoch = 0;
    uint64_t generation = 0;
    uint64_t previous = 0;
    static Written of(const Label& l) { return {l.epoch, l.generation, l.previous_generation}; }
};

class LabelBook {
public:
    LabelBook() = default;
    // `truth` as assembled (or created). `written[slot]` is what each member's own label holds now (what
    // assembly read from it, or the truth's for a member that should have it).
    LabelBook(Label truth, std::vector<Written> written);

    const Label& truth() const { return _truth; }
    Label& truth() { return _truth; }

    // A new epoch: a fresh generation id, the old one kept as previous_generation.
    void raise_epoch();
    // Any other change (clean flag, checkpoint, holder): the sequence only.
    void bump_sequence();
    // `slot` leaves the in-sync set (failed or missing) as of the next epoch; its entry remembers the
    // label it holds, so that assembly can tell it stale from written apart. Raises the epoch unless
    // `raise` is false (several changes made at once, then one raise_epoch()).
    void member_out(uint32_t slot, MemberState state, bool raise = true);
    // `slot` comes back to be resynced (delta from the bitmap, or full). Raises the epoch unless `raise`
    // is false.
    void member_rejoins(uint32_t slot, RebuildMode mode, bool raise = true);
    // `slot` finished its resync: in sync again. Raises the epoch.
    void member_in_sync(uint32_t slot);
    // A rebuild's progress (space bytes done): the sequence only.
    void checkpoint(uint32_t slot, uint64_t recovery_offset);
    // `slot` now belongs to a new member (replace): `entry` is rebuilt in full. Raises the epoch.
    void replace_member(uint32_t slot, MemberEntry entry);

    // A new member at the end of the table (a concat's new column: `entry` holds no data yet, so it is in
    // sync from the start). Raises the epoch.
    void add_member(MemberEntry entry);
    // The label as member `slot` stores it (its own slot, UUID and data area).
    Label label_for(uint32_t slot, uint64_t member_size, uint64_t data_offset) const;
    // Record that `slot`'s copies now hold the current label.
    void written(uint32_t slot);
    Written written_of(uint32_t slot) const { return _written[slot]; }
    void set_written(uint32_t slot, Written w) { _written[slot] = w; }

private:
    Label _truth;
    std::vector<Written> _written;
};

} // namespace ispace::volume
