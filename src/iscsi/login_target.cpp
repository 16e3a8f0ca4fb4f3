// The target's login state machine (see login.hpp).
#include "iscsi/login.hpp"

#include <algorithm>
#include <cstdio>

namespace ispace::iscsi {

namespace {

bool accepts_none(const std::vector<std::string>& methods) {
    return std::find(methods.begin(), methods.end(), auth_method_none) != methods.end();
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) {
            out += ',';
        }
        out += item;
    }
    return out;
}

std::string short_value(const std::string& value) {
    std::string out;
    for (size_t i = 0; i < value.size() && i < 64; ++i) {
        char c = value[i];
        out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    return value.size() > 64 ? out + "..." : out;
}

constexpr bool is_login_stage(LoginStage stage) {
    return stage == LoginStage::security || stage == LoginStage::operational;
}

} // namespace

std::string describe(LoginStatus status) {
    const char* name = "unknown status";
    switch (status) {
    case LoginStatus::success:
        name = "Success";
        break;
    case LoginStatus::target_moved_temporarily:
        name = "Target moved temporarily";
        break;
    case LoginStatus::target_moved_permanently:
        name = "Target moved permanently";
        break;
    case LoginStatus::initiator_error:
        name = "Initiator error";
        break;
    case LoginStatus::authentication_failure:
        name = "Authentication failure";
        break;
    case LoginStatus::authorization_failure:
        name = "Authorization failure";
        break;
    case LoginStatus::target_not_found:
        name = "Not found";
        break;
    case LoginStatus::target_removed:
        name = "Target removed";
        break;
    case LoginStatus::unsupported_version:
        name = "Unsupported version";
        break;
    case LoginStatus::too_many_connections:
        name = "Too many connections";
        break;
    case LoginStatus::missing_parameter:
        name = "Missing parameter";
        break;
    case LoginStatus::cannot_include_in_session:
        name = "Can't include in session";
        break;
    case LoginStatus::session_type_not_supported:
        name = "Session type not supported";
        break;
    case LoginStatus::session_does_not_exist:
        name = "Session does not exist";
        break;
    case LoginStatus::invalid_during_login:
        name = "Invalid during login";
        break;
    case LoginStatus::target_error:
        name = "Target error";
        break;
    case LoginStatus::service_unavailable:
        name = "Service unavailable";
        break;
    case LoginStatus::out_of_resources:
        name = "Out of resources";
        break;
    }
    char code[16];
    std::snprintf(code, sizeof(code), " (%02x/%02x)", unsigned(uint16_t(status) >> 8),
                  unsigned(uint16_t(status) & 0xff));
    return name + std::string(code);
}

TargetLogin::TargetLogin(LoginPolicy& policy, TargetLoginSettings settings)
    : _policy(policy), _settings(settings), _stat_sn(settings.initial_stat_sn),
      _incoming(settings.text_limits.max_bytes) {
    if (_settings.cmd_window == 0) {
        _settings.cmd_window = 1;
    }
}

LoginResponse TargetLogin::header_for(const LoginRequest& request) {
    LoginResponse r;
    r.csg = is_login_stage(request.csg) ? request.csg : LoginStage::security;
    r.version_max = iscsi_version;
    r.version_active = iscsi_version;
    r.isid = request.isid;
    // RFC 7143 §11.13.4: the TSIH is the initiator's, except in the final response of a new session.
    r.tsih = request.tsih;
    r.itt = request.itt;
    r.stat_sn = _stat_sn++;
    // Login Requests are immediate: they do not advance CmdSN.
    r.exp_cmd_sn = request.cmd_sn;
    r.max_cmd_sn = request.cmd_sn + _settings.cmd_window - 1;
    return r;
}

LoginResponsePdu TargetLogin::fail(LoginStatus status, std::string reason) {
    LoginResponsePdu out;
    out.header = header_for(_last);
    // RFC 7143 §6.3.1: for a Login reject "the T bit and the CSG and NSG fields are reserved".
    out.header.transit = false;
    out.header.continue_bit = false;
    out.header.csg = LoginStage::security;
    out.header.nsg = LoginStage::security;
    out.header.set_status(status);
    _state =
        status_class(status) == LoginStatusClass::redirection ? LoginState::redirected : LoginState::failed;
    _status = status;
    _reason = std::move(reason);
    _incoming.clear();
    _outgoing.clear();
    _outgoing_offset = 0;
    return out;
}

