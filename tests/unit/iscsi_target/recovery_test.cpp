// ErrorRecoveryLevel 1 on the target (RFC 7143 §7.1-§7.2, §7.8, §11.16): the level negotiated, a
// Data-Out lost to a data digest error asked for again with a recovery R2T, a header digest error that
// skips one PDU, and SNACK Requests — Data, R2T, Status, DataACK — answered from what the connection
// kept, or with a Reject when they ask for what was never sent, was acknowledged, or names no task.
#include "harness.hpp"

#include "common/bytes.hpp"

namespace ispace::iscsi_target::test {
namespace {

LoginOptions erl1(bool digests = true, uint32_t max_recv = 65536) {
    LoginOptions o;
    o.negotiation.error_recovery_level = 1;
    if (digests) {
        o.negotiation.header_digests = {iscsi::Digest::crc32c};
        o.negotiation.data_digests = {iscsi::Digest::crc32c};
    }
    o.negotiation.max_recv_data_segment_length = max_recv;
    return o;
}

Command write_command(uint32_t lba, uint16_t blocks, std::vector<uint8_t> immediate = {},
                      bool final_bit = true) {
    Command c;
    c.cdb = write10(lba, blocks);
    c.write = true;
    c.edtl = uint32_t(blocks) * block_size;
    c.immediate_data = std::move(immediate);
    c.final_bit = final_bit;
    return c;
}

Command read_command(uint32_t lba, uint16_t blocks) {
    Command c;
    c.cdb = read10(lba, blocks);
    c.read = true;
    c.edtl = uint32_t(blocks) * block_size;
    return c;
}

// Sends `bhs` + `data` with a wrong data digest (or, with `bad_header`, a wrong header digest).
void send_corrupt(FakeInitiator& i, const iscsi::Bhs& bhs, std::span<const uint8_t> data,
                  bool bad_header = false) {
    bool hd = i.connection_params().header_digest == iscsi::Digest::crc32c;
    bool dd = i.connection_params().data_digest == iscsi::Digest::crc32c;
    ASSERT_TRUE(bad_header ? hd : dd) << "the digest to corrupt was not negotiated";
    std::array<uint8_t, iscsi::max_header_size> header{};
    size_t n = iscsi::build_pdu_header(bhs, {}, hd, header.data());
    if (bad_header) {
        header[n - 1] ^= 0x5a;
    }
    i.wire().initiator_write(header.data(), n);
    if (!data.empty()) {
        i.wire().initiator_write(data.data(), data.size());
        iscsi::DataTrailer trailer = iscsi::make_data_trailer(data, dd);
        if (!bad_header) {
            trailer.bytes[trailer.size - 1] ^= 0x5a;
        }
        i.wire().initiator_write(trailer.bytes.data(), trailer.size);
    }
}

iscsi::Bhs data_out_bhs(FakeInitiator& i, uint32_t itt, uint32_t ttt, uint32_t data_sn, uint32_t offset,
                        uint32_t length, bool final_bit) {
    iscsi::DataOut d;
    d.final_bit = final_bit;
    d.data_segment_length = length;
    d.itt = itt;
    d.ttt = ttt;
    d.exp_stat_sn = i.exp_stat_sn();
    d.data_sn = data_sn;
    d.buffer_offset = offset;
    iscsi::Bhs bhs;
    d.encode(bhs);
    return bhs;
}

void snack(FakeInitiator& i, iscsi::SnackType type, uint32_t itt, uint32_t beg, uint32_t run,
           uint32_t exp_stat_sn, uint32_t ttt = iscsi::reserved_tag) {
    iscsi::SnackRequest s;
    s.type = type;
    s.itt = itt;
    s.ttt_or_snack_tag = ttt;
    s.exp_stat_sn = exp_stat_sn;
    s.beg_run = beg;
    s.run_length = run;
    iscsi::Bhs bhs;
    s.encode(bhs);
    i.send(bhs);
}

void expect_reject(const std::optional<InPdu>& pdu, iscsi::RejectReason reason, iscsi::Opcode rejected) {
    ASSERT_TRUE(pdu) << "no Reject";
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject) << pdu->describe();
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, reason);
    ASSERT_GE(pdu->data.size(), iscsi::bhs_size);
    EXPECT_EQ(iscsi::Opcode(pdu->data[0] & 0x3f), rejected);
}

void expect_alive(FakeInitiator& i) {
    uint32_t itt = i.nop_out({}, /*immediate=*/true);
    auto pdu = i.next();
    ASSERT_TRUE(pdu) << "no answer to a NOP-Out: the connection is gone";
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::nop_in);
    EXPECT_EQ(pdu->bhs.itt(), itt);
}

