// Login phase state machines (RFC 7143 §6.3, §11.12, §11.13): pure, no I/O.
//
// TargetLogin is fed every Login Request PDU of one connection (decoded header + its data segment) and
// returns the Login Response to send. InitiatorLogin builds Login Requests and consumes responses.
// Both handle the C bit (a text sequence spread over several PDUs, each answered by an empty PDU from the
// other side), the T bit and stage rules, AuthMethod and the authenticator (auth.hpp), and parameter
// negotiation (params.hpp).
//
// Login is strictly request/response: one response per request, so `receive` returns exactly one PDU.
// During login both directions assume MaxRecvDataSegmentLength 8192 (RFC 7143 §6.3), so longer text is
// split into several PDUs with the C bit.
#pragma once

#include "iscsi/auth.hpp"
#include "iscsi/params.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/text.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ispace::iscsi {

struct LoginRequestPdu {
    LoginRequest header;
    std::vector<uint8_t> data; // the data segment, without padding
};

struct LoginResponsePdu {
    LoginResponse header;
    std::vector<uint8_t> data;
};

// "Initiator error (02/00)", "Target not found (02/03)", ...
std::string describe(LoginStatus status);
constexpr LoginStatusClass status_class(LoginStatus status) {
    return LoginStatusClass(uint16_t(status) >> 8);
}

// Who is logging in, to what, and how: known once the first complete text sequence has arrived.
struct LoginIdentity {
    std::string initiator_name;
    std::string initiator_alias;
    std::string target_name; // may be empty in a discovery session
    SessionType session_type = SessionType::normal;
    Isid isid{};
    // As sent by the initiator: 0 asks for a new session (the leading connection; if a session with
    // this InitiatorName and ISID exists, that is a session reinstatement the policy decides on);
    // non-zero adds this connection to that session (or reinstates connection `cid` in it).
    uint16_t tsih = 0;
    uint16_t cid = 0;
    uint32_t cmd_sn = 0;
    // RFC 7143 §11.12: the ExpStatSN of the first Login Request is meaningful only when the login
    // restarts a connection (a CID the session has): it acknowledges the old connection's responses.
    uint32_t exp_stat_sn = 0;
    bool leading() const { return tsih == 0; }
};

// The policy's answer to a new login, after the first complete text sequence.
struct LoginTargetInfo {
    // success, or the status to end the login with: target_not_found, target_removed,
    // authorization_failure (ACLs), session_type_not_supported, session_does_not_exist (TSIH not
    // found), too_many_connections, cannot_include_in_session, service_unavailable, out_of_resources,
    // or a redirection (target_moved_*), which then needs `redirect_address`.
    LoginStatus status = LoginStatus::success;
    // TargetAddress for a redirection: "domainname[:port][,portal-group-tag]".
    std::string redirect_address;
    // What this target accepts and offers.
    NegotiationConfig negotiation;
    // Acceptable AuthMethod values in order of preference. Listing "None" makes authentication
    // optional; without it an initiator that cannot authenticate is refused with 02/01.
    std::vector<std::string> auth_methods{std::string(auth_method_none)};
    uint16_t target_portal_group_tag = 1;
    // For a non-leading connection (TSIH != 0): the session's negotiated parameters.
    std::optional<SessionParams> session;
};

// The policy's answer when the login is about to succeed.
struct LoginAdmission {
    // success, or too_many_connections, cannot_include_in_session, session_does_not_exist,
    // out_of_resources, ...
    LoginStatus status = LoginStatus::success;
    // The session's TSIH: newly assigned for a leading login, the existing one otherwise. Non-zero.
    uint16_t tsih = 0;
    // The CmdSN window to announce in the final response.
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
};

// Implemented by the target daemon: target lookup, ACLs, authentication and session table decisions.
// The machine only asks; it keeps no global state.
class LoginPolicy {
public:
    virtual ~LoginPolicy() = default;
    // After the first complete text sequence of a connection.
    virtual LoginTargetInfo start(const LoginIdentity& identity) = 0;
    // The authenticator for an agreed AuthMethod (one listed in LoginTargetInfo::auth_methods);
    // nullptr ends the login with 03/00.
    virtual std::unique_ptr<Authenticator> authenticator(std::string_view method,
                                                         const LoginIdentity& identity) = 0;
    // Just before the final response: create the session (TSIH 0: new session, or reinstatement of an
    // existing one with the same InitiatorName and ISID -- the daemon decides and closes the old one)
    // or add this connection to the session named by the TSIH (connection reinstatement if its CID is in
    // use).
    virtual LoginAdmission admit(const LoginIdentity& identity, const SessionParams& session,
                                 const ConnectionParams& connection) = 0;
};

