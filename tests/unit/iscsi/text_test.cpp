// Text keys (RFC 7143 §6.1): parsing, building, bounds, reassembly and the value grammars.
#include "iscsi/text.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

std::vector<uint8_t> bytes(std::string_view s) {
    return std::vector<uint8_t>(s.begin(), s.end());
}

} // namespace

TEST(Text, ParsesPairsInOrder) {
    auto data = bytes(std::string("InitiatorName=iqn.2024-01.org.example:host\0SessionType=Normal\0", 62));
    auto pairs = parse_text(data);
    ASSERT_TRUE(pairs.ok()) << pairs.error().message;
    ASSERT_EQ(pairs->size(), 2u);
    EXPECT_EQ((*pairs)[0].key, "InitiatorName");
    EXPECT_EQ((*pairs)[0].value, "iqn.2024-01.org.example:host");
    EXPECT_EQ((*pairs)[1].key, "SessionType");
    EXPECT_EQ((*pairs)[1].value, "Normal");
}

TEST(Text, EmptyValueAndValueContainingEquals) {
    auto data = bytes(std::string("TargetAlias=\0X-a=b=c\0", 21));
    auto pairs = parse_text(data);
    ASSERT_TRUE(pairs.ok());
    EXPECT_EQ((*pairs)[0].value, "");
    EXPECT_EQ((*pairs)[1].value, "b=c"); // the value is whatever follows the first '='
}

TEST(Text, SkipsPaddingNuls) {
    auto data = bytes(std::string("A=1\0\0\0", 6));
    auto pairs = parse_text(data);
    ASSERT_TRUE(pairs.ok());
    EXPECT_EQ(pairs->size(), 1u);
}

TEST(Text, RejectsMissingTerminator) {
    auto r = parse_text(bytes("HeaderDigest=None"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EPROTO);
}

TEST(Text, RejectsPairWithoutEquals) {
    auto r = parse_text(bytes(std::string("HeaderDigest\0", 13)));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EPROTO);
}

TEST(Text, KeyCharacterSet) {
    EXPECT_TRUE(is_valid_key("MaxBurstLength"));
    EXPECT_TRUE(is_valid_key("CHAP_A"));
    EXPECT_TRUE(is_valid_key("X-com.example.Key"));
    EXPECT_TRUE(is_valid_key("X#IANA-key"));
    EXPECT_TRUE(is_valid_key("A.b-c+d@e_f9"));
    EXPECT_FALSE(is_valid_key(""));
    EXPECT_FALSE(is_valid_key("lowercaseStart"));
    // RFC 7143 §13.24's key starts with a lower-case letter all the same.
    EXPECT_TRUE(is_valid_key("iSCSIProtocolLevel"));
    auto level = parse_text(bytes(std::string("iSCSIProtocolLevel=1\0", 21)));
    ASSERT_TRUE(level.ok()) << level.error().message;
    EXPECT_EQ(level->at(0).key, "iSCSIProtocolLevel");
    EXPECT_FALSE(is_valid_key("9Digit"));
    EXPECT_FALSE(is_valid_key("Has Space"));
    EXPECT_FALSE(is_valid_key("Bad/Slash"));
    EXPECT_FALSE(is_valid_key("Y#NotX"));
    EXPECT_FALSE(is_valid_key(std::string(64, 'K')));
    EXPECT_TRUE(is_valid_key(std::string(63, 'K')));
    auto r = parse_text(bytes(std::string("bad=1\0", 6)));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EPROTO);
}

TEST(Text, KeyLengthLimitIs63) {
    std::string text = std::string(64, 'K') + "=1" + std::string(1, '\0');
    auto r = parse_text(bytes(text));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EMSGSIZE);
}

TEST(Text, ValueLengthLimits) {
    std::string ok = "TargetAlias=" + std::string(255, 'a') + std::string(1, '\0');
    EXPECT_TRUE(parse_text(bytes(ok)).ok());
    std::string too_long = "TargetAlias=" + std::string(256, 'a') + std::string(1, '\0');
    auto r = parse_text(bytes(too_long));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EMSGSIZE);
    // CHAP_C/CHAP_R may be long (large-binary-values, up to 8192 characters here).
    std::string chap = "CHAP_C=0x" + std::string(2048, 'A') + std::string(1, '\0');
    EXPECT_TRUE(parse_text(bytes(chap)).ok());
    std::string chap_too_long = "CHAP_R=0x" + std::string(8192, 'A') + std::string(1, '\0');
    EXPECT_FALSE(parse_text(bytes(chap_too_long)).ok());
    EXPECT_EQ(max_value_length_for("CHAP_C"), 8192u);
    EXPECT_EQ(max_value_length_for("MaxBurstLength"), 255u);
}

