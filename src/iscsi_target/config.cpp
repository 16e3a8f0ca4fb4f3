#include "iscsi_target/config.hpp"

#include "common/log.hpp"
#include "common/secret.hpp"
#include "common/units.hpp"
#include "iscsi/param_settings.hpp"
#include "iscsi/text.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <arpa/inet.h>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>

namespace ispace::iscsi_target {

uint64_t default_buffer_memory() {
    long pages = ::sysconf(_SC_PHYS_PAGES);
    long page_size = ::sysconf(_SC_PAGESIZE);
    uint64_t memory = pages > 0 && page_size > 0 ? uint64_t(pages) * uint64_t(page_size) : 0;
    return std::clamp<uint64_t>(memory / 16, uint64_t(64) << 20, uint64_t(512) << 20);
}

// ---- CIDR ------------------------------------------------------------------------------------------

Result<Cidr> parse_cidr(std::string_view text) {
    std::string address(text);
    unsigned prefix = 0;
    bool has_prefix = false;
    if (auto slash = address.find('/'); slash != std::string::npos) {
        std::string bits = address.substr(slash + 1);
        address.resize(slash);
        if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos) {
            return make_error(fmt::format("'{}': the prefix length after '/' must be a number", text));
        }
        prefix = unsigned(std::stoul(bits));
        has_prefix = true;
    }
    Cidr cidr;
    if (inet_pton(AF_INET, address.c_str(), cidr.bytes) == 1) {
        cidr.family = AF_INET;
        cidr.prefix = has_prefix ? prefix : 32;
        if (cidr.prefix > 32) {
            return make_error(fmt::format("'{}': an IPv4 prefix is at most /32", text));
        }
    } else if (inet_pton(AF_INET6, address.c_str(), cidr.bytes) == 1) {
        cidr.family = AF_INET6;
        cidr.prefix = has_prefix ? prefix : 128;
        if (cidr.prefix > 128) {
            return make_error(fmt::format("'{}': an IPv6 prefix is at most /128", text));
        }
    } else {
        return make_error(fmt::format("'{}' is not an IP address or CIDR range (e.g. 10.0.0.0/8)", text));
    }
    return cidr;
}

bool Cidr::contains(const net::Endpoint& address) const {
    const uint8_t* bytes = nullptr;
    uint8_t mapped[16];
    if (address.addr.ss_family == AF_INET) {
        bytes =
            reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in&>(address.addr).sin_addr);
        if (family == AF_INET6) {
            // An IPv4 peer matches an IPv4-mapped IPv6 range.
            std::memset(mapped, 0, 10);
            mapped[10] = mapped[11] = 0xff;
            std::memcpy(mapped + 12, bytes, 4);
            bytes = mapped;
        } else if (family != AF_INET) {
            return false;
        }
    } else if (address.addr.ss_family == AF_INET6) {
        bytes =
            reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6&>(address.addr).sin6_addr);
        if (family == AF_INET) {
            static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            if (std::memcmp(bytes, v4_prefix, 12) != 0) {
                return false;
            }
            bytes += 12;
        }
    } else {
        return false;
    }
    unsigned full = prefix / 8;
    if (std::memcmp(bytes, this->bytes, full) != 0) {
        return false;
    }
    unsigned rest = prefix % 8;
    if (rest == 0) {
        return true;
    }
    uint8_t mask = uint8_t(0xff << (8 - rest));
    return (bytes[full] & mask) == (this->bytes[full] & mask);
}

std::string Cidr::to_string() const {
    char text[INET6_ADDRSTRLEN] = {};
    inet_ntop(family, bytes, text, sizeof text);
    return fmt::format("{}/{}", text, prefix);
}

// ---- ACLs ------------------------------------------------------------------------------------------

const AclEntry* find_acl_entry(const std::vector<AclEntry>& acl, std::string_view initiator,
                               const net::Endpoint& peer) {
    // Names compare case-folded (RFC 3722): an ACL written in another case still matches.
    std::string folded = iscsi::fold_iscsi_name(initiator);
    for (const AclEntry& entry : acl) {
        if (iscsi::fold_iscsi_name(entry.initiator) != folded) {
            continue;
        }
        if (entry.networks.empty()) {
            return &entry;
        }
        for (const Cidr& network : entry.networks) {
            if (network.contains(peer)) {
                return &entry;
            }
        }
    }
    return nullptr;
}

Result<AclEntry> parse_allow(std::string_view text) {
    AclEntry entry;
    std::string_view name = text;
    if (auto at = text.find('@'); at != std::string_view::npos) {
        name = text.substr(0, at);
        auto network = parse_cidr(text.substr(at + 1));
        if (!network) {
            return make_error(fmt::format("--allow {}: {}", text, network.error().message));
        }
        entry.networks.push_back(*network);
    }
    if (auto valid = iscsi::check_iscsi_name(name); !valid) {
        return make_error(fmt::format("--allow {}: '{}' is not a valid iSCSI initiator name: {}", text, name,
                                      valid.error().message));
    }
    entry.initiator = std::string(name);
    return entry;
}

// ---- Validation ------------------------------------------------------------------------------------

namespace {

Result<void> check_credentials(const iscsi::ChapCredentials& credentials, std::string_view what) {
    if (auto user = iscsi::check_chap_user(credentials.user); !user) {
        return make_error(fmt::format("{}: {}", what, user.error().message));
    }
    if (auto secret = iscsi::check_chap_secret(credentials.secret); !secret) {
        return make_error(fmt::format("{} (user {}): {}", what, credentials.user, secret.error().message));
    }
    return {};
}

} // namespace

constexpr size_t max_text_value_bytes = 255;

