#include "backstore/file/file_device.hpp"

#include "backstore/detail.hpp"
#include "common/log.hpp"
#include "common/units.hpp"
#include "net/reactor.hpp"

#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace ispace::backstore {
namespace {

// Closes the descriptor, and removes a file we created, unless open() succeeded.
class OpenGuard {
public:
    OpenGuard(const std::string& path) : _path(path) {}
    ~OpenGuard() {
        if (_fd >= 0) {
            ::close(_fd);
            if (_created) {
                ::unlink(_path.c_str());
            }
        }
    }
    OpenGuard(const OpenGuard&) = delete;
    OpenGuard& operator=(const OpenGuard&) = delete;

    void set(int fd, bool created) {
        _fd = fd;
        _created = created;
    }
    int release() { return std::exchange(_fd, -1); }

private:
    const std::string& _path;
    int _fd = -1;
    bool _created = false;
};

std::string bytes_text(uint64_t bytes) {
    if (bytes < 1024) {
        return fmt::format("{} bytes", bytes);
    }
    return fmt::format("{} bytes ({})", bytes, format_size(bytes));
}

void push_extent(std::vector<Extent>& out, uint64_t offset, uint64_t length, bool mapped) {
    if (length == 0) {
        return;
    }
    if (!out.empty() && out.back().mapped == mapped && out.back().offset + out.back().length == offset) {
        out.back().length += length;
        return;
    }
    out.push_back({offset, length, mapped});
}

// Holes become whole blocks: the block holding a hole's unaligned edge has data, so it is mapped.
std::vector<Extent> align_holes(const std::vector<Extent>& raw, uint32_t block_size) {
    std::vector<Extent> out;
    for (const Extent& e : raw) {
        if (e.mapped) {
            push_extent(out, e.offset, e.length, true);
            continue;
        }
        uint64_t end = e.offset + e.length;
        uint64_t hole_start = (e.offset + block_size - 1) / block_size * block_size;
        uint64_t hole_end = end / block_size * block_size;
        if (hole_start >= hole_end) {
            push_extent(out, e.offset, e.length, true);
            continue;
        }
        push_extent(out, e.offset, hole_start - e.offset, true);
        push_extent(out, hole_start, hole_end - hole_start, false);
        push_extent(out, hole_end, end - hole_end, true);
    }
    return out;
}

// The processes holding an OFD lock on the file (dev, ino): the kernel reports -1 as the owner of an
// OFD lock (fcntl(2)), so look for it in every process's /proc/PID/fdinfo "lock:" lines, which list
// the locks of that open file. Only read on a conflict; processes we may not inspect are skipped.
std::string lock_holders(dev_t dev, ino_t ino) {
    std::string key = fmt::format("{:02x}:{:02x}:{} ", major(dev), minor(dev), uint64_t(ino));
    std::string holders;
    DIR* proc = ::opendir("/proc");
    if (!proc) {
        return holders;
    }
    while (dirent* entry = ::readdir(proc)) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9' || std::to_string(::getpid()) == entry->d_name) {
            continue;
        }
        std::string dir = fmt::format("/proc/{}/fdinfo", entry->d_name);
        DIR* fds = ::opendir(dir.c_str());
        if (!fds) {
            continue;
        }
        bool found = false;
        while (dirent* fd = ::readdir(fds)) {
            if (found || fd->d_name[0] == '.') {
                continue;
            }
            std::ifstream info(dir + "/" + fd->d_name);
            for (std::string line; std::getline(info, line);) {
                if (line.rfind("lock:", 0) == 0 && line.find("OFDLCK") != std::string::npos &&
                    line.find(key) != std::string::npos) {
                    found = true;
                    break;
                }
            }
        }
        ::closedir(fds);
        if (found) {
            std::string comm;
            std::ifstream(fmt::format("/proc/{}/comm", entry->d_name)) >> comm;
            holders += fmt::format("{}{} (PID {})", holders.empty() ? "" : ", ", comm.empty() ? "?" : comm,
                                   entry->d_name);
        }
    }
    ::closedir(proc);
    return holders;
}

// An exclusive OFD lock on the whole backing file (shared for a read-only LUN): two ispaced processes
// serving one file would present one NAA identity over two uncoordinated caches and reservation
// states. OFD locks belong to the open file, so they also hold between two LUNs of one process, and go
// with the descriptor's last close. Taken before the file is grown or allocated.
Result<void> lock_backing_file(int fd, const std::string& path, const struct stat& st, bool shared) {
    struct flock lock {};
    lock.l_type = shared ? F_RDLCK : F_WRLCK;
    lock.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLK, &lock) == 0) {
        return {};
    }
    int err = errno;
    if (err != EAGAIN && err != EACCES) {
        if (err == EINVAL || err == ENOLCK) {
            log_warn("{}: cannot lock ({}); nothing keeps another process from serving it too", path,
                     std::strerror(err));
            return {};
        }
        return make_error(fmt::format("{}: cannot lock: {}", path, std::strerror(err)), err);
    }
    std::string holders = lock_holders(st.st_dev, st.st_ino);
    return make_error(fmt::format("{}: in use: another process serves it{} (the file is locked; two "
                                  "servers on one backing file would corrupt it)",
                                  path, holders.empty() ? "" : ": " + holders),
                      EBUSY);
}

} // namespace

