// One initiator connection: login, the full feature phase and timeout escalation (see connection.hpp).
#include "initiator/connection.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"
#include "iscsi/crc32c.hpp"
#include "scsi_spec/sam.hpp"
#include "scsi_spec/sense.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ispace::initiator {

using namespace std::chrono_literals;
using iscsi::Bhs;
using iscsi::Opcode;
using iscsi::reserved_tag;

namespace {

constexpr size_t staging_size = 64 * 1024;
// Reads shorter than this go through the staging buffer; longer remainders of a data segment are read
// straight into the command's buffer.
constexpr size_t direct_read_threshold = 4096;

} // namespace

// One PDU on its way out: header (+ digest) · data slice of a shared Buffer · padding (+ digest).
class Connection::OutPdu final : public net::OutItem {
public:
    explicit OutPdu(Connection* owner) : _owner(owner) {}
    void on_sent(bool) override {
        data.reset();
        _owner->release_pdu(this);
    }

    std::array<uint8_t, iscsi::bhs_size + iscsi::digest_size> header{};
    Buffer data;
    iscsi::DataTrailer trailer;

private:
    Connection* _owner;
};

Connection::Connection(std::shared_ptr<ConnectionOwner> owner, net::Reactor& reactor, uint16_t cid,
                       uint8_t tag, uint64_t generation)
    : _owner(std::move(owner)), _reactor(reactor), _cid(cid), _generation(generation),
      _options(_owner->options()), _reader(*this), _staging(staging_size), _table(tag) {
    const Timeouts& t = _options.timeouts;
    auto shortest = std::min({t.command, t.task_management, t.login, t.logout});
    if (t.nop_interval.count() > 0) {
        shortest = std::min({shortest, t.nop_interval, t.nop_timeout});
    }
    // A quarter of the shortest limit: a timeout is noticed within 25% of its length.
    _tick_interval = std::clamp<net::Clock::duration>(shortest / 4, 5ms, 1000ms);
    _target_label = _options.target_name.empty() ? "discovery session" : _options.target_name;
}

Connection::~Connection() {
    // Destroy the transport first: its queued PDUs return to _free_pdus.
    _transport.reset();
}

// ---------------------------------------------------------------------------------------------------
// Login

void Connection::login(const std::string& host, uint16_t port, iscsi::InitiatorLoginConfig config,
                       LoginDone done) {
    _state = State::connecting;
    _peer = fmt::format("{}:{}", host, port);
    _login_config = std::move(config);
    _login_done = std::move(done);
    _login_deadline = net::Clock::now() + _options.timeouts.login;
    arm_tick();
    std::weak_ptr<Connection> weak = shared_from_this();
    _owner->transport_factory().connect(_reactor, host, port, *this, _options.timeouts.connect,
                                        [weak](Result<std::unique_ptr<Transport>> t) mutable {
                                            if (auto self = weak.lock()) {
                                                self->on_connected(std::move(t));
                                            }
                                        });
}

void Connection::on_connected(Result<std::unique_ptr<Transport>> transport) {
    if (_state != State::connecting) {
        return; // shut down or timed out meanwhile; the transport closes as it goes out of scope
    }
    if (!transport) {
        finish_login_failure(std::move(transport).error());
        return;
    }
    _transport = std::move(transport.value());
    _peer = _transport->peer();
    _state = State::logging_in;
    _login = std::make_unique<iscsi::InitiatorLogin>(_login_config);
    auto first = _login->start();
    if (!first) {
        finish_login_failure(std::move(first).error());
        return;
    }
    send_login(*first);
}

void Connection::send_login(const iscsi::LoginRequestPdu& pdu) {
    Bhs bhs;
    pdu.header.encode(bhs);
    Buffer data;
    if (!pdu.data.empty()) {
        data = Buffer::allocate(pdu.data.size());
        std::memcpy(data.data(), pdu.data.data(), pdu.data.size());
    }
    send_pdu(bhs, data, 0, uint32_t(pdu.data.size()));
}

void Connection::handle_login_response(iscsi::ReceivedPdu& pdu) {
    if (pdu.bhs.opcode() != Opcode::login_response) {
        finish_login_failure(make_error(fmt::format("{} during login (expected a Login Response)",
                                                    iscsi::opcode_name(pdu.bhs.raw_opcode())),
                                        EPROTO));
        return;
    }
    auto response = iscsi::LoginResponse::decode(pdu.bhs);
    if (!response) {
        finish_login_failure(make_error("bad Login Response: " + response.error().message, EPROTO));
        return;
    }
    auto next = _login->receive(*response, pdu.segment());
    if (next) {
        send_login(*next);
        return;
    }
    LoginOutcome outcome;
    outcome.status = _login->status();
    outcome.during_authentication = _login->authentication_started();
    switch (_login->state()) {
    case iscsi::LoginState::complete: {
        outcome.session = _login->session_params();
        outcome.connection = _login->connection_params();
        outcome.tsih = _login->tsih();
        outcome.exp_cmd_sn = _login->exp_cmd_sn();
        outcome.max_cmd_sn = _login->max_cmd_sn();
        _params = outcome.connection;
        _exp_stat_sn = _login->stat_sn() + 1;
        // Digests and our MaxRecvDataSegmentLength apply from the next PDU (RFC 7143 §6.3: the
        // final Login Response itself is read without them).
        iscsi::ReaderLimits limits;
        limits.max_data_segment_length = _params.max_recv_data_segment_length;
        limits.header_digest = _params.header_digest == iscsi::Digest::crc32c;
        limits.data_digest = _params.data_digest == iscsi::Digest::crc32c;
        _reader.set_limits(limits);
        _transport->set_digests(limits.header_digest, limits.data_digest);
        _state = State::logged_in;
        _login.reset();
        auto done = std::move(_login_done);
        if (done) {
            done(std::move(outcome));
        }
        return;
    }
    case iscsi::LoginState::redirected:
        outcome.redirect = _login->redirect_address();
        [[fallthrough]];
    default: {
        int code = EPROTO;
        switch (outcome.status) {
        case iscsi::LoginStatus::authentication_failure:
            code = EACCES;
            break;
        case iscsi::LoginStatus::authorization_failure:
            code = EPERM;
            break;
        case iscsi::LoginStatus::target_not_found:
        case iscsi::LoginStatus::target_removed:
            code = ENOENT;
            break;
        case iscsi::LoginStatus::target_moved_temporarily:
        case iscsi::LoginStatus::target_moved_permanently:
            code = EAGAIN;
            break;
        case iscsi::LoginStatus::service_unavailable:
        case iscsi::LoginStatus::out_of_resources:
        case iscsi::LoginStatus::too_many_connections:
            code = EBUSY;
            break;
        default:
            break;
        }
        std::string redirect = outcome.redirect;
        _state = State::failed;
        _reader.stop();
        if (_transport) {
            _transport->close(Error{0, "login failed"});
        }
        auto done = std::move(_login_done);
        if (done) {
            outcome.error = make_error(
                fmt::format("login to {} at {}: {}", _target_label, _peer, _login->reason()), code);
            done(std::move(outcome));
        }
        return;
    }
    }
}

