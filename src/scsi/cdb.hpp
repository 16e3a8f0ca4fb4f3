// CDB decoding: lengths by group code, LBA and transfer length of the 6/10/12/16-byte forms, range
// checks against the capacity, SAM LUN encoding, and the operation table.
//
// The operation table is the one place that says which commands the engine implements. Each entry
// names the opcode (and service action), the CDB length, how the command interacts with unit
// attentions and missing logical units, the CDB USAGE DATA (SPC-4 6.35: which bits the device server
// looks at) and the handler that parses and executes it. The usage mask doubles as the reserved-bit
// check: a CDB bit outside it is INVALID FIELD IN CDB with the field pointer on that bit, before the
// handler runs. Adding an opcode is one entry here, one handler in spc.cpp/sbc.cpp, and one test.
//
// Not every logical unit supports every entry: UNMAP needs a device that can deallocate blocks. An
// entry may carry a predicate that says whether a logical unit supports it; routing, REPORT SUPPORTED
// OPERATION CODES and the VPD pages all ask the same predicate (through find_operation, supports and
// usage_for with the logical unit), so what a logical unit advertises is exactly what it executes.
#pragma once

#include "scsi/sense.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <span>

namespace ispace::scsi {

class Execution;
class LogicalUnit;

namespace op {
constexpr uint8_t test_unit_ready = 0x00;
constexpr uint8_t request_sense = 0x03;
constexpr uint8_t read_6 = 0x08;
constexpr uint8_t write_6 = 0x0a;
constexpr uint8_t inquiry = 0x12;
constexpr uint8_t mode_select_6 = 0x15;
constexpr uint8_t mode_sense_6 = 0x1a;
constexpr uint8_t start_stop_unit = 0x1b;
constexpr uint8_t read_capacity_10 = 0x25;
constexpr uint8_t read_10 = 0x28;
constexpr uint8_t write_10 = 0x2a;
constexpr uint8_t verify_10 = 0x2f;
constexpr uint8_t synchronize_cache_10 = 0x35;
constexpr uint8_t write_same_10 = 0x41;
constexpr uint8_t unmap = 0x42;
constexpr uint8_t mode_select_10 = 0x55;
constexpr uint8_t mode_sense_10 = 0x5a;
constexpr uint8_t read_16 = 0x88;
constexpr uint8_t write_16 = 0x8a;
constexpr uint8_t verify_16 = 0x8f;
constexpr uint8_t synchronize_cache_16 = 0x91;
constexpr uint8_t write_same_16 = 0x93;
constexpr uint8_t service_action_in_16 = 0x9e;
constexpr uint8_t report_luns = 0xa0;
constexpr uint8_t maintenance_in = 0xa3;
constexpr uint8_t read_12 = 0xa8;
constexpr uint8_t write_12 = 0xaa;
constexpr uint8_t verify_12 = 0xaf;
// Primary commands of the reservation, mode selection and reporting group (pr.cpp, alua.cpp, spc*.cpp).
constexpr uint8_t reserve_6 = 0x16;
constexpr uint8_t release_6 = 0x17;
constexpr uint8_t prevent_allow_medium_removal = 0x1e;
constexpr uint8_t reserve_10 = 0x56;
constexpr uint8_t release_10 = 0x57;
constexpr uint8_t persistent_reserve_in = 0x5e;
constexpr uint8_t persistent_reserve_out = 0x5f;
// Block commands beyond plain reads and writes, and third-party copy (sbc_*.cpp, xcopy.cpp).
constexpr uint8_t write_and_verify_10 = 0x2e;
constexpr uint8_t pre_fetch_10 = 0x34;
constexpr uint8_t read_defect_data_10 = 0x37;
constexpr uint8_t sanitize = 0x48;
constexpr uint8_t extended_copy = 0x83;
constexpr uint8_t receive_copy_results = 0x84;
constexpr uint8_t compare_and_write = 0x89;
constexpr uint8_t orwrite_16 = 0x8b;
constexpr uint8_t write_and_verify_16 = 0x8e;
constexpr uint8_t pre_fetch_16 = 0x90;
constexpr uint8_t write_atomic_16 = 0x9c;
constexpr uint8_t write_and_verify_12 = 0xae;
constexpr uint8_t read_defect_data_12 = 0xb7;
} // namespace op

namespace sa {
constexpr uint8_t read_capacity_16 = 0x10;                 // SERVICE ACTION IN(16)
constexpr uint8_t get_lba_status = 0x12;                   // SERVICE ACTION IN(16)
constexpr uint8_t report_target_port_groups = 0x0a;        // MAINTENANCE IN
constexpr uint8_t report_supported_operation_codes = 0x0c; // MAINTENANCE IN
constexpr uint8_t report_supported_tmfs = 0x0d;            // MAINTENANCE IN
constexpr uint8_t sanitize_overwrite = 0x01;               // SANITIZE
constexpr uint8_t sanitize_block_erase = 0x02;             // SANITIZE
constexpr uint8_t sanitize_crypto_erase = 0x03;            // SANITIZE
constexpr uint8_t sanitize_exit_failure_mode = 0x1f;       // SANITIZE
constexpr uint8_t extended_copy_lid1 = 0x00;               // EXTENDED COPY
constexpr uint8_t copy_status_lid1 = 0x00;                 // RECEIVE COPY RESULTS
constexpr uint8_t copy_operating_parameters = 0x03;        // RECEIVE COPY RESULTS
} // namespace sa

// The CDB length the group code (bits 7-5 of the opcode) implies: 6, 10, 12 or 16; 0 for group 3
// (variable length / reserved) and the vendor-specific groups 6 and 7.
unsigned cdb_length_for(uint8_t opcode);

// LBA and transfer length of a block command, read from the position its CDB form puts them
// (READ/WRITE/VERIFY/SYNCHRONIZE CACHE/WRITE SAME ... share the layouts):
//   6-byte:  21-bit LBA in bytes 1-3, length in byte 4 (READ(6)/WRITE(6): 0 means 256 blocks)
//   10-byte: LBA 2-5, length 7-8      12-byte: LBA 2-5, length 6-9      16-byte: LBA 2-9, length 10-13
struct BlockRange {
    uint64_t lba = 0;
    uint32_t blocks = 0;
};
BlockRange decode_block_range(const uint8_t* cdb);
// Byte offset of the transfer length field of the CDB form, for field pointers.
uint16_t transfer_length_offset(const uint8_t* cdb);

// LBA OUT OF RANGE unless [lba, lba + blocks) lies within a medium of `capacity` blocks. A zero
// length is no transfer and no error, but its LBA must still address a block of the medium.
std::optional<Sense> check_lba_range(uint64_t lba, uint64_t blocks, uint64_t capacity);

// The SAM-5 8-byte LUN field (Task::lun holds it with byte 0 as the most significant byte).
// Single-level peripheral (00b) and flat (01b) addressing are decoded; anything else, or a non-zero
// second level, addresses no logical unit here.
std::optional<uint64_t> decode_lun(uint64_t field);
// The LUN field for a LUN number: peripheral addressing below 256, flat addressing up to 16383.
uint64_t encode_lun(uint64_t lun);
constexpr uint64_t max_lun = 16383;

// --- the operation table -------------------------------------------------------------------------

using Handler = void (*)(Execution&);

enum OperationFlags : uint16_t {
    op_ua_exempt = 1 << 0, // INQUIRY, REPORT LUNS, REQUEST SENSE: never reports a unit attention
    op_any_lun = 1 << 1, // also answers for a LUN with no logical unit (INQUIRY, REQUEST SENSE, REPORT LUNS)
    op_service_action = 1 << 2, // bits 4-0 of byte 1 select among entries of this opcode
    op_writes_medium = 1 << 3,  // refused on a write-protected logical unit
    // Reservations (pr.hpp): how a command fares when another I_T nexus holds a reservation. A command
    // with none of these conflicts with every reservation of another I_T nexus (the SPC-4 and SBC-3
    // tables of commands allowed in the presence of reservations; the safe default for anything that
    // writes or changes the logical unit).
    op_pr_allowed = 1 << 4,   // allowed under every persistent reservation type ("Allowed" throughout)
    op_pr_read = 1 << 5,      // reads the medium: allowed under Write Exclusive types only
    op_spc2_allowed = 1 << 6, // allowed while another I_T nexus holds an SPC-2 RESERVE
    // Allowed under any reservation in its harmless form (PREVENT field 0; START=1 with no power
    // condition), conflicting otherwise; pr.cpp's benign_form() reads the CDB.
    op_reservation_benign = 1 << 7,
    // PERSISTENT RESERVE IN/OUT, RESERVE, RELEASE: the handler applies the reservation rules itself.
    op_reservation_own = 1 << 8,
};

// Whether a logical unit can do something: what its device offers (lu.features()).
using LuPredicate = bool (*)(const LogicalUnit& lu);

// CDB bits that only some logical units evaluate: WRITE SAME's UNMAP bit means something only where
// the device can deallocate. Where `when` says no, the bits are outside the usage mask: a CDB that
// sets them is INVALID FIELD IN CDB, and REPORT SUPPORTED OPERATION CODES does not report them.
struct ConditionalUsage {
    uint8_t byte = 0;
    uint8_t bits = 0;
    LuPredicate when = nullptr;
};

struct Operation {
    uint8_t opcode = 0;
    uint8_t service_action = 0;
    uint8_t cdb_length = 0;
    uint16_t flags = 0;
    const char* name = "";
    Handler execute = nullptr;
    // CDB USAGE DATA: bit set = the device server evaluates the bit; a set CDB bit outside the mask is
    // rejected. Byte 0 is the opcode itself.
    std::array<uint8_t, 16> usage{};
    // Whether a logical unit supports the command at all; nullptr: every logical unit does. A logical
    // unit that does not answers it as it answers an opcode (or service action) it does not know.
    LuPredicate supported = nullptr;
    ConditionalUsage conditional{};
};

// Every implemented command, in opcode order. Some are supported only by some logical units.
std::span<const Operation> operations();

// Whether `lu` supports the entry (its predicate, if any).
bool supported_by(const Operation& op, const LogicalUnit& lu);
// The entry's usage mask as `lu` evaluates it: the table's mask without the conditional bits the
// logical unit does not evaluate. Without a logical unit, the table's mask.
std::array<uint8_t, 16> usage_for(const Operation& op, const LogicalUnit* lu);

// Finds the entry for a CDB among those `lu` supports (every entry when `lu` is null). On failure
// returns nullptr and sets `error`: INVALID COMMAND OPERATION CODE for an opcode none of whose entries
// `lu` supports, INVALID FIELD IN CDB (byte 1) for a service action it does not support of one it does.
const Operation* find_operation(std::span<const uint8_t> cdb, Sense& error, const LogicalUnit* lu = nullptr);
// The entry for an opcode (and service action) among those `lu` supports (every entry when null).
const Operation* find_operation(uint8_t opcode, std::optional<uint8_t> service_action,
                                const LogicalUnit* lu = nullptr);
// Whether the table holds an opcode (and service action) for some logical unit.
bool implements(uint8_t opcode, std::optional<uint8_t> service_action = std::nullopt);
// Whether `lu` supports an opcode (and service action): what the VPD pages advertise.
bool supports(const LogicalUnit& lu, uint8_t opcode, std::optional<uint8_t> service_action = std::nullopt);

// INVALID FIELD IN CDB for the first set bit the entry's usage mask (as `lu` evaluates it) does not
// allow (field pointer to the byte, bit pointer to its highest offending bit); nullopt when the CDB
// is clean.
std::optional<Sense> check_cdb_usage(const Operation& op, const uint8_t* cdb,
                                     const LogicalUnit* lu = nullptr);

// Predicates of the table, for the handlers that depend on the same capability.
// The device deallocates blocks, and deallocated blocks read as zeroes: thin files, memory, null,
// and block devices with write-zeroes support (UNMAP, WRITE SAME with UNMAP, SANITIZE BLOCK ERASE and
// CRYPTOGRAPHIC ERASE).
bool deallocates(const LogicalUnit& lu);

} // namespace ispace::scsi
