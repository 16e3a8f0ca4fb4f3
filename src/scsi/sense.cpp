#include "scsi/sense.hpp"

#include "common/bytes.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace ispace::scsi {
namespace {

constexpr uint8_t fixed_current = 0x70;
constexpr uint8_t descriptor_current = 0x72;
constexpr uint8_t information_descriptor = 0x00;
constexpr uint8_t sense_key_specific_descriptor = 0x02;

// The three sense-key-specific bytes (SPC-4 4.5.2.4.2, field pointer form).
void store_sks(const Sense& s, uint8_t* p) {
    p[0] = 0x80; // SKSV
    if (s.in_cdb) {
        p[0] |= 0x40;
    }
    if (s.bit_pointer_valid) {
        p[0] |= 0x08 | (s.bit_pointer & 0x07);
    }
    store_be16(p + 1, s.field_pointer);
}

Sense pointing_at(bool in_cdb, uint16_t code, uint16_t byte, int bit) {
    Sense s = Sense::make(SenseKey::illegal_request, code);
    s.field_pointer_valid = true;
    s.in_cdb = in_cdb;
    s.field_pointer = byte;
    if (bit >= 0 && bit <= 7) {
        s.bit_pointer_valid = true;
        s.bit_pointer = uint8_t(bit);
    }
    return s;
}

} // namespace

Sense Sense::invalid_field_in_cdb(uint16_t byte, int bit) {
    return pointing_at(true, asc::invalid_field_in_cdb, byte, bit);
}

Sense Sense::invalid_field_in_parameter_list(uint16_t byte, int bit) {
    return pointing_at(false, asc::invalid_field_in_parameter_list, byte, bit);
}

Sense Sense::miscompare(uint64_t offset) {
    Sense s = make(SenseKey::miscompare, asc::miscompare_during_verify);
    s.information_valid = true;
    s.information = offset;
    return s;
}

Sense Sense::from_errno(int error, bool write) {
    switch (-error) {
    case EIO:
        return make(SenseKey::medium_error, write ? asc::write_error : asc::unrecovered_read_error);
    case EROFS:
    case EPERM:
    case EACCES:
        return write_protected();
    case ENOSPC:
    case EDQUOT:
        // A thin device ran out of space: SBC-3 4.7.3.5 names this condition.
        return make(SenseKey::data_protect, asc::space_allocation_failed_write_protect);
    default:
        return internal_target_failure();
    }
}

size_t build_sense(const Sense& s, bool descriptor, std::span<uint8_t> out) {
    std::array<uint8_t, max_built_sense> b{};
    size_t length = 0;
    if (descriptor) {
        b[0] = descriptor_current;
        b[1] = uint8_t(s.key) & 0x0f;
        b[2] = s.asc();
        b[3] = s.ascq();
        length = 8;
        if (s.information_valid) {
            uint8_t* d = &b[length];
            d[0] = information_descriptor;
            d[1] = 0x0a;
            d[2] = 0x80; // VALID
            store_be64(d + 4, s.information);
            length += 12;
        }
        if (s.field_pointer_valid) {
            uint8_t* d = &b[length];
            d[0] = sense_key_specific_descriptor;
            d[1] = 0x06;
            store_sks(s, d + 4);
            length += 8;
        }
        b[7] = uint8_t(length - 8);
    } else {
        b[0] = fixed_current;
        if (s.information_valid) {
            b[0] |= 0x80; // VALID
            // Fixed format has four bytes; larger values (LBAs past 2^32) need descriptor format, and
            // SPC-4 says VALID is then zero.
            if (s.information > 0xffffffffu) {
                b[0] &= 0x7f;
            }
            store_be32(&b[3], uint32_t(s.information));
        }
        b[2] = uint8_t(s.key) & 0x0f;
        b[7] = fixed_sense_length - 8;
        b[12] = s.asc();
        b[13] = s.ascq();
        if (s.field_pointer_valid) {
            store_sks(s, &b[15]);
        }
        length = fixed_sense_length;
    }
    size_t n = std::min(length, out.size());
    std::memcpy(out.data(), b.data(), n);
    return n;
}

std::optional<Sense> parse_sense(std::span<const uint8_t> d) {
    if (d.size() < 8) {
        return std::nullopt;
    }
    uint8_t code = d[0] & 0x7f;
    Sense s;
    if (code == 0x70 || code == 0x71) {
        if (d.size() < 14) {
            return std::nullopt;
        }
        s.key = SenseKey(d[2] & 0x0f);
        s.code = uint16_t(d[12] << 8 | d[13]);
        if (d[0] & 0x80) {
            s.information_valid = true;
            s.information = load_be32(&d[3]);
        }
        if (d.size() >= 18 && (d[15] & 0x80)) {
            s.field_pointer_valid = true;
            s.in_cdb = d[15] & 0x40;
            s.bit_pointer_valid = d[15] & 0x08;
            s.bit_pointer = d[15] & 0x07;
            s.field_pointer = load_be16(&d[16]);
        }
        return s;
    }
    if (code == 0x72 || code == 0x73) {
        s.key = SenseKey(d[1] & 0x0f);
        s.code = uint16_t(d[2] << 8 | d[3]);
        size_t end = std::min(d.size(), size_t(8) + d[7]);
        size_t at = 8;
        while (at + 2 <= end) {
            uint8_t type = d[at];
            size_t len = size_t(d[at + 1]) + 2;
            if (at + len > end) {
                break;
            }
            if (type == information_descriptor && len >= 12) {
                s.information_valid = d[at + 2] & 0x80;
                s.information = load_be64(&d[at + 4]);
            } else if (type == sense_key_specific_descriptor && len >= 8 && (d[at + 4] & 0x80)) {
                s.field_pointer_valid = true;
                s.in_cdb = d[at + 4] & 0x40;
                s.bit_pointer_valid = d[at + 4] & 0x08;
                s.bit_pointer = d[at + 4] & 0x07;
                s.field_pointer = load_be16(&d[at + 5]);
            }
            at += len;
        }
        return s;
    }
    return std::nullopt;
}

} // namespace ispace::scsi
