// ispaced: the ispace iSCSI target daemon.
//
// Quick mode serves one target from the command line:
//   ispaced --listen 127.0.0.1:3260 --iqn IQN --lun PATH[,size=1G][,block=512|4096][,thin][,ro] [--lun ...]
#include "common/log.hpp"
#include "common/units.hpp"
#include "iscsi/chap.hpp"
#include "mgmt/attach_service.hpp"
#include "mgmt/runtime.hpp"
#include "mgmt/space_service.hpp"
#include "volume/space_manager.hpp"

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <pthread.h>
#include <string>
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
  PATH[,size=SIZE][,block=512|4096][,thin][,ro][,direct]
        a file (created when missing and size= is given; sparse with thin, where UNMAP
        punches holes) or a block device
  memory:SIZE[,block=..]   a RAM disk, allocated as it is written
  null:SIZE[,block=..]     reads return zeroes, writes are discarded (benchmarks)
  iscsi://[user%secret@]HOST[:PORT]/IQN/LUN   a remote LUN, served through this target (a gateway)
  space:NAME               the data-space NAME of $ISPACE_HOME's catalog (docs/dataspaces.md)
Sizes take K, M, G, T suffixes (powers of 1024).

Security: --chap USER:SECRET makes CHAP mandatory (secrets of 12 bytes or more); --mutual-chap
USER:SECRET is what the target proves to initiators that ask for mutual CHAP; --discovery-chap
USER:SECRET guards SendTargets, where the target proves --discovery-mutual-chap USER:SECRET (by
default the --mutual-chap one) to initiators that ask; --allow IQN[@CIDR] (repeatable) admits only the initiators listed,
and SendTargets lists a target only to initiators it admits.

Data-spaces: ispaced is the process that holds the spaces of one $ISPACE_HOME (--home): those it
exports (--lun space:NAME) and those `ispace space attach` attaches. It then answers the ispace CLI
on $ISPACE_HOME/holder.sock. `ispaced --holder` holds spaces with no target to serve; `ispace space
attach` starts one (--holder --idle-exit) when none runs.

iSNS (RFC 4171): --isns HOST[:PORT] registers the portals and targets with an iSNS server (port 3205
by default) as one network entity (--isns-entity, by default ispaced:HOSTNAME:FIRST-PORTAL), keeps the
registration fresh, answers the server's status inquiries, updates it when targets or portals change,
and deregisters on exit. An iSNS server that does not answer is retried; it never stops the target.

Once it listens, ispaced prints one "ready: iscsi://HOST:PORT/IQN/LUN" line per portal and LUN on
stderr. SIGTERM or SIGINT closes every connection, flushes the backstores and exits 0.
)";

} // namespace

