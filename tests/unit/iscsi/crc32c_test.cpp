// CRC32C: the RFC 3720 Appendix B.4 vectors, the digest byte order, and chaining.
#include "iscsi/crc32c.hpp"

#include <gtest/gtest.h>

#include <sys/uio.h>

#include <array>
#include <cstring>
#include <random>
#include <vector>

using namespace ispace::iscsi;

namespace {

// Bitwise reference CRC32C (reflected polynomial 0x82f63b78), independent of ISA-L.
uint32_t reference_crc32c(const uint8_t* p, size_t n) {
    uint32_t crc = 0xffffffff;
    for (size_t i = 0; i < n; ++i) {
        crc ^= p[i];
        for (int b = 0; b < 8; ++b) {
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
        }
    }
    return ~crc;
}

// The digest as RFC 3720 B.4 lists it: four bytes in wire order.
std::array<uint8_t, 4> wire(uint32_t crc) {
    std::array<uint8_t, 4> b{};
    store_digest(b.data(), crc);
    return b;
}

using Bytes4 = std::array<uint8_t, 4>;

} // namespace

TEST(Crc32c, Rfc3720ThirtyTwoZeros) {
    std::array<uint8_t, 32> data{};
    EXPECT_EQ(crc32c(data.data(), data.size()), 0x8a9136aau);
    EXPECT_EQ(wire(crc32c(data.data(), data.size())), (Bytes4{0xaa, 0x36, 0x91, 0x8a}));
}

TEST(Crc32c, Rfc3720ThirtyTwoOnes) {
    std::array<uint8_t, 32> data;
    data.fill(0xff);
    EXPECT_EQ(wire(crc32c(data.data(), data.size())), (Bytes4{0x43, 0xab, 0xa8, 0x62}));
}

TEST(Crc32c, Rfc3720Incrementing) {
    std::array<uint8_t, 32> data;
    for (size_t i = 0; i < data.size(); ++i) {
        data[i] = uint8_t(i);
    }
    EXPECT_EQ(wire(crc32c(data.data(), data.size())), (Bytes4{0x4e, 0x79, 0xdd, 0x46}));
}

TEST(Crc32c, Rfc3720Decrementing) {
    std::array<uint8_t, 32> data;
    for (size_t i = 0; i < data.size(); ++i) {
        data[i] = uint8_t(31 - i);
    }
    EXPECT_EQ(wire(crc32c(data.data(), data.size())), (Bytes4{0x5c, 0xdb, 0x3f, 0x11}));
}

TEST(Crc32c, Rfc3720ScsiReadPdu) {
    // The iSCSI SCSI Read (10) Command PDU of RFC 3720 B.4.
    std::array<uint8_t, 48> pdu{};
    pdu[0] = 0x01;
    pdu[1] = 0xc0;
    pdu[16] = 0x14;
    pdu[22] = 0x04;
    pdu[27] = 0x14;
    pdu[31] = 0x18;
    pdu[32] = 0x28;
    pdu[40] = 0x02;
    EXPECT_EQ(wire(crc32c(pdu.data(), pdu.size())), (Bytes4{0x56, 0x3a, 0x96, 0xd9}));
    EXPECT_EQ(crc32c(pdu.data(), pdu.size()), 0xd9963a56u);
}

TEST(Crc32c, CheckValueAndEmpty) {
    const char* check = "123456789";
    EXPECT_EQ(crc32c(check, 9), 0xe3069283u);
    EXPECT_EQ(crc32c(check, 0), 0u);
    // An empty piece leaves a running CRC unchanged.
    EXPECT_EQ(crc32c(check, 0, 0x12345678u), 0x12345678u);
    EXPECT_EQ(crc32c(std::span<const uint8_t>()), 0u);
}

TEST(Crc32c, DigestByteOrderRoundTrip) {
    uint8_t b[4];
    store_digest(b, 0x8a9136aa);
    EXPECT_EQ(b[0], 0xaa);
    EXPECT_EQ(b[3], 0x8a);
    EXPECT_EQ(load_digest(b), 0x8a9136aau);
}

