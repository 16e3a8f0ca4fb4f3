// Parameter negotiation (RFC 7143 §6.2, §13): every key's rule, in both roles.
#include "iscsi/params.hpp"

#include <gtest/gtest.h>

#include <cerrno>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

constexpr auto op = LoginStage::operational;

Negotiator::Context context(Role role, bool leading = true) {
    Negotiator::Context c;
    c.role = role;
    c.leading = leading;
    return c;
}

// A target-side negotiator with `config`, answering `offers` in the operational stage.
struct Responder {
    explicit Responder(NegotiationConfig config = {}, bool leading = true)
        : n(config, context(Role::target, leading)) {}

    // The answer to a single offer, or "" if none was given. Fails the test on a protocol error.
    std::string answer(const std::string& key, const std::string& value) {
        KeyValueList out;
        auto r = n.receive({{key, value}}, op, out);
        EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
        const std::string* v = find_value(out, key);
        return v ? *v : std::string();
    }
    Result<void> receive(const KeyValueList& in, KeyValueList& out, LoginStage stage = op) {
        return n.receive(in, stage, out);
    }

    Negotiator n;
};

NegotiationConfig digests(std::vector<Digest> header, std::vector<Digest> data) {
    NegotiationConfig c;
    c.header_digests = std::move(header);
    c.data_digests = std::move(data);
    return c;
}

} // namespace

TEST(ParamTable, EveryKeyIsFoundByName) {
    for (size_t i = 0; i < key_count; ++i) {
        const KeyDef& def = key_def(KeyId(i));
        const KeyDef* found = find_key(def.name);
        ASSERT_NE(found, nullptr) << def.name;
        EXPECT_EQ(found->id, KeyId(i));
    }
    EXPECT_EQ(find_key("NoSuchKey"), nullptr);
    EXPECT_TRUE(is_security_key("AuthMethod"));
    EXPECT_TRUE(is_security_key("CHAP_R"));
    EXPECT_FALSE(is_security_key("HeaderDigest"));
}

TEST(ParamTable, RangesAndScopesFollowTheRfc) {
    EXPECT_EQ(key_def(KeyId::max_burst_length).min, 512u);
    EXPECT_EQ(key_def(KeyId::max_burst_length).max, 16777215u);
    EXPECT_EQ(key_def(KeyId::default_time2wait).max, 3600u);
    EXPECT_EQ(key_def(KeyId::error_recovery_level).max, 2u);
    EXPECT_EQ(key_def(KeyId::header_digest).scope, KeyScope::connection);
    EXPECT_EQ(key_def(KeyId::max_recv_data_segment_length).scope, KeyScope::connection);
    EXPECT_EQ(key_def(KeyId::max_burst_length).scope, KeyScope::session);
    EXPECT_EQ(key_def(KeyId::max_connections).use, KeyUse::leading_only);
    EXPECT_EQ(key_def(KeyId::send_targets).use, KeyUse::full_feature_only);
    EXPECT_TRUE(key_def(KeyId::initiator_name).any_stage);
    EXPECT_FALSE(key_def(KeyId::max_burst_length).any_stage);
}

TEST(ParamConfig, Validate) {
    EXPECT_TRUE(validate(NegotiationConfig{}).ok());
    NegotiationConfig c;
    c.first_burst_length = c.max_burst_length + 1;
    EXPECT_FALSE(validate(c).ok());
    c = {};
    c.header_digests.clear();
    EXPECT_FALSE(validate(c).ok());
    c = {};
    c.max_recv_data_segment_length = 100;
    EXPECT_FALSE(validate(c).ok());
    c = {};
    c.error_recovery_level = 3;
    EXPECT_FALSE(validate(c).ok());
}

// ---- Each key's rule (responder side) ----

TEST(ParamHeaderDigest, ResponderPicksFirstOfferedValueItSupports) {
    Responder both(digests({Digest::crc32c, Digest::none}, {Digest::none}));
    EXPECT_EQ(both.answer("HeaderDigest", "None,CRC32C"), "None"); // the originator's order wins
    Responder both2(digests({Digest::none, Digest::crc32c}, {Digest::none}));
    EXPECT_EQ(both2.answer("HeaderDigest", "CRC32C,None"), "CRC32C");
    EXPECT_EQ(both2.n.connection_params().header_digest, Digest::crc32c);
    Responder unknown_item(digests({Digest::none}, {Digest::none}));
    EXPECT_EQ(unknown_item.answer("HeaderDigest", "X-fancy,None"), "None");
}

