// Login state machines (RFC 7143 §6.3, §11.12, §11.13): a TargetLogin and an InitiatorLogin talking
// through encoded PDUs, and hand-made requests for every error the target must answer.
#include "iscsi/login.hpp"
#include "iscsi/pdu.hpp"

#include <gtest/gtest.h>

#include <map>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

constexpr const char* initiator_iqn = "iqn.2024-01.org.example:initiator";
constexpr const char* target_iqn = "iqn.2024-01.org.example:disk1";
constexpr Isid test_isid{0x40, 0x00, 0x01, 0x37, 0x00, 0x01};

// A challenge/response method shaped like CHAP, to prove the Authenticator interface carries one:
// the target sends a challenge, the initiator answers it with a shared secret.
class FakeChap : public Authenticator {
public:
    FakeChap(bool target, std::string secret) : _target(target), _secret(std::move(secret)) {}
    std::string_view method() const override { return auth_method_chap; }
    bool owns_key(std::string_view key) const override {
        return key == "CHAP_A" || key == "CHAP_C" || key == "CHAP_R" || key == "CHAP_N" || key == "CHAP_I";
    }
    AuthResult step(const KeyValueList& in, KeyValueList& out) override {
        ++steps;
        if (_target) {
            if (find_value(in, "CHAP_A")) {
                out.push_back({"CHAP_A", "5"});
                out.push_back({"CHAP_I", "1"});
                out.push_back({"CHAP_C", "0x0102030405"});
                return {AuthStatus::in_progress, {}, {}};
            }
            if (const std::string* r = find_value(in, "CHAP_R")) {
                if (*r == "0x" + _secret) {
                    return {AuthStatus::done, {}, {}};
                }
                return {AuthStatus::failed, LoginStatus::authentication_failure, "CHAP_R does not match"};
            }
            return {AuthStatus::in_progress, {}, {}};
        }
        if (in.empty()) {
            out.push_back({"CHAP_A", "5"});
            return {AuthStatus::in_progress, {}, {}};
        }
        if (find_value(in, "CHAP_C")) {
            out.push_back({"CHAP_N", "user"});
            out.push_back({"CHAP_R", "0x" + _secret});
            return {AuthStatus::done, {}, {}};
        }
        return {AuthStatus::in_progress, {}, {}};
    }
    int steps = 0;

private:
    bool _target;
    std::string _secret;
};

class FakePolicy : public LoginPolicy {
public:
    FakePolicy() {
        LoginTargetInfo info;
        info.target_portal_group_tag = 7;
        info.negotiation.alias = "disk one";
        targets[target_iqn] = info;
        discovery.target_portal_group_tag = 7;
    }

    LoginTargetInfo start(const LoginIdentity& identity) override {
        started.push_back(identity);
        if (start_status != LoginStatus::success) {
            LoginTargetInfo info;
            info.status = start_status;
            info.redirect_address = redirect_address;
            return info;
        }
        LoginTargetInfo info;
        if (identity.session_type == SessionType::discovery && identity.target_name.empty()) {
            info = discovery;
        } else {
            auto it = targets.find(identity.target_name);
            if (it == targets.end()) {
                info.status = LoginStatus::target_not_found;
                return info;
            }
            info = it->second;
        }
        if (!identity.leading()) {
            if (!existing_session) {
                info.status = LoginStatus::session_does_not_exist;
                return info;
            }
            info.session = existing_session;
        }
        return info;
    }
    std::unique_ptr<Authenticator> authenticator(std::string_view method, const LoginIdentity&) override {
        if (method == auth_method_chap) {
            return std::make_unique<FakeChap>(true, "secret");
        }
        return nullptr;
    }
    LoginAdmission admit(const LoginIdentity& identity, const SessionParams& session,
                         const ConnectionParams&) override {
        admitted.push_back(identity);
        admitted_session = session;
        LoginAdmission a;
        a.status = admit_status;
        a.tsih = identity.leading() ? admit_tsih : identity.tsih;
        a.exp_cmd_sn = identity.cmd_sn;
        a.max_cmd_sn = identity.cmd_sn + 63;
        return a;
    }

    std::map<std::string, LoginTargetInfo> targets;
    LoginTargetInfo discovery;
    LoginStatus start_status = LoginStatus::success;
    std::string redirect_address;
    LoginStatus admit_status = LoginStatus::success;
    uint16_t admit_tsih = 0x1234;
    std::optional<SessionParams> existing_session;
    std::vector<LoginIdentity> started;
    std::vector<LoginIdentity> admitted;
    SessionParams admitted_session;
};

// Every PDU crosses "the wire": encoded to a BHS and decoded again, as the connection will do.
LoginRequest over_wire(const LoginRequestPdu& pdu) {
    Bhs bhs;
    pdu.header.encode(bhs);
    EXPECT_EQ(bhs.data_segment_length(), pdu.data.size());
    auto decoded = LoginRequest::decode(bhs);
    EXPECT_TRUE(decoded.ok()) << (decoded.ok() ? "" : decoded.error().message);
    return decoded.ok() ? *decoded : pdu.header;
}

LoginResponse over_wire(const LoginResponsePdu& pdu) {
    Bhs bhs;
    pdu.header.encode(bhs);
    EXPECT_EQ(bhs.data_segment_length(), pdu.data.size());
    auto decoded = LoginResponse::decode(bhs);
    EXPECT_TRUE(decoded.ok()) << (decoded.ok() ? "" : decoded.error().message);
    return decoded.ok() ? *decoded : pdu.header;
}

InitiatorLoginConfig initiator_config() {
    InitiatorLoginConfig c;
    c.initiator_name = initiator_iqn;
    c.target_name = target_iqn;
    c.isid = test_isid;
    c.cid = 1;
    c.cmd_sn = 1000;
    c.itt = 0x77;
    c.negotiation.alias = "host one";
    return c;
}

struct Exchange {
    size_t requests = 0;
    size_t continued_requests = 0;
    size_t continued_responses = 0;
    std::vector<LoginResponse> responses;
};