TEST(Crc32c, MatchesReferenceOnRandomData) {
    std::mt19937 rng(7);
    std::vector<uint8_t> buf(4096 + 16);
    for (auto& b : buf) {
        b = uint8_t(rng());
    }
    // Every length up to 300 at every alignment 0-7, then some larger ones.
    for (size_t align = 0; align < 8; ++align) {
        for (size_t len = 0; len <= 300; ++len) {
            ASSERT_EQ(crc32c(buf.data() + align, len), reference_crc32c(buf.data() + align, len))
                << "len " << len << " align " << align;
        }
    }
    for (size_t len : {511u, 512u, 1023u, 4096u}) {
        EXPECT_EQ(crc32c(buf.data() + 3, len), reference_crc32c(buf.data() + 3, len));
    }
}

TEST(Crc32c, ChainingEqualsWhole) {
    std::mt19937 rng(11);
    std::vector<uint8_t> buf(1000);
    for (auto& b : buf) {
        b = uint8_t(rng());
    }
    const uint32_t whole = crc32c(buf.data(), buf.size());
    for (size_t split = 0; split <= buf.size(); ++split) {
        uint32_t crc = crc32c(buf.data(), split);
        crc = crc32c(buf.data() + split, buf.size() - split, crc);
        ASSERT_EQ(crc, whole) << "split at " << split;
    }
    // Three uneven pieces.
    uint32_t crc = crc32c(buf.data(), 1);
    crc = crc32c(buf.data() + 1, 498, crc);
    crc = crc32c(buf.data() + 499, 501, crc);
    EXPECT_EQ(crc, whole);
}

TEST(Crc32c, IovecEqualsWhole) {
    std::vector<uint8_t> buf(777);
    for (size_t i = 0; i < buf.size(); ++i) {
        buf[i] = uint8_t(i * 31 + 7);
    }
    iovec iov[4] = {
        {buf.data(), 100},
        {buf.data() + 100, 0},
        {buf.data() + 100, 333},
        {buf.data() + 433, 344},
    };
    EXPECT_EQ(crc32c(iov, 4), crc32c(buf.data(), buf.size()));
    EXPECT_EQ(crc32c(iov, 0), 0u);
    EXPECT_EQ(crc32c(iov, 0, 42u), 42u);
    // Chaining across an iovec call.
    uint32_t head = crc32c(buf.data(), 100);
    EXPECT_EQ(crc32c(iov + 1, 3, head), crc32c(buf.data(), buf.size()));
}

TEST(Crc32c, LargeBufferChained) {
    std::vector<uint8_t> buf(3 << 20);
    for (size_t i = 0; i < buf.size(); ++i) {
        buf[i] = uint8_t(i ^ (i >> 9));
    }
    uint32_t whole = crc32c(buf.data(), buf.size());
    uint32_t crc = 0;
    for (size_t pos = 0; pos < buf.size(); pos += 65536) {
        crc = crc32c(buf.data() + pos, std::min<size_t>(65536, buf.size() - pos), crc);
    }
    EXPECT_EQ(crc, whole);
}

TEST(Crc32c, ResidueOfMessageWithItsDigest) {
    // Appending the digest in wire order gives a constant CRC whatever the message: a property of
    // CRC32C that holds only if the byte order of store_digest is right.
    for (size_t len : {0u, 1u, 13u, 48u, 100u}) {
        std::vector<uint8_t> msg(len);
        for (size_t i = 0; i < len; ++i) {
            msg[i] = uint8_t(i * 7 + len);
        }
        uint8_t d[4];
        store_digest(d, crc32c(msg.data(), msg.size()));
        msg.insert(msg.end(), d, d + 4);
        EXPECT_EQ(crc32c(msg.data(), msg.size()), 0x48674bc7u) << len;
    }
}
