// An iSCSI session on the target (RFC 7143 §4.2): the CmdSN window, the task table, and the iSCSI side
// of every SCSI command — unsolicited data, R2Ts and Data-Out, Data-In and status — as the scsi::Fabric
// the SCSI engine calls back. A session and all its connections live on one reactor, so nothing here
// is locked; the engine's logical units are shared with other reactors and guard themselves.
//
// Ordering: non-immediate commands are delivered in CmdSN order; a command that arrives early waits in
// a small queue (bounded by the window). Commands outside [ExpCmdSN, MaxCmdSN] are silently ignored
// (RFC 7143 §4.2.2.1). MaxCmdSN = ExpCmdSN - 1 + (queue depth - commands not yet answered), so the
// window is how the target slows an initiator down.
//
// Data-In memory: a command that will return data reserves its buffer in the daemon's BufferBudget
// before it reaches the engine. When the budget has no room, the command waits (and every command
// after it, so CmdSN order holds) and MaxCmdSN stops advancing until it can go: new commands are held
// back at the initiator instead of memory being allocated for answers nobody reads.
#pragma once

#include "common/buffer.hpp"
#include "common/function.hpp"
#include "iscsi/login.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/text.hpp"
#include "iscsi_target/buffer_budget.hpp"
#include "iscsi_target/retention.hpp"
#include "net/reactor.hpp"
#include "net/socket.hpp"
#include "scsi/sense.hpp"
#include "scsi/target.hpp"
#include "scsi/task.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace ispace::iscsi_target {

class Connection;
class Server;
struct AclEntry;
struct SessionInfo;
struct SessionSlot;
class Target;

// The iSCSI side of one SCSI command.
struct IscsiTask final : scsi::Task {
    enum class State : uint8_t {
        waiting,    // received, waiting for its CmdSN turn (or for a reinstated predecessor)
        in_engine,  // submitted; the engine owns the flow
        responding, // the engine completed it; the response waits for unsolicited data to finish
    };

    Connection* connection = nullptr; // allegiance: responses go here; null once it is gone
    uint32_t itt = 0;
    uint32_t cmd_sn = 0;
    bool immediate = false;
    State state = State::waiting;

    // Data-out. Bytes arrive at offsets [0, buffer.size()); `received` counts distinct bytes landed
    // (sequences are in order, so this is exact).
    uint32_t received = 0;
    uint32_t immediate_length = 0;
    // Unsolicited Data-Out (TTT 0xffffffff): what the initiator will send unasked, and progress.
    uint32_t unsolicited_end = 0; // offset where unsolicited data ends
    uint32_t unsolicited_next = 0;
    uint32_t unsolicited_data_sn = 0;
    bool unsolicited_done = true;
    // Solicited data: the engine asked for `wanted` bytes; R2Ts cover [unsolicited_end, wanted).
    bool fetching = false;
    uint32_t wanted = 0;
    uint32_t r2t_next_offset = 0;
    uint32_t r2t_sn = 0;
    struct Burst {
        uint32_t ttt = 0;
        uint32_t offset = 0;
        uint32_t length = 0;
        uint32_t received = 0;
        uint32_t next_data_sn = 0;
    };
    std::vector<Burst> bursts; // outstanding R2Ts (at most MaxOutstandingR2T)
    bool cancelled = false;    // the engine cancelled the data transfer (TMF)
    bool counted = false;      // holds a slot of the CmdSN window until answered
    bool data_failed = false;  // a Data-Out sequence error ended the data phase
    scsi::Sense failure;       // ... with this sense
    // Its Data-In memory, reserved before the engine runs it; handed to its last Data-In PDU.
    BufferBudget::Hold budget_hold;
    // ErrorRecoveryLevel 2 (reassign.cpp): its connection failed and it waits, for at most
    // DefaultTime2Wait + DefaultTime2Retain, for a TASK REASSIGN; abandoned once that has passed.
    bool orphaned = false;
    bool abandoned = false;
    net::Clock::time_point orphaned_at{};
};

