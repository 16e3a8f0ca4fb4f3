// Data-Out checks (RFC 7143 §10.7, §11.7): what the target does with Data-Out PDUs that do not fit the
// command they name. At ErrorRecoveryLevel 0 a sequence error fails that one command with CHECK
// CONDITION / ABORTED COMMAND (ASC 4Bh or 0Ch, §11.4.7.2) and the connection goes on (see
// docs/architecture.md, "Errors at ErrorRecoveryLevel 0").
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

constexpr uint8_t check_condition = 0x02;
constexpr uint8_t aborted_command = 0x0b;

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

LoginOptions unsolicited_allowed(uint32_t first_burst = 65536) {
    LoginOptions o;
    o.negotiation.initial_r2t = false;
    o.negotiation.first_burst_length = first_burst;
    return o;
}

// The connection still serves requests: an immediate NOP-Out ping is answered.
void expect_connection_alive(FakeInitiator& i) {
    uint32_t itt = i.nop_out({}, /*immediate=*/true);
    auto pdu = i.next();
    ASSERT_TRUE(pdu) << "no answer to a NOP-Out: the connection is gone";
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::nop_in);
    EXPECT_EQ(pdu->bhs.itt(), itt);
}

void expect_failed(const std::optional<InPdu>& pdu, uint32_t itt, uint16_t asc) {
    ASSERT_TRUE(pdu) << "no response";
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::scsi_response) << pdu->describe();
    EXPECT_EQ(pdu->bhs.itt(), itt);
    Outcome o = outcome_of(*pdu);
    EXPECT_EQ(o.status, check_condition);
    EXPECT_EQ(o.sense_key, aborted_command);
    EXPECT_EQ(o.asc, asc) << std::hex << o.asc;
}

// A write of `blocks` that received its R2T, for tests that then send a wrong Data-Out.
struct PendingWrite {
    uint32_t itt = 0;
    iscsi::R2t r2t;
};

PendingWrite start_solicited_write(FakeInitiator& i, uint16_t blocks) {
    PendingWrite w;
    w.itt = i.command(write_command(0, blocks));
    auto pdu = i.next();
    EXPECT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::r2t);
    if (pdu) {
        w.r2t = pdu->as<iscsi::R2t>();
    }
    return w;
}

TEST(DataOut, ForAnUnknownIttIsDroppedAndTheConnectionGoesOn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    auto data = pattern(512, 3);
    i.data_out(0xdead, 0x1234, 0, 0, data, true);
    EXPECT_FALSE(i.next()) << "nothing answers a Data-Out for a task that does not exist";
    expect_connection_alive(i);
}

TEST(DataOut, SolicitedDataBeyondTheR2tFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    PendingWrite w = start_solicited_write(i, 2);
    auto data = pattern(1024, 4);
    // The R2T asked for 1024 bytes at 0; 512 bytes at 768 run past it.
    i.data_out(w.itt, w.r2t.ttt, 0, 0, std::span(data).first(768), false);
    i.data_out(w.itt, w.r2t.ttt, 1, 768, std::span(data).first(512), true);
    expect_failed(i.next(), w.itt, scsi::asc::data_offset_error);
    expect_connection_alive(i);
}

TEST(DataOut, UnsolicitedDataBeyondTheEdtlFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in(unsolicited_allowed());
    uint32_t itt = i.command(write_command(0, 1, {}, /*final_bit=*/false));
    auto data = pattern(1024, 5);
    i.data_out(itt, iscsi::reserved_tag, 0, 0, data, true); // 1024 bytes for an EDTL of 512
    expect_failed(i.next(), itt, scsi::asc::unexpected_unsolicited_data);
    expect_connection_alive(i);
}