Result<void> validate_target(const TargetConfig& target) {
    if (auto valid = iscsi::check_iscsi_name(target.iqn); !valid) {
        return make_error(fmt::format("'{}' is not a valid iSCSI name: {} (RFC 3720 §3.2.6.3)", target.iqn,
                                      valid.error().message));
    }
    if (target.alias.size() > max_text_value_bytes) {
        // RFC 7143 §6.1: a text value is at most 255 bytes; a longer TargetAlias would be refused by
        // careful initiators or cut by others.
        return make_error(fmt::format("target {}: the alias is {} bytes; at most {} (RFC 7143 §6.1)",
                                      target.iqn, target.alias.size(), max_text_value_bytes));
    }
    std::set<uint64_t> luns;
    for (const LunConfig& lun : target.luns) {
        if (lun.lun > 16383) {
            return make_error(fmt::format("target {}: LUN {} is above 16383", target.iqn, lun.lun));
        }
        if (!luns.insert(lun.lun).second) {
            return make_error(fmt::format("target {}: LUN {} is configured twice", target.iqn, lun.lun));
        }
    }
    if (target.chap) {
        if (auto ok = check_credentials(*target.chap, fmt::format("target {} CHAP", target.iqn)); !ok) {
            return ok;
        }
    }
    if (target.mutual_chap) {
        if (auto ok =
                check_credentials(*target.mutual_chap, fmt::format("target {} mutual CHAP", target.iqn));
            !ok) {
            return ok;
        }
        if (!target.chap) {
            return make_error(
                fmt::format("target {}: mutual CHAP needs CHAP for initiators too (--chap)", target.iqn));
        }
        if (target.chap->secret == target.mutual_chap->secret) {
            // RFC 7143 §12.1.3: with equal secrets the target would be an oracle for the initiator's.
            return make_error(fmt::format(
                "target {}: the mutual CHAP secret must differ from the CHAP secret", target.iqn));
        }
    }
    for (const AclEntry& entry : target.acl) {
        if (auto valid = iscsi::check_iscsi_name(entry.initiator); !valid) {
            return make_error(fmt::format("target {}: ACL initiator '{}' is not a valid iSCSI name: {}",
                                          target.iqn, entry.initiator, valid.error().message));
        }
        if (entry.luns) {
            for (uint64_t lun : *entry.luns) {
                if (!luns.count(lun)) {
                    return make_error(fmt::format("target {}: ACL for {} names LUN {}, which does not exist",
                                                  target.iqn, entry.initiator, lun));
                }
            }
        }
    }
    std::set<std::string> portals;
    for (const std::string& portal : target.portals) {
        if (auto endpoint = net::parse_endpoint(portal, 3260); !endpoint) {
            return make_error(
                fmt::format("target {}: portal {}: {}", target.iqn, portal, endpoint.error().message));
        }
        if (!portals.insert(portal).second) {
            return make_error(fmt::format("target {}: portal {} is listed twice", target.iqn, portal));
        }
    }
    iscsi::NegotiationConfig scratch = default_target_negotiation();
    for (const auto& [key, value] : target.params) {
        if (auto ok = iscsi::set_negotiation_key(scratch, key, value); !ok) {
            return make_error(fmt::format("target {}: {}", target.iqn, ok.error().message));
        }
    }
    return {};
}

Result<void> validate(const ServerConfig& config) {
    if (config.portals.empty()) {
        return make_error("no portal to listen on (give --listen HOST:PORT)");
    }
    // Checked here, after flags and file are combined, so that both are held to one rule. 0 used to
    // mean "every 100 ms" (the check's own tick), which nobody asks for by writing 0.
    if (auto ms = config.limits.nop_interval.count(); ms < 100 || ms > 3600000) {
        return make_error(fmt::format("nop interval {} ms: it is 100 to 3600000 ms (--nop-interval-ms, "
                                      "limits.nop_interval_ms)",
                                      ms));
    }
    if (config.discovery_chap) {
        if (auto ok = check_credentials(*config.discovery_chap, "discovery CHAP"); !ok) {
            return ok;
        }
    }
    if (config.discovery_mutual_chap) {
        if (auto ok = check_credentials(*config.discovery_mutual_chap, "discovery mutual CHAP"); !ok) {
            return ok;
        }
        if (!config.discovery_chap) {
            return make_error("discovery mutual CHAP needs CHAP for discovery too (--discovery-chap)");
        }
        if (config.discovery_chap->secret == config.discovery_mutual_chap->secret) {
            // RFC 7143 §12.1.3, as for normal sessions below.
            return make_error("the discovery mutual CHAP secret must differ from the discovery CHAP secret");
        }
    }
    iscsi::NegotiationConfig scratch = default_target_negotiation();
    for (const auto& [key, value] : config.params) {
        if (auto ok = iscsi::set_negotiation_key(scratch, key, value); !ok) {
            return ok;
        }
    }
    std::set<std::string> names;
    for (const TargetConfig& target : config.targets) {
        if (!names.insert(target.iqn).second) {
            return make_error(fmt::format("target {} is configured twice", target.iqn));
        }
        if (auto ok = validate_target(target); !ok) {
            return ok;
        }
    }
    return {};
}

// ---- Command-line overlay --------------------------------------------------------------------------

