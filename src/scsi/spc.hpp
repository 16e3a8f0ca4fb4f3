// SPC-4 primary commands: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard data and the VPD pages),
// MODE SENSE(6)/(10), REPORT LUNS. Handlers of the operation table (cdb.cpp); each parses its CDB
// and ends with one Command::complete_* call.
#pragma once

#include <cstdint>

namespace ispace::scsi {
class Command;
}

namespace ispace::scsi::spc {

// Version descriptors reported in standard INQUIRY data (SPC-4 Table 146).
constexpr uint16_t version_sam5 = 0x00a0;
constexpr uint16_t version_spc4 = 0x0460;
constexpr uint16_t version_sbc3 = 0x04c0;
constexpr uint16_t version_iscsi = 0x0960;

// VPD pages.
constexpr uint8_t vpd_supported_pages = 0x00;
constexpr uint8_t vpd_unit_serial_number = 0x80;
constexpr uint8_t vpd_device_identification = 0x83;
constexpr uint8_t vpd_block_limits = 0xb0;
constexpr uint8_t vpd_block_device_characteristics = 0xb1;
constexpr uint8_t vpd_logical_block_provisioning = 0xb2;

// Mode pages.
constexpr uint8_t mode_page_caching = 0x08;
constexpr uint8_t mode_page_control = 0x0a;
constexpr uint8_t mode_page_informational_exceptions = 0x1c;
constexpr uint8_t mode_page_all = 0x3f;

void test_unit_ready(Command& cmd);
void request_sense(Command& cmd);
void inquiry(Command& cmd);
void mode_sense(Command& cmd); // MODE SENSE(6) and (10)
void report_luns(Command& cmd);

} // namespace ispace::scsi::spc