void Connection::finish_login_failure(Error error) {
    if (_state != State::connecting && _state != State::logging_in) {
        return;
    }
    _state = State::failed;
    _reader.stop();
    if (_transport) {
        _transport->close(error);
    }
    auto done = std::move(_login_done);
    if (done) {
        LoginOutcome outcome;
        outcome.status = iscsi::LoginStatus::initiator_error;
        if (error.message.rfind("login", 0) != 0 && error.message.rfind("connect", 0) != 0) {
            error.message = fmt::format("login to {} at {}: {}", _target_label, _peer, error.message);
        }
        if (error.code == 0) {
            error.code = EIO;
        }
        outcome.error = std::move(error);
        done(std::move(outcome));
    }
}

void Connection::enter_full_feature(const iscsi::SessionParams& session) {
    if (_state != State::logged_in) {
        return;
    }
    _session = session;
    _erl1 = session.error_recovery_level >= 1;
    if (_erl1) {
        // A header digest error skips the PDU; the DataSN/StatSN gaps it leaves are asked for again.
        iscsi::ReaderLimits limits = _reader.limits();
        limits.skip_bad_headers = true;
        _reader.set_limits(limits);
    }
    _state = State::full_feature;
    _last_rx = net::Clock::now();
    arm_tick();
}

// ---------------------------------------------------------------------------------------------------
// Sending

Connection::OutPdu& Connection::get_pdu() {
    if (_free_pdus.empty()) {
        _pdus.push_back(std::make_unique<OutPdu>(this));
        return *_pdus.back();
    }
    OutPdu* pdu = _free_pdus.back();
    _free_pdus.pop_back();
    return *pdu;
}

void Connection::release_pdu(OutPdu* pdu) {
    _free_pdus.push_back(pdu);
}

void Connection::send_pdu(const Bhs& bhs, const Buffer& data, size_t offset, uint32_t length) {
    if (!_transport) {
        return;
    }
    OutPdu& pdu = get_pdu();
    std::copy(bhs.bytes.begin(), bhs.bytes.end(), pdu.header.begin());
    size_t header_length = iscsi::bhs_size;
    if (_params.header_digest == iscsi::Digest::crc32c) {
        iscsi::store_digest(pdu.header.data() + iscsi::bhs_size,
                            iscsi::crc32c(pdu.header.data(), iscsi::bhs_size));
        header_length += iscsi::digest_size;
    }
    pdu.iovcnt = 0;
    pdu.iov[pdu.iovcnt++] = {pdu.header.data(), header_length};
    if (length > 0) {
        pdu.data = data;
        uint8_t* p = pdu.data.data() + offset;
        pdu.iov[pdu.iovcnt++] = {p, length};
        bool digest = _params.data_digest == iscsi::Digest::crc32c;
        pdu.trailer = iscsi::make_data_trailer(length, digest, digest ? iscsi::crc32c(p, length) : 0);
        if (pdu.trailer.size > 0) {
            pdu.iov[pdu.iovcnt++] = {pdu.trailer.bytes.data(), pdu.trailer.size};
        }
    }
    _transport->send(pdu);
}

void Connection::drain_inbox() {
    if (_state != State::full_feature || !_owner) {
        return; // shutdown() collects what is left
    }
    std::vector<PendingRequest*> tasks;
    _owner->take_inbox(*this, tasks);
    start_tasks(tasks);
}

void Connection::start_tasks(std::span<PendingRequest* const> tasks) {
    for (size_t i = 0; i < tasks.size(); ++i) {
        bool in_table = start_task(tasks[i]);
        if (_state != State::full_feature) {
            // A send failed the connection: the tasks not in the table yet stay with the parked ones, so
            // that shutdown() hands them back with the rest, as never sent here.
            keep_unsent(tasks.subspan(in_table ? i + 1 : i));
            return;
        }
    }
}

void Connection::keep_unsent(std::span<PendingRequest* const> tasks) {
    for (PendingRequest* task : tasks) {
        task->itt = 0; // whatever ITT it had belongs to an older attempt
        _parked.push_back(task);
    }
}

bool Connection::start_task(PendingRequest* task) {
    task->reset_attempt();
    uint32_t itt = _table.allocate(TaskTable::Kind::scsi, task);
    if (itt == reserved_tag) {
        fail(make_error("task table full", ENOSPC));
        return false;
    }
    task->itt = itt;
    task->order = ++_send_order;
    auto timeout = task->request.timeout.count() > 0 ? task->request.timeout : _options.timeouts.command;
    task->deadline = net::Clock::now() + timeout;
    send_command(task);
    return true;
}

// The SCSI Command PDU of `task` with its immediate and unsolicited data: on its first attempt, and again
// (same ITT and CmdSN, RFC 7143 §7.2.1) after its immediate data was lost to a digest error at ERL 1.
void Connection::send_command(PendingRequest* task) {
    const Request& c = task->request;
    uint32_t itt = task->itt;
    task->sent_at = net::Clock::now();

    iscsi::ScsiCommand cmd;
    cmd.read = c.direction == DataDirection::read;
    cmd.write = c.direction == DataDirection::write;
    cmd.attr = scsi::TaskAttribute::simple;
    cmd.lun = scsi::encode_lun(c.lun);
    cmd.itt = itt;
    cmd.expected_data_transfer_length = task->expected_length;
    cmd.cmd_sn = task->cmd_sn;
    cmd.exp_stat_sn = ack_stat_sn();
    std::copy(c.cdb.begin(), c.cdb.begin() + c.cdb_length, cmd.cdb.begin());

    uint32_t immediate = 0;
    uint32_t unsolicited = 0;
    if (cmd.write && task->expected_length > 0) {
        uint32_t first_burst = std::min(task->expected_length, _session.first_burst_length);
        if (_session.immediate_data) {
            immediate = std::min(first_burst, _params.max_send_data_segment_length);
        }
        // InitialR2T=No: everything up to FirstBurstLength goes without waiting for an R2T.
        unsolicited = _session.initial_r2t ? immediate : first_burst;
    }
    cmd.final_bit = unsolicited == immediate;
    cmd.data_segment_length = immediate;
    Bhs bhs;
    cmd.encode(bhs);
    task->unsolicited_sent = unsolicited;
    commands_sent.fetch_add(1, std::memory_order_relaxed);
    send_pdu(bhs, c.data, 0, immediate);
    if (unsolicited > immediate) {
        send_data_out(task, reserved_tag, immediate, unsolicited - immediate);
    }
}

