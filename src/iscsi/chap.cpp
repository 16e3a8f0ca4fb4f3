// CHAP for both roles (see chap.hpp).
#include "iscsi/chap.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <mutex>
#include <unordered_set>

namespace ispace::iscsi {

namespace {

constexpr std::string_view key_a = "CHAP_A";
constexpr std::string_view key_i = "CHAP_I";
constexpr std::string_view key_c = "CHAP_C";
constexpr std::string_view key_n = "CHAP_N";
constexpr std::string_view key_r = "CHAP_R";
// CHAP_R is a digest: 32 bytes at most for the algorithms we know. 64 leaves room to say "wrong length"
// rather than "malformed" for a longer digest, and bounds the decoding.
constexpr size_t max_chap_response_length = 64;

bool is_chap_key(std::string_view key) {
    return key == key_a || key == key_i || key == key_c || key == key_n || key == key_r;
}

// User names and offers come from the network: messages show at most a short printable prefix.
std::string printable(std::string_view text) {
    std::string out;
    for (size_t i = 0; i < text.size() && i < 64; ++i) {
        char c = text[i];
        out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    if (text.size() > 64) {
        out += "...";
    }
    return out;
}

std::string quoted(std::string_view text) {
    return "'" + printable(text) + "'";
}

std::string algorithm_list(const std::vector<ChapAlgorithm>& algorithms, bool numbers) {
    std::string out;
    for (auto a : algorithms) {
        if (!out.empty()) {
            out += ',';
        }
        out += numbers ? std::to_string(unsigned(a)) : std::string(to_string(a));
    }
    return out;
}

bool is_known_algorithm(uint64_t value) {
    return value == uint64_t(ChapAlgorithm::md5) || value == uint64_t(ChapAlgorithm::sha256);
}

// RFC 7143 §6.1 binary-value: hex ("0x") or base64 ("0b") only. parse_binary() also takes decimal
// numbers (for large-numerical-values), which CHAP_C and CHAP_R are not.
Result<std::vector<uint8_t>> parse_binary_value(std::string_view text, size_t max_bytes) {
    bool prefixed = text.size() >= 2 && text[0] == '0' &&
                    (text[1] == 'x' || text[1] == 'X' || text[1] == 'b' || text[1] == 'B');
    if (!prefixed) {
        return make_error("not a hex (0x) or base64 (0b) value", EPROTO);
    }
    return parse_binary(text, max_bytes);
}

// The record of challenges this process issued recently, shared by every connection and both roles:
// a challenge received that is in it is a reflection (on this connection or another), and a fresh one
// that is in it means the random generator repeats itself.
class ChallengeRecord {
public:
    static ChallengeRecord& of(Role role) {
        static ChallengeRecord target;
        static ChallengeRecord initiator;
        return role == Role::target ? target : initiator;
    }

    // Enters `challenge`; false if it is already there.
    bool insert(std::span<const uint8_t> challenge) {
        std::string key(challenge.begin(), challenge.end());
        std::lock_guard lock(_mutex);
        if (_set.count(key) != 0) {
            return false;
        }
        if (_order.size() >= chap_challenge_memory) {
            _set.erase(_order.front());
            _order.pop_front();
        }
        _set.insert(key);
        _order.push_back(std::move(key));
        return true;
    }

    bool contains(std::span<const uint8_t> challenge) {
        std::string key(challenge.begin(), challenge.end());
        std::lock_guard lock(_mutex);
        return _set.count(key) != 0;
    }

private:
    std::mutex _mutex;
    std::deque<std::string> _order;
    std::unordered_set<std::string> _set;
};

using RandomSource = std::function<bool(std::span<uint8_t>)>;

bool fill_random(const RandomSource& source, std::span<uint8_t> out) {
    if (source) {
        return source(out);
    }
    return RAND_bytes(out.data(), int(out.size())) == 1;
}

// A fresh challenge of `length` bytes, different from `avoid` (the peer's challenge, for mutual CHAP)
// and, with the real generator, from every challenge this process issued recently.
Result<std::vector<uint8_t>> new_challenge(Role role, const RandomSource& source, size_t length,
                                           std::span<const uint8_t> avoid) {
    std::vector<uint8_t> challenge(length);
    for (int attempt = 0; attempt < 4; ++attempt) {
        if (!fill_random(source, challenge)) {
            return make_error("the random number generator failed", EIO);
        }
        if (std::equal(challenge.begin(), challenge.end(), avoid.begin(), avoid.end())) {
            continue;
        }
        if (source || ChallengeRecord::of(role).insert(challenge)) {
            return challenge;
        }
    }
    return make_error("the random number generator repeats itself", EIO);
}

Result<uint8_t> new_identifier(const RandomSource& source) {
    uint8_t id = 0;
    if (!fill_random(source, {&id, 1})) {
        return make_error("the random number generator failed", EIO);
    }
    return id;
}

bool responses_equal(std::span<const uint8_t> expected, std::span<const uint8_t> received) {
    // The length is public (the digest size); only the contents are compared in constant time.
    return !expected.empty() && expected.size() == received.size() &&
           CRYPTO_memcmp(expected.data(), received.data(), expected.size()) == 0;
}

size_t challenge_length_for(size_t configured, ChapAlgorithm algorithm) {
    return configured != 0 ? configured : chap_digest_size(algorithm);
}

Result<void> check_algorithms(const std::vector<ChapAlgorithm>& algorithms) {
    if (algorithms.empty()) {
        return make_error("CHAP: no algorithm configured", EINVAL);
    }
    for (size_t i = 0; i < algorithms.size(); ++i) {
        if (!is_known_algorithm(uint64_t(algorithms[i]))) {
            return make_error("CHAP: unknown algorithm " + std::to_string(unsigned(algorithms[i])), EINVAL);
        }
        if (std::find(algorithms.begin(), algorithms.begin() + ptrdiff_t(i), algorithms[i]) !=
            algorithms.begin() + ptrdiff_t(i)) {
            return make_error("CHAP: algorithm " + std::string(to_string(algorithms[i])) + " listed twice",
                              EINVAL);
        }
    }
    return {};
}

Result<void> check_challenge_length(size_t length) {
    // 16 bytes is the floor: below 128 bits of challenge, repeats become plausible over a target's life.
    if (length != 0 && (length < 16 || length > max_chap_challenge_length)) {
        return make_error("CHAP: challenge length " + std::to_string(length) + " is not within 16.." +
                              std::to_string(max_chap_challenge_length),
                          EINVAL);
    }
    return {};
}

Result<void> check_credentials(const ChapCredentials& c, std::string_view what) {
    if (auto r = check_chap_user(c.user); !r) {
        return make_error(std::string(what) + ": " + r.error().message, EINVAL);
    }
    if (auto r = check_chap_secret(c.secret); !r) {
        return make_error(std::string(what) + " " + quoted(c.user) + ": " + r.error().message, EINVAL);
    }
    return {};
}

} // namespace

// ---- Algorithms, secrets, credentials ---------------------------------------------------------------

std::string_view to_string(ChapAlgorithm algorithm) {
    switch (algorithm) {
    case ChapAlgorithm::md5:
        return "MD5";
    case ChapAlgorithm::sha256:
        return "SHA-256";
    }
    return "unknown";
}

size_t chap_digest_size(ChapAlgorithm algorithm) {
    switch (algorithm) {
    case ChapAlgorithm::md5:
        return 16;
    case ChapAlgorithm::sha256:
        return 32;
    }
    return 0;
}

Result<ChapAlgorithm> parse_chap_algorithm(std::string_view name) {
    std::string lower;
    for (char c : name.substr(0, 16)) {
        lower += char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    if (lower == "md5" || lower == "5") {
        return ChapAlgorithm::md5;
    }
    if (lower == "sha256" || lower == "sha-256" || lower == "7") {
        return ChapAlgorithm::sha256;
    }
    return make_error("unknown CHAP algorithm " + quoted(name) + " (md5 or sha256)", EINVAL);
}

Result<void> check_chap_secret(std::string_view secret) {
    if (secret.size() < min_chap_secret_length) {
        return make_error("CHAP secret is " + std::to_string(secret.size()) + " bytes; at least " +
                              std::to_string(min_chap_secret_length) + " are required (RFC 7143 §12.1.3)",
                          EINVAL);
    }
    if (secret.size() > max_chap_secret_length) {
        return make_error("CHAP secret is " + std::to_string(secret.size()) + " bytes; at most " +
                              std::to_string(max_chap_secret_length) + " are allowed",
                          EINVAL);
    }
    return {};
}

Result<void> check_chap_user(std::string_view user) {
    if (user.empty()) {
        return make_error("CHAP user name is empty", EINVAL);
    }
    if (user.size() > max_chap_user_length) {
        return make_error("CHAP user name is longer than " + std::to_string(max_chap_user_length) + " bytes",
                          EINVAL);
    }
    for (char c : user) {
        if (uint8_t(c) < 0x20 || c == 0x7f) {
            return make_error("CHAP user name " + quoted(user) + " contains a control character", EINVAL);
        }
    }
    return {};
}

Result<ChapCredentials> parse_chap_credentials(std::string_view text) {
    size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
        // Do not quote the text: it may be a secret typed without its user.
        return make_error("CHAP credentials must be USER:SECRET (no ':' found)", EINVAL);
    }
    ChapCredentials c{std::string(text.substr(0, colon)), std::string(text.substr(colon + 1))};
    if (auto r = check_credentials(c, "CHAP user"); !r) {
        return std::move(r).error();
    }
    return c;
}

std::vector<uint8_t> chap_response(ChapAlgorithm algorithm, uint8_t id, std::string_view secret,
                                   std::span<const uint8_t> challenge) {
    const EVP_MD* md = algorithm == ChapAlgorithm::sha256 ? EVP_sha256() : EVP_md5();
    std::vector<uint8_t> digest(EVP_MAX_MD_SIZE);
    unsigned int length = 0;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx, md, nullptr) == 1 &&
              EVP_DigestUpdate(ctx, &id, 1) == 1 &&
              EVP_DigestUpdate(ctx, secret.data(), secret.size()) == 1 &&
              EVP_DigestUpdate(ctx, challenge.data(), challenge.size()) == 1 &&
              EVP_DigestFinal_ex(ctx, digest.data(), &length) == 1;
    EVP_MD_CTX_free(ctx); // cleanses the context, which held the secret
    if (!ok || length != chap_digest_size(algorithm)) {
        return {};
    }
    digest.resize(length);
    return digest;
}

bool chap_challenge_recently_issued(std::span<const uint8_t> challenge, Role role) {
    return ChallengeRecord::of(role).contains(challenge);
}

Result<void> validate(const ChapTargetConfig& config) {
    if (auto r = check_algorithms(config.algorithms); !r) {
        return r;
    }
    if (auto r = check_challenge_length(config.challenge_length); !r) {
        return r;
    }
    if (!config.lookup && config.users.empty()) {
        return make_error("CHAP: no initiator credentials configured", EINVAL);
    }
    for (const auto& u : config.users) {
        if (auto r = check_credentials(u, "CHAP user"); !r) {
            return r;
        }
    }
    if (config.require_mutual && !config.mutual) {
        return make_error("CHAP: mutual CHAP required but no target credentials configured", EINVAL);
    }
    if (config.mutual) {
        if (auto r = check_credentials(*config.mutual, "mutual CHAP user"); !r) {
            return r;
        }
        for (const auto& u : config.users) {
            if (u.secret == config.mutual->secret) {
                return make_error(
                    "CHAP: the secret of user " + quoted(u.user) +
                        " equals the target's mutual CHAP secret; they must differ (RFC 7143 §12.1.3)",
                    EINVAL);
            }
        }
    }
    return {};
}

Result<void> validate(const ChapInitiatorConfig& config) {
    if (auto r = check_algorithms(config.algorithms); !r) {
        return r;
    }
    if (auto r = check_challenge_length(config.challenge_length); !r) {
        return r;
    }
    if (auto r = check_credentials(config.credentials, "CHAP user"); !r) {
        return r;
    }
    if (config.target) {
        if (auto r = check_credentials(*config.target, "mutual CHAP target user"); !r) {
            return r;
        }
        if (config.target->secret == config.credentials.secret) {
            return make_error("CHAP: the initiator's and the target's secrets must differ (RFC 7143 §12.1.3)",
                              EINVAL);
        }
    }
    return {};
}

// ---- Target -----------------------------------------------------------------------------------------

ChapTargetAuthenticator::ChapTargetAuthenticator(ChapTargetConfig config) : _config(std::move(config)) {}

bool ChapTargetAuthenticator::owns_key(std::string_view key) const {
    return is_chap_key(key);
}

AuthResult ChapTargetAuthenticator::fail(LoginStatus status, std::string message) {
    _state = State::failed;
    return AuthResult{AuthStatus::failed, status, "CHAP: " + std::move(message)};
}

AuthResult ChapTargetAuthenticator::step(const KeyValueList& received, KeyValueList& out) {
    switch (_state) {
    case State::start:
        _state = State::await_algorithms;
        if (received.empty()) {
            return AuthResult{};
        }
        return choose_algorithm(received, out);
    case State::await_algorithms:
        if (received.empty()) {
            return AuthResult{};
        }
        return choose_algorithm(received, out);
    case State::await_response:
        return verify_response(received, out);
    case State::done:
        if (received.empty()) {
            return AuthResult{AuthStatus::done, {}, {}};
        }
        return fail(LoginStatus::authentication_failure,
                    received.front().key + " after user " + quoted(_user) + " was authenticated");
    case State::failed:
        break;
    }
    return fail(LoginStatus::authentication_failure, "keys after a failed authentication");
}

AuthResult ChapTargetAuthenticator::choose_algorithm(const KeyValueList& received, KeyValueList& out) {
    const std::string* offer = nullptr;
    for (const auto& kv : received) {
        if (kv.key != key_a) {
            // RFC 7143 §12.1.3: the exchange starts with the initiator's CHAP_A, alone.
            return fail(LoginStatus::authentication_failure, kv.key + " before the initiator offered CHAP_A");
        }
        offer = &kv.value;
    }
    auto items = parse_list(*offer);
    if (!items) {
        return fail(LoginStatus::authentication_failure, "CHAP_A: " + items.error().message);
    }
    for (auto wanted : _config.algorithms) {
        for (auto item : *items) {
            auto number = parse_number(item);
            if (number && *number == uint64_t(wanted)) {
                _algorithm = wanted;
                break;
            }
        }
        if (_algorithm) {
            break;
        }
    }
    if (!_algorithm) {
        return fail(LoginStatus::authentication_failure, "the initiator offers CHAP_A=" + printable(*offer) +
                                                             "; this target accepts " +
                                                             algorithm_list(_config.algorithms, true) + " (" +
                                                             algorithm_list(_config.algorithms, false) + ")");
    }
    auto id = new_identifier(_config.random);
    auto challenge = id ? new_challenge(Role::target, _config.random,
                                        challenge_length_for(_config.challenge_length, *_algorithm), {})
                        : Result<std::vector<uint8_t>>(id.error());
    if (!challenge) {
        return fail(LoginStatus::target_error, challenge.error().message);
    }
    _id = *id;
    _challenge = std::move(*challenge);
    out.push_back({std::string(key_a), std::to_string(unsigned(*_algorithm))});
    // Decimal: libiscsi reads CHAP_I with atoi().
    out.push_back({std::string(key_i), std::to_string(unsigned(_id))});
    out.push_back({std::string(key_c), format_hex(_challenge)});
    _state = State::await_response;
    return AuthResult{};
}

AuthResult ChapTargetAuthenticator::verify_response(const KeyValueList& received, KeyValueList& out) {
    auto auth_fail = [this](std::string message) {
        return fail(LoginStatus::authentication_failure, std::move(message));
    };
    const std::string* name = nullptr;
    const std::string* response = nullptr;
    const std::string* mutual_id = nullptr;
    const std::string* mutual_challenge = nullptr;
    for (const auto& kv : received) {
        if (kv.key == key_n) {
            name = &kv.value;
        } else if (kv.key == key_r) {
            response = &kv.value;
        } else if (kv.key == key_i) {
            mutual_id = &kv.value;
        } else if (kv.key == key_c) {
            mutual_challenge = &kv.value;
        } else {
            return auth_fail(kv.key + " where CHAP_N and CHAP_R were expected");
        }
    }
    if (name == nullptr || response == nullptr) {
        return auth_fail(std::string("the initiator sent no ") + (name == nullptr ? "CHAP_N" : "CHAP_R") +
                         " after the challenge");
    }
    if (auto r = check_chap_user(*name); !r) {
        return auth_fail("CHAP_N: " + r.error().message);
    }
    _user = *name;
    std::string who = "user " + quoted(_user);
    auto received_response = parse_binary_value(*response, max_chap_response_length);
    if (!received_response) {
        return auth_fail("CHAP_R from " + who + ": " + received_response.error().message);
    }
    bool mutual = mutual_id != nullptr || mutual_challenge != nullptr;
    uint8_t peer_id = 0;
    std::vector<uint8_t> peer_challenge;
    if (mutual) {
        if (mutual_id == nullptr || mutual_challenge == nullptr) {
            return auth_fail(who + " sent " +
                             (mutual_id == nullptr ? "CHAP_C without CHAP_I" : "CHAP_I without CHAP_C"));
        }
        auto id = parse_number(*mutual_id);
        if (!id || *id > 255) {
            return auth_fail("CHAP_I from " + who + " is not a number from 0 to 255");
        }
        peer_id = uint8_t(*id);
        auto challenge = parse_binary_value(*mutual_challenge, max_chap_challenge_length);
        if (!challenge) {
            return auth_fail("CHAP_C from " + who + ": " + challenge.error().message);
        }
        if (challenge->empty()) {
            return auth_fail("CHAP_C from " + who + " is empty");
        }
        peer_challenge = std::move(*challenge);
        // RFC 7143 §12.1.3: a challenge equal to ours is a reflection attack; the record also catches one
        // taken from another connection.
        if (peer_challenge == _challenge || chap_challenge_recently_issued(peer_challenge, Role::target)) {
            return auth_fail(who + " sent back a challenge this target issued (reflection); refused");
        }
    }

    std::optional<std::string> secret;
    if (_config.lookup) {
        secret = _config.lookup(_user);
    } else {
        for (const auto& u : _config.users) {
            if (u.user == _user) {
                secret = u.secret;
                break;
            }
        }
    }
    if (!secret) {
        // Spend the same work as for a known user so timing does not tell which user names exist.
        std::vector<uint8_t> dummy = chap_response(*_algorithm, _id, "ispace-unknown-user", _challenge);
        (void)responses_equal(dummy, *received_response);
        return auth_fail("unknown " + who);
    }
    if (!check_chap_secret(*secret)) {
        return fail(LoginStatus::target_error,
                    "the secret configured for " + who + " violates the secret policy");
    }
    std::vector<uint8_t> expected = chap_response(*_algorithm, _id, *secret, _challenge);
    if (expected.empty()) {
        return fail(LoginStatus::target_error,
                    std::string(to_string(*_algorithm)) + " is unavailable in OpenSSL");
    }
    if (received_response->size() != expected.size()) {
        return auth_fail("CHAP_R from " + who + " is " + std::to_string(received_response->size()) +
                         " bytes; " + std::string(to_string(*_algorithm)) + " gives " +
                         std::to_string(expected.size()));
    }
    if (!responses_equal(expected, *received_response)) {
        return auth_fail("CHAP_R from " + who + " does not match (wrong secret)");
    }
    if (!mutual) {
        if (_config.require_mutual) {
            return auth_fail(who + " did not ask for mutual CHAP, which this target requires");
        }
        _state = State::done;
        return AuthResult{AuthStatus::done, {}, {}};
    }
    if (!_config.mutual) {
        return auth_fail(who + " asks for mutual CHAP; this target has no mutual CHAP credentials");
    }
    if (_config.mutual->secret == *secret) {
        // Answering would let anyone who can replay a challenge learn responses made with the
        // initiator's own secret.
        return auth_fail(who + " asks for mutual CHAP, but its secret equals the target's; they must differ");
    }
    std::vector<uint8_t> answer = chap_response(*_algorithm, peer_id, _config.mutual->secret, peer_challenge);
    if (answer.empty()) {
        return fail(LoginStatus::target_error,
                    std::string(to_string(*_algorithm)) + " is unavailable in OpenSSL");
    }
    out.push_back({std::string(key_n), _config.mutual->user});
    out.push_back({std::string(key_r), format_hex(answer)});
    _mutual_done = true;
    _state = State::done;
    return AuthResult{AuthStatus::done, {}, {}};
}

// ---- Initiator --------------------------------------------------------------------------------------

ChapInitiatorAuthenticator::ChapInitiatorAuthenticator(ChapInitiatorConfig config)
    : _config(std::move(config)) {}

bool ChapInitiatorAuthenticator::owns_key(std::string_view key) const {
    return is_chap_key(key);
}

AuthResult ChapInitiatorAuthenticator::fail(std::string message) {
    _state = State::failed;
    return AuthResult{AuthStatus::failed, LoginStatus::authentication_failure, "CHAP: " + std::move(message)};
}

AuthResult ChapInitiatorAuthenticator::step(const KeyValueList& received, KeyValueList& out) {
    switch (_state) {
    case State::start:
        if (!received.empty()) {
            return fail(received.front().key + " from the target before our CHAP_A");
        }
        if (auto r = validate(_config); !r) {
            return fail(r.error().message);
        }
        out.push_back({std::string(key_a), algorithm_list(_config.algorithms, true)});
        _state = State::await_challenge;
        return AuthResult{};
    case State::await_challenge:
        if (received.empty()) {
            return AuthResult{};
        }
        return answer_challenge(received, out);
    case State::await_proof:
        if (received.empty()) {
            return AuthResult{AuthStatus::awaiting_proof, {}, {}};
        }
        return verify_target(received);
    case State::done:
        if (received.empty()) {
            return AuthResult{AuthStatus::done, {}, {}};
        }
        return fail(received.front().key + " from the target after authentication ended");
    case State::failed:
        break;
    }
    return fail("keys after a failed authentication");
}

AuthResult ChapInitiatorAuthenticator::answer_challenge(const KeyValueList& received, KeyValueList& out) {
    const std::string* a = find_value(received, key_a);
    const std::string* i = find_value(received, key_i);
    const std::string* c = find_value(received, key_c);
    for (const auto& kv : received) {
        if (kv.key != key_a && kv.key != key_i && kv.key != key_c) {
            return fail(kv.key + " from the target where CHAP_A, CHAP_I and CHAP_C were expected");
        }
    }
    if (a == nullptr || i == nullptr || c == nullptr) {
        return fail("the target's challenge lacks CHAP_A, CHAP_I or CHAP_C");
    }
    auto chosen = parse_number(*a);
    if (!chosen || !is_known_algorithm(*chosen) ||
        std::find(_config.algorithms.begin(), _config.algorithms.end(), ChapAlgorithm(*chosen)) ==
            _config.algorithms.end()) {
        return fail("the target answered CHAP_A=" + printable(*a) +
                    " to our CHAP_A=" + algorithm_list(_config.algorithms, true));
    }
    _algorithm = ChapAlgorithm(*chosen);
    auto id = parse_number(*i);
    if (!id || *id > 255) {
        return fail("the target's CHAP_I is not a number from 0 to 255");
    }
    auto challenge = parse_binary_value(*c, max_chap_challenge_length);
    if (!challenge) {
        return fail("the target's CHAP_C: " + challenge.error().message);
    }
    if (challenge->empty()) {
        return fail("the target's CHAP_C is empty");
    }
    if (chap_challenge_recently_issued(*challenge, Role::initiator)) {
        return fail("the target sent a challenge this process issued (reflection); refused");
    }
    std::vector<uint8_t> response =
        chap_response(*_algorithm, uint8_t(*id), _config.credentials.secret, *challenge);
    if (response.empty()) {
        return fail(std::string(to_string(*_algorithm)) + " is unavailable in OpenSSL");
    }
    out.push_back({std::string(key_n), _config.credentials.user});
    out.push_back({std::string(key_r), format_hex(response)});
    if (!_config.target) {
        _state = State::done;
        return AuthResult{AuthStatus::done, {}, {}};
    }
    auto our_id = new_identifier(_config.random);
    auto our_challenge =
        our_id ? new_challenge(Role::initiator, _config.random,
                               challenge_length_for(_config.challenge_length, *_algorithm), *challenge)
               : Result<std::vector<uint8_t>>(our_id.error());
    if (!our_challenge) {
        return fail(our_challenge.error().message);
    }
    _id = *our_id;
    _challenge = std::move(*our_challenge);
    out.push_back({std::string(key_i), std::to_string(unsigned(_id))});
    out.push_back({std::string(key_c), format_hex(_challenge)});
    _state = State::await_proof;
    return AuthResult{AuthStatus::awaiting_proof, {}, {}};
}

AuthResult ChapInitiatorAuthenticator::verify_target(const KeyValueList& received) {
    const std::string* name = find_value(received, key_n);
    const std::string* response = find_value(received, key_r);
    for (const auto& kv : received) {
        if (kv.key != key_n && kv.key != key_r) {
            return fail(kv.key + " from the target where CHAP_N and CHAP_R were expected");
        }
    }
    if (name == nullptr || response == nullptr) {
        return fail("the target did not answer our mutual CHAP challenge with CHAP_N and CHAP_R");
    }
    if (*name != _config.target->user) {
        return fail("the target calls itself " + quoted(*name) + ", not " + quoted(_config.target->user));
    }
    auto received_response = parse_binary_value(*response, max_chap_response_length);
    if (!received_response) {
        return fail("the target's CHAP_R: " + received_response.error().message);
    }
    std::vector<uint8_t> expected = chap_response(*_algorithm, _id, _config.target->secret, _challenge);
    if (!responses_equal(expected, *received_response)) {
        return fail("the target's CHAP_R does not match (the target does not know the mutual CHAP secret)");
    }
    _state = State::done;
    return AuthResult{AuthStatus::done, {}, {}};
}

std::unique_ptr<Authenticator> make_chap_target_authenticator(ChapTargetConfig config) {
    return std::make_unique<ChapTargetAuthenticator>(std::move(config));
}

std::unique_ptr<Authenticator> make_chap_initiator_authenticator(ChapInitiatorConfig config) {
    return std::make_unique<ChapInitiatorAuthenticator>(std::move(config));
}

} // namespace ispace::iscsi
