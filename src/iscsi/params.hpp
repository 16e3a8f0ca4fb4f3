// Operational parameter negotiation (RFC 7143 §6.2, §13) for both roles, table-driven.
//
// One `Negotiator` lives for one login (or one Text negotiation in full feature phase) of one
// connection. It is fed every complete logical text data segment (LTDS) received from the peer and
//  - answers the peer's offers (as responder) with the key's result function,
//  - checks the peer's answers to our own offers (as originator),
//  - records declarations (MaxRecvDataSegmentLength, names, aliases, ...),
// and produces, when the login is over, the plain `SessionParams` and `ConnectionParams`.
//
// The table in params.cpp holds, per key, its type and result function, legal range, default, scope,
// the stages and phases it may be used in, who may send it and when it is Irrelevant. Security keys
// (AuthMethod and the authentication method's own keys, see auth.hpp) are not handled here: the login
// machine routes them to the authenticator.
//
// Error policy: an offered value the RFC's grammar or range does not admit gets the answer "Reject" and
// the key keeps its default; unknown and X-/X# keys get "NotUnderstood". Violations of the protocol
// itself (a key in the wrong stage or phase, from the wrong side, negotiated twice with a different
// value, a reserved constant used as an offer, an answer that was not offered, an out-of-range
// declaration such as MaxRecvDataSegmentLength=100 or an invalid iSCSI name) fail with EPROTO, which
// login answers with 02/00 (initiator error) and a Text exchange with a Reject PDU.
#pragma once

#include "common/result.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/text.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {

enum class Role : uint8_t { initiator, target };
enum class SessionType : uint8_t { normal, discovery };
enum class Digest : uint8_t { none, crc32c };
// RFC 7143 §13.23. We implement RFC3720 semantics only; the others are understood, not offered.
enum class TaskReporting : uint8_t { rfc3720, response_fence, fast_abort };

std::string_view to_string(SessionType type);
std::string_view to_string(Digest digest);
std::string_view to_string(TaskReporting reporting);
std::string_view to_string(Role role);

// Every key the engine knows. Order is the table order in params.cpp.
enum class KeyId : uint8_t {
    header_digest,
    data_digest,
    max_connections,
    send_targets,
    target_name,
    initiator_name,
    target_alias,
    initiator_alias,
    target_address,
    target_portal_group_tag,
    initial_r2t,
    immediate_data,
    max_recv_data_segment_length,
    max_burst_length,
    first_burst_length,
    default_time2wait,
    default_time2retain,
    max_outstanding_r2t,
    data_pdu_in_order,
    data_sequence_in_order,
    error_recovery_level,
    session_type,
    task_reporting,
    iscsi_protocol_level,
    // Obsoleted by RFC 7143 §13.25 but still sent by RFC 3720 initiators.
    if_marker,
    of_marker,
    if_mark_int,
    of_mark_int,
    count,
};
inline constexpr size_t key_count = size_t(KeyId::count);

// How a key is negotiated and what its result function is (RFC 7143 §6.2).
enum class KeyType : uint8_t {
    list,        // list-of-values: the responder picks the first offered value it supports
    boolean_or,  // result is offer OR responder's choice
    boolean_and, // result is offer AND responder's choice
    number_min,  // result is the minimum of offer and responder's choice
    number_max,  // result is the maximum
    declarative, // a declaration; no answer expected
    obsolete,    // IFMarker/OFMarker/IFMarkInt/OFMarkInt: see params.cpp
};
// "Use" in RFC 7143 §13.
enum class KeyUse : uint8_t {
    login_only,        // IO: during login only
    leading_only,      // LO: during the login of the leading connection only
    all,               // login and full feature phase
    full_feature_only, // FFPO
};
enum class KeySender : uint8_t { initiator, target, both };
enum class KeyScope : uint8_t { session, connection };

struct KeyDef {
    KeyId id;
    std::string_view name;
    KeyType type;
    KeyUse use;
    KeySender sender;
    KeyScope scope;
    bool any_stage;            // may be sent in the security stage too (else operational only)
    bool discovery_irrelevant; // "Irrelevant when: SessionType=Discovery"
    uint64_t min;              // legal range of numeric values
    uint64_t max;
};