void Connection::send_data_out(PendingRequest* task, uint32_t ttt, uint32_t offset, uint32_t length) {
    uint32_t segment = std::max<uint32_t>(_params.max_send_data_segment_length, 512);
    uint32_t data_sn = 0;
    uint32_t end = offset + length;
    while (offset < end) {
        uint32_t n = std::min(segment, end - offset);
        iscsi::DataOut d;
        d.final_bit = offset + n == end;
        d.data_segment_length = n;
        d.lun = scsi::encode_lun(task->request.lun);
        d.itt = task->itt;
        d.ttt = ttt;
        d.exp_stat_sn = ack_stat_sn();
        d.data_sn = data_sn++;
        d.buffer_offset = offset;
        Bhs bhs;
        d.encode(bhs);
        send_pdu(bhs, task->request.data, offset, n);
        offset += n;
    }
}

void Connection::send_nop_ping() {
    uint32_t itt = _table.allocate(TaskTable::Kind::nop, nullptr);
    if (itt == reserved_tag) {
        return;
    }
    _ping_itt = itt;
    _ping_sent = net::Clock::now();
    iscsi::NopOut nop;
    nop.immediate = true;
    nop.itt = itt;
    nop.ttt = reserved_tag;
    nop.cmd_sn = _owner->immediate_cmd_sn();
    nop.exp_stat_sn = ack_stat_sn();
    Bhs bhs;
    nop.encode(bhs);
    send_pdu(bhs);
}

void Connection::send_tmf(iscsi::TmfFunction function, uint64_t lun, PendingRequest* referenced) {
    uint32_t itt = _table.allocate(TaskTable::Kind::tmf, referenced);
    if (itt == reserved_tag) {
        fail(make_error("task table full", ENOSPC));
        return;
    }
    TaskTable::Entry* e = _table.find(itt);
    e->lun = lun;
    e->aux = uint32_t(function);
    e->order = ++_send_order;
    e->deadline = net::Clock::now() + _options.timeouts.task_management;
    iscsi::TaskMgmtRequest tmf;
    tmf.immediate = true;
    tmf.function = function;
    tmf.lun = scsi::encode_lun(lun);
    tmf.itt = itt;
    tmf.cmd_sn = _owner->immediate_cmd_sn();
    tmf.exp_stat_sn = ack_stat_sn();
    if (referenced != nullptr) {
        tmf.referenced_task_tag = referenced->itt;
        tmf.ref_cmd_sn = referenced->cmd_sn;
        tmf.exp_data_sn = referenced->next_data_sn;
        referenced->aborting = true;
        referenced->abort_itt = itt;
        _owner->counters().aborts++;
        log_info(
            "{}: command (CmdSN {}, ITT {:#x}, CDB {:02x}) timed out on connection {}; sending ABORT TASK",
            _target_label, referenced->cmd_sn, referenced->itt, referenced->request.cdb[0], _cid);
    } else {
        _resets[lun] = itt;
        _owner->counters().lun_resets++;
        log_warn("{}: sending LUN RESET for LUN {} on connection {}", _target_label, lun, _cid);
    }
    Bhs bhs;
    tmf.encode(bhs);
    send_pdu(bhs);
}

void Connection::logout(Function<void(Result<void>)> done, iscsi::LogoutReason reason,
                        std::optional<uint16_t> cid) {
    if (_logout_itt != reserved_tag) {
        _reactor.defer([done = std::move(done)]() mutable {
            done(make_error("a logout is in progress on this connection", EBUSY));
        });
        return;
    }
    if (!usable() || !_transport) {
        _reactor.defer(
            [done = std::move(done)]() mutable { done(make_error("connection not logged in", ENOTCONN)); });
        return;
    }
    _logout_done = std::move(done);
    _logout_itt = _table.allocate(TaskTable::Kind::logout, nullptr);
    _logout_deadline = net::Clock::now() + _options.timeouts.logout;
    iscsi::LogoutRequest req;
    req.immediate = true;
    req.reason = reason;
    req.itt = _logout_itt;
    req.cid = cid.value_or(_cid);
    _logout_reason = reason;
    req.cmd_sn = _owner->immediate_cmd_sn();
    req.exp_stat_sn = ack_stat_sn();
    Bhs bhs;
    req.encode(bhs);
    send_pdu(bhs);
    arm_tick();
}

void Connection::send_text(std::vector<uint8_t> keys, Function<void(Result<std::vector<uint8_t>>)> done) {
    if (!usable() || !_transport) {
        _reactor.defer(
            [done = std::move(done)]() mutable { done(make_error("connection not logged in", ENOTCONN)); });
        return;
    }
    _text_done = std::move(done);
    _text.clear();
    _text_itt = _table.allocate(TaskTable::Kind::text, nullptr);
    _logout_deadline = net::Clock::now() + _options.timeouts.login; // one limit for the whole exchange
    iscsi::TextRequest req;
    req.final_bit = true;
    req.itt = _text_itt;
    req.ttt = reserved_tag;
    req.cmd_sn = _owner->allocate_cmd_sn();
    req.exp_stat_sn = ack_stat_sn();
    req.data_segment_length = uint32_t(keys.size());
    Bhs bhs;
    req.encode(bhs);
    Buffer data = Buffer::allocate(std::max<size_t>(keys.size(), 1));
    if (!keys.empty()) { // an empty Text Request (answering AsyncEvent 4) has no data: keys.data() may be
                         // null
        std::memcpy(data.data(), keys.data(), keys.size());
    }
    send_pdu(bhs, data, 0, uint32_t(keys.size()));
    arm_tick();
}

// ---------------------------------------------------------------------------------------------------
// Receiving

void Connection::on_readable() {
    auto self = shared_from_this(); // a completion may drop the last reference to the session
    while (_transport && !_reader.stopped() && (_state == State::logging_in || usable())) {
        iovec direct = _reader.direct_read();
        Transport::ReadResult r;
        if (direct.iov_len >= direct_read_threshold) {
            r = _transport->read(direct.iov_base, direct.iov_len);
            if (r.bytes > 0) {
                _reader.direct_read_done(r.bytes);
                continue;
            }
        } else {
            r = _transport->read(_staging.data(), _staging.size());
            if (r.bytes > 0) {
                _reader.feed({_staging.data(), r.bytes});
                continue;
            }
        }
        if (r.would_block) {
            return;
        }
        if (r.eof) {
            fail(make_error(fmt::format("connection closed by the target ({})", _peer), ECONNRESET));
        } else {
            fail(make_error(fmt::format("receive from {}: {}", _peer, std::strerror(r.error)), r.error));
        }
        return;
    }
}

void Connection::on_closed(const Error& why) {
    Error e = why;
    if (e.code == 0) {
        e.code = ECONNRESET;
    }
    if (e.message.empty()) {
        e.message = "connection closed";
    }
    fail(make_error(fmt::format("{} ({})", e.message, _peer), e.code));
}

iscsi::DataDestination Connection::data_destination(const Bhs& bhs, std::span<const uint8_t>,
                                                    uint32_t length) {
    _landing = {};
    if (bhs.opcode() != Opcode::data_in) {
        return iscsi::DataDestination::allocate();
    }
    TaskTable::Entry* e = _table.find(bhs.itt());
    if (e != nullptr && e->kind == TaskTable::Kind::scsi &&
        e->task->request.direction == DataDirection::read) {
        PendingRequest* task = e->task;
        uint32_t offset = load_be32(bhs.bytes.data() + 40);
        if (uint64_t(offset) + length <= task->expected_length) {
            if (task->request.observer != nullptr) {
                _landing = {bhs.itt(), task, task->request.data.data() + offset, length, offset};
            }
            return iscsi::DataDestination::into(task->request.data, offset);
        }
    }
    return iscsi::DataDestination::discard(); // pdu_received() decides what that means
}

