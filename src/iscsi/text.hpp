// iSCSI text keys (RFC 7143 §6.1, §13): parsing and building `key=value\0` data segments, reassembly of
// sequences continued with the C bit, and the value grammars (numbers, booleans, lists, ranges).
//
// Everything here reads bytes from the network, so every length is bounded before anything is stored:
// a key is at most 63 bytes, a value at most 255 bytes (8192 for the few keys whose values the RFC lets
// grow, such as CHAP_C), and a whole logical text data segment (LTDS) at most `TextLimits::max_bytes`
// with at most `TextLimits::max_pairs` pairs.
//
// Errors are `Result` values whose `Error::code` says which kind of violation it was, so a caller can
// answer without parsing the message:
//   EPROTO    malformed text: no '=', no terminating NUL, a bad key, a bad value, a duplicate key
//   EMSGSIZE  a key or a value longer than allowed
//   E2BIG     too many pairs or too many bytes in one sequence
// During login all three are answered with status 02/00 (initiator error); in full feature phase a
// Text Request carrying them is answered with a Reject PDU.
#pragma once

#include "common/result.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {

// RFC 7143 §6.1: "A standard-label ... MUST NOT exceed 63 characters".
inline constexpr size_t max_key_length = 63;
// RFC 7143 §6.1: "If not otherwise specified, the maximum length of a simple-value ... is 255 bytes".
inline constexpr size_t max_value_length = 255;
// Values the RFC lets grow (CHAP_C/CHAP_R are large-binary-values of up to 1024 bytes, which take
// 2050 characters in hex; SRP and Kerberos items are larger still). 8192 bounds all of them.
inline constexpr size_t max_long_value_length = 8192;
// RFC 7143 §6.1: the target or initiator MUST accept at least 8192 bytes of key=value data in a
// negotiation, and 64 KiB when the authentication method needs long items. We accept 64 KiB always.
inline constexpr size_t default_max_text_bytes = 64 * 1024;
// Bound on pairs in one sequence: all of RFC 7143's keys plus CHAP and a fair number of vendor keys.
inline constexpr size_t default_max_text_pairs = 256;
// The data segment length assumed during login for both directions (RFC 7143 §6.3: "The default
// MaxRecvDataSegmentLength is used during Login"); also the default when the key is never declared.
inline constexpr uint32_t login_max_recv_data_segment_length = 8192;

struct TextLimits {
    size_t max_pairs = default_max_text_pairs;
    size_t max_bytes = default_max_text_bytes;
};

struct KeyValue {
    std::string key;
    std::string value;
    bool operator==(const KeyValue&) const = default;
};
using KeyValueList = std::vector<KeyValue>;

// The reserved constants (RFC 7143 §6.2). They are answers, never proposals.
inline constexpr std::string_view value_none = "None";
inline constexpr std::string_view value_reject = "Reject";
inline constexpr std::string_view value_irrelevant = "Irrelevant";
inline constexpr std::string_view value_not_understood = "NotUnderstood";
inline constexpr std::string_view value_yes = "Yes";
inline constexpr std::string_view value_no = "No";

// True for "Reject", "Irrelevant" and "NotUnderstood" ("None" is a legal list item, so it is not here).
bool is_reserved_answer(std::string_view value);

// A key name per RFC 7143 §6.1: a standard-label (a capital letter, then letters, digits, '.', '-',
// '+', '@', '_'; at most 63 bytes), including the "X-" vendor and "X#" IANA-registered forms, and
// "iSCSIProtocolLevel", the RFC's own exception to its grammar.
bool is_valid_key(std::string_view key);
// "X-..." and "X#..." keys: private or public extensions that we answer NotUnderstood.
bool is_extension_key(std::string_view key);
// The longest value `key` may carry (255, or 8192 for the authentication items that may be long).
size_t max_value_length_for(std::string_view key);

// Parses one complete logical text data segment. Every pair must end with a NUL; consecutive NULs
// (empty entries, as some implementations pad with) are skipped but count towards the byte bound.
// Duplicates are not checked here (see find_duplicate_key); order is preserved.
Result<KeyValueList> parse_text(std::span<const uint8_t> data, const TextLimits& limits = {});

