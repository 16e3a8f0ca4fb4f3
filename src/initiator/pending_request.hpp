// PendingRequest: one Request inside the initiator, from submit() to its completion.
//
// Named apart from scsi::Task, which is the target side's: the engine's unit of work for a command it
// received. Variables and functions still say "task" where RFC 7143 does (the Initiator Task Tag, the
// task table, ABORT TASK): on the wire a pending request is an iSCSI task.
//
// Ownership moves, never shared: the session's pending queue owns a task until it is dispatched, then
// the connection it was dispatched to (inbox, then task table) until its status arrives or the task is
// handed back for a retry. The session and the connections exchange tasks under the session lock or by
// post(), so a task is touched by one thread at a time.
#pragma once

#include "ispace/initiator.hpp"
#include "net/reactor.hpp"

#include <cstdint>

namespace ispace::initiator {

struct PendingRequest {
    // Submission order, session-wide. Retries keep it, so the pending queue (sorted by seq) re-sends
    // unacknowledged commands in their original order, ahead of anything submitted later.
    uint64_t seq = 0;
    Request request;
    Completion done;
    uint32_t expected_length = 0; // data.size() for reads and writes

    // Retries: after an abort / LUN reset / iSCSI target failure, and after UA / BUSY statuses.
    unsigned retries = 0;
    unsigned status_retries = 0;
    bool retry_pending_delay = false; // BUSY: wait a little before the next attempt

    // ---- Per attempt (set by the dispatch and Connection::start_task) ---------------------------------
    uint32_t itt = 0;
    uint32_t cmd_sn = 0;
    uint64_t order = 0; // the connection's send counter when the command went out
    net::Clock::time_point deadline{};
    // Reads: the next DataSN expected and the Data-In bytes received.
    uint32_t next_data_sn = 0;
    uint32_t data_received = 0;
    // Writes: Data-Out queued from the unsolicited burst (for offsets beyond it the target must R2T).
    uint32_t unsolicited_sent = 0;
    // Escalation: an ABORT TASK for this task is outstanding (its TMF ITT), or it was given up on and
    // awaits a LUN RESET.
    uint32_t abort_itt = 0;
    bool aborting = false;
    bool awaiting_reset = false;

    // Called when the task goes out on a connection; cmd_sn was assigned by the dispatch just before.
    void reset_attempt() {
        itt = 0;
        order = 0;
        deadline = {};
        next_data_sn = 0;
        data_received = 0;
        unsolicited_sent = 0;
        abort_itt = 0;
        aborting = false;
        awaiting_reset = false;
    }
};

} // namespace ispace::initiator
