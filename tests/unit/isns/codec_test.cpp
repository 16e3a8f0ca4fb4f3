// The iSNSP codec (RFC 4171 §5): attribute values, PDU headers, messages split into PDUs and joined
// again from any chunking of the stream, and every malformed input an error, not a crash.
#include "common/bytes.hpp"
#include "isns/message.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace ispace;
using namespace ispace::isns;

namespace {

using Bytes = std::vector<uint8_t>;

Message sample_request() {
    Message m;
    m.function = function_id(Function::dev_attr_reg);
    m.flags = flag::replace;
    m.xid = 0x1234;
    m.attributes.push_back(string_attribute(tag::iscsi_name, "iqn.2026-01.org.example:t1"));
    m.attributes.push_back(string_attribute(tag::entity_identifier, "host-1"));
    m.attributes.push_back(nil_attribute(tag::delimiter));
    m.attributes.push_back(u32_attribute(tag::entity_protocol, entity_protocol_iscsi));
    m.attributes.push_back(address_attribute(tag::portal_ip_address, Address::from_ipv4(0x7f000001)));
    m.attributes.push_back(port_attribute(tag::portal_port, {3260, false}));
    return m;
}

// Feeds `wire` in chunks of the given sizes (cycled) and returns the messages read.
std::vector<Message> read_all(const Bytes& wire, std::vector<size_t> chunks, size_t max_message = 1 << 20) {
    MessageReader reader(max_message);
    std::vector<Message> out;
    size_t at = 0;
    for (size_t i = 0; at < wire.size(); ++i) {
        size_t n = std::min(chunks[i % chunks.size()], wire.size() - at);
        EXPECT_TRUE(reader.feed({wire.data() + at, n})) << reader.failed()->message;
        at += n;
        while (auto m = reader.next()) {
            out.push_back(std::move(*m));
        }
    }
    return out;
}

Bytes header(uint16_t version, uint16_t function, uint16_t length, uint16_t flags, uint16_t xid,
             uint16_t seq) {
    Bytes b(header_size);
    encode_header({version, function, length, flags, xid, seq}, b.data());
    return b;
}

} // namespace

TEST(IsnsAttribute, StringsAreNulTerminatedAndPaddedToFourBytes) {
    EXPECT_EQ(string_attribute(1, "abc").value, (Bytes{'a', 'b', 'c', 0}));
    EXPECT_EQ(string_attribute(1, "abcd").value, (Bytes{'a', 'b', 'c', 'd', 0, 0, 0, 0}));
    EXPECT_EQ(string_attribute(1, "").value, (Bytes{0, 0, 0, 0}));
    EXPECT_EQ(*read_string(string_attribute(1, "iqn.x")), "iqn.x");
}

TEST(IsnsAttribute, MalformedStringsAreErrors) {
    EXPECT_FALSE(read_string(Attribute{32, {'a', 'b', 'c', 'd'}}));          // no NUL
    EXPECT_FALSE(read_string(Attribute{32, {'a', 0, 'x', 0}}));              // bytes after the NUL
    EXPECT_FALSE(read_string(Attribute{32, {'a', 0, 0}}));                   // not a multiple of 4
    EXPECT_FALSE(read_string(Attribute{32, {}}));                            // nil
    EXPECT_EQ(*read_string(Attribute{32, {'a', 0, 0, 0, 0, 0, 0, 0}}), "a"); // extra padding words
}

TEST(IsnsAttribute, NumbersAddressesAndPorts) {
    EXPECT_EQ(*read_u32(u32_attribute(6, 900)), 900u);
    EXPECT_FALSE(read_u32(Attribute{6, {0, 0, 0, 0, 0, 0, 0, 1}}));
    EXPECT_EQ(*read_u64(u64_attribute(4, 0x0102030405060708ull)), 0x0102030405060708ull);

    Address v4 = Address::from_ipv4(0xc0000201);
    EXPECT_TRUE(v4.is_ipv4());
    EXPECT_EQ(v4.to_string(), "192.0.2.1");
    EXPECT_FALSE(v4.is_unspecified());
    EXPECT_TRUE(Address::from_ipv4(0).is_unspecified());
    EXPECT_TRUE(Address{}.is_unspecified());
    EXPECT_EQ(*read_address(address_attribute(16, v4)), v4);
    EXPECT_FALSE(read_address(Attribute{16, Bytes(4)})); // an IPv4 address must come mapped, 16 bytes
    Address compat;                                      // ::192.0.2.1, as open-isns sends IPv4 addresses
    store_be32(compat.bytes.data() + 12, 0xc0000201);
    EXPECT_TRUE(compat.is_ipv4());
    EXPECT_EQ(compat.to_string(), "192.0.2.1");
    EXPECT_EQ(compat.to_endpoint(3260).to_string(), "192.0.2.1:3260");
    Address loopback6; // ::1 is IPv6's loopback, not 0.0.0.1
    loopback6.bytes[15] = 1;
    EXPECT_FALSE(loopback6.is_ipv4());
    EXPECT_EQ(loopback6.to_string(), "::1");

    auto ep = net::parse_endpoint("[2001:db8::5]:3260", 0);
    ASSERT_TRUE(ep);
    Address v6 = Address::from_endpoint(*ep);
    EXPECT_FALSE(v6.is_ipv4());
    EXPECT_EQ(v6.to_string(), "2001:db8::5");
    EXPECT_EQ(v6.to_endpoint(3260).to_string(), "[2001:db8::5]:3260");
    EXPECT_EQ(v4.to_endpoint(860).to_string(), "192.0.2.1:860");

    EXPECT_EQ(*read_port(port_attribute(17, {3260, false})), (Port{3260, false}));
    EXPECT_EQ(*read_port(port_attribute(17, {53, true})), (Port{53, true}));
    EXPECT_EQ(read_u32(port_attribute(17, {53, true})).value(), 0x10035u);
    EXPECT_FALSE(read_port(u32_attribute(17, 0x00020000 | 3260))); // a reserved bit
}

