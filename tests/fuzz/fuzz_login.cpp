// Fuzzes the login state machines with whole PDU sequences (RFC 7143 §6.3, §11.12, §11.13, §12.1):
// a TargetLogin (behind a fake LoginPolicy with AuthMethod None, CHAP, or both, one-way or mutual) fed
// a sequence of Login Requests, or an InitiatorLogin doing CHAP fed a sequence of Login Responses.
//
// Input: [mode][chunk]...; a chunk is [flags][fields][length lo][length hi][data...]:
//   flags   bit 7 T, bit 6 C, bits 3-2 CSG, bits 1-0 NSG
//   fields  target role: bit 0 other ISID, bit 1 TSIH 1, bit 2 other CID, bit 3 CmdSN+1,
//                        bit 4 Version-min 1, bit 5 Version-max 1, bit 6 ITT+1
//           initiator role: bits 1-0 status (success, 02/01, 01/01 redirect, 03/00), bit 2 TSIH 0x77,
//                        bit 3 ITT+1, bit 4 Version-active 1, bit 5 zero ISID
// mode      bits 1-0 AuthMethods (None; CHAP; CHAP,None; CHAP requiring mutual), bit 2 mutual CHAP
//           credentials, bit 3 initiator role, bit 6 MD5 only, bit 7 small text limits;
//           target role: bits 5-4 policy (default, digests wanted, redirect, admission refused);
//           initiator role: bit 4 discovery session, bit 5 digests offered and vendor keys
// A key "CHAP_R" with the value "?" is replaced by the right response to the peer's last challenge,
// so the fuzzer can get past authentication (challenges come from a deterministic source here).
//
// Invariants: one response per request, each decodable, with StatSN advancing by one; at most 8192
// bytes of data, exactly 8192 when C is set; a response that is not a success has T=0 and ends the
// login; after the login ended no response lets it progress; a completed login has a non-zero TSIH;
// the target's own text parses; no secret ever appears in a reason.
#include "fuzz_check.hpp"
#include "iscsi/chap.hpp"
#include "iscsi/login.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

constexpr const char* chap_user = "fuzz-user";
constexpr const char* chap_secret = "fuzz-initiator-secret";
constexpr const char* target_user = "fuzz-target";
constexpr const char* target_secret = "fuzz-target-secret!!";
constexpr Isid fuzz_isid{0x40, 0, 0, 1, 0, 2};

struct Chunk {
    uint8_t flags = 0;
    uint8_t fields = 0;
    std::vector<uint8_t> data;
};

std::vector<Chunk> carve(const uint8_t* data, size_t size) {
    std::vector<Chunk> chunks;
    size_t pos = 0;
    while (pos + 4 <= size && chunks.size() < 80) {
        Chunk c;
        c.flags = data[pos];
        c.fields = data[pos + 1];
        size_t length = size_t(data[pos + 2]) | size_t(data[pos + 3]) << 8;
        pos += 4;
        length = std::min(length, size - pos);
        c.data.assign(data + pos, data + pos + length);
        pos += length;
        chunks.push_back(std::move(c));
    }
    return chunks;
}

// Deterministic "random" bytes, so a crash reproduces.
std::function<bool(std::span<uint8_t>)> counter_source(std::shared_ptr<uint32_t> counter) {
    return [counter](std::span<uint8_t> out) {
        for (auto& b : out) {
            *counter = *counter * 1103515245u + 12345u;
            b = uint8_t(*counter >> 16);
        }
        return true;
    };
}

// The "CHAP_R=?" substitution: the response to `challenge_keys` (CHAP_A, CHAP_I, CHAP_C) with `secret`.
void substitute_response(std::vector<uint8_t>& data, const KeyValueList& challenge_keys, const char* secret) {
    auto pairs = parse_text(data);
    if (!pairs.ok()) {
        return;
    }
    bool changed = false;
    for (auto& kv : *pairs) {
        if (kv.key != "CHAP_R" || kv.value != "?") {
            continue;
        }
        const std::string* a = find_value(challenge_keys, "CHAP_A");
        const std::string* i = find_value(challenge_keys, "CHAP_I");
        const std::string* c = find_value(challenge_keys, "CHAP_C");
        auto algorithm = a ? parse_number(*a) : Result<uint64_t>(make_error("none"));
        auto id = i ? parse_number(*i) : Result<uint64_t>(make_error("none"));
        auto challenge = c ? parse_binary(*c, 1024) : Result<std::vector<uint8_t>>(make_error("none"));
        if (!algorithm.ok() || !id.ok() || !challenge.ok() || (*algorithm != 5 && *algorithm != 7)) {
            continue;
        }
        kv.value = format_hex(chap_response(ChapAlgorithm(*algorithm), uint8_t(*id), secret, *challenge));
        changed = true;
    }
    if (changed) {
        data = encode_text(*pairs);
    }
}

