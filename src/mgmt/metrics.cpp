#include "mgmt/metrics.hpp"

#include "common/counter.hpp"
#include "common/log.hpp"
#include "scsi/lu.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

// A label value escaped as the exposition format asks (backslash, quote, newline).
std::string label(std::string_view value) {
    std::string out;
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

} // namespace

std::string render_metrics(Runtime& runtime) {
    std::string out;
    auto* server = runtime.target_server();
    if (server == nullptr) {
        return out;
    }
    struct Lu {
        std::string target;
        uint64_t lun;
        scsi::LuStatistics stats;
    };
    std::vector<Lu> lus;
    for (const auto& target : server->targets()) {
        for (uint64_t number : target->device->luns()) {
            if (auto lu = target->device->find_lu(number)) {
                lus.push_back({target->iqn, number, lu->statistics()});
            }
        }
    }
    static constexpr std::string_view classes[] = {"read", "write", "other"};
    for (size_t c = 0; c < scsi::io_class_count; ++c) {
        std::string name = fmt::format("ispace_lun_{}_commands_total", classes[c]);
        family(out, name, "counter",
               fmt::format("SCSI commands of class {} completed by the logical unit", classes[c]));
        for (const Lu& lu : lus) {
            out += fmt::format("{}{{target=\"{}\",lun=\"{}\"}} {}\n", name, label(lu.target), lu.lun,
                               lu.stats.commands[c]);
        }
        if (c == size_t(scsi::IoClass::other)) {
            continue; // other commands move no medium data
        }
        name = fmt::format("ispace_lun_{}_bytes_total", classes[c]);
        family(out, name, "counter", fmt::format("Bytes moved by {} commands", classes[c]));
        for (const Lu& lu : lus) {
            out += fmt::format("{}{{target=\"{}\",lun=\"{}\"}} {}\n", name, label(lu.target), lu.lun,
                               lu.stats.bytes[c]);
        }
    }
    for (size_t c = 0; c < scsi::io_class_count; ++c) {
        std::string name = fmt::format("ispace_lun_{}_latency_seconds", classes[c]);
        family(
            out, name, "histogram",
            fmt::format("Time from a {} command's arrival in the SCSI engine to its completion", classes[c]));
        for (const Lu& lu : lus) {
            std::string labels = fmt::format("target=\"{}\",lun=\"{}\"", label(lu.target), lu.lun);
            uint64_t cumulative = 0;
            for (size_t b = 0; b < LocalHistogram::bucket_count; ++b) {
                cumulative += lu.stats.latency_buckets[c][b];
                std::string le = b < LocalHistogram::bounds_us.size()
                                     ? fmt::format("{}", double(LocalHistogram::bounds_us[b]) / 1e6)
                                     : std::string("+Inf");
                out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, le, cumulative);
            }
            out += fmt::format("{}_sum{{{}}} {}\n", name, labels, double(lu.stats.latency_sum_us[c]) / 1e6);
            out += fmt::format("{}_count{{{}}} {}\n", name, labels, cumulative);
        }
    }
    auto statistics = server->statistics();
    family(out, "ispace_target_sessions", "gauge", "Normal sessions logged in to the target");
    for (const auto& [iqn, t] : statistics.targets) {
        out += fmt::format("ispace_target_sessions{{target=\"{}\"}} {}\n", label(iqn), t.sessions);
    }
    family(out, "ispace_target_connections", "gauge", "Connections of the target's sessions");
    for (const auto& [iqn, t] : statistics.targets) {
        out += fmt::format("ispace_target_connections{{target=\"{}\"}} {}\n", label(iqn), t.connections);
    }
    family(out, "ispace_discovery_sessions_total", "counter", "Discovery sessions logged in");
    out += fmt::format("ispace_discovery_sessions_total {}\n", statistics.discovery_sessions);
    family(out, "ispace_login_failures_total", "counter", "Logins refused or abandoned, by reason");
    for (const auto& [reason, count] : statistics.login_failures) {
        out += fmt::format("ispace_login_failures_total{{reason=\"{}\"}} {}\n", label(reason), count);
    }
    family(out, "ispace_rejected_pdus_total", "counter", "PDUs answered with a Reject, by reason");
    for (const auto& [reason, count] : statistics.rejected_pdus) {
        out += fmt::format("ispace_rejected_pdus_total{{reason=\"{}\"}} {}\n", label(reason), count);
    }
    family(out, "ispace_recovery_events_total", "counter",
           "ErrorRecoveryLevel 1 work (RFC 7143 §7.1-7.2): recovery R2Ts, SNACKs answered or refused, "
           "PDUs skipped after a header digest error");
    for (const auto& [event, count] : statistics.recovery) {
        out += fmt::format("ispace_recovery_events_total{{event=\"{}\"}} {}\n", label(event), count);
    }
    family(out, "ispace_reactor_busy_seconds_total", "counter",
           "Time the reactor's loop spent working rather than waiting; its rate is the busy fraction");
    net::ReactorGroup& reactors = server->reactors();
    for (unsigned i = 0; i < reactors.size(); ++i) {
        out += fmt::format("ispace_reactor_busy_seconds_total{{reactor=\"{}\"}} {}\n", i,
                           std::chrono::duration<double>(reactors.at(i).busy_time()).count());
    }
    return out;
}