TEST(DataOut, DataSnGapFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    PendingWrite w = start_solicited_write(i, 2);
    auto data = pattern(1024, 6);
    i.data_out(w.itt, w.r2t.ttt, 1, 0, std::span(data).first(512), false); // DataSN 0 skipped
    expect_failed(i.next(), w.itt, scsi::asc::data_phase_error);
    expect_connection_alive(i);
}

TEST(DataOut, WrongBufferOffsetFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    PendingWrite w = start_solicited_write(i, 2);
    auto data = pattern(1024, 7);
    i.data_out(w.itt, w.r2t.ttt, 0, 512, std::span(data).first(512), false); // the burst starts at 0
    expect_failed(i.next(), w.itt, scsi::asc::data_offset_error);
    expect_connection_alive(i);
}

TEST(DataOut, WrongTargetTransferTagFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    PendingWrite w = start_solicited_write(i, 1);
    auto data = pattern(512, 8);
    i.data_out(w.itt, w.r2t.ttt + 100, 0, 0, data, true);
    expect_failed(i.next(), w.itt, scsi::asc::invalid_target_port_transfer_tag);
    expect_connection_alive(i);
}

TEST(DataOut, UnsolicitedDataBeyondFirstBurstLengthFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in(unsolicited_allowed(4096));
    ASSERT_EQ(i.numbers()->params.first_burst_length, 4096u);
    uint32_t itt = i.command(write_command(0, 16, {}, /*final_bit=*/false));
    auto data = pattern(8192, 9);
    i.data_out(itt, iscsi::reserved_tag, 0, 0, data, true); // 8 KiB unasked; 4 KiB allowed
    expect_failed(i.next(), itt, scsi::asc::unexpected_unsolicited_data);
    expect_connection_alive(i);
}

TEST(DataOut, CommandAnnouncingUnsolicitedDataUnderInitialR2tIsRejected) {
    Harness h;
    FakeInitiator& i = h.logged_in(); // the tests' default offer keeps InitialR2T=Yes
    ASSERT_TRUE(i.numbers()->params.initial_r2t);
    i.command(write_command(0, 1, {}, /*final_bit=*/false));
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject);
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, iscsi::RejectReason::protocol_error);
    expect_connection_alive(i);
}

TEST(DataOut, UnsolicitedDataOutUnderInitialR2tFailsTheCommand) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t itt = i.command(write_command(0, 1)); // F=1: everything will be solicited
    auto r2t = i.next();
    ASSERT_TRUE(r2t && r2t->opcode() == iscsi::Opcode::r2t);
    auto data = pattern(512, 10);
    i.data_out(itt, iscsi::reserved_tag, 0, 0, data, true);
    expect_failed(i.next(), itt, scsi::asc::unexpected_unsolicited_data);
    expect_connection_alive(i);
}

TEST(DataOut, LaterDataOutsOfAFailedCommandAreDropped) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    PendingWrite w = start_solicited_write(i, 2);
    auto data = pattern(1024, 11);
    i.data_out(w.itt, w.r2t.ttt, 5, 0, std::span(data).first(512), false);
    expect_failed(i.next(), w.itt, scsi::asc::data_phase_error);
    i.data_out(w.itt, w.r2t.ttt, 1, 512, std::span(data).subspan(512), true);
    EXPECT_FALSE(i.next());
    expect_connection_alive(i);
}

TEST(DataOut, ForACommandThatSendsNoDataIsRejected) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& i = h.logged_in();
    // A READ held behind a CmdSN gap stays in the task table, so its ITT is known when the Data-Out
    // naming it arrives.
    Command read;
    read.cdb = read10(0, 1);
    read.read = true;
    read.edtl = 512;
    read.cmd_sn = i.numbers()->cmd_sn + 1; // waits for the gap
    uint32_t itt = i.command(read);
    auto data = pattern(512, 12);
    i.data_out(itt, iscsi::reserved_tag, 0, 0, data, true);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject);
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, iscsi::RejectReason::protocol_error);
}

} // namespace
} // namespace ispace::iscsi_target::test