Result<void> apply_overlay(ServerConfig& config, const ConfigOverlay& overlay,
                           const backstore::Registry& backstores) {
    for (const std::string& listen : overlay.listen) {
        // A portal already in the file is not added twice; but HOST:0 asks for a fresh ephemeral
        // port each time it is given, so two of them are two portals (the multipath tests use that).
        bool ephemeral = listen.size() >= 2 && listen.compare(listen.size() - 2, 2, ":0") == 0;
        bool present = !ephemeral && std::any_of(config.portals.begin(), config.portals.end(),
                                                 [&](const PortalConfig& p) { return p.listen == listen; });
        if (!present) {
            uint16_t tpgt = 1;
            for (const PortalConfig& p : config.portals) {
                tpgt = std::max<uint16_t>(tpgt, uint16_t(p.tpgt + 1));
            }
            config.portals.push_back({listen, tpgt});
        }
    }
    if (config.portals.empty()) {
        config.portals.push_back({"127.0.0.1:3260", 1});
    }
    if (overlay.reactors) {
        config.reactors = *overlay.reactors;
    }
    if (overlay.isns_server) {
        config.isns.server = *overlay.isns_server;
    }
    if (overlay.isns_entity) {
        config.isns.entity = *overlay.isns_entity;
    }
    if (overlay.isns_esi_interval) {
        config.isns.esi_interval = *overlay.isns_esi_interval;
    }
    if (overlay.max_erl) {
        config.params["ErrorRecoveryLevel"] = std::to_string(*overlay.max_erl);
    }
    if (overlay.state_dir) {
        config.state_dir = *overlay.state_dir;
    }

    // The targets the per-target flags apply to.
    std::vector<TargetConfig*> scope;
    if (!overlay.iqn.empty()) {
        auto it = std::find_if(config.targets.begin(), config.targets.end(),
                               [&](const TargetConfig& t) { return t.iqn == overlay.iqn; });
        if (it == config.targets.end()) {
            TargetConfig created;
            created.iqn = overlay.iqn;
            config.targets.push_back(std::move(created));
            it = std::prev(config.targets.end());
        }
        scope.push_back(&*it);
        if (overlay.alias) {
            it->alias = *overlay.alias;
        }
        uint64_t next = 0;
        for (const LunConfig& lun : it->luns) {
            next = std::max(next, lun.lun + 1);
        }
        // A daemon writes the configuration it serves, flags included: the same --lun given again at
        // the next start is that LUN, not a second one, even when the LUN was removed or resized
        // through the control socket since (then the file says what the administrator wants). Each
        // recorded flag answers for one flag only, so `--lun memory:1G --lun memory:1G` is still two
        // LUNs. A file written before the record existed: a LUN with the same spec answers instead.
        std::multiset<std::string> taken(it->lun_flags.begin(), it->lun_flags.end());
        const bool legacy = it->lun_flags.empty();
        if (legacy) {
            for (const LunConfig& lun : it->luns) {
                taken.insert(lun.spec);
            }
        }
        for (size_t i = 0; i < overlay.luns.size(); ++i) {
            const std::string& text = overlay.luns[i];
            if (i >= overlay.lun_numbers.size()) {
                if (auto same = taken.find(text); same != taken.end()) {
                    taken.erase(same);
                    if (legacy) {
                        it->lun_flags.push_back(text);
                    }
                    continue;
                }
            }
            uint64_t number = i < overlay.lun_numbers.size() ? overlay.lun_numbers[i] : next;
            auto spec = backstores.parse(text);
            if (!spec) {
                return make_error(fmt::format("--lun {} ({}): {}", number, text, spec.error().message));
            }
            for (const LunConfig& lun : it->luns) {
                if (lun.lun == number) {
                    return make_error(fmt::format("--lun {} ({}): target {} has a LUN {} already", number,
                                                  text, it->iqn, number));
                }
            }
            it->luns.push_back({number, text, std::move(*spec)});
            it->lun_flags.push_back(text);
            next = std::max(next, number + 1);
        }
    } else {
        if (!overlay.luns.empty()) {
            return make_error("--lun needs --iqn to say which target the LUN belongs to");
        }
        if (overlay.alias) {
            return make_error("--alias needs --iqn to say which target it names");
        }
        for (TargetConfig& target : config.targets) {
            scope.push_back(&target);
        }
    }
    bool per_target = overlay.chap || overlay.mutual_chap || !overlay.allow.empty();
    if (per_target && scope.empty()) {
        return make_error(fmt::format("{} applies to targets, and the configuration defines none (add one to "
                                      "the file, or give --iqn and --lun)",
                                      overlay.chap          ? "--chap"
                                      : overlay.mutual_chap ? "--mutual-chap"
                                                            : "--allow"));
    }
    for (TargetConfig* target : scope) {
        if (overlay.chap) {
            target->chap = overlay.chap;
        }
        if (overlay.mutual_chap) {
            target->mutual_chap = overlay.mutual_chap;
        }
        for (const AclEntry& entry : overlay.allow) {
            // As for --lun: an entry the file has already (written by the daemon) is not repeated.
            bool present = std::any_of(target->acl.begin(), target->acl.end(), [&](const AclEntry& e) {
                return e.initiator == entry.initiator && e.read_only == entry.read_only &&
                       e.luns == entry.luns && e.networks.size() == entry.networks.size() &&
                       std::equal(
                           e.networks.begin(), e.networks.end(), entry.networks.begin(),
                           [](const Cidr& a, const Cidr& b) { return a.to_string() == b.to_string(); });
            });
            if (!present) {
                target->acl.push_back(entry);
            }
        }
    }
    if (overlay.discovery_chap) {
        config.discovery_chap = overlay.discovery_chap;
    }
    if (overlay.discovery_mutual_chap) {
        config.discovery_mutual_chap = overlay.discovery_mutual_chap;
    }
    // One target, so one identity to prove: an initiator that uses mutual CHAP for its sessions
    // (iscsi-ls with target_user=) asks for it in discovery too. Not when its secret is the discovery
    // one: equal secrets would make the target an oracle.
    if (!config.discovery_mutual_chap && config.discovery_chap && config.targets.size() == 1 &&
        config.targets[0].mutual_chap &&
        config.targets[0].mutual_chap->secret != config.discovery_chap->secret) {
        config.discovery_mutual_chap = config.targets[0].mutual_chap;
    }

    Limits& limits = config.limits;
    if (overlay.queue_depth) {
        limits.queue_depth = *overlay.queue_depth;
    }
    if (overlay.max_transfer_bytes) {
        limits.max_transfer_bytes = *overlay.max_transfer_bytes;
    }
    if (overlay.login_timeout) {
        limits.login_timeout = *overlay.login_timeout;
    }
    if (overlay.nop_interval) {
        limits.nop_interval = *overlay.nop_interval;
    }
    if (overlay.nop_timeout) {
        limits.nop_timeout = *overlay.nop_timeout;
    }
    limits.nop_timeout = std::max(limits.nop_timeout, limits.nop_interval);
    if (overlay.sanitize_bytes_per_second) {
        limits.sanitize_bytes_per_second = *overlay.sanitize_bytes_per_second;
    }
    if (overlay.buffer_memory) {
        limits.buffer_memory = *overlay.buffer_memory;
    }
    return {};
}