void Connection::data_landed(const uint8_t* dest, size_t n) {
    Landing& l = _landing;
    // Bytes of another destination (a segment the reader allocated for, a later PDU's) are not the
    // recorded segment's: the pointer range tells.
    auto at = reinterpret_cast<uintptr_t>(dest), start = reinterpret_cast<uintptr_t>(l.dest);
    if (l.task == nullptr || at < start || at - start + n > l.length) {
        return;
    }
    TaskTable::Entry* e = _table.find(l.itt);
    if (e == nullptr || e->kind != TaskTable::Kind::scsi || e->task != l.task) {
        l = {};
        return;
    }
    l.task->request.observer->landed(l.offset + (at - start), dest, n);
}

void Connection::read_error(const iscsi::ReadError& error) {
    if (error.kind == iscsi::ReadErrorKind::header_digest ||
        error.kind == iscsi::ReadErrorKind::data_digest) {
        _owner->counters().digest_errors++;
    }
    if (_erl1 && _state == State::full_feature) {
        if (error.kind == iscsi::ReadErrorKind::header_digest && !error.fatal) {
            // Skipped by its claimed length; the sequence numbers show what it carried.
            log_warn("{}: {}; PDU discarded (ErrorRecoveryLevel 1)", _target_label, error.message);
            return;
        }
        if (error.kind == iscsi::ReadErrorKind::data_digest && error.bhs.opcode() == Opcode::data_in) {
            data_in_lost(error.bhs);
            return;
        }
    }
    // ERL 0 has no way to ask for a PDU again: any framing or digest error ends the connection, and the
    // session's reinstatement re-sends every command that had no status yet.
    fail(make_error(fmt::format("{} from {}: {}",
                                error.kind == iscsi::ReadErrorKind::data_digest     ? "data digest error"
                                : error.kind == iscsi::ReadErrorKind::header_digest ? "header digest error"
                                                                                    : "bad PDU",
                                _peer, error.message),
                    EIO));
}

void Connection::note_stat_sn(uint32_t stat_sn) {
    uint32_t next = stat_sn + 1;
    if (_erl1 && _state == State::full_feature) {
        // Each missing StatSN is kept (and scanned for every ExpStatSN we send) for seconds, so they must
        // stay few: a gap beyond what lost PDUs explain, or gap after gap, is a target counting wrong, and
        // ExpStatSN just moves on (a response really lost is then recovered by the command's timeout).
        uint32_t beg = _exp_stat_sn;
        uint32_t run = stat_sn - beg;
        if (iscsi::sn_gt(stat_sn, beg) && _missing_stat_sns.size() + run <= max_missing_stat_sns) {
            // ERL 1: responses before this one were lost (a header digest error): a Status SNACK asks for
            // them, and ExpStatSN stays before them until they come (or the wait is given up).
            auto now = net::Clock::now();
            for (uint32_t sn = beg; sn != stat_sn; ++sn) {
                _missing_stat_sns.emplace_back(sn, now);
            }
            log_info("{}: Status SNACK: StatSN {} (+{}) missing", _target_label, beg, run);
            send_snack(iscsi::SnackType::status, reserved_tag, 0, reserved_tag, beg, run);
        } else if (iscsi::sn_lt(stat_sn, _exp_stat_sn)) {
            std::erase_if(_missing_stat_sns, [&](const auto& entry) { return entry.first == stat_sn; });
        }
    }
    if (iscsi::sn_gt(next, _exp_stat_sn)) {
        _exp_stat_sn = next;
    }
}

void Connection::note_window(uint32_t exp_cmd_sn, uint32_t max_cmd_sn) {
    _window_at = net::Clock::now();
    if (_window_seen && exp_cmd_sn == _last_exp_cmd_sn && max_cmd_sn == _last_max_cmd_sn) {
        return;
    }
    _window_seen = true;
    _last_exp_cmd_sn = exp_cmd_sn;
    _last_max_cmd_sn = max_cmd_sn;
    _owner->window_update(*this, exp_cmd_sn, max_cmd_sn);
}

void Connection::pdu_received(iscsi::ReceivedPdu&& pdu) {
    _last_rx = net::Clock::now();
    if (_state == State::logging_in) {
        handle_login_response(pdu);
        return;
    }
    if (!usable()) {
        return;
    }
    switch (pdu.bhs.opcode()) {
    case Opcode::data_in:
        handle_data_in(pdu);
        break;
    case Opcode::scsi_response:
        handle_scsi_response(pdu);
        break;
    case Opcode::r2t:
        handle_r2t(pdu.bhs);
        break;
    case Opcode::nop_in:
        handle_nop_in(pdu);
        break;
    case Opcode::task_mgmt_response:
        handle_tmf_response(pdu.bhs);
        break;
    case Opcode::text_response:
        handle_text_response(pdu);
        break;
    case Opcode::logout_response:
        handle_logout_response(pdu.bhs);
        break;
    case Opcode::async_message:
        handle_async(pdu);
        break;
    case Opcode::reject:
        handle_reject(pdu);
        break;
    default:
        fail(make_error(fmt::format("unexpected {} from {}", iscsi::opcode_name(pdu.bhs.raw_opcode()), _peer),
                        EPROTO));
        break;
    }
}

