// CDBs both ways: each builder's bytes against the layout the standard gives (written out here byte by
// byte, not through the builders' own field table), builders read back by the engine's decoders, the
// group-code lengths, every block command form, and SAM LUN coding.
#include "common/bytes.hpp"
#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace ispace;
using namespace ispace::scsi;

namespace {

std::vector<uint8_t> bytes(const Cdb& c) {
    return {c.bytes.begin(), c.bytes.begin() + c.length};
}

} // namespace

TEST(Cdb, LengthByGroupCode) {
    EXPECT_EQ(cdb_length_for(0x00), 6u);
    EXPECT_EQ(cdb_length_for(0x1b), 6u);
    EXPECT_EQ(cdb_length_for(0x28), 10u);
    EXPECT_EQ(cdb_length_for(0x5a), 10u);
    EXPECT_EQ(cdb_length_for(0x7f), 0u); // variable length
    EXPECT_EQ(cdb_length_for(0x88), 16u);
    EXPECT_EQ(cdb_length_for(0x9e), 16u);
    EXPECT_EQ(cdb_length_for(0xa0), 12u);
    EXPECT_EQ(cdb_length_for(0xc0), 0u); // vendor specific
}

TEST(Cdb, DecodesEveryBlockForm) {
    const uint8_t c6[6] = {0x08, 0x1a, 0xbc, 0xde, 17, 0};
    auto r = decode_block_range(c6);
    EXPECT_EQ(r.lba, 0x1abcdeu);
    EXPECT_EQ(r.blocks, 17u);

    const uint8_t c10[10] = {0x28, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0xff, 0xff, 0};
    r = decode_block_range(c10);
    EXPECT_EQ(r.lba, 0xdeadbeefu);
    EXPECT_EQ(r.blocks, 0xffffu);

    const uint8_t c12[12] = {0xa8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0};
    r = decode_block_range(c12);
    EXPECT_EQ(r.lba, 0x01020304u);
    EXPECT_EQ(r.blocks, 0x05060708u);

    const uint8_t c16[16] = {0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0};
    r = decode_block_range(c16);
    EXPECT_EQ(r.lba, 0x0102030405060708ull);
    EXPECT_EQ(r.blocks, 0x090a0b0cu);

    EXPECT_EQ(transfer_length_offset(c6), 4);
    EXPECT_EQ(transfer_length_offset(c10), 7);
    EXPECT_EQ(transfer_length_offset(c12), 6);
    EXPECT_EQ(transfer_length_offset(c16), 10);
}

TEST(Cdb, SixByteLengthZeroMeans256) {
    uint8_t c[6] = {0x08, 0, 0, 5, 0, 0};
    EXPECT_EQ(decode_block_range(c).blocks, 256u);
    // The top three bits of byte 1 are not LBA.
    c[1] = 0xff;
    EXPECT_EQ(decode_block_range(c).lba, 0x1f0000u | 5u);
}

TEST(Cdb, ReadWriteChooseTheFormByRange) {
    EXPECT_EQ(bytes(cdb::read(0x01020304, 8)), (std::vector<uint8_t>{0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0}));
    EXPECT_EQ(bytes(cdb::write(100, 0xffff)),
              (std::vector<uint8_t>{0x2a, 0, 0, 0, 0, 100, 0, 0xff, 0xff, 0}));
    // The LBA past 2^32, the last block past 2^32, more blocks than 16 bits hold: the 16-byte form.
    EXPECT_EQ(bytes(cdb::write(uint64_t(1) << 33, 8)),
              (std::vector<uint8_t>{0x8a, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}));
    EXPECT_EQ(cdb::read(0xffffffffull - 8, 8).bytes[0], op::read_10);
    EXPECT_EQ(cdb::read(0xffffffffull - 8, 9).bytes[0], op::read_16);
    EXPECT_EQ(cdb::read(0, 0x10000).bytes[0], op::read_16);
    // An LBA near 2^64 must not wrap around into the 10-byte range.
    Cdb far = cdb::read(~0ull - 1, 4);
    EXPECT_EQ(far.bytes[0], op::read_16);
    EXPECT_EQ(far.length, 16);

    for (uint64_t lba : {uint64_t(0), uint64_t(77), uint64_t(0xfffffff0), uint64_t(1) << 40}) {
        for (uint32_t blocks : {1u, 0xffffu, 0x10000u}) {
            for (const Cdb& c : {cdb::read(lba, blocks), cdb::write(lba, blocks)}) {
                ASSERT_EQ(c.length, cdb_length_for(c.bytes[0]));
                BlockRange r = decode_block_range(c.bytes.data());
                EXPECT_EQ(r.lba, lba);
                EXPECT_EQ(r.blocks, blocks);
            }
        }
    }
}