// ---- Configuration file ----------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

// Unknown keys are errors: a misspelt "alow" must not silently open a target to everyone.
Result<void> only_keys(const json& object, std::initializer_list<std::string_view> allowed,
                       std::string_view where) {
    if (!object.is_object()) {
        return make_error(fmt::format("{}: expected an object", where));
    }
    for (auto it = object.begin(); it != object.end(); ++it) {
        bool known = false;
        for (std::string_view key : allowed) {
            known = known || it.key() == key;
        }
        if (!known) {
            return make_error(fmt::format("{}: unknown key \"{}\"", where, it.key()));
        }
    }
    return {};
}

// "USER:SECRET", or {"user": ..., "secret": ...}, or {"user": ..., "secret_file": PATH} (a file holding
// the secret alone; relative to the configuration file's directory), which keeps the secret out of a
// file that is often world-readable or kept in version control.
Result<iscsi::ChapCredentials> read_credentials(const json& value, std::string_view where,
                                                const std::string& base_dir) {
    if (value.is_string()) {
        auto parsed = iscsi::parse_chap_credentials(value.get<std::string>());
        if (!parsed) {
            return make_error(fmt::format("{}: {}", where, parsed.error().message));
        }
        return *parsed;
    }
    if (auto ok = only_keys(value, {"user", "secret", "secret_file"}, where); !ok) {
        return ok.error();
    }
    bool has_secret = value.contains("secret") && value["secret"].is_string();
    bool has_file = value.contains("secret_file") && value["secret_file"].is_string();
    if (!value.contains("user") || !value["user"].is_string() || has_secret == has_file) {
        return make_error(fmt::format(
            "{}: needs a \"user\" and either a \"secret\" or a \"secret_file\" (strings)", where));
    }
    iscsi::ChapCredentials credentials{value["user"].get<std::string>(), {}};
    if (has_secret) {
        credentials.secret = value["secret"].get<std::string>();
        return credentials;
    }
    credentials.secret_file = value["secret_file"].get<std::string>();
    std::string path = credentials.secret_file;
    if (!path.empty() && path.front() != '/' && !base_dir.empty()) {
        path = base_dir + "/" + path;
    }
    std::string warning;
    auto secret = read_secret_file(path, &warning);
    if (!secret) {
        return make_error(fmt::format("{}: secret_file {}", where, secret.error().message));
    }
    if (!warning.empty()) {
        log_warn("{}: {}", where, warning);
    }
    credentials.secret = std::move(*secret);
    return credentials;
}

Result<AclEntry> read_acl_entry(const json& value, std::string_view where) {
    if (value.is_string()) {
        return parse_allow(value.get<std::string>());
    }
    if (auto ok = only_keys(value, {"initiator", "networks", "luns", "read_only"}, where); !ok) {
        return ok.error();
    }
    AclEntry entry;
    if (!value.contains("initiator") || !value["initiator"].is_string()) {
        return make_error(fmt::format("{}: needs an \"initiator\" name", where));
    }
    entry.initiator = value["initiator"].get<std::string>();
    if (value.contains("networks")) {
        for (const json& network : value["networks"]) {
            if (!network.is_string()) {
                return make_error(fmt::format("{}: networks are strings like \"10.0.0.0/8\"", where));
            }
            auto cidr = parse_cidr(network.get<std::string>());
            if (!cidr) {
                return make_error(fmt::format("{}: {}", where, cidr.error().message));
            }
            entry.networks.push_back(*cidr);
        }
    }
    if (value.contains("luns")) {
        std::vector<uint64_t> luns;
        for (const json& lun : value["luns"]) {
            if (!lun.is_number_unsigned()) {
                return make_error(fmt::format("{}: luns are numbers", where));
            }
            luns.push_back(lun.get<uint64_t>());
        }
        entry.luns = std::move(luns);
    }
    if (value.contains("read_only")) {
        if (!value["read_only"].is_boolean()) {
            return make_error(fmt::format("{}: read_only is true or false", where));
        }
        entry.read_only = value["read_only"].get<bool>();
    }
    return entry;
}

Result<std::map<std::string, std::string, std::less<>>> read_params(const json& value,
                                                                    const std::string& where) {
    if (!value.is_object()) {
        return make_error(where + ": an object of iSCSI keys, e.g. {\"ImmediateData\": \"No\"}");
    }
    std::map<std::string, std::string, std::less<>> params;
    for (auto it = value.begin(); it != value.end(); ++it) {
        if (it.value().is_string()) {
            params[it.key()] = it.value().get<std::string>();
        } else if (it.value().is_number_unsigned()) {
            params[it.key()] = std::to_string(it.value().get<uint64_t>());
        } else {
            return make_error(fmt::format("{}: \"{}\" is a string or a number", where, it.key()));
        }
    }
    return params;
}

