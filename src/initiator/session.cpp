// Session core: command queue, CmdSN window, dispatch over connections, login and reinstatement.
#include "initiator/session.hpp"

#include "initiator/internals.hpp"

#include "common/log.hpp"
#include "iscsi/chap.hpp"
#include "scsi_spec/sam.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <future>

namespace ispace::initiator {

using namespace std::chrono_literals;

namespace {
// The longest Time2Wait RFC 7143 allows (§13.19, and Parameter2 of an Asynchronous Message).
constexpr int64_t max_time2wait_s = 3600;
} // namespace

// ---------------------------------------------------------------------------------------------------
// CHAP

iscsi::ChapInitiatorConfig chap_config(const ChapCredentials& c) {
    iscsi::ChapInitiatorConfig cfg;
    cfg.credentials = {c.user, c.secret};
    if (c.md5_only) {
        cfg.algorithms = {iscsi::ChapAlgorithm::md5};
    }
    if (c.mutual()) {
        cfg.target = iscsi::ChapCredentials{c.target_user, c.target_secret};
    }
    return cfg;
}

AuthenticatorFactory default_authenticator_factory() {
    return [](std::string_view method, const ChapCredentials& c) -> std::unique_ptr<iscsi::Authenticator> {
        if (method != iscsi::auth_method_chap) {
            return nullptr;
        }
        return iscsi::make_chap_initiator_authenticator(chap_config(c));
    };
}

std::vector<iscsi::Digest> offered_digests(DigestMode mode) {
    switch (mode) {
    case DigestMode::crc32c:
        return {iscsi::Digest::crc32c};
    case DigestMode::crc32c_or_none:
        return {iscsi::Digest::crc32c, iscsi::Digest::none};
    default:
        return {iscsi::Digest::none};
    }
}

Result<void> check_credentials(const ChapCredentials& c) {
    if (c.empty()) {
        return {};
    }
    if (auto r = iscsi::validate(chap_config(c)); !r) {
        return make_error("CHAP: " + r.error().message, EINVAL);
    }
    return {};
}

// ---------------------------------------------------------------------------------------------------
// InitiatorCore

InitiatorCore::InitiatorCore(InitiatorOptions options) : _options(std::move(options)) {
    if (_options.initiator_name.empty()) {
        _options.initiator_name = std::string(default_initiator_name);
    }
    if (_options.internals && _options.internals->transport) {
        _transport = _options.internals->transport;
    } else {
        _transport = make_tcp_transport_factory();
    }
    if (!_options.authenticator) {
        _options.authenticator = default_authenticator_factory();
    }
    if (_options.internals && _options.internals->reactors) {
        _reactors = _options.internals->reactors; // a runtime's: running, and not ours to stop
    } else {
        unsigned n =
            _options.threads != 0 ? _options.threads : std::max(1u, std::thread::hardware_concurrency());
        _owned_reactors = std::make_unique<net::ReactorGroup>(n);
        _owned_reactors->start();
        _reactors = _owned_reactors.get();
    }
    std::random_device rd;
    _isid_random = rd() & 0xffffff;
}

InitiatorCore::~InitiatorCore() {
    shutdown();
}

iscsi::Isid InitiatorCore::next_isid() {
    std::lock_guard lock(_mu);
    uint16_t qualifier = ++_isid_qualifier;
    iscsi::Isid isid{};
    isid[0] = 0xc0; // T = 11b (random), A reserved
    isid[1] = uint8_t(_isid_random >> 16);
    isid[2] = uint8_t(_isid_random >> 8);
    isid[3] = uint8_t(_isid_random);
    isid[4] = uint8_t(qualifier >> 8);
    isid[5] = uint8_t(qualifier);
    return isid;
}

bool InitiatorCore::on_reactor_thread() const {
    net::Reactor* r = net::Reactor::current();
    if (r == nullptr || !_reactors) {
        return false;
    }
    for (unsigned i = 0; i < _reactors->size(); ++i) {
        if (&_reactors->at(i) == r) {
            return true;
        }
    }
    return false;
}

void InitiatorCore::add_session(const std::shared_ptr<SessionCore>& session) {
    std::lock_guard lock(_mu);
    std::erase_if(_sessions, [](const std::weak_ptr<SessionCore>& w) { return w.expired(); });
    _sessions.push_back(session);
}

void InitiatorCore::shutdown() {
    if (!_reactors) {
        return;
    }
    std::vector<std::shared_ptr<SessionCore>> live;
    {
        std::lock_guard lock(_mu);
        for (auto& w : _sessions) {
            if (auto s = w.lock()) {
                live.push_back(std::move(s));
            }
        }
        _sessions.clear();
    }
    for (auto& s : live) {
        auto done = std::make_shared<std::promise<void>>();
        s->close([done] { done->set_value(); });
        done->get_future().wait();
        s->detach();
    }
    if (_owned_reactors) {
        _owned_reactors->stop();
        _owned_reactors->join();
        _owned_reactors.reset();
    }
    _reactors = nullptr;
}

// ---------------------------------------------------------------------------------------------------
// SessionCore: construction and the public entry points

SessionCore::SessionCore(InitiatorCore& initiator, SessionOptions options, iscsi::Isid isid,
                         unsigned first_reactor)
    : _initiator(initiator), _options(std::move(options)), _transport(initiator.transport()), _isid(isid),
      _first_reactor(first_reactor) {
    if (_options.initiator_name.empty()) {
        _options.initiator_name = _initiator.options().initiator_name;
    }
    if (!_options.authenticator) {
        _options.authenticator = _initiator.options().authenticator;
    }
    _options.connections = std::clamp(_options.connections, 1u, max_session_connections);
    _options.max_connections =
        std::clamp(std::max(_options.max_connections, _options.connections), 1u, max_session_connections);
    _wanted = _options.connections;
    _options.queue_depth = std::max(_options.queue_depth, 1u);
    _label = fmt::format("{} at {}:{}", _options.target_name, _options.host, _options.port);
    _host = _options.host;
    _port = _options.port;
    // Any initial CmdSN will do; the target adopts the leading login's.
    _next_cmd_sn = 1;
}

SessionCore::~SessionCore() {
    // Only reached when nothing references the session any more: no task can be left, except when the
    // reactors were stopped with work queued (the Initiator went away first).
    for (PendingRequest* t : _pending) {
        delete t;
    }
}

void SessionCore::complete_with_error(PendingRequest* task, const Error& error) {
    Response result;
    result.error = error;
    _counters.commands++;
    if (task->done) {
        task->done(std::move(result));
    }
    delete task;
}

void SessionCore::start(Function<void(Result<void>)> done) {
    {
        std::lock_guard lock(_mu);
        _state = State::connecting;
    }
    auto self = shared_from_this();
    home().post([self, done = std::move(done)]() mutable {
        self->_start_done = std::move(done);
        self->attempt();
    });
}

void SessionCore::submit(Request request, Completion done) {
    auto* task = new PendingRequest;
    task->request = std::move(request);
    task->done = std::move(done);
    const Request& c = task->request;
    std::optional<Error> invalid;
    if (c.cdb_length == 0 || c.cdb_length > 16) {
        invalid =
            make_error(fmt::format("CDB length {} (1 to 16 bytes are supported)", c.cdb_length), EINVAL);
    } else if (c.direction != DataDirection::none && c.data.size() == 0) {
        invalid = make_error("a read or write command needs a data buffer", EINVAL);
    } else if (c.lun > scsi::max_lun) {
        invalid = make_error(fmt::format("LUN {} is out of range (0-{})", c.lun, scsi::max_lun), EINVAL);
    }
    task->expected_length = c.direction == DataDirection::none ? 0 : uint32_t(c.data.size());

    std::unique_lock lock(_mu);
    if (_detached) {
        lock.unlock();
        complete_with_error(task, make_error(_label + ": the initiator was shut down", ESHUTDOWN));
        return;
    }
    if (!invalid &&
        (_state == State::failed || _state == State::closed || _state == State::closing || _closing)) {
        invalid = _failure && _state == State::failed ? *_failure
                                                      : make_error(_label + ": session closed", ESHUTDOWN);
    }
    if (invalid) {
        lock.unlock();
        // Never inside submit(): the caller may hold its own locks.
        auto self = shared_from_this();
        home().post([self, task, e = std::move(*invalid)] { self->complete_with_error(task, e); });
        return;
    }
    task->seq = _next_seq++;
    _pending.push_back(task);
    dispatch_locked();
}

void SessionCore::close(Function<void()> done) {
    std::unique_lock lock(_mu);
    if (_state == State::closed || _detached) {
        lock.unlock();
        done();
        return;
    }
    _closing = true;
    _close_waiters.push_back(std::move(done));
    lock.unlock();
    auto self = shared_from_this();
    home().post([self] { self->maybe_finish_close(); });
}

void SessionCore::detach() {
    std::lock_guard lock(_mu);
    _detached = true;
}

SessionInfo SessionCore::info() const {
    std::lock_guard lock(_mu);
    SessionInfo i;
    i.target_name = _options.target_name;
    i.portal = fmt::format("{}:{}", _options.host, _options.port);
    i.isid = iscsi::format_isid(_isid);
    i.tsih = _tsih;
    i.connections = _state == State::up || _state == State::closing ? unsigned(_active.size()) : 0;
    i.header_digest = _leading_params.header_digest == iscsi::Digest::crc32c;
    i.data_digest = _leading_params.data_digest == iscsi::Digest::crc32c;
    i.max_burst_length = _params.max_burst_length;
    i.first_burst_length = _params.first_burst_length;
    i.max_send_data_segment_length = _leading_params.max_send_data_segment_length;
    i.immediate_data = _params.immediate_data;
    i.initial_r2t = _params.initial_r2t;
    i.max_outstanding_r2t = _params.max_outstanding_r2t;
    i.error_recovery_level = _params.error_recovery_level;
    i.commands = _counters.commands.load();
    i.reconnects = _counters.reconnects.load();
    i.retries = _counters.retries.load();
    i.unit_attentions = _counters.unit_attentions.load();
    i.aborts = _counters.aborts.load();
    i.lun_resets = _counters.lun_resets.load();
    i.digest_errors = _counters.digest_errors.load();
    i.snacks = _counters.snacks.load();
    i.connection_recoveries = _counters.connection_recoveries.load();
    i.reassignments = _counters.reassignments.load();
    i.connection_failovers = _counters.connection_failovers.load();
    i.connections_added = _counters.connections_added.load();
    i.connections_removed = _counters.connections_removed.load();
    for (const auto& c : _active) {
        i.commands_per_connection.push_back(c->commands_sent.load(std::memory_order_relaxed));
        i.connection_ids.push_back(c->cid());
    }
    return i;
}

// ---------------------------------------------------------------------------------------------------
// Queue and window (under _mu)

void SessionCore::insert_pending_locked(PendingRequest* task) {
    auto at = std::upper_bound(_pending.begin(), _pending.end(), task->seq,
                               [](uint64_t seq, const PendingRequest* t) { return seq < t->seq; });
    _pending.insert(at, task);
}

void SessionCore::dispatch_locked() {
    if ((_state != State::up && _state != State::closing) || _active.empty()) {
        return;
    }
    while (!_pending.empty() && _outstanding < _options.queue_depth) {
        // RFC 7143 §4.2.2.1: a non-immediate command may be sent only while CmdSN <= MaxCmdSN.
        if (iscsi::sn_gt(_next_cmd_sn, _max_cmd_sn)) {
            break;
        }
        // The least-loaded connection; ties rotate, so that a target fast enough to answer each command
        // before the next is submitted still sees every connection used, not the first one alone.
        size_t start = _spread++ % _active.size();
        Connection* best = _active[start].get();
        for (size_t k = 1; k < _active.size(); ++k) {
            Connection* c = _active[(start + k) % _active.size()].get();
            if (c->outstanding < best->outstanding) {
                best = c;
            }
        }
        PendingRequest* task = _pending.front();
        _pending.pop_front();
        task->cmd_sn = _next_cmd_sn++;
        best->inbox.push_back(task);
        ++best->outstanding;
        ++_outstanding;
        if (!best->drain_posted) {
            best->drain_posted = true;
            best->reactor().post([conn = best->shared_from_this()] { conn->drain_inbox(); });
        }
    }
}

void SessionCore::window_update(Connection& conn, uint32_t exp_cmd_sn, uint32_t max_cmd_sn) {
    std::lock_guard lock(_mu);
    if (!conn.active) {
        return; // a connection of a session being recovered: its numbers belong to the old session
    }
    // RFC 7143 §4.2.2.1: ignore both when MaxCmdSN < ExpCmdSN - 1; otherwise only move forward.
    if (iscsi::sn_lt(max_cmd_sn, exp_cmd_sn - 1)) {
        return;
    }
    if (iscsi::sn_gt(exp_cmd_sn, _exp_cmd_sn)) {
        _exp_cmd_sn = exp_cmd_sn;
    }
    if (iscsi::sn_gt(max_cmd_sn, _max_cmd_sn)) {
        _max_cmd_sn = max_cmd_sn;
        dispatch_locked();
    }
}

uint32_t SessionCore::immediate_cmd_sn() {
    std::lock_guard lock(_mu);
    return _next_cmd_sn;
}

uint32_t SessionCore::allocate_cmd_sn() {
    std::lock_guard lock(_mu);
    return _next_cmd_sn++;
}

void SessionCore::take_inbox(Connection& conn, std::vector<PendingRequest*>& out) {
    std::lock_guard lock(_mu);
    out.insert(out.end(), conn.inbox.begin(), conn.inbox.end());
    conn.inbox.clear();
    conn.drain_posted = false;
}

void SessionCore::task_done(Connection& conn, PendingRequest* task, Response&& result) {
    bool close_now = false;
    {
        std::lock_guard lock(_mu);
        if (conn.outstanding > 0) {
            --conn.outstanding;
            --_outstanding;
        }
        dispatch_locked();
        close_now = _closing && idle_locked();
    }
    _counters.commands++;
    if (task->done) {
        task->done(std::move(result));
    }
    delete task;
    if (close_now) {
        auto self = shared_from_this();
        home().post([self] { self->maybe_finish_close(); });
    }
}

void SessionCore::task_retry(Connection& conn, PendingRequest* task, std::chrono::milliseconds delay) {
    std::unique_lock lock(_mu);
    if (conn.outstanding > 0) {
        --conn.outstanding;
        --_outstanding;
    }
    if (delay.count() == 0) {
        insert_pending_locked(task);
        dispatch_locked();
        return;
    }
    ++_delayed;
    lock.unlock();
    auto self = shared_from_this();
    conn.reactor().add_timer(delay, [self, task] {
        std::unique_lock lock(self->_mu);
        --self->_delayed;
        if (self->_state == State::failed || self->_state == State::closed) {
            Error e = self->_failure.value_or(make_error(self->_label + ": session closed", ESHUTDOWN));
            lock.unlock();
            self->complete_with_error(task, e);
            return;
        }
        self->insert_pending_locked(task);
        self->dispatch_locked();
    });
}

void SessionCore::connection_failed(Connection& conn, const Error& why) {
    auto self = shared_from_this();
    home().post([self, conn = conn.shared_from_this(), generation = conn.generation(), why] {
        self->on_connection_failed(conn, generation, why);
    });
}

// ---------------------------------------------------------------------------------------------------
// Login and reinstatement (home reactor)

std::shared_ptr<Connection> SessionCore::make_connection(uint16_t cid) {
    net::Reactor& r = _initiator.reactor(_first_reactor + cid);
    // The connection tag (the ITT's top byte) is the CID: unique among the session's connections.
    return std::make_shared<Connection>(shared_from_this(), r, cid, uint8_t(cid), _generation);
}

iscsi::InitiatorLoginConfig SessionCore::login_config(uint16_t cid, uint16_t tsih) {
    iscsi::InitiatorLoginConfig c;
    c.initiator_name = _options.initiator_name;
    c.target_name = _options.target_name;
    c.session_type = iscsi::SessionType::normal;
    c.isid = _isid;
    c.tsih = tsih;
    c.cid = cid;
    {
        std::lock_guard lock(_mu);
        c.cmd_sn = _next_cmd_sn;
        if (tsih != 0) {
            c.session = _params;
        }
    }
    c.itt = 0;
    c.exp_stat_sn = 0;
    c.negotiation.header_digests = offered_digests(_options.header_digest);
    c.negotiation.data_digests = offered_digests(_options.data_digest);
    c.negotiation.max_recv_data_segment_length = _options.max_recv_data_segment_length;
    c.negotiation.max_burst_length = _options.max_burst_length;
    c.negotiation.first_burst_length = std::min(_options.first_burst_length, _options.max_burst_length);
    c.negotiation.initial_r2t = _options.initial_r2t;
    c.negotiation.immediate_data = _options.immediate_data;
    c.negotiation.max_connections = uint16_t(_options.max_connections);
    c.negotiation.max_outstanding_r2t = 1;
    // DefaultTime2Wait is the larger of the two offers: we need no pause before a connection is logged
    // in again; the target says if it does.
    c.negotiation.default_time2wait = 0;
    c.negotiation.error_recovery_level =
        uint8_t(std::min<unsigned>(_options.error_recovery_level, iscsi::max_error_recovery_level));
    c.negotiation.alias = _options.initiator_alias;
    if (!_options.chap.empty()) {
        // Credentials were given: insist on CHAP rather than silently logging in without it.
        c.auth_methods = {std::string(iscsi::auth_method_chap)};
        c.make_authenticator = [factory = _options.authenticator, creds = _options.chap](
                                   std::string_view method) -> std::unique_ptr<iscsi::Authenticator> {
            return factory ? factory(method, creds) : nullptr;
        };
    }
    return c;
}

void SessionCore::login_connection(const std::shared_ptr<Connection>& conn, uint16_t tsih, LoginRole role) {
    auto self = shared_from_this();
    uint64_t generation = _generation;
    iscsi::InitiatorLoginConfig cfg = login_config(conn->cid(), tsih);
    if (role == LoginRole::reinstating) {
        cfg.exp_stat_sn = conn->restart_exp_stat_sn(); // acknowledges the old connection's answers
    }
    conn->reactor().post(
        [self, conn, generation, role, cfg = std::move(cfg), host = _host, port = _port]() mutable {
            conn->login(host, port, std::move(cfg), [self, conn, generation, role](LoginOutcome&& outcome) {
                self->home().post([self, conn, generation, role, outcome = std::move(outcome)]() mutable {
                    switch (role) {
                    case LoginRole::leading:
                        self->on_leading_login(conn, generation, std::move(outcome));
                        return;
                    case LoginRole::secondary:
                        self->on_secondary_login(conn, generation, std::move(outcome));
                        return;
                    case LoginRole::reinstating:
                        self->on_reinstating_login(conn, generation, std::move(outcome));
                        return;
                    case LoginRole::joining:
                        self->on_joining_login(conn, generation, std::move(outcome));
                        return;
                    }
                });
            });
        });
}

void SessionCore::attempt() {
    {
        std::lock_guard lock(_mu);
        if (_state == State::closed || _state == State::failed || _state == State::closing ||
            _close_started) {
            return; // closed meanwhile (a reconnect timer outlived the session's use)
        }
    }
    if (!_options.chap.empty() && !_options.authenticator) {
        attempt_failed(
            make_error(fmt::format("login to {}: CHAP credentials were given, but this build has no CHAP "
                                   "authenticator (pass one in SessionOptions::authenticator)",
                                   _label),
                       ENOTSUP));
        return;
    }
    ++_generation;
    _ok.clear();
    auto leading = make_connection(0);
    _all.push_back(leading);
    login_connection(leading, 0, LoginRole::leading);
}

void SessionCore::on_leading_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                   LoginOutcome&& outcome) {
    if (generation != _generation) {
        return;
    }
    if (outcome.error) {
        if (!outcome.redirect.empty() && _redirects < 4) {
            // TargetAddress: domainname[:port][,portal-group-tag]
            std::string address = outcome.redirect.substr(0, outcome.redirect.find(','));
            std::string host = address;
            uint16_t port = default_port;
            size_t colon = address.rfind(':');
            bool v6 = !address.empty() && address.front() == '[';
            if (colon != std::string::npos && (!v6 || colon > address.find(']'))) {
                host = address.substr(0, colon);
                port = uint16_t(std::strtoul(address.c_str() + colon + 1, nullptr, 10));
            }
            if (v6 && host.size() >= 2) {
                host = host.substr(1, host.size() - 2);
            }
            log_info("{}: redirected to {}", _label, outcome.redirect);
            ++_redirects;
            _host = host;
            _port = port;
            auto self = shared_from_this();
            stop_connections(*outcome.error, [self] { self->attempt(); });
            return;
        }
        bool auth_refused = outcome.status == iscsi::LoginStatus::authentication_failure ||
                            outcome.status == iscsi::LoginStatus::initiator_error;
        if (auth_refused && outcome.during_authentication && !_options.chap.empty() &&
            !_options.chap.md5_only) {
            // Interop: some targets do not take CHAP_A=7 as SHA-256 (tgt 1.0.x reads it as SHA-1 and
            // answers Initiator error). One retry offering MD5 only tells that apart from a wrong secret.
            // Only a failure inside the CHAP exchange says anything about CHAP: a refused connection,
            // an ACL or an unknown target is reported as it is, without a retry.
            log_info("{}: login failed during CHAP ({}); retrying once offering MD5 only (CHAP_A=5), in "
                     "case the target misreads SHA-256",
                     _label, outcome.error->message);
            _options.chap.md5_only = true;
            auto self = shared_from_this();
            stop_connections(*outcome.error, [self] { self->attempt(); });
            return;
        }
        attempt_failed(std::move(*outcome.error));
        return;
    }
    _redirects = 0;
    {
        std::lock_guard lock(_mu);
        _params = outcome.session;
        _leading_params = outcome.connection;
        _tsih = outcome.tsih;
        _exp_cmd_sn = outcome.exp_cmd_sn;
        _max_cmd_sn = outcome.max_cmd_sn;
        // The target expects the CmdSN of our login next (RFC 7143 §11.12.6); start from its word.
        _next_cmd_sn = outcome.exp_cmd_sn;
    }
    _ok.push_back(conn);
    unsigned wanted = std::min<unsigned>(_wanted, std::max<uint16_t>(outcome.session.max_connections, 1));
    if (wanted < _wanted && !_ever_up) {
        log_warn("{}: the target allows {} connection(s) per session; using {} instead of {}", _label,
                 outcome.session.max_connections, wanted, _wanted);
    }
    _logins_left = wanted - 1;
    if (_logins_left == 0) {
        go_live();
        return;
    }
    for (uint16_t cid = 1; cid < wanted; ++cid) {
        auto c = make_connection(cid);
        _all.push_back(c);
        login_connection(c, outcome.tsih, LoginRole::secondary);
    }
}

