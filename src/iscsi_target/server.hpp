// The iSCSI target daemon's core: portals, the targets it serves, the session registry, and the
// reactors everything runs on. ispaced's main() builds a ServerConfig and runs one Server.
#pragma once

#include "common/counter.hpp"
#include "common/result.hpp"
#include "iscsi_target/buffer_budget.hpp"
#include "iscsi_target/config.hpp"
#include "iscsi_target/session.hpp"
#include "net/reactor.hpp"
#include "net/socket.hpp"
#include "net/transport.hpp"
#include "scsi/target.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
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

// What a session looks like from the outside (ispace session list): its identity, every key it
// negotiated and its connections. Gathered on the session's reactor (Server::describe_sessions).
struct ConnectionInfo {
    uint16_t cid = 0;
    std::string peer;  // "10.0.0.7:51412"
    std::string local; // the address the initiator reached
    uint16_t portal_group = 0;
    iscsi::KeyValueList keys;           // HeaderDigest, DataDigest, MaxRecvDataSegmentLength (the target's)
    iscsi::KeyValueList initiator_keys; // MaxRecvDataSegmentLength as the initiator declared it
};
struct SessionInfo {
    uint16_t tsih = 0;
    std::string initiator;
    std::string isid; // 12 hex digits
    std::string target;
    iscsi::KeyValueList keys; // every session-wide key (iscsi/param_settings.hpp)
    std::vector<ConnectionInfo> connections;
    size_t tasks = 0; // commands in the session's task table
};

// The settings logins read that may change while the daemon runs (ispace param set, apply, SIGHUP):
// an immutable snapshot swapped whole, read once per login.
struct LiveSettings {
    iscsi::NegotiationConfig negotiation; // for targets without a negotiation of their own
    std::optional<iscsi::ChapCredentials> discovery_chap;
    std::optional<iscsi::ChapCredentials> discovery_mutual_chap;
};

// Counters for metrics, summed over reactors when read (Server::statistics).
struct ServerStatistics {
    struct PerTarget {
        uint64_t sessions = 0;
        uint64_t connections = 0;
    };
    std::map<std::string, PerTarget> targets;       // every served target, with zeroes too
    std::map<std::string, uint64_t> login_failures; // by reason: "authentication_failure", "timeout"...
    std::map<std::string, uint64_t> rejected_pdus;  // by Reject reason: "protocol_error"...
    // ErrorRecoveryLevel 1 events, by name: "recovery_r2t", "data_snack"... (recovery_event_names).
    std::map<std::string, uint64_t> recovery;
    uint64_t discovery_sessions = 0;
};

