// Shared pieces of the `ispace` command line tool: global options, URL handling, session set-up,
// progress display. Each sub-command lives in its own cmd_*.cpp.
#pragma once

#include "ispace/initiator.hpp"
#include "ispace/result.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ispace::cli {

using initiator::DigestMode;
using initiator::Initiator;
using initiator::Session;
using initiator::Url;

struct GlobalOptions {
    std::string initiator_name{initiator::default_initiator_name};
    unsigned threads = 0;
    std::string log_level = "warn";
};

// Per-session knobs shared by cp and bench.
struct SessionKnobs {
    unsigned connections = 1;
    std::string digest; // "", "crc32c" or "none"
    unsigned queue_depth = 32;
};

// Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong.
constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

// Prints "ispace: <message>" to stderr.
void error(std::string_view message);
void warning(std::string_view message);

// Parses an iscsi:// URL that must name a target and a LUN.
Result<Url> parse_lun_url(std::string_view text);
// `text` with every iscsi:// URL in it redacted (initiator::redact_url), for messages that quote input.
std::string redact_urls(std::string_view text);
// "crc32c" / "none" / "" (keep the URL's or the default).
Result<std::optional<DigestMode>> parse_digest_option(std::string_view text);

initiator::InitiatorOptions initiator_options(const GlobalOptions& global);
initiator::SessionOptions session_options(const Url& url, const SessionKnobs& knobs,
                                          std::optional<DigestMode> digest);
Result<std::shared_ptr<Session>> open_session(Initiator& ini, const Url& url, const SessionKnobs& knobs);

// The files of the ext4 filesystem on `device` that hold the given byte offsets of it, as (offset, path)
// pairs; offsets in no file, or a device without ext4 or without e2fsprogs' debugfs, give none
// (ext4_files.cpp).
std::vector<std::pair<uint64_t, std::string>> ext4_files_at(const std::string& device,
                                                            const std::vector<uint64_t>& offsets);

std::string human_bytes(double bytes); // "12.3 MiB"
std::string human_duration(double seconds);
bool stderr_is_tty();

// A one-line progress bar redrawn on stderr, at most ten times a second; only on a terminal.
class Progress {
public:
    Progress(uint64_t total, bool enabled);
    void update(uint64_t done);
    // Clears the bar.
    void finish();

private:
    void draw(uint64_t done);
    uint64_t _total;
    bool _enabled;
    std::chrono::steady_clock::time_point _start;
    std::chrono::steady_clock::time_point _last_draw{};
    size_t _last_width = 0;
};

// Sends one request to the holder of `home` ($ISPACE_HOME's ispaced, mgmt/space_service.hpp) and returns
// its answer. When none runs: with `start`, starts one (ispaced --holder --idle-exit, logging to
// home/ispaced.log) and asks it; else the error (ENOENT or ECONNREFUSED). cmd_space.cpp.
Result<nlohmann::json> request_holder(const std::string& home, const nlohmann::json& request, bool start);

// Sub-commands: each registers itself and returns the function main() runs when it was chosen.
using Runner = std::function<int()>;
Runner add_ls(CLI::App& app, GlobalOptions& global);
Runner add_cp(CLI::App& app, GlobalOptions& global);
Runner add_bench(CLI::App& app, GlobalOptions& global);
Runner add_inq(CLI::App& app, GlobalOptions& global);
Runner add_readcap(CLI::App& app, GlobalOptions& global);
// The administration commands (target, portal, lun, acl, chap, session, param, config, apply, status,
// log) and the global --control option; the runner runs whichever of them was chosen.
Runner add_admin(CLI::App& app, GlobalOptions& global);
Runner add_space(CLI::App& app, GlobalOptions& global);
Runner add_attach(CLI::App& app, GlobalOptions& global);
Runner add_detach(CLI::App& app, GlobalOptions& global);

// `ls isns://HOST[:PORT]` (cmd_isns.cpp).
bool is_isns_url(std::string_view text);
int run_ls_isns(GlobalOptions& global, std::string_view url_text, bool as_json);

} // namespace ispace::cli