LoginResponsePdu TargetLogin::receive(const LoginRequest& request, std::span<const uint8_t> data) {
    _last = request;
    if (_state != LoginState::in_progress) {
        return fail(LoginStatus::initiator_error, "Login Request after the login ended");
    }
    if (++_requests > _settings.max_requests) {
        return fail(LoginStatus::initiator_error,
                    "more than " + std::to_string(_settings.max_requests) + " Login Requests in one login");
    }
    // The decoder already refuses most of these; the machine does not depend on it.
    if (!is_login_stage(request.csg)) {
        return fail(LoginStatus::initiator_error,
                    "CSG " + std::to_string(unsigned(request.csg)) + " is not a login stage");
    }
    if (request.transit && request.continue_bit) {
        return fail(LoginStatus::initiator_error, "Login Request with both T and C set");
    }
    if (request.transit && (uint8_t(request.nsg) <= uint8_t(request.csg) || uint8_t(request.nsg) == 2)) {
        // RFC 7143 §6.3 stage table: only security -> operational/full feature and operational -> full
        // feature are transitions.
        return fail(LoginStatus::initiator_error, "illegal stage transition " +
                                                      std::to_string(unsigned(request.csg)) + " -> " +
                                                      std::to_string(unsigned(request.nsg)));
    }
    if (data.size() > login_max_recv_data_segment_length) {
        return fail(LoginStatus::initiator_error, "Login Request data segment of " +
                                                      std::to_string(data.size()) +
                                                      " bytes exceeds 8192 bytes");
    }
    if (!_first_pdu_seen) {
        // RFC 7143 §11.12.4: the target answers 02/05 unless Version-min <= its version <= Version-max.
        if (request.version_min > iscsi_version || request.version_max < iscsi_version) {
            return fail(LoginStatus::unsupported_version,
                        "initiator supports versions " + std::to_string(request.version_min) + ".." +
                            std::to_string(request.version_max) + ", target only " +
                            std::to_string(iscsi_version));
        }
        _first_pdu_seen = true;
        _first = request;
        _stage = request.csg;
    } else {
        if (request.isid != _first.isid || request.tsih != _first.tsih || request.cid != _first.cid ||
            request.cmd_sn != _first.cmd_sn || request.version_max != _first.version_max ||
            request.version_min != _first.version_min) {
            return fail(LoginStatus::initiator_error,
                        "ISID, TSIH, CID, CmdSN or version changed during login");
        }
        if (request.csg != _stage) {
            return fail(LoginStatus::initiator_error,
                        "Login Request for stage " + std::to_string(unsigned(request.csg)) +
                            " while the login is in stage " + std::to_string(unsigned(_stage)));
        }
    }
    if (_outgoing_offset < _outgoing.size()) {
        // Our last response had the C bit: the initiator asks for the rest with an empty request.
        if (!data.empty() || request.continue_bit) {
            return fail(LoginStatus::initiator_error,
                        "new login text while the target's response is incomplete");
        }
        return next_chunk(request);
    }
    if (auto r = _incoming.append(data); !r) {
        return fail(LoginStatus::initiator_error, r.error().message);
    }
    if (request.continue_bit) {
        // RFC 7143 §6.1: the text continues; answer with an empty response to get the next part.
        LoginResponsePdu out;
        out.header = header_for(request);
        return out;
    }
    return process(request, _incoming.take());
}