std::vector<uint8_t> read_back(FakeInitiator& i, uint32_t lba, uint16_t blocks) {
    i.command(read_command(lba, blocks));
    std::vector<uint8_t> out;
    for (auto& pdu : i.drain()) {
        if (pdu.opcode() == iscsi::Opcode::data_in) {
            out.insert(out.end(), pdu.data.begin(), pdu.data.end());
        }
    }
    return out;
}

uint64_t recovery_count(Harness& h, const std::string& name) {
    return h.server().statistics().recovery[name];
}

// ---- Negotiation ---------------------------------------------------------------------------------------

TEST(Recovery, ErlOneIsGrantedWhenAskedFor) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginResult r = i.login(erl1());
    ASSERT_TRUE(r.ok()) << r.reason;
    EXPECT_EQ(r.session.error_recovery_level, 1);
}

TEST(Recovery, AnInitiatorThatAsksNothingGetsErlZero) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginResult r = i.login();
    ASSERT_TRUE(r.ok()) << r.reason;
    EXPECT_EQ(r.session.error_recovery_level, 0);
}

TEST(Recovery, MaxErlZeroOnTheTargetGrantsZero) {
    Harness h([](ServerConfig& c) { c.negotiation.error_recovery_level = 0; });
    FakeInitiator& i = h.connect();
    LoginResult r = i.login(erl1());
    ASSERT_TRUE(r.ok()) << r.reason;
    EXPECT_EQ(r.session.error_recovery_level, 0);
}

TEST(Recovery, SnackAtErlZeroIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    snack(i, iscsi::SnackType::status, iscsi::reserved_tag, 0, 0, i.exp_stat_sn());
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    expect_alive(i);
}

// ---- Recovery R2T ----------------------------------------------------------------------------------------

TEST(Recovery, DataOutWithABadDataDigestIsAskedForAgainWithARecoveryR2t) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    auto data = pattern(1024, 7);
    uint32_t itt = i.command(write_command(8, 2));
    auto r2t_pdu = i.next();
    ASSERT_TRUE(r2t_pdu && r2t_pdu->opcode() == iscsi::Opcode::r2t);
    auto r2t = r2t_pdu->as<iscsi::R2t>();
    // First half fine, second half corrupt.
    i.data_out(itt, r2t.ttt, 0, 0, std::span(data).first(512), false);
    send_corrupt(i, data_out_bhs(i, itt, r2t.ttt, 1, 512, 512, true), std::span(data).subspan(512));
    expect_reject(i.next(), iscsi::RejectReason::data_digest_error, iscsi::Opcode::data_out);
    auto recovery = i.next();
    ASSERT_TRUE(recovery) << "no recovery R2T";
    ASSERT_EQ(recovery->opcode(), iscsi::Opcode::r2t) << recovery->describe();
    auto again = recovery->as<iscsi::R2t>();
    EXPECT_EQ(again.itt, itt);
    EXPECT_NE(again.ttt, r2t.ttt);
    EXPECT_EQ(again.r2t_sn, r2t.r2t_sn + 1);
    EXPECT_EQ(again.buffer_offset, 512u);
    EXPECT_EQ(again.desired_data_transfer_length, 512u);
    EXPECT_FALSE(i.next()) << "the command must wait for the data asked for again";
    i.data_out(itt, again.ttt, 0, 512, std::span(data).subspan(512), true);
    auto response = i.next();
    ASSERT_TRUE(response && response->opcode() == iscsi::Opcode::scsi_response);
    EXPECT_EQ(outcome_of(*response).status, 0);
    EXPECT_EQ(read_back(i, 8, 2), data);
    EXPECT_EQ(recovery_count(h, "recovery_r2t"), 1u);
}

TEST(Recovery, UnsolicitedDataOutWithABadDigestIsAskedForWithAnR2t) {
    Harness h;
    LoginOptions o = erl1();
    o.negotiation.initial_r2t = false;
    FakeInitiator& i = h.logged_in(o);
    auto data = pattern(2048, 9);
    uint32_t itt =
        i.command(write_command(0, 4, std::vector<uint8_t>(data.begin(), data.begin() + 512), false));
    send_corrupt(i, data_out_bhs(i, itt, iscsi::reserved_tag, 0, 512, 512, false),
                 std::span(data).subspan(512, 512));
    i.data_out(itt, iscsi::reserved_tag, 1, 1024, std::span(data).subspan(1024), true);
    expect_reject(i.next(), iscsi::RejectReason::data_digest_error, iscsi::Opcode::data_out);
    auto recovery = i.next();
    ASSERT_TRUE(recovery && recovery->opcode() == iscsi::Opcode::r2t);
    auto r2t = recovery->as<iscsi::R2t>();
    EXPECT_EQ(r2t.buffer_offset, 512u);
    EXPECT_EQ(r2t.desired_data_transfer_length, 512u);
    i.answer_r2t(r2t, data);
    auto response = i.next();
    ASSERT_TRUE(response && response->opcode() == iscsi::Opcode::scsi_response)
        << (response ? response->describe() : "");
    EXPECT_EQ(outcome_of(*response).status, 0);
    EXPECT_EQ(read_back(i, 0, 4), data);
}

