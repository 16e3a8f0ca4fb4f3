// ispaced: the ispace iSCSI target daemon.
//
// Quick mode serves one target from the command line:
//   ispaced --listen 127.0.0.1:3260 --iqn IQN --lun PATH[,size=1G][,block=512|4096][,thin][,ro] [--lun ...]
#include "common/log.hpp"
#include "common/units.hpp"
#include "target/server.hpp"

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <pthread.h>
#include <string>
#include <vector>

using namespace ispace;

namespace {

const char* const description = R"(ispaced - the ispace iSCSI target

Serves logical units over iSCSI (RFC 7143). Quick mode takes everything from the command line:

  ispaced --listen 127.0.0.1:3260 --iqn iqn.2026-11.org.example:disk1 \
          --lun /srv/disk1.img,size=10G,thin --lun memory:1G

LUNs are numbered from 0 in the order given. LUN specs:
  PATH[,size=SIZE][,block=512|4096][,thin][,ro][,direct]
        a file (created when missing and size= is given; sparse with thin, where UNMAP
        punches holes) or a block device
  memory:SIZE[,block=..]   a RAM disk, allocated as it is written
  null:SIZE[,block=..]     reads return zeroes, writes are discarded (benchmarks)
Sizes take K, M, G, T suffixes (powers of 1024).

Once it listens, ispaced prints one "ready: iscsi://HOST:PORT/IQN/LUN" line per portal and LUN on
stderr. SIGTERM or SIGINT closes every connection, flushes the backstores and exits 0.
)";

} // namespace

int main(int argc, char** argv) {
    CLI::App app{description, "ispaced"};

    std::vector<std::string> listen;
    std::string iqn;
    std::string alias;
    std::vector<std::string> luns;
    unsigned reactors = 0;
    std::string log_level = "info";
    target::Limits limits;
    uint32_t queue_depth = limits.queue_depth;
    std::string max_transfer = "8M";
    unsigned login_timeout_ms = unsigned(limits.login_timeout.count());
    unsigned nop_interval_ms = unsigned(limits.nop_interval.count());
    unsigned nop_timeout_ms = unsigned(limits.nop_timeout.count());

    app.add_option("--listen", listen,
                   "Portal to listen on, HOST:PORT (repeat for several; each is its own portal group; "
                   "port 0 picks a free port)")
        ->default_str("127.0.0.1:3260");
    app.add_option("--iqn", iqn, "iSCSI name of the target, e.g. iqn.2026-11.org.example:disk1")->required();
    app.add_option("--alias", alias, "TargetAlias shown to initiators");
    app.add_option("--lun", luns, "A logical unit (see LUN specs above); repeat for more")->required();
    app.add_option("--reactors", reactors, "Event-loop threads (default: one per core)");
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error")->default_str("info");
    app.add_option("--queue-depth", queue_depth, "Commands a session may have outstanding (CmdSN window)")
        ->default_val(queue_depth)
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--max-transfer", max_transfer, "Largest data transfer of one command")->default_str("8M");
    app.add_option("--login-timeout-ms", login_timeout_ms, "Drop a connection whose login takes longer")
        ->default_val(login_timeout_ms);
    app.add_option("--nop-interval-ms", nop_interval_ms, "Ping an idle connection after this long")
        ->default_val(nop_interval_ms);
    app.add_option("--nop-timeout-ms", nop_timeout_ms, "Drop a connection silent for this long")
        ->default_val(nop_timeout_ms);

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

    target::ServerConfig config;
    config.reactors = reactors;
    config.negotiation = target::default_target_negotiation();
    config.negotiation.alias = alias;
    if (listen.empty()) {
        listen.push_back("127.0.0.1:3260");
    }
    uint16_t tpgt = 1;
    for (const std::string& portal : listen) {
        config.portals.push_back({portal, tpgt++});
    }
    target::TargetConfig target;
    target.iqn = iqn;
    target.alias = alias;
    for (size_t i = 0; i < luns.size(); ++i) {
        auto spec = backstore::parse_device_spec(luns[i]);
        if (!spec) {
            std::fprintf(stderr, "ispaced: lun %zu (%s): %s\n", i, luns[i].c_str(), spec.error().message.c_str());
            return 2;
        }
        target.luns.push_back({uint64_t(i), luns[i], *spec});
    }
    config.targets.push_back(std::move(target));

    auto max_transfer_bytes = parse_size(max_transfer);
    if (!max_transfer_bytes || *max_transfer_bytes < 4096 || *max_transfer_bytes > (64u << 20)) {
        std::fprintf(stderr, "ispaced: --max-transfer must be a size from 4K to 64M\n");
        return 2;
    }
    config.limits.queue_depth = queue_depth;
    config.limits.max_transfer_bytes = uint32_t(*max_transfer_bytes);
    config.limits.login_timeout = std::chrono::milliseconds(login_timeout_ms);
    config.limits.nop_interval = std::chrono::milliseconds(nop_interval_ms);
    config.limits.nop_timeout = std::chrono::milliseconds(std::max(nop_timeout_ms, nop_interval_ms));
    // MaxBurstLength above the transfer limit would only invite R2Ts we never send.
    config.negotiation.max_burst_length = std::min(config.negotiation.max_burst_length, config.limits.max_transfer_bytes);
    config.negotiation.first_burst_length =
        std::min(config.negotiation.first_burst_length, config.negotiation.max_burst_length);

    // Every thread inherits this mask, so only the sigwait() below sees SIGTERM/SIGINT.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    target::Server server(std::move(config));
    if (auto started = server.start(); !started) {
        log_error("{}", started.error().message);
        return 1;
    }
    for (const net::Endpoint& endpoint : server.portal_endpoints()) {
        for (auto& served : server.targets()) {
            for (const target::LunConfig& lun : served->config.luns) {
                // Printed whatever the log level: scripts wait for these lines.
                log_write(LogLevel::info,
                          fmt::format("ready: iscsi://{}/{}/{}", endpoint.to_string(), served->config.iqn, lun.lun));
            }
        }
    }

    int signal_number = 0;
    sigwait(&signals, &signal_number);
    log_info("received {}; shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
    bool clean = server.shutdown(std::chrono::seconds(10));
    return clean ? 0 : 1;
}
