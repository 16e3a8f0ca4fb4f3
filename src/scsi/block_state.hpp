// BlockState: what a logical unit keeps for the block commands beyond its mode pages and unit
// attentions — the LBA range lock (COMPARE AND WRITE atomicity), the sanitize state, and the results
// EXTENDED COPY holds for RECEIVE COPY RESULTS. One per LogicalUnit (lu.hpp: block_state()).
//
// Threads: like the rest of a logical unit, used by tasks of every reactor; each part says what guards it.
#pragma once

#include "scsi/range_lock.hpp"

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace ispace::scsi {

namespace sbc {
class SanitizeOp;
}

// SBC-4 4.11: while a sanitize operation runs, the logical unit refuses medium access (NOT READY,
// SANITIZE IN PROGRESS); after one fails it stays in the sanitize failure mode (MEDIUM ERROR,
// SANITIZE COMMAND FAILED) until a sanitize succeeds or, when allowed (AUSE), EXIT FAILURE MODE.
struct SanitizeState {
    std::atomic<bool> in_progress{false};
    std::atomic<bool> failed{false};
    std::atomic<bool> exit_allowed{false}; // the failed operation had AUSE=1
    // Progress for REQUEST SENSE's progress indication: blocks done of the total.
    std::atomic<uint64_t> done_blocks{0};
    std::atomic<uint64_t> total_blocks{0};
    // The operation while it runs, so that whichever goes first at shutdown, the logical unit or the
    // reactor that owns the operation, can cut the link (sbc::abandon_sanitize). Only touched at
    // start, at the end, and at teardown, when no reactor runs.
    sbc::SanitizeOp* op = nullptr;
};

// The outcome of one EXTENDED COPY (LID1) whose LIST ID USAGE asked the copy manager to hold it
// (SPC-4 6.4.3): what RECEIVE COPY RESULTS with COPY STATUS reports.
struct CopyResult {
    uint64_t nexus = 0;
    uint8_t list_id = 0;
    bool done = false;
    uint8_t status = 0; // COPY MANAGER STATUS: 00h in progress/done ok, 01h failed
    uint16_t segments_processed = 0;
    uint64_t blocks_written = 0; // TRANSFER COUNT in blocks of the destination
};

struct CopyResults {
    // Nexus ids are never reused, so results of a nexus that went away are unreachable and only age
    // out of the bounded list.
    static constexpr size_t max_held = 64;
    std::mutex mutex;
    std::deque<CopyResult> held; // oldest first
};

struct BlockState {
    RangeLock range_lock;
    SanitizeState sanitize;
    CopyResults copies;
};

} // namespace ispace::scsi