// What ERL 1 recovery did (RFC 7143 §7.1-§7.2, §11.16), counted per event.
enum class RecoveryEvent : uint8_t {
    recovery_r2t,          // a Data-Out lost to a data digest error asked for again
    data_snack,            // Data-In resent for a Data SNACK
    r2t_snack,             // R2Ts resent for an R2T SNACK
    status_snack,          // responses resent for a Status SNACK
    data_ack,              // DataACK SNACKs accepted
    snack_rejected,        // SNACKs answered with a Reject
    header_digest_skipped, // PDUs skipped after a header digest error
    connection_failed,     // ERL 2: a connection failed and its session went on
    connection_reinstated, // ERL 2: a login replaced a connection with the same CID
    task_reassigned,       // ERL 2: TASK REASSIGN moved a task to another connection
    reassign_expired,      // ERL 2: an orphaned task was not reassigned in time and was aborted
    connection_dropped,    // ERL 2: the target dropped a connection with AsyncEvent 2 (administrator)
    count_
};
inline constexpr std::string_view recovery_event_names[] = {
    "recovery_r2t",          "data_snack",        "r2t_snack",
    "status_snack",          "data_ack",          "snack_rejected",
    "header_digest_skipped", "connection_failed", "connection_reinstated",
    "task_reassigned",       "reassign_expired",  "connection_dropped"};

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
    // A shared portal serves every target; an unshared one only the targets whose `portals` name it.
    Result<void> set_portal_shared(std::string_view listen, bool shared);
    // Whether a login that arrived on portal group `tpgt` may reach `target` (SendTargets lists a
    // target's addresses by the same rule).
    bool serves(const Target& target, uint16_t tpgt) const;
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

    // --- live settings and introspection (blocking: not from a reactor) ---
    std::shared_ptr<const LiveSettings> live() const;
    void set_live(LiveSettings settings);
    // Every normal session as it is now: each reactor describes its own (no lock on the I/O path).
    // Sessions on a reactor that does not answer within `timeout` are left out.
    std::vector<SessionInfo> describe_sessions(std::chrono::milliseconds timeout) const;
    // Ends the session with TSIH `tsih` (its connections closed, its tasks aborted); returns once it
    // is gone, or after `wait` with an error saying it is still draining.
    Result<void> close_session(uint16_t tsih, const std::string& reason, std::chrono::milliseconds wait);
    // Drops one connection (CID `cid`) of session `tsih` at ErrorRecoveryLevel 2 (Session::drop_connection:
    // AsyncEvent 2, its tasks kept for reassignment, closed after `grace`). Returns once the message is
    // queued, with what it announced; an error below level 2, for an unknown session or CID, or if the
    // session's reactor does not answer within `wait`.
    Result<Session::DroppedConnection> drop_connection(uint16_t tsih, uint16_t cid,
                                                       std::chrono::milliseconds grace,
                                                       std::chrono::milliseconds wait);
    // Closes the sessions of `iqn` whose initiator the target's ACL no longer admits (after an ACL
    // change): LIO does the same when a node ACL is deleted.
    void close_sessions_not_admitted(const std::string& iqn);
    // Declares `keys` anew on every connection of session `tsih` (RFC 7143 §11.9.1, AsyncEvent 4: the
    // initiator answers with a Text Request, which the target answers with the keys). Keys must pass
    // iscsi::check_renegotiable. Returns once every connection completed the exchange, or with an error
    // naming the connections whose initiator did not answer within `wait`.
    Result<void> renegotiate(uint16_t tsih, const iscsi::KeyValueList& keys, std::chrono::seconds wait);
    ServerStatistics statistics() const;

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
    // Data-In memory of every session together (limits.buffer_memory).
    const std::shared_ptr<BufferBudget>& buffer_budget() const { return _buffer_budget; }
    SessionRegistry& sessions() { return _sessions; }
    net::ReactorGroup& reactors() { return _reactors; }
    // "TargetAddress" values for SendTargets: every portal, with `local` replacing a wildcard address.
    // With `target`, only the portals that serve it (serves()).
    std::vector<std::string> target_addresses(const net::Endpoint& local,
                                              const Target* target = nullptr) const;

    // Connection bookkeeping (reactor-local lists, plus a global count for limits and shutdown).
    void connection_opened(Connection& connection);
    // A connection moves to its session's reactor: counted once while in flight, listed there.
    void connection_handed_over() { ++_open_connections; }
    void connection_adopted(Connection& connection);
    void connection_closed(Connection& connection);
    uint32_t open_connections() const { return _open_connections.load(); }
    // A connection left the login phase (logged in, or closed before): it no longer counts against
    // Limits::max_login_connections (and its source's share, max_login_connections_per_source).
    // A connection whose login slot was given to a newcomer (evicted) is no longer counted: nothing changes.
    void login_finished(const net::Endpoint& peer, uint64_t ticket);
    // Targets this initiator (name, address) may log in to, for SendTargets and logins.
    bool may_access(const Target& target, std::string_view initiator, const net::Endpoint& peer) const;
    // Counts sessions not yet destroyed (including ones draining tasks), for shutdown.
    void session_created() { ++_live_sessions; }
    void session_destroyed();

    // Metrics, from the connection's reactor.
    void count_login_failure(net::Reactor& reactor, iscsi::LoginStatus status);
    void count_login_timeout(net::Reactor& reactor);
    void count_reject(net::Reactor& reactor, iscsi::RejectReason reason);
    void count_recovery(net::Reactor& reactor, RecoveryEvent event);

    // Closes every session of the target named `iqn` on every reactor (TARGET COLD RESET ends all
    // I_T nexuses; a removed target ends its sessions).
    void close_sessions_of(const std::string& iqn, std::string reason);
    // Terminates a reinstated session (on its reactor), then opens the successor's gate.
    void terminate_reinstated(std::shared_ptr<SessionSlot> old_slot, std::shared_ptr<SessionSlot> successor);

    bool stopping() const { return _stopping.load(); }

