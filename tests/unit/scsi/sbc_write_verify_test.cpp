// WRITE AND VERIFY(10/12/16), PRE-FETCH(10/16) and READ DEFECT DATA(10/12).
#include "harness.hpp"

#include "scsi/sbc.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

constexpr uint8_t bytchk = 0x02;

std::vector<uint8_t> prefetch10(uint32_t lba, uint16_t blocks, bool immed = false) {
    return rw10(op::pre_fetch_10, lba, blocks, immed ? 0x02 : 0);
}

std::vector<uint8_t> prefetch16(uint64_t lba, uint32_t blocks, bool immed = false) {
    return rw16(op::pre_fetch_16, lba, blocks, immed ? 0x02 : 0);
}

} // namespace

TEST(WriteAndVerify, WritesThroughThenReadsBack) {
    Harness h;
    auto data = pattern(4 * 512, 5);
    auto t = h.make_write(rw10(op::write_and_verify_10, 8, 4), data);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), h.device().bytes(8 * 512)));
    ASSERT_EQ(h.device().log.size(), 2u);
    EXPECT_EQ(h.device().log[0].op, IoOp::write);
    EXPECT_TRUE(h.device().log[0].fua) << "verifying a volatile cache proves nothing";
    EXPECT_EQ(h.device().log[1].op, IoOp::read);
    EXPECT_EQ(h.device().log[1].offset, 8u * 512);
}

TEST(WriteAndVerify, EveryFormAndBytchk) {
    Harness h;
    auto data = pattern(2 * 512, 1);
    for (auto cdb :
         {rw10(op::write_and_verify_10, 0, 2, bytchk), rw12(op::write_and_verify_12, 0, 2, bytchk),
          rw16(op::write_and_verify_16, 0, 2, bytchk), rw16(op::write_and_verify_16, 0, 2, 0x10)}) {
        auto t = h.make_write(cdb, data);
        h.exec(*t);
        EXPECT_EQ(t->status, Status::good) << int(cdb[0]);
    }
    // BYTCHK 10b is reserved and 11b means nothing for a write.
    auto t = h.make_write(rw10(op::write_and_verify_10, 0, 2, 0x04), data);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 2));
    t = h.make_write(rw10(op::write_and_verify_10, 0, 2, 0x06), data);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 2));
    // WRPROTECT: no protection information.
    t = h.make_write(rw10(op::write_and_verify_10, 0, 2, 0x20), data);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 5));
}

TEST(WriteAndVerify, EdgeCases) {
    Harness h;
    EXPECT_EQ(h.exec(rw10(op::write_and_verify_10, 0, 0))->status, Status::good);
    auto t = h.make_write(rw10(op::write_and_verify_10, 2047, 2), pattern(1024, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    // Residuals like WRITE: a short EDTL writes and verifies the whole blocks that arrived.
    t = h.make_write(rw10(op::write_and_verify_10, 0, 2), pattern(1024, 0), 512);
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 1024u);
    EXPECT_EQ(h.device().log[0].length, 512u);
    LuConfig ro;
    ro.features.read_only = true;
    Harness p(ro);
    t = p.make_write(rw10(op::write_and_verify_10, 0, 1), pattern(512, 0));
    p.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::data_protect, asc::write_protected));
}

TEST(WriteAndVerify, ReportsWhatTheMediumDoesNotHold) {
    Harness h;
    // A backstore that fails the read-back: the command fails with the read error.
    h.device().hold = true;
    auto t = h.make_write(rw10(op::write_and_verify_10, 0, 1, bytchk), pattern(512, 3));
    h.submit(*t);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    h.device().release_held(); // the write
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    h.device().fail_with = -EIO;
    h.device().hold = false;
    h.device().release_held(); // the read
    ASSERT_TRUE(h.run_until([&] { return t->done(); }));
    EXPECT_TRUE(has_sense(*t, SenseKey::medium_error, asc::unrecovered_read_error));
}

TEST(PreFetch, ReadsTheRangeAndReturnsGood) {
    Harness h;
    auto t = h.exec(prefetch10(100, 16));
    // GOOD, not CONDITION MET: the blocks are in a cache this device server does not control.
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 0u);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].op, IoOp::read);
    EXPECT_EQ(h.device().log[0].offset, 100u * 512);
    EXPECT_EQ(h.device().log[0].length, 16u * 512);
    t = h.exec(prefetch16(0, 1, true));
    EXPECT_EQ(t->status, Status::good) << "IMMED: status at once";
    EXPECT_EQ(h.device().log.size(), 1u);
    auto c = prefetch10(0, 1);
    c[6] = 3; // GROUP NUMBER
    EXPECT_EQ(h.exec(c)->status, Status::good);
}

TEST(PreFetch, Limits) {
    Harness h;
    EXPECT_EQ(h.exec(prefetch10(0, 0))->status, Status::good) << "to the end of the medium";
    EXPECT_EQ(h.device().log.back().length, 2048u * 512);
    EXPECT_TRUE(has_sense(*h.exec(prefetch16(2049, 0)), SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_TRUE(has_sense(*h.exec(prefetch10(2047, 2)), SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_TRUE(has_sense(*h.exec(prefetch16(~0ull, 1)), SenseKey::illegal_request, asc::lba_out_of_range));
    uint32_t max = sbc::limits(h.lu()).max_transfer;
    EXPECT_TRUE(invalid_field(*h.exec(prefetch16(0, max + 1)), 10)) << "MAXIMUM PREFETCH LENGTH";
}

TEST(ReadDefectData, AnEmptyListInTheRequestedFormat) {
    Harness h;
    auto t = h.exec(cdb_bytes({op::read_defect_data_10, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 32, 0}), 32);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 4u);
    EXPECT_EQ(d[1], 0x18 | 0x05) << "PLISTV GLISTV, physical sector format";
    EXPECT_EQ(load_be16(&d[2]), 0u);

    t = h.exec(cdb_bytes({op::read_defect_data_12, 0x08 | 0x03, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}), 32);
    ASSERT_EQ(t->status, Status::good);
    d = t->received();
    ASSERT_EQ(d.size(), 8u);
    EXPECT_EQ(d[1], 0x08 | 0x03);
    EXPECT_EQ(load_be32(&d[4]), 0u);

    // A reserved format; and an allocation length that truncates.
    EXPECT_TRUE(
        invalid_field(*h.exec(cdb_bytes({op::read_defect_data_10, 0, 0x07, 0, 0, 0, 0, 0, 32, 0}), 32), 2));
    t = h.exec(cdb_bytes({op::read_defect_data_10, 0, 0, 0, 0, 0, 0, 0, 2, 0}), 2);
    EXPECT_EQ(t->received().size(), 2u);
}
