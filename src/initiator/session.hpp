// SessionCore: one iSCSI session (normal session type) with its connections, the command queue, the
// CmdSN window, and recovery by session reinstatement.
//
// Threading (docs/initiator.md): the session has a home reactor, where every state transition of the
// session runs (logins, recovery, close). Its connections are spread over the initiator's reactors
// (connection i on reactor home+i), so an MC/S session uses several cores: framing, digests, Data-In
// landing and completions run on each connection's own reactor. What the connections share — the
// pending queue, the CmdSN window, the dispatch of tasks to connections — sits behind `_mu`, held only
// for a few instructions per command; submit() takes it from any thread.
//
// Queueing: submit() appends to `_pending` (ordered by submission sequence number); dispatch takes
// tasks from its head while the CmdSN window (MaxCmdSN) and the queue depth allow, gives each the next
// CmdSN and puts it in the inbox of the connection with the fewest outstanding commands. A task handed
// back for a retry keeps its sequence number and so goes back to the head.
//
// Recovery: any connection failure in full feature phase stops every connection (they hand back every
// task without a status), then the leading connection logs in again with the same ISID and TSIH 0 —
// session reinstatement, which makes the target terminate the old session's tasks — and the others
// follow; the tasks are then dispatched again in their original order.
//
// Membership (add_connection / remove_connection, "Adding and removing connections" in session.cpp):
// both run on the home reactor, like every other change to the session's connection lists, so they are
// serialized with logins, ERL 2 recovery and close without further locking; `_active` (the dispatch set)
// changes only under `_mu` as well.
#pragma once

#include "initiator/connection.hpp"
#include "iscsi/params.hpp"
#include "iscsi/pdu.hpp"
#include "ispace/initiator.hpp"
#include "net/reactor.hpp"

#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace ispace::initiator {

class SessionCore;

// Connections per session, at most: a connection's CID is also its ITT tag byte and picks its reactor.
inline constexpr unsigned max_session_connections = 64;

// The built-in CHAP (iscsi/chap.hpp, MD5 and SHA-256, mutual when target credentials are set).
AuthenticatorFactory default_authenticator_factory();
// The credentials' shape (user name, secret length, distinct secrets for mutual CHAP), before a login.
Result<void> check_credentials(const ChapCredentials& credentials);
// The digest values to offer at login for a DigestMode, in order of preference.
std::vector<iscsi::Digest> offered_digests(DigestMode mode);

// The shared part of an Initiator: its reactors, its name, the ISID space and the live sessions.
class InitiatorCore {
public:
    explicit InitiatorCore(InitiatorOptions options);
    ~InitiatorCore();

    const InitiatorOptions& options() const { return _options; }
    unsigned threads() const { return _reactors->size(); }
    net::Reactor& reactor(unsigned i) { return _reactors->at(i % _reactors->size()); }
    // Round-robin start index for a new session's home reactor.
    unsigned next_home() { return _next_home.fetch_add(1, std::memory_order_relaxed) % _reactors->size(); }
    // A fresh ISID: type "random" (RFC 7143 §11.12.5: T=11b, a random 24-bit B+C chosen once per
    // process) with the qualifier counting the sessions this process opened.
    iscsi::Isid next_isid();
    std::shared_ptr<TransportFactory> transport() const { return _transport; }
    bool on_reactor_thread() const;

    void add_session(const std::shared_ptr<SessionCore>& session);
    // Closes every live session (blocking), then stops and joins the reactors (when they are ours).
    void shutdown();

private:
    InitiatorOptions _options;
    std::shared_ptr<TransportFactory> _transport;
    // Ours, or (embedded in a runtime) the runtime's; _owned_reactors holds ours.
    net::ReactorGroup* _reactors = nullptr;
    std::unique_ptr<net::ReactorGroup> _owned_reactors;
    std::atomic<unsigned> _next_home{0};
    std::mutex _mu;
    uint32_t _isid_random = 0;
    uint16_t _isid_qualifier = 0;
    std::vector<std::weak_ptr<SessionCore>> _sessions;
};

