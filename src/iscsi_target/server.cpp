#include "iscsi_target/server.hpp"

#include "common/log.hpp"
#include "common/log_limit.hpp"
#include "iscsi/text.hpp"
#include "iscsi_target/connection.hpp"
#include "iscsi_target/session.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sys/epoll.h>
#include <thread>
#include <unistd.h>

namespace ispace::iscsi_target {

namespace {
// Connections refused at accept: a flood makes one per attempt (common/log_limit.hpp).
// The address a connection comes from, without its port: the unit of the per-source login limit.
std::string source_address(const net::Endpoint& peer) {
    std::string text = peer.to_string();
    size_t colon = text.rfind(':');
    return colon == std::string::npos ? text : text.substr(0, colon);
}

LogLimit g_accept_log;
} // namespace

iscsi::NegotiationConfig default_target_negotiation() {
    iscsi::NegotiationConfig config;
    // The initiator's order of preference decides; both are acceptable.
    config.header_digests = {iscsi::Digest::none, iscsi::Digest::crc32c};
    config.data_digests = {iscsi::Digest::none, iscsi::Digest::crc32c};
    config.max_recv_data_segment_length = 256 * 1024;
    config.max_burst_length = 1024 * 1024;
    config.first_burst_length = 256 * 1024;
    config.initial_r2t = false; // unsolicited data is welcome: it saves a round trip per write
    config.immediate_data = true;
    config.max_outstanding_r2t = 8;
    // Several connections per session (MC/S); they all live on the session's reactor.
    config.max_connections = 8;
    // Within-connection recovery (SNACK, recovery R2T) for initiators that ask for it; an initiator that
    // offers nothing (libiscsi, open-iscsi) gets the RFC default, 0.
    config.error_recovery_level = iscsi::max_error_recovery_level;
    return config;
}

// ---- SessionRegistry -------------------------------------------------------------------------------

uint16_t SessionRegistry::allocate_tsih_locked() {
    // TSIH 0 is "new session"; a 16-bit space of live sessions is plenty, and reuse only after release.
    for (uint32_t tries = 0; tries < 0x10000; ++tries) {
        uint16_t candidate = _next_tsih++;
        if (_next_tsih == 0) {
            _next_tsih = 1;
        }
        if (candidate != 0 && !_by_tsih.count(candidate) && !_discovery_tsihs.count(candidate)) {
            return candidate;
        }
    }
    return 0;
}

Result<SessionRegistry::Admission> SessionRegistry::admit(net::Reactor& reactor, std::string initiator_name,
                                                          uint64_t isid, std::string target_name,
                                                          uint32_t max_per_initiator) {
    std::lock_guard lock(_mutex);
    Key probe{initiator_name, isid, target_name};
    if (!_by_key.count(probe)) {
        // A reinstatement replaces a session; only a new one counts against the limit.
        uint32_t held = 0;
        for (auto& [key, slot] : _by_key) {
            held += std::get<0>(key) == initiator_name;
        }
        if (held >= max_per_initiator) {
            return make_error(fmt::format("{} already holds {} sessions (limit)", initiator_name, held));
        }
    }
    uint16_t tsih = allocate_tsih_locked();
    if (tsih == 0) {
        return make_error("no free TSIH: 65535 sessions exist");
    }
    Admission admission;
    Key key{initiator_name, isid, target_name};
    if (auto it = _by_key.find(key); it != _by_key.end()) {
        // Session reinstatement (RFC 7143 §6.3.5): the old session goes, the new one takes its place.
        admission.replaced = it->second;
        _by_tsih.erase(it->second->tsih);
        _by_key.erase(it);
    }
    auto slot = std::make_shared<SessionSlot>();
    slot->reactor = &reactor;
    slot->initiator_name = std::move(initiator_name);
    slot->isid = isid;
    slot->target_name = std::move(target_name);
    slot->tsih = tsih;
    slot->gate_open = admission.replaced == nullptr;
    _by_key.emplace(std::move(key), slot);
    _by_tsih.emplace(tsih, slot);
    admission.slot = std::move(slot);
    return admission;
}

uint16_t SessionRegistry::admit_discovery() {
    std::lock_guard lock(_mutex);
    uint16_t tsih = allocate_tsih_locked();
    if (tsih != 0) {
        _discovery_tsihs.insert(tsih);
    }
    return tsih;
}

void SessionRegistry::release_tsih(uint16_t tsih) {
    std::lock_guard lock(_mutex);
    _discovery_tsihs.erase(tsih);
}

std::shared_ptr<SessionSlot> SessionRegistry::find_tsih(uint16_t tsih) const {
    std::lock_guard lock(_mutex);
    auto it = _by_tsih.find(tsih);
    return it == _by_tsih.end() ? nullptr : it->second;
}

void SessionRegistry::remove(const std::shared_ptr<SessionSlot>& slot) {
    std::lock_guard lock(_mutex);
    Key key{slot->initiator_name, slot->isid, slot->target_name};
    if (auto it = _by_key.find(key); it != _by_key.end() && it->second == slot) {
        _by_key.erase(it);
    }
    if (auto it = _by_tsih.find(slot->tsih); it != _by_tsih.end() && it->second == slot) {
        _by_tsih.erase(it);
    }
}

size_t SessionRegistry::size() const {
    std::lock_guard lock(_mutex);
    return _by_key.size() + _discovery_tsihs.size();
}

std::vector<std::shared_ptr<SessionSlot>> SessionRegistry::all() const {
    std::lock_guard lock(_mutex);
    std::vector<std::shared_ptr<SessionSlot>> slots;
    for (auto& [key, slot] : _by_key) {
        slots.push_back(slot);
    }
    return slots;
}

// ---- Target --------------------------------------------------------------------------------------

Target::Target(TargetConfig config)
    : iqn(config.iqn), device(std::make_unique<scsi::TargetDevice>(config.iqn)) {
    config.luns.clear();
    _config = std::make_shared<const TargetConfig>(std::move(config));
}

std::shared_ptr<const TargetConfig> Target::config() const {
    std::lock_guard lock(_mutex);
    return _config;
}

void Target::set_config(TargetConfig config) {
    config.iqn = iqn;
    config.luns.clear();
    auto fresh = std::make_shared<const TargetConfig>(std::move(config));
    std::lock_guard lock(_mutex);
    _config = std::move(fresh);
}

// ---- Listener --------------------------------------------------------------------------------------

// One portal's listening socket. Owned by the Server's list; reactor 0 serves it while listening.
class Server::Listener final : public net::FdHandler {
public:
    Listener(Server& server, std::string listen, int fd, net::Endpoint bound, uint16_t tpgt)
        : listen(std::move(listen)), tpgt(tpgt), bound(bound), _server(server), _fd(fd) {}
    ~Listener() override {
        if (_fd >= 0) {
            ::close(_fd);
        }
    }
    void on_fd_event(uint32_t) override { _server.accept_ready(*this); }

