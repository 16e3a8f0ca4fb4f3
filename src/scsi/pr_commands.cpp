// PERSISTENT RESERVE IN / OUT and RESERVE / RELEASE: CDB and parameter list decoding, the data PRIN
// returns, and the steps a PERSISTENT RESERVE OUT takes after the state changed (unit attentions,
// PREEMPT AND ABORT's task aborts, APTPL persistence). The state machine is in pr.cpp.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi/alua.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/pr.hpp"
#include "scsi/target.hpp"
#include "scsi/tmf.hpp"

#include <cstring>

namespace ispace::scsi::pr {
namespace {

// A PERSISTENT RESERVE OUT parameter list longer than this is refused: the basic list is 24 bytes,
// and this leaves room for hundreds of SPEC_I_PT TransportIDs.
constexpr uint32_t max_parameter_list = 64 * 1024;
constexpr size_t basic_parameter_list = 24;

Sense list_length_error() {
    return Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error);
}

// --- PERSISTENT RESERVE IN ----------------------------------------------------------------------

uint64_t holder_key(const PrStatus& s) {
    if (!s.reservation || is_all_registrants(s.reservation->type)) {
        return 0; // SPC-4 6.14.3: all-registrants reservations report key 0
    }
    for (const Registration& r : s.registrations) {
        if (r.nexus == s.reservation->holder) {
            return r.key;
        }
    }
    return 0;
}

bool holds(const PrStatus& s, const Registration& r) {
    if (!s.reservation) {
        return false;
    }
    return is_all_registrants(s.reservation->type) || s.reservation->holder == r.nexus;
}

std::vector<uint8_t> read_keys_data(const PrStatus& s) {
    std::vector<uint8_t> d(8 + 8 * s.registrations.size(), 0);
    store_be32(&d[0], s.generation);
    // ADDITIONAL LENGTH is the whole list's, whatever the allocation length cuts off.
    store_be32(&d[4], uint32_t(8 * s.registrations.size()));
    for (size_t i = 0; i < s.registrations.size(); ++i) {
        store_be64(&d[8 + 8 * i], s.registrations[i].key);
    }
    return d;
}

std::vector<uint8_t> read_reservation_data(const PrStatus& s) {
    std::vector<uint8_t> d(8, 0);
    store_be32(&d[0], s.generation);
    if (s.reservation) {
        d.resize(24, 0);
        store_be32(&d[4], 16);
        store_be64(&d[8], holder_key(s));
        d[21] = uint8_t(s.reservation->scope << 4 | s.reservation->type);
    }
    return d;
}

std::vector<uint8_t> report_capabilities_data(const PrStatus& s) {
    std::vector<uint8_t> d(8, 0);
    store_be16(&d[0], 8);
    // CRH=0 (RESERVE/RELEASE conflict with registrations), SIP_C, ATP_C, PTPL_C.
    d[2] = uint8_t(0x08 | 0x04 | (s.ptpl_capable ? 0x01 : 0x00));
    // TMV: the type mask is valid; ALLOW COMMANDS 001b: TEST UNIT READY is allowed through Write
    // Exclusive and Exclusive Access reservations; PTPL_A: APTPL is active.
    d[3] = uint8_t(0x80 | 0x10 | (s.aptpl ? 0x01 : 0x00));
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    d[5] = 0x01;                             // EX_AC_AR
    return d;
}

std::vector<uint8_t> read_full_status_data(const PrStatus& s) {
    std::vector<uint8_t> d(8, 0);
    store_be32(&d[0], s.generation);
    for (const Registration& r : s.registrations) {
        std::vector<uint8_t> tid = transport_id(r.nexus.initiator_port);
        size_t at = d.size();
        d.resize(at + 24 + tid.size(), 0);
        store_be64(&d[at], r.key);
        bool holder = holds(s, r);
        d[at + 12] = uint8_t((r.all_tg_pt ? 0x02 : 0x00) | (holder ? 0x01 : 0x00));
        if (holder) {
            d[at + 13] = uint8_t(s.reservation->scope << 4 | s.reservation->type);
        }
        store_be16(&d[at + 18], r.nexus.relative_target_port);
        store_be32(&d[at + 20], uint32_t(tid.size()));
        std::memcpy(&d[at + 24], tid.data(), tid.size());
    }
    store_be32(&d[4], uint32_t(d.size() - 8));
    return d;
}

// --- PERSISTENT RESERVE OUT ---------------------------------------------------------------------

constexpr uint8_t step_changed = 0x01; // Execution::mode: the state must be persisted before GOOD

void prout_complete(Execution& cmd) {
    if (!(cmd.mode & step_changed)) {
        cmd.complete_good();
        return;
    }
    // APTPL: GOOD only once the new state is on stable storage. The write blocks, so it goes to the
    // reactor's worker threads.
    LogicalUnit* lu = cmd.lu();
    net::Reactor* reactor = cmd.task().reactor;
    auto done = [&cmd](int64_t error) {
        if (error != 0) {
            cmd.complete_check(Sense::internal_target_failure());
            return;
        }
        cmd.complete_good();
    };
    if (!reactor) {
        done(lu->reservations().persist());
        return;
    }
    reactor->run_blocking([lu] { return int64_t(lu->reservations().persist()); }, std::move(done));
}

std::optional<Sense> decode(Execution& cmd, const uint8_t* p, uint32_t length, ProutRequest& r) {
    const uint8_t* cdb = cmd.cdb();
    r.service_action = cdb[1] & 0x1f;
    r.scope = cdb[2] >> 4;
    r.type = cdb[2] & 0x0f;
    r.key = load_be64(p);
    r.sa_key = load_be64(p + 8);
    bool ptpl = cmd.lu()->reservations().ptpl_capable();
    if (r.service_action == register_and_move) {
        r.unreg = p[17] & 0x02;
        r.aptpl = p[17] & 0x01;
        if (r.aptpl && !ptpl) {
            return Sense::invalid_field_in_parameter_list(17, 0);
        }
        r.move_relative_target_port = load_be16(p + 18);
        uint32_t tid_length = load_be32(p + 20);
        if (uint64_t(basic_parameter_list) + tid_length > length) {
            return list_length_error();
        }
        Sense error;
        auto tid = parse_transport_id({p + basic_parameter_list, tid_length}, basic_parameter_list, error);
        if (!tid) {
            return error;
        }
        if (!tid->port) {
            // The reservation moves to one I_T nexus: an initiator device is not one.
            return Sense::invalid_field_in_parameter_list(basic_parameter_list, 7);
        }
        r.move_initiator_port = tid->initiator_port;
        return std::nullopt;
    }
    r.spec_i_pt = p[20] & 0x08;
    r.all_tg_pt = p[20] & 0x04;
    r.aptpl = p[20] & 0x01;
    bool registering =
        r.service_action == register_key || r.service_action == register_and_ignore_existing_key;
    if (!registering) {
        // ALL_TG_PT and APTPL mean something only when registering (SPC-4 6.15.3).
        r.all_tg_pt = false;
        r.aptpl = false;
    }
    if (r.aptpl && !ptpl) {
        return Sense::invalid_field_in_parameter_list(20, 0);
    }
    if (r.spec_i_pt && r.service_action != register_key) {
        return Sense::invalid_field_in_parameter_list(20, 3);
    }
    if (!r.spec_i_pt) {
        if (length != basic_parameter_list) {
            return list_length_error();
        }
        return std::nullopt;
    }
    if (length < basic_parameter_list + 4) {
        return list_length_error();
    }
    uint32_t tid_length = load_be32(p + 24);
    size_t end = basic_parameter_list + 4 + size_t(tid_length);
    if (end > length) {
        return list_length_error();
    }
    for (size_t at = basic_parameter_list + 4; at < end;) {
        Sense error;
        auto tid = parse_transport_id({p + at, end - at}, at, error);
        if (!tid) {
            return error;
        }
        if (!tid->port) {
            // Registrations are per initiator port; a bare iSCSI name would need a wildcard ISID.
            return Sense::invalid_field_in_parameter_list(uint16_t(at), 7);
        }
        r.specified_ports.push_back(tid->initiator_port);
        at += tid->length;
    }
    return std::nullopt;
}

void prout_data_ready(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    uint32_t length = task.transfer_length;
    if (cmd.data_out_available(length) < length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    ProutRequest request;
    if (auto error = decode(cmd, task.buffer.data(), length, request)) {
        cmd.complete_check(*error);
        return;
    }
    std::vector<uint16_t> ports = alua::target_ports(cmd.target().port_groups(), task.nexus);
    Nexus anonymous;
    ProutOutcome out = lu.reservations().apply(task.nexus ? *task.nexus : anonymous, request, ports);
    for (const auto& [nexus, code] : out.attentions) {
        lu.establish_ua(nexus, code);
    }
    if (out.status == Status::reservation_conflict) {
        cmd.complete_status(Status::reservation_conflict);
        return;
    }
    if (out.status != Status::good) {
        cmd.complete_check(out.sense.value_or(Sense::internal_target_failure()));
        return;
    }
    if (out.changed) {
        cmd.mode |= step_changed;
    }
    if (out.aborted_nexuses.empty()) {
        prout_complete(cmd);
        return;
    }
    // PREEMPT AND ABORT: the preempted I_T nexuses' tasks are aborted as by ABORT TASK SET (TAS=0: they
    // end without status), and the command completes once they are gone.
    TmfOp* op = TmfOp::begin([&cmd](TmfResult) { prout_complete(cmd); });
    for (uint64_t nexus : out.aborted_nexuses) {
        TaskMatch match;
        match.any_nexus = false;
        match.nexus = nexus;
        match.except = &task;
        lu.abort_tasks(match, op);
    }
    op->release();
}

bool needs_reservation_fields(uint8_t service_action) {
    return service_action == reserve || service_action == release || service_action == preempt ||
           service_action == preempt_and_abort;
}

} // namespace

void persistent_reserve_in(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    uint32_t allocation = allocation_length(cdb);
    Reservations& reservations = cmd.lu()->reservations();
    if (reservations.persistent_commands_conflict()) {
        cmd.complete_status(Status::reservation_conflict);
        return;
    }
    PrStatus s = reservations.status();
    switch (cdb[1] & 0x1f) {
    case read_keys:
        cmd.complete_data_in(read_keys_data(s), allocation);
        return;
    case read_reservation:
        cmd.complete_data_in(read_reservation_data(s), allocation);
        return;
    case report_capabilities:
        cmd.complete_data_in(report_capabilities_data(s), allocation);
        return;
    case read_full_status:
        cmd.complete_data_in(read_full_status_data(s), allocation);
        return;
    default:
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 4));
        return;
    }
}

