#include "scsi_spec/cdb.hpp"

#include "common/bytes.hpp"
#include "scsi_spec/opcodes.hpp"

namespace ispace::scsi {
namespace {

// Where a length field of a command sits: byte offset and width in bytes (1, 2 or 4); width 0: none.
struct Field {
    uint8_t offset = 0;
    uint8_t width = 0;
};

Field allocation_length_field(uint8_t opcode) {
    switch (opcode) {
    case op::request_sense:
    case op::mode_sense_6:
        return {4, 1};
    case op::inquiry:
        return {3, 2};
    case op::mode_sense_10:
    case op::persistent_reserve_in:
    case op::read_defect_data_10:
        return {7, 2};
    case op::report_luns:
    case op::maintenance_in:
    case op::read_defect_data_12:
        return {6, 4};
    case op::service_action_in_16:
    case op::receive_copy_results:
        return {10, 4};
    default:
        return {};
    }
}

Field parameter_list_length_field(uint8_t opcode) {
    switch (opcode) {
    case op::mode_select_6:
        return {4, 1};
    case op::mode_select_10:
    case op::unmap:
    case op::sanitize:
        return {7, 2};
    case op::persistent_reserve_out:
        return {5, 4};
    case op::extended_copy:
        return {10, 4};
    default:
        return {};
    }
}

uint32_t load_field(const uint8_t* cdb, Field f) {
    switch (f.width) {
    case 1:
        return cdb[f.offset];
    case 2:
        return load_be16(cdb + f.offset);
    case 4:
        return load_be32(cdb + f.offset);
    default:
        return 0;
    }
}

void store_field(Cdb& c, Field f, uint32_t value) {
    switch (f.width) {
    case 1:
        c.bytes[f.offset] = uint8_t(value);
        break;
    case 2:
        store_be16(&c.bytes[f.offset], uint16_t(value));
        break;
    case 4:
        store_be32(&c.bytes[f.offset], value);
        break;
    default:
        break;
    }
}

Cdb start(uint8_t opcode, uint8_t service_action = 0) {
    Cdb c;
    c.bytes[0] = opcode;
    c.bytes[1] = service_action;
    c.length = uint8_t(cdb_length_for(opcode));
    return c;
}

Cdb with_allocation_length(uint8_t opcode, uint32_t length, uint8_t service_action = 0) {
    Cdb c = start(opcode, service_action);
    store_field(c, allocation_length_field(opcode), length);
    return c;
}

// The 10- and 16-byte block command layouts of decode_block_range().
Cdb block_command(uint8_t op10, uint8_t op16, uint64_t lba, uint32_t blocks) {
    // lba + blocks written so that an LBA near 2^64 cannot wrap into the 10-byte range.
    bool fits_10 = blocks <= 0xffff && lba <= 0xffffffffull - blocks;
    Cdb c = start(fits_10 ? op10 : op16);
    if (fits_10) {
        store_be32(&c.bytes[2], uint32_t(lba));
        store_be16(&c.bytes[7], uint16_t(blocks));
    } else {
        store_be64(&c.bytes[2], lba);
        store_be32(&c.bytes[10], blocks);
    }
    return c;
}

} // namespace

// --- builders ------------------------------------------------------------------------------------

namespace cdb {

Cdb test_unit_ready() {
    return start(op::test_unit_ready);
}

Cdb inquiry(uint16_t allocation_length) {
    return with_allocation_length(op::inquiry, allocation_length);
}

Cdb inquiry_vpd(uint8_t page, uint16_t allocation_length) {
    Cdb c = with_allocation_length(op::inquiry, allocation_length);
    c.bytes[1] = 0x01; // EVPD
    c.bytes[2] = page;
    return c;
}

Cdb read_capacity_10() {
    return start(op::read_capacity_10);
}

Cdb read_capacity_16(uint32_t allocation_length) {
    return with_allocation_length(op::service_action_in_16, allocation_length, sa::read_capacity_16);
}

Cdb mode_sense_6(uint8_t page, uint8_t allocation_length) {
    Cdb c = with_allocation_length(op::mode_sense_6, allocation_length);
    c.bytes[1] = 0x08;        // DBD
    c.bytes[2] = page & 0x3f; // PC 00b: current values
    return c;
}

Cdb mode_sense_10(uint8_t page, uint16_t allocation_length) {
    Cdb c = with_allocation_length(op::mode_sense_10, allocation_length);
    c.bytes[1] = 0x08;
    c.bytes[2] = page & 0x3f;
    return c;
}

Cdb report_luns(uint32_t allocation_length, uint8_t select_report) {
    Cdb c = with_allocation_length(op::report_luns, allocation_length);
    c.bytes[2] = select_report;
    return c;
}

Cdb read(uint64_t lba, uint32_t blocks) {
    return block_command(op::read_10, op::read_16, lba, blocks);
}

Cdb write(uint64_t lba, uint32_t blocks) {
    return block_command(op::write_10, op::write_16, lba, blocks);
}

Cdb synchronize_cache(uint64_t lba, uint32_t blocks) {
    return block_command(op::synchronize_cache_10, op::synchronize_cache_16, lba, blocks);
}

Cdb persistent_reserve_in(uint8_t service_action, uint16_t allocation_length) {
    return with_allocation_length(op::persistent_reserve_in, allocation_length, service_action & 0x1f);
}

Cdb persistent_reserve_out(uint8_t service_action, uint8_t type, uint32_t parameter_list_length) {
    Cdb c = start(op::persistent_reserve_out, service_action & 0x1f);
    c.bytes[2] = uint8_t(pr::lu_scope << 4 | (type & 0x0f));
    store_field(c, parameter_list_length_field(op::persistent_reserve_out), parameter_list_length);
    return c;
}

Cdb write_same_16(uint64_t lba, uint32_t blocks, bool unmap) {
    Cdb c = start(op::write_same_16);
    if (unmap) {
        c.bytes[1] = 0x08;
    }
    store_be64(&c.bytes[2], lba);
    store_be32(&c.bytes[10], blocks);
    return c;
}

Cdb unmap(uint16_t parameter_list_length) {
    Cdb c = start(op::unmap);
    store_field(c, parameter_list_length_field(op::unmap), parameter_list_length);
    return c;
}

Cdb compare_and_write(uint64_t lba, uint8_t blocks) {
    Cdb c = start(op::compare_and_write);
    store_be64(&c.bytes[2], lba);
    c.bytes[13] = blocks; // NUMBER OF LOGICAL BLOCKS
    return c;
}

} // namespace cdb

// --- decoders ------------------------------------------------------------------------------------

BlockRange decode_block_range(const uint8_t* cdb) {
    BlockRange r;
    switch (cdb_length_for(cdb[0])) {
    case 6:
        r.lba = load_be24(cdb + 1) & 0x1fffff;
        r.blocks = cdb[4] ? cdb[4] : 256;
        break;
    case 10:
        r.lba = load_be32(cdb + 2);
        r.blocks = load_be16(cdb + 7);
        break;
    case 12:
        r.lba = load_be32(cdb + 2);
        r.blocks = load_be32(cdb + 6);
        break;
    case 16:
        r.lba = load_be64(cdb + 2);
        r.blocks = load_be32(cdb + 10);
        break;
    default:
        break;
    }
    return r;
}

uint16_t transfer_length_offset(const uint8_t* cdb) {
    switch (cdb_length_for(cdb[0])) {
    case 6:
        return 4;
    case 10:
        return 7;
    case 12:
        return 6;
    default:
        return 10;
    }
}

uint32_t allocation_length(const uint8_t* cdb) {
    return load_field(cdb, allocation_length_field(cdb[0]));
}

uint32_t parameter_list_length(const uint8_t* cdb) {
    return load_field(cdb, parameter_list_length_field(cdb[0]));
}

} // namespace ispace::scsi
