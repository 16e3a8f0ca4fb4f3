#include "iscsi_target/session.hpp"

#include "common/log.hpp"
#include "common/log_limit.hpp"
#include "iscsi/param_settings.hpp"
#include "iscsi_target/connection.hpp"
#include "iscsi_target/server.hpp"
#include "net/reactor.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace ispace::iscsi_target {
namespace {

std::atomic<uint64_t> g_next_nexus_id{1};
// A Data-Out sequence error is the peer's to repeat at will (common/log_limit.hpp).
LogLimit g_data_out_log;

iscsi::TmfResponse to_tmf_response(scsi::TmfResult result) {
    switch (result) {
    case scsi::TmfResult::complete:
        return iscsi::TmfResponse::function_complete;
    case scsi::TmfResult::task_not_found:
        return iscsi::TmfResponse::task_does_not_exist;
    case scsi::TmfResult::lun_not_found:
        return iscsi::TmfResponse::lun_does_not_exist;
    case scsi::TmfResult::not_supported:
        return iscsi::TmfResponse::not_supported;
    case scsi::TmfResult::rejected:
        return iscsi::TmfResponse::function_rejected;
    }
    return iscsi::TmfResponse::function_rejected;
}

// Residual of a command: the difference between what the CDB transfers and what the initiator expected
// (RFC 7143 §11.4.5): overflow when the command wanted more, underflow when it moved less.
struct Residual {
    bool overflow = false;
    bool underflow = false;
    uint32_t count = 0;
};

Residual residual_of(const scsi::Task& task) {
    Residual r;
    if (task.transfer_length > task.expected_length) {
        r.overflow = true;
        r.count = task.transfer_length - task.expected_length;
    } else if (task.transfer_length < task.expected_length) {
        r.underflow = true;
        r.count = task.expected_length - task.transfer_length;
    }
    return r;
}

} // namespace

Session::Session(Server& server, net::Reactor& reactor, std::shared_ptr<Target> target,
                 std::shared_ptr<SessionSlot> slot, const iscsi::LoginIdentity& identity,
                 const iscsi::SessionParams& params, uint16_t tsih, uint32_t exp_cmd_sn, const AclEntry* acl)
    : _server(server), _reactor(reactor), _target(std::move(target)), _slot(std::move(slot)), _params(params),
      _tsih(tsih), _isid(iscsi::isid_to_u64(identity.isid)), _exp_cmd_sn(exp_cmd_sn),
      _queue_depth(server.config().limits.queue_depth) {
    _budget_account = std::make_shared<BufferBudget::Account>();
    _budget_account->budget = server.buffer_budget();
    _nexus.id = g_next_nexus_id.fetch_add(1);
    _nexus.initiator_name = identity.initiator_name;
    _nexus.initiator_port =
        fmt::format("{},i,0x{}", identity.initiator_name, iscsi::format_isid(identity.isid));
    _nexus.target_name = _target ? _target->iqn : std::string();
    _nexus.target_port = fmt::format("{},t,0x{:04x}", _nexus.target_name, params.target_portal_group_tag);
    _nexus.relative_target_port = params.target_portal_group_tag;
    _nexus.target_port_group = params.target_portal_group_tag;
    if (acl) {
        if (acl->luns) {
            _nexus.visible_luns = std::make_shared<const std::vector<uint64_t>>(*acl->luns);
        }
        _nexus.read_only = acl->read_only;
    }
    _name = fmt::format("session {:#06x} ({} isid {}{}{})", tsih, identity.initiator_name,
                        iscsi::format_isid(identity.isid), _target ? " -> " : ", discovery",
                        _target ? _target->iqn : "");
    if (_slot) {
        _slot->session = this;
        std::lock_guard lock(_slot->mutex);
        _slot->params = params;
        _slot->ready = true;
    }
    if (_target) {
        _lun_view = std::make_shared<scsi::LunView>();
        _target->device->attach_view(_lun_view, _reactor);
        _target->device->nexus_added(_nexus);
    }
    _server.session_created();
    log_info("{}: logged in", _name);
}

Session::~Session() {
    if (_budget_timer) {
        _reactor.cancel_timer(_budget_timer);
    }
    if (_retain_timer) {
        _reactor.cancel_timer(_retain_timer);
    }
    if (_lun_view) {
        _target->device->detach_view(_lun_view.get());
    }
    if (_slot) {
        _slot->session = nullptr;
        _server.sessions().remove(_slot);
    } else {
        _server.sessions().release_tsih(_tsih);
    }
    _server.session_destroyed();
}

void Session::add_connection(Connection& connection) {
    _connections.push_back(&connection);
    if (_connections.size() > 1) {
        log_info("{}: connection cid {} added; {} connections", _name, connection.cid(), _connections.size());
    }
}

void Session::close_other_connections(Connection& keep, const std::string& reason) {
    std::vector<Connection*> others;
    for (Connection* connection : _connections) {
        if (connection != &keep) {
            others.push_back(connection);
        }
    }
    for (Connection* connection : others) {
        connection->close_logged_out(reason);
    }
}

bool Session::close_connection(uint16_t cid, const std::string& reason) {
    for (Connection* connection : _connections) {
        if (connection->cid() == cid) {
            connection->close_logged_out(reason);
            return true;
        }
    }
    return false;
}

Connection* Session::any_connection() const {
    for (Connection* c : _connections) {
        if (!c->closing()) {
            return c;
        }
    }
    return nullptr;
}