TEST(Text, PairCountBound) {
    std::string text;
    for (int i = 0; i < 300; ++i) {
        text += "X-k" + std::to_string(i) + "=v" + std::string(1, '\0');
    }
    TextLimits limits;
    limits.max_pairs = 256;
    auto r = parse_text(bytes(text), limits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, E2BIG);
    limits.max_pairs = 300;
    EXPECT_TRUE(parse_text(bytes(text), limits).ok());
}

TEST(Text, ByteBound) {
    TextLimits limits;
    limits.max_bytes = 16;
    auto r = parse_text(bytes(std::string("InitialR2T=Yes\0ImmediateData=No\0", 32)), limits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, E2BIG);
}

TEST(Text, EncodeRoundTrip) {
    KeyValueList pairs{{"HeaderDigest", "CRC32C,None"}, {"MaxRecvDataSegmentLength", "262144"}};
    auto encoded = encode_text(pairs);
    EXPECT_EQ(encoded.back(), 0);
    auto decoded = parse_text(encoded);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, pairs);
}

TEST(Text, DuplicateKeyDetector) {
    KeyValueList pairs{{"A", "1"}, {"B", "2"}, {"A", "3"}};
    auto dup = find_duplicate_key(pairs);
    ASSERT_TRUE(dup.has_value());
    EXPECT_EQ(*dup, "A");
    EXPECT_FALSE(find_duplicate_key({{"A", "1"}, {"B", "1"}}).has_value());
    ASSERT_NE(find_value(pairs, "B"), nullptr);
    EXPECT_EQ(*find_value(pairs, "B"), "2");
    EXPECT_EQ(find_value(pairs, "C"), nullptr);
}

TEST(Text, AssemblerReassemblesAndBounds) {
    TextAssembler assembler(10);
    ASSERT_TRUE(assembler.append(bytes("Key=")).ok());
    ASSERT_TRUE(assembler.append(bytes(std::string("val\0", 4))).ok());
    EXPECT_EQ(assembler.size(), 8u);
    auto pairs = parse_text(assembler.take());
    ASSERT_TRUE(pairs.ok());
    EXPECT_EQ((*pairs)[0].value, "val"); // a pair split across PDUs is joined
    EXPECT_TRUE(assembler.empty());
    ASSERT_TRUE(assembler.append(bytes("0123456789")).ok());
    auto r = assembler.append(bytes("x"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, E2BIG);
    EXPECT_TRUE(assembler.empty()); // nothing kept once over the bound
}

TEST(Text, SplitText) {
    std::vector<uint8_t> text(20000, 'a');
    auto parts = split_text(text, 8192);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(parts[0].size(), 8192u);
    EXPECT_EQ(parts[2].size(), 20000u - 2 * 8192);
    EXPECT_EQ(split_text({}, 8192).size(), 1u);
}

TEST(TextValues, Numbers) {
    EXPECT_EQ(*parse_number("0"), 0u);
    EXPECT_EQ(*parse_number("65536"), 65536u);
    EXPECT_EQ(*parse_number("18446744073709551615"), UINT64_MAX);
    EXPECT_FALSE(parse_number("18446744073709551616").ok());
    EXPECT_EQ(*parse_number("0x10"), 16u);
    EXPECT_EQ(*parse_number("0XfF"), 255u);
    EXPECT_EQ(*parse_number("0x0000000000000000000001"), 1u); // leading zeros do not count
    EXPECT_FALSE(parse_number("0x1FFFFFFFFFFFFFFFF").ok());
    EXPECT_EQ(*parse_number("0bAQA="), 256u); // base64 of {0x01, 0x00}
    EXPECT_EQ(*parse_number("0bAQA"), 256u);  // padding optional
    EXPECT_FALSE(parse_number("").ok());
    EXPECT_FALSE(parse_number("0x").ok());
    EXPECT_FALSE(parse_number("0b").ok());
    EXPECT_FALSE(parse_number("12a").ok());
    EXPECT_FALSE(parse_number("-1").ok());
    EXPECT_FALSE(parse_number(" 1").ok());
    EXPECT_FALSE(parse_number("0xG").ok());
    EXPECT_FALSE(parse_number("0bA=A=").ok());
}

TEST(TextValues, LargeBinaryValues) {
    auto hex = parse_binary("0x0102ff");
    ASSERT_TRUE(hex.ok());
    EXPECT_EQ(*hex, (std::vector<uint8_t>{1, 2, 0xff}));
    auto odd = parse_binary("0xabc");
    ASSERT_TRUE(odd.ok());
    EXPECT_EQ(*odd, (std::vector<uint8_t>{0x0a, 0xbc}));
    std::vector<uint8_t> big(1024);
    for (size_t i = 0; i < big.size(); ++i) {
        big[i] = uint8_t(i * 7);
    }
    auto b64 = parse_binary(format_base64(big));
    ASSERT_TRUE(b64.ok());
    EXPECT_EQ(*b64, big);
    auto h = parse_binary(format_hex(big));
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(*h, big);
    std::vector<uint8_t> too_big(1025, 1);
    auto r = parse_binary(format_hex(too_big));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EMSGSIZE);
    EXPECT_EQ(format_hex(std::vector<uint8_t>{0xde, 0xad}), "0xDEAD");
    EXPECT_EQ(format_base64(std::vector<uint8_t>{'M', 'a'}), "0bTWE=");
    EXPECT_EQ(*parse_binary("258"), (std::vector<uint8_t>{1, 2}));
}