class Session final : public scsi::Fabric {
public:
    // `target` and `slot` are null for a discovery session.
    // `acl` is the target's ACL entry that admitted the initiator (null: no ACL), for LUN masking.
    Session(Server& server, net::Reactor& reactor, std::shared_ptr<Target> target,
            std::shared_ptr<SessionSlot> slot, const iscsi::LoginIdentity& identity,
            const iscsi::SessionParams& params, uint16_t tsih, uint32_t exp_cmd_sn, const AclEntry* acl);
    ~Session() override;
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    bool discovery() const { return _target == nullptr; }
    Target* target() const { return _target.get(); }
    const iscsi::SessionParams& params() const { return _params; }
    const scsi::Nexus& nexus() const { return _nexus; }
    uint16_t tsih() const { return _tsih; }
    const std::string& name() const { return _name; }

    void add_connection(Connection& connection);
    // The connection is gone. A connection that logged out leaves the others running. A failed one
    // ends the session at ErrorRecoveryLevel 0 and 1, which have no recovery across connections
    // (RFC 7143 §7.1.5): its tasks are aborted and it destroys itself once they have drained. At level 2
    // the session goes on, even with no connection left, and keeps the failed connection's tasks for
    // reassignment (reassign.cpp).
    void connection_lost(Connection& connection, bool logged_out);
    // ErrorRecoveryLevel 2 is in force: connections are recovered, not the session.
    bool recovers_connections() const { return _params.error_recovery_level >= 2 && !discovery(); }
    // The live connection with CID `cid` (other than `except`), or null.
    Connection* connection_with_cid(uint16_t cid, const Connection* except = nullptr) const;
    // Closes the connection with CID `cid` as a logout would. False if there is none.
    bool close_connection(uint16_t cid, const std::string& reason);
    // An administrator drops the connection with CID `cid` (reassign.cpp). Only at ErrorRecoveryLevel 2,
    // where the session survives it: the initiator is told with AsyncEvent 2 (RFC 7143 §11.9.1) how
    // long it must wait and how long its tasks are kept, the connection closes as failed within `grace`,
    // and its tasks wait DefaultTime2Wait + DefaultTime2Retain for TASK REASSIGN. Below level 2 the loss
    // of a connection ends the session, so this is refused (closing the session says so honestly).
    struct DroppedConnection {
        uint16_t time2wait = 0;   // Parameter2, as sent
        uint16_t time2retain = 0; // Parameter3, as sent
        size_t tasks = 0;         // the connection's tasks at the time, kept for reassignment
        size_t remaining = 0;     // the session's other live connections
    };
    Result<DroppedConnection> drop_connection(uint16_t cid, std::chrono::milliseconds grace);
    size_t connection_count() const { return _connections.size(); }
    void close_other_connections(Connection& keep, const std::string& reason);
    bool ending() const { return _ended; }
    // Ends the session from outside (reinstatement, target cold reset, shutdown): closes its
    // connections, aborts its tasks, and runs `gone` (on this reactor) once it no longer exists.
    void terminate(const std::string& reason, Function<void()> gone);
    // A reinstated predecessor has finished terminating: commands held for it may run.
    void open_gate();

    // A connection's backlog drained (it reads again): commands waiting for it may go.
    void backlog_drained();
    // --- introspection and run-time parameters (Server, by post() to this reactor) ---
    void describe(SessionInfo& info) const;
    std::vector<net::Endpoint> peers() const;
    // Asks every connection to negotiate `keys` again (Connection::request_negotiation); `done` runs
    // once all have finished, with an error naming those that failed.
    void renegotiate(const iscsi::KeyValueList& keys, std::chrono::seconds wait,
                     Function<void(Result<void>)> done);

    uint32_t exp_cmd_sn() const { return _exp_cmd_sn; }
    uint32_t max_cmd_sn() const;
    // Puts the command window (ExpCmdSN, MaxCmdSN) into an answer; every target PDU reports it.
    template <class Answer> void report_window(Answer& answer) const {
        answer.exp_cmd_sn = _exp_cmd_sn;
        answer.max_cmd_sn = max_cmd_sn();
    }

