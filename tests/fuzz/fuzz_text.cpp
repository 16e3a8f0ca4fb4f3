// Fuzzes text keys (RFC 7143 §6.1) and parameter negotiation (§6.2, §13):
//  - parse_text with default and small limits; what parses must re-encode to text that parses equal;
//  - the value grammars on every value (numbers, binary values and their hex/base64 round trips,
//    booleans, lists, ranges, iSCSI names);
//  - TextAssembler fed the text in pieces under a byte bound, and split_text;
//  - a Negotiator in either role receiving the parsed pairs as up to three sequences (security and
//    operational stage of a login, or Text negotiations in full feature phase), offering its own keys,
//    and finishing. Everything it answers must be text we ourselves accept, and the negotiated values
//    must respect the RFC's ranges.
//
// Input: [config][cut 1][cut 2][text...].
#include "fuzz_check.hpp"
#include "iscsi/params.hpp"
#include "iscsi/text.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

void check_values(const KeyValueList& pairs) {
    for (const auto& kv : pairs) {
        const std::string& v = kv.value;
        (void)parse_number(v);
        (void)parse_bool(v);
        if (auto range = parse_range(v); range.ok()) {
            FUZZ_CHECK(range->low <= range->high);
        }
        if (auto list = parse_list(v); list.ok()) {
            FUZZ_CHECK(!list->empty() && list->size() <= 32);
            for (auto item : *list) {
                FUZZ_CHECK(!item.empty());
            }
        }
        if (auto bin = parse_binary(v, 1024); bin.ok()) {
            FUZZ_CHECK(bin->size() <= 1024);
            auto hex = parse_binary(format_hex(*bin), 1024);
            FUZZ_CHECK(hex.ok() && *hex == *bin);
            auto b64 = parse_binary(format_base64(*bin), 1024);
            FUZZ_CHECK(b64.ok() && *b64 == *bin);
        }
        (void)is_valid_iscsi_name(v);
        (void)is_valid_local_name(v);
        (void)is_reserved_answer(v);
        (void)find_key(kv.key);
        (void)is_security_key(kv.key);
        (void)is_extension_key(kv.key);
    }
}

// What we send must be text we accept ourselves.
void check_our_text(const KeyValueList& out) {
    for (const auto& kv : out) {
        FUZZ_CHECK(is_valid_key(kv.key));
        FUZZ_CHECK(kv.value.size() <= max_value_length_for(kv.key));
        FUZZ_CHECK(kv.value.find('\0') == std::string::npos);
    }
    auto again = parse_text(encode_text(out), TextLimits{100000, 1 << 20});
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(*again == out);
}

void check_params(const SessionParams& s, const ConnectionParams& c) {
    FUZZ_CHECK(s.first_burst_length <= s.max_burst_length);
    FUZZ_CHECK(s.max_burst_length >= 512 && s.max_burst_length <= 0xffffff);
    FUZZ_CHECK(s.first_burst_length >= 512);
    FUZZ_CHECK(s.max_connections >= 1);
    FUZZ_CHECK(s.max_outstanding_r2t >= 1);
    FUZZ_CHECK(s.error_recovery_level <= max_error_recovery_level);
    FUZZ_CHECK(s.default_time2wait <= 3600 && s.default_time2retain <= 3600);
    FUZZ_CHECK(c.max_recv_data_segment_length >= 512 && c.max_recv_data_segment_length <= 0xffffff);
    FUZZ_CHECK(c.max_send_data_segment_length >= 512 && c.max_send_data_segment_length <= 0xffffff);
}

NegotiationConfig config_for(uint8_t bits) {
    NegotiationConfig c;
    if (bits & 1) {
        c.header_digests = {Digest::crc32c, Digest::none};
        c.data_digests = {Digest::crc32c};
    }
    if (bits & 2) {
        c.initial_r2t = false;
        c.immediate_data = false;
        c.max_burst_length = 1 << 20;
        c.first_burst_length = 1 << 18;
        c.max_outstanding_r2t = 4;
        c.max_connections = 4;
        c.error_recovery_level = max_error_recovery_level; // the most this build negotiates
        c.protocol_level = 2;
        c.data_pdu_in_order = false;
        c.data_sequence_in_order = false;
    }
    c.alias = (bits & 2) ? "fuzz alias" : "";
    return c;
}