TEST(ParamHeaderDigest, NoCommonValueIsRejectAndKeepsDefault) {
    Responder r(digests({Digest::none}, {Digest::none}));
    EXPECT_EQ(r.answer("HeaderDigest", "CRC32C"), "Reject");
    EXPECT_EQ(r.n.connection_params().header_digest, Digest::none);
    ASSERT_EQ(r.n.rejected().size(), 1u);
    EXPECT_EQ(r.n.rejected()[0], KeyId::header_digest);
    Responder malformed;
    EXPECT_EQ(malformed.answer("HeaderDigest", "None,,CRC32C"), "Reject");
}

TEST(ParamDataDigest, ListNegotiation) {
    Responder r(digests({Digest::none}, {Digest::crc32c}));
    EXPECT_EQ(r.answer("DataDigest", "CRC32C,None"), "CRC32C");
    EXPECT_EQ(r.n.connection_params().data_digest, Digest::crc32c);
    Responder none_only(digests({Digest::none}, {Digest::none}));
    EXPECT_EQ(none_only.answer("DataDigest", "CRC32C"), "Reject");
    // "None" is only a valid selection if it was proposed.
    Responder crc_only(digests({Digest::crc32c}, {Digest::crc32c}));
    EXPECT_EQ(crc_only.answer("DataDigest", "None"), "Reject");
}

TEST(ParamMaxConnections, MinimumWithinRange) {
    NegotiationConfig c;
    c.max_connections = 1;
    EXPECT_EQ(Responder(c).answer("MaxConnections", "4"), "1");
    c.max_connections = 8;
    EXPECT_EQ(Responder(c).answer("MaxConnections", "4"), "4");
    EXPECT_EQ(Responder(c).answer("MaxConnections", "0"), "Reject");
    EXPECT_EQ(Responder(c).answer("MaxConnections", "65536"), "Reject");
    Responder r(c);
    r.answer("MaxConnections", "2");
    EXPECT_EQ(r.n.session_params().max_connections, 2u);
}

TEST(ParamMaxConnections, IrrelevantOnNonLeadingConnection) {
    EXPECT_EQ(Responder({}, /*leading=*/false).answer("MaxConnections", "4"), "Irrelevant");
}

TEST(ParamInitialR2T, ResultIsOr) {
    NegotiationConfig yes;
    yes.initial_r2t = true;
    NegotiationConfig no;
    no.initial_r2t = false;
    EXPECT_EQ(Responder(yes).answer("InitialR2T", "No"), "Yes");
    EXPECT_EQ(Responder(no).answer("InitialR2T", "No"), "No");
    EXPECT_EQ(Responder(no).answer("InitialR2T", "Yes"), "Yes");
    EXPECT_EQ(Responder(yes).answer("InitialR2T", "yes"), "Reject"); // case sensitive
    Responder r(no);
    r.answer("InitialR2T", "No");
    EXPECT_FALSE(r.n.session_params().initial_r2t);
}

TEST(ParamImmediateData, ResultIsAnd) {
    NegotiationConfig yes;
    NegotiationConfig no;
    no.immediate_data = false;
    EXPECT_EQ(Responder(yes).answer("ImmediateData", "Yes"), "Yes");
    EXPECT_EQ(Responder(no).answer("ImmediateData", "Yes"), "No");
    EXPECT_EQ(Responder(yes).answer("ImmediateData", "No"), "No");
    EXPECT_EQ(Responder(yes).answer("ImmediateData", "Maybe"), "Reject");
}

TEST(ParamMaxRecvDataSegmentLength, DeclarativeEachDirection) {
    NegotiationConfig c;
    c.max_recv_data_segment_length = 65536;
    Responder r(c);
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"MaxRecvDataSegmentLength", "262144"}}, out).ok());
    EXPECT_TRUE(out.empty()); // a declaration gets no answer
    // What the peer declared bounds what we send; what we declare bounds what we receive.
    EXPECT_EQ(r.n.connection_params().max_send_data_segment_length, 262144u);
    EXPECT_EQ(r.n.connection_params().max_recv_data_segment_length, 8192u); // not declared yet
    r.n.offer(op, out);
    ASSERT_NE(find_value(out, "MaxRecvDataSegmentLength"), nullptr);
    EXPECT_EQ(*find_value(out, "MaxRecvDataSegmentLength"), "65536");
    EXPECT_EQ(r.n.connection_params().max_recv_data_segment_length, 65536u);
}