void SessionCore::on_secondary_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                     LoginOutcome&& outcome) {
    if (generation != _generation) {
        return;
    }
    if (outcome.error) {
        log_warn("{}: connection {} could not join the session: {}; continuing with fewer connections",
                 _label, conn->cid(), outcome.error->message);
        conn->reactor().post([conn, e = *outcome.error] { conn->shutdown(e); });
    } else {
        _ok.push_back(conn);
    }
    if (--_logins_left == 0) {
        go_live();
    }
}

void SessionCore::go_live() {
    if (_ok.empty()) {
        attempt_failed(make_error(_label + ": no connection survived the login", EIO));
        return;
    }
    std::sort(_ok.begin(), _ok.end(), [](const auto& a, const auto& b) { return a->cid() < b->cid(); });
    iscsi::SessionParams params;
    {
        std::lock_guard lock(_mu);
        params = _params;
    }
    // Posted before the state changes: a drain_inbox() posted by dispatch must find the connection in
    // full feature phase (posts to one reactor run in order).
    for (const auto& c : _ok) {
        c->reactor().post([c, params] {
            c->enter_full_feature(params);
            c->drain_inbox();
        });
    }
    bool reinstated = _ever_up;
    {
        std::lock_guard lock(_mu);
        _state = State::up;
        _active = _ok;
        for (const auto& c : _active) {
            c->active = true;
        }
        dispatch_locked();
    }
    _ever_up = true;
    _reconnect_attempt = 0;
    if (reinstated) {
        _counters.reconnects++;
        log_warn("{}: session reinstated (TSIH {}, {} connection(s)); resending what had no status", _label,
                 _tsih, _ok.size());
    }
    if (auto done = std::move(_start_done)) {
        done(Result<void>{});
    }
    maybe_finish_close();
}

