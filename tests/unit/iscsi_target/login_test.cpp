// Login (RFC 7143 §6.3, §11.12-11.13): negotiation through the target's LoginPolicy, refusals and
// their status codes, and discovery sessions with SendTargets (§6.2, Appendix C).
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

const iscsi::ChapCredentials target_chap{"ispace-test", "a-secret-of-16-chars"};

LoginOptions discovery() {
    LoginOptions o;
    o.session_type = iscsi::SessionType::discovery;
    o.target_name.clear();
    return o;
}

AclEntry allow(std::string initiator, std::string network = {}) {
    AclEntry entry;
    entry.initiator = std::move(initiator);
    if (!network.empty()) {
        entry.networks.push_back(*parse_cidr(network));
    }
    return entry;
}

// The keys of a Text Response sequence (one PDU here).
iscsi::KeyValueList text_keys(const InPdu& pdu) {
    auto keys = iscsi::parse_text(pdu.data);
    EXPECT_TRUE(keys) << (keys ? "" : keys.error().message);
    return keys ? *keys : iscsi::KeyValueList{};
}

std::vector<std::string> values_of(const iscsi::KeyValueList& keys, std::string_view key) {
    std::vector<std::string> out;
    for (auto& kv : keys) {
        if (kv.key == key) {
            out.push_back(kv.value);
        }
    }
    return out;
}

TEST(Login, NegotiatesTheLesserOfBothOffers) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.negotiation.max_burst_length = 16384;
    o.negotiation.first_burst_length = 8192;
    o.negotiation.max_outstanding_r2t = 3;
    o.negotiation.initial_r2t = false;
    auto result = i.login(o);
    ASSERT_TRUE(result.ok()) << result.reason;
    EXPECT_EQ(result.session.max_burst_length, 16384u);
    EXPECT_EQ(result.session.first_burst_length, 8192u);
    EXPECT_EQ(result.session.max_outstanding_r2t, 3);
    EXPECT_FALSE(result.session.initial_r2t) << "InitialR2T is an OR: both said No";
    EXPECT_EQ(result.session.error_recovery_level, 0);
    EXPECT_EQ(result.session.target_portal_group_tag, 1);
    EXPECT_NE(result.tsih, 0);
}

TEST(Login, DigestsNegotiatedAreUsedInBothDirections) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.negotiation.header_digests = {iscsi::Digest::crc32c};
    o.negotiation.data_digests = {iscsi::Digest::crc32c};
    auto result = i.login(o);
    ASSERT_TRUE(result.ok()) << result.reason;
    ASSERT_EQ(result.connection.header_digest, iscsi::Digest::crc32c);
    ASSERT_EQ(result.connection.data_digest, iscsi::Digest::crc32c);
    auto data = pattern(1024, 50);
    Command w;
    w.cdb = write10(0, 2);
    w.write = true;
    w.edtl = 1024;
    w.immediate_data = data;
    i.command(w); // unit attention
    i.drain();
    i.command(w);
    auto done = i.next();
    ASSERT_TRUE(done);
    EXPECT_EQ(done->as<iscsi::ScsiResponse>().status, 0);
    Command r;
    r.cdb = read10(0, 2);
    r.read = true;
    r.edtl = 1024;
    i.command(r);
    auto din = i.next();
    ASSERT_TRUE(din);
    EXPECT_EQ(din->data, data);
}

TEST(Login, UnknownTargetIsRefused) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.target_name = "iqn.2026-01.org.ispace.test:nobody";
    auto result = i.login(o);
    EXPECT_EQ(result.status, iscsi::LoginStatus::target_not_found);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, InitiatorOutsideTheAclIsRefused) {
    Harness h(
        [](ServerConfig& c) { c.targets[0].acl = {allow("iqn.2026-01.org.ispace.test:someone-else")}; });
    FakeInitiator& i = h.connect();
    auto result = i.login();
    EXPECT_EQ(result.status, iscsi::LoginStatus::authorization_failure);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, AclEntryLimitedToANetworkRefusesOtherAddresses) {
    Harness h([](ServerConfig& c) { c.targets[0].acl = {allow(initiator_iqn, "10.1.0.0/16")}; });
    FakeInitiator& outside = h.connect({.peer = "127.0.0.1:50000"});
    EXPECT_EQ(outside.login().status, iscsi::LoginStatus::authorization_failure);
    FakeInitiator& inside = h.connect({.peer = "10.1.2.3:50000"});
    auto result = inside.login();
    EXPECT_TRUE(result.ok()) << result.reason;
}

TEST(Login, ChapRequiredRefusesAnInitiatorOfferingNone) {
    Harness h([](ServerConfig& c) { c.targets[0].chap = target_chap; });
    FakeInitiator& i = h.connect();
    auto result = i.login();
    EXPECT_EQ(result.status, iscsi::LoginStatus::authentication_failure);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, ChapWithTheRightSecretLogsIn) {
    Harness h([](ServerConfig& c) { c.targets[0].chap = target_chap; });
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.chap = target_chap;
    auto result = i.login(o);
    EXPECT_TRUE(result.ok()) << result.reason;
}

