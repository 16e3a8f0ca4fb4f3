// The iSCSI target daemon's core: portals, the targets it serves, the session registry, and the
// reactors everything runs on. ispaced's main() builds a ServerConfig and runs one Server.
#pragma once

#include "common/result.hpp"
#include "iscsi_target/config.hpp"
#include "net/reactor.hpp"
#include "net/socket.hpp"
#include "net/transport.hpp"
#include "scsi/target.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace ispace::iscsi_target {

class Connection;
class Session;

// One served iSCSI target: its name, its SCSI target device (the LUs, added and removed live through
// device), and the settings that may change while sessions run (alias, CHAP, ACL), read per login as
// a snapshot. Sessions hold it by shared_ptr: a removed target lives until its last session is gone.
class Target {
public:
    explicit Target(TargetConfig config);
    Target(const Target&) = delete;
    Target& operator=(const Target&) = delete;

    const std::string iqn;
    const std::unique_ptr<scsi::TargetDevice> device;

    // A snapshot of the settings; `luns` is empty (the LUs live in `device`).
    std::shared_ptr<const TargetConfig> config() const;
    // New settings for later logins (the iqn must stay; sessions already logged in keep theirs).
    void set_config(TargetConfig config);

private:
    mutable std::mutex _mutex;
    std::shared_ptr<const TargetConfig> _config;
};

// A session as other reactors see it. The Session object itself lives on `reactor` and is touched
// only there (through post()); `session` is cleared on that reactor when the session is destroyed.
struct SessionSlot {
    net::Reactor* reactor = nullptr;
    Session* session = nullptr; // reactor-local
    std::string initiator_name;
    uint64_t isid = 0;
    std::string target_name;
    uint16_t tsih = 0;
    // A reinstated predecessor is still terminating: the new session holds its commands until then
    // (so no stale write of the old session lands after a newer one). Reactor-local.
    bool gate_open = true;

    // For logins that add a connection (MC/S), which run on any reactor: guarded by `mutex`.
    std::mutex mutex;
    bool ready = false;          // the Session exists and `params` are its negotiated parameters
    iscsi::SessionParams params; // immutable once ready
    std::set<uint16_t> cids;     // connections in the session (and logging in to it)
};

// Sessions by (InitiatorName, ISID, TargetName) and by TSIH, for reinstatement and for adding
// connections. Thread-safe: logins on any reactor consult it.
class SessionRegistry {
public:
    struct Admission {
        std::shared_ptr<SessionSlot> slot;
        std::shared_ptr<SessionSlot> replaced; // a session this one reinstates, if any
    };
    // Registers a new normal session; an existing one with the same key is unregistered and returned in
    // `replaced` (the caller terminates it). Fails when the TSIH space is exhausted.
    Result<Admission> admit(net::Reactor& reactor, std::string initiator_name, uint64_t isid,
                            std::string target_name, uint32_t max_per_initiator);
    // A TSIH for a discovery session (not registered by name: discovery sessions are never reinstated).
    // 0 when the space is exhausted.
    uint16_t admit_discovery();
    void release_tsih(uint16_t tsih);
    std::shared_ptr<SessionSlot> find_tsih(uint16_t tsih) const;
    // Unregisters `slot` if it is still registered (a reinstated slot already is not).
    void remove(const std::shared_ptr<SessionSlot>& slot);
    size_t size() const;
    // Every registered slot (for target resets and shutdown).
    std::vector<std::shared_ptr<SessionSlot>> all() const;

private:
    using Key = std::tuple<std::string, uint64_t, std::string>;
    uint16_t allocate_tsih_locked();
    mutable std::mutex _mutex;
    std::map<Key, std::shared_ptr<SessionSlot>> _by_key;
    std::map<uint16_t, std::shared_ptr<SessionSlot>> _by_tsih;
    std::set<uint16_t> _discovery_tsihs;
    uint16_t _next_tsih = 1;
};

// The iSCSI target front end: portals (listening sockets), the targets it serves, connections and
// the session registry, all running on reactors it is given (mgmt::Runtime owns them and decides the
// order of start-up and teardown). Portals and targets may be added and removed while it serves.
//
// Threading: the public methods may be called from any thread that is not a reactor's, except where
// noted; connections and sessions call the "for connections and sessions" part on their reactors.
class Server {
public:
    // `config` gives the settings (negotiation, limits, discovery CHAP, state_dir); its portals and
    // targets are not read here (mgmt::Runtime adds them).
    Server(ServerConfig config, net::ReactorGroup& reactors);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds a portal now (so a port in use is an error before anything else is created); it accepts
    // once start() ran, or at once when added later. The endpoint as bound (port 0 resolved).
    Result<net::Endpoint> add_portal(const PortalConfig& portal);
    // Stops listening on the portal named as in add_portal or as bound (connections already open go
    // on).
    Result<void> remove_portal(std::string_view listen);
    // Starts accepting on every portal. The reactors must be running.
    void start();
    // The portals as bound (port 0 resolved), in the order added.
    std::vector<net::Endpoint> portal_endpoints() const;
    // The same with each portal's target portal group tag (every target is served on every portal),
    // for what announces the portals elsewhere (iSNS).
    struct PortalInfo {
        net::Endpoint endpoint;
        uint16_t tpgt = 0;
    };
    std::vector<PortalInfo> portals() const;

