// `ispace ls isns://HOST[:PORT]`: the targets an iSNS server (RFC 4171) lets this initiator see — its
// discovery domains decide — with the portals to log in through.
//
// Why here and not in the initiator library: discovery through iSNS is a query to another server,
// not an iSCSI exchange; the isns layer has the client, and the CLI is the one place that needs both.
#include "cli.hpp"

#include "isns/discovery.hpp"

#include <fmt/format.h>

namespace ispace::cli {

bool is_isns_url(std::string_view text) {
    return text.starts_with("isns://");
}

int run_ls_isns(GlobalOptions& global, std::string_view url_text, bool as_json) {
    std::string_view server = url_text.substr(std::string_view("isns://").size());
    while (!server.empty() && server.back() == '/') {
        server.remove_suffix(1);
    }
    if (server.empty() || server.find('/') != std::string_view::npos) {
        error(fmt::format("URL '{}': expected isns://HOST[:PORT]", url_text));
        return exit_usage;
    }
    isns::ClientOptions options;
    options.server = std::string(server);
    auto found = isns::discover_targets(options, global.initiator_name);
    if (!found) {
        error(found.error().message);
        return exit_failure;
    }
    if (as_json) {
        // The same names as `ls iscsi://... --json` where they mean the same thing (docs/cli.md).
        nlohmann::json targets = nlohmann::json::array();
        for (const isns::DiscoveredTarget& t : found->targets) {
            nlohmann::json portals = nlohmann::json::array();
            for (const isns::DiscoveredPortal& p : t.portals) {
                portals.push_back({{"address", p.to_string()},
                                   {"tpgt", p.tpgt ? nlohmann::json(*p.tpgt) : nlohmann::json()}});
            }
            targets.push_back({{"iqn", t.name}, {"alias", t.alias}, {"portals", std::move(portals)}});
        }
        nlohmann::json document = {
            {"isns", options.server}, {"initiator", global.initiator_name}, {"targets", std::move(targets)}};
        fmt::print("{}\n", document.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
        return exit_ok;
    }
    if (found->targets.empty()) {
        fmt::print("no targets at isns://{} for {}\n", options.server, global.initiator_name);
        return exit_ok;
    }
    for (const isns::DiscoveredTarget& t : found->targets) {
        fmt::print("{}{}\n", t.name, t.alias.empty() ? "" : fmt::format("  ({})", t.alias));
        for (const isns::DiscoveredPortal& p : t.portals) {
            fmt::print("  portal {}{}\n", p.to_string(), p.tpgt ? fmt::format(",{}", *p.tpgt) : "");
        }
        if (t.portals.empty()) {
            fmt::print("  (no portal registered)\n");
        }
    }
    return exit_ok;
}

} // namespace ispace::cli