// Runs a whole login between the two machines; returns what crossed.
Exchange converse(InitiatorLogin& initiator, TargetLogin& target) {
    Exchange x;
    auto first = initiator.start();
    EXPECT_TRUE(first.ok()) << (first.ok() ? "" : first.error().message);
    if (!first.ok()) {
        return x;
    }
    std::optional<LoginRequestPdu> request = std::move(*first);
    while (request && x.requests < 200) {
        ++x.requests;
        x.continued_requests += request->header.continue_bit ? 1 : 0;
        EXPECT_LE(request->data.size(), 8192u);
        LoginResponsePdu response = target.receive(over_wire(*request), request->data);
        EXPECT_LE(response.data.size(), 8192u);
        x.continued_responses += response.header.continue_bit ? 1 : 0;
        x.responses.push_back(response.header);
        request = initiator.receive(over_wire(response), response.data);
    }
    return x;
}

// A hand-made request to the target.
LoginRequestPdu request(LoginStage csg, bool transit, LoginStage nsg, const KeyValueList& keys) {
    LoginRequestPdu pdu;
    pdu.header.csg = csg;
    pdu.header.transit = transit;
    pdu.header.nsg = transit ? nsg : LoginStage::security;
    pdu.header.isid = test_isid;
    pdu.header.itt = 5;
    pdu.header.cid = 1;
    pdu.header.cmd_sn = 10;
    pdu.data = encode_text(keys);
    pdu.header.data_segment_length = uint32_t(pdu.data.size());
    return pdu;
}

KeyValueList names(bool with_target = true) {
    KeyValueList keys{{"InitiatorName", initiator_iqn}};
    if (with_target) {
        keys.push_back({"TargetName", target_iqn});
    }
    return keys;
}

KeyValueList text_of(const LoginResponsePdu& pdu) {
    auto pairs = parse_text(pdu.data);
    EXPECT_TRUE(pairs.ok());
    return pairs.ok() ? *pairs : KeyValueList{};
}

LoginResponsePdu send(TargetLogin& target, const LoginRequestPdu& pdu) {
    return target.receive(pdu.header, pdu.data);
}

} // namespace

// ---- Initiator and target machines talking to each other ----

TEST(LoginRoundTrip, NormalSession) {
    FakePolicy policy;
    TargetLoginSettings settings;
    settings.initial_stat_sn = 500;
    TargetLogin target(policy, settings);
    InitiatorLoginConfig ic = initiator_config();
    ic.negotiation.max_recv_data_segment_length = 131072;
    ic.negotiation.header_digests = {Digest::crc32c, Digest::none};
    policy.targets[target_iqn].negotiation.header_digests = {Digest::none, Digest::crc32c};
    policy.targets[target_iqn].negotiation.max_recv_data_segment_length = 65536;
    policy.targets[target_iqn].negotiation.max_burst_length = 524288;
    InitiatorLogin initiator(ic);
    Exchange x = converse(initiator, target);

    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(x.requests, 1u); // operational stage only, everything in one exchange
    EXPECT_EQ(target.tsih(), 0x1234);
    EXPECT_EQ(initiator.tsih(), 0x1234);
    EXPECT_EQ(initiator.stat_sn(), 500u);
    EXPECT_EQ(target.last_stat_sn(), 500u);
    EXPECT_EQ(initiator.exp_cmd_sn(), 1000u);
    EXPECT_EQ(initiator.max_cmd_sn(), 1063u);

    const LoginIdentity& id = target.identity();
    EXPECT_EQ(id.initiator_name, initiator_iqn);
    EXPECT_EQ(id.initiator_alias, "host one");
    EXPECT_EQ(id.target_name, target_iqn);
    EXPECT_EQ(id.isid, test_isid);
    EXPECT_EQ(id.cid, 1);
    EXPECT_EQ(id.tsih, 0);
    EXPECT_EQ(id.session_type, SessionType::normal);
    ASSERT_EQ(policy.admitted.size(), 1u);

    const SessionParams& ts = target.session_params();
    const SessionParams& is = initiator.session_params();
    EXPECT_EQ(ts.max_burst_length, 262144u); // initiator's default offer is below the target's limit
    EXPECT_EQ(is.max_burst_length, ts.max_burst_length);
    EXPECT_EQ(is.first_burst_length, ts.first_burst_length);
    EXPECT_EQ(is.initial_r2t, ts.initial_r2t);
    EXPECT_EQ(is.immediate_data, ts.immediate_data);
    EXPECT_EQ(is.error_recovery_level, 0);
    EXPECT_EQ(is.target_portal_group_tag, 7);
    EXPECT_EQ(is.target_alias, "disk one");
    EXPECT_EQ(ts.initiator_alias, "host one");
    EXPECT_EQ(ts.target_portal_group_tag, 7);
    EXPECT_EQ(initiator.connection_params().header_digest, Digest::crc32c);
    EXPECT_EQ(target.connection_params().header_digest, Digest::crc32c);
    EXPECT_EQ(target.connection_params().max_recv_data_segment_length, 65536u);
    EXPECT_EQ(target.connection_params().max_send_data_segment_length, 131072u);
    EXPECT_EQ(initiator.connection_params().max_recv_data_segment_length, 131072u);
    EXPECT_EQ(initiator.connection_params().max_send_data_segment_length, 65536u);
}

// iSCSIProtocolLevel (RFC 7143 §13.24) starts with a lower-case letter; the text parser once refused it.
TEST(LoginRoundTrip, ProtocolLevelIsNegotiated) {
    FakePolicy policy;
    policy.targets[target_iqn].negotiation.protocol_level = 2;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.negotiation.protocol_level = 2;
    InitiatorLogin initiator(ic);
    converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(target.session_params().protocol_level, 2);
    EXPECT_EQ(initiator.session_params().protocol_level, 2);
}