TEST(Login, ChapWithAWrongSecretIsRefused) {
    Harness h([](ServerConfig& c) { c.targets[0].chap = target_chap; });
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.chap = iscsi::ChapCredentials{target_chap.user, "not-the-right-secret"};
    auto result = i.login(o);
    EXPECT_EQ(result.status, iscsi::LoginStatus::authentication_failure);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, MissingInitiatorNameIsAnInitiatorError) {
    Harness h;
    FakeInitiator& i = h.connect();
    iscsi::LoginRequest request;
    request.transit = true;
    request.csg = iscsi::LoginStage::operational;
    request.nsg = iscsi::LoginStage::full_feature;
    request.isid = iscsi::isid_from_u64(0x400000000001);
    request.itt = 1;
    i.send_login(request, {{"SessionType", "Normal"}, {"TargetName", target_iqn}});
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    auto response = pdu->as<iscsi::LoginResponse>();
    EXPECT_EQ(response.status(), iscsi::LoginStatus::missing_parameter);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, MalformedValueIsAnsweredRejectAndTheLoginGoesOn) {
    // RFC 7143 §6.2: a value the responder cannot accept is answered key=Reject; the originator decides.
    Harness h;
    FakeInitiator& i = h.connect();
    iscsi::LoginRequest request;
    request.transit = true;
    request.csg = iscsi::LoginStage::operational;
    request.nsg = iscsi::LoginStage::full_feature;
    request.isid = iscsi::isid_from_u64(0x400000000001);
    request.itt = 1;
    i.send_login(request, {{"InitiatorName", initiator_iqn},
                           {"SessionType", "Normal"},
                           {"TargetName", target_iqn},
                           {"MaxBurstLength", "lots"}});
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->as<iscsi::LoginResponse>().status(), iscsi::LoginStatus::success);
    EXPECT_EQ(values_of(text_keys(*pdu), "MaxBurstLength"), std::vector<std::string>{"Reject"});
}

TEST(Login, PduOtherThanLoginBeforeFullFeaturePhaseEndsTheLogin) {
    Harness h;
    FakeInitiator& i = h.connect();
    i.nop_out();
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::login_response);
    EXPECT_EQ(pdu->as<iscsi::LoginResponse>().status(), iscsi::LoginStatus::invalid_during_login);
    EXPECT_TRUE(i.closed_by_target());
}

TEST(Login, UnknownKeyIsAnsweredNotUnderstood) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.extra_keys = {{"X-org.ispace.test.Flavour", "vanilla"}};
    auto result = i.login(o);
    ASSERT_TRUE(result.ok()) << result.reason;
    ASSERT_EQ(result.extra_answers.size(), 1u);
    EXPECT_EQ(result.extra_answers[0].value, "NotUnderstood");
}

TEST(Discovery, SendTargetsListsTheTargetAndItsPortal) {
    Harness h;
    FakeInitiator& i = h.connect();
    ASSERT_TRUE(i.login(discovery()).ok());
    i.text({{"SendTargets", "All"}});
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::text_response);
    auto keys = text_keys(*pdu);
    EXPECT_EQ(values_of(keys, "TargetName"), std::vector<std::string>{target_iqn});
    auto addresses = values_of(keys, "TargetAddress");
    ASSERT_EQ(addresses.size(), 1u);
    EXPECT_TRUE(addresses[0].starts_with("127.0.0.1:")) << addresses[0];
    EXPECT_TRUE(addresses[0].ends_with(",1")) << "portal group tag";
}

TEST(Discovery, SendTargetsHidesTargetsTheAclRefuses) {
    Harness h([](ServerConfig& c) {
        TargetConfig hidden = c.targets[0];
        hidden.iqn = "iqn.2026-01.org.ispace.test:hidden";
        hidden.acl = {allow("iqn.2026-01.org.ispace.test:someone-else")};
        c.targets.push_back(hidden);
    });
    FakeInitiator& i = h.connect();
    ASSERT_TRUE(i.login(discovery()).ok());
    i.text({{"SendTargets", "All"}});
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(values_of(text_keys(*pdu), "TargetName"), std::vector<std::string>{target_iqn});
}

TEST(Discovery, ScsiCommandIsRejected) {
    Harness h;
    FakeInitiator& i = h.connect();
    ASSERT_TRUE(i.login(discovery()).ok());
    Command c;
    c.cdb = test_unit_ready();
    i.command(c);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::reject);
    EXPECT_EQ(pdu->as<iscsi::Reject>().reason, iscsi::RejectReason::protocol_error);
}

TEST(Discovery, NeedsChapWhenDiscoveryChapIsConfigured) {
    Harness h([](ServerConfig& c) { c.discovery_chap = target_chap; });
    FakeInitiator& refused = h.connect();
    EXPECT_EQ(refused.login(discovery()).status, iscsi::LoginStatus::authentication_failure);
    FakeInitiator& admitted = h.connect();
    LoginOptions o = discovery();
    o.chap = target_chap;
    EXPECT_TRUE(admitted.login(o).ok());
}

} // namespace
} // namespace ispace::iscsi_target::test
