// SPC-4 primary commands. Handlers of the operation table (cdb.cpp); each parses its CDB and ends with
// one Execution::complete_* call.
//   spc.cpp         TEST UNIT READY, REQUEST SENSE, INQUIRY (standard data and the VPD pages), REPORT
//                   LUNS, PREVENT ALLOW MEDIUM REMOVAL
//   spc_mode.cpp    MODE SENSE(6)/(10), MODE SELECT(6)/(10)
//   spc_report.cpp  REPORT SUPPORTED OPERATION CODES, REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
// Reservations are in pr.hpp, REPORT TARGET PORT GROUPS in alua.hpp.
#pragma once

#include <cstdint>

namespace ispace::scsi {
class Execution;
}

namespace ispace::scsi::spc {

// Version descriptors reported in standard INQUIRY data (SPC-4 Table 146).
constexpr uint16_t version_sam5 = 0x00a0;
constexpr uint16_t version_spc4 = 0x0460;
constexpr uint16_t version_sbc3 = 0x04c0;
constexpr uint16_t version_iscsi = 0x0960;

// VPD page codes are scsi_spec's (opcodes.hpp, namespace vpd).

// Mode pages.
constexpr uint8_t mode_page_caching = 0x08;
constexpr uint8_t mode_page_control = 0x0a;
constexpr uint8_t mode_page_informational_exceptions = 0x1c;
constexpr uint8_t mode_page_all = 0x3f;

void test_unit_ready(Execution& cmd);
void request_sense(Execution& cmd);
void inquiry(Execution& cmd);
void mode_sense(Execution& cmd);  // MODE SENSE(6) and (10)
void mode_select(Execution& cmd); // MODE SELECT(6) and (10)
void report_luns(Execution& cmd);
void prevent_allow_medium_removal(Execution& cmd);
void report_supported_operation_codes(Execution& cmd);
void report_supported_tmfs(Execution& cmd);

// The command timeouts descriptor RSOC returns with RCTD=1 (SPC-4 6.35.4), in seconds: no nominal
// processing time is promised (0), and a command is expected to end within the initiator's usual
// 30-second SCSI timeout, internal retries included.
constexpr uint32_t recommended_command_timeout = 30;

} // namespace ispace::scsi::spc
