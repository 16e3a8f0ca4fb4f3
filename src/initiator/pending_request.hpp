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
#include <optional>
#include <vector>

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
    // ErrorRecoveryLevel 1 (reads): DataSNs asked for again with a Data SNACK and not yet received; the
    // status that arrived while any were missing, held (and not acknowledged) until they come
    // (RFC 7143 §11.16: no ExpStatSN past a status whose data has holes); the TTT of an A-bit Data-In,
    // answered by a DataACK SNACK; how many SNACKs this attempt sent (bounded).
    std::vector<uint32_t> missing_data_sns;
    std::optional<Response> held_status;
    uint32_t held_stat_sn = 0;
    uint32_t data_ack_ttt = 0xffffffff;
    unsigned snacks = 0;
    // Writes: the next R2TSN expected (an R2T lost to a header digest error is asked for again).
    uint32_t next_r2t_sn = 0;
    // Times the command PDU was sent again at ERL 1 (its immediate data lost to a digest error, or the
    // command itself lost to a header digest error), and when it last went out.
    unsigned digest_resends = 0;
    net::Clock::time_point sent_at{};
    // ErrorRecoveryLevel 2: the task moved to a reinstated connection by TASK REASSIGN; its next R2T
    // sets the R2TSN expected (R2Ts lost with the old connection are not asked for).
    bool reassigned = false;

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
        missing_data_sns.clear();
        held_status.reset();
        held_stat_sn = 0;
        data_ack_ttt = 0xffffffff;
        snacks = 0;
        next_r2t_sn = 0;
        digest_resends = 0;
        reassigned = false;
    }
};

} // namespace ispace::initiator
