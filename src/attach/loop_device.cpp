#include "attach/loop_device.hpp"

#include "common/log.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sstream>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace ispace::attach {

namespace {

// Another process may take the device LOOP_CTL_GET_FREE gave us before we bind it (EBUSY): then the
// next free one is tried, as losetup does.
constexpr int attach_attempts = 16;

std::string errno_text(int err) {
    return std::strerror(err);
}

// Opens /dev/loopN, creating the node when the kernel made the device but nothing (no udev, as in many
// containers) made its /dev entry: the numbers come from /sys/block/loopN/dev.
int open_loop_node(unsigned number, const std::string& path, int flags) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT) {
        return fd;
    }
    std::ifstream sys(fmt::format("/sys/block/loop{}/dev", number));
    unsigned major_number = 0, minor_number = 0;
    char colon = 0;
    if (!(sys >> major_number >> colon >> minor_number) || colon != ':') {
        errno = ENOENT;
        return -1;
    }
    if (::mknod(path.c_str(), S_IFBLK | 0600, makedev(major_number, minor_number)) != 0 && errno != EEXIST) {
        return -1;
    }
    return ::open(path.c_str(), flags | O_CLOEXEC);
}

void set_name(uint8_t (&field)[LO_NAME_SIZE], const std::string& name) {
    std::memset(field, 0, LO_NAME_SIZE);
    std::memcpy(field, name.data(), std::min<size_t>(name.size(), LO_NAME_SIZE - 1));
}

} // namespace

std::string mount_point_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) {
        return {};
    }
    std::string want = fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev));
    // mountinfo: ID PARENT MAJOR:MINOR ROOT MOUNT-POINT ... (proc(5))
    std::ifstream mounts("/proc/self/mountinfo");
    std::string line;
    while (std::getline(mounts, line)) {
        std::istringstream in(line);
        std::string id, parent, device, root, point;
        if (in >> id >> parent >> device >> root >> point && device == want) {
            return point;
        }
    }
    return {};
}

LoopDevice::LoopDevice(int fd, unsigned number, std::string path)
    : _fd(fd), _number(number), _path(std::move(path)) {}

LoopDevice::~LoopDevice() {
    release();
}

Result<std::unique_ptr<LoopDevice>> LoopDevice::attach(int backing_fd, const Settings& settings) {
    int control = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) {
        int err = errno;
        return make_error(fmt::format("/dev/loop-control: {} (is the loop module loaded, and are we root?)",
                                      errno_text(err)),
                          err);
    }
    Error last = make_error("no loop device could be bound", EBUSY);
    for (int attempt = 0; attempt < attach_attempts; ++attempt) {
        int number = ::ioctl(control, LOOP_CTL_GET_FREE);
        if (number < 0) {
            int err = errno;
            ::close(control);
            return make_error(fmt::format("/dev/loop-control: no free loop device: {}", errno_text(err)),
                              err);
        }
        std::string path = fmt::format("/dev/loop{}", number);
        int fd = open_loop_node(unsigned(number), path, settings.read_only ? O_RDONLY : O_RDWR);
        if (fd < 0) {
            int err = errno;
            ::close(control);
            return make_error(fmt::format("{}: {}", path, errno_text(err)), err);
        }
        std::unique_ptr<LoopDevice> loop(new LoopDevice(fd, unsigned(number), path));
        auto configured = settings.legacy_setup ? loop->configure_legacy(backing_fd, settings)
                                                : loop->configure(backing_fd, settings);
        if (configured) {
            ::close(control);
            return loop;
        }
        last = configured.error();
        loop->_fd = -1; // not bound: nothing to clear
        ::close(fd);
        if (last.code != EBUSY) {
            break;
        }
    }
    ::close(control);
    return last;
}

