// Writes: immediate data, unsolicited Data-Out and R2T-solicited bursts (RFC 7143 §4.2.5, §11.8,
// §13.13-13.19), and that status comes only after all the data has landed.
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

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

// Reads `blocks` at `lba` back (Data-In PDUs reassembled).
std::vector<uint8_t> read_back(FakeInitiator& i, uint32_t lba, uint16_t blocks) {
    Command c;
    c.cdb = read10(lba, blocks);
    c.read = true;
    c.edtl = uint32_t(blocks) * block_size;
    i.command(c);
    std::vector<uint8_t> out(c.edtl);
    for (auto& pdu : i.drain()) {
        if (pdu.opcode() != iscsi::Opcode::data_in) {
            ADD_FAILURE() << "unexpected " << pdu.describe();
            continue;
        }
        auto din = pdu.as<iscsi::DataIn>();
        std::copy(pdu.data.begin(), pdu.data.end(), out.begin() + din.buffer_offset);
    }
    return out;
}

// The first read after login carries the new nexus's unit attention; take it out of the way.
void clear_unit_attention(FakeInitiator& i) {
    Command c;
    c.cdb = test_unit_ready();
    i.command(c);
    i.drain();
}

LoginOptions offer(uint16_t outstanding_r2t, uint32_t max_burst, bool initial_r2t = true,
                   uint32_t first_burst = 65536) {
    LoginOptions o;
    o.negotiation.max_outstanding_r2t = outstanding_r2t;
    o.negotiation.max_burst_length = max_burst;
    o.negotiation.first_burst_length = std::min(first_burst, max_burst);
    o.negotiation.initial_r2t = initial_r2t;
    return o;
}

TEST(Write, R2tsAreLimitedByMaxOutstandingR2tAndSizedByMaxBurstLength) {
    Harness h;
    FakeInitiator& i = h.logged_in(offer(2, 8192));
    ASSERT_EQ(i.numbers()->params.max_outstanding_r2t, 2);
    ASSERT_EQ(i.numbers()->params.max_burst_length, 8192u);
    uint32_t itt = i.command(write_command(0, 64)); // 32 KiB
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u) << "two R2Ts at once, no more";
    for (uint32_t k = 0; k < 2; ++k) {
        auto r2t = pdus[k].as<iscsi::R2t>();
        EXPECT_EQ(r2t.itt, itt);
        EXPECT_EQ(r2t.r2t_sn, k);
        EXPECT_EQ(r2t.buffer_offset, k * 8192);
        EXPECT_EQ(r2t.desired_data_transfer_length, 8192u);
    }
    EXPECT_NE(pdus[0].as<iscsi::R2t>().ttt, pdus[1].as<iscsi::R2t>().ttt);
}

TEST(Write, EachCompletedBurstReleasesTheNextR2t) {
    Harness h;
    FakeInitiator& i = h.logged_in(offer(2, 8192));
    uint32_t itt = i.command(write_command(0, 64));
    auto data = pattern(32768, 20);
    auto first = i.drain();
    ASSERT_EQ(first.size(), 2u);
    i.answer_r2t(first[0].as<iscsi::R2t>(), data);
    auto next = i.drain();
    ASSERT_EQ(next.size(), 1u);
    auto r2t = next[0].as<iscsi::R2t>();
    EXPECT_EQ(r2t.itt, itt);
    EXPECT_EQ(r2t.r2t_sn, 2u);
    EXPECT_EQ(r2t.buffer_offset, 16384u);
    EXPECT_EQ(r2t.desired_data_transfer_length, 8192u);
}

TEST(Write, StatusComesOnlyAfterTheLastDataOut) {
    Harness h;
    FakeInitiator& i = h.logged_in(offer(2, 8192));
    clear_unit_attention(i);
    uint32_t itt = i.command(write_command(8, 64));
    auto data = pattern(32768, 21);
    std::vector<iscsi::R2t> pending;
    for (auto& pdu : i.drain()) {
        pending.push_back(pdu.as<iscsi::R2t>());
    }
    uint32_t answered = 0;
    while (!pending.empty()) {
        iscsi::R2t r2t = pending.front();
        pending.erase(pending.begin());
        i.answer_r2t(r2t, data);
        answered += r2t.desired_data_transfer_length;
        for (auto& pdu : i.drain()) {
            if (pdu.opcode() == iscsi::Opcode::r2t) {
                pending.push_back(pdu.as<iscsi::R2t>());
                continue;
            }
            ASSERT_EQ(pdu.opcode(), iscsi::Opcode::scsi_response);
            EXPECT_EQ(answered, 32768u) << "status before all the data arrived";
            EXPECT_EQ(pdu.bhs.itt(), itt);
            EXPECT_EQ(pdu.as<iscsi::ScsiResponse>().status, 0);
        }
    }
    EXPECT_EQ(answered, 32768u);
    EXPECT_EQ(read_back(i, 8, 64), data);
}

