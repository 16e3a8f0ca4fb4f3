// Prometheus metrics (the text exposition format, version 0.0.4) at http://HOST:PORT/metrics.
//
// Everything is counted where it happens without a shared write: per-LUN counters and latency
// histograms have one set per reactor (scsi/lu.hpp), login failures and Rejects are per reactor
// (iscsi_target::Server), busy time is each reactor's own. A scrape sums them; the I/O path pays a
// few relaxed increments of cache lines its reactor owns.
//
// Names follow the Prometheus conventions: snake_case, a unit suffix (_bytes, _seconds), _total on
// counters, labels for dimensions (target, lun, reason, reactor).
#pragma once

#include "common/result.hpp"
#include "mgmt/runtime.hpp"
#include "net/socket.hpp"

#include <atomic>
#include <string>
#include <thread>

namespace ispace::mgmt {

// The exposition text for what `runtime` serves now. From any thread but a reactor's.
std::string render_metrics(Runtime& runtime);

// A small HTTP/1.x server for scrapes: GET /metrics, one request per connection, on a thread of its
// own (rendering walks every LU; it must not run on a reactor).
class MetricsServer {
public:
    explicit MetricsServer(Runtime& runtime) : _runtime(runtime) {}
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

    // Listens on `listen` (HOST:PORT; port 0 picks one); the address as bound.
    Result<net::Endpoint> start(const std::string& listen);
    void stop();

private:
    void loop();
    void answer(int fd);

    Runtime& _runtime;
    int _listen_fd = -1;
    int _wake_fd = -1;
    std::thread _thread;
    std::atomic<bool> _stopping{false};
};

} // namespace ispace::mgmt
