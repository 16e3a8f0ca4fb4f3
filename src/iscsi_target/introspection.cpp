// The front end as the control socket and the metrics see it: sessions described on their own
// reactors, sessions closed and renegotiated from the control thread, counters summed over reactors.
// Everything here that waits runs on a control thread, never on a reactor; what touches a session
// runs on the session's reactor by post(), so the I/O path takes no lock for it.
#include "common/log.hpp"
#include "iscsi/param_settings.hpp"
#include "iscsi_target/connection.hpp"
#include "iscsi_target/server.hpp"
#include "iscsi_target/session.hpp"

#include <algorithm>
#include <condition_variable>

namespace ispace::iscsi_target {
namespace {

// A result that a reactor delivers and a control thread waits for; shared, so a late delivery after
// the waiter gave up touches nothing freed.
template <typename T> struct Mailbox {
    std::mutex mutex;
    std::condition_variable cv;
    std::optional<T> value;

    void deliver(T v) {
        std::lock_guard lock(mutex);
        value = std::move(v);
        cv.notify_all();
    }
    std::optional<T> wait(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex);
        cv.wait_for(lock, timeout, [this] { return value.has_value(); });
        return value;
    }
};

std::string_view reject_reason_name(uint8_t code) {
    switch (iscsi::RejectReason(code)) {
    case iscsi::RejectReason::data_digest_error:
        return "data_digest_error";
    case iscsi::RejectReason::snack_reject:
        return "snack_reject";
    case iscsi::RejectReason::protocol_error:
        return "protocol_error";
    case iscsi::RejectReason::command_not_supported:
        return "command_not_supported";
    case iscsi::RejectReason::immediate_command_rejected:
        return "immediate_command_rejected";
    case iscsi::RejectReason::task_in_progress:
        return "task_in_progress";
    case iscsi::RejectReason::invalid_data_ack:
        return "invalid_data_ack";
    case iscsi::RejectReason::invalid_pdu_field:
        return "invalid_pdu_field";
    case iscsi::RejectReason::long_op_reject:
        return "long_op_reject";
    case iscsi::RejectReason::negotiation_reset:
        return "negotiation_reset";
    case iscsi::RejectReason::waiting_for_logout:
        return "waiting_for_logout";
    }
    return {};
}

} // namespace

std::vector<SessionInfo> Server::describe_sessions(std::chrono::milliseconds timeout) const {
    std::map<net::Reactor*, std::vector<std::shared_ptr<SessionSlot>>> by_reactor;
    for (auto& slot : _sessions.all()) {
        by_reactor[slot->reactor].push_back(slot);
    }
    struct Gather {
        std::mutex mutex;
        std::condition_variable cv;
        size_t pending = 0;
        std::vector<SessionInfo> sessions;
    };
    auto gather = std::make_shared<Gather>();
    gather->pending = by_reactor.size();
    for (auto& [reactor, slots] : by_reactor) {
        reactor->post([gather, slots = std::move(slots)] {
            std::vector<SessionInfo> mine;
            for (const auto& slot : slots) {
                if (slot->session && !slot->session->ending()) {
                    mine.emplace_back();
                    slot->session->describe(mine.back());
                }
            }
            std::lock_guard lock(gather->mutex);
            for (auto& info : mine) {
                gather->sessions.push_back(std::move(info));
            }
            --gather->pending;
            gather->cv.notify_all();
        });
    }
    std::unique_lock lock(gather->mutex);
    gather->cv.wait_for(lock, timeout, [&] { return gather->pending == 0; });
    std::vector<SessionInfo> out = gather->sessions;
    std::sort(out.begin(), out.end(),
              [](const SessionInfo& a, const SessionInfo& b) { return a.tsih < b.tsih; });
    return out;
}

Result<void> Server::close_session(uint16_t tsih, const std::string& reason, std::chrono::milliseconds wait) {
    auto slot = _sessions.find_tsih(tsih);
    if (!slot) {
        return make_error(fmt::format("no session has TSIH {} (ispace session list shows them)", tsih),
                          ENOENT);
    }
    auto gone = std::make_shared<Mailbox<bool>>();
    slot->reactor->post([slot, reason, gone] {
        if (!slot->session) {
            gone->deliver(true);
            return;
        }
        slot->session->terminate(reason, [gone] { gone->deliver(true); });
    });
    if (!gone->wait(wait)) {
        return make_error(fmt::format("session {}: closed, but its commands are still draining after {} ms",
                                      tsih, wait.count()),
                          EBUSY);
    }
    return {};
}

Result<Session::DroppedConnection> Server::drop_connection(uint16_t tsih, uint16_t cid,
                                                           std::chrono::milliseconds grace,
                                                           std::chrono::milliseconds wait) {
    auto slot = _sessions.find_tsih(tsih);
    if (!slot) {
        return make_error(fmt::format("no session has TSIH {} (ispace session list shows them)", tsih),
                          ENOENT);
    }
    auto outcome = std::make_shared<Mailbox<Result<Session::DroppedConnection>>>();
    slot->reactor->post([slot, cid, grace, outcome] {
        if (!slot->session || slot->session->ending()) {
            outcome->deliver(make_error("the session ended", ENOENT));
            return;
        }
        outcome->deliver(slot->session->drop_connection(cid, grace));
    });
    auto result = outcome->wait(wait);
    if (!result) {
        return make_error(
            fmt::format("session {}: its reactor did not answer within {} ms", tsih, wait.count()),
            ETIMEDOUT);
    }
    return *result;
}

