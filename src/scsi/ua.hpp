// Unit attention conditions (SAM-5 5.14, SPC-4 5.14): per logical unit, one queue per I_T nexus.
//
// Events that happen to a logical unit (power on, a reset, LUNs added, commands cleared by another
// initiator) must reach every initiator once, on its next command, as CHECK CONDITION / UNIT
// ATTENTION; INQUIRY, REPORT LUNS and REQUEST SENSE do not report them (REQUEST SENSE returns one as
// its data). The container is plain data: the logical unit keeps it behind its mutex.
//
// Queueing rules (UA_INTLCK_CTRL = 00b):
//  - a condition already queued for a nexus is not queued twice;
//  - a reset-class condition (ASC 29h) goes to the front and replaces other 29h conditions and
//    COMMANDS CLEARED BY ANOTHER INITIATOR, which it subsumes (an initiator that sees a reset
//    rediscovers everything anyway);
//  - at most max_queued conditions per nexus; beyond it new ones are dropped (a reset is kept).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace ispace::scsi {

class UnitAttentions {
public:
    static constexpr size_t max_queued = 16;

    // A nexus gets a queue when it appears; conditions for unknown nexuses are not kept.
    void add_nexus(uint64_t nexus);
    void remove_nexus(uint64_t nexus);
    bool has_nexus(uint64_t nexus) const { return _queues.count(nexus) != 0; }
    std::vector<uint64_t> nexuses() const;

    // `code` is ASC/ASCQ as 0xAAQQ (see sense.hpp asc::).
    void establish(uint64_t nexus, uint16_t code);
    void establish_all(uint16_t code);

    // The next condition for the nexus, removed from its queue.
    std::optional<uint16_t> take(uint64_t nexus);
    std::optional<uint16_t> peek(uint64_t nexus) const;
    // Drops one kind of condition (REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED).
    void clear(uint64_t nexus, uint16_t code);

    // Conditions queued over all nexuses: lets the command path skip the lock when zero.
    size_t pending() const { return _pending; }

private:
    std::unordered_map<uint64_t, std::vector<uint16_t>> _queues;
    size_t _pending = 0;
};

} // namespace ispace::scsi