TEST(TextValues, Booleans) {
    EXPECT_TRUE(*parse_bool("Yes"));
    EXPECT_FALSE(*parse_bool("No"));
    EXPECT_FALSE(parse_bool("yes").ok()); // case sensitive (RFC 7143 §6.1)
    EXPECT_FALSE(parse_bool("").ok());
    EXPECT_FALSE(parse_bool("Yes ").ok());
    EXPECT_EQ(format_bool(true), "Yes");
}

TEST(TextValues, Lists) {
    auto list = parse_list("CRC32C,None");
    ASSERT_TRUE(list.ok());
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ((*list)[0], "CRC32C");
    EXPECT_FALSE(parse_list("").ok());
    EXPECT_FALSE(parse_list("A,,B").ok());
    EXPECT_FALSE(parse_list("A,").ok());
    std::string many;
    for (int i = 0; i < 40; ++i) {
        many += (i ? "," : "") + std::string("V");
    }
    auto r = parse_list(many, 32);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, E2BIG);
}

TEST(TextValues, Ranges) {
    auto range = parse_range("512~8192");
    ASSERT_TRUE(range.ok());
    EXPECT_EQ(range->low, 512u);
    EXPECT_EQ(range->high, 8192u);
    EXPECT_TRUE(parse_range("5~5").ok());
    EXPECT_FALSE(parse_range("8192~512").ok());
    EXPECT_FALSE(parse_range("512").ok());
    EXPECT_FALSE(parse_range("~5").ok());
    EXPECT_EQ(parse_range("0x10~0x20")->high, 32u);
}

TEST(TextValues, Names) {
    EXPECT_TRUE(is_valid_iscsi_name("iqn.2024-01.org.example:storage.disk1"));
    EXPECT_TRUE(is_valid_iscsi_name("eui.02004567A425678D"));
    EXPECT_TRUE(is_valid_iscsi_name("naa.52004567BA64678D"));
    EXPECT_FALSE(is_valid_iscsi_name("foo.bar"));
    EXPECT_FALSE(is_valid_iscsi_name("iqn.has space"));
    EXPECT_FALSE(is_valid_iscsi_name(std::string("iqn.ctl\x01", 8)));
    EXPECT_FALSE(is_valid_iscsi_name("iqn." + std::string(220, 'a')));
    EXPECT_TRUE(is_valid_local_name("Disk array \xc3\xa9t\xc3\xa9"));
    EXPECT_FALSE(is_valid_local_name("bad\x01"));
    EXPECT_FALSE(is_valid_local_name("\xc3"));
    EXPECT_TRUE(is_reserved_answer("Reject"));
    EXPECT_TRUE(is_reserved_answer("NotUnderstood"));
    EXPECT_TRUE(is_reserved_answer("Irrelevant"));
    EXPECT_FALSE(is_reserved_answer("None"));
    EXPECT_TRUE(is_extension_key("X-com.example.foo"));
    EXPECT_TRUE(is_extension_key("X#foo"));
    EXPECT_FALSE(is_extension_key("XFoo"));
}

// Configured names are checked as RFC 3720 §3.2.6.3 describes them, and compared case-folded.
TEST(IscsiName, ConfiguredNamesFollowRfc3720) {
    for (const char* good :
         {"iqn.2026-11.org.example:disk1", "iqn.2026-11.org.example", "IQN.2026-11.Org.Example:Disk",
          "eui.02004567A425678D", "naa.52004567BA64678D", "naa.6001405abcdef0123456789abcdef012"}) {
        EXPECT_TRUE(check_iscsi_name(good)) << good;
    }
    for (const char* bad :
         {"iqn.x:t", "iqn.2026-13.org.example:d", "iqn.2026-1.org.example", "iqn.2026-11.:disk",
          "iqn.2026-11.org.example:my_disk", "iqn.2026-11.org.example:a/b", "eui.0200",
          "eui.02004567A425678Z", "naa.1234", "disk1"}) {
        EXPECT_FALSE(check_iscsi_name(bad)) << bad;
    }
    EXPECT_EQ(fold_iscsi_name("IQN.2026-11.Org.Example:Disk"), "iqn.2026-11.org.example:disk");
}
