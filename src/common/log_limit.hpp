// Rate limits for log lines that a peer can provoke at will (a refused command, a failed login, a
// connection refused at accept): without one, an attacker writes the log instead of the daemon — the
// probe behind this got 196 MB of log in 10 s from rejected immediate commands.
//
// A LogLimit lets `burst` lines through per `interval`; the rest are counted, not formatted, and the
// first line let through afterwards ends with "(N more like this suppressed in the last T s)"; the
// last line before the limit bites says so, so that a reader knows at once. The total is kept for
// metrics. One LogLimit per kind of line (a static at the call site), shared by
// every reactor: what it bounds is the log's volume, whoever causes it.
#pragma once

#include "common/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace ispace {

class LogLimit {
public:
    using Clock = std::chrono::steady_clock;

    explicit LogLimit(unsigned burst = 10, Clock::duration interval = std::chrono::seconds(10))
        : _burst(burst), _interval(interval) {}
    LogLimit(const LogLimit&) = delete;
    LogLimit& operator=(const LogLimit&) = delete;

    template <typename... Args> void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
        if (level < log_level()) {
            return;
        }
        Admission a = admit(Clock::now());
        if (!a.admitted) {
            return;
        }
        std::string message = fmt::format(format, std::forward<Args>(args)...);
        if (a.suppressed > 0) {
            message += describe_suppressed(a.suppressed, a.window);
        }
        if (a.last_in_window) {
            message += describe_limit();
        }
        log_write(level, message);
    }
    template <typename... Args> void warn(fmt::format_string<Args...> format, Args&&... args) {
        log(LogLevel::warn, format, std::forward<Args>(args)...);
    }

    // Whether a line may go out at `now`; if so, `suppressed` is how many were held back since the
    // last one that went out, over `window`, and `last_in_window` says the limit bites after it. For
    // callers that format by themselves, and for tests.
    struct Admission {
        bool admitted = false;
        uint64_t suppressed = 0;
        Clock::duration window{};
        bool last_in_window = false;
    };
    Admission admit(Clock::time_point now);
    // Lines held back since the process started.
    uint64_t suppressed_total() const { return _suppressed_total.load(std::memory_order_relaxed); }

    static std::string describe_suppressed(uint64_t count, Clock::duration window);
    std::string describe_limit() const;

private:
    const unsigned _burst;
    const Clock::duration _interval;
    std::mutex _mutex;
    Clock::time_point _window_start{};
    unsigned _in_window = 0;
    uint64_t _pending = 0; // suppressed since the last line that went out
    Clock::time_point _pending_since{};
    std::atomic<uint64_t> _suppressed_total{0};
};

} // namespace ispace
