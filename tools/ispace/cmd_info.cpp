// `ispace ls`, `ispace inq`, `ispace readcap`: discovery and what a LUN says about itself.
#include "cli.hpp"

#include "common/bytes.hpp"
#include "scsi_spec/opcodes.hpp"

#include <fmt/format.h>

namespace ispace::cli {

namespace {

std::string hex(std::span<const uint8_t> bytes) {
    std::string s;
    for (uint8_t b : bytes) {
        s += fmt::format("{:02x}", b);
    }
    return s;
}

// One line per LUN: number, type, vendor/product, and for block devices size and block size.
bool list_luns(Session& s, const std::string& indent) {
    auto luns = s.report_luns();
    if (!luns) {
        fmt::print("{}error: {}\n", indent, luns.error().message);
        return false;
    }
    bool ok = true;
    for (uint64_t lun : *luns) {
        auto inq = s.inquiry(lun);
        if (!inq) {
            fmt::print("{}lun {:<3} error: {}\n", indent, lun, inq.error().message);
            ok = false;
            continue;
        }
        std::string what = fmt::format("{} {}", inq->vendor, inq->product);
        std::string type = initiator::device_type_name(inq->device_type);
        if (inq->peripheral_qualifier != 0) {
            type += " (not connected)";
        }
        // Block devices: disk, optical, RBC.
        namespace dt = scsi::device_type;
        uint8_t t = inq->device_type;
        bool block = t == dt::direct_access_block || t == dt::optical_memory ||
                     t == dt::simplified_direct_access || t == dt::cd_dvd;
        if (block && inq->peripheral_qualifier == 0) {
            auto cap = s.read_capacity(lun);
            if (cap) {
                fmt::print("{}lun {:<3} {:<10} {:<28} size {} ({} bytes)  block size {}\n", indent, lun, type,
                           what, human_bytes(double(cap->bytes())), cap->bytes(), cap->block_size);
                continue;
            }
            fmt::print("{}lun {:<3} {:<10} {:<28} size unknown ({})\n", indent, lun, type, what,
                       cap.error().message);
            continue;
        }
        fmt::print("{}lun {:<3} {:<10} {}\n", indent, lun, type, what);
    }
    return ok;
}

int run_ls(GlobalOptions& global, const std::string& url_text) {
    if (is_isns_url(url_text)) {
        return run_ls_isns(global, url_text);
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
    if (targets->empty()) {
        fmt::print("no targets at {} for {}\n", url->portal(), global.initiator_name);
        return exit_ok;
    }
    bool ok = true;
    bool shown = false;
    for (const auto& t : *targets) {
        if (!url->target_name.empty() && t.name != url->target_name) {
            continue;
        }
        shown = true;
        fmt::print("{}\n", t.name);
        for (const auto& a : t.addresses) {
            fmt::print("  portal {}\n", a);
        }
        // Log in through the portal we were given: a target's advertised addresses may not be
        // reachable from here (NAT, a wildcard listener).
        SessionKnobs knobs;
        Url target_url = *url;
        target_url.target_name = t.name;
        auto session = open_session(ini, target_url, knobs);
        if (!session) {
            fmt::print("  error: {}\n", session.error().message);
            ok = false;
            continue;
        }
        ok = list_luns(**session, "  ") && ok;
        (*session)->close();
    }
    if (!shown) {
        error(fmt::format("{} does not offer {}", url->portal(), url->target_name));
        return exit_failure;
    }
    return ok ? exit_ok : exit_failure;
}

int run_inq(GlobalOptions& global, const std::string& url_text) {
    auto url = parse_lun_url(url_text);
    if (!url) {
        error(url.error().message);
        return exit_usage;
    }
    Initiator ini(initiator_options(global));
    auto session = open_session(ini, *url, SessionKnobs{});
    if (!session) {
        error(session.error().message);
        return exit_failure;
    }
    Session& s = **session;
    uint64_t lun = *url->lun;
    auto inq = s.inquiry(lun);
    if (!inq) {
        error(inq.error().message);
        return exit_failure;
    }
    fmt::print("target:        {}\n", url->target_name);
    fmt::print("lun:           {}\n", lun);
    fmt::print("device type:   {} ({:#04x}){}\n", initiator::device_type_name(inq->device_type),
               inq->device_type, inq->peripheral_qualifier ? ", not connected" : "");
    fmt::print("vendor:        {}\n", inq->vendor);
    fmt::print("product:       {}\n", inq->product);
    fmt::print("revision:      {}\n", inq->revision);
    fmt::print("removable:     {}\n", inq->removable ? "yes" : "no");
    fmt::print("SPC version:   {:#04x}\n", inq->version);
    auto pages = s.inquiry_vpd(lun, scsi::vpd::supported_pages);
    std::vector<uint8_t> supported;
    if (pages && pages->size() > 4) {
        supported.assign(pages->begin() + 4, pages->end());
        std::string list;
        for (uint8_t p : supported) {
            list += fmt::format("{}{:02x}", list.empty() ? "" : " ", p);
        }
        fmt::print("VPD pages:     {}\n", list);
    }
    auto has = [&](uint8_t p) { return std::find(supported.begin(), supported.end(), p) != supported.end(); };
    if (has(scsi::vpd::unit_serial_number)) {
        if (auto serial = s.unit_serial_number(lun)) {
            fmt::print("serial:        {}\n", *serial);
        }
    }
    if (has(scsi::vpd::device_identification)) {
        if (auto page = s.inquiry_vpd(lun, scsi::vpd::device_identification)) {
            // Designation descriptors: code set, type, length, identifier (SPC-4 7.8.6).
            size_t i = 4;
            const auto& p = *page;
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
                fmt::print("designator:    {}: {}\n", name, value);
                i += 4 + len;
            }
        }
    }
    if (has(scsi::vpd::block_limits)) {
        if (auto limits = s.block_limits(lun)) {
            fmt::print("max transfer:  {} blocks\n", limits->max_transfer_blocks);
            fmt::print("opt. transfer: {} blocks\n", limits->optimal_transfer_blocks);
            if (limits->max_unmap_blocks != 0) {
                fmt::print("max unmap:     {} blocks\n", limits->max_unmap_blocks);
            }
        }
    }
    return exit_ok;
}

int run_readcap(GlobalOptions& global, const std::string& url_text) {
    auto url = parse_lun_url(url_text);
    if (!url) {
        error(url.error().message);
        return exit_usage;
    }
    Initiator ini(initiator_options(global));
    auto session = open_session(ini, *url, SessionKnobs{});
    if (!session) {
        error(session.error().message);
        return exit_failure;
    }
    auto cap = (*session)->read_capacity(*url->lun);
    if (!cap) {
        error(cap.error().message);
        return exit_failure;
    }
    fmt::print("blocks:        {}\n", cap->blocks);
    fmt::print("block size:    {}\n", cap->block_size);
    fmt::print("size:          {} bytes ({})\n", cap->bytes(), human_bytes(double(cap->bytes())));
    if (cap->physical_exponent != 0) {
        fmt::print("physical:      {} logical blocks per physical block\n", 1u << cap->physical_exponent);
    }
    fmt::print("thin:          {}\n", cap->thin ? "yes" : "no");
    return exit_ok;
}

} // namespace

Runner add_ls(CLI::App& app, GlobalOptions& global) {
    auto* cmd =
        app.add_subcommand("ls", "Discover a portal's targets and list their LUNs (type, size, block size)");
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
    return [&global, url] { return run_ls(global, *url); };
}

Runner add_inq(CLI::App& app, GlobalOptions& global) {
    auto* cmd = app.add_subcommand("inq", "Show a LUN's INQUIRY data and vital product data pages");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")->required();
    cmd->footer("Example:\n  ispace inq iscsi://192.0.2.10/iqn.2026-01.com.example:store/1");
    return [&global, url] { return run_inq(global, *url); };
}

Runner add_readcap(CLI::App& app, GlobalOptions& global) {
    auto* cmd = app.add_subcommand("readcap", "Show a LUN's capacity (READ CAPACITY(16))");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")->required();
    cmd->footer("Example:\n  ispace readcap iscsi://192.0.2.10/iqn.2026-01.com.example:store/1");
    return [&global, url] { return run_readcap(global, *url); };
}

} // namespace ispace::cli
