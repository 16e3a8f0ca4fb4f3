// The operation table, and the range check of block commands against the capacity. The vocabulary the
// table is written in (opcodes, service actions, the CDB field decoders, LUN coding, sense) is
// scsi_spec's, shared with the initiator.
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

#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"
#include "scsi_spec/sense.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <span>

namespace ispace::scsi {

class Execution;
class LogicalUnit;

// LBA OUT OF RANGE unless [lba, lba + blocks) lies within a medium of `capacity` blocks. A zero
// length is no transfer and no error, but its LBA must still address a block of the medium.
std::optional<Sense> check_lba_range(uint64_t lba, uint64_t blocks, uint64_t capacity);

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
