// Range checks at and past the end, transfer length 0, and the operation table. The CDB field decoders
// and LUN coding are scsi_spec's (tests/unit/scsi_spec/cdb_test.cpp).
#include "harness.hpp"

#include "scsi/cdb.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

TEST(Cdb, LbaRangeAtAndPastTheEnd) {
    const uint64_t cap = 1000;
    EXPECT_FALSE(check_lba_range(0, 1000, cap));
    EXPECT_FALSE(check_lba_range(999, 1, cap)); // the last block
    EXPECT_TRUE(check_lba_range(999, 2, cap));  // one past
    EXPECT_TRUE(check_lba_range(1000, 1, cap));
    EXPECT_FALSE(check_lba_range(0, 0, cap)); // no transfer, no error
    EXPECT_FALSE(check_lba_range(999, 0, cap));
    EXPECT_TRUE(check_lba_range(1000, 0, cap)); // the LBA itself is past the end
    EXPECT_TRUE(check_lba_range(1001, 0, cap));
    EXPECT_TRUE(check_lba_range(~0ull, 2, cap)); // no wrap-around
    EXPECT_TRUE(check_lba_range(2, ~0ull, cap));
    auto s = check_lba_range(5000, 1, cap);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->key, SenseKey::illegal_request);
    EXPECT_EQ(s->code, asc::lba_out_of_range);
}

TEST(Cdb, OperationTableIsConsistent) {
    std::set<std::pair<uint8_t, uint8_t>> seen;
    uint8_t previous = 0;
    for (const Operation& op : operations()) {
        EXPECT_GE(op.opcode, previous) << op.name << ": the table is in opcode order";
        previous = op.opcode;
        EXPECT_TRUE(seen.insert({op.opcode, op.service_action}).second) << op.name << " twice";
        EXPECT_EQ(op.cdb_length, cdb_length_for(op.opcode)) << op.name;
        EXPECT_EQ(op.usage[0], op.opcode) << op.name << ": usage byte 0 is the opcode";
        EXPECT_EQ(op.usage[op.cdb_length - 1], 0x00) << op.name << ": CONTROL byte (no NACA)";
        EXPECT_NE(op.execute, nullptr) << op.name;
    }
}

TEST(Cdb, FindOperation) {
    Sense error;
    std::vector<uint8_t> cdb = rw10(op::read_10, 0, 1);
    const Operation* o = find_operation(cdb, error);
    ASSERT_TRUE(o);
    EXPECT_STREQ(o->name, "READ(10)");

    cdb = {0x9e, 0x10};
    o = find_operation(cdb, error);
    ASSERT_TRUE(o);
    EXPECT_STREQ(o->name, "READ CAPACITY(16)");

    // A known opcode with an unknown service action: INVALID FIELD IN CDB at byte 1.
    cdb = {0x9e, 0x1f};
    EXPECT_FALSE(find_operation(cdb, error));
    EXPECT_EQ(error.code, asc::invalid_field_in_cdb);
    EXPECT_EQ(error.field_pointer, 1);

    cdb = {0xee};
    EXPECT_FALSE(find_operation(cdb, error));
    EXPECT_EQ(error.code, asc::invalid_command_operation_code);

    EXPECT_TRUE(implements(op::read_16));
    EXPECT_TRUE(implements(op::service_action_in_16, sa::read_capacity_16));
    EXPECT_TRUE(implements(op::service_action_in_16, sa::get_lba_status));
    EXPECT_TRUE(implements(op::unmap));
    EXPECT_TRUE(implements(op::sanitize, sa::sanitize_block_erase));
    EXPECT_TRUE(implements(op::sanitize, sa::sanitize_crypto_erase));
    EXPECT_FALSE(implements(op::sanitize, 0x04));
}

// What a logical unit supports depends on its device: only one that deallocates gets UNMAP, SANITIZE
// BLOCK ERASE and CRYPTOGRAPHIC ERASE, and WRITE SAME's UNMAP bit (spc_rsoc_test.cpp checks that RSOC
// and the VPD pages agree).
TEST(Cdb, SupportDependsOnTheLogicalUnit) {
    LuConfig thin_config;
    thin_config.features.thin = true;
    thin_config.features.unmap = true;
    Harness thick; // features as a fully provisioned file: nothing deallocates
    Harness thin(thin_config);
    Sense error;
    std::vector<uint8_t> unmap = {op::unmap, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    EXPECT_TRUE(find_operation(unmap, error, &thin.lu()));
    EXPECT_FALSE(find_operation(unmap, error, &thick.lu()));
    EXPECT_EQ(error.code, asc::invalid_command_operation_code);
    EXPECT_TRUE(find_operation(unmap, error)) << "the table holds it";

    std::vector<uint8_t> block_erase = {op::sanitize, sa::sanitize_block_erase, 0, 0, 0, 0, 0, 0, 0, 0};
    EXPECT_TRUE(find_operation(block_erase, error, &thin.lu()));
    EXPECT_FALSE(find_operation(block_erase, error, &thick.lu()));
    EXPECT_EQ(error.code, asc::invalid_field_in_cdb) << "a service action of a supported opcode";
    EXPECT_EQ(error.field_pointer, 1);
    std::vector<uint8_t> crypto_erase = {op::sanitize, sa::sanitize_crypto_erase, 0, 0, 0, 0, 0, 0, 0, 0};
    EXPECT_TRUE(find_operation(crypto_erase, error, &thin.lu()));
    EXPECT_FALSE(find_operation(crypto_erase, error, &thick.lu()));
    EXPECT_TRUE(supports(thick.lu(), op::sanitize, sa::sanitize_overwrite));
    EXPECT_FALSE(supports(thick.lu(), op::sanitize, sa::sanitize_block_erase));
    EXPECT_TRUE(supports(thin.lu(), op::sanitize, sa::sanitize_block_erase));

    // WRITE SAME is supported everywhere; its UNMAP bit is evaluated only where it can be honoured.
    std::vector<uint8_t> ws = rw16(op::write_same_16, 0, 1, 0x08);
    const Operation* o = find_operation(ws, error, &thick.lu());
    ASSERT_TRUE(o);
    EXPECT_EQ(usage_for(*o, &thick.lu())[1], 0x11);
    EXPECT_EQ(usage_for(*o, &thin.lu())[1], 0x19);
    EXPECT_EQ(usage_for(*o, nullptr)[1], 0x19);
    auto bad = check_cdb_usage(*o, ws.data(), &thick.lu());
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->field_pointer, 1);
    EXPECT_EQ(bad->bit_pointer, 3);
    EXPECT_FALSE(check_cdb_usage(*o, ws.data(), &thin.lu()));
}

