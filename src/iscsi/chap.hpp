// CHAP authentication (RFC 7143 §12.1.3, RFC 1994) for both roles, behind the Authenticator interface.
//
//   initiator                                   target
//   AuthMethod=CHAP,None                 ->
//                                        <-     AuthMethod=CHAP
//   CHAP_A=7,5                           ->
//                                        <-     CHAP_A=7 CHAP_I=<id> CHAP_C=<challenge>
//   CHAP_N=<user> CHAP_R=<response>      ->     (verified; failure ends the login with 02/01)
//   [CHAP_I=<id'> CHAP_C=<challenge'>]          mutual CHAP only
//                                        <-     [CHAP_N=<target user> CHAP_R=<response'>], T=1
//
// response = H(id || secret || challenge), H being MD5 (CHAP_A=5) or SHA-256 (CHAP_A=7, the number
// Linux LIO and open-iscsi use). The target picks the first algorithm of *its* preference list that the
// initiator offered, so SHA-256 wins whenever both sides have it and MD5 remains for initiators that
// only know MD5 (libiscsi 1.19 offers only CHAP_A=5).
//
// Security properties and where they are enforced:
//  - Challenges come from OpenSSL's CSPRNG (RAND_bytes), as long as the digest (16 bytes for MD5, 32
//    for SHA-256): 128 bits or more, so a repeat is not a practical event (2^-64 after 2^32 logins).
//    On top of that every challenge this process issues is remembered in a bounded process-wide record
//    of recent challenges (per role); a fresh one found in it is drawn again (that would mean a broken
//    RNG, e.g. a cloned VM), and a challenge *received* that is in it is refused as a reflection, on
//    this connection or any other.
//  - Responses are compared with CRYPTO_memcmp (constant time) after an exact length check.
//  - The target answers mutual CHAP only after the initiator has proven itself, only with target
//    credentials configured, and never when the two secrets are equal (RFC 7143 §12.1.3: the secrets
//    must differ, or the target becomes an oracle for the initiator's secret).
//  - An initiator configured for mutual CHAP does not let the security stage end before the target's
//    CHAP_N/CHAP_R arrived and verified (AuthStatus::awaiting_proof).
//  - Every failure message names the CHAP user and the reason, never a secret, a challenge or a
//    response. Binary values are accepted in hex ("0x") and base64 ("0b") (RFC 7143 §6.1), with their
//    decoded lengths bounded (CHAP_C at most 1024 bytes, CHAP_R at most 64).
#pragma once

#include "common/result.hpp"
#include "iscsi/auth.hpp"
#include "iscsi/params.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {

// CHAP_A values (IANA "PPP Authentication Algorithms"; 7 for SHA-256 as Linux LIO and open-iscsi).
enum class ChapAlgorithm : uint8_t { md5 = 5, sha256 = 7 };

std::string_view to_string(ChapAlgorithm algorithm); // "MD5", "SHA-256"
size_t chap_digest_size(ChapAlgorithm algorithm);    // 16, 32
// "md5", "sha256", "sha-256" (any case) or the CHAP_A number "5"/"7"; EINVAL otherwise.
Result<ChapAlgorithm> parse_chap_algorithm(std::string_view name);

// RFC 7143 §12.1.3 recommends at least 12 bytes (96 bits) of secret; we require it. 255 bytes bounds
// what a configuration can make us hash.
inline constexpr size_t min_chap_secret_length = 12;
inline constexpr size_t max_chap_secret_length = 255;
inline constexpr size_t max_chap_user_length = 255;
// RFC 7143 §12.1.3: "the challenge length ... MUST NOT exceed 1024 bytes".
inline constexpr size_t max_chap_challenge_length = 1024;

struct ChapCredentials {
    std::string user;
    std::string secret;
    // Where a configuration file read the secret from (its "secret_file", as written there), or empty
    // when the secret was given inline. Kept so that a configuration written back names the file again
    // and never copies into itself a secret the administrator kept apart.
    std::string secret_file;
};

// The secret policy: 12..255 bytes. The error says what is wrong, never what the secret is.
Result<void> check_chap_secret(std::string_view secret);
// A CHAP user name: 1..255 bytes, printable (it travels as CHAP_N and appears in logs).
Result<void> check_chap_user(std::string_view user);
// "USER:SECRET" as given to `ispaced --chap` / `--mutual-chap`: the user is everything before the first
// ':', the secret everything after (it may contain ':'). Errors never echo the secret.
Result<ChapCredentials> parse_chap_credentials(std::string_view text);

// The CHAP response H(id || secret || challenge). Empty only if OpenSSL fails (it does not for these
// digests unless the library is broken or MD5 is disabled by a FIPS configuration).
std::vector<uint8_t> chap_response(ChapAlgorithm algorithm, uint8_t id, std::string_view secret,
                                   std::span<const uint8_t> challenge);