const KeyDef* find_key(std::string_view name);
const KeyDef& key_def(KeyId id);
// AuthMethod and the keys of authentication methods (CHAP_*, SRP_*, KRB_*, SPKM*): security stage only.
bool is_security_key(std::string_view name);

// Negotiated session-wide parameters plus the session's identity keys.
struct SessionParams {
    SessionType session_type = SessionType::normal;
    std::string initiator_name;
    std::string initiator_alias;
    std::string target_name;
    std::string target_alias;
    uint16_t target_portal_group_tag = 0;
    uint16_t max_connections = 1;
    bool initial_r2t = true;
    bool immediate_data = true;
    uint32_t max_burst_length = 262144;
    // Never above max_burst_length (RFC 7143 §13.14); see Negotiator::finish.
    uint32_t first_burst_length = 65536;
    uint16_t default_time2wait = 2;
    uint16_t default_time2retain = 20;
    uint16_t max_outstanding_r2t = 1;
    bool data_pdu_in_order = true;
    bool data_sequence_in_order = true;
    uint8_t error_recovery_level = 0;
    TaskReporting task_reporting = TaskReporting::rfc3720;
    // RFC 7143 §13.24: 1 is RFC 7143 itself, 2 adds RFC 7144's features.
    uint8_t protocol_level = 1;
};

// Negotiated per-connection parameters.
struct ConnectionParams {
    Digest header_digest = Digest::none;
    Digest data_digest = Digest::none;
    // What we declared: the peer sends us data segments of at most this.
    uint32_t max_recv_data_segment_length = login_max_recv_data_segment_length;
    // What the peer declared (8192 if it never did, RFC 7143 §13.12): we send at most this.
    uint32_t max_send_data_segment_length = login_max_recv_data_segment_length;
};

// What one side wants and accepts. As responder, these are the limits of what we agree to; as
// originator, what we offer. The defaults are the RFC's, except MaxRecvDataSegmentLength.
struct NegotiationConfig {
    // Acceptable digests in order of preference ("None" must be listed to be acceptable).
    std::vector<Digest> header_digests{Digest::none};
    std::vector<Digest> data_digests{Digest::none};
    // Declared to the peer. 256 KiB keeps the PDU count of large transfers low; the RFC default is 8192.
    uint32_t max_recv_data_segment_length = 262144;
    uint32_t max_burst_length = 262144;
    uint32_t first_burst_length = 65536;
    bool initial_r2t = true;    // our choice for the OR: true insists on R2T before any unsolicited data
    bool immediate_data = true; // our choice for the AND: false refuses immediate data
    uint16_t max_connections = 1;
    uint16_t max_outstanding_r2t = 1;
    bool data_pdu_in_order = true; // OR: true insists on in-order Data PDUs
    bool data_sequence_in_order = true;
    uint16_t default_time2wait = 2;
    uint16_t default_time2retain = 20;
    // The highest ErrorRecoveryLevel we accept (target) or ask for (initiator); the session gets the
    // lower of the two sides' (RFC 7143 §13.20). At most max_error_recovery_level.
    uint8_t error_recovery_level = 0;
    uint8_t protocol_level = 1;
    // Declared by the target (TargetAlias) or the initiator (InitiatorAlias) if not empty.
    std::string alias;
};

// The highest ErrorRecoveryLevel ispace implements on either side: 2 (level 1's within-connection
// recovery, RFC 7143 §7.1-§7.2, and connection recovery with TASK REASSIGN, §7.3, §11.5).
inline constexpr uint8_t max_error_recovery_level = 2;

// Checks a configuration against the RFC's ranges (first burst <= max burst, digests non-empty, ...).
Result<void> validate(const NegotiationConfig& config);

class Negotiator {
public:
    struct Context {
        Role role = Role::target;
        // Leading connection of a session (TSIH 0 on the first Login Request). Leading-only keys on
        // other connections are answered "Irrelevant".
        bool leading = true;
        // false: a Text negotiation in full feature phase (only keys with Use ALL are allowed there).
        bool login = true;
        // For a non-leading connection or a Text negotiation: the session's parameters so far.
        std::optional<SessionParams> session;
    };