bool Session::has_connection(const Connection* connection) const {
    return std::find(_connections.begin(), _connections.end(), connection) != _connections.end();
}

uint32_t Session::max_cmd_sn() const {
    uint32_t free_slots = _queue_depth > _unanswered ? _queue_depth - _unanswered : 0;
    uint32_t max = _exp_cmd_sn - 1 + free_slots;
    // Waiting for Data-In memory: the window does not open further (the value only ever grows, so
    // the frozen one is never below what an initiator was told).
    if (!_budget_waiting.empty() && iscsi::sn_lt(_frozen_max_cmd_sn, max)) {
        return _frozen_max_cmd_sn;
    }
    return max;
}

// ---- CmdSN ordering --------------------------------------------------------------------------------

bool Session::order(uint32_t cmd_sn, bool immediate, Function<void()> deliver) {
    if (immediate) {
        deliver();
        return true;
    }
    if (iscsi::sn_lt(cmd_sn, _exp_cmd_sn) || iscsi::sn_gt(cmd_sn, max_cmd_sn())) {
        log_debug("{}: CmdSN {} outside the window [{}, {}]; ignored", _name, cmd_sn, _exp_cmd_sn,
                  max_cmd_sn());
        return false;
    }
    if (cmd_sn != _exp_cmd_sn) {
        if (_early.count(cmd_sn)) {
            log_debug("{}: CmdSN {} already queued; the duplicate is ignored", _name, cmd_sn);
            return false;
        }
        _early.emplace(cmd_sn, std::move(deliver));
        return true;
    }
    ++_exp_cmd_sn;
    deliver();
    // Requests that arrived before their turn follow, in CmdSN order.
    for (auto it = _early.find(_exp_cmd_sn); it != _early.end(); it = _early.find(_exp_cmd_sn)) {
        Function<void()> next = std::move(it->second);
        _early.erase(it);
        ++_exp_cmd_sn;
        next();
    }
    return true;
}

// ---- SCSI commands ---------------------------------------------------------------------------------

IscsiTask* Session::command_header(Connection& connection, const iscsi::ScsiCommand& header,
                                   std::span<const uint8_t> ahs, std::string& error,
                                   iscsi::RejectReason& reject) {
    if (discovery()) {
        error = "SCSI Command in a discovery session";
        reject = iscsi::RejectReason::protocol_error;
        return nullptr;
    }
    if (!header.immediate &&
        (iscsi::sn_lt(header.cmd_sn, _exp_cmd_sn) || iscsi::sn_gt(header.cmd_sn, max_cmd_sn()))) {
        log_debug("{}: SCSI Command itt {:#x} CmdSN {} outside the window [{}, {}]; ignored", _name,
                  header.itt, header.cmd_sn, _exp_cmd_sn, max_cmd_sn());
        return nullptr;
    }
    if (header.itt == iscsi::reserved_tag) {
        error = "SCSI Command with the reserved ITT 0xffffffff";
        reject = iscsi::RejectReason::invalid_pdu_field;
        return nullptr;
    }
    if (_commands.count(header.itt)) {
        error = fmt::format("SCSI Command reuses ITT {:#x} of a task in progress", header.itt);
        reject = iscsi::RejectReason::task_in_progress;
        return nullptr;
    }
    // Immediate commands do not consume the window; this bounds them all the same.
    if (_commands.size() >= size_t(_queue_depth) * 2) {
        error = fmt::format("{} tasks in progress; command itt {:#x} refused", _commands.size(), header.itt);
        reject = iscsi::RejectReason::immediate_command_rejected;
        return nullptr;
    }
    uint32_t immediate_length = header.data_segment_length;
    if (immediate_length > 0 && !_params.immediate_data) {
        error = "immediate data sent although ImmediateData=No";
        reject = iscsi::RejectReason::protocol_error;
        return nullptr;
    }
    if (immediate_length > _params.first_burst_length) {
        error = fmt::format("{} bytes of immediate data exceed FirstBurstLength {}", immediate_length,
                            _params.first_burst_length);
        reject = iscsi::RejectReason::protocol_error;
        return nullptr;
    }
    if (!header.final_bit && _params.initial_r2t) {
        error = "unsolicited Data-Out announced (F=0) although InitialR2T=Yes";
        reject = iscsi::RejectReason::protocol_error;
        return nullptr;
    }
    auto parsed = iscsi::parse_ahs(ahs);
    if (!parsed) {
        error = "SCSI Command AHS: " + parsed.error().message;
        reject = iscsi::RejectReason::invalid_pdu_field;
        return nullptr;
    }

    auto command = std::make_unique<IscsiTask>();
    IscsiTask& c = *command;
    c.fabric = this;
    c.reactor = &_reactor;
    c.nexus = &_nexus;
    c.lun_view = _lun_view.get();
    c.lun = header.lun;
    c.tag = header.itt;
    c.attribute = scsi::TaskAttribute(uint8_t(header.attr) <= 4 ? uint8_t(header.attr) : 1);
    std::copy(header.cdb.begin(), header.cdb.end(), c.cdb.begin());
    c.cdb_length = 16;
    if (parsed->extended_cdb_length > 0) {
        std::copy_n(parsed->extended_cdb.begin(), parsed->extended_cdb_length, c.cdb.begin() + 16);
        c.cdb_length = uint16_t(16 + parsed->extended_cdb_length);
    }
    c.data_out = header.write;
    c.data_in = header.read;
    c.expected_length = header.expected_data_transfer_length;
    c.connection = &connection;
    c.itt = header.itt;
    c.cmd_sn = header.cmd_sn;
    c.immediate = header.immediate;

    if (header.write && header.expected_data_transfer_length > 0) {
        uint32_t size =
            std::min(header.expected_data_transfer_length, _server.config().limits.max_transfer_bytes);
        if (immediate_length > size) {
            error = fmt::format("{} bytes of immediate data exceed the buffer of {} bytes", immediate_length,
                                size);
            reject = iscsi::RejectReason::protocol_error;
            return nullptr;
        }
        c.buffer = Buffer::allocate(size);
        c.immediate_length = immediate_length;
        c.unsolicited_next = immediate_length;
        c.unsolicited_end = immediate_length;
        if (!header.final_bit) {
            // RFC 7143 §13.14: unsolicited data (immediate included) runs to min(FirstBurstLength, EDTL).
            c.unsolicited_end = std::max(immediate_length, std::min(_params.first_burst_length, size));
            c.unsolicited_done = c.unsolicited_next >= c.unsolicited_end;
        }
    }
    c.received = immediate_length;
    if (header.immediate || !iscsi::sn_lt(header.cmd_sn, _exp_cmd_sn)) {
        // A new command (not the retry of one already run, whose CmdSN is behind the window): a task
        // this ITT named before is over for the initiator, and nothing kept for it may answer a SNACK
        // or a TASK REASSIGN of the new one.
        for (Connection* other : _connections) {
            if (Retention* kept = other->retention()) {
                kept->forget_task(header.itt);
            }
        }
        for (Retired& retired : _retired) {
            retired.retention->forget_task(header.itt);
        }
    }
    IscsiTask* raw = command.get();
    _commands.emplace(header.itt, std::move(command));
    return raw;
}

