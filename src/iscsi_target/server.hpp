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

// One served iSCSI target: its configuration and its SCSI target device.
struct Target {
    TargetConfig config;
    std::unique_ptr<scsi::TargetDevice> device;
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

class Server {
public:
    explicit Server(ServerConfig config);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Opens every LUN, binds every portal and starts the reactors. Errors say what to fix:
    // "lun 1: /srv/a.img: ...", "listen 127.0.0.1:3260: Address already in use".
    Result<void> start();
    // The portals as bound (port 0 resolved), in configuration order.
    std::vector<net::Endpoint> portal_endpoints() const;
    // Stops accepting, closes every connection, waits up to `grace` for tasks to finish, flushes the
    // backstores and stops the reactors. Returns false if something did not finish in time.
    bool shutdown(std::chrono::milliseconds grace);

    // Serves a connection that arrived over `transport` on `reactor` (call it on that reactor, whose
    // index() must be below the configured reactor count): what the TCP portals do for each accepted
    // socket, open to any other transport (the front end's unit tests inject in-memory ones).
    void accept(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
                net::Endpoint local, uint16_t tpgt);

    // --- for connections and sessions ---
    const ServerConfig& config() const { return _config; }
    Target* find_target(std::string_view iqn) const;
    const std::vector<std::unique_ptr<Target>>& targets() const { return _targets; }
    SessionRegistry& sessions() { return _sessions; }
    net::ReactorGroup& reactors() { return *_reactors; }
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

    // Closes every session of `target` on every reactor (TARGET COLD RESET ends all I_T nexuses).
    void close_sessions_of(const Target& target, std::string reason);
    // Terminates a reinstated session (on its reactor), then opens the successor's gate.
    void terminate_reinstated(std::shared_ptr<SessionSlot> old_slot, std::shared_ptr<SessionSlot> successor);

    bool stopping() const { return _stopping.load(); }

private:
    class Listener;
    struct ReactorLocal {
        std::vector<Connection*> connections;
    };

    void accept_ready(size_t portal_index);
    void serve(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
               net::Endpoint local, uint16_t tpgt);
    void close_all_on(unsigned reactor_index, const std::string& reason);

    ServerConfig _config;
    std::vector<std::unique_ptr<Target>> _targets;
    std::vector<std::unique_ptr<Listener>> _listeners;
    std::vector<ReactorLocal> _local;
    SessionRegistry _sessions;
    std::atomic<uint32_t> _open_connections{0};
    std::atomic<uint32_t> _login_connections{0};
    std::atomic<uint32_t> _live_sessions{0};
    std::atomic<bool> _stopping{false};
    std::mutex _drain_mutex;
    std::condition_variable _drained;
    bool _started = false;
    // Declared last so that it is destroyed first: a reactor's teardown runs what is still posted to
    // it, and that work refers to everything above. shutdown() destroys it explicitly too.
    std::unique_ptr<net::ReactorGroup> _reactors;
};

} // namespace ispace::iscsi_target
