// What the target does with PDUs it cannot accept in full feature phase: a Reject where the byte stream
// is still sound, dropping the connection where it no longer is (RFC 7143 §7.1, §11.17; see
// docs/architecture.md, "Errors at ErrorRecoveryLevel 0").
#include "harness.hpp"

#include "iscsi/crc32c.hpp"

namespace ispace::iscsi_target::test {
namespace {

iscsi::Reject expect_reject(FakeInitiator& i, const iscsi::Bhs& sent) {
    auto pdu = i.next();
    EXPECT_TRUE(pdu);
    if (!pdu) {
        return {};
    }
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::reject) << pdu->describe();
    EXPECT_EQ(pdu->data.size(), iscsi::bhs_size);
    EXPECT_TRUE(std::equal(sent.bytes.begin(), sent.bytes.end(), pdu->data.begin()))
        << "a Reject carries the rejected header";
    return pdu->as<iscsi::Reject>();
}

TEST(MalformedPdu, UnknownOpcodeIsRejectedAndTheConnectionGoesOn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    iscsi::Bhs bhs;
    bhs.bytes[0] = 0x0b; // not an initiator opcode of RFC 7143
    bhs.set_final_bit(true);
    bhs.set_itt(0x42);
    i.send(bhs);
    EXPECT_EQ(expect_reject(i, bhs).reason, iscsi::RejectReason::command_not_supported);
    EXPECT_FALSE(i.closed_by_target());
    i.nop_out();
    EXPECT_TRUE(i.next());
}

TEST(MalformedPdu, DataSegmentAboveMaxRecvDataSegmentLengthDropsTheConnection) {
    Harness h([](ServerConfig& c) { c.negotiation.max_recv_data_segment_length = 8192; });
    FakeInitiator& i = h.logged_in();
    auto data = pattern(16384, 60);
    iscsi::NopOut ping;
    ping.itt = 7;
    ping.cmd_sn = i.numbers()->cmd_sn;
    ping.data_segment_length = uint32_t(data.size());
    iscsi::Bhs bhs;
    ping.encode(bhs);
    i.send(bhs, data);
    auto pdus = i.drain();
    ASSERT_FALSE(pdus.empty());
    EXPECT_EQ(pdus[0].opcode(), iscsi::Opcode::reject);
    EXPECT_TRUE(i.closed_by_target()) << "the stream cannot be trusted after an oversized segment";
}

TEST(MalformedPdu, HeaderDigestErrorDropsTheConnection) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.negotiation.header_digests = {iscsi::Digest::crc32c};
    ASSERT_TRUE(i.login(o).ok());
    iscsi::NopOut ping;
    ping.itt = 9;
    ping.cmd_sn = i.numbers()->cmd_sn;
    iscsi::Bhs bhs;
    ping.encode(bhs);
    std::array<uint8_t, iscsi::bhs_size + iscsi::digest_size> bytes{};
    std::copy(bhs.bytes.begin(), bhs.bytes.end(), bytes.begin());
    iscsi::store_digest(bytes.data() + iscsi::bhs_size, iscsi::crc32c(bytes.data(), iscsi::bhs_size) ^ 1);
    i.wire().initiator_write(bytes.data(), bytes.size());
    EXPECT_FALSE(i.next()) << "no answer to a header that cannot be trusted";
    EXPECT_TRUE(i.closed_by_target());
}

TEST(MalformedPdu, SnackIsRejectedAtErrorRecoveryLevel0) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    iscsi::SnackRequest snack;
    snack.type = iscsi::SnackType::status;
    iscsi::Bhs bhs;
    snack.encode(bhs);
    i.send(bhs);
    EXPECT_EQ(expect_reject(i, bhs).reason, iscsi::RejectReason::protocol_error);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(MalformedPdu, LoginRequestInFullFeaturePhaseIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    iscsi::LoginRequest login;
    login.csg = iscsi::LoginStage::operational;
    iscsi::Bhs bhs;
    login.encode(bhs);
    i.send(bhs);
    EXPECT_EQ(expect_reject(i, bhs).reason, iscsi::RejectReason::protocol_error);
}

TEST(MalformedPdu, CommandReusingTheIttOfATaskInProgressIsRejected) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& i = h.logged_in();
    Command w;
    w.cdb = write10(0, 1);
    w.write = true;
    w.edtl = 512;
    uint32_t itt = i.command(w);
    ASSERT_TRUE(i.next()); // its R2T
    Command again;
    again.cdb = test_unit_ready();
    again.itt = itt;
    i.command(again);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject);
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, iscsi::RejectReason::task_in_progress);
}

TEST(MalformedPdu, UndecodableHeaderFieldIsRejectedAsInvalid) {
    // A SCSI Command with neither F nor W set is not a valid header (RFC 7143 §11.3.1).
    Harness h;
    FakeInitiator& i = h.logged_in();
    iscsi::ScsiCommand command;
    command.itt = 0x77;
    command.cmd_sn = i.numbers()->cmd_sn;
    iscsi::Bhs bhs;
    command.encode(bhs);
    bhs.set_final_bit(false);
    i.send(bhs);
    EXPECT_EQ(expect_reject(i, bhs).reason, iscsi::RejectReason::invalid_pdu_field);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(MalformedPdu, ImmediateDataBeyondFirstBurstLengthIsRejected) {
    Harness h;
    LoginOptions o;
    o.negotiation.first_burst_length = 4096;
    FakeInitiator& i = h.logged_in(o);
    Command w;
    w.cdb = write10(0, 16);
    w.write = true;
    w.edtl = 8192;
    w.immediate_data = pattern(8192, 61);
    i.command(w);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject);
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, iscsi::RejectReason::protocol_error);
    EXPECT_FALSE(i.closed_by_target());
}

} // namespace
} // namespace ispace::iscsi_target::test
