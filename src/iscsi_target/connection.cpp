#include "iscsi_target/connection.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"
#include "common/log_limit.hpp"
#include "iscsi_target/server.hpp"
#include "iscsi_target/session.hpp"

#include <algorithm>
#include <cstring>

namespace ispace::iscsi_target {
namespace {

// Reads per readiness event before yielding to the reactor's other connections.
constexpr int reads_per_event = 16;
// A data segment remainder at least this large is read straight into its destination.
constexpr size_t direct_read_threshold = 4096;

// Lines a peer can provoke as often as it likes: rate-limited and counted (common/log_limit.hpp).
LogLimit g_reject_log;
LogLimit g_drop_log;
LogLimit g_login_log;

} // namespace

Connection::Connection(Server& server, net::Reactor& reactor, std::unique_ptr<net::Transport> transport,
                       net::Endpoint peer, net::Endpoint local, uint16_t tpgt, uint64_t login_ticket)
    : _server(server), _reactor(reactor), _peer(peer), _local(local), _tpgt(tpgt), _name(peer.to_string()),
      _transport(std::move(transport)), _reader(*this),
      _staging(std::make_unique<std::array<uint8_t, 16384>>()), _login_ticket(login_ticket) {
    _transport->attach(reactor, *this);
    _last_received = reactor.now();
    server.connection_opened(*this);
}

Connection::~Connection() {
    *_alive = false;
    if (_login_timer) {
        _reactor.cancel_timer(_login_timer);
    }
    if (_nop_timer) {
        _reactor.cancel_timer(_nop_timer);
    }
    if (_renegotiation.timer) {
        _reactor.cancel_timer(_renegotiation.timer);
    }
    if (_drop_timer) {
        _reactor.cancel_timer(_drop_timer);
    }
    // _transport goes before _pdu_pool (declaration order), returning unsent PDUs to the pool.
    _transport.reset();
}

void Connection::start() {
    log_debug("connection {}: accepted on {} (portal group {})", _name, _local.to_string(), _tpgt);
    iscsi::TargetLoginSettings settings;
    settings.cmd_window = _server.config().limits.queue_depth;
    _login = std::make_unique<iscsi::TargetLogin>(*this, settings);
    _login_timer = _reactor.add_timer(_server.config().limits.login_timeout, [this] {
        _login_timer = 0;
        if (_phase == Phase::login) {
            _server.count_login_timeout(_reactor);
            drop(fmt::format("login not completed within {} ms",
                             _server.config().limits.login_timeout.count()));
        }
    });
}

// ---- Sending ---------------------------------------------------------------------------------------

void Connection::send(const iscsi::Bhs& bhs, Buffer data, size_t offset, uint32_t length,
                      BufferBudget::Hold hold) {
    // Kept even when the transport has just closed (and its closing has not reached us yet): at ERL 2
    // what a task sent is what a TASK REASSIGN sends again.
    if (_retention && _phase == Phase::full_feature) {
        _retention->sent(bhs, data, offset, length, net::Clock::now());
    }
    if (!_transport || _transport->closed()) {
        return;
    }
    OutPdu& pdu = _pdu_pool.get();
    pdu.build(bhs, std::move(data), offset, length, _params.header_digest == iscsi::Digest::crc32c,
              _params.data_digest == iscsi::Digest::crc32c);
    pdu.hold(std::move(hold));
    // Counted before send(), which may hand the PDU back at once.
    _unsent_bytes += pdu.bytes();
    ++_unsent_pdus;
    _transport->send(pdu);
    if (!_backlog_paused && (_unsent_bytes > max_unsent_bytes || _unsent_pdus > max_unsent_pdus) &&
        !closing()) {
        // The peer is not reading what we send: stop reading what it sends, so its requests cannot
        // make us queue answers without limit (a NOP-Out flood, a pile of unread READs).
        _backlog_paused = true;
        _transport->pause_reading();
        log_debug("connection {}: {} bytes in {} PDUs unsent; reading paused", _name, _unsent_bytes,
                  _unsent_pdus);
    }
}

void Connection::pdu_returned(size_t bytes) {
    _unsent_bytes -= bytes;
    --_unsent_pdus;
    if (_backlog_paused && _unsent_bytes <= max_unsent_bytes / 2 && _unsent_pdus <= max_unsent_pdus / 2) {
        _backlog_paused = false;
        // Null while the destructor resets the transport (which hands unsent PDUs back).
        if (_transport && !closing()) {
            _transport->resume_reading();
            // Commands that waited for the backlog may go; not from inside the transport's callback.
            _reactor.defer([this, alive = _alive] {
                if (*alive && _session != nullptr && !closing()) {
                    _session->backlog_drained();
                }
            });
        }
    }
}

void Connection::send_copy(const iscsi::Bhs& bhs, std::span<const uint8_t> data) {
    if (data.empty()) {
        send(bhs);
        return;
    }
    Buffer copy = Buffer::allocate(data.size());
    std::memcpy(copy.data(), data.data(), data.size());
    send(bhs, std::move(copy), 0, uint32_t(data.size()));
}

void Connection::command_window(uint32_t& exp_cmd_sn, uint32_t& max_cmd_sn) const {
    exp_cmd_sn = _session ? _session->exp_cmd_sn() : 0;
    max_cmd_sn = _session ? _session->max_cmd_sn() : 0;
}

void Connection::reject(const iscsi::Bhs& bhs, iscsi::RejectReason reason, const std::string& why,
                        uint32_t data_sn) {
    _server.count_reject(_reactor, reason);
    g_reject_log.warn("connection {}: rejecting {}: {}", _name, iscsi::describe(bhs), why);
    iscsi::Reject reject;
    reject.reason = reason;
    reject.data_sn = data_sn;
    number_status(reject);
    iscsi::Bhs out;
    reject.encode(out);
    send_copy(out, {bhs.bytes.data(), bhs.bytes.size()});
}

// ---- Closing ---------------------------------------------------------------------------------------

void Connection::drop(const std::string& reason) {
    if (closing()) {
        return;
    }
    g_drop_log.warn("connection {}: {}; closing it", _name, reason);
    _phase = Phase::closing;
    _reader.stop();
    _transport->close(make_error(reason));
}

void Connection::evict(const std::string& reason) {
    if (!logging_in()) {
        return;
    }
    drop(reason);
}

void Connection::close_after_flush(const std::string& reason) {
    if (closing()) {
        return;
    }
    log_debug("connection {}: {}", _name, reason);
    _phase = Phase::closing;
    _reader.stop();
    _transport->close_after_flush(make_error(reason));
}

void Connection::close_logged_out(const std::string& reason) {
    _logged_out = true;
    close_after_flush(reason);
}

void Connection::detach_session(const std::string& reason) {
    _session = nullptr;
    drop(reason);
}

void Connection::on_closed(const Error& why) {
    closed(why.message);
}

void Connection::closed(const std::string& reason) {
    if (_phase == Phase::closed) {
        return;
    }
    _phase = Phase::closed;
    log_debug("connection {}: closed ({})", _name, reason);
    if (_login_timer) {
        _reactor.cancel_timer(_login_timer);
        _login_timer = 0;
    }
    if (_renegotiation.done) {
        finish_renegotiation(make_error("the connection closed: " + reason, ENOTCONN));
    }
    if (_nop_timer) {
        _reactor.cancel_timer(_nop_timer);
        _nop_timer = 0;
    }
    if (_drop_timer) {
        _reactor.cancel_timer(_drop_timer);
        _drop_timer = 0;
    }
    if (_arriving && _session) {
        _session->discard_arrival(*_arriving);
    }
    _arriving = nullptr;
    leave_login_phase();
    release_cid();
    if (_session) {
        Session* session = _session;
        _session = nullptr;
        session->connection_lost(*this, _logged_out);
    } else if (_slot && !_slot->session && !_handed_over && _login && _login->identity().leading()) {
        // Admitted but the session was never created (the final login response failed).
        _server.sessions().remove(_slot);
    }
    _server.connection_closed(*this);
    // Deferred: we may be inside the stream's or the reader's call stack.
    _reactor.defer([this] { delete this; });
}

// ---- Receiving -------------------------------------------------------------------------------------

void Connection::on_readable() {
    // Stop as soon as the backlog paused reading: the PDUs already read may have queued answers.
    for (int i = 0; i < reads_per_event && !closing() && !_backlog_paused; ++i) {
        iovec direct = _reader.direct_read();
        net::Transport::ReadResult result;
        size_t asked = 0;
        if (direct.iov_len >= direct_read_threshold) {
            asked = direct.iov_len;
            result = _transport->read(direct.iov_base, direct.iov_len);
            if (result.bytes > 0) {
                _reader.direct_read_done(result.bytes);
            }
        } else {
            asked = _staging->size();
            result = _transport->read(_staging->data(), _staging->size());
            if (result.bytes > 0) {
                _reader.feed({_staging->data(), result.bytes});
            }
        }
        if (result.bytes > 0) {
            _last_received = _reactor.now();
            if (result.bytes < asked) {
                // A short read drained the socket: asking again would only return EAGAIN, and the
                // level-triggered reactor calls us again when more arrives. One syscall less per command.
                return;
            }
            continue;
        }
        if (result.would_block) {
            return;
        }
        if (result.eof) {
            std::string why =
                _reader.idle() ? "peer closed the connection" : "peer closed the connection mid-PDU";
            if (_phase == Phase::full_feature && !_reader.idle()) {
                g_drop_log.warn("connection {}: {}", _name, why);
            }
            _phase = Phase::closing;
            _transport->close(make_error(why));
            return;
        }
        if (result.error != 0) {
            drop(fmt::format("receive failed: {}", std::strerror(result.error)));
            return;
        }
    }
}

iscsi::DataDestination Connection::data_destination(const iscsi::Bhs& bhs, std::span<const uint8_t> ahs,
                                                    uint32_t length) {
    if (_phase != Phase::full_feature || _session == nullptr) {
        return iscsi::DataDestination::allocate();
    }
    switch (bhs.opcode()) {
    case iscsi::Opcode::scsi_command: {
        _arriving = nullptr;
        _arrival_error.clear();
        auto header = iscsi::ScsiCommand::decode(bhs);
        if (!header) {
            _arrival_error = header.error().message;
            _arrival_reject = iscsi::RejectReason::invalid_pdu_field;
            return iscsi::DataDestination::discard();
        }
        _arriving = _session->command_header(*this, *header, ahs, _arrival_error, _arrival_reject);
        if (_arriving == nullptr) {
            return iscsi::DataDestination::discard();
        }
        return iscsi::DataDestination::into(_arriving->buffer, 0);
    }
    case iscsi::Opcode::data_out: {
        _data_out_check = {};
        auto header = iscsi::DataOut::decode(bhs);
        if (!header) {
            return iscsi::DataDestination::discard(); // answered in pdu_received()
        }
        _data_out_check = _session->check_data_out(*this, *header);
        if (_data_out_check.verdict != Session::DataOutCheck::Verdict::land) {
            return iscsi::DataDestination::discard();
        }
        return iscsi::DataDestination::into(_data_out_check.command->buffer, header->buffer_offset);
    }
    default:
        return iscsi::DataDestination::allocate();
    }
}

void Connection::read_error(const iscsi::ReadError& error) {
    switch (error.kind) {
    case iscsi::ReadErrorKind::header_digest:
        if (error.fatal) {
            drop("header digest error: " + error.message);
            return;
        }
        // ERL 1: the PDU was skipped by its claimed length; what it carried is found missing by the
        // sequence numbers (CmdSN at the target, DataSN/StatSN at the initiator) and sent again.
        _server.count_recovery(_reactor, RecoveryEvent::header_digest_skipped);
        g_reject_log.warn("connection {}: {}; PDU discarded (ErrorRecoveryLevel 1)", _name, error.message);
        return;
    case iscsi::ReadErrorKind::data_digest:
        if (_arriving && _session) {
            _session->discard_arrival(*_arriving);
        }
        _arriving = nullptr;
        reject(error.bhs, iscsi::RejectReason::data_digest_error, error.message);
        if (error.bhs.opcode() == iscsi::Opcode::data_out && _retention) {
            data_out_digest_error(error.bhs);
            return;
        }
        if (error.bhs.opcode() == iscsi::Opcode::data_out) {
            // At ErrorRecoveryLevel 0 lost Data-Out cannot be asked for again (RFC 7143 §7.1.4.1).
            drop("data digest error on Data-Out; at ErrorRecoveryLevel 0 the data cannot be recovered");
        }
        return;
    case iscsi::ReadErrorKind::data_segment_too_long:
    case iscsi::ReadErrorKind::ahs_too_long:
    case iscsi::ReadErrorKind::bad_destination:
        if (_arriving && _session) {
            _session->discard_arrival(*_arriving);
        }
        _arriving = nullptr;
        if (_phase == Phase::login) {
            _server.count_login_failure(_reactor, iscsi::LoginStatus::initiator_error);
            send_login_response(_login->fail(iscsi::LoginStatus::initiator_error, error.message));
            close_after_flush("login failed: " + error.message);
            return;
        }
        reject(error.bhs, iscsi::RejectReason::protocol_error, error.message);
        drop("protocol error: " + error.message);
        return;
    }
}

void Connection::pdu_received(iscsi::ReceivedPdu&& pdu) {
    switch (_phase) {
    case Phase::login:
        login_pdu(pdu);
        return;
    case Phase::full_feature:
        full_feature_pdu(pdu);
        return;
    case Phase::closing:
    case Phase::closed:
        return;
    }
}

// ---- Login -----------------------------------------------------------------------------------------

void Connection::send_login_response(const iscsi::LoginResponsePdu& response) {
    iscsi::Bhs bhs;
    response.header.encode(bhs);
    send_copy(bhs, response.data);
}

void Connection::login_pdu(iscsi::ReceivedPdu& pdu) {
    if (pdu.bhs.opcode() != iscsi::Opcode::login_request) {
        // RFC 7143 §6.3: only Login Requests until the login completes.
        auto response = _login->fail(
            iscsi::LoginStatus::invalid_during_login,
            fmt::format("{} before the login completed", iscsi::opcode_name(pdu.bhs.raw_opcode())));
        send_login_response(response);
        _server.count_login_failure(_reactor, response.header.status());
        g_login_log.warn("connection {}: login failed: {} ({})", _name,
                         iscsi::describe(response.header.status()), _login->reason());
        close_after_flush("login failed");
        return;
    }
    iscsi::LoginResponsePdu response;
    auto request = iscsi::LoginRequest::decode(pdu.bhs);
    if (!request) {
        response = _login->fail(iscsi::LoginStatus::initiator_error, request.error().message);
    } else {
        response = _login->receive(*request, pdu.segment());
    }
    if (_login->state() == iscsi::LoginState::complete && !_login->identity().leading()) {
        if (_slot->reactor != &_reactor) {
            // The session lives on another reactor: that reactor sends the final response and serves
            // the connection from then on.
            hand_over(std::move(response));
            return;
        }
        state_session_window(response);
    }
    send_login_response(response);
    switch (_login->state()) {
    case iscsi::LoginState::in_progress:
        return;
    case iscsi::LoginState::complete:
        enter_full_feature();
        return;
    case iscsi::LoginState::redirected:
        close_after_flush("login redirected");
        return;
    case iscsi::LoginState::failed:
        _server.count_login_failure(_reactor, _login->status());
        g_login_log.warn("connection {}: login failed: {} ({})", _name, iscsi::describe(_login->status()),
                         _login->reason());
        if (_slot && !_slot->session) {
            _server.sessions().remove(_slot);
        }
        close_after_flush("login failed");
        return;
    }
}

iscsi::LoginTargetInfo Connection::start(const iscsi::LoginIdentity& identity) {
    _name = fmt::format("{} {}", _peer.to_string(), identity.initiator_name);
    iscsi::LoginTargetInfo info;
    auto live = _server.live();
    info.negotiation = live->negotiation;
    info.target_portal_group_tag = _tpgt;
    if (_server.stopping()) {
        info.status = iscsi::LoginStatus::service_unavailable;
        return info;
    }
    if (identity.session_type == iscsi::SessionType::discovery) {
        info.auth_methods = {
            std::string(live->discovery_chap ? iscsi::auth_method_chap : iscsi::auth_method_none)};
        return info;
    }
    _target = _server.find_target(identity.target_name);
    if (_target == nullptr) {
        info.status = iscsi::LoginStatus::target_not_found;
        g_login_log.warn("connection {}: login to unknown target '{}'", _name, identity.target_name);
        return info;
    }
    if (!_server.serves(*_target, _tpgt)) {
        info.status = iscsi::LoginStatus::target_not_found;
        log_warn("connection {}: login to {}, which portal group {} does not serve", _name, _target->iqn,
                 _tpgt);
        return info;
    }
    if (!_server.may_access(*_target, identity.initiator_name, _peer)) {
        info.status = iscsi::LoginStatus::authorization_failure;
        g_login_log.warn("connection {}: {} from {} is not allowed to log in to {} (ACL)", _name,
                         identity.initiator_name, _peer.to_string(), _target->iqn);
        return info;
    }
    auto target_config = _target->config();
    if (target_config->negotiation) {
        info.negotiation = *target_config->negotiation; // ispace param set IQN KEY=VALUE
    }
    info.negotiation.alias = target_config->alias; // TargetAlias is the target's own
    // With CHAP configured, None is not acceptable: an initiator that cannot authenticate is refused.
    info.auth_methods = {
        std::string(target_config->chap ? iscsi::auth_method_chap : iscsi::auth_method_none)};
    if (!identity.leading()) {
        // A connection joining an existing session (MC/S): it must name that session exactly.
        auto slot = _server.sessions().find_tsih(identity.tsih);
        if (!slot || slot->initiator_name != identity.initiator_name ||
            slot->isid != iscsi::isid_to_u64(identity.isid) || slot->target_name != identity.target_name) {
            info.status = iscsi::LoginStatus::session_does_not_exist;
            return info;
        }
        std::lock_guard lock(slot->mutex);
        if (!slot->ready) {
            info.status = iscsi::LoginStatus::session_does_not_exist;
            return info;
        }
        info.session = slot->params;
        _slot = std::move(slot);
    }
    return info;
}

std::unique_ptr<iscsi::Authenticator> Connection::authenticator(std::string_view method,
                                                                const iscsi::LoginIdentity& identity) {
    if (method == iscsi::auth_method_none) {
        return iscsi::make_none_authenticator();
    }
    if (method != iscsi::auth_method_chap) {
        return nullptr;
    }
    iscsi::ChapTargetConfig chap;
    if (identity.session_type == iscsi::SessionType::discovery) {
        auto live = _server.live();
        if (!live->discovery_chap) {
            return nullptr;
        }
        chap.users.push_back(*live->discovery_chap);
        chap.mutual = live->discovery_mutual_chap;
    } else {
        auto target_config = _target ? _target->config() : nullptr;
        if (!target_config || !target_config->chap) {
            return nullptr;
        }
        chap.users.push_back(*target_config->chap);
        chap.mutual = target_config->mutual_chap;
    }
    return iscsi::make_chap_target_authenticator(std::move(chap));
}

iscsi::LoginAdmission Connection::admit(const iscsi::LoginIdentity& identity, const iscsi::SessionParams&,
                                        const iscsi::ConnectionParams&) {
    iscsi::LoginAdmission admission;
    if (identity.session_type == iscsi::SessionType::discovery) {
        admission.tsih = _server.sessions().admit_discovery();
    } else if (!identity.leading()) {
        std::lock_guard lock(_slot->mutex);
        bool reinstates = _slot->cids.count(identity.cid) != 0;
        if (reinstates && !(_slot->ready && _slot->params.error_recovery_level >= 2)) {
            // Reusing a live CID is connection reinstatement, which needs ErrorRecoveryLevel 2.
            admission.status = iscsi::LoginStatus::cannot_include_in_session;
            return admission;
        }
        // A reinstatement replaces a connection: it does not count as one more (RFC 7143 §6.2.2).
        if (!reinstates && _slot->cids.size() >= _slot->params.max_connections) {
            admission.status = iscsi::LoginStatus::too_many_connections;
            return admission;
        }
        _slot->cids.insert(identity.cid);
        _cid_registered = true;
        admission.tsih = _slot->tsih;
        // The session's window lives on its reactor: the final Login Response takes it there
        // (state_session_window); these are placeholders.
        admission.exp_cmd_sn = identity.cmd_sn;
        admission.max_cmd_sn = identity.cmd_sn;
        return admission;
    } else {
        auto admitted = _server.sessions().admit(_reactor, identity.initiator_name,
                                                 iscsi::isid_to_u64(identity.isid), identity.target_name,
                                                 _server.config().limits.max_sessions_per_initiator);
        if (!admitted) {
            g_login_log.warn("connection {}: login refused: {}", _name, admitted.error().message);
        }
        if (admitted) {
            _slot = admitted->slot;
            _replaced = admitted->replaced;
            admission.tsih = _slot->tsih;
            std::lock_guard lock(_slot->mutex);
            _slot->cids.insert(identity.cid);
            _cid_registered = true;
        }
    }
    if (admission.tsih == 0) {
        admission.status = iscsi::LoginStatus::out_of_resources;
        return admission;
    }
    // The first command in full feature phase carries the CmdSN of the login (RFC 7143 §6.3).
    admission.exp_cmd_sn = identity.cmd_sn;
    admission.max_cmd_sn = identity.cmd_sn + _server.config().limits.queue_depth - 1;
    return admission;
}

void Connection::enter_full_feature() {
    const iscsi::LoginIdentity& identity = _login->identity();
    _params = _login->connection_params();
    _cid = identity.cid;
    _stat_sn = _login->last_stat_sn() + 1;
    _login_exp_stat_sn = identity.exp_stat_sn;
    if (identity.leading()) {
        // The snapshot outlives the session's construction, which copies what it needs of the entry.
        auto target_config = _target ? _target->config() : nullptr;
        const AclEntry* acl =
            target_config ? find_acl_entry(target_config->acl, identity.initiator_name, _peer) : nullptr;
        _session = new Session(_server, _reactor, _target, _slot, identity, _login->session_params(),
                               _login->tsih(), identity.cmd_sn, acl);
        _session->add_connection(*this);
        start_retention();
        if (_replaced) {
            log_info("{}: reinstates session {:#06x}", _session->name(), _replaced->tsih);
            _server.terminate_reinstated(std::move(_replaced), _slot);
        }
    } else if (!join_session()) {
        return;
    }
    _phase = Phase::full_feature;
    leave_login_phase();
    apply_reader_limits();
    if (_login_timer) {
        _reactor.cancel_timer(_login_timer);
        _login_timer = 0;
    }
    log_debug("connection {}: full feature phase; digests header={} data={}, segments in<={} out<={}", _name,
              iscsi::to_string(_params.header_digest), iscsi::to_string(_params.data_digest),
              _params.max_recv_data_segment_length, _params.max_send_data_segment_length);
    _login.reset();
    schedule_nop();
}

void Connection::leave_login_phase() {
    if (_counted_as_login) {
        _counted_as_login = false;
        _server.login_finished(_peer, _login_ticket);
    }
}

void Connection::release_cid() {
    if (_cid_registered && _slot) {
        std::lock_guard lock(_slot->mutex);
        _slot->cids.erase(_login ? _login->identity().cid : _cid);
    }
    _cid_registered = false;
}

bool Connection::join_session() {
    _session = _slot->session;
    if (_session == nullptr || _session->ending()) {
        _session = nullptr;
        drop("the session this connection joined has ended");
        return false;
    }
    if (_session->recovers_connections()) {
        // ERL 2 connection reinstatement (RFC 7143 §6.2.2, §7.3): a live connection with our CID is
        // the one we replace. It closes as failed, so its tasks wait for TASK REASSIGN; our CID stays
        // registered when it goes (and is registered again, should it have gone meanwhile).
        //
        // The login's ExpStatSN acknowledges what the old connection answered (RFC 7143 §11.12): those
        // answers are let go before any TASK REASSIGN can find them. The initiator may already have
        // reused their ITTs for new commands, and a reassign of such a command that never arrived must
        // be told "no such task", never be answered with the old command's data and status.
        _session->acknowledge_old_connection(_cid, _login_exp_stat_sn, this);
        if (Connection* old = _session->connection_with_cid(_cid, this)) {
            old->hand_cid_over();
            _server.count_recovery(_reactor, RecoveryEvent::connection_reinstated);
            old->drop_for_recovery(fmt::format("connection reinstated by a new login with CID {}", _cid));
        }
        std::lock_guard lock(_slot->mutex);
        _slot->cids.insert(_cid);
    }
    _session->add_connection(*this);
    start_retention();
    return true;
}

void Connection::state_session_window(iscsi::LoginResponsePdu& response) const {
    // The final Login Response of a connection joining a session carries the session's window, read on
    // the session's reactor: ExpCmdSN acknowledges the CmdSNs received so far, and MaxCmdSN is what the
    // session takes (RFC 7143 §4.2.2.1). The login's CmdSN is only the initiator's next one; announced,
    // it would acknowledge commands still on their way on other connections and open slots the session
    // does not have, whose commands it would then ignore.
    Session* session = _slot ? _slot->session : nullptr;
    if (session != nullptr && !session->ending()) {
        response.header.exp_cmd_sn = session->exp_cmd_sn();
        response.header.max_cmd_sn = session->max_cmd_sn();
    }
}

void Connection::start_retention() {
    if (_session->params().error_recovery_level >= 1) {
        Retention::Limits limits;
        limits.max_age = std::chrono::seconds(std::max<uint16_t>(_session->params().default_time2retain, 1));
        _retention = std::make_unique<Retention>(limits);
    }
}

void Connection::hand_over(iscsi::LoginResponsePdu response) {
    if (!_reader.idle()) {
        // The initiator sent more before the final Login Response: nothing legal can be pending.
        drop("PDU received before the final Login Response was sent");
        return;
    }
    if (!_transport->detach()) {
        drop("cannot hand the connection to its session's reactor: data still queued");
        return;
    }
    Handover handover;
    handover.transport = std::move(_transport);
    handover.peer = _peer;
    handover.local = _local;
    handover.tpgt = _tpgt;
    handover.name = _name;
    handover.cid = _login->identity().cid;
    handover.stat_sn = _login->last_stat_sn() + 1;
    handover.login_exp_stat_sn = _login->identity().exp_stat_sn;
    handover.params = _login->connection_params();
    handover.response = std::move(response);
    handover.slot = _slot;
    _cid_registered = false; // the new owner releases the CID when it closes
    _handed_over = true;
    net::Reactor* target_reactor = _slot->reactor;
    Server* server = &_server;
    server->connection_handed_over();
    target_reactor->post([server, target_reactor, handover = std::move(handover)]() mutable {
        Connection::adopt(*server, *target_reactor, std::move(handover));
    });
    // This object is done: the socket lives on in the new owner.
    closed("handed over to the session's reactor");
}

void Connection::adopt(Server& server, net::Reactor& reactor, Handover handover) {
    auto* connection = new Connection(server, reactor, std::move(handover.transport), handover.peer,
                                      handover.local, handover.tpgt);
    server.connection_adopted(*connection);
    Connection& c = *connection;
    c._counted_as_login = false; // it logged in on the other reactor
    c._name = handover.name;
    c._slot = handover.slot;
    c._cid = handover.cid;
    c._cid_registered = true;
    c._stat_sn = handover.stat_sn;
    c._login_exp_stat_sn = handover.login_exp_stat_sn;
    // The final Login Response goes out before digests apply (RFC 7143 §6.3).
    c.state_session_window(handover.response);
    c.send_login_response(handover.response);
    c._params = handover.params;
    if (!c.join_session()) {
        return;
    }
    c._phase = Phase::full_feature;
    c.apply_reader_limits();
    c.schedule_nop();
}

void Connection::apply_reader_limits() {
    iscsi::ReaderLimits limits;
    // Never lowered: after a renegotiation to a smaller value, PDUs the initiator sent before it read
    // the new value may still be on the wire, and they were legal when sent.
    _reader_max_segment = std::max(_reader_max_segment, _params.max_recv_data_segment_length);
    limits.max_data_segment_length = _reader_max_segment;
    limits.header_digest = _params.header_digest == iscsi::Digest::crc32c;
    limits.data_digest = _params.data_digest == iscsi::Digest::crc32c;
    limits.skip_bad_headers = _retention != nullptr;
    _reader.set_limits(limits);
}

// ---- Full feature phase ----------------------------------------------------------------------------

void Connection::full_feature_pdu(iscsi::ReceivedPdu& pdu) {
    if (_session == nullptr) {
        return;
    }
    const iscsi::Bhs& bhs = pdu.bhs;
    // (A SNACK's is applied after the SNACK: a DataACK names data whose status it may acknowledge too.)
    if (_retention && bhs.opcode() != iscsi::Opcode::login_request &&
        bhs.opcode() != iscsi::Opcode::snack_request) {
        // Every initiator PDU carries ExpStatSN at bytes 28-31 (RFC 7143 §11): what it acknowledges
        // need not be kept any longer.
        _retention->acknowledge(load_be32(bhs.bytes.data() + 28));
    }
    switch (bhs.opcode()) {
    case iscsi::Opcode::scsi_command: {
        IscsiTask* command = nullptr;
        if (pdu.data_length > 0) {
            command = std::exchange(_arriving, nullptr);
        } else {
            _arrival_error.clear();
            auto header = iscsi::ScsiCommand::decode(bhs);
            if (!header) {
                _arrival_error = header.error().message;
                _arrival_reject = iscsi::RejectReason::invalid_pdu_field;
            } else {
                command = _session->command_header(*this, *header, pdu.ahs, _arrival_error, _arrival_reject);
            }
        }
        if (command == nullptr) {
            if (!_arrival_error.empty()) {
                reject(bhs, _arrival_reject, _arrival_error);
            }
            return;
        }
        _session->command_received(*command);
        return;
    }
    case iscsi::Opcode::data_out: {
        auto header = iscsi::DataOut::decode(bhs);
        if (!header) {
            reject(bhs, iscsi::RejectReason::invalid_pdu_field, header.error().message);
            return;
        }
        // A Data-Out with data was checked in data_destination(), before its data landed.
        Session::DataOutCheck check = pdu.data_length > 0 ? std::exchange(_data_out_check, {})
                                                          : _session->check_data_out(*this, *header);
        switch (check.verdict) {
        case Session::DataOutCheck::Verdict::land:
            _session->data_out_received(*check.command, *header);
            return;
        case Session::DataOutCheck::Verdict::drop:
            return;
        case Session::DataOutCheck::Verdict::fail_command:
            _session->fail_data_out(*check.command, check.sense, check.error);
            return;
        case Session::DataOutCheck::Verdict::reject:
            reject(bhs, iscsi::RejectReason::protocol_error, check.error);
            return;
        }
        return;
    }
    case iscsi::Opcode::nop_out:
        nop_out(pdu);
        return;
    case iscsi::Opcode::text_request:
        text_request(pdu);
        return;
    case iscsi::Opcode::logout_request:
        logout_request(pdu);
        return;
    case iscsi::Opcode::task_mgmt_request: {
        auto request = iscsi::TaskMgmtRequest::decode(bhs);
        if (!request) {
            reject(bhs, iscsi::RejectReason::invalid_pdu_field, request.error().message);
            return;
        }
        if (_session->discovery()) {
            reject(bhs, iscsi::RejectReason::protocol_error, "task management in a discovery session");
            return;
        }
        _session->task_management(*this, *request);
        return;
    }
    case iscsi::Opcode::snack_request:
        if (_retention == nullptr) {
            // SNACK needs ErrorRecoveryLevel 1 or more (RFC 7143 §11.16).
            reject(bhs, iscsi::RejectReason::protocol_error, "SNACK at ErrorRecoveryLevel 0");
            return;
        }
        snack(bhs);
        if (_retention) {
            _retention->acknowledge(load_be32(bhs.bytes.data() + 28));
        }
        return;
    case iscsi::Opcode::login_request:
        reject(bhs, iscsi::RejectReason::protocol_error, "Login Request in full feature phase");
        return;
    default:
        reject(bhs, iscsi::RejectReason::command_not_supported,
               fmt::format("unsupported opcode {:#04x}", bhs.raw_opcode()));
        return;
    }
}

void Connection::nop_out(iscsi::ReceivedPdu& pdu) {
    auto request = iscsi::NopOut::decode(pdu.bhs);
    if (!request) {
        reject(pdu.bhs, iscsi::RejectReason::invalid_pdu_field, request.error().message);
        return;
    }
    if (request->itt == iscsi::reserved_tag) {
        // An answer to our ping (or a bare ExpStatSN update): nothing to send back.
        if (request->ttt != iscsi::reserved_tag && request->ttt == _ping_ttt) {
            _ping_ttt = iscsi::reserved_tag;
        }
        return;
    }
    Buffer data = pdu.data;
    size_t offset = pdu.data_offset;
    // Ping data is echoed, up to what the initiator declared it accepts.
    uint32_t length = std::min(pdu.data_length, _params.max_send_data_segment_length);
    uint64_t lun = request->lun;
    uint32_t itt = request->itt;
    _session->order(request->cmd_sn, request->immediate,
                    [this, alive = _alive, data = std::move(data), offset, length, lun, itt] {
                        if (!*alive || closing()) {
                            return;
                        }
                        iscsi::NopIn answer;
                        answer.itt = itt;
                        answer.ttt = iscsi::reserved_tag;
                        answer.lun = lun;
                        number_status(answer);
                        answer.data_segment_length = length;
                        iscsi::Bhs bhs;
                        answer.encode(bhs);
                        send(bhs, data, offset, length);
                    });
}

void Connection::schedule_nop() {
    const Limits& limits = _server.config().limits;
    auto tick =
        std::max(std::chrono::milliseconds(100), std::min(limits.nop_interval, limits.nop_timeout) / 2);
    _nop_timer = _reactor.add_timer(tick, [this] {
        _nop_timer = 0;
        nop_tick();
    });
}

void Connection::nop_tick() {
    if (_phase != Phase::full_feature) {
        return;
    }
    const Limits& limits = _server.config().limits;
    auto idle = _reactor.now() - _last_received;
    if (idle >= limits.nop_timeout) {
        drop(fmt::format("nothing received for {} ms (NOP-In ping unanswered); the initiator is gone",
                         std::chrono::duration_cast<std::chrono::milliseconds>(idle).count()));
        return;
    }
    if (idle >= limits.nop_interval && _ping_ttt == iscsi::reserved_tag) {
        _ping_ttt = _next_ttt++;
        if (_next_ttt == iscsi::reserved_tag) {
            _next_ttt = 1;
        }
        iscsi::NopIn ping;
        ping.ttt = _ping_ttt;
        ping.itt = iscsi::reserved_tag;
        ping.stat_sn = current_stat_sn(); // a ping does not advance StatSN
        command_window(ping.exp_cmd_sn, ping.max_cmd_sn);
        iscsi::Bhs bhs;
        ping.encode(bhs);
        send(bhs);
    }
    schedule_nop();
}

// ---- Text (SendTargets and full-feature negotiation) -----------------------------------------------

void Connection::text_request(iscsi::ReceivedPdu& pdu) {
    auto request = iscsi::TextRequest::decode(pdu.bhs);
    if (!request) {
        reject(pdu.bhs, iscsi::RejectReason::invalid_pdu_field, request.error().message);
        return;
    }
    Buffer data = pdu.data;
    auto segment = pdu.segment();
    std::vector<uint8_t> bytes(segment.begin(), segment.end());
    iscsi::TextRequest header = *request;
    _session->order(
        header.cmd_sn, header.immediate, [this, alive = _alive, header, bytes = std::move(bytes)] {
            if (!*alive || closing()) {
                return;
            }
            if (header.ttt != iscsi::reserved_tag) {
                // The initiator asks for the next piece of a long answer (RFC 7143 §6.2), or abandons it.
                if (header.ttt != _text_ttt || _text_out_offset >= _text_out.size()) {
                    iscsi::Bhs bhs;
                    iscsi::TextRequest copy = header;
                    copy.encode(bhs);
                    reject(
                        bhs, iscsi::RejectReason::invalid_pdu_field,
                        fmt::format("Text Request continues TTT {:#x}, which no answer in progress carries",
                                    header.ttt));
                    return;
                }
                send_text_chunk(header);
                return;
            }
            _text_out.clear();
            _text_out_offset = 0;
            if (auto appended = _text_in.append(bytes); !appended) {
                _text_in.clear();
                iscsi::Bhs bhs;
                iscsi::TextRequest copy = header;
                copy.encode(bhs);
                reject(bhs, iscsi::RejectReason::protocol_error, appended.error().message);
                return;
            }
            if (header.continue_bit) {
                // More of the request follows: acknowledge with an empty response (RFC 7143 §11.10.2).
                iscsi::TextResponse ack;
                ack.final_bit = false;
                ack.itt = header.itt;
                ack.lun = header.lun;
                ack.ttt = _text_ttt = _next_ttt++;
                number_status(ack);
                iscsi::Bhs bhs;
                ack.encode(bhs);
                send(bhs);
                return;
            }
            auto pairs = iscsi::parse_text(_text_in.take());
            _text_in.clear();
            if (!pairs) {
                iscsi::Bhs bhs;
                iscsi::TextRequest copy = header;
                copy.encode(bhs);
                reject(bhs, iscsi::RejectReason::protocol_error, pairs.error().message);
                return;
            }
            answer_text(header, *pairs);
        });
}

void Connection::answer_text(const iscsi::TextRequest& request, const iscsi::KeyValueList& pairs) {
    iscsi::KeyValueList answer;
    iscsi::KeyValueList negotiated;
    for (const iscsi::KeyValue& pair : pairs) {
        if (pair.key != "SendTargets") {
            negotiated.push_back(pair);
            continue;
        }
        // SendTargets=All lists every target; a name lists that one; empty (normal session) ours.
        std::vector<std::shared_ptr<Target>> listed;
        for (auto& target : _server.targets()) {
            bool wanted = pair.value == "All"  ? true
                          : pair.value.empty() ? (_session->target() == target.get())
                                               : pair.value == target->iqn;
            // An initiator learns only of targets it may log in to.
            if (wanted && _server.may_access(*target, _session->params().initiator_name, _peer)) {
                listed.push_back(target);
            }
        }
        for (const auto& target : listed) {
            answer.push_back({"TargetName", target->iqn});
            for (auto& address : _server.target_addresses(_local, target.get())) {
                answer.push_back({"TargetAddress", address});
            }
        }
    }
    if (!negotiated.empty()) {
        iscsi::Negotiator::Context context;
        context.role = iscsi::Role::target;
        context.leading = false;
        context.login = false;
        context.session = _session->params();
        auto target_config = _session->target() ? _session->target()->config() : nullptr;
        iscsi::NegotiationConfig config = target_config && target_config->negotiation
                                              ? *target_config->negotiation
                                              : _server.live()->negotiation;
        iscsi::Negotiator negotiator(config, context);
        auto received = negotiator.receive(negotiated, iscsi::LoginStage::full_feature, answer);
        if (!received) {
            iscsi::Bhs bhs;
            iscsi::TextRequest copy = request;
            copy.encode(bhs);
            reject(bhs, iscsi::RejectReason::protocol_error, received.error().message);
            return;
        }
        if (negotiator.declared(iscsi::KeyId::max_recv_data_segment_length)) {
            // The initiator declared a new MaxRecvDataSegmentLength (Use: ALL): we send at most that.
            _params.max_send_data_segment_length =
                negotiator.connection_params().max_send_data_segment_length;
        }
    }
    if (_renegotiation.done && !_renegotiation.answering) {
        // The Text Request our negotiation request (AsyncEvent 4) asked for: the keys go in its answer.
        for (const iscsi::KeyValue& kv : _renegotiation.keys) {
            answer.push_back(kv);
        }
        _renegotiation.answering = true;
    }
    _text_out = iscsi::encode_text(answer);
    _text_out_offset = 0;
    _text_ttt = _next_ttt++;
    if (_next_ttt == iscsi::reserved_tag) {
        _next_ttt = 1;
    }
    send_text_chunk(request);
}

void Connection::send_text_chunk(const iscsi::TextRequest& request) {
    size_t max_segment = _params.max_send_data_segment_length;
    size_t left = _text_out.size() - _text_out_offset;
    size_t n = std::min(left, max_segment);
    bool last = n == left;
    iscsi::TextResponse response;
    response.final_bit = last;
    response.continue_bit = !last;
    response.itt = request.itt;
    response.lun = request.lun;
    // A TTT asks the initiator to come back for the rest; the final piece carries none.
    response.ttt = last ? iscsi::reserved_tag : _text_ttt;
    number_status(response);
    response.data_segment_length = uint32_t(n);
    iscsi::Bhs bhs;
    response.encode(bhs);
    send_copy(bhs, {_text_out.data() + _text_out_offset, n});
    _text_out_offset += n;
    if (last) {
        _text_out.clear();
        _text_out_offset = 0;
        if (_renegotiation.answering) {
            apply_renegotiated_keys();
            finish_renegotiation({});
        }
    }
}

// ---- Renegotiation asked by the target (RFC 7143 §11.9.1, AsyncEvent 4) --------------------------

void Connection::request_negotiation(iscsi::KeyValueList keys, std::chrono::seconds wait,
                                     Function<void(Result<void>)> done) {
    if (_phase != Phase::full_feature || _session == nullptr) {
        done(make_error("the connection is not in full feature phase", ENOTCONN));
        return;
    }
    if (_renegotiation.done) {
        done(make_error("a negotiation the target asked for is still in progress on this connection", EBUSY));
        return;
    }
    _renegotiation.keys = std::move(keys);
    _renegotiation.done = std::move(done);
    _renegotiation.answering = false;
    iscsi::AsyncMessage message;
    message.event = iscsi::AsyncEvent::negotiation_request;
    message.parameter3 =
        uint16_t(std::min<int64_t>(wait.count(), 0xffff)); // the initiator's deadline, seconds
    number_status(message);
    iscsi::Bhs bhs;
    message.encode(bhs);
    send(bhs);
    log_info("{}: asked for a negotiation (AsyncEvent 4) of {} key(s)", _name, _renegotiation.keys.size());
    _renegotiation.timer = _reactor.add_timer(wait + std::chrono::seconds(1), [this, wait] {
        _renegotiation.timer = 0;
        if (_renegotiation.done && !_renegotiation.answering) {
            finish_renegotiation(make_error(
                fmt::format("the initiator sent no Text Request within {} s of the negotiation request "
                            "(AsyncEvent 4); it may not support one (open-iscsi drops the session, libiscsi "
                            "ignores it). The new value applies to its next login",
                            wait.count()),
                ETIMEDOUT));
        }
    });
}

void Connection::apply_renegotiated_keys() {
    for (const iscsi::KeyValue& kv : _renegotiation.keys) {
        if (kv.key == iscsi::key_def(iscsi::KeyId::max_recv_data_segment_length).name) {
            auto value = iscsi::parse_number(kv.value);
            if (value) {
                _params.max_recv_data_segment_length = uint32_t(*value);
                apply_reader_limits();
            }
        }
    }
    std::string keys;
    for (const iscsi::KeyValue& kv : _renegotiation.keys) {
        keys += fmt::format("{}{}={}", keys.empty() ? "" : " ", kv.key, kv.value);
    }
    log_info("connection {}: renegotiated {}", _name, keys);
}

void Connection::finish_renegotiation(Result<void> result) {
    if (_renegotiation.timer) {
        _reactor.cancel_timer(_renegotiation.timer);
        _renegotiation.timer = 0;
    }
    auto done = std::move(_renegotiation.done);
    _renegotiation = {};
    if (done) {
        done(std::move(result));
    }
}

// ---- Dropping a connection (RFC 7143 §11.9.1, AsyncEvent 2) ----------------------------------------

void Connection::announce_drop(uint16_t time2wait, uint16_t time2retain, std::chrono::milliseconds grace) {
    if (_phase != Phase::full_feature || _session == nullptr || _drop_timer) {
        return;
    }
    // On this connection itself: the initiator learns which one goes even if it reads Parameter1 no
    // further, and the message cannot overtake what was queued before it.
    iscsi::AsyncMessage message;
    message.event = iscsi::AsyncEvent::drop_connection;
    message.parameter1 = _cid;
    message.parameter2 = time2wait;
    message.parameter3 = time2retain;
    number_status(message);
    iscsi::Bhs bhs;
    message.encode(bhs);
    send(bhs);
    log_info("{}: told the initiator that connection cid {} will be dropped (AsyncEvent 2, Time2Wait {} s, "
             "Time2Retain {} s)",
             _name, _cid, time2wait, time2retain);
    // The initiator may close it first (the ispace initiator does at once); otherwise it goes as failed,
    // and its tasks wait for TASK REASSIGN as with any failed connection.
    _drop_timer = _reactor.add_timer(grace, [this] {
        _drop_timer = 0;
        drop_for_recovery("dropped by the administrator (AsyncEvent 2)");
    });
}

// ---- Logout ----------------------------------------------------------------------------------------

void Connection::logout_request(iscsi::ReceivedPdu& pdu) {
    auto request = iscsi::LogoutRequest::decode(pdu.bhs);
    if (!request) {
        reject(pdu.bhs, iscsi::RejectReason::invalid_pdu_field, request.error().message);
        return;
    }
    iscsi::LogoutRequest header = *request;
    _session->order(header.cmd_sn, header.immediate, [this, alive = _alive, header] {
        if (!*alive || closing() || _session == nullptr) {
            return;
        }
        auto respond = [this, alive, header](iscsi::LogoutResponseCode code) {
            if (!*alive || closing() || _session == nullptr) {
                return;
            }
            iscsi::LogoutResponse response;
            response.response = code;
            response.itt = header.itt;
            number_status(response);
            response.time2wait = _session->params().default_time2wait;
            // What is kept for connection recovery is kept this long (only at ErrorRecoveryLevel 2).
            response.time2retain =
                _session->recovers_connections() ? _session->params().default_time2retain : 0;
            iscsi::Bhs bhs;
            response.encode(bhs);
            send(bhs);
            if (code == iscsi::LogoutResponseCode::closed_successfully &&
                header.reason == iscsi::LogoutReason::remove_connection_for_recovery) {
                if (header.cid == _cid) {
                    // Not a logout of its tasks: the connection closes as failed, and they wait for
                    // TASK REASSIGN on another connection.
                    close_after_flush("removed for recovery");
                }
            } else if (code == iscsi::LogoutResponseCode::closed_successfully &&
                       (header.reason == iscsi::LogoutReason::close_session || header.cid == _cid)) {
                close_logged_out("logged out");
            }
        };
        switch (header.reason) {
        case iscsi::LogoutReason::close_session:
            log_debug("{}: logout (close session)", _session->name());
            // Tasks still running are terminated before the session goes (RFC 7143 §11.14).
            _session->abort_all([this, alive, respond] {
                if (*alive && _session) {
                    _session->close_other_connections(*this, "session logged out");
                }
                respond(iscsi::LogoutResponseCode::closed_successfully);
            });
            return;
        case iscsi::LogoutReason::close_connection:
            if (header.cid != _cid) {
                // One connection may log out another (RFC 7143 §11.14.1).
                respond(_session->close_connection(header.cid, "logged out by another connection")
                            ? iscsi::LogoutResponseCode::closed_successfully
                            : iscsi::LogoutResponseCode::cid_not_found);
                return;
            }
            if (_session->connection_count() > 1) {
                log_debug("{}: logout (close connection cid {})", _session->name(), _cid);
                respond(iscsi::LogoutResponseCode::closed_successfully);
                return;
            }
            // The last connection: closing it closes the session.
            _session->abort_all([respond] { respond(iscsi::LogoutResponseCode::closed_successfully); });
            return;
        case iscsi::LogoutReason::remove_connection_for_recovery: {
            if (!_session->recovers_connections()) {
                respond(iscsi::LogoutResponseCode::recovery_not_supported);
                return;
            }
            // RFC 7143 §11.14.1 reason 2: the connection goes and its tasks wait for TASK REASSIGN.
            if (header.cid != _cid) {
                Connection* other = _session->connection_with_cid(header.cid, this);
                if (other == nullptr) {
                    respond(iscsi::LogoutResponseCode::cid_not_found);
                    return;
                }
                other->drop_for_recovery(fmt::format("removed for recovery by a Logout on CID {}", _cid));
                respond(iscsi::LogoutResponseCode::closed_successfully);
                return;
            }
            log_debug("{}: logout (remove connection cid {} for recovery)", _session->name(), _cid);
            respond(iscsi::LogoutResponseCode::closed_successfully);
            return;
        }
        }
    });
}

} // namespace ispace::iscsi_target