TEST(IsnsAttribute, DescribeNamesTagAndValue) {
    EXPECT_EQ(describe(string_attribute(tag::iscsi_name, "iqn.a")), "iSCSI Name (32) = \"iqn.a\"");
    EXPECT_EQ(describe(port_attribute(tag::portal_port, {3260, false})),
              "Portal TCP/UDP Port (17) = 3260/tcp");
    EXPECT_EQ(describe(nil_attribute(tag::pg_tag)), "PG Tag (51) = nil");
    EXPECT_EQ(describe(Attribute{9999, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}),
              "tag 9999 = 12 bytes 0102030405060708090a0b0c");
}

TEST(IsnsMessage, OnePduRoundTrip) {
    Message m = sample_request();
    Bytes wire = encode(m, flag::client);
    ASSERT_GE(wire.size(), header_size);
    auto h = decode_header(wire);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->function, 1);
    EXPECT_EQ(h->flags, flag::client | flag::replace | flag::first | flag::last);
    EXPECT_EQ(h->xid, 0x1234);
    EXPECT_EQ(h->sequence, 0);
    EXPECT_EQ(h->length, wire.size() - header_size);

    auto got = read_all(wire, {1});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].function, m.function);
    EXPECT_EQ(got[0].xid, m.xid);
    EXPECT_EQ(got[0].attributes, m.attributes);
    EXPECT_EQ(got[0].before_delimiter().size(), 2u);
    ASSERT_EQ(got[0].after_delimiter().size(), 3u);
    EXPECT_EQ(got[0].after_delimiter()[0].tag, tag::entity_protocol);
    EXPECT_EQ(got[0].find(tag::portal_port)->value, port_attribute(17, {3260, false}).value);
}

TEST(IsnsMessage, ResponsesCarryTheStatusWordFirst) {
    Message r;
    r.function = response_id(Function::dev_attr_qry);
    r.xid = 7;
    r.status = uint32_t(Status::source_unknown);
    Bytes wire = encode(r, flag::server);
    EXPECT_EQ(wire.size(), header_size + 4);
    EXPECT_EQ(load_be32(wire.data() + header_size), 6u);
    auto got = read_all(wire, {5});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0].is_response());
    EXPECT_EQ(got[0].status, 6u);
    EXPECT_TRUE(got[0].attributes.empty());
    EXPECT_EQ(function_name(r.function), "DevAttrQryRsp");
    EXPECT_EQ(status_name(r.status), "Source Unknown (6)");
}

TEST(IsnsMessage, LargeMessagesSpanPdusAndJoinFromAnyChunking) {
    Message m = sample_request();
    for (int i = 0; i < 300; ++i) {
        m.attributes.push_back(
            string_attribute(tag::iscsi_name, "iqn.2026-01.org.example:target-" + std::to_string(i)));
    }
    Bytes wire = encode(m, flag::client, 256);
    // Several PDUs, sequence numbers from 0, FIRST on the first and LAST on the last only.
    size_t at = 0;
    uint16_t seq = 0;
    while (at < wire.size()) {
        auto h = decode_header({wire.data() + at, wire.size() - at});
        ASSERT_TRUE(h);
        EXPECT_EQ(h->sequence, seq);
        EXPECT_EQ(bool(h->flags & flag::first), seq == 0);
        at += header_size + h->length;
        EXPECT_EQ(bool(h->flags & flag::last), at == wire.size());
        EXPECT_LE(h->length, 256);
        ++seq;
    }
    EXPECT_GT(seq, 10);
    for (auto chunks : std::vector<std::vector<size_t>>{{1}, {3, 7, 11}, {4096}, {wire.size()}}) {
        auto got = read_all(wire, chunks);
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(got[0].attributes, m.attributes);
    }
}

