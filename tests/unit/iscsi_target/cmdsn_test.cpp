// The CmdSN window (RFC 7143 §4.2.2.1, §3.2.2.1): ordering, out-of-window commands, immediate delivery,
// and how ExpCmdSN/MaxCmdSN move as commands are answered.
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

Command tur(std::optional<uint32_t> cmd_sn = std::nullopt, bool immediate = false) {
    Command c;
    c.cdb = test_unit_ready();
    c.cmd_sn = cmd_sn;
    c.immediate = immediate;
    return c;
}

TEST(CmdSnWindow, LoginAnnouncesAWindowOfTheQueueDepth) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    auto n = i.numbers();
    EXPECT_EQ(n->exp_cmd_sn, n->cmd_sn);         // the first command reuses the login's CmdSN
    EXPECT_EQ(n->max_cmd_sn, n->exp_cmd_sn + 7); // queue_depth 8
}

TEST(CmdSnWindow, EachAnsweredCommandAdvancesExpCmdSnAndMaxCmdSn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t first = i.numbers()->cmd_sn;
    for (uint32_t k = 0; k < 3; ++k) {
        i.command(tur());
        auto pdu = i.next();
        ASSERT_TRUE(pdu);
        auto response = pdu->as<iscsi::ScsiResponse>();
        EXPECT_EQ(response.exp_cmd_sn, first + k + 1);
        EXPECT_EQ(response.max_cmd_sn, first + k + 1 + 7);
    }
}

TEST(CmdSnWindow, CommandBeyondMaxCmdSnIsIgnored) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t max = i.numbers()->max_cmd_sn;
    i.command(tur(max + 1));
    EXPECT_FALSE(i.next()) << "a command outside the window is ignored silently";
    // The connection goes on, and the CmdSN it would have taken is still free.
    i.command(tur());
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::scsi_response);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(CmdSnWindow, CommandBelowExpCmdSnIsIgnored) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t used = i.numbers()->cmd_sn;
    i.command(tur());
    ASSERT_TRUE(i.next());
    i.command(tur(used)); // a stale duplicate
    EXPECT_FALSE(i.next());
    EXPECT_FALSE(i.closed_by_target());
}

TEST(CmdSnWindow, CommandAfterAGapWaitsUntilTheGapFills) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    uint32_t second = i.command(tur(sn + 1));
    EXPECT_FALSE(i.next()) << "CmdSN " << sn << " has not arrived: " << sn + 1 << " waits";
    uint32_t first = i.command(tur(sn));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[0].bhs.itt(), first) << "delivered in CmdSN order";
    EXPECT_EQ(pdus[1].bhs.itt(), second);
    EXPECT_EQ(pdus[1].as<iscsi::ScsiResponse>().exp_cmd_sn, sn + 2);
}

TEST(CmdSnWindow, ImmediateCommandBypassesTheOrdering) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    i.command(tur(sn + 1)); // held behind the gap at `sn`
    uint32_t urgent = i.command(tur(sn, /*immediate=*/true));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u);
    EXPECT_EQ(pdus[0].bhs.itt(), urgent);
    // An immediate command does not consume the CmdSN it carries.
    EXPECT_EQ(pdus[0].as<iscsi::ScsiResponse>().exp_cmd_sn, sn);
}

TEST(CmdSnWindow, DuplicateOfAWaitingCmdSnIsIgnored) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    uint32_t held = i.command(tur(sn + 1));
    i.command(tur(sn + 1)); // the same CmdSN again, another ITT
    i.command(tur(sn));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[1].bhs.itt(), held);
}

TEST(CmdSnWindow, UnansweredCommandsNarrowTheWindow) {
    // A write waiting for its Data-Out holds a slot: MaxCmdSN stays one lower until it is answered.
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& i = h.logged_in();
    Command w;
    w.cdb = write10(0, 1);
    w.write = true;
    w.edtl = 512;
    uint32_t itt = i.command(w);
    auto r2t_pdu = i.next();
    ASSERT_TRUE(r2t_pdu);
    auto r2t = r2t_pdu->as<iscsi::R2t>();
    EXPECT_EQ(r2t.max_cmd_sn, r2t.exp_cmd_sn - 1 + 7);
    auto data = pattern(512, 1);
    i.answer_r2t(r2t, data);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->bhs.itt(), itt);
    auto response = done->as<iscsi::ScsiResponse>();
    EXPECT_EQ(response.max_cmd_sn, response.exp_cmd_sn + 7);
}