TEST(LoginRoundTrip, DiscoverySession) {
    FakePolicy policy;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.session_type = SessionType::discovery;
    ic.target_name.clear();
    InitiatorLogin initiator(ic);
    auto first = initiator.start();
    ASSERT_TRUE(first.ok());
    auto keys = parse_text(first->data);
    ASSERT_TRUE(keys.ok());
    EXPECT_EQ(*find_value(*keys, "SessionType"), "Discovery");
    EXPECT_EQ(find_value(*keys, "TargetName"), nullptr);
    EXPECT_EQ(find_value(*keys, "MaxBurstLength"), nullptr); // irrelevant keys are not offered

    LoginResponsePdu response = send(target, *first);
    EXPECT_EQ(find_value(text_of(response), "TargetPortalGroupTag"), nullptr); // no TargetName given
    auto next = initiator.receive(over_wire(response), response.data);
    EXPECT_FALSE(next.has_value());
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(target.identity().session_type, SessionType::discovery);
    EXPECT_EQ(target.session_params().session_type, SessionType::discovery);
}

TEST(LoginRoundTrip, SecurityStageWithAuthMethodNone) {
    FakePolicy policy;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.auth_methods = {"CHAP", "None"};
    ic.make_authenticator = [](std::string_view) { return std::make_unique<FakeChap>(false, "secret"); };
    InitiatorLogin initiator(ic);
    Exchange x = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    ASSERT_EQ(x.responses.size(), 2u);
    EXPECT_EQ(x.responses[0].csg, LoginStage::security); // target accepts only None: None is chosen
    EXPECT_TRUE(x.responses[0].transit);
    EXPECT_EQ(x.responses[0].nsg, LoginStage::operational);
    EXPECT_EQ(x.responses[0].tsih, 0); // the TSIH only comes in the final response
    EXPECT_EQ(x.responses[1].csg, LoginStage::operational);
    EXPECT_EQ(x.responses[1].nsg, LoginStage::full_feature);
    EXPECT_EQ(x.responses[1].stat_sn, x.responses[0].stat_sn + 1);
}

TEST(LoginRoundTrip, ChallengeResponseAuthentication) {
    FakePolicy policy;
    policy.targets[target_iqn].auth_methods = {"CHAP"};
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.auth_methods = {"CHAP"};
    ic.make_authenticator = [](std::string_view) { return std::make_unique<FakeChap>(false, "secret"); };
    InitiatorLogin initiator(ic);
    Exchange x = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    // AuthMethod, CHAP_A -> challenge, CHAP_R -> leave security, operational.
    EXPECT_EQ(x.requests, 4u);
    EXPECT_FALSE(x.responses[0].transit); // authentication not done: stay in the security stage
    EXPECT_FALSE(x.responses[1].transit);
    EXPECT_TRUE(x.responses[2].transit);
}

TEST(LoginRoundTrip, ChallengeResponseWithWrongSecretIsAuthenticationFailure) {
    FakePolicy policy;
    policy.targets[target_iqn].auth_methods = {"CHAP"};
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.auth_methods = {"CHAP"};
    ic.make_authenticator = [](std::string_view) { return std::make_unique<FakeChap>(false, "wrong"); };
    InitiatorLogin initiator(ic);
    converse(initiator, target);
    EXPECT_EQ(target.state(), LoginState::failed);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_EQ(initiator.state(), LoginState::failed);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
}

TEST(LoginRoundTrip, AuthenticationRequiredButInitiatorOffersOnlyNone) {
    FakePolicy policy;
    policy.targets[target_iqn].auth_methods = {"CHAP"};
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config()); // starts in the operational stage
    converse(initiator, target);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);

    TargetLogin target2(policy);
    auto r =
        send(target2,
             request(LoginStage::security, true, LoginStage::operational,
                     {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "None"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    TargetLogin target3(policy);
    r = send(target3, request(LoginStage::security, true, LoginStage::operational, names()));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure); // left the stage unauthenticated
}

TEST(LoginRoundTrip, LongKeyListUsesTheContinueBitBothWays) {
    FakePolicy policy;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    for (int i = 0; i < 150; ++i) {
        std::string key = "X-org.example.vendor-key-number-" + std::to_string(i) + std::string(20, 'k');
        ic.extra_keys.push_back({key, std::string(150, 'v')});
    }
    InitiatorLogin initiator(ic);
    Exchange x = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_GE(x.continued_requests, 3u);  // ~33 KB of keys in 8 KiB pieces
    EXPECT_GE(x.continued_responses, 1u); // 150 NotUnderstood answers do not fit in 8 KiB either
    ASSERT_EQ(initiator.extra_answers().size(), 150u);
    EXPECT_EQ(initiator.extra_answers()[0].value, "NotUnderstood");
}

TEST(LoginRoundTrip, TwentyThousandKeysAreRefusedBoundedly) {
    FakePolicy policy;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    for (int i = 0; i < 20000; ++i) {
        ic.extra_keys.push_back({"X-k" + std::to_string(i), "v"});
    }
    InitiatorLogin initiator(ic);
    Exchange x = converse(initiator, target);
    EXPECT_EQ(target.state(), LoginState::failed);
    EXPECT_EQ(target.status(), LoginStatus::initiator_error);
    EXPECT_EQ(initiator.status(), LoginStatus::initiator_error);
    EXPECT_LE(x.requests, 10u);          // refused once 64 KiB had arrived, not after all ~220 KB
    EXPECT_TRUE(policy.started.empty()); // nothing was processed
}

TEST(LoginRoundTrip, TwentyThousandTinyKeysHitThePairBound) {
    FakePolicy policy;
    TargetLogin target(policy);
    // 20,000 pairs of 3 bytes fit in 64 KiB: the pair count bound stops them.
    std::vector<uint8_t> text;
    for (int i = 0; i < 20000; ++i) {
        append_text(text, "A", "");
    }
    LoginRequestPdu pdu = request(LoginStage::operational, false, LoginStage::security, {});
    LoginResponsePdu r;
    for (size_t offset = 0; offset < text.size(); offset += 8192) {
        size_t n = std::min<size_t>(8192, text.size() - offset);
        pdu.data.assign(text.begin() + ptrdiff_t(offset), text.begin() + ptrdiff_t(offset + n));
        pdu.header.continue_bit = offset + n < text.size();
        pdu.header.data_segment_length = uint32_t(n);
        r = send(target, pdu);
    }
    EXPECT_EQ(r.header.status(), LoginStatus::initiator_error);
    EXPECT_NE(target.reason().find("pairs"), std::string::npos) << target.reason();
}

TEST(LoginRoundTrip, NonLeadingConnectionJoinsSession) {
    FakePolicy policy;
    SessionParams existing;
    existing.max_burst_length = 65536;
    existing.max_connections = 4;
    policy.existing_session = existing;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config();
    ic.tsih = 0x1234;
    ic.cid = 2;
    ic.session = existing;
    ic.negotiation.header_digests = {Digest::crc32c};
    policy.targets[target_iqn].negotiation.header_digests = {Digest::crc32c, Digest::none};
    InitiatorLogin initiator(ic);
    converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(target.tsih(), 0x1234);
    EXPECT_FALSE(target.identity().leading());
    EXPECT_EQ(target.session_params().max_burst_length, 65536u); // the session's, not renegotiated
    EXPECT_EQ(target.connection_params().header_digest, Digest::crc32c);
    EXPECT_EQ(initiator.connection_params().header_digest, Digest::crc32c);
}

TEST(LoginRoundTrip, Redirection) {
    FakePolicy policy;
    policy.start_status = LoginStatus::target_moved_temporarily;
    policy.redirect_address = "192.0.2.10:3260,2";
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config());
    converse(initiator, target);
    EXPECT_EQ(target.state(), LoginState::redirected);
    EXPECT_EQ(initiator.state(), LoginState::redirected);
    EXPECT_EQ(initiator.status(), LoginStatus::target_moved_temporarily);
    EXPECT_EQ(initiator.redirect_address(), "192.0.2.10:3260,2");
}