    Negotiator(const NegotiationConfig& config, Context context);

    // Processes one complete LTDS received from the peer in `stage` (full_feature for Text
    // negotiations). Answers to the peer's offers are appended to `out`, in the order received.
    // Errors (EPROTO) are protocol violations; the login must fail with 02/00.
    Result<void> receive(const KeyValueList& pairs, LoginStage stage, KeyValueList& out);

    // Appends the offers and declarations we originate in `stage` and have not sent yet.
    //  - initiator: every relevant negotiated key from the config, and MaxRecvDataSegmentLength and
    //    InitiatorAlias as declarations (names and SessionType are the login machine's business);
    //  - target: only the negotiated keys whose default result would not be acceptable to us (so a
    //    typical login needs no extra round trip), plus MaxRecvDataSegmentLength and TargetAlias.
    // `declarations` false leaves out declarations (used when only keys needing an answer matter).
    void offer(LoginStage stage, KeyValueList& out, bool declarations = true);
    // Keys we originated (offered) that have not been answered yet.
    bool awaiting_answers() const;
    // The target's check before agreeing to leave the operational stage (or to skip it): relevant
    // negotiated keys whose current value we do not accept and that nobody has negotiated yet.
    bool needs_offers() const;

    // Session type in effect: declared by the initiator in its first PDU (the target learns it in
    // receive()), or set by the initiator on its own negotiator before offering; normal otherwise.
    SessionType session_type() const { return _session.session_type; }
    void set_session_type(SessionType type) { _session.session_type = type; }
    // A declared value of a declarative key (names, aliases, TargetAddress, SendTargets) or nothing.
    const std::string* declared(KeyId id) const;
    // Keys whose negotiation ended in "Reject" (either way) and so keep their defaults.
    const std::vector<KeyId>& rejected() const { return _rejected; }

    // Ends the negotiation: applies the RFC's cross-key rules (FirstBurstLength <= MaxBurstLength),
    // and for the originator checks that keys the peer rejected leave defaults we accept.
    Result<void> finish();
    const SessionParams& session_params() const { return _session; }
    const ConnectionParams& connection_params() const { return _connection; }

    // Text negotiations in full feature phase: forget what was negotiated in the previous exchange so
    // the same keys may be negotiated again (RFC 7143 §6.2 forbids repeats only within a negotiation).
    void reset_exchange();

private:
    enum class State : uint8_t {
        idle,          // not seen in this negotiation
        offered,       // we offered, awaiting the answer
        answered,      // we answered the peer's offer
        agreed,        // the peer answered our offer
        peer_declared, // the peer declared it (our own declarations are marked by sent_by_us)
    };
    struct Slot {
        State state = State::idle;
        bool sent_by_us = false; // we offered/declared it (the peer may not offer it afterwards)
        std::string value;       // what we sent (offer/answer/declaration)
        std::string received;    // what the peer sent, to tolerate an identical repeat
    };

    Result<void> receive_one(const KeyDef& def, const std::string& value, LoginStage stage,
                             KeyValueList& out);
    Result<void> check_use(const KeyDef& def, LoginStage stage) const;
    Result<void> handle_answer(const KeyDef& def, const std::string& value);
    std::string respond(const KeyDef& def, const std::string& value);
    Result<void> handle_declaration(const KeyDef& def, const std::string& value);
    bool relevant(const KeyDef& def) const;
    bool first_burst_irrelevant() const;
    std::string our_value(const KeyDef& def) const;
    bool default_acceptable(const KeyDef& def) const;
    void apply(const KeyDef& def, std::string_view value);
    bool allowed_sender(const KeyDef& def) const;

    NegotiationConfig _config;
    Context _context;
    SessionParams _session;
    ConnectionParams _connection;
    std::array<Slot, key_count> _slots{};
    std::array<std::string, key_count> _declared{};
    std::array<bool, key_count> _has_declared{};
    std::vector<KeyId> _rejected;
};

} // namespace ispace::iscsi
