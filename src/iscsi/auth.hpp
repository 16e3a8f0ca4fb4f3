// Authentication in the login security stage (RFC 7143 §6.3.2, §12): the plug-in point.
//
// The login machines negotiate AuthMethod themselves (the initiator offers a list, the target picks the
// first it accepts) and then hand every security-stage PDU's method keys to an `Authenticator` for that
// method, in both roles. That is what a challenge/response method needs:
//
//   CHAP, target side                         CHAP, initiator side
//   I: AuthMethod=CHAP,None  -> step({})        T: AuthMethod=CHAP    -> step({}) sends CHAP_A=7,5
//   I: CHAP_A=7,5            -> step(...)       T: CHAP_A,CHAP_I,CHAP_C -> step(...) sends CHAP_N,CHAP_R
//        sends CHAP_A,CHAP_I,CHAP_C                  (and CHAP_I,CHAP_C for mutual CHAP: awaiting_proof)
//   I: CHAP_N,CHAP_R (T=1)   -> step(...)       T: CHAP_N,CHAP_R (T=1) -> step(...) verifies the target
//        verifies; done (+ CHAP_N,CHAP_R)
//
// AuthMethod=None is implemented here; CHAP is in chap.hpp.
#pragma once

#include "iscsi/pdu.hpp"
#include "iscsi/text.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {

inline constexpr std::string_view auth_method_none = "None";
inline constexpr std::string_view auth_method_chap = "CHAP";

enum class AuthStatus : uint8_t {
    // More exchanges are needed; the login stays in the security stage (T=0 from the target).
    in_progress,
    // This side is satisfied. The security stage may end.
    done,
    // This side has sent its last keys and may propose to end the stage, but the peer's proof must
    // still arrive and verify in the response that ends it (an initiator doing mutual CHAP: the
    // target's CHAP_N/CHAP_R). The stage must not end while this is the status.
    awaiting_proof,
    // Authentication failed; the login ends with `failure`.
    failed,
};

struct AuthResult {
    AuthStatus status = AuthStatus::in_progress;
    // On failure: 02/01 (authentication failure) or 02/02 (authorization failure), as the target's status.
    LoginStatus failure = LoginStatus::authentication_failure;
    std::string message; // for the log: what failed, never a secret
};

class Authenticator {
public:
    virtual ~Authenticator() = default;
    // The AuthMethod value this authenticator implements ("None", "CHAP").
    virtual std::string_view method() const = 0;
    // Whether `key` belongs to this method (CHAP_A, CHAP_I, ...). The login machine hands exactly
    // these keys to step(); any other security key in the stage is a protocol error.
    virtual bool owns_key(std::string_view key) const = 0;
    // Called once right after the method is agreed with no keys (the initiator produces its first
    // keys here, e.g. CHAP_A), then with this method's keys from every later security-stage PDU received
    // from the peer. Keys to send go to `out`, in the next PDU of this side.
    virtual AuthResult step(const KeyValueList& received, KeyValueList& out) = 0;
};

// AuthMethod=None: nothing to exchange; done at once.
class NoneAuthenticator final : public Authenticator {
public:
    std::string_view method() const override { return auth_method_none; }
    bool owns_key(std::string_view) const override { return false; }
    AuthResult step(const KeyValueList& received, KeyValueList& out) override;
};

std::unique_ptr<Authenticator> make_none_authenticator();

// The responder's choice of AuthMethod (RFC 7143 §6.3.2: "the first option in the list it supports and
// is allowed to use"): the first of the peer's `offered` values that is in `acceptable`, or empty.
std::string choose_auth_method(const std::vector<std::string_view>& offered,
                               const std::vector<std::string>& acceptable);

} // namespace ispace::iscsi