Result<uint64_t> read_unsigned(const json& object, const char* key, std::string_view where) {
    const json& value = object[key];
    if (value.is_number_unsigned()) {
        return value.get<uint64_t>();
    }
    if (value.is_string()) {
        auto size = parse_size(value.get<std::string>());
        if (size) {
            return *size;
        }
    }
    return make_error(fmt::format("{}: \"{}\" must be a non-negative number", where, key));
}

Result<ServerConfig> read_config(const json& root, const backstore::Registry& backstores,
                                 const std::string& base_dir) {
    if (auto ok = only_keys(
            root, {"listen", "reactors", "state_dir", "limits", "discovery", "isns", "params", "targets"},
            "config");
        !ok) {
        return ok.error();
    }
    ServerConfig config;
    config.negotiation = default_target_negotiation();
    if (root.contains("listen")) {
        uint16_t tpgt = 1;
        const json& listen = root["listen"];
        if (listen.is_string()) {
            config.portals.push_back({listen.get<std::string>(), tpgt});
        } else if (listen.is_array()) {
            for (const json& portal : listen) {
                if (!portal.is_string()) {
                    return make_error("config: \"listen\" holds strings like \"127.0.0.1:3260\"");
                }
                config.portals.push_back({portal.get<std::string>(), tpgt++});
            }
        } else {
            return make_error("config: \"listen\" is a string or a list of strings");
        }
    }
    // No "listen": apply_overlay() adds 127.0.0.1:3260 unless --listen gives a portal.
    if (root.contains("reactors")) {
        auto n = read_unsigned(root, "reactors", "config");
        if (!n) {
            return n.error();
        }
        config.reactors = unsigned(*n);
    }
    if (root.contains("state_dir")) {
        if (!root["state_dir"].is_string()) {
            return make_error("config: \"state_dir\" is a path");
        }
        config.state_dir = root["state_dir"].get<std::string>();
    }
    if (root.contains("limits")) {
        const json& limits = root["limits"];
        if (auto ok = only_keys(limits,
                                {"queue_depth", "max_transfer", "login_timeout_ms", "nop_interval_ms",
                                 "nop_timeout_ms", "max_connections", "max_login_connections",
                                 "max_login_connections_per_source", "max_sessions_per_initiator",
                                 "sanitize_rate", "buffer_memory"},
                                "config limits");
            !ok) {
            return ok.error();
        }
        struct Field {
            const char* key;
            uint64_t* out;
        };
        uint64_t queue_depth = config.limits.queue_depth, max_transfer = config.limits.max_transfer_bytes;
        uint64_t login_ms = uint64_t(config.limits.login_timeout.count());
        uint64_t nop_interval = uint64_t(config.limits.nop_interval.count());
        uint64_t nop_timeout = uint64_t(config.limits.nop_timeout.count());
        uint64_t max_conn = config.limits.max_connections, max_login = config.limits.max_login_connections;
        uint64_t per_initiator = config.limits.max_sessions_per_initiator;
        uint64_t per_source = config.limits.max_login_connections_per_source;
        uint64_t sanitize_rate = config.limits.sanitize_bytes_per_second;
        uint64_t buffer_memory = config.limits.buffer_memory;
        for (Field field :
             {Field{"queue_depth", &queue_depth}, Field{"max_transfer", &max_transfer},
              Field{"login_timeout_ms", &login_ms}, Field{"nop_interval_ms", &nop_interval},
              Field{"nop_timeout_ms", &nop_timeout}, Field{"max_connections", &max_conn},
              Field{"max_login_connections", &max_login}, Field{"max_sessions_per_initiator", &per_initiator},
              Field{"max_login_connections_per_source", &per_source}, Field{"sanitize_rate", &sanitize_rate},
              Field{"buffer_memory", &buffer_memory}}) {
            if (limits.contains(field.key)) {
                auto value = read_unsigned(limits, field.key, "config limits");
                if (!value) {
                    return value.error();
                }
                *field.out = *value;
            }
        }
        if (queue_depth < 1 || queue_depth > 4096) {
            return make_error("config limits: queue_depth is 1 to 4096");
        }
        if (max_transfer < 4096 || max_transfer > (64u << 20)) {
            return make_error("config limits: max_transfer is 4K to 64M");
        }
        if (login_ms < 100 || login_ms > 3600000) {
            // 0 dropped every connection before its first PDU.
            return make_error("config limits: login_timeout_ms is 100 to 3600000");
        }
        // Zero in these made a target that refuses every login, or every second connection, without
        // saying why at start.
        for (auto [key, value] : {std::pair<const char*, uint64_t>{"max_connections", max_conn},
                                  {"max_login_connections", max_login},
                                  {"max_sessions_per_initiator", per_initiator}}) {
            if (value < 1 || value > UINT32_MAX) {
                return make_error(fmt::format("config limits: {} is 1 to {}", key, UINT32_MAX));
            }
        }
        config.limits.queue_depth = uint32_t(queue_depth);
        config.limits.max_transfer_bytes = uint32_t(max_transfer);
        config.limits.login_timeout = std::chrono::milliseconds(login_ms);
        config.limits.nop_interval = std::chrono::milliseconds(nop_interval);
        config.limits.nop_timeout = std::chrono::milliseconds(std::max(nop_timeout, nop_interval));
        config.limits.max_connections = uint32_t(max_conn);
        config.limits.max_login_connections = uint32_t(max_login);
        config.limits.max_sessions_per_initiator = uint32_t(per_initiator);
        if (per_source < 1) {
            return make_error("config limits: max_login_connections_per_source is at least 1");
        }
        config.limits.max_login_connections_per_source = uint32_t(std::min<uint64_t>(per_source, UINT32_MAX));
        config.limits.sanitize_bytes_per_second = sanitize_rate;
        if (buffer_memory < (uint64_t(1) << 20)) {
            return make_error("config limits: buffer_memory is at least 1M");
        }
        config.limits.buffer_memory = buffer_memory;
    }
    if (root.contains("isns")) {
        // "isns": "HOST[:PORT]", or {"server": "HOST[:PORT]", "entity": "ID", "esi_interval": S}
        const json& isns = root["isns"];
        if (isns.is_string()) {
            config.isns.server = isns.get<std::string>();
        } else if (isns.is_object()) {
            if (auto ok = only_keys(isns, {"server", "entity", "esi_interval"}, "config isns"); !ok) {
                return ok.error();
            }
            for (const char* key : {"server", "entity"}) {
                if (isns.contains(key) && !isns[key].is_string()) {
                    return make_error(fmt::format("config isns: \"{}\" is a string", key));
                }
            }
            config.isns.server = isns.value("server", std::string());
            config.isns.entity = isns.value("entity", std::string());
            if (isns.contains("esi_interval")) {
                auto seconds = read_unsigned(isns, "esi_interval", "config isns");
                if (!seconds || *seconds > 86400) {
                    return make_error("config isns: \"esi_interval\" is 0 to 86400 seconds");
                }
                config.isns.esi_interval = uint32_t(*seconds);
            }
        } else {
            return make_error("config: \"isns\" is \"HOST[:PORT]\" or an object with \"server\"");
        }
        if (config.isns.server.empty()) {
            return make_error("config isns: \"server\" names the iSNS server, HOST[:PORT]");
        }
    }
    if (root.contains("discovery")) {
        const json& discovery = root["discovery"];
        if (auto ok = only_keys(discovery, {"chap", "mutual_chap"}, "config discovery"); !ok) {
            return ok.error();
        }
        if (discovery.contains("chap")) {
            auto credentials = read_credentials(discovery["chap"], "config discovery chap", base_dir);
            if (!credentials) {
                return credentials.error();
            }
            config.discovery_chap = *credentials;
        }
        if (discovery.contains("mutual_chap")) {
            auto credentials =
                read_credentials(discovery["mutual_chap"], "config discovery mutual_chap", base_dir);
            if (!credentials) {
                return credentials.error();
            }
            config.discovery_mutual_chap = *credentials;
        }
    }
    if (root.contains("params")) {
        auto params = read_params(root["params"], "config params");
        if (!params) {
            return params.error();
        }
        config.params = std::move(*params);
    }
    if (!root.contains("targets") || !root["targets"].is_array()) {
        return make_error("config: \"targets\" must be a list of targets (it may be empty: [])");
    }
    for (const json& t : root["targets"]) {
        std::string where = "config target";
        if (auto ok = only_keys(
                t, {"iqn", "alias", "luns", "chap", "mutual_chap", "allow", "portals", "params", "lun_flags"},
                where);
            !ok) {
            return ok.error();
        }
        TargetConfig target;
        if (!t.contains("iqn") || !t["iqn"].is_string()) {
            return make_error("config target: needs an \"iqn\"");
        }
        target.iqn = t["iqn"].get<std::string>();
        where = "config target " + target.iqn;
        if (t.contains("alias")) {
            if (!t["alias"].is_string()) {
                return make_error(where + ": \"alias\" is a string");
            }
            target.alias = t["alias"].get<std::string>();
        }
        if (!t.contains("luns") || !t["luns"].is_array()) {
            return make_error(where + ": \"luns\" must list LUN specs");
        }
        uint64_t next = 0;
        for (const json& l : t["luns"]) {
            LunConfig lun;
            if (l.is_string()) {
                lun.lun = next;
                lun.spec = l.get<std::string>();
            } else {
                if (auto ok = only_keys(l, {"lun", "spec", "id"}, where + " lun"); !ok) {
                    return ok.error();
                }
                if (l.contains("id")) {
                    auto id = l["id"].is_string() ? parse_lun_id(l["id"].get<std::string>())
                                                  : Result<uint64_t>(make_error("not a string"));
                    if (!id) {
                        return make_error(fmt::format("{} lun: \"id\" is 16 hex digits, as ispaced writes it "
                                                      "({})",
                                                      where, id.error().message));
                    }
                    lun.id = *id;
                }
                if (!l.contains("spec") || !l["spec"].is_string()) {
                    return make_error(where + ": a LUN object needs a \"spec\"");
                }
                lun.spec = l["spec"].get<std::string>();
                lun.lun = next;
                if (l.contains("lun")) {
                    auto number = read_unsigned(l, "lun", where);
                    if (!number) {
                        return number.error();
                    }
                    lun.lun = *number;
                }
            }
            auto spec = backstores.parse(lun.spec);
            if (!spec) {
                return make_error(
                    fmt::format("{} lun {} ({}): {}", where, lun.lun, lun.spec, spec.error().message));
            }
            lun.device = std::move(*spec);
            next = lun.lun + 1;
            target.luns.push_back(std::move(lun));
        }
        if (t.contains("chap")) {
            auto credentials = read_credentials(t["chap"], where + " chap", base_dir);
            if (!credentials) {
                return credentials.error();
            }
            target.chap = *credentials;
        }
        if (t.contains("mutual_chap")) {
            auto credentials = read_credentials(t["mutual_chap"], where + " mutual_chap", base_dir);
            if (!credentials) {
                return credentials.error();
            }
            target.mutual_chap = *credentials;
        }
        if (t.contains("allow")) {
            if (!t["allow"].is_array()) {
                return make_error(where + ": \"allow\" is a list");
            }
            for (const json& a : t["allow"]) {
                auto entry = read_acl_entry(a, where + " allow");
                if (!entry) {
                    return entry.error();
                }
                target.acl.push_back(std::move(*entry));
            }
        }
        if (t.contains("portals")) {
            if (!t["portals"].is_array()) {
                return make_error(where + ": \"portals\" is a list of HOST:PORT strings");
            }
            for (const json& portal : t["portals"]) {
                if (!portal.is_string()) {
                    return make_error(where + ": \"portals\" is a list of HOST:PORT strings");
                }
                target.portals.push_back(portal.get<std::string>());
            }
        }
        if (t.contains("lun_flags")) {
            if (!t["lun_flags"].is_array() || t["lun_flags"].size() > 4096) {
                return make_error(where + ": \"lun_flags\" is a list of --lun specs (written by ispaced)");
            }
            for (const json& flag : t["lun_flags"]) {
                if (!flag.is_string()) {
                    return make_error(where +
                                      ": \"lun_flags\" is a list of --lun specs (written by ispaced)");
                }
                target.lun_flags.push_back(flag.get<std::string>());
            }
        }
        if (t.contains("params")) {
            auto params = read_params(t["params"], where + " params");
            if (!params) {
                return params.error();
            }
            target.params = std::move(*params);
        }
        config.targets.push_back(std::move(target));
    }
    return config;
}

} // namespace

