#include "iscsi/text.hpp"

#include "common/bytes.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <unordered_set>

namespace ispace::iscsi {

namespace {

Error proto_error(std::string message) {
    return make_error(std::move(message), EPROTO);
}

// Keys are already validated (no NUL, at most 63 bytes), so quoting them in messages is safe; values
// may be up to 8 KiB of anything, so messages show at most a short, printable prefix.
std::string printable_prefix(std::string_view text, size_t limit = 32) {
    std::string out;
    for (size_t i = 0; i < text.size() && i < limit; ++i) {
        char c = text[i];
        out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    if (text.size() > limit) {
        out += "...";
    }
    return out;
}

bool is_label_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '+' || c == '@' || c == '_';
}

int base64_digit(char c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

bool has_prefix(std::string_view text, char a, char b) {
    return text.size() >= 2 && text[0] == '0' && (text[1] == a || text[1] == b);
}

// Decodes the digits after "0x"; an odd digit count gets an implied leading zero nibble.
Result<std::vector<uint8_t>> decode_hex(std::string_view digits, size_t max_bytes) {
    if (digits.empty()) {
        return proto_error("hex constant without digits");
    }
    if ((digits.size() + 1) / 2 > max_bytes) {
        return make_error("hex constant longer than " + std::to_string(max_bytes) + " bytes", EMSGSIZE);
    }
    std::vector<uint8_t> out;
    out.reserve((digits.size() + 1) / 2);
    size_t i = 0;
    if (digits.size() % 2 == 1) {
        int d = hex_digit_value(digits[0]);
        if (d < 0) {
            return proto_error("bad hex digit in '" + printable_prefix(digits) + "'");
        }
        out.push_back(uint8_t(d));
        i = 1;
    }
    for (; i < digits.size(); i += 2) {
        int hi = hex_digit_value(digits[i]);
        int lo = hex_digit_value(digits[i + 1]);
        if (hi < 0 || lo < 0) {
            return proto_error("bad hex digit in '" + printable_prefix(digits) + "'");
        }
        out.push_back(uint8_t(hi << 4 | lo));
    }
    return out;
}

// Decodes the characters after "0b" (RFC 4648 alphabet; '=' padding optional, but only at the end).
Result<std::vector<uint8_t>> decode_base64(std::string_view digits, size_t max_bytes) {
    size_t end = digits.size();
    size_t padding = 0;
    while (end > 0 && digits[end - 1] == '=' && padding < 2) {
        --end;
        ++padding;
    }
    if (end == 0) {
        return proto_error("base64 constant without digits");
    }
    if (padding > 0 && (end + padding) % 4 != 0) {
        return proto_error("base64 constant with misplaced padding");
    }
    if (end % 4 == 1) {
        return proto_error("base64 constant of impossible length");
    }
    // end * 6 / 8 is exactly the number of bytes the digits decode to.
    if (end * 6 / 8 > max_bytes) {
        return make_error("base64 constant longer than " + std::to_string(max_bytes) + " bytes", EMSGSIZE);
    }
    std::vector<uint8_t> out;
    out.reserve(end * 6 / 8);
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < end; ++i) {
        int d = base64_digit(digits[i]);
        if (d < 0) {
            return proto_error("bad base64 digit in '" + printable_prefix(digits) + "'");
        }
        acc = (acc << 6) | uint32_t(d);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(uint8_t(acc >> bits));
        }
    }
    if (out.size() > max_bytes) {
        return make_error("base64 constant longer than " + std::to_string(max_bytes) + " bytes", EMSGSIZE);
    }
    return out;
}

Result<uint64_t> bytes_to_u64(const std::vector<uint8_t>& bytes, std::string_view text) {
    uint64_t value = 0;
    size_t significant = 0;
    for (uint8_t b : bytes) {
        if (significant == 0 && b == 0) {
            continue;
        }
        if (++significant > 8) {
            return proto_error("number '" + printable_prefix(text) + "' does not fit in 64 bits");
        }
        value = value << 8 | b;
    }
    return value;
}

} // namespace

bool is_reserved_answer(std::string_view value) {
    return value == value_reject || value == value_irrelevant || value == value_not_understood;
}

bool is_valid_key(std::string_view key) {
    if (key.empty() || key.size() > max_key_length) {
        return false;
    }
    // RFC 7143 §13.24 defines one key that breaks its own standard-label rule (§6.1: "an initial
    // upper-case character"). Refusing it failed every login that offered it (found by fuzz_text).
    if (key == "iSCSIProtocolLevel") {
        return true;
    }
    if (key[0] < 'A' || key[0] > 'Z') {
        return false;
    }
    for (size_t i = 1; i < key.size(); ++i) {
        char c = key[i];
        // "X#" introduces the IANA-registered extension keys (RFC 7143 §13.5.4).
        if (c == '#' && i == 1 && key[0] == 'X') {
            continue;
        }
        if (!is_label_char(c)) {
            return false;
        }
    }
    return true;
}

