// ErrorRecoveryLevel 2 on the target: connection recovery (RFC 7143 §7.3, §6.2.2).
//
// When a connection of a level-2 session fails (or is removed for recovery by a Logout with reason 2,
// or replaced by a login with the same CID), the session does not end. The connection's tasks become
// orphans: they go on in the engine, and what they would send waits. What the connection had already
// sent and the initiator had not acknowledged — Data-In and status of tasks answered just before the
// failure — moves from its Retention to the session. A TASK REASSIGN on a live connection of the session
// (§11.5.1) then gives the task a new allegiance: a read sends its Data-In from the ExpDataSN the
// request carries, a write asks again with R2Ts for the data that had not arrived, and the status
// follows on the new connection with its StatSN.
//
// Bounded: orphans and kept PDUs wait DefaultTime2Wait + DefaultTime2Retain (§13.19-§13.20), then
// orphans are aborted in the engine and the PDUs let go; a session left without any connection ends
// then too. A reassign for a task the session does not know is answered "task does not exist", one for
// a task whose connection is alive "task still allegiant", never with a guess.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "iscsi_target/connection.hpp"
#include "iscsi_target/server.hpp"
#include "iscsi_target/session.hpp"

#include <fmt/format.h>

namespace ispace::iscsi_target {

std::chrono::seconds Session::retain_window() const {
    return std::chrono::seconds(
        std::max<uint32_t>(uint32_t(_params.default_time2wait) + _params.default_time2retain, 1));
}

size_t Session::orphan_count() const {
    size_t n = 0;
    for (const auto& [itt, command] : _commands) {
        n += command->orphaned ? 1 : 0;
    }
    return n;
}

Connection* Session::connection_with_cid(uint16_t cid, const Connection* except) const {
    for (Connection* c : _connections) {
        if (c != except && c->cid() == cid && !c->closing()) {
            return c;
        }
    }
    return nullptr;
}

Result<Session::DroppedConnection> Session::drop_connection(uint16_t cid, std::chrono::milliseconds grace) {
    if (_ended) {
        return make_error("the session is ending", ENOENT);
    }
    if (!recovers_connections()) {
        // RFC 7143 §7.1.5, §7.3: below level 2 a connection's tasks cannot move to another connection,
        // so losing one fails the session; pretending otherwise would silently lose its commands.
        return make_error(fmt::format("the session runs at ErrorRecoveryLevel {}, where losing a connection "
                                      "ends the session (tasks cannot be reassigned below level 2); close "
                                      "the session instead",
                                      _params.error_recovery_level),
                          EOPNOTSUPP);
    }
    Connection* connection = connection_with_cid(cid);
    if (connection == nullptr) {
        return make_error(fmt::format("the session has no live connection with CID {}", cid), ENOENT);
    }
    if (connection->drop_announced()) {
        return make_error(fmt::format("connection cid {} is already being dropped", cid), EALREADY);
    }
    DroppedConnection dropped;
    // What the orphans' window (retain_window()) then honours: it starts when the connection closes,
    // after this message, so the initiator gets at least what it is told.
    dropped.time2wait = uint16_t(std::min<uint32_t>(_params.default_time2wait, 0xffff));
    dropped.time2retain = uint16_t(std::min<uint32_t>(_params.default_time2retain, 0xffff));
    for (const auto& [itt, command] : _commands) {
        dropped.tasks += command->connection == connection ? 1 : 0;
    }
    for (const Connection* c : _connections) {
        dropped.remaining += (c != connection && !c->closing()) ? 1 : 0;
    }
    connection->announce_drop(dropped.time2wait, dropped.time2retain, grace);
    _server.count_recovery(_reactor, RecoveryEvent::connection_dropped);
    return dropped;
}

void Session::keep_for_reassignment(Connection& connection) {
    net::Clock::time_point now = net::Clock::now();
    size_t orphans = 0;
    for (auto& [itt, command] : _commands) {
        if (command->connection == &connection) {
            command->connection = nullptr;
            command->orphaned = true;
            command->orphaned_at = now;
            // Its outstanding R2Ts went with the connection: resume_data_out() asks again for what
            // they had not brought.
            ++orphans;
        }
    }
    std::unique_ptr<Retention> kept = connection.take_retention();
    if (kept && (kept->tasks() > 0 || kept->responses() > 0)) {
        _retired.push_back({connection.cid(), std::move(kept), now + retain_window()});
    }
    if (_connections.empty()) {
        _alone_until = now + retain_window();
    }
    _server.count_recovery(_reactor, RecoveryEvent::connection_failed);
    log_info("{}: connection cid {} failed; ErrorRecoveryLevel 2 keeps its {} task(s) for reassignment for "
             "{} s; {} connection(s) remain",
             _name, connection.cid(), orphans, retain_window().count(), _connections.size());
    arm_retain_timer();
}

void Session::acknowledge_old_connection(uint16_t cid, uint32_t exp_stat_sn, const Connection* except) {
    // The old connection is the newest one with that CID: one still closing (its Retention has not
    // moved yet), else the last to fail. An older one's StatSNs are another sequence.
    for (Connection* c : _connections) {
        if (c != except && c->cid() == cid) {
            if (Retention* kept = c->retention()) {
                kept->acknowledge(exp_stat_sn);
            }
            return;
        }
    }
    for (auto it = _retired.rbegin(); it != _retired.rend(); ++it) {
        if (it->cid == cid) {
            it->retention->acknowledge(exp_stat_sn);
            if (it->retention->tasks() == 0 && it->retention->responses() == 0) {
                _retired.erase(std::next(it).base());
            }
            return;
        }
    }
}

void Session::arm_retain_timer() {
    if (_retain_timer) {
        return;
    }
    // Once a second is precise enough for windows counted in seconds, and costs nothing while idle:
    // the timer stops when nothing waits.
    _retain_timer = _reactor.add_timer(std::chrono::seconds(1), [this] {
        _retain_timer = 0;
        expire_orphans();
    });
}

void Session::expire_orphans() {
    if (_ended) {
        return;
    }
    net::Clock::time_point now = net::Clock::now();
    std::erase_if(_retired, [&](const Retired& r) { return now >= r.until; });
    std::vector<IscsiTask*> expired;
    for (auto& [itt, command] : _commands) {
        if (command->orphaned && !command->abandoned && now - command->orphaned_at >= retain_window()) {
            expired.push_back(command.get());
        }
    }
    for (IscsiTask* command : expired) {
        command->abandoned = true;
        log_info("{}: ITT {:#x} was not reassigned within DefaultTime2Wait + DefaultTime2Retain; aborted",
                 _name, command->itt);
        _server.count_recovery(_reactor, RecoveryEvent::reassign_expired);
        switch (command->state) {
        case IscsiTask::State::waiting:
        case IscsiTask::State::responding:
            release(*command);
            break;
        case IscsiTask::State::in_engine:
            _target->device->abort_task(_nexus, command->lun, command->tag, [](scsi::TmfResult) {});
            break;
        }
    }
    if (_alone_until && _connections.empty() && now >= *_alone_until) {
        terminate("no connection was reinstated within DefaultTime2Wait + DefaultTime2Retain", {});
        return;
    }
    if (!_connections.empty()) {
        _alone_until.reset();
    }
    if (!_retired.empty() || orphan_count() > 0 || _alone_until) {
        arm_retain_timer();
    }
}

void Session::reassign(Connection* from, const iscsi::TaskMgmtRequest& request) {
    uint32_t itt = request.itt;
    if (!recovers_connections()) {
        // Levels 0 and 1 have no task reassignment (RFC 7143 §11.5.1).
        send_tmf_response(from, itt, iscsi::TmfResponse::reassignment_not_supported);
        return;
    }
    if (from == nullptr || !has_connection(from) || from->closing()) {
        return; // the new allegiance is the connection that asked; it is gone already
    }
    Connection& to = *from;
    auto it = _commands.find(request.referenced_task_tag);
    if (it == _commands.end()) {
        if (!reassign_answered(to, request)) {
            log_info("{}: TASK REASSIGN of ITT {:#x}: no such task", _name, request.referenced_task_tag);
            send_tmf_response(from, itt, iscsi::TmfResponse::task_does_not_exist);
        }
        return;
    }
    IscsiTask& command = *it->second;
    if (!command.orphaned || command.abandoned) {
        // Its connection is alive (§11.5.1: only a task of a failed or removed connection moves).
        send_tmf_response(from, itt,
                          command.abandoned ? iscsi::TmfResponse::task_does_not_exist
                                            : iscsi::TmfResponse::task_still_allegiant);
        return;
    }
    if (command.lun != request.lun && request.lun != 0) {
        // The LUN field of a TASK REASSIGN names the task's LUN; a mismatch is a confused initiator.
        send_tmf_response(from, itt, iscsi::TmfResponse::function_rejected);
        return;
    }
    command.orphaned = false;
    command.connection = &to;
    _server.count_recovery(_reactor, RecoveryEvent::task_reassigned);
    log_info("{}: ITT {:#x} reassigned to connection cid {} (ExpDataSN {})", _name, command.itt, to.cid(),
             request.exp_data_sn);
    // The response first: the initiator learns the new allegiance before the task's PDUs arrive on it.
    send_tmf_response(from, itt, iscsi::TmfResponse::function_complete);
    switch (command.state) {
    case IscsiTask::State::waiting:
        // Not yet run: everything it will send goes on the new connection. Unsolicited data the old
        // connection did not bring is asked for with R2Ts once the engine wants it.
        resume_data_out(command, to);
        return;
    case IscsiTask::State::in_engine:
        resume_data_out(command, to);
        send_r2ts(command);
        maybe_data_out_done(command);
        return;
    case IscsiTask::State::responding:
        command.unsolicited_done = true;
        command.bursts.clear();
        // Answered by the engine while orphaned: nothing of it went out yet, so all its Data-In goes
        // now, from DataSN 0 (an initiator cannot hold any of it).
        respond(command);
        return;
    }
}

// A write's data phase moves to the new connection: the unsolicited data that did not arrive and the
// bursts that were cut short are asked for again (R2Ts from the R2TSN that comes next, §11.8.2).
void Session::resume_data_out(IscsiTask& command, Connection& to) {
    if (!command.data_out || command.cancelled || command.data_failed) {
        return;
    }
    if (!command.unsolicited_done) {
        // The unsolicited sequence ended with the connection: what follows is solicited.
        command.unsolicited_end = command.unsolicited_next;
        command.unsolicited_done = true;
        command.r2t_next_offset = std::min(command.r2t_next_offset, command.unsolicited_end);
        if (!command.fetching) {
            command.r2t_next_offset = command.unsolicited_end;
        }
    }
    std::vector<IscsiTask::Burst> cut = std::move(command.bursts);
    command.bursts.clear();
    for (const IscsiTask::Burst& burst : cut) {
        if (burst.received < burst.length) {
            send_r2t(command, to, burst.offset + burst.received, burst.length - burst.received);
        }
    }
}

// A task answered on a connection that failed before the initiator acknowledged the status: its
// Data-In and status go again on `to`, from what that connection kept.
bool Session::reassign_answered(Connection& to, const iscsi::TaskMgmtRequest& request) {
    for (Retired& retired : _retired) {
        Retention::Answer answer =
            retired.retention->take_answer(request.referenced_task_tag, request.exp_data_sn);
        if (answer.refusal == Retention::Refusal::unknown_task) {
            continue;
        }
        if (!answer.found) {
            log_info("{}: TASK REASSIGN of ITT {:#x}: its answer cannot be sent again (ExpDataSN {})", _name,
                     request.referenced_task_tag, request.exp_data_sn);
            send_tmf_response(&to, request.itt, iscsi::TmfResponse::function_rejected);
            return true;
        }
        // Decoded before anything is sent, so that a kept header that does not decode (it cannot: we
        // encoded it) refuses the reassign instead of sending half an answer.
        std::vector<iscsi::DataIn> headers;
        for (const Retention::Pdu& pdu : answer.data_in) {
            auto din = iscsi::DataIn::decode(pdu.bhs);
            if (!din) {
                send_tmf_response(&to, request.itt, iscsi::TmfResponse::function_rejected);
                return true;
            }
            headers.push_back(*din);
        }
        _server.count_recovery(_reactor, RecoveryEvent::task_reassigned);
        log_info("{}: ITT {:#x} (answered on failed cid {}) reassigned to cid {}: {} Data-In PDU(s) and its "
                 "status again",
                 _name, request.referenced_task_tag, retired.cid, to.cid(), answer.data_in.size());
        send_tmf_response(&to, request.itt, iscsi::TmfResponse::function_complete);
        uint32_t data_pdus = send_kept_data_in(to, answer.data_in, headers);
        if (answer.response) {
            iscsi::Bhs bhs = answer.response->bhs;
            if (!answer.data_in.empty()) {
                store_be32(bhs.bytes.data() + 36, data_pdus); // ExpDataSN: the Data-In count as resent
            }
            store_be32(bhs.bytes.data() + 24, to.take_stat_sn());
            store_be32(bhs.bytes.data() + 28, _exp_cmd_sn);
            store_be32(bhs.bytes.data() + 32, max_cmd_sn());
            to.send(bhs, answer.response->data, answer.response->offset, answer.response->length);
        }
        return true;
    }
    return false;
}

// Kept Data-In of a reassigned read goes on `to` from its first DataSN (the ExpDataSN asked for). RFC
// 7143 §11.5.1: the target sends every Data-In from the data acknowledgment reference number on, and
// their count may differ from the first transmission when the new connection's
// MaxRecvDataSegmentLength differs. So a PDU larger than what the new connection takes is cut into
// pieces numbered on from the same starting DataSN, at the same buffer offsets; only the last piece of
// a PDU keeps its F bit (sequences stay within MaxBurstLength), and only the last piece of the last PDU
// its status, residual and A bit. PDUs that fit go as they were. Returns the DataSN after the last.
uint32_t Session::send_kept_data_in(Connection& to, const std::vector<Retention::Pdu>& kept,
                                    const std::vector<iscsi::DataIn>& headers) {
    uint32_t max_segment = std::max<uint32_t>(to.params().max_send_data_segment_length, 512);
    uint32_t data_sn = headers.empty() ? 0 : headers.front().data_sn;
    for (size_t i = 0; i < kept.size(); ++i) {
        const Retention::Pdu& pdu = kept[i];
        uint32_t done = 0;
        do {
            uint32_t n = std::min(max_segment, pdu.length - done);
            bool last_piece = done + n == pdu.length;
            iscsi::DataIn piece = headers[i];
            if (!last_piece) {
                piece.final_bit = false;
                piece.status_present = false;
                piece.acknowledge = false;
                piece.overflow = false;
                piece.underflow = false;
                piece.residual_count = 0;
                piece.status = 0;
                piece.lun = 0;
                piece.ttt = iscsi::reserved_tag;
            }
            piece.data_sn = data_sn++;
            piece.buffer_offset = headers[i].buffer_offset + done;
            piece.data_segment_length = n;
            // StatSN is the new connection's; the window is the session's now.
            piece.stat_sn = piece.status_present ? to.take_stat_sn() : to.current_stat_sn();
            report_window(piece);
            iscsi::Bhs bhs;
            piece.encode(bhs);
            to.send(bhs, pdu.data, pdu.offset + done, n);
            done += n;
        } while (done < pdu.length);
    }
    return data_sn;
}

} // namespace ispace::iscsi_target
