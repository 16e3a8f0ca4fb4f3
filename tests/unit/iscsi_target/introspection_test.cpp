// The front end as the control socket sees it: sessions described on their reactors, closed and
// renegotiated (AsyncEvent 4 and the Text exchange that follows), run-time defaults and per-target
// portals for new logins, and the counters the metrics read.
#include "harness.hpp"
#include "iscsi/param_settings.hpp"

#include <future>

namespace ispace::iscsi_target::test {
namespace {

// Runs `call` (a blocking Server method) on another thread while the test thread drives the reactors,
// as the control thread and the reactors do in ispaced.
template <typename F> auto while_reactors_run(Harness& h, F call) {
    auto future = std::async(std::launch::async, std::move(call));
    EXPECT_TRUE(h.run_until([&] { return future.wait_for(0ms) == std::future_status::ready; }, 20s));
    return future.get();
}

std::string value_of(const iscsi::KeyValueList& keys, std::string_view key) {
    for (const auto& kv : keys) {
        if (kv.key == key) {
            return kv.value;
        }
    }
    return "(absent)";
}

TEST(Introspection, SessionsAreDescribedWithEveryNegotiatedKeyAndTheirConnections) {
    Harness h;
    h.logged_in({}, {.reactor = 0, .peer = "127.0.0.1:50001"});
    LoginOptions second;
    second.isid = 0x400000000002;
    h.logged_in(second, {.reactor = 1, .peer = "127.0.0.1:50002"});
    auto sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 2u);
    const SessionInfo& s = sessions[0];
    EXPECT_NE(s.tsih, 0);
    EXPECT_EQ(s.initiator, initiator_iqn);
    EXPECT_EQ(s.target, target_iqn);
    EXPECT_EQ(s.isid, "400000000001");
    EXPECT_NE(value_of(s.keys, "MaxBurstLength"), "(absent)");
    EXPECT_EQ(value_of(s.keys, "ImmediateData"), "Yes");
    ASSERT_EQ(s.connections.size(), 1u);
    EXPECT_EQ(s.connections[0].peer, "127.0.0.1:50001");
    EXPECT_EQ(value_of(s.connections[0].keys, "HeaderDigest"), "None");
    EXPECT_EQ(value_of(s.connections[0].keys, "MaxRecvDataSegmentLength"), "262144");
    EXPECT_EQ(sessions[1].connections[0].peer, "127.0.0.1:50002"); // the one on the other reactor
}

TEST(Introspection, ClosingASessionClosesItsConnections) {
    Harness h;
    FakeInitiator& initiator = h.logged_in();
    auto sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 1u);
    auto closed =
        while_reactors_run(h, [&] { return h.server().close_session(sessions[0].tsih, "test", 5s); });
    EXPECT_TRUE(closed) << closed.error().message;
    EXPECT_TRUE(initiator.closed_by_target());
    auto unknown = while_reactors_run(h, [&] { return h.server().close_session(0x7777, "test", 1s); });
    ASSERT_FALSE(unknown);
    EXPECT_NE(unknown.error().message.find("no session has TSIH"), std::string::npos);
}

TEST(Introspection, TheTargetAsksForANegotiationAndTheTextExchangeDeclaresTheNewValue) {
    Harness h;
    FakeInitiator& initiator = h.logged_in();
    auto sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 1u);
    uint16_t tsih = sessions[0].tsih;
    auto outcome = std::async(std::launch::async, [&] {
        return h.server().renegotiate(tsih, {{"MaxRecvDataSegmentLength", "16384"}}, 5s);
    });
    // The Asynchronous Message, AsyncEvent 4, with the deadline in Parameter3.
    std::optional<InPdu> async;
    ASSERT_TRUE(h.run_until([&] {
        async = initiator.poll();
        return async.has_value();
    }));
    ASSERT_EQ(async->opcode(), iscsi::Opcode::async_message);
    auto message = async->as<iscsi::AsyncMessage>();
    EXPECT_EQ(message.event, iscsi::AsyncEvent::negotiation_request);
    EXPECT_EQ(message.parameter3, 5);
    // The initiator answers with an empty Text Request; the answer declares the new value.
    initiator.text({});
    auto response = initiator.next();
    ASSERT_TRUE(response);
    ASSERT_EQ(response->opcode(), iscsi::Opcode::text_response);
    auto pairs = iscsi::parse_text(response->data);
    ASSERT_TRUE(pairs);
    EXPECT_EQ(value_of(*pairs, "MaxRecvDataSegmentLength"), "16384");
    EXPECT_TRUE(response->as<iscsi::TextResponse>().final_bit);
    ASSERT_TRUE(h.run_until([&] { return outcome.wait_for(0ms) == std::future_status::ready; }));
    auto result = outcome.get();
    EXPECT_TRUE(result) << result.error().message;
    sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 1u);
    EXPECT_EQ(value_of(sessions[0].connections[0].keys, "MaxRecvDataSegmentLength"), "16384");
    // The session goes on.
    Command tur;
    tur.cdb = test_unit_ready();
    initiator.command(tur);
    auto answer = initiator.next();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->opcode(), iscsi::Opcode::scsi_response);
}

