#include "scsi/spc.hpp"

#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc.hpp"
#include "scsi/target.hpp"
#include "scsi/xcopy.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

namespace ispace::scsi::spc {
namespace {

// ispace holds no IEEE company ID of its own. The NAA designator's uniqueness comes from the
// 100 identifier bits that follow it; a deployment with its own OUI puts it here.
constexpr uint32_t naa_company_id = 0x000000;

constexpr uint8_t protocol_iscsi = 0x5;
constexpr uint8_t code_set_binary = 0x1;
constexpr uint8_t code_set_ascii = 0x2;
constexpr uint8_t code_set_utf8 = 0x3;
constexpr uint8_t association_lu = 0x0;
constexpr uint8_t association_target_port = 0x1;
constexpr uint8_t association_target_device = 0x2;
constexpr uint8_t designator_t10_vendor = 0x1;
constexpr uint8_t designator_naa = 0x3;
constexpr uint8_t designator_relative_target_port = 0x4;
constexpr uint8_t designator_target_port_group = 0x5;
constexpr uint8_t designator_scsi_name = 0x8;

// Peripheral qualifier 011b / device type 1Fh: "no logical unit at this LUN" (SPC-4 6.6.2).
constexpr uint8_t no_lu_peripheral = 0x7f;

// ASCII fields are space padded and hold 20h-7Eh only (SPC-4 4.4.1).
void put_ascii(uint8_t* out, std::string_view s, size_t width) {
    for (size_t i = 0; i < width; ++i) {
        char c = i < s.size() ? s[i] : ' ';
        out[i] = (c >= 0x20 && c <= 0x7e) ? uint8_t(c) : uint8_t('_');
    }
}

// --- INQUIRY ------------------------------------------------------------------------------------

std::vector<uint8_t> standard_inquiry(const LogicalUnit* lu) {
    std::vector<uint8_t> d(96, 0);
    d[0] = lu ? device_type::direct_access_block : no_lu_peripheral;
    d[1] = 0x00; // not removable
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP (hierarchical LUNs), response data format 2
    d[4] = uint8_t(d.size() - 5);
    // TPGS=01b: implicit ALUA (alua.hpp; REPORT TARGET PORT GROUPS); 3PC: EXTENDED COPY (xcopy.hpp);
    // no protection information.
    d[5] = lu ? 0x18 : 0x00;
    d[6] = 0x00;
    d[7] = 0x02; // CMDQUE
    LuIdentity defaults;
    const LuIdentity& id = lu ? lu->options().identity : defaults;
    put_ascii(&d[8], id.vendor, 8);
    put_ascii(&d[16], id.product, 16);
    put_ascii(&d[32], id.revision, 4);
    const uint16_t versions[] = {version_sam5, version_iscsi, version_spc4, version_sbc3};
    for (size_t i = 0; i < std::size(versions); ++i) {
        store_be16(&d[58 + 2 * i], versions[i]);
    }
    return d;
}

std::vector<uint8_t> vpd_header(uint8_t page) {
    std::vector<uint8_t> d(4, 0);
    d[1] = page;
    return d;
}

void finish_vpd(std::vector<uint8_t>& d) {
    store_be16(&d[2], uint16_t(d.size() - 4));
}

void add_designator(std::vector<uint8_t>& d, uint8_t protocol, uint8_t code_set, bool piv,
                    uint8_t association, uint8_t type, std::span<const uint8_t> value) {
    d.push_back(uint8_t(protocol << 4 | code_set));
    d.push_back(uint8_t((piv ? 0x80 : 0) | association << 4 | type));
    d.push_back(0);
    d.push_back(uint8_t(value.size()));
    d.insert(d.end(), value.begin(), value.end());
}

// SCSI name strings are UTF-8, null terminated and padded to a multiple of four, at most 256 bytes.
std::vector<uint8_t> scsi_name(std::string_view name) {
    name = name.substr(0, 251);
    std::vector<uint8_t> v(name.begin(), name.end());
    v.push_back(0);
    while (v.size() % 4) {
        v.push_back(0);
    }
    return v;
}

std::vector<uint8_t> device_identification(const LogicalUnit& lu, const Nexus* nexus) {
    std::vector<uint8_t> d = vpd_header(vpd::device_identification);

    // NAA IEEE Registered Extended: NAA 6, company ID, 36-bit vendor specific identifier and a 64-bit
    // extension, all derived from the LU identifier (the device's identity unless configured).
    uint64_t id = lu.identifier();
    uint64_t vsi = id >> 28;
    std::array<uint8_t, 16> naa{};
    naa[0] = uint8_t(0x60 | ((naa_company_id >> 20) & 0x0f));
    naa[1] = uint8_t(naa_company_id >> 12);
    naa[2] = uint8_t(naa_company_id >> 4);
    naa[3] = uint8_t((naa_company_id & 0x0f) << 4 | ((vsi >> 32) & 0x0f));
    store_be32(&naa[4], uint32_t(vsi));
    store_be64(&naa[8], id);
    add_designator(d, 0, code_set_binary, false, association_lu, designator_naa, naa);

    // T10 vendor ID: vendor identification followed by the unit serial number.
    std::vector<uint8_t> t10(8);
    put_ascii(t10.data(), lu.options().identity.vendor, 8);
    t10.insert(t10.end(), lu.serial().begin(), lu.serial().end());
    add_designator(d, 0, code_set_ascii, false, association_lu, designator_t10_vendor, t10);

    if (nexus) {
        std::array<uint8_t, 4> rtpi{};
        store_be16(&rtpi[2], nexus->relative_target_port);
        add_designator(d, protocol_iscsi, code_set_binary, true, association_target_port,
                       designator_relative_target_port, rtpi);
        std::array<uint8_t, 4> tpg{};
        store_be16(&tpg[2], nexus->target_port_group);
        add_designator(d, protocol_iscsi, code_set_binary, true, association_target_port,
                       designator_target_port_group, tpg);
        if (!nexus->target_port.empty()) {
            add_designator(d, protocol_iscsi, code_set_utf8, true, association_target_port,
                           designator_scsi_name, scsi_name(nexus->target_port));
        }
    }
    const std::string& target_name =
        nexus && !nexus->target_name.empty() ? nexus->target_name : lu.target().name();
    if (!target_name.empty()) {
        add_designator(d, protocol_iscsi, code_set_utf8, true, association_target_device,
                       designator_scsi_name, scsi_name(target_name));
    }
    finish_vpd(d);
    return d;
}

// In ascending order (SPC-4 7.8.16). The block device pages (B0h-B2h) are sbc_vpd.cpp's, the
// third-party copy page xcopy.cpp's.
constexpr uint8_t supported_vpd[] = {
    vpd::supported_pages,
    vpd::unit_serial_number,
    vpd::device_identification,
    vpd::third_party_copy,
    vpd::block_limits,
    vpd::block_device_characteristics,
    vpd::logical_block_provisioning,
};

} // namespace

void test_unit_ready(Execution& cmd) {
    cmd.complete_good();
}

void inquiry(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    bool evpd = cdb[1] & 0x01;
    uint8_t page = cdb[2];
    uint32_t allocation = allocation_length(cdb);
    const LogicalUnit* lu = cmd.lu();
    if (!evpd) {
        if (page != 0) {
            cmd.complete_check(Sense::invalid_field_in_cdb(2));
            return;
        }
        cmd.complete_data_in(standard_inquiry(lu), allocation);
        return;
    }
    if (!lu) {
        // No logical unit: only the qualifier says so; a page header with no content.
        std::vector<uint8_t> d = vpd_header(page);
        d[0] = no_lu_peripheral;
        cmd.complete_data_in(d, allocation);
        return;
    }
    std::vector<uint8_t> d;
    switch (page) {
    case vpd::supported_pages:
        d = vpd_header(page);
        d.insert(d.end(), std::begin(supported_vpd), std::end(supported_vpd));
        finish_vpd(d);
        break;
    case vpd::unit_serial_number:
        d = vpd_header(page);
        d.insert(d.end(), lu->serial().begin(), lu->serial().end());
        finish_vpd(d);
        break;
    case vpd::device_identification:
        d = device_identification(*lu, cmd.task().nexus);
        break;
    case vpd::third_party_copy:
        d = xcopy::third_party_copy_vpd(*lu);
        break;
    case vpd::block_limits:
        d = sbc::block_limits_vpd(*lu);
        break;
    case vpd::block_device_characteristics:
        d = sbc::block_device_characteristics_vpd(*lu);
        break;
    case vpd::logical_block_provisioning:
        d = sbc::logical_block_provisioning_vpd(*lu);
        break;
    default:
        cmd.complete_check(Sense::invalid_field_in_cdb(2));
        return;
    }
    cmd.complete_data_in(d, allocation);
}

// --- REQUEST SENSE ------------------------------------------------------------------------------

void request_sense(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    bool descriptor = cdb[1] & 0x01;
    uint32_t allocation = allocation_length(cdb);
    // With autosense (iSCSI always carries sense with CHECK CONDITION) nothing else is deferred: what
    // REQUEST SENSE can report is a pending unit attention, which it clears, or that the LUN has no
    // logical unit (SPC-4: with GOOD status and the sense as data).
    Sense sense;
    if (!cmd.lu()) {
        sense = Sense::lu_not_supported();
    } else if (auto ua = cmd.lu()->take_ua(cmd.nexus_id())) {
        sense = Sense::make(SenseKey::unit_attention, *ua);
    } else if (auto sanitizing = sbc::sanitize_status(*cmd.lu())) {
        // A sanitize runs (with its progress indication) or failed (sbc_sanitize.cpp).
        sense = *sanitizing;
    }
    std::array<uint8_t, max_built_sense> data{};
    size_t n = build_sense(sense, descriptor, data);
    cmd.complete_data_in(std::span<const uint8_t>(data.data(), n), allocation);
}

// --- PREVENT ALLOW MEDIUM REMOVAL ---------------------------------------------------------------

void prevent_allow_medium_removal(Execution& cmd) {
    uint8_t prevent = cmd.cdb()[4] & 0x03;
    // 10b and 11b are obsolete (medium changers).
    if (prevent > 1) {
        cmd.complete_check(Sense::invalid_field_in_cdb(4, 1));
        return;
    }
    // Prevention is per I_T nexus and ends with PREVENT=0 from it, its loss, or a reset (lu.hpp). It
    // matters to START STOP UNIT's LOEJ: the medium is not removable (RMB=0), so nothing else moves.
    cmd.lu()->set_prevent(cmd.nexus_id(), prevent == 1);
    cmd.complete_good();
}

// --- REPORT LUNS --------------------------------------------------------------------------------

void report_luns(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    uint8_t select = cdb[2];
    uint32_t allocation = allocation_length(cdb);
    // SPC-4 6.33: an allocation length under 16 bytes is an error, not a truncation.
    if (allocation < 16) {
        cmd.complete_check(Sense::invalid_field_in_cdb(6));
        return;
    }
    std::vector<uint64_t> luns;
    switch (select) {
    case 0x00: // all logical units but well-known ones
    case 0x02: // all logical units
        for (uint64_t lun : cmd.target().luns()) {
            if (!cmd.task().nexus || cmd.task().nexus->sees(lun)) { // LUN masking
                luns.push_back(lun);
            }
        }
        break;
    case 0x01: // well-known logical units only: there are none
        break;
    default:
        cmd.complete_check(Sense::invalid_field_in_cdb(2));
        return;
    }
    std::vector<uint8_t> d(8 + 8 * luns.size(), 0);
    store_be32(&d[0], uint32_t(8 * luns.size()));
    for (size_t i = 0; i < luns.size(); ++i) {
        store_be64(&d[8 + 8 * i], encode_lun(luns[i]));
    }
    // SPC-4: REPORT LUNS clears this nexus's REPORTED LUNS DATA HAS CHANGED on every LU.
    for (uint64_t lun : cmd.target().luns()) {
        if (std::shared_ptr<LogicalUnit> lu = cmd.target().find_lu(lun)) {
            lu->clear_ua(cmd.nexus_id(), asc::reported_luns_data_has_changed);
        }
    }
    cmd.complete_data_in(d, allocation);
}

} // namespace ispace::scsi::spc
