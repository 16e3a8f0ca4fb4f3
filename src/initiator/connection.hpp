// Connection: one TCP connection of an initiator session, on one reactor (RFC 7143 §4–§11; ERL 0, and
// ERL 1 within-connection recovery: SNACKs, recovery R2Ts and command resends, in recovery.cpp).
//
// It logs in (InitiatorLogin over its Transport), then runs the full feature phase for the tasks the
// session dispatches to it: SCSI Command PDUs with immediate and unsolicited data, Data-Out answering
// R2Ts, Data-In reassembly with DataSN checks, SCSI Response and phase-collapsed status, NOP-In pings
// and NOP-Out keepalives, Reject and Async Message handling, and the timeout escalation
// command timeout → ABORT TASK → LUN RESET → drop the connection (the session then reinstates itself).
//
// Task allegiance (RFC 7143 §7.1.2): every PDU of a task travels on the connection its command went
// out on, so the task table is per connection and the receive path needs no lock. What is shared by the
// connections of a session — the CmdSN window, the pending queue, the task hand-over — belongs to the
// owner (SessionCore) and is reached through ConnectionOwner.
//
// Threading: every method runs on the connection's reactor, except the fields marked "guarded by the
// owner's lock", which the owner touches from any thread.
#pragma once

#include "initiator/pending_request.hpp"
#include "initiator/task_table.hpp"
#include "initiator/transport.hpp"
#include "iscsi/login.hpp"
#include "iscsi/params.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/pdu_reader.hpp"
#include "iscsi/text.hpp"
#include "ispace/buffer.hpp"
#include "ispace/result.hpp"
#include "net/reactor.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ispace::initiator {

class Connection;

// Counters a connection reports to its session.
struct SessionCounters {
    std::atomic<uint64_t> commands{0};
    std::atomic<uint64_t> reconnects{0};
    std::atomic<uint64_t> retries{0};
    std::atomic<uint64_t> unit_attentions{0};
    std::atomic<uint64_t> aborts{0};
    std::atomic<uint64_t> lun_resets{0};
    std::atomic<uint64_t> digest_errors{0};
    std::atomic<uint64_t> snacks{0};                // SNACK Requests sent (ERL 1)
    std::atomic<uint64_t> connection_recoveries{0}; // connections logged in again (ERL 2)
    std::atomic<uint64_t> reassignments{0};         // tasks moved by TASK REASSIGN (ERL 2)
    std::atomic<uint64_t> connection_failovers{0};  // failed connections whose tasks another one took (ERL 2)
    std::atomic<uint64_t> connections_added{0};     // Session::add_connection() that succeeded
    std::atomic<uint64_t> connections_removed{0};   // Session::remove_connection() that succeeded
};

// What a connection needs from its session. Called on the connection's reactor unless noted.
class ConnectionOwner {
public:
    virtual ~ConnectionOwner() = default;
    virtual const SessionOptions& options() const = 0;
    virtual TransportFactory& transport_factory() = 0;
    virtual SessionCounters& counters() = 0;
    // ExpCmdSN/MaxCmdSN from a target PDU.
    virtual void window_update(Connection& conn, uint32_t exp_cmd_sn, uint32_t max_cmd_sn) = 0;
    // CmdSN for an immediate PDU (not advanced), and for a non-immediate internal request (advanced).
    virtual uint32_t immediate_cmd_sn() = 0;
    virtual uint32_t allocate_cmd_sn() = 0;
    // Moves the tasks dispatched to `conn` into `out`.
    virtual void take_inbox(Connection& conn, std::vector<PendingRequest*>& out) = 0;
    // A task's status arrived (or it failed for good): the owner runs the completion.
    virtual void task_done(Connection& conn, PendingRequest* task, Response&& result) = 0;
    // The task is to be sent again (after `delay`), in its original order.
    virtual void task_retry(Connection& conn, PendingRequest* task, std::chrono::milliseconds delay) = 0;
    // The connection is unusable (closed, protocol error, escalation exhausted). Called once.
    virtual void connection_failed(Connection& conn, const Error& why) = 0;
};

struct LoginOutcome {
    std::optional<Error> error; // set when the login failed
    iscsi::SessionParams session;
    iscsi::ConnectionParams connection;
    uint16_t tsih = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    // On failure: the target's status (or initiator_error) and, for a redirection, where to.
    iscsi::LoginStatus status = iscsi::LoginStatus::success;
    // The login failed after the CHAP exchange had begun (InitiatorLogin::authentication_started).
    bool during_authentication = false;
    std::string redirect;
};