TEST(ParamMaxRecvDataSegmentLength, DefaultsTo8192WhenNotDeclared) {
    Responder r;
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"MaxBurstLength", "65536"}}, out).ok());
    ASSERT_TRUE(r.n.finish().ok());
    EXPECT_EQ(r.n.connection_params().max_send_data_segment_length, 8192u);
}

TEST(ParamMaxRecvDataSegmentLength, OutOfRangeDeclarationIsAProtocolError) {
    Responder r;
    KeyValueList out;
    auto small = r.receive({{"MaxRecvDataSegmentLength", "511"}}, out);
    ASSERT_FALSE(small.ok());
    EXPECT_EQ(small.error().code, EPROTO);
    Responder r2;
    EXPECT_FALSE(r2.receive({{"MaxRecvDataSegmentLength", "16777216"}}, out).ok());
}

TEST(ParamMaxBurstLength, MinimumWithinRange) {
    NegotiationConfig c;
    c.max_burst_length = 262144;
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "1048576"), "262144");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "16384"), "16384");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "0x4000"), "16384"); // hex is a numerical value
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "512"), "512");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "511"), "Reject");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "16777216"), "Reject");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "lots"), "Reject");
    EXPECT_EQ(Responder(c).answer("MaxBurstLength", "99999999999999999999999"), "Reject");
}

TEST(ParamFirstBurstLength, MinimumAndNeverAboveMaxBurst) {
    NegotiationConfig c;
    c.first_burst_length = 65536;
    EXPECT_EQ(Responder(c).answer("FirstBurstLength", "131072"), "65536");
    EXPECT_EQ(Responder(c).answer("FirstBurstLength", "8192"), "8192");
    EXPECT_EQ(Responder(c).answer("FirstBurstLength", "100"), "Reject");
    // MaxBurstLength negotiated below the default FirstBurstLength: the result is capped.
    Responder r(c);
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"MaxBurstLength", "16384"}}, out).ok());
    ASSERT_TRUE(r.n.finish().ok());
    EXPECT_EQ(r.n.session_params().max_burst_length, 16384u);
    EXPECT_EQ(r.n.session_params().first_burst_length, 16384u);
}

// The probe's case: both keys offered in one PDU, FirstBurstLength above MaxBurstLength. The answer
// itself obeys RFC 7143 §13.14, whichever order the keys came in.
TEST(ParamFirstBurstLength, NeverAnsweredAboveTheMaxBurstLengthBesideIt) {
    for (bool first_burst_first : {false, true}) {
        Responder r{NegotiationConfig{}};
        KeyValueList in = {{"MaxBurstLength", "16384"}, {"FirstBurstLength", "65536"}};
        if (first_burst_first) {
            std::swap(in[0], in[1]);
        }
        KeyValueList out;
        ASSERT_TRUE(r.receive(in, out).ok());
        const std::string* max_burst = find_value(out, "MaxBurstLength");
        const std::string* first_burst = find_value(out, "FirstBurstLength");
        ASSERT_TRUE(max_burst && first_burst);
        EXPECT_EQ(*max_burst, "16384");
        EXPECT_EQ(*first_burst, "16384");
    }
}

TEST(ParamFirstBurstLength, IrrelevantWhenInitialR2TYesAndImmediateDataNo) {
    NegotiationConfig c;
    c.immediate_data = false;
    Responder r(c);
    KeyValueList out;
    // FirstBurstLength comes first, but its relevance depends on the keys after it.
    ASSERT_TRUE(
        r.receive({{"FirstBurstLength", "8192"}, {"InitialR2T", "Yes"}, {"ImmediateData", "Yes"}}, out).ok());
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].key, "FirstBurstLength"); // answers keep the order of the offers
    EXPECT_EQ(out[0].value, "Irrelevant");
    EXPECT_EQ(*find_value(out, "ImmediateData"), "No");
    // With immediate data allowed it is relevant again.
    Responder r2;
    KeyValueList out2;
    ASSERT_TRUE(
        r2.receive({{"FirstBurstLength", "8192"}, {"InitialR2T", "Yes"}, {"ImmediateData", "Yes"}}, out2)
            .ok());
    EXPECT_EQ(*find_value(out2, "FirstBurstLength"), "8192");
}