Result<ServerConfig> load_config_file(const std::string& path, const backstore::Registry& backstores) {
    std::ifstream in(path);
    if (!in) {
        return make_error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    }
    std::stringstream stream;
    stream << in.rdbuf();
    std::string text = stream.str();
    json root;
    try {
        root = json::parse(text, nullptr, true, true); // comments allowed
    } catch (const json::parse_error& e) {
        // The library's message names a byte offset; an editor wants a line and a column.
        size_t offset = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
        size_t line = 1 + size_t(std::count(text.begin(), text.begin() + ptrdiff_t(offset), '\n'));
        size_t line_start = text.rfind('\n', offset == 0 ? 0 : offset - 1);
        size_t column = offset - (line_start == std::string::npos || offset == 0 ? 0 : line_start + 1) + 1;
        std::string what = e.what();
        // "[json.exception.parse_error.101] parse error at line 3, column 5: syntax error while parsing
        // object - unexpected '}'; expected string literal": keep what follows the position.
        if (size_t colon = what.find(": "); colon != std::string::npos) {
            what = what.substr(colon + 2);
        }
        return make_error(fmt::format("{}:{}:{}: not valid JSON: {}", path, line, column, what));
    }
    std::string base_dir;
    if (size_t slash = path.rfind('/'); slash != std::string::npos) {
        base_dir = path.substr(0, slash == 0 ? 1 : slash);
    }
    auto config = config_from_json(root, backstores, base_dir);
    if (!config) {
        return make_error(fmt::format("{}: {}", path, config.error().message));
    }
    return config;
}