TEST(LoginRoundTrip, TargetLowersNextStageToNegotiateWhatItNeeds) {
    FakePolicy policy;
    policy.targets[target_iqn].negotiation.immediate_data = false; // default Yes is not acceptable
    TargetLogin target(policy);
    // Security stage straight to full feature phase: the target stops in the operational stage.
    auto r =
        send(target,
             request(LoginStage::security, true, LoginStage::full_feature,
                     {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "None"}}));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_TRUE(r.header.transit);
    EXPECT_EQ(r.header.nsg, LoginStage::operational);
    // Operational stage: the target offers ImmediateData=No and so cannot transit yet.
    r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, {}));
    EXPECT_FALSE(r.header.transit);
    EXPECT_EQ(*find_value(text_of(r), "ImmediateData"), "No");
    r = send(target,
             request(LoginStage::operational, true, LoginStage::full_feature, {{"ImmediateData", "No"}}));
    EXPECT_TRUE(r.header.transit);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    EXPECT_FALSE(target.session_params().immediate_data);
}

// ---- Hand-made requests: the target's rules and every error status ----

TEST(LoginTarget, SkippingTheOperationalStageUsesDefaults) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r =
        send(target,
             request(LoginStage::security, true, LoginStage::full_feature,
                     {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "None"}}));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_TRUE(r.header.transit);
    EXPECT_EQ(r.header.nsg, LoginStage::full_feature);
    EXPECT_EQ(r.header.tsih, 0x1234);
    ASSERT_EQ(target.state(), LoginState::complete);
    auto keys = text_of(r);
    EXPECT_EQ(*find_value(keys, "AuthMethod"), "None");
    EXPECT_EQ(*find_value(keys, "TargetPortalGroupTag"), "7");
    EXPECT_EQ(find_value(keys, "MaxRecvDataSegmentLength"), nullptr); // not allowed in this stage
    EXPECT_EQ(target.connection_params().max_recv_data_segment_length, 8192u);
    EXPECT_EQ(target.connection_params().max_send_data_segment_length, 8192u);
    EXPECT_EQ(target.session_params().max_burst_length, 262144u);
    EXPECT_TRUE(target.session_params().initial_r2t);
}

TEST(LoginTarget, OperationalOnlyLogin) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names()));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_EQ(r.header.csg, LoginStage::operational);
    EXPECT_EQ(r.header.nsg, LoginStage::full_feature);
    auto keys = text_of(r);
    EXPECT_EQ(*find_value(keys, "MaxRecvDataSegmentLength"), "262144");
    EXPECT_EQ(*find_value(keys, "TargetAlias"), "disk one");
    EXPECT_EQ(target.connection_params().max_recv_data_segment_length, 262144u);
}

TEST(LoginTarget, NoTransitUnlessAsked) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r = send(target, request(LoginStage::operational, false, LoginStage::security, names()));
    EXPECT_EQ(r.header.status(), LoginStatus::success);
    EXPECT_FALSE(r.header.transit);
    EXPECT_EQ(find_value(text_of(r), "TargetPortalGroupTag") != nullptr, true);
    r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, {}));
    EXPECT_TRUE(r.header.transit);
    EXPECT_EQ(find_value(text_of(r), "TargetPortalGroupTag"), nullptr); // only in the first response
    EXPECT_EQ(target.state(), LoginState::complete);
}

TEST(LoginTarget, ContinuedRequestGetsEmptyResponses) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto text = encode_text(names());
    LoginRequestPdu pdu = request(LoginStage::operational, false, LoginStage::security, {});
    pdu.header.continue_bit = true;
    pdu.data.assign(text.begin(), text.begin() + 10); // splits a pair
    auto r = send(target, pdu);
    EXPECT_EQ(r.header.status(), LoginStatus::success);
    EXPECT_TRUE(r.data.empty());
    EXPECT_TRUE(policy.started.empty()); // nothing decided before the text is complete
    pdu = request(LoginStage::operational, true, LoginStage::full_feature, {});
    pdu.data.assign(text.begin() + 10, text.end());
    r = send(target, pdu);
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_EQ(target.state(), LoginState::complete);
    EXPECT_EQ(target.identity().initiator_name, initiator_iqn);
}

