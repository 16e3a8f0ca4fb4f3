// Parameters by their RFC 7143 key names: defaults for new sessions, keys that may change in a running
// session, and a session's keys as text.
#include "iscsi/param_settings.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

std::string value_of(const KeyValueList& list, std::string_view key) {
    for (const auto& kv : list) {
        if (kv.key == key) {
            return kv.value;
        }
    }
    return "(absent)";
}

} // namespace

TEST(ParamSettings, SetsDefaultsForNewSessions) {
    NegotiationConfig config;
    ASSERT_TRUE(set_negotiation_key(config, "ImmediateData", "No").ok());
    EXPECT_FALSE(config.immediate_data);
    ASSERT_TRUE(set_negotiation_key(config, "MaxRecvDataSegmentLength", "65536").ok());
    EXPECT_EQ(config.max_recv_data_segment_length, 65536u);
    ASSERT_TRUE(set_negotiation_key(config, "HeaderDigest", "CRC32C,None").ok());
    EXPECT_EQ(config.header_digests, (std::vector<Digest>{Digest::crc32c, Digest::none}));
    ASSERT_TRUE(set_negotiation_key(config, "MaxConnections", "4").ok());
    EXPECT_EQ(config.max_connections, 4);
    ASSERT_TRUE(set_negotiation_key(config, "DefaultTime2Wait", "5").ok());
    EXPECT_EQ(config.default_time2wait, 5);
    EXPECT_EQ(value_of(describe(config), "ImmediateData"), "No");
    EXPECT_EQ(value_of(describe(config), "HeaderDigest"), "CRC32C,None");
}

TEST(ParamSettings, BadValuesChangeNothingAndSayWhatIsAllowed) {
    NegotiationConfig config;
    NegotiationConfig before = config;
    auto expect_error = [&](std::string_view key, std::string_view value, std::string_view words) {
        auto r = set_negotiation_key(config, key, value);
        ASSERT_FALSE(r.ok()) << key << "=" << value;
        EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
        EXPECT_EQ(config.max_burst_length, before.max_burst_length);
        EXPECT_EQ(config.first_burst_length, before.first_burst_length);
        EXPECT_EQ(config.immediate_data, before.immediate_data);
    };
    expect_error("ImmediateData", "maybe", "Yes or No");
    expect_error("MaxRecvDataSegmentLength", "100", "512 to 16777215");
    expect_error("FirstBurstLength", "16777215", "FirstBurstLength must be");
    expect_error("HeaderDigest", "MD5", "CRC32C, None");
    expect_error("HeaderDigest", "None,None", "twice");
    expect_error("Bogus", "1", "not an iSCSI key");
    expect_error("TargetName", "x", "not a default");
    expect_error("ErrorRecoveryLevel", "3", "levels 0..2");
    expect_error("ErrorRecoveryLevel", "x", "levels 0..2");
    NegotiationConfig c;
    ASSERT_TRUE(set_negotiation_key(c, "ErrorRecoveryLevel", "1").ok());
    EXPECT_EQ(c.error_recovery_level, 1);
    ASSERT_TRUE(set_negotiation_key(c, "ErrorRecoveryLevel", "0").ok());
    EXPECT_EQ(c.error_recovery_level, 0);
}

TEST(ParamSettings, OnlyKeysRfc7143AllowsInFullFeaturePhaseMayChangeInASession) {
    EXPECT_TRUE(check_renegotiable("MaxRecvDataSegmentLength", "65536").ok());
    EXPECT_TRUE(check_renegotiable("TargetAlias", "disks").ok());
    auto refused = [](std::string_view key, std::string_view words) {
        auto r = check_renegotiable(key, "1");
        ASSERT_FALSE(r.ok()) << key;
        EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
    };
    refused("HeaderDigest", "Use: IO");
    refused("ImmediateData", "Use: LO");
    refused("MaxBurstLength", "Use: LO");
    refused("InitiatorAlias", "initiator's");
    refused("TargetAddress", "SendTargets");
    refused("Nonsense", "not an iSCSI key");
    EXPECT_FALSE(check_renegotiable("MaxRecvDataSegmentLength", "100").ok());
}

TEST(ParamSettings, DescribesEveryNegotiatedKey) {
    SessionParams s;
    s.initiator_name = "iqn.x:i";
    s.target_name = "iqn.x:t";
    s.max_burst_length = 1 << 20;
    s.immediate_data = false;
    KeyValueList keys = describe(s);
    EXPECT_EQ(value_of(keys, "MaxBurstLength"), "1048576");
    EXPECT_EQ(value_of(keys, "ImmediateData"), "No");
    EXPECT_EQ(value_of(keys, "InitiatorName"), "iqn.x:i");
    EXPECT_EQ(value_of(keys, "ErrorRecoveryLevel"), "0");
    ConnectionParams c;
    c.header_digest = Digest::crc32c;
    c.max_recv_data_segment_length = 262144;
    c.max_send_data_segment_length = 65536;
    KeyValueList initiator;
    KeyValueList conn = describe(c, &initiator);
    EXPECT_EQ(value_of(conn, "HeaderDigest"), "CRC32C");
    EXPECT_EQ(value_of(conn, "MaxRecvDataSegmentLength"), "262144");
    EXPECT_EQ(value_of(initiator, "MaxRecvDataSegmentLength"), "65536");
}
