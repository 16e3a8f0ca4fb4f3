#include "iscsi/params.hpp"

#include <algorithm>
#include <cerrno>

namespace ispace::iscsi {

namespace {

constexpr uint64_t max_24bit = (uint64_t(1) << 24) - 1;

// RFC 7143 §13 in one table. Columns: key, name, type, use, sender, scope, any-stage,
// irrelevant-in-discovery, min, max.
constexpr KeyDef key_table[] = {
    {KeyId::header_digest, "HeaderDigest", KeyType::list, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
    {KeyId::data_digest, "DataDigest", KeyType::list, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
    {KeyId::max_connections, "MaxConnections", KeyType::number_min, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 1, 65535},
    {KeyId::send_targets, "SendTargets", KeyType::declarative, KeyUse::full_feature_only,
     KeySender::initiator, KeyScope::session, false, false, 0, 0},
    // TargetName: sent by the initiator during login; by the target only in SendTargets responses.
    {KeyId::target_name, "TargetName", KeyType::declarative, KeyUse::login_only, KeySender::both,
     KeyScope::session, true, false, 0, 0},
    {KeyId::initiator_name, "InitiatorName", KeyType::declarative, KeyUse::login_only, KeySender::initiator,
     KeyScope::session, true, false, 0, 0},
    {KeyId::target_alias, "TargetAlias", KeyType::declarative, KeyUse::all, KeySender::target,
     KeyScope::session, true, false, 0, 0},
    {KeyId::initiator_alias, "InitiatorAlias", KeyType::declarative, KeyUse::all, KeySender::initiator,
     KeyScope::session, true, false, 0, 0},
    {KeyId::target_address, "TargetAddress", KeyType::declarative, KeyUse::all, KeySender::target,
     KeyScope::session, true, false, 0, 0},
    {KeyId::target_portal_group_tag, "TargetPortalGroupTag", KeyType::declarative, KeyUse::login_only,
     KeySender::target, KeyScope::session, true, false, 0, 65535},
    {KeyId::initial_r2t, "InitialR2T", KeyType::boolean_or, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 0, 0},
    {KeyId::immediate_data, "ImmediateData", KeyType::boolean_and, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 0, 0},
    {KeyId::max_recv_data_segment_length, "MaxRecvDataSegmentLength", KeyType::declarative, KeyUse::all,
     KeySender::both, KeyScope::connection, false, false, 512, max_24bit},
    {KeyId::max_burst_length, "MaxBurstLength", KeyType::number_min, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 512, max_24bit},
    {KeyId::first_burst_length, "FirstBurstLength", KeyType::number_min, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, true, 512, max_24bit},
    {KeyId::default_time2wait, "DefaultTime2Wait", KeyType::number_max, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, false, 0, 3600},
    {KeyId::default_time2retain, "DefaultTime2Retain", KeyType::number_min, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, false, 0, 3600},
    {KeyId::max_outstanding_r2t, "MaxOutstandingR2T", KeyType::number_min, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, true, 1, 65535},
    {KeyId::data_pdu_in_order, "DataPDUInOrder", KeyType::boolean_or, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 0, 0},
    {KeyId::data_sequence_in_order, "DataSequenceInOrder", KeyType::boolean_or, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, true, 0, 0},
    {KeyId::error_recovery_level, "ErrorRecoveryLevel", KeyType::number_min, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, false, 0, 2},
    {KeyId::session_type, "SessionType", KeyType::declarative, KeyUse::leading_only, KeySender::initiator,
     KeyScope::session, true, false, 0, 0},
    {KeyId::task_reporting, "TaskReporting", KeyType::list, KeyUse::leading_only, KeySender::both,
     KeyScope::session, false, true, 0, 0},
    {KeyId::iscsi_protocol_level, "iSCSIProtocolLevel", KeyType::number_min, KeyUse::leading_only,
     KeySender::both, KeyScope::session, false, false, 0, 31},
    {KeyId::if_marker, "IFMarker", KeyType::obsolete, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
    {KeyId::of_marker, "OFMarker", KeyType::obsolete, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
    {KeyId::if_mark_int, "IFMarkInt", KeyType::obsolete, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
    {KeyId::of_mark_int, "OFMarkInt", KeyType::obsolete, KeyUse::login_only, KeySender::both,
     KeyScope::connection, false, false, 0, 0},
};
static_assert(std::size(key_table) == key_count, "one table row per KeyId");

constexpr bool table_in_order() {
    for (size_t i = 0; i < key_count; ++i) {
        if (size_t(key_table[i].id) != i) {
            return false;
        }
    }
    return true;
}
static_assert(table_in_order(), "key_table rows must be in KeyId order");

Error proto_error(std::string message) {
    return make_error(std::move(message), EPROTO);
}

bool is_negotiated(KeyType type) {
    return type == KeyType::list || type == KeyType::boolean_or || type == KeyType::boolean_and ||
           type == KeyType::number_min || type == KeyType::number_max;
}

std::string join(const std::vector<Digest>& digests) {
    std::string out;
    for (Digest d : digests) {
        if (!out.empty()) {
            out += ',';
        }
        out += to_string(d);
    }
    return out;
}

std::optional<Digest> parse_digest(std::string_view text) {
    if (text == "None") {
        return Digest::none;
    }
    if (text == "CRC32C") {
        return Digest::crc32c;
    }
    return std::nullopt;
}

std::optional<TaskReporting> parse_task_reporting(std::string_view text) {
    if (text == "RFC3720") {
        return TaskReporting::rfc3720;
    }
    if (text == "ResponseFence") {
        return TaskReporting::response_fence;
    }
    if (text == "FastAbort") {
        return TaskReporting::fast_abort;
    }
    return std::nullopt;
}

bool contains(const std::vector<Digest>& list, Digest d) {
    return std::find(list.begin(), list.end(), d) != list.end();
}

} // namespace

std::string_view to_string(SessionType type) {
    return type == SessionType::discovery ? "Discovery" : "Normal";
}
std::string_view to_string(Digest digest) {
    return digest == Digest::crc32c ? "CRC32C" : "None";
}
std::string_view to_string(TaskReporting reporting) {
    switch (reporting) {
    case TaskReporting::response_fence:
        return "ResponseFence";
    case TaskReporting::fast_abort:
        return "FastAbort";
    case TaskReporting::rfc3720:
        break;
    }
    return "RFC3720";
}
std::string_view to_string(Role role) {
    return role == Role::initiator ? "initiator" : "target";
}

const KeyDef* find_key(std::string_view name) {
    for (const auto& def : key_table) {
        if (def.name == name) {
            return &def;
        }
    }
    return nullptr;
}

const KeyDef& key_def(KeyId id) {
    return key_table[size_t(id)];
}

bool is_security_key(std::string_view name) {
    static constexpr std::string_view prefixes[] = {"CHAP_", "SRP_", "KRB_", "SPKM"};
    if (name == "AuthMethod") {
        return true;
    }
    for (auto p : prefixes) {
        if (name.substr(0, p.size()) == p) {
            return true;
        }
    }
    return false;
}

Result<void> validate(const NegotiationConfig& c) {
    auto bad = [](std::string what) { return make_error("negotiation config: " + what, EINVAL); };
    if (c.header_digests.empty() || c.data_digests.empty()) {
        return bad("digest lists must not be empty (list None to allow no digest)");
    }
    if (c.max_recv_data_segment_length < 512 || c.max_recv_data_segment_length > max_24bit) {
        return bad("MaxRecvDataSegmentLength must be 512..16777215");
    }
    if (c.max_burst_length < 512 || c.max_burst_length > max_24bit) {
        return bad("MaxBurstLength must be 512..16777215");
    }
    if (c.first_burst_length < 512 || c.first_burst_length > c.max_burst_length) {
        return bad("FirstBurstLength must be 512..MaxBurstLength");
    }
    if (c.max_connections < 1) {
        return bad("MaxConnections must be at least 1");
    }
    if (c.max_outstanding_r2t < 1) {
        return bad("MaxOutstandingR2T must be at least 1");
    }
    if (c.default_time2wait > 3600 || c.default_time2retain > 3600) {
        return bad("DefaultTime2Wait and DefaultTime2Retain must be 0..3600");
    }
    if (c.error_recovery_level > max_error_recovery_level) {
        return bad("ErrorRecoveryLevel must be 0.." + std::to_string(max_error_recovery_level) +
                   " (level 2 is not implemented)");
    }
    if (c.protocol_level > 31) {
        return bad("iSCSIProtocolLevel must be 0..31");
    }
    if (c.alias.size() > max_value_length || !is_valid_local_name(c.alias)) {
        return bad("alias must be at most 255 bytes of UTF-8 without control characters");
    }
    return {};
}

Negotiator::Negotiator(const NegotiationConfig& config, Context context)
    : _config(config), _context(std::move(context)) {
    if (_context.session) {
        _session = *_context.session;
    }
}

const std::string* Negotiator::declared(KeyId id) const {
    return _has_declared[size_t(id)] ? &_declared[size_t(id)] : nullptr;
}

bool Negotiator::allowed_sender(const KeyDef& def) const {
    switch (def.sender) {
    case KeySender::both:
        return true;
    case KeySender::initiator:
        return _context.role == Role::target;
    case KeySender::target:
        return _context.role == Role::initiator;
    }
    return false;
}

bool Negotiator::first_burst_irrelevant() const {
    return _session.initial_r2t && !_session.immediate_data;
}

bool Negotiator::relevant(const KeyDef& def) const {
    if (def.discovery_irrelevant && _session.session_type == SessionType::discovery) {
        return false;
    }
    if (def.use == KeyUse::leading_only && !_context.leading) {
        return false;
    }
    if (def.id == KeyId::first_burst_length && first_burst_irrelevant()) {
        return false;
    }
    return true;
}

Result<void> Negotiator::check_use(const KeyDef& def, LoginStage stage) const {
    if (stage == LoginStage::security && !def.any_stage) {
        // RFC 7143 §6.3: "It is considered to be a protocol error to send a key that is not allowed in
        // the current stage."
        return proto_error(std::string(def.name) + " is not allowed in the security negotiation stage");
    }
    if (_context.login && def.use == KeyUse::full_feature_only) {
        return proto_error(std::string(def.name) + " is only allowed in full feature phase");
    }
    if (!_context.login && def.use != KeyUse::all && def.use != KeyUse::full_feature_only) {
        return proto_error(std::string(def.name) + " may only be negotiated during login");
    }
    if (!allowed_sender(def)) {
        return proto_error(std::string(def.name) + " may only be sent by the " +
                           (def.sender == KeySender::target ? "target" : "initiator"));
    }
    return {};
}

std::string Negotiator::our_value(const KeyDef& def) const {
    const auto& c = _config;
    switch (def.id) {
    case KeyId::header_digest:
        return join(c.header_digests);
    case KeyId::data_digest:
        return join(c.data_digests);
    case KeyId::max_connections:
        return std::to_string(c.max_connections);
    case KeyId::initial_r2t:
        return std::string(format_bool(c.initial_r2t));
    case KeyId::immediate_data:
        return std::string(format_bool(c.immediate_data));
    case KeyId::max_recv_data_segment_length:
        return std::to_string(c.max_recv_data_segment_length);
    case KeyId::max_burst_length:
        return std::to_string(c.max_burst_length);
    case KeyId::first_burst_length:
        return std::to_string(c.first_burst_length);
    case KeyId::default_time2wait:
        return std::to_string(c.default_time2wait);
    case KeyId::default_time2retain:
        return std::to_string(c.default_time2retain);
    case KeyId::max_outstanding_r2t:
        return std::to_string(c.max_outstanding_r2t);
    case KeyId::data_pdu_in_order:
        return std::string(format_bool(c.data_pdu_in_order));
    case KeyId::data_sequence_in_order:
        return std::string(format_bool(c.data_sequence_in_order));
    case KeyId::error_recovery_level:
        return std::to_string(c.error_recovery_level);
    case KeyId::task_reporting:
        return "RFC3720";
    case KeyId::iscsi_protocol_level:
        return std::to_string(c.protocol_level);
    default:
        return {};
    }
}

// Whether the value a key would have if never negotiated (its current value: the RFC default, or the
// session's value on a non-leading connection) is one we accept. The target originates exactly the
// keys for which it is not; both roles check all keys this way in finish().
bool Negotiator::default_acceptable(const KeyDef& def) const {
    const auto& c = _config;
    const auto& s = _session;
    switch (def.id) {
    case KeyId::header_digest:
        return contains(c.header_digests, _connection.header_digest);
    case KeyId::data_digest:
        return contains(c.data_digests, _connection.data_digest);
    case KeyId::max_connections:
        return s.max_connections <= c.max_connections;
    case KeyId::initial_r2t:
        return s.initial_r2t || !c.initial_r2t; // OR: if we insist on Yes the result must be Yes
    case KeyId::immediate_data:
        return !s.immediate_data || c.immediate_data; // AND: if we refuse, the result must be No
    case KeyId::max_burst_length:
        return s.max_burst_length <= c.max_burst_length;
    case KeyId::first_burst_length:
        // finish() caps FirstBurstLength at MaxBurstLength, so the effective value is the smaller one.
        return std::min(s.first_burst_length, s.max_burst_length) <= c.first_burst_length;
    case KeyId::default_time2wait:
        return s.default_time2wait >= c.default_time2wait;
    case KeyId::default_time2retain:
        return s.default_time2retain <= c.default_time2retain;
    case KeyId::max_outstanding_r2t:
        return s.max_outstanding_r2t <= c.max_outstanding_r2t;
    case KeyId::data_pdu_in_order:
        return s.data_pdu_in_order || !c.data_pdu_in_order;
    case KeyId::data_sequence_in_order:
        return s.data_sequence_in_order || !c.data_sequence_in_order;
    case KeyId::error_recovery_level:
        return s.error_recovery_level <= c.error_recovery_level;
    case KeyId::task_reporting:
        return s.task_reporting == TaskReporting::rfc3720;
    case KeyId::iscsi_protocol_level:
        return s.protocol_level <= c.protocol_level;
    default:
        return true;
    }
}

// Stores an agreed value. The value has been checked by the caller (range, list membership).
void Negotiator::apply(const KeyDef& def, std::string_view value) {
    auto number = [&] { return parse_number(value).value(); };
    auto boolean = [&] { return value == value_yes; };
    auto& s = _session;
    switch (def.id) {
    case KeyId::header_digest:
        _connection.header_digest = parse_digest(value).value_or(Digest::none);
        break;
    case KeyId::data_digest:
        _connection.data_digest = parse_digest(value).value_or(Digest::none);
        break;
    case KeyId::max_connections:
        s.max_connections = uint16_t(number());
        break;
    case KeyId::initial_r2t:
        s.initial_r2t = boolean();
        break;
    case KeyId::immediate_data:
        s.immediate_data = boolean();
        break;
    case KeyId::max_burst_length:
        s.max_burst_length = uint32_t(number());
        break;
    case KeyId::first_burst_length:
        s.first_burst_length = uint32_t(number());
        break;
    case KeyId::default_time2wait:
        s.default_time2wait = uint16_t(number());
        break;
    case KeyId::default_time2retain:
        s.default_time2retain = uint16_t(number());
        break;
    case KeyId::max_outstanding_r2t:
        s.max_outstanding_r2t = uint16_t(number());
        break;
    case KeyId::data_pdu_in_order:
        s.data_pdu_in_order = boolean();
        break;
    case KeyId::data_sequence_in_order:
        s.data_sequence_in_order = boolean();
        break;
    case KeyId::error_recovery_level:
        s.error_recovery_level = uint8_t(number());
        break;
    case KeyId::task_reporting:
        s.task_reporting = parse_task_reporting(value).value_or(TaskReporting::rfc3720);
        break;
    case KeyId::iscsi_protocol_level:
        s.protocol_level = uint8_t(number());
        break;
    default:
        break;
    }
}

// The responder's side of RFC 7143 §6.2: computes the answer to the peer's offer and records the
// result. Inadmissible values are answered "Reject" and leave the key at its current value.
std::string Negotiator::respond(const KeyDef& def, const std::string& value) {
    if (!relevant(def)) {
        return std::string(value_irrelevant);
    }
    auto reject = [&] {
        _rejected.push_back(def.id);
        return std::string(value_reject);
    };
    switch (def.type) {
    case KeyType::list: {
        auto items = parse_list(value);
        if (!items) {
            return reject();
        }
        for (auto item : *items) {
            bool supported = false;
            if (def.id == KeyId::task_reporting) {
                supported = item == "RFC3720";
            } else if (auto d = parse_digest(item)) {
                supported = contains(
                    def.id == KeyId::header_digest ? _config.header_digests : _config.data_digests, *d);
            }
            if (supported) {
                apply(def, item);
                return std::string(item);
            }
        }
        // RFC 7143 §6.2.1: no common value -> "Reject" (the key keeps its default).
        return reject();
    }
    case KeyType::boolean_or:
    case KeyType::boolean_and: {
        auto offered = parse_bool(value);
        if (!offered) {
            return reject();
        }
        bool mine = our_value(def) == value_yes;
        bool result = def.type == KeyType::boolean_or ? (*offered || mine) : (*offered && mine);
        std::string answer(format_bool(result));
        apply(def, answer);
        return answer;
    }
    case KeyType::number_min:
    case KeyType::number_max: {
        auto offered = parse_number(value);
        if (!offered || *offered < def.min || *offered > def.max) {
            return reject();
        }
        uint64_t mine = parse_number(our_value(def)).value();
        uint64_t result =
            def.type == KeyType::number_min ? std::min(*offered, mine) : std::max(*offered, mine);
        if (def.id == KeyId::first_burst_length) {
            // RFC 7143 §13.14: "FirstBurstLength MUST NOT exceed MaxBurstLength". receive() settles
            // MaxBurstLength before FirstBurstLength, so the answer can obey it even when the offers
            // beside each other did not.
            result = std::min<uint64_t>(result, _session.max_burst_length);
        }
        std::string answer = std::to_string(result);
        apply(def, answer);
        return answer;
    }
    default:
        return reject();
    }
}

// The originator's side: the peer answered a key we offered.
Result<void> Negotiator::handle_answer(const KeyDef& def, const std::string& value) {
    Slot& slot = _slots[size_t(def.id)];
    if (value == value_not_understood || value == value_irrelevant) {
        // Not a failure (RFC 7143 §6.2): the key keeps its current value; finish() checks we accept it.
        return {};
    }
    if (value == value_reject) {
        _rejected.push_back(def.id);
        return {};
    }
    auto bad = [&](std::string why) {
        return proto_error("answer " + std::string(def.name) + "=" + value.substr(0, 64) + " to our offer " +
                           slot.value + ": " + why);
    };
    switch (def.type) {
    case KeyType::list: {
        auto offered = parse_list(slot.value);
        bool found =
            offered && std::find(offered->begin(), offered->end(), std::string_view(value)) != offered->end();
        if (!found) {
            // RFC 7143 §6.2.1: "The selection of a value not proposed MUST be handled by the originator
            // as a protocol error."
            return bad("not one of the offered values");
        }
        apply(def, value);
        return {};
    }
    case KeyType::boolean_or:
    case KeyType::boolean_and: {
        auto result = parse_bool(value);
        if (!result) {
            return bad("not Yes or No");
        }
        bool ours = slot.value == value_yes;
        if (def.type == KeyType::boolean_or && ours && !*result) {
            return bad("Yes OR anything is Yes");
        }
        if (def.type == KeyType::boolean_and && !ours && *result) {
            return bad("No AND anything is No");
        }
        apply(def, value);
        return {};
    }
    case KeyType::number_min:
    case KeyType::number_max: {
        auto result = parse_number(value);
        if (!result || *result < def.min || *result > def.max) {
            return bad("not a number in " + std::to_string(def.min) + ".." + std::to_string(def.max));
        }
        uint64_t ours = parse_number(slot.value).value();
        if (def.type == KeyType::number_min && *result > ours) {
            return bad("the result function is the minimum");
        }
        if (def.type == KeyType::number_max && *result < ours) {
            return bad("the result function is the maximum");
        }
        apply(def, value);
        return {};
    }
    default:
        return bad("not a negotiated key");
    }
}

Result<void> Negotiator::handle_declaration(const KeyDef& def, const std::string& value) {
    size_t index = size_t(def.id);
    switch (def.id) {
    case KeyId::max_recv_data_segment_length: {
        auto n = parse_number(value);
        if (!n || *n < def.min || *n > def.max) {
            return proto_error("MaxRecvDataSegmentLength=" + value.substr(0, 32) +
                               " is not in 512..16777215");
        }
        _connection.max_send_data_segment_length = uint32_t(*n);
        break;
    }
    case KeyId::initiator_name:
    case KeyId::target_name:
        if (!is_valid_iscsi_name(value)) {
            return proto_error(std::string(def.name) + " '" + value.substr(0, 64) +
                               "' is not a valid iSCSI name");
        }
        (def.id == KeyId::initiator_name ? _session.initiator_name : _session.target_name) = value;
        break;
    case KeyId::initiator_alias:
    case KeyId::target_alias:
        // Aliases are informational only: one we cannot show is dropped rather than failing the login.
        if (!is_valid_local_name(value)) {
            return {};
        }
        (def.id == KeyId::initiator_alias ? _session.initiator_alias : _session.target_alias) = value;
        break;
    case KeyId::target_portal_group_tag: {
        auto n = parse_number(value);
        if (!n || *n > 65535) {
            return proto_error("TargetPortalGroupTag=" + value.substr(0, 32) + " is not a 16-bit number");
        }
        _session.target_portal_group_tag = uint16_t(*n);
        break;
    }
    case KeyId::session_type:
        // An unknown session type is the login machine's to answer (02/09), so it is only recorded.
        if (value == "Discovery") {
            _session.session_type = SessionType::discovery;
        } else if (value == "Normal") {
            _session.session_type = SessionType::normal;
        }
        break;
    case KeyId::target_address:
        if (!is_valid_local_name(value)) {
            return proto_error("TargetAddress '" + value.substr(0, 64) + "' is malformed");
        }
        break;
    default:
        break;
    }
    _declared[index] = value;
    _has_declared[index] = true;
    return {};
}

Result<void> Negotiator::receive_one(const KeyDef& def, const std::string& value, LoginStage stage,
                                     KeyValueList& out) {
    Slot& slot = _slots[size_t(def.id)];
    bool reserved = is_reserved_answer(value);

    if (def.type == KeyType::obsolete) {
        if (auto r = check_use(def, stage); !r) {
            return r;
        }
        if (reserved) {
            return proto_error(std::string(def.name) + "=" + value + " answers nothing we offered");
        }
        // RFC 7143 §13.25 (obsoleted keys): IFMarker/OFMarker SHOULD be answered "Reject" and MAY be
        // answered "No"; IFMarkInt/OFMarkInt MUST be answered "Reject". We answer the markers "No":
        // RFC 3720 initiators (which still send them) then see the value they expect.
        if (slot.state == State::answered) {
            if (value != slot.received) {
                return proto_error(std::string(def.name) + " negotiated twice");
            }
        }
        slot.state = State::answered;
        slot.received = value;
        slot.value = (def.id == KeyId::if_marker || def.id == KeyId::of_marker) ? std::string(value_no)
                                                                                : std::string(value_reject);
        out.push_back({std::string(def.name), slot.value});
        return {};
    }

    if (def.type == KeyType::declarative) {
        if (reserved) {
            // The peer refusing a declaration of ours (e.g. MaxRecvDataSegmentLength=Reject): the
            // declaration is void, so the peer will keep to the default.
            if (slot.sent_by_us) {
                if (def.id == KeyId::max_recv_data_segment_length) {
                    _connection.max_recv_data_segment_length = login_max_recv_data_segment_length;
                }
                _rejected.push_back(def.id);
                return {};
            }
            return proto_error(std::string(def.name) + "=" + value + " answers nothing we declared");
        }
        if (auto r = check_use(def, stage); !r) {
            return r;
        }
        if (def.use == KeyUse::leading_only && !_context.leading) {
            return {}; // SessionType on a non-leading connection: the session already has one
        }
        if (slot.state == State::peer_declared) {
            // RFC 7143 §6.3: redeclaration is forbidden "except ... keys that explicitly allow repeated
            // key declarations (e.g., TargetAddress)". An identical repeat (libiscsi sends its names
            // again in the operational stage) is harmless and tolerated.
            if (value == slot.received || def.id == KeyId::target_address) {
                return handle_declaration(def, value);
            }
            return proto_error(std::string(def.name) + " declared twice with different values");
        }
        slot.state = State::peer_declared;
        slot.received = value;
        return handle_declaration(def, value);
    }

    // Negotiated keys.
    if (slot.state == State::offered) {
        slot.state = State::agreed;
        slot.received = value;
        return handle_answer(def, value);
    }
    if (slot.state == State::agreed) {
        // The peer already answered our offer; an identical repeat (an initiator resending its whole
        // key list) changes nothing.
        if (value == slot.received) {
            return {};
        }
        return proto_error(std::string(def.name) + " negotiated twice");
    }
    if (slot.state == State::answered) {
        if (value == slot.received) {
            out.push_back({std::string(def.name), slot.value});
            return {};
        }
        return proto_error(std::string(def.name) + " negotiated twice");
    }
    if (reserved) {
        // RFC 7143 §6.2: the reserved constants used as proposed values are a protocol error.
        return proto_error(std::string(def.name) + "=" + value + " answers nothing we offered");
    }
    if (auto r = check_use(def, stage); !r) {
        return r;
    }
    slot.state = State::answered;
    slot.received = value;
    slot.value = respond(def, value);
    out.push_back({std::string(def.name), slot.value});
    return {};
}

Result<void> Negotiator::receive(const KeyValueList& pairs, LoginStage stage, KeyValueList& out) {
    if (auto dup = find_duplicate_key(pairs)) {
        return proto_error("key " + std::string(*dup) + " appears twice in one text sequence");
    }
    // Answers are collected per position so they go out in the order the keys came in, while the keys
    // are processed in dependency order: SessionType first (it decides what is Irrelevant), then the
    // rest, then FirstBurstLength (Irrelevant when InitialR2T=Yes and ImmediateData=No, which may be
    // negotiated later in the same sequence).
    std::vector<KeyValueList> answers(pairs.size());
    auto pass_of = [](const KeyDef* def) {
        if (def != nullptr && def->id == KeyId::session_type) {
            return 0;
        }
        if (def != nullptr && def->id == KeyId::first_burst_length) {
            return 2;
        }
        return 1;
    };
    for (int pass = 0; pass < 3; ++pass) {
        for (size_t i = 0; i < pairs.size(); ++i) {
            const auto& kv = pairs[i];
            const KeyDef* def = find_key(kv.key);
            if (pass_of(def) != pass) {
                continue;
            }
            if (def == nullptr) {
                if (is_security_key(kv.key)) {
                    return proto_error(kv.key + " is only allowed in the security negotiation stage");
                }
                if (is_reserved_answer(kv.value)) {
                    return proto_error(kv.key + "=" + kv.value + " answers nothing we offered");
                }
                // RFC 7143 §6.2: "the answer for a key not understood MUST be key=NotUnderstood"; X- and
                // X# extension keys are among them, as we implement none.
                answers[i].push_back({kv.key, std::string(value_not_understood)});
                continue;
            }
            if (auto r = receive_one(*def, kv.value, stage, answers[i]); !r) {
                return r;
            }
        }
    }
    for (auto& a : answers) {
        for (auto& kv : a) {
            out.push_back(std::move(kv));
        }
    }
    return {};
}

void Negotiator::offer(LoginStage stage, KeyValueList& out, bool declarations) {
    for (const auto& def : key_table) {
        Slot& slot = _slots[size_t(def.id)];
        if (stage == LoginStage::security && !def.any_stage) {
            continue;
        }
        if (def.type == KeyType::declarative) {
            if (!declarations || slot.sent_by_us) {
                continue;
            }
            bool ours = false;
            std::string value;
            if (def.id == KeyId::max_recv_data_segment_length && _context.login) {
                ours = true;
                value = our_value(def);
            } else if ((def.id == KeyId::target_alias && _context.role == Role::target) ||
                       (def.id == KeyId::initiator_alias && _context.role == Role::initiator)) {
                ours = !_config.alias.empty() && _context.login;
                value = _config.alias;
            }
            if (!ours) {
                continue;
            }
            slot.sent_by_us = true;
            slot.value = value;
            if (def.id == KeyId::max_recv_data_segment_length) {
                _connection.max_recv_data_segment_length = _config.max_recv_data_segment_length;
            }
            out.push_back({std::string(def.name), value});
            continue;
        }
        if (!is_negotiated(def.type) || stage != LoginStage::operational || slot.state != State::idle ||
            !relevant(def)) {
            continue;
        }
        bool want = false;
        if (_context.role == Role::initiator) {
            // Offer everything we have a preference for, except keys whose only value we support is
            // the default anyway and that older targets may not know.
            want = def.id != KeyId::task_reporting &&
                   !(def.id == KeyId::iscsi_protocol_level && _config.protocol_level <= 1);
            // With InitialR2T=Yes and ImmediateData=No on our side, FirstBurstLength is Irrelevant.
            if (def.id == KeyId::first_burst_length && _config.initial_r2t && !_config.immediate_data) {
                want = false;
            }
        } else {
            want = !default_acceptable(def);
        }
        if (!want) {
            continue;
        }
        slot.state = State::offered;
        slot.sent_by_us = true;
        slot.value = our_value(def);
        out.push_back({std::string(def.name), slot.value});
    }
}

bool Negotiator::awaiting_answers() const {
    return std::any_of(_slots.begin(), _slots.end(), [](const Slot& s) { return s.state == State::offered; });
}

bool Negotiator::needs_offers() const {
    for (const auto& def : key_table) {
        if (is_negotiated(def.type) && _slots[size_t(def.id)].state == State::idle && relevant(def) &&
            !default_acceptable(def)) {
            return true;
        }
    }
    return false;
}

Result<void> Negotiator::finish() {
    // RFC 7143 §13.14: "FirstBurstLength MUST NOT exceed MaxBurstLength". Each side's offer obeys it, so
    // the minimums do too, but MaxBurstLength may have been negotiated below a default FirstBurstLength.
    if (_session.first_burst_length > _session.max_burst_length) {
        _session.first_burst_length = _session.max_burst_length;
    }
    // Whatever each key ended as (negotiated, rejected, not understood or never sent), it must be a
    // value our configuration accepts; otherwise the session would run with parameters we cannot honour.
    for (const auto& def : key_table) {
        if (!is_negotiated(def.type) || !relevant(def)) {
            continue;
        }
        if (!default_acceptable(def)) {
            return make_error(std::string(def.name) + " ended as a value this " +
                                  std::string(to_string(_context.role)) + " does not accept (offer " +
                                  our_value(def) + ")",
                              ENOTSUP);
        }
    }
    return {};
}

void Negotiator::reset_exchange() {
    for (auto& slot : _slots) {
        slot = Slot{};
    }
}

} // namespace ispace::iscsi