    // CmdSN ordering for every non-immediate request. Returns false when the CmdSN is outside the
    // window: the caller ignores the PDU (the RFC says silently). Otherwise `deliver` runs now or once
    // the CmdSN gap before it is filled.
    bool order(uint32_t cmd_sn, bool immediate, Function<void()> deliver);

    // --- SCSI commands, from the connection ---
    // A SCSI Command header arrived. Creates the command (and its data-out buffer). Null after a
    // protocol error (the connection has been told) or for an out-of-window command (ignored).
    IscsiTask* command_header(Connection& connection, const iscsi::ScsiCommand& header,
                              std::span<const uint8_t> ahs, std::string& error, iscsi::RejectReason& reject);
    // Its immediate data (if any) has landed; order and deliver it.
    void command_received(IscsiTask& command);
    // Its immediate data was lost (data digest error): forget the command.
    void discard_arrival(IscsiTask& command);
    // What to do with a Data-Out, decided from its header before its data arrives.
    struct DataOutCheck {
        enum class Verdict : uint8_t {
            land,         // into command->buffer at the PDU's offset
            drop,         // silently: data for a task that was aborted, ignored or answered
            fail_command, // a sequence error: the data is dropped and the command fails with `sense`
            reject,       // not a Data-Out this command can have: Reject, the connection goes on
        };
        Verdict verdict = Verdict::drop;
        IscsiTask* command = nullptr;
        scsi::Sense sense;
        std::string error;
    };
    DataOutCheck check_data_out(const Connection& connection, const iscsi::DataOut& header);
    // The Data-Out's data (checked by check_data_out) has landed in the command's buffer.
    void data_out_received(IscsiTask& command, const iscsi::DataOut& header);
    void advance_data_out_sequence(IscsiTask& command, const iscsi::DataOut& header);
    uint32_t send_r2t(IscsiTask& command, Connection& connection, uint32_t offset, uint32_t length);
    // A Data-Out sequence error: the command ends with CHECK CONDITION `sense`, later Data-Outs for it
    // are dropped. At ErrorRecoveryLevel 0 the data cannot be asked for again, but the connection and
    // the other tasks need not suffer for one bad sequence.
    void fail_data_out(IscsiTask& command, const scsi::Sense& sense, const std::string& why);
    // ERL 1: a Data-Out was lost to a data digest error (its header is sound). Its range is asked for
    // again with a recovery R2T (recovery.cpp).
    void recover_data_out(Connection& connection, const iscsi::DataOut& header);

    // --- Task management, logout ---
    void task_management(Connection& connection, const iscsi::TaskMgmtRequest& request);
    // Aborts every task of the session, then runs `done` (for Logout).
    void abort_all(Function<void()> done);

    // scsi::Fabric
    void fetch_data_out(scsi::Task& task, uint32_t length) override;
    void cancel_data_out(scsi::Task& task) override;
    void complete(scsi::Task& task) override;