class SessionCore final : public ConnectionOwner, public std::enable_shared_from_this<SessionCore> {
public:
    SessionCore(InitiatorCore& initiator, SessionOptions options, iscsi::Isid isid, unsigned first_reactor);
    ~SessionCore() override;

    // Any thread. `done` runs on the home reactor.
    void start(Function<void(Result<void>)> done);
    void submit(Request request, Completion done);
    void close(Function<void()> done);
    // MC/S while the session is up (any thread; `done` runs on the home reactor).
    void add_connection(Function<void(Result<uint16_t>)> done);
    void remove_connection(uint16_t cid, Function<void(Result<void>)> done);
    // The Initiator is going away: after this nothing may touch a reactor.
    void detach();
    SessionInfo info() const;

    // ConnectionOwner
    const SessionOptions& options() const override { return _options; }
    TransportFactory& transport_factory() override { return *_transport; }
    SessionCounters& counters() override { return _counters; }
    void window_update(Connection& conn, uint32_t exp_cmd_sn, uint32_t max_cmd_sn) override;
    uint32_t immediate_cmd_sn() override;
    uint32_t allocate_cmd_sn() override;
    void take_inbox(Connection& conn, std::vector<PendingRequest*>& out) override;
    void task_done(Connection& conn, PendingRequest* task, Response&& result) override;
    void task_retry(Connection& conn, PendingRequest* task, std::chrono::milliseconds delay) override;
    void connection_failed(Connection& conn, const Error& why) override;

private:
    enum class State : uint8_t { idle, connecting, up, recovering, closing, failed, closed };

    net::Reactor& home() { return _initiator.reactor(_first_reactor); }
    std::shared_ptr<Connection> make_connection(uint16_t cid);
    iscsi::InitiatorLoginConfig login_config(uint16_t cid, uint16_t tsih);
    void complete_with_error(PendingRequest* task,
                             const Error& error); // runs the completion (caller's thread)

    // Guarded by _mu.
    void dispatch_locked();
    void insert_pending_locked(PendingRequest* task);
    bool idle_locked() const { return _pending.empty() && _outstanding == 0 && _delayed == 0; }

