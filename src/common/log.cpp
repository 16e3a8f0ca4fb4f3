#include "common/log.hpp"

#include <atomic>
#include <cerrno>
#include <ctime>
#include <string>
#include <sys/time.h>
#include <unistd.h>

namespace ispace {
namespace {
std::atomic<LogLevel> g_level{LogLevel::info};

const char* level_name(LogLevel level) {
    switch (level) {
    case LogLevel::trace:
        return "trace";
    case LogLevel::debug:
        return "debug";
    case LogLevel::info:
        return "info";
    case LogLevel::warn:
        return "warn";
    case LogLevel::error:
        return "error";
    case LogLevel::off:
        return "off";
    }
    return "?";
}
} // namespace

void set_log_level(LogLevel level) {
    g_level.store(level, std::memory_order_relaxed);
}
LogLevel log_level() {
    return g_level.load(std::memory_order_relaxed);
}

bool parse_log_level(std::string_view name, LogLevel& out) {
    for (auto level :
         {LogLevel::trace, LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error, LogLevel::off}) {
        if (name == level_name(level)) {
            out = level;
            return true;
        }
    }
    return false;
}

void log_write(LogLevel level, std::string_view message) {
    timeval tv{};
    gettimeofday(&tv, nullptr);
    tm local{};
    localtime_r(&tv.tv_sec, &local);
    char stamp[32];
    // With the date: a daemon's log outlives a day, and a time alone cannot be placed.
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &local);
    std::string line =
        fmt::format("{}.{:03d} {:5} {}\n", stamp, int(tv.tv_usec / 1000), level_name(level), message);
    const char* p = line.data();
    size_t left = line.size();
    while (left > 0) {
        ssize_t n = ::write(STDERR_FILENO, p, left);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        p += n;
        left -= size_t(n);
    }
}

} // namespace ispace