private:
    class Listener;
    // Reasons a login fails, as metric labels; the index is what ReactorLocal counts.
    static constexpr std::string_view login_failure_reasons[] = {"initiator_error",
                                                                 "authentication_failure",
                                                                 "authorization_failure",
                                                                 "target_not_found",
                                                                 "target_removed",
                                                                 "unsupported_version",
                                                                 "too_many_connections",
                                                                 "missing_parameter",
                                                                 "cannot_include",
                                                                 "session_type",
                                                                 "session_does_not_exist",
                                                                 "invalid_during_login",
                                                                 "target_error",
                                                                 "service_unavailable",
                                                                 "out_of_resources",
                                                                 "timeout",
                                                                 "other"};
    static constexpr size_t reject_reasons = 16;
    struct alignas(64) ReactorLocal {
        std::vector<Connection*> connections;
        std::array<LocalCounter, std::size(login_failure_reasons)> login_failures{};
        std::array<LocalCounter, reject_reasons> rejects{};
        std::array<LocalCounter, size_t(RecoveryEvent::count_)> recovery{};
    };

    void accept_ready(Listener& listener);
    void serve(std::unique_ptr<net::Transport> transport, net::Reactor& reactor, net::Endpoint peer,
               net::Endpoint local, uint16_t tpgt, uint64_t login_ticket);
    void close_all_on(unsigned reactor_index, const std::string& reason);
    void listen_on_reactor(std::shared_ptr<Listener> listener);

    ServerConfig _config;
    net::ReactorGroup& _reactors;
    std::shared_ptr<BufferBudget> _buffer_budget;
    mutable std::mutex _live_mutex;
    std::shared_ptr<const LiveSettings> _live;
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
    // Connections logging in, per source address (no port), oldest first: taken on reactor 0 at accept,
    // given back on any reactor when a login ends. A ticket names one connection across reactors.
    struct PendingLogin {
        uint64_t ticket = 0;
        net::Reactor* reactor = nullptr;
    };
    struct LoginAdmission {
        enum class Outcome { admitted, evicting, refused_global } outcome = Outcome::admitted;
        uint64_t ticket = 0;
        PendingLogin evicted; // with evicting: the source's oldest login, whose slot the newcomer takes
    };
    // With `limited` (a socket accepted here), the global and per-source bounds apply: a source at its
    // share gives its oldest pending login's slot to the newcomer instead of refusing it.
    LoginAdmission admit_login(const net::Endpoint& peer, net::Reactor& reactor, bool limited);
    // Closes the connection holding `ticket` on its reactor if it is still logging in.
    void evict_login(const PendingLogin& login, const std::string& source);
    std::mutex _login_sources_mutex;
    std::unordered_map<std::string, std::deque<PendingLogin>> _login_sources;
    uint64_t _next_login_ticket = 1; // under _login_sources_mutex
    std::atomic<uint32_t> _live_sessions{0};
    std::atomic<bool> _started{false};
    std::atomic<bool> _stopping{false};
    std::mutex _drain_mutex;
    std::condition_variable _drained;
};

} // namespace ispace::iscsi_target