void Connection::handle_data_in(iscsi::ReceivedPdu& pdu) {
    auto d = iscsi::DataIn::decode(pdu.bhs);
    if (!d) {
        fail(make_error("bad Data-In: " + d.error().message, EPROTO));
        return;
    }
    note_window(d->exp_cmd_sn, d->max_cmd_sn);
    TaskTable::Entry* e = _table.find(d->itt);
    if (e == nullptr || e->kind != TaskTable::Kind::scsi) {
        // A late PDU of a task that was aborted: its ITT generation moved on. Drop it.
        log_debug("{}: Data-In for unknown ITT {:#x} dropped", _target_label, d->itt);
        if (d->status_present) {
            note_stat_sn(d->stat_sn);
        }
        return;
    }
    PendingRequest* task = e->task;
    if (task->request.direction != DataDirection::read && d->data_segment_length > 0) {
        fail(make_error(fmt::format("Data-In for a command that reads nothing (ITT {:#x})", d->itt), EPROTO));
        return;
    }
    if (pdu.discarded && d->data_segment_length > 0) {
        fail(make_error(fmt::format("Data-In at offset {} length {} beyond the expected {} bytes (ITT {:#x})",
                                    d->buffer_offset, d->data_segment_length, task->expected_length, d->itt),
                        EPROTO));
        return;
    }
    if (d->data_sn != task->next_data_sn) {
        if (!_erl1) {
            fail(make_error(fmt::format("Data-In DataSN {} where {} was expected (ITT {:#x})", d->data_sn,
                                        task->next_data_sn, d->itt),
                            EPROTO));
            return;
        }
        if (iscsi::sn_gt(d->data_sn, task->next_data_sn)) {
            // ERL 1: the ones before it were lost (a header digest error): ask for them.
            if (!request_data(task, task->next_data_sn, d->data_sn - task->next_data_sn)) {
                return;
            }
            task->next_data_sn = d->data_sn;
        } else {
            // An older DataSN: one we asked for again, or a duplicate (ignored).
            auto& missing = task->missing_data_sns;
            auto it = std::find(missing.begin(), missing.end(), d->data_sn);
            if (it == missing.end()) {
                return;
            }
            missing.erase(it);
            task->data_received += d->data_segment_length;
            if (d->status_present) {
                note_stat_sn(d->stat_sn);
            }
            if (d->status_present) {
                hold_status(task, *d);
            }
            if (task->held_status && missing.empty()) {
                Response result = std::move(*task->held_status);
                task->held_status.reset();
                finish_read(task, std::move(result), task->held_stat_sn);
            }
            return;
        }
    }
    ++task->next_data_sn;
    task->data_received += d->data_segment_length;
    if (d->acknowledge && _erl1) {
        task->data_ack_ttt = d->ttt;
    }
    if (!d->status_present) {
        return;
    }
    // Phase-collapsed status (RFC 7143 §11.7.4): the last Data-In carries the status.
    note_stat_sn(d->stat_sn);
    Response result;
    result.status = d->status;
    result.residual = d->residual_count;
    result.underflow = d->underflow;
    result.overflow = d->overflow;
    if (!task->missing_data_sns.empty()) {
        // ERL 1: data asked for again has not come yet; the status waits for it, unacknowledged.
        task->held_status = std::move(result);
        task->held_stat_sn = d->stat_sn;
        _held_stat_sns.push_back(d->stat_sn);
        return;
    }
    finish_read(task, std::move(result), d->stat_sn);
}

void Connection::handle_scsi_response(iscsi::ReceivedPdu& pdu) {
    auto r = iscsi::ScsiResponse::decode(pdu.bhs);
    if (!r) {
        fail(make_error("bad SCSI Response: " + r.error().message, EPROTO));
        return;
    }
    note_stat_sn(r->stat_sn);
    note_window(r->exp_cmd_sn, r->max_cmd_sn);
    TaskTable::Entry* e = _table.find(r->itt);
    if (e == nullptr || e->kind != TaskTable::Kind::scsi) {
        log_debug("{}: SCSI Response for unknown ITT {:#x} dropped", _target_label, r->itt);
        return;
    }
    PendingRequest* task = e->task;
    if (r->response != uint8_t(iscsi::ScsiResponseCode::command_completed)) {
        _table.release(task->itt);
        if (task->abort_itt != 0) {
            if (TaskTable::Entry* tmf = _table.find(task->abort_itt)) {
                tmf->task = nullptr;
            }
        }
        retry_or_fail(task, "the target reported an iSCSI target failure");
        return;
    }
    Response result;
    result.status = r->status;
    result.residual = r->residual_count;
    result.underflow = r->underflow;
    result.overflow = r->overflow;
    result.data_received = task->data_received;
    auto seg = pdu.segment();
    if (seg.size() >= 2) {
        size_t sense_length = std::min<size_t>(load_be16(seg.data()), seg.size() - 2);
        result.sense.assign(seg.begin() + 2, seg.begin() + 2 + ptrdiff_t(sense_length));
    }
    finish_task(task, std::move(result));
}

void Connection::handle_r2t(const Bhs& bhs) {
    auto r = iscsi::R2t::decode(bhs);
    if (!r) {
        fail(make_error("bad R2T: " + r.error().message, EPROTO));
        return;
    }
    note_window(r->exp_cmd_sn, r->max_cmd_sn);
    TaskTable::Entry* e = _table.find(r->itt);
    if (e == nullptr || e->kind != TaskTable::Kind::scsi) {
        return; // an R2T for a task we already gave up on
    }
    PendingRequest* task = e->task;
    if (task->request.direction != DataDirection::write ||
        uint64_t(r->buffer_offset) + r->desired_data_transfer_length > task->expected_length) {
        fail(make_error(fmt::format("R2T for offset {} length {} outside the {} bytes of ITT {:#x}",
                                    r->buffer_offset, r->desired_data_transfer_length, task->expected_length,
                                    r->itt),
                        EPROTO));
        return;
    }
    if (task->reassigned) {
        // The first R2T after TASK REASSIGN: R2Ts the failed connection did not deliver are not asked
        // for; the target asks afresh for what it lacks, with R2TSNs that go on from its own count.
        task->reassigned = false;
        task->next_r2t_sn = r->r2t_sn;
    }
    if (_erl1) {
        if (iscsi::sn_gt(r->r2t_sn, task->next_r2t_sn)) {
            // R2Ts before this one were lost (a header digest error): an R2T SNACK asks for them.
            if (++task->snacks > max_snacks_per_command) {
                fail(make_error(fmt::format("ITT {:#x}: R2Ts still missing after {} SNACKs", r->itt,
                                            max_snacks_per_command),
                                EIO));
                return;
            }
            send_snack(iscsi::SnackType::data_r2t, r->itt, scsi::encode_lun(task->request.lun), reserved_tag,
                       task->next_r2t_sn, r->r2t_sn - task->next_r2t_sn);
        }
        if (iscsi::sn_ge(r->r2t_sn, task->next_r2t_sn)) {
            task->next_r2t_sn = r->r2t_sn + 1;
        }
    }
    if (task->aborting || task->awaiting_reset) {
        return;
    }
    send_data_out(task, r->ttt, r->buffer_offset, r->desired_data_transfer_length);
}

void Connection::handle_nop_in(iscsi::ReceivedPdu& pdu) {
    auto n = iscsi::NopIn::decode(pdu.bhs);
    if (!n) {
        fail(make_error("bad NOP-In: " + n.error().message, EPROTO));
        return;
    }
    note_window(n->exp_cmd_sn, n->max_cmd_sn);
    if (n->ttt != reserved_tag) {
        // The target pings us: answer with its TTT and echo the ping data (RFC 7143 §11.18.6).
        iscsi::NopOut out;
        out.immediate = true;
        out.lun = n->lun;
        out.itt = reserved_tag;
        out.ttt = n->ttt;
        out.cmd_sn = _owner->immediate_cmd_sn();
        out.exp_stat_sn = ack_stat_sn();
        auto seg = pdu.segment();
        uint32_t length = uint32_t(std::min<size_t>(seg.size(), _params.max_send_data_segment_length));
        out.data_segment_length = length;
        Bhs bhs;
        out.encode(bhs);
        send_pdu(bhs, pdu.data, pdu.data_offset, length);
        return;
    }
    note_stat_sn(n->stat_sn);
    if (n->itt != reserved_tag) {
        TaskTable::Entry* e = _table.find(n->itt);
        if (e != nullptr && e->kind == TaskTable::Kind::nop) {
            _table.release(n->itt);
            if (_ping_itt == n->itt) {
                _ping_itt = reserved_tag;
            }
        }
    }
}