void SessionCore::attempt_failed(Error why) {
    auto self = shared_from_this();
    bool give_up;
    {
        std::lock_guard lock(_mu);
        give_up = !_ever_up || !_options.reconnect || net::Clock::now() >= _recovery_deadline ||
                  (_closing && idle_locked());
    }
    if (give_up) {
        if (_ever_up) {
            log_error("{}: giving up on the session: {}", _label, why.message);
        }
        stop_connections(why, [self, why] { self->fail_all(why); });
        return;
    }
    auto delay = std::min<std::chrono::milliseconds>(_options.timeouts.reconnect_min *
                                                         (1u << std::min(_reconnect_attempt, 16u)),
                                                     _options.timeouts.reconnect_max);
    ++_reconnect_attempt;
    log_info("{}: reconnect attempt {} failed ({}); next in {} ms", _label, _reconnect_attempt, why.message,
             delay.count());
    stop_connections(why, [self, delay] { self->home().add_timer(delay, [self] { self->attempt(); }); });
}

void SessionCore::on_connection_failed(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                       const Error& why) {
    if (generation != _generation) {
        return;
    }
    State state;
    bool removing;
    {
        std::lock_guard lock(_mu);
        state = _state;
        removing = conn->removing;
    }
    if (state == State::up && removing) {
        on_removing_connection_failed(conn, why);
        return;
    }
    if (state == State::up) {
        if (!recover_connection(conn, why)) {
            begin_recovery(why);
        }
        return;
    }
    if (state == State::connecting || state == State::recovering) {
        // A connection that had logged in failed before the session went live: continue without it.
        std::erase(_ok, conn);
        conn->reactor().post([conn, why] { conn->shutdown(why); });
    }
    // closing: the logout's own callback finishes the close.
}