struct TargetLoginSettings {
    // StatSN of the first response; every later response carries the next number.
    uint32_t initial_stat_sn = 0;
    // Login Request PDUs accepted before giving up (an initiator that never finishes is refused).
    size_t max_requests = 64;
    TextLimits text_limits{};
    // ExpCmdSN .. MaxCmdSN window announced in responses before the final one (and in the final one if
    // the policy returns exp_cmd_sn == max_cmd_sn == 0).
    uint32_t cmd_window = 32;
};

enum class LoginState : uint8_t { in_progress, complete, redirected, failed };

class TargetLogin {
public:
    explicit TargetLogin(LoginPolicy& policy, TargetLoginSettings settings = {});

    // One Login Request PDU, while state() is in_progress (in full feature phase a Login Request is the
    // connection's to reject). Returns the response to send. After a response with a status class
    // other than 0, the connection is to be closed (state() is failed or redirected); after the final
    // response (T=1, NSG=3) state() is complete and the connection is in full feature phase.
    LoginResponsePdu receive(const LoginRequest& request, std::span<const uint8_t> data);
    // For the connection to end the login itself: a PDU other than a Login Request arrived (02/0b), a
    // header failed to decode (02/00), the daemon ran out of resources (03/02)...
    LoginResponsePdu fail(LoginStatus status, std::string reason);

    LoginState state() const { return _state; }
    // The status sent last (success while in progress or complete) and why, for the log.
    LoginStatus status() const { return _status; }
    const std::string& reason() const { return _reason; }

    // Valid once the first complete text sequence has been processed.
    const LoginIdentity& identity() const { return _identity; }
    // Valid when complete.
    const SessionParams& session_params() const { return _session; }
    const ConnectionParams& connection_params() const { return _connection; }
    uint16_t tsih() const { return _tsih; }
    // StatSN of the last response sent: full feature phase continues with the next one.
    uint32_t last_stat_sn() const { return _stat_sn - 1; }
    LoginStage stage() const { return _stage; }

private:
    LoginResponsePdu process(const LoginRequest& request, std::vector<uint8_t> text);
    std::optional<LoginResponsePdu> start(const LoginRequest& request, const KeyValueList& pairs);
    std::optional<LoginResponsePdu> security_keys(const KeyValueList& pairs, KeyValueList& out);
    LoginResponsePdu next_chunk(const LoginRequest& request);
    LoginResponse header_for(const LoginRequest& request);

    LoginPolicy& _policy;
    TargetLoginSettings _settings;
    LoginState _state = LoginState::in_progress;
    LoginStatus _status = LoginStatus::success;
    std::string _reason;
    size_t _requests = 0;
    bool _first_pdu_seen = false;
    bool _started = false; // the first complete text sequence was processed
    bool _send_tpgt = false;
    LoginRequest _first{};
    LoginRequest _last{};
    LoginStage _stage = LoginStage::security;
    uint32_t _stat_sn = 0;
    TextAssembler _incoming;
    // Our response text not yet sent (it was longer than one PDU), and what the last piece should say.
    std::vector<uint8_t> _outgoing;
    size_t _outgoing_offset = 0;
    bool _pending_transit = false;
    LoginStage _pending_nsg = LoginStage::security;
    LoginIdentity _identity;
    LoginTargetInfo _target;
    std::unique_ptr<Negotiator> _negotiator;
    bool _auth_negotiated = false;
    std::string _auth_offer; // the AuthMethod value the initiator sent, to tolerate a repeat
    std::string _auth_answer;
    std::unique_ptr<Authenticator> _authenticator;
    AuthStatus _auth_status = AuthStatus::in_progress;
    SessionParams _session;
    ConnectionParams _connection;
    uint16_t _tsih = 0;
    uint32_t _exp_cmd_sn = 0;
    uint32_t _max_cmd_sn = 0;
};