TEST(LoginTarget, StatSnAndCmdSn) {
    FakePolicy policy;
    TargetLoginSettings s;
    s.initial_stat_sn = 0xfffffffe;
    s.cmd_window = 16;
    TargetLogin target(policy, s);
    auto r1 = send(target, request(LoginStage::operational, false, LoginStage::security, names()));
    auto r2 = send(target, request(LoginStage::operational, false, LoginStage::security, {}));
    auto r3 = send(target, request(LoginStage::operational, true, LoginStage::full_feature, {}));
    EXPECT_EQ(r1.header.stat_sn, 0xfffffffeu);
    EXPECT_EQ(r2.header.stat_sn, 0xffffffffu);
    EXPECT_EQ(r3.header.stat_sn, 0u); // wraps
    EXPECT_EQ(r1.header.exp_cmd_sn, 10u);
    EXPECT_EQ(r1.header.max_cmd_sn, 25u);
    EXPECT_EQ(r3.header.max_cmd_sn, 10u + 63); // the policy's window in the final response
    EXPECT_EQ(r1.header.itt, 5u);
    EXPECT_EQ(r1.header.isid, test_isid);
}

TEST(LoginTarget, MissingInitiatorNameIsMissingParameter) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature,
                                  {{"TargetName", target_iqn}}));
    EXPECT_EQ(r.header.status(), LoginStatus::missing_parameter);
    EXPECT_EQ(r.header.status_class, 2);
    EXPECT_EQ(r.header.status_detail, 7);
    EXPECT_FALSE(r.header.transit);
    EXPECT_EQ(target.state(), LoginState::failed);
    // Once failed, anything more is refused.
    r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names()));
    EXPECT_EQ(r.header.status(), LoginStatus::initiator_error);
}

TEST(LoginTarget, NormalSessionWithoutTargetNameIsMissingParameter) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names(false)));
    EXPECT_EQ(r.header.status(), LoginStatus::missing_parameter);
}

TEST(LoginTarget, UnknownTargetIsNotFound) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r = send(
        target, request(LoginStage::operational, true, LoginStage::full_feature,
                        {{"InitiatorName", initiator_iqn}, {"TargetName", "iqn.2024-01.org.example:nope"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::target_not_found);
}

TEST(LoginTarget, UnsupportedVersion) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto pdu = request(LoginStage::operational, true, LoginStage::full_feature, names());
    pdu.header.version_min = 1;
    pdu.header.version_max = 2;
    auto r = send(target, pdu);
    EXPECT_EQ(r.header.status(), LoginStatus::unsupported_version);
    EXPECT_EQ(r.header.version_max, 0);
    EXPECT_TRUE(policy.started.empty());
}

TEST(LoginTarget, UnknownSessionTypeIsNotSupported) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto keys = names();
    keys.push_back({"SessionType", "Backup"});
    auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, keys));
    EXPECT_EQ(r.header.status(), LoginStatus::session_type_not_supported);
}

TEST(LoginTarget, UnknownTsihIsSessionDoesNotExist) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto pdu = request(LoginStage::operational, true, LoginStage::full_feature, names());
    pdu.header.tsih = 0x4242;
    auto r = send(target, pdu);
    EXPECT_EQ(r.header.status(), LoginStatus::session_does_not_exist);
    EXPECT_EQ(policy.started.size(), 1u);
    EXPECT_EQ(policy.started[0].tsih, 0x4242);
}

TEST(LoginTarget, PolicyStatusesAtStart) {
    for (LoginStatus s :
         {LoginStatus::authorization_failure, LoginStatus::target_removed, LoginStatus::too_many_connections,
          LoginStatus::cannot_include_in_session, LoginStatus::session_type_not_supported,
          LoginStatus::service_unavailable, LoginStatus::out_of_resources, LoginStatus::target_error}) {
        FakePolicy policy;
        policy.start_status = s;
        TargetLogin target(policy);
        auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names()));
        EXPECT_EQ(r.header.status(), s) << describe(s);
        EXPECT_EQ(target.state(), LoginState::failed);
    }
}

TEST(LoginTarget, PolicyStatusesAtAdmission) {
    for (LoginStatus s : {LoginStatus::too_many_connections, LoginStatus::cannot_include_in_session,
                          LoginStatus::out_of_resources}) {
        FakePolicy policy;
        policy.admit_status = s;
        TargetLoginSettings settings;
        settings.initial_stat_sn = 40;
        TargetLogin target(policy, settings);
        auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names()));
        EXPECT_EQ(r.header.status(), s) << describe(s);
        EXPECT_FALSE(r.header.transit);
        EXPECT_EQ(r.header.stat_sn, 40u); // the refusal is the response: no StatSN skipped
        EXPECT_EQ(target.last_stat_sn(), 40u);
    }
    FakePolicy policy;
    policy.admit_tsih = 0; // a policy bug: admitted without a TSIH
    TargetLogin target(policy);
    auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, names()));
    EXPECT_EQ(r.header.status(), LoginStatus::target_error);
}

TEST(LoginTarget, InvalidDuringLoginAndConnectionFailures) {
    FakePolicy policy;
    TargetLogin target(policy);
    send(target, request(LoginStage::operational, false, LoginStage::security, names()));
    auto r = target.fail(LoginStatus::invalid_during_login, "SCSI Command during login");
    EXPECT_EQ(r.header.status(), LoginStatus::invalid_during_login);
    EXPECT_EQ(r.header.itt, 5u);
    EXPECT_EQ(target.state(), LoginState::failed);
    EXPECT_EQ(target.reason(), "SCSI Command during login");
}

TEST(LoginTarget, IllegalStageTransitionsAreInitiatorErrors) {
    struct Case {
        LoginStage csg;
        bool transit;
        LoginStage nsg;
        bool cont;
    };
    for (Case c : {Case{LoginStage::operational, true, LoginStage::security, false},
                   Case{LoginStage::operational, true, LoginStage::operational, false},
                   Case{LoginStage::security, true, LoginStage(2), false},
                   Case{LoginStage::full_feature, false, LoginStage::security, false},
                   Case{LoginStage(2), false, LoginStage::security, false},
                   Case{LoginStage::operational, true, LoginStage::full_feature, true}}) {
        FakePolicy policy;
        TargetLogin target(policy);
        auto pdu = request(c.csg, c.transit, c.nsg, names());
        pdu.header.nsg = c.nsg;
        pdu.header.continue_bit = c.cont;
        auto r = send(target, pdu);
        EXPECT_EQ(r.header.status(), LoginStatus::initiator_error)
            << unsigned(c.csg) << "->" << unsigned(c.nsg) << " T=" << c.transit << " C=" << c.cont;
    }
}