void Connection::handle_tmf_response(const Bhs& bhs) {
    auto r = iscsi::TaskMgmtResponse::decode(bhs);
    if (!r) {
        fail(make_error("bad Task Management Response: " + r.error().message, EPROTO));
        return;
    }
    note_stat_sn(r->stat_sn);
    note_window(r->exp_cmd_sn, r->max_cmd_sn);
    TaskTable::Entry* e = _table.find(r->itt);
    if (e == nullptr || e->kind != TaskTable::Kind::tmf) {
        return;
    }
    auto function = iscsi::TmfFunction(e->aux);
    PendingRequest* task = e->task;
    uint64_t lun = e->lun;
    uint64_t order = e->order;
    _table.release(r->itt);
    if (function == iscsi::TmfFunction::task_reassign) {
        if (task != nullptr) {
            reassign_answered(task, r->response);
        }
        return;
    }
    if (function == iscsi::TmfFunction::abort_task) {
        if (task == nullptr) {
            return; // its status arrived meanwhile
        }
        task->abort_itt = 0;
        if (r->response == iscsi::TmfResponse::function_complete ||
            r->response == iscsi::TmfResponse::task_does_not_exist) {
            // The target will not run it (any more): it completed or never arrived, or is aborted now.
            // Either way no status will come; send it again.
            _table.release(task->itt);
            retry_or_fail(task, "timed out");
            return;
        }
        log_warn("{}: ABORT TASK for ITT {:#x} answered with response {}; resetting LUN {}", _target_label,
                 task->itt, unsigned(r->response), lun);
        task->aborting = false;
        task->awaiting_reset = true;
        start_lun_reset(lun);
        return;
    }
    if (function == iscsi::TmfFunction::lun_reset) {
        _resets.erase(lun);
        if (r->response != iscsi::TmfResponse::function_complete) {
            fail(make_error(
                fmt::format("LUN RESET of LUN {} failed (response {})", lun, unsigned(r->response)), EIO));
            return;
        }
        // Every task of the LUN sent before the reset is gone at the target: send them again.
        std::vector<PendingRequest*> terminated;
        _table.for_each([&](uint32_t itt, TaskTable::Entry& entry) {
            if (entry.kind == TaskTable::Kind::scsi && entry.task->request.lun == lun &&
                entry.task->order < order) {
                terminated.push_back(entry.task);
            } else if (entry.kind == TaskTable::Kind::tmf && entry.lun == lun && entry.order < order) {
                _table.release(itt); // aborts overtaken by the reset
            }
        });
        std::sort(terminated.begin(), terminated.end(),
                  [](PendingRequest* a, PendingRequest* b) { return a->seq < b->seq; });
        for (PendingRequest* t : terminated) {
            _table.release(t->itt);
            retry_or_fail(t, "timed out (LUN reset)");
        }
    }
}

void Connection::handle_text_response(iscsi::ReceivedPdu& pdu) {
    auto r = iscsi::TextResponse::decode(pdu.bhs);
    if (!r) {
        fail(make_error("bad Text Response: " + r.error().message, EPROTO));
        return;
    }
    note_stat_sn(r->stat_sn);
    note_window(r->exp_cmd_sn, r->max_cmd_sn);
    if (r->itt != _text_itt || _text_itt == reserved_tag) {
        return;
    }
    if (auto ok = _text.append(pdu.segment()); !ok) {
        fail(make_error("Text Response: " + ok.error().message, EPROTO));
        return;
    }
    if (!r->final_bit) {
        // More to come: ask for it with an empty Text Request carrying the target's TTT.
        iscsi::TextRequest req;
        req.final_bit = true;
        req.itt = _text_itt;
        req.ttt = r->ttt;
        req.cmd_sn = _owner->allocate_cmd_sn();
        req.exp_stat_sn = ack_stat_sn();
        Bhs bhs;
        req.encode(bhs);
        send_pdu(bhs);
        return;
    }
    _table.release(_text_itt);
    _text_itt = reserved_tag;
    auto done = std::move(_text_done);
    if (done) {
        done(_text.take());
    }
}

void Connection::handle_logout_response(const Bhs& bhs) {
    auto r = iscsi::LogoutResponse::decode(bhs);
    if (!r) {
        fail(make_error("bad Logout Response: " + r.error().message, EPROTO));
        return;
    }
    note_stat_sn(r->stat_sn);
    if (r->itt != _logout_itt || _logout_itt == reserved_tag) {
        return;
    }
    _table.release(_logout_itt);
    _logout_itt = reserved_tag;
    bool for_recovery = _logout_reason == iscsi::LogoutReason::remove_connection_for_recovery;
    // A logout for recovery removes another connection: this one goes on.
    _logged_out = !for_recovery && r->response == iscsi::LogoutResponseCode::closed_successfully;
    auto done = std::move(_logout_done);
    if (!done) {
        return;
    }
    if (r->response == iscsi::LogoutResponseCode::closed_successfully ||
        (for_recovery && r->response == iscsi::LogoutResponseCode::cid_not_found)) {
        done(Result<void>{});
    } else {
        done(make_error(fmt::format("logout refused (response {})", unsigned(r->response)), EIO));
    }
}

void Connection::handle_async(iscsi::ReceivedPdu& pdu) {
    auto a = iscsi::AsyncMessage::decode(pdu.bhs);
    if (!a) {
        fail(make_error("bad Async Message: " + a.error().message, EPROTO));
        return;
    }
    note_stat_sn(a->stat_sn);
    note_window(a->exp_cmd_sn, a->max_cmd_sn);
    switch (a->event) {
    case iscsi::AsyncEvent::scsi_async_event:
        log_info(
            "{}: asynchronous event from the target: {}", _target_label,
            describe_sense(pdu.segment().size() > 2 ? pdu.segment().subspan(2) : std::span<const uint8_t>{}));
        break;
    case iscsi::AsyncEvent::negotiation_request:
        answer_negotiation_request(a->parameter3);
        break;
    case iscsi::AsyncEvent::drop_connection:
    case iscsi::AsyncEvent::drop_all_connections:
        if (_session.error_recovery_level >= 2) {
            // RFC 7143 §11.9.1: Parameter2 is Time2Wait, Parameter3 Time2Retain. With tasks retained the
            // connection is recovered after Time2Wait; without, only a new session brings them back.
            _requested_time2wait.store(a->parameter2, std::memory_order_release);
            if (a->parameter3 == 0) {
                _reassign_refused.store(true, std::memory_order_release);
            }
            fail(make_error(fmt::format("the target dropped the connection (async event {}, Time2Wait {} s, "
                                        "Time2Retain {} s)",
                                        unsigned(a->event), a->parameter2, a->parameter3),
                            ECONNRESET));
            break;
        }
        [[fallthrough]];
    case iscsi::AsyncEvent::logout_request:
        // The target is going away or wants this connection gone. At ERL 0 the way back is a new
        // session: treat it as a connection loss and let the session reinstate itself (retrying with
        // back-off while the target restarts).
        fail(make_error(fmt::format("the target asked us to log out (async event {})", unsigned(a->event)),
                        ECONNRESET));
        break;
    default:
        break;
    }
}