    // Home reactor only.
    void attempt();
    enum class LoginRole : uint8_t { leading, secondary, reinstating, joining };
    void login_connection(const std::shared_ptr<Connection>& conn, uint16_t tsih, LoginRole role);
    void on_leading_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                          LoginOutcome&& outcome);
    void on_secondary_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                            LoginOutcome&& outcome);
    void go_live();
    void attempt_failed(Error why);
    void on_connection_failed(const std::shared_ptr<Connection>& conn, uint64_t generation, const Error& why);
    void begin_recovery(const Error& why);
    // ---- ErrorRecoveryLevel 2 (session.cpp, "Connection recovery") ----
    // One connection failed at level 2: log it in again with its CID after Time2Wait and reassign its
    // tasks there; the other connections go on. False when that cannot be tried (then the session is
    // reinstated).
    bool recover_connection(const std::shared_ptr<Connection>& conn, const Error& why);
    bool fail_over(const std::shared_ptr<Connection>& failed, const Error& why);
    void on_reinstating_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                              LoginOutcome&& outcome);
    // ---- Adding and removing connections (session.cpp) ----
    void start_add(Function<void(Result<uint16_t>)> done);
    void on_joining_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                          LoginOutcome&& outcome);
    void start_remove(uint16_t cid, Function<void(Result<void>)> done);
    // Every few milliseconds while connection `cid` drains: once its last task is done, the Logout.
    void poll_removal(uint16_t cid);
    void on_removal_logout(const std::shared_ptr<Connection>& conn, uint64_t generation, Result<void> r);
    // A connection being removed failed: recovered (while it still has tasks) or the removal is done.
    void on_removing_connection_failed(const std::shared_ptr<Connection>& conn, const Error& why);
    void finish_removal(uint16_t cid, const std::shared_ptr<Connection>& conn);
    // Shuts a connection down and hands back any task it still had (none, normally) to the queue.
    void retire_connection(const std::shared_ptr<Connection>& conn, const Error& why);
    // The session is being reinstated or closed: pending adds fail, pending removals are done (the
    // connection goes with the old session; a reinstatement logs in `_wanted`, which no longer counts it).
    void abandon_membership_changes(const Error& why);
    // CIDs of the session's connections: logged in, joining, or being recovered at ERL 2.
    std::vector<uint16_t> cids_in_use() const;
    bool removing_cid(uint16_t cid) const;
    // Connections the session has, not counting those joining or being removed (at least 1).
    unsigned members() const;
    // The session is closed or detached (any thread; takes _mu): why `what` cannot be done.
    std::optional<Error> closed_refusal(const char* what) const;
    // Why the session cannot add or remove a connection now (not up, closing), if so. Under _mu.
    std::optional<Error> membership_refusal_locked(const char* what) const;
    void stop_connections(const Error& why, Function<void()> then);
    void fail_all(const Error& why);
    void maybe_finish_close();
    void finish_close();

    InitiatorCore& _initiator;
    SessionOptions _options;
    std::shared_ptr<TransportFactory> _transport; // the Initiator's (held: connections use it to the end)
    iscsi::Isid _isid;
    unsigned _first_reactor;
    std::string _label; // "iqn... at host:port"
    SessionCounters _counters;

    mutable std::mutex _mu;
    // Guarded by _mu.
    State _state = State::idle;
    bool _closing = false;
    bool _detached = false;
    std::deque<PendingRequest*> _pending; // ordered by PendingRequest::seq
    std::vector<std::shared_ptr<Connection>> _active;
    uint32_t _next_cmd_sn = 1;
    uint32_t _exp_cmd_sn = 1;
    uint32_t _max_cmd_sn = 0;
    unsigned _outstanding = 0; // dispatched to connections, not yet completed or handed back
    size_t _spread = 0;        // where the next least-loaded search starts, so ties rotate
    unsigned _delayed = 0;     // waiting out a BUSY back-off
    uint64_t _next_seq = 0;
    std::optional<Error> _failure;
    std::vector<Function<void()>> _close_waiters;
    iscsi::SessionParams _params;
    iscsi::ConnectionParams _leading_params;
    uint16_t _tsih = 0;
    std::vector<uint64_t> _sent_per_connection;

    // Home reactor only.
    uint64_t _generation = 0;
    std::vector<std::shared_ptr<Connection>> _all; // every connection of the current attempt
    std::vector<std::shared_ptr<Connection>> _ok;  // logged in during the current attempt
    unsigned _logins_left = 0;
    Function<void(Result<void>)> _start_done;
    bool _ever_up = false;
    bool _close_started = false;
    net::Clock::time_point _recovery_deadline{};
    unsigned _reconnect_attempt = 0;
    std::string _host; // where the next attempt logs in (a redirection changes it)
    uint16_t _port = 0;
    unsigned _redirects = 0;
    // Connections a reinstatement logs in: SessionOptions::connections, then what add_connection and
    // remove_connection leave (the target's MaxConnections may still allow fewer).
    unsigned _wanted = 1;
    struct Join {
        std::shared_ptr<Connection> conn;
        Function<void(Result<uint16_t>)> done;
    };
    std::vector<Join> _joins; // add_connection logins in progress
    struct Removal {
        uint16_t cid = 0;
        bool logging_out = false;
        Function<void(Result<void>)> done;
    };
    std::vector<Removal> _removals;          // remove_connection in progress
    std::vector<uint16_t> _cids_in_recovery; // ERL 2: lost, not yet logged in again
};

} // namespace ispace::initiator