// Set per input: whether the input itself carries a secret's text (then a reason may quote it back,
// as it quotes any key or value, without anything having leaked).
bool g_input_has_secret = false;

void check_no_secret(const std::string& reason) {
    if (g_input_has_secret) {
        return;
    }
    FUZZ_CHECK(reason.find(chap_secret) == std::string::npos);
    FUZZ_CHECK(reason.find(target_secret) == std::string::npos);
}

class FuzzPolicy : public LoginPolicy {
public:
    explicit FuzzPolicy(uint8_t mode) : _mode(mode), _counter(std::make_shared<uint32_t>(mode)) {}

    LoginTargetInfo start(const LoginIdentity& identity) override {
        LoginTargetInfo info;
        switch (_mode & 3) {
        case 0:
            info.auth_methods = {"None"};
            break;
        case 1:
        case 3:
            info.auth_methods = {"CHAP"};
            break;
        case 2:
            info.auth_methods = {"CHAP", "None"};
            break;
        }
        switch ((_mode >> 4) & 3) {
        case 1:
            info.negotiation.header_digests = {Digest::crc32c, Digest::none};
            info.negotiation.initial_r2t = false;
            info.negotiation.max_recv_data_segment_length = 8192;
            break;
        case 2:
            info.status = LoginStatus::target_moved_temporarily;
            info.redirect_address = "10.0.0.1:3260,1";
            break;
        default:
            break;
        }
        if (!identity.leading()) {
            info.session = SessionParams{};
        }
        return info;
    }

    std::unique_ptr<Authenticator> authenticator(std::string_view method, const LoginIdentity&) override {
        if (method != auth_method_chap) {
            return nullptr;
        }
        ChapTargetConfig config;
        config.users = {{chap_user, chap_secret}};
        if (_mode & 0x04) {
            config.mutual = ChapCredentials{target_user, target_secret};
        }
        config.require_mutual = (_mode & 3) == 3 && config.mutual.has_value();
        if (_mode & 0x40) {
            config.algorithms = {ChapAlgorithm::md5};
        }
        config.random = counter_source(_counter);
        FUZZ_CHECK(validate(config).ok());
        return make_chap_target_authenticator(std::move(config));
    }

    LoginAdmission admit(const LoginIdentity& identity, const SessionParams& session,
                         const ConnectionParams& connection) override {
        FUZZ_CHECK(session.first_burst_length <= session.max_burst_length);
        FUZZ_CHECK(connection.max_send_data_segment_length >= 512);
        LoginAdmission a;
        if (((_mode >> 4) & 3) == 3) {
            a.status = LoginStatus::too_many_connections;
        }
        a.tsih = identity.leading() ? 0x1234 : identity.tsih;
        return a;
    }

private:
    uint8_t _mode;
    std::shared_ptr<uint32_t> _counter;
};

