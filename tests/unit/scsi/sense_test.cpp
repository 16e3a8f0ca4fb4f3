// Sense data formats: fixed (SPC-4 4.5.3) and descriptor (4.5.2), the field pointer of INVALID FIELD
// IN CDB, the INFORMATION field of a miscompare, errno mapping, and the D_SENSE switch end to end.
#include "harness.hpp"

#include "scsi/sense.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

TEST(Sense, FixedFormatLayout) {
    std::array<uint8_t, 64> b{};
    size_t n = build_sense(Sense::lba_out_of_range(), false, b);
    ASSERT_EQ(n, 18u);
    EXPECT_EQ(b[0], 0x70); // current error, VALID clear
    EXPECT_EQ(b[2], 0x05); // ILLEGAL REQUEST
    EXPECT_EQ(b[7], 10);   // additional sense length
    EXPECT_EQ(b[12], 0x21);
    EXPECT_EQ(b[13], 0x00);
    EXPECT_EQ(b[15], 0x00); // no SKSV
}

TEST(Sense, DescriptorFormatLayout) {
    std::array<uint8_t, 64> b{};
    size_t n = build_sense(Sense::write_protected(), true, b);
    ASSERT_EQ(n, 8u);
    EXPECT_EQ(b[0], 0x72);
    EXPECT_EQ(b[1], 0x07); // DATA PROTECT
    EXPECT_EQ(b[2], 0x27);
    EXPECT_EQ(b[3], 0x00);
    EXPECT_EQ(b[7], 0); // no descriptors
}

TEST(Sense, InvalidFieldInCdbCarriesFieldAndBitPointer) {
    Sense s = Sense::invalid_field_in_cdb(4, 1);
    std::array<uint8_t, 64> b{};
    ASSERT_EQ(build_sense(s, false, b), 18u);
    EXPECT_EQ(b[12], 0x24);
    EXPECT_EQ(b[15], 0x80 | 0x40 | 0x08 | 1); // SKSV, C/D (CDB), BPV, bit 1
    EXPECT_EQ(load_be16(&b[16]), 4);

    // Descriptor format: a sense key specific descriptor (type 2) with the same three bytes.
    size_t n = build_sense(s, true, b);
    ASSERT_EQ(n, 16u);
    EXPECT_EQ(b[7], 8);
    EXPECT_EQ(b[8], 0x02);
    EXPECT_EQ(b[9], 0x06);
    EXPECT_EQ(b[12], 0x80 | 0x40 | 0x08 | 1);
    EXPECT_EQ(load_be16(&b[13]), 4);
}

TEST(Sense, FieldPointerWithoutBit) {
    std::array<uint8_t, 64> b{};
    build_sense(Sense::invalid_field_in_cdb(2), false, b);
    EXPECT_EQ(b[15], 0x80 | 0x40); // no BPV
    EXPECT_EQ(load_be16(&b[16]), 2);
    build_sense(Sense::invalid_field_in_parameter_list(7), false, b);
    EXPECT_EQ(b[12], 0x26);
    EXPECT_EQ(b[15], 0x80); // C/D clear: parameter data
}

TEST(Sense, MiscompareOffsetInInformation) {
    std::array<uint8_t, 64> b{};
    build_sense(Sense::miscompare(1234), false, b);
    EXPECT_EQ(b[0], 0xf0); // VALID
    EXPECT_EQ(b[2], 0x0e);
    EXPECT_EQ(load_be32(&b[3]), 1234u);
    EXPECT_EQ(b[12], 0x1d);

    size_t n = build_sense(Sense::miscompare(0x123456789ull), true, b);
    ASSERT_EQ(n, 20u);
    EXPECT_EQ(b[8], 0x00); // information descriptor
    EXPECT_EQ(b[9], 0x0a);
    EXPECT_EQ(b[10], 0x80);
    EXPECT_EQ(load_be64(&b[12]), 0x123456789ull);

    // Fixed format cannot hold it: VALID clear.
    build_sense(Sense::miscompare(0x123456789ull), false, b);
    EXPECT_EQ(b[0], 0x70);
}

TEST(Sense, RoundTripsThroughParse) {
    for (bool descriptor : {false, true}) {
        Sense s = Sense::invalid_field_in_cdb(9, 6);
        std::array<uint8_t, 64> b{};
        size_t n = build_sense(s, descriptor, b);
        auto p = parse_sense({b.data(), n});
        ASSERT_TRUE(p);
        EXPECT_EQ(p->key, SenseKey::illegal_request);
        EXPECT_EQ(p->code, asc::invalid_field_in_cdb);
        EXPECT_TRUE(p->field_pointer_valid);
        EXPECT_EQ(p->field_pointer, 9);
        EXPECT_EQ(p->bit_pointer, 6);

        n = build_sense(Sense::miscompare(77), descriptor, b);
        p = parse_sense({b.data(), n});
        ASSERT_TRUE(p);
        EXPECT_TRUE(p->information_valid);
        EXPECT_EQ(p->information, 77u);
    }
    std::array<uint8_t, 4> junk{1, 2, 3, 4};
    EXPECT_FALSE(parse_sense(junk));
}

TEST(Sense, TruncatesToTheBuffer) {
    std::array<uint8_t, 5> b{};
    EXPECT_EQ(build_sense(Sense::lba_out_of_range(), false, b), 5u);
    EXPECT_EQ(b[0], 0x70);
}

TEST(Sense, ErrnoMapping) {
    EXPECT_EQ(Sense::from_errno(-EIO, false).code, asc::unrecovered_read_error);
    EXPECT_EQ(Sense::from_errno(-EIO, false).key, SenseKey::medium_error);
    EXPECT_EQ(Sense::from_errno(-EIO, true).code, asc::write_error);
    EXPECT_EQ(Sense::from_errno(-ENOSPC, true).code, asc::space_allocation_failed_write_protect);
    EXPECT_EQ(Sense::from_errno(-ENOSPC, true).key, SenseKey::data_protect);
    EXPECT_EQ(Sense::from_errno(-EROFS, true).code, asc::write_protected);
    EXPECT_EQ(Sense::from_errno(-EINVAL, true).key, SenseKey::hardware_error);
}

// D_SENSE in the Control mode page selects the format of CHECK CONDITION sense.
TEST(Sense, LogicalUnitFormatFollowsDSense) {
    Harness h;
    auto t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_EQ(t->sense[0], 0x70);

    ModeValues v = h.lu().mode_values();
    v.d_sense = true;
    h.lu().set_mode_values(v);
    t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_EQ(t->sense[0], 0x72);
}
