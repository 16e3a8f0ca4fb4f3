// parse_device_spec and open_device: from a --lun argument to an open backstore.
#include "backstore/device.hpp"

#include "backstore/block/block_device.hpp"
#include "backstore/detail.hpp"
#include "backstore/file/file_device.hpp"
#include "backstore/memory/memory_device.hpp"
#include "backstore/null/null_device.hpp"
#include "common/units.hpp"

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

namespace {

std::vector<std::string_view> split(std::string_view text, char sep) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (;;) {
        size_t at = text.find(sep, start);
        parts.push_back(
            text.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
        if (at == std::string_view::npos) {
            return parts;
        }
        start = at + 1;
    }
}

} // namespace

Result<DeviceSpec> parse_device_spec(std::string_view text) {
    auto error = [&](std::string why) {
        return make_error(fmt::format("device '{}': {}", text, why), EINVAL);
    };
    if (text.empty()) {
        return error("empty; expected PATH[,options], memory:SIZE or null:SIZE");
    }
    auto parts = split(text, ',');
    std::string_view head = parts[0];
    DeviceSpec spec;
    bool is_virtual = false;
    for (auto [prefix, kind] : {std::pair{std::string_view("memory"), DeviceSpec::Kind::memory},
                                std::pair{std::string_view("null"), DeviceSpec::Kind::null}}) {
        if (head == prefix || head.starts_with(fmt::format("{}:", prefix))) {
            std::string_view size_text = head.size() > prefix.size() ? head.substr(prefix.size() + 1) : "";
            if (size_text.empty()) {
                return error(fmt::format("{} needs a size, e.g. {}:1G (a file named '{}' is ./{})", prefix,
                                         prefix, prefix, prefix));
            }
            auto size = parse_size(size_text);
            if (!size) {
                return error(fmt::format("bad size '{}': {}", size_text, size.error().message));
            }
            if (*size == 0) {
                return error(fmt::format("{} size must be greater than 0", prefix));
            }
            spec.kind = kind;
            spec.size = *size;
            spec.path.clear();
            is_virtual = true;
        }
    }
    if (!is_virtual) {
        if (head.empty()) {
            return error("empty path");
        }
        spec.path = std::string(head);
    }

    bool seen_size = false, seen_block = false, seen_thin = false, seen_ro = false, seen_direct = false;
    for (size_t i = 1; i < parts.size(); ++i) {
        std::string_view option = parts[i];
        size_t eq = option.find('=');
        std::string_view key = option.substr(0, eq);
        std::optional<std::string_view> value;
        if (eq != std::string_view::npos) {
            value = option.substr(eq + 1);
        }
        if (option.empty()) {
            return error("empty option (a stray comma?)");
        }
        auto once = [&](bool& seen) -> bool {
            bool first = !seen;
            seen = true;
            return first;
        };
        auto file_only = [&]() { return is_virtual; };

        if (key == "block") {
            if (!value || value->empty()) {
                return error("block= needs a value: 512 or 4096");
            }
            if (!once(seen_block)) {
                return error("option 'block' given twice");
            }
            auto bs = parse_size(*value);
            if (!bs || (*bs != 512 && *bs != 4096)) {
                return error(fmt::format("block={}: the block size must be 512 or 4096", *value));
            }
            spec.block_size = uint32_t(*bs);
        } else if (key == "size" || key == "thin" || key == "ro" || key == "direct") {
            if (file_only()) {
                return error(fmt::format("option '{}' applies to files and block devices, not to {}", key,
                                         spec.kind == DeviceSpec::Kind::memory ? "memory:" : "null:"));
            }
            if (key == "size") {
                if (!value || value->empty()) {
                    return error("size= needs a value, e.g. size=10G");
                }
                if (!once(seen_size)) {
                    return error("option 'size' given twice");
                }
                auto size = parse_size(*value);
                if (!size) {
                    return error(fmt::format("bad size '{}': {}", *value, size.error().message));
                }
                if (*size == 0) {
                    return error("size=0: the size must be at least one block");
                }
                spec.size = *size;
                continue;
            }
            if (value) {
                return error(fmt::format("option '{}' takes no value", key));
            }
            bool& seen = key == "thin" ? seen_thin : key == "ro" ? seen_ro : seen_direct;
            if (!once(seen)) {
                return error(fmt::format("option '{}' given twice", key));
            }
            (key == "thin" ? spec.thin : key == "ro" ? spec.read_only : spec.direct) = true;
        } else {
            return error(fmt::format("unknown option '{}' (expected {})", option,
                                     is_virtual ? "block=" : "size=, block=, thin, ro or direct"));
        }
    }
    if (spec.size % spec.block_size != 0) {
        return error(fmt::format("size {} ({} bytes) is not a multiple of the {}-byte block size",
                                 detail::compact_size(spec.size), spec.size, spec.block_size));
    }
    return spec;
}

Result<std::unique_ptr<Device>> open_device(const DeviceSpec& spec) {
    switch (spec.kind) {
    case DeviceSpec::Kind::memory:
    case DeviceSpec::Kind::null: {
        if (spec.size == 0 || spec.size % spec.block_size != 0 ||
            (spec.block_size != 512 && spec.block_size != 4096)) {
            return make_error(
                fmt::format("{}: size {} with block size {}: the size must be a non-zero multiple of "
                            "the block size (512 or 4096)",
                            spec.kind == DeviceSpec::Kind::memory ? "memory" : "null", spec.size,
                            spec.block_size),
                EINVAL);
        }
        if (spec.kind == DeviceSpec::Kind::memory) {
            return std::unique_ptr<Device>(std::make_unique<MemoryDevice>(spec.size, spec.block_size));
        }
        return std::unique_ptr<Device>(std::make_unique<NullDevice>(spec.size, spec.block_size));
    }
    case DeviceSpec::Kind::block:
        return BlockDevice::open(spec);
    case DeviceSpec::Kind::file:
        break;
    }
    struct stat st {};
    if (::stat(spec.path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
        return BlockDevice::open(spec);
    }
    return FileDevice::open(spec);
}

} // namespace ispace::backstore