TEST(Recovery, AtErlZeroADataOutDigestErrorStillDropsTheConnection) {
    Harness h;
    LoginOptions o = erl1();
    o.negotiation.error_recovery_level = 0;
    FakeInitiator& i = h.logged_in(o);
    auto data = pattern(512, 1);
    uint32_t itt = i.command(write_command(0, 1));
    auto r2t = i.next()->as<iscsi::R2t>();
    send_corrupt(i, data_out_bhs(i, itt, r2t.ttt, 0, 0, 512, true), data);
    i.drain();
    EXPECT_TRUE(i.closed_by_target());
}

// ---- Header digest --------------------------------------------------------------------------------------

TEST(Recovery, AHeaderDigestErrorDiscardsOnePduAndTheCmdSnGapWaitsForItsRetry) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    // A command whose header is corrupt: discarded, its CmdSN a gap.
    iscsi::ScsiCommand lost;
    lost.final_bit = true;
    lost.itt = 0x7001;
    lost.cmd_sn = i.numbers()->cmd_sn;
    lost.exp_stat_sn = i.exp_stat_sn();
    lost.cdb = test_unit_ready();
    iscsi::Bhs lost_bhs;
    lost.encode(lost_bhs);
    send_corrupt(i, lost_bhs, {}, /*bad_header=*/true);
    EXPECT_FALSE(i.next());
    EXPECT_FALSE(i.closed_by_target());
    EXPECT_EQ(recovery_count(h, "header_digest_skipped"), 1u);
    // The next command waits for the gap...
    Command next;
    next.cdb = test_unit_ready();
    next.cmd_sn = lost.cmd_sn + 1;
    uint32_t next_itt = i.command(next);
    EXPECT_FALSE(i.next());
    // ...which the retried command fills (RFC 7143 §7.2.1: same ITT, same CmdSN).
    i.send(lost_bhs);
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[0].bhs.itt(), 0x7001u);
    EXPECT_EQ(pdus[1].bhs.itt(), next_itt);
}

// ---- SNACK
// --------------------------------------------------------------------------------------------------

struct Read {
    uint32_t itt = 0;
    std::vector<InPdu> pdus; // Data-In
    uint32_t stat_sn = 0;
};

// A read of `blocks` in 512-byte Data-In PDUs (the initiator declares MaxRecvDataSegmentLength 512).
Read read_in_pieces(FakeInitiator& i, uint32_t lba, uint16_t blocks) {
    Read r;
    r.itt = i.command(read_command(lba, blocks));
    r.pdus = i.drain();
    if (!r.pdus.empty()) {
        r.stat_sn = r.pdus.back().as<iscsi::DataIn>().stat_sn;
    }
    return r;
}

TEST(Recovery, DataSnackResendsTheDataInAskedFor) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 4);
    ASSERT_EQ(r.pdus.size(), 4u);
    auto last = r.pdus.back().as<iscsi::DataIn>();
    EXPECT_TRUE(last.status_present);
    EXPECT_TRUE(last.acknowledge) << "ERL 1: the last Data-In asks for a DataACK";
    EXPECT_NE(last.ttt, iscsi::reserved_tag);
    // ExpStatSN stays at the read's status: its data has a hole.
    snack(i, iscsi::SnackType::data_r2t, r.itt, 1, 2, r.stat_sn);
    auto again = i.drain();
    ASSERT_EQ(again.size(), 2u);
    for (size_t k = 0; k < 2; ++k) {
        ASSERT_EQ(again[k].opcode(), iscsi::Opcode::data_in);
        auto d = again[k].as<iscsi::DataIn>();
        EXPECT_EQ(d.data_sn, k + 1);
        EXPECT_EQ(d.buffer_offset, (k + 1) * 512);
        EXPECT_EQ(again[k].data, r.pdus[k + 1].data);
    }
    // RunLength 0: from BegRun through the last, the status-carrying one included.
    snack(i, iscsi::SnackType::data_r2t, r.itt, 3, 0, r.stat_sn);
    auto tail = i.drain();
    ASSERT_EQ(tail.size(), 1u);
    EXPECT_TRUE(tail[0].as<iscsi::DataIn>().status_present);
    EXPECT_EQ(tail[0].as<iscsi::DataIn>().stat_sn, r.stat_sn);
    EXPECT_EQ(recovery_count(h, "data_snack"), 2u);
}

