// MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-4 6.10-6.13, SBC-3 6.4): the caching, control and
// informational exceptions pages.
//
// One table of pages serves both commands. Each page is built for a page control (current, changeable,
// default) from the logical unit's ModeValues, so the changeable mask MODE SENSE reports with PC=1 is
// exactly what MODE SELECT accepts: a field may differ from its current value only where the mask has
// a bit. Changeable fields: WCE (caching), D_SENSE and SWP (control; SWP not where the protection
// cannot be lifted: a read-only backstore, or an I_T nexus the ACL maps read-only). The values are one set
// per logical unit shared by every I_T nexus (TST=0), so a change establishes MODE PARAMETERS CHANGED for the
// other nexuses. Saved pages are not implemented: PC=3 is SAVING PARAMETERS NOT SUPPORTED, SP=1 is INVALID
// FIELD IN CDB.
#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/spc.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <bit>
#include <vector>

namespace ispace::scsi::spc {
namespace {

enum PageControl : uint8_t { pc_current = 0, pc_changeable = 1, pc_default = 2, pc_saved = 3 };

// Write protection that MODE SELECT cannot lift: a read-only backstore, or a read-only mapping of
// the LU for this I_T nexus (ACL). It shows as SWP (and WP in the header), and SWP is then not
// changeable for that nexus.
bool fixed_write_protect(const LogicalUnit& lu, const Nexus* nexus) {
    return lu.features().read_only || (nexus && nexus->read_only);
}

ModeValues values_for(const LogicalUnit& lu, uint8_t pc, const Nexus* nexus) {
    ModeValues v = pc == pc_default ? lu.default_mode_values() : lu.mode_values();
    v.swp = v.swp || fixed_write_protect(lu, nexus);
    return v;
}

// Page builders append one page (header included) for a page control.
void caching_page(std::vector<uint8_t>& d, const LogicalUnit& lu, uint8_t pc, const Nexus* nexus) {
    uint8_t p[20] = {mode_page_caching, 0x12};
    if (pc == pc_changeable) {
        p[2] = 0x04; // WCE
    } else {
        p[2] = values_for(lu, pc, nexus).wce ? 0x04 : 0x00; // WCE; RCD=0 (read cache enabled)
    }
    d.insert(d.end(), std::begin(p), std::end(p));
}

void control_page(std::vector<uint8_t>& d, const LogicalUnit& lu, uint8_t pc, const Nexus* nexus) {
    uint8_t p[12] = {mode_page_control, 0x0a};
    if (pc == pc_changeable) {
        p[2] = 0x04;                                         // D_SENSE
        p[4] = fixed_write_protect(lu, nexus) ? 0x00 : 0x08; // SWP, unless it cannot be lifted
    } else {
        ModeValues v = values_for(lu, pc, nexus);
        p[2] = v.d_sense ? 0x04 : 0x00; // TST=0 (one task set), D_SENSE
        p[3] = 0x10;                    // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; QERR=0
        p[4] = v.swp ? 0x08 : 0x00;     // SWP; UA_INTLCK_CTRL=0
        p[5] = 0x00;                    // TAS=0: aborted tasks get no status (see tmf.hpp)
    }
    d.insert(d.end(), std::begin(p), std::end(p));
}

void informational_exceptions_page(std::vector<uint8_t>& d, const LogicalUnit&, uint8_t pc, const Nexus*) {
    uint8_t p[12] = {mode_page_informational_exceptions, 0x0a};
    if (pc != pc_changeable) {
        p[2] = 0x08; // DEXCPT: no informational exception reporting
    }
    d.insert(d.end(), std::begin(p), std::end(p));
}

void apply_caching(const uint8_t* p, ModeValues& v) {
    v.wce = p[2] & 0x04;
}

void apply_control(const uint8_t* p, ModeValues& v) {
    v.d_sense = p[2] & 0x04;
    v.swp = p[4] & 0x08;
}

void apply_nothing(const uint8_t*, ModeValues&) {}

struct ModePage {
    uint8_t code;
    void (*build)(std::vector<uint8_t>&, const LogicalUnit&, uint8_t, const Nexus*);
    // Takes the changeable fields of a page MODE SELECT sent (already checked against the mask).
    void (*apply)(const uint8_t*, ModeValues&);
};

// In page code order: "all pages" returns them in this order.
constexpr ModePage mode_pages[] = {
    {mode_page_caching, caching_page, apply_caching},
    {mode_page_control, control_page, apply_control},
    {mode_page_informational_exceptions, informational_exceptions_page, apply_nothing},
};

const ModePage* find_page(uint8_t code) {
    for (const ModePage& p : mode_pages) {
        if (p.code == code) {
            return &p;
        }
    }
    return nullptr;
}

Sense list_length_error() {
    return Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error);
}

// --- MODE SELECT steps --------------------------------------------------------------------------

// Checks the block descriptor MODE SELECT sent: the block size and capacity cannot be changed, so it
// must repeat them (or leave the number of blocks zero, "no change").
std::optional<Sense> check_block_descriptor(const LogicalUnit& lu, const uint8_t* bd, size_t length,
                                            size_t offset) {
    uint64_t blocks = 0;
    uint32_t block_length = 0;
    uint64_t capacity = lu.block_count();
    if (length == 16) {
        blocks = load_be64(bd);
        block_length = load_be32(bd + 12);
    } else {
        blocks = load_be32(bd);
        block_length = load_be24(bd + 5);
        capacity = std::min<uint64_t>(capacity, 0xffffffffu);
    }
    if (blocks != 0 && blocks != capacity) {
        return Sense::invalid_field_in_parameter_list(uint16_t(offset));
    }
    if (block_length != lu.block_size()) {
        return Sense::invalid_field_in_parameter_list(uint16_t(offset + (length == 16 ? 12 : 5)));
    }
    return std::nullopt;
}

void mode_select_data_ready(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    bool ten = cdb[0] == op::mode_select_10;
    bool pf = cdb[1] & 0x10;
    uint32_t length = task.transfer_length;
    if (cmd.data_out_available(length) < length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    const uint8_t* d = task.buffer.data();
    size_t header = ten ? 8 : 4;
    if (length < header) {
        cmd.complete_check(list_length_error());
        return;
    }
    // The MODE DATA LENGTH, MEDIUM TYPE and DEVICE-SPECIFIC PARAMETER fields are reserved or ignored in
    // MODE SELECT (WP cannot be set this way; SWP in the control page does that).
    size_t bd_length = ten ? load_be16(d + 6) : d[3];
    bool long_lba = ten && (d[4] & 0x01);
    size_t expected_bd = long_lba ? 16 : 8;
    if (bd_length != 0 && bd_length != expected_bd) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(uint16_t(ten ? 6 : 3)));
        return;
    }
    if (header + bd_length > length) {
        cmd.complete_check(list_length_error());
        return;
    }
    if (bd_length) {
        if (auto bad = check_block_descriptor(lu, d + header, bd_length, header)) {
            cmd.complete_check(*bad);
            return;
        }
    }
    size_t at = header + bd_length;
    if (at < length && !pf) {
        // PF=0 would make the pages vendor specific; ours are the standard ones.
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 4));
        return;
    }
    ModeValues before = lu.mode_values();
    ModeValues values = before;
    while (at < length) {
        if (length - at < 2) {
            cmd.complete_check(list_length_error());
            return;
        }
        const uint8_t* page = d + at;
        if (page[0] & 0x40) {
            // SPF: a subpage; none of ours has subpages.
            cmd.complete_check(Sense::invalid_field_in_parameter_list(uint16_t(at), 6));
            return;
        }
        const ModePage* known = find_page(page[0] & 0x3f);
        if (!known) {
            cmd.complete_check(Sense::invalid_field_in_parameter_list(uint16_t(at), 5));
            return;
        }
        std::vector<uint8_t> current;
        std::vector<uint8_t> changeable;
        known->build(current, lu, pc_current, task.nexus);
        known->build(changeable, lu, pc_changeable, task.nexus);
        if (page[1] != current[1]) {
            cmd.complete_check(Sense::invalid_field_in_parameter_list(uint16_t(at + 1)));
            return;
        }
        if (length - at < current.size()) {
            cmd.complete_check(list_length_error());
            return;
        }
        // The PS bit (byte 0 bit 7) is reserved in MODE SELECT; initiators that echo MODE SENSE data
        // send it set, so it is not held against them.
        for (size_t i = 2; i < current.size(); ++i) {
            uint8_t bad = uint8_t((page[i] ^ current[i]) & ~changeable[i]);
            if (bad) {
                cmd.complete_check(
                    Sense::invalid_field_in_parameter_list(uint16_t(at + i), 7 - std::countl_zero(bad)));
                return;
            }
        }
        known->apply(page, values);
        at += current.size();
    }
    // Fixed write protection shows as SWP without being a mode value.
    if (fixed_write_protect(lu, task.nexus)) {
        values.swp = before.swp;
    }
    bool changed = values.wce != before.wce || values.d_sense != before.d_sense || values.swp != before.swp;
    if (changed) {
        lu.set_mode_values(values);
        // The parameters are shared (TST=0), so every other I_T nexus learns they changed.
        lu.establish_ua_others(cmd.nexus_id(), asc::mode_parameters_changed);
    }
    cmd.complete_good();
}

} // namespace

