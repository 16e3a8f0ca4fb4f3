// Operation codes and service actions (SPC-5, SBC-4), VPD page codes and peripheral device types.
//
// The engine's operation table (src/scsi/cdb.cpp) says which of these it implements; the CDB builders
// (cdb.hpp) say how an initiator sends them. Both name them from here.
#pragma once

#include <cstdint>

namespace ispace::scsi {

namespace op {
constexpr uint8_t test_unit_ready = 0x00;
constexpr uint8_t request_sense = 0x03;
constexpr uint8_t read_6 = 0x08;
constexpr uint8_t write_6 = 0x0a;
constexpr uint8_t inquiry = 0x12;
constexpr uint8_t mode_select_6 = 0x15;
constexpr uint8_t reserve_6 = 0x16;
constexpr uint8_t release_6 = 0x17;
constexpr uint8_t mode_sense_6 = 0x1a;
constexpr uint8_t start_stop_unit = 0x1b;
constexpr uint8_t prevent_allow_medium_removal = 0x1e;
constexpr uint8_t read_capacity_10 = 0x25;
constexpr uint8_t read_10 = 0x28;
constexpr uint8_t write_10 = 0x2a;
constexpr uint8_t write_and_verify_10 = 0x2e;
constexpr uint8_t verify_10 = 0x2f;
constexpr uint8_t pre_fetch_10 = 0x34;
constexpr uint8_t synchronize_cache_10 = 0x35;
constexpr uint8_t read_defect_data_10 = 0x37;
constexpr uint8_t write_same_10 = 0x41;
constexpr uint8_t unmap = 0x42;
constexpr uint8_t sanitize = 0x48;
constexpr uint8_t mode_select_10 = 0x55;
constexpr uint8_t reserve_10 = 0x56;
constexpr uint8_t release_10 = 0x57;
constexpr uint8_t mode_sense_10 = 0x5a;
constexpr uint8_t persistent_reserve_in = 0x5e;
constexpr uint8_t persistent_reserve_out = 0x5f;
constexpr uint8_t extended_copy = 0x83;
constexpr uint8_t receive_copy_results = 0x84;
constexpr uint8_t read_16 = 0x88;
constexpr uint8_t compare_and_write = 0x89;
constexpr uint8_t write_16 = 0x8a;
constexpr uint8_t orwrite_16 = 0x8b;
constexpr uint8_t write_and_verify_16 = 0x8e;
constexpr uint8_t verify_16 = 0x8f;
constexpr uint8_t pre_fetch_16 = 0x90;
constexpr uint8_t synchronize_cache_16 = 0x91;
constexpr uint8_t write_same_16 = 0x93;
constexpr uint8_t write_atomic_16 = 0x9c;
constexpr uint8_t service_action_in_16 = 0x9e;
constexpr uint8_t report_luns = 0xa0;
constexpr uint8_t maintenance_in = 0xa3;
constexpr uint8_t read_12 = 0xa8;
constexpr uint8_t write_12 = 0xaa;
constexpr uint8_t write_and_verify_12 = 0xae;
constexpr uint8_t verify_12 = 0xaf;
constexpr uint8_t read_defect_data_12 = 0xb7;
} // namespace op

// Service actions, in bits 4-0 of CDB byte 1, by the operation code they belong to.
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

// Persistent reservations (SPC-5 6.16, 6.17): the service actions of PERSISTENT RESERVE IN and OUT,
// and the reservation types of the TYPE field.
namespace pr {
// PERSISTENT RESERVE IN service actions.
constexpr uint8_t read_keys = 0x00;
constexpr uint8_t read_reservation = 0x01;
constexpr uint8_t report_capabilities = 0x02;
constexpr uint8_t read_full_status = 0x03;

// PERSISTENT RESERVE OUT service actions.
constexpr uint8_t register_key = 0x00;
constexpr uint8_t reserve = 0x01;
constexpr uint8_t release = 0x02;
constexpr uint8_t clear = 0x03;
constexpr uint8_t preempt = 0x04;
constexpr uint8_t preempt_and_abort = 0x05;
constexpr uint8_t register_and_ignore_existing_key = 0x06;
constexpr uint8_t register_and_move = 0x07;

// Reservation types; the only scope is LU_SCOPE (0).
constexpr uint8_t write_exclusive = 0x1;
constexpr uint8_t exclusive_access = 0x3;
constexpr uint8_t write_exclusive_registrants_only = 0x5;
constexpr uint8_t exclusive_access_registrants_only = 0x6;
constexpr uint8_t write_exclusive_all_registrants = 0x7;
constexpr uint8_t exclusive_access_all_registrants = 0x8;
constexpr uint8_t lu_scope = 0x0;
} // namespace pr

// Vital product data pages: the PAGE CODE of INQUIRY with EVPD=1 (SPC-5 7.7, SBC-4 6.6).
namespace vpd {
constexpr uint8_t supported_pages = 0x00;
constexpr uint8_t unit_serial_number = 0x80;
constexpr uint8_t device_identification = 0x83;
constexpr uint8_t third_party_copy = 0x8f;
constexpr uint8_t block_limits = 0xb0;
constexpr uint8_t block_device_characteristics = 0xb1;
constexpr uint8_t logical_block_provisioning = 0xb2;
} // namespace vpd

// PERIPHERAL DEVICE TYPE of standard INQUIRY data (SPC-5 6.7.2, Table 150), the types this code
// names.
namespace device_type {
constexpr uint8_t direct_access_block = 0x00;
constexpr uint8_t sequential_access = 0x01;
constexpr uint8_t processor = 0x03;
constexpr uint8_t cd_dvd = 0x05;
constexpr uint8_t optical_memory = 0x07;
constexpr uint8_t media_changer = 0x08;
constexpr uint8_t storage_array_controller = 0x0c;
constexpr uint8_t enclosure_services = 0x0d;
constexpr uint8_t simplified_direct_access = 0x0e;
constexpr uint8_t unknown = 0x1f;
} // namespace device_type

// The CDB length the group code (bits 7-5 of the opcode) implies: 6, 10, 12 or 16; 0 for group 3
// (variable length / reserved) and the vendor-specific groups 6 and 7.
constexpr unsigned cdb_length_for(uint8_t opcode) {
    switch (opcode >> 5) {
    case 0:
        return 6;
    case 1:
    case 2:
        return 10;
    case 4:
        return 16;
    case 5:
        return 12;
    default:
        return 0;
    }
}

} // namespace ispace::scsi
