// ispace space VERB: data-spaces (docs/dataspaces.md). Every verb is one JSON request to the process that
// holds the spaces of $ISPACE_HOME (ispaced, through $ISPACE_HOME/holder.sock: mgmt/space_service.hpp).
// When none runs, attach starts one for the caller, and the other verbs run in this process instead.
#include "cli.hpp"

#include "common/units.hpp"
#include "mgmt/runtime.hpp"
#include "mgmt/space_service.hpp"
#include "volume/space_manager.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <limits.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace ispace::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool no_holder(const Error& e) {
    return e.code == ENOENT || e.code == ECONNREFUSED;
}

// The verbs that need no holder, run in this process: a runtime for the reactors and the initiator that
// reach the members, a manager over the same catalog, and the same service the holder runs.
json run_here(const std::string& home, const json& request) {
    mgmt::Runtime runtime;
    volume::SpaceManagerOptions o;
    o.home = home;
    o.initiator = &runtime.initiator();
    o.reactors = &runtime.reactors();
    o.registry = &runtime.backstores();
    auto manager = std::make_unique<volume::SpaceManager>(std::move(o));
    json answer;
    {
        mgmt::SpaceService service(*manager, nullptr, home);
        answer = service.handle(request);
    }
    manager.reset();
    runtime.stop(std::chrono::seconds(5));
    return answer;
}

std::string ispaced_path() {
    if (const char* p = std::getenv("ISPACED"); p != nullptr && *p != '\0') {
        return p;
    }
    char self[PATH_MAX] = {};
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        fs::path beside = fs::path(std::string(self, size_t(n))).parent_path() / "ispaced";
        if (::access(beside.c_str(), X_OK) == 0) {
            return beside.string();
        }
    }
    return "ispaced"; // from PATH
}