TEST(ParamDefaultTime2Wait, MaximumWithinRange) {
    NegotiationConfig c;
    c.default_time2wait = 2;
    EXPECT_EQ(Responder(c).answer("DefaultTime2Wait", "0"), "2");
    EXPECT_EQ(Responder(c).answer("DefaultTime2Wait", "10"), "10");
    EXPECT_EQ(Responder(c).answer("DefaultTime2Wait", "3600"), "3600");
    EXPECT_EQ(Responder(c).answer("DefaultTime2Wait", "3601"), "Reject");
}

TEST(ParamDefaultTime2Retain, MinimumWithinRange) {
    NegotiationConfig c;
    c.default_time2retain = 20;
    EXPECT_EQ(Responder(c).answer("DefaultTime2Retain", "0"), "0");
    EXPECT_EQ(Responder(c).answer("DefaultTime2Retain", "60"), "20");
    EXPECT_EQ(Responder(c).answer("DefaultTime2Retain", "3601"), "Reject");
}

TEST(ParamMaxOutstandingR2T, MinimumWithinRange) {
    NegotiationConfig c;
    c.max_outstanding_r2t = 1;
    EXPECT_EQ(Responder(c).answer("MaxOutstandingR2T", "8"), "1");
    c.max_outstanding_r2t = 16;
    EXPECT_EQ(Responder(c).answer("MaxOutstandingR2T", "8"), "8");
    EXPECT_EQ(Responder(c).answer("MaxOutstandingR2T", "0"), "Reject");
    EXPECT_EQ(Responder(c).answer("MaxOutstandingR2T", "65536"), "Reject");
}

TEST(ParamDataPDUInOrder, ResultIsOr) {
    NegotiationConfig in_order;
    NegotiationConfig any_order;
    any_order.data_pdu_in_order = false;
    EXPECT_EQ(Responder(in_order).answer("DataPDUInOrder", "No"), "Yes");
    EXPECT_EQ(Responder(any_order).answer("DataPDUInOrder", "No"), "No");
    EXPECT_EQ(Responder(any_order).answer("DataPDUInOrder", "Yes"), "Yes");
}

TEST(ParamDataSequenceInOrder, ResultIsOr) {
    NegotiationConfig in_order;
    NegotiationConfig any_order;
    any_order.data_sequence_in_order = false;
    EXPECT_EQ(Responder(in_order).answer("DataSequenceInOrder", "No"), "Yes");
    EXPECT_EQ(Responder(any_order).answer("DataSequenceInOrder", "No"), "No");
    EXPECT_EQ(Responder(in_order).answer("DataSequenceInOrder", "1"), "Reject");
}

TEST(ParamErrorRecoveryLevel, WeSupportZero) {
    EXPECT_EQ(Responder().answer("ErrorRecoveryLevel", "2"), "0");
    EXPECT_EQ(Responder().answer("ErrorRecoveryLevel", "0"), "0");
    EXPECT_EQ(Responder().answer("ErrorRecoveryLevel", "3"), "Reject");
}

TEST(ParamErrorRecoveryLevel, ATargetAtLevelOneAnswersTheLowerOfTheTwo) {
    NegotiationConfig one;
    one.error_recovery_level = 1;
    EXPECT_EQ(Responder(one).answer("ErrorRecoveryLevel", "2"), "1");
    EXPECT_EQ(Responder(one).answer("ErrorRecoveryLevel", "1"), "1");
    EXPECT_EQ(Responder(one).answer("ErrorRecoveryLevel", "0"), "0");
    one.error_recovery_level = 2;
    EXPECT_TRUE(validate(one).ok());
    EXPECT_EQ(Responder(one).answer("ErrorRecoveryLevel", "2"), "2");
    one.error_recovery_level = 3; // past what ispace implements: never configurable
    EXPECT_FALSE(validate(one).ok());
}

TEST(ParamSessionType, DiscoveryMakesSessionKeysIrrelevant) {
    Responder r;
    KeyValueList out;
    // SessionType comes last but is processed first.
    ASSERT_TRUE(r.receive({{"MaxBurstLength", "65536"},
                           {"InitialR2T", "No"},
                           {"ImmediateData", "Yes"},
                           {"MaxConnections", "1"},
                           {"FirstBurstLength", "512"},
                           {"MaxOutstandingR2T", "1"},
                           {"DataPDUInOrder", "Yes"},
                           {"DataSequenceInOrder", "Yes"},
                           {"TaskReporting", "RFC3720"},
                           {"HeaderDigest", "None"},
                           {"DefaultTime2Wait", "2"},
                           {"ErrorRecoveryLevel", "0"},
                           {"SessionType", "Discovery"}},
                          out)
                    .ok());
    EXPECT_EQ(r.n.session_type(), SessionType::discovery);
    for (const char* key :
         {"MaxBurstLength", "InitialR2T", "ImmediateData", "MaxConnections", "FirstBurstLength",
          "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder", "TaskReporting"}) {
        ASSERT_NE(find_value(out, key), nullptr) << key;
        EXPECT_EQ(*find_value(out, key), "Irrelevant") << key;
    }
    // Connection keys, timers and ERL still matter in a discovery session.
    EXPECT_EQ(*find_value(out, "HeaderDigest"), "None");
    EXPECT_EQ(*find_value(out, "DefaultTime2Wait"), "2");
    EXPECT_EQ(*find_value(out, "ErrorRecoveryLevel"), "0");
    EXPECT_EQ(find_value(out, "SessionType"), nullptr); // declarative: no answer
    ASSERT_TRUE(r.n.finish().ok());
}