void fuzz_target(uint8_t mode, const std::vector<Chunk>& chunks) {
    FuzzPolicy policy(mode);
    TargetLoginSettings settings;
    settings.initial_stat_sn = 0xfffffffe; // wraps during the login
    if (mode & 0x80) {
        settings.text_limits = TextLimits{16, 2048};
        settings.max_requests = 16;
    }
    TargetLogin target(policy, settings);
    uint32_t expected_stat_sn = settings.initial_stat_sn;
    KeyValueList last_challenge;
    std::vector<uint8_t> response_text;
    for (const Chunk& chunk : chunks) {
        LoginRequest h;
        h.transit = (chunk.flags & 0x80) != 0;
        h.continue_bit = (chunk.flags & 0x40) != 0;
        h.csg = LoginStage((chunk.flags >> 2) & 3);
        h.nsg = LoginStage(chunk.flags & 3);
        h.isid = fuzz_isid;
        if (chunk.fields & 0x01) {
            h.isid[5] ^= 0xff;
        }
        h.tsih = (chunk.fields & 0x02) ? 1 : 0;
        h.cid = (chunk.fields & 0x04) ? 2 : 1;
        h.cmd_sn = (chunk.fields & 0x08) ? 11 : 10;
        h.version_min = (chunk.fields & 0x10) ? 1 : 0;
        h.version_max = (chunk.fields & 0x20) ? 1 : 0;
        h.itt = (chunk.fields & 0x40) ? 6 : 5;
        std::vector<uint8_t> data = chunk.data;
        substitute_response(data, last_challenge, chap_secret);
        h.data_segment_length = uint32_t(std::min<size_t>(data.size(), max_data_segment_length));

        // As a connection does: decode the header; a header that does not decode ends the login.
        Bhs bhs;
        h.encode(bhs);
        bhs.bytes[1] = uint8_t((bhs.bytes[1] & 0xc0) | (chunk.flags & 0x0f)); // reserved stage values too
        auto decoded = LoginRequest::decode(bhs);
        LoginState before = target.state();
        LoginResponsePdu response = decoded.ok()
                                        ? target.receive(*decoded, data)
                                        : target.fail(LoginStatus::initiator_error, decoded.error().message);

        // One decodable response, StatSN in sequence, bounded data.
        Bhs out;
        response.header.encode(out);
        auto back = LoginResponse::decode(out);
        if (!back.ok() && std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr) {
            std::fprintf(stderr, "undecodable response (%s): %s\n", back.error().message.c_str(),
                         describe(out).c_str());
        }
        FUZZ_CHECK(back.ok());
        FUZZ_CHECK(response.header.stat_sn == expected_stat_sn);
        ++expected_stat_sn;
        FUZZ_CHECK(response.data.size() <= login_max_recv_data_segment_length);
        FUZZ_CHECK(response.header.data_segment_length == response.data.size());
        if (response.header.continue_bit) {
            FUZZ_CHECK(response.data.size() == login_max_recv_data_segment_length &&
                       !response.header.transit);
        }
        check_no_secret(target.reason());
        if (response.header.status() != LoginStatus::success) {
            FUZZ_CHECK(!response.header.transit && !response.header.continue_bit);
            FUZZ_CHECK(target.state() == LoginState::failed || target.state() == LoginState::redirected);
        }
        if (before != LoginState::in_progress) {
            FUZZ_CHECK(response.header.status() != LoginStatus::success);
            FUZZ_CHECK(target.state() != LoginState::in_progress && target.state() != LoginState::complete);
        }
        if (target.state() == LoginState::complete && before == LoginState::in_progress) {
            FUZZ_CHECK(response.header.transit && response.header.nsg == LoginStage::full_feature);
            FUZZ_CHECK(response.header.tsih != 0 && target.tsih() == response.header.tsih);
            FUZZ_CHECK(target.session_params().first_burst_length <=
                       target.session_params().max_burst_length);
        }
        // The target's text, once complete, is text we accept.
        if (response.header.status() == LoginStatus::success) {
            response_text.insert(response_text.end(), response.data.begin(), response.data.end());
            if (!response.header.continue_bit) {
                auto pairs = parse_text(response_text);
                FUZZ_CHECK(pairs.ok());
                if (find_value(*pairs, "CHAP_C") != nullptr) {
                    last_challenge = *pairs;
                }
                response_text.clear();
            }
        }
    }
    if (std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr) {
        std::fprintf(stderr, "target: state %d stage %d status %04x %s\n", int(target.state()),
                     int(target.stage()), unsigned(target.status()), target.reason().c_str());
    }
}