TEST(Recovery, StatusSnackResendsTheResponseWithItsStatSn) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    Command tur;
    tur.cdb = test_unit_ready();
    uint32_t itt = i.command(tur);
    auto first = i.next();
    ASSERT_TRUE(first && first->opcode() == iscsi::Opcode::scsi_response);
    uint32_t stat_sn = first->as<iscsi::ScsiResponse>().stat_sn;
    snack(i, iscsi::SnackType::status, iscsi::reserved_tag, stat_sn, 1, stat_sn);
    auto again = i.next();
    ASSERT_TRUE(again && again->opcode() == iscsi::Opcode::scsi_response);
    EXPECT_EQ(again->bhs.itt(), itt);
    EXPECT_EQ(again->as<iscsi::ScsiResponse>().stat_sn, stat_sn);
    EXPECT_EQ(recovery_count(h, "status_snack"), 1u);
}

TEST(Recovery, StatusSnackForADataInStatusAfterDataAckIsASCSIResponse) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 2);
    ASSERT_EQ(r.pdus.size(), 2u);
    auto last = r.pdus.back().as<iscsi::DataIn>();
    snack(i, iscsi::SnackType::data_ack, r.itt, 2, 0, r.stat_sn, last.ttt);
    EXPECT_FALSE(i.next()) << "a DataACK is not answered";
    EXPECT_EQ(recovery_count(h, "data_ack"), 1u);
    // The data is let go: asking for it is asking for what was acknowledged.
    snack(i, iscsi::SnackType::data_r2t, r.itt, 0, 1, r.stat_sn);
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    // The status is still kept, and goes again without its data.
    snack(i, iscsi::SnackType::status, iscsi::reserved_tag, r.stat_sn, 1, r.stat_sn);
    auto again = i.next();
    ASSERT_TRUE(again && again->opcode() == iscsi::Opcode::scsi_response) << (again ? again->describe() : "");
    auto response = again->as<iscsi::ScsiResponse>();
    EXPECT_EQ(response.stat_sn, r.stat_sn);
    EXPECT_EQ(response.exp_data_sn, 2u);
    EXPECT_EQ(response.itt, r.itt);
}

TEST(Recovery, R2tSnackResendsTheR2t) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    uint32_t itt = i.command(write_command(0, 2));
    auto first = i.next();
    ASSERT_TRUE(first && first->opcode() == iscsi::Opcode::r2t);
    auto r2t = first->as<iscsi::R2t>();
    snack(i, iscsi::SnackType::data_r2t, itt, 0, 1, i.exp_stat_sn());
    auto again = i.next();
    ASSERT_TRUE(again && again->opcode() == iscsi::Opcode::r2t);
    auto r = again->as<iscsi::R2t>();
    EXPECT_EQ(r.ttt, r2t.ttt);
    EXPECT_EQ(r.r2t_sn, r2t.r2t_sn);
    EXPECT_EQ(r.buffer_offset, r2t.buffer_offset);
    auto data = pattern(1024, 2);
    i.answer_r2t(r, data);
    auto response = i.next();
    ASSERT_TRUE(response && response->opcode() == iscsi::Opcode::scsi_response);
    EXPECT_EQ(outcome_of(*response).status, 0);
    EXPECT_EQ(recovery_count(h, "r2t_snack"), 1u);
}

// ---- Malformed SNACKs: a Reject, never a crash, and the connection goes on --------------------------------

TEST(Recovery, DataSnackForAnUnknownIttIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    snack(i, iscsi::SnackType::data_r2t, 0xabcdef, 0, 1, i.exp_stat_sn());
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    expect_alive(i);
}

