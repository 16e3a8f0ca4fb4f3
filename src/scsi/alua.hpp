// Asymmetric logical unit access (SPC-4 "Asymmetric logical unit access"), implicit only: standard INQUIRY
// says TPGS=01b, every target port group is always active/optimized, and REPORT TARGET PORT GROUPS tells the
// initiator which relative target ports make up which group. There is no SET TARGET PORT GROUPS (explicit
// ALUA, TPGS=10b) and no state transition, so no ASYMMETRIC ACCESS STATE CHANGED unit attention.
//
// For iSCSI a target port is a target portal group (the relative target port identifier is the
// TPGT) and ispace makes one target port group per portal group with the same identifier, so the
// designators of VPD page 83h (relative target port, target port group) agree with RTPG by
// construction. The daemon declares the groups (TargetDevice::set_port_groups); without a
// declaration RTPG reports the group and port of the I_T nexus that asks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ispace::scsi {

class Execution;
struct Nexus;

struct PortGroup {
    uint16_t id = 0;                         // TARGET PORT GROUP
    std::vector<uint16_t> relative_port_ids; // RELATIVE TARGET PORT IDENTIFIERs in the group
};

namespace alua {

// ASYMMETRIC ACCESS STATE values (SPC-4 6.37); ispace only ever reports active/optimized.
constexpr uint8_t active_optimized = 0x0;

// The groups RTPG reports: the declared ones, or the asking nexus's group and port.
std::vector<PortGroup> effective_groups(std::span<const PortGroup> declared, const Nexus* nexus);
// Every relative target port of the declared groups (or the nexus's own), in ascending order: the
// target ports PERSISTENT RESERVE OUT's ALL_TG_PT and REGISTER AND MOVE refer to.
std::vector<uint16_t> target_ports(std::span<const PortGroup> declared, const Nexus* nexus);

// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0Ah), both parameter data formats.
void report_target_port_groups(Execution& cmd);

} // namespace alua
} // namespace ispace::scsi
