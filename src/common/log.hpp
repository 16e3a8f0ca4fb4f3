// Logging to stderr: one line per event, one write(2) per line so lines from different reactors never
// interleave. Every line is a date and time with its UTC offset, then key=value fields (logfmt):
//
//   2026-11-03T14:02:11.274+01:00 level=info msg="target iqn.2026-11.org.example:a: added"
//   2026-11-03T14:02:11.301+01:00 level=warn event=login.failed peer=10.0.0.7:51412 reason="..."
//
// A value is quoted when it holds a space, '=', '"' or nothing, and escaped (\" \\ \n \t \xNN), so an
// initiator name or a path from the outside can neither break a line in two nor forge a field. Free
// text goes through log_info() and friends (field msg); events that tools may want to filter on go
// through log_event() with their own fields. The level can change at any time (set_log_level is an
// atomic store; the control socket's log.level method calls it).
#pragma once

#include <fmt/format.h>

#include <initializer_list>
#include <string>
#include <string_view>

namespace ispace {

enum class LogLevel { trace = 0, debug, info, warn, error, off };

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "trace|debug|info|warn|error|off"; returns false on anything else.
bool parse_log_level(std::string_view name, LogLevel& out);
std::string_view log_level_name(LogLevel level);
// Free text: `msg="..."`, whatever the current level (callers check the level; log() below does).
void log_write(LogLevel level, std::string_view message);

// One field of an event; the value is formatted by the caller (log_field() does it with fmt).
struct LogField {
    std::string_view key;
    std::string value;
};
template <typename T> LogField log_field(std::string_view key, const T& value) {
    return LogField{key, fmt::format("{}", value)};
}
// `event=NAME` and the fields, in order, if `level` is enabled.
void log_event(LogLevel level, std::string_view event, std::initializer_list<LogField> fields);

// The line log_write()/log_event() would write, without the newline: for tests and for callers that
// send log lines elsewhere. `now_text` replaces the timestamp when not empty.
std::string format_log_line(LogLevel level, std::string_view event, std::string_view message,
                            std::initializer_list<LogField> fields, std::string_view now_text = {});
// A logfmt value: as is when it needs no quoting, else quoted and escaped.
std::string log_quote(std::string_view value);

template <typename... Args> void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
    if (level >= log_level()) {
        log_write(level, fmt::format(format, std::forward<Args>(args)...));
    }
}
template <typename... Args> void log_trace(fmt::format_string<Args...> f, Args&&... a) {
    log(LogLevel::trace, f, std::forward<Args>(a)...);
}
template <typename... Args> void log_debug(fmt::format_string<Args...> f, Args&&... a) {
    log(LogLevel::debug, f, std::forward<Args>(a)...);
}
template <typename... Args> void log_info(fmt::format_string<Args...> f, Args&&... a) {
    log(LogLevel::info, f, std::forward<Args>(a)...);
}
template <typename... Args> void log_warn(fmt::format_string<Args...> f, Args&&... a) {
    log(LogLevel::warn, f, std::forward<Args>(a)...);
}
template <typename... Args> void log_error(fmt::format_string<Args...> f, Args&&... a) {
    log(LogLevel::error, f, std::forward<Args>(a)...);
}

} // namespace ispace
