#include "common/log.hpp"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <string>
#include <sys/time.h>
#include <unistd.h>

namespace ispace {
namespace {
std::atomic<LogLevel> g_level{LogLevel::info};

// "2026-11-03T14:02:11.274+01:00": the date too, since a daemon runs for days; the offset, so that
// lines from hosts in different zones (or before and after a DST change) can be ordered.
std::string timestamp() {
    timeval tv{};
    gettimeofday(&tv, nullptr);
    tm local{};
    localtime_r(&tv.tv_sec, &local);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &local);
    long offset = local.tm_gmtoff / 60;
    char sign = offset < 0 ? '-' : '+';
    offset = std::labs(offset);
    return fmt::format("{}.{:03d}{}{:02d}:{:02d}", date, int(tv.tv_usec / 1000), sign, offset / 60,
                       offset % 60);
}

void write_line(const std::string& line) {
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

void append_field(std::string& line, std::string_view key, std::string_view value) {
    line += ' ';
    line += key;
    line += '=';
    line += log_quote(value);
}

} // namespace

std::string_view log_level_name(LogLevel level) {
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

void set_log_level(LogLevel level) {
    g_level.store(level, std::memory_order_relaxed);
}
LogLevel log_level() {
    return g_level.load(std::memory_order_relaxed);
}

bool parse_log_level(std::string_view name, LogLevel& out) {
    for (auto level :
         {LogLevel::trace, LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error, LogLevel::off}) {
        if (name == log_level_name(level)) {
            out = level;
            return true;
        }
    }
    return false;
}

std::string log_quote(std::string_view value) {
    bool plain = !value.empty();
    for (char c : value) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '"' || c == '=' || c == '\\') {
            plain = false;
            break;
        }
    }
    if (plain) {
        return std::string(value);
    }
    std::string out;
    out.reserve(value.size() + 2);
    out += '"';
    for (char c : value) {
        auto u = static_cast<unsigned char>(c);
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\t':
            out += "\\t";
            break;
        case '\r':
            out += "\\r";
            break;
        default:
            if (u < 0x20 || u == 0x7f) {
                out += fmt::format("\\x{:02x}", u);
            } else {
                out += c;
            }
        }
    }
    out += '"';
    return out;
}

std::string format_log_line(LogLevel level, std::string_view event, std::string_view message,
                            std::initializer_list<LogField> fields, std::string_view now_text) {
    std::string line = now_text.empty() ? timestamp() : std::string(now_text);
    append_field(line, "level", log_level_name(level));
    if (!event.empty()) {
        append_field(line, "event", event);
    }
    if (!message.empty() || (event.empty() && fields.size() == 0)) {
        append_field(line, "msg", message);
    }
    for (const LogField& field : fields) {
        append_field(line, field.key, field.value);
    }
    return line;
}

void log_write(LogLevel level, std::string_view message) {
    write_line(format_log_line(level, {}, message, {}) + '\n');
}

void log_event(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
    if (level < log_level()) {
        return;
    }
    write_line(format_log_line(level, event, {}, fields) + '\n');
}

} // namespace ispace