TEST(ParamSessionType, UnknownValueIsRecordedForTheLoginToAnswer) {
    Responder r;
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"SessionType", "Other"}}, out).ok());
    ASSERT_NE(r.n.declared(KeyId::session_type), nullptr);
    EXPECT_EQ(*r.n.declared(KeyId::session_type), "Other");
    EXPECT_EQ(r.n.session_type(), SessionType::normal);
}

TEST(ParamTaskReporting, ListWithOnlyRfc3720Supported) {
    EXPECT_EQ(Responder().answer("TaskReporting", "ResponseFence,RFC3720"), "RFC3720");
    EXPECT_EQ(Responder().answer("TaskReporting", "FastAbort"), "Reject");
}

TEST(ParamProtocolLevel, Minimum) {
    EXPECT_EQ(Responder().answer("iSCSIProtocolLevel", "2"), "1");
    EXPECT_EQ(Responder().answer("iSCSIProtocolLevel", "0"), "0");
    EXPECT_EQ(Responder().answer("iSCSIProtocolLevel", "32"), "Reject");
}

TEST(ParamObsoleteMarkers, AnsweredNoOrReject) {
    EXPECT_EQ(Responder().answer("IFMarker", "No"), "No");
    EXPECT_EQ(Responder().answer("OFMarker", "Yes"), "No");
    EXPECT_EQ(Responder().answer("IFMarkInt", "1~65535"), "Reject");
    EXPECT_EQ(Responder().answer("OFMarkInt", "2048"), "Reject");
}

TEST(ParamNotUnderstood, UnknownAndExtensionKeys) {
    EXPECT_EQ(Responder().answer("X-com.example.Feature", "Yes"), "NotUnderstood");
    EXPECT_EQ(Responder().answer("X#Registered", "1"), "NotUnderstood");
    EXPECT_EQ(Responder().answer("SomeFutureKey", "1"), "NotUnderstood");
}

// ---- Protocol errors ----

TEST(ParamErrors, DuplicateKeyInOneSequence) {
    Responder r;
    KeyValueList out;
    auto e = r.receive({{"MaxBurstLength", "65536"}, {"MaxBurstLength", "65536"}}, out);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, EPROTO);
}

TEST(ParamErrors, RenegotiationWithAnotherValue) {
    Responder r;
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"MaxBurstLength", "65536"}}, out).ok());
    // An identical repeat (initiators that resend their whole list) gets the same answer.
    KeyValueList again;
    ASSERT_TRUE(r.receive({{"MaxBurstLength", "65536"}}, again).ok());
    EXPECT_EQ(again, out);
    auto e = r.receive({{"MaxBurstLength", "32768"}}, again);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, EPROTO);
}

TEST(ParamErrors, RedeclarationWithAnotherValue) {
    Responder r;
    KeyValueList out;
    ASSERT_TRUE(r.receive({{"InitiatorName", "iqn.2024-01.org.example:a"}}, out).ok());
    ASSERT_TRUE(r.receive({{"InitiatorName", "iqn.2024-01.org.example:a"}}, out).ok());
    EXPECT_FALSE(r.receive({{"InitiatorName", "iqn.2024-01.org.example:b"}}, out).ok());
}

TEST(ParamErrors, ReservedConstantsAreNotOffers) {
    for (const char* v : {"Reject", "Irrelevant", "NotUnderstood"}) {
        Responder r;
        KeyValueList out;
        EXPECT_FALSE(r.receive({{"MaxBurstLength", v}}, out).ok()) << v;
        EXPECT_FALSE(r.receive({{"X-foo", v}}, out).ok()) << v;
    }
}