void persistent_reserve_out(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    Task& task = cmd.task();
    uint8_t service_action = cdb[1] & 0x1f;
    uint32_t length = parameter_list_length(cdb);
    task.transfer_length = length;
    if (cmd.lu()->reservations().persistent_commands_conflict()) {
        cmd.complete_status(Status::reservation_conflict);
        return;
    }
    if (needs_reservation_fields(service_action)) {
        if ((cdb[2] >> 4) != lu_scope) {
            cmd.complete_check(Sense::invalid_field_in_cdb(2, 7));
            return;
        }
        if (!valid_type(cdb[2] & 0x0f)) {
            cmd.complete_check(Sense::invalid_field_in_cdb(2, 3));
            return;
        }
    }
    if (length < basic_parameter_list) {
        cmd.complete_check(list_length_error());
        return;
    }
    if (length > max_parameter_list) {
        cmd.complete_check(Sense::invalid_field_in_cdb(5));
        return;
    }
    cmd.mode = 0;
    cmd.fetch_data_out(length, prout_data_ready);
}

void spc2_reserve(Execution& cmd) {
    if (!cmd.lu()->reservations().spc2_reserve(cmd.nexus_id())) {
        cmd.complete_status(Status::reservation_conflict);
        return;
    }
    cmd.complete_good();
}

void spc2_release(Execution& cmd) {
    if (!cmd.lu()->reservations().spc2_release(cmd.nexus_id())) {
        cmd.complete_status(Status::reservation_conflict);
        return;
    }
    cmd.complete_good();
}

} // namespace ispace::scsi::pr