TEST(Cdb, UsageMaskRejectsReservedBitsWithPointer) {
    Sense error;
    std::vector<uint8_t> cdb = rw10(op::read_10, 0, 1);
    const Operation* o = find_operation(cdb, error);
    ASSERT_TRUE(o);
    EXPECT_FALSE(check_cdb_usage(*o, cdb.data()));
    cdb[1] = 0x18; // DPO, FUA: fine
    EXPECT_FALSE(check_cdb_usage(*o, cdb.data()));
    cdb[1] = 0x20; // RDPROTECT=1
    auto s = check_cdb_usage(*o, cdb.data());
    ASSERT_TRUE(s);
    EXPECT_EQ(s->field_pointer, 1);
    EXPECT_EQ(s->bit_pointer, 5);
    cdb[1] = 0;
    cdb[9] = 0x04; // NACA
    s = check_cdb_usage(*o, cdb.data());
    ASSERT_TRUE(s);
    EXPECT_EQ(s->field_pointer, 9);
    EXPECT_EQ(s->bit_pointer, 2);
}

// End to end: the edge cases the acceptance criteria name, through the engine.
TEST(CdbEngine, TransferLengthZeroIsNoDataAndNoError) {
    Harness h;
    for (auto cdb : {rw10(op::read_10, 0, 0), rw12(op::read_12, 100, 0), rw16(op::read_16, 2047, 0),
                     rw10(op::write_10, 5, 0), rw16(op::write_16, 0, 0)}) {
        auto t = h.exec(cdb, 512);
        EXPECT_EQ(t->status, Status::good) << int(cdb[0]);
        EXPECT_EQ(t->transfer_length, 0u);
    }
    EXPECT_TRUE(h.device().log.empty()) << "no I/O for a zero-length transfer";
    // ... but the LBA must still be on the medium.
    auto t = h.exec(rw10(op::read_10, 2049, 0), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw10(op::read_10, 0x80000000u, 0), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
}

TEST(CdbEngine, LbaAtAndPastTheEnd) {
    Harness h; // 2048 blocks
    auto t = h.exec(rw10(op::read_10, 2047, 1), 512);
    EXPECT_EQ(t->status, Status::good);
    t = h.exec(rw10(op::read_10, 2047, 2), 1024);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw16(op::read_16, 2048, 1), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw12(op::read_12, 0xffffffffu, 1), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw6(op::read_6, 2047, 1), 512);
    EXPECT_EQ(t->status, Status::good);
    t = h.exec(rw6(op::read_6, 2047, 2), 1024);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
}

TEST(CdbEngine, SixByteZeroReads256Blocks) {
    Harness h;
    auto t = h.exec(rw6(op::read_6, 0, 0), 256 * 512);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 256u * 512);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].length, 256u * 512);
    // At the end of the medium 256 blocks do not fit.
    t = h.exec(rw6(op::read_6, 2048 - 255, 0), 256 * 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(rw6(op::read_6, 2048 - 256, 0), 256 * 512);
    EXPECT_EQ(t->status, Status::good);
}

TEST(CdbEngine, NacaBitIsInvalidFieldInCdb) {
    Harness h;
    auto t = h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0x04}));
    EXPECT_TRUE(invalid_field(*t, 5, 2));
    auto c = rw10(op::read_10, 0, 1);
    c[9] = 0x04;
    t = h.exec(c, 512);
    EXPECT_TRUE(invalid_field(*t, 9, 2));
    // LINK (obsolete) too.
    t = h.exec(cdb_bytes({0x12, 0, 0, 0, 96, 0x01}), 96);
    EXPECT_TRUE(invalid_field(*t, 5, 0));
}

TEST(CdbEngine, UnknownOpcode) {
    Harness h;
    auto t = h.exec(cdb_bytes({0xee, 0, 0, 0, 0, 0}));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_command_operation_code));
    // SERVICE ACTION IN(16) with a service action that is not implemented.
    t = h.exec(cdb_bytes({0x9e, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}), 32);
    EXPECT_TRUE(invalid_field(*t, 1, 4));
}
