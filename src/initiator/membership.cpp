// Adding and removing connections of a live session (MC/S under load): SessionCore::add_connection and
// remove_connection, behind Session::add_connection/remove_connection (docs/initiator.md).
//
// The rules, and why they do not race recovery:
//  - Everything here runs on the home reactor, as logins, ERL 2 recovery (recover_connection) and close
//    do, so no step of theirs interleaves with a step of ours. The lists `_all`/`_ok`, `_joins`,
//    `_removals` and `_cids_in_recovery` are home-reactor only; the dispatch set `_active` and the
//    per-connection `outstanding`, `active` and `removing` change under `_mu`, because dispatch and
//    completions run on any connection's reactor.
//  - A joining connection enters `_active` only once logged in, after its enter_full_feature() was posted
//    to its reactor: a drain_inbox() posted by dispatch then runs after it (posts to one reactor run in
//    order). dispatch_locked() keeps its policy (the least outstanding connection, ties rotating), so new
//    commands spread over whatever `_active` holds at the moment: that is the rebalancing.
//  - A connection being removed leaves `_active` at once (no new command goes to it) and gets `removing`,
//    which never goes back. It keeps `active`, so its responses still move the CmdSN window. While it
//    still has tasks and is lost, it is recovered as any lost connection (at ERL 2 logged in again with
//    its CID and its tasks reassigned there — recover_connection gives the new one `removing` too, and
//    on_reinstating_login keeps it out of `_active`; below ERL 2 the session is reinstated). Once it has
//    no task, its Logout "close the connection" (RFC 7143 §11.14, reason 1) goes out on it; the answer
//    (or its closing) ends the removal, and a later failure report of it is ignored.
//  - A reinstatement or close goes through stop_connections(), which ends every add and removal in
//    progress first (abandon_membership_changes): an add fails; a removal is done — the connection goes
//    with the old session, and `_wanted`, what a reinstatement logs in, no longer counts it. A close
//    instead fails it (the caller asked for one connection fewer, not for no session).
//  - `_wanted` follows what the session has after each add or remove, so that a reinstatement brings back
//    that many connections rather than SessionOptions::connections.
//  - A CID in use — logged in (`_ok`), joining, or lost and not yet logged in again at ERL 2 — is never
//    given to a new connection; a CID freed by a removal may be used again.
#include "common/log.hpp"
#include "initiator/session.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