MetricsServer::~MetricsServer() {
    stop();
}

Result<net::Endpoint> MetricsServer::start(const std::string& listen) {
    auto where = net::parse_endpoint(listen, 9100);
    if (!where) {
        return make_error(fmt::format("--metrics {}: {}", listen, where.error().message), EINVAL);
    }
    auto fd = net::listen_tcp(*where, 16);
    if (!fd) {
        return make_error(fmt::format("--metrics {}: {}", listen, fd.error().message), fd.error().code);
    }
    _listen_fd = *fd;
    auto bound = net::local_endpoint(_listen_fd);
    if (!bound) {
        stop();
        return bound.error();
    }
    _wake_fd = ::eventfd(0, EFD_CLOEXEC);
    _thread = std::thread([this] { loop(); });
    return bound;
}

void MetricsServer::stop() {
    if (_stopping.exchange(true)) {
        return;
    }
    if (_wake_fd >= 0) {
        uint64_t one = 1;
        (void)!::write(_wake_fd, &one, sizeof(one));
    }
    if (_thread.joinable()) {
        _thread.join();
    }
    if (_listen_fd >= 0) {
        ::close(std::exchange(_listen_fd, -1));
    }
    if (_wake_fd >= 0) {
        ::close(std::exchange(_wake_fd, -1));
    }
}

void MetricsServer::loop() {
    while (!_stopping.load()) {
        pollfd fds[2] = {{_listen_fd, POLLIN, 0}, {_wake_fd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        if (fds[1].revents != 0) {
            return;
        }
        auto fd = net::accept_tcp(_listen_fd);
        if (!fd) {
            continue;
        }
        answer(*fd);
        ::close(*fd);
    }
}

void MetricsServer::answer(int fd) {
    // The request head, read with a deadline and a size bound: a scraper sends a few hundred bytes.
    std::string head;
    char chunk[2048];
    while (head.find("\r\n\r\n") == std::string::npos && head.find("\n\n") == std::string::npos) {
        pollfd p{fd, POLLIN, 0};
        if (head.size() > 8192 || ::poll(&p, 1, 2000) <= 0) {
            return;
        }
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            return;
        }
        head.append(chunk, size_t(n));
    }
    std::string_view line(head.data(), head.find_first_of("\r\n"));
    std::string status = "200 OK";
    std::string type = "text/plain; version=0.0.4; charset=utf-8";
    std::string body;
    if (line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") || line == "GET /metrics") {
        body = render_metrics(_runtime);
    } else if (line.starts_with("GET ")) {
        status = "404 Not Found";
        type = "text/plain";
        body = "ispaced serves its metrics at /metrics\n";
    } else {
        status = "405 Method Not Allowed";
        type = "text/plain";
        body = "only GET /metrics\n";
    }
    std::string response = fmt::format("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: "
                                       "close\r\n\r\n{}",
                                       status, type, body.size(), body);
    std::string_view rest = response;
    while (!rest.empty()) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 5000) <= 0) {
            return;
        }
        ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        rest.remove_prefix(size_t(n));
    }
}

} // namespace ispace::mgmt