int main(int argc, char** argv) {
    CLI::App app{description, "ispaced"};

    std::vector<std::string> listen;
    std::string config_path;
    std::string iqn;
    std::string chap;
    std::string mutual_chap;
    std::string discovery_chap;
    std::string discovery_mutual_chap;
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
    std::string home = mgmt::default_space_home();
    bool holder = false;
    bool idle_exit = false;
    std::string isns_server;
    std::string isns_entity;
    uint32_t isns_esi_interval = 60;

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
    app.add_option("--chap", chap, "Require CHAP: USER:SECRET the initiator must present");
    app.add_option("--mutual-chap", mutual_chap, "USER:SECRET the target presents for mutual CHAP");
    app.add_option("--discovery-chap", discovery_chap, "Require CHAP for discovery sessions: USER:SECRET");
    app.add_option("--discovery-mutual-chap", discovery_mutual_chap,
                   "USER:SECRET the target presents for mutual CHAP in discovery sessions "
                   "(default: the --mutual-chap one, when --discovery-chap is given)");
    app.add_option("--allow", allow, "Admit only this initiator, IQN[@CIDR]; repeat for more (default: all)");
    auto* state_dir_option =
        app.add_option("--state-dir", state_dir,
                       "Where persistent-reservation state is kept (default: beside each file LUN)");
    auto* reactors_option =
        app.add_option("--reactors", reactors, "Event-loop threads (default: one per core)");
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
            ->default_val(login_timeout_ms);
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

    app.add_option("--home", home,
                   "The data-space catalog and host identity (default: $ISPACE_HOME, else ~/.ispace)");
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

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    LogLevel level;
    if (!parse_log_level(log_level, level)) {
        std::fprintf(stderr, "ispaced: --log-level '%s' is not one of trace, debug, info, warn, error\n",
                     log_level.c_str());
        return 2;
    }
    set_log_level(level);

    // The file first (or nothing, in quick mode), then every flag over it: see iscsi_target::ConfigOverlay.
    // The runtime first: its registry of backstore kinds reads the LUN specs of the file and the flags.
    mgmt::RuntimeOptions runtime_options;
    if (reactors_option->count()) {
        runtime_options.reactors = reactors;
    }
    mgmt::Runtime runtime(runtime_options);
    // Data-spaces, when this process is to hold any: the holder flag, a space LUN on the command line or in
    // the file. The kind registers before the specs are parsed; its volumes run on the runtime's reactors,
    // started here (through the initiator) because serve() opens LUNs before it starts them.
    bool wants_spaces = holder;
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
    iscsi_target::ServerConfig config;
    config.negotiation = iscsi_target::default_target_negotiation();
    if (!config_path.empty()) {
        auto loaded = iscsi_target::load_config_file(config_path, runtime.backstores());
        if (!loaded) {
            std::fprintf(stderr, "ispaced: %s\n", loaded.error().message.c_str());
            return 2;
        }
        config = std::move(*loaded);
    } else if (!holder && (iqn.empty() || luns.empty())) {
        std::fprintf(stderr, "ispaced: give --iqn and at least one --lun, or --config FILE (see --help)\n");
        return 2;
    }
    auto credentials = [](const std::string& text,
                          const char* flag) -> std::optional<iscsi::ChapCredentials> {
        if (text.empty()) {
            return std::nullopt;
        }
        auto parsed = iscsi::parse_chap_credentials(text);
        if (!parsed) {
            std::fprintf(stderr, "ispaced: %s: %s\n", flag, parsed.error().message.c_str());
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
    overlay.chap = credentials(chap, "--chap");
    overlay.mutual_chap = credentials(mutual_chap, "--mutual-chap");
    overlay.discovery_chap = credentials(discovery_chap, "--discovery-chap");
    overlay.discovery_mutual_chap = credentials(discovery_mutual_chap, "--discovery-mutual-chap");
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
    if (auto applied = iscsi_target::apply_overlay(config, overlay, runtime.backstores()); !applied) {
        std::fprintf(stderr, "ispaced: %s\n", applied.error().message.c_str());
        return 2;
    }
    if (!config.isns.server.empty()) {
        // A typo is a configuration error now; a server that does not answer is retried later.
        if (auto where = isns::parse_server(config.isns.server); !where) {
            std::fprintf(stderr, "ispaced: iSNS server %s: %s\n", config.isns.server.c_str(),
                         where.error().message.c_str());
            return 2;
        }
    }
    iscsi_target::IsnsSettings isns_settings = config.isns;
    if (config.targets.empty() && !holder) {
        std::fprintf(stderr, "ispaced: nothing to serve: the configuration defines no target (give --iqn and "
                             "--lun)\n");
        return 2;
    }
    // MaxBurstLength above the transfer limit would only invite R2Ts we never send.
    config.negotiation.max_burst_length =
        std::min(config.negotiation.max_burst_length, config.limits.max_transfer_bytes);
    config.negotiation.first_burst_length =
        std::min(config.negotiation.first_burst_length, config.negotiation.max_burst_length);

    // Every thread inherits this mask, so only the sigwait() below sees SIGTERM/SIGINT.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    if (space_service && idle_exit) {
        space_service->on_idle = [] { ::kill(::getpid(), SIGTERM); };
    }
    bool serving = !config.targets.empty();
    if (serving) {
        if (auto served = runtime.serve(std::move(config)); !served) {
            log_error("{}", served.error().message);
            return 1;
        }
        iscsi_target::Server& server = *runtime.target_server();
        for (const net::Endpoint& endpoint : server.portal_endpoints()) {
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

    int signal_number = 0;
    sigwait(&signals, &signal_number);
    log_info("received {}; shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
    if (space_service) {
        // Spaces go before the runtime stops its reactors (their labels are written on them): no more
        // requests, the attached ones detached, the exported ones taken out of the target, then closed.
        holder_socket.reset();
        attach_service.reset(); // its devices are detached by Runtime::stop (forced) below
        space_service->shutdown();
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
