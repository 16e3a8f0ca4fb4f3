#include "common/log_limit.hpp"

namespace ispace {

LogLimit::Admission LogLimit::admit(Clock::time_point now) {
    std::lock_guard lock(_mutex);
    if (_in_window == 0 || now - _window_start >= _interval) {
        _window_start = now;
        _in_window = 0;
    }
    Admission a;
    if (_in_window >= _burst) {
        if (_pending == 0) {
            _pending_since = now;
        }
        ++_pending;
        _suppressed_total.fetch_add(1, std::memory_order_relaxed);
        return a;
    }
    ++_in_window;
    a.admitted = true;
    a.suppressed = _pending;
    a.window = _pending > 0 ? now - _pending_since : Clock::duration{};
    a.last_in_window = _in_window == _burst;
    _pending = 0;
    return a;
}

std::string LogLimit::describe_suppressed(uint64_t count, Clock::duration window) {
    auto seconds = std::chrono::duration_cast<std::chrono::seconds>(window).count();
    return fmt::format(" ({} more like this suppressed in the last {} s)", count, std::max<long>(seconds, 1));
}

std::string LogLimit::describe_limit() const {
    auto seconds = std::chrono::duration_cast<std::chrono::seconds>(_interval).count();
    return fmt::format(" (more like this within {} s are suppressed and counted)",
                       std::max<long>(seconds, 1));
}

} // namespace ispace