void fuzz_initiator(uint8_t mode, const std::vector<Chunk>& chunks) {
    auto counter = std::make_shared<uint32_t>(mode);
    ChapInitiatorConfig chap;
    chap.credentials = {chap_user, chap_secret};
    if (mode & 0x04) {
        chap.target = ChapCredentials{target_user, target_secret};
    }
    if (mode & 0x40) {
        chap.algorithms = {ChapAlgorithm::md5};
    }
    chap.random = counter_source(counter);
    InitiatorLoginConfig config;
    config.initiator_name = "iqn.2024-01.org.ispace:fuzz";
    config.target_name = "iqn.2024-01.org.ispace:target";
    config.session_type = (mode & 0x10) ? SessionType::discovery : SessionType::normal;
    config.isid = fuzz_isid;
    config.itt = 5;
    switch (mode & 3) {
    case 0:
        config.auth_methods = {"None"};
        break;
    case 1:
        config.auth_methods = {"CHAP"};
        break;
    default:
        config.auth_methods = {"CHAP", "None"};
        break;
    }
    config.make_authenticator = [chap](std::string_view) { return make_chap_initiator_authenticator(chap); };
    if (mode & 0x20) {
        // Matches seed_gen's fuzz_initiator_negotiation(), plus the vendor keys of the long-text seed.
        config.negotiation.header_digests = {Digest::crc32c, Digest::none};
        config.negotiation.data_digests = {Digest::crc32c, Digest::none};
        config.negotiation.initial_r2t = false;
        config.negotiation.max_burst_length = 1 << 20;
        config.negotiation.first_burst_length = 1 << 18;
        for (int i = 0; i < 70; ++i) {
            config.extra_keys.push_back(
                {"X-org.ispace.seed-key-" + std::to_string(i), std::string(120, 'v')});
        }
    }
    if (mode & 0x80) {
        config.text_limits = TextLimits{16, 2048};
        config.max_responses = 16;
    }
    InitiatorLogin initiator(config);
    auto first = initiator.start();
    FUZZ_CHECK(first.ok());
    std::optional<LoginRequestPdu> request = std::move(*first);
    KeyValueList our_challenge;
    std::string target_algorithm = (mode & 0x40) ? "5" : "7";
    for (const Chunk& chunk : chunks) {
        LoginState before = initiator.state();
        if (request) {
            FUZZ_CHECK(request->data.size() <= login_max_recv_data_segment_length);
            Bhs bhs;
            request->header.encode(bhs);
            FUZZ_CHECK(LoginRequest::decode(bhs).ok());
            if (auto pairs = parse_text(request->data);
                pairs.ok() && find_value(*pairs, "CHAP_C") != nullptr) {
                our_challenge = *pairs;
                // The target's proof uses the algorithm the target chose earlier; CHAP_A is not repeated.
                our_challenge.push_back({"CHAP_A", target_algorithm});
            }
        }
        LoginResponse h;
        h.transit = (chunk.flags & 0x80) != 0;
        h.continue_bit = (chunk.flags & 0x40) != 0;
        h.csg = LoginStage((chunk.flags >> 2) & 3);
        h.nsg = LoginStage(chunk.flags & 3);
        static constexpr LoginStatus statuses[] = {LoginStatus::success, LoginStatus::authentication_failure,
                                                   LoginStatus::target_moved_temporarily,
                                                   LoginStatus::target_error};
        h.set_status(statuses[chunk.fields & 3]);
        h.tsih = (chunk.fields & 0x04) ? 0x77 : 0;
        h.itt = (chunk.fields & 0x08) ? 6 : 5;
        h.version_active = (chunk.fields & 0x10) ? 1 : 0;
        h.isid = (chunk.fields & 0x20) ? Isid{} : fuzz_isid;
        std::vector<uint8_t> data = chunk.data;
        if (auto pairs = parse_text(data); pairs.ok()) {
            if (const std::string* a = find_value(*pairs, "CHAP_A")) {
                target_algorithm = *a;
            }
        }
        substitute_response(data, our_challenge, target_secret);
        h.data_segment_length = uint32_t(std::min<size_t>(data.size(), max_data_segment_length));
        Bhs bhs;
        h.encode(bhs);
        auto decoded = LoginResponse::decode(bhs);
        if (!decoded.ok()) {
            continue;
        }
        request = initiator.receive(*decoded, data);
        check_no_secret(initiator.reason());
        if (before != LoginState::in_progress) {
            FUZZ_CHECK(!request.has_value());
            FUZZ_CHECK(initiator.state() != LoginState::in_progress);
        }
        if (initiator.state() != LoginState::in_progress) {
            FUZZ_CHECK(!request.has_value());
        }
        if (initiator.state() == LoginState::complete && before == LoginState::in_progress) {
            FUZZ_CHECK(initiator.tsih() != 0);
            FUZZ_CHECK(initiator.session_params().first_burst_length <=
                       initiator.session_params().max_burst_length);
        }
        if (!request && initiator.state() == LoginState::in_progress) {
            break;
        }
    }
    if (std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr) {
        std::fprintf(stderr, "initiator: state %d stage %d status %04x %s\n", int(initiator.state()),
                     int(initiator.stage()), unsigned(initiator.status()), initiator.reason().c_str());
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    std::string_view input(reinterpret_cast<const char*>(data), size);
    g_input_has_secret = input.find(chap_secret) != std::string_view::npos ||
                         input.find(target_secret) != std::string_view::npos;
    std::vector<Chunk> chunks = carve(data + 1, size - 1);
    if (mode & 0x08) {
        fuzz_initiator(mode, chunks);
    } else {
        fuzz_target(mode, chunks);
    }
    return 0;
}