TEST(IsnsMessage, BackToBackMessagesAreReadInOrder) {
    Bytes wire;
    for (uint16_t xid = 1; xid <= 3; ++xid) {
        Message m = sample_request();
        m.xid = xid;
        Bytes one = encode(m, flag::client, 64);
        wire.insert(wire.end(), one.begin(), one.end());
    }
    auto got = read_all(wire, {13});
    ASSERT_EQ(got.size(), 3u);
    for (uint16_t i = 0; i < 3; ++i) {
        EXPECT_EQ(got[i].xid, i + 1);
    }
}

TEST(IsnsMessage, MalformedAttributesAreErrorsNamingTheOffset) {
    // A length that runs past the payload.
    Bytes payload(8);
    store_be32(payload.data(), 32);
    store_be32(payload.data() + 4, 0x7ffffff0);
    auto r = decode_attributes(payload);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("runs past"), std::string::npos) << r.error().message;
    // A length that is not a multiple of 4.
    store_be32(payload.data() + 4, 3);
    payload.resize(11);
    EXPECT_FALSE(decode_attributes(payload));
    // A header cut short.
    EXPECT_FALSE(decode_attributes(Bytes{0, 0, 0, 32, 0}));
    // A delimiter with a value.
    Bytes delim(12);
    store_be32(delim.data() + 4, 4);
    EXPECT_FALSE(decode_attributes(delim));
    // A response too short for its status word.
    EXPECT_FALSE(decode_message(response_id(Function::esi), 0, 1, Bytes{0, 0}));
}

TEST(IsnsMessage, BrokenStreamsAreStickyErrors) {
    struct Case {
        const char* what;
        Bytes wire;
    };
    Bytes good = encode(sample_request(), flag::client);
    Bytes two_pdus = encode(sample_request(), flag::client, 16);
    Bytes second_first = two_pdus; // the second PDU claims sequence 5
    {
        auto h = decode_header(second_first);
        size_t next = header_size + h->length;
        store_be16(second_first.data() + next + 10, 5);
    }
    Bytes interleaved = two_pdus; // the second PDU has another transaction ID
    {
        auto h = decode_header(interleaved);
        size_t next = header_size + h->length;
        store_be16(interleaved.data() + next + 8, 0x9999);
    }
    Bytes starts_late = good;
    store_be16(starts_late.data() + 10, 1);
    Case cases[] = {
        {"version 2", header(2, 1, 0, flag::first | flag::last, 1, 0)},
        {"authentication block", header(1, 1, 0, flag::first | flag::last | flag::auth, 1, 0)},
        {"sequence gap", second_first},
        {"interleaved", interleaved},
        {"first PDU with sequence 1", starts_late},
    };
    for (const Case& c : cases) {
        MessageReader reader;
        auto fed = reader.feed(c.wire);
        EXPECT_FALSE(fed) << c.what;
        EXPECT_TRUE(reader.failed().has_value()) << c.what;
        EXPECT_FALSE(reader.feed(good)) << c.what << ": the error must stick";
        EXPECT_FALSE(reader.next()) << c.what;
    }
}

TEST(IsnsMessage, MessageSizeIsBounded) {
    Message m = sample_request();
    for (int i = 0; i < 100; ++i) {
        m.attributes.push_back(string_attribute(tag::iscsi_alias, std::string(100, 'a')));
    }
    Bytes wire = encode(m, flag::client, 1024);
    MessageReader reader(4096);
    auto fed = reader.feed(wire);
    ASSERT_FALSE(fed);
    EXPECT_EQ(fed.error().code, EMSGSIZE);
}

TEST(IsnsMessage, ReadyMessagesAreBounded) {
    Bytes wire;
    for (int i = 0; i < 5; ++i) {
        Bytes one = encode(sample_request(), flag::client);
        wire.insert(wire.end(), one.begin(), one.end());
    }
    MessageReader reader(1 << 20, 3);
    EXPECT_FALSE(reader.feed(wire));
}

TEST(IsnsMessage, EmptyPayloadIsOnePdu) {
    Message m;
    m.function = function_id(Function::heartbeat);
    Bytes wire = encode(m, flag::server);
    EXPECT_EQ(wire.size(), header_size);
    auto got = read_all(wire, {12});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0].attributes.empty());
}

TEST(IsnsMessage, RandomBytesNeverCrash) {
    std::mt19937 rng(4171);
    for (int round = 0; round < 2000; ++round) {
        Bytes wire(rng() % 200);
        for (auto& b : wire) {
            b = uint8_t(rng());
        }
        if (wire.size() >= header_size && rng() % 2) {
            // Often a plausible header, so the payload paths run too.
            uint16_t length = uint16_t(wire.size() - header_size);
            encode_header({1, uint16_t(rng() % 16 | (rng() % 2 ? response_bit : 0)), length,
                           uint16_t(flag::first | flag::last), 1, 0},
                          wire.data());
        }
        MessageReader reader(1024);
        (void)reader.feed(wire);
        while (auto m = reader.next()) {
            for (const Attribute& a : m->attributes) {
                (void)describe(a);
            }
        }
    }
}