class Connection final : public std::enable_shared_from_this<Connection>,
                         private Transport::Handler,
                         private iscsi::PduSink {
public:
    using LoginDone = Function<void(LoginOutcome&&)>;

    Connection(std::shared_ptr<ConnectionOwner> owner, net::Reactor& reactor, uint16_t cid, uint8_t tag,
               uint64_t generation);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    net::Reactor& reactor() { return _reactor; }
    uint16_t cid() const { return _cid; }
    uint64_t generation() const { return _generation; }
    const std::string& peer() const { return _peer; }

    // Connects to host:port and logs in with `config`. `done` runs on this reactor, once, unless
    // shutdown() comes first.
    void login(const std::string& host, uint16_t port, iscsi::InitiatorLoginConfig config, LoginDone done);
    // After a successful login: starts the full feature phase with the session's parameters.
    void enter_full_feature(const iscsi::SessionParams& session);
    // The owner dispatched tasks to this connection (posted once per batch).
    void drain_inbox();
    // Logout: `done` gets the outcome; the connection stays open until shutdown(). `reason` is "close the
    // session" (ends every connection of the session) or "close the connection" (RFC 7143 §11.14: this
    // one only; the session's other connections go on).
    // "Remove the connection for recovery" names another connection, `cid` (ERL 2, see take_over()).
    void logout(Function<void(Result<void>)> done,
                iscsi::LogoutReason reason = iscsi::LogoutReason::close_session,
                std::optional<uint16_t> cid = std::nullopt);
    // The session is logging out on another connection: the target closing this one is expected.
    void expect_close() { _logged_out = true; }
    // A Text Request with `keys` (discovery: SendTargets=All); `done` gets the whole response text.
    void send_text(std::vector<uint8_t> keys, Function<void(Result<std::vector<uint8_t>>)> done);
    // Closes the transport, stops every timer and hands back every SCSI task not yet completed, in no
    // particular order (the owner sorts). Pending login/logout/text callbacks are dropped.
    // Tasks that had no status when this connection went are returned with their ITT (0 for those
    // dispatched but never sent on it), so that ERL 2 can reassign them.
    std::vector<PendingRequest*> shutdown(const Error& why);

    // ---- ErrorRecoveryLevel 2 (reassign.cpp) ----
    // Before anything else: this connection logs in again with the CID of `old`, which failed and was
    // shut down. Its Login Request acknowledges what `old` received (ExpStatSN, RFC 7143 §11.12), so
    // that the target lets go of those answers, and its ITTs go on from `old`'s generations. Without
    // both, a command that reused the ITT of an answered one and was lost with the connection would be
    // reassigned onto the OLD command's kept answer: its data and status, taken as the new one's.
    void restarts(const Connection& old);
    // ERL 2 when connection `cid` failed and could not be logged in again: a Logout "remove the
    // connection for recovery" for it on this connection (RFC 7143 §11.14.1; "CID not found" means the
    // target let it go already, which serves as well), then each of its `tasks` moved here with TASK
    // REASSIGN, keeping its ITT (one never sent goes out as a command with its CmdSN). `done` gets the
    // outcome; on an error it also gets back the tasks this connection did not keep (the owner then
    // reinstates the session). Tasks it kept come back through shutdown() if it fails in turn.
    void take_over(uint16_t cid, std::vector<PendingRequest*> tasks,
                   Function<void(Result<void>, std::vector<PendingRequest*>)> done);
    uint32_t restart_exp_stat_sn() const { return _restart_exp_stat_sn; }
    // Before the login of a connection that reinstates a failed one (same CID): its tasks wait here, so
    // that a shutdown meanwhile hands them back with the rest.
    void park(std::vector<PendingRequest*> tasks);
    // After enter_full_feature(): each parked task sent on the failed connection keeps its ITT and is
    // moved here with TASK REASSIGN (RFC 7143 §11.5.1); one never sent goes out as a command, with the
    // CmdSN it was given.
    void reassign_parked();
    // A TASK REASSIGN was refused, or the target asked to drop the connection without keeping its tasks:
    // the session is to be reinstated rather than the connection (any thread).
    bool reassign_refused() const { return _reassign_refused.load(std::memory_order_acquire); }
    // Time2Wait the target asked for in an Asynchronous Message "drop connection" (seconds), if any.
    std::optional<uint16_t> requested_time2wait() const {
        int v = _requested_time2wait.load(std::memory_order_acquire);
        return v < 0 ? std::nullopt : std::optional<uint16_t>(uint16_t(v));
    }

    // Guarded by the owner's lock.
    std::vector<PendingRequest*> inbox;
    bool drain_posted = false;
    unsigned outstanding = 0; // dispatched and not yet completed or handed back
    bool active = false;      // in the owner's dispatch set
    // Being removed (SessionCore::remove_connection): out of the dispatch set, its tasks finishing, then a
    // Logout "close the connection". Never reset: a late failure of a removed connection is ignored.
    bool removing = false;
    // SCSI Command PDUs sent (any thread may read it).
    std::atomic<uint64_t> commands_sent{0};

private:
    enum class State : uint8_t { idle, connecting, logging_in, logged_in, full_feature, failed, closed };
    class OutPdu;

    // Transport::Handler
    void on_readable() override;
    void on_closed(const Error& why) override;
    // iscsi::PduSink
    iscsi::DataDestination data_destination(const iscsi::Bhs& bhs, std::span<const uint8_t> ahs,
                                            uint32_t length) override;
    void data_landed(const uint8_t* dest, size_t n) override;
    void pdu_received(iscsi::ReceivedPdu&& pdu) override;
    void read_error(const iscsi::ReadError& error) override;

    void on_connected(Result<std::unique_ptr<Transport>> transport);
    void send_login(const iscsi::LoginRequestPdu& pdu);
    void handle_login_response(iscsi::ReceivedPdu& pdu);
    void finish_login_failure(Error error);

    // Sending.
    OutPdu& get_pdu();
    void release_pdu(OutPdu* pdu);
    void send_pdu(const iscsi::Bhs& bhs, const Buffer& data = {}, size_t offset = 0, uint32_t length = 0);
    // Allocates the task's ITT and sends it; false when it could not enter the table (the connection
    // failed: task table full).
    bool start_task(PendingRequest* task);
    // start_task() for each, in order; when a send fails the connection, the ones not in the table yet
    // are kept unsent.
    void start_tasks(std::span<PendingRequest* const> tasks);
    // Tasks taken for this connection that a failed send kept from going out: parked (ITT cleared), for
    // shutdown() to hand back with the rest.
    void keep_unsent(std::span<PendingRequest* const> tasks);
    void send_data_out(PendingRequest* task, uint32_t ttt, uint32_t offset, uint32_t length);
    void send_nop_ping();
    void send_tmf(iscsi::TmfFunction function, uint64_t lun, PendingRequest* referenced);
    void send_reassign(PendingRequest* task);
    void reassign_answered(PendingRequest* task, iscsi::TmfResponse response);

    // Receiving.
    void handle_data_in(iscsi::ReceivedPdu& pdu);
    void handle_scsi_response(iscsi::ReceivedPdu& pdu);
    void handle_r2t(const iscsi::Bhs& bhs);
    void handle_nop_in(iscsi::ReceivedPdu& pdu);
    void handle_tmf_response(const iscsi::Bhs& bhs);
    void handle_text_response(iscsi::ReceivedPdu& pdu);
    void handle_logout_response(const iscsi::Bhs& bhs);
    void handle_async(iscsi::ReceivedPdu& pdu);
    // AsyncEvent 4: the target asks for a negotiation; an empty Text Request answers it.
    void answer_negotiation_request(uint16_t deadline_seconds);
    void apply_target_declarations(const iscsi::KeyValueList& pairs);
    void handle_reject(iscsi::ReceivedPdu& pdu);
    void note_stat_sn(uint32_t stat_sn);
    // ---- ErrorRecoveryLevel 1 (recovery.cpp) ----
    // The ExpStatSN we send: never past a StatSN still missing (asked for with a Status SNACK) nor past
    // a status held while its data has holes.
    uint32_t ack_stat_sn() const;
    void send_snack(iscsi::SnackType type, uint32_t itt, uint64_t lun, uint32_t ttt, uint32_t beg_run,
                    uint32_t run_length);
    // DataSNs [beg, beg + run) of `task` are missing: ask for them (false: the bound on SNACKs per
    // command was reached and the connection failed).
    bool request_data(PendingRequest* task, uint32_t beg, uint32_t run);
    // A Data-In whose data failed its digest (its header is sound).
    void data_in_lost(const iscsi::Bhs& bhs);
    // Completes a read once its status arrived and no DataSN is missing (a DataACK first if asked).
    void hold_status(PendingRequest* task, const iscsi::DataIn& d);
    void finish_read(PendingRequest* task, Response&& result, uint32_t stat_sn);
    void send_command(PendingRequest* task);
    // A Reject at ERL 1 that recovery answers; false: not one of those.
    bool recover_reject(const iscsi::Reject& reject, const iscsi::Bhs& rejected);
    void expire_missing(net::Clock::time_point now);
    // A command the target has not received (ExpCmdSN still at its CmdSN well after it went out: it was
    // lost to a header digest error) is sent again, same ITT and CmdSN (RFC 7143 §7.2.1).
    void resend_lost_commands(net::Clock::time_point now);
    // A command whose data or R2Ts are asked for again more often than this fails its connection (the
    // session then reinstates, as at ERL 0): recovery is bounded.
    static constexpr unsigned max_snacks_per_command = 16;
    static constexpr unsigned max_digest_resends = 8;
    // Data-In PDUs of one command that may be missing at once. A loss is one PDU (a header digest
    // error); a DataSN that jumps further is the target's error, and each missing DataSN is tracked, so
    // a jump of billions (a bit flipped in the field) would cost as much time and memory: the
    // connection fails instead, and recovery goes on as for any broken connection.
    static constexpr uint32_t max_missing_data_sns = 1024;
    // Responses (StatSN) missing at once on this connection; beyond it a gap is not taken for a loss
    // (note_stat_sn).
    static constexpr uint32_t max_missing_stat_sns = 1024;
    void note_window(uint32_t exp_cmd_sn, uint32_t max_cmd_sn);

    // Completion and escalation.
    void finish_task(PendingRequest* task, Response&& result);
    void retry_or_fail(PendingRequest* task, const char* why);
    void start_lun_reset(uint64_t lun);
    void tick();
    void arm_tick();

    void fail(Error why);
    bool usable() const { return _state == State::logged_in || _state == State::full_feature; }

    std::shared_ptr<ConnectionOwner> _owner;
    net::Reactor& _reactor;
    uint16_t _cid;
    uint64_t _generation;
    State _state = State::idle;
    std::string _peer;
    std::string _target_label;     // "iqn... at host:port" for log lines
    const SessionOptions _options; // a copy: a connection may outlive its session by a posted task

    // Declared before _transport: queued PDUs return here when the transport is destroyed.
    std::vector<std::unique_ptr<OutPdu>> _pdus;
    std::vector<OutPdu*> _free_pdus;
    std::unique_ptr<Transport> _transport;
    iscsi::PduReader _reader;
    std::vector<uint8_t> _staging;

    TaskTable _table;
    // The Data-In segment being received into a read's buffer whose request has an observer
    // (data_destination): its task, where the segment starts in that buffer and at which offset of the
    // read. The ITT is looked up again for every run of bytes, so a task finished meanwhile is not told.
    struct Landing {
        uint32_t itt = 0;
        PendingRequest* task = nullptr;
        const uint8_t* dest = nullptr;
        uint32_t length = 0;
        uint32_t offset = 0; // of the segment in the read
    };
    Landing _landing;
    uint32_t _restart_exp_stat_sn = 0; // restarts()
    uint64_t _send_order = 0; // counts commands and TMFs sent, to tell which tasks a LUN RESET covers

    // Login.
    std::unique_ptr<iscsi::InitiatorLogin> _login;
    iscsi::InitiatorLoginConfig _login_config;
    LoginDone _login_done;
    net::Clock::time_point _login_deadline{};

    // Full feature phase.
    iscsi::SessionParams _session;
    iscsi::ConnectionParams _params;
    uint32_t _exp_stat_sn = 0;
    bool _erl1 = false; // the session negotiated ErrorRecoveryLevel 1 or more
    // StatSNs asked for with a Status SNACK, with when; forgotten after a while (the commands concerned
    // have their own timeouts), so that ExpStatSN cannot stay frozen.
    std::vector<std::pair<uint32_t, net::Clock::time_point>> _missing_stat_sns;
    std::vector<uint32_t> _held_stat_sns; // statuses held by reads with holes
    uint32_t _last_exp_cmd_sn = 0;
    uint32_t _last_max_cmd_sn = 0;
    bool _window_seen = false;
    net::Clock::time_point _window_at{}; // when a target PDU last told ExpCmdSN
    net::Reactor::TimerId _tick_timer = 0;
    net::Clock::duration _tick_interval{};
    net::Clock::time_point _last_rx{};
    uint32_t _ping_itt = iscsi::reserved_tag;
    net::Clock::time_point _ping_sent{};
    // LUN → ITT of the LUN RESET in progress for it.
    std::map<uint64_t, uint32_t> _resets;

    // Text (discovery) and logout.
    Function<void(Result<std::vector<uint8_t>>)> _text_done;
    iscsi::TextAssembler _text;
    uint32_t _text_itt = iscsi::reserved_tag;
    Function<void(Result<void>)> _logout_done;
    uint32_t _logout_itt = iscsi::reserved_tag;
    iscsi::LogoutReason _logout_reason = iscsi::LogoutReason::close_session;
    bool _logged_out = false; // the target accepted our Logout: its closing the connection is expected
    net::Clock::time_point _logout_deadline{};

    // ERL 2.
    std::vector<PendingRequest*> _parked;
    std::atomic<bool> _reassign_refused{false};
    std::atomic<int> _requested_time2wait{-1};
};

} // namespace ispace::initiator