void Session::command_received(IscsiTask& command) {
    uint32_t itt = command.itt;
    IscsiTask* expected = &command;
    bool accepted = order(command.cmd_sn, command.immediate, [this, itt, expected] {
        auto it = _commands.find(itt);
        // A task management function may have removed it while it waited for its turn.
        if (it != _commands.end() && it->second.get() == expected) {
            deliver_command(*expected);
        }
    });
    if (!accepted) {
        release(command);
    }
}

void Session::discard_arrival(IscsiTask& command) {
    release(command);
}

void Session::deliver_command(IscsiTask& command) {
    if (!command.immediate) {
        command.counted = true;
        ++_unanswered;
    }
    if (_slot && !_slot->gate_open) {
        _gated.push_back(&command);
        return;
    }
    submit(command);
}

void Session::open_gate() {
    if (_slot) {
        _slot->gate_open = true;
    }
    std::vector<IscsiTask*> gated = std::move(_gated);
    _gated.clear();
    for (IscsiTask* command : gated) {
        submit(*command);
    }
}

void Session::submit(IscsiTask& command) {
    // Behind any command already waiting for memory: CmdSN order holds.
    if (_budget_waiting.empty() && reserve_buffer(command)) {
        start(command);
        return;
    }
    if (_budget_waiting.empty()) {
        _frozen_max_cmd_sn = max_cmd_sn();
        log_debug("{}: Data-In memory is exhausted ({} of {} bytes held); commands wait, MaxCmdSN stays {}",
                  _name, _budget_account->budget->used(), _budget_account->budget->limit(),
                  _frozen_max_cmd_sn);
    }
    _budget_waiting.push_back(&command);
    arm_budget_timer();
}

bool Session::reserve_buffer(IscsiTask& command) {
    if (!command.data_in || command.expected_length == 0) {
        return true;
    }
    // What the engine allocates for it at most: the expected length, within the transfer limit.
    uint64_t max_transfer = _server.config().limits.max_transfer_bytes;
    uint64_t bytes = std::min<uint64_t>(command.expected_length, max_transfer);
    if (command.connection != nullptr && command.connection->reading_paused() &&
        _budget_account->held >= 2 * max_transfer) {
        // Its peer is not reading what it was sent already: producing more for it now would only
        // hold memory (and reactor time) that initiators who read could use. It waits for the backlog.
        return false;
    }
    command.budget_hold = BufferBudget::reserve(_budget_account, bytes);
    return bool(command.budget_hold);
}

void Session::arm_budget_timer() {
    if (_budget_timer) {
        return;
    }
    // Memory comes back on any reactor (another session's Data-In going out), so look again soon;
    // this runs only while commands wait.
    _budget_timer = _reactor.add_timer(std::chrono::milliseconds(5), [this] {
        _budget_timer = 0;
        retry_budget();
    });
}

void Session::backlog_drained() {
    if (!_budget_waiting.empty()) {
        retry_budget();
    }
}

void Session::retry_budget() {
    while (!_budget_waiting.empty()) {
        IscsiTask* command = _budget_waiting.front();
        if (!reserve_buffer(*command)) {
            arm_budget_timer();
            return;
        }
        _budget_waiting.pop_front();
        start(*command);
    }
}

void Session::start(IscsiTask& command) {
    if (_closing) {
        // Its turn came after the session began to close (a command behind a Logout, or sent after
        // it): the engine has been told the nexus is gone and would never abort it, so a write
        // waiting for Data-Out kept the session alive for ever. It is dropped unanswered, as the
        // tasks the Logout ended are.
        release(command);
        return;
    }
    command.state = IscsiTask::State::in_engine;
    command.data_out_length = command.received;
    _target->device->submit(command);
}

