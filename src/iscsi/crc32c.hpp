// CRC32C (Castagnoli), the iSCSI header and data digest (RFC 7143 §13.1, RFC 3720 Appendix B.4).
//
// Convention: crc32c() returns the finished CRC (register preset to all ones, result complemented),
// and takes as `seed` the finished CRC of the bytes before. So the CRC of a message gathered from
// several pieces chains naturally, starting from 0:
//
//     uint32_t crc = crc32c(a, a_len);        // == crc32c(a, a_len, 0)
//     crc = crc32c(b, b_len, crc);            // == crc32c(a || b)
//
// 32 zero bytes give 0x8a9136aa. On the wire the digest goes least significant byte first ("aa 36 91
// 8a" in RFC 3720 B.4): use store_digest()/load_digest(), never store_be32.
//
// Hardware accelerated through ISA-L (crc32_iscsi, which works on the raw register: it neither presets
// nor complements, so we complement on the way in and out).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

struct iovec;

namespace ispace::iscsi {

uint32_t crc32c(const void* data, size_t length, uint32_t seed = 0);
inline uint32_t crc32c(std::span<const uint8_t> data, uint32_t seed = 0) {
    return crc32c(data.data(), data.size(), seed);
}
// The CRC of the concatenation of `count` iovecs (count <= 0 gives `seed`).
uint32_t crc32c(const iovec* iov, int count, uint32_t seed = 0);

// Digest byte order on the wire: least significant byte first.
inline void store_digest(uint8_t* p, uint32_t crc) {
    p[0] = uint8_t(crc);
    p[1] = uint8_t(crc >> 8);
    p[2] = uint8_t(crc >> 16);
    p[3] = uint8_t(crc >> 24);
}
inline uint32_t load_digest(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

} // namespace ispace::iscsi
