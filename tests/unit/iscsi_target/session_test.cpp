// Logout, NOP-Out/NOP-In, session reinstatement and connections added to a session (MC/S).
#include "harness.hpp"

#include <algorithm>

namespace ispace::iscsi_target::test {
namespace {

Command tur(std::optional<uint32_t> cmd_sn = std::nullopt) {
    Command c;
    c.cdb = test_unit_ready();
    c.cmd_sn = cmd_sn;
    return c;
}

Command write_command(uint32_t lba, uint16_t blocks, std::vector<uint8_t> immediate = {}) {
    Command c;
    c.cdb = write10(lba, blocks);
    c.write = true;
    c.edtl = uint32_t(blocks) * block_size;
    c.immediate_data = std::move(immediate);
    return c;
}

uint32_t write_waiting_for_data(FakeInitiator& i, iscsi::R2t* r2t_out = nullptr) {
    uint32_t itt = i.command(write_command(0, 1));
    auto pdu = i.next();
    EXPECT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::r2t);
    if (pdu && r2t_out) {
        *r2t_out = pdu->as<iscsi::R2t>();
    }
    return itt;
}

// ---- Logout ------------------------------------------------------------------------------------------

TEST(Logout, CloseSessionAbortsTasksInFlightThenAnswersAndCloses) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    write_waiting_for_data(i);
    uint32_t itt = i.logout(iscsi::LogoutReason::close_session);
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "the aborted write gets no response";
    ASSERT_EQ(pdus[0].opcode(), iscsi::Opcode::logout_response);
    auto response = pdus[0].as<iscsi::LogoutResponse>();
    EXPECT_EQ(response.itt, itt);
    EXPECT_EQ(response.response, iscsi::LogoutResponseCode::closed_successfully);
    EXPECT_EQ(response.time2retain, 0) << "nothing is kept for recovery at ErrorRecoveryLevel 0";
    EXPECT_TRUE(i.closed_by_target());
}

// RFC 7143 §11.14.3: nothing may follow a Logout on its connection; an initiator that sends a write anyway
// made the target start it after the engine had been told the nexus was gone, so it waited for Data-Out
// for ever and the session never closed (found by fuzz_target). It is dropped now.
TEST(Logout, ACommandSentAfterTheLogoutIsDroppedAndTheSessionStillCloses) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    write_waiting_for_data(i);
    uint32_t itt = i.logout(iscsi::LogoutReason::close_session);
    i.command(write_command(8, 1));
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "the Logout Response only, no R2T for the late write";
    ASSERT_EQ(pdus[0].opcode(), iscsi::Opcode::logout_response) << pdus[0].describe();
    EXPECT_EQ(pdus[0].as<iscsi::LogoutResponse>().itt, itt);
    EXPECT_TRUE(i.closed_by_target());
    EXPECT_EQ(h.server().sessions().size(), 0u);
}

TEST(Logout, CloseConnectionOfTheLastConnectionClosesTheSession) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    write_waiting_for_data(i);
    i.logout(iscsi::LogoutReason::close_connection);
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u);
    EXPECT_EQ(pdus[0].as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::closed_successfully);
    EXPECT_TRUE(i.closed_by_target());
    EXPECT_EQ(h.server().sessions().size(), 0u);
}

TEST(Logout, RemoveConnectionForRecoveryIsRefusedAtErrorRecoveryLevel0) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    i.logout(iscsi::LogoutReason::remove_connection_for_recovery);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::recovery_not_supported);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(Logout, CloseConnectionOfAnUnknownCidSaysSo) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    i.logout(iscsi::LogoutReason::close_connection, uint16_t(42));
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::cid_not_found);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(Logout, WaitsForItsCmdSnLikeAnyNonImmediateRequest) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    i.numbers()->cmd_sn = sn + 1;
    i.logout(iscsi::LogoutReason::close_session);
    EXPECT_FALSE(i.next());
    i.numbers()->cmd_sn = sn;
    uint32_t first = i.nop_out(); // fills the gap (a NOP-Out is answered at once, in CmdSN order)
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[0].bhs.itt(), first);
    EXPECT_EQ(pdus[1].opcode(), iscsi::Opcode::logout_response);
}

// ---- NOP ---------------------------------------------------------------------------------------------

TEST(Nop, PingIsAnsweredWithItsDataEchoed) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    auto data = pattern(100, 40);
    uint32_t stat_sn = i.exp_stat_sn();
    uint32_t itt = i.nop_out(data);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    auto nop = pdu->as<iscsi::NopIn>();
    EXPECT_EQ(nop.itt, itt);
    EXPECT_EQ(nop.ttt, iscsi::reserved_tag);
    EXPECT_EQ(nop.stat_sn, stat_sn);
    EXPECT_EQ(pdu->data, data);
}

TEST(Nop, NopOutWithoutAnIttGetsNoAnswer) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    i.nop_reply(iscsi::reserved_tag); // ITT and TTT reserved, I=1: a bare ExpStatSN update
    EXPECT_FALSE(i.next());
    EXPECT_FALSE(i.closed_by_target());
}

