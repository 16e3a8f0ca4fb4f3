// `ispace ls`, `ispace inq`, `ispace readcap`: discovery and what a LUN says about itself.
#include "cli.hpp"

#include "common/bytes.hpp"
#include "scsi_spec/opcodes.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ispace::cli {

namespace {

std::string hex(std::span<const uint8_t> bytes) {
    std::string s;
    for (uint8_t b : bytes) {
        s += fmt::format("{:02x}", b);
    }
    return s;
}

using nlohmann::json;

// `--json` output: one document on stdout, indented as the admin verbs print theirs. Field names are
// part of the interface (docs/cli.md lists them): add, never rename.
void print_json(const json& document) {
    fmt::print("{}\n", document.dump(2, ' ', false, json::error_handler_t::replace));
}

// WP of a LUN as `ls` and `readcap` show it; null (unknown) when MODE SENSE failed.
json read_only_of(Session& s, uint64_t lun) {
    auto wp = s.write_protected(lun);
    return wp ? json(*wp) : json();
}

std::string access_text(const json& read_only) {
    return read_only.is_boolean() ? (read_only.get<bool>() ? "ro" : "rw") : "access unknown";
}

// What `ls` knows of one LUN: number, type, vendor/product, and for a connected block device its
// capacity and whether it is write protected. "error" when a query failed.
json describe_lun(Session& s, uint64_t lun) {
    json entry = {{"lun", lun}};
    auto inq = s.inquiry(lun);
    if (!inq) {
        entry["error"] = inq.error().message;
        return entry;
    }
    entry["device_type"] = initiator::device_type_name(inq->device_type);
    entry["device_type_code"] = inq->device_type;
    entry["connected"] = inq->peripheral_qualifier == 0;
    entry["vendor"] = inq->vendor;
    entry["product"] = inq->product;
    // Block devices: disk, optical, RBC.
    namespace dt = scsi::device_type;
    uint8_t t = inq->device_type;
    bool block = t == dt::direct_access_block || t == dt::optical_memory ||
                 t == dt::simplified_direct_access || t == dt::cd_dvd;
    if (!block || inq->peripheral_qualifier != 0) {
        return entry;
    }
    auto cap = s.read_capacity(lun);
    if (!cap) {
        entry["error"] = cap.error().message;
        return entry;
    }
    entry["blocks"] = cap->blocks;
    entry["block_size"] = cap->block_size;
    entry["bytes"] = cap->bytes();
    entry["thin"] = cap->thin;
    entry["read_only"] = read_only_of(s, lun);
    return entry;
}

void print_lun(const json& l, const std::string& indent) {
    uint64_t lun = l["lun"].get<uint64_t>();
    if (!l.contains("device_type")) {
        fmt::print("{}lun {:<3} error: {}\n", indent, lun, l["error"].get<std::string>());
        return;
    }
    std::string type = l["device_type"].get<std::string>();
    if (!l["connected"].get<bool>()) {
        type += " (not connected)";
    }
    std::string what = fmt::format("{} {}", l["vendor"].get<std::string>(), l["product"].get<std::string>());
    if (l.contains("error")) {
        fmt::print("{}lun {:<3} {:<10} {:<28} size unknown ({})\n", indent, lun, type, what,
                   l["error"].get<std::string>());
    } else if (l.contains("bytes")) {
        auto bytes = l["bytes"].get<uint64_t>();
        fmt::print("{}lun {:<3} {:<10} {:<28} size {} ({} bytes)  block size {}  {}\n", indent, lun, type,
                   what, human_bytes(double(bytes)), bytes, l["block_size"].get<uint32_t>(),
                   access_text(l["read_only"]));
    } else {
        fmt::print("{}lun {:<3} {:<10} {}\n", indent, lun, type, what);
    }
}

int run_ls(GlobalOptions& global, const std::string& url_text, bool as_json) {
    if (is_isns_url(url_text)) {
        return run_ls_isns(global, url_text, as_json);
    }
    auto url = initiator::parse_url(url_text);
    if (!url) {
        error(url.error().message);
        return exit_usage;
    }
    Initiator ini(initiator_options(global));
    initiator::DiscoveryOptions d;
    d.host = url->host;
    d.port = url->port;
    d.chap = url->chap;
    auto targets = ini.discover(d);
    if (!targets) {
        error(fmt::format("discovery at {}: {}", url->portal(), targets.error().message));
        return exit_failure;
    }
    json document = {
        {"portal", url->portal()}, {"initiator", global.initiator_name}, {"targets", json::array()}};
    if (targets->empty()) {
        if (as_json) {
            print_json(document);
        } else {
            fmt::print("no targets at {} for {}\n", url->portal(), global.initiator_name);
        }
        return exit_ok;
    }
    bool ok = true;
    bool shown = false;
    for (const auto& t : *targets) {
        if (!url->target_name.empty() && t.name != url->target_name) {
            continue;
        }
        shown = true;
        json target = {{"iqn", t.name}, {"addresses", t.addresses}, {"luns", json::array()}};
        if (!as_json) {
            // Printed as found: a slow target does not hold back what is known of the others.
            fmt::print("{}\n", t.name);
            for (const auto& a : t.addresses) {
                fmt::print("  portal {}\n", a);
            }
        }
        // Log in through the portal we were given: a target's advertised addresses may not be
        // reachable from here (NAT, a wildcard listener).
        Url target_url = *url;
        target_url.target_name = t.name;
        auto session = open_session(ini, target_url, SessionKnobs{});
        if (!session) {
            ok = false;
            target["error"] = session.error().message;
        } else if (auto luns = (*session)->report_luns(); !luns) {
            ok = false;
            target["error"] = luns.error().message;
        } else {
            for (uint64_t lun : *luns) {
                json entry = describe_lun(**session, lun);
                ok = ok && !entry.contains("error");
                if (!as_json) {
                    print_lun(entry, "  ");
                }
                target["luns"].push_back(std::move(entry));
            }
        }
        if (session) {
            (*session)->close();
        }
        if (target.contains("error")) {
            if (as_json) {
                error(fmt::format("{}: {}", t.name, target["error"].get<std::string>()));
            } else {
                fmt::print("  error: {}\n", target["error"].get<std::string>());
            }
        }
        document["targets"].push_back(std::move(target));
    }
    if (!shown) {
        error(fmt::format("{} does not offer {}", url->portal(), url->target_name));
        return exit_failure;
    }
    if (as_json) {
        // A LUN that could not be described is in the document with its "error"; say so on stderr too,
        // so that a script reading only the exit status and stderr is not left guessing.
        for (const json& target : document["targets"]) {
            for (const json& l : target["luns"]) {
                if (l.contains("error")) {
                    error(fmt::format("{} LUN {}: {}", target["iqn"].get<std::string>(),
                                      l["lun"].get<uint64_t>(), l["error"].get<std::string>()));
                }
            }
        }
        print_json(document);
    }
    return ok ? exit_ok : exit_failure;
}

// A session to the LUN a URL names, or the exit status to return (usage or failure, already said).
struct LunSession {
    std::optional<Url> url;
    std::unique_ptr<Initiator> initiator;
    std::shared_ptr<Session> session;
    int status = exit_ok;
};

LunSession open_lun(GlobalOptions& global, const std::string& url_text) {
    LunSession out;
    auto url = parse_lun_url(url_text);
    if (!url) {
        error(url.error().message);
        out.status = exit_usage;
        return out;
    }
    out.url = *url;
    out.initiator = std::make_unique<Initiator>(initiator_options(global));
    auto session = open_session(*out.initiator, *url, SessionKnobs{});
    if (!session) {
        error(session.error().message);
        out.status = exit_failure;
        return out;
    }
    out.session = *session;
    return out;
}

// The designation descriptors of a Device Identification page (SPC-5 §7.7.6): code set, type, length,
// identifier. Binary identifiers in hex, ASCII ones as text.
json designators(const std::vector<uint8_t>& p) {
    json out = json::array();
    size_t i = 4;
    while (i + 4 <= p.size()) {
        uint8_t code_set = p[i] & 0x0f;
        uint8_t type = p[i + 1] & 0x0f;
        size_t len = p[i + 3];
        if (i + 4 + len > p.size()) {
            break;
        }
        std::span<const uint8_t> id(p.data() + i + 4, len);
        const char* names[] = {"vendor",     "T10",      "EUI-64",    "NAA",       "rel. port",
                               "port group", "LU group", "MD5 LU id", "SCSI name", "protocol port"};
        std::string name = type < 10 ? names[type] : fmt::format("type {}", type);
        std::string value = code_set == 1 ? hex(id) : std::string(id.begin(), id.end());
        while (!value.empty() && (value.back() == '\0' || value.back() == ' ')) {
            value.pop_back();
        }
        out.push_back({{"type", name}, {"value", value}});
        i += 4 + len;
    }
    return out;
}

int run_inq(GlobalOptions& global, const std::string& url_text, bool as_json) {
    LunSession ls = open_lun(global, url_text);
    if (!ls.session) {
        return ls.status;
    }
    Session& s = *ls.session;
    const Url& url = *ls.url;
    uint64_t lun = *url.lun;
    auto inq = s.inquiry(lun);
    if (!inq) {
        error(inq.error().message);
        return exit_failure;
    }
    if (inq->peripheral_qualifier != 0) {
        // SPC-5 §6.7.2: qualifier 011b means no logical unit is there (001b: one could be, but none is
        // connected). Either way nothing can be done with it: a script must not take it for a LUN.
        error(fmt::format("{} has no LUN {} (INQUIRY peripheral qualifier {}{})", url.target_name, lun,
                          inq->peripheral_qualifier,
                          inq->peripheral_qualifier == 3 ? ": no logical unit" : ": not connected"));
        return exit_failure;
    }
    json d = {{"iqn", url.target_name},
              {"lun", lun},
              {"device_type", initiator::device_type_name(inq->device_type)},
              {"device_type_code", inq->device_type},
              {"vendor", inq->vendor},
              {"product", inq->product},
              {"revision", inq->revision},
              {"removable", inq->removable},
              {"version", inq->version}};
    auto pages = s.inquiry_vpd(lun, scsi::vpd::supported_pages);
    std::vector<uint8_t> supported;
    if (pages && pages->size() > 4) {
        supported.assign(pages->begin() + 4, pages->end());
        d["vpd_pages"] = supported;
    }
    auto has = [&](uint8_t p) { return std::find(supported.begin(), supported.end(), p) != supported.end(); };
    if (has(scsi::vpd::unit_serial_number)) {
        if (auto serial = s.unit_serial_number(lun)) {
            d["serial"] = *serial;
        }
    }
    if (has(scsi::vpd::device_identification)) {
        if (auto page = s.inquiry_vpd(lun, scsi::vpd::device_identification)) {
            d["designators"] = designators(*page);
        }
    }
    if (has(scsi::vpd::block_limits)) {
        if (auto limits = s.block_limits(lun)) {
            d["max_transfer_blocks"] = limits->max_transfer_blocks;
            d["optimal_transfer_blocks"] = limits->optimal_transfer_blocks;
            d["max_unmap_blocks"] = limits->max_unmap_blocks;
        }
    }
    if (as_json) {
        print_json(d);
        return exit_ok;
    }
    fmt::print("target:        {}\n", url.target_name);
    fmt::print("lun:           {}\n", lun);
    fmt::print("device type:   {} ({:#04x})\n", initiator::device_type_name(inq->device_type),
               inq->device_type);
    fmt::print("vendor:        {}\n", inq->vendor);
    fmt::print("product:       {}\n", inq->product);
    fmt::print("revision:      {}\n", inq->revision);
    fmt::print("removable:     {}\n", inq->removable ? "yes" : "no");
    fmt::print("SPC version:   {:#04x}\n", inq->version);
    if (d.contains("vpd_pages")) {
        std::string list;
        for (uint8_t p : supported) {
            list += fmt::format("{}{:02x}", list.empty() ? "" : " ", p);
        }
        fmt::print("VPD pages:     {}\n", list);
    }
    if (d.contains("serial")) {
        fmt::print("serial:        {}\n", d["serial"].get<std::string>());
    }
    for (const json& id : d.value("designators", json::array())) {
        fmt::print("designator:    {}: {}\n", id["type"].get<std::string>(), id["value"].get<std::string>());
    }
    if (d.contains("max_transfer_blocks")) {
        fmt::print("max transfer:  {} blocks\n", d["max_transfer_blocks"].get<uint32_t>());
        fmt::print("opt. transfer: {} blocks\n", d["optimal_transfer_blocks"].get<uint32_t>());
        if (d["max_unmap_blocks"].get<uint32_t>() != 0) {
            fmt::print("max unmap:     {} blocks\n", d["max_unmap_blocks"].get<uint32_t>());
        }
    }
    return exit_ok;
}

int run_readcap(GlobalOptions& global, const std::string& url_text, bool as_json) {
    LunSession ls = open_lun(global, url_text);
    if (!ls.session) {
        return ls.status;
    }
    uint64_t lun = *ls.url->lun;
    auto cap = ls.session->read_capacity(lun);
    if (!cap) {
        error(cap.error().message);
        return exit_failure;
    }
    json read_only = read_only_of(*ls.session, lun);
    if (as_json) {
        print_json({{"iqn", ls.url->target_name},
                    {"lun", lun},
                    {"blocks", cap->blocks},
                    {"block_size", cap->block_size},
                    {"bytes", cap->bytes()},
                    {"logical_blocks_per_physical_block", 1u << cap->physical_exponent},
                    {"thin", cap->thin},
                    {"read_only", read_only}});
        return exit_ok;
    }
    fmt::print("blocks:        {}\n", cap->blocks);
    fmt::print("block size:    {}\n", cap->block_size);
    fmt::print("size:          {} bytes ({})\n", cap->bytes(), human_bytes(double(cap->bytes())));
    if (cap->physical_exponent != 0) {
        fmt::print("physical:      {} logical blocks per physical block\n", 1u << cap->physical_exponent);
    }
    fmt::print("thin:          {}\n", cap->thin ? "yes" : "no");
    fmt::print("read-only:     {}\n",
               read_only.is_boolean() ? (read_only.get<bool>() ? "yes (write protected)" : "no") : "unknown");
    return exit_ok;
}

} // namespace

