#include "scsi/cdb.hpp"

#include "common/bytes.hpp"
#include "scsi/alua.hpp"
#include "scsi/lu.hpp"
#include "scsi/pr.hpp"
#include "scsi/sbc.hpp"
#include "scsi/spc.hpp"
#include "scsi/xcopy.hpp"

#include <bit>

namespace ispace::scsi {

std::optional<Sense> check_lba_range(uint64_t lba, uint64_t blocks, uint64_t capacity) {
    // Written without lba + blocks so that an LBA near 2^64 cannot wrap around.
    if (lba >= capacity || blocks > capacity - lba) {
        return Sense::lba_out_of_range();
    }
    return std::nullopt;
}

// --- the operation table -------------------------------------------------------------------------
//
// Usage masks, byte by byte as in REPORT SUPPORTED OPERATION CODES. Conventions:
//  - the CONTROL byte (last) is 0x00: NACA is not supported (standard INQUIRY NORMACA=0), so a set
//    NACA bit is INVALID FIELD IN CDB, and the obsolete LINK/FLAG and vendor bits are refused too;
//  - RDPROTECT/WRPROTECT/VRPROTECT are outside the masks: no protection information, so non-zero is
//    INVALID FIELD IN CDB;
//  - GROUP NUMBER is accepted and ignored.
namespace {

// Reads are allowed under Write Exclusive reservations; writes conflict with every reservation.
constexpr uint16_t read_flags = op_pr_read;
constexpr uint16_t write_flags = op_writes_medium;
// Commands that report on the device and never touch the medium: allowed through any reservation.
constexpr uint16_t report_flags = op_pr_allowed | op_spc2_allowed;

// WRITE SAME's UNMAP bit (byte 1 bit 3): evaluated only where the device can deallocate (LBPWS and
// LBPWS10 in the provisioning VPD page follow from it).
constexpr ConditionalUsage write_same_unmap{1, 0x08, deallocates};

// clang-format off
// One entry per command: opcode, service action, CDB length, flags, name, handler, CDB usage data.
constexpr Operation table[] = {
    {op::test_unit_ready, 0, 6, op_pr_allowed, "TEST UNIT READY", spc::test_unit_ready,
     {0x00, 0x00, 0x00, 0x00, 0x00, 0x00}},
    {op::request_sense, 0, 6, op_ua_exempt | op_any_lun | report_flags, "REQUEST SENSE", spc::request_sense,
     {0x03, 0x01, 0x00, 0x00, 0xff, 0x00}},
    {op::read_6, 0, 6, read_flags, "READ(6)", sbc::read,
     {0x08, 0x1f, 0xff, 0xff, 0xff, 0x00}},
    {op::write_6, 0, 6, write_flags, "WRITE(6)", sbc::write,
     {0x0a, 0x1f, 0xff, 0xff, 0xff, 0x00}},
    {op::inquiry, 0, 6, op_ua_exempt | op_any_lun | report_flags, "INQUIRY", spc::inquiry,
     {0x12, 0x01, 0xff, 0xff, 0xff, 0x00}},
    {op::mode_select_6, 0, 6, 0, "MODE SELECT(6)", spc::mode_select,
     {0x15, 0x11, 0x00, 0x00, 0xff, 0x00}},
    {op::reserve_6, 0, 6, op_reservation_own, "RESERVE(6)", pr::spc2_reserve,
     {0x16, 0x00, 0x00, 0x00, 0x00, 0x00}},
    {op::release_6, 0, 6, op_reservation_own, "RELEASE(6)", pr::spc2_release,
     {0x17, 0x00, 0x00, 0x00, 0x00, 0x00}},
    {op::mode_sense_6, 0, 6, 0, "MODE SENSE(6)", spc::mode_sense,
     {0x1a, 0x08, 0xff, 0xff, 0xff, 0x00}},
    {op::start_stop_unit, 0, 6, op_reservation_benign, "START STOP UNIT", sbc::start_stop_unit,
     {0x1b, 0x01, 0x00, 0x0f, 0xf7, 0x00}},
    {op::prevent_allow_medium_removal, 0, 6, op_reservation_benign, "PREVENT ALLOW MEDIUM REMOVAL",
     spc::prevent_allow_medium_removal, {0x1e, 0x00, 0x00, 0x00, 0x03, 0x00}},
    {op::read_capacity_10, 0, 10, report_flags, "READ CAPACITY(10)", sbc::read_capacity_10,
     {0x25, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00}},
    {op::read_10, 0, 10, read_flags, "READ(10)", sbc::read,
     {0x28, 0x1c, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::write_10, 0, 10, write_flags, "WRITE(10)", sbc::write,
     {0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::write_and_verify_10, 0, 10, write_flags, "WRITE AND VERIFY(10)", sbc::write_and_verify,
     {0x2e, 0x16, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::verify_10, 0, 10, read_flags, "VERIFY(10)", sbc::verify,
     {0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::pre_fetch_10, 0, 10, read_flags, "PRE-FETCH(10)", sbc::pre_fetch,
     {0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::synchronize_cache_10, 0, 10, 0, "SYNCHRONIZE CACHE(10)", sbc::synchronize_cache,
     {0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}},
    {op::read_defect_data_10, 0, 10, read_flags, "READ DEFECT DATA(10)", sbc::read_defect_data,
     {0x37, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::write_same_10, 0, 10, write_flags, "WRITE SAME(10)", sbc::write_same,
     {0x41, 0x18, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0x00}, nullptr, write_same_unmap},
    {op::unmap, 0, 10, write_flags, "UNMAP", sbc::unmap,
     {0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x3f, 0xff, 0xff, 0x00}, deallocates},
    // SANITIZE: one entry per supported service action (sbc_sanitize.cpp). BLOCK ERASE and
    // CRYPTOGRAPHIC ERASE deallocate every block, so only a device that deallocates offers them.
    {op::sanitize, sa::sanitize_overwrite, 10, op_service_action | write_flags, "SANITIZE (OVERWRITE)",
     sbc::sanitize, {0x48, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::sanitize, sa::sanitize_block_erase, 10, op_service_action | write_flags, "SANITIZE (BLOCK ERASE)",
     sbc::sanitize, {0x48, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}, deallocates},
    {op::sanitize, sa::sanitize_crypto_erase, 10, op_service_action | write_flags,
     "SANITIZE (CRYPTOGRAPHIC ERASE)", sbc::sanitize,
     {0x48, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}, deallocates},
    {op::sanitize, sa::sanitize_exit_failure_mode, 10, op_service_action | write_flags,
     "SANITIZE (EXIT FAILURE MODE)", sbc::sanitize,
     {0x48, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::mode_select_10, 0, 10, 0, "MODE SELECT(10)", spc::mode_select,
     {0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::reserve_10, 0, 10, op_reservation_own, "RESERVE(10)", pr::spc2_reserve,
     {0x56, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}},
    {op::release_10, 0, 10, op_reservation_own, "RELEASE(10)", pr::spc2_release,
     {0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}},
    {op::mode_sense_10, 0, 10, 0, "MODE SENSE(10)", spc::mode_sense,
     {0x5a, 0x18, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    // PERSISTENT RESERVE IN/OUT: one entry per service action (pr.hpp).
    {op::persistent_reserve_in, pr::read_keys, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE IN (READ KEYS)", pr::persistent_reserve_in,
     {0x5e, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_in, pr::read_reservation, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE IN (READ RESERVATION)", pr::persistent_reserve_in,
     {0x5e, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_in, pr::report_capabilities, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE IN (REPORT CAPABILITIES)", pr::persistent_reserve_in,
     {0x5e, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_in, pr::read_full_status, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE IN (READ FULL STATUS)", pr::persistent_reserve_in,
     {0x5e, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::register_key, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (REGISTER)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::reserve, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (RESERVE)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::release, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (RELEASE)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::clear, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (CLEAR)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::preempt, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (PREEMPT)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::preempt_and_abort, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::register_and_ignore_existing_key, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::persistent_reserve_out, pr::register_and_move, 10, op_service_action | op_reservation_own,
     "PERSISTENT RESERVE OUT (REGISTER AND MOVE)", pr::persistent_reserve_out,
     {0x5f, 0x1f, 0xff, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00}},
    {op::extended_copy, sa::extended_copy_lid1, 16, op_service_action, "EXTENDED COPY(LID1)",
     xcopy::extended_copy,
     {0x83, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::receive_copy_results, sa::copy_status_lid1, 16, op_service_action | op_pr_allowed,
     "RECEIVE COPY RESULTS (COPY STATUS)", xcopy::receive_copy_results,
     {0x84, 0x1f, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::receive_copy_results, sa::copy_operating_parameters, 16, op_service_action | op_pr_allowed,
     "RECEIVE COPY RESULTS (OPERATING PARAMETERS)", xcopy::receive_copy_results,
     {0x84, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::read_16, 0, 16, read_flags, "READ(16)", sbc::read,
     {0x88, 0x1c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::compare_and_write, 0, 16, write_flags, "COMPARE AND WRITE", sbc::compare_and_write,
     {0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0x3f, 0x00}},
    {op::write_16, 0, 16, write_flags, "WRITE(16)", sbc::write,
     {0x8a, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::orwrite_16, 0, 16, write_flags, "ORWRITE(16)", sbc::orwrite,
     {0x8b, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::write_and_verify_16, 0, 16, write_flags, "WRITE AND VERIFY(16)", sbc::write_and_verify,
     {0x8e, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::verify_16, 0, 16, read_flags, "VERIFY(16)", sbc::verify,
     {0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::pre_fetch_16, 0, 16, read_flags, "PRE-FETCH(16)", sbc::pre_fetch,
     {0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::synchronize_cache_16, 0, 16, 0, "SYNCHRONIZE CACHE(16)", sbc::synchronize_cache,
     {0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::write_same_16, 0, 16, write_flags, "WRITE SAME(16)", sbc::write_same,
     {0x93, 0x19, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}, nullptr,
     write_same_unmap},
    {op::write_atomic_16, 0, 16, write_flags, "WRITE ATOMIC(16)", sbc::write_atomic,
     {0x9c, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::service_action_in_16, sa::read_capacity_16, 16, op_service_action | report_flags, "READ CAPACITY(16)",
     sbc::read_capacity_16,
     {0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00}},
    {op::service_action_in_16, sa::get_lba_status, 16, op_service_action | read_flags, "GET LBA STATUS",
     sbc::get_lba_status,
     {0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::report_luns, 0, 12, op_ua_exempt | op_any_lun | report_flags, "REPORT LUNS", spc::report_luns,
     {0xa0, 0x00, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    // MAINTENANCE IN: ALUA and the reporting of what the table holds.
    {op::maintenance_in, sa::report_target_port_groups, 12, op_service_action | report_flags,
     "REPORT TARGET PORT GROUPS", alua::report_target_port_groups,
     {0xa3, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::maintenance_in, sa::report_supported_operation_codes, 12, op_service_action | report_flags,
     "REPORT SUPPORTED OPERATION CODES", spc::report_supported_operation_codes,
     {0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::maintenance_in, sa::report_supported_tmfs, 12, op_service_action | report_flags,
     "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", spc::report_supported_tmfs,
     {0xa3, 0x1f, 0x80, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
    {op::read_12, 0, 12, read_flags, "READ(12)", sbc::read,
     {0xa8, 0x1c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::write_12, 0, 12, write_flags, "WRITE(12)", sbc::write,
     {0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::write_and_verify_12, 0, 12, write_flags, "WRITE AND VERIFY(12)", sbc::write_and_verify,
     {0xae, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::verify_12, 0, 12, read_flags, "VERIFY(12)", sbc::verify,
     {0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0x00}},
    {op::read_defect_data_12, 0, 12, read_flags, "READ DEFECT DATA(12)", sbc::read_defect_data,
     {0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}},
};
// clang-format on

// opcode -> index of its first entry + 1 (0: not implemented). Built once from the table, so the table
// alone decides; entries of one opcode are contiguous (the table is in opcode order).
struct Index {
    std::array<uint8_t, 256> first{};
    Index() {
        static_assert(std::size(table) < 255);
        for (size_t i = std::size(table); i-- > 0;) {
            first[table[i].opcode] = uint8_t(i + 1);
        }
    }
};

const Index& index() {
    static const Index instance;
    return instance;
}

// The entry of `opcode` (and service action) that `lu` supports (any entry when `lu` is null).
// `opcode_known`: `lu` supports some entry of the opcode.
const Operation* lookup(uint8_t opcode, uint8_t service_action, const LogicalUnit* lu, bool& opcode_known) {
    opcode_known = false;
    uint8_t at = index().first[opcode];
    if (at == 0) {
        return nullptr;
    }
    for (size_t i = at - 1; i < std::size(table) && table[i].opcode == opcode; ++i) {
        const Operation& op = table[i];
        if (lu && !supported_by(op, *lu)) {
            continue;
        }
        opcode_known = true;
        if (!(op.flags & op_service_action) || op.service_action == service_action) {
            return &op;
        }
    }
    return nullptr;
}

} // namespace

std::span<const Operation> operations() {
    return table;
}

bool deallocates(const LogicalUnit& lu) {
    // Both: a device that could punch holes but did not promise zeroes afterwards would make UNMAP's
    // LBPRZ a lie.
    return lu.features().thin && lu.features().unmap;
}

bool supported_by(const Operation& op, const LogicalUnit& lu) {
    return !op.supported || op.supported(lu);
}

std::array<uint8_t, 16> usage_for(const Operation& op, const LogicalUnit* lu) {
    std::array<uint8_t, 16> usage = op.usage;
    const ConditionalUsage& c = op.conditional;
    if (c.bits && lu && !c.when(*lu)) {
        usage[c.byte] = uint8_t(usage[c.byte] & ~c.bits);
    }
    return usage;
}

const Operation* find_operation(std::span<const uint8_t> cdb, Sense& error, const LogicalUnit* lu) {
    if (cdb.empty()) {
        error = Sense::invalid_opcode();
        return nullptr;
    }
    uint8_t service_action = cdb.size() > 1 ? cdb[1] & 0x1f : 0;
    bool known = false;
    const Operation* op = lookup(cdb[0], service_action, lu, known);
    if (!op) {
        error = known ? Sense::invalid_field_in_cdb(1, 4) : Sense::invalid_opcode();
    }
    return op;
}

const Operation* find_operation(uint8_t opcode, std::optional<uint8_t> service_action,
                                const LogicalUnit* lu) {
    bool known = false;
    return lookup(opcode, service_action.value_or(0), lu, known);
}

bool implements(uint8_t opcode, std::optional<uint8_t> service_action) {
    return find_operation(opcode, service_action, nullptr) != nullptr;
}

bool supports(const LogicalUnit& lu, uint8_t opcode, std::optional<uint8_t> service_action) {
    return find_operation(opcode, service_action, &lu) != nullptr;
}

std::optional<Sense> check_cdb_usage(const Operation& op, const uint8_t* cdb, const LogicalUnit* lu) {
    std::array<uint8_t, 16> usage = usage_for(op, lu);
    for (unsigned i = 1; i < op.cdb_length; ++i) {
        uint8_t bad = uint8_t(cdb[i] & ~usage[i]);
        if (bad) {
            return Sense::invalid_field_in_cdb(uint16_t(i), 7 - std::countl_zero(bad));
        }
    }
    return std::nullopt;
}

} // namespace ispace::scsi
