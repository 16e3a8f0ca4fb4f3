// ErrorRecoveryLevel 2 on the initiator's connection: the tasks of a failed connection, moved with TASK
// REASSIGN (RFC 7143 §7.3, §11.5.1) to the connection that reinstated it (same CID, so the same ITT
// tag), or — when it cannot be logged in again — to another connection of the session after a Logout
// "remove the connection for recovery" for it (take_over; the tasks keep their ITTs, with the failed
// connection's tag). The session (session.cpp) decides which, and falls back to session reinstatement
// when that fails; here each task is taken over and asked for.
//
// A read asks for its Data-In from the DataSN after the last one it received in order (ExpDataSN); one
// with holes asked for by SNACK starts over from DataSN 0 (ExpDataSN 0 means "what the target thinks
// was acknowledged", and we acknowledged none of it). A write waits for the target's R2Ts for what it
// did not receive. "Task does not exist" means the command never reached the target: it goes again with
// its ITT and CmdSN, which the target is still waiting for. Any other answer ends the attempt; the
// session is then reinstated, as at level 0.
#include "common/log.hpp"
#include "initiator/connection.hpp"
#include "scsi_spec/sam.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ispace::initiator {

void Connection::restarts(const Connection& old) {
    _restart_exp_stat_sn = old.ack_stat_sn();
    _table.continue_generations(old._table);
}

void Connection::take_over(uint16_t cid, std::vector<PendingRequest*> tasks,
                           Function<void(Result<void>, std::vector<PendingRequest*>)> done) {
    if (_state != State::full_feature || !_owner) {
        done(make_error(fmt::format("connection {} is not usable to take over connection {}", _cid, cid),
                        ENOTCONN),
             std::move(tasks));
        return;
    }
    // Parked first: if this connection fails before the answer, shutdown() hands them back with its own.
    park(std::move(tasks));
    log_info("{}: removing connection {} for recovery on connection {} and moving its tasks here",
             _target_label, cid, _cid);
    logout(
        [this, self = shared_from_this(), cid, done = std::move(done)](Result<void> r) mutable {
            if (!r) {
                std::vector<PendingRequest*> back = std::move(_parked);
                _parked.clear();
                done(make_error(fmt::format("Logout removing connection {} for recovery: {}", cid,
                                            r.error().message),
                                r.error().code ? r.error().code : EIO),
                     std::move(back));
                return;
            }
            reassign_parked();
            done(Result<void>{}, {});
        },
        iscsi::LogoutReason::remove_connection_for_recovery, cid);
}

void Connection::park(std::vector<PendingRequest*> tasks) {
    _parked.insert(_parked.end(), tasks.begin(), tasks.end());
}

void Connection::reassign_parked() {
    if (_state != State::full_feature) {
        return; // shutdown() hands the parked tasks back
    }
    std::vector<PendingRequest*> tasks = std::move(_parked);
    _parked.clear();
    std::sort(tasks.begin(), tasks.end(),
              [](PendingRequest* a, PendingRequest* b) { return a->seq < b->seq; });
    // First every ITT of the old connection, then anything new: a fresh allocation must not take a slot
    // a reassigned task still names.
    std::vector<PendingRequest*> fresh;
    std::vector<PendingRequest*> moving;
    for (PendingRequest* task : tasks) {
        if (task->itt != 0 && _table.adopt(task->itt, TaskTable::Kind::scsi, task)) {
            moving.push_back(task);
        } else {
            fresh.push_back(task);
        }
    }
    // A send that fails the connection stops here: the moving tasks are in the table already, and the
    // fresh ones not yet in it stay parked, so shutdown() hands every one back.
    for (PendingRequest* task : moving) {
        send_reassign(task);
        if (_state != State::full_feature) {
            keep_unsent(fresh);
            return;
        }
    }
    // Dispatched to the failed connection but never sent: their CmdSNs are still owed to the target.
    start_tasks(fresh);
}

void Connection::send_reassign(PendingRequest* task) {
    uint32_t itt = _table.allocate(TaskTable::Kind::tmf, task);
    if (itt == iscsi::reserved_tag) {
        fail(make_error("task table full", ENOSPC));
        return;
    }
    if (task->request.direction == DataDirection::read &&
        (!task->missing_data_sns.empty() || task->held_status)) {
        // Holes in what arrived: start the data over (we acknowledged none of it).
        task->next_data_sn = 0;
        task->data_received = 0;
        task->missing_data_sns.clear();
        task->held_status.reset();
    }
    task->reassigned = true;
    task->aborting = false;
    task->awaiting_reset = false;
    task->abort_itt = itt;
    task->snacks = 0;
    task->data_ack_ttt = iscsi::reserved_tag;
    task->order = ++_send_order;
    auto timeout = task->request.timeout.count() > 0 ? task->request.timeout : _options.timeouts.command;
    task->deadline = net::Clock::now() + timeout;
    TaskTable::Entry* e = _table.find(itt);
    e->lun = task->request.lun;
    e->aux = uint32_t(iscsi::TmfFunction::task_reassign);
    e->order = task->order;
    e->deadline = net::Clock::now() + _options.timeouts.task_management;
    iscsi::TaskMgmtRequest tmf;
    tmf.immediate = true;
    tmf.function = iscsi::TmfFunction::task_reassign;
    tmf.lun = scsi::encode_lun(task->request.lun);
    tmf.itt = itt;
    tmf.referenced_task_tag = task->itt;
    // RefCmdSN is reserved for TASK REASSIGN (RFC 7143 §11.5.5: it names a command only for ABORT TASK).
    tmf.exp_data_sn = task->request.direction == DataDirection::read ? task->next_data_sn : 0;
    tmf.cmd_sn = _owner->immediate_cmd_sn();
    tmf.exp_stat_sn = ack_stat_sn();
    log_debug("{}: TASK REASSIGN of ITT {:#x} (CmdSN {}, ExpDataSN {}) to connection {}", _target_label,
              task->itt, task->cmd_sn, tmf.exp_data_sn, _cid);
    iscsi::Bhs bhs;
    tmf.encode(bhs);
    send_pdu(bhs);
}

void Connection::reassign_answered(PendingRequest* task, iscsi::TmfResponse response) {
    task->abort_itt = 0;
    switch (response) {
    case iscsi::TmfResponse::function_complete:
        _owner->counters().reassignments++;
        log_info("{}: ITT {:#x} reassigned to connection {}", _target_label, task->itt, _cid);
        return; // its data, R2Ts and status follow on this connection
    case iscsi::TmfResponse::task_does_not_exist:
        // The target never received the command (lost with the connection): send it again, same ITT
        // and CmdSN (RFC 7143 §6.2.1), which the target still expects.
        log_info("{}: ITT {:#x} (CmdSN {}) never reached the target; sending it again on connection {}",
                 _target_label, task->itt, task->cmd_sn, _cid);
        task->reassigned = false;
        task->next_data_sn = 0;
        task->data_received = 0;
        task->next_r2t_sn = 0;
        _owner->counters().retries++;
        send_command(task);
        return;
    default:
        break;
    }
    _reassign_refused.store(true, std::memory_order_release);
    fail(make_error(
        fmt::format("TASK REASSIGN of ITT {:#x} refused (response {})", task->itt, unsigned(response)), EIO));
}

} // namespace ispace::initiator