struct ChapTargetConfig {
    // Who may log in: the secret for a CHAP_N, or nothing for an unknown user. When `lookup` is not set,
    // `users` is searched instead. A daemon holding users per target sets `lookup`.
    std::function<std::optional<std::string>(std::string_view user)> lookup;
    std::vector<ChapCredentials> users;
    // The target's own credentials, answered when the initiator asks for mutual CHAP. Without them an
    // initiator asking for mutual CHAP is refused (it would otherwise believe a target it cannot check).
    std::optional<ChapCredentials> mutual;
    // Refuse initiators that do not ask for mutual CHAP.
    bool require_mutual = false;
    // Acceptable CHAP_A values in the target's order of preference.
    std::vector<ChapAlgorithm> algorithms{ChapAlgorithm::sha256, ChapAlgorithm::md5};
    // Challenge length in bytes; 0 is the digest size of the chosen algorithm (16 or 32).
    size_t challenge_length = 0;
    // Tests and fuzzers only: a deterministic source for CHAP_I and CHAP_C (returns false on failure).
    // When set, issued challenges are not entered in the process-wide record. Default: RAND_bytes.
    std::function<bool(std::span<uint8_t>)> random;
};

// Checks a target configuration: user names, secret lengths, algorithms, challenge length, mutual
// secret differing from every listed user's secret. EINVAL with a message naming the user.
Result<void> validate(const ChapTargetConfig& config);

class ChapTargetAuthenticator final : public Authenticator {
public:
    explicit ChapTargetAuthenticator(ChapTargetConfig config);

    std::string_view method() const override { return auth_method_chap; }
    bool owns_key(std::string_view key) const override;
    AuthResult step(const KeyValueList& received, KeyValueList& out) override;

    // After a successful step: the algorithm chosen, the CHAP user who logged in, whether mutual CHAP
    // was done (for the log line and for ACLs by CHAP user).
    std::optional<ChapAlgorithm> algorithm() const { return _algorithm; }
    const std::string& user() const { return _user; }
    bool mutual_done() const { return _mutual_done; }

private:
    enum class State : uint8_t { start, await_algorithms, await_response, done, failed };

    AuthResult choose_algorithm(const KeyValueList& received, KeyValueList& out);
    AuthResult verify_response(const KeyValueList& received, KeyValueList& out);
    AuthResult fail(LoginStatus status, std::string message);

    ChapTargetConfig _config;
    State _state = State::start;
    std::optional<ChapAlgorithm> _algorithm;
    uint8_t _id = 0;
    std::vector<uint8_t> _challenge;
    std::string _user;
    bool _mutual_done = false;
};

struct ChapInitiatorConfig {
    ChapCredentials credentials;
    // Set for mutual CHAP: the target must answer with this CHAP_N and a CHAP_R made with this secret.
    std::optional<ChapCredentials> target;
    // Offered as CHAP_A, in order of preference.
    std::vector<ChapAlgorithm> algorithms{ChapAlgorithm::sha256, ChapAlgorithm::md5};
    // Length of our challenge for mutual CHAP; 0 is the digest size of the chosen algorithm.
    size_t challenge_length = 0;
    // Tests only, as ChapTargetConfig::random.
    std::function<bool(std::span<uint8_t>)> random;
};

Result<void> validate(const ChapInitiatorConfig& config);

class ChapInitiatorAuthenticator final : public Authenticator {
public:
    explicit ChapInitiatorAuthenticator(ChapInitiatorConfig config);

    std::string_view method() const override { return auth_method_chap; }
    bool owns_key(std::string_view key) const override;
    AuthResult step(const KeyValueList& received, KeyValueList& out) override;

    std::optional<ChapAlgorithm> algorithm() const { return _algorithm; }

private:
    enum class State : uint8_t { start, await_challenge, await_proof, done, failed };

    AuthResult answer_challenge(const KeyValueList& received, KeyValueList& out);
    AuthResult verify_target(const KeyValueList& received);
    AuthResult fail(std::string message);

    ChapInitiatorConfig _config;
    State _state = State::start;
    std::optional<ChapAlgorithm> _algorithm;
    uint8_t _id = 0;
    std::vector<uint8_t> _challenge; // ours, for mutual CHAP
};

// Factories for LoginPolicy::authenticator and InitiatorLoginConfig::make_authenticator.
std::unique_ptr<Authenticator> make_chap_target_authenticator(ChapTargetConfig config);
std::unique_ptr<Authenticator> make_chap_initiator_authenticator(ChapInitiatorConfig config);

// The process-wide records of recently issued challenges, one per role (exposed for tests): whether
// `challenge` is among the last `chap_challenge_memory` challenges this process issued as `role`.
// Per role, because a process may be both (ispaced's remote backstores log in with the initiator
// library, possibly to itself): the target's record catches an initiator returning a target
// challenge, the initiator's record a target returning an initiator challenge.
inline constexpr size_t chap_challenge_memory = 4096;
bool chap_challenge_recently_issued(std::span<const uint8_t> challenge, Role role);

} // namespace ispace::iscsi