void Server::close_sessions_not_admitted(const std::string& iqn) {
    auto target = find_target(iqn);
    if (!target) {
        return;
    }
    for (auto& slot : _sessions.all()) {
        if (slot->target_name != iqn) {
            continue;
        }
        slot->reactor->post([this, slot, target] {
            Session* session = slot->session;
            if (!session || session->ending()) {
                return;
            }
            // Admitted if any of its connections would be admitted now (the ACL may name networks).
            bool admitted = false;
            for (const net::Endpoint& peer : session->peers()) {
                admitted = admitted || may_access(*target, slot->initiator_name, peer);
            }
            if (!admitted) {
                session->terminate("the target's ACL no longer admits its initiator", {});
            }
        });
    }
}

Result<void> Server::renegotiate(uint16_t tsih, const iscsi::KeyValueList& keys, std::chrono::seconds wait) {
    for (const iscsi::KeyValue& kv : keys) {
        if (auto ok = iscsi::check_renegotiable(kv.key, kv.value); !ok) {
            return ok;
        }
    }
    auto slot = _sessions.find_tsih(tsih);
    if (!slot) {
        return make_error(fmt::format("no session has TSIH {} (ispace session list shows them)", tsih),
                          ENOENT);
    }
    auto outcome = std::make_shared<Mailbox<Result<void>>>();
    slot->reactor->post([slot, keys, wait, outcome] {
        if (!slot->session || slot->session->ending()) {
            outcome->deliver(make_error("the session ended", ENOENT));
            return;
        }
        slot->session->renegotiate(keys, wait,
                                   [outcome](Result<void> result) { outcome->deliver(std::move(result)); });
    });
    auto result =
        outcome->wait(std::chrono::duration_cast<std::chrono::milliseconds>(wait) + std::chrono::seconds(3));
    if (!result) {
        return make_error(fmt::format("session {}: no outcome within {} s", tsih, wait.count() + 3),
                          ETIMEDOUT);
    }
    return *result;
}

void Server::count_login_failure(net::Reactor& reactor, iscsi::LoginStatus status) {
    static constexpr iscsi::LoginStatus order[] = {iscsi::LoginStatus::initiator_error,
                                                   iscsi::LoginStatus::authentication_failure,
                                                   iscsi::LoginStatus::authorization_failure,
                                                   iscsi::LoginStatus::target_not_found,
                                                   iscsi::LoginStatus::target_removed,
                                                   iscsi::LoginStatus::unsupported_version,
                                                   iscsi::LoginStatus::too_many_connections,
                                                   iscsi::LoginStatus::missing_parameter,
                                                   iscsi::LoginStatus::cannot_include_in_session,
                                                   iscsi::LoginStatus::session_type_not_supported,
                                                   iscsi::LoginStatus::session_does_not_exist,
                                                   iscsi::LoginStatus::invalid_during_login,
                                                   iscsi::LoginStatus::target_error,
                                                   iscsi::LoginStatus::service_unavailable,
                                                   iscsi::LoginStatus::out_of_resources};
    size_t index = std::size(login_failure_reasons) - 1; // "other"
    for (size_t i = 0; i < std::size(order); ++i) {
        if (order[i] == status) {
            index = i;
        }
    }
    _local[reactor.index()].login_failures[index].add();
}

void Server::count_login_timeout(net::Reactor& reactor) {
    _local[reactor.index()].login_failures[std::size(login_failure_reasons) - 2].add();
}

void Server::count_reject(net::Reactor& reactor, iscsi::RejectReason reason) {
    size_t code = size_t(reason);
    _local[reactor.index()].rejects[code < reject_reasons ? code : 0].add();
}

void Server::count_recovery(net::Reactor& reactor, RecoveryEvent event) {
    _local[reactor.index()].recovery[size_t(event)].add();
}

ServerStatistics Server::statistics() const {
    ServerStatistics out;
    for (const auto& target : targets()) {
        out.targets[target->iqn];
    }
    for (const auto& slot : _sessions.all()) {
        auto& counts = out.targets[slot->target_name];
        ++counts.sessions;
        std::lock_guard lock(slot->mutex);
        counts.connections += slot->cids.size();
    }
    for (size_t i = 0; i < std::size(login_failure_reasons); ++i) {
        uint64_t sum = 0;
        for (const ReactorLocal& local : _local) {
            sum += local.login_failures[i].get();
        }
        out.login_failures[std::string(login_failure_reasons[i])] = sum;
    }
    for (size_t code = 0; code < reject_reasons; ++code) {
        std::string_view name = reject_reason_name(uint8_t(code));
        uint64_t sum = 0;
        for (const ReactorLocal& local : _local) {
            sum += local.rejects[code].get();
        }
        if (!name.empty()) {
            out.rejected_pdus[std::string(name)] += sum;
        } else if (sum) {
            out.rejected_pdus["other"] += sum;
        }
    }
    for (size_t i = 0; i < size_t(RecoveryEvent::count_); ++i) {
        uint64_t sum = 0;
        for (const ReactorLocal& local : _local) {
            sum += local.recovery[i].get();
        }
        out.recovery[std::string(recovery_event_names[i])] = sum;
    }
    return out;
}

} // namespace ispace::iscsi_target
