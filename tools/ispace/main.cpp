// ispace: the command line client of the ispace initiator library.
#include "cli.hpp"

#include "common/log.hpp"
#include "common/secret.hpp"
#include "common/units.hpp"
#include "iscsi/text.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <unistd.h>

namespace ispace::cli {

void error(std::string_view message) {
    fmt::print(stderr, "ispace: {}\n", message);
}
void warning(std::string_view message) {
    fmt::print(stderr, "ispace: warning: {}\n", message);
}

Result<Url> parse_lun_url(std::string_view text) {
    auto url = initiator::parse_url(text);
    if (!url) {
        return url;
    }
    if (url->target_name.empty() || !url->lun) {
        return make_error(
            fmt::format(
                "URL '{}' names no target and LUN (expected iscsi://[user%secret@]HOST[:PORT]/IQN/LUN)",
                initiator::redact_url(text)),
            EINVAL);
    }
    return url;
}

std::string redact_urls(std::string_view text) {
    // URLs end at whitespace or a quote, as CLI11 and our own messages print them.
    std::string out;
    size_t at = 0;
    while (true) {
        size_t url = text.find("iscsi://", at);
        if (url == std::string_view::npos) {
            out.append(text.substr(at));
            return out;
        }
        out.append(text.substr(at, url - at));
        size_t end = text.find_first_of(" \t\n'\"", url);
        if (end == std::string_view::npos) {
            end = text.size();
        }
        out += initiator::redact_url(text.substr(url, end - url));
        at = end;
    }
}

void hide_url_secrets(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        size_t url = arg.find("iscsi://");
        if (url == std::string_view::npos) {
            continue;
        }
        std::string_view rest = arg.substr(url + 8);
        std::string_view before_query = rest.substr(0, rest.find('?'));
        if (size_t at = before_query.rfind('@'); at != std::string_view::npos) {
            std::string_view userinfo = before_query.substr(0, at);
            if (size_t sep = userinfo.find('%'); sep != std::string_view::npos) {
                scrub_argv(argc, argv, std::string(userinfo.substr(sep + 1)));
            }
        }
        if (size_t key = rest.find("target_password="); key != std::string_view::npos) {
            std::string_view value = rest.substr(key + 16);
            scrub_argv(argc, argv, std::string(value.substr(0, value.find('&'))));
        }
    }
}

Result<std::optional<DigestMode>> parse_digest_option(std::string_view text) {
    if (text.empty()) {
        return std::optional<DigestMode>{};
    }
    // "crc32c": digests whenever the target does them (tgt, for one, answers None unless configured);
    // the fall-back is reported. "crc32c-only": refuse to go on without them.
    if (text == "crc32c" || text == "CRC32C") {
        return std::optional<DigestMode>{DigestMode::crc32c_or_none};
    }
    if (text == "crc32c-only") {
        return std::optional<DigestMode>{DigestMode::crc32c};
    }
    if (text == "none" || text == "None") {
        return std::optional<DigestMode>{DigestMode::none};
    }
    return make_error(fmt::format("--digest {}: expected crc32c, crc32c-only or none", text), EINVAL);
}

initiator::InitiatorOptions initiator_options(const GlobalOptions& global) {
    initiator::InitiatorOptions o;
    o.threads = global.threads;
    o.initiator_name = global.initiator_name;
    return o;
}

initiator::SessionOptions session_options(const Url& url, const SessionKnobs& knobs,
                                          std::optional<DigestMode> digest) {
    initiator::SessionOptions o;
    o.host = url.host;
    o.port = url.port;
    o.target_name = url.target_name;
    o.chap = url.chap;
    o.connections = std::max(knobs.connections, 1u);
    o.header_digest = digest.value_or(url.header_digest.value_or(DigestMode::none));
    o.data_digest = digest.value_or(url.data_digest.value_or(DigestMode::none));
    // Room for the pipeline plus the commands the library itself may add (retries).
    o.queue_depth = std::max(knobs.queue_depth * 2, 16u);
    return o;
}

