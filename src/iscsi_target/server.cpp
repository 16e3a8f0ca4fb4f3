#include "iscsi_target/server.hpp"

#include "common/log.hpp"
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

// ---- Listener --------------------------------------------------------------------------------------

class Server::Listener final : public net::FdHandler {
public:
    Listener(Server& server, size_t index, int fd, net::Endpoint bound, uint16_t tpgt)
        : _server(server), _index(index), _fd(fd), _bound(bound), _tpgt(tpgt) {}
    ~Listener() override {
        if (_fd >= 0) {
            ::close(_fd);
        }
    }
    void on_fd_event(uint32_t) override { _server.accept_ready(_index); }

    int fd() const { return _fd; }
    const net::Endpoint& bound() const { return _bound; }
    uint16_t tpgt() const { return _tpgt; }
    void close_socket(net::Reactor& reactor) {
        if (_fd >= 0) {
            reactor.remove(_fd);
            ::close(_fd);
            _fd = -1;
        }
    }

private:
    Server& _server;
    size_t _index;
    int _fd;
    net::Endpoint _bound;
    uint16_t _tpgt;
};

// ---- Server ----------------------------------------------------------------------------------------

// Where a LUN's persistent-reservation state (APTPL) lives: under --state-dir when given, else beside
// a file LUN as FILE.pr, so the reservations travel with the data they guard. A block device needs
// --state-dir; a RAM or null disk keeps none (its data does not survive a restart either). Empty: APTPL
// is not supported for that LUN, which REPORT CAPABILITIES says.
Result<std::string> pr_state_path(const ServerConfig& config, const TargetConfig& target,
                                  const LunConfig& lun) {
    using Kind = backstore::DeviceSpec::Kind;
    if (!config.state_dir.empty()) {
        std::string name = target.iqn;
        std::replace_if(
            name.begin(), name.end(), [](char c) { return c == ':' || c == '/'; }, '_');
        std::string dir = config.state_dir + "/" + name;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) {
            return make_error(fmt::format("state directory {}: {}", dir, ec.message()));
        }
        return fmt::format("{}/lun{}.pr", dir, lun.lun);
    }
    if (lun.device.kind == Kind::file) {
        return lun.device.path + ".pr";
    }
    if (lun.device.kind == Kind::block) {
        log_info("target {} lun {}: persistent reservations will not survive a restart (APTPL) without "
                 "--state-dir",
                 target.iqn, lun.lun);
    }
    return std::string();
}

Server::Server(ServerConfig config) : _config(std::move(config)) {}

Server::~Server() {
    if (_started && !_stopping.load()) {
        shutdown(std::chrono::seconds(5));
    }
}

Target* Server::find_target(std::string_view iqn) const {
    for (auto& target : _targets) {
        if (target->config.iqn == iqn) {
            return target.get();
        }
    }
    return nullptr;
}