bool is_extension_key(std::string_view key) {
    return key.size() >= 2 && key[0] == 'X' && (key[1] == '-' || key[1] == '#');
}

size_t max_value_length_for(std::string_view key) {
    // The authentication items RFC 7143 §12 defines as large binary values or long opaque strings.
    static constexpr std::string_view long_keys[] = {
        "CHAP_C", "CHAP_R",   "KRB_AP_REQ", "KRB_AP_REP", "SRP_s",       "SRP_A",     "SRP_B",       "SRP_M",
        "SRP_HM", "SPKM_REQ", "SPKM_ERROR", "SPKM1_REQ",  "SPKM1_ERROR", "SPKM2_REQ", "SPKM2_ERROR",
    };
    for (auto k : long_keys) {
        if (k == key) {
            return max_long_value_length;
        }
    }
    return max_value_length;
}

Result<KeyValueList> parse_text(std::span<const uint8_t> data, const TextLimits& limits) {
    if (data.size() > limits.max_bytes) {
        return make_error("text of " + std::to_string(data.size()) + " bytes exceeds the limit of " +
                              std::to_string(limits.max_bytes),
                          E2BIG);
    }
    KeyValueList pairs;
    const char* p = reinterpret_cast<const char*>(data.data());
    size_t remaining = data.size();
    while (remaining > 0) {
        const char* nul = static_cast<const char*>(std::memchr(p, 0, remaining));
        if (nul == nullptr) {
            return proto_error("key=value pair not terminated by a NUL");
        }
        std::string_view pair(p, size_t(nul - p));
        remaining -= pair.size() + 1;
        p = nul + 1;
        if (pair.empty()) {
            continue;
        }
        if (pairs.size() >= limits.max_pairs) {
            // Checked before storing, so a flood of tiny pairs costs one scan and no memory.
            return make_error("more than " + std::to_string(limits.max_pairs) + " key=value pairs", E2BIG);
        }
        size_t eq = pair.find('=');
        if (eq == std::string_view::npos) {
            return proto_error("pair '" + printable_prefix(pair) + "' has no '='");
        }
        std::string_view key = pair.substr(0, eq);
        std::string_view value = pair.substr(eq + 1);
        if (key.size() > max_key_length) {
            return make_error("key '" + printable_prefix(key) + "' longer than 63 bytes", EMSGSIZE);
        }
        if (!is_valid_key(key)) {
            return proto_error("invalid key name '" + printable_prefix(key) + "'");
        }
        if (value.size() > max_value_length_for(key)) {
            return make_error("value of " + std::string(key) + " is " + std::to_string(value.size()) +
                                  " bytes, more than the " + std::to_string(max_value_length_for(key)) +
                                  " allowed",
                              EMSGSIZE);
        }
        pairs.push_back(KeyValue{std::string(key), std::string(value)});
    }
    return pairs;
}

void append_text(std::vector<uint8_t>& out, std::string_view key, std::string_view value) {
    out.insert(out.end(), key.begin(), key.end());
    out.push_back('=');
    out.insert(out.end(), value.begin(), value.end());
    out.push_back(0);
}

std::vector<uint8_t> encode_text(const KeyValueList& pairs) {
    size_t total = 0;
    for (const auto& kv : pairs) {
        total += kv.key.size() + kv.value.size() + 2;
    }
    std::vector<uint8_t> out;
    out.reserve(total);
    for (const auto& kv : pairs) {
        append_text(out, kv.key, kv.value);
    }
    return out;
}

std::optional<std::string_view> find_duplicate_key(const KeyValueList& pairs) {
    // Lists are bounded by TextLimits::max_pairs, so a hash set of views is cheap.
    std::unordered_set<std::string_view> seen;
    seen.reserve(pairs.size());
    for (const auto& kv : pairs) {
        if (!seen.insert(kv.key).second) {
            return std::string_view(kv.key);
        }
    }
    return std::nullopt;
}

const std::string* find_value(const KeyValueList& pairs, std::string_view key) {
    for (const auto& kv : pairs) {
        if (kv.key == key) {
            return &kv.value;
        }
    }
    return nullptr;
}

