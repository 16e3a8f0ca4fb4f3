#include "iscsi/param_settings.hpp"

#include <fmt/format.h>

#include <cerrno>

namespace ispace::iscsi {
namespace {

Error invalid(std::string message) {
    return make_error(std::move(message), EINVAL);
}

std::string yes_no(bool value) {
    return std::string(value ? value_yes : value_no);
}

std::string digest_list(const std::vector<Digest>& digests) {
    std::string out;
    for (Digest d : digests) {
        out += (out.empty() ? "" : ",") + std::string(to_string(d));
    }
    return out;
}

Result<std::vector<Digest>> parse_digest_list(std::string_view key, std::string_view value) {
    std::vector<Digest> out;
    size_t start = 0;
    while (start <= value.size()) {
        size_t comma = value.find(',', start);
        std::string_view item = value.substr(start, comma == std::string_view::npos ? comma : comma - start);
        Digest d;
        if (item == "None") {
            d = Digest::none;
        } else if (item == "CRC32C") {
            d = Digest::crc32c;
        } else {
            return invalid(fmt::format("{}={}: expected CRC32C, None or both in order of preference "
                                       "(\"CRC32C,None\")",
                                       key, value));
        }
        for (Digest seen : out) {
            if (seen == d) {
                return invalid(fmt::format("{}={}: {} is listed twice", key, value, item));
            }
        }
        out.push_back(d);
        if (comma == std::string_view::npos) {
            break;
        }
        start = comma + 1;
    }
    return out;
}

// Where a settable key lives in NegotiationConfig. The table's rows are KeyIds; the syntax and range
// come from the key table (params.cpp).
struct Setting {
    KeyId id;
    bool NegotiationConfig::*flag = nullptr;
    uint32_t NegotiationConfig::*u32 = nullptr;
    uint16_t NegotiationConfig::*u16 = nullptr;
    std::vector<Digest> NegotiationConfig::*digests = nullptr;
};

const Setting settings[] = {
    {KeyId::header_digest, nullptr, nullptr, nullptr, &NegotiationConfig::header_digests},
    {KeyId::data_digest, nullptr, nullptr, nullptr, &NegotiationConfig::data_digests},
    {KeyId::max_connections, nullptr, nullptr, &NegotiationConfig::max_connections},
    {KeyId::initial_r2t, &NegotiationConfig::initial_r2t},
    {KeyId::immediate_data, &NegotiationConfig::immediate_data},
    {KeyId::max_recv_data_segment_length, nullptr, &NegotiationConfig::max_recv_data_segment_length},
    {KeyId::max_burst_length, nullptr, &NegotiationConfig::max_burst_length},
    {KeyId::first_burst_length, nullptr, &NegotiationConfig::first_burst_length},
    {KeyId::default_time2wait, nullptr, nullptr, &NegotiationConfig::default_time2wait},
    {KeyId::default_time2retain, nullptr, nullptr, &NegotiationConfig::default_time2retain},
    {KeyId::max_outstanding_r2t, nullptr, nullptr, &NegotiationConfig::max_outstanding_r2t},
    {KeyId::data_pdu_in_order, &NegotiationConfig::data_pdu_in_order},
    {KeyId::data_sequence_in_order, &NegotiationConfig::data_sequence_in_order},
};

const Setting* find_setting(KeyId id) {
    for (const Setting& s : settings) {
        if (s.id == id) {
            return &s;
        }
    }
    return nullptr;
}

std::string use_rule(KeyUse use) {
    switch (use) {
    case KeyUse::login_only:
        return "it is negotiated during login only (RFC 7143 §13, Use: IO)";
    case KeyUse::leading_only:
        return "it is negotiated only during the login of a session's leading connection (RFC 7143 §13, "
               "Use: LO)";
    case KeyUse::all:
    case KeyUse::full_feature_only:
        break;
    }
    return {};
}

} // namespace

Result<void> set_negotiation_key(NegotiationConfig& config, std::string_view key, std::string_view value) {
    const KeyDef* def = find_key(key);
    if (def == nullptr) {
        return invalid(fmt::format("{}: not an iSCSI key (settable: {})", key,
                                   fmt::join(settable_negotiation_keys(), ", ")));
    }
    const Setting* setting = find_setting(def->id);
    if (def->id == KeyId::error_recovery_level) {
        auto level = parse_number(value);
        if (!level || *level > max_error_recovery_level) {
            return invalid(fmt::format("ErrorRecoveryLevel={}: ispace implements levels 0..{}", value,
                                       max_error_recovery_level));
        }
        config.error_recovery_level = uint8_t(*level);
        return {};
    }
    if (setting == nullptr) {
        return invalid(fmt::format("{} is not a default the target offers (settable: {})", key,
                                   fmt::join(settable_negotiation_keys(), ", ")));
    }
    NegotiationConfig next = config;
    if (setting->digests) {
        auto list = parse_digest_list(key, value);
        if (!list) {
            return list.error();
        }
        next.*setting->digests = *list;
    } else if (setting->flag) {
        auto flag = parse_bool(value);
        if (!flag) {
            return invalid(fmt::format("{}={}: expected Yes or No", key, value));
        }
        next.*setting->flag = *flag;
    } else {
        auto number = parse_number(value);
        if (!number || *number < def->min || *number > def->max) {
            return invalid(
                fmt::format("{}={}: expected a number from {} to {}", key, value, def->min, def->max));
        }
        if (setting->u32) {
            next.*setting->u32 = uint32_t(*number);
        } else {
            next.*setting->u16 = uint16_t(*number);
        }
    }
    if (auto valid = validate(next); !valid) {
        return invalid(fmt::format("{}={}: {}", key, value, valid.error().message));
    }
    config = std::move(next);
    return {};
}

std::vector<std::string_view> settable_negotiation_keys() {
    std::vector<std::string_view> keys;
    for (const Setting& s : settings) {
        keys.push_back(key_def(s.id).name);
    }
    return keys;
}

KeyValueList describe(const NegotiationConfig& config) {
    KeyValueList out;
    for (const Setting& s : settings) {
        std::string value;
        if (s.digests) {
            value = digest_list(config.*s.digests);
        } else if (s.flag) {
            value = yes_no(config.*s.flag);
        } else if (s.u32) {
            value = std::to_string(config.*s.u32);
        } else {
            value = std::to_string(config.*s.u16);
        }
        out.push_back({std::string(key_def(s.id).name), std::move(value)});
    }
    return out;
}

Result<void> check_renegotiable(std::string_view key, std::string_view value) {
    const KeyDef* def = find_key(key);
    if (def == nullptr) {
        return invalid(fmt::format("{}: not an iSCSI key", key));
    }
    if (std::string rule = use_rule(def->use); !rule.empty()) {
        return invalid(fmt::format("{} cannot change in a running session: {}; set it as a default "
                                   "(param set without --session) and the next login uses it",
                                   key, rule));
    }
    if (def->sender == KeySender::initiator) {
        return invalid(fmt::format("{} is the initiator's to declare (RFC 7143 §13), not the target's", key));
    }
    if (def->id == KeyId::target_address || def->id == KeyId::send_targets) {
        return invalid(
            fmt::format("{} belongs to SendTargets and redirection, not to a session's parameters", key));
    }
    if (def->type == KeyType::declarative && def->max > 0) {
        auto number = parse_number(value);
        if (!number || *number < def->min || *number > def->max) {
            return invalid(
                fmt::format("{}={}: expected a number from {} to {}", key, value, def->min, def->max));
        }
    } else if (value.size() > max_value_length || !is_valid_local_name(value)) {
        return invalid(
            fmt::format("{}: at most {} bytes of UTF-8 without control characters", key, max_value_length));
    }
    return {};
}

KeyValueList describe(const SessionParams& s) {
    KeyValueList out;
    auto add = [&](KeyId id, std::string value) {
        out.push_back({std::string(key_def(id).name), std::move(value)});
    };
    add(KeyId::session_type, std::string(to_string(s.session_type)));
    add(KeyId::initiator_name, s.initiator_name);
    if (!s.initiator_alias.empty()) {
        add(KeyId::initiator_alias, s.initiator_alias);
    }
    add(KeyId::target_name, s.target_name);
    if (!s.target_alias.empty()) {
        add(KeyId::target_alias, s.target_alias);
    }
    add(KeyId::target_portal_group_tag, std::to_string(s.target_portal_group_tag));
    add(KeyId::max_connections, std::to_string(s.max_connections));
    add(KeyId::initial_r2t, yes_no(s.initial_r2t));
    add(KeyId::immediate_data, yes_no(s.immediate_data));
    add(KeyId::max_burst_length, std::to_string(s.max_burst_length));
    add(KeyId::first_burst_length, std::to_string(s.first_burst_length));
    add(KeyId::default_time2wait, std::to_string(s.default_time2wait));
    add(KeyId::default_time2retain, std::to_string(s.default_time2retain));
    add(KeyId::max_outstanding_r2t, std::to_string(s.max_outstanding_r2t));
    add(KeyId::data_pdu_in_order, yes_no(s.data_pdu_in_order));
    add(KeyId::data_sequence_in_order, yes_no(s.data_sequence_in_order));
    add(KeyId::error_recovery_level, std::to_string(s.error_recovery_level));
    add(KeyId::task_reporting, std::string(to_string(s.task_reporting)));
    add(KeyId::iscsi_protocol_level, std::to_string(s.protocol_level));
    return out;
}

KeyValueList describe(const ConnectionParams& c, KeyValueList* initiator) {
    std::string mrdsl(key_def(KeyId::max_recv_data_segment_length).name);
    if (initiator) {
        initiator->push_back({mrdsl, std::to_string(c.max_send_data_segment_length)});
    }
    return {{std::string(key_def(KeyId::header_digest).name), std::string(to_string(c.header_digest))},
            {std::string(key_def(KeyId::data_digest).name), std::string(to_string(c.data_digest))},
            {mrdsl, std::to_string(c.max_recv_data_segment_length)}};
}

} // namespace ispace::iscsi