TEST(ParamErrors, OperationalKeyInSecurityStage) {
    Responder r;
    KeyValueList out;
    auto e = r.receive({{"MaxBurstLength", "65536"}}, out, LoginStage::security);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, EPROTO);
    // Any-Stage keys are fine there.
    EXPECT_TRUE(r.receive({{"InitiatorName", "iqn.2024-01.org.example:a"}, {"SessionType", "Normal"}}, out,
                          LoginStage::security)
                    .ok());
}

TEST(ParamErrors, SecurityKeyReachingTheEngine) {
    Responder r;
    KeyValueList out;
    EXPECT_FALSE(r.receive({{"CHAP_A", "5"}}, out).ok());
}

TEST(ParamErrors, WrongSender) {
    Responder target;
    KeyValueList out;
    EXPECT_FALSE(target.receive({{"TargetAlias", "disk"}}, out).ok());
    EXPECT_FALSE(target.receive({{"TargetPortalGroupTag", "1"}}, out).ok());
    Negotiator initiator({}, context(Role::initiator));
    EXPECT_FALSE(initiator.receive({{"InitiatorName", "iqn.2024-01.org.example:x"}}, op, out).ok());
    EXPECT_TRUE(initiator.receive({{"TargetAlias", "disk"}, {"TargetPortalGroupTag", "7"}}, op, out).ok());
    EXPECT_EQ(initiator.session_params().target_portal_group_tag, 7u);
    EXPECT_EQ(initiator.session_params().target_alias, "disk");
}

TEST(ParamErrors, PhaseRules) {
    Responder r;
    KeyValueList out;
    EXPECT_FALSE(r.receive({{"SendTargets", "All"}}, out).ok()); // full feature phase only
    Negotiator::Context ffp = context(Role::target);
    ffp.login = false;
    Negotiator text({}, ffp);
    EXPECT_FALSE(
        text.receive({{"MaxBurstLength", "65536"}}, LoginStage::full_feature, out).ok()); // login only
    EXPECT_TRUE(text.receive({{"MaxRecvDataSegmentLength", "65536"}, {"SendTargets", "All"}},
                             LoginStage::full_feature, out)
                    .ok());
    ASSERT_NE(text.declared(KeyId::send_targets), nullptr);
    EXPECT_EQ(*text.declared(KeyId::send_targets), "All");
    // A new Text exchange may declare the key again.
    text.reset_exchange();
    EXPECT_TRUE(text.receive({{"MaxRecvDataSegmentLength", "131072"}}, LoginStage::full_feature, out).ok());
    EXPECT_EQ(text.connection_params().max_send_data_segment_length, 131072u);
}

TEST(ParamErrors, InvalidNames) {
    Responder r;
    KeyValueList out;
    EXPECT_FALSE(r.receive({{"InitiatorName", "not-an-iscsi-name"}}, out).ok());
    Negotiator initiator({}, context(Role::initiator));
    EXPECT_FALSE(initiator.receive({{"TargetPortalGroupTag", "65536"}}, op, out).ok());
}

// ---- Originator side ----

TEST(ParamOriginator, InitiatorOffersItsConfiguration) {
    NegotiationConfig c = digests({Digest::crc32c, Digest::none}, {Digest::none});
    c.max_burst_length = 1048576;
    Negotiator n(c, context(Role::initiator));
    KeyValueList out;
    n.offer(op, out);
    EXPECT_EQ(*find_value(out, "HeaderDigest"), "CRC32C,None");
    EXPECT_EQ(*find_value(out, "MaxBurstLength"), "1048576");
    EXPECT_EQ(*find_value(out, "MaxRecvDataSegmentLength"), "262144");
    EXPECT_EQ(*find_value(out, "ErrorRecoveryLevel"), "0");
    EXPECT_EQ(find_value(out, "TaskReporting"), nullptr);
    EXPECT_EQ(find_value(out, "iSCSIProtocolLevel"), nullptr);
    EXPECT_TRUE(n.awaiting_answers());
    KeyValueList again;
    n.offer(op, again);
    EXPECT_TRUE(again.empty()); // each key is offered once
    EXPECT_FALSE(find_duplicate_key(out).has_value());
}

