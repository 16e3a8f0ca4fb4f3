// Retention: what one connection keeps of what it sent, at ErrorRecoveryLevel 1 and up, so that a SNACK
// can be answered (RFC 7143 §11.16, §7.1-§7.2):
//  - every numbered response (a PDU that carries a StatSN the initiator acknowledges: SCSI Response,
//    Data-In with status, TMF/Text/Logout Response, Reject, NOP-In answers, Asynchronous Message), until
//    the initiator's ExpStatSN passes it (Status SNACK);
//  - each task's Data-In PDUs, until a DataACK SNACK acknowledges them or the task's status is
//    acknowledged (Data SNACK);
//  - each task's R2Ts, until the task's status is acknowledged (R2T SNACK).
// Data-In PDUs keep a reference to the command's buffer, not a copy. What is kept is bounded in bytes,
// in tasks and responses, and in age (DefaultTime2Retain): past a bound the oldest goes first, and a
// SNACK for it is answered with a Reject (the initiator then fails or retries the command) — never with
// data that is not there.
#pragma once

#include "common/buffer.hpp"
#include "iscsi/pdu.hpp"
#include "net/reactor.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace ispace::iscsi_target {

class Retention {
public:
    struct Limits {
        size_t max_bytes = size_t(64) << 20; // Data-In and response bytes referenced
        size_t max_tasks = 4096;
        size_t max_responses = 4096;
        std::chrono::seconds max_age{20}; // DefaultTime2Retain's default
    };

    // One PDU as sent: its header (sequence numbers as they were) and its data segment.
    struct Pdu {
        iscsi::Bhs bhs;
        Buffer data;
        size_t offset = 0;
        uint32_t length = 0;
    };

    explicit Retention(Limits limits) : _limits(limits) {}

    // Called for every PDU the connection sends in full feature phase.
    void sent(const iscsi::Bhs& bhs, const Buffer& data, size_t offset, uint32_t length,
              net::Clock::time_point now);
    // The initiator's ExpStatSN: every response before it, and every task whose status is before it,
    // is released. ExpStatSN that goes back (an older PDU) is ignored.
    void acknowledge(uint32_t exp_stat_sn);

    // Why a SNACK cannot be answered; see RFC 7143 §11.16 (a request for what was never sent or was
    // already acknowledged is a protocol error) and §11.17.1.
    enum class Refusal : uint8_t {
        none,
        unknown_task,   // no such ITT kept: never seen, acknowledged, or let go at a bound
        not_sent,       // BegRun/RunLength reach past what was sent
        acknowledged,   // BegRun before what the initiator acknowledged
        no_longer_kept, // sent and not acknowledged, but let go at a bound
    };
    struct Lookup {
        Refusal refusal = Refusal::none;
        uint32_t next_sn = 0; // DataSN/R2TSN/StatSN the connection would send next (for the Reject)
        std::vector<const Pdu*> pdus;
    };
    // Data/R2T SNACK: Data-In PDUs of a read, or R2Ts of a write, with sequence numbers in
    // [beg_run, beg_run + run_length) (run_length 0: through the last one sent).
    Lookup data_or_r2t(uint32_t itt, uint32_t beg_run, uint32_t run_length) const;
    // Status SNACK: responses with StatSN in [beg_run, beg_run + run_length) (0: through the last).
    Lookup status(uint32_t beg_run, uint32_t run_length) const;
    // The Data-In of task `itt` that carried its status, if still kept (to resend a status whose Data-In
    // was let go as a SCSI Response).
    const Pdu* status_data_in(uint32_t stat_sn) const;
    // DataACK SNACK: Data-In of `itt` before DataSN `beg_run` is acknowledged. `ttt` must be the one
    // the target put on its A-bit Data-In.
    Refusal data_ack(uint32_t itt, uint32_t ttt, uint32_t beg_run);

    // ERL 2, TASK REASSIGN (RFC 7143 §11.5.1) of a task answered on this connection before it failed:
    // its Data-In from DataSN `exp_data_sn` on (0: from what the initiator acknowledged with DataACK)
    // and, when its status did not ride on the last Data-In, the SCSI Response. The task and its
    // response leave the retention. `found` is false when its status is not kept (never answered
    // here, acknowledged, or let go at a bound).
    struct Answer {
        bool found = false;
        Refusal refusal = Refusal::none;
        std::vector<Pdu> data_in;
        std::optional<Pdu> response;
    };
    Answer take_answer(uint32_t itt, uint32_t exp_data_sn);
    // A new command came with `itt`: the initiator is done with the task that had it before (an ITT is
    // unique among the session's outstanding tasks, RFC 7143 §11.2.1.8), even if no ExpStatSN has
    // acknowledged its status yet. What is kept for that task goes, so that a SNACK or a TASK REASSIGN
    // naming `itt` is answered from the new command, never from the old one's Data-In. Its response
    // stays for a Status SNACK (which names a StatSN, not an ITT).
    void forget_task(uint32_t itt);

    size_t bytes() const { return _bytes; }
    size_t tasks() const { return _tasks.size(); }
    size_t responses() const { return _responses.size(); }
    // Tasks and responses let go at a bound before they were acknowledged.
    uint64_t evicted() const { return _evicted; }

private:
    struct Task {
        uint64_t order = 0;
        net::Clock::time_point created;
        std::vector<Pdu> data_in; // index = DataSN
        uint32_t acked = 0;       // Data-In before this DataSN has been acknowledged (and released)
        uint32_t ack_ttt = iscsi::reserved_tag;
        std::vector<Pdu> r2ts; // index = R2TSN
        std::optional<uint32_t> stat_sn;
        size_t bytes = 0;
    };
    struct Response {
        uint32_t stat_sn = 0;
        bool superseded = false; // its ITT names a newer command now (forget_task)
        Pdu pdu;                 // for a Data-In with status: the header only (its data is in the task)
        net::Clock::time_point sent;
        size_t bytes = 0;
    };

    Task& task(uint32_t itt, net::Clock::time_point now);
    void erase_task(uint32_t itt);
    void enforce(net::Clock::time_point now);

    Limits _limits;
    std::unordered_map<uint32_t, Task> _tasks;
    std::deque<std::pair<uint32_t, uint64_t>> _task_order; // (ITT, order) oldest first; stale pairs skipped
    uint64_t _next_order = 1;
    std::deque<Response> _responses; // in StatSN order
    std::optional<uint32_t> _exp_stat_sn;
    std::optional<uint32_t> _next_stat_sn; // one past the last StatSN sent
    size_t _bytes = 0;
    uint64_t _evicted = 0;
};

} // namespace ispace::iscsi_target