TEST(LoginTarget, GoingBackToTheSecurityStageIsAnInitiatorError) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto r =
        send(target,
             request(LoginStage::security, true, LoginStage::operational,
                     {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "None"}}));
    ASSERT_TRUE(r.header.transit);
    r = send(target, request(LoginStage::security, false, LoginStage::security, {}));
    EXPECT_EQ(r.header.status(), LoginStatus::initiator_error);
}

TEST(LoginTarget, IdentityFieldsMustNotChange) {
    auto run = [](auto mutate) {
        FakePolicy policy;
        TargetLogin target(policy);
        send(target, request(LoginStage::operational, false, LoginStage::security, names()));
        auto pdu = request(LoginStage::operational, true, LoginStage::full_feature, {});
        mutate(pdu.header);
        return send(target, pdu).header.status();
    };
    EXPECT_EQ(run([](LoginRequest& h) { h.isid[5] ^= 1; }), LoginStatus::initiator_error);
    EXPECT_EQ(run([](LoginRequest& h) { h.tsih = 9; }), LoginStatus::initiator_error);
    EXPECT_EQ(run([](LoginRequest& h) { h.cid = 9; }), LoginStatus::initiator_error);
    EXPECT_EQ(run([](LoginRequest& h) { h.cmd_sn = 11; }), LoginStatus::initiator_error);
    EXPECT_EQ(run([](LoginRequest& h) { h.itt = 6; }), LoginStatus::success); // ITT is echoed, not enforced
}

TEST(LoginTarget, DuplicateKeysAreInitiatorErrors) {
    {
        FakePolicy policy;
        TargetLogin target(policy);
        auto keys = names();
        keys.push_back({"InitiatorName", initiator_iqn});
        EXPECT_EQ(send(target, request(LoginStage::operational, true, LoginStage::full_feature, keys))
                      .header.status(),
                  LoginStatus::initiator_error);
    }
    {
        FakePolicy policy;
        TargetLogin target(policy);
        auto keys = names();
        keys.push_back({"MaxBurstLength", "65536"});
        keys.push_back({"MaxBurstLength", "65536"});
        EXPECT_EQ(send(target, request(LoginStage::operational, true, LoginStage::full_feature, keys))
                      .header.status(),
                  LoginStatus::initiator_error);
    }
    {
        // Negotiated in one request, renegotiated with another value in the next.
        FakePolicy policy;
        TargetLogin target(policy);
        auto keys = names();
        keys.push_back({"MaxBurstLength", "65536"});
        EXPECT_EQ(
            send(target, request(LoginStage::operational, false, LoginStage::security, keys)).header.status(),
            LoginStatus::success);
        EXPECT_EQ(send(target, request(LoginStage::operational, true, LoginStage::full_feature,
                                       {{"MaxBurstLength", "32768"}}))
                      .header.status(),
                  LoginStatus::initiator_error);
    }
    {
        // libiscsi resends its names and keys unchanged in later requests: tolerated.
        FakePolicy policy;
        TargetLogin target(policy);
        auto keys = names();
        keys.push_back({"MaxBurstLength", "65536"});
        EXPECT_EQ(
            send(target, request(LoginStage::operational, false, LoginStage::security, keys)).header.status(),
            LoginStatus::success);
        auto r = send(target, request(LoginStage::operational, true, LoginStage::full_feature, keys));
        EXPECT_EQ(r.header.status(), LoginStatus::success) << target.reason();
        EXPECT_EQ(target.state(), LoginState::complete);
    }
}

TEST(LoginTarget, SecurityKeysOutsideTheSecurityStage) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto keys = names();
    keys.push_back({"AuthMethod", "None"});
    EXPECT_EQ(
        send(target, request(LoginStage::operational, true, LoginStage::full_feature, keys)).header.status(),
        LoginStatus::initiator_error);
    FakePolicy policy2;
    TargetLogin target2(policy2);
    keys = names();
    keys.push_back({"CHAP_A", "5"}); // no AuthMethod agreed
    EXPECT_EQ(send(target2, request(LoginStage::security, false, LoginStage::security, keys)).header.status(),
              LoginStatus::initiator_error);
}

TEST(LoginTarget, OperationalKeyInSecurityStage) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto keys = names();
    keys.push_back({"MaxBurstLength", "65536"});
    EXPECT_EQ(send(target, request(LoginStage::security, false, LoginStage::security, keys)).header.status(),
              LoginStatus::initiator_error);
}

TEST(LoginTarget, TooManyRequests) {
    FakePolicy policy;
    TargetLoginSettings s;
    s.max_requests = 8;
    TargetLogin target(policy, s);
    LoginStatus last = LoginStatus::success;
    send(target, request(LoginStage::operational, false, LoginStage::security, names()));
    for (int i = 0; i < 20 && last == LoginStatus::success; ++i) {
        last =
            send(target, request(LoginStage::operational, false, LoginStage::security, {})).header.status();
    }
    EXPECT_EQ(last, LoginStatus::initiator_error);
}

TEST(LoginTarget, OversizedDataSegment) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto pdu = request(LoginStage::operational, false, LoginStage::security, {});
    pdu.data.assign(8193, 'A');
    EXPECT_EQ(send(target, pdu).header.status(), LoginStatus::initiator_error);
}

TEST(LoginTarget, MalformedTextIsInitiatorError) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto pdu = request(LoginStage::operational, true, LoginStage::full_feature, {});
    std::string junk = "InitiatorName=iqn.2024-01.org.example:x"; // no NUL
    pdu.data.assign(junk.begin(), junk.end());
    EXPECT_EQ(send(target, pdu).header.status(), LoginStatus::initiator_error);
}