// ---------------------------------------------------------------------------------------------------
// Connection recovery at ErrorRecoveryLevel 2 (home reactor)
//
// RFC 7143 §7.3, §6.2.2: the failed connection is logged in again with its CID (connection
// reinstatement; the target closes what is left of the old one and keeps its tasks), after Time2Wait,
// and every task it had is moved there with TASK REASSIGN (reassign.cpp). The other connections carry
// on meanwhile, and so does the session: no reinstatement, no task sent twice. When the new login
// fails, a reassign is refused, or the target dropped the connection without keeping its tasks, the
// session is reinstated as at level 0.

bool SessionCore::recover_connection(const std::shared_ptr<Connection>& conn, const Error& why) {
    {
        std::lock_guard lock(_mu);
        if (_params.error_recovery_level < 2 || !_options.reconnect || _closing) {
            return false;
        }
    }
    if (conn->reassign_refused() || std::find(_all.begin(), _all.end(), conn) == _all.end()) {
        return false;
    }
    {
        std::lock_guard lock(_mu);
        std::erase(_active, conn);
        conn->active = false;
    }
    std::erase(_all, conn);
    std::erase(_ok, conn);
    _cids_in_recovery.push_back(conn->cid()); // add_connection must not take its CID meanwhile
    // Time2Wait is the target's to ask (an Asynchronous Message's Parameter2, or DefaultTime2Wait; RFC
    // 7143 allows up to 3600 s), but the commands parked meanwhile have no clock of their own: never
    // longer than the recovery timeout, after which the session would fail them anyway. A target that
    // is not ready by then refuses the login, and reinstatement takes over.
    auto recovery_s = std::chrono::duration_cast<std::chrono::seconds>(_options.timeouts.recovery).count();
    auto wait = uint16_t(std::min<int64_t>({conn->requested_time2wait().value_or(_params.default_time2wait),
                                            max_time2wait_s, std::max<int64_t>(recovery_s, 0)}));
    log_warn("{}: connection {} lost ({}); ErrorRecoveryLevel 2: logging it in again in {} s and reassigning "
             "its tasks",
             _label, conn->cid(), why.message, wait);
    auto self = shared_from_this();
    uint64_t generation = _generation;
    conn->reactor().post([self, conn, why, generation, wait] {
        std::vector<PendingRequest*> tasks = conn->shutdown(why);
        self->home().post([self, conn, tasks = std::move(tasks), generation, wait]() mutable {
            std::shared_ptr<Connection> next;
            {
                std::lock_guard lock(self->_mu);
                self->_outstanding -= std::min(self->_outstanding, conn->outstanding);
                conn->outstanding = 0;
                if (generation != self->_generation || self->_state != State::up) {
                    // The session is being reinstated or closed meanwhile: the tasks go with it.
                    for (PendingRequest* t : tasks) {
                        self->insert_pending_locked(t);
                    }
                    self->dispatch_locked();
                    return;
                }
            }
            next = self->make_connection(conn->cid());
            next->restarts(*conn); // shut down on its reactor before this was posted
            self->_all.push_back(next);
            {
                std::lock_guard lock(self->_mu);
                // Lost while being removed: once logged in again, it drains its reassigned tasks and
                // logs out rather than joining the dispatch set.
                next->removing = self->removing_cid(next->cid());
                next->outstanding = unsigned(tasks.size());
                self->_outstanding += unsigned(tasks.size());
            }
            next->reactor().post(
                [next, tasks = std::move(tasks)]() mutable { next->park(std::move(tasks)); });
            self->home().add_timer(std::chrono::seconds(wait), [self, next, generation] {
                if (generation != self->_generation) {
                    return; // stop_connections() took the parked tasks back
                }
                uint16_t tsih;
                {
                    std::lock_guard lock(self->_mu);
                    tsih = self->_tsih;
                }
                self->login_connection(next, tsih, LoginRole::reinstating);
            });
        });
    });
    return true;
}