Result<void> Server::start() {
    if (auto valid = validate(_config); !valid) {
        return valid;
    }
    if (auto valid = iscsi::validate(_config.negotiation); !valid) {
        return make_error("negotiation settings: " + valid.error().message);
    }
    for (const TargetConfig& tc : _config.targets) {
        // What protects the target, said once at start so that an administrator reading the log knows.
        log_info("target {}: {}; {}", tc.iqn,
                 tc.chap ? fmt::format("CHAP required (user {}{})", tc.chap->user,
                                       tc.mutual_chap ? ", mutual CHAP offered" : "")
                         : std::string("no authentication"),
                 tc.acl.empty() ? std::string("no ACL: every initiator may log in")
                                : fmt::format("ACL admits {} initiator entr{}", tc.acl.size(),
                                              tc.acl.size() == 1 ? "y" : "ies"));
        auto target = std::make_unique<Target>();
        target->config = tc;
        target->device = std::make_unique<scsi::TargetDevice>(tc.iqn);
        for (const PortalConfig& pc : _config.portals) { // ALUA: a portal group is a target port and a group
            target->device->add_port_group({pc.tpgt, {pc.tpgt}});
        }
        for (const LunConfig& lc : tc.luns) {
            auto device = backstore::open_device(lc.device);
            if (!device) {
                return make_error(fmt::format("lun {}: {}", lc.lun, device.error().message));
            }
            backstore::Geometry geometry = (*device)->geometry();
            log_info("target {} lun {}: {} ({} blocks of {} bytes{}{})", tc.iqn, lc.lun,
                     (*device)->describe(), geometry.block_count, geometry.block_size,
                     (*device)->features().thin ? ", thin" : "",
                     (*device)->features().read_only ? ", read-only" : "");
            scsi::LuOptions options;
            options.max_transfer_bytes = _config.limits.max_transfer_bytes;
            options.sanitize_bytes_per_second = _config.limits.sanitize_bytes_per_second;
            auto state_path = pr_state_path(_config, tc, lc);
            if (!state_path) {
                return make_error(fmt::format("lun {}: {}", lc.lun, state_path.error().message));
            }
            options.pr_state_path = *state_path;
            if (auto added = target->device->add_lu(lc.lun, std::move(device).value(), options); !added) {
                return make_error(fmt::format("lun {}: {}", lc.lun, added.error().message));
            }
        }
        _targets.push_back(std::move(target));
    }

    unsigned count = _config.reactors ? _config.reactors : std::max(1u, std::thread::hardware_concurrency());
    _reactors = std::make_unique<net::ReactorGroup>(count);
    _local.resize(count);

    for (size_t i = 0; i < _config.portals.size(); ++i) {
        const PortalConfig& pc = _config.portals[i];
        auto endpoint = net::parse_endpoint(pc.listen, 3260);
        if (!endpoint) {
            return make_error(fmt::format("listen {}: {}", pc.listen, endpoint.error().message));
        }
        auto fd = net::listen_tcp(*endpoint);
        if (!fd) {
            return make_error(fmt::format("listen {}: {}", pc.listen, fd.error().message));
        }
        auto bound = net::local_endpoint(*fd);
        if (!bound) {
            ::close(*fd);
            return make_error(fmt::format("listen {}: {}", pc.listen, bound.error().message));
        }
        _listeners.push_back(std::make_unique<Listener>(*this, i, *fd, *bound, pc.tpgt));
    }

    _reactors->start();
    // Listening sockets are served by reactor 0; accepted connections are spread over all reactors.
    net::Reactor& first = _reactors->at(0);
    first.post([this, &first] {
        for (auto& listener : _listeners) {
            first.add(listener->fd(), EPOLLIN, listener.get());
        }
    });
    _started = true;
    return {};
}

std::vector<net::Endpoint> Server::portal_endpoints() const {
    std::vector<net::Endpoint> endpoints;
    for (auto& listener : _listeners) {
        endpoints.push_back(listener->bound());
    }
    return endpoints;
}

std::vector<std::string> Server::target_addresses(const net::Endpoint& local) const {
    std::vector<std::string> addresses;
    for (auto& listener : _listeners) {
        net::Endpoint shown = listener->bound();
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
        addresses.push_back(fmt::format("{},{}", shown.to_string(), listener->tpgt()));
    }
    return addresses;
}

void Server::accept_ready(size_t portal_index) {
    Listener& listener = *_listeners[portal_index];
    // Bounded per wake-up so a connection storm cannot starve this reactor's other work.
    for (int i = 0; i < 64 && listener.fd() >= 0; ++i) {
        net::Endpoint peer;
        auto fd = net::accept_tcp(listener.fd(), &peer);
        if (!fd) {
            if (fd.error().code != EAGAIN) {
                log_warn("accept on {}: {}", listener.bound().to_string(), fd.error().message);
            }
            return;
        }
        if (_stopping.load()) {
            ::close(*fd);
            continue;
        }
        if (_open_connections.load() >= _config.limits.max_connections) {
            log_warn("connection from {} refused: {} connections already open (limit)", peer.to_string(),
                     _open_connections.load());
            ::close(*fd);
            continue;
        }
        if (_login_connections.load() >= _config.limits.max_login_connections) {
            log_warn("connection from {} refused: {} connections are already logging in (limit)",
                     peer.to_string(), _login_connections.load());
            ::close(*fd);
            continue;
        }
        ++_login_connections;
        auto local = net::local_endpoint(*fd);
        net::tune_stream_socket(*fd);
        net::Reactor& reactor = _reactors->next();
        ++_open_connections; // counted now so the limit holds before the reactor picks it up
        int accepted = *fd;
        net::Endpoint local_endpoint = local ? *local : listener.bound();
        uint16_t tpgt = listener.tpgt();
        reactor.post([this, &reactor, accepted, peer, local_endpoint, tpgt] {
            serve(net::make_tcp_transport(accepted, peer.to_string()), reactor, peer, local_endpoint, tpgt);
        });
    }
}