// Appends `key=value\0`.
void append_text(std::vector<uint8_t>& out, std::string_view key, std::string_view value);
std::vector<uint8_t> encode_text(const KeyValueList& pairs);

// The first key that occurs more than once in `pairs` (RFC 7143 §6.3: declaring or negotiating a key
// twice in one login is a protocol error), or nothing.
std::optional<std::string_view> find_duplicate_key(const KeyValueList& pairs);
// The value of `key` in `pairs`, or nothing.
const std::string* find_value(const KeyValueList& pairs, std::string_view key);

// Collects the data segments of a text or login sequence whose PDUs carry the C bit (RFC 7143 §6.1:
// such segments form one LTDS), refusing to grow past `max_bytes`.
class TextAssembler {
public:
    explicit TextAssembler(size_t max_bytes = default_max_text_bytes) : _max_bytes(max_bytes) {}

    // E2BIG once the total would exceed max_bytes; the collected bytes are then dropped.
    Result<void> append(std::span<const uint8_t> segment);
    std::span<const uint8_t> data() const { return _data; }
    size_t size() const { return _data.size(); }
    bool empty() const { return _data.empty(); }
    void clear() { _data.clear(); }
    std::vector<uint8_t> take();

private:
    std::vector<uint8_t> _data;
    size_t _max_bytes;
};

// Splits an outgoing LTDS into data segments of at most `max_segment` bytes each: every segment but the
// last goes in a PDU with the C bit set. A pair may span two segments (RFC 7143 §6.1 allows it).
// An empty LTDS gives one empty segment.
std::vector<std::span<const uint8_t>> split_text(std::span<const uint8_t> text, size_t max_segment);

// ---- Value grammars (RFC 7143 §6.1) ----

// regular-numerical-value: a decimal constant, a hex constant ("0x"/"0X"), or a base64 constant
// ("0b"/"0B"), less than 2**64. Leading zeros are tolerated in decimal (some initiators send them).
Result<uint64_t> parse_number(std::string_view text);
// large-numerical-value / binary value: hex or base64 (or decimal below 2**64), returned big-endian
// with leading zero bytes kept as encoded. At most `max_bytes` bytes of binary value.
Result<std::vector<uint8_t>> parse_binary(std::string_view text, size_t max_bytes = 1024);
std::string format_hex(std::span<const uint8_t> bytes);    // "0x..." upper-case digits
std::string format_base64(std::span<const uint8_t> bytes); // "0b..." with '=' padding
// boolean-value: exactly "Yes" or "No".
Result<bool> parse_bool(std::string_view text);
std::string_view format_bool(bool value);
// list-of-values: comma-separated, each item non-empty; at most `max_items` items.
Result<std::vector<std::string_view>> parse_list(std::string_view text, size_t max_items = 32);
// numeric-range: two numerical values separated by '~', the first not greater than the second.
struct NumericRange {
    uint64_t low = 0;
    uint64_t high = 0;
};
Result<NumericRange> parse_range(std::string_view text);
// iSCSI-name-value (RFC 7143 §4.2.7): "iqn.", "eui." or "naa." names, at most 223 bytes, with no
// spaces or control characters.
bool is_valid_iscsi_name(std::string_view name);
// The stricter check for names an administrator configures (RFC 3720 §3.2.6.3): "iqn." yyyy-mm "."
// naming-authority [":" anything], "eui." and 16 hex digits, or "naa." and 16 or 32 hex digits; ASCII
// limited to letters, digits, '-', '.' and ':' (RFC 3722's profile). The error says what is wrong.
Result<void> check_iscsi_name(std::string_view name);
// The form names are compared in: RFC 3722 folds case, so "IQN.2026-11.Org.Example:Disk" and
// "iqn.2026-11.org.example:disk" are one name (ASCII lower case; other characters as they are).
std::string fold_iscsi_name(std::string_view name);
// iSCSI-local-name-value (aliases): UTF-8 without control characters.
bool is_valid_local_name(std::string_view name);

} // namespace ispace::iscsi