TEST(Write, ImmediateDataAloneCompletesTheWrite) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    auto data = pattern(1024, 22);
    uint32_t itt = i.command(write_command(3, 2, data));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "no R2T: the immediate data is all of it";
    EXPECT_EQ(pdus[0].bhs.itt(), itt);
    EXPECT_EQ(pdus[0].as<iscsi::ScsiResponse>().status, 0);
    EXPECT_EQ(read_back(i, 3, 2), data);
}

TEST(Write, ImmediateThenUnsolicitedThenSolicitedData) {
    Harness h;
    FakeInitiator& i = h.logged_in(offer(2, 8192, /*initial_r2t=*/false, /*first_burst=*/4096));
    ASSERT_FALSE(i.numbers()->params.initial_r2t);
    ASSERT_EQ(i.numbers()->params.first_burst_length, 4096u);
    clear_unit_attention(i);
    auto data = pattern(20480, 23); // 1 KiB immediate, 3 KiB unsolicited, 16 KiB solicited
    Command c = write_command(100, 40, std::vector<uint8_t>(data.begin(), data.begin() + 1024), false);
    uint32_t itt = i.command(c);
    EXPECT_FALSE(i.next()) << "no R2T while the unsolicited data is still due";
    i.data_out(itt, iscsi::reserved_tag, 0, 1024, std::span(data).subspan(1024, 2048), false);
    i.data_out(itt, iscsi::reserved_tag, 1, 3072, std::span(data).subspan(3072, 1024), true);
    auto r2ts = i.drain();
    ASSERT_EQ(r2ts.size(), 2u);
    EXPECT_EQ(r2ts[0].as<iscsi::R2t>().buffer_offset, 4096u)
        << "solicited data starts after FirstBurstLength";
    EXPECT_EQ(r2ts[0].as<iscsi::R2t>().desired_data_transfer_length, 8192u);
    EXPECT_EQ(r2ts[1].as<iscsi::R2t>().buffer_offset, 12288u);
    EXPECT_EQ(r2ts[1].as<iscsi::R2t>().desired_data_transfer_length, 8192u);
    i.answer_r2t(r2ts[1].as<iscsi::R2t>(), data); // bursts may be answered in any order
    EXPECT_FALSE(i.next());
    i.answer_r2t(r2ts[0].as<iscsi::R2t>(), data);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->bhs.itt(), itt);
    EXPECT_EQ(done->as<iscsi::ScsiResponse>().status, 0);
    EXPECT_EQ(read_back(i, 100, 40), data);
}

TEST(Write, FinalBitEndsTheUnsolicitedDataEarly) {
    Harness h;
    FakeInitiator& i = h.logged_in(offer(1, 65536, /*initial_r2t=*/false, /*first_burst=*/8192));
    clear_unit_attention(i);
    auto data = pattern(16384, 24);
    uint32_t itt = i.command(write_command(0, 32, {}, false));
    i.data_out(itt, iscsi::reserved_tag, 0, 0, std::span(data).first(2048), true); // stops at 2 KiB
    auto r2t_pdu = i.next();
    ASSERT_TRUE(r2t_pdu && r2t_pdu->opcode() == iscsi::Opcode::r2t);
    auto r2t = r2t_pdu->as<iscsi::R2t>();
    EXPECT_EQ(r2t.buffer_offset, 2048u);
    EXPECT_EQ(r2t.desired_data_transfer_length, 16384u - 2048u);
    i.answer_r2t(r2t, data);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->bhs.itt(), itt);
    EXPECT_EQ(done->as<iscsi::ScsiResponse>().status, 0);
    EXPECT_EQ(read_back(i, 0, 32), data);
}

TEST(Write, DataOutsAreSplitByTheTargetsMaxRecvDataSegmentLength) {
    // The target declares 4 KiB: an 8 KiB burst arrives in two PDUs, and a larger PDU is refused.
    Harness h([](ServerConfig& c) { c.negotiation.max_recv_data_segment_length = 4096; });
    FakeInitiator& i = h.logged_in();
    EXPECT_EQ(i.connection_params().max_send_data_segment_length, 4096u);
    clear_unit_attention(i);
    auto data = pattern(8192, 25);
    uint32_t itt = i.command(write_command(0, 16));
    auto r2t = i.next();
    ASSERT_TRUE(r2t);
    i.answer_r2t(r2t->as<iscsi::R2t>(), data);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->bhs.itt(), itt);
    EXPECT_EQ(read_back(i, 0, 16), data);
}

TEST(Write, ShortEdtlWritesTheWholeBlocksThatArrivedWithAnOverflowResidual) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    clear_unit_attention(i);
    auto data = pattern(1024, 26);
    Command c = write_command(50, 4, data); // the CDB says 2 KiB, the initiator sends 1 KiB
    c.edtl = 1024;
    uint32_t itt = i.command(c);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->bhs.itt(), itt);
    auto response = done->as<iscsi::ScsiResponse>();
    EXPECT_EQ(response.status, 0);
    EXPECT_TRUE(response.overflow);
    EXPECT_EQ(response.residual_count, 1024u);
    EXPECT_EQ(read_back(i, 50, 2), data);
}

} // namespace
} // namespace ispace::iscsi_target::test