// ---- Data-Out: unsolicited sequences and R2T bursts ------------------------------------------------

void Session::fetch_data_out(scsi::Task& task, uint32_t length) {
    auto& command = static_cast<IscsiTask&>(task);
    if (command.data_failed) {
        defer_data_out_failure(command);
        return;
    }
    command.fetching = true;
    uint32_t wanted = std::min<uint32_t>(length, command.expected_length);
    wanted = std::min<uint32_t>(wanted, uint32_t(command.buffer.size()));
    command.wanted = command.data_out ? wanted : 0;
    command.r2t_next_offset = std::max(command.r2t_next_offset, command.unsolicited_end);
    send_r2ts(command);
    maybe_data_out_done(command);
}

void Session::cancel_data_out(scsi::Task& task) {
    auto& command = static_cast<IscsiTask&>(task);
    command.cancelled = true;
    command.bursts.clear();
    if (command.fetching) {
        command.fetching = false;
        uint32_t itt = command.itt;
        IscsiTask* expected = &command;
        _reactor.defer([this, itt, expected] {
            auto it = _commands.find(itt);
            if (it != _commands.end() && it->second.get() == expected) {
                _target->device->data_out_done(*expected, false);
            }
        });
    }
}

void Session::send_r2ts(IscsiTask& command) {
    // R2Ts start once the unsolicited sequence has ended, so their offsets never overlap data the
    // initiator may still send unasked (an early F bit shortens the unsolicited range).
    if (!command.fetching || command.cancelled || !command.unsolicited_done ||
        command.connection == nullptr || command.connection->closing()) {
        return;
    }
    while (command.bursts.size() < std::max<uint16_t>(_params.max_outstanding_r2t, 1) &&
           command.r2t_next_offset < command.wanted) {
        uint32_t length = std::min(_params.max_burst_length, command.wanted - command.r2t_next_offset);
        send_r2t(command, *command.connection, command.r2t_next_offset, length);
        command.r2t_next_offset += length;
    }
}

// One burst asked for: a fresh TTT, the burst recorded in the task, the R2T with the task's next
// R2TSN (a recovery R2T takes one like any other, RFC 7143 §11.8.2). Returns the R2TSN.
uint32_t Session::send_r2t(IscsiTask& command, Connection& connection, uint32_t offset, uint32_t length) {
    uint32_t ttt = _next_ttt++;
    if (_next_ttt == iscsi::reserved_tag) {
        _next_ttt = 1;
    }
    command.bursts.push_back({ttt, offset, length, 0, 0});
    iscsi::R2t r2t;
    r2t.lun = command.lun;
    r2t.itt = command.itt;
    r2t.ttt = ttt;
    r2t.stat_sn = connection.current_stat_sn();
    report_window(r2t);
    r2t.r2t_sn = command.r2t_sn++;
    r2t.buffer_offset = offset;
    r2t.desired_data_transfer_length = length;
    iscsi::Bhs bhs;
    r2t.encode(bhs);
    connection.send(bhs);
    return r2t.r2t_sn;
}

void Session::maybe_data_out_done(IscsiTask& command) {
    if (!command.fetching) {
        return;
    }
    uint32_t unsolicited_needed = std::min(command.unsolicited_end, command.wanted);
    bool unsolicited_ok = command.unsolicited_next >= unsolicited_needed;
    bool solicited_ok = command.r2t_next_offset >= command.wanted && command.bursts.empty();
    if (!unsolicited_ok || !solicited_ok) {
        return;
    }
    command.fetching = false;
    command.data_out_length = command.wanted;
    _target->device->data_out_done(command, true);
}