    int fd() const { return _fd; }
    // On reactor 0.
    void close_socket(net::Reactor& reactor) {
        if (_fd >= 0) {
            if (_registered) {
                reactor.remove(_fd);
            }
            ::close(_fd);
            _fd = -1;
        }
    }
    void registered() { _registered = true; }

    const std::string listen; // as configured: "127.0.0.1:3260"
    const uint16_t tpgt;
    const net::Endpoint bound;
    std::atomic<bool> shared{true}; // serves every target, not only those that name it

private:
    Server& _server;
    int _fd;
    bool _registered = false;
};

// ---- Server ----------------------------------------------------------------------------------------

Server::Server(ServerConfig config, net::ReactorGroup& reactors)
    : _config(std::move(config)), _reactors(reactors),
      _buffer_budget(std::make_shared<BufferBudget>(_config.limits.buffer_memory)), _local(reactors.size()) {
    _config.portals.clear();
    _config.targets.clear();
    _live = std::make_shared<const LiveSettings>(
        LiveSettings{_config.negotiation, _config.discovery_chap, _config.discovery_mutual_chap});
}

std::shared_ptr<const LiveSettings> Server::live() const {
    std::lock_guard lock(_live_mutex);
    return _live;
}

void Server::set_live(LiveSettings settings) {
    auto next = std::make_shared<const LiveSettings>(std::move(settings));
    std::lock_guard lock(_live_mutex);
    _live = std::move(next);
}

Server::~Server() = default;

Result<net::Endpoint> Server::add_portal(const PortalConfig& portal) {
    auto endpoint = net::parse_endpoint(portal.listen, 3260);
    if (!endpoint) {
        return make_error(fmt::format("listen {}: {}", portal.listen, endpoint.error().message), EINVAL);
    }
    // A portal already listening makes the bind fail (EADDRINUSE), which says so.
    std::unique_lock lock(_portals_mutex);
    auto fd = net::listen_tcp(*endpoint);
    if (!fd) {
        return make_error(fmt::format("listen {}: {}", portal.listen, fd.error().message), fd.error().code);
    }
    auto bound = net::local_endpoint(*fd);
    if (!bound) {
        ::close(*fd);
        return make_error(fmt::format("listen {}: {}", portal.listen, bound.error().message),
                          bound.error().code);
    }
    uint16_t tpgt = portal.tpgt ? portal.tpgt : _next_tpgt;
    _next_tpgt = std::max<uint16_t>(_next_tpgt, uint16_t(tpgt + 1));
    auto listener = std::make_shared<Listener>(*this, portal.listen, *fd, *bound, tpgt);
    listener->shared.store(portal.shared);
    _listeners.push_back(listener);
    lock.unlock();
    // ALUA: a portal group is a target port and a group, on every target.
    for (const auto& target : targets()) {
        target->device->add_port_group({tpgt, {tpgt}});
    }
    if (_started.load()) {
        listen_on_reactor(std::move(listener));
    }
    return *bound;
}

Result<void> Server::remove_portal(std::string_view listen) {
    std::shared_ptr<Listener> gone;
    {
        std::lock_guard lock(_portals_mutex);
        // As configured ("0.0.0.0:3260"), or as bound (what a portal added with port 0 became).
        auto it = std::find_if(_listeners.begin(), _listeners.end(), [&](const auto& listener) {
            return listener->listen == listen || listener->bound.to_string() == listen;
        });
        if (it == _listeners.end()) {
            return make_error(fmt::format("listen {}: no such portal", listen), ENOENT);
        }
        gone = std::move(*it);
        _listeners.erase(it);
    }
    net::Reactor& first = _reactors.at(0);
    first.post([gone, &first] { gone->close_socket(first); });
    return {};
}

Result<void> Server::set_portal_shared(std::string_view listen, bool shared) {
    std::lock_guard lock(_portals_mutex);
    for (const auto& listener : _listeners) {
        if (listener->listen == listen || listener->bound.to_string() == listen) {
            listener->shared.store(shared);
            return {};
        }
    }
    return make_error(fmt::format("listen {}: no such portal", listen), ENOENT);
}

bool Server::serves(const Target& target, uint16_t tpgt) const {
    std::string listen;
    {
        std::lock_guard lock(_portals_mutex);
        auto it = std::find_if(_listeners.begin(), _listeners.end(),
                               [&](const auto& listener) { return listener->tpgt == tpgt; });
        // A connection that arrived on no portal we know (removed since, or injected by a test) is
        // treated as on a shared one.
        if (it == _listeners.end() || (*it)->shared.load()) {
            return true;
        }
        listen = (*it)->listen;
    }
    auto config = target.config();
    return std::find(config->portals.begin(), config->portals.end(), listen) != config->portals.end();
}

void Server::listen_on_reactor(std::shared_ptr<Listener> listener) {
    // Listening sockets are served by reactor 0; accepted connections are spread over all reactors.
    net::Reactor& first = _reactors.at(0);
    first.post([listener = std::move(listener), &first] {
        if (listener->fd() >= 0) {
            first.add(listener->fd(), EPOLLIN, listener.get());
            listener->registered();
        }
    });
}

void Server::start() {
    if (_started.exchange(true)) {
        return;
    }
    std::lock_guard lock(_portals_mutex);
    for (const auto& listener : _listeners) {
        listen_on_reactor(listener);
    }
}

std::vector<net::Endpoint> Server::portal_endpoints() const {
    std::lock_guard lock(_portals_mutex);
    std::vector<net::Endpoint> endpoints;
    for (const auto& listener : _listeners) {
        endpoints.push_back(listener->bound);
    }
    return endpoints;
}

std::vector<Server::PortalInfo> Server::portals() const {
    std::lock_guard lock(_portals_mutex);
    std::vector<PortalInfo> portals;
    for (const auto& listener : _listeners) {
        portals.push_back({listener->bound, listener->tpgt});
    }
    return portals;
}

Result<std::shared_ptr<Target>> Server::add_target(const TargetConfig& config) {
    auto target = std::make_shared<Target>(config);
    {
        std::lock_guard lock(_portals_mutex);
        for (const auto& listener : _listeners) {
            target->device->add_port_group({listener->tpgt, {listener->tpgt}});
        }
    }
    std::lock_guard lock(_targets_mutex);
    // Keyed by the case-folded name (RFC 3722): a login naming it in another case finds it, and two
    // targets differing only in case are one name.
    if (!_targets.emplace(iscsi::fold_iscsi_name(config.iqn), target).second) {
        return make_error(fmt::format("target {} exists already", config.iqn), EEXIST);
    }
    return target;
}

Result<void> Server::remove_target(std::string_view iqn) {
    {
        std::lock_guard lock(_targets_mutex);
        auto it = _targets.find(iscsi::fold_iscsi_name(iqn));
        if (it == _targets.end()) {
            return make_error(fmt::format("target {}: no such target", iqn), ENOENT);
        }
        _targets.erase(it);
    }
    close_sessions_of(std::string(iqn), "the target was removed");
    return {};
}

std::shared_ptr<Target> Server::find_target(std::string_view iqn) const {
    std::lock_guard lock(_targets_mutex);
    auto it = _targets.find(iscsi::fold_iscsi_name(iqn));
    return it == _targets.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Target>> Server::targets() const {
    std::lock_guard lock(_targets_mutex);
    std::vector<std::shared_ptr<Target>> out;
    out.reserve(_targets.size());
    for (const auto& [iqn, target] : _targets) {
        out.push_back(target);
    }
    return out;
}

std::vector<std::string> Server::target_addresses(const net::Endpoint& local, const Target* target) const {
    std::vector<std::string> addresses;
    auto config = target ? target->config() : nullptr;
    std::lock_guard lock(_portals_mutex);
    for (const auto& listener : _listeners) {
        if (config && !listener->shared.load() &&
            std::find(config->portals.begin(), config->portals.end(), listener->listen) ==
                config->portals.end()) {
            continue; // a portal of other targets only
        }
        net::Endpoint shown = listener->bound;
        // A wildcard portal is reported with the address the initiator reached us on.
        bool wildcard = false;
        if (shown.addr.ss_family == AF_INET) {
            wildcard = reinterpret_cast<const sockaddr_in&>(shown.addr).sin_addr.s_addr == htonl(INADDR_ANY);
        } else if (shown.addr.ss_family == AF_INET6) {
            wildcard = IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(shown.addr).sin6_addr);
        }
        if (wildcard && local.addr.ss_family == shown.addr.ss_family) {
            uint16_t port = shown.port();
            shown = local;
            if (shown.addr.ss_family == AF_INET) {
                reinterpret_cast<sockaddr_in&>(shown.addr).sin_port = htons(port);
            } else {
                reinterpret_cast<sockaddr_in6&>(shown.addr).sin6_port = htons(port);
            }
        }
        addresses.push_back(fmt::format("{},{}", shown.to_string(), listener->tpgt));
    }
    return addresses;
}

void Server::accept_ready(Listener& listener) {
    // Bounded per wake-up so a connection storm cannot starve this reactor's other work.
    for (int i = 0; i < 64 && listener.fd() >= 0; ++i) {
        net::Endpoint peer;
        auto fd = net::accept_tcp(listener.fd(), &peer);
        if (!fd) {
            if (fd.error().code != EAGAIN) {
                g_accept_log.warn("accept on {}: {}", listener.bound.to_string(), fd.error().message);
            }
            return;
        }
        if (_stopping.load()) {
            ::close(*fd);
            continue;
        }
        if (_open_connections.load() >= _config.limits.max_connections) {
            g_accept_log.warn("connection from {} refused: {} connections already open (limit)",
                              peer.to_string(), _open_connections.load());
            ::close(*fd);
            continue;
        }
        net::Reactor& reactor = _reactors.next();
        LoginAdmission admission = admit_login(peer, reactor, true);
        if (admission.outcome == LoginAdmission::Outcome::refused_global) {
            g_accept_log.warn("connection from {} refused: {} connections are already logging in (limit)",
                              peer.to_string(), _login_connections.load());
            ::close(*fd);
            continue;
        }
        if (admission.outcome == LoginAdmission::Outcome::evicting) {
            evict_login(admission.evicted, source_address(peer));
        }
        auto local = net::local_endpoint(*fd);
        net::tune_stream_socket(*fd);
        ++_open_connections; // counted now so the limit holds before the reactor picks it up
        int accepted = *fd;
        net::Endpoint local_endpoint = local ? *local : listener.bound;
        uint16_t tpgt = listener.tpgt;
        uint64_t ticket = admission.ticket;
        reactor.post([this, &reactor, accepted, peer, local_endpoint, tpgt, ticket] {
            serve(net::make_tcp_transport(accepted, peer.to_string()), reactor, peer, local_endpoint, tpgt,
                  ticket);
        });
    }
}

void Server::accept(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                    net::Endpoint local, uint16_t tpgt) {
    // Not limited: the caller (a test harness, an in-process transport) chose to hand it over.
    LoginAdmission admission = admit_login(peer, reactor, false);
    ++_open_connections;
    serve(std::move(transport), reactor, peer, local, tpgt, admission.ticket);
}

void Server::serve(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                   net::Endpoint local, uint16_t tpgt, uint64_t login_ticket) {
    auto* connection = new Connection(*this, reactor, std::move(transport), peer, local, tpgt, login_ticket);
    _local[reactor.index()].connections.push_back(connection);
    connection->start();
}

void Server::connection_opened(Connection&) {}

Server::LoginAdmission Server::admit_login(const net::Endpoint& peer, net::Reactor& reactor, bool limited) {
    LoginAdmission admission;
    std::lock_guard lock(_login_sources_mutex);
    std::deque<PendingLogin>& pending = _login_sources[source_address(peer)];
    admission.ticket = _next_login_ticket++;
    if (limited && pending.size() >= _config.limits.max_login_connections_per_source) {
        // The source's share is full. Refusing the newcomer would let a flood from one address lock out
        // a good initiator behind the same address (a NAT, a shared host): the oldest pending login
        // gives up its slot instead. A good login takes milliseconds, so the oldest is the one most
        // likely idle; the counts do not change, and the global bound holds.
        admission.outcome = LoginAdmission::Outcome::evicting;
        admission.evicted = pending.front();
        pending.pop_front();
        pending.push_back({admission.ticket, &reactor});
        return admission;
    }
    if (limited && _login_connections.load() >= _config.limits.max_login_connections) {
        if (pending.empty()) {
            _login_sources.erase(source_address(peer));
        }
        admission.outcome = LoginAdmission::Outcome::refused_global;
        return admission;
    }
    pending.push_back({admission.ticket, &reactor});
    ++_login_connections;
    return admission;
}

void Server::evict_login(const PendingLogin& login, const std::string& source) {
    uint32_t share = _config.limits.max_login_connections_per_source;
    login.reactor->post([this, index = login.reactor->index(), ticket = login.ticket, source, share] {
        // Found first, closed after: closing it takes it out of the list being searched.
        Connection* found = nullptr;
        for (Connection* c : _local[index].connections) {
            if (c->login_ticket() == ticket) {
                found = c;
                break;
            }
        }
        // Gone already, or it logged in meanwhile (it keeps its session): nothing to do.
        if (found != nullptr && found->logging_in()) {
            found->evict(fmt::format("{} connections from {} are logging in "
                                     "(limits.max_login_connections_per_source); the oldest makes room",
                                     share, source));
        }
    });
}

void Server::login_finished(const net::Endpoint& peer, uint64_t ticket) {
    std::lock_guard lock(_login_sources_mutex);
    auto it = _login_sources.find(source_address(peer));
    if (it == _login_sources.end()) {
        return;
    }
    std::deque<PendingLogin>& pending = it->second;
    auto mine = std::find_if(pending.begin(), pending.end(),
                             [&](const PendingLogin& p) { return p.ticket == ticket; });
    if (mine == pending.end()) {
        return; // evicted: its slot (and its place in the global count) went to a newcomer
    }
    pending.erase(mine);
    --_login_connections;
    if (pending.empty()) {
        _login_sources.erase(it);
    }
}

bool Server::may_access(const Target& target, std::string_view initiator, const net::Endpoint& peer) const {
    auto config = target.config();
    return config->acl.empty() || find_acl_entry(config->acl, initiator, peer) != nullptr;
}

void Server::connection_adopted(Connection& connection) {
    _local[connection.reactor().index()].connections.push_back(&connection);
}

void Server::connection_closed(Connection& connection) {
    auto& list = _local[connection.reactor().index()].connections;
    list.erase(std::remove(list.begin(), list.end(), &connection), list.end());
    if (--_open_connections == 0) {
        std::lock_guard lock(_drain_mutex);
        _drained.notify_all();
    }
}

void Server::session_destroyed() {
    if (--_live_sessions == 0) {
        std::lock_guard lock(_drain_mutex);
        _drained.notify_all();
    }
}

void Server::close_sessions_of(const std::string& iqn, std::string reason) {
    std::string folded = iscsi::fold_iscsi_name(iqn);
    for (auto& slot : _sessions.all()) {
        if (iscsi::fold_iscsi_name(slot->target_name) != folded) {
            continue;
        }
        slot->reactor->post([slot, reason] {
            if (slot->session) {
                slot->session->terminate(reason, {});
            }
        });
    }
}

void Server::terminate_reinstated(std::shared_ptr<SessionSlot> old_slot,
                                  std::shared_ptr<SessionSlot> successor) {
    // Runs the old session's termination on its reactor, then opens the new session's gate on its own.
    auto open_successor = [successor] {
        successor->reactor->post([successor] {
            if (successor->session) {
                successor->session->open_gate();
            } else {
                successor->gate_open = true;
            }
        });
    };
    old_slot->reactor->post([old_slot, open_successor = std::move(open_successor)]() mutable {
        if (old_slot->session) {
            old_slot->session->terminate("reinstated by a new login with the same InitiatorName and ISID",
                                         std::move(open_successor));
        } else {
            open_successor();
        }
    });
}

void Server::close_all_on(unsigned reactor_index, const std::string& reason) {
    std::vector<Connection*> connections = _local[reactor_index].connections;
    for (Connection* connection : connections) {
        connection->drop(reason);
    }
    // ERL 2 sessions that lost every connection wait for one to come back; at shutdown none will.
    net::Reactor* here = &_reactors.at(reactor_index);
    for (auto& slot : _sessions.all()) {
        if (slot->reactor == here && slot->session && slot->session->connection_count() == 0) {
            slot->session->terminate(reason, {});
        }
    }
}

bool Server::shutdown(std::chrono::milliseconds grace) {
    if (_stopping.exchange(true)) {
        return true;
    }
    log_info("shutting down: closing {} connection(s)", _open_connections.load());
    std::vector<std::shared_ptr<Listener>> listeners;
    {
        std::lock_guard lock(_portals_mutex);
        listeners.swap(_listeners);
    }
    net::Reactor& first = _reactors.at(0);
    first.post([listeners, &first] {
        for (const auto& listener : listeners) {
            listener->close_socket(first);
        }
    });
    // Every reactor must have run its close_all_on before we look at the counters: with no connection
    // open the counters are already zero, and a close task still queued when the reactors stop would
    // run during their teardown.
    size_t closes_run = 0;
    for (unsigned i = 0; i < _reactors.size(); ++i) {
        _reactors.at(i).post([this, i, &closes_run] {
            close_all_on(i, "ispaced is shutting down");
            std::lock_guard lock(_drain_mutex);
            ++closes_run;
            _drained.notify_all();
        });
    }
    bool clean = true;
    {
        std::unique_lock lock(_drain_mutex);
        _drained.wait(lock, [&] { return closes_run == _reactors.size(); });
        clean = _drained.wait_for(
            lock, grace, [this] { return _open_connections.load() == 0 && _live_sessions.load() == 0; });
    }
    if (!clean) {
        log_warn("shutdown: {} connection(s) and {} session(s) still open after {} ms",
                 _open_connections.load(), _live_sessions.load(), grace.count());
    }

    // Make every acknowledged write durable before exiting. The state is shared with the callbacks, which
    // may outlive this call when a flush hangs past the deadline.
    struct Flushes {
        std::mutex mutex;
        std::condition_variable flushed;
        size_t pending = 0;
        bool ok = true;
    };
    auto flushes = std::make_shared<Flushes>();
    std::vector<std::pair<std::shared_ptr<Target>, uint64_t>> luns;
    for (auto& target : targets()) {
        for (uint64_t lun : target->device->luns()) {
            luns.emplace_back(target, lun);
        }
    }
    flushes->pending = luns.size();
    first.post([flushes, luns] {
        for (const auto& [target, lun] : luns) {
            target->device->flush_lu(lun, [flushes, iqn = target->iqn, lun = lun](int error) {
                std::lock_guard lock(flushes->mutex);
                if (error != 0 && error != -ENOENT) {
                    flushes->ok = false;
                    log_error("shutdown: flushing {} lun {} failed: {}", iqn, lun, std::strerror(-error));
                }
                --flushes->pending;
                flushes->flushed.notify_all();
            });
        }
    });
    bool flush_ok;
    {
        std::unique_lock lock(flushes->mutex);
        if (!flushes->flushed.wait_for(lock, std::chrono::seconds(30),
                                       [&] { return flushes->pending == 0; })) {
            log_error("shutdown: backstore flush did not finish within 30 s");
            flushes->ok = false;
        }
        flush_ok = flushes->ok;
    }
    return clean && flush_ok;
}

} // namespace ispace::iscsi_target
