#include "scsi/alua.hpp"

#include "common/bytes.hpp"
#include "scsi/execution.hpp"
#include "scsi/target.hpp"

#include <algorithm>

namespace ispace::scsi::alua {
namespace {

constexpr uint8_t format_length_header = 0x0;   // PARAMETER DATA FORMAT 000b: 4-byte header
constexpr uint8_t format_extended_header = 0x1; // 001b: 8-byte header with the implicit transition time

// Supported asymmetric access states of a group (byte 1 of its descriptor): active/optimized only.
constexpr uint8_t ao_sup = 0x01;

} // namespace

std::vector<PortGroup> effective_groups(std::span<const PortGroup> declared, const Nexus* nexus) {
    if (!declared.empty()) {
        return {declared.begin(), declared.end()};
    }
    PortGroup own;
    own.id = nexus ? nexus->target_port_group : 1;
    own.relative_port_ids.push_back(nexus ? nexus->relative_target_port : 1);
    return {own};
}

std::vector<uint16_t> target_ports(std::span<const PortGroup> declared, const Nexus* nexus) {
    std::vector<uint16_t> ports;
    for (const PortGroup& g : effective_groups(declared, nexus)) {
        ports.insert(ports.end(), g.relative_port_ids.begin(), g.relative_port_ids.end());
    }
    std::sort(ports.begin(), ports.end());
    ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
    return ports;
}

void report_target_port_groups(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    uint8_t format = cdb[1] >> 5;
    uint32_t allocation = allocation_length(cdb);
    if (format != format_length_header && format != format_extended_header) {
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 7));
        return;
    }
    std::vector<PortGroup> groups = effective_groups(cmd.target().port_groups(), cmd.task().nexus);
    size_t header = format == format_extended_header ? 8 : 4;
    std::vector<uint8_t> d(header, 0);
    if (format == format_extended_header) {
        d[4] = uint8_t(format_extended_header << 4); // FORMAT TYPE
        d[5] = 0;                                    // IMPLICIT TRANSITION TIME: there are none
    }
    for (const PortGroup& g : groups) {
        size_t at = d.size();
        d.resize(at + 8 + 4 * g.relative_port_ids.size(), 0);
        d[at] = active_optimized; // PREF=0
        d[at + 1] = ao_sup;
        store_be16(&d[at + 2], g.id);
        d[at + 5] = 0x00; // STATUS CODE: no status available
        d[at + 7] = uint8_t(std::min<size_t>(g.relative_port_ids.size(), 255));
        for (size_t i = 0; i < g.relative_port_ids.size() && i < 255; ++i) {
            store_be16(&d[at + 8 + 4 * i + 2], g.relative_port_ids[i]);
        }
    }
    // RETURN DATA LENGTH: what follows the field, whatever the allocation length cuts off.
    store_be32(&d[0], uint32_t(d.size() - 4));
    cmd.complete_data_in(d, allocation);
}

} // namespace ispace::scsi::alua