// Starts `ispaced --holder --idle-exit` for `home`, detached from us (its own session; it outlives this
// command and exits once it holds nothing), logging to $ISPACE_HOME/ispaced.log. Waits until it answers.
Result<void> start_holder(const std::string& home) {
    std::error_code ec;
    fs::create_directories(home, ec);
    std::string log = (fs::path(home) / "ispaced.log").string();
    std::string binary = ispaced_path();
    pid_t child = ::fork();
    if (child < 0) {
        return make_error(std::string("fork: ") + std::strerror(errno), errno);
    }
    if (child == 0) {
        ::setsid();
        if (::fork() != 0) {
            ::_exit(0);
        }
        int in = ::open("/dev/null", O_RDONLY);
        int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (in >= 0 && out >= 0) {
            ::dup2(in, 0);
            ::dup2(out, 1);
            ::dup2(out, 2);
        }
        const char* argv[] = {binary.c_str(), "--holder", "--idle-exit", "--home", home.c_str(), nullptr};
        ::execvp(binary.c_str(), const_cast<char* const*>(argv));
        ::_exit(127);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
        auto ping = mgmt::holder_request(home, json{{"verb", "ping"}}, std::chrono::seconds(5));
        if (ping && ping->value("ok", false)) {
            return {};
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return make_error(fmt::format("the holder ({} --holder) did not start; see {}", binary, log), ETIMEDOUT);
}

// Sends `request` to the holder, or runs it here when none runs (`here`), or starts one (`start`).
Result<json> request_space(const std::string& home, const json& request, bool here, bool start) {
    if (!here) {
        return request_holder(home, request, start);
    }
    auto answer = mgmt::holder_request(home, request);
    if (answer || !no_holder(answer.error())) {
        return answer;
    }
    return run_here(home, request);
}

// Prints the answer's error and gives the exit code, or 0 when it succeeded.
int failed(const Result<json>& answer) {
    if (!answer) {
        error(answer.error().message);
        return exit_failure;
    }
    if (!answer->value("ok", false)) {
        error(answer->value("error", std::string("the holder gave no reason")));
        return exit_failure;
    }
    return exit_ok;
}

std::string resync_line(const json& r) {
    uint64_t done = r.value("done_bytes", uint64_t(0));
    uint64_t total = r.value("total_bytes", uint64_t(0));
    double rate = r.value("rate", 0.0);
    double eta = r.value("eta_seconds", 0.0);
    double fraction = total == 0 ? 1.0 : double(done) / double(total);
    constexpr int width = 30;
    int filled = int(fraction * width);
    return fmt::format("[{}{}] {:3.0f}%  {} / {}  {}/s{}", std::string(size_t(filled), '#'),
                       std::string(size_t(width - filled), ' '), fraction * 100, human_bytes(double(done)),
                       human_bytes(double(total)), human_bytes(rate),
                       eta > 0 ? " ETA " + human_duration(eta) : std::string());
}

void print_status(const json& st) {
    if (st.value("snapshot", false)) {
        std::string origin = st.value("origin", "");
        fmt::print("snapshot {}: read-only, of {} — {}\n", st.value("name", ""),
                   origin.empty() ? "a device since deleted" : origin,
                   st.contains("device") ? "attached at " + st["device"].get<std::string>()
                                         : "not attached here");
        fmt::print("  taken at pool commit {}; maps {}, of which only it {} (what snapshot-delete frees)\n",
                   st.value("created", uint64_t(0)),
                   human_bytes(double(st.value("mapped_bytes", uint64_t(0)))),
                   human_bytes(double(st.value("unique_bytes", uint64_t(0)))));
        return;
    }
    std::string where;
    if (st.contains("device")) {
        where = "attached at " + st["device"].get<std::string>();
    } else if (st.value("open", false)) {
        where = "held by this host";
    } else if (st.value("lost", false)) {
        std::string to = st.value("lost_to", "");
        where = "LOST: another holder took it over" + (to.empty() ? std::string() : " (" + to + ")");
    } else {
        where = st.value("clean", false) ? "not held (clean)" : "not held (not closed cleanly)";
    }
    int copies = st.value("copies", 1);
    fmt::print("space {}: {}{}, {} {}, {}, block {} — {}\n", st.value("name", ""),
               std::string(st.value("thin", false) ? "thin " : "") +
                   (st.value("checksums", false) ? "checksummed " : ""),
               st.value("layout", ""), copies, copies == 1 ? "copy" : "copies",
               human_bytes(double(st.value("size", uint64_t(0)))), st.value("block_size", 0), where);
    fmt::print("  uuid {}  epoch {}  sequence {}  holder {}\n", st.value("uuid", ""), st.value("epoch", 0),
               st.value("sequence", 0), st.value("holder", ""));
    for (const json& m : st.value("members", json::array())) {
        uint64_t bad = m.value("checksum_errors", uint64_t(0));
        fmt::print("  slot {}  {:<10}  {}{}\n", m.value("slot", 0), m.value("state", ""), m.value("url", ""),
                   bad ? fmt::format("  checksum errors: {}", bad) : std::string());
    }
    const json& r = st.value("resync", json::object());
    if (r.value("running", false)) {
        fmt::print("  resync: {} — {}\n", r.value("what", ""), resync_line(r));
    }
    if (st.contains("scrub")) {
        const json& sc = st["scrub"];
        uint64_t total = sc.value("total_bytes", uint64_t(0));
        std::string state = sc.value("state", "");
        if (sc.value("running", false)) {
            fmt::print("  scrub ({}): {} of {}, {} bad block copies, {} repaired, {} with no good copy{}\n",
                       state.empty() ? "running" : state,
                       human_bytes(double(sc.value("done_bytes", uint64_t(0)))), human_bytes(double(total)),
                       sc.value("bad_blocks", 0), sc.value("repaired_blocks", 0),
                       sc.value("unrecoverable_blocks", 0),
                       sc.value("paused", false) ? " — 'ispace space scrub NAME --resume' goes on" : "");
        } else if (state == "done") {
            // The last scrub, kept in the labels.
            time_t finished = time_t(sc.value("finished", uint64_t(0)));
            uint64_t took = sc.value("finished", uint64_t(0)) - sc.value("started", uint64_t(0));
            std::tm utc{};
            gmtime_r(&finished, &utc);
            fmt::print(
                "  last scrub: finished {:04}-{:02}-{:02} {:02}:{:02} UTC after {}: {} blocks checked, {} "
                "bad block copies, {} repaired, {} with no good copy\n",
                utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min,
                human_duration(double(took)), sc.value("checked_blocks", uint64_t(0)),
                sc.value("bad_blocks", 0), sc.value("repaired_blocks", 0),
                sc.value("unrecoverable_blocks", 0));
        }
        if (uint64_t table = sc.value("table_entries_rewritten", uint64_t(0)); table != 0) {
            fmt::print("    {} entries of the members' copies of the checksum table had rotted; rewritten\n",
                       table);
        }
        if (uint64_t pages = sc.value("table_pages_rewritten", uint64_t(0)); pages != 0) {
            fmt::print("    {} pages of the members' copies of the checksum table failed their own check; "
                       "rewritten\n",
                       pages);
        }
        const json& lost = sc.contains("unrecoverable_lbas")
                               ? sc["unrecoverable_lbas"]
                               : sc.value("unrecoverable_offsets", json::array());
        if (!lost.empty()) {
            std::string list;
            for (const json& x : lost) {
                list += (list.empty() ? "" : ", ") + std::to_string(x.get<uint64_t>());
            }
            fmt::print(
                "    no good copy at {} {}{}\n", sc.contains("unrecoverable_lbas") ? "LBA" : "layout offset",
                list, sc.value("unrecoverable_blocks", uint64_t(0)) > lost.size() ? " (the first ones)" : "");
            // Attached here and holding ext4: which files those blocks belong to.
            uint32_t block_size = st.value("block_size", 0u);
            if (sc.contains("unrecoverable_lbas") && st.contains("device") && block_size != 0) {
                std::vector<uint64_t> offsets;
                for (const json& x : lost) {
                    offsets.push_back(x.get<uint64_t>() * block_size);
                }
                for (const auto& [offset, path] : ext4_files_at(st["device"].get<std::string>(), offsets)) {
                    fmt::print("    LBA {} is in file {}\n", offset / block_size, path);
                }
            }
        }
    }
    fmt::print("  dirty regions: {}  resynced since open: {}\n", st.value("dirty_regions", 0),
               human_bytes(double(r.value("copied_bytes", uint64_t(0)))));
    if (st.value("thin", false)) {
        const json& allocated = st.value("allocated_bytes", json());
        fmt::print("  thin: provisioned {}, allocated {} of a {} pool ({} clusters){}\n",
                   human_bytes(double(st.value("provisioned_bytes", uint64_t(0)))),
                   allocated.is_number() ? human_bytes(double(allocated.get<uint64_t>())) : "unknown",
                   human_bytes(double(st.value("pool_bytes", uint64_t(0)))),
                   human_bytes(double(st.value("cluster_size", uint64_t(0)))),
                   st.value("pool_full", false) ? " — POOL FULL: writes that need a new cluster fail" : "");
        if (st.contains("clone_of")) {
            fmt::print("  a clone in the pool of space {}\n", st.value("clone_of", ""));
        }
        for (const char* kind : {"snapshots", "clones"}) {
            for (const json& d : st.value(kind, json::array())) {
                fmt::print("  {} {:<24} of {:<16} mapped {:>9}  only it {:>9}  (commit {})\n",
                           kind[0] == 's' ? "snapshot" : "clone   ", d.value("name", ""),
                           d.value("origin", ""), human_bytes(double(d.value("mapped_bytes", uint64_t(0)))),
                           human_bytes(double(d.value("unique_bytes", uint64_t(0)))), d.value("created", 0));
            }
        }
    }
}

Result<uint64_t> size_option(const std::string& text, const char* flag) {
    if (text.empty()) {
        return uint64_t(0);
    }
    auto bytes = parse_size(text);
    if (!bytes) {
        return make_error(fmt::format("{} {}: {}", flag, text, bytes.error().message), EINVAL);
    }
    return bytes;
}

struct SpaceArgs {
    std::string name;
    std::string layout = "mirror";
    std::vector<std::string> members;
    std::vector<std::string> stray_members; // create: named without --member (refused, saying how)
    std::string size, chunk, region, resync_rate, cluster;
    bool thin = false;
    bool checksum = false;
    unsigned copies = 2;
    bool force = false;
    bool takeover = false;
    bool json_out = false;
    bool watch = false;
    bool pause = false;
    bool resume = false;
    std::string scrub_rate;
    bool yes = false;
    std::string old_url, new_url, url, force_from, snap, new_name;
    std::vector<std::string> urls;
};

} // namespace

Result<json> request_holder(const std::string& home, const json& request, bool start) {
    auto answer = mgmt::holder_request(home, request);
    if (!answer && start && (answer.error().code == EPIPE || answer.error().code == ECONNRESET)) {
        // The holder closed the connection without an answer: one started with --idle-exit that the
        // previous command left holding nothing is on its way out (it took the connection before it
        // stopped listening). It undoes whatever it held as it goes, so wait until it is gone and
        // start a new one, as when none runs.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (std::chrono::steady_clock::now() < deadline) {
            auto ping = mgmt::holder_request(home, json{{"verb", "ping"}}, std::chrono::seconds(1));
            if (ping && ping->value("ok", false)) {
                answer = mgmt::holder_request(home, request); // another command started a new one
                break;
            }
            if (!ping && no_holder(ping.error())) {
                answer = ping;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    if (answer || !no_holder(answer.error()) || !start) {
        return answer;
    }
    if (auto started = start_holder(home); !started) {
        return started.error();
    }
    return mgmt::holder_request(home, request);
}

Runner add_space(CLI::App& app, GlobalOptions& /*global*/) {
    auto* space =
        app.add_subcommand("space", "Data-spaces: volumes over LUNs of many targets (docs/dataspaces.md)");
    space->require_subcommand(1);
    space->footer("The catalog and host identity live in $ISPACE_HOME (default ~/.ispace).");
    auto a = std::make_shared<SpaceArgs>();

    auto* create = space->add_subcommand("create", "Label the members and record a new space");
    create->add_option("NAME", a->name)->required();
    create->add_option("--layout", a->layout, "mirror, stripe, concat or stripe_mirror")
        ->default_str("mirror");
    create->add_option("--member", a->members,
                       "A member: iscsi://... URL or a local file/device (required; repeat for each)");
    // Members named after NAME, as mdadm and zpool take them: taken (not shown in --help) only to say how
    // to name them here, rather than CLI11's "--member is required" for a command that named them.
    create->add_option("MEMBER", a->stray_members)->group("");
    create->add_option("--size", a->size,
                       "Space size, e.g. 10G (default: what the members hold; required with --thin)");
    create->add_flag("--thin", a->thin,
                     "Thin: allocate space from the members only when first written, so --size may exceed "
                     "them; UNMAP/fstrim give it back, and a write that finds the members full fails "
                     "(docs/thin.md)");
    create->add_flag("--checksum", a->checksum,
                     "A CRC32C per 4 KiB block, checked on every read: a bad copy is repaired from a good "
                     "one, and a block with no good copy fails with a medium error instead of returning "
                     "wrong data (with one copy, as in a stripe or concat, only the latter: the space gets "
                     "a write-intent bitmap for it; docs/integrity.md)");
    create->add_option("--cluster", a->cluster,
                       "--thin: allocation unit, 64K to 1M, a power of two (default 1M)");
    create->add_option("--chunk", a->chunk, "Stripe chunk (default 128K)");
    create->add_option("--region", a->region, "Write-intent bitmap region (default 1M)");
    create->add_option("--copies", a->copies, "stripe_mirror: copies of each column")->default_val(2);
    create->add_flag("--force", a->force, "Reuse members that belong to another space");
    create->footer(
        "Examples:\n"
        "  ispace space create home --layout mirror --member iscsi://10.0.0.1/iqn.x:a/0 "
        "--member iscsi://10.0.0.2/iqn.x:b/0\n"
        "  ispace space create vm --thin --size 1T --member /dev/sdb --member /dev/sdc\n"
        "    (1 TiB provided, allocated from the mirror as it is written; `ispace space status vm` "
        "shows provisioned and allocated bytes)");

    auto* attach = space->add_subcommand(
        "attach",
        "Hold the space and attach it as a block device (printed); NAME@SNAP: a snapshot, read-only");
    attach->add_option("NAME", a->name, "A space, a clone, or NAME@SNAP (a snapshot of either)")->required();
    attach->add_flag("--takeover", a->takeover, "Preempt another holder (its writes fail from then on)");
    attach->add_option("--resync-rate", a->resync_rate, "Limit resync to this many bytes per second");

    auto* detach = space->add_subcommand("detach", "Detach the space's block device and let go of it");
    detach->add_option("NAME", a->name)->required();

    auto* status = space->add_subcommand("status", "The space's members, epoch and resync progress");
    status->add_option("NAME", a->name, "A space, a clone, or NAME@SNAP (a snapshot: its own line)")
        ->required();
    status->add_flag("--json", a->json_out, "Machine-readable");
    status->add_flag("--watch", a->watch, "Redraw the resync progress until it is done");

    auto* list = space->add_subcommand("list", "The spaces of the catalog");
    list->add_flag("--json", a->json_out, "Machine-readable");

    auto* replace = space->add_subcommand("replace", "Put a member out and another in (full rebuild)");
    replace->add_option("NAME", a->name)->required();
    replace->add_option("OLD_URL", a->old_url)->required();
    replace->add_option("NEW_URL", a->new_url)->required();
    replace->add_flag("--force", a->force, "Reuse a new member that belongs to another space");

    auto* grow = space->add_subcommand(
        "grow", "Take the room the members gained (files extended, LUNs resized on their targets), online");
    grow->add_option("NAME", a->name)->required();
    grow->add_option("--member", a->url, "A new member appended to a concat (a new column of room)");
    grow->add_flag("--force", a->force, "Reuse a new member that belongs to another space");
    grow->footer(
        "Grow every member first (truncate -s, or resize the LUN on its target: ispace lun resize on "
        "an ispaced), then run this. A plain space grows by what every member gained (a mirror: the "
        "smallest gain; a stripe: the smallest, times the members; a concat: its last member's); a "
        "thin space's pool does (its provisioned size stays). Every member must be in sync. An "
        "exported space reports CAPACITY DATA HAS CHANGED; an attached one grows in place (then "
        "resize2fs). --member URL appends a new member to a concat (a mirror or a stripe grows by its "
        "members instead).\n"
        "Examples:\n  truncate -s +1G /srv/a.img /srv/b.img && ispace space grow home\n"
        "  ispace space grow pool --member iscsi://10.0.0.3/iqn.2026-12.org.example:c/0");

    auto* add = space->add_subcommand("add-member", "Add a copy to a mirror (full rebuild)");
    add->add_option("NAME", a->name)->required();
    add->add_option("URL", a->url)->required();
    add->add_flag("--force", a->force, "Reuse a member that belongs to another space");

    auto* assemble = space->add_subcommand("assemble", "Rebuild the catalog entry from the members' labels");
    assemble->add_option("URL", a->urls)->required();
    assemble->add_option("--force-from", a->force_from,
                         "After a split: keep this member's side; the others are rebuilt from it");

    auto* snapshot = space->add_subcommand(
        "snapshot", "Thin spaces: a read-only point-in-time copy NAME@SNAP, by metadata alone");
    snapshot->add_option("NAME", a->name, "A thin space or a clone")->required();
    snapshot->add_option("SNAP", a->snap, "The snapshot's name (letters, digits, '.', '_', '-')")->required();
    snapshot->footer(
        "The space's writes pause while those in flight land, the snapshot is taken and committed (crash-\n"
        "consistent: every write acknowledged before is in it). It shares every cluster with the space; a\n"
        "later write to the space copies only what it must. Examples:\n"
        "  ispace space snapshot vm before-upgrade\n"
        "  ispace space attach vm@before-upgrade     (read-only; a mounted ext4: docs/dataspaces.md)\n"
        "  ispace space clone vm@before-upgrade test  (a writable copy, itself a space: attach test)\n"
        "  ispace space snapshot-delete vm@before-upgrade");

    auto* clone = space->add_subcommand("clone", "Thin spaces: a writable space NEW from snapshot NAME@SNAP");
    clone->add_option("NAME@SNAP", a->name, "The snapshot")->required();
    clone->add_option("NEW", a->new_name, "The clone's name: a space name of this catalog")->required();
    clone->footer(
        "NEW lives in the same pool (same members), shares every cluster it has not rewritten, and is\n"
        "used by its name: attach NEW, status NEW, snapshot NEW SNAP, destroy NEW --yes.");

    auto* snapshot_delete =
        space->add_subcommand("snapshot-delete", "Delete snapshot NAME@SNAP; what only it held is freed");
    snapshot_delete->add_option("NAME@SNAP", a->name, "The snapshot")->required();

    auto* scrub = space->add_subcommand(
        "scrub", "Read every copy of every block of a space held here and made with --checksum; repair "
                 "bad copies from good ones, report blocks with none — by LBA, and by file when the "
                 "space is attached here and holds ext4 (docs/integrity.md)");
    scrub->add_option("NAME", a->name)->required();
    scrub->add_flag("--wait", a->watch, "Wait until it is done, then print the status");
    scrub->add_option("--rate", a->scrub_rate, "Hold it to this many bytes per second (e.g. 50M)");
    auto* scrub_pause = scrub->add_flag("--pause", a->pause, "Pause the running scrub after its current MiB");
    scrub->add_flag("--resume", a->resume, "Resume a paused scrub where it stopped")->excludes(scrub_pause);
    scrub->footer(
        "Examples:\n  ispace space scrub home --rate 50M      (in the background; status shows progress)\n"
        "  ispace space scrub home --pause\n  ispace space scrub home --resume --wait");

    auto* destroy = space->add_subcommand(
        "destroy", "Erase the members' labels and the catalog entry (a clone: delete it from its pool)");
    destroy->add_option("NAME", a->name)->required();
    destroy->add_flag("--yes", a->yes, "Yes, destroy it");

    return [=]() -> int {
        std::string home = mgmt::default_space_home();
        json request;
        bool here = true;
        bool start = false;
        if (create->parsed()) {
            if (a->members.empty() || !a->stray_members.empty()) {
                std::vector<std::string> all = a->members;
                all.insert(all.end(), a->stray_members.begin(), a->stray_members.end());
                std::string fixed;
                for (const std::string& m : all) {
                    fixed += (fixed.empty() ? "--member " : " --member ") + m;
                }
                error(all.empty()
                          ? "--member is required: name each member with its own --member (an "
                            "iscsi:// URL or a local file or device)"
                          : fmt::format("name each member with its own --member: {}", redact_urls(fixed)));
                return exit_usage;
            }
            auto size = size_option(a->size, "--size");
            auto chunk = size_option(a->chunk, "--chunk");
            auto region = size_option(a->region, "--region");
            auto cluster = size_option(a->cluster, "--cluster");
            for (auto* r : {&size, &chunk, &region, &cluster}) {
                if (!*r) {
                    error(r->error().message);
                    return exit_usage;
                }
            }
            if (*region > UINT32_MAX) {
                error("--region: too large");
                return exit_usage;
            }
            if (a->thin && *size == 0) {
                error("--thin needs --size: the size the space provides (it may exceed the members)");
                return exit_usage;
            }
            if (!a->thin && *cluster != 0) {
                error("--cluster is for thin spaces (add --thin)");
                return exit_usage;
            }
            if (*cluster > UINT32_MAX) {
                error("--cluster: too large (64K to 1M)");
                return exit_usage;
            }
            request = {{"verb", "create"},      {"name", a->name},     {"layout", a->layout},
                       {"members", a->members}, {"size", *size},       {"chunk", *chunk},
                       {"region", *region},     {"copies", a->copies}, {"force", a->force},
                       {"thin", a->thin},       {"cluster", *cluster}, {"checksums", a->checksum}};
        } else if (attach->parsed()) {
            auto rate = size_option(a->resync_rate, "--resync-rate");
            if (!rate) {
                error(rate.error().message);
                return exit_usage;
            }
            request = {
                {"verb", "attach"}, {"name", a->name}, {"takeover", a->takeover}, {"resync_rate", *rate}};
            here = false;
            start = true;
        } else if (detach->parsed()) {
            request = {{"verb", "detach"}, {"name", a->name}};
            here = false;
        } else if (status->parsed()) {
            request = {{"verb", "status"}, {"name", a->name}};
        } else if (list->parsed()) {
            request = {{"verb", "list"}};
        } else if (replace->parsed()) {
            request = {{"verb", "replace"},
                       {"name", a->name},
                       {"old", a->old_url},
                       {"new", a->new_url},
                       {"force", a->force}};
        } else if (grow->parsed()) {
            request = {{"verb", "grow"}, {"name", a->name}, {"member", a->url}, {"force", a->force}};
        } else if (add->parsed()) {
            request = {{"verb", "add-member"}, {"name", a->name}, {"url", a->url}, {"force", a->force}};
        } else if (assemble->parsed()) {
            request = {{"verb", "assemble"}, {"urls", a->urls}, {"force_from", a->force_from}};
        } else if (snapshot->parsed()) {
            request = {{"verb", "snapshot"}, {"name", a->name}, {"snap", a->snap}};
        } else if (clone->parsed()) {
            request = {{"verb", "clone"}, {"name", a->name}, {"new", a->new_name}};
        } else if (snapshot_delete->parsed()) {
            request = {{"verb", "snapshot-delete"}, {"name", a->name}};
        } else if (scrub->parsed()) {
            auto rate = size_option(a->scrub_rate, "--rate");
            if (!rate) {
                error(rate.error().message);
                return exit_usage;
            }
            request = {{"verb", "scrub"},
                       {"name", a->name},
                       {"action", a->pause    ? "pause"
                                  : a->resume ? "resume"
                                              : "start"},
                       {"rate", *rate}};
            here = false;
        } else if (destroy->parsed()) {
            if (!a->yes) {
                // Refused before anything is opened: nothing is written to any member.
                error(fmt::format("destroy erases the labels of every member of '{}': add --yes", a->name));
                return exit_usage;
            }
            request = {{"verb", "destroy"}, {"name", a->name}, {"yes", true}};
        }

        auto answer = request_space(home, request, here, start);
        if (detach->parsed() && !answer && no_holder(answer.error())) {
            error(fmt::format("space '{}' is not attached (no holder runs for {})", a->name, home));
            return exit_failure;
        }
        if (scrub->parsed() && !answer && no_holder(answer.error())) {
            // A scrub runs in the process that holds the space; say which of the two things is missing
            // (the catalog knows whether the space has checksums at all).
            auto known = request_space(home, json{{"verb", "status"}, {"name", a->name}}, true, false);
            if (!known || !(*known).value("ok", false)) {
                return failed(known);
            }
            if (!(*known)["status"].value("checksums", false)) {
                error(
                    fmt::format("space '{}' has no block checksums (it was made without --checksum): a scrub "
                                "has nothing to check against",
                                a->name));
            } else {
                error(fmt::format("space '{}' is not held on this host (no holder runs for {}): a scrub runs "
                                  "where the space is attached (ispace space attach {}) or exported "
                                  "(ispaced --lun space:{})",
                                  a->name, home, a->name, a->name));
            }
            return exit_failure;
        }
        if (int code = failed(answer); code != exit_ok) {
            return code;
        }
        const json& j = *answer;
        if (attach->parsed()) {
            fmt::print("{}\n", j.value("device", ""));
        } else if (detach->parsed()) {
            fmt::print(stderr, "space {}: detached\n", a->name);
        } else if (status->parsed() && a->watch) {
            // Redraw until no resync runs; then the full status.
            bool tty = stderr_is_tty();
            json st = j["status"];
            while (st["resync"].value("running", false)) {
                std::string line = resync_line(st["resync"]);
                if (tty) {
                    fmt::print(stderr, "\r{}", line);
                } else {
                    fmt::print(stderr, "{}\n", line);
                }
                std::fflush(stderr);
                std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 500 : 2000));
                auto again = request_space(home, request, true, false);
                if (failed(again) != exit_ok) {
                    return exit_failure;
                }
                st = (*again)["status"];
            }
            if (tty) {
                fmt::print(stderr, "\r{}\n", std::string(70, ' '));
            }
            if (a->json_out) {
                fmt::print("{}\n", st.dump());
            } else {
                print_status(st);
            }
        } else if (status->parsed()) {
            if (a->json_out) {
                fmt::print("{}\n", j["status"].dump());
            } else {
                print_status(j["status"]);
            }
        } else if (list->parsed()) {
            if (a->json_out) {
                fmt::print("{}\n", j["spaces"].dump());
            } else {
                for (const json& st : j["spaces"]) {
                    std::string where = st.contains("device")     ? st["device"].get<std::string>()
                                        : st.value("open", false) ? "held"
                                        : st.value("lost", false) ? "lost"
                                                                  : "-";
                    std::string members =
                        st.contains("clone_of")
                            ? "clone of " + st.value("clone_of", "")
                            : fmt::format("{} members", st.value("members", json::array()).size());
                    fmt::print("{:<20} {:<14} {:>10}  {}  {}\n", st.value("name", ""), st.value("layout", ""),
                               human_bytes(double(st.value("size", uint64_t(0)))), members, where);
                }
            }
        } else if (grow->parsed()) {
            uint64_t before = j.value("before", uint64_t(0)), after = j.value("after", uint64_t(0));
            std::string what = j.value("thin", false) ? "its pool" : "it";
            if (after > before) {
                fmt::print(stderr, "space {}: {} grew from {} to {}\n", a->name, what,
                           human_bytes(double(before)), human_bytes(double(after)));
            } else {
                fmt::print(stderr, "space {}: nothing to grow: {} uses {}, all the members give\n", a->name,
                           what, human_bytes(double(before)));
            }
            for (const json& note : j.value("notes", json::array())) {
                fmt::print(stderr, "  note: {}\n", note.get<std::string>());
            }
        } else if (scrub->parsed() && a->watch) {
            json st = j["status"];
            json ask = {{"verb", "status"}, {"name", a->name}};
            auto going = [](const json& sc) {
                return sc.value("running", false) && !sc.value("paused", false);
            };
            while (going(st.value("scrub", json::object()))) {
                std::this_thread::sleep_for(std::chrono::milliseconds(200));
                auto again = request_space(home, ask, false, false);
                if (failed(again) != exit_ok) {
                    return exit_failure;
                }
                st = (*again)["status"];
            }
            print_status(st);
            const json& sc = st.value("scrub", json::object());
            return sc.value("unrecoverable_blocks", uint64_t(0)) == 0 ? exit_ok : exit_failure;
        } else if (j.contains("status")) {
            print_status(j["status"]);
            std::fflush(stdout); // the notes after the status it explains, on a terminal too
            for (const json& note : j["status"].value("notes", json::array())) {
                fmt::print(stderr, "  note: {}\n", note.get<std::string>());
            }
        } else if (destroy->parsed()) {
            fmt::print(stderr, "space {}: destroyed\n", a->name);
        } else if (snapshot->parsed()) {
            fmt::print("{}@{}\n", a->name, a->snap);
            fmt::print(stderr,
                       "snapshot {}@{} taken: I/O paused {:.1f} ms, created and committed in {:.1f} ms\n",
                       a->name, a->snap, j.value("pause_ms", 0.0), j.value("create_ms", 0.0));
        } else if (snapshot_delete->parsed()) {
            fmt::print(stderr, "snapshot {} deleted\n", a->name);
        }
        return exit_ok;
    };
}

} // namespace ispace::cli
