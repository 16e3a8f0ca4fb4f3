// ErrorRecoveryLevel 1 on the initiator (RFC 7143 §7.1-§7.2, §11.16): what the connection does when a
// PDU is lost within a connection that still works.
//  - A Data-In whose data fails its digest, or a DataSN gap: a Data SNACK for the missing DataSNs; the
//    status waits, unacknowledged, until they have come.
//  - A StatSN gap: a Status SNACK; ExpStatSN stays before the missing StatSN meanwhile.
//  - An R2TSN gap: an R2T SNACK.
//  - A Data-In with the A bit: a DataACK SNACK once the command's data is complete.
//  - A Reject for a data digest error: on a Data-Out, nothing (the target sends a recovery R2T); on a
//    command's immediate data, the command is sent again with the same ITT and CmdSN (§7.2.1).
// Everything is bounded per command; past a bound the connection fails and the session reinstates, as at
// ERL 0.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "initiator/connection.hpp"
#include "scsi_spec/sam.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ispace::initiator {

using iscsi::Bhs;
using iscsi::Opcode;
using iscsi::reserved_tag;

namespace {

// How long a StatSN asked for with a Status SNACK holds ExpStatSN back.
constexpr auto missing_stat_sn_hold = std::chrono::seconds(5);
// How long after a command went out a target PDU must still show ExpCmdSN at its CmdSN before it counts
// as lost.
constexpr auto lost_command_wait = std::chrono::seconds(1);

} // namespace

uint32_t Connection::ack_stat_sn() const {
    uint32_t ack = _exp_stat_sn;
    for (const auto& [sn, when] : _missing_stat_sns) {
        if (iscsi::sn_lt(sn, ack)) {
            ack = sn;
        }
    }
    for (uint32_t sn : _held_stat_sns) {
        if (iscsi::sn_lt(sn, ack)) {
            ack = sn;
        }
    }
    return ack;
}

void Connection::send_snack(iscsi::SnackType type, uint32_t itt, uint64_t lun, uint32_t ttt, uint32_t beg_run,
                            uint32_t run_length) {
    iscsi::SnackRequest snack;
    snack.type = type;
    snack.lun = lun;
    snack.itt = itt;
    snack.ttt_or_snack_tag = ttt;
    snack.exp_stat_sn = ack_stat_sn();
    snack.beg_run = beg_run;
    snack.run_length = run_length;
    Bhs bhs;
    snack.encode(bhs);
    _owner->counters().snacks++;
    send_pdu(bhs);
}

bool Connection::request_data(PendingRequest* task, uint32_t beg, uint32_t run) {
    if (++task->snacks > max_snacks_per_command) {
        fail(make_error(fmt::format("ITT {:#x}: Data-In still missing after {} SNACKs", task->itt,
                                    max_snacks_per_command),
                        EIO));
        return false;
    }
    if (task->missing_data_sns.size() + run > max_missing_data_sns) {
        fail(
            make_error(fmt::format("ITT {:#x}: {} Data-In PDU(s) missing from DataSN {} on, more than the {} "
                                   "lost PDUs can explain",
                                   task->itt, task->missing_data_sns.size() + run, beg, max_missing_data_sns),
                       EPROTO));
        return false;
    }
    for (uint32_t sn = beg; sn != beg + run; ++sn) {
        if (std::find(task->missing_data_sns.begin(), task->missing_data_sns.end(), sn) ==
            task->missing_data_sns.end()) {
            task->missing_data_sns.push_back(sn);
        }
    }
    log_info("{}: Data SNACK for ITT {:#x}: DataSN {} (+{})", _target_label, task->itt, beg, run);
    send_snack(iscsi::SnackType::data_r2t, task->itt, scsi::encode_lun(task->request.lun), reserved_tag, beg,
               run);
    return true;
}

void Connection::data_in_lost(const Bhs& bhs) {
    auto d = iscsi::DataIn::decode(bhs);
    if (!d) {
        fail(make_error("bad Data-In: " + d.error().message, EPROTO));
        return;
    }
    note_window(d->exp_cmd_sn, d->max_cmd_sn);
    TaskTable::Entry* e = _table.find(d->itt);
    if (e == nullptr || e->kind != TaskTable::Kind::scsi ||
        e->task->request.direction != DataDirection::read) {
        if (d->status_present) {
            note_stat_sn(d->stat_sn);
        }
        return; // a late PDU of a task given up on
    }
    PendingRequest* task = e->task;
    uint32_t beg = d->data_sn;
    uint32_t run = 1;
    if (iscsi::sn_gt(d->data_sn, task->next_data_sn)) {
        beg = task->next_data_sn; // those before it were lost too
        run = d->data_sn - task->next_data_sn + 1;
    }
    if (iscsi::sn_ge(d->data_sn, task->next_data_sn)) {
        task->next_data_sn = d->data_sn + 1;
    }
    if (!request_data(task, beg, run)) {
        return;
    }
    if (d->acknowledge) {
        task->data_ack_ttt = d->ttt;
    }
    if (d->status_present) {
        // The header is sound: its status is known, and held until the data comes again.
        note_stat_sn(d->stat_sn);
        hold_status(task, *d);
    }
}

