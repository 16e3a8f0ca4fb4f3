// What every device shares: events and their observers, resize's checks; helpers for the kinds.
#include "backstore/device.hpp"

#include "backstore/detail.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <random>
#include <sys/stat.h>
#include <unistd.h>

namespace ispace::backstore {

namespace detail {

uint64_t random_identity() {
    static std::atomic<uint64_t> counter{0};
    std::random_device rd;
    uint64_t seed = (uint64_t(rd()) << 32) ^ rd();
    seed ^= uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    seed ^= uint64_t(::getpid()) << 20;
    return mix64(seed + counter.fetch_add(1, std::memory_order_relaxed));
}

std::string compact_size(uint64_t bytes) {
    static constexpr struct {
        unsigned shift;
        char suffix;
    } units[] = {{40, 'T'}, {30, 'G'}, {20, 'M'}, {10, 'k'}};
    for (auto u : units) {
        uint64_t unit = uint64_t(1) << u.shift;
        if (bytes >= unit && bytes % unit == 0) {
            return fmt::format("{}{}", bytes / unit, u.suffix);
        }
    }
    return std::to_string(bytes);
}

} // namespace detail

std::string_view to_string(DeviceEvent event) {
    switch (event) {
    case DeviceEvent::resized:
        return "resized";
    case DeviceEvent::failed:
        return "failed";
    case DeviceEvent::removed:
        return "removed";
    }
    return "unknown";
}

Result<void> Device::resize(uint64_t) {
    return make_error(fmt::format("{}: a {} device cannot be resized", describe(), kind()), ENOTSUP);
}

Result<uint64_t> Device::rescan() {
    return geometry().bytes();
}

Result<void> Device::check_resize(uint64_t bytes) const {
    uint32_t bs = geometry().block_size;
    if (bytes == 0 || bytes % bs != 0) {
        return make_error(
            fmt::format("{}: new size {} bytes is not a non-zero multiple of the {}-byte block size",
                        describe(), bytes, bs),
            EINVAL);
    }
    if (features().read_only) {
        return make_error(fmt::format("{}: read-only; it cannot be resized", describe()), EROFS);
    }
    return {};
}

void Device::subscribe(DeviceObserver* observer) {
    std::lock_guard lock(_observers_mutex);
    _observers.push_back(observer);
}

void Device::unsubscribe(DeviceObserver* observer) {
    std::lock_guard lock(_observers_mutex);
    std::erase(_observers, observer);
}

void Device::notify(DeviceEvent event) {
    std::lock_guard lock(_observers_mutex);
    for (DeviceObserver* observer : _observers) {
        observer->device_event(event);
    }
}

} // namespace ispace::backstore