TEST(Nop, IdleConnectionIsPingedAndTheAnswerKeepsItOpen) {
    Harness h([](ServerConfig& c) {
        c.limits.nop_interval = 1ms;
        c.limits.nop_timeout = 60s;
    });
    FakeInitiator& i = h.logged_in();
    std::optional<InPdu> ping;
    ASSERT_TRUE(h.run_until([&] { return (ping = i.poll()).has_value(); }));
    auto nop = ping->as<iscsi::NopIn>();
    EXPECT_EQ(nop.itt, iscsi::reserved_tag);
    EXPECT_NE(nop.ttt, iscsi::reserved_tag) << "a ping asks for an answer";
    EXPECT_EQ(nop.stat_sn, i.exp_stat_sn()) << "a ping does not advance StatSN";
    i.nop_reply(nop.ttt);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(Nop, SilentInitiatorIsDropped) {
    Harness h([](ServerConfig& c) {
        c.limits.nop_interval = 1ms;
        c.limits.nop_timeout = 1ms;
    });
    FakeInitiator& i = h.logged_in();
    ASSERT_TRUE(h.run_until([&] { return i.wire().target_closed; }));
}

// ---- Reinstatement -----------------------------------------------------------------------------------

TEST(Reinstatement, NewSessionHoldsCommandsUntilTheOldSessionIsGone) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& old_session = h.logged_in({}, {.reactor = 0});
    uint32_t old_write = write_waiting_for_data(old_session);
    (void)old_write;

    // The same InitiatorName and ISID log in again on the other reactor, which alone runs from now on:
    // the new session's commands must wait for the old session to end.
    FakeInitiator& fresh = h.connect({.reactor = 1});
    fresh.drive([&h] { h.settle_only(1); });
    auto login = fresh.login();
    ASSERT_TRUE(login.ok()) << login.reason;
    auto data = pattern(512, 41);
    Command write = write_command(0, 1, data);
    write.edtl = 512;
    uint32_t itt = fresh.command(write);

    EXPECT_FALSE(fresh.next()) << "a command of the new session ran while the old one still existed";
    EXPECT_FALSE(old_session.wire().target_closed);

    // The old session's reactor terminates it (its write aborted, its connection closed) ...
    fresh.drive([&h] { h.settle(); });
    h.settle();
    EXPECT_TRUE(old_session.closed_by_target());
    // ... and only then does the new session's write run.
    auto pdu = fresh.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->bhs.itt(), itt);
}

TEST(Reinstatement, OldSessionsLateDataNeverLands) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& old_session = h.logged_in();
    iscsi::R2t r2t;
    write_waiting_for_data(old_session, &r2t);
    FakeInitiator& fresh = h.logged_in();
    EXPECT_TRUE(old_session.closed_by_target());
    fresh.command(tur()); // the new nexus's unit attention
    fresh.drain();
    auto fresh_data = pattern(512, 42);
    fresh.command(write_command(0, 1, fresh_data));
    fresh.drain();
    // Whatever the old connection still sends goes nowhere.
    auto stale = pattern(512, 43);
    old_session.answer_r2t(r2t, stale);
    Command r;
    r.cdb = read10(0, 1);
    r.read = true;
    r.edtl = 512;
    fresh.command(r);
    auto pdus = fresh.drain();
    ASSERT_EQ(pdus.size(), 1u);
    ASSERT_EQ(pdus[0].opcode(), iscsi::Opcode::data_in);
    EXPECT_EQ(pdus[0].data, fresh_data);
}

TEST(Reinstatement, ADifferentIsidIsAnotherSession) {
    Harness h;
    FakeInitiator& a = h.logged_in();
    LoginOptions other;
    other.isid = 0x400000000009;
    FakeInitiator& b = h.logged_in(other);
    EXPECT_NE(a.numbers()->tsih, b.numbers()->tsih);
    EXPECT_FALSE(a.closed_by_target());
    EXPECT_EQ(h.server().sessions().size(), 2u);
}

// ---- MC/S --------------------------------------------------------------------------------------------

TEST(MultipleConnections, SecondConnectionJoinsWithTheSessionsTsih) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    auto result = second.join(first, 1, mcs());
    ASSERT_TRUE(result.ok()) << result.reason;
    EXPECT_EQ(result.tsih, first.numbers()->tsih);
    uint32_t itt = second.command(tur());
    auto pdu = second.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->bhs.itt(), itt);
}

TEST(MultipleConnections, JoiningAnUnknownTsihIsRefused) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = std::make_shared<SessionNumbers>(*first.numbers())});
    second.numbers()->tsih = uint16_t(first.numbers()->tsih + 100);
    LoginOptions o = mcs();
    o.tsih = second.numbers()->tsih;
    o.isid = first.isid();
    o.cid = 1;
    auto result = second.login(o);
    EXPECT_FALSE(result.ok());
    EXPECT_EQ(result.status, iscsi::LoginStatus::session_does_not_exist);
    EXPECT_TRUE(second.closed_by_target());
}