Result<std::shared_ptr<Session>> open_session(Initiator& ini, const Url& url, const SessionKnobs& knobs) {
    auto digest = parse_digest_option(knobs.digest);
    if (!digest) {
        return std::move(digest).error();
    }
    auto session = ini.connect(session_options(url, knobs, *digest));
    if (!session) {
        return std::move(session).error();
    }
    auto info = (*session)->info();
    bool wanted = digest->value_or(url.header_digest.value_or(DigestMode::none)) != DigestMode::none;
    if (wanted && !(info.header_digest && info.data_digest)) {
        warning(fmt::format(
            "{} does not use CRC32C digests (it answered HeaderDigest={} DataDigest={}); going on "
            "without them (--digest crc32c-only refuses)",
            url.target_name, info.header_digest ? "CRC32C" : "None", info.data_digest ? "CRC32C" : "None"));
    }
    if (knobs.connections > 1 && info.connections < knobs.connections) {
        warning(fmt::format("{} allows {} connection(s) per session; using {}", url.target_name,
                            info.connections, info.connections));
    }
    return session;
}

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int i = 0;
    while (bytes >= 1024 && i < 5) {
        bytes /= 1024;
        ++i;
    }
    return i == 0 ? fmt::format("{:.0f} {}", bytes, units[i]) : fmt::format("{:.1f} {}", bytes, units[i]);
}

std::string human_duration(double seconds) {
    if (seconds < 60) {
        return fmt::format("{:.1f} s", seconds);
    }
    auto s = uint64_t(seconds);
    return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

bool stderr_is_tty() {
    return ::isatty(STDERR_FILENO) == 1;
}

Progress::Progress(uint64_t total, bool enabled)
    : _total(total), _enabled(enabled), _start(std::chrono::steady_clock::now()) {}

void Progress::update(uint64_t done) {
    if (!_enabled) {
        return;
    }
    auto now = std::chrono::steady_clock::now();
    if (now - _last_draw < std::chrono::milliseconds(100) && done < _total) {
        return;
    }
    _last_draw = now;
    draw(done);
}

void Progress::draw(uint64_t done) {
    constexpr int width = 30;
    double fraction = _total == 0 ? 1.0 : double(done) / double(_total);
    int filled = int(fraction * width);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - _start).count();
    double rate = elapsed > 0 ? double(done) / elapsed : 0;
    std::string eta = rate > 0 && done < _total ? " ETA " + human_duration(double(_total - done) / rate) : "";
    std::string line =
        fmt::format("\r[{}{}] {:3.0f}%  {} / {}  {}/s{}", std::string(size_t(filled), '#'),
                    std::string(size_t(width - filled), ' '), fraction * 100, human_bytes(double(done)),
                    human_bytes(double(_total)), human_bytes(rate), eta);
    size_t shown = line.size();
    if (shown < _last_width) {
        line.append(_last_width - shown, ' ');
    }
    _last_width = shown;
    fmt::print(stderr, "{}", line);
    std::fflush(stderr);
}

void Progress::finish() {
    if (!_enabled || _last_width == 0) {
        return;
    }
    fmt::print(stderr, "\r{}\r", std::string(_last_width, ' '));
    std::fflush(stderr);
}

} // namespace ispace::cli