std::optional<LoginResponsePdu> TargetLogin::start(const LoginRequest& request, const KeyValueList& pairs) {
    _started = true;
    if (auto dup = find_duplicate_key(pairs)) {
        return fail(LoginStatus::initiator_error, "key " + std::string(*dup) + " appears twice");
    }
    // RFC 7143 §6.3: "The initial Login Request of any connection MUST include the InitiatorName key".
    const std::string* initiator = find_value(pairs, "InitiatorName");
    if (initiator == nullptr) {
        return fail(LoginStatus::missing_parameter, "the first Login Request has no InitiatorName");
    }
    if (!is_valid_iscsi_name(*initiator)) {
        return fail(LoginStatus::initiator_error,
                    "InitiatorName '" + short_value(*initiator) + "' is not an iSCSI name");
    }
    _identity.initiator_name = *initiator;
    if (const std::string* alias = find_value(pairs, "InitiatorAlias");
        alias && is_valid_local_name(*alias)) {
        _identity.initiator_alias = *alias;
    }
    if (const std::string* type = find_value(pairs, "SessionType")) {
        if (*type == "Discovery") {
            _identity.session_type = SessionType::discovery;
        } else if (*type != "Normal") {
            return fail(LoginStatus::session_type_not_supported, "SessionType=" + short_value(*type));
        }
    }
    const std::string* target = find_value(pairs, "TargetName");
    if (target != nullptr && !is_valid_iscsi_name(*target)) {
        return fail(LoginStatus::initiator_error,
                    "TargetName '" + short_value(*target) + "' is not an iSCSI name");
    }
    if (target == nullptr && _identity.session_type == SessionType::normal) {
        // RFC 7143 §6.3: a connection of a session that is not Discovery MUST send TargetName first.
        return fail(LoginStatus::missing_parameter,
                    "a normal session's first Login Request has no TargetName");
    }
    if (target != nullptr) {
        _identity.target_name = *target;
    }
    _identity.isid = request.isid;
    _identity.tsih = request.tsih;
    _identity.cid = request.cid;
    _identity.cmd_sn = request.cmd_sn;
    _identity.exp_stat_sn = request.exp_stat_sn;

    _target = _policy.start(_identity);
    if (status_class(_target.status) == LoginStatusClass::redirection) {
        if (_target.redirect_address.empty() || !is_valid_local_name(_target.redirect_address)) {
            return fail(LoginStatus::target_error, "redirection without a valid TargetAddress");
        }
        LoginResponsePdu out = fail(_target.status, "redirected to " + _target.redirect_address);
        append_text(out.data, "TargetAddress", _target.redirect_address);
        out.header.data_segment_length = uint32_t(out.data.size());
        return out;
    }
    if (_target.status != LoginStatus::success) {
        return fail(_target.status, "refused: " + describe(_target.status));
    }
    if (auto r = validate(_target.negotiation); !r) {
        return fail(LoginStatus::target_error, r.error().message);
    }
    if (!_identity.leading() && !_target.session) {
        return fail(LoginStatus::session_does_not_exist,
                    "no session with TSIH " + std::to_string(_identity.tsih));
    }
    if (_target.auth_methods.empty()) {
        return fail(LoginStatus::target_error, "the target accepts no AuthMethod");
    }
    if (request.csg == LoginStage::operational && !accepts_none(_target.auth_methods)) {
        // RFC 7143 §6.3.1: an initiator that skips the security stage may be refused with 02/01.
        return fail(LoginStatus::authentication_failure,
                    "the initiator skipped the security stage; the target requires AuthMethod " +
                        join(_target.auth_methods));
    }
    Negotiator::Context context;
    context.role = Role::target;
    context.leading = _identity.leading();
    context.login = true;
    context.session = _target.session;
    _negotiator = std::make_unique<Negotiator>(_target.negotiation, context);
    // RFC 7143 §6.3.1: TargetPortalGroupTag goes in the first response after the first Login Request
    // with C=0, "for all session types when TargetName is given and the response is not a redirection".
    _send_tpgt = !_identity.target_name.empty();
    return std::nullopt;
}