void Server::accept(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                    net::Endpoint local, uint16_t tpgt) {
    ++_login_connections;
    ++_open_connections;
    serve(std::move(transport), reactor, peer, local, tpgt);
}

void Server::serve(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                   net::Endpoint local, uint16_t tpgt) {
    auto* connection = new Connection(*this, reactor, std::move(transport), peer, local, tpgt);
    _local[reactor.index()].connections.push_back(connection);
    connection->start();
}

void Server::connection_opened(Connection&) {}

bool Server::may_access(const Target& target, std::string_view initiator, const net::Endpoint& peer) const {
    return target.config.acl.empty() || find_acl_entry(target.config.acl, initiator, peer) != nullptr;
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

void Server::close_sessions_of(const Target& target, std::string reason) {
    for (auto& slot : _sessions.all()) {
        if (slot->target_name != target.config.iqn) {
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
}

bool Server::shutdown(std::chrono::milliseconds grace) {
    if (!_started || _stopping.exchange(true)) {
        return true;
    }
    log_info("shutting down: closing {} connection(s)", _open_connections.load());
    net::Reactor& first = _reactors->at(0);
    first.post([this, &first] {
        for (auto& listener : _listeners) {
            listener->close_socket(first);
        }
    });
    // Every reactor must have run its close_all_on before we look at the counters: with no connection
    // open the counters are already zero, and a close task still queued when the reactors stop would
    // otherwise run during their teardown, after this Server's state is gone.
    size_t closes_run = 0;
    for (unsigned i = 0; i < _reactors->size(); ++i) {
        _reactors->at(i).post([this, i, &closes_run] {
            close_all_on(i, "ispaced is shutting down");
            std::lock_guard lock(_drain_mutex);
            ++closes_run;
            _drained.notify_all();
        });
    }
    bool clean = true;
    {
        std::unique_lock lock(_drain_mutex);
        _drained.wait(lock, [&] { return closes_run == _reactors->size(); });
        clean = _drained.wait_for(
            lock, grace, [this] { return _open_connections.load() == 0 && _live_sessions.load() == 0; });
    }
    if (!clean) {
        log_warn("shutdown: {} connection(s) and {} session(s) still open after {} ms",
                 _open_connections.load(), _live_sessions.load(), grace.count());
    }

    // Make every acknowledged write durable before exiting.
    std::mutex flush_mutex;
    std::condition_variable flushed;
    size_t pending = 0;
    for (auto& target : _targets) {
        pending += target->device->luns().size();
    }
    size_t done = 0;
    bool flush_ok = true;
    first.post([&] {
        for (auto& target : _targets) {
            for (uint64_t lun : target->device->luns()) {
                target->device->flush_lu(lun, [&](int error) {
                    std::lock_guard lock(flush_mutex);
                    if (error != 0) {
                        flush_ok = false;
                        log_error("shutdown: flushing {} lun {} failed: {}", target->config.iqn, lun,
                                  std::strerror(-error));
                    }
                    ++done;
                    flushed.notify_all();
                });
            }
        }
    });
    {
        std::unique_lock lock(flush_mutex);
        if (!flushed.wait_for(lock, std::chrono::seconds(30), [&] { return done == pending; })) {
            log_error("shutdown: backstore flush did not finish within 30 s");
            flush_ok = false;
        }
    }
    _reactors->stop();
    _reactors->join();
    // Destroy the reactors now, while everything their teardown may still run (posted and deferred
    // work, I/O completions) refers to is alive: connections, _local, the targets.
    _reactors.reset();
    _listeners.clear();
    log_info("shutdown complete");
    return clean && flush_ok;
}

} // namespace ispace::iscsi_target