TEST(Cdb, ModeSenseAsksForCurrentValuesWithoutBlockDescriptors) {
    EXPECT_EQ(bytes(cdb::mode_sense_6(0x3f, 255)), (std::vector<uint8_t>{0x1a, 0x08, 0x3f, 0, 255, 0}));
    EXPECT_EQ(bytes(cdb::mode_sense_10(0x08, 512)),
              (std::vector<uint8_t>{0x5a, 0x08, 0x08, 0, 0, 0, 0, 2, 0, 0}));
    EXPECT_EQ(allocation_length(cdb::mode_sense_10(0x3f, 0x1234).bytes.data()), 0x1234u);
}

TEST(Cdb, InquiryStandardAndVpd) {
    EXPECT_EQ(bytes(cdb::inquiry(255)), (std::vector<uint8_t>{0x12, 0, 0, 0, 255, 0}));
    EXPECT_EQ(bytes(cdb::inquiry_vpd(vpd::block_limits, 4096)),
              (std::vector<uint8_t>{0x12, 0x01, 0xb0, 0x10, 0x00, 0}));
    EXPECT_EQ(allocation_length(cdb::inquiry_vpd(vpd::unit_serial_number, 0x1234).bytes.data()), 0x1234u);
}

TEST(Cdb, CapacityLunsTestUnitReadySync) {
    EXPECT_EQ(bytes(cdb::test_unit_ready()), (std::vector<uint8_t>(6, 0)));
    EXPECT_EQ(bytes(cdb::read_capacity_10()), (std::vector<uint8_t>{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
    EXPECT_EQ(bytes(cdb::read_capacity_16(32)),
              (std::vector<uint8_t>{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}));
    EXPECT_EQ(bytes(cdb::report_luns(16384)),
              (std::vector<uint8_t>{0xa0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0}));
    EXPECT_EQ(bytes(cdb::synchronize_cache()), (std::vector<uint8_t>{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
    Cdb s16 = cdb::synchronize_cache(uint64_t(1) << 35, 16);
    EXPECT_EQ(s16.bytes[0], op::synchronize_cache_16);
    EXPECT_EQ(decode_block_range(s16.bytes.data()).lba, uint64_t(1) << 35);
    EXPECT_EQ(allocation_length(cdb::read_capacity_16(0x01020304).bytes.data()), 0x01020304u);
    EXPECT_EQ(allocation_length(cdb::report_luns(0x0a0b0c0d).bytes.data()), 0x0a0b0c0du);
}

TEST(Cdb, PersistentReservations) {
    EXPECT_EQ(bytes(cdb::persistent_reserve_in(pr::read_reservation, 8192)),
              (std::vector<uint8_t>{0x5e, 0x01, 0, 0, 0, 0, 0, 0x20, 0x00, 0}));
    // RESERVE, LU_SCOPE, Write Exclusive - Registrants Only, the 24-byte basic parameter list.
    EXPECT_EQ(bytes(cdb::persistent_reserve_out(pr::reserve, pr::write_exclusive_registrants_only, 24)),
              (std::vector<uint8_t>{0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0}));
    EXPECT_EQ(
        parameter_list_length(cdb::persistent_reserve_out(pr::register_key, 0, 0x00012345).bytes.data()),
        0x00012345u);
    EXPECT_EQ(allocation_length(cdb::persistent_reserve_in(pr::read_keys, 0xfff0).bytes.data()), 0xfff0u);
}

TEST(Cdb, WriteSameUnmapCompareAndWrite) {
    EXPECT_EQ(bytes(cdb::write_same_16(0x0102030405060708ull, 0x0a0b0c0d, true)),
              (std::vector<uint8_t>{0x93, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0}));
    EXPECT_EQ(cdb::write_same_16(5, 1).bytes[1], 0);
    EXPECT_EQ(bytes(cdb::unmap(24)), (std::vector<uint8_t>{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}));
    EXPECT_EQ(parameter_list_length(cdb::unmap(0x1234).bytes.data()), 0x1234u);
    EXPECT_EQ(
        bytes(cdb::compare_and_write(0x1122334455667788ull, 2)),
        (std::vector<uint8_t>{0x89, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 0, 0, 2, 0, 0}));
}

TEST(Cdb, LengthFieldsOfEveryCommandThatHasThem) {
    // Built by hand at the position SPC-5/SBC-4 give, read back by the shared decoders.
    auto alloc = [](std::initializer_list<uint8_t> cdb) { return allocation_length(std::data(cdb)); };
    EXPECT_EQ(alloc({op::request_sense, 0, 0, 0, 0xfc, 0}), 0xfcu);
    EXPECT_EQ(alloc({op::mode_sense_6, 0, 0x3f, 0, 0xc0, 0}), 0xc0u);
    EXPECT_EQ(alloc({op::mode_sense_10, 0, 0x3f, 0, 0, 0, 0, 0x12, 0x34, 0}), 0x1234u);
    EXPECT_EQ(alloc({op::read_defect_data_10, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0}), 0x0102u);
    EXPECT_EQ(alloc({op::read_defect_data_12, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0}), 0x01020304u);
    EXPECT_EQ(alloc({op::maintenance_in, sa::report_target_port_groups, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}),
              0x1000u);
    EXPECT_EQ(alloc({op::receive_copy_results, sa::copy_operating_parameters, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     0x2e, 0, 0}),
              0x2eu);
    EXPECT_EQ(alloc({op::read_10, 0, 0, 0, 0, 0, 0, 0, 8, 0}), 0u); // none

    auto param = [](std::initializer_list<uint8_t> cdb) { return parameter_list_length(std::data(cdb)); };
    EXPECT_EQ(param({op::mode_select_6, 0x10, 0, 0, 0x1c, 0}), 0x1cu);
    EXPECT_EQ(param({op::mode_select_10, 0x10, 0, 0, 0, 0, 0, 0x01, 0x00, 0}), 0x100u);
    EXPECT_EQ(param({op::sanitize, sa::sanitize_overwrite, 0, 0, 0, 0, 0, 0, 0x24, 0}), 0x24u);
    EXPECT_EQ(param({op::extended_copy, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00, 0, 0}), 0x200u);
    EXPECT_EQ(param({op::inquiry, 0, 0, 0, 0xff, 0}), 0u); // none
}

TEST(Lun, SamCoding) {
    // Peripheral addressing below 256, flat above.
    EXPECT_EQ(encode_lun(0), 0u);
    EXPECT_EQ(encode_lun(5), 0x0005000000000000ull);
    EXPECT_EQ(encode_lun(255), 0x00ff000000000000ull);
    EXPECT_EQ(encode_lun(256), 0x4100000000000000ull);
    EXPECT_EQ(encode_lun(300), 0x412c000000000000ull);
    EXPECT_EQ(encode_lun(16383), 0x7fff000000000000ull);
    for (uint64_t lun : {0ull, 1ull, 255ull, 256ull, 1000ull, 16383ull}) {
        EXPECT_EQ(decode_lun(encode_lun(lun)), lun);
    }
    // Flat addressing of a small LUN is the same LUN.
    EXPECT_EQ(decode_lun(0x4005000000000000ull), 5u);
    // Peripheral with a bus number, second-level addressing, extended/logical unit methods: no LU.
    EXPECT_FALSE(decode_lun(0x0105000000000000ull));
    EXPECT_FALSE(decode_lun(0x0005000100000000ull));
    EXPECT_FALSE(decode_lun(0x8005000000000000ull));
    EXPECT_FALSE(decode_lun(0xc005000000000000ull));
}

TEST(Sam, StatusNames) {
    EXPECT_STREQ(status_name(Status::good), "GOOD");
    EXPECT_STREQ(status_name(Status::check_condition), "CHECK CONDITION");
    EXPECT_STREQ(status_name(Status::reservation_conflict), "RESERVATION CONFLICT");
    EXPECT_STREQ(status_name(Status::task_aborted), "TASK ABORTED");
    EXPECT_EQ(status_name(Status(0x10)), nullptr); // INTERMEDIATE: obsolete
}
