#include "mgmt/manager.hpp"

#include "common/log.hpp"
#include "common/units.hpp"
#include "iscsi/param_settings.hpp"
#include "mgmt/atomic_file.hpp"
#include "scsi/lu.hpp"
#include "scsi_spec/sam.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>

namespace ispace::mgmt {

using json = nlohmann::json;
using iscsi_target::AclEntry;
using iscsi_target::LunConfig;
using iscsi_target::PortalConfig;
using iscsi_target::ServerConfig;
using iscsi_target::TargetConfig;

namespace {

// Error codes of call() that are no errno: handle() turns them into their JSON-RPC codes.
constexpr int unknown_method = -32601;

Error invalid(std::string message) {
    return make_error(std::move(message), EINVAL);
}

// Checks a method's parameter names before anything else.
Result<void> only(const json& params, std::initializer_list<std::string_view> allowed) {
    if (auto bad = Params(params).only(allowed)) {
        return invalid(bad->message);
    }
    return {};
}

Error no_target(std::string_view iqn) {
    return make_error(fmt::format("no target {} (`ispace config show` lists the targets; `ispace target "
                                  "create {}` creates it)",
                                  iqn, iqn),
                      ENOENT);
}

json key_values(const iscsi::KeyValueList& keys) {
    json out = json::object();
    for (const iscsi::KeyValue& kv : keys) {
        out[kv.key] = kv.value;
    }
    return out;
}

json session_json(const iscsi_target::SessionInfo& s) {
    json connections = json::array();
    for (const iscsi_target::ConnectionInfo& c : s.connections) {
        connections.push_back({{"cid", c.cid},
                               {"peer", c.peer},
                               {"local", c.local},
                               {"portal_group", c.portal_group},
                               {"keys", key_values(c.keys)},
                               {"initiator_keys", key_values(c.initiator_keys)}});
    }
    return {{"tsih", s.tsih},     {"initiator", s.initiator},   {"isid", s.isid},
            {"target", s.target}, {"keys", key_values(s.keys)}, {"connections", connections},
            {"tasks", s.tasks}};
}

// A target's settings without its LUNs, as JSON: two targets whose settings differ differ here.
json settings_json(const TargetConfig& target) {
    ServerConfig one;
    TargetConfig copy = target;
    copy.luns.clear();
    one.targets.push_back(std::move(copy));
    return iscsi_target::config_to_json(one, true)["targets"];
}

// Equal as the daemon uses them and as they are written (a secret moved into a file is a change).
bool same_credentials(const std::optional<iscsi::ChapCredentials>& a,
                      const std::optional<iscsi::ChapCredentials>& b) {
    return a.has_value() == b.has_value() &&
           (!a || (a->user == b->user && a->secret == b->secret && a->secret_file == b->secret_file));
}

// Portals only a target names are bound too, unshared (they serve only the targets that name them).
void list_target_portals(ServerConfig& config) {
    for (const TargetConfig& target : config.targets) {
        for (const std::string& listen : target.portals) {
            bool known = std::any_of(config.portals.begin(), config.portals.end(),
                                     [&](const PortalConfig& p) { return p.listen == listen; });
            if (!known) {
                config.portals.push_back({listen, 0, false});
            }
        }
    }
}

// The portals of `config` that serve something: the shared ones, and those a target names. A portal
// left over when its last target lets go of it must stop listening, or it would answer logins (and
// hold its port) for nothing that the configuration says.
std::vector<PortalConfig> used_portals(const ServerConfig& config) {
    std::vector<PortalConfig> out;
    for (const PortalConfig& p : config.portals) {
        bool named = std::any_of(config.targets.begin(), config.targets.end(), [&](const TargetConfig& t) {
            return std::find(t.portals.begin(), t.portals.end(), p.listen) != t.portals.end();
        });
        if (p.shared || named) {
            out.push_back(p);
        }
    }
    return out;
}

std::vector<std::string> shared_portals(const ServerConfig& config) {
    std::vector<std::string> out;
    for (const PortalConfig& p : config.portals) {
        if (p.shared) {
            out.push_back(p.listen);
        }
    }
    return out;
}

} // namespace

Result<ServerConfig> load_configuration(const std::string& path, const iscsi_target::ConfigOverlay& overlay,
                                        const backstore::Registry& backstores) {
    ServerConfig config;
    config.negotiation = iscsi_target::default_target_negotiation();
    struct stat st {};
    if (!path.empty() && ::stat(path.c_str(), &st) == 0) {
        auto loaded = iscsi_target::load_config_file(path, backstores);
        if (!loaded) {
            return loaded;
        }
        config = std::move(*loaded);
    } else if (!path.empty() && errno != ENOENT) {
        return make_error(fmt::format("{}: {}", path, std::strerror(errno)));
    }
    if (auto applied = iscsi_target::apply_overlay(config, overlay, backstores); !applied) {
        return applied.error();
    }
    if (auto resolved = iscsi_target::resolve_negotiation(config); !resolved) {
        return resolved.error();
    }
    list_target_portals(config);
    return config;
}

Manager::Manager(Runtime& runtime, ManagerOptions options)
    : _runtime(runtime), _options(std::move(options)) {}

void Manager::adopt(ServerConfig served) {
    std::lock_guard lock(_mutex);
    _config = std::move(served);
    auto* server = _runtime.target_server();
    for (TargetConfig& target : _config.targets) {
        auto running = server ? server->find_target(target.iqn) : nullptr;
        for (LunConfig& lun : target.luns) {
            if (!lun.id && running) {
                if (auto lu = running->device->find_lu(lun.lun)) {
                    lun.id = lu->identifier();
                }
            }
        }
    }
}

std::vector<std::string_view> Manager::methods() {
    return {"target.create", "target.delete", "portal.add",  "portal.remove", "lun.add",      "lun.remove",
            "lun.resize",    "acl.add",       "acl.remove",  "chap.set",      "session.list", "session.show",
            "session.close", "param.set",     "config.show", "config.apply",  "status",       "log.set"};
}

std::string Manager::handle(std::string_view line) {
    RpcParseFailure failure;
    auto request = parse_rpc_request(line, &failure);
    if (!request) {
        return rpc_error_line(failure.id, failure.error);
    }
    Result<json> result = make_error("");
    try {
        result = call(request->method, request->params);
    } catch (const std::exception& e) {
        // A bug, not a bad request: say so rather than kill the daemon.
        log_error("control: {} failed unexpectedly: {}", request->method, e.what());
        result = Error{-1, fmt::format("internal error in {}: {}", request->method, e.what())};
    }
    if (request->notification) {
        return {};
    }
    if (!result) {
        RpcError error = rpc_error_from(result.error());
        if (result.error().code == -1) {
            error.code = rpc_error::internal_error;
        } else if (result.error().code == unknown_method) {
            error.code = rpc_error::method_not_found;
        } else if (result.error().code == ENOTRECOVERABLE) {
            error.code = rpc_error::not_saved;
        }
        return rpc_error_line(request->id, error);
    }
    return rpc_result_line(request->id, *result);
}

Result<json> Manager::call(std::string_view method, const json& params) {
    if (!params.is_object()) {
        return invalid("\"params\" must be an object");
    }
    using Method = Result<json> (Manager::*)(const json&);
    static const std::pair<std::string_view, Method> table[] = {
        {"target.create", &Manager::target_create},
        {"target.delete", &Manager::target_delete},
        {"portal.add", &Manager::portal_add},
        {"portal.remove", &Manager::portal_remove},
        {"lun.add", &Manager::lun_add},
        {"lun.remove", &Manager::lun_remove},
        {"lun.resize", &Manager::lun_resize},
        {"acl.add", &Manager::acl_add},
        {"acl.remove", &Manager::acl_remove},
        {"chap.set", &Manager::chap_set},
        {"session.list", &Manager::session_list},
        {"session.show", &Manager::session_show},
        {"session.close", &Manager::session_close},
        {"param.set", &Manager::param_set},
        {"config.show", &Manager::config_show},
        {"config.apply", &Manager::config_apply},
        {"status", &Manager::status},
        {"log.set", &Manager::log_set},
    };
    for (const auto& [name, fn] : table) {
        if (name == method) {
            return (this->*fn)(params);
        }
    }
    std::string known;
    for (std::string_view name : methods()) {
        known += known.empty() ? "" : ", ";
        known += name;
    }
    return Error{unknown_method,
                 fmt::format("unknown method \"{}\" (known: {})", method.substr(0, 64), known)};
}

TargetConfig* Manager::find_locked(std::string_view iqn) {
    for (TargetConfig& t : _config.targets) {
        if (t.iqn == iqn) {
            return &t;
        }
    }
    return nullptr;
}

Result<TargetConfig*> Manager::existing_locked(std::string_view iqn) {
    if (TargetConfig* t = find_locked(iqn)) {
        return t;
    }
    return no_target(iqn);
}

Result<void> Manager::persist_locked() {
    if (_options.config_path.empty()) {
        return {};
    }
    std::string text = iscsi_target::config_to_json(_config, true).dump(2) + "\n";
    if (auto written = write_file_atomically(_options.config_path, text, 0600); !written) {
        return make_error(fmt::format("the change is in force but was not saved: {} (fix it and repeat the "
                                      "change, or `ispace apply` the configuration)",
                                      written.error().message),
                          ENOTRECOVERABLE);
    }
    return {};
}

Result<json> Manager::sync_portals_locked(const std::vector<PortalConfig>& wanted) {
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    json changes = json::array();
    for (auto it = _config.portals.begin(); it != _config.portals.end();) {
        auto want = std::find_if(wanted.begin(), wanted.end(),
                                 [&](const PortalConfig& p) { return p.listen == it->listen; });
        if (want == wanted.end()) {
            // Sessions that came in through it go on; only new connections are refused.
            if (auto removed = _runtime.remove_portal(it->listen);
                !removed && removed.error().code != ENOENT) {
                return removed.error();
            }
            changes.push_back("portal " + it->listen + " removed");
            it = _config.portals.erase(it);
            continue;
        }
        (void)server->set_portal_shared(it->listen, want->shared);
        if (it->shared != want->shared) {
            changes.push_back(
                "portal " + it->listen +
                (want->shared ? " serves every target" : " serves only the targets that name it"));
            it->shared = want->shared;
        }
        ++it;
    }
    return changes;
}

Result<json> Manager::done(json result) {
    if (auto saved = persist_locked(); !saved) {
        return saved.error();
    }
    return result;
}

Result<json> Manager::change_target_locked(std::string_view iqn,
                                           const std::function<Result<json>(TargetConfig&)>& edit) {
    auto target = existing_locked(iqn);
    if (!target) {
        return target.error();
    }
    TargetConfig next = **target;
    auto result = edit(next);
    if (!result) {
        return result;
    }
    if (auto valid = iscsi_target::validate_target(next); !valid) {
        return invalid(valid.error().message);
    }
    **target = std::move(next);
    if (auto pushed = push_target_settings(**target); !pushed) {
        return pushed.error();
    }
    return done(std::move(*result));
}

Result<void> Manager::push_target_settings(const TargetConfig& target) {
    auto* server = _runtime.target_server();
    auto running = server ? server->find_target(target.iqn) : nullptr;
    if (!running) {
        return no_target(target.iqn);
    }
    TargetConfig copy = target;
    copy.luns.clear();
    running->set_config(std::move(copy));
    // A narrower ACL ends the sessions it no longer admits (as LIO does when a node ACL goes).
    server->close_sessions_not_admitted(target.iqn);
    return {};
}

Result<void> Manager::push_live_settings() {
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    iscsi_target::LiveSettings live;
    live.negotiation = _config.negotiation;
    live.discovery_chap = _config.discovery_chap;
    live.discovery_mutual_chap = _config.discovery_mutual_chap;
    server->set_live(std::move(live));
    return {};
}

// --- targets and portals ---

Result<json> Manager::target_create(const json& params) {
    if (auto ok = only(params, {"iqn", "alias"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    std::optional<RpcError> bad;
    auto alias = p.optional_string("alias", bad);
    if (bad) {
        return invalid(bad->message);
    }
    TargetConfig target;
    target.iqn = *iqn;
    target.alias = alias.value_or("");
    if (auto valid = iscsi_target::validate_target(target); !valid) {
        return invalid(valid.error().message);
    }
    std::lock_guard lock(_mutex);
    if (find_locked(*iqn)) {
        return make_error(fmt::format("target {} exists already (`ispace target delete {}` first to make it "
                                      "anew)",
                                      *iqn, *iqn),
                          EEXIST);
    }
    if (auto added = _runtime.add_target(target); !added) {
        return added.error();
    }
    _config.targets.push_back(target);
    return done({{"iqn", *iqn}});
}

Result<json> Manager::target_delete(const json& params) {
    if (auto ok = only(params, {"iqn"}); !ok) {
        return ok.error();
    }
    auto iqn = Params(params).string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    std::lock_guard lock(_mutex);
    if (auto found = existing_locked(*iqn); !found) {
        return found.error();
    }
    if (auto removed = _runtime.remove_target(*iqn); !removed) {
        return removed.error();
    }
    std::erase_if(_config.targets, [&](const TargetConfig& t) { return t.iqn == *iqn; });
    json result = {{"iqn", *iqn}};
    if (auto changed = sync_portals_locked(used_portals(_config)); !changed) {
        return changed.error();
    } else if (!changed->empty()) {
        result["changes"] = *changed;
    }
    return done(result);
}

Result<json> Manager::portal_add(const json& params) {
    if (auto ok = only(params, {"listen", "iqn"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto listen = p.string("listen");
    if (!listen) {
        return listen.error();
    }
    std::optional<RpcError> bad;
    auto iqn = p.optional_string("iqn", bad);
    if (bad) {
        return invalid(bad->message);
    }
    if (auto parsed = net::parse_endpoint(*listen, 3260); !parsed) {
        return invalid(fmt::format("portal {}: {} (expected HOST:PORT, e.g. 10.0.0.5:3260 or [::1]:3260)",
                                   *listen, parsed.error().message));
    }
    std::lock_guard lock(_mutex);
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    auto portal = std::find_if(_config.portals.begin(), _config.portals.end(),
                               [&](const PortalConfig& pc) { return pc.listen == *listen; });
    if (!iqn) {
        if (portal != _config.portals.end() && portal->shared) {
            return make_error(fmt::format("portal {} exists already", *listen), EEXIST);
        }
        if (portal != _config.portals.end()) {
            // Named by targets so far: it now serves every target.
            if (auto shared = server->set_portal_shared(*listen, true); !shared) {
                return shared.error();
            }
            portal->shared = true;
            return done({{"listen", *listen}});
        }
        auto bound = _runtime.add_portal(*listen);
        if (!bound) {
            return bound.error();
        }
        _config.portals.push_back({*listen, 0, true});
        return done({{"listen", *listen}, {"bound", bound->to_string()}});
    }
    auto target = existing_locked(*iqn);
    if (!target) {
        return target.error();
    }
    TargetConfig next = **target;
    if (std::find(next.portals.begin(), next.portals.end(), *listen) != next.portals.end()) {
        return make_error(fmt::format("target {} has portal {} already", *iqn, *listen), EEXIST);
    }
    next.portals.push_back(*listen);
    json result = {{"iqn", *iqn}, {"listen", *listen}};
    if (portal == _config.portals.end()) {
        auto bound = _runtime.add_portal(*listen, false);
        if (!bound) {
            return bound.error();
        }
        result["bound"] = bound->to_string();
        _config.portals.push_back({*listen, 0, false});
    }
    **target = next;
    if (auto pushed = push_target_settings(next); !pushed) {
        return pushed.error();
    }
    return done(result);
}

Result<json> Manager::portal_remove(const json& params) {
    if (auto ok = only(params, {"listen", "iqn"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto listen = p.string("listen");
    if (!listen) {
        return listen.error();
    }
    std::optional<RpcError> bad;
    auto iqn = p.optional_string("iqn", bad);
    if (bad) {
        return invalid(bad->message);
    }
    std::lock_guard lock(_mutex);
    auto* server = _runtime.target_server();
    auto portal = std::find_if(_config.portals.begin(), _config.portals.end(),
                               [&](const PortalConfig& pc) { return pc.listen == *listen; });
    if (portal == _config.portals.end() || !server) {
        return make_error(fmt::format("no portal {} (`ispace status` lists them)", *listen), ENOENT);
    }
    if (iqn) {
        auto target = existing_locked(*iqn);
        if (!target) {
            return target.error();
        }
        auto& list = (*target)->portals;
        auto it = std::find(list.begin(), list.end(), *listen);
        if (it == list.end()) {
            return make_error(fmt::format("target {} does not name portal {}", *iqn, *listen), ENOENT);
        }
        list.erase(it);
        (void)push_target_settings(**target);
    } else {
        portal->shared = false;
    }
    json result = {{"listen", *listen}};
    if (auto changed = sync_portals_locked(used_portals(_config)); !changed) {
        return changed.error();
    } else if (!changed->empty()) {
        result["changes"] = *changed;
    }
    return done(result);
}

// --- LUNs ---

Result<json> Manager::lun_add(const json& params) {
    if (auto ok = only(params, {"iqn", "spec", "lun", "id"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto spec_text = p.string("spec");
    if (!spec_text) {
        return spec_text.error();
    }
    std::optional<RpcError> bad;
    auto number = p.optional_unsigned("lun", scsi::max_lun, bad);
    auto id_text = p.optional_string("id", bad);
    if (bad) {
        return invalid(bad->message);
    }
    std::optional<uint64_t> id;
    if (id_text) {
        auto parsed = iscsi_target::parse_lun_id(*id_text);
        if (!parsed) {
            return invalid("\"id\": " + parsed.error().message);
        }
        id = *parsed;
    }
    auto spec = _runtime.backstores().parse(*spec_text);
    if (!spec) {
        return invalid(fmt::format("LUN spec {}: {}", *spec_text, spec.error().message));
    }
    std::lock_guard lock(_mutex);
    auto target = existing_locked(*iqn);
    if (!target) {
        return target.error();
    }
    auto added = _runtime.add_lun(*iqn, number, *spec_text, id);
    if (!added) {
        return added.error();
    }
    LunConfig lun{*added, *spec_text, std::move(*spec), id};
    if (auto running = _runtime.target_server()->find_target(*iqn)) {
        if (auto lu = running->device->find_lu(*added)) {
            lun.id = lu->identifier();
        }
    }
    json result = {{"iqn", *iqn}, {"lun", *added}};
    if (lun.id) {
        result["id"] = iscsi_target::lun_id_text(*lun.id);
    }
    (*target)->luns.push_back(std::move(lun));
    std::sort((*target)->luns.begin(), (*target)->luns.end(),
              [](const LunConfig& a, const LunConfig& b) { return a.lun < b.lun; });
    return done(result);
}

Result<json> Manager::lun_remove(const json& params) {
    if (auto ok = only(params, {"iqn", "lun"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto number = p.unsigned_integer("lun", scsi::max_lun);
    if (!number) {
        return number.error();
    }
    std::lock_guard lock(_mutex);
    auto target = existing_locked(*iqn);
    if (!target) {
        return target.error();
    }
    auto& luns = (*target)->luns;
    auto it = std::find_if(luns.begin(), luns.end(), [&](const LunConfig& l) { return l.lun == *number; });
    if (it == luns.end()) {
        return make_error(fmt::format("target {} has no LUN {}", *iqn, *number), ENOENT);
    }
    auto removed = _runtime.remove_lun(*iqn, *number, _options.session_wait);
    json result = {{"iqn", *iqn}, {"lun", *number}};
    if (!removed && removed.error().code != EBUSY) {
        return removed.error();
    }
    if (!removed) {
        // Out of the catalog already; its device closes when the last command leaves.
        result["note"] = removed.error().message;
    }
    luns.erase(it);
    return done(result);
}

Result<json> Manager::lun_resize(const json& params) {
    if (auto ok = only(params, {"iqn", "lun", "size", "shrink"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto number = p.unsigned_integer("lun", scsi::max_lun);
    if (!number) {
        return number.error();
    }
    std::optional<RpcError> bad;
    bool shrink = p.flag("shrink", bad);
    if (bad) {
        return invalid(bad->message);
    }
    uint64_t bytes = 0;
    if (!p.has("size")) {
        return invalid("parameter \"size\" is missing (bytes, or a size such as \"512M\")");
    }
    const json& size = p.raw("size");
    if (size.is_string()) {
        auto parsed = parse_size(size.get<std::string>());
        if (!parsed) {
            return invalid(fmt::format("size {}: {}", size.get<std::string>(), parsed.error().message));
        }
        bytes = *parsed;
    } else if (size.is_number_unsigned()) {
        bytes = size.get<uint64_t>();
    } else {
        return invalid("parameter \"size\" must be a number of bytes or a size such as \"512M\"");
    }
    if (bytes == 0) {
        return invalid("a LUN cannot be resized to 0 bytes (remove it instead)");
    }
    std::lock_guard lock(_mutex);
    auto target = existing_locked(*iqn);
    if (!target) {
        return target.error();
    }
    auto& luns = (*target)->luns;
    auto it = std::find_if(luns.begin(), luns.end(), [&](const LunConfig& l) { return l.lun == *number; });
    if (it == luns.end()) {
        return make_error(fmt::format("target {} has no LUN {}", *iqn, *number), ENOENT);
    }
    if (auto resized = _runtime.resize_lun(*iqn, *number, bytes, shrink); !resized) {
        if (resized.error().code == EINVAL && !shrink) {
            return make_error(resized.error().message + " (give --shrink to make it smaller)", EINVAL);
        }
        return resized.error();
    }
    // Written back with its new size, so that the next start asks for what it has now.
    if (std::string rewritten = it->device->with_size(bytes); !rewritten.empty()) {
        if (auto spec = _runtime.backstores().parse(rewritten)) {
            it->spec = rewritten;
            it->device = std::move(*spec);
        }
    }
    return done({{"iqn", *iqn}, {"lun", *number}, {"bytes", bytes}});
}

// --- access ---

Result<json> Manager::acl_add(const json& params) {
    if (auto ok = only(params, {"iqn", "initiator", "luns", "read_only"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto initiator = p.string("initiator");
    if (!initiator) {
        return initiator.error();
    }
    std::optional<RpcError> bad;
    bool read_only = p.flag("read_only", bad);
    if (bad) {
        return invalid(bad->message);
    }
    auto entry = iscsi_target::parse_allow(*initiator);
    if (!entry) {
        return invalid(entry.error().message);
    }
    entry->read_only = read_only;
    if (p.has("luns") && !p.raw("luns").is_null()) {
        const json& list = p.raw("luns");
        if (!list.is_array() || list.size() > 1024) {
            return invalid("parameter \"luns\" must be a list of LUN numbers, e.g. [0, 1]");
        }
        std::vector<uint64_t> luns;
        for (const json& n : list) {
            if (!n.is_number_unsigned() || n.get<uint64_t>() > scsi::max_lun) {
                return invalid(fmt::format("parameter \"luns\": LUN numbers are 0 to {}", scsi::max_lun));
            }
            luns.push_back(n.get<uint64_t>());
        }
        entry->luns = std::move(luns);
    }
    std::lock_guard lock(_mutex);
    return change_target_locked(*iqn, [&](TargetConfig& next) -> Result<json> {
        for (const AclEntry& e : next.acl) {
            if (e.initiator == entry->initiator) {
                return make_error(fmt::format("target {} has an ACL entry for {} already (`ispace acl remove "
                                              "{} {}` first to change it)",
                                              *iqn, e.initiator, *iqn, e.initiator),
                                  EEXIST);
            }
        }
        next.acl.push_back(*entry);
        return json{{"iqn", *iqn}, {"initiator", entry->initiator}};
    });
}

Result<json> Manager::acl_remove(const json& params) {
    if (auto ok = only(params, {"iqn", "initiator"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto initiator = p.string("initiator");
    if (!initiator) {
        return initiator.error();
    }
    std::lock_guard lock(_mutex);
    return change_target_locked(*iqn, [&](TargetConfig& next) -> Result<json> {
        if (std::erase_if(next.acl, [&](const AclEntry& e) { return e.initiator == *initiator; }) == 0) {
            return make_error(fmt::format("target {} has no ACL entry for {}", *iqn, *initiator), ENOENT);
        }
        json result = {{"iqn", *iqn}, {"initiator", *initiator}};
        if (next.acl.empty()) {
            result["note"] = "the ACL is empty now: every initiator may log in";
        }
        return result;
    });
}

Result<json> Manager::chap_set(const json& params) {
    if (auto ok = only(params, {"iqn", "user", "secret", "mutual_user", "mutual_secret"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto iqn = p.string("iqn");
    if (!iqn) {
        return iqn.error();
    }
    auto user = p.string("user");
    if (!user) {
        return user.error();
    }
    auto secret = p.string("secret");
    if (!secret) {
        return secret.error();
    }
    std::optional<RpcError> bad;
    auto mutual_user = p.optional_string("mutual_user", bad);
    auto mutual_secret = p.optional_string("mutual_secret", bad);
    if (bad) {
        return invalid(bad->message);
    }
    if (mutual_user.has_value() != mutual_secret.has_value()) {
        return invalid("mutual CHAP needs both a user and a secret (--mutual USER SECRET)");
    }
    std::lock_guard lock(_mutex);
    // Sessions already logged in keep going: CHAP is checked at login.
    return change_target_locked(*iqn, [&](TargetConfig& next) -> Result<json> {
        next.chap = iscsi::ChapCredentials{*user, *secret};
        if (mutual_user) {
            next.mutual_chap = iscsi::ChapCredentials{*mutual_user, *mutual_secret};
        }
        return json{{"iqn", *iqn}, {"user", *user}, {"mutual", mutual_user.has_value()}};
    });
}

// --- sessions and parameters ---

Result<json> Manager::session_list(const json& params) {
    if (auto ok = only(params, {"iqn"}); !ok) {
        return ok.error();
    }
    std::optional<RpcError> bad;
    auto iqn = Params(params).optional_string("iqn", bad);
    if (bad) {
        return invalid(bad->message);
    }
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    json out = json::array();
    for (const auto& s : server->describe_sessions(std::chrono::seconds(2))) {
        if (!iqn || s.target == *iqn) {
            out.push_back(session_json(s));
        }
    }
    return out;
}

Result<json> Manager::session_show(const json& params) {
    if (auto ok = only(params, {"tsih"}); !ok) {
        return ok.error();
    }
    auto tsih = Params(params).unsigned_integer("tsih", 65535);
    if (!tsih) {
        return tsih.error();
    }
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    for (const auto& s : server->describe_sessions(std::chrono::seconds(2))) {
        if (s.tsih == *tsih) {
            return session_json(s);
        }
    }
    return make_error(fmt::format("no session with TSIH {} (`ispace session list` shows them)", *tsih),
                      ENOENT);
}

Result<json> Manager::session_close(const json& params) {
    if (auto ok = only(params, {"tsih", "cid"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto tsih = p.unsigned_integer("tsih", 65535);
    if (!tsih) {
        return tsih.error();
    }
    std::optional<RpcError> bad;
    auto cid = p.optional_unsigned("cid", 65535, bad);
    if (bad) {
        return invalid(bad->message);
    }
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    if (cid) {
        // One connection: at ErrorRecoveryLevel 2 the session survives it (AsyncEvent 2, its tasks kept
        // for reassignment); below, the target refuses, since losing a connection ends the session there.
        // The grace lets the initiator close it itself after the message, as RFC 7143 §11.9.1 expects.
        auto dropped = server->drop_connection(uint16_t(*tsih), uint16_t(*cid), std::chrono::seconds(2),
                                               _options.session_wait);
        if (!dropped) {
            return dropped.error();
        }
        return json{{"tsih", *tsih},
                    {"cid", *cid},
                    {"time2wait", dropped->time2wait},
                    {"time2retain", dropped->time2retain},
                    {"tasks", dropped->tasks},
                    {"remaining_connections", dropped->remaining}};
    }
    if (auto closed =
            server->close_session(uint16_t(*tsih), "closed by the administrator", _options.session_wait);
        !closed) {
        return closed.error();
    }
    return json{{"tsih", *tsih}};
}

Result<json> Manager::param_set(const json& params) {
    if (auto ok = only(params, {"key", "value", "iqn", "session"}); !ok) {
        return ok.error();
    }
    Params p(params);
    auto key = p.string("key");
    if (!key) {
        return key.error();
    }
    if (!p.has("value") || !p.raw("value").is_string()) {
        return invalid("parameter \"value\" must be a string (KEY=VALUE)");
    }
    std::string value = p.raw("value").get<std::string>();
    std::optional<RpcError> bad;
    auto iqn = p.optional_string("iqn", bad);
    auto session = p.optional_unsigned("session", 65535, bad);
    if (bad) {
        return invalid(bad->message);
    }
    if (iqn && session) {
        return invalid("give a target or a session, not both");
    }
    if (session) {
        // A running session: only what RFC 7143 lets the target declare in full feature phase.
        if (auto allowed = iscsi::check_renegotiable(*key, value); !allowed) {
            return invalid(allowed.error().message);
        }
        auto* server = _runtime.target_server();
        if (!server) {
            return make_error("the daemon does not serve", ESHUTDOWN);
        }
        if (auto renegotiated =
                server->renegotiate(uint16_t(*session), {{*key, value}}, std::chrono::seconds(10));
            !renegotiated) {
            return renegotiated.error();
        }
        return json{{"session", *session}, {"key", *key}, {"value", value}};
    }
    // Defaults for new sessions: checked on a copy first (range, FirstBurstLength <= MaxBurstLength,
    // the transfer limit), so that a bad value changes nothing.
    {
        iscsi::NegotiationConfig probe = iscsi_target::default_target_negotiation();
        if (auto ok = iscsi::set_negotiation_key(probe, *key, value); !ok) {
            return invalid(ok.error().message);
        }
    }
    std::lock_guard lock(_mutex);
    ServerConfig next = _config;
    if (iqn) {
        TargetConfig* target = nullptr;
        for (TargetConfig& t : next.targets) {
            target = t.iqn == *iqn ? &t : target;
        }
        if (!target) {
            return no_target(*iqn);
        }
        target->params[*key] = value;
    } else {
        next.params[*key] = value;
    }
    if (auto resolved = iscsi_target::resolve_negotiation(next); !resolved) {
        return invalid(resolved.error().message);
    }
    _config = std::move(next);
    if (auto pushed = push_live_settings(); !pushed) {
        return pushed.error();
    }
    for (const TargetConfig& t : _config.targets) {
        if (!iqn || t.iqn == *iqn) {
            (void)push_target_settings(t);
        }
    }
    json result = {{"key", *key}, {"value", value}, {"applies_to", "new sessions"}};
    if (iqn) {
        result["iqn"] = *iqn;
    }
    return done(result);
}

// --- configuration ---

Result<json> Manager::config_show(const json& params) {
    if (auto ok = only(params, {"secrets"}); !ok) {
        return ok.error();
    }
    std::optional<RpcError> bad;
    bool secrets = Params(params).flag("secrets", bad);
    if (bad) {
        return invalid(bad->message);
    }
    std::lock_guard lock(_mutex);
    return iscsi_target::config_to_json(_config, secrets);
}

Result<json> Manager::config_apply(const json& params) {
    if (auto ok = only(params, {"config", "shrink"}); !ok) {
        return ok.error();
    }
    std::optional<RpcError> bad;
    bool shrink = Params(params).flag("shrink", bad);
    if (bad) {
        return invalid(bad->message);
    }
    if (!params.contains("config") || !params["config"].is_object()) {
        return invalid("parameter \"config\" must be a configuration document (an object; see "
                       "docs/configuration.md)");
    }
    auto next = iscsi_target::config_from_json(params["config"], _runtime.backstores());
    if (!next) {
        return invalid(next.error().message);
    }
    list_target_portals(*next);
    std::lock_guard lock(_mutex);
    return apply_locked(std::move(*next), shrink);
}

Result<json> Manager::reload() {
    if (_options.config_path.empty()) {
        return make_error("no --config file to read again", ENOENT);
    }
    auto next = load_configuration(_options.config_path, _options.overlay, _runtime.backstores());
    if (!next) {
        return next.error();
    }
    std::lock_guard lock(_mutex);
    // An edited file never shrinks a LUN by itself: that takes `ispace apply FILE --shrink`.
    return apply_locked(std::move(*next), false);
}

Result<json> Manager::apply_locked(ServerConfig next, bool allow_shrink) {
    if (auto valid = iscsi_target::validate(next); !valid) {
        return invalid(valid.error().message);
    }
    if (auto valid = iscsi::validate(next.negotiation); !valid) {
        return invalid("negotiation settings: " + valid.error().message);
    }
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    json changes = json::array();
    json restart = json::array();
    if (next.reactors != _config.reactors) {
        restart.push_back("reactors");
    }
    if (next.state_dir != _config.state_dir) {
        restart.push_back("state_dir");
    }
    if (next.isns.server != _config.isns.server || next.isns.entity != _config.isns.entity ||
        next.isns.esi_interval != _config.isns.esi_interval) {
        restart.push_back("isns");
    }
    if (iscsi_target::config_to_json(next, true).value("limits", json()) !=
        iscsi_target::config_to_json(_config, true).value("limits", json())) {
        restart.push_back("limits");
    }

    // Plan first: every LUN to open is checked (spec, path) before anything changes.
    struct LunChange {
        std::string iqn;
        // replace: the LUN's device is closed and `lun` opened in its place, under the same number.
        enum { add, remove, resize, replace } what;
        LunConfig lun;
    };
    std::vector<LunChange> lun_changes;
    std::vector<const TargetConfig*> added_targets;
    std::vector<std::string> removed_targets;
    std::vector<const TargetConfig*> changed_settings;
    for (const TargetConfig& t : _config.targets) {
        if (std::none_of(next.targets.begin(), next.targets.end(),
                         [&](const TargetConfig& n) { return n.iqn == t.iqn; })) {
            removed_targets.push_back(t.iqn);
        }
    }
    for (TargetConfig& n : next.targets) {
        TargetConfig* current = find_locked(n.iqn);
        if (!current) {
            for (const LunConfig& l : n.luns) {
                if (auto ok = l.device->check(); !ok) {
                    return invalid(fmt::format("target {} lun {}: {}", n.iqn, l.lun, ok.error().message));
                }
            }
            added_targets.push_back(&n);
            continue;
        }
        // The record of the command line's --lun flags is the daemon's, not the document's to change.
        n.lun_flags = current->lun_flags;
        if (settings_json(n) != settings_json(*current)) {
            changed_settings.push_back(&n);
        }
        for (const LunConfig& c : current->luns) {
            if (std::none_of(n.luns.begin(), n.luns.end(),
                             [&](const LunConfig& l) { return l.lun == c.lun; })) {
                lun_changes.push_back({n.iqn, LunChange::remove, c});
            }
        }
        for (LunConfig& l : n.luns) {
            auto c = std::find_if(current->luns.begin(), current->luns.end(),
                                  [&](const LunConfig& x) { return x.lun == l.lun; });
            if (c == current->luns.end()) {
                if (auto ok = l.device->check(); !ok) {
                    return invalid(fmt::format("target {} lun {}: {}", n.iqn, l.lun, ok.error().message));
                }
                lun_changes.push_back({n.iqn, LunChange::add, l});
                continue;
            }
            // A file that does not pin the identity keeps the one in force while the LUN serves the
            // same data (the same file with other options); other data is another LU, with its own.
            if (!l.id && c->device->kind() == l.device->kind() &&
                c->device->backing() == l.device->backing()) {
                l.id = c->id;
            }
            if (c->spec == l.spec && c->id == l.id) {
                continue;
            }
            // Only the size changes while the LUN serves: a resize, with its unit attention.
            if (c->id == l.id && l.device->size() && c->device->with_size(*l.device->size()) == l.spec) {
                // A smaller size loses the data past it: as `lun resize`, only when asked for.
                if (!allow_shrink) {
                    if (auto served = _runtime.luns(n.iqn)) {
                        for (const LunInfo& info : *served) {
                            if (info.lun == l.lun && *l.device->size() < info.bytes) {
                                return invalid(fmt::format(
                                    "target {} lun {}: {} bytes is smaller than the {} it serves; the data "
                                    "past it would be lost (apply with --shrink to make it smaller)",
                                    n.iqn, l.lun, *l.device->size(), info.bytes));
                            }
                        }
                    }
                }
                lun_changes.push_back({n.iqn, LunChange::resize, l});
                continue;
            }
            if (auto ok = l.device->check(); !ok) {
                return invalid(fmt::format("target {} lun {}: {}", n.iqn, l.lun, ok.error().message));
            }
            lun_changes.push_back({n.iqn, LunChange::replace, l});
        }
    }

    // Then apply, keeping _config equal to what runs after each step, so that a failure half-way
    // leaves a configuration file that says what is served.
    Result<void> failed;
    auto step_failed = [&](Error error) -> Result<json> {
        (void)persist_locked();
        return make_error(fmt::format("{} (applied before it: {})", error.message,
                                      changes.empty() ? std::string("nothing") : changes.dump()),
                          error.code);
    };
    for (const std::string& listen : shared_portals(next)) {
        auto have = std::find_if(_config.portals.begin(), _config.portals.end(),
                                 [&](const PortalConfig& p) { return p.listen == listen; });
        if (have == _config.portals.end()) {
            if (auto bound = _runtime.add_portal(listen); !bound) {
                return step_failed(bound.error());
            }
            _config.portals.push_back({listen, 0, true});
            changes.push_back("portal " + listen + " added");
        } else if (!have->shared) {
            (void)server->set_portal_shared(listen, true);
            have->shared = true;
            changes.push_back("portal " + listen + " serves every target");
        }
    }
    for (const std::string& iqn : removed_targets) {
        if (auto removed = _runtime.remove_target(iqn); !removed) {
            return step_failed(removed.error());
        }
        std::erase_if(_config.targets, [&](const TargetConfig& t) { return t.iqn == iqn; });
        changes.push_back("target " + iqn + " removed");
    }
    // Portals only targets name, before the targets that name them.
    for (const PortalConfig& p : next.portals) {
        if (!p.shared && std::none_of(_config.portals.begin(), _config.portals.end(),
                                      [&](const PortalConfig& c) { return c.listen == p.listen; })) {
            if (auto bound = _runtime.add_portal(p.listen, false); !bound) {
                return step_failed(bound.error());
            }
            _config.portals.push_back({p.listen, 0, false});
            changes.push_back("portal " + p.listen + " added");
        }
    }
    for (const TargetConfig* t : added_targets) {
        if (auto added = _runtime.add_target(*t); !added) {
            return step_failed(added.error());
        }
        TargetConfig copy = *t;
        if (auto running = server->find_target(t->iqn)) {
            for (LunConfig& l : copy.luns) {
                if (auto lu = running->device->find_lu(l.lun); lu && !l.id) {
                    l.id = lu->identifier();
                }
            }
        }
        _config.targets.push_back(std::move(copy));
        changes.push_back("target " + t->iqn + " added");
    }
    for (const TargetConfig* t : changed_settings) {
        TargetConfig* current = find_locked(t->iqn);
        std::vector<LunConfig> luns = std::move(current->luns);
        *current = *t;
        current->luns = std::move(luns);
        (void)push_target_settings(*current);
        changes.push_back("target " + t->iqn + " settings changed");
    }
    for (LunChange& change : lun_changes) {
        TargetConfig* current = find_locked(change.iqn);
        auto& luns = current->luns;
        auto same = [&](const LunConfig& l) { return l.lun == change.lun.lun; };
        std::string name = fmt::format("target {} lun {}", change.iqn, change.lun.lun);
        if (change.what == LunChange::remove) {
            auto removed = _runtime.remove_lun(change.iqn, change.lun.lun, _options.session_wait);
            if (!removed && removed.error().code != EBUSY) {
                return step_failed(removed.error());
            }
            std::erase_if(luns, same);
            changes.push_back(name + " removed");
        } else if (change.what == LunChange::add || change.what == LunChange::replace) {
            std::optional<uint64_t> before;
            if (change.what == LunChange::replace) {
                auto it = std::find_if(luns.begin(), luns.end(), same);
                before = it->id;
                auto removed = _runtime.remove_lun(change.iqn, change.lun.lun, _options.session_wait);
                if (!removed && removed.error().code != EBUSY) {
                    return step_failed(removed.error());
                }
                luns.erase(it);
            }
            auto added = _runtime.add_lun(change.iqn, change.lun.lun, change.lun.spec, change.lun.id);
            if (!added) {
                if (change.what == LunChange::replace) {
                    changes.push_back(name + " removed");
                }
                return step_failed(added.error());
            }
            if (!change.lun.id) {
                if (auto running = server->find_target(change.iqn)) {
                    if (auto lu = running->device->find_lu(change.lun.lun)) {
                        change.lun.id = lu->identifier();
                    }
                }
            }
            luns.push_back(change.lun);
            if (change.what == LunChange::add) {
                changes.push_back(name + " added");
            } else if (before == change.lun.id) {
                // Said, because its initiators see it go and come back (REPORTED LUNS DATA HAS CHANGED).
                changes.push_back(name + " re-opened as " + change.lun.device->describe() +
                                  " with the same identity (only a size changes while it serves)");
            } else {
                changes.push_back(name + " replaced by " + change.lun.device->describe() + " (new identity " +
                                  iscsi_target::lun_id_text(change.lun.id.value_or(0)) + ")");
            }
        } else {
            uint64_t bytes = *change.lun.device->size();
            if (auto resized = _runtime.resize_lun(change.iqn, change.lun.lun, bytes, true); !resized) {
                return step_failed(resized.error());
            }
            auto it = std::find_if(luns.begin(), luns.end(), same);
            *it = change.lun;
            changes.push_back(fmt::format("{} resized to {} bytes", name, bytes));
        }
        std::sort(luns.begin(), luns.end(),
                  [](const LunConfig& a, const LunConfig& b) { return a.lun < b.lun; });
    }
    // Last, the portals: those `next` does not use any more stop listening, and each that stays serves
    // every target or only those that name it, as `next` says.
    auto portals = sync_portals_locked(next.portals);
    if (!portals) {
        return step_failed(portals.error());
    }
    for (const json& change : *portals) {
        changes.push_back(change);
    }
    if (next.params != _config.params || !same_credentials(next.discovery_chap, _config.discovery_chap) ||
        !same_credentials(next.discovery_mutual_chap, _config.discovery_mutual_chap)) {
        _config.params = next.params;
        _config.negotiation = next.negotiation;
        _config.discovery_chap = next.discovery_chap;
        _config.discovery_mutual_chap = next.discovery_mutual_chap;
        (void)push_live_settings();
        changes.push_back("session defaults changed");
    }
    // What cannot change while the daemon runs is written, and takes effect at the next start.
    _config.reactors = next.reactors;
    _config.state_dir = next.state_dir;
    _config.limits = next.limits;
    _config.isns = next.isns;
    if (changes.empty() && restart.empty()) {
        return json{{"changes", changes}};
    }
    json result = {{"changes", changes}};
    if (!restart.empty()) {
        result["at_next_start"] = restart;
    }
    return done(result);
}

// --- the daemon ---

Result<json> Manager::status(const json& params) {
    if (auto ok = only(params, {}); !ok) {
        return ok.error();
    }
    auto* server = _runtime.target_server();
    if (!server) {
        return make_error("the daemon does not serve", ESHUTDOWN);
    }
    json portals = json::array();
    for (const net::Endpoint& e : server->portal_endpoints()) {
        portals.push_back(e.to_string());
    }
    auto statistics = server->statistics();
    auto sessions = server->describe_sessions(std::chrono::seconds(2));
    json targets = json::array();
    for (const auto& t : server->targets()) {
        json luns = json::array();
        if (auto listed = _runtime.luns(t->iqn)) {
            for (const LunInfo& l : *listed) {
                // The spec as the configuration has it now (a resize rewrites its size).
                std::string spec = l.spec;
                std::lock_guard lock(_mutex);
                if (TargetConfig* tc = find_locked(t->iqn)) {
                    for (const LunConfig& lc : tc->luns) {
                        spec = lc.lun == l.lun && lc.device ? lc.device->describe() : spec;
                    }
                }
                luns.push_back({{"lun", l.lun},
                                {"spec", spec},
                                {"bytes", l.bytes},
                                {"block_size", l.block_size},
                                {"read_only", l.read_only}});
            }
        }
        auto counts = statistics.targets[t->iqn];
        targets.push_back({{"iqn", t->iqn},
                           {"luns", luns},
                           {"sessions", counts.sessions},
                           {"connections", counts.connections}});
    }
    return json{{"portals", portals},
                {"targets", targets},
                {"sessions", sessions.size()},
                {"connections", server->open_connections()},
                {"reactors", server->reactors().size()},
                {"log_level", std::string(log_level_name(log_level()))},
                {"config", _options.config_path}};
}

Result<json> Manager::log_set(const json& params) {
    if (auto ok = only(params, {"level"}); !ok) {
        return ok.error();
    }
    auto name = Params(params).string("level");
    if (!name) {
        return name.error();
    }
    LogLevel level;
    if (!parse_log_level(*name, level)) {
        return invalid(fmt::format("log level {}: expected trace, debug, info, warn, error or off", *name));
    }
    LogLevel before = log_level();
    set_log_level(level);
    log_event(LogLevel::warn, "log.level",
              {log_field("from", log_level_name(before)), log_field("to", log_level_name(level))});
    return json{{"level", *name}};
}

} // namespace ispace::mgmt