int main(int argc, char** argv) {
    using namespace ispace::cli;
    std::signal(SIGPIPE, SIG_IGN);

    CLI::App app{"ispace: an iSCSI client (lists targets, copies to and from LUNs, measures them) and the "
                 "administration tool of ispaced (--control PATH).",
                 "ispace"};
    app.set_help_all_flag("--help-all", "Show the help of every command");
    app.set_version_flag("--version", std::string("ispace ") + ISPACE_VERSION);
    app.require_subcommand(1);
    app.fallthrough(); // global options may follow the command: `ispace ls -i IQN URL`
    GlobalOptions global;
    app.add_option("-i,--initiator", global.initiator_name, "Our iSCSI initiator name (InitiatorName)")
        ->default_str(std::string(ispace::initiator::default_initiator_name))
        // `-i ""` used to fall back to the default name without a word; a name the target would
        // refuse at login is better refused here, with the rule it breaks.
        ->check([](const std::string& name) -> std::string {
            if (auto valid = ispace::iscsi::check_iscsi_name(name); !valid) {
                return fmt::format("'{}' is not a valid iSCSI name: {} (RFC 3720 §3.2.6.3)", name,
                                   valid.error().message);
            }
            return {};
        });
    app.add_option("--threads", global.threads, "Reactor threads (default: one per core)")
        // Each is a thread with its own epoll and eventfd: 100,000 ran out of descriptors and aborted.
        ->check(CLI::Range(0u, 1024u));
    app.add_option("--log-level", global.log_level, "trace, debug, info, warn, error or off")
        ->default_str("warn");
    app.footer(R"(URLs:
  iscsi://[user%secret@]HOST[:PORT]/IQN/LUN    a LUN (PORT defaults to 3260)
  iscsi://[user%secret@]HOST[:PORT]            a portal, for `ls`
  user%secret logs in with CHAP; add ?header_digest=crc32c&data_digest=crc32c for digests.
  iscsi://user@HOST/... takes the secret from $ISPACE_CHAP_SECRET instead, out of sight of `ps`
  (and ?target_user=NAME for mutual CHAP, without target_password, from $ISPACE_CHAP_TARGET_SECRET).

Examples:
  ispace ls iscsi://192.0.2.10
  ispace inq iscsi://192.0.2.10/iqn.2026-01.com.example:store/1
  ispace cp disk.img iscsi://192.0.2.10/iqn.2026-01.com.example:store/1
  ispace cp --connections 4 --digest crc32c iscsi://h/iqn.2026-01.com.example:a/1 backup.raw
  ispace bench iscsi://h/iqn.2026-01.com.example:a/1 --rw randread --bs 4k --qd 32 --time 10
  ispace --control /run/ispace/ispaced.sock target create iqn.2026-01.com.example:store
  ispace lun add iqn.2026-01.com.example:store /srv/store.img,size=10G,thin   (with $ISPACE_CONTROL set)
  ispace session list --json
  ispace space create home --layout mirror --member iscsi://a/iqn.2026-01.com.example:a/0 \
                           --member iscsi://b/iqn.2026-01.com.example:b/0
  ispace space attach home          (prints the block device)

Run `ispace COMMAND --help` for a command's options; docs/cli.md has more.)");

    std::vector<std::pair<CLI::App*, Runner>> commands;
    std::pair<const char*, Runner (*)(CLI::App&, GlobalOptions&)> table[] = {
        {"ls", add_ls},           {"cp", add_cp},       {"bench", add_bench},   {"inq", add_inq},
        {"readcap", add_readcap}, {"space", add_space}, {"attach", add_attach}, {"detach", add_detach},
    };
    for (auto& [name, fn] : table) {
        Runner r = fn(app, global);
        commands.emplace_back(app.get_subcommand(name), std::move(r));
    }
    Runner admin = add_admin(app, global);
    for (const char* name :
         {"target", "portal", "lun", "acl", "chap", "session", "param", "config", "apply", "status", "log"}) {
        commands.emplace_back(app.get_subcommand(name), admin);
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e); // --help, --version
    } catch (const CLI::ParseError& e) {
        // Our words and exit code (2), not CLI11's (105, 109, ...); a URL it quotes loses its secret.
        error(redact_urls(e.what()));
        fmt::print(stderr, "Run `ispace --help` (or `ispace COMMAND --help`) for usage.\n");
        return exit_usage;
    }
    // Parsed and copied: the secrets in the arguments go from /proc/PID/cmdline (what `ps` shows).
    hide_url_secrets(argc, argv);
    ispace::LogLevel level;
    if (!ispace::parse_log_level(global.log_level, level)) {
        error(
            fmt::format("--log-level {}: expected trace, debug, info, warn, error or off", global.log_level));
        return exit_usage;
    }
    ispace::set_log_level(level);
    for (auto& [sub, run] : commands) {
        if (sub != nullptr && sub->parsed()) {
            int status = run();
            // A listing written to a full disk (`ispace ls --json > out.json`) exited 0 with the output cut
            // short: stdio's errors are only seen here. A reader that went away (`| head`) is not news.
            if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
                int err = errno;
                if (err != EPIPE) {
                    error(fmt::format("writing to stdout: {}", std::strerror(err)));
                }
                return exit_failure;
            }
            return status;
        }
    }
    error("no command given (try --help)");
    return exit_usage;
}
