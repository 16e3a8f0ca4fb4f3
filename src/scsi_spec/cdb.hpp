// CDBs both ways: builders for the commands an initiator sends, and the decoders a device server uses
// for the fields every command of a kind shares (LBA, transfer length, allocation length, parameter
// list length). Where a field sits is said once, in cdb.cpp, for the builder and the decoder alike.
//
// The builders fill every field they take and leave the rest zero (no DPO/FUA, GROUP NUMBER 0, CONTROL
// 0). Each parameter has the width of its field, so nothing is truncated; whether a value suits the
// device (a length beyond its limits, an LBA beyond its capacity) is the device server's to say.
#pragma once

#include <array>
#include <cstdint>
#include <span>

namespace ispace::scsi {

// A CDB of 6, 10, 12 or 16 bytes.
struct Cdb {
    std::array<uint8_t, 16> bytes{};
    uint8_t length = 0;
    std::span<const uint8_t> span() const { return {bytes.data(), length}; }
};

// --- builders (SPC-5, SBC-4) ---------------------------------------------------------------------
// In a namespace of their own, as cdb::read(lba, blocks), so that they read as what they build and
// do not take the plain names of the commands (op::read_10 is the opcode, cdb::read the whole CDB).
namespace cdb {

Cdb test_unit_ready();
// Standard INQUIRY data.
Cdb inquiry(uint16_t allocation_length);
// A vital product data page (EVPD=1, PAGE CODE: vpd:: in opcodes.hpp).
Cdb inquiry_vpd(uint8_t page, uint16_t allocation_length);
Cdb read_capacity_10();
// SERVICE ACTION IN(16) / READ CAPACITY(16).
Cdb read_capacity_16(uint32_t allocation_length);
// MODE SENSE(6)/(10) of `page` (0x3f: every page) with DBD set (no block descriptors): the mode
// parameter header's DEVICE-SPECIFIC PARAMETER carries WP, whatever pages follow (SBC-4 §6.5.1).
Cdb mode_sense_6(uint8_t page, uint8_t allocation_length);
Cdb mode_sense_10(uint8_t page, uint16_t allocation_length);
// SELECT REPORT 00h: every logical unit but the well-known ones.
Cdb report_luns(uint32_t allocation_length, uint8_t select_report = 0);
// READ(10)/WRITE(10) when lba + blocks fits 32 bits and blocks fits 16, READ(16)/WRITE(16) otherwise:
// the 10-byte form is what every device supports.
Cdb read(uint64_t lba, uint32_t blocks);
Cdb write(uint64_t lba, uint32_t blocks);
// The whole medium when `blocks` is 0. SYNCHRONIZE CACHE(10) unless the range needs the 16-byte form.
Cdb synchronize_cache(uint64_t lba = 0, uint32_t blocks = 0);
// PERSISTENT RESERVE IN: a pr:: IN service action.
Cdb persistent_reserve_in(uint8_t service_action, uint16_t allocation_length);
// PERSISTENT RESERVE OUT: a pr:: OUT service action, a reservation TYPE (LU_SCOPE) and the length of the
// parameter list that follows (24 bytes for the basic list).
Cdb persistent_reserve_out(uint8_t service_action, uint8_t type, uint32_t parameter_list_length);
// WRITE SAME(16) of one block of data-out; `unmap` sets UNMAP (deallocate where the device can).
Cdb write_same_16(uint64_t lba, uint32_t blocks, bool unmap = false);
// UNMAP with a parameter list of `parameter_list_length` bytes (8 + 16 per block descriptor).
Cdb unmap(uint16_t parameter_list_length);
// COMPARE AND WRITE of `blocks` blocks: the data-out is the verify data, then the write data.
Cdb compare_and_write(uint64_t lba, uint8_t blocks);

} // namespace cdb

// --- decoders ------------------------------------------------------------------------------------
// `cdb` points at a whole CDB of the length its opcode implies (the caller checked the length).

// LBA and transfer length of a block command, read from the position its CDB form puts them
// (READ/WRITE/VERIFY/SYNCHRONIZE CACHE/WRITE SAME ... share the layouts):
//   6-byte:  21-bit LBA in bytes 1-3, length in byte 4 (READ(6)/WRITE(6): 0 means 256 blocks)
//   10-byte: LBA 2-5, length 7-8      12-byte: LBA 2-5, length 6-9      16-byte: LBA 2-9, length 10-13
struct BlockRange {
    uint64_t lba = 0;
    uint32_t blocks = 0;
};
BlockRange decode_block_range(const uint8_t* cdb);
// Byte offset of the transfer length field of the CDB form, for field pointers.
uint16_t transfer_length_offset(const uint8_t* cdb);

// ALLOCATION LENGTH of the commands that return data of a length the initiator bounds: INQUIRY, REQUEST
// SENSE, MODE SENSE(6)/(10), PERSISTENT RESERVE IN, READ DEFECT DATA(10)/(12), REPORT LUNS, MAINTENANCE
// IN, SERVICE ACTION IN(16), RECEIVE COPY RESULTS. 0 for any other opcode.
uint32_t allocation_length(const uint8_t* cdb);
// PARAMETER LIST LENGTH of the commands that take a parameter list: MODE SELECT(6)/(10), PERSISTENT
// RESERVE OUT, UNMAP, SANITIZE, EXTENDED COPY. 0 for any other opcode.
uint32_t parameter_list_length(const uint8_t* cdb);

} // namespace ispace::scsi