std::optional<LoginResponsePdu> TargetLogin::security_keys(const KeyValueList& pairs, KeyValueList& out) {
    KeyValueList method_keys;
    for (const auto& kv : pairs) {
        if (kv.key != "AuthMethod") {
            method_keys.push_back(kv);
            continue;
        }
        if (_auth_negotiated) {
            // An identical repeat gets the same answer (some initiators resend their first keys).
            if (kv.value == _auth_offer) {
                out.push_back({kv.key, _auth_answer});
                continue;
            }
            return fail(LoginStatus::initiator_error, "AuthMethod negotiated twice");
        }
        if (is_reserved_answer(kv.value)) {
            return fail(LoginStatus::initiator_error,
                        "AuthMethod=" + short_value(kv.value) + " is not an offer");
        }
        auto offered = parse_list(kv.value);
        if (!offered) {
            return fail(LoginStatus::initiator_error, "AuthMethod: " + offered.error().message);
        }
        _auth_negotiated = true;
        _auth_offer = kv.value;
        std::string chosen = choose_auth_method(*offered, _target.auth_methods);
        if (chosen.empty()) {
            if (!accepts_none(_target.auth_methods)) {
                return fail(LoginStatus::authentication_failure,
                            "the initiator offers AuthMethod=" + short_value(kv.value) +
                                "; the target requires " + join(_target.auth_methods));
            }
            // No common method but none is needed: "Reject" (RFC 7143 §6.3.2), and no authentication.
            _auth_answer = std::string(value_reject);
            out.push_back({kv.key, _auth_answer});
            continue;
        }
        _auth_answer = chosen;
        out.push_back({kv.key, chosen});
        _authenticator =
            chosen == auth_method_none ? make_none_authenticator() : _policy.authenticator(chosen, _identity);
        if (!_authenticator) {
            return fail(LoginStatus::target_error, "no authenticator for AuthMethod=" + chosen);
        }
        AuthResult r = _authenticator->step({}, out);
        _auth_status = r.status;
        if (r.status == AuthStatus::failed) {
            return fail(r.failure, "authentication: " + r.message);
        }
    }
    if (method_keys.empty()) {
        return std::nullopt;
    }
    if (!_authenticator) {
        return fail(LoginStatus::initiator_error,
                    method_keys.front().key + " before an AuthMethod was agreed");
    }
    for (const auto& kv : method_keys) {
        if (!_authenticator->owns_key(kv.key)) {
            return fail(LoginStatus::initiator_error,
                        kv.key + " does not belong to AuthMethod=" + std::string(_authenticator->method()));
        }
    }
    AuthResult r = _authenticator->step(method_keys, out);
    _auth_status = r.status;
    if (r.status == AuthStatus::failed) {
        return fail(r.failure, "authentication: " + r.message);
    }
    return std::nullopt;
}

LoginResponsePdu TargetLogin::process(const LoginRequest& request, std::vector<uint8_t> text) {
    auto parsed = parse_text(text, _settings.text_limits);
    if (!parsed) {
        return fail(LoginStatus::initiator_error, "login text: " + parsed.error().message);
    }
    KeyValueList& pairs = *parsed;
    bool first = !_started;
    if (first) {
        if (auto early = start(request, pairs)) {
            return std::move(*early);
        }
    }
    KeyValueList security;
    KeyValueList other;
    for (auto& kv : pairs) {
        (is_security_key(kv.key) ? security : other).push_back(std::move(kv));
    }
    KeyValueList out;
    if (!security.empty()) {
        if (_stage != LoginStage::security) {
            return fail(LoginStatus::initiator_error,
                        security.front().key + " is only allowed in the security stage");
        }
        if (auto dup = find_duplicate_key(security)) {
            return fail(LoginStatus::initiator_error, "key " + std::string(*dup) + " appears twice");
        }
        if (auto early = security_keys(security, out)) {
            return std::move(*early);
        }
    }
    if (auto r = _negotiator->receive(other, _stage, out); !r) {
        return fail(LoginStatus::initiator_error, r.error().message);
    }
    if (first && _send_tpgt) {
        out.push_back({"TargetPortalGroupTag", std::to_string(_target.target_portal_group_tag)});
    }
    // Our declarations (TargetAlias; MaxRecvDataSegmentLength in the operational stage) and the keys we
    // must originate because their defaults are not acceptable to us.
    _negotiator->offer(_stage, out);

    bool transit = false;
    LoginStage nsg = _stage;
    if (request.transit) {
        if (_stage == LoginStage::security) {
            if (!_authenticator && !accepts_none(_target.auth_methods)) {
                return fail(
                    LoginStatus::authentication_failure,
                    "the initiator ended the security stage without authenticating; the target requires " +
                        join(_target.auth_methods));
            }
            if (!_authenticator || _auth_status == AuthStatus::done) {
                transit = true;
                nsg = request.nsg;
                // Skipping the operational stage leaves every key at its default. If a default is not
                // acceptable to us, stop in the operational stage instead: RFC 7143 §6.3 lets the target
                // select an NSG lower than the initiator's.
                if (nsg == LoginStage::full_feature && _negotiator->needs_offers()) {
                    nsg = LoginStage::operational;
                }
            }
        } else {
            // RFC 7143 §6.3: "Targets MUST NOT submit parameters that require an additional initiator
            // Login Request in a Login Response with the T bit set to 1."
            transit = !_negotiator->awaiting_answers();
            nsg = LoginStage::full_feature;
        }
    }
    _outgoing = encode_text(out);
    _outgoing_offset = 0;
    _pending_transit = transit;
    _pending_nsg = nsg;
    return next_chunk(request);
}

