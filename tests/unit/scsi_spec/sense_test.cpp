// Sense data formats: fixed (SPC-5 4.4.3) and descriptor (4.4.2), the field pointer of INVALID FIELD
// IN CDB, the INFORMATION field of a miscompare, reading both formats back (whole, deferred, cut
// short), sense key names, the ASC/ASCQ table and the one-line description.
#include "common/bytes.hpp"
#include "scsi_spec/sense.hpp"

#include <gtest/gtest.h>

#include <array>
#include <vector>

using namespace ispace;
using namespace ispace::scsi;

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
        EXPECT_TRUE(p->in_cdb);
        EXPECT_EQ(p->field_pointer, 9);
        EXPECT_TRUE(p->bit_pointer_valid);
        EXPECT_EQ(p->bit_pointer, 6);

        n = build_sense(Sense::miscompare(77), descriptor, b);
        p = parse_sense({b.data(), n});
        ASSERT_TRUE(p);
        EXPECT_TRUE(p->information_valid);
        EXPECT_EQ(p->information, 77u);
    }
    std::array<uint8_t, 4> junk{1, 2, 3, 4};
    EXPECT_FALSE(parse_sense(junk));
    EXPECT_FALSE(parse_sense({}));
}

TEST(Sense, TruncatesToTheBuffer) {
    std::array<uint8_t, 5> b{};
    EXPECT_EQ(build_sense(Sense::lba_out_of_range(), false, b), 5u);
    EXPECT_EQ(b[0], 0x70);
}

TEST(Sense, ParsesDeferredAndShortSenseData) {
    // Deferred errors (71h, 73h) carry the same fields.
    std::vector<uint8_t> fixed(18, 0);
    fixed[0] = 0x71;
    fixed[2] = 0x03;
    fixed[12] = 0x0c;
    auto s = parse_sense(fixed);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->key, SenseKey::medium_error);
    EXPECT_EQ(s->code, asc::write_error);
    std::vector<uint8_t> desc = {0x73, 0x06, 0x29, 0x07, 0, 0, 0, 0};
    s = parse_sense(desc);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->code, asc::i_t_nexus_loss_occurred);

    // Cut short: the sense key is there, the ASC/ASCQ are not.
    std::vector<uint8_t> short_fixed = {0x70, 0, 0x06};
    s = parse_sense(short_fixed);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->key, SenseKey::unit_attention);
    EXPECT_EQ(s->code, 0);
    EXPECT_FALSE(parse_sense(std::vector<uint8_t>{0x70, 0}));
    EXPECT_FALSE(parse_sense(std::vector<uint8_t>{0x72}));

    // A descriptor that claims more than arrived is not read.
    std::vector<uint8_t> cut = {0x72, 0x0e, 0x1d, 0x00, 0, 0, 0, 12, 0x00, 0x0a, 0x80, 0, 0, 0};
    s = parse_sense(cut);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->code, asc::miscompare_during_verify);
    EXPECT_FALSE(s->information_valid);
}

TEST(Sense, KeyNames) {
    EXPECT_STREQ(sense_key_name(SenseKey::no_sense), "NO SENSE");
    EXPECT_STREQ(sense_key_name(SenseKey::illegal_request), "ILLEGAL REQUEST");
    EXPECT_STREQ(sense_key_name(SenseKey::unit_attention), "UNIT ATTENTION");
    EXPECT_STREQ(sense_key_name(SenseKey::miscompare), "MISCOMPARE");
    EXPECT_STREQ(sense_key_name(SenseKey(0x0c)), "RESERVED (0Ch)");
    EXPECT_STREQ(sense_key_name(SenseKey::completed), "COMPLETED");
}

TEST(AscTable, StandardTexts) {
    EXPECT_STREQ(asc_text(asc::invalid_field_in_cdb), "INVALID FIELD IN CDB");
    EXPECT_STREQ(asc_text(0x2100), "LOGICAL BLOCK ADDRESS OUT OF RANGE");
    EXPECT_STREQ(asc_text(0x2907), "I_T NEXUS LOSS OCCURRED");
    EXPECT_STREQ(asc_text(0x0000), "NO ADDITIONAL SENSE INFORMATION");
    EXPECT_STREQ(asc_text(0x5d00), "FAILURE PREDICTION THRESHOLD EXCEEDED"); // the last row
    EXPECT_STREQ(asc_text(0x0c0d), "NOT ENOUGH UNSOLICITED DATA");           // RFC 7143
    EXPECT_EQ(asc_text(0x2401), nullptr);
    EXPECT_EQ(asc_text(0xffff), nullptr);
}

// The codes the engine raises and the iSCSI target reports, and the ones the initiator has always
// named: each has its text (a constant exists only as a table row, so this checks the rows' values).
TEST(AscTable, KnowsEveryCodeInUse) {
    for (uint16_t code :
         {0x0016, 0x0400, 0x0401, 0x0402, 0x041b, 0x0804, 0x0c00, 0x0c0c, 0x0c0d, 0x0d02, 0x0d03,
          0x0e03, 0x1100, 0x1a00, 0x1d00, 0x2000, 0x2100, 0x2400, 0x2500, 0x2600, 0x2604, 0x2606,
          0x2607, 0x2608, 0x2609, 0x2700, 0x2707, 0x2800, 0x2900, 0x2901, 0x2902, 0x2903, 0x2907,
          0x2a01, 0x2a03, 0x2a04, 0x2a05, 0x2a09, 0x2f00, 0x3103, 0x3900, 0x3a00, 0x3f0e, 0x4400,
          0x4700, 0x4900, 0x4b00, 0x4b01, 0x4b05, 0x5302, 0x5503, 0x5504}) {
        EXPECT_NE(asc_text(code), nullptr) << std::hex << code;
    }
}

TEST(Sense, Describe) {
    std::vector<uint8_t> fixed(18, 0);
    fixed[0] = 0x70;
    fixed[2] = 0x06;
    fixed[12] = 0x29;
    fixed[13] = 0x07;
    EXPECT_EQ(describe_sense(fixed), "UNIT ATTENTION, asc/ascq 29/07 (I_T NEXUS LOSS OCCURRED)");
    std::vector<uint8_t> desc = {0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0};
    EXPECT_EQ(describe_sense(desc), "ILLEGAL REQUEST, asc/ascq 24/00 (INVALID FIELD IN CDB)");
    EXPECT_EQ(describe_sense(Sense::make(SenseKey::hardware_error, 0x8001)),
              "HARDWARE ERROR, asc/ascq 80/01");
    EXPECT_EQ(describe_sense(std::vector<uint8_t>{}), "no sense data");
    EXPECT_EQ(describe_sense(std::vector<uint8_t>{1, 2, 3}), "unrecognised sense data");
}