TEST(LoginTarget, NewTextWhileResponseIsContinued) {
    FakePolicy policy;
    TargetLogin target(policy);
    auto keys = names();
    for (int i = 0; i < 160; ++i) {
        keys.push_back(
            {"X-org.example.a-rather-long-vendor-key-" + std::to_string(i) + std::string(20, 'q'), "1"});
    }
    LoginRequestPdu pdu = request(LoginStage::operational, true, LoginStage::full_feature, {});
    auto text = encode_text(keys);
    ASSERT_GT(text.size(), 8192u);
    pdu.data.assign(text.begin(), text.begin() + 8192);
    pdu.header.transit = false;
    pdu.header.continue_bit = true;
    ASSERT_EQ(send(target, pdu).header.status(), LoginStatus::success);
    pdu.data.assign(text.begin() + 8192, text.end());
    pdu.header.continue_bit = false;
    pdu.header.transit = true;
    auto r = send(target, pdu);
    ASSERT_TRUE(r.header.continue_bit); // the 160 answers need more than one PDU
    EXPECT_FALSE(r.header.transit);
    auto bad = request(LoginStage::operational, true, LoginStage::full_feature, {{"X-more", "1"}});
    EXPECT_EQ(send(target, bad).header.status(), LoginStatus::initiator_error);
}

// ---- The initiator's checks on the target ----

TEST(LoginInitiator, ConfigurationIsValidated) {
    InitiatorLoginConfig c = initiator_config();
    c.initiator_name = "bogus";
    EXPECT_FALSE(InitiatorLogin(c).start().ok());
    c = initiator_config();
    c.target_name.clear();
    EXPECT_FALSE(InitiatorLogin(c).start().ok());
    c = initiator_config();
    c.auth_methods = {"CHAP"}; // no authenticator
    EXPECT_FALSE(InitiatorLogin(c).start().ok());
    c = initiator_config();
    c.extra_keys = {{"MaxBurstLength", "1"}};
    EXPECT_FALSE(InitiatorLogin(c).start().ok());
}

TEST(LoginInitiator, FirstRequest) {
    InitiatorLogin initiator(initiator_config());
    auto first = initiator.start();
    ASSERT_TRUE(first.ok());
    const LoginRequest& h = first->header;
    EXPECT_EQ(h.csg, LoginStage::operational);
    EXPECT_TRUE(h.transit);
    EXPECT_EQ(h.nsg, LoginStage::full_feature);
    EXPECT_EQ(h.isid, test_isid);
    EXPECT_EQ(h.itt, 0x77u);
    EXPECT_EQ(h.cmd_sn, 1000u);
    auto keys = parse_text(first->data);
    ASSERT_TRUE(keys.ok());
    EXPECT_EQ((*keys)[0].key, "InitiatorName");
    EXPECT_EQ(*find_value(*keys, "TargetName"), target_iqn);
    EXPECT_EQ(*find_value(*keys, "SessionType"), "Normal");
    EXPECT_EQ(*find_value(*keys, "InitiatorAlias"), "host one");
    EXPECT_EQ(*find_value(*keys, "ErrorRecoveryLevel"), "0");
    EXPECT_FALSE(find_duplicate_key(*keys).has_value());
    EXPECT_FALSE(initiator.start().ok()); // only once
}

namespace {

// The initiator's first request, and a response template answering it.
struct InitiatorProbe {
    InitiatorProbe() : login(initiator_config()) {
        auto first = login.start();
        EXPECT_TRUE(first.ok());
        response.csg = LoginStage::operational;
        response.isid = test_isid;
        response.itt = 0x77;
        response.stat_sn = 1;
    }
    std::optional<LoginRequestPdu> reply(const KeyValueList& keys = {}) {
        auto data = encode_text(keys);
        response.data_segment_length = uint32_t(data.size());
        return login.receive(response, data);
    }
    InitiatorLogin login;
    LoginResponse response;
};

} // namespace

TEST(LoginInitiator, TargetFailureStatusIsReported) {
    InitiatorProbe p;
    p.response.set_status(LoginStatus::target_not_found);
    EXPECT_FALSE(p.reply().has_value());
    EXPECT_EQ(p.login.state(), LoginState::failed);
    EXPECT_EQ(p.login.status(), LoginStatus::target_not_found);
    EXPECT_NE(p.login.reason().find("Not found (02/03)"), std::string::npos) << p.login.reason();
}

// tgt answers a login reject with a zero ISID: the target's status is what matters then.
TEST(LoginInitiator, RejectWithZeroIsidReportsTheTargetsStatus) {
    InitiatorProbe p;
    p.response.isid = {};
    p.response.set_status(LoginStatus::authentication_failure);
    EXPECT_FALSE(p.reply().has_value());
    EXPECT_EQ(p.login.status(), LoginStatus::authentication_failure);

    InitiatorProbe q; // a response that would continue the login must carry our ISID
    q.response.isid = {};
    EXPECT_FALSE(q.reply().has_value());
    EXPECT_EQ(q.login.status(), LoginStatus::initiator_error);
}

TEST(LoginInitiator, RedirectWithoutAddress) {
    InitiatorProbe p;
    p.response.set_status(LoginStatus::target_moved_permanently);
    EXPECT_FALSE(p.reply().has_value());
    EXPECT_EQ(p.login.state(), LoginState::redirected);
    EXPECT_TRUE(p.login.redirect_address().empty());
}

TEST(LoginInitiator, FinalResponseWithoutTsih) {
    InitiatorProbe p;
    p.response.transit = true;
    p.response.nsg = LoginStage::full_feature;
    EXPECT_FALSE(p.reply().has_value());
    EXPECT_EQ(p.login.state(), LoginState::failed);
}

TEST(LoginInitiator, WrongVersion) {
    InitiatorProbe p;
    p.response.version_active = 1;
    EXPECT_FALSE(p.reply().has_value());
    EXPECT_EQ(p.login.status(), LoginStatus::unsupported_version);
}

TEST(LoginInitiator, AnswerOutsideOffer) {
    InitiatorProbe p;
    EXPECT_FALSE(p.reply({{"MaxBurstLength", "99999999"}}).has_value());
    EXPECT_EQ(p.login.status(), LoginStatus::initiator_error);
}

