#include "scsi_spec/sense.hpp"

#include "common/bytes.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace ispace::scsi {
namespace {

constexpr uint8_t fixed_current = 0x70;
constexpr uint8_t fixed_deferred = 0x71;
constexpr uint8_t descriptor_current = 0x72;
constexpr uint8_t descriptor_deferred = 0x73;
constexpr uint8_t information_descriptor = 0x00;
constexpr uint8_t sense_key_specific_descriptor = 0x02;

struct AscRow {
    uint16_t code;
    const char* text;
};

constexpr AscRow asc_rows[] = {
#define ISPACE_SCSI_ASC_ROW(name, code, text) {code, text},
    ISPACE_SCSI_ASC_TABLE(ISPACE_SCSI_ASC_ROW)
#undef ISPACE_SCSI_ASC_ROW
};

constexpr bool strictly_ascending() {
    for (size_t i = 1; i < std::size(asc_rows); ++i) {
        if (asc_rows[i - 1].code >= asc_rows[i].code) {
            return false;
        }
    }
    return true;
}
// asc_text() searches by halves, and a code listed twice would have two texts.
static_assert(strictly_ascending(), "asc_table.hpp: rows must be in ascending order, each code once");

// The three sense-key-specific bytes (SPC-5 4.4.2.4.2, field pointer form).
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

void load_sks(const uint8_t* p, Sense& s) {
    if ((p[0] & 0x80) == 0) {
        return;
    }
    s.field_pointer_valid = true;
    s.in_cdb = p[0] & 0x40;
    s.bit_pointer_valid = p[0] & 0x08;
    s.bit_pointer = p[0] & 0x07;
    s.field_pointer = load_be16(p + 1);
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

const char* sense_key_name(SenseKey key) {
    static const char* const names[16] = {
        "NO SENSE",       "RECOVERED ERROR", "NOT READY",      "MEDIUM ERROR",
        "HARDWARE ERROR", "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT",
        "BLANK CHECK",    "VENDOR SPECIFIC", "COPY ABORTED",   "ABORTED COMMAND",
        "RESERVED (0Ch)", "VOLUME OVERFLOW", "MISCOMPARE",     "COMPLETED",
    };
    return names[uint8_t(key) & 0x0f];
}

const char* asc_text(uint16_t code) {
    const AscRow* end = std::end(asc_rows);
    const AscRow* row = std::lower_bound(std::begin(asc_rows), end, code,
                                         [](const AscRow& r, uint16_t c) { return r.code < c; });
    return row != end && row->code == code ? row->text : nullptr;
}

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
            // SPC-5 says VALID is then zero.
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
    if (d.empty()) {
        return std::nullopt;
    }
    uint8_t response_code = d[0] & 0x7f;
    Sense s;
    if (response_code == fixed_current || response_code == fixed_deferred) {
        if (d.size() < 3) {
            return std::nullopt;
        }
        s.key = SenseKey(d[2] & 0x0f);
        if ((d[0] & 0x80) && d.size() >= 7) {
            s.information_valid = true;
            s.information = load_be32(&d[3]);
        }
        uint8_t asc = d.size() > 12 ? d[12] : 0;
        uint8_t ascq = d.size() > 13 ? d[13] : 0;
        s.code = uint16_t(asc << 8 | ascq);
        if (d.size() >= 18) {
            load_sks(&d[15], s);
        }
        return s;
    }
    if (response_code == descriptor_current || response_code == descriptor_deferred) {
        if (d.size() < 2) {
            return std::nullopt;
        }
        s.key = SenseKey(d[1] & 0x0f);
        uint8_t asc = d.size() > 2 ? d[2] : 0;
        uint8_t ascq = d.size() > 3 ? d[3] : 0;
        s.code = uint16_t(asc << 8 | ascq);
        size_t end = d.size() >= 8 ? std::min(d.size(), size_t(8) + d[7]) : 0;
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
            } else if (type == sense_key_specific_descriptor && len >= 8) {
                load_sks(&d[at + 4], s);
            }
            at += len;
        }
        return s;
    }
    return std::nullopt;
}

std::string describe_sense(const Sense& s) {
    const char* text = asc_text(s.code);
    if (text != nullptr) {
        return fmt::format("{}, asc/ascq {:02x}/{:02x} ({})", sense_key_name(s.key), s.asc(), s.ascq(), text);
    }
    return fmt::format("{}, asc/ascq {:02x}/{:02x}", sense_key_name(s.key), s.asc(), s.ascq());
}

std::string describe_sense(std::span<const uint8_t> data) {
    auto s = parse_sense(data);
    if (!s) {
        return data.empty() ? "no sense data" : "unrecognised sense data";
    }
    return describe_sense(*s);
}

} // namespace ispace::scsi
