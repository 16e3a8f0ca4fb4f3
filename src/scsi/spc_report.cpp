// REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.35, 6.36).
//
// RSOC is built from the operation table and nothing else: an entry the logical unit supports is a
// supported command (cdb.hpp: the same predicate routes commands, so a thick LUN neither lists nor
// executes UNMAP), its usage mask as the logical unit evaluates it is the CDB USAGE DATA (the same
// mask that rejects reserved bits before a handler runs), and an entry with op_service_action is
// reported per service action with SERVACTV set.
//
// What RSTMF reports is what the iSCSI front end carries to TargetDevice: ABORT TASK, ABORT TASK SET,
// CLEAR TASK SET, LOGICAL UNIT RESET and TARGET RESET (TARGET WARM/COLD RESET); CLEAR ACA (no ACA),
// QUERY TASK and friends, and I_T NEXUS RESET are not implemented.
#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/spc.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <vector>

namespace ispace::scsi::spc {
namespace {

constexpr uint8_t options_all = 0x0;             // every command, as a list of descriptors
constexpr uint8_t options_opcode = 0x1;          // one command without service actions
constexpr uint8_t options_opcode_sa = 0x2;       // one command with service actions
constexpr uint8_t options_opcode_maybe_sa = 0x3; // one command, the service action if it has them

constexpr uint8_t support_not_supported = 0x1;
constexpr uint8_t support_standard = 0x3;

constexpr size_t timeouts_descriptor_length = 12;

bool has_service_actions(const LogicalUnit& lu, uint8_t opcode) {
    for (const Operation& op : operations()) {
        if (op.opcode == opcode && (op.flags & op_service_action) && supported_by(op, lu)) {
            return true;
        }
    }
    return false;
}

bool opcode_known(const LogicalUnit& lu, uint8_t opcode) {
    return std::any_of(operations().begin(), operations().end(),
                       [&](const Operation& op) { return op.opcode == opcode && supported_by(op, lu); });
}

const Operation* find(const LogicalUnit& lu, uint8_t opcode, std::optional<uint16_t> service_action) {
    for (const Operation& op : operations()) {
        if (op.opcode != opcode || !supported_by(op, lu)) {
            continue;
        }
        bool sa = op.flags & op_service_action;
        if (!service_action && !sa) {
            return &op;
        }
        if (service_action && sa && op.service_action == *service_action) {
            return &op;
        }
    }
    return nullptr;
}

// COMMAND TIMEOUTS DESCRIPTOR: length 0Ah, no command-specific data, nominal 0 (not specified).
void append_timeouts(std::vector<uint8_t>& d) {
    size_t at = d.size();
    d.resize(at + timeouts_descriptor_length, 0);
    store_be16(&d[at], 0x0a);
    store_be32(&d[at + 4], 0);
    store_be32(&d[at + 8], recommended_command_timeout);
}

// The CDB USAGE DATA of an entry: its mask, except that a service action's field holds the service
// action itself (SPC-4 6.35.3).
std::vector<uint8_t> usage_data(const Operation& op, const LogicalUnit& lu) {
    std::array<uint8_t, 16> usage = usage_for(op, &lu);
    std::vector<uint8_t> u(usage.begin(), usage.begin() + op.cdb_length);
    if (op.flags & op_service_action) {
        u[1] = uint8_t((u[1] & 0xe0) | (op.service_action & 0x1f));
    }
    return u;
}

std::vector<uint8_t> all_commands(const LogicalUnit& lu, bool rctd) {
    std::vector<uint8_t> d(4, 0);
    for (const Operation& op : operations()) {
        if (!supported_by(op, lu)) {
            continue;
        }
        size_t at = d.size();
        d.resize(at + 8, 0);
        bool sa = op.flags & op_service_action;
        d[at] = op.opcode;
        store_be16(&d[at + 2], sa ? op.service_action : 0);
        d[at + 5] = uint8_t((rctd ? 0x02 : 0x00) | (sa ? 0x01 : 0x00)); // CTDP, SERVACTV
        store_be16(&d[at + 6], op.cdb_length);
        if (rctd) {
            append_timeouts(d);
        }
    }
    store_be32(&d[0], uint32_t(d.size() - 4));
    return d;
}

std::vector<uint8_t> one_command(const LogicalUnit& lu, const Operation* op, bool rctd) {
    std::vector<uint8_t> d(4, 0);
    if (!op) {
        d[1] = support_not_supported;
        return d;
    }
    d[1] = uint8_t((rctd ? 0x80 : 0x00) | support_standard);
    std::vector<uint8_t> usage = usage_data(*op, lu);
    store_be16(&d[2], uint16_t(usage.size()));
    d.insert(d.end(), usage.begin(), usage.end());
    if (rctd) {
        append_timeouts(d);
    }
    return d;
}

} // namespace

void report_supported_operation_codes(Execution& cmd) {
    const LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    bool rctd = cdb[2] & 0x80;
    uint8_t options = cdb[2] & 0x07;
    uint8_t opcode = cdb[3];
    uint16_t service_action = load_be16(cdb + 4);
    uint32_t allocation = allocation_length(cdb);
    switch (options) {
    case options_all:
        cmd.complete_data_in(all_commands(lu, rctd), allocation);
        return;
    case options_opcode:
        // SPC-4 6.35.1: asking without a service action for a command that has them is an error.
        if (has_service_actions(lu, opcode)) {
            cmd.complete_check(Sense::invalid_field_in_cdb(3));
            return;
        }
        cmd.complete_data_in(one_command(lu, find(lu, opcode, std::nullopt), rctd), allocation);
        return;
    case options_opcode_sa:
        if (opcode_known(lu, opcode) && !has_service_actions(lu, opcode)) {
            cmd.complete_check(Sense::invalid_field_in_cdb(3));
            return;
        }
        cmd.complete_data_in(one_command(lu, find(lu, opcode, service_action), rctd), allocation);
        return;
    case options_opcode_maybe_sa: {
        std::optional<uint16_t> sa;
        if (has_service_actions(lu, opcode)) {
            sa = service_action;
        }
        cmd.complete_data_in(one_command(lu, find(lu, opcode, sa), rctd), allocation);
        return;
    }
    default:
        cmd.complete_check(Sense::invalid_field_in_cdb(2, 2));
        return;
    }
}

void report_supported_tmfs(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    bool repd = cdb[2] & 0x80;
    uint32_t allocation = allocation_length(cdb);
    // SPC-4 6.36: an allocation length under four is an error, not a truncation.
    if (allocation < 4) {
        cmd.complete_check(Sense::invalid_field_in_cdb(6));
        return;
    }
    std::vector<uint8_t> d(repd ? 16 : 4, 0);
    // ATS, ATSS, CTSS, LURS, TRS; not CACAS, QTS, WAKES.
    d[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
    // QUAS, QTSS, ITNRS: none.
    d[1] = 0x00;
    if (repd) {
        d[3] = 0x0c; // ADDITIONAL DATA LENGTH; no TMF timeouts (TMFTMOV=0)
    }
    cmd.complete_data_in(d, allocation);
}

} // namespace ispace::scsi::spc