LoginResponsePdu TargetLogin::next_chunk(const LoginRequest& request) {
    LoginResponsePdu out;
    out.header = header_for(request);
    // A refusal from here on replaces this response: it takes over its StatSN rather than skipping
    // one (found by fuzz_login).
    auto refuse = [&](LoginStatus status, std::string reason) {
        _stat_sn = out.header.stat_sn;
        return fail(status, std::move(reason));
    };
    size_t n = std::min(_outgoing.size() - _outgoing_offset, size_t(login_max_recv_data_segment_length));
    out.data.assign(_outgoing.begin() + ptrdiff_t(_outgoing_offset),
                    _outgoing.begin() + ptrdiff_t(_outgoing_offset + n));
    _outgoing_offset += n;
    if (_outgoing_offset < _outgoing.size()) {
        out.header.continue_bit = true;
        out.header.data_segment_length = uint32_t(out.data.size());
        return out;
    }
    _outgoing.clear();
    _outgoing_offset = 0;
    // Each request/response pair stands alone (RFC 7143 §6.3: "the T bit settings in one pair ... have
    // no bearing on the T bit settings of the next pair"), so the last piece of a long response may
    // transit only if the request it answers asks to, and to no later stage than it names.
    if (_pending_transit && request.transit) {
        LoginStage nsg = std::min(_pending_nsg, request.nsg);
        out.header.transit = true;
        out.header.nsg = nsg;
        if (nsg == LoginStage::full_feature) {
            if (auto r = _negotiator->finish(); !r) {
                return refuse(LoginStatus::initiator_error, r.error().message);
            }
            _session = _negotiator->session_params();
            _connection = _negotiator->connection_params();
            _session.session_type = _identity.session_type;
            _session.initiator_name = _identity.initiator_name;
            _session.initiator_alias = _identity.initiator_alias;
            _session.target_name = _identity.target_name;
            _session.target_alias = _target.negotiation.alias;
            _session.target_portal_group_tag = _target.target_portal_group_tag;
            LoginAdmission admission = _policy.admit(_identity, _session, _connection);
            if (admission.status != LoginStatus::success) {
                return refuse(admission.status, "not admitted: " + describe(admission.status));
            }
            if (admission.tsih == 0 || (!_identity.leading() && admission.tsih != _identity.tsih)) {
                return refuse(LoginStatus::target_error,
                              "the policy admitted the login with TSIH " + std::to_string(admission.tsih));
            }
            _tsih = admission.tsih;
            out.header.tsih = _tsih;
            if (admission.exp_cmd_sn != 0 || admission.max_cmd_sn != 0) {
                out.header.exp_cmd_sn = admission.exp_cmd_sn;
                out.header.max_cmd_sn = admission.max_cmd_sn;
            }
            _exp_cmd_sn = out.header.exp_cmd_sn;
            _max_cmd_sn = out.header.max_cmd_sn;
            _state = LoginState::complete;
        }
        _stage = nsg;
    }
    out.header.data_segment_length = uint32_t(out.data.size());
    return out;
}

} // namespace ispace::iscsi