void Connection::answer_negotiation_request(uint16_t deadline_seconds) {
    // RFC 7143 §11.9.1: the initiator MUST answer with a Text Request (it may be empty) within
    // Parameter3 seconds, "unless a Text Request is already pending on the connection". Empty, since we
    // want nothing changed: the target's answer carries what it declares anew.
    if (_text_itt != reserved_tag) {
        log_debug("{}: the target asked for a negotiation while a Text Request is pending; that one answers",
                  _target_label);
        return;
    }
    log_info("{}: the target asks for a negotiation (within {} s); sending an empty Text Request",
             _target_label, deadline_seconds);
    auto self = shared_from_this();
    send_text({}, [this, self](Result<std::vector<uint8_t>> text) {
        if (!text) {
            log_warn("{}: the negotiation the target asked for failed: {}", _target_label,
                     text.error().message);
            return;
        }
        auto pairs = iscsi::parse_text(*text);
        if (!pairs) {
            fail(make_error("Text Response to a negotiation request: " + pairs.error().message, EPROTO));
            return;
        }
        apply_target_declarations(*pairs);
    });
}

void Connection::apply_target_declarations(const iscsi::KeyValueList& pairs) {
    for (const iscsi::KeyValue& kv : pairs) {
        const iscsi::KeyDef* def = iscsi::find_key(kv.key);
        if (def && def->id == iscsi::KeyId::max_recv_data_segment_length) {
            auto value = iscsi::parse_number(kv.value);
            if (!value || *value < def->min || *value > def->max) {
                fail(make_error(fmt::format("the target declared {}={}, outside {}..{}", kv.key, kv.value,
                                            def->min, def->max),
                                EPROTO));
                return;
            }
            // What we send from now on: immediate data, unsolicited and solicited Data-Out.
            _params.max_send_data_segment_length = uint32_t(*value);
            log_info("{}: the target now receives data segments of at most {} bytes", _target_label, *value);
        } else if (def && def->id == iscsi::KeyId::target_alias) {
            log_info("{}: the target's alias is now '{}'", _target_label, kv.value);
        } else {
            log_warn("{}: ignoring {}={} in the target's answer to its negotiation request", _target_label,
                     kv.key, kv.value);
        }
    }
}

void Connection::handle_reject(iscsi::ReceivedPdu& pdu) {
    auto r = iscsi::Reject::decode(pdu.bhs);
    if (!r) {
        fail(make_error("bad Reject: " + r.error().message, EPROTO));
        return;
    }
    note_stat_sn(r->stat_sn);
    note_window(r->exp_cmd_sn, r->max_cmd_sn);
    auto seg = pdu.segment();
    if (seg.size() < iscsi::bhs_size) {
        fail(make_error("Reject without the rejected header", EPROTO));
        return;
    }
    Bhs rejected;
    std::copy(seg.begin(), seg.begin() + iscsi::bhs_size, rejected.bytes.begin());
    std::string what =
        fmt::format("the target rejected {} (reason {:#x})", iscsi::describe(rejected), unsigned(r->reason));
    if (r->reason == iscsi::RejectReason::data_digest_error) {
        _owner->counters().digest_errors++;
    }
    if (_erl1 && recover_reject(*r, rejected)) {
        return;
    }
    TaskTable::Entry* e = _table.find(rejected.itt());
    bool command =
        rejected.opcode() == Opcode::scsi_command && e != nullptr && e->kind == TaskTable::Kind::scsi;
    if (command && r->reason != iscsi::RejectReason::data_digest_error &&
        r->reason != iscsi::RejectReason::waiting_for_logout) {
        // The command itself is unacceptable to the target: sending it again would not help.
        PendingRequest* task = e->task;
        _table.release(task->itt);
        if (task->abort_itt != 0) {
            if (TaskTable::Entry* tmf = _table.find(task->abort_itt)) {
                tmf->task = nullptr;
            }
        }
        Response result;
        result.error = make_error(what, EPROTO);
        _owner->task_done(*this, task, std::move(result));
        return;
    }
    // A PDU lost to a digest error, or a rejected Data-Out/NOP/TMF: at ERL 0 the task state can no
    // longer be trusted. Drop the connection; reinstatement re-sends what has no status.
    fail(make_error(what, EIO));
}

// ---------------------------------------------------------------------------------------------------
// Completion, retries and escalation

void Connection::finish_task(PendingRequest* task, Response&& result) {
    _table.release(task->itt);
    if (task->abort_itt != 0) {
        if (TaskTable::Entry* tmf = _table.find(task->abort_itt)) {
            tmf->task = nullptr; // the status won the race with our ABORT TASK
        }
        task->abort_itt = 0;
    }
    if (!result.error && task->status_retries < _options.unit_attention_retries) {
        auto status = scsi::Status(result.status);
        auto sense = status == scsi::Status::check_condition ? scsi::parse_sense(result.sense) : std::nullopt;
        if (sense && sense->key == scsi::SenseKey::unit_attention) {
            // The command did not run; a UA reports an event (new session, reset, resize), once.
            log_debug("{}: unit attention ({}), sending the command again", _target_label,
                      scsi::describe_sense(*sense));
            // Counted apart from retries: every new I_T nexus gets one (SPC-5 §6.2: power on or
            // reset occurred), so counting it as a retry made every healthy run report one.
            ++task->status_retries;
            _owner->counters().unit_attentions++;
            _owner->task_retry(*this, task, 0ms);
            return;
        }
        if (sense && sense->key == scsi::SenseKey::aborted_command &&
            task->request.direction != DataDirection::none && task->retries < _options.command_retries) {
            // The target ended the command for a transport reason (a Data-Out sequence broken by a lost
            // PDU, at ERL 0): nothing reached the medium that a second attempt would not write again.
            // The Linux SCSI mid layer retries ABORTED COMMAND too, a bounded number of times.
            log_warn("{}: command {:02x} ended with {}; sending it again", _target_label,
                     task->request.cdb[0], scsi::describe_sense(*sense));
            ++task->retries;
            _owner->counters().retries++;
            _owner->task_retry(*this, task, 0ms);
            return;
        }
        if (status == scsi::Status::busy || status == scsi::Status::task_set_full) {
            auto delay = std::min<std::chrono::milliseconds>(
                10ms * (1u << std::min(task->status_retries, 6u)), 1000ms);
            ++task->status_retries;
            _owner->counters().retries++;
            _owner->task_retry(*this, task, delay);
            return;
        }
    }
    _owner->task_done(*this, task, std::move(result));
}

