// One iSCSI connection on the target: framing (PduReader over a net::Transport), the login phase, and the
// routing of full-feature PDUs to its Session. It owns the connection-wide state of RFC 7143: StatSN,
// the negotiated data segment limits and digests, NOP-In pings and the login timeout.
//
// Lifetime: created by the Server on the reactor that serves it, over a transport (TCP for an accepted
// socket; tests inject an in-memory one), destroyed there (deferred) after the transport closes. A Session
// may outlive its connections while its tasks drain.
#pragma once

#include "iscsi/login.hpp"
#include "iscsi/pdu_reader.hpp"
#include "iscsi_target/out_pdu.hpp"
#include "iscsi_target/retention.hpp"
#include "iscsi_target/session.hpp"
#include "net/reactor.hpp"
#include "net/socket.hpp"
#include "net/transport.hpp"

#include <array>
#include <chrono>
#include <memory>
#include <string>

namespace ispace::iscsi_target {

class Server;
class Session;
struct SessionSlot;
class Target;
struct IscsiTask;

class Connection final : public net::Transport::Handler,
                         public iscsi::PduSink,
                         public iscsi::LoginPolicy,
                         private OutPdu::Pool::Listener {
public:
    // Binds `transport` to `reactor` (the calling thread's) with this connection as its handler.
    // `login_ticket` names its place among the connections logging in (Server::admit_login); 0 for one
    // that arrives logged in (adopted from another reactor).
    Connection(Server& server, net::Reactor& reactor, std::unique_ptr<net::Transport> transport,
               net::Endpoint peer, net::Endpoint local, uint16_t tpgt, uint64_t login_ticket = 0);
    ~Connection() override;
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Starts reading and arms the login timeout.
    void start();
    uint64_t login_ticket() const { return _login_ticket; }
    // Still in the login phase and counted against the login limits.
    bool logging_in() const { return _phase == Phase::login && _counted_as_login; }
    // Closes a connection still logging in whose slot went to a newcomer from the same source.
    void evict(const std::string& reason);

    // --- used by Session ---
    // Queues one PDU: `bhs` then data[offset, offset+length). StatSN is the caller's business. `hold`
    // (a command's Data-In reservation) is given back once the PDU has been sent or failed.
    void send(const iscsi::Bhs& bhs, Buffer data = {}, size_t offset = 0, uint32_t length = 0,
              BufferBudget::Hold hold = {});
    // Queues one PDU whose (small) data segment is copied.
    void send_copy(const iscsi::Bhs& bhs, std::span<const uint8_t> data);
    // StatSN for the next status-carrying PDU (and advance it).
    uint32_t take_stat_sn() { return _stat_sn++; }
    // StatSN a PDU that carries no status reports (R2T, Data-In without status, NOP-In pings).
    uint32_t current_stat_sn() const { return _stat_sn; }
    // The session's command window (ExpCmdSN, MaxCmdSN) an answer reports; zeros before there is a session.
    void command_window(uint32_t& exp_cmd_sn, uint32_t& max_cmd_sn) const;
    // Numbers a status-carrying answer: the next StatSN and the command window (RFC 7143 §11.1.3's fields
    // every target PDU reports).
    template <class Answer> void number_status(Answer& answer) {
        answer.stat_sn = take_stat_sn();
        command_window(answer.exp_cmd_sn, answer.max_cmd_sn);
    }
    const iscsi::ConnectionParams& params() const { return _params; }
    uint16_t cid() const { return _cid; }
    net::Reactor& reactor() { return _reactor; }
    // "127.0.0.1:50412 iqn.1994-05.com.redhat:abc" for log lines.
    const std::string& name() const { return _name; }
    const net::Endpoint& peer() const { return _peer; }
    const net::Endpoint& local() const { return _local; }
    uint16_t tpgt() const { return _tpgt; }
    // Declares `keys` anew (ispace param set --session): an Asynchronous Message with AsyncEvent 4 asks
    // the initiator for a Text Request within `wait` (Parameter3, RFC 7143 §11.9.1); the Text Response
    // carries the keys, which apply once it is sent. `done` runs on this reactor when that happened, or
    // with an error when the initiator did not ask in time or the connection closed.
    void request_negotiation(iscsi::KeyValueList keys, std::chrono::seconds wait,
                             Function<void(Result<void>)> done);
    // Drops the connection now (ERL 0 answer to protocol errors), logging why.
    void drop(const std::string& reason);
    // Sends what is queued, then closes (after a Logout Response).
    void close_after_flush(const std::string& reason);
    // As close_after_flush, for a connection leaving by Logout: its session goes on without it.
    void close_logged_out(const std::string& reason);
    bool closing() const { return _phase == Phase::closing || _phase == Phase::closed; }
    // The session was terminated from elsewhere (reinstatement, target reset): forget it and close.
    void detach_session(const std::string& reason);

    // A connection that logged in on one reactor and joins a session living on another: everything
    // the session's reactor needs to take the socket over.
    struct Handover {
        std::unique_ptr<net::Transport> transport; // detached from the reactor it logged in on
        net::Endpoint peer;
        net::Endpoint local;
        uint16_t tpgt = 0;
        std::string name;
        uint16_t cid = 0;
        uint32_t stat_sn = 0;
        uint32_t login_exp_stat_sn = 0; // the first Login Request's ExpStatSN (see join_session)
        iscsi::ConnectionParams params;
        iscsi::LoginResponsePdu response; // the final Login Response, still to be sent
        std::shared_ptr<SessionSlot> slot;
    };
    // On the session's reactor: creates the connection, sends the final response, joins the session.
    static void adopt(Server& server, net::Reactor& reactor, Handover handover);

    // Answers `bhs` with a Reject PDU carrying `reason` (and `data_sn`, the DataSN/R2TSN field of a
    // Reject of a Data/R2T SNACK).
    void reject(const iscsi::Bhs& bhs, iscsi::RejectReason reason, const std::string& why,
                uint32_t data_sn = 0);
    // ErrorRecoveryLevel 1 and up: what was sent, kept for SNACKs (null at level 0).
    Retention* retention() { return _retention.get(); }
    // ERL 2: the session takes what a failed connection kept, for TASK REASSIGN.
    std::unique_ptr<Retention> take_retention() { return std::move(_retention); }
    // ERL 2 connection reinstatement: a new connection with the same CID takes this one's place; its
    // CID stays registered in the session when this one closes.
    void hand_cid_over() { _cid_registered = false; }
    // Closes the connection as failed (its tasks are kept for reassignment at ERL 2).
    void drop_for_recovery(const std::string& reason) { drop(reason); }
    // ERL 2, an administrator's drop of this connection: an Asynchronous Message with AsyncEvent 2
    // (RFC 7143 §11.9.1: Parameter1 our CID, Parameter2 `time2wait`, Parameter3 `time2retain`) tells the
    // initiator it goes; it is closed as failed after `grace` unless the initiator closed it first.
    void announce_drop(uint16_t time2wait, uint16_t time2retain, std::chrono::milliseconds grace);
    bool drop_announced() const { return _drop_timer != 0; }

    // Back-pressure: what this connection has queued for its peer and not yet sent. Past either bound
    // it stops reading (the peer's requests stay in its socket) until half of it has gone out. Why a
    // PDU count too: a small PDU costs a pooled buffer of several KiB for a few bytes on the wire.
    static constexpr size_t max_unsent_bytes = size_t(1) << 20;
    static constexpr size_t max_unsent_pdus = 256;
    size_t unsent_bytes() const { return _unsent_bytes; }
    bool reading_paused() const { return _backlog_paused; }

private:
    enum class Phase : uint8_t { login, full_feature, closing, closed };

    // Transport::Handler
    void on_readable() override;
    void on_closed(const Error& why) override;
    // PduSink
    iscsi::DataDestination data_destination(const iscsi::Bhs& bhs, std::span<const uint8_t> ahs,
                                            uint32_t length) override;
    void pdu_received(iscsi::ReceivedPdu&& pdu) override;
    void read_error(const iscsi::ReadError& error) override;
    // LoginPolicy
    iscsi::LoginTargetInfo start(const iscsi::LoginIdentity& identity) override;
    std::unique_ptr<iscsi::Authenticator> authenticator(std::string_view method,
                                                        const iscsi::LoginIdentity& identity) override;
    iscsi::LoginAdmission admit(const iscsi::LoginIdentity& identity, const iscsi::SessionParams& session,
                                const iscsi::ConnectionParams& connection) override;

    void login_pdu(iscsi::ReceivedPdu& pdu);
    void send_login_response(const iscsi::LoginResponsePdu& response);
    void enter_full_feature();
    void full_feature_pdu(iscsi::ReceivedPdu& pdu);
    void nop_out(iscsi::ReceivedPdu& pdu);
    void text_request(iscsi::ReceivedPdu& pdu);
    void answer_text(const iscsi::TextRequest& request, const iscsi::KeyValueList& pairs);
    void send_text_chunk(const iscsi::TextRequest& request);
    void logout_request(iscsi::ReceivedPdu& pdu);
    // ERL 1 (recovery.cpp): a SNACK Request, and resending a kept PDU with the current window.
    void snack(const iscsi::Bhs& bhs);
    void resend(const Retention::Pdu& pdu, bool fresh_stat_sn_field);
    void resend_status(const Retention::Pdu& pdu);
    void data_out_digest_error(const iscsi::Bhs& bhs);
    void hand_over(iscsi::LoginResponsePdu response);
    bool join_session();
    // A joining connection's final Login Response: the session's ExpCmdSN and MaxCmdSN.
    void state_session_window(iscsi::LoginResponsePdu& response) const;
    // ERL 1 and up: keep what is sent for SNACKs (from joining the session).
    void start_retention();
    void release_cid();
    void leave_login_phase();
    void apply_reader_limits();
    void schedule_nop();
    void nop_tick();
    void closed(const std::string& reason);
    // OutPdu::Pool::Listener
    void pdu_returned(size_t bytes) override;
    void finish_renegotiation(Result<void> result);
    void apply_renegotiated_keys();

    Server& _server;
    net::Reactor& _reactor;
    // Callbacks that may outlive this connection (queued in the session's CmdSN order, or waiting
    // for tasks to drain) hold this and check it first.
    std::shared_ptr<bool> _alive = std::make_shared<bool>(true);
    net::Endpoint _peer;
    net::Endpoint _local;
    uint16_t _tpgt;
    std::string _name;
    Phase _phase = Phase::login;
    OutPdu::Pool _pdu_pool{this}; // before _transport: unsent PDUs return here when the transport goes
    size_t _unsent_bytes = 0;
    size_t _unsent_pdus = 0;
    bool _backlog_paused = false;
    std::unique_ptr<net::Transport> _transport;
    iscsi::PduReader _reader;
    std::unique_ptr<std::array<uint8_t, 16384>> _staging;

    // Login phase.
    std::unique_ptr<iscsi::TargetLogin> _login;
    std::shared_ptr<Target> _target; // the target named at login (normal sessions)
    std::shared_ptr<SessionSlot> _slot;
    std::shared_ptr<SessionSlot> _replaced;
    net::Reactor::TimerId _login_timer = 0;
    bool _cid_registered = false; // our CID is in _slot->cids
    bool _handed_over = false;
    bool _logged_out = false;      // closed by a Logout (not a failure)
    bool _counted_as_login = true; // counts against Limits::max_login_connections
    uint64_t _login_ticket = 0;

    // Full feature phase.
    Session* _session = nullptr;
    iscsi::ConnectionParams _params;
    uint16_t _cid = 0;
    uint32_t _stat_sn = 0;
    uint32_t _login_exp_stat_sn = 0; // the first Login Request's ExpStatSN (join_session)
    // A SCSI Command whose immediate data is arriving: created from its header, finished on receipt.
    IscsiTask* _arriving = nullptr;
    std::string _arrival_error; // why the arriving command was refused (empty: silently ignored)
    iscsi::RejectReason _arrival_reject = iscsi::RejectReason::protocol_error;
    // The verdict on the Data-Out whose data segment is arriving, decided in data_destination().
    Session::DataOutCheck _data_out_check;

    // Text exchange in progress (a long SendTargets answer goes out in pieces, RFC 7143 §6.2).
    iscsi::TextAssembler _text_in;
    std::vector<uint8_t> _text_out;
    size_t _text_out_offset = 0;
    uint32_t _text_ttt = 0;
    uint32_t _next_ttt = 1;

    // A negotiation the target asked for (request_negotiation): the keys go in the answer to the next
    // Text Request the initiator starts, and apply once that answer is sent.
    struct Renegotiation {
        iscsi::KeyValueList keys;
        Function<void(Result<void>)> done;
        net::Reactor::TimerId timer = 0;
        bool answering = false; // the keys are in the Text Response being sent
    };
    Renegotiation _renegotiation;
    uint32_t _reader_max_segment = 0; // the reader's MaxRecvDataSegmentLength bound (never lowered)

    std::unique_ptr<Retention> _retention; // ERL 1 and up, from joining the session

    // An announced drop (announce_drop): the connection closes when this fires.
    net::Reactor::TimerId _drop_timer = 0;

    // Keepalive: a NOP-In ping when idle, a drop when silent too long.
    net::Reactor::TimerId _nop_timer = 0;
    net::Clock::time_point _last_received;
    uint32_t _ping_ttt = iscsi::reserved_tag;
};

} // namespace ispace::iscsi_target