// A read's status that came with its last Data-In while data is still missing: kept (once) until the
// data is complete, and its StatSN not acknowledged meanwhile (ack_stat_sn).
void Connection::hold_status(PendingRequest* task, const iscsi::DataIn& d) {
    if (task->held_status) {
        return;
    }
    Response result;
    result.status = d.status;
    result.residual = d.residual_count;
    result.underflow = d.underflow;
    result.overflow = d.overflow;
    task->held_status = std::move(result);
    task->held_stat_sn = d.stat_sn;
    _held_stat_sns.push_back(d.stat_sn);
}

void Connection::finish_read(PendingRequest* task, Response&& result, uint32_t stat_sn) {
    if (auto it = std::find(_held_stat_sns.begin(), _held_stat_sns.end(), stat_sn);
        it != _held_stat_sns.end()) {
        _held_stat_sns.erase(it);
    }
    if (task->data_ack_ttt != reserved_tag) {
        // The target asked for a positive acknowledgement (A bit, RFC 7143 §11.7.2): every DataSN
        // before next_data_sn has arrived.
        send_snack(iscsi::SnackType::data_ack, task->itt, scsi::encode_lun(task->request.lun),
                   task->data_ack_ttt, task->next_data_sn, 0);
    }
    result.data_received = task->data_received;
    finish_task(task, std::move(result));
}

bool Connection::recover_reject(const iscsi::Reject& reject, const Bhs& rejected) {
    if (rejected.opcode() == Opcode::snack_request) {
        auto snack = iscsi::SnackRequest::decode(rejected);
        if (snack && snack->type == iscsi::SnackType::data_ack) {
            log_warn("{}: the target rejected a DataACK SNACK (reason {:#x})", _target_label,
                     unsigned(reject.reason));
            return true; // only an acknowledgement: nothing is lost
        }
        return false; // what we asked for is gone: fail the connection (reinstatement)
    }
    if (reject.reason == iscsi::RejectReason::task_in_progress && rejected.opcode() == Opcode::scsi_command) {
        // A command sent again (resend_lost_commands) that had reached the target after all: the first
        // copy runs, this one is turned away. Nothing to do.
        TaskTable::Entry* e = _table.find(rejected.itt());
        return e != nullptr && e->kind == TaskTable::Kind::scsi && e->task->digest_resends > 0;
    }
    if (reject.reason != iscsi::RejectReason::data_digest_error) {
        return false;
    }
    if (rejected.opcode() == Opcode::data_out) {
        // The target asks for the lost range with a recovery R2T (RFC 7143 §7.8).
        log_info("{}: Data-Out lost to a data digest error (ITT {:#x}); awaiting the recovery R2T",
                 _target_label, rejected.itt());
        return true;
    }
    if (rejected.opcode() == Opcode::scsi_command) {
        TaskTable::Entry* e = _table.find(rejected.itt());
        if (e == nullptr || e->kind != TaskTable::Kind::scsi) {
            return true; // given up on already
        }
        PendingRequest* task = e->task;
        if (++task->digest_resends > max_digest_resends) {
            return false;
        }
        // Its immediate data was lost, so the target discarded the command: the same command again,
        // same ITT and CmdSN, fills the gap in the target's CmdSN order (RFC 7143 §7.2.1).
        log_info("{}: command ITT {:#x} CmdSN {} lost its immediate data to a digest error; sending it again",
                 _target_label, task->itt, task->cmd_sn);
        task->next_r2t_sn = 0;
        send_command(task);
        return true;
    }
    return false;
}

void Connection::resend_lost_commands(net::Clock::time_point now) {
    if (!_erl1 || !_window_seen) {
        return;
    }
    std::vector<PendingRequest*> lost;
    _table.for_each([&](uint32_t, TaskTable::Entry& e) {
        if (e.kind != TaskTable::Kind::scsi) {
            return;
        }
        PendingRequest* t = e.task;
        // ExpCmdSN is the lowest CmdSN the target has not received; a response that left the target
        // a second after the command went out and still names it means the command was lost. (A copy
        // that did arrive is ignored by the target: its CmdSN is then outside the window.)
        bool nothing_back = t->next_data_sn == 0 && t->next_r2t_sn == 0 && !t->held_status && !t->reassigned;
        if (!t->aborting && !t->awaiting_reset && nothing_back && t->cmd_sn == _last_exp_cmd_sn &&
            _window_at - t->sent_at >= lost_command_wait && now - t->sent_at >= lost_command_wait) {
            lost.push_back(t);
        }
    });
    for (PendingRequest* t : lost) {
        if (++t->digest_resends > max_digest_resends) {
            fail(make_error(
                fmt::format("command ITT {:#x} CmdSN {} never reached the target", t->itt, t->cmd_sn), EIO));
            return;
        }
        log_info("{}: ExpCmdSN stays at {}: command ITT {:#x} was lost; sending it again", _target_label,
                 t->cmd_sn, t->itt);
        t->next_r2t_sn = 0;
        send_command(t);
    }
}

void Connection::expire_missing(net::Clock::time_point now) {
    std::erase_if(_missing_stat_sns,
                  [&](const auto& entry) { return now - entry.second >= missing_stat_sn_hold; });
    std::erase_if(_held_stat_sns, [&](uint32_t sn) {
        bool alive = false;
        _table.for_each([&](uint32_t, TaskTable::Entry& e) {
            if (e.kind == TaskTable::Kind::scsi && e.task->held_status && e.task->held_stat_sn == sn) {
                alive = true;
            }
        });
        return !alive;
    });
}

} // namespace ispace::initiator