TEST(Introspection, AnInitiatorThatDoesNotAnswerIsReportedAndKeepsItsSession) {
    Harness h;
    FakeInitiator& initiator = h.logged_in();
    auto sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 1u);
    auto result = while_reactors_run(h, [&] {
        return h.server().renegotiate(sessions[0].tsih, {{"MaxRecvDataSegmentLength", "16384"}}, 1s);
    });
    ASSERT_FALSE(result);
    EXPECT_NE(result.error().message.find("no Text Request within 1 s"), std::string::npos)
        << result.error().message;
    EXPECT_FALSE(initiator.closed_by_target());
}

TEST(Introspection, KeysNoStandardLetsChangeInASessionAreRefusedWithTheRule) {
    Harness h;
    h.logged_in();
    auto sessions = while_reactors_run(h, [&] { return h.server().describe_sessions(5s); });
    ASSERT_EQ(sessions.size(), 1u);
    auto result = h.server().renegotiate(sessions[0].tsih, {{"ImmediateData", "No"}}, 1s);
    ASSERT_FALSE(result);
    EXPECT_NE(result.error().message.find("Use: LO"), std::string::npos) << result.error().message;
}

TEST(Introspection, RunTimeDefaultsApplyToTheNextLogin) {
    Harness h;
    LiveSettings live = *h.server().live();
    ASSERT_TRUE(iscsi::set_negotiation_key(live.negotiation, "ImmediateData", "No"));
    h.server().set_live(live);
    FakeInitiator& initiator = h.connect();
    LoginResult result = initiator.login();
    ASSERT_TRUE(result.ok());
    EXPECT_FALSE(result.session.immediate_data);
    // A target's own defaults win over the server's.
    auto target = h.server().find_target(target_iqn);
    TargetConfig config = *target->config();
    config.negotiation = live.negotiation;
    ASSERT_TRUE(iscsi::set_negotiation_key(*config.negotiation, "FirstBurstLength", "65536"));
    ASSERT_TRUE(iscsi::set_negotiation_key(*config.negotiation, "MaxBurstLength", "65536"));
    target->set_config(config);
    LoginOptions second;
    second.isid = 0x400000000002;
    LoginResult again = h.connect().login(second);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again.session.max_burst_length, 65536u);
}

TEST(Introspection, APortalOfOtherTargetsDoesNotServeThisOne) {
    Harness h([](ServerConfig& config) { config.portals.push_back({"127.0.0.2:0", 2, false}); });
    LoginResult refused = h.connect({.tpgt = 2}).login();
    EXPECT_EQ(refused.status, iscsi::LoginStatus::target_not_found);
    auto target = h.server().find_target(target_iqn);
    TargetConfig config = *target->config();
    config.portals = {"127.0.0.2:0"};
    target->set_config(config);
    EXPECT_TRUE(h.connect({.tpgt = 2}).login().ok());
    ServerStatistics stats = h.server().statistics();
    EXPECT_EQ(stats.login_failures["target_not_found"], 1u);
    EXPECT_EQ(stats.targets[target_iqn].sessions, 1u);
    EXPECT_EQ(stats.targets[target_iqn].connections, 1u);
}

TEST(Introspection, RejectedPdusAreCountedByReason) {
    Harness h;
    FakeInitiator& initiator = h.logged_in();
    iscsi::Bhs bhs;
    bhs.bytes[0] = 0x1f; // an opcode nobody defined
    initiator.send(bhs);
    initiator.drain();
    EXPECT_EQ(h.server().statistics().rejected_pdus["command_not_supported"], 1u);
}

} // namespace
} // namespace ispace::iscsi_target::test