Session::DataOutCheck Session::check_data_out(const Connection& connection, const iscsi::DataOut& header) {
    using Verdict = DataOutCheck::Verdict;
    DataOutCheck check;
    auto it = _commands.find(header.itt);
    if (it == _commands.end()) {
        // Data for a task that was aborted, ignored or already answered: read and dropped.
        log_debug("{}: Data-Out for unknown ITT {:#x} dropped", _name, header.itt);
        return check;
    }
    IscsiTask& command = *it->second;
    if (command.cancelled || command.aborted || command.data_failed) {
        return check;
    }
    check.command = &command;
    if (command.connection != &connection) {
        // Connection allegiance: a task's data moves on the connection its command came on.
        check.verdict = Verdict::reject;
        check.error =
            fmt::format("Data-Out for ITT {:#x} on a connection other than its command's", header.itt);
        return check;
    }
    if (!command.data_out || command.buffer.empty()) {
        check.verdict = Verdict::reject;
        check.error = fmt::format("Data-Out for ITT {:#x}, a command that sends no data", header.itt);
        return check;
    }
    auto fail = [&](uint16_t code, std::string error) {
        check.verdict = Verdict::fail_command;
        check.sense = scsi::Sense::make(scsi::SenseKey::aborted_command, code);
        check.error = std::move(error);
        return check;
    };
    uint32_t length = header.data_segment_length;
    uint64_t end = uint64_t(header.buffer_offset) + length;
    if (header.ttt == iscsi::reserved_tag) {
        if (command.unsolicited_done) {
            return fail(scsi::asc::unexpected_unsolicited_data,
                        fmt::format("unsolicited Data-Out for ITT {:#x} after its unsolicited data ended",
                                    header.itt));
        }
        if (header.data_sn != command.unsolicited_data_sn) {
            return fail(scsi::asc::data_phase_error,
                        fmt::format("Data-Out for ITT {:#x} with DataSN {} where {} was expected", header.itt,
                                    header.data_sn, command.unsolicited_data_sn));
        }
        if (header.buffer_offset != command.unsolicited_next) {
            return fail(scsi::asc::data_offset_error,
                        fmt::format("Data-Out for ITT {:#x} at offset {} where {} was expected", header.itt,
                                    header.buffer_offset, command.unsolicited_next));
        }
        if (end > command.unsolicited_end) {
            return fail(
                scsi::asc::unexpected_unsolicited_data,
                fmt::format("unsolicited Data-Out for ITT {:#x} runs to {} past FirstBurstLength/EDTL ({})",
                            header.itt, end, command.unsolicited_end));
        }
        check.verdict = Verdict::land;
        return check;
    }
    auto burst = std::find_if(command.bursts.begin(), command.bursts.end(),
                              [&](const IscsiTask::Burst& b) { return b.ttt == header.ttt; });
    if (burst == command.bursts.end()) {
        return fail(scsi::asc::invalid_target_port_transfer_tag,
                    fmt::format("Data-Out for ITT {:#x} with TTT {:#x}, which no outstanding R2T carries",
                                header.itt, header.ttt));
    }
    if (header.data_sn != burst->next_data_sn) {
        return fail(scsi::asc::data_phase_error,
                    fmt::format("Data-Out for ITT {:#x} with DataSN {} where {} was expected", header.itt,
                                header.data_sn, burst->next_data_sn));
    }
    if (header.buffer_offset != burst->offset + burst->received) {
        return fail(scsi::asc::data_offset_error,
                    fmt::format("Data-Out for ITT {:#x} at offset {} where {} was expected", header.itt,
                                header.buffer_offset, burst->offset + burst->received));
    }
    if (end > uint64_t(burst->offset) + burst->length) {
        return fail(scsi::asc::data_offset_error,
                    fmt::format("Data-Out for ITT {:#x} runs to {}, past its R2T ({} + {})", header.itt, end,
                                burst->offset, burst->length));
    }
    check.verdict = Verdict::land;
    return check;
}

void Session::fail_data_out(IscsiTask& command, const scsi::Sense& sense, const std::string& why) {
    g_data_out_log.warn("{}: {}; the command fails", _name, why);
    command.data_failed = true;
    command.failure = sense;
    command.bursts.clear();
    // Nothing more is expected: further Data-Outs for it are dropped, and a response held for the end
    // of the unsolicited data can go now.
    command.unsolicited_done = true;
    if (command.state == IscsiTask::State::responding) {
        respond(command);
        return;
    }
    if (command.fetching) {
        command.fetching = false;
        defer_data_out_failure(command);
    }
}

void Session::defer_data_out_failure(IscsiTask& command) {
    uint32_t itt = command.itt;
    IscsiTask* expected = &command;
    _reactor.defer([this, itt, expected] {
        auto it = _commands.find(itt);
        if (it != _commands.end() && it->second.get() == expected) {
            _target->device->data_out_failed(*expected, expected->failure);
        }
    });
}

// Moves the task's Data-Out sequence past `header`: the unsolicited range or the burst of its TTT.
// Also for a Data-Out whose data was lost to a digest error (ERL 1): its range is then asked for again
// by a recovery R2T of its own, and the sequence goes on after it.
void Session::advance_data_out_sequence(IscsiTask& command, const iscsi::DataOut& header) {
    uint32_t length = header.data_segment_length;
    if (header.ttt == iscsi::reserved_tag) {
        command.unsolicited_next += length;
        ++command.unsolicited_data_sn;
        if (header.final_bit || command.unsolicited_next >= command.unsolicited_end) {
            // An initiator may end its unsolicited data early; R2Ts then ask for the rest, from here.
            // No R2T went out before this point (send_r2ts waits for unsolicited_done), so the R2T
            // offset may move back: fetch_data_out may already have set it to the end of the
            // unsolicited range as announced, and starting there would leave a hole that the
            // write would complete with.
            command.unsolicited_end = command.unsolicited_next;
            command.unsolicited_done = true;
            command.r2t_next_offset = command.unsolicited_end;
        }
    } else {
        for (auto it = command.bursts.begin(); it != command.bursts.end(); ++it) {
            if (it->ttt == header.ttt) {
                it->received += length;
                ++it->next_data_sn;
                if (it->received >= it->length) {
                    command.bursts.erase(it);
                }
                break;
            }
        }
    }
}

void Session::data_out_received(IscsiTask& command, const iscsi::DataOut& header) {
    command.received += header.data_segment_length;
    advance_data_out_sequence(command, header);
    if (command.state == IscsiTask::State::responding) {
        if (command.unsolicited_done) {
            respond(command);
        }
        return;
    }
    send_r2ts(command);
    maybe_data_out_done(command);
}

// ---- Completion: Data-In and status ----------------------------------------------------------------

void Session::complete(scsi::Task& task) {
    auto& command = static_cast<IscsiTask&>(task);
    if (task.aborted) {
        // A task management function covers it: no response (RFC 7143 §4.2.3.3 / §11.5.1).
        release(command);
        return;
    }
    command.state = IscsiTask::State::responding;
    command.fetching = false;
    command.bursts.clear();
    if (!command.unsolicited_done) {
        // The initiator is still sending unsolicited data; answer once it has all arrived.
        return;
    }
    respond(command);
}