Result<ServerConfig> config_from_json(const nlohmann::json& root, const backstore::Registry& backstores,
                                      const std::string& base_dir) {
    auto config = read_config(root, backstores, base_dir);
    if (!config) {
        return config;
    }
    if (auto resolved = resolve_negotiation(*config); !resolved) {
        return resolved.error();
    }
    return config;
}

std::string lun_id_text(uint64_t id) {
    return fmt::format("{:016x}", id);
}

Result<uint64_t> parse_lun_id(std::string_view text) {
    if (text.starts_with("0x") || text.starts_with("0X")) {
        text.remove_prefix(2);
    }
    if (text.empty() || text.size() > 16 ||
        text.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) {
        return make_error(fmt::format("'{}' is not up to 16 hex digits", text), EINVAL);
    }
    uint64_t id = std::stoull(std::string(text), nullptr, 16);
    if (id == 0) {
        return make_error("0 is not an identifier (it means: derive one from the device)", EINVAL);
    }
    return id;
}

Result<void> resolve_negotiation(ServerConfig& config) {
    iscsi::NegotiationConfig base = default_target_negotiation();
    for (const auto& [key, value] : config.params) {
        if (auto ok = iscsi::set_negotiation_key(base, key, value); !ok) {
            return ok;
        }
    }
    // MaxBurstLength above the transfer limit would only invite R2Ts we never send: the defaults are
    // held under it, an explicit value above it is refused.
    auto within_transfer = [&](iscsi::NegotiationConfig& n, const auto& params,
                               std::string_view where) -> Result<void> {
        uint32_t limit = config.limits.max_transfer_bytes;
        for (std::string_view key : {"MaxBurstLength", "FirstBurstLength"}) {
            auto it = params.find(key);
            uint32_t value = key == "MaxBurstLength" ? n.max_burst_length : n.first_burst_length;
            if (it != params.end() && value > limit) {
                return make_error(
                    fmt::format("{}{}={} is above the largest transfer of one command ({} bytes, "
                                "limits.max_transfer)",
                                where, key, it->second, limit),
                    EINVAL);
            }
        }
        n.max_burst_length = std::min(n.max_burst_length, limit);
        n.first_burst_length = std::min(n.first_burst_length, n.max_burst_length);
        return {};
    };
    if (auto ok = within_transfer(base, config.params, ""); !ok) {
        return ok;
    }
    base.alias = config.negotiation.alias;
    config.negotiation = base;
    for (TargetConfig& target : config.targets) {
        target.negotiation.reset();
        if (target.params.empty()) {
            continue;
        }
        iscsi::NegotiationConfig own = base;
        for (const auto& [key, value] : target.params) {
            if (auto ok = iscsi::set_negotiation_key(own, key, value); !ok) {
                return make_error(fmt::format("target {}: {}", target.iqn, ok.error().message), EINVAL);
            }
        }
        if (auto ok = within_transfer(own, target.params, fmt::format("target {}: ", target.iqn)); !ok) {
            return ok;
        }
        target.negotiation = own;
    }
    return {};
}