void SessionCore::on_reinstating_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                       LoginOutcome&& outcome) {
    if (generation != _generation) {
        return;
    }
    State state;
    {
        std::lock_guard lock(_mu);
        state = _state;
    }
    if (outcome.error || state != State::up) {
        Error why = outcome.error ? *outcome.error : make_error(_label + ": session no longer up", ESHUTDOWN);
        if (state == State::up && !fail_over(conn, why)) {
            log_warn("{}: connection {} could not be logged in again ({}); reinstating the session", _label,
                     conn->cid(), why.message);
            begin_recovery(why); // its parked tasks come back through stop_connections()
        }
        return;
    }
    iscsi::SessionParams params;
    {
        std::lock_guard lock(_mu);
        params = _params;
    }
    _counters.connection_recoveries++;
    std::erase(_cids_in_recovery, conn->cid());
    log_info("{}: connection {} logged in again; reassigning its tasks", _label, conn->cid());
    conn->reactor().post([conn, params] {
        conn->enter_full_feature(params);
        conn->reassign_parked();
        conn->drain_inbox();
    });
    std::lock_guard lock(_mu);
    conn->active = true;
    _ok.push_back(conn);
    if (!conn->removing) {
        _active.push_back(conn);
        dispatch_locked();
    }
}

// The failed connection could not be logged in again (its portal refuses, say) but others of the
// session are up: one of them removes it for recovery and takes its tasks over (RFC 7143 §7.3,
// §11.14.1), so the session still goes on. The session then has one connection fewer; its CID is not
// given to a new connection in this session (the moved tasks keep ITTs with its tag).
bool SessionCore::fail_over(const std::shared_ptr<Connection>& failed, const Error& why) {
    std::shared_ptr<Connection> to;
    unsigned moved = 0;
    {
        std::lock_guard lock(_mu);
        if (failed->removing) {
            return false; // a removal waits for it: leave that to session reinstatement
        }
        for (const auto& c : _active) {
            if (!c->removing && (!to || c->outstanding < to->outstanding)) {
                to = c;
            }
        }
        if (!to) {
            return false;
        }
        moved = failed->outstanding;
        to->outstanding += moved;
        failed->outstanding = 0;
    }
    std::erase(_all, failed);
    _counters.connection_failovers++;
    log_warn("{}: connection {} could not be logged in again ({}); connection {} removes it for recovery and "
             "takes over its {} task(s)",
             _label, failed->cid(), why.message, to->cid(), moved);
    auto self = shared_from_this();
    uint64_t generation = _generation;
    failed->reactor().post([self, failed, to, why, generation] {
        std::vector<PendingRequest*> tasks = failed->shutdown(why);
        to->reactor().post([self, to, cid = failed->cid(), tasks = std::move(tasks), generation]() mutable {
            to->take_over(cid, std::move(tasks),
                          [self, generation](Result<void> r, std::vector<PendingRequest*> back) {
                              if (r) {
                                  return;
                              }
                              self->home().post([self, generation, why = r.error(), back = std::move(back)] {
                                  {
                                      std::lock_guard lock(self->_mu);
                                      for (PendingRequest* t : back) {
                                          self->insert_pending_locked(t);
                                      }
                                  }
                                  if (generation == self->_generation) {
                                      log_warn("{}: {}; reinstating the session", self->_label, why.message);
                                      self->begin_recovery(why);
                                  }
                              });
                          });
        });
    });
    return true;
}

