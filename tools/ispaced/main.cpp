// ispaced: the ispace iSCSI target daemon.
//
// Quick mode serves one target from the command line:
//   ispaced --listen 127.0.0.1:3260 --iqn IQN --lun PATH[,size=1G][,block=512|4096][,thin][,ro] [--lun ...]
#include "common/log.hpp"
#include "common/secret.hpp"
#include "common/units.hpp"
#include "iscsi/chap.hpp"
#include "iscsi/params.hpp"
#include "mgmt/attach_service.hpp"
#include "mgmt/control_socket.hpp"
#include "mgmt/manager.hpp"
#include "mgmt/metrics.hpp"
#include "mgmt/notify.hpp"
#include "mgmt/runtime.hpp"
#include "mgmt/space_service.hpp"
#include "volume/space_manager.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <pthread.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace ispace;

namespace {

const char* const description = R"(ispaced - the ispace iSCSI target

Serves logical units over iSCSI (RFC 7143). Quick mode takes everything from the command line:

  ispaced --listen 127.0.0.1:3260 --iqn iqn.2026-11.org.example:disk1 \
          --lun /srv/disk1.img,size=10G,thin --lun memory:1G

Or from a JSON configuration file with the same settings and more (several targets, per-initiator
ACLs with LUN masking and read-only mappings); see docs/configuration.md:

  ispaced --config /etc/ispace/ispaced.json

Flags beside --config apply on top of the file: a flag that takes one value replaces the file's, a
repeatable flag (--listen, --lun, --allow) adds to the file's list. Without --iqn, --chap and --allow
apply to every target of the file.

LUNs are numbered from 0 in the order given. LUN specs:
  PATH[,size=SIZE][,block=512|4096][,thin][,ro][,direct][,grow]
        a file (created when missing and size= is given; sparse with thin, where UNMAP
        punches holes; an existing smaller file is grown to size= only with grow; locked
        while served, so a second ispaced on it is refused) or a block device
  memory:SIZE[,block=..]   a RAM disk, allocated as it is written
  null:SIZE[,block=..]     reads return zeroes, writes are discarded (benchmarks)
  iscsi://[user%secret@]HOST[:PORT]/IQN/LUN   a remote LUN, served through this target (a gateway)
  space:NAME               the data-space NAME of $ISPACE_HOME's catalog (docs/dataspaces.md)
Sizes take K, M, G, T suffixes (powers of 1024).

Security: --chap USER:SECRET makes CHAP mandatory (secrets of 12 bytes or more); --mutual-chap
USER:SECRET is what the target proves to initiators that ask for mutual CHAP; --discovery-chap
USER:SECRET guards SendTargets, where the target proves --discovery-mutual-chap USER:SECRET (by
default the --mutual-chap one) to initiators that ask; --allow IQN[@CIDR] (repeatable) admits only the initiators listed,
and SendTargets lists a target only to initiators it admits. Each credential flag has a -file form
(--chap-file FILE, ...) reading USER:SECRET from a file, so that `ps` never shows the secret; secrets
given on the command line are scrubbed from it once parsed, but are visible until then.

Data-spaces: ispaced is the process that holds the spaces of one $ISPACE_HOME (--home): those it
exports (--lun space:NAME) and those `ispace space attach` attaches. It then answers the ispace CLI
on $ISPACE_HOME/holder.sock. `ispaced --holder` holds spaces with no target to serve; `ispace space
attach` starts one (--holder --idle-exit) when none runs.

iSNS (RFC 4171): --isns HOST[:PORT] registers the portals and targets with an iSNS server (port 3205
by default) as one network entity (--isns-entity, by default ispaced:HOSTNAME:FIRST-PORTAL), keeps the
registration fresh, answers the server's status inquiries, updates it when targets or portals change,
and deregisters on exit. An iSNS server that does not answer is retried; it never stops the target.

Live management: --control PATH opens a control socket (JSON-RPC 2.0, mode 0600, or 0660 for
--control-group) through which `ispace --control PATH ...` adds and removes targets, portals, LUNs,
ACLs and CHAP, lists and closes sessions and sets parameters while sessions run. With --config FILE
every such change is written to FILE atomically (a missing FILE starts empty and is created by the
first change); what is written is the whole configuration in force, the flags' part included, and the
same flags given again at the next start add nothing twice. SIGHUP reads FILE again and applies the
difference. --metrics HOST:PORT serves Prometheus metrics at /metrics. See docs/operations.md.

Once it listens, ispaced prints one "listening: HOST:PORT" line per portal and one
"ready: iscsi://HOST:PORT/IQN/LUN" line per portal and LUN on stderr, and sends READY=1 to
$NOTIFY_SOCKET (systemd Type=notify). SIGTERM or SIGINT closes every connection, flushes the
backstores and exits 0.
)";