// ---- Writing it back -------------------------------------------------------------------------------

namespace {

json credentials_json(const iscsi::ChapCredentials& credentials, bool show_secrets) {
    if (!credentials.secret_file.empty()) {
        // The reference, as the administrator wrote it: the secret stays in its own file.
        return json{{"user", credentials.user}, {"secret_file", credentials.secret_file}};
    }
    return json{{"user", credentials.user},
                {"secret", show_secrets ? credentials.secret : std::string(masked_secret)}};
}

json acl_json(const AclEntry& entry) {
    if (entry.networks.size() <= 1 && !entry.luns && !entry.read_only) {
        // The short form --allow takes: "IQN" or "IQN@CIDR".
        return entry.networks.empty() ? json(entry.initiator)
                                      : json(entry.initiator + "@" + entry.networks[0].to_string());
    }
    json out{{"initiator", entry.initiator}};
    if (!entry.networks.empty()) {
        json networks = json::array();
        for (const Cidr& network : entry.networks) {
            networks.push_back(network.to_string());
        }
        out["networks"] = networks;
    }
    if (entry.luns) {
        out["luns"] = *entry.luns;
    }
    if (entry.read_only) {
        out["read_only"] = true;
    }
    return out;
}

json params_json(const std::map<std::string, std::string, std::less<>>& params) {
    json out = json::object();
    for (const auto& [key, value] : params) {
        out[key] = value;
    }
    return out;
}

} // namespace

nlohmann::json config_to_json(const ServerConfig& config, bool show_secrets) {
    json root = json::object();
    json listen = json::array();
    for (const PortalConfig& portal : config.portals) {
        if (portal.shared) {
            listen.push_back(portal.listen);
        }
    }
    if (!listen.empty()) {
        root["listen"] = listen;
    }
    if (config.reactors) {
        root["reactors"] = config.reactors;
    }
    if (!config.state_dir.empty()) {
        root["state_dir"] = config.state_dir;
    }
    const Limits defaults;
    json limits = json::object();
    auto limit = [&](const char* key, uint64_t value, uint64_t default_value) {
        if (value != default_value) {
            limits[key] = value;
        }
    };
    limit("queue_depth", config.limits.queue_depth, defaults.queue_depth);
    limit("max_transfer", config.limits.max_transfer_bytes, defaults.max_transfer_bytes);
    limit("login_timeout_ms", uint64_t(config.limits.login_timeout.count()),
          uint64_t(defaults.login_timeout.count()));
    limit("nop_interval_ms", uint64_t(config.limits.nop_interval.count()),
          uint64_t(defaults.nop_interval.count()));
    limit("nop_timeout_ms", uint64_t(config.limits.nop_timeout.count()),
          uint64_t(defaults.nop_timeout.count()));
    limit("max_connections", config.limits.max_connections, defaults.max_connections);
    limit("max_login_connections", config.limits.max_login_connections, defaults.max_login_connections);
    limit("max_sessions_per_initiator", config.limits.max_sessions_per_initiator,
          defaults.max_sessions_per_initiator);
    limit("sanitize_rate", config.limits.sanitize_bytes_per_second, defaults.sanitize_bytes_per_second);
    if (!limits.empty()) {
        root["limits"] = limits;
    }
    if (config.discovery_chap || config.discovery_mutual_chap) {
        json discovery = json::object();
        if (config.discovery_chap) {
            discovery["chap"] = credentials_json(*config.discovery_chap, show_secrets);
        }
        if (config.discovery_mutual_chap) {
            discovery["mutual_chap"] = credentials_json(*config.discovery_mutual_chap, show_secrets);
        }
        root["discovery"] = discovery;
    }
    if (!config.params.empty()) {
        root["params"] = params_json(config.params);
    }
    if (!config.isns.server.empty()) {
        json isns{{"server", config.isns.server}};
        if (!config.isns.entity.empty()) {
            isns["entity"] = config.isns.entity;
        }
        if (config.isns.esi_interval != IsnsSettings{}.esi_interval) {
            isns["esi_interval"] = config.isns.esi_interval;
        }
        root["isns"] = isns;
    }
    json targets = json::array();
    for (const TargetConfig& target : config.targets) {
        json t{{"iqn", target.iqn}};
        if (!target.alias.empty()) {
            t["alias"] = target.alias;
        }
        json luns = json::array();
        for (const LunConfig& lun : target.luns) {
            // A kind that takes a secret in its spec (a remote LUN's CHAP) masks it in describe().
            json l{{"lun", lun.lun},
                   {"spec", show_secrets || !lun.device ? lun.spec : lun.device->describe()}};
            if (lun.id) {
                l["id"] = lun_id_text(*lun.id);
            }
            luns.push_back(l);
        }
        t["luns"] = luns;
        if (!target.portals.empty()) {
            t["portals"] = target.portals;
        }
        if (target.chap) {
            t["chap"] = credentials_json(*target.chap, show_secrets);
        }
        if (target.mutual_chap) {
            t["mutual_chap"] = credentials_json(*target.mutual_chap, show_secrets);
        }
        if (!target.acl.empty()) {
            json allow = json::array();
            for (const AclEntry& entry : target.acl) {
                allow.push_back(acl_json(entry));
            }
            t["allow"] = allow;
        }
        if (!target.params.empty()) {
            t["params"] = params_json(target.params);
        }
        // Bookkeeping of the daemon, written to its file only: a remote LUN's flag may hold a secret.
        if (show_secrets && !target.lun_flags.empty()) {
            t["lun_flags"] = target.lun_flags;
        }
        targets.push_back(t);
    }
    root["targets"] = targets;
    return root;
}

} // namespace ispace::iscsi_target
