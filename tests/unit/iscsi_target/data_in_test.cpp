// Reads: Data-In segmentation by the initiator's MaxRecvDataSegmentLength and MaxBurstLength, status
// collapsed into the last Data-In, residuals (RFC 7143 §11.7, §11.4.5), and StatSN.
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

Command read_command(uint32_t lba, uint16_t blocks, uint32_t edtl) {
    Command c;
    c.cdb = read10(lba, blocks);
    c.read = true;
    c.edtl = edtl;
    return c;
}

void clear_unit_attention(FakeInitiator& i) {
    Command c;
    c.cdb = test_unit_ready();
    i.command(c);
    i.drain();
}

LoginOptions declaring(uint32_t max_recv, uint32_t max_burst = 262144) {
    LoginOptions o;
    o.negotiation.max_recv_data_segment_length = max_recv;
    o.negotiation.max_burst_length = max_burst;
    o.negotiation.first_burst_length = std::min<uint32_t>(65536, max_burst);
    return o;
}

TEST(DataIn, SegmentsAreCutAtTheInitiatorsMaxRecvDataSegmentLength) {
    Harness h;
    FakeInitiator& i = h.logged_in(declaring(4096));
    clear_unit_attention(i);
    uint32_t itt = i.command(read_command(0, 32, 16384));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 4u);
    for (uint32_t k = 0; k < 4; ++k) {
        ASSERT_EQ(pdus[k].opcode(), iscsi::Opcode::data_in);
        auto din = pdus[k].as<iscsi::DataIn>();
        EXPECT_EQ(din.itt, itt);
        EXPECT_EQ(din.data_sn, k);
        EXPECT_EQ(din.buffer_offset, k * 4096);
        EXPECT_EQ(pdus[k].data.size(), 4096u);
        EXPECT_EQ(din.status_present, k == 3);
    }
}

TEST(DataIn, StatusIsCollapsedIntoTheLastDataIn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    uint32_t stat_sn = i.exp_stat_sn();
    i.command(read_command(0, 8, 4096));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "one Data-In with status, no SCSI Response";
    auto din = pdus[0].as<iscsi::DataIn>();
    EXPECT_TRUE(din.final_bit);
    EXPECT_TRUE(din.status_present);
    EXPECT_EQ(din.status, 0);
    EXPECT_EQ(din.stat_sn, stat_sn);
    EXPECT_FALSE(din.overflow || din.underflow);
}

TEST(DataIn, FinalBitEndsEachSequenceOfMaxBurstLength) {
    Harness h;
    FakeInitiator& i = h.logged_in(declaring(4096, 8192));
    clear_unit_attention(i);
    i.command(read_command(0, 64, 32768));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 8u);
    for (size_t k = 0; k < pdus.size(); ++k) {
        EXPECT_EQ(pdus[k].as<iscsi::DataIn>().final_bit, k % 2 == 1) << "PDU " << k;
    }
}

TEST(DataIn, DataInWithoutStatusDoesNotAdvanceStatSn) {
    Harness h;
    FakeInitiator& i = h.logged_in(declaring(4096));
    clear_unit_attention(i);
    uint32_t stat_sn = i.exp_stat_sn();
    i.command(read_command(0, 16, 8192));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[1].as<iscsi::DataIn>().stat_sn, stat_sn);
    Command c;
    c.cdb = test_unit_ready();
    i.command(c);
    auto next = i.next();
    ASSERT_TRUE(next);
    EXPECT_EQ(next->as<iscsi::ScsiResponse>().stat_sn, stat_sn + 1);
}

TEST(DataIn, ExpectedLengthAboveTheTransferReportsAnUnderflow) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    i.command(read_command(0, 4, 8192)); // 2 KiB transferred, 8 KiB expected
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u);
    EXPECT_EQ(pdus[0].data.size(), 2048u);
    auto din = pdus[0].as<iscsi::DataIn>();
    EXPECT_TRUE(din.underflow);
    EXPECT_FALSE(din.overflow);
    EXPECT_EQ(din.residual_count, 6144u);
}

TEST(DataIn, ExpectedLengthBelowTheTransferReportsAnOverflow) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    i.command(read_command(0, 4, 1024)); // 2 KiB in the CDB, room for 1 KiB
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u);
    EXPECT_EQ(pdus[0].data.size(), 1024u) << "never more than the initiator expects";
    auto din = pdus[0].as<iscsi::DataIn>();
    EXPECT_TRUE(din.overflow);
    EXPECT_FALSE(din.underflow);
    EXPECT_EQ(din.residual_count, 1024u);
}

TEST(DataIn, CheckConditionComesAsAScsiResponseWithSense) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    uint32_t itt = i.command(read_command(uint32_t(lun0_bytes / block_size), 1, 512)); // past the end
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "no Data-In for a failed read";
    ASSERT_EQ(pdus[0].opcode(), iscsi::Opcode::scsi_response);
    EXPECT_EQ(pdus[0].bhs.itt(), itt);
    Outcome o = outcome_of(pdus[0]);
    EXPECT_EQ(o.status, 0x02);
    EXPECT_EQ(o.sense_key, 0x05); // ILLEGAL REQUEST
    EXPECT_EQ(o.asc, 0x2100);     // LOGICAL BLOCK ADDRESS OUT OF RANGE
}

TEST(DataIn, FirstCommandOfANewNexusGetsAUnitAttention) {
    Harness h;
    FakeInitiator& i = h.connect();
    ASSERT_TRUE(i.login().ok());
    Command c;
    c.cdb = test_unit_ready();
    i.command(c);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    Outcome o = outcome_of(*pdu);
    EXPECT_EQ(o.status, 0x02);
    EXPECT_EQ(o.sense_key, 0x06); // UNIT ATTENTION
    EXPECT_EQ(o.asc >> 8, 0x29);  // power on, reset or bus device reset occurred
}

} // namespace
} // namespace ispace::iscsi_target::test
