// SCSI sense: the value every SCSI outcome other than GOOD is expressed in, and its two wire formats.
//
// The engine never throws and never returns error codes from handlers: a command that fails carries a
// Sense (key, additional sense code and qualifier, plus the optional INFORMATION and sense-key-specific
// fields), and build_sense() turns it into fixed format (SPC-4 4.5.3) or descriptor format (4.5.2)
// depending on the Control mode page D_SENSE bit of the logical unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace ispace::scsi {

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
    copy_aborted = 0xa,
    aborted_command = 0xb,
    miscompare = 0xe,
};

// Additional sense code and qualifier as one value, 0xAAQQ, so tables read like the standard's.
namespace asc {
constexpr uint16_t no_additional_sense = 0x0000;
constexpr uint16_t lu_not_ready_initializing_required = 0x0402;
constexpr uint16_t write_error = 0x0c00;
// RFC 7143 §11.4.7.2: iSCSI's own sense codes for data-out that breaks the protocol.
constexpr uint16_t unexpected_unsolicited_data = 0x0c0c;
constexpr uint16_t not_enough_unsolicited_data = 0x0c0d;
constexpr uint16_t invalid_field_in_command_iu = 0x0e03;
constexpr uint16_t unrecovered_read_error = 0x1100;
constexpr uint16_t parameter_list_length_error = 0x1a00;
constexpr uint16_t miscompare_during_verify = 0x1d00;
constexpr uint16_t invalid_command_operation_code = 0x2000;
constexpr uint16_t lba_out_of_range = 0x2100;
constexpr uint16_t invalid_field_in_cdb = 0x2400;
constexpr uint16_t lu_not_supported = 0x2500;
constexpr uint16_t invalid_field_in_parameter_list = 0x2600;
constexpr uint16_t write_protected = 0x2700;
constexpr uint16_t space_allocation_failed_write_protect = 0x2707;
constexpr uint16_t power_on_reset_or_bus_device_reset = 0x2900;
constexpr uint16_t power_on_occurred = 0x2901;
constexpr uint16_t scsi_bus_reset_occurred = 0x2902;
constexpr uint16_t bus_device_reset_function_occurred = 0x2903;
constexpr uint16_t i_t_nexus_loss_occurred = 0x2907;
constexpr uint16_t mode_parameters_changed = 0x2a01;
constexpr uint16_t capacity_data_has_changed = 0x2a09;
constexpr uint16_t commands_cleared_by_another_initiator = 0x2f00;
constexpr uint16_t saving_parameters_not_supported = 0x3900;
constexpr uint16_t reported_luns_data_has_changed = 0x3f0e;
constexpr uint16_t logical_unit_failure = 0x3e01;
constexpr uint16_t internal_target_failure = 0x4400;
constexpr uint16_t data_phase_error = 0x4b00;
constexpr uint16_t invalid_target_port_transfer_tag = 0x4b01;
constexpr uint16_t data_offset_error = 0x4b05;
// Reservations, mode selection and medium removal (pr.cpp, spc*.cpp).
constexpr uint16_t invalid_release_of_persistent_reservation = 0x2604;
constexpr uint16_t reservations_preempted = 0x2a03;
constexpr uint16_t reservations_released = 0x2a04;
constexpr uint16_t registrations_preempted = 0x2a05;
constexpr uint16_t medium_removal_prevented = 0x5302;
constexpr uint16_t insufficient_registration_resources = 0x5504;
// Block commands: sanitize, third-party copy (sbc_*.cpp, xcopy.cpp).
constexpr uint16_t operation_in_progress = 0x0016;
constexpr uint16_t lu_not_ready_sanitize_in_progress = 0x041b;
constexpr uint16_t unreachable_copy_target = 0x0804;
constexpr uint16_t copy_target_device_not_reachable = 0x0d02;
constexpr uint16_t incorrect_copy_target_device_type = 0x0d03;
constexpr uint16_t too_many_target_descriptors = 0x2606;
constexpr uint16_t unsupported_target_descriptor_type_code = 0x2607;
constexpr uint16_t too_many_segment_descriptors = 0x2608;
constexpr uint16_t unsupported_segment_descriptor_type_code = 0x2609;
constexpr uint16_t sanitize_command_failed = 0x3103;
} // namespace asc

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
    // The sense for a backstore error (-errno) on a read (write == false) or a write/flush.
    static Sense from_errno(int error, bool write);
};

// Largest sense data build_sense() produces: descriptor format header (8) + information (12) + sense
// key specific (8) descriptors; fixed format is 18 bytes.
constexpr size_t max_built_sense = 28;
constexpr size_t fixed_sense_length = 18;

// Writes `sense` as current-error sense data in descriptor (SPC-4 4.5.2) or fixed (4.5.3) format.
// Returns the number of bytes written (at most max_built_sense, truncated to out.size()).
size_t build_sense(const Sense& sense, bool descriptor, std::span<uint8_t> out);

// Reads sense data of either format back (tests, and the initiator side). nullopt when it is neither.
std::optional<Sense> parse_sense(std::span<const uint8_t> data);

} // namespace ispace::scsi