TEST(ParamOriginator, DiscoveryOffersNoIrrelevantKeys) {
    Negotiator n({}, context(Role::initiator));
    n.set_session_type(SessionType::discovery);
    KeyValueList out;
    n.offer(op, out);
    EXPECT_EQ(find_value(out, "MaxBurstLength"), nullptr);
    EXPECT_EQ(find_value(out, "InitialR2T"), nullptr);
    EXPECT_EQ(find_value(out, "MaxConnections"), nullptr);
    EXPECT_NE(find_value(out, "HeaderDigest"), nullptr);
    EXPECT_NE(find_value(out, "MaxRecvDataSegmentLength"), nullptr);
}

TEST(ParamOriginator, NonLeadingConnectionOffersConnectionKeysOnly) {
    Negotiator n({}, context(Role::initiator, /*leading=*/false));
    KeyValueList out;
    n.offer(op, out);
    for (const auto& kv : out) {
        const KeyDef* def = find_key(kv.key);
        ASSERT_NE(def, nullptr);
        EXPECT_EQ(def->scope, KeyScope::connection) << kv.key;
    }
    EXPECT_NE(find_value(out, "HeaderDigest"), nullptr);
}

TEST(ParamOriginator, NoFirstBurstOfferWhenIrrelevantForUs) {
    NegotiationConfig c;
    c.immediate_data = false;
    Negotiator n(c, context(Role::initiator));
    KeyValueList out;
    n.offer(op, out);
    EXPECT_EQ(find_value(out, "FirstBurstLength"), nullptr);
}

TEST(ParamOriginator, ChecksAnswers) {
    auto offered = [](KeyValueList answer) {
        NegotiationConfig c = digests({Digest::crc32c, Digest::none}, {Digest::none});
        c.initial_r2t = true;
        c.immediate_data = false;
        c.default_time2wait = 5;
        auto n = std::make_unique<Negotiator>(c, context(Role::initiator));
        KeyValueList out;
        n->offer(op, out);
        KeyValueList more;
        auto r = n->receive(answer, op, more);
        EXPECT_TRUE(more.empty()); // answers are not answered
        return r.ok();
    };
    EXPECT_TRUE(offered({{"HeaderDigest", "CRC32C"}}));
    EXPECT_FALSE(offered({{"HeaderDigest", "X-other"}}));   // a value not offered
    EXPECT_FALSE(offered({{"MaxBurstLength", "1048576"}})); // above our offer for a minimum
    EXPECT_TRUE(offered({{"MaxBurstLength", "8192"}}));
    EXPECT_FALSE(offered({{"DefaultTime2Wait", "2"}}));              // below our offer for a maximum
    EXPECT_FALSE(offered({{"InitialR2T", "No"}}));                   // Yes OR x is Yes
    EXPECT_FALSE(offered({{"ImmediateData", "Yes"}}));               // No AND x is No
    EXPECT_FALSE(offered({{"MaxBurstLength", "100"}}));              // out of range
    EXPECT_TRUE(offered({{"HeaderDigest", "Reject"}}));              // allowed answer: keeps default
    EXPECT_TRUE(offered({{"ErrorRecoveryLevel", "NotUnderstood"}})); // allowed answer
    EXPECT_TRUE(offered({{"MaxConnections", "Irrelevant"}}));        // allowed answer
}

TEST(ParamOriginator, RejectedKeyWithUnacceptableDefaultFailsFinish) {
    NegotiationConfig c;
    c.immediate_data = false;
    Negotiator n(c, context(Role::initiator));
    KeyValueList out;
    n.offer(op, out);
    KeyValueList none;
    ASSERT_TRUE(n.receive({{"ImmediateData", "Reject"}}, op, none).ok());
    auto r = n.finish();
    ASSERT_FALSE(r.ok()); // the default (Yes) is not what we accept
    EXPECT_EQ(r.error().code, ENOTSUP);
}

TEST(ParamOriginator, DigestRejectedWithoutNoneFailsFinish) {
    Negotiator n(digests({Digest::crc32c}, {Digest::none}), context(Role::initiator));
    KeyValueList out;
    n.offer(op, out);
    KeyValueList none;
    ASSERT_TRUE(n.receive({{"HeaderDigest", "Reject"}}, op, none).ok());
    EXPECT_FALSE(n.finish().ok());
}