Runner add_ls(CLI::App& app, GlobalOptions& global) {
    auto* cmd = app.add_subcommand(
        "ls", "Discover a portal's targets and list their LUNs (type, size, block size, ro/rw)");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url,
                    "iscsi://[user%secret@]HOST[:PORT] (optionally /IQN to list one target), or "
                    "isns://HOST[:PORT] to ask an iSNS server")
        ->required();
    cmd->footer(
        "Example:\n  ispace ls iscsi://192.0.2.10\n  ispace ls -i iqn.2026-01.com.example:host1 "
        "iscsi://192.0.2.10:3261\n\nSendTargets discovery, then a login to each target for REPORT LUNS, "
        "INQUIRY and READ CAPACITY(16).\n"
        "With isns://HOST[:PORT] (port 3205 by default): the targets the iSNS server's discovery domains "
        "let this initiator (-i) see, with their portals.");
    auto as_json = std::make_shared<bool>(false);
    cmd->add_flag("--json", *as_json, "Print the answer as JSON (fields in docs/cli.md)");
    return [&global, url, as_json] { return run_ls(global, *url, *as_json); };
}

Runner add_inq(CLI::App& app, GlobalOptions& global) {
    auto* cmd = app.add_subcommand("inq", "Show a LUN's INQUIRY data and vital product data pages");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")->required();
    cmd->footer("Example:\n  ispace inq iscsi://192.0.2.10/iqn.2026-01.com.example:store/1");
    auto as_json = std::make_shared<bool>(false);
    cmd->add_flag("--json", *as_json, "Print the answer as JSON (fields in docs/cli.md)");
    return [&global, url, as_json] { return run_inq(global, *url, *as_json); };
}

Runner add_readcap(CLI::App& app, GlobalOptions& global) {
    auto* cmd = app.add_subcommand("readcap",
                                   "Show a LUN's capacity (READ CAPACITY(16)) and whether it is read-only");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")->required();
    cmd->footer("Example:\n  ispace readcap iscsi://192.0.2.10/iqn.2026-01.com.example:store/1");
    auto as_json = std::make_shared<bool>(false);
    cmd->add_flag("--json", *as_json, "Print the answer as JSON (fields in docs/cli.md)");
    return [&global, url, as_json] { return run_readcap(global, *url, *as_json); };
}

} // namespace ispace::cli