int scan_file_extents(int fd, uint64_t start, uint64_t end, uint32_t block_size, std::vector<Extent>& out) {
    std::vector<Extent> raw;
    uint64_t pos = start;
    while (pos < end) {
        off_t data = ::lseek(fd, off_t(pos), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                push_extent(raw, pos, end - pos, false); // no data after pos
                break;
            }
            if (errno == EINVAL || errno == EOPNOTSUPP) {
                push_extent(raw, pos, end - pos, true); // no SEEK_DATA here: everything counts as data
                break;
            }
            return -errno;
        }
        uint64_t data_start = uint64_t(data);
        if (data_start > pos) {
            push_extent(raw, pos, std::min(data_start, end) - pos, false);
        }
        if (data_start >= end) {
            break;
        }
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return -errno;
        }
        uint64_t hole_start = std::max(uint64_t(hole), data_start + 1);
        push_extent(raw, data_start, std::min(hole_start, end) - data_start, true);
        pos = hole_start;
    }
    out = align_holes(raw, block_size);
    return 0;
}

Result<std::unique_ptr<Device>> FileDevice::open(const PathSpec& spec) {
    const std::string& path = spec.path;
    uint32_t bs = spec.block_size;
    if (bs != 512 && bs != 4096) {
        return make_error(fmt::format("{}: block size {} is not supported (use 512 or 4096)", path, bs),
                          EINVAL);
    }
    if (spec.size % bs != 0) {
        return make_error(fmt::format("{}: size={} is not a multiple of the {}-byte block size", path,
                                      bytes_text(spec.size), bs),
                          EINVAL);
    }

    int flags = (spec.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | (spec.direct ? O_DIRECT : 0);
    OpenGuard guard(path);
    bool created = false;
    int fd = ::open(path.c_str(), flags);
    if (fd < 0 && errno == ENOENT) {
        if (spec.size == 0) {
            return make_error(fmt::format("{}: no such file; give size= to create it", path), ENOENT);
        }
        if (spec.read_only) {
            return make_error(fmt::format("{}: no such file (a read-only LUN is not created)", path), ENOENT);
        }
        fd = ::open(path.c_str(), flags | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            created = true;
        } else if (errno == EEXIST) {
            fd = ::open(path.c_str(), flags); // created by someone else meanwhile
        }
    }
    if (fd < 0) {
        int err = errno;
        if (err == EINVAL && spec.direct) {
            return make_error(
                fmt::format("{}: cannot open with O_DIRECT (option direct): {}; the filesystem may "
                            "not support direct I/O",
                            path, std::strerror(err)),
                err);
        }
        if (err == EISDIR) {
            return make_error(fmt::format("{}: is a directory", path), err);
        }
        const char* hint =
            (err == EACCES || err == EROFS) && !spec.read_only ? " (add ro to export it read-only)" : "";
        return make_error(fmt::format("{}: cannot open: {}{}", path, std::strerror(err), hint), err);
    }
    guard.set(fd, created);

    struct stat st {};
    if (::fstat(fd, &st) < 0) {
        int err = errno;
        return make_error(fmt::format("{}: fstat: {}", path, std::strerror(err)), err);
    }
    if (!S_ISREG(st.st_mode)) {
        const char* what = S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file or a block device";
        return make_error(fmt::format("{}: {}", path, what), EINVAL);
    }

    if (auto locked = lock_backing_file(fd, path, st, spec.read_only); !locked) {
        return locked.error();
    }

    uint64_t file_size = uint64_t(st.st_size);
    uint64_t size = spec.size;
    if (size == 0) {
        if (file_size == 0) {
            return make_error(fmt::format("{}: file is empty; give size= to set its size", path), EINVAL);
        }
        if (file_size % bs != 0) {
            return make_error(fmt::format("{}: file is {}, not a multiple of the {}-byte block size", path,
                                          bytes_text(file_size), bs),
                              EINVAL);
        }
        size = file_size;
    } else if (file_size > size) {
        return make_error(fmt::format("{}: file is {}, larger than size={}; omit size= to use the whole file",
                                      path, bytes_text(file_size), bytes_text(size)),
                          EINVAL);
    } else if (file_size < size) {
        if (spec.read_only) {
            return make_error(fmt::format("{}: file is {}, smaller than size={}, and ro forbids growing it",
                                          path, bytes_text(file_size), bytes_text(size)),
                              EINVAL);
        }
        if (!created && file_size != 0 && !spec.grow) {
            // Growing an existing file (not an empty one) changes what its owner sees (a typo in size= would
            // add gigabytes, allocated); it is done when asked for, never on the way.
            return make_error(
                fmt::format("{}: file is {}, smaller than size={}; add grow to grow it, or omit size= to "
                            "use the whole file as it is",
                            path, bytes_text(file_size), bytes_text(size)),
                EINVAL);
        }
        // Thin: sparse. Thick: allocate now, so a full disk is an error here and not an I/O error later.
        int r = -1;
        if (!spec.thin) {
            r = ::fallocate(fd, 0, off_t(file_size), off_t(size - file_size));
            if (r < 0 && errno == EOPNOTSUPP) {
                log_warn("{}: the filesystem cannot preallocate; the file stays sparse", path);
            } else if (r < 0) {
                int err = errno;
                const char* hint = err == ENOSPC ? " (add thin for a sparse file)" : "";
                return make_error(fmt::format("{}: cannot allocate {} for size={}: {}{}", path,
                                              format_size(size - file_size), bytes_text(size),
                                              std::strerror(err), hint),
                                  err);
            }
        }
        if (r < 0 && ::ftruncate(fd, off_t(size)) < 0) {
            int err = errno;
            return make_error(
                fmt::format("{}: cannot grow to {}: {}", path, bytes_text(size), std::strerror(err)), err);
        }
        if (created) {
            log_info("{}: created, {}{}", path, bytes_text(size), spec.thin ? ", thin" : "");
        } else {
            log_info("{}: grown from {} to {}", path, bytes_text(file_size), bytes_text(size));
        }
    }

    Geometry geometry{bs, size / bs};
    Features features;
    features.read_only = spec.read_only;
    features.thin = spec.thin;
    features.unmap = spec.thin;
    features.write_zeroes = true;
    features.allocation_status = spec.thin;
    // Also with O_DIRECT: it bypasses the page cache, not the disk's write cache nor the metadata of
    // allocating writes into holes, so the initiator must still send SYNCHRONIZE CACHE.
    features.volatile_cache = true;
    uint64_t identity = detail::mix64(detail::mix64(uint64_t(st.st_dev)) ^ uint64_t(st.st_ino));
    int owned = guard.release();
    return std::unique_ptr<Device>(new FileDevice(path, owned, geometry, features, identity));
}

void FileDevice::allocation_status(uint64_t offset, uint64_t length,
                                   Function<void(Result<std::vector<Extent>>)> done) {
    if (!_features.allocation_status) {
        FdDevice::allocation_status(offset, length, std::move(done));
        return;
    }
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "allocation_status is called on a reactor thread");
    uint64_t bytes = _geometry.load().bytes();
    uint64_t start = std::min(offset, bytes);
    uint64_t end = length > bytes - start ? bytes : start + length;
    // The worker fills `extents`; the reactor hands it over. Shared because the two lambdas each hold it.
    auto extents = std::make_shared<std::vector<Extent>>();
    int fd = _fd;
    uint32_t bs = _geometry.block_size();
    std::string path = _path;
    reactor->run_blocking(
        [extents, fd, start, end, bs]() -> int64_t {
            return scan_file_extents(fd, start, end, bs, *extents);
        },
        [extents, path = std::move(path), done = std::move(done)](int64_t result) mutable {
            if (result < 0) {
                done(make_error(fmt::format("{}: allocation status: {}", path, std::strerror(int(-result))),
                                int(-result)));
                return;
            }
            done(std::move(*extents));
        });
}

Result<void> FileDevice::resize(uint64_t bytes) {
    if (auto ok = check_resize(bytes); !ok) {
        return ok;
    }
    uint64_t old_bytes = _geometry.load().bytes();
    if (bytes > old_bytes && !_features.thin) {
        // Thick: allocate the new part now, so a full disk shows here and not as a write error later.
        if (::fallocate(_fd, 0, off_t(old_bytes), off_t(bytes - old_bytes)) < 0 && errno != EOPNOTSUPP) {
            int err = errno;
            return make_error(fmt::format("{}: cannot allocate {} to grow to {}: {}", _path,
                                          format_size(bytes - old_bytes), bytes_text(bytes),
                                          std::strerror(err)),
                              err);
        }
    }
    if (::ftruncate(_fd, off_t(bytes)) < 0) {
        int err = errno;
        return make_error(
            fmt::format("{}: cannot resize to {}: {}", _path, bytes_text(bytes), std::strerror(err)), err);
    }
    _geometry.set_block_count(bytes / _geometry.block_size());
    log_info("{}: resized from {} to {}", _path, bytes_text(old_bytes), bytes_text(bytes));
    notify(DeviceEvent::resized);
    return {};
}

} // namespace ispace::backstore