// The credential flags: each takes USER:SECRET, or (FLAG-file) a file holding it.
struct CredentialFlag {
    const char* name;
    const char* help;
    std::string text;
    std::string file;
};

// `text` with every argument that may hold a secret (the values of credential flags, and the argument
// after them, in case the user typed USER SECRET with a space) replaced by "***".
std::string redact_arguments(std::string text, int argc, char** argv,
                             const std::vector<CredentialFlag>& flags) {
    std::vector<std::string> secrets;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        for (const CredentialFlag& flag : flags) {
            std::string_view name = flag.name;
            if (arg == name) {
                for (int k = i + 1; k < argc && k <= i + 2; ++k) {
                    secrets.emplace_back(argv[k]);
                }
            } else if (arg.size() > name.size() && arg.substr(0, name.size()) == name &&
                       arg[name.size()] == '=') {
                secrets.emplace_back(arg.substr(name.size() + 1));
                if (i + 1 < argc) {
                    secrets.emplace_back(argv[i + 1]);
                }
            }
        }
    }
    // Longest first, so that a user name inside a secret does not leave the rest of it showing.
    std::sort(secrets.begin(), secrets.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (const std::string& secret : secrets) {
        if (secret.empty()) {
            continue;
        }
        for (size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) {
            text.replace(at, secret.size(), "***");
        }
    }
    return text;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{description, "ispaced"};
    app.set_version_flag("--version", std::string("ispaced ") + ISPACE_VERSION);

    std::vector<std::string> listen;
    std::string config_path;
    std::string iqn;
    std::vector<std::string> allow;
    std::string state_dir;
    std::string alias;
    std::vector<std::string> luns;
    unsigned reactors = 0;
    std::string log_level = "info";
    iscsi_target::Limits limits;
    uint32_t queue_depth = limits.queue_depth;
    std::string max_transfer = "8M";
    unsigned login_timeout_ms = unsigned(limits.login_timeout.count());
    unsigned nop_interval_ms = unsigned(limits.nop_interval.count());
    unsigned nop_timeout_ms = unsigned(limits.nop_timeout.count());
    std::string sanitize_rate = "64M";
    std::string control_path = ::geteuid() == 0 ? "/run/ispace/ispaced.sock" : "";
    std::string control_group;
    std::string metrics_listen;
    std::string home = mgmt::default_space_home();
    bool holder = false;
    bool idle_exit = false;
    std::string isns_server;
    std::string isns_entity;
    uint32_t isns_esi_interval = 60;
    unsigned max_erl = iscsi::max_error_recovery_level;
    std::string buffer_memory;

    app.add_option("--listen", listen,
                   "Portal to listen on, HOST:PORT (repeat for several; each is its own portal group; "
                   "port 0 picks a free port)")
        ->default_str("127.0.0.1:3260");
    app.add_option("--config", config_path,
                   "JSON configuration file; flags given beside it apply on top (see docs/configuration.md)");
    app.add_option("--iqn", iqn,
                   "iSCSI name of the target that --lun, --alias, --chap and --allow apply to, e.g. "
                   "iqn.2026-11.org.example:disk1");
    auto* alias_option = app.add_option("--alias", alias, "TargetAlias shown to initiators");
    app.add_option("--lun", luns, "A logical unit (see LUN specs above); repeat for more");
    std::vector<CredentialFlag> credential_flags = {
        {"--chap", "Require CHAP: USER:SECRET the initiator must present", {}, {}},
        {"--mutual-chap", "USER:SECRET the target presents for mutual CHAP", {}, {}},
        {"--discovery-chap", "Require CHAP for discovery sessions: USER:SECRET", {}, {}},
        {"--discovery-mutual-chap",
         "USER:SECRET the target presents for mutual CHAP in discovery sessions (default: the "
         "--mutual-chap one, when --discovery-chap is given)",
         {},
         {}},
    };
    for (CredentialFlag& flag : credential_flags) {
        app.add_option(flag.name, flag.text, flag.help);
        app.add_option(std::string(flag.name) + "-file", flag.file,
                       std::string("As ") + flag.name +
                           ", from a file holding USER:SECRET (kept out of `ps`)");
    }
    app.add_option("--allow", allow, "Admit only this initiator, IQN[@CIDR]; repeat for more (default: all)");
    auto* state_dir_option =
        app.add_option("--state-dir", state_dir,
                       "Where persistent-reservation state is kept (default: beside each file LUN)");
    auto* reactors_option =
        app.add_option("--reactors", reactors, "Event-loop threads (default: one per core)")
            // Each is a thread with its own epoll and eventfd: 100,000 ran out of descriptors at start.
            ->check(CLI::Range(0u, 1024u));
    unsigned poll_us = 0;
    app.add_option("--poll-us", poll_us,
                   "Busy-poll this many microseconds before an event loop sleeps, while traffic flows: "
                   "lower latency at queue depth 1 for a core kept spinning (default 0: off)")
        ->check(CLI::Range(0u, 10000u));
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error")->default_str("info");
    auto* queue_depth_option =
        app.add_option("--queue-depth", queue_depth, "Commands a session may have outstanding (CmdSN window)")
            ->default_val(queue_depth)
            ->check(CLI::Range(1u, 4096u));
    auto* max_transfer_option =
        app.add_option("--max-transfer", max_transfer, "Largest data transfer of one command")
            ->default_str("8M");
    auto* login_timeout_option =
        app.add_option("--login-timeout-ms", login_timeout_ms, "Drop a connection whose login takes longer")
            ->default_val(login_timeout_ms)
            // 0 dropped every connection before its first PDU: a target nobody could log in to.
            ->check(CLI::Range(100u, 3600000u));
    auto* nop_interval_option =
        app.add_option("--nop-interval-ms", nop_interval_ms, "Ping an idle connection after this long")
            ->default_val(nop_interval_ms);
    auto* nop_timeout_option =
        app.add_option("--nop-timeout-ms", nop_timeout_ms, "Drop a connection silent for this long")
            ->default_val(nop_timeout_ms);
    auto* sanitize_rate_option =
        app.add_option(
               "--sanitize-rate", sanitize_rate,
               "Bytes per second SANITIZE OVERWRITE writes to one LUN, so it does not starve the others "
               "(0: unlimited)")
            ->default_str("64M");
    auto* buffer_memory_option =
        app.add_option("--buffer-memory", buffer_memory,
                       "Data-In memory all sessions together may hold; past it commands wait (MaxCmdSN "
                       "stops advancing) instead of memory being allocated")
            ->default_str(
                fmt::format("{}M (1/16 of RAM, 64M to 512M)", iscsi_target::default_buffer_memory() >> 20));

    auto* control_option = app.add_option(
        "--control", control_path,
        "Control socket for `ispace --control PATH` (default /run/ispace/ispaced.sock as root, "
        "none otherwise; \"\" for none)");
    app.add_option(
        "--control-group", control_group,
        "Group allowed to use the control socket (mode 0660; default: mode 0600, the daemon's user)");
    app.add_option("--metrics", metrics_listen, "Serve Prometheus metrics at http://HOST:PORT/metrics");
    app.set_version_flag("--version", "ispaced 0.1");
    auto* home_option = app.add_option(
        "--home", home, "The data-space catalog and host identity (default: $ISPACE_HOME, else ~/.ispace)");
    app.add_flag("--holder", holder,
                 "Hold data-spaces for the ispace CLI (attach, status...) even with no target to serve");
    app.add_flag("--idle-exit", idle_exit,
                 "With --holder: exit once no space is attached or held (what `ispace space attach` starts)");

    auto* isns_option =
        app.add_option("--isns", isns_server,
                       "Register with this iSNS server, HOST[:PORT] (port 3205 by default), and "
                       "keep the registration current");
    auto* isns_entity_option =
        app.add_option("--isns-entity", isns_entity,
                       "Network entity identifier to register as (default: ispaced:HOSTNAME:FIRST-PORTAL)");
    auto* isns_esi_option =
        app.add_option("--isns-esi-interval", isns_esi_interval,
                       "Seconds between the iSNS server's status inquiries (ESI) asked for; 0: none, the "
                       "registration is refreshed instead")
            ->default_val(isns_esi_interval)
            ->check(CLI::Range(0u, 86400u));
    auto* max_erl_option =
        app.add_option("--max-erl", max_erl,
                       "Highest ErrorRecoveryLevel accepted (0: none; 1: SNACK and recovery R2T; 2: also "
                       "connection recovery with TASK REASSIGN). Same as params.ErrorRecoveryLevel in the "
                       "configuration")
            ->default_val(max_erl)
            ->check(CLI::Range(0u, unsigned(iscsi::max_error_recovery_level)));

    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e); // --help, --version
    } catch (const CLI::ParseError& e) {
        // Exit 2 for every usage error (not CLI11's 105, 109, ...), and never echo a secret.
        std::fprintf(stderr, "ispaced: %s\nRun `ispaced --help` for usage.\n",
                     redact_arguments(e.what(), argc, argv, credential_flags).c_str());
        return 2;
    }
    // Parsed and copied: the secrets leave /proc/PID/cmdline, which is what `ps` shows.
    for (const CredentialFlag& flag : credential_flags) {
        if (size_t colon = flag.text.find(':'); colon != std::string::npos) {
            scrub_argv(argc, argv, std::string_view(flag.text).substr(colon + 1));
        }
    }

    LogLevel level;
    if (!parse_log_level(log_level, level)) {
        std::fprintf(stderr, "ispaced: --log-level '%s' is not one of trace, debug, info, warn, error\n",
                     log_level.c_str());
        return 2;
    }
    set_log_level(level);
    if (idle_exit && !holder) {
        // It only ends a holder; beside a target it did nothing, silently.
        std::fprintf(stderr, "ispaced: --idle-exit applies to --holder only\n");
        return 2;
    }

    // Before any thread starts (a holder's reactors and socket start just below): every thread inherits
    // this mask, so only the sigwait() at the end sees these signals. SIGHUP is among them: its default
    // action killed ispaced (exit 129) without a log line. Set after the holder had started its threads,
    // those threads took a signal that came while main() was not in sigwait() — during a reload, or
    // before startup was done — and its default action ended the process.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    // The file first (or nothing, in quick mode), then every flag over it: see iscsi_target::ConfigOverlay.
    // The runtime first: its registry of backstore kinds reads the LUN specs of the file and the flags.
    mgmt::RuntimeOptions runtime_options;
    if (reactors_option->count()) {
        runtime_options.reactors = reactors;
    }
    runtime_options.reactor_options.poll = std::chrono::microseconds(poll_us);
    mgmt::Runtime runtime(runtime_options);
    if (holder && !control_option->count()) {
        // A holder started for the ispace CLI holds spaces; it does not take the host's default control
        // socket (nor the default portal that serving would bind) unless asked to.
        control_path.clear();
    }
    // Data-spaces, when this process is to hold any: the holder flag, a space LUN on the command line or in
    // the file, or --control with --home. The kind registers before the specs are parsed; its volumes run on
    // the runtime's reactors, started here (through the initiator) because serve() opens LUNs before it
    // starts them. A daemon administered through --control with an explicit --home may be asked for `lun add
    // IQN space:NAME` later: it holds that home's spaces from the start, so that the kind is there.
    bool wants_spaces = holder || (control_option->count() > 0 && home_option->count() > 0);
    for (const std::string& lun : luns) {
        wants_spaces = wants_spaces || lun.rfind("space:", 0) == 0;
    }
    if (!config_path.empty()) {
        std::ifstream in(config_path);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        wants_spaces = wants_spaces || text.find("\"space:") != std::string::npos;
    }
    std::unique_ptr<volume::SpaceManager> spaces;
    std::unique_ptr<mgmt::SpaceService> space_service;
    std::unique_ptr<mgmt::AttachService> attach_service; // `ispace attach URL`: devices that are not spaces
    std::unique_ptr<mgmt::HolderSocket> holder_socket;
    if (wants_spaces) {
        volume::SpaceManagerOptions o;
        o.home = home;
        o.initiator = &runtime.initiator();
        o.reactors = &runtime.reactors();
        o.registry = &runtime.backstores();
        o.on_lost = [&space_service](const std::string& name) {
            if (space_service) {
                space_service->lost(name);
            }
        };
        spaces = std::make_unique<volume::SpaceManager>(std::move(o));
        volume::register_space_kind(runtime.backstores(), *spaces);
        space_service = std::make_unique<mgmt::SpaceService>(*spaces, &runtime, home);
        attach::AttachOptions attach_options;
        attach_options.run_dir = home + "/run";
        attach_service = std::make_unique<mgmt::AttachService>(runtime, attach_options);
        space_service->busy_elsewhere = [&attach_service] { return !attach_service->idle(); };
        if (idle_exit) {
            // Set before the socket below takes requests (the thread that serves one reads it).
            space_service->on_idle = [] { ::kill(::getpid(), SIGTERM); };
        }
        // Before anything is opened: a second holder of the same home must stop here, not fight over
        // the members' reservations.
        // One socket, two services: the space verbs, and attach-device/detach-device/devices.
        auto listening = mgmt::HolderSocket::listen(home, [&](const nlohmann::json& request) {
            if (!mgmt::AttachService::handles(request)) {
                return space_service->handle(request);
            }
            nlohmann::json answer = attach_service->handle(request);
            if (idle_exit && request.value("verb", "") != "devices" && attach_service->idle() &&
                !space_service->holds_anything()) {
                ::kill(::getpid(), SIGTERM); // --idle-exit: nothing left to hold
            }
            return answer;
        });
        if (!listening) {
            std::fprintf(stderr, "ispaced: %s\n", listening.error().message.c_str());
            return 1;
        }
        holder_socket = std::move(*listening);
    }
    // The default control socket (as root) does not make an empty daemon useful; --control given does.
    bool control_given = control_option->count() > 0 && !control_path.empty();
    if (config_path.empty() && !control_given && !holder && (iqn.empty() || luns.empty())) {
        if (iqn.empty() != luns.empty()) {
            // Half of a target given: name the missing half rather than the whole menu.
            std::fprintf(stderr, "%s\n",
                         iqn.empty() ? "ispaced: --lun needs --iqn IQN, the name of the target that serves it"
                                     : "ispaced: --iqn needs at least one --lun SPEC to serve (see --help)");
        } else {
            std::fprintf(
                stderr,
                "ispaced: give --iqn and at least one --lun, --config FILE, --control PATH or --holder "
                "(see --help)\n");
        }
        return 2;
    }
    auto credentials = [](const CredentialFlag& flag) -> std::optional<iscsi::ChapCredentials> {
        std::string text = flag.text;
        std::string source = flag.name;
        if (!flag.file.empty()) {
            if (!flag.text.empty()) {
                std::fprintf(stderr, "ispaced: give %s or %s-file, not both\n", flag.name, flag.name);
                std::exit(2);
            }
            std::string warning;
            auto read = read_secret_file(flag.file, &warning);
            if (!read) {
                std::fprintf(stderr, "ispaced: %s-file: %s\n", flag.name, read.error().message.c_str());
                std::exit(2);
            }
            if (!warning.empty()) {
                log_warn("{}-file: {}", flag.name, warning);
            }
            text = std::move(*read);
            source = fmt::format("{}-file {}", flag.name, flag.file);
        }
        if (text.empty()) {
            return std::nullopt;
        }
        auto parsed = iscsi::parse_chap_credentials(text);
        if (!parsed) {
            std::fprintf(stderr, "ispaced: %s: %s\n", source.c_str(), parsed.error().message.c_str());
            std::exit(2);
        }
        return *parsed;
    };
    iscsi_target::ConfigOverlay overlay;
    overlay.listen = listen;
    overlay.iqn = iqn;
    if (alias_option->count()) {
        overlay.alias = alias;
    }
    overlay.luns = luns;
    overlay.chap = credentials(credential_flags[0]);
    overlay.mutual_chap = credentials(credential_flags[1]);
    overlay.discovery_chap = credentials(credential_flags[2]);
    overlay.discovery_mutual_chap = credentials(credential_flags[3]);
    for (const std::string& entry : allow) {
        auto parsed = iscsi_target::parse_allow(entry);
        if (!parsed) {
            std::fprintf(stderr, "ispaced: --allow: %s\n", parsed.error().message.c_str());
            return 2;
        }
        overlay.allow.push_back(std::move(*parsed));
    }
    if (reactors_option->count()) {
        overlay.reactors = reactors;
    }
    if (isns_option->count()) {
        overlay.isns_server = isns_server;
    }
    if (isns_entity_option->count()) {
        overlay.isns_entity = isns_entity;
    }
    if (isns_esi_option->count()) {
        overlay.isns_esi_interval = isns_esi_interval;
    }
    if (max_erl_option->count()) {
        overlay.max_erl = max_erl;
    }
    if (state_dir_option->count()) {
        overlay.state_dir = state_dir;
    }
    if (queue_depth_option->count()) {
        overlay.queue_depth = queue_depth;
    }
    if (max_transfer_option->count()) {
        auto bytes = parse_size(max_transfer);
        if (!bytes || *bytes < 4096 || *bytes > (64u << 20)) {
            std::fprintf(stderr, "ispaced: --max-transfer must be a size from 4K to 64M\n");
            return 2;
        }
        overlay.max_transfer_bytes = uint32_t(*bytes);
    }
    if (login_timeout_option->count()) {
        overlay.login_timeout = std::chrono::milliseconds(login_timeout_ms);
    }
    if (nop_interval_option->count()) {
        overlay.nop_interval = std::chrono::milliseconds(nop_interval_ms);
    }
    if (nop_timeout_option->count()) {
        overlay.nop_timeout = std::chrono::milliseconds(nop_timeout_ms);
    }
    if (sanitize_rate_option->count()) {
        auto rate = parse_size(sanitize_rate);
        if (!rate) {
            std::fprintf(
                stderr, "ispaced: --sanitize-rate must be a size per second, e.g. 64M, or 0 for unlimited\n");
            return 2;
        }
        overlay.sanitize_bytes_per_second = *rate;
    }
    if (buffer_memory_option->count()) {
        auto bytes = parse_size(buffer_memory);
        if (!bytes || *bytes < (uint64_t(1) << 20)) {
            std::fprintf(stderr, "ispaced: --buffer-memory must be a size of at least 1M, e.g. 256M\n");
            return 2;
        }
        overlay.buffer_memory = *bytes;
    }
    auto loaded = mgmt::load_configuration(config_path, overlay, runtime.backstores());
    if (!loaded) {
        std::fprintf(stderr, "ispaced: %s\n", loaded.error().message.c_str());
        return 2;
    }
    iscsi_target::ServerConfig config = std::move(*loaded);
    if (!config.isns.server.empty()) {
        // A typo is a configuration error now; a server that does not answer is retried later.
        if (auto where = isns::parse_server(config.isns.server); !where) {
            std::fprintf(stderr, "ispaced: iSNS server %s: %s\n", config.isns.server.c_str(),
                         where.error().message.c_str());
            return 2;
        }
    }
    iscsi_target::IsnsSettings isns_settings = config.isns;
    // Names, LUN numbers, credentials: a mistake in what was given is a usage error (exit 2), found
    // before anything is created.
    if (auto valid = iscsi_target::validate(config); !valid) {
        std::fprintf(stderr, "ispaced: %s\n", valid.error().message.c_str());
        return 2;
    }
    if (!config.state_dir.empty()) {
        // Made (as the runtime would make it for each target) or refused now, not found unusable at the
        // first PERSISTENT RESERVE OUT with APTPL that cannot save its state.
        std::error_code made;
        std::filesystem::create_directories(config.state_dir, made);
        struct stat st {};
        std::string problem;
        if (made) {
            problem = made.message();
        } else if (::stat(config.state_dir.c_str(), &st) != 0) {
            problem = std::strerror(errno);
        } else if (!S_ISDIR(st.st_mode)) {
            problem = "not a directory";
        } else if (::access(config.state_dir.c_str(), W_OK | X_OK) != 0) {
            problem = std::strerror(errno);
        }
        if (!problem.empty()) {
            std::fprintf(stderr,
                         "ispaced: state directory %s: %s (give a directory ispaced can create and write, "
                         "or leave --state-dir out to keep reservation state beside each file LUN)\n",
                         config.state_dir.c_str(), problem.c_str());
            return 2;
        }
    }
    if (uint64_t ram = uint64_t(::sysconf(_SC_PHYS_PAGES)) * uint64_t(::sysconf(_SC_PAGESIZE));
        ram > 0 && config.limits.buffer_memory > ram) {
        // A bound, not an allocation: legal, but it no longer bounds anything; say so.
        log_warn("buffer memory {} MiB is more than this machine's {} MiB of RAM: it does not hold commands "
                 "back before memory runs out (--buffer-memory, limits.buffer_memory)",
                 config.limits.buffer_memory >> 20, ram >> 20);
    }
    if (config.targets.empty() && !control_given && !holder) {
        if (!config_path.empty()) {
            // Not the quick-mode hint: a file was given, and the file is what to fix.
            std::fprintf(stderr,
                         "ispaced: nothing to serve: %s lists no target; add one to its \"targets\" (see "
                         "docs/configuration.md), or give --control PATH to add targets while it runs\n",
                         config_path.c_str());
        } else {
            std::fprintf(stderr, "ispaced: nothing to serve: give --iqn and --lun, --control PATH to add "
                                 "targets while it runs, or --holder\n");
        }
        return 2;
    }

    // A holder with no target and no control socket binds no portal.
    bool serving = !config.targets.empty() || !control_path.empty();
    if (serving) {
        if (auto served = runtime.serve(config); !served) {
            log_error("{}", served.error().message);
            return 1;
        }
    }
    mgmt::ManagerOptions manager_options;
    manager_options.config_path = config_path;
    manager_options.overlay = overlay;
    mgmt::Manager manager(runtime, std::move(manager_options));
    manager.adopt(std::move(config));

    if (serving && !isns_settings.server.empty()) {
        iscsi_target::Server& server = *runtime.target_server();
        std::string entity = isns_settings.entity;
        if (entity.empty()) {
            char host[256] = {};
            ::gethostname(host, sizeof host - 1);
            auto portals = server.portal_endpoints();
            entity = fmt::format("ispaced:{}:{}", host, portals.empty() ? "" : portals.front().to_string());
        }
        isns::RegistrarOptions isns_options;
        isns_options.client.server = isns_settings.server;
        isns_options.esi_interval = isns_settings.esi_interval;
        if (auto registering = runtime.register_with_isns(isns_options, entity); !registering) {
            log_error("{}", registering.error().message);
            runtime.stop(std::chrono::seconds(10));
            return 1;
        }
    }

    mgmt::MetricsServer metrics(runtime);
    if (!metrics_listen.empty()) {
        auto bound = metrics.start(metrics_listen);
        if (!bound) {
            log_error("{}", bound.error().message);
            runtime.stop(std::chrono::seconds(10));
            return 1;
        }
        log_write(LogLevel::info, fmt::format("metrics: http://{}/metrics", bound->to_string()));
    }
    mgmt::ControlSocket control;
    if (!control_path.empty()) {
        if (control_path == "/run/ispace/ispaced.sock") {
            ::mkdir("/run/ispace", 0755);
        }
        mgmt::ControlSocketOptions options;
        options.path = control_path;
        options.group = control_group;
        auto started =
            control.start(options, [&manager](std::string_view line) { return manager.handle(line); });
        if (!started && started.error().code == EADDRINUSE && !control_option->count()) {
            // The default socket belongs to another ispaced (several run on one host, e.g. tests): this
            // one runs without a control socket rather than not at all. Given explicitly, it is an error.
            log_warn("{}; running without a control socket (give --control PATH)", started.error().message);
            control_path.clear();
        } else if (!started) {
            log_error("{}", started.error().message);
            metrics.stop();
            runtime.stop(std::chrono::seconds(10));
            return 1;
        }
        if (!control_path.empty()) {
            log_write(LogLevel::info, fmt::format("control: {}", control_path));
        }
    }
    // Ready once everything is up (portals, iSNS, metrics, control socket): scripts and tests wait for
    // these lines, and may count the threads then.
    if (serving) {
        iscsi_target::Server& server = *runtime.target_server();
        for (const net::Endpoint& endpoint : server.portal_endpoints()) {
            log_write(LogLevel::info, fmt::format("listening: {}", endpoint.to_string()));
            for (const auto& target : server.targets()) {
                for (uint64_t lun : target->device->luns()) {
                    // Printed whatever the log level: scripts wait for these lines.
                    log_write(LogLevel::info,
                              fmt::format("ready: iscsi://{}/{}/{}", endpoint.to_string(), target->iqn, lun));
                }
            }
        }
    }
    if (holder_socket) {
        log_write(LogLevel::info, fmt::format("ready: holder {}", mgmt::holder_socket_path(home)));
    }
    if (auto notified = mgmt::notify_service_manager("READY=1\nSTATUS=serving"); !notified) {
        log_warn("{}", notified.error().message);
    }

    int signal_number = 0;
    for (;;) {
        sigwait(&signals, &signal_number);
        if (signal_number != SIGHUP) {
            break;
        }
        if (config_path.empty()) {
            // Nothing to read again; say so rather than pretend (SIGHUP used to kill ispaced silently).
            log_warn("received SIGHUP: started without --config, so there is no file to reload; ignored");
            continue;
        }
        log_info("received SIGHUP: reloading {}", config_path);
        (void)mgmt::notify_service_manager("RELOADING=1");
        auto reloaded = manager.reload();
        if (reloaded) {
            log_event(LogLevel::info, "config.reloaded",
                      {log_field("changes", reloaded->value("changes", nlohmann::json::array()).dump())});
        } else {
            log_event(LogLevel::error, "config.reload_failed",
                      {log_field("error", reloaded.error().message)});
        }
        (void)mgmt::notify_service_manager("READY=1\nSTATUS=serving");
    }
    log_info("received {}; shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
    (void)mgmt::notify_service_manager("STOPPING=1");
    control.stop();
    metrics.stop();
    if (space_service) {
        // Spaces go before the runtime stops its reactors (their labels are written on them): no more
        // requests, the attached ones detached, the exported ones taken out of the target, then closed.
        holder_socket.reset();
        space_service->shutdown();
        // After the space service, whose threads (a detach after a takeover) may still ask it whether it is
        // idle until shutdown() has joined them. Its devices are detached by Runtime::stop (forced) below.
        attach_service.reset();
        if (serving) {
            for (const auto& target : runtime.target_server()->targets()) {
                auto luns_of = runtime.luns(target->iqn);
                for (const mgmt::LunInfo& lun : luns_of ? *luns_of : std::vector<mgmt::LunInfo>{}) {
                    if (lun.spec.rfind("space:", 0) == 0) {
                        (void)runtime.remove_lun(target->iqn, lun.lun, std::chrono::seconds(10));
                    }
                }
            }
        }
        spaces->close_all();
    }
    bool clean = runtime.stop(std::chrono::seconds(10));
    return clean ? 0 : 1;
}