void SessionCore::begin_recovery(const Error& why) {
    {
        std::lock_guard lock(_mu);
        _state = State::recovering;
        for (const auto& c : _active) {
            c->active = false;
        }
        _active.clear();
    }
    ++_generation; // late callbacks of the lost connections no longer count
    _recovery_deadline = net::Clock::now() + _options.timeouts.recovery;
    _reconnect_attempt = 0;
    auto self = shared_from_this();
    if (!_options.reconnect) {
        log_error("{}: session lost: {}", _label, why.message);
        stop_connections(why, [self, why] { self->fail_all(why); });
        return;
    }
    log_warn("{}: session lost ({}); reinstating it", _label, why.message);
    stop_connections(why, [self] { self->attempt(); });
}

void SessionCore::stop_connections(const Error& why, Function<void()> then) {
    abandon_membership_changes(why);
    auto conns = std::move(_all);
    _all.clear();
    _ok.clear();
    if (conns.empty()) {
        then();
        return;
    }
    auto self = shared_from_this();
    auto remaining = std::make_shared<size_t>(conns.size());
    auto after = std::make_shared<Function<void()>>(std::move(then));
    for (auto& c : conns) {
        c->reactor().post([self, c, why, remaining, after] {
            std::vector<PendingRequest*> tasks = c->shutdown(why);
            self->home().post([self, c, tasks = std::move(tasks), remaining, after] {
                {
                    std::lock_guard lock(self->_mu);
                    self->_outstanding -= std::min(self->_outstanding, c->outstanding);
                    c->outstanding = 0;
                    c->active = false;
                    for (PendingRequest* t : tasks) {
                        self->insert_pending_locked(t);
                    }
                }
                if (--*remaining == 0) {
                    (*after)();
                }
            });
        });
    }
}