void mode_sense(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    const LogicalUnit& lu = *cmd.lu();
    bool ten = cdb[0] == op::mode_sense_10;
    bool dbd = cdb[1] & 0x08;
    bool llbaa = ten && (cdb[1] & 0x10);
    uint8_t pc = cdb[2] >> 6;
    uint8_t page = cdb[2] & 0x3f;
    uint8_t subpage = cdb[3];
    uint32_t allocation = allocation_length(cdb);

    if (pc == pc_saved) {
        cmd.complete_check(Sense::saving_parameters_not_supported());
        return;
    }
    // Subpage 00h only; FFh asks for "and all subpages", of which there are none.
    if (subpage != 0x00 && subpage != 0xff) {
        cmd.complete_check(Sense::invalid_field_in_cdb(3));
        return;
    }
    std::vector<uint8_t> pages;
    for (const ModePage& p : mode_pages) {
        if (page == mode_page_all || page == p.code) {
            p.build(pages, lu, pc, cmd.task().nexus);
        }
    }
    if (pages.empty()) {
        cmd.complete_check(Sense::invalid_field_in_cdb(2, 5));
        return;
    }

    std::vector<uint8_t> bd;
    if (!dbd) {
        uint64_t blocks = lu.block_count();
        if (llbaa) {
            bd.resize(16, 0);
            store_be64(&bd[0], blocks);
            store_be32(&bd[12], lu.block_size());
        } else {
            bd.resize(8, 0);
            store_be32(&bd[0], blocks > 0xffffffffu ? 0xffffffffu : uint32_t(blocks));
            store_be24(&bd[5], lu.block_size());
        }
    }
    // DEVICE-SPECIFIC PARAMETER (SBC-3 6.4.1): WP, and DPOFUA since DPO and FUA are accepted.
    bool wp = lu.write_protected() || fixed_write_protect(lu, cmd.task().nexus);
    uint8_t device_specific = uint8_t((wp ? 0x80 : 0x00) | 0x10);
    std::vector<uint8_t> d;
    if (ten) {
        d.resize(8, 0);
        d[3] = device_specific;
        d[4] = llbaa ? 0x01 : 0x00; // LONGLBA
        store_be16(&d[6], uint16_t(bd.size()));
    } else {
        d.resize(4, 0);
        d[2] = device_specific;
        d[3] = uint8_t(bd.size());
    }
    d.insert(d.end(), bd.begin(), bd.end());
    d.insert(d.end(), pages.begin(), pages.end());
    if (ten) {
        store_be16(&d[0], uint16_t(d.size() - 2));
    } else {
        d[0] = uint8_t(d.size() - 1);
    }
    cmd.complete_data_in(d, allocation);
}

void mode_select(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    bool sp = cdb[1] & 0x01;
    uint32_t length = parameter_list_length(cdb);
    cmd.task().transfer_length = length;
    if (sp) {
        // No saved pages: SPC-4 6.10 makes SP=1 without them INVALID FIELD IN CDB.
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 0));
        return;
    }
    if (length == 0) {
        cmd.complete_good();
        return;
    }
    cmd.fetch_data_out(length, mode_select_data_ready);
}

} // namespace ispace::scsi::spc