Result<void> TextAssembler::append(std::span<const uint8_t> segment) {
    if (segment.size() > _max_bytes - _data.size()) {
        size_t total = _data.size() + segment.size();
        _data.clear();
        _data.shrink_to_fit();
        return make_error("text sequence of " + std::to_string(total) + "+ bytes exceeds the limit of " +
                              std::to_string(_max_bytes),
                          E2BIG);
    }
    _data.insert(_data.end(), segment.begin(), segment.end());
    return {};
}

std::vector<uint8_t> TextAssembler::take() {
    std::vector<uint8_t> out;
    out.swap(_data);
    return out;
}

std::vector<std::span<const uint8_t>> split_text(std::span<const uint8_t> text, size_t max_segment) {
    std::vector<std::span<const uint8_t>> out;
    if (max_segment == 0) {
        max_segment = 1;
    }
    if (text.empty()) {
        out.push_back(text);
        return out;
    }
    for (size_t offset = 0; offset < text.size(); offset += max_segment) {
        out.push_back(text.subspan(offset, std::min(max_segment, text.size() - offset)));
    }
    return out;
}

Result<uint64_t> parse_number(std::string_view text) {
    if (text.empty()) {
        return proto_error("empty number");
    }
    if (has_prefix(text, 'x', 'X')) {
        std::string_view digits = text.substr(2);
        // Leading zeros do not count towards the 64 bits; bound the string anyway (values are <= 255).
        auto bytes = decode_hex(digits, max_value_length);
        if (!bytes) {
            return std::move(bytes).error();
        }
        return bytes_to_u64(*bytes, text);
    }
    if (has_prefix(text, 'b', 'B')) {
        auto bytes = decode_base64(text.substr(2), max_value_length);
        if (!bytes) {
            return std::move(bytes).error();
        }
        return bytes_to_u64(*bytes, text);
    }
    uint64_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return proto_error("'" + printable_prefix(text) + "' is not a number");
        }
        uint64_t digit = uint64_t(c - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return proto_error("number '" + printable_prefix(text) + "' does not fit in 64 bits");
        }
        value = value * 10 + digit;
    }
    return value;
}

Result<std::vector<uint8_t>> parse_binary(std::string_view text, size_t max_bytes) {
    if (has_prefix(text, 'x', 'X')) {
        return decode_hex(text.substr(2), max_bytes);
    }
    if (has_prefix(text, 'b', 'B')) {
        return decode_base64(text.substr(2), max_bytes);
    }
    auto number = parse_number(text);
    if (!number) {
        return std::move(number).error();
    }
    std::vector<uint8_t> out;
    for (int shift = 56; shift >= 0; shift -= 8) {
        uint8_t b = uint8_t(*number >> shift);
        if (b != 0 || !out.empty() || shift == 0) {
            out.push_back(b);
        }
    }
    if (out.size() > max_bytes) {
        return make_error("binary value longer than " + std::to_string(max_bytes) + " bytes", EMSGSIZE);
    }
    return out;
}