void SessionCore::fail_all(const Error& why) {
    std::deque<PendingRequest*> tasks;
    {
        std::lock_guard lock(_mu);
        _state = State::failed;
        _failure = why;
        tasks.swap(_pending);
        _active.clear();
    }
    for (PendingRequest* t : tasks) {
        complete_with_error(t, why);
    }
    if (auto done = std::move(_start_done)) {
        done(why);
    }
    maybe_finish_close();
}

void SessionCore::maybe_finish_close() {
    State state;
    bool idle;
    {
        std::lock_guard lock(_mu);
        if (!_closing || _close_started) {
            return;
        }
        state = _state;
        idle = idle_locked();
    }
    auto self = shared_from_this();
    if (state == State::up && idle) {
        _close_started = true;
        std::shared_ptr<Connection> conn;
        std::vector<std::shared_ptr<Connection>> others;
        {
            std::lock_guard lock(_mu);
            _state = State::closing;
            conn = _active.empty() ? nullptr : _active.front();
        }
        // Every other connection, also one being removed or joining (add/remove in progress).
        for (const auto& c : _all) {
            if (c != conn) {
                others.push_back(c);
            }
        }
        if (!conn) {
            finish_close();
            return;
        }
        // Logout with reason "close the session" ends every connection of the session.
        for (const auto& c : others) {
            c->reactor().post([c] { c->expect_close(); });
        }
        conn->reactor().post([self, conn] {
            conn->logout([self](Result<void> r) {
                if (!r) {
                    log_debug("{}: logout: {}", self->_label, r.error().message);
                }
                self->home().post([self] { self->finish_close(); });
            });
        });
        return;
    }
    if (state == State::failed || state == State::idle) {
        _close_started = true;
        finish_close();
        return;
    }
    if ((state == State::recovering || state == State::connecting) && idle) {
        // Nothing waits for the session: stop trying to bring it back.
        _close_started = true;
        ++_generation;
        finish_close();
    }
    // Otherwise commands are still in flight: their completions call us again.
}

void SessionCore::finish_close() {
    auto self = shared_from_this();
    {
        std::lock_guard lock(_mu);
        _state = State::closing;
        for (const auto& c : _active) {
            c->active = false;
        }
        _active.clear();
    }
    ++_generation;
    stop_connections(make_error(_label + ": session closed", ESHUTDOWN), [self] {
        std::vector<Function<void()>> waiters;
        std::deque<PendingRequest*> leftovers;
        {
            std::lock_guard lock(self->_mu);
            self->_state = State::closed;
            waiters.swap(self->_close_waiters);
            leftovers.swap(self->_pending);
        }
        for (PendingRequest* t : leftovers) {
            self->complete_with_error(t, make_error(self->_label + ": session closed", ESHUTDOWN));
        }
        if (auto done = std::move(self->_start_done)) {
            done(make_error(self->_label + ": session closed during login", ESHUTDOWN));
        }
        for (auto& w : waiters) {
            w();
        }
    });
}

} // namespace ispace::initiator