void Session::respond(IscsiTask& command) {
    Connection* connection = command.connection;
    if (connection == nullptr || connection->closing()) {
        if ((command.orphaned || connection != nullptr) && !command.abandoned && !_ended &&
            recovers_connections()) {
            // ERL 2: the answer waits for a TASK REASSIGN (reassign.cpp); a connection that is closing
            // makes the task an orphan when it is gone (or, if it logged out, releases it then).
            return;
        }
        release(command);
        return;
    }
    // The window opens as this command is answered, so this very response carries the new MaxCmdSN.
    answered(command);
    uint32_t data_length = 0;
    if (command.status == scsi::Status::good && command.data_in) {
        data_length = std::min(command.transfer_length, command.expected_length);
        data_length = std::min<uint32_t>(data_length, uint32_t(command.buffer.size()));
    }
    if (data_length > 0) {
        send_data_in(command, data_length);
    } else {
        send_scsi_response(command, 0);
    }
    release(command);
}

void Session::send_data_in(IscsiTask& command, uint32_t length) {
    Connection& connection = *command.connection;
    uint32_t max_segment = std::max<uint32_t>(connection.params().max_send_data_segment_length, 512);
    uint32_t max_burst = std::max<uint32_t>(_params.max_burst_length, 512);
    Residual residual = residual_of(command);
    uint32_t offset = 0;
    uint32_t data_sn = 0;
    uint32_t burst_left = max_burst;
    while (offset < length) {
        uint32_t n = std::min({max_segment, length - offset, burst_left});
        bool last = offset + n == length;
        iscsi::DataIn din;
        // F ends each sequence: a sequence carries at most MaxBurstLength bytes (RFC 7143 §11.7.1).
        din.final_bit = last || burst_left == n;
        din.itt = command.itt;
        din.data_sn = data_sn++;
        din.buffer_offset = offset;
        din.data_segment_length = n;
        report_window(din);
        if (last) {
            // Phase collapse: the status rides on the last Data-In (only without sense data).
            din.status_present = true;
            din.status = uint8_t(command.status);
            din.stat_sn = connection.take_stat_sn();
            din.overflow = residual.overflow;
            din.underflow = residual.underflow;
            din.residual_count = residual.count;
            if (_params.error_recovery_level >= 1) {
                // ERL 1: ask for a DataACK SNACK on the last Data-In, so the data kept for Data SNACKs
                // can go before the next command acknowledges the status (RFC 7143 §11.7.2).
                din.acknowledge = true;
                din.lun = command.lun;
                din.ttt = _next_ttt++;
                if (_next_ttt == iscsi::reserved_tag) {
                    _next_ttt = 1;
                }
            }
        }
        iscsi::Bhs bhs;
        din.encode(bhs);
        // The last PDU carries the command's memory reservation: it is given back once the data is out.
        connection.send(bhs, command.buffer, offset, n,
                        last ? std::move(command.budget_hold) : BufferBudget::Hold{});
        offset += n;
        burst_left = burst_left == n ? max_burst : burst_left - n;
    }
}

void Session::send_scsi_response(IscsiTask& command, uint32_t data_pdus) {
    Connection& connection = *command.connection;
    Residual residual = residual_of(command);
    iscsi::ScsiResponse response;
    response.status = uint8_t(command.status);
    response.itt = command.itt;
    response.stat_sn = connection.take_stat_sn();
    report_window(response);
    response.exp_data_sn = data_pdus;
    response.overflow = residual.overflow;
    response.underflow = residual.underflow;
    response.residual_count = residual.count;
    iscsi::Bhs bhs;
    if (command.sense_length > 0) {
        // The data segment is SenseLength (2 bytes) followed by the sense data (§11.4.7).
        std::array<uint8_t, 2 + scsi::Task::max_sense> segment{};
        segment[0] = 0;
        segment[1] = command.sense_length;
        std::copy_n(command.sense.begin(), command.sense_length, segment.begin() + 2);
        response.data_segment_length = 2u + command.sense_length;
        response.encode(bhs);
        connection.send_copy(bhs, {segment.data(), response.data_segment_length});
    } else {
        response.encode(bhs);
        connection.send(bhs);
    }
}

void Session::answered(IscsiTask& command) {
    if (command.counted) {
        command.counted = false;
        --_unanswered;
    }
}

void Session::release(IscsiTask& command) {
    answered(command);
    _gated.erase(std::remove(_gated.begin(), _gated.end(), &command), _gated.end());
    if (auto it = std::find(_budget_waiting.begin(), _budget_waiting.end(), &command);
        it != _budget_waiting.end()) {
        _budget_waiting.erase(it);
    }
    _commands.erase(command.itt);
    if (_commands.empty() && !_on_drained.empty()) {
        auto callbacks = std::move(_on_drained);
        _on_drained.clear();
        for (auto& callback : callbacks) {
            callback();
        }
    }
    maybe_destroy();
}

// ---- Task management -------------------------------------------------------------------------------