    // A new target, serving no LU yet (add them through target->device). Fails for a name in use.
    Result<std::shared_ptr<Target>> add_target(const TargetConfig& config);
    // Takes the target away (new logins fail) and ends its sessions; it is freed after the last.
    Result<void> remove_target(std::string_view iqn);
    std::shared_ptr<Target> find_target(std::string_view iqn) const;
    std::vector<std::shared_ptr<Target>> targets() const;

    // Stops accepting, closes every connection, waits up to `grace` for tasks to finish and flushes
    // the backstores. The reactors keep running (their owner stops them afterwards). Returns false if
    // something did not finish in time.
    bool shutdown(std::chrono::milliseconds grace);

    // Serves a connection that arrived over `transport` on `reactor` (call it on that reactor, whose
    // index() must be below the configured reactor count): what the TCP portals do for each accepted
    // socket, open to any other transport (the front end's unit tests inject in-memory ones).
    void accept(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                net::Endpoint local, uint16_t tpgt);

    // --- for connections and sessions ---
    const ServerConfig& config() const { return _config; }
    SessionRegistry& sessions() { return _sessions; }
    net::ReactorGroup& reactors() { return _reactors; }
    // "TargetAddress" values for SendTargets: every portal, with `local` replacing a wildcard address.
    std::vector<std::string> target_addresses(const net::Endpoint& local) const;

    // Connection bookkeeping (reactor-local lists, plus a global count for limits and shutdown).
    void connection_opened(Connection& connection);
    // A connection moves to its session's reactor: counted once while in flight, listed there.
    void connection_handed_over() { ++_open_connections; }
    void connection_adopted(Connection& connection);
    void connection_closed(Connection& connection);
    uint32_t open_connections() const { return _open_connections.load(); }
    // A connection left the login phase (logged in, or closed before): it no longer counts against
    // Limits::max_login_connections.
    void login_finished() { --_login_connections; }
    // Targets this initiator (name, address) may log in to, for SendTargets and logins.
    bool may_access(const Target& target, std::string_view initiator, const net::Endpoint& peer) const;
    // Counts sessions not yet destroyed (including ones draining tasks), for shutdown.
    void session_created() { ++_live_sessions; }
    void session_destroyed();

    // Closes every session of the target named `iqn` on every reactor (TARGET COLD RESET ends all
    // I_T nexuses; a removed target ends its sessions).
    void close_sessions_of(const std::string& iqn, std::string reason);
    // Terminates a reinstated session (on its reactor), then opens the successor's gate.
    void terminate_reinstated(std::shared_ptr<SessionSlot> old_slot, std::shared_ptr<SessionSlot> successor);

    bool stopping() const { return _stopping.load(); }

private:
    class Listener;
    struct ReactorLocal {
        std::vector<Connection*> connections;
    };

    void accept_ready(Listener& listener);
    void serve(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
               net::Endpoint local, uint16_t tpgt);
    void close_all_on(unsigned reactor_index, const std::string& reason);
    void listen_on_reactor(std::shared_ptr<Listener> listener);

    ServerConfig _config;
    net::ReactorGroup& _reactors;
    // Portals: added and removed by the control thread, served on reactor 0.
    mutable std::mutex _portals_mutex;
    std::vector<std::shared_ptr<Listener>> _listeners;
    uint16_t _next_tpgt = 1;
    // Targets by name; sessions hold their own references.
    mutable std::mutex _targets_mutex;
    std::map<std::string, std::shared_ptr<Target>, std::less<>> _targets;
    std::vector<ReactorLocal> _local;
    SessionRegistry _sessions;
    std::atomic<uint32_t> _open_connections{0};
    std::atomic<uint32_t> _login_connections{0};
    std::atomic<uint32_t> _live_sessions{0};
    std::atomic<bool> _started{false};
    std::atomic<bool> _stopping{false};
    std::mutex _drain_mutex;
    std::condition_variable _drained;
};

} // namespace ispace::iscsi_target
