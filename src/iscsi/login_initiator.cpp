// The initiator's login state machine (see login.hpp).
#include "iscsi/login.hpp"

#include <algorithm>
#include <cerrno>

namespace ispace::iscsi {

namespace {

bool offers_none(const std::vector<std::string>& methods) {
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

} // namespace

InitiatorLogin::InitiatorLogin(InitiatorLoginConfig config)
    : _config(std::move(config)), _incoming(_config.text_limits.max_bytes),
      _exp_stat_sn(_config.exp_stat_sn) {}

std::optional<LoginRequestPdu> InitiatorLogin::fail(LoginStatus status, std::string reason) {
    _state =
        status_class(status) == LoginStatusClass::redirection ? LoginState::redirected : LoginState::failed;
    _status = status;
    _reason = std::move(reason);
    _outgoing.clear();
    _outgoing_offset = 0;
    _incoming.clear();
    return std::nullopt;
}

Result<LoginRequestPdu> InitiatorLogin::start() {
    auto bad = [](std::string what) { return make_error("login: " + what, EINVAL); };
    if (_started) {
        return bad("already started");
    }
    if (!is_valid_iscsi_name(_config.initiator_name)) {
        return bad("initiator name '" + _config.initiator_name +
                   "' is not an iSCSI name (iqn., eui. or naa.)");
    }
    if (_config.session_type == SessionType::normal && _config.target_name.empty()) {
        return bad("a normal session needs a target name");
    }
    if (!_config.target_name.empty() && !is_valid_iscsi_name(_config.target_name)) {
        return bad("target name '" + _config.target_name + "' is not an iSCSI name (iqn., eui. or naa.)");
    }
    if (auto r = validate(_config.negotiation); !r) {
        return std::move(r).error();
    }
    if (_config.auth_methods.empty()) {
        return bad("no AuthMethod to offer (list None for no authentication)");
    }
    for (const auto& m : _config.auth_methods) {
        if (m.empty() || m.size() > 32 || m.find(',') != std::string::npos || is_reserved_answer(m)) {
            return bad("bad AuthMethod '" + m + "'");
        }
        if (m != auth_method_none && !_config.make_authenticator) {
            return bad("AuthMethod " + m + " offered without an authenticator");
        }
    }
    for (const auto& kv : _config.extra_keys) {
        if (!is_valid_key(kv.key) || kv.value.size() > max_value_length_for(kv.key) ||
            find_key(kv.key) != nullptr || is_security_key(kv.key)) {
            return bad("extra key '" + kv.key + "' is malformed or one the login negotiates itself");
        }
    }
    _started = true;
    // Without anything to authenticate, start in the operational stage (RFC 7143 §6.3: the login "MAY
    // include a SecurityNegotiation stage").
    bool only_none = _config.auth_methods.size() == 1 && _config.auth_methods[0] == auth_method_none;
    _stage = only_none ? LoginStage::operational : LoginStage::security;
    Negotiator::Context context;
    context.role = Role::initiator;
    context.leading = _config.tsih == 0;
    context.login = true;
    context.session = _config.session;
    _negotiator = std::make_unique<Negotiator>(_config.negotiation, context);
    _negotiator->set_session_type(_config.session_type);

    KeyValueList keys;
    keys.push_back({"InitiatorName", _config.initiator_name});
    if (!_config.target_name.empty()) {
        keys.push_back({"TargetName", _config.target_name});
    }
    if (context.leading) {
        keys.push_back({"SessionType", std::string(to_string(_config.session_type))});
    }
    if (_stage == LoginStage::security) {
        keys.push_back({"AuthMethod", join(_config.auth_methods)});
        _auth_offered = true;
    }
    _negotiator->offer(_stage, keys);
    keys.insert(keys.end(), _config.extra_keys.begin(), _config.extra_keys.end());
    _outgoing = encode_text(keys);
    _outgoing_offset = 0;
    return next_request();
}

bool InitiatorLogin::ready_to_transit() const {
    if (_stage == LoginStage::security) {
        // Propose leaving at once (the target answers T=0 while its chosen method needs exchanges), and
        // again once our authenticator is satisfied or waits only for the target's proof, which comes in
        // the response that ends the stage (mutual CHAP; RFC 7143 §12.1.3).
        return !_auth_agreed || _auth_status == AuthStatus::done ||
               _auth_status == AuthStatus::awaiting_proof;
    }
    return true;
}

LoginRequestPdu InitiatorLogin::next_request() {
    LoginRequestPdu pdu;
    LoginRequest& h = pdu.header;
    h.csg = _stage;
    h.version_max = iscsi_version;
    h.version_min = iscsi_version;
    h.isid = _config.isid;
    h.tsih = _config.tsih;
    h.itt = _config.itt;
    h.cid = _config.cid;
    h.cmd_sn = _config.cmd_sn;
    h.exp_stat_sn = _exp_stat_sn;
    size_t n = std::min(_outgoing.size() - _outgoing_offset, size_t(login_max_recv_data_segment_length));
    pdu.data.assign(_outgoing.begin() + ptrdiff_t(_outgoing_offset),
                    _outgoing.begin() + ptrdiff_t(_outgoing_offset + n));
    _outgoing_offset += n;
    if (_outgoing_offset < _outgoing.size()) {
        h.continue_bit = true;
    } else {
        _outgoing.clear();
        _outgoing_offset = 0;
        h.transit = ready_to_transit();
        if (h.transit) {
            h.nsg = _stage == LoginStage::security ? LoginStage::operational : LoginStage::full_feature;
        }
    }
    h.data_segment_length = uint32_t(pdu.data.size());
    _last_transit = h.transit;
    _last_nsg = h.nsg;
    _last_continue = h.continue_bit;
    return pdu;
}

std::optional<LoginRequestPdu> InitiatorLogin::receive(const LoginResponse& response,
                                                       std::span<const uint8_t> data) {
    if (!_started || _state != LoginState::in_progress) {
        return fail(LoginStatus::initiator_error, "Login Response outside a login");
    }
    if (++_responses > _config.max_responses) {
        return fail(LoginStatus::initiator_error,
                    "more than " + std::to_string(_config.max_responses) + " Login Responses");
    }
    LoginStatus status = response.status();
    // The ITT pairs a response with our request. A login reject may carry a zero ISID (tgt sends one),
    // so the ISID is checked only on responses that let the login go on; the target's reason for a
    // reject is worth more to the user than "wrong ISID".
    bool isid_ok = response.isid == _config.isid || status_class(status) != LoginStatusClass::success;
    if (response.itt != _config.itt || !isid_ok) {
        return fail(LoginStatus::initiator_error, "Login Response for another ITT or ISID");
    }
    if (status_class(status) == LoginStatusClass::redirection) {
        auto pairs = parse_text(data, _config.text_limits);
        const std::string* address = pairs ? find_value(*pairs, "TargetAddress") : nullptr;
        if (address == nullptr || address->empty() || !is_valid_local_name(*address)) {
            return fail(status, "redirected without a usable TargetAddress");
        }
        _redirect_address = *address;
        return fail(status, "redirected to " + *address);
    }
    if (status != LoginStatus::success) {
        return fail(status, "the target refused the login: " + describe(status));
    }
    _stat_sn = response.stat_sn;
    _exp_stat_sn = response.stat_sn + 1;
    if (response.version_active != iscsi_version) {
        return fail(LoginStatus::unsupported_version,
                    "the target chose version " + std::to_string(response.version_active));
    }
    if (response.csg != _stage) {
        return fail(LoginStatus::initiator_error, "the target answered for stage " +
                                                      std::to_string(unsigned(response.csg)) + " in stage " +
                                                      std::to_string(unsigned(_stage)));
    }
    if (response.transit && response.continue_bit) {
        return fail(LoginStatus::initiator_error, "Login Response with both T and C set");
    }
    if (response.transit) {
        // RFC 7143 §6.3: the target may only transit when asked, to no later stage than asked.
        if (!_last_transit || uint8_t(response.nsg) > uint8_t(_last_nsg) ||
            uint8_t(response.nsg) <= uint8_t(response.csg) || uint8_t(response.nsg) == 2) {
            return fail(LoginStatus::initiator_error,
                        "the target made a stage transition we did not ask for");
        }
    }
    if (data.size() > login_max_recv_data_segment_length) {
        return fail(LoginStatus::initiator_error, "Login Response data segment over 8192 bytes");
    }
    if (_last_continue) {
        // Our request was a partial text; the target must acknowledge it with an empty response.
        if (!data.empty() || response.continue_bit || response.transit) {
            return fail(LoginStatus::initiator_error,
                        "the target answered a partial Login Request with text");
        }
        return next_request();
    }
    if (auto r = _incoming.append(data); !r) {
        return fail(LoginStatus::initiator_error, r.error().message);
    }
    if (response.continue_bit) {
        // More text follows: ask for it with an empty request (which keeps our wish to transit).
        return next_request();
    }
    return process(response, _incoming.take());
}

Result<void> InitiatorLogin::security_keys(const KeyValueList& pairs, KeyValueList& out) {
    KeyValueList method_keys;
    auto auth_error = [](std::string message) { return make_error(std::move(message), EACCES); };
    for (const auto& kv : pairs) {
        if (kv.key != "AuthMethod") {
            method_keys.push_back(kv);
            continue;
        }
        if (!_auth_offered || _auth_agreed) {
            return make_error("AuthMethod=" + kv.value.substr(0, 32) + " answers nothing we offered", EPROTO);
        }
        _auth_agreed = true;
        if (kv.value == value_reject || kv.value == value_not_understood || kv.value == value_irrelevant) {
            if (!offers_none(_config.auth_methods)) {
                return auth_error("the target accepts none of AuthMethod=" + join(_config.auth_methods));
            }
            _auth_status = AuthStatus::done; // proceed without authentication
            continue;
        }
        if (std::find(_config.auth_methods.begin(), _config.auth_methods.end(), kv.value) ==
            _config.auth_methods.end()) {
            return make_error(
                "the target chose AuthMethod=" + kv.value.substr(0, 32) + ", which we did not offer", EPROTO);
        }
        _authenticator =
            kv.value == auth_method_none ? make_none_authenticator() : _config.make_authenticator(kv.value);
        if (!_authenticator) {
            return auth_error("no authenticator for AuthMethod=" + kv.value);
        }
        AuthResult r = _authenticator->step({}, out);
        _auth_status = r.status;
        if (r.status == AuthStatus::failed) {
            return auth_error("authentication: " + r.message);
        }
    }
    if (method_keys.empty()) {
        return {};
    }
    if (!_authenticator) {
        return make_error(method_keys.front().key + " before an AuthMethod was agreed", EPROTO);
    }
    for (const auto& kv : method_keys) {
        if (!_authenticator->owns_key(kv.key)) {
            return make_error(
                kv.key + " does not belong to AuthMethod=" + std::string(_authenticator->method()), EPROTO);
        }
    }
    AuthResult r = _authenticator->step(method_keys, out);
    _auth_status = r.status;
    if (r.status == AuthStatus::failed) {
        return auth_error("authentication: " + r.message);
    }
    return {};
}

std::optional<LoginRequestPdu> InitiatorLogin::process(const LoginResponse& response,
                                                       std::vector<uint8_t> text) {
    auto parsed = parse_text(text, _config.text_limits);
    if (!parsed) {
        return fail(LoginStatus::initiator_error, "login text from the target: " + parsed.error().message);
    }
    KeyValueList security;
    KeyValueList other;
    for (auto& kv : *parsed) {
        if (find_value(_config.extra_keys, kv.key) != nullptr) {
            if (_extra_answers.size() < _config.extra_keys.size() &&
                find_value(_extra_answers, kv.key) == nullptr) {
                _extra_answers.push_back(std::move(kv));
            }
            continue;
        }
        (is_security_key(kv.key) ? security : other).push_back(std::move(kv));
    }
    KeyValueList out;
    if (!security.empty()) {
        if (_stage != LoginStage::security) {
            return fail(LoginStatus::initiator_error, security.front().key + " outside the security stage");
        }
        if (auto dup = find_duplicate_key(security)) {
            return fail(LoginStatus::initiator_error, "key " + std::string(*dup) + " appears twice");
        }
        if (auto r = security_keys(security, out); !r) {
            LoginStatus why =
                r.error().code == EACCES ? LoginStatus::authentication_failure : LoginStatus::initiator_error;
            return fail(why, r.error().message);
        }
    }
    if (auto r = _negotiator->receive(other, _stage, out); !r) {
        return fail(LoginStatus::initiator_error, r.error().message);
    }
    if (!response.transit) {
        _outgoing = encode_text(out);
        _outgoing_offset = 0;
        return next_request();
    }
    if (_stage == LoginStage::security) {
        // The target ends the security stage: that must leave us authenticated as we require. An
        // authenticator still awaiting the target's proof (the target skipped mutual CHAP) fails here.
        bool authenticated =
            _auth_agreed ? _auth_status == AuthStatus::done : offers_none(_config.auth_methods);
        if (!authenticated) {
            return fail(LoginStatus::authentication_failure,
                        "the target ended the security stage before authentication");
        }
    }
    if (response.nsg == LoginStage::full_feature) {
        // The target may not offer keys needing an answer in its final response (RFC 7143 §6.3). Where
        // one did anyway, go on only if our answer is what it proposed (so both sides agree).
        for (const auto& answer : out) {
            if (answer.value == value_not_understood) {
                continue;
            }
            const std::string* offered = find_value(other, answer.key);
            if (offered == nullptr || *offered != answer.value) {
                return fail(LoginStatus::initiator_error, "the target's final response offers " + answer.key +
                                                              " and cannot get our answer");
            }
        }
        if (auto r = _negotiator->finish(); !r) {
            return fail(LoginStatus::initiator_error, r.error().message);
        }
        if (response.tsih == 0 || (_config.tsih != 0 && response.tsih != _config.tsih)) {
            return fail(LoginStatus::initiator_error,
                        "final Login Response with TSIH " + std::to_string(response.tsih));
        }
        _session = _negotiator->session_params();
        _connection = _negotiator->connection_params();
        _session.session_type = _config.session_type;
        _session.initiator_name = _config.initiator_name;
        _session.initiator_alias = _config.negotiation.alias;
        _session.target_name = _config.target_name;
        _tsih = response.tsih;
        _exp_cmd_sn = response.exp_cmd_sn;
        _max_cmd_sn = response.max_cmd_sn;
        _stage = LoginStage::full_feature;
        _state = LoginState::complete;
        return std::nullopt;
    }
    _stage = response.nsg;
    // Entering the operational stage: our offers go with the answers to the target's last keys.
    _negotiator->offer(_stage, out);
    _outgoing = encode_text(out);
    _outgoing_offset = 0;
    return next_request();
}

} // namespace ispace::iscsi