void Session::send_tmf_response(Connection* connection, uint32_t itt, iscsi::TmfResponse response) {
    if (connection == nullptr || !has_connection(connection) || connection->closing()) {
        connection = any_connection();
    }
    if (connection == nullptr) {
        return;
    }
    iscsi::TaskMgmtResponse pdu;
    pdu.response = response;
    pdu.itt = itt;
    pdu.stat_sn = connection->take_stat_sn();
    report_window(pdu);
    iscsi::Bhs bhs;
    pdu.encode(bhs);
    connection->send(bhs);
}

Function<void(scsi::TmfResult)> Session::engine_tmf_done(Connection* from, uint32_t itt) {
    ++_tmfs_in_engine;
    return [this, from, itt](scsi::TmfResult result) {
        --_tmfs_in_engine;
        send_tmf_response(from, itt, to_tmf_response(result));
        maybe_destroy();
    };
}

void Session::drop_waiting_commands(std::optional<uint64_t> lun) {
    std::vector<IscsiTask*> victims;
    for (auto& [itt, command] : _commands) {
        if (command->state == IscsiTask::State::waiting && (!lun || command->lun == *lun)) {
            victims.push_back(command.get());
        }
    }
    for (IscsiTask* command : victims) {
        release(*command);
    }
}

void Session::task_management(Connection& connection, const iscsi::TaskMgmtRequest& request) {
    Connection* from = &connection;
    bool accepted =
        order(request.cmd_sn, request.immediate, [this, from, request] { run_tmf(from, request); });
    if (!accepted) {
        log_debug("{}: task management request itt {:#x} ignored (CmdSN outside the window)", _name,
                  request.itt);
    }
}

void Session::run_tmf(Connection* from, const iscsi::TaskMgmtRequest& request) {
    uint32_t itt = request.itt;
    if (discovery()) {
        send_tmf_response(from, itt, iscsi::TmfResponse::function_rejected);
        return;
    }
    scsi::TargetDevice& device = *_target->device;
    log_info("{}: task management function {} (lun {:#x}, referenced itt {:#x})", _name,
             int(request.function), request.lun, request.referenced_task_tag);
    switch (request.function) {
    case iscsi::TmfFunction::abort_task: {
        auto it = _commands.find(request.referenced_task_tag);
        if (it == _commands.end()) {
            // RFC 7143 §11.5.1: a referenced command that has not arrived yet (its CmdSN is in the
            // window and not received) is taken as received and aborted.
            uint32_t ref = request.ref_cmd_sn;
            if (iscsi::sn_ge(ref, _exp_cmd_sn) && iscsi::sn_le(ref, max_cmd_sn()) && !_early.count(ref)) {
                // Through order(), like a request that did arrive: at ExpCmdSN it is consumed now and
                // the requests queued behind it go on (parked in _early instead, nothing would ever
                // take it out, and every later command would wait forever); beyond a gap it waits
                // its turn. Either way the command itself is ignored if it comes late.
                order(ref, /*immediate=*/false, [] {});
                send_tmf_response(from, itt, iscsi::TmfResponse::function_complete);
                return;
            }
            send_tmf_response(from, itt, iscsi::TmfResponse::task_does_not_exist);
            return;
        }
        IscsiTask& command = *it->second;
        switch (command.state) {
        case IscsiTask::State::waiting:
            release(command);
            send_tmf_response(from, itt, iscsi::TmfResponse::function_complete);
            return;
        case IscsiTask::State::responding:
            // The engine finished it; only the end of its unsolicited data holds the response back.
            send_tmf_response(from, itt, iscsi::TmfResponse::task_does_not_exist);
            return;
        case IscsiTask::State::in_engine:
            device.abort_task(_nexus, command.lun, command.tag, engine_tmf_done(from, itt));
            return;
        }
        return;
    }
    case iscsi::TmfFunction::abort_task_set:
        drop_waiting_commands(request.lun);
        device.abort_task_set(_nexus, request.lun, engine_tmf_done(from, itt));
        return;
    case iscsi::TmfFunction::clear_task_set:
        drop_waiting_commands(request.lun);
        device.clear_task_set(_nexus, request.lun, engine_tmf_done(from, itt));
        return;
    case iscsi::TmfFunction::lun_reset:
        drop_waiting_commands(request.lun);
        device.logical_unit_reset(_nexus, request.lun, engine_tmf_done(from, itt));
        return;
    case iscsi::TmfFunction::target_warm_reset:
        drop_waiting_commands(std::nullopt);
        device.target_reset(_nexus, false, engine_tmf_done(from, itt));
        return;
    case iscsi::TmfFunction::target_cold_reset: {
        drop_waiting_commands(std::nullopt);
        std::string iqn = _target->iqn;
        Server* server = &_server;
        // A cold reset ends every I_T nexus of the target (RFC 7143 §11.5.1): the response goes out
        // first, then the connections close. (The response may schedule this session's deletion;
        // that is deferred, so `this` is still whole for the line after it.)
        auto respond = engine_tmf_done(from, itt);
        device.target_reset(
            _nexus, true, [this, respond = std::move(respond), iqn, server](auto result) mutable {
                respond(result);
                _reactor.defer([iqn, server] { server->close_sessions_of(iqn, "target cold reset"); });
            });
        return;
    }
    case iscsi::TmfFunction::clear_aca:
        // No ACA support (NACA=1 CDBs are refused), so there is never an ACA condition to clear.
        send_tmf_response(from, itt, iscsi::TmfResponse::not_supported);
        return;
    case iscsi::TmfFunction::task_reassign:
        reassign(from, request);
        return;
    }
    send_tmf_response(from, itt, iscsi::TmfResponse::not_supported);
}

