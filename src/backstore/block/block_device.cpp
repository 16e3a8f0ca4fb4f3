#include "backstore/block/block_device.hpp"

#include "backstore/detail.hpp"
#include "common/log.hpp"
#include "common/units.hpp"

#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace ispace::backstore {
namespace {

// A queue attribute from sysfs. A partition has no queue/ of its own; its disk's applies.
std::string read_queue_attribute(dev_t rdev, const char* name) {
    std::string base = fmt::format("/sys/dev/block/{}:{}", major(rdev), minor(rdev));
    for (const char* dir : {"/queue/", "/../queue/"}) {
        std::ifstream in(base + dir + name);
        std::string value;
        if (in && std::getline(in, value)) {
            return value;
        }
    }
    return {};
}

} // namespace

Result<std::unique_ptr<Device>> BlockDevice::open(const PathSpec& spec) {
    const std::string& path = spec.path;
    if (spec.thin) {
        return make_error(
            fmt::format("{}: thin applies to files; a block device offers unmap when it supports it", path),
            EINVAL);
    }
    int flags = (spec.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_EXCL | (spec.direct ? O_DIRECT : 0);
    int fd = ::open(path.c_str(), flags);
    if (fd < 0) {
        int err = errno;
        if (err == EBUSY) {
            return make_error(fmt::format("{}: device is in use (mounted, or held by another program)", path),
                              err);
        }
        const char* hint =
            (err == EACCES || err == EROFS) && !spec.read_only ? " (add ro to export it read-only)" : "";
        return make_error(fmt::format("{}: cannot open: {}{}", path, std::strerror(err), hint), err);
    }
    auto fail = [&](std::string message, int code) -> Result<std::unique_ptr<Device>> {
        ::close(fd);
        return make_error(std::move(message), code);
    };

    struct stat st {};
    if (::fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode)) {
        return fail(fmt::format("{}: not a block device", path), ENOTBLK);
    }
    uint64_t device_bytes = 0;
    int logical_block = 0;
    if (::ioctl(fd, BLKGETSIZE64, &device_bytes) < 0 || ::ioctl(fd, BLKSSZGET, &logical_block) < 0) {
        int err = errno;
        return fail(fmt::format("{}: cannot read the device geometry: {}", path, std::strerror(err)), err);
    }
    if (!spec.read_only) {
        int ro = 0;
        if (::ioctl(fd, BLKROGET, &ro) == 0 && ro) {
            return fail(fmt::format("{}: the device is read-only; add ro to export it", path), EROFS);
        }
    }
    uint32_t bs = spec.block_size;
    if (logical_block <= 0 || bs < uint32_t(logical_block) || bs % uint32_t(logical_block) != 0) {
        return fail(
            fmt::format("{}: block={} does not suit the device's {}-byte logical block size (use {} or a "
                        "multiple of it)",
                        path, bs, logical_block, logical_block),
            EINVAL);
    }
    uint64_t size;
    if (spec.size != 0) {
        if (spec.size % bs != 0) {
            return fail(
                fmt::format("{}: size={} is not a multiple of the {}-byte block size", path, spec.size, bs),
                EINVAL);
        }
        if (spec.size > device_bytes) {
            return fail(fmt::format("{}: size={} is larger than the device ({} bytes, {})", path, spec.size,
                                    device_bytes, format_size(device_bytes)),
                        EINVAL);
        }
        size = spec.size;
    } else {
        size = device_bytes / bs * bs;
        if (size == 0) {
            return fail(fmt::format("{}: the device ({} bytes) is smaller than one {}-byte block", path,
                                    device_bytes, bs),
                        EINVAL);
        }
        if (size != device_bytes) {
            log_warn("{}: {} bytes at the end are not a whole {}-byte block and are not exported", path,
                     device_bytes - size, bs);
        }
    }

    Geometry geometry{bs, size / bs};
    Features features;
    features.read_only = spec.read_only;
    // fallocate(PUNCH_HOLE) on a block device is REQ_OP_WRITE_ZEROES allowing deallocation: it needs
    // write-zeroes support in the device and guarantees zeroes after, which is what thin means here.
    std::string write_zeroes_max = read_queue_attribute(st.st_rdev, "write_zeroes_max_bytes");
    features.thin = !write_zeroes_max.empty() && write_zeroes_max != "0";
    features.unmap = features.thin;
    features.write_zeroes = true; // ZERO_RANGE falls back to writing zero pages inside the kernel
    features.allocation_status = false;
    features.volatile_cache = read_queue_attribute(st.st_rdev, "write_cache") != "write through";
    uint64_t identity = detail::mix64(uint64_t(st.st_rdev) ^ 0xb10cdefULL);
    return std::unique_ptr<Device>(new BlockDevice(path, fd, geometry, features, identity));
}

Result<void> BlockDevice::resize(uint64_t bytes) {
    if (auto ok = check_resize(bytes); !ok) {
        return ok;
    }
    uint64_t device_bytes = 0;
    if (::ioctl(_fd, BLKGETSIZE64, &device_bytes) < 0) {
        int err = errno;
        return make_error(fmt::format("{}: cannot read the device size: {}", _path, std::strerror(err)), err);
    }
    if (bytes > device_bytes) {
        return make_error(
            fmt::format("{}: {} bytes is larger than the device ({} bytes); grow the device first", _path,
                        bytes, device_bytes),
            EINVAL);
    }
    _geometry.set_block_count(bytes / _geometry.block_size());
    notify(DeviceEvent::resized);
    return {};
}

} // namespace ispace::backstore
