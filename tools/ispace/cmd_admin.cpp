// ispace's administration commands: they talk to a running ispaced over its control socket
// (--control PATH or $ISPACE_CONTROL; JSON-RPC 2.0, one request per line, see mgmt/json_rpc.hpp).
// Each command is one request; the daemon checks everything, so the errors printed here are its own.
#include "cli.hpp"

#include "mgmt/control_socket.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace ispace::cli {
namespace {

using json = nlohmann::json;

struct AdminOptions {
    std::string control;
    bool json_output = false;
};

AdminOptions& admin() {
    static AdminOptions options;
    return options;
}

std::string control_path() {
    if (!admin().control.empty()) {
        return admin().control;
    }
    if (const char* env = std::getenv("ISPACE_CONTROL"); env != nullptr && env[0] != '\0') {
        return env;
    }
    return "/run/ispace/ispaced.sock";
}

// Sends one request; prints the daemon's error and returns nullopt on failure.
std::optional<json> rpc(const std::string& method, json params) {
    json request = {{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", std::move(params)}};
    auto line =
        mgmt::control_request(control_path(), request.dump(-1, ' ', false, json::error_handler_t::replace));
    if (!line) {
        error(line.error().message);
        return std::nullopt;
    }
    json response = json::parse(*line, nullptr, false);
    if (response.is_discarded() || !response.is_object()) {
        error("the daemon's answer is not JSON-RPC: " + line->substr(0, 200));
        return std::nullopt;
    }
    if (response.contains("error")) {
        const json& e = response["error"];
        error(e.value("message", std::string("request failed")));
        return std::nullopt;
    }
    return response.value("result", json());
}

// Aligned columns: the header, then the rows, each column as wide as its widest cell.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> width(header.size());
    for (size_t i = 0; i < header.size(); ++i) {
        width[i] = header[i].size();
        for (const auto& row : rows) {
            width[i] = std::max(width[i], i < row.size() ? row[i].size() : 0);
        }
    }
    auto print_row = [&](const std::vector<std::string>& row) {
        std::string line;
        for (size_t i = 0; i < header.size(); ++i) {
            std::string cell = i < row.size() ? row[i] : "";
            line += cell;
            if (i + 1 < header.size()) {
                line += std::string(width[i] - cell.size() + 2, ' ');
            }
        }
        while (!line.empty() && line.back() == ' ') {
            line.pop_back();
        }
        fmt::print("{}\n", line);
    };
    print_row(header);
    for (const auto& row : rows) {
        print_row(row);
    }
}

std::string text(const json& value) {
    if (value.is_string()) {
        return value.get<std::string>();
    }
    if (value.is_null()) {
        return "-";
    }
    return value.dump();
}

int report(const std::optional<json>& result, const std::string& what) {
    if (!result) {
        return exit_failure;
    }
    if (admin().json_output) {
        fmt::print("{}\n", result->dump(2));
    } else {
        fmt::print("{}\n", what);
        if (result->is_object() && result->contains("note")) {
            fmt::print("note: {}\n", text((*result)["note"]));
        }
    }
    return exit_ok;
}

void print_sessions(const json& sessions) {
    std::vector<std::vector<std::string>> rows;
    for (const json& s : sessions) {
        std::string peers;
        for (const json& c : s["connections"]) {
            peers += peers.empty() ? "" : ",";
            peers += text(c["peer"]);
        }
        const json& keys = s["keys"];
        rows.push_back({text(s["tsih"]), text(s["initiator"]), text(s["isid"]), text(s["target"]),
                        std::to_string(s["connections"].size()), peers,
                        text(keys.value("MaxBurstLength", json())),
                        text(keys.value("ImmediateData", json()))});
    }
    print_table({"TSIH", "INITIATOR", "ISID", "TARGET", "CONNS", "PEERS", "MaxBurstLength", "ImmediateData"},
                rows);
}

void print_session(const json& s) {
    std::vector<std::vector<std::string>> rows = {{"TSIH", text(s["tsih"])},
                                                  {"InitiatorName", text(s["initiator"])},
                                                  {"ISID", text(s["isid"])},
                                                  {"TargetName", text(s["target"])},
                                                  {"Tasks", text(s["tasks"])}};
    for (const auto& [key, value] : s["keys"].items()) {
        rows.push_back({key, text(value)});
    }
    print_table({"KEY", "VALUE"}, rows);
    for (const json& c : s["connections"]) {
        fmt::print("\nconnection {} from {} to {} (portal group {})\n", text(c["cid"]), text(c["peer"]),
                   text(c["local"]), text(c["portal_group"]));
        std::vector<std::vector<std::string>> keys;
        for (const auto& [key, value] : c["keys"].items()) {
            keys.push_back({key, text(value)});
        }
        for (const auto& [key, value] : c["initiator_keys"].items()) {
            keys.push_back({key + " (initiator)", text(value)});
        }
        print_table({"KEY", "VALUE"}, keys);
    }
}

void print_config(const json& config) {
    std::vector<std::vector<std::string>> luns;
    std::vector<std::vector<std::string>> acl;
    std::vector<std::vector<std::string>> targets;
    for (const json& t : config.value("targets", json::array())) {
        std::string iqn = text(t["iqn"]);
        std::string portals;
        for (const json& p : t.value("portals", json::array())) {
            portals += (portals.empty() ? "" : ",") + text(p);
        }
        targets.push_back({iqn, t.value("alias", std::string("-")), t.contains("chap") ? "yes" : "no",
                           portals.empty() ? "shared" : portals});
        for (const json& l : t.value("luns", json::array())) {
            luns.push_back({iqn, text(l["lun"]), text(l["spec"]), text(l.value("id", json()))});
        }
        for (const json& a : t.value("allow", json::array())) {
            std::string masked = "all";
            if (a.contains("luns")) {
                masked.clear();
                for (const json& n : a["luns"]) {
                    masked += (masked.empty() ? "" : ",") + text(n);
                }
            }
            acl.push_back({iqn, text(a["initiator"]), masked, a.value("read_only", false) ? "ro" : "rw"});
        }
    }
    std::string listen;
    for (const json& p : config.value("listen", json::array())) {
        listen += (listen.empty() ? "" : " ") + text(p);
    }
    fmt::print("portals: {}\n\n", listen.empty() ? "-" : listen);
    print_table({"TARGET", "ALIAS", "CHAP", "PORTALS"}, targets);
    if (!luns.empty()) {
        fmt::print("\n");
        print_table({"TARGET", "LUN", "SPEC", "ID"}, luns);
    }
    if (!acl.empty()) {
        fmt::print("\n");
        print_table({"TARGET", "INITIATOR", "LUNS", "ACCESS"}, acl);
    }
    if (config.contains("params")) {
        fmt::print("\nsession defaults: {}\n", config["params"].dump());
    }
}

void print_status(const json& s) {
    std::string portals;
    for (const json& p : s["portals"]) {
        portals += (portals.empty() ? "" : " ") + text(p);
    }
    fmt::print("portals: {}\nsessions: {}  connections: {}  reactors: {}  log level: {}\nconfig: {}\n\n",
               portals, text(s["sessions"]), text(s["connections"]), text(s["reactors"]),
               text(s["log_level"]),
               text(s["config"]).empty() ? "(none: changes are not saved)" : text(s["config"]));
    std::vector<std::vector<std::string>> rows;
    for (const json& t : s["targets"]) {
        for (const json& l : t["luns"]) {
            rows.push_back({text(t["iqn"]), text(l["lun"]), human_bytes(l["bytes"].get<double>()),
                            text(l["block_size"]), l.value("read_only", false) ? "ro" : "rw",
                            text(t["sessions"]), text(l["spec"])});
        }
        if (t["luns"].empty()) {
            rows.push_back({text(t["iqn"]), "-", "-", "-", "-", text(t["sessions"]), "-"});
        }
    }
    print_table({"TARGET", "LUN", "SIZE", "BLOCK", "ACCESS", "SESSIONS", "SPEC"}, rows);
}

Result<std::vector<uint64_t>> parse_lun_list(const std::string& list) {
    std::vector<uint64_t> out;
    std::stringstream in(list);
    std::string item;
    while (std::getline(in, item, ',')) {
        char* end = nullptr;
        errno = 0;
        unsigned long long n = std::strtoull(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || errno != 0 || item[0] == '-') {
            return make_error(
                fmt::format("--luns {}: expected LUN numbers separated by commas, e.g. 0,1", list));
        }
        out.push_back(n);
    }
    return out;
}

} // namespace

Runner add_admin(CLI::App& app, GlobalOptions& global) {
    (void)global;
    app.add_option("--control", admin().control,
                   "ispaced's control socket (default: $ISPACE_CONTROL, else /run/ispace/ispaced.sock)");
    auto chosen = std::make_shared<Runner>();
    auto json_flag = [](CLI::App* sub) {
        sub->add_flag("--json", admin().json_output, "Print the answer as JSON");
    };

    auto* target = app.add_subcommand("target", "Create or delete a target (control socket)");
    target->require_subcommand(1);
    {
        auto* create = target->add_subcommand("create", "Create a target, with no LUN yet");
        auto iqn = std::make_shared<std::string>();
        auto alias = std::make_shared<std::string>();
        create->add_option("IQN", *iqn, "The target's iSCSI name")->required();
        create->add_option("--alias", *alias, "TargetAlias shown to initiators");
        json_flag(create);
        create->callback([=] {
            *chosen = [=] {
                json p = {{"iqn", *iqn}};
                if (!alias->empty()) {
                    p["alias"] = *alias;
                }
                return report(rpc("target.create", p), "created target " + *iqn);
            };
        });
        auto* remove = target->add_subcommand("delete", "Delete a target: its sessions end, its LUNs close");
        auto iqn2 = std::make_shared<std::string>();
        remove->add_option("IQN", *iqn2, "The target's iSCSI name")->required();
        json_flag(remove);
        remove->callback([=] {
            *chosen = [=] {
                return report(rpc("target.delete", {{"iqn", *iqn2}}), "deleted target " + *iqn2);
            };
        });
    }

    auto* portal = app.add_subcommand("portal", "Add or remove a portal (control socket)");
    portal->require_subcommand(1);
    for (std::string verb : {"add", "remove"}) {
        auto* sub =
            portal->add_subcommand(verb, verb == "add" ? "Serve a target (or, without IQN, every target) on "
                                                         "HOST:PORT"
                                                       : "Stop serving a target on HOST:PORT");
        auto args = std::make_shared<std::vector<std::string>>();
        sub->add_option("ARGS", *args, "[IQN] HOST:PORT")->required()->expected(1, 2);
        json_flag(sub);
        sub->callback([=] {
            *chosen = [=] {
                json p = {{"listen", args->back()}};
                if (args->size() == 2) {
                    p["iqn"] = args->front();
                }
                return report(rpc("portal." + verb, p),
                              fmt::format("portal {} {}{}", args->back(), verb == "add" ? "added" : "removed",
                                          args->size() == 2 ? " for " + args->front() : ""));
            };
        });
    }

    auto* lun = app.add_subcommand("lun", "Add, remove or resize a LUN (control socket)");
    lun->require_subcommand(1);
    {
        auto* add = lun->add_subcommand(
            "add", "Add a LUN (the next free number) from SPEC, as --lun of ispaced takes");
        auto iqn = std::make_shared<std::string>();
        auto spec = std::make_shared<std::string>();
        auto number = std::make_shared<int64_t>(-1);
        add->add_option("IQN", *iqn, "The target")->required();
        add->add_option("SPEC", *spec, "PATH[,size=..][,thin][,ro] | memory:SIZE | null:SIZE")->required();
        add->add_option("--lun", *number, "Use this LUN number instead of the next free one");
        json_flag(add);
        add->callback([=] {
            *chosen = [=] {
                json p = {{"iqn", *iqn}, {"spec", *spec}};
                if (*number >= 0) {
                    p["lun"] = *number;
                }
                auto result = rpc("lun.add", p);
                return report(result,
                              result ? fmt::format("added LUN {} to {}", text((*result)["lun"]), *iqn) : "");
            };
        });
        auto* remove =
            lun->add_subcommand("remove", "Remove a LUN: its commands are aborted, its device closed");
        auto iqn2 = std::make_shared<std::string>();
        auto n2 = std::make_shared<uint64_t>();
        remove->add_option("IQN", *iqn2, "The target")->required();
        remove->add_option("LUN", *n2, "The LUN number")->required();
        json_flag(remove);
        remove->callback([=] {
            *chosen = [=] {
                return report(rpc("lun.remove", {{"iqn", *iqn2}, {"lun", *n2}}),
                              fmt::format("removed LUN {} of {}", *n2, *iqn2));
            };
        });
        auto* resize =
            lun->add_subcommand("resize", "Resize a LUN; initiators get a capacity unit attention");
        auto iqn3 = std::make_shared<std::string>();
        auto n3 = std::make_shared<uint64_t>();
        auto size = std::make_shared<std::string>();
        auto shrink = std::make_shared<bool>(false);
        resize->add_option("IQN", *iqn3, "The target")->required();
        resize->add_option("LUN", *n3, "The LUN number")->required();
        resize->add_option("SIZE", *size, "The new size: bytes, or with K, M, G, T")->required();
        resize->add_flag("--shrink", *shrink, "Allow a size below the current one (data past it is lost)");
        json_flag(resize);
        resize->callback([=] {
            *chosen = [=] {
                json p = {{"iqn", *iqn3}, {"lun", *n3}, {"size", *size}};
                if (*shrink) {
                    p["shrink"] = true;
                }
                return report(rpc("lun.resize", p),
                              fmt::format("resized LUN {} of {} to {}", *n3, *iqn3, *size));
            };
        });
    }

    auto* acl = app.add_subcommand("acl", "Admit or stop admitting an initiator (control socket)");
    acl->require_subcommand(1);
    {
        auto* add =
            acl->add_subcommand("add", "Admit INITIATOR (IQN or IQN@CIDR); the first entry makes the ACL "
                                       "exclusive");
        auto iqn = std::make_shared<std::string>();
        auto initiator = std::make_shared<std::string>();
        auto luns = std::make_shared<std::string>();
        auto ro = std::make_shared<bool>(false);
        add->add_option("IQN", *iqn, "The target")->required();
        add->add_option("INITIATOR", *initiator, "The initiator's iSCSI name, optionally @CIDR")->required();
        add->add_option("--luns", *luns, "Only these LUNs exist for it, e.g. 0,1");
        add->add_flag("--ro", *ro, "Every LUN is read-only for it");
        json_flag(add);
        add->callback([=] {
            *chosen = [=] {
                json p = {{"iqn", *iqn}, {"initiator", *initiator}};
                if (!luns->empty()) {
                    auto list = parse_lun_list(*luns);
                    if (!list) {
                        error(list.error().message);
                        return exit_usage;
                    }
                    p["luns"] = *list;
                }
                if (*ro) {
                    p["read_only"] = true;
                }
                return report(rpc("acl.add", p), fmt::format("{} may log in to {}", *initiator, *iqn));
            };
        });
        auto* remove = acl->add_subcommand("remove", "Remove INITIATOR's entry; its sessions end");
        auto iqn2 = std::make_shared<std::string>();
        auto initiator2 = std::make_shared<std::string>();
        remove->add_option("IQN", *iqn2, "The target")->required();
        remove->add_option("INITIATOR", *initiator2, "The initiator's iSCSI name")->required();
        json_flag(remove);
        remove->callback([=] {
            *chosen = [=] {
                return report(rpc("acl.remove", {{"iqn", *iqn2}, {"initiator", *initiator2}}),
                              fmt::format("removed {} from the ACL of {}", *initiator2, *iqn2));
            };
        });
    }

    auto* chap = app.add_subcommand("chap", "Require CHAP for a target (control socket)");
    chap->require_subcommand(1);
    {
        auto* set = chap->add_subcommand("set", "Require CHAP USER SECRET for new logins to IQN");
        auto iqn = std::make_shared<std::string>();
        auto user = std::make_shared<std::string>();
        auto secret = std::make_shared<std::string>();
        auto mutual = std::make_shared<std::vector<std::string>>();
        set->add_option("IQN", *iqn, "The target")->required();
        set->add_option("USER", *user, "The name initiators authenticate as")->required();
        set->add_option("SECRET", *secret, "Their secret (12 bytes or more)")->required();
        set->add_option("--mutual", *mutual, "USER SECRET the target proves to initiators that ask")
            ->expected(2);
        json_flag(set);
        set->callback([=] {
            *chosen = [=] {
                json p = {{"iqn", *iqn}, {"user", *user}, {"secret", *secret}};
                if (mutual->size() == 2) {
                    p["mutual_user"] = (*mutual)[0];
                    p["mutual_secret"] = (*mutual)[1];
                }
                return report(rpc("chap.set", p), fmt::format("CHAP required for {} (user {})", *iqn, *user));
            };
        });
    }

    auto* session = app.add_subcommand("session", "List, show or close sessions (control socket)");
    session->require_subcommand(1);
    {
        auto* list =
            session->add_subcommand("list", "Every session with its negotiated keys and connections");
        json_flag(list);
        list->callback([=] {
            *chosen = [=] {
                auto result = rpc("session.list", json::object());
                if (!result) {
                    return exit_failure;
                }
                if (admin().json_output) {
                    fmt::print("{}\n", result->dump(2));
                } else {
                    print_sessions(*result);
                }
                return exit_ok;
            };
        });
        auto* show = session->add_subcommand("show", "One session: every key, every connection");
        auto tsih = std::make_shared<uint64_t>();
        show->add_option("TSIH", *tsih, "The session's TSIH (from `session list`)")->required();
        json_flag(show);
        show->callback([=] {
            *chosen = [=] {
                auto result = rpc("session.show", {{"tsih", *tsih}});
                if (!result) {
                    return exit_failure;
                }
                if (admin().json_output) {
                    fmt::print("{}\n", result->dump(2));
                } else {
                    print_session(*result);
                }
                return exit_ok;
            };
        });
        auto* close = session->add_subcommand(
            "close", "End a session: its connections close, its tasks are aborted. With --connection, drop "
                     "one connection of an ErrorRecoveryLevel 2 session instead: the session and its tasks "
                     "survive (AsyncEvent 2, the initiator logs in again and reassigns them)");
        auto tsih2 = std::make_shared<uint64_t>();
        auto cid = std::make_shared<int64_t>(-1);
        close->add_option("TSIH", *tsih2, "The session's TSIH")->required();
        close->add_option("--connection", *cid, "The CID of the connection to drop (from `session show`)")
            ->check(CLI::Range(0, 65535));
        json_flag(close);
        close->callback([=] {
            *chosen = [=] {
                if (*cid < 0) {
                    return report(rpc("session.close", {{"tsih", *tsih2}}),
                                  fmt::format("closed session {}", *tsih2));
                }
                auto result = rpc("session.close", {{"tsih", *tsih2}, {"cid", *cid}});
                std::string what;
                if (result) {
                    what =
                        fmt::format("dropping connection cid {} of session {}: the initiator was told to "
                                    "wait {} s; its {} task(s) are kept {} s more for reassignment; {} "
                                    "other connection(s)",
                                    *cid, *tsih2, text((*result)["time2wait"]), text((*result)["tasks"]),
                                    text((*result)["time2retain"]), text((*result)["remaining_connections"]));
                }
                return report(result, what);
            };
        });
    }

    auto* param = app.add_subcommand("param", "Set iSCSI parameters (control socket)");
    param->require_subcommand(1);
    {
        auto* set = param->add_subcommand(
            "set",
            "KEY=VALUE as the default for new sessions (of IQN, or of every target), or, with --session, "
            "declared anew in a running session where RFC 7143 allows it (MaxRecvDataSegmentLength)");
        auto args = std::make_shared<std::vector<std::string>>();
        auto tsih = std::make_shared<int64_t>(-1);
        set->add_option("ARGS", *args, "[IQN] KEY=VALUE")->required()->expected(1, 2);
        set->add_option("--session", *tsih, "The TSIH of a running session");
        json_flag(set);
        set->callback([=] {
            *chosen = [=] {
                const std::string& kv = args->back();
                size_t eq = kv.find('=');
                if (eq == std::string::npos || eq == 0) {
                    error(fmt::format("{}: expected KEY=VALUE, e.g. ImmediateData=No", kv));
                    return exit_usage;
                }
                json p = {{"key", kv.substr(0, eq)}, {"value", kv.substr(eq + 1)}};
                if (args->size() == 2) {
                    p["iqn"] = args->front();
                }
                if (*tsih >= 0) {
                    p["session"] = *tsih;
                }
                return report(rpc("param.set", p),
                              *tsih >= 0 ? fmt::format("session {} renegotiated {}", *tsih, kv)
                                         : fmt::format("{} for new sessions{}", kv,
                                                       args->size() == 2 ? " of " + args->front() : ""));
            };
        });
    }

    auto* config = app.add_subcommand("config", "Show the configuration in force (control socket)");
    config->require_subcommand(1);
    {
        auto* show =
            config->add_subcommand("show", "The configuration as the daemon would write it (secrets masked)");
        json_flag(show);
        show->callback([=] {
            *chosen = [=] {
                auto result = rpc("config.show", json::object());
                if (!result) {
                    return exit_failure;
                }
                if (admin().json_output) {
                    fmt::print("{}\n", result->dump(2));
                } else {
                    print_config(*result);
                }
                return exit_ok;
            };
        });
    }

    auto* apply =
        app.add_subcommand("apply", "Make the daemon serve what FILE says, changing only what differs");
    {
        auto file = std::make_shared<std::string>();
        apply->add_option("FILE", *file, "A configuration file (docs/configuration.md)")->required();
        auto shrink = std::make_shared<bool>(false);
        apply->add_flag("--shrink", *shrink,
                        "Allow a LUN to get smaller than it is (the data past its new end is lost)");
        json_flag(apply);
        apply->callback([=] {
            *chosen = [=] {
                std::ifstream in(*file);
                if (!in) {
                    error(fmt::format("{}: cannot open: {}", *file, std::strerror(errno)));
                    return exit_failure;
                }
                std::stringstream content;
                content << in.rdbuf();
                json document = json::parse(content.str(), nullptr, false, true);
                if (document.is_discarded() || !document.is_object()) {
                    error(fmt::format("{}: not a JSON object (see docs/configuration.md)", *file));
                    return exit_failure;
                }
                json params = {{"config", document}};
                if (*shrink) {
                    params["shrink"] = true;
                }
                auto result = rpc("config.apply", params);
                if (!result) {
                    return exit_failure;
                }
                if (admin().json_output) {
                    fmt::print("{}\n", result->dump(2));
                    return exit_ok;
                }
                if ((*result)["changes"].empty()) {
                    fmt::print("nothing to change\n");
                }
                for (const json& change : (*result)["changes"]) {
                    fmt::print("{}\n", text(change));
                }
                for (const json& later : result->value("at_next_start", json::array())) {
                    fmt::print("{} changes at the next start\n", text(later));
                }
                return exit_ok;
            };
        });
    }

    auto* status = app.add_subcommand("status", "Portals, targets, LUNs and sessions of the daemon");
    json_flag(status);
    status->callback([=] {
        *chosen = [=] {
            auto result = rpc("status", json::object());
            if (!result) {
                return exit_failure;
            }
            if (admin().json_output) {
                fmt::print("{}\n", result->dump(2));
            } else {
                print_status(*result);
            }
            return exit_ok;
        };
    });

    auto* log = app.add_subcommand("log", "Change the daemon's log level (control socket)");
    log->require_subcommand(1);
    {
        auto* level = log->add_subcommand("level", "Set the level: trace, debug, info, warn, error or off");
        auto name = std::make_shared<std::string>();
        level->add_option("LEVEL", *name, "trace, debug, info, warn, error or off")->required();
        json_flag(level);
        level->callback([=] {
            *chosen = [=] { return report(rpc("log.set", {{"level", *name}}), "log level " + *name); };
        });
    }
    return [chosen] { return *chosen ? (*chosen)() : exit_usage; };
}

} // namespace ispace::cli