std::string format_hex(std::span<const uint8_t> bytes) {
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string out = "0x";
    out.reserve(2 + bytes.size() * 2);
    for (uint8_t b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

std::string format_base64(std::span<const uint8_t> bytes) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out = "0b";
    out.reserve(2 + (bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        uint32_t v = uint32_t(bytes[i]) << 16 | uint32_t(bytes[i + 1]) << 8 | bytes[i + 2];
        out += alphabet[v >> 18];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += alphabet[v & 63];
    }
    if (i + 1 == bytes.size()) {
        uint32_t v = uint32_t(bytes[i]) << 16;
        out += alphabet[v >> 18];
        out += alphabet[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == bytes.size()) {
        uint32_t v = uint32_t(bytes[i]) << 16 | uint32_t(bytes[i + 1]) << 8;
        out += alphabet[v >> 18];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

Result<bool> parse_bool(std::string_view text) {
    if (text == value_yes) {
        return true;
    }
    if (text == value_no) {
        return false;
    }
    return proto_error("'" + printable_prefix(text) + "' is not Yes or No");
}

std::string_view format_bool(bool value) {
    return value ? value_yes : value_no;
}

Result<std::vector<std::string_view>> parse_list(std::string_view text, size_t max_items) {
    std::vector<std::string_view> items;
    size_t start = 0;
    while (true) {
        size_t comma = text.find(',', start);
        std::string_view item =
            text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
        if (item.empty()) {
            return proto_error("empty item in list '" + printable_prefix(text) + "'");
        }
        if (items.size() >= max_items) {
            return make_error("list '" + printable_prefix(text) + "' has more than " +
                                  std::to_string(max_items) + " items",
                              E2BIG);
        }
        items.push_back(item);
        if (comma == std::string_view::npos) {
            break;
        }
        start = comma + 1;
    }
    return items;
}

Result<NumericRange> parse_range(std::string_view text) {
    size_t tilde = text.find('~');
    if (tilde == std::string_view::npos) {
        return proto_error("'" + printable_prefix(text) + "' is not a numeric range");
    }
    auto low = parse_number(text.substr(0, tilde));
    if (!low) {
        return std::move(low).error();
    }
    auto high = parse_number(text.substr(tilde + 1));
    if (!high) {
        return std::move(high).error();
    }
    if (*low > *high) {
        return proto_error("range '" + printable_prefix(text) + "' has its low end above its high end");
    }
    return NumericRange{*low, *high};
}

bool is_valid_iscsi_name(std::string_view name) {
    // RFC 7143 §4.2.7.1: "iSCSI names ... up to 223 bytes".
    if (name.size() < 5 || name.size() > 223) {
        return false;
    }
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
    std::string prefix;
    for (size_t i = 0; i < 4; ++i) {
        prefix += lower(name[i]);
    }
    if (prefix != "iqn." && prefix != "eui." && prefix != "naa.") {
        return false;
    }
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        // Names are stringprep'd UTF-8: bytes >= 0x80 may be part of a character; ASCII must be
        // printable and not a space.
        if (u <= 0x20 || u == 0x7f) {
            return false;
        }
    }
    return true;
}

std::string fold_iscsi_name(std::string_view name) {
    std::string out(name);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') {
            c = char(c - 'A' + 'a');
        }
    }
    return out;
}

Result<void> check_iscsi_name(std::string_view name) {
    if (!is_valid_iscsi_name(name)) {
        return make_error("an iSCSI name starts with iqn., eui. or naa., is 5 to 223 bytes and has no "
                          "space or control character",
                          EINVAL);
    }
    std::string folded = fold_iscsi_name(name);
    std::string_view rest = std::string_view(folded).substr(4);
    auto hex = [](std::string_view s) {
        return std::all_of(s.begin(), s.end(),
                           [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
    };
    if (folded.rfind("eui.", 0) == 0) {
        if (rest.size() != 16 || !hex(rest)) {
            return make_error("an eui. name is 16 hex digits (an EUI-64), e.g. eui.02004567A425678D", EINVAL);
        }
        return {};
    }
    if (folded.rfind("naa.", 0) == 0) {
        if ((rest.size() != 16 && rest.size() != 32) || !hex(rest)) {
            return make_error("a naa. name is 16 or 32 hex digits, e.g. naa.52004567BA64678D", EINVAL);
        }
        return {};
    }
    // iqn.yyyy-mm.reversed.domain[:anything]
    auto digits = [](std::string_view s) {
        return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (rest.size() < 9 || !digits(rest.substr(0, 4)) || rest[4] != '-' || !digits(rest.substr(5, 2)) ||
        rest[7] != '.') {
        return make_error("an iqn. name goes on with the year and month its naming authority took the "
                          "domain, then the domain reversed: iqn.2026-11.org.example[:anything]",
                          EINVAL);
    }
    int month = (rest[5] - '0') * 10 + (rest[6] - '0');
    if (month < 1 || month > 12) {
        return make_error(fmt::format("an iqn. name's date is yyyy-mm; month {:02} does not exist", month),
                          EINVAL);
    }
    if (rest[8] == '.' || rest[8] == ':' || rest[8] == '-') {
        return make_error("an iqn. name needs a naming authority (a reversed domain) after its date", EINVAL);
    }
    for (char c : folded) {
        auto u = static_cast<unsigned char>(c);
        bool allowed =
            u >= 0x80 || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == ':';
        if (!allowed) {
            return make_error(fmt::format("'{}' is not allowed in an iSCSI name (ASCII letters, digits, '-', "
                                          "'.' and ':' are)",
                                          c),
                              EINVAL);
        }
    }
    return {};
}

bool is_valid_local_name(std::string_view name) {
    size_t i = 0;
    while (i < name.size()) {
        auto u = static_cast<unsigned char>(name[i]);
        if (u < 0x80) {
            if (u < 0x20 || u == 0x7f) {
                return false;
            }
            ++i;
            continue;
        }
        size_t len = (u & 0xe0) == 0xc0 ? 2 : (u & 0xf0) == 0xe0 ? 3 : (u & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || i + len > name.size()) {
            return false;
        }
        for (size_t k = 1; k < len; ++k) {
            if ((static_cast<unsigned char>(name[i + k]) & 0xc0) != 0x80) {
                return false;
            }
        }
        i += len;
    }
    return true;
}

} // namespace ispace::iscsi