Result<void> LoopDevice::configure(int backing_fd, const Settings& settings) {
    loop_config config{};
    config.fd = uint32_t(backing_fd);
    config.block_size = settings.block_size;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (settings.read_only ? LO_FLAGS_READ_ONLY : 0) |
                           (settings.direct_io ? LO_FLAGS_DIRECT_IO : 0);
    set_name(config.info.lo_file_name, settings.name);
    if (::ioctl(_fd, LOOP_CONFIGURE, &config) != 0) {
        int err = errno;
        if (err == ENOTTY || err == EINVAL) {
            // Kernels before 5.8 do not know LOOP_CONFIGURE (ENOTTY, or EINVAL from older loop drivers).
            log_debug("{}: LOOP_CONFIGURE: {}; setting the device up step by step", _path, errno_text(err));
            return configure_legacy(backing_fd, settings);
        }
        return make_error(fmt::format("{}: LOOP_CONFIGURE: {}", _path, errno_text(err)), err);
    }
    loop_info64 info{};
    _direct_io = ::ioctl(_fd, LOOP_GET_STATUS64, &info) == 0 && (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0;
    if (settings.direct_io && !_direct_io) {
        // Some kernels take the flag silently and drop it when the file cannot do direct I/O; asking
        // again says why.
        _direct_io = ::ioctl(_fd, LOOP_SET_DIRECT_IO, 1UL) == 0;
    }
    return {};
}

Result<void> LoopDevice::configure_legacy(int backing_fd, const Settings& settings) {
    if (::ioctl(_fd, LOOP_SET_FD, backing_fd) != 0) {
        int err = errno;
        return make_error(fmt::format("{}: LOOP_SET_FD: {}", _path, errno_text(err)), err);
    }
    auto undo = [&](const char* what) {
        int err = errno;
        ::ioctl(_fd, LOOP_CLR_FD, 0);
        return make_error(fmt::format("{}: {}: {}", _path, what, errno_text(err)), err);
    };
    loop_info64 info{};
    info.lo_flags = LO_FLAGS_AUTOCLEAR;
    set_name(info.lo_file_name, settings.name);
    if (::ioctl(_fd, LOOP_SET_STATUS64, &info) != 0) {
        return undo("LOOP_SET_STATUS64");
    }
    if (::ioctl(_fd, LOOP_SET_BLOCK_SIZE, static_cast<unsigned long>(settings.block_size)) != 0) {
        return undo("LOOP_SET_BLOCK_SIZE");
    }
    _direct_io = settings.direct_io && ::ioctl(_fd, LOOP_SET_DIRECT_IO, 1UL) == 0;
    return {};
}

Result<void> LoopDevice::refresh_capacity() {
    if (_fd < 0) {
        return make_error(_path + ": released", EBADF);
    }
    if (::ioctl(_fd, LOOP_SET_CAPACITY, 0) != 0) {
        int err = errno;
        return make_error(fmt::format("{}: LOOP_SET_CAPACITY: {}", _path, errno_text(err)), err);
    }
    return {};
}

Result<void> LoopDevice::check_unused() const {
    // A mounted filesystem (or anyone else with O_EXCL) holds a block device exclusively; our own open
    // file is not exclusive, so this fails only because of someone else.
    int fd = ::open(_path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd >= 0) {
        ::close(fd);
        return {};
    }
    int err = errno;
    if (err != EBUSY) {
        return make_error(fmt::format("{}: {}", _path, errno_text(err)), err);
    }
    std::string point = mount_point_of(_path);
    if (!point.empty()) {
        return make_error(fmt::format("{} is mounted on {}: unmount it first", _path, point), EBUSY);
    }
    return make_error(fmt::format("{} is in use (mounted in another namespace, or held by a program such as "
                                  "a device mapper or md array): stop using it first",
                                  _path),
                      EBUSY);
}

void LoopDevice::sync() {
    if (_fd >= 0 && ::ioctl(_fd, BLKFLSBUF, 0) != 0) {
        log_warn("{}: syncing before detach: {}", _path, errno_text(errno));
    }
}

void LoopDevice::release() {
    if (_fd < 0) {
        return;
    }
    // With autoclear set, LOOP_CLR_FD only marks the device; the kernel clears it at the last close,
    // which is ours unless someone else still has it open.
    if (::ioctl(_fd, LOOP_CLR_FD, 0) != 0 && errno != ENXIO) {
        log_debug("{}: LOOP_CLR_FD: {}", _path, errno_text(errno));
    }
    ::close(_fd);
    _fd = -1;
}

} // namespace ispace::attach