    size_t task_count() const { return _commands.size(); }
    // Tasks waiting for a TASK REASSIGN, and the failed connections whose sent PDUs are kept for them.
    size_t orphan_count() const;
    size_t retired_connection_count() const { return _retired.size(); }
    // A login restarting connection `cid` (ERL 2) acknowledged the old connection's responses up to
    // `exp_stat_sn` (RFC 7143 §11.12): what the old connection kept for them is let go — whether it is
    // still closing or failed already.
    void acknowledge_old_connection(uint16_t cid, uint32_t exp_stat_sn, const Connection* except);

private:
    // ---- ErrorRecoveryLevel 2 (reassign.cpp) ----
    // How long a failed connection's tasks wait for reassignment: DefaultTime2Wait + DefaultTime2Retain
    // (RFC 7143 §13.19-§13.20), at least one second.
    std::chrono::seconds retain_window() const;
    void keep_for_reassignment(Connection& connection);
    void arm_retain_timer();
    void expire_orphans();
    void reassign(Connection* from, const iscsi::TaskMgmtRequest& request);
    bool reassign_answered(Connection& to, const iscsi::TaskMgmtRequest& request);
    uint32_t send_kept_data_in(Connection& to, const std::vector<Retention::Pdu>& kept,
                               const std::vector<iscsi::DataIn>& headers);
    void resume_data_out(IscsiTask& command, Connection& to);
    bool has_connection(const Connection* connection) const;
    void run_tmf(Connection* from, const iscsi::TaskMgmtRequest& request);
    // What the engine calls when a task management function it runs is done: the response, and the
    // session's end if it was waiting for that.
    Function<void(scsi::TmfResult)> engine_tmf_done(Connection* from, uint32_t itt);
    void answered(IscsiTask& command);
    void end();
    void deliver_command(IscsiTask& command);
    void defer_data_out_failure(IscsiTask& command);
    void submit(IscsiTask& command);
    void start(IscsiTask& command);
    bool reserve_buffer(IscsiTask& command);
    void arm_budget_timer();
    void retry_budget();
    void send_r2ts(IscsiTask& command);
    void maybe_data_out_done(IscsiTask& command);
    void respond(IscsiTask& command);
    void send_data_in(IscsiTask& command, uint32_t length);
    void send_scsi_response(IscsiTask& command, uint32_t data_pdus);
    void release(IscsiTask& command);
    void send_tmf_response(Connection* connection, uint32_t itt, iscsi::TmfResponse response);
    // Releases commands not yet handed to the engine (of one LUN, or all): a TMF covers them too.
    void drop_waiting_commands(std::optional<uint64_t> lun);
    void maybe_destroy();
    Connection* any_connection() const;

    Server& _server;
    net::Reactor& _reactor;
    std::shared_ptr<Target> _target; // null for discovery; keeps a removed target alive until we end
    // This session's picture of the target's LUN table (scsi::LunView): routing takes no lock.
    std::shared_ptr<scsi::LunView> _lun_view;
    std::shared_ptr<SessionSlot> _slot;
    iscsi::SessionParams _params;
    scsi::Nexus _nexus;
    std::string _name;
    uint16_t _tsih;
    uint64_t _isid;

    std::vector<Connection*> _connections;
    std::unordered_map<uint32_t, std::unique_ptr<IscsiTask>> _commands; // by ITT

    uint32_t _exp_cmd_sn;
    uint32_t _queue_depth;
    uint32_t _unanswered = 0; // commands that consumed a CmdSN and have not been answered
    std::unordered_map<uint32_t, Function<void()>> _early; // by CmdSN: arrived before their turn
    std::vector<IscsiTask*> _gated; // delivered while a reinstated predecessor was still terminating
    // Commands waiting, in order, for Data-In memory; while any does, MaxCmdSN stays at the frozen one.
    std::shared_ptr<BufferBudget::Account> _budget_account;
    std::deque<IscsiTask*> _budget_waiting;
    uint32_t _frozen_max_cmd_sn = 0;
    net::Reactor::TimerId _budget_timer = 0;
    uint32_t _next_ttt = 1;

    // Task management functions in the engine: their answers refer to this session, so it outlives them
    // as it outlives its commands (a LUN RESET then a Logout freed it under the reset's answer).
    uint32_t _tmfs_in_engine = 0;
    bool _closing = false; // abort_all ran (a Logout, or the end): no command is started after it
    bool _ended = false;   // no connection remains; destroy once tasks drain
    bool _destroying = false;
    bool _nexus_removed = false;
    std::vector<Function<void()>> _on_gone;
    std::vector<Function<void()>> _on_drained;

    // ERL 2: what failed connections sent and the initiator has not acknowledged (their Data-In and
    // status), for tasks answered before the failure; let go at `until`.
    struct Retired {
        uint16_t cid = 0;
        std::unique_ptr<Retention> retention;
        net::Clock::time_point until;
    };
    std::vector<Retired> _retired;
    net::Reactor::TimerId _retain_timer = 0;
    // No connection is left, but the session waits for a connection to be reinstated until then.
    std::optional<net::Clock::time_point> _alone_until;
};

} // namespace ispace::iscsi_target