void Connection::retry_or_fail(PendingRequest* task, const char* why) {
    if (task->retries >= _options.command_retries) {
        Response result;
        result.error = make_error(fmt::format("{}: command {:02x} {} after {} retries", _target_label,
                                              task->request.cdb[0], why, task->retries),
                                  ETIMEDOUT);
        _owner->task_done(*this, task, std::move(result));
        return;
    }
    ++task->retries;
    _owner->counters().retries++;
    _owner->task_retry(*this, task, 0ms);
}

void Connection::start_lun_reset(uint64_t lun) {
    if (_resets.contains(lun)) {
        return; // one reset per LUN at a time; it covers every task of the LUN sent before it
    }
    send_tmf(iscsi::TmfFunction::lun_reset, lun, nullptr);
}

void Connection::arm_tick() {
    if (_tick_timer != 0) {
        return;
    }
    std::weak_ptr<Connection> weak = shared_from_this();
    _tick_timer = _reactor.add_timer(_tick_interval, [weak] {
        if (auto self = weak.lock()) {
            self->_tick_timer = 0;
            self->tick();
        }
    });
}

void Connection::tick() {
    auto now = net::Clock::now();
    if (_state == State::connecting || _state == State::logging_in) {
        if (now >= _login_deadline) {
            finish_login_failure(
                make_error(fmt::format("no login within {} ms", _options.timeouts.login.count()), ETIMEDOUT));
            return;
        }
        arm_tick();
        return;
    }
    if (!usable()) {
        return;
    }
    auto self = shared_from_this();
    if ((_logout_itt != reserved_tag || _text_itt != reserved_tag) && now >= _logout_deadline) {
        if (_logout_itt != reserved_tag) {
            auto done = std::move(_logout_done);
            _table.release(_logout_itt);
            _logout_itt = reserved_tag;
            if (done) {
                done(make_error("no Logout Response in time", ETIMEDOUT));
            }
        }
        if (_text_itt != reserved_tag) {
            auto done = std::move(_text_done);
            _table.release(_text_itt);
            _text_itt = reserved_tag;
            if (done) {
                done(make_error("no Text Response in time", ETIMEDOUT));
            }
        }
        if (!usable()) {
            return;
        }
    }
    if (_state == State::full_feature) {
        expire_missing(now);
        resend_lost_commands(now);
        if (_state != State::full_feature) {
            return;
        }
        std::vector<PendingRequest*> expired;
        std::vector<uint32_t> expired_tmfs;
        _table.for_each([&](uint32_t itt, TaskTable::Entry& e) {
            if (e.kind == TaskTable::Kind::scsi) {
                PendingRequest* t = e.task;
                if (!t->aborting && !t->awaiting_reset && now >= t->deadline) {
                    expired.push_back(t);
                }
            } else if (e.kind == TaskTable::Kind::tmf && now >= e.deadline) {
                expired_tmfs.push_back(itt);
            }
        });
        for (PendingRequest* t : expired) {
            send_tmf(iscsi::TmfFunction::abort_task, t->request.lun, t);
            if (_state != State::full_feature) {
                return;
            }
        }
        for (uint32_t itt : expired_tmfs) {
            TaskTable::Entry* e = _table.find(itt);
            if (e == nullptr) {
                continue;
            }
            auto function = iscsi::TmfFunction(e->aux);
            PendingRequest* task = e->task;
            uint64_t lun = e->lun;
            _table.release(itt);
            if (function == iscsi::TmfFunction::task_reassign) {
                _reassign_refused.store(true, std::memory_order_release);
                fail(make_error(fmt::format("no answer to TASK REASSIGN within {} ms",
                                            _options.timeouts.task_management.count()),
                                ETIMEDOUT));
                return;
            }
            if (function == iscsi::TmfFunction::lun_reset) {
                _resets.erase(lun);
                fail(make_error(fmt::format("no answer to LUN RESET of LUN {} within {} ms", lun,
                                            _options.timeouts.task_management.count()),
                                ETIMEDOUT));
                return;
            }
            if (task != nullptr) {
                log_warn("{}: no answer to ABORT TASK for ITT {:#x}; resetting LUN {}", _target_label,
                         task->itt, lun);
                task->abort_itt = 0;
                task->aborting = false;
                task->awaiting_reset = true;
                start_lun_reset(lun);
                if (_state != State::full_feature) {
                    return;
                }
            }
        }
        // Keepalive: ping after a silence, give up when the ping goes unanswered.
        if (_options.timeouts.nop_interval.count() > 0) {
            if (_ping_itt != reserved_tag) {
                if (now - _ping_sent >= _options.timeouts.nop_timeout) {
                    fail(make_error(fmt::format("no answer to NOP-Out within {} ms",
                                                _options.timeouts.nop_timeout.count()),
                                    ETIMEDOUT));
                    return;
                }
            } else if (now - _last_rx >= _options.timeouts.nop_interval) {
                send_nop_ping();
            }
        }
    }
    arm_tick();
}

void Connection::fail(Error why) {
    if (_state == State::failed || _state == State::closed || _state == State::idle) {
        return;
    }
    if (_state == State::connecting || _state == State::logging_in) {
        finish_login_failure(std::move(why));
        return;
    }
    _state = State::failed;
    _reader.stop();
    if (_tick_timer != 0) {
        _reactor.cancel_timer(_tick_timer);
        _tick_timer = 0;
    }
    if (_logged_out) {
        log_debug("{}: connection {} to {} closed after logout", _target_label, _cid, _peer);
    } else {
        log_warn("{}: connection {} to {} lost: {}", _target_label, _cid, _peer, why.message);
    }
    if (_transport) {
        _transport->close(why);
    }
    if (auto done = std::move(_logout_done)) {
        done(Error(why));
    }
    if (auto done = std::move(_text_done)) {
        done(Error(why));
    }
    if (_owner) {
        _owner->connection_failed(*this, why);
    }
}

std::vector<PendingRequest*> Connection::shutdown(const Error& why) {
    _state = State::closed;
    if (_tick_timer != 0) {
        _reactor.cancel_timer(_tick_timer);
        _tick_timer = 0;
    }
    _login_done = nullptr;
    _logout_done = nullptr;
    _text_done = nullptr;
    _reader.stop();
    _transport.reset(); // closes the socket; queued PDUs come back to the pool
    std::vector<PendingRequest*> tasks = std::move(_parked);
    _parked.clear();
    _table.for_each([&](uint32_t itt, TaskTable::Entry& e) {
        if (e.kind == TaskTable::Kind::scsi) {
            tasks.push_back(e.task);
        }
        _table.release(itt);
    });
    if (_owner) {
        size_t sent = tasks.size();
        _owner->take_inbox(*this, tasks);
        for (size_t i = sent; i < tasks.size(); ++i) {
            tasks[i]->itt = 0; // never went out here: whatever ITT it had belongs to an older attempt
        }
        _owner.reset();
    }
    (void)why;
    return tasks;
}

} // namespace ispace::initiator
