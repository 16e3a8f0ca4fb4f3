// SCSI sense: sense keys, additional sense codes, and sense data in both of its wire formats.
//
// A device server that fails a command describes why with a Sense (key, additional sense code and
// qualifier, plus the optional INFORMATION and sense-key-specific fields); build_sense() writes it in
// fixed format (SPC-5 4.4.3) or descriptor format (4.4.2), as the Control mode page D_SENSE bit of the
// logical unit asks. An initiator reads either format back with parse_sense() and names it with
// describe_sense(). The texts come from the one ASC/ASCQ table (asc_table.hpp).
#pragma once

#include "scsi_spec/asc_table.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace ispace::scsi {

// SPC-5 4.4.8, Table 52. 0Ch is reserved (formerly EQUAL).
enum class SenseKey : uint8_t {
    no_sense = 0x0,
    recovered_error = 0x1,
    not_ready = 0x2,
    medium_error = 0x3,
    hardware_error = 0x4,
    illegal_request = 0x5,
    unit_attention = 0x6,
    data_protect = 0x7,
    blank_check = 0x8,
    vendor_specific = 0x9,
    copy_aborted = 0xa,
    aborted_command = 0xb,
    volume_overflow = 0xd,
    miscompare = 0xe,
    completed = 0xf,
};

// "ILLEGAL REQUEST", "UNIT ATTENTION", ...; "RESERVED (0Ch)" for the reserved value.
const char* sense_key_name(SenseKey key);

// Additional sense code and qualifier as one value, 0xAAQQ, so tables read like the standard's. One
// constant per row of asc_table.hpp.
namespace asc {
#define ISPACE_SCSI_ASC_CONSTANT(name, code, text) constexpr uint16_t name = code;
ISPACE_SCSI_ASC_TABLE(ISPACE_SCSI_ASC_CONSTANT)
#undef ISPACE_SCSI_ASC_CONSTANT
} // namespace asc

// The standard's text for an ASC/ASCQ (0xAAQQ), nullptr when the table does not have it.
const char* asc_text(uint16_t code);

struct Sense {
    SenseKey key = SenseKey::no_sense;
    uint16_t code = asc::no_additional_sense; // 0xAAQQ

    // INFORMATION field (VALID bit), e.g. the offset of the first miscompare.
    bool information_valid = false;
    uint64_t information = 0;

    // Sense-key-specific field pointer (SKSV): which CDB (or parameter list) byte and bit was wrong.
    bool field_pointer_valid = false;
    bool in_cdb = true;             // C/D: the pointer is into the CDB, not the parameter data
    bool bit_pointer_valid = false; // BPV
    uint8_t bit_pointer = 0;
    uint16_t field_pointer = 0;

    uint8_t asc() const { return uint8_t(code >> 8); }
    uint8_t ascq() const { return uint8_t(code); }

    static Sense make(SenseKey key, uint16_t code) {
        Sense s;
        s.key = key;
        s.code = code;
        return s;
    }
    // ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`, 0-7, when one bit is at fault).
    static Sense invalid_field_in_cdb(uint16_t byte, int bit = -1);
    static Sense invalid_field_in_parameter_list(uint16_t byte, int bit = -1);
    static Sense invalid_opcode() {
        return make(SenseKey::illegal_request, asc::invalid_command_operation_code);
    }
    static Sense lba_out_of_range() { return make(SenseKey::illegal_request, asc::lba_out_of_range); }
    static Sense lu_not_supported() { return make(SenseKey::illegal_request, asc::lu_not_supported); }
    static Sense write_protected() { return make(SenseKey::data_protect, asc::write_protected); }
    static Sense invalid_field_in_command_iu() {
        return make(SenseKey::illegal_request, asc::invalid_field_in_command_iu);
    }
    static Sense saving_parameters_not_supported() {
        return make(SenseKey::illegal_request, asc::saving_parameters_not_supported);
    }
    static Sense internal_target_failure() {
        return make(SenseKey::hardware_error, asc::internal_target_failure);
    }
    // MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the byte offset of the first difference.
    static Sense miscompare(uint64_t offset);
};

// Largest sense data build_sense() produces: descriptor format header (8) + information (12) + sense
// key specific (8) descriptors; fixed format is 18 bytes.
constexpr size_t max_built_sense = 28;
constexpr size_t fixed_sense_length = 18;

// Writes `sense` as current-error sense data in descriptor (SPC-5 4.4.2) or fixed (4.4.3) format.
// Returns the number of bytes written (at most max_built_sense, truncated to out.size()).
size_t build_sense(const Sense& sense, bool descriptor, std::span<uint8_t> out);

// Reads sense data of either format, current or deferred errors; nullopt when it is neither. Sense data
// cut short (a device may return less than the whole) gives what it holds: the sense key needs the first
// three bytes (fixed) or two (descriptor); a missing ASC/ASCQ reads as 00h/00h; descriptors are walked
// within the ADDITIONAL SENSE LENGTH and what arrived.
std::optional<Sense> parse_sense(std::span<const uint8_t> data);

// "ILLEGAL REQUEST, asc/ascq 24/00 (INVALID FIELD IN CDB)"; without the parenthesis for a code the table
// does not have.
std::string describe_sense(const Sense& sense);
// The same for sense data as received; "no sense data" when empty, "unrecognised sense data" when it
// is in neither format.
std::string describe_sense(std::span<const uint8_t> data);

} // namespace ispace::scsi
