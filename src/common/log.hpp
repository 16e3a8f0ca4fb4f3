// Logging to stderr: one write(2) per line so lines from different reactors never interleave.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace ispace {

enum class LogLevel { trace = 0, debug, info, warn, error, off };

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "trace|debug|info|warn|error|off"; returns false on anything else.
bool parse_log_level(std::string_view name, LogLevel& out);
void log_write(LogLevel level, std::string_view message);

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