TEST(LoginInitiator, TargetKeepsStageThenFinishes) {
    InitiatorProbe p;
    auto next = p.reply({{"MaxBurstLength", "65536"}});
    ASSERT_TRUE(next.has_value()) << p.login.reason();
    EXPECT_TRUE(next->header.transit);
    EXPECT_EQ(next->header.exp_stat_sn, 2u);
    p.response.transit = true;
    p.response.nsg = LoginStage::full_feature;
    p.response.tsih = 3;
    p.response.stat_sn = 2;
    EXPECT_FALSE(p.reply().has_value());
    ASSERT_EQ(p.login.state(), LoginState::complete) << p.login.reason();
    EXPECT_EQ(p.login.session_params().max_burst_length, 65536u);
    EXPECT_EQ(p.login.tsih(), 3);
}

TEST(LoginInitiator, TargetOfferInFinalResponseMustAgree) {
    InitiatorProbe p;
    p.response.transit = true;
    p.response.nsg = LoginStage::full_feature;
    p.response.tsih = 3;
    // The initiator offered DefaultTime2Wait=2 and would answer this target offer differently.
    EXPECT_FALSE(p.reply({{"MaxOutstandingR2T", "4"}}).has_value());
    EXPECT_EQ(p.login.state(), LoginState::failed);
}

TEST(LoginInitiator, TargetMayNotSkipAhead) {
    InitiatorLoginConfig c = initiator_config();
    c.auth_methods = {"CHAP"};
    c.make_authenticator = [](std::string_view) { return std::make_unique<FakeChap>(false, "secret"); };
    InitiatorLogin login(c);
    auto first = login.start();
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(first->header.csg, LoginStage::security);
    LoginResponse r;
    r.isid = test_isid;
    r.itt = 0x77;
    r.csg = LoginStage::security;
    r.transit = true;
    r.nsg = LoginStage::operational;
    auto data = encode_text({{"AuthMethod", "CHAP"}});
    // CHAP agreed but not done: the target may not end the security stage.
    EXPECT_FALSE(login.receive(r, data).has_value());
    EXPECT_EQ(login.status(), LoginStatus::authentication_failure);
}

// ---- Hostile input: random headers and text never crash either machine ----

namespace {

struct Lcg {
    uint32_t state;
    uint32_t next() {
        state = state * 1103515245 + 12345;
        return state >> 8;
    }
};

std::vector<uint8_t> random_text(Lcg& rng) {
    static const char* keys[] = {"InitiatorName",
                                 "TargetName",
                                 "SessionType",
                                 "AuthMethod",
                                 "CHAP_A",
                                 "HeaderDigest",
                                 "MaxBurstLength",
                                 "FirstBurstLength",
                                 "ImmediateData",
                                 "InitialR2T",
                                 "MaxRecvDataSegmentLength",
                                 "X-vendor",
                                 "TargetAlias",
                                 "ErrorRecoveryLevel",
                                 "SendTargets",
                                 "IFMarker",
                                 "MaxConnections"};
    static const char* values[] = {
        initiator_iqn,   target_iqn, "Normal", "Discovery", "None",  "CHAP,None", "CRC32C,None",
        "Yes",           "No",       "0",      "512",       "65536", "16777216",  "Reject",
        "NotUnderstood", "",         "0x10",   "0bAA==",    "All",   "1~2"};
    std::vector<uint8_t> text;
    size_t pairs = rng.next() % 12;
    for (size_t i = 0; i < pairs; ++i) {
        append_text(text, keys[rng.next() % std::size(keys)], values[rng.next() % std::size(values)]);
    }
    if (rng.next() % 8 == 0 && !text.empty()) {
        text[rng.next() % text.size()] = uint8_t(rng.next()); // corrupt a byte
    }
    return text;
}

} // namespace

TEST(LoginTarget, RandomRequestsNeverCrash) {
    Lcg rng{42};
    for (int round = 0; round < 3000; ++round) {
        FakePolicy policy;
        if (rng.next() % 4 == 0) {
            policy.targets[target_iqn].auth_methods = {"CHAP"};
        }
        TargetLogin target(policy);
        for (int i = 0; i < 6 && target.state() == LoginState::in_progress; ++i) {
            LoginRequest h;
            h.csg = LoginStage(rng.next() % 4);
            h.nsg = LoginStage(rng.next() % 4);
            h.transit = rng.next() % 2;
            h.continue_bit = rng.next() % 5 == 0;
            h.version_min = rng.next() % 8 == 0 ? 1 : 0;
            h.isid = test_isid;
            h.tsih = rng.next() % 8 == 0 ? 1 : 0;
            auto text = random_text(rng);
            auto r = target.receive(h, text);
            EXPECT_LE(r.data.size(), 8192u);
            if (r.header.status() != LoginStatus::success) {
                EXPECT_NE(target.state(), LoginState::in_progress);
            }
        }
    }
}

TEST(LoginInitiator, RandomResponsesNeverCrash) {
    Lcg rng{7};
    for (int round = 0; round < 3000; ++round) {
        InitiatorLoginConfig c = initiator_config();
        if (rng.next() % 2 == 0) {
            c.auth_methods = {"CHAP", "None"};
            c.make_authenticator = [](std::string_view) { return std::make_unique<FakeChap>(false, "s"); };
        }
        InitiatorLogin login(c);
        auto first = login.start();
        ASSERT_TRUE(first.ok());
        for (int i = 0; i < 6 && login.state() == LoginState::in_progress; ++i) {
            LoginResponse h;
            h.isid = test_isid;
            h.itt = 0x77;
            h.csg = LoginStage(rng.next() % 2);
            h.nsg = LoginStage(rng.next() % 4);
            h.transit = rng.next() % 2;
            h.continue_bit = rng.next() % 6 == 0;
            h.tsih = uint16_t(rng.next() % 3);
            if (rng.next() % 10 == 0) {
                h.set_status(LoginStatus::target_moved_temporarily);
            }
            auto text = random_text(rng);
            auto next = login.receive(h, text);
            if (next) {
                EXPECT_LE(next->data.size(), 8192u);
            }
        }
    }
}
