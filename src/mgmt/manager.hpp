// mgmt::Manager: the daemon's declarative configuration and the methods of the control socket.
//
// It holds the configuration the daemon serves (the file, the flags over it, and every change made
// since) and keeps three things in step: the running catalog (mgmt::Runtime), that configuration, and
// the file. A change is checked completely first (a bad request changes nothing), applied live (no
// session is dropped that the change does not concern), then written with write_file_atomically().
// Changes are serialised here: two `ispace` commands at once run one after the other, each on the
// result of the other, so neither is lost.
//
// What is persisted is the whole configuration in force, flags included: the next start with the same
// --config serves what ran, with the same LUN identities (VPD 0x83) and ACLs. Flags given again at that
// start add nothing twice (apply_overlay skips a --lun, --listen or --allow the file has already).
#pragma once

#include "common/result.hpp"
#include "iscsi_target/config.hpp"
#include "mgmt/json_rpc.hpp"
#include "mgmt/runtime.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace ispace::mgmt {

// The configuration ispaced starts from: `path` (when given and present; a missing file is an empty
// configuration, created on the first change) with `overlay` over it, negotiation resolved and every
// portal a target names listed to be bound.
Result<iscsi_target::ServerConfig> load_configuration(const std::string& path,
                                                      const iscsi_target::ConfigOverlay& overlay,
                                                      const backstore::Registry& backstores);

struct ManagerOptions {
    std::string config_path;             // empty: changes are live only, nothing is written
    iscsi_target::ConfigOverlay overlay; // the flags, applied again over the file on reload()
    std::chrono::milliseconds session_wait{5000};
};

class Manager {
public:
    Manager(Runtime& runtime, ManagerOptions options);
    Manager(const Manager&) = delete;
    Manager& operator=(const Manager&) = delete;

    // The configuration serve() was given; LUNs without a pinned identity get the one their device
    // gave them, so that it is written with the first change.
    void adopt(iscsi_target::ServerConfig served);

    // One request line in, one response line out ("" for a notification). Never throws.
    std::string handle(std::string_view line);
    // One method by name (what handle() runs after reading the envelope).
    Result<nlohmann::json> call(std::string_view method, const nlohmann::json& params);

    // SIGHUP: reads the file again, applies the flags over it and applies the difference. The changes
    // made, or why nothing was.
    Result<nlohmann::json> reload();

    // The methods call() knows, for `ispace` and the documentation.
    static std::vector<std::string_view> methods();

private:
    using json = nlohmann::json;
    Result<json> target_create(const json& params);
    Result<json> target_delete(const json& params);
    Result<json> portal_add(const json& params);
    Result<json> portal_remove(const json& params);
    Result<json> lun_add(const json& params);
    Result<json> lun_remove(const json& params);
    Result<json> lun_resize(const json& params);
    Result<json> acl_add(const json& params);
    Result<json> acl_remove(const json& params);
    Result<json> chap_set(const json& params);
    Result<json> session_list(const json& params);
    Result<json> session_show(const json& params);
    Result<json> session_close(const json& params);
    Result<json> param_set(const json& params);
    Result<json> config_show(const json& params);
    Result<json> config_apply(const json& params);
    Result<json> status(const json& params);
    Result<json> log_set(const json& params);

    // With _mutex held.
    iscsi_target::TargetConfig* find_locked(std::string_view iqn);
    Result<iscsi_target::TargetConfig*> existing_locked(std::string_view iqn);
    // The shape of each method that changes one target's settings (ACL, CHAP): `edit` changes a copy
    // of the target or refuses; the copy is checked (validate_target), put in force for logins to come
    // and persisted. A refusal at any step changes nothing. The answer is what `edit` returned.
    Result<nlohmann::json>
    change_target_locked(std::string_view iqn,
                         const std::function<Result<nlohmann::json>(iscsi_target::TargetConfig&)>& edit);
    // New settings of a target for logins to come (its LUNs stay as they are).
    Result<void> push_target_settings(const iscsi_target::TargetConfig& target);
    Result<void> push_live_settings();
    // Makes the bound portals those of `wanted`: the others stop listening (sessions that came through
    // them go on), each kept one serves every target or only those that name it as `wanted` says. The
    // changes made, as text for an answer.
    Result<json> sync_portals_locked(const std::vector<iscsi_target::PortalConfig>& wanted);
    // Writes the configuration; the error says the change is in force but not saved.
    Result<void> persist_locked();
    // Applies `next` as the difference from the configuration in force.
    // allow_shrink: a LUN may get smaller (its data past the new end is lost); otherwise that is refused
    // before anything changes.
    Result<json> apply_locked(iscsi_target::ServerConfig next, bool allow_shrink);
    Result<json> done(json result);

    Runtime& _runtime;
    ManagerOptions _options;
    std::mutex _mutex;
    iscsi_target::ServerConfig _config;
};

} // namespace ispace::mgmt