namespace ispace::initiator {

using namespace std::chrono_literals;

namespace {

// How often a connection being removed is looked at until its last task is done: the completions run on
// its own reactor, and a few milliseconds matter nothing to an administrative change.
constexpr auto removal_poll_interval = 5ms;

std::string cid_list(std::vector<uint16_t> cids) {
    std::sort(cids.begin(), cids.end());
    return fmt::format("{}", fmt::join(cids, ", "));
}

} // namespace

std::optional<Error> SessionCore::closed_refusal(const char* what) const {
    std::lock_guard lock(_mu);
    if (_detached || _state == State::closed) {
        return make_error(fmt::format("{}: cannot {}: the session is closed", _label, what), ESHUTDOWN);
    }
    return std::nullopt;
}

void SessionCore::add_connection(Function<void(Result<uint16_t>)> done) {
    if (auto refused = closed_refusal("add a connection")) {
        done(std::move(*refused)); // before any post: a detached session's reactors are gone
        return;
    }
    auto self = shared_from_this();
    home().post([self, done = std::move(done)]() mutable { self->start_add(std::move(done)); });
}

void SessionCore::remove_connection(uint16_t cid, Function<void(Result<void>)> done) {
    if (auto refused = closed_refusal("remove a connection")) {
        done(std::move(*refused));
        return;
    }
    auto self = shared_from_this();
    home().post([self, cid, done = std::move(done)]() mutable { self->start_remove(cid, std::move(done)); });
}

std::vector<uint16_t> SessionCore::cids_in_use() const {
    std::vector<uint16_t> cids;
    for (const auto& c : _ok) {
        cids.push_back(c->cid());
    }
    for (const auto& j : _joins) {
        cids.push_back(j.conn->cid());
    }
    cids.insert(cids.end(), _cids_in_recovery.begin(), _cids_in_recovery.end());
    std::sort(cids.begin(), cids.end());
    cids.erase(std::unique(cids.begin(), cids.end()), cids.end());
    return cids;
}

bool SessionCore::removing_cid(uint16_t cid) const {
    return std::any_of(_removals.begin(), _removals.end(), [cid](const Removal& r) { return r.cid == cid; });
}

unsigned SessionCore::members() const {
    size_t in_use = cids_in_use().size();
    size_t leaving = _joins.size() + _removals.size();
    return unsigned(std::max<size_t>(1, in_use > leaving ? in_use - leaving : 0));
}

// Why the session cannot change its connections now, if it cannot (under _mu).
std::optional<Error> SessionCore::membership_refusal_locked(const char* what) const {
    if (_state == State::up && !_closing) {
        return std::nullopt;
    }
    bool ending = _closing || _state == State::closing || _state == State::closed || _state == State::failed;
    if (ending) {
        return make_error(fmt::format("{}: cannot {}: the session is closed", _label, what), ESHUTDOWN);
    }
    return make_error(
        fmt::format("{}: cannot {}: the session is being logged in again; try once it is up", _label, what),
        EAGAIN);
}

// ---------------------------------------------------------------------------------------------------
// Adding

void SessionCore::start_add(Function<void(Result<uint16_t>)> done) {
    uint16_t tsih;
    unsigned max_connections;
    {
        std::unique_lock lock(_mu);
        if (auto refusal = membership_refusal_locked("add a connection")) {
            lock.unlock();
            done(std::move(*refusal));
            return;
        }
        tsih = _tsih;
        max_connections =
            std::min<unsigned>(std::max<uint16_t>(_params.max_connections, 1), max_session_connections);
    }
    std::vector<uint16_t> used = cids_in_use();
    if (used.size() >= max_connections) {
        done(make_error(fmt::format("{}: cannot add a connection: the session has {} (CIDs {}) and its "
                                    "MaxConnections is {} (negotiated at login: the smaller of the target's "
                                    "and SessionOptions::max_connections)",
                                    _label, used.size(), cid_list(used), max_connections),
                        EBUSY));
        return;
    }
    uint16_t cid = 0;
    while (std::find(used.begin(), used.end(), cid) != used.end()) {
        ++cid;
    }
    auto conn = make_connection(cid);
    _all.push_back(conn); // so that a reinstatement or close meanwhile stops it too
    _joins.push_back(Join{conn, std::move(done)});
    log_info("{}: adding connection {} to the session (TSIH {})", _label, cid, tsih);
    login_connection(conn, tsih, LoginRole::joining);
}

void SessionCore::on_joining_login(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                   LoginOutcome&& outcome) {
    if (generation != _generation) {
        return; // abandon_membership_changes() answered the caller
    }
    auto it = std::find_if(_joins.begin(), _joins.end(), [&](const Join& j) { return j.conn == conn; });
    if (it == _joins.end()) {
        return;
    }
    auto done = std::move(it->done);
    _joins.erase(it);
    iscsi::SessionParams params;
    std::optional<Error> refusal;
    {
        std::lock_guard lock(_mu);
        refusal = membership_refusal_locked("add a connection");
        params = _params;
    }
    if (outcome.error || refusal) {
        Error why = outcome.error ? *outcome.error : *refusal;
        std::erase(_all, conn);
        retire_connection(conn, why);
        log_warn("{}: connection {} could not join the session: {}", _label, conn->cid(), why.message);
        done(make_error(
            fmt::format("{}: connection {} could not join the session: {}", _label, conn->cid(), why.message),
            why.code != 0 ? why.code : EIO));
        return;
    }
    // Full feature phase first, then dispatch: posts to one reactor run in order.
    conn->reactor().post([conn, params] {
        conn->enter_full_feature(params);
        conn->drain_inbox();
    });
    _ok.push_back(conn);
    size_t taking;
    {
        std::lock_guard lock(_mu);
        conn->active = true;
        _active.push_back(conn);
        dispatch_locked();
        taking = _active.size();
    }
    _wanted = members();
    _counters.connections_added++;
    log_info("{}: connection {} joined the session; {} connection(s) take commands", _label, conn->cid(),
             taking);
    done(conn->cid());
}

// ---------------------------------------------------------------------------------------------------
// Removing

void SessionCore::start_remove(uint16_t cid, Function<void(Result<void>)> done) {
    std::shared_ptr<Connection> conn;
    std::optional<Error> refusal;
    unsigned in_flight = 0;
    size_t others = 0;
    {
        std::lock_guard lock(_mu);
        refusal = membership_refusal_locked("remove a connection");
        auto it =
            std::find_if(_active.begin(), _active.end(), [cid](const auto& c) { return c->cid() == cid; });
        if (!refusal && it == _active.end()) {
            std::vector<uint16_t> ids;
            for (const auto& c : _active) {
                ids.push_back(c->cid());
            }
            std::string why;
            int code = EBUSY;
            if (removing_cid(cid)) {
                why = "it is already being removed";
            } else if (std::any_of(_joins.begin(), _joins.end(),
                                   [cid](const Join& j) { return j.conn->cid() == cid; })) {
                why = "it is still logging in";
            } else if (std::find(_cids_in_recovery.begin(), _cids_in_recovery.end(), cid) !=
                       _cids_in_recovery.end()) {
                why = "it was lost and is being logged in again; try once it is back";
            } else {
                why = fmt::format("the session has no such connection (CIDs taking commands: {})",
                                  cid_list(ids));
                code = ENOENT;
            }
            refusal = make_error(fmt::format("{}: cannot remove connection {}: {}", _label, cid, why), code);
        } else if (!refusal && _active.size() == 1) {
            refusal = make_error(fmt::format("{}: cannot remove connection {}: it is the last one taking "
                                             "commands (closing the session is Session::close())",
                                             _label, cid),
                                 EBUSY);
        }
        if (!refusal) {
            conn = *it;
            _active.erase(it);
            conn->removing = true; // keeps `active`: its responses still move the CmdSN window
            in_flight = conn->outstanding;
            others = _active.size();
        }
    }
    if (refusal) {
        done(std::move(*refusal));
        return;
    }
    _removals.push_back(Removal{cid, false, std::move(done)});
    _wanted = members();
    log_info("{}: removing connection {}: new commands go to the other {}; {} command(s) in flight on it "
             "finish first",
             _label, cid, others, in_flight);
    poll_removal(cid);
}

void SessionCore::poll_removal(uint16_t cid) {
    auto it =
        std::find_if(_removals.begin(), _removals.end(), [cid](const Removal& r) { return r.cid == cid; });
    if (it == _removals.end() || it->logging_out) {
        return;
    }
    // While ERL 2 recovers it, no connection with the CID is in _ok: wait for the new one.
    std::shared_ptr<Connection> conn;
    for (const auto& c : _ok) {
        if (c->cid() == cid) {
            conn = c;
        }
    }
    bool drained = false;
    if (conn) {
        std::lock_guard lock(_mu);
        // Not while the session closes: its own Logout ("close the session") ends this one too, and
        // stop_connections() then answers the caller.
        drained = _state == State::up && !_closing && conn->removing && conn->outstanding == 0 &&
                  conn->inbox.empty();
    }
    auto self = shared_from_this();
    if (!drained) {
        home().add_timer(removal_poll_interval, [self, cid] { self->poll_removal(cid); });
        return;
    }
    it->logging_out = true;
    uint64_t generation = _generation;
    conn->reactor().post([self, conn, generation] {
        conn->logout(
            [self, conn, generation](Result<void> r) {
                self->home().post([self, conn, generation, r = std::move(r)]() mutable {
                    self->on_removal_logout(conn, generation, std::move(r));
                });
            },
            iscsi::LogoutReason::close_connection);
    });
}

void SessionCore::on_removal_logout(const std::shared_ptr<Connection>& conn, uint64_t generation,
                                    Result<void> r) {
    if (generation != _generation) {
        return;
    }
    if (!r) {
        // It has no task left: closing it is all that remains either way.
        log_warn("{}: Logout of connection {} failed ({}); closing it without", _label, conn->cid(),
                 r.error().message);
    }
    finish_removal(conn->cid(), conn);
}

void SessionCore::on_removing_connection_failed(const std::shared_ptr<Connection>& conn, const Error& why) {
    auto it = std::find_if(_removals.begin(), _removals.end(),
                           [&](const Removal& r) { return r.cid == conn->cid(); });
    if (it == _removals.end() || std::find(_ok.begin(), _ok.end(), conn) == _ok.end()) {
        return; // removed already: the target closing it after the Logout
    }
    unsigned outstanding;
    {
        std::lock_guard lock(_mu);
        outstanding = conn->outstanding;
    }
    if (it->logging_out || outstanding == 0) {
        finish_removal(conn->cid(), conn); // nothing left on it to recover
        return;
    }
    log_warn("{}: connection {} was lost while being removed, with {} command(s) still on it; recovering "
             "them first",
             _label, conn->cid(), outstanding);
    if (!recover_connection(conn, why)) {
        begin_recovery(why); // the removal ends with the reinstatement (abandon_membership_changes)
    }
}

void SessionCore::finish_removal(uint16_t cid, const std::shared_ptr<Connection>& conn) {
    auto it =
        std::find_if(_removals.begin(), _removals.end(), [cid](const Removal& r) { return r.cid == cid; });
    if (it == _removals.end()) {
        return;
    }
    auto done = std::move(it->done);
    _removals.erase(it);
    std::erase(_ok, conn);
    std::erase(_all, conn);
    retire_connection(conn, make_error(_label + ": connection removed", ESHUTDOWN));
    _counters.connections_removed++;
    size_t taking;
    {
        std::lock_guard lock(_mu);
        taking = _active.size();
    }
    log_info("{}: connection {} removed; {} connection(s) take commands", _label, cid, taking);
    done(Result<void>{});
}

void SessionCore::retire_connection(const std::shared_ptr<Connection>& conn, const Error& why) {
    auto self = shared_from_this();
    conn->reactor().post([self, conn, why] {
        std::vector<PendingRequest*> tasks = conn->shutdown(why);
        self->home().post([self, conn, tasks = std::move(tasks)] {
            std::unique_lock lock(self->_mu);
            self->_outstanding -= std::min(self->_outstanding, conn->outstanding);
            conn->outstanding = 0;
            conn->active = false;
            if (self->_state == State::failed || self->_state == State::closed) {
                Error e = self->_failure.value_or(make_error(self->_label + ": session closed", ESHUTDOWN));
                lock.unlock();
                for (PendingRequest* t : tasks) {
                    self->complete_with_error(t, e);
                }
                return;
            }
            for (PendingRequest* t : tasks) {
                self->insert_pending_locked(t);
            }
            self->dispatch_locked();
        });
    });
}

void SessionCore::abandon_membership_changes(const Error& why) {
    std::vector<Join> joins = std::move(_joins);
    std::vector<Removal> removals = std::move(_removals);
    _joins.clear();
    _removals.clear();
    _cids_in_recovery.clear();
    if (joins.empty() && removals.empty()) {
        return;
    }
    bool ending;
    {
        std::lock_guard lock(_mu);
        ending = _closing || _state == State::closing || _state == State::closed || _state == State::failed;
    }
    for (auto& j : joins) {
        j.done(make_error(fmt::format("{}: connection {} could not join the session: {}", _label,
                                      j.conn->cid(), why.message),
                          ECONNABORTED));
    }
    for (auto& r : removals) {
        if (ending) {
            r.done(make_error(
                fmt::format("{}: the session closed before connection {} was logged out", _label, r.cid),
                ESHUTDOWN));
            continue;
        }
        _counters.connections_removed++;
        log_info("{}: connection {} goes with the session's reinstatement ({})", _label, r.cid, why.message);
        r.done(Result<void>{});
    }
}

} // namespace ispace::initiator