TEST(MultipleConnections, JoiningWithACidInUseIsRefused) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    auto result = second.join(first, first.cid(), mcs());
    EXPECT_FALSE(result.ok());
    EXPECT_EQ(result.status, iscsi::LoginStatus::cannot_include_in_session);
}

TEST(MultipleConnections, ConnectionsShareOneCmdSnWindow) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    uint32_t sn = first.numbers()->cmd_sn;
    uint32_t later = second.command(tur(sn + 1));
    EXPECT_FALSE(second.next()) << "CmdSN " << sn << " is due first, on any connection";
    uint32_t earlier = first.command(tur(sn));
    auto on_first = first.drain();
    auto on_second = second.drain();
    ASSERT_EQ(on_first.size(), 1u);
    ASSERT_EQ(on_second.size(), 1u);
    EXPECT_EQ(on_first[0].bhs.itt(), earlier) << "each response on its command's connection";
    EXPECT_EQ(on_second[0].bhs.itt(), later);
    EXPECT_EQ(on_second[0].as<iscsi::ScsiResponse>().exp_cmd_sn, sn + 2);
}

TEST(MultipleConnections, ConnectionAcceptedOnAnotherReactorIsHandedToTheSessionsReactor) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs(), {.reactor = 0});
    FakeInitiator& second = h.connect({.reactor = 1, .numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    // From now on reactor 0 alone serves it.
    uint32_t itt = second.command(tur());
    h.settle_only(0);
    auto pdu = second.poll();
    ASSERT_TRUE(pdu) << "the joined connection is not served by the session's reactor";
    EXPECT_EQ(pdu->bhs.itt(), itt);
}

TEST(MultipleConnections, DataOutMustComeOnTheCommandsConnection) {
    Harness h([](ServerConfig& c) { c.negotiation.initial_r2t = true; });
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    iscsi::R2t r2t;
    write_waiting_for_data(first, &r2t);
    auto data = pattern(512, 44);
    second.answer_r2t(r2t, data);
    auto pdu = second.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::reject) << "connection allegiance (RFC 7143 §10.7)";
}

TEST(MultipleConnections, LogoutOfAnotherConnectionClosesItAndKeepsTheSession) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    first.logout(iscsi::LogoutReason::close_connection, uint16_t(1));
    auto pdu = first.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::closed_successfully);
    EXPECT_TRUE(second.closed_by_target());
    EXPECT_FALSE(first.closed_by_target());
    first.command(tur());
    EXPECT_TRUE(first.next());
}

// What the initiator's Session::remove_connection() relies on: one connection of a live session logs
// itself out ("close the connection", RFC 7143 §11.14) while another has a write half done; that write
// completes, the session lives on, and a connection may join it again later with the freed CID.
TEST(MultipleConnections, ConnectionLogsItselfOutWhileAnotherHasCommandsInFlight) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    iscsi::R2t r2t;
    uint32_t write_itt = write_waiting_for_data(first, &r2t);
    uint32_t tur_itt = first.command(tur());
    second.logout(iscsi::LogoutReason::close_connection);
    auto pdu = second.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::logout_response);
    EXPECT_EQ(pdu->as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::closed_successfully);
    EXPECT_TRUE(second.closed_by_target());
    EXPECT_FALSE(first.closed_by_target());
    auto data = pattern(block_size, 45);
    first.answer_r2t(r2t, data);
    std::vector<uint32_t> answered;
    for (const auto& p : first.drain()) {
        ASSERT_EQ(p.opcode(), iscsi::Opcode::scsi_response);
        EXPECT_EQ(p.as<iscsi::ScsiResponse>().status, 0);
        answered.push_back(p.bhs.itt());
    }
    std::sort(answered.begin(), answered.end());
    std::vector<uint32_t> expected{write_itt, tur_itt};
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(answered, expected) << "the other connection's commands complete";
    EXPECT_EQ(h.server().sessions().size(), 1u) << "the session lives on";
    FakeInitiator& third = h.connect({.numbers = first.numbers()});
    auto joined = third.join(first, 1, mcs());
    ASSERT_TRUE(joined.ok()) << "the freed CID may join again: " << joined.reason;
    uint32_t itt = third.command(tur());
    auto answer = third.next();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->bhs.itt(), itt);
}

TEST(MultipleConnections, FailedConnectionEndsTheSessionAtErrorRecoveryLevel0) {
    Harness h;
    FakeInitiator& first = h.logged_in(mcs());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    ASSERT_TRUE(second.join(first, 1, mcs()).ok());
    second.close(); // vanishes without a Logout
    EXPECT_TRUE(first.closed_by_target()) << "no connection recovery at ErrorRecoveryLevel 0";
    EXPECT_EQ(h.server().sessions().size(), 0u);
}

} // namespace
} // namespace ispace::iscsi_target::test