void negotiate(uint8_t config, const std::vector<KeyValueList>& sequences) {
    Negotiator::Context context;
    context.role = (config & 0x01) ? Role::initiator : Role::target;
    context.leading = (config & 0x02) == 0;
    context.login = (config & 0x04) == 0;
    if (!context.leading || !context.login) {
        context.session = SessionParams{};
    }
    NegotiationConfig nc = config_for(config >> 6);
    FUZZ_CHECK(validate(nc).ok());
    Negotiator negotiator(nc, context);
    if (config & 0x08) {
        negotiator.set_session_type(SessionType::discovery);
    }
    static constexpr LoginStage login_stages[] = {LoginStage::security, LoginStage::operational,
                                                  LoginStage::operational};
    for (size_t i = 0; i < sequences.size(); ++i) {
        LoginStage stage = context.login ? login_stages[i] : LoginStage::full_feature;
        if (context.login && (config & 0x10) && i == 0) {
            stage = LoginStage::operational; // a login without a security stage
        }
        KeyValueList out;
        if (context.role == Role::initiator && i == 0) {
            negotiator.offer(stage, out);
        }
        auto r = negotiator.receive(sequences[i], stage, out);
        if (!r.ok()) {
            FUZZ_CHECK(!r.error().message.empty());
            check_our_text(out);
            return;
        }
        negotiator.offer(stage, out, (config & 0x20) == 0);
        check_our_text(out);
        (void)negotiator.awaiting_answers();
        (void)negotiator.needs_offers();
        for (size_t k = 0; k < key_count; ++k) {
            (void)negotiator.declared(KeyId(k));
        }
        if (!context.login) {
            negotiator.reset_exchange();
        }
    }
    if (negotiator.finish().ok()) {
        check_params(negotiator.session_params(), negotiator.connection_params());
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) {
        return 0;
    }
    uint8_t config = data[0];
    std::span<const uint8_t> text(data + 3, size - 3);

    TextLimits small{8, 256};
    (void)parse_text(text, small);
    auto parsed = parse_text(text);
    if (parsed.ok()) {
        FUZZ_CHECK(parsed->size() <= default_max_text_pairs);
        auto again = parse_text(encode_text(*parsed));
        FUZZ_CHECK(again.ok() && *again == *parsed);
        (void)find_duplicate_key(*parsed);
        check_values(*parsed);
    } else {
        FUZZ_CHECK(!parsed.error().message.empty());
    }

    // Reassembly in pieces under a bound; split_text gives the pieces back in order.
    size_t piece = 1 + data[1] % 64;
    TextAssembler assembler(512 + size_t(data[2]) * 16);
    bool overflowed = false;
    for (auto segment : split_text(text, piece)) {
        FUZZ_CHECK(segment.size() <= piece);
        if (!assembler.append(segment).ok()) {
            overflowed = true;
            FUZZ_CHECK(assembler.empty());
            break;
        }
    }
    if (!overflowed) {
        FUZZ_CHECK(assembler.size() == text.size());
        FUZZ_CHECK(text.empty() || std::memcmp(assembler.data().data(), text.data(), text.size()) == 0);
        std::vector<uint8_t> taken = assembler.take();
        FUZZ_CHECK(taken.size() == text.size() && assembler.empty());
    }

    // Up to three sequences, cut at the offsets the input names.
    size_t cut1 = std::min<size_t>(text.size(), size_t(data[1]) * 4);
    size_t cut2 = std::min<size_t>(text.size(), cut1 + size_t(data[2]) * 4);
    std::vector<KeyValueList> sequences;
    for (auto [from, to] :
         {std::pair{size_t(0), cut1}, std::pair{cut1, cut2}, std::pair{cut2, text.size()}}) {
        auto pairs = parse_text(text.subspan(from, to - from));
        if (!pairs.ok()) {
            break;
        }
        sequences.push_back(std::move(*pairs));
    }
    if (!sequences.empty()) {
        negotiate(config, sequences);
    }
    return 0;
}