TEST(CmdSnWindow, FullWindowRefusesTheNextCommandUntilOneIsAnswered) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& i = h.logged_in();
    // Eight writes waiting for data fill the window of eight.
    std::vector<iscsi::R2t> r2ts;
    for (int k = 0; k < 8; ++k) {
        Command w;
        w.cdb = write10(uint32_t(k), 1);
        w.write = true;
        w.edtl = 512;
        i.command(w);
    }
    for (auto& pdu : i.drain()) {
        r2ts.push_back(pdu.as<iscsi::R2t>());
    }
    ASSERT_EQ(r2ts.size(), 8u);
    EXPECT_EQ(r2ts.back().max_cmd_sn, r2ts.back().exp_cmd_sn - 1) << "the window is closed";
    i.command(tur());
    EXPECT_FALSE(i.next()) << "beyond MaxCmdSN";
    auto data = pattern(512, 2);
    i.answer_r2t(r2ts[0], data);
    auto response = i.next();
    ASSERT_TRUE(response);
    EXPECT_EQ(response->as<iscsi::ScsiResponse>().max_cmd_sn, response->as<iscsi::ScsiResponse>().exp_cmd_sn);
}

TEST(CmdSnWindow, ImmediateNopOutDoesNotConsumeACmdSn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    i.nop_out({}, /*immediate=*/true);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::NopIn>().exp_cmd_sn, sn);
    i.nop_out({}, /*immediate=*/false);
    pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::NopIn>().exp_cmd_sn, sn + 1);
}

// ---- A connection joining the session (MC/S) -------------------------------------------------------

// The final Login Response of a connection that joins a session states the session's window as it is:
// its ExpCmdSN acknowledges only the CmdSNs received, and its MaxCmdSN opens no slot the session does
// not have (RFC 7143 §4.2.2.1). The login's own CmdSN is only the initiator's next one.
TEST(CmdSnWindow, AJoiningConnectionsLoginAcknowledgesOnlyTheCmdSnsReceived) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    uint32_t sn = first.numbers()->cmd_sn;
    // CmdSN sn is still on its way (on the first connection); sn + 1 has arrived and waits for it.
    uint32_t late = first.command(tur(sn + 1));
    EXPECT_FALSE(first.next());
    first.numbers()->cmd_sn = sn + 2;
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    auto joined = second.join(first, 1, mcs());
    ASSERT_TRUE(joined.ok()) << joined.reason;
    EXPECT_EQ(second.numbers()->exp_cmd_sn, sn) << "CmdSN " << sn << " has not arrived";
    EXPECT_EQ(second.numbers()->max_cmd_sn, sn + 7);
    // Once it arrives both are answered, and the window moves on from there.
    uint32_t early = first.command(tur(sn));
    auto pdus = first.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[0].bhs.itt(), early);
    EXPECT_EQ(pdus[1].bhs.itt(), late);
    EXPECT_EQ(pdus[1].as<iscsi::ScsiResponse>().exp_cmd_sn, sn + 2);
}

TEST(CmdSnWindow, AJoiningConnectionsLoginDoesNotOpenAClosedWindow) {
    Harness h([](ServerConfig& c) {
        c.negotiation.initial_r2t = true;
        c.limits.queue_depth = 2;
    });
    FakeInitiator& first = h.logged_in(mcs());
    // Two writes waiting for their data close the window of two.
    for (uint32_t k = 0; k < 2; ++k) {
        Command w;
        w.cdb = write10(k, 1);
        w.write = true;
        w.edtl = 512;
        first.command(w);
    }
    auto r2ts = first.drain();
    ASSERT_EQ(r2ts.size(), 2u);
    auto last = r2ts.back().as<iscsi::R2t>();
    ASSERT_EQ(last.max_cmd_sn, last.exp_cmd_sn - 1) << "the window is closed";
    // On the other reactor: the session's reactor sends the final Login Response.
    FakeInitiator& second = h.connect({.reactor = 1, .numbers = first.numbers()});
    auto joined = second.join(first, 1, mcs());
    ASSERT_TRUE(joined.ok()) << joined.reason;
    EXPECT_EQ(second.numbers()->exp_cmd_sn, last.exp_cmd_sn);
    EXPECT_EQ(second.numbers()->max_cmd_sn, last.max_cmd_sn) << "the window is still closed";
}

} // namespace
} // namespace ispace::iscsi_target::test