TEST(ParamOriginator, TargetOriginatesOnlyKeysWhoseDefaultItCannotAccept) {
    Negotiator plain({}, context(Role::target));
    EXPECT_FALSE(plain.needs_offers());
    KeyValueList out;
    plain.offer(op, out);
    ASSERT_EQ(out.size(), 1u); // just its MaxRecvDataSegmentLength declaration
    EXPECT_EQ(out[0].key, "MaxRecvDataSegmentLength");
    EXPECT_FALSE(plain.awaiting_answers());

    NegotiationConfig c;
    c.max_burst_length = 65536;
    c.first_burst_length = 16384;
    c.immediate_data = false;
    Negotiator strict(c, context(Role::target));
    EXPECT_TRUE(strict.needs_offers());
    KeyValueList offers;
    strict.offer(op, offers, /*declarations=*/false);
    EXPECT_EQ(*find_value(offers, "MaxBurstLength"), "65536");
    EXPECT_EQ(*find_value(offers, "ImmediateData"), "No");
    // FirstBurstLength is offered too: it becomes Irrelevant only once ImmediateData=No is agreed.
    EXPECT_EQ(*find_value(offers, "FirstBurstLength"), "16384");
    EXPECT_TRUE(strict.awaiting_answers());
    KeyValueList none;
    ASSERT_TRUE(strict.receive({{"MaxBurstLength", "65536"}, {"ImmediateData", "No"}}, op, none).ok());
    EXPECT_TRUE(strict.awaiting_answers());
    ASSERT_TRUE(strict.receive({{"FirstBurstLength", "Irrelevant"}}, op, none).ok());
    EXPECT_FALSE(strict.awaiting_answers());
    EXPECT_TRUE(strict.finish().ok());
    EXPECT_EQ(strict.session_params().max_burst_length, 65536u);
}

TEST(ParamOriginator, ResponderAnsweringAKeyNotOfferedBecomesAnOffer) {
    // The initiator never offered MaxBurstLength; the target sends it: that is the target's offer,
    // which the initiator answers with its own result function.
    NegotiationConfig c;
    c.max_burst_length = 32768;
    Negotiator n(c, context(Role::initiator));
    KeyValueList out;
    ASSERT_TRUE(n.receive({{"MaxBurstLength", "65536"}}, op, out).ok());
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].value, "32768");
}

TEST(ParamOriginator, RejectedDeclarationFallsBackToDefault) {
    Negotiator n({}, context(Role::initiator));
    KeyValueList out;
    n.offer(op, out);
    EXPECT_EQ(n.connection_params().max_recv_data_segment_length, 262144u);
    KeyValueList none;
    ASSERT_TRUE(n.receive({{"MaxRecvDataSegmentLength", "Reject"}}, op, none).ok());
    EXPECT_EQ(n.connection_params().max_recv_data_segment_length, 8192u);
}

TEST(ParamRoundTrip, InitiatorAndTargetAgree) {
    NegotiationConfig ic = digests({Digest::crc32c, Digest::none}, {Digest::crc32c, Digest::none});
    ic.max_burst_length = 1048576;
    ic.first_burst_length = 262144;
    ic.initial_r2t = false;
    ic.max_recv_data_segment_length = 131072;
    NegotiationConfig tc = digests({Digest::none, Digest::crc32c}, {Digest::none});
    tc.max_burst_length = 524288;
    tc.first_burst_length = 65536;
    tc.initial_r2t = false;
    tc.max_recv_data_segment_length = 65536;
    Negotiator ini(ic, context(Role::initiator));
    Negotiator tgt(tc, context(Role::target));
    KeyValueList request;
    ini.offer(op, request);
    KeyValueList response;
    ASSERT_TRUE(tgt.receive(request, op, response).ok());
    tgt.offer(op, response);
    KeyValueList none;
    ASSERT_TRUE(ini.receive(response, op, none).ok());
    EXPECT_TRUE(none.empty());
    ASSERT_TRUE(ini.finish().ok());
    ASSERT_TRUE(tgt.finish().ok());
    for (const Negotiator* n : {&ini, &tgt}) {
        EXPECT_EQ(n->session_params().max_burst_length, 524288u);
        EXPECT_EQ(n->session_params().first_burst_length, 65536u);
        EXPECT_FALSE(n->session_params().initial_r2t);
        EXPECT_TRUE(n->session_params().immediate_data);
        EXPECT_EQ(n->connection_params().header_digest, Digest::crc32c);
        EXPECT_EQ(n->connection_params().data_digest, Digest::none);
    }
    EXPECT_EQ(ini.connection_params().max_recv_data_segment_length, 131072u);
    EXPECT_EQ(ini.connection_params().max_send_data_segment_length, 65536u);
    EXPECT_EQ(tgt.connection_params().max_recv_data_segment_length, 65536u);
    EXPECT_EQ(tgt.connection_params().max_send_data_segment_length, 131072u);
}