// ---- Ending ----------------------------------------------------------------------------------------

void Session::abort_all(Function<void()> done) {
    _closing = true;
    drop_waiting_commands(std::nullopt);
    if (_commands.empty()) {
        done();
        return;
    }
    _on_drained.push_back(std::move(done));
    // Tasks still being answered only wait for their unsolicited data: answering is pointless now.
    std::vector<IscsiTask*> responding;
    for (auto& [itt, command] : _commands) {
        if (command->state == IscsiTask::State::responding) {
            responding.push_back(command.get());
        }
    }
    for (IscsiTask* command : responding) {
        command->connection = nullptr;
        release(*command);
    }
    if (!_commands.empty() && _target && !_nexus_removed) {
        _nexus_removed = true;
        _target->device->nexus_removed(_nexus);
    }
}

void Session::connection_lost(Connection& connection, bool logged_out) {
    _connections.erase(std::remove(_connections.begin(), _connections.end(), &connection),
                       _connections.end());
    // Not while ispaced shuts down: nobody will come back for the tasks, and shutdown waits for sessions.
    if (!logged_out && !_ended && recovers_connections() && !_server.stopping()) {
        keep_for_reassignment(connection);
        return;
    }
    std::vector<IscsiTask*> answered_meanwhile;
    for (auto& [itt, command] : _commands) {
        if (command->connection == &connection) {
            command->connection = nullptr;
            if (command->state == IscsiTask::State::responding && command->unsolicited_done) {
                answered_meanwhile.push_back(command.get());
            }
        }
    }
    // Answers held while the connection was closing (ERL 2) have nowhere to go.
    for (IscsiTask* command : answered_meanwhile) {
        respond(*command);
    }
    if (_connections.empty()) {
        end();
        return;
    }
    if (logged_out) {
        log_info("{}: connection cid {} logged out; {} connection(s) remain", _name, connection.cid(),
                 _connections.size());
        return;
    }
    terminate(fmt::format("connection cid {} failed; at ErrorRecoveryLevel {} the session ends with it",
                          connection.cid(), _params.error_recovery_level),
              {});
}

void Session::terminate(const std::string& reason, Function<void()> gone) {
    if (gone) {
        _on_gone.push_back(std::move(gone));
    }
    if (_ended) {
        return;
    }
    log_info("{}: terminated: {}", _name, reason);
    std::vector<Connection*> connections = std::move(_connections);
    _connections.clear();
    for (Connection* connection : connections) {
        connection->detach_session(reason);
    }
    for (auto& [itt, command] : _commands) {
        command->connection = nullptr;
    }
    end();
}

void Session::end() {
    if (_ended) {
        return;
    }
    _ended = true;
    abort_all([] {});
    maybe_destroy();
}

void Session::maybe_destroy() {
    if (!_ended || !_commands.empty() || _tmfs_in_engine != 0 || _destroying) {
        return;
    }
    _destroying = true;
    if (_target && !_nexus_removed) {
        _nexus_removed = true;
        _target->device->nexus_removed(_nexus);
    }
    // Deferred: release() may be deep inside an engine or connection call that still holds references.
    _reactor.defer([this] {
        auto gone = std::move(_on_gone);
        log_info("{}: closed", _name);
        delete this;
        for (auto& callback : gone) {
            callback();
        }
    });
}

// ---- Introspection and run-time parameters --------------------------------------------------------

void Session::describe(SessionInfo& info) const {
    info.tsih = _tsih;
    info.initiator = _params.initiator_name;
    info.isid = fmt::format("{:012x}", _isid);
    info.target = _target ? _target->iqn : std::string();
    info.keys = iscsi::describe(_params);
    info.tasks = _commands.size();
    for (const Connection* c : _connections) {
        ConnectionInfo ci;
        ci.cid = c->cid();
        ci.peer = c->peer().to_string();
        ci.local = c->local().to_string();
        ci.portal_group = c->tpgt();
        ci.keys = iscsi::describe(c->params(), &ci.initiator_keys);
        info.connections.push_back(std::move(ci));
    }
}

std::vector<net::Endpoint> Session::peers() const {
    std::vector<net::Endpoint> out;
    for (const Connection* c : _connections) {
        out.push_back(c->peer());
    }
    return out;
}

void Session::renegotiate(const iscsi::KeyValueList& keys, std::chrono::seconds wait,
                          Function<void(Result<void>)> done) {
    if (_connections.empty() || _ended) {
        done(make_error("the session has no connection left", ENOTCONN));
        return;
    }
    struct Join {
        size_t pending = 0;
        std::vector<std::string> failures;
        Function<void(Result<void>)> done;
    };
    auto join = std::make_shared<Join>();
    join->pending = _connections.size();
    join->done = std::move(done);
    std::vector<Connection*> connections = _connections;
    for (Connection* c : connections) {
        c->request_negotiation(keys, wait, [join, cid = c->cid()](Result<void> result) {
            if (!result) {
                join->failures.push_back(fmt::format("connection {}: {}", cid, result.error().message));
            }
            if (--join->pending == 0) {
                if (join->failures.empty()) {
                    join->done(Result<void>{});
                } else {
                    join->done(make_error(fmt::format("{}", fmt::join(join->failures, "; ")), ETIMEDOUT));
                }
            }
        });
    }
}

} // namespace ispace::iscsi_target