struct InitiatorLoginConfig {
    std::string initiator_name; // InitiatorAlias, if any, is negotiation.alias
    // Required for a normal session; optional for discovery.
    std::string target_name;
    SessionType session_type = SessionType::normal;
    Isid isid{};
    uint16_t tsih = 0; // 0: new session; else add a connection to that session
    uint16_t cid = 0;
    uint32_t cmd_sn = 0;
    uint32_t itt = 0;
    uint32_t exp_stat_sn = 0; // for the first request; later ones acknowledge the responses
    NegotiationConfig negotiation;
    // AuthMethod values to offer, in order of preference. Only "None": the login starts in the
    // operational stage, as most initiators without CHAP do.
    std::vector<std::string> auth_methods{std::string(auth_method_none)};
    // Creates the authenticator for the method the target chose (for methods other than None).
    std::function<std::unique_ptr<Authenticator>(std::string_view method)> make_authenticator;
    // For a non-leading connection: the session's parameters.
    std::optional<SessionParams> session;
    // Further keys for the first request (vendor X- keys, keys this library does not negotiate). Their
    // answers are collected in InitiatorLogin::extra_answers(), not negotiated.
    KeyValueList extra_keys;
    TextLimits text_limits{};
    size_t max_responses = 64;
};

class InitiatorLogin {
public:
    explicit InitiatorLogin(InitiatorLoginConfig config);

    // The first Login Request; EINVAL if the configuration is unusable (bad names, config out of range).
    Result<LoginRequestPdu> start();
    // One Login Response. Returns the next request, or nothing when the login is over (see state()).
    std::optional<LoginRequestPdu> receive(const LoginResponse& response, std::span<const uint8_t> data);

    LoginState state() const { return _state; }
    // The target's status for failed/redirected logins, or initiator_error when this side found the
    // target's responses wrong (reason() says what).
    LoginStatus status() const { return _status; }
    const std::string& reason() const { return _reason; }
    // TargetAddress of a redirection.
    const std::string& redirect_address() const { return _redirect_address; }

    // Valid when complete.
    const SessionParams& session_params() const { return _session; }
    const ConnectionParams& connection_params() const { return _connection; }
    // The target's answers to InitiatorLoginConfig::extra_keys.
    const KeyValueList& extra_answers() const { return _extra_answers; }
    uint16_t tsih() const { return _tsih; }
    uint32_t stat_sn() const { return _stat_sn; } // of the final response: ExpStatSN is this + 1
    uint32_t exp_cmd_sn() const { return _exp_cmd_sn; }
    uint32_t max_cmd_sn() const { return _max_cmd_sn; }
    LoginStage stage() const { return _stage; }
    // The target agreed to an authentication method other than None and the exchange began: a
    // failure from then on happened during authentication (and not, say, at connect or for an ACL).
    bool authentication_started() const { return _authenticator != nullptr && _auth_agreed; }

private:
    std::optional<LoginRequestPdu> fail(LoginStatus status, std::string reason);
    LoginRequestPdu next_request();
    std::optional<LoginRequestPdu> process(const LoginResponse& response, std::vector<uint8_t> text);
    Result<void> security_keys(const KeyValueList& pairs, KeyValueList& out);
    bool ready_to_transit() const;

    InitiatorLoginConfig _config;
    LoginState _state = LoginState::in_progress;
    LoginStatus _status = LoginStatus::success;
    std::string _reason;
    std::string _redirect_address;
    size_t _responses = 0;
    bool _started = false;
    LoginStage _stage = LoginStage::security;
    std::unique_ptr<Negotiator> _negotiator;
    TextAssembler _incoming;
    std::vector<uint8_t> _outgoing;
    size_t _outgoing_offset = 0;
    bool _last_transit = false;
    LoginStage _last_nsg = LoginStage::security;
    bool _last_continue = false;
    bool _auth_offered = false;
    bool _auth_agreed = false;
    std::unique_ptr<Authenticator> _authenticator;
    AuthStatus _auth_status = AuthStatus::in_progress;
    uint32_t _exp_stat_sn = 0;
    KeyValueList _extra_answers;
    SessionParams _session;
    ConnectionParams _connection;
    uint16_t _tsih = 0;
    uint32_t _stat_sn = 0;
    uint32_t _exp_cmd_sn = 0;
    uint32_t _max_cmd_sn = 0;
};

} // namespace ispace::iscsi
