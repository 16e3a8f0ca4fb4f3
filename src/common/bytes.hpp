// Big-endian field access for wire formats (iSCSI PDUs, SCSI CDBs and parameter data), little-endian
// access for our own on-disk formats (data-space labels, thin metadata pages), and the value of a hex
// digit for the text forms of binary values (iSCSI keys, ISIDs, %XX escapes in URLs).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ispace {

// 0-15 for 0-9, a-f, A-F; -1 for anything else.
inline int hex_digit_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

inline uint16_t load_be16(const uint8_t* p) {
    return uint16_t(uint16_t(p[0]) << 8 | p[1]);
}
inline uint32_t load_be24(const uint8_t* p) {
    return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
}
inline uint32_t load_be32(const uint8_t* p) {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
inline uint64_t load_be48(const uint8_t* p) {
    return uint64_t(load_be16(p)) << 32 | load_be32(p + 2);
}
inline uint64_t load_be64(const uint8_t* p) {
    return uint64_t(load_be32(p)) << 32 | load_be32(p + 4);
}

inline void store_be16(uint8_t* p, uint16_t v) {
    p[0] = uint8_t(v >> 8);
    p[1] = uint8_t(v);
}
inline void store_be24(uint8_t* p, uint32_t v) {
    p[0] = uint8_t(v >> 16);
    p[1] = uint8_t(v >> 8);
    p[2] = uint8_t(v);
}
inline void store_be32(uint8_t* p, uint32_t v) {
    p[0] = uint8_t(v >> 24);
    p[1] = uint8_t(v >> 16);
    p[2] = uint8_t(v >> 8);
    p[3] = uint8_t(v);
}
inline void store_be48(uint8_t* p, uint64_t v) {
    store_be16(p, uint16_t(v >> 32));
    store_be32(p + 2, uint32_t(v));
}
inline void store_be64(uint8_t* p, uint64_t v) {
    store_be32(p, uint32_t(v >> 32));
    store_be32(p + 4, uint32_t(v));
}

// Little-endian, for the formats we define ourselves: the byte order of the machines they run on.
inline uint16_t load_le16(const uint8_t* p) {
    return uint16_t(p[0] | p[1] << 8);
}
inline uint32_t load_le32(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t load_le64(const uint8_t* p) {
    return uint64_t(load_le32(p)) | uint64_t(load_le32(p + 4)) << 32;
}
inline void store_le16(uint8_t* p, uint16_t v) {
    p[0] = uint8_t(v);
    p[1] = uint8_t(v >> 8);
}
inline void store_le32(uint8_t* p, uint32_t v) {
    store_le16(p, uint16_t(v));
    store_le16(p + 2, uint16_t(v >> 16));
}
inline void store_le64(uint8_t* p, uint64_t v) {
    store_le32(p, uint32_t(v));
    store_le32(p + 4, uint32_t(v >> 32));
}

// Round n up to a multiple of 4 (iSCSI pads data segments and AHS to 4-byte words).
constexpr size_t pad4(size_t n) {
    return (n + 3) & ~size_t(3);
}

} // namespace ispace