TEST(Recovery, DataSnackBeyondWhatWasSentIsRejectedWithTheNextDataSn) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 2);
    ASSERT_EQ(r.pdus.size(), 2u);
    snack(i, iscsi::SnackType::data_r2t, r.itt, 2, 1, r.stat_sn); // BegRun past the last
    auto reject = i.next();
    expect_reject(reject, iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    EXPECT_EQ(reject->as<iscsi::Reject>().data_sn, 2u);
    snack(i, iscsi::SnackType::data_r2t, r.itt, 1, 5, r.stat_sn); // RunLength past the last
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    snack(i, iscsi::SnackType::data_r2t, r.itt, 0xfffffff0u, 0x20, r.stat_sn); // wraps around
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    expect_alive(i);
    EXPECT_EQ(recovery_count(h, "snack_rejected"), 3u);
}

TEST(Recovery, StatusSnackForAStatSnNotYetSentOrAlreadyAcknowledgedIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1());
    uint32_t next = i.exp_stat_sn();
    snack(i, iscsi::SnackType::status, iscsi::reserved_tag, next + 5, 1, next);
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    // The Reject took StatSN `next`; once a NOP-Out acknowledged it, it can no longer be asked for.
    expect_alive(i);
    snack(i, iscsi::SnackType::status, iscsi::reserved_tag, next, 1, i.exp_stat_sn());
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
    expect_alive(i);
}

TEST(Recovery, DataAckWithAWrongTttOrBeyondTheDataIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 2);
    ASSERT_EQ(r.pdus.size(), 2u);
    auto last = r.pdus.back().as<iscsi::DataIn>();
    snack(i, iscsi::SnackType::data_ack, r.itt, 2, 0, r.stat_sn, last.ttt + 1);
    expect_reject(i.next(), iscsi::RejectReason::invalid_data_ack, iscsi::Opcode::snack_request);
    snack(i, iscsi::SnackType::data_ack, r.itt, 9, 0, r.stat_sn, last.ttt);
    expect_reject(i.next(), iscsi::RejectReason::invalid_data_ack, iscsi::Opcode::snack_request);
    expect_alive(i);
}

TEST(Recovery, RDataSnackIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 2);
    snack(i, iscsi::SnackType::r_data, r.itt, 0, 0, r.stat_sn);
    expect_reject(i.next(), iscsi::RejectReason::snack_reject, iscsi::Opcode::snack_request);
    expect_alive(i);
}

// An initiator may give a new command the ITT of one whose status it received before any ExpStatSN
// acknowledged it (the ITT is unique among outstanding tasks only). A SNACK for the new command must get
// the new command's Data-In, never what the connection kept of the old one (an ERL 2 TASK REASSIGN of
// that ITT, looking in the same place, looped resending a read's Data-In to a write).
TEST(Recovery, ASnackForAReusedIttGetsTheNewCommandsData) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    auto old_data = pattern(2 * block_size, 1);
    auto new_data = pattern(2 * block_size, 2);
    i.command(write_command(0, 2, old_data));
    i.drain();
    i.command(write_command(8, 2, new_data));
    i.drain();
    uint32_t unacknowledged = i.exp_stat_sn();
    Read first = read_in_pieces(i, 0, 2);
    ASSERT_EQ(first.pdus.size(), 2u);
    EXPECT_EQ(first.pdus[0].data, std::vector<uint8_t>(old_data.begin(), old_data.begin() + 512));
    // The same ITT again, with an ExpStatSN that has not acknowledged the first read's status.
    Command again = read_command(8, 2);
    again.itt = first.itt;
    again.exp_stat_sn = unacknowledged;
    i.command(again);
    auto second = i.drain();
    ASSERT_EQ(second.size(), 2u);
    EXPECT_EQ(second[0].data, std::vector<uint8_t>(new_data.begin(), new_data.begin() + 512));
    snack(i, iscsi::SnackType::data_r2t, first.itt, 0, 2, unacknowledged);
    auto resent = i.drain();
    ASSERT_EQ(resent.size(), 2u);
    for (size_t k = 0; k < 2; ++k) {
        ASSERT_EQ(resent[k].opcode(), iscsi::Opcode::data_in);
        EXPECT_EQ(resent[k].data, second[k].data) << "DataSN " << k << " of the old read, not the new one";
    }
}

TEST(Recovery, AnAcknowledgedStatusReleasesTheTasksData) {
    Harness h;
    FakeInitiator& i = h.logged_in(erl1(true, 512));
    Read r = read_in_pieces(i, 0, 2);
    ASSERT_EQ(r.pdus.size(), 2u);
    // A NOP-Out carries ExpStatSN past the read's status.
    expect_alive(i);
    snack(i, iscsi::SnackType::data_r2t, r.itt, 0, 1, i.exp_stat_sn());
    expect_reject(i.next(), iscsi::RejectReason::protocol_error, iscsi::Opcode::snack_request);
}

} // namespace
} // namespace ispace::iscsi_target::test
