#define FUSE_USE_VERSION 314

#include "attach/fuse_server.hpp"

#include "attach/io_flusher.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"

#include <fuse_lowlevel.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <mutex>
#include <optional>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

namespace ispace::attach {

namespace {

// Receive buffers. The kernel's WRITE request is fuse_in_header (40 bytes) + fuse_write_in (40 bytes)
// + the data (linux/fuse.h, protocol 7.9 and later): reading it to 80 bytes before a page boundary puts
// the data on the boundary. Should the layout ever differ, DeviceFile copies unaligned data.
constexpr size_t page = 4096;
constexpr size_t write_header = 80;
constexpr size_t header_room = page; // the page the request header ends in
constexpr size_t mapping_size = header_room + DeviceFile::max_request + page;
constexpr size_t receive_offset = header_room - write_header;
// What one read may fill: the kernel needs room for the largest WRITE (header + max_write).
constexpr size_t receive_capacity = mapping_size - receive_offset;

// WRITEs of this size and more hand their receive buffer down as a Buffer (a remote device sends it
// instead of copying it); smaller ones do not, since a copy of a few KiB costs no more than wrapping
// the buffer (two allocations and a shared pool reference): with every write wrapped, 4 KiB random
// writes through a local file measured 149-151 MB/s against 157-164 before (attach_bench, 2026-12-07;
// within this machine's noise, but in every run).
constexpr size_t lend_from = 64 << 10;
// Background requests (asynchronous direct I/O, which is what the loop device sends) the kernel keeps
// in flight at once; its default, 12, would cap the queue depth far below the loop device's 128.
constexpr unsigned max_background = 128;
// Receive buffers kept with their pages when idle: the workers' and those of a queue depth of 32.
constexpr unsigned hot_buffers = 32;
// Seconds the kernel may trust the file's attributes; a resize invalidates them at once anyway.
constexpr double attr_timeout = 1.0;

void route_libfuse_log(enum fuse_log_level level, const char* format, va_list args) {
    char text[512];
    std::vsnprintf(text, sizeof text, format, args);
    std::string_view line(text);
    while (!line.empty() && line.back() == '\n') {
        line.remove_suffix(1);
    }
    LogLevel ours = level <= FUSE_LOG_ERR      ? LogLevel::error
                    : level <= FUSE_LOG_NOTICE ? LogLevel::warn
                    : level <= FUSE_LOG_INFO   ? LogLevel::info
                                               : LogLevel::debug;
    if (ours >= log_level()) {
        log_write(ours, fmt::format("libfuse: {}", line));
    }
}

// Replies of this size and more (READ data) go through a pipe, below; smaller ones are one writev(2).
constexpr size_t splice_reply_threshold = 64 * 1024;

// The bytes of the largest pipe this process may make, up to what the largest reply needs (a page for
// its header, the pages of max_request bytes of data): a pipe larger than fs.pipe-max-size (1 MiB by
// default) needs CAP_SYS_RESOURCE, which a holder started by root usually has and a container may not
// grant. 0 when pipes cannot be sized at all. Probed once.
size_t reply_pipe_bytes() {
    static const size_t bytes = [] {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) {
            return size_t(0);
        }
        size_t got = 0;
        for (size_t want : {DeviceFile::max_request + 2 * page, size_t(DeviceFile::max_request)}) {
            int size = ::fcntl(fds[1], F_SETPIPE_SZ, int(want));
            if (size >= int(want)) {
                got = size_t(size);
                break;
            }
        }
        ::close(fds[0]);
        ::close(fds[1]);
        return got;
    }();
    return bytes;
}

// The pipe buffers (pages) `iov` takes once vmspliced: one per page each piece touches.
size_t pipe_slots(const iovec* iov, int count) {
    size_t slots = 0;
    for (int i = 0; i < count; ++i) {
        if (iov[i].iov_len > 0) {
            size_t start = reinterpret_cast<uintptr_t>(iov[i].iov_base) % page;
            slots += (start + iov[i].iov_len + page - 1) / page;
        }
    }
    return slots;
}

// The largest READ the kernel may send: max_request, or less if that keeps every reply whole in a pipe
// (the header's page and the data's: with a 1 MiB pipe, 1020 KiB, so that a 1 MiB read of the loop
// device is one spliced reply and a 4 KiB one, which measured cheaper than one 1 MiB reply by writev).
uint32_t max_read_bytes() {
    size_t pipe = reply_pipe_bytes();
    if (pipe >= DeviceFile::max_request + page || pipe < splice_reply_threshold + 2 * page) {
        return DeviceFile::max_request; // a whole reply fits, or pipes are no use here: writev
    }
    return uint32_t(pipe - page);
}

// A large reply sent by vmsplice(2) into a pipe and splice(2) from it into /dev/fuse, rather than by
// writev(2). Both copy the data once into the kernel's request, but from writev the kernel takes our
// buffer one page at a time (fuse_copy_fill pins one page per call, with interrupts toggled and the
// request's lock taken around each, which a VM makes dear: the profile of 1 MiB reads put more of the
// reactor's time there than in the copy itself), where vmsplice pins 16 pages per call and the splice
// copies from pipe buffers with no pinning. vmsplice without SPLICE_F_GIFT only references our pages:
// the splice into /dev/fuse takes every buffer of the message out of the pipe and copies from them
// before it returns, so our buffer may be reused as soon as send() is done, as after writev.
//
// A FUSE message must be in the pipe whole (the kernel refuses a part), so a reply goes this way only
// when its pages fit the pipe (reply_pipe_bytes); FuseServer keeps max_read to what fits. One pipe per
// thread that replies (a reactor, a worker), made on first use. If a call fails in a way that could
// leave part of a message in the pipe, the pipe is dropped; if the pipe cannot be made, this thread's
// replies go by writev from then on.
class ReplyPipe {
public:
    ReplyPipe() = default;
    ReplyPipe(const ReplyPipe&) = delete;
    ReplyPipe& operator=(const ReplyPipe&) = delete;
    ~ReplyPipe() { drop(); }

    // The bytes sent, or -1 with errno set (what writev would have said: the kernel refused the
    // reply, e.g. ENOENT for an interrupted request); nullopt when the reply was not sent and should go
    // by writev.
    std::optional<ssize_t> send(int fd, const iovec* iov, int count, size_t total) {
        iovec rest[8];
        if (_unusable || count > int(std::size(rest)) || pipe_slots(iov, count) * page > reply_pipe_bytes() ||
            (_read_end < 0 && !open())) {
            return std::nullopt; // libfuse sends a header and the data: never 8 pieces
        }
        for (int i = 0; i < count; ++i) {
            rest[i] = iov[i];
        }
        for (int i = 0; i < count;) {
            ssize_t put = ::vmsplice(_write_end, rest + i, size_t(count - i), 0);
            if (put < 0 && errno == EINTR) {
                continue;
            }
            if (put <= 0) {
                // A pipe with room for the message should never refuse it: stop using pipes on this
                // thread rather than guess why.
                log_warn("FUSE reply by vmsplice: {}; replies go by writev from now on",
                         put < 0 ? std::strerror(errno) : "nothing queued");
                _unusable = true;
                drop();
                return std::nullopt;
            }
            // vmsplice stops after a whole piece or inside one: go on from there.
            for (size_t moved = size_t(put); moved > 0 && i < count;) {
                size_t step = std::min(moved, rest[i].iov_len);
                rest[i].iov_base = static_cast<char*>(rest[i].iov_base) + step;
                rest[i].iov_len -= step;
                moved -= step;
                if (rest[i].iov_len == 0) {
                    ++i;
                }
            }
            while (i < count && rest[i].iov_len == 0) {
                ++i;
            }
        }
        for (;;) {
            ssize_t sent = ::splice(_read_end, nullptr, fd, nullptr, total, 0);
            if (sent < 0 && errno == EINTR) {
                continue;
            }
            int err = errno;
            int left = 0;
            if (sent != ssize_t(total) && (::ioctl(_read_end, FIONREAD, &left) != 0 || left != 0)) {
                drop(); // part of the message is still in the pipe: the next reply must not follow it
            }
            errno = err;
            return sent;
        }
    }

private:
    bool open() {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) {
            return false; // out of descriptors for now: writev, and try again next time
        }
        _read_end = fds[0];
        _write_end = fds[1];
        int want = int(reply_pipe_bytes());
        if (::fcntl(_write_end, F_SETPIPE_SZ, want) < want) {
            log_warn("FUSE replies by writev: a pipe of {} bytes: {}", want, std::strerror(errno));
            _unusable = true;
            drop();
            return false;
        }
        return true;
    }

    void drop() {
        if (_read_end >= 0) {
            ::close(_read_end);
            ::close(_write_end);
            _read_end = _write_end = -1;
        }
    }

    int _read_end = -1;
    int _write_end = -1;
    bool _unusable = false;
};

thread_local ReplyPipe t_reply_pipe;

} // namespace

// The receive buffers: taken by workers, kept by a WRITE until the last reference to its data drops
// (lend()), then reused. Lives as long as the server or the last lent Buffer, whichever is later.
class FuseServer::ReceiveBuffers : public std::enable_shared_from_this<ReceiveBuffers> {
public:
    ReceiveBuffers(std::string name, unsigned threads) : _name(std::move(name)), _threads(threads) {}
    ~ReceiveBuffers() {
        for (uint8_t* buffer : _free) {
            ::munmap(buffer, mapping_size);
        }
    }

    uint8_t* take() {
        {
            std::lock_guard lock(_mutex);
            if (!_free.empty()) {
                uint8_t* buffer = _free.back();
                _free.pop_back();
                return buffer;
            }
        }
        // Pages are touched only as far as requests fill them: a 4 KiB write costs two pages, not 1 MiB.
        for (;;) {
            void* p =
                ::mmap(nullptr, mapping_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) {
                return static_cast<uint8_t*>(p);
            }
            log_error("{}: no memory for a FUSE request buffer; retrying", _name);
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }

    void give_back(uint8_t* buffer) {
        size_t kept;
        {
            std::lock_guard lock(_mutex);
            kept = _free.size();
        }
        if (kept >= _threads + max_background) {
            ::munmap(buffer, mapping_size); // more than the kernel can have in flight: not needed again
            return;
        }
        // Buffers past what a queue depth of 32 keeps busy go on being reused (a new mapping costs far
        // more, and more than 32 writes may be in flight again), but their pages may be taken back when
        // memory is short: after a burst of 1 MiB writes, idle buffers need not hold 1 MiB each. Before
        // the buffer is on the free list: once there, a worker may read a request into it, which
        // MADV_FREE must not drop.
        if (kept >= _threads + hot_buffers) {
            ::madvise(buffer, mapping_size, MADV_FREE);
        }
        std::lock_guard lock(_mutex);
        _free.push_back(buffer);
    }

    // `size` bytes at `data`, inside receive buffer `buffer`, as a Buffer: the receive buffer comes back
    // here when the last reference drops — after the write's reply, or later, when a remote member's
    // command (one that timed out and is still queued, or is being retried) lets go of it.
    Buffer lend(uint8_t* buffer, uint8_t* data, size_t size) {
        auto* lease = new Lease{shared_from_this(), buffer};
        return Buffer::wrap(
            data, size,
            [](void* context, uint8_t*) {
                auto* lease = static_cast<Lease*>(context);
                lease->owner->give_back(lease->buffer);
                delete lease;
            },
            lease);
    }

private:
    struct Lease {
        std::shared_ptr<ReceiveBuffers> owner;
        uint8_t* buffer;
    };
    const std::string _name;
    const unsigned _threads;
    std::mutex _mutex;
    std::vector<uint8_t*> _free;
};

// The calling worker's state, for the libfuse callbacks that run on it.
struct FuseServer::Worker {
    FuseServer* server = nullptr;
    net::Reactor* reactor = nullptr;
    uint8_t* buffer = nullptr; // the receive buffer of the request being processed
    bool buffer_kept = false;  // a WRITE holds on to it until the device has the data
    // The worker's own epoll set: /dev/fuse with EPOLLEXCLUSIVE, and the stop eventfd. poll(2), or a
    // plain epoll set, wakes every thread waiting on the file for each request, and all but one find
    // nothing to read (a profile of 1 MiB reads put a tenth of the holder's time in those wake-ups);
    // with EPOLLEXCLUSIVE a request wakes one waiting worker. -1: poll(2) instead.
    int wait_fd = -1;
};

namespace {
thread_local FuseServer::Worker* t_worker = nullptr;
}

// libfuse's callbacks: the custom I/O on /dev/fuse and the low-level operations on the one file.
struct FuseServer::Callbacks {
    static FuseServer* server(fuse_req_t req) { return static_cast<FuseServer*>(fuse_req_userdata(req)); }

    static ssize_t read_request(int fd, void* buf, size_t length, void* userdata) {
        auto* self = static_cast<FuseServer*>(userdata);
        length = std::min(length, receive_capacity); // whatever libfuse thinks its buffer is
        Worker* worker = t_worker;
        for (;;) {
            ssize_t n = ::read(fd, buf, length);
            if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
                return n;
            }
            if (worker != nullptr && worker->wait_fd >= 0) {
                epoll_event events[2];
                int ready = ::epoll_wait(worker->wait_fd, events, 2, -1);
                if (ready < 0 && errno != EINTR) {
                    return -1;
                }
                for (int i = 0; i < ready; ++i) {
                    if (events[i].data.fd == self->_stop_fd) {
                        errno = ENODEV; // what the kernel says when the connection ends: libfuse ends
                        return -1;      // the session
                    }
                }
                continue;
            }
            pollfd fds[2] = {{fd, POLLIN, 0}, {self->_stop_fd, POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
                return -1;
            }
            if (fds[1].revents & POLLIN) {
                errno = ENODEV;
                return -1;
            }
        }
    }

    static ssize_t send_reply(int fd, struct iovec* iov, int count, void*) {
        size_t total = 0;
        for (int i = 0; i < count; ++i) {
            total += iov[i].iov_len;
        }
        if (total >= splice_reply_threshold) {
            if (std::optional<ssize_t> sent = t_reply_pipe.send(fd, iov, count, total)) {
                return *sent;
            }
        }
        return ::writev(fd, iov, count);
    }

    static void init(void*, fuse_conn_info* conn) {
        conn->max_write = std::min<unsigned>(conn->max_write, DeviceFile::max_request);
        conn->max_read = max_read_bytes(); // as the max_read mount option says
        conn->max_readahead = 0;           // no page cache: nothing to read ahead into
        conn->max_background = max_background;
        conn->congestion_threshold = max_background * 3 / 4;
        // Direct I/O only: no splicing, no writeback cache, no cached data to invalidate; and the file
        // cannot be truncated by open(O_TRUNC).
        conn->want &= ~unsigned(FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                                FUSE_CAP_SPLICE_MOVE | FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA);
        // Asynchronous direct I/O lets the loop device keep many requests in flight.
        conn->want |= conn->capable & FUSE_CAP_ASYNC_DIO;
    }

    static struct stat attributes(FuseServer* self) {
        DeviceFile::Attributes a = self->_file->attributes();
        struct stat st {};
        st.st_ino = FUSE_ROOT_ID;
        st.st_mode = S_IFREG | (a.read_only ? 0400 : 0600);
        st.st_nlink = 1;
        st.st_uid = ::geteuid();
        st.st_gid = ::getegid();
        st.st_size = off_t(a.bytes);
        st.st_blksize = blksize_t(a.block_size);
        st.st_blocks = blkcnt_t(a.bytes / 512);
        st.st_atim = st.st_mtim = st.st_ctim = self->_created;
        return st;
    }

    static void lookup(fuse_req_t req, fuse_ino_t, const char*) {
        fuse_reply_err(req, ENOENT); // the root is a file: there is nothing to look up
    }

    static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
        if (ino != FUSE_ROOT_ID) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        struct stat st = attributes(server(req));
        fuse_reply_attr(req, &st, attr_timeout);
    }

    static void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
        FuseServer* self = server(req);
        struct stat st = attributes(self);
        if (ino != FUSE_ROOT_ID) {
            fuse_reply_err(req, ENOENT);
        } else if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != st.st_size) {
            fuse_reply_err(req, EINVAL); // a device has the size it has (ftruncate on /dev/sdX: EINVAL)
        } else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
            fuse_reply_err(req, EPERM);
        } else {
            fuse_reply_attr(req, &st, attr_timeout); // times are not kept: touch works, changes nothing
        }
    }

    static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
        FuseServer* self = server(req);
        if (ino != FUSE_ROOT_ID) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        if (self->_file->attributes().read_only && (fi->flags & O_ACCMODE) != O_RDONLY) {
            fuse_reply_err(req, EROFS);
            return;
        }
        fi->direct_io = 1; // no page cache in between: the loop device's writes reach us as they are
        fi->keep_cache = 0;
        fuse_reply_open(req, fi);
    }

    static void release(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

    static void statfs(fuse_req_t req, fuse_ino_t) {
        DeviceFile::Attributes a = server(req)->_file->attributes();
        struct statvfs sv {};
        // The loop device takes its discard granularity from f_bsize.
        sv.f_bsize = a.block_size;
        sv.f_frsize = a.block_size;
        sv.f_blocks = a.bytes / a.block_size;
        sv.f_files = 1;
        sv.f_namemax = 255;
        fuse_reply_statfs(req, &sv);
    }

    // Hands `work` to the worker's reactor; the request is counted until its reply is sent.
    template <typename Work> static void on_reactor(Work&& work) {
        Worker* worker = t_worker;
        worker->server->request_started();
        worker->reactor->post(std::forward<Work>(work));
    }

    static void read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
        if (off < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        FuseServer* self = t_worker->server;
        uint32_t length = uint32_t(std::min<size_t>(size, UINT32_MAX));
        on_reactor([self, req, length, off] {
            self->_file->read(uint64_t(off), length, [self, req](int error, std::span<const uint8_t> data) {
                if (error) {
                    fuse_reply_err(req, error);
                } else {
                    fuse_reply_buf(req, reinterpret_cast<const char*>(data.data()), data.size());
                }
                self->request_finished();
            });
        });
    }

    static void write(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off, fuse_file_info*) {
        if (off < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        Worker* worker = t_worker;
        FuseServer* self = worker->server;
        // `data` lies in the worker's receive buffer: the request keeps it (as a Buffer, so that the
        // device may send it without a copy), the worker takes another.
        uint8_t* buffer = worker->buffer;
        auto* bytes = reinterpret_cast<uint8_t*>(const_cast<char*>(data));
        size_t length = std::min<size_t>(size, DeviceFile::max_request + 1); // more: DeviceFile's EINVAL
        if (bytes < buffer || bytes + length > buffer + mapping_size) {
            fuse_reply_err(req, EIO); // libfuse put the data elsewhere: never seen, but not ours to keep
            return;
        }
        worker->buffer_kept = true;
        if (length < lend_from) {
            // Small: the device gets the memory for the call only; the buffer comes back with the reply.
            on_reactor([self, req, bytes, length, off, buffer] {
                self->_file->write(uint64_t(off), bytes, uint32_t(length),
                                   [self, req, buffer](int error, uint32_t written) {
                                       if (error) {
                                           fuse_reply_err(req, error);
                                       } else {
                                           fuse_reply_write(req, written);
                                       }
                                       self->_buffers->give_back(buffer);
                                       self->request_finished();
                                   });
            });
            return;
        }
        Buffer held = self->_buffers->lend(buffer, bytes, length);
        on_reactor([self, req, off, held = std::move(held)]() mutable {
            self->_file->write(uint64_t(off), std::move(held), [self, req](int error, uint32_t written) {
                if (error) {
                    fuse_reply_err(req, error);
                } else {
                    fuse_reply_write(req, written);
                }
                self->request_finished();
            });
        });
    }

    static void sync(fuse_req_t req) {
        FuseServer* self = t_worker->server;
        on_reactor([self, req] {
            self->_file->flush([self, req](int error) {
                fuse_reply_err(req, error);
                self->request_finished();
            });
        });
    }
    // FUSE's flush comes with every close() of the file; fsync with fsync(2) and the loop device's
    // REQ_OP_FLUSH. Both make what was written durable.
    static void flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { sync(req); }
    static void fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { sync(req); }

    static void fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length, fuse_file_info*) {
        if (offset < 0 || length < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        FuseServer* self = t_worker->server;
        on_reactor([self, req, mode, offset, length] {
            self->_file->fallocate(mode, uint64_t(offset), uint64_t(length), [self, req](int error) {
                fuse_reply_err(req, error);
                self->request_finished();
            });
        });
    }

    static const fuse_lowlevel_ops* operations() {
        static const fuse_lowlevel_ops ops = [] {
            fuse_lowlevel_ops o{};
            o.init = init;
            o.lookup = lookup;
            o.getattr = getattr;
            o.setattr = setattr;
            o.open = open;
            o.read = read;
            o.write = write;
            o.flush = flush;
            o.release = release;
            o.fsync = fsync;
            o.statfs = statfs;
            o.fallocate = fallocate;
            return o;
        }();
        return &ops;
    }
};

FuseServer::FuseServer(std::shared_ptr<DeviceFile> file, net::ReactorGroup& reactors, Options options)
    : _file(std::move(file)), _reactors(reactors), _options(std::move(options)),
      _buffers(std::make_shared<ReceiveBuffers>(_options.mount_point, _options.threads)) {
    ::clock_gettime(CLOCK_REALTIME, &_created);
}

Result<std::unique_ptr<FuseServer>> FuseServer::start(std::shared_ptr<DeviceFile> file,
                                                      net::ReactorGroup& reactors, Options options) {
    static std::once_flag log_routed;
    std::call_once(log_routed, [] { fuse_set_log_func(route_libfuse_log); });
    std::unique_ptr<FuseServer> server(new FuseServer(std::move(file), reactors, std::move(options)));
    if (auto started = server->mount_and_start(); !started) {
        server->stop(std::chrono::milliseconds(0));
        return started.error();
    }
    return server;
}

Result<void> FuseServer::mount_and_start() {
    _stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (_stop_fd < 0) {
        return make_error(fmt::format("eventfd: {}", std::strerror(errno)), errno);
    }
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        return make_error(
            fmt::format("/dev/fuse: {} (is the fuse module loaded, and are we root?)", std::strerror(err)),
            err);
    }
    std::string max_read = fmt::format("max_read={}", max_read_bytes());
    const char* argv[] = {"ispace", "-o", max_read.c_str(), nullptr};
    fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
    _session = fuse_session_new(&args, Callbacks::operations(), sizeof(fuse_lowlevel_ops), this);
    fuse_opt_free_args(&args);
    if (_session == nullptr) {
        ::close(fd);
        return make_error("libfuse: fuse_session_new failed (see the log above)", EIO);
    }
    static const fuse_custom_io io = {Callbacks::send_reply, Callbacks::read_request, nullptr, nullptr};
    if (fuse_session_custom_io(_session, &io, fd) != 0) {
        ::close(fd);
        return make_error("libfuse: fuse_session_custom_io failed", EIO);
    }
    // From here the session owns fd. rootmode: the root is a regular file, as the mount point is.
    std::string data = fmt::format("fd={},rootmode={:o},user_id={},group_id={},{}", fd, unsigned(S_IFREG),
                                   ::geteuid(), ::getegid(), max_read);
    if (::mount(_options.fsname.c_str(), _options.mount_point.c_str(), "fuse.ispace",
                MS_NOSUID | MS_NODEV | MS_NOEXEC, data.c_str()) != 0) {
        int err = errno;
        return make_error(fmt::format("mounting FUSE on {}: {}{}", _options.mount_point, std::strerror(err),
                                      err == EPERM ? " (needs root)" : ""),
                          err);
    }
    _mounted = true;
    // Counted before the first one starts, under the lock a worker takes to count itself out; the loop
    // goes by its own count: a worker may end at once (the kernel ended the connection) and must not
    // make this start fewer workers than the count says, which stop() would then wait for forever.
    unsigned workers = std::max(1u, _options.threads);
    {
        std::lock_guard lock(_mutex);
        _workers_running = workers;
    }
    for (unsigned i = 0; i < workers; ++i) {
        _threads.emplace_back(&FuseServer::run_worker, this, i);
        std::string name = fmt::format("{}-f{}", _options.thread_prefix, i).substr(0, 15);
        pthread_setname_np(_threads.back().native_handle(), name.c_str());
    }
    // The first request on the file waits for the workers to answer the kernel's INIT.
    struct stat st {};
    if (::stat(_options.mount_point.c_str(), &st) != 0) {
        int err = errno;
        return make_error(
            fmt::format("{}: the FUSE file does not answer: {}", _options.mount_point, std::strerror(err)),
            err);
    }
    _connection = major(st.st_dev) == 0 ? minor(st.st_dev) : unsigned(st.st_dev);
    return {};
}

void FuseServer::run_worker(unsigned index) {
    // Best effort: without it the attachment works, but can deadlock under memory pressure; the
    // attachment logs that once for the process (FuseLoopBackend).
    (void)mark_io_flusher();
    Worker worker;
    worker.server = this;
    worker.reactor = &_reactors.at(index % _reactors.size());
    worker.buffer = _buffers->take();
    worker.wait_fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (worker.wait_fd >= 0) {
        epoll_event on_request{};
        on_request.events = EPOLLIN | EPOLLEXCLUSIVE;
        on_request.data.fd = fuse_session_fd(_session);
        epoll_event on_stop{};
        on_stop.events = EPOLLIN;
        on_stop.data.fd = _stop_fd;
        if (::epoll_ctl(worker.wait_fd, EPOLL_CTL_ADD, on_request.data.fd, &on_request) != 0 ||
            ::epoll_ctl(worker.wait_fd, EPOLL_CTL_ADD, _stop_fd, &on_stop) != 0) {
            ::close(worker.wait_fd);
            worker.wait_fd = -1;
        }
    }
    t_worker = &worker;
    while (!fuse_session_exited(_session)) {
        fuse_buf buf{};
        buf.mem = worker.buffer + receive_offset;
        buf.size = receive_capacity;
        worker.buffer_kept = false;
        int received = fuse_session_receive_buf(_session, &buf);
        if (received == -EINTR || received == -EAGAIN) {
            continue;
        }
        if (received <= 0) {
            if (received < 0) {
                log_warn("{}: reading /dev/fuse: {}", _options.mount_point, std::strerror(-received));
            }
            break;
        }
        fuse_session_process_buf(_session, &buf);
        if (worker.buffer_kept) {
            worker.buffer = _buffers->take();
        }
    }
    t_worker = nullptr;
    if (worker.wait_fd >= 0) {
        ::close(worker.wait_fd);
    }
    _buffers->give_back(worker.buffer);
    std::lock_guard lock(_mutex);
    --_workers_running;
    _changed.notify_all();
}

void FuseServer::request_finished() {
    // Under the lock: stop() must not see zero, and free this object, before we are done with it.
    std::lock_guard lock(_mutex);
    if (_inflight.fetch_sub(1, std::memory_order_relaxed) == 1) {
        _changed.notify_all();
    }
}

void FuseServer::unmount() {
    if (_mounted) {
        if (::umount2(_options.mount_point.c_str(), MNT_DETACH) != 0) {
            log_warn("{}: unmounting the FUSE file: {}", _options.mount_point, std::strerror(errno));
        }
        _mounted = false;
    }
}

Result<void> FuseServer::refresh_size(int fd) {
    int invalidated = fuse_lowlevel_notify_inval_inode(_session, FUSE_ROOT_ID, -1, 0);
    if (invalidated != 0 && invalidated != -ENOENT) {
        return make_error(fmt::format("{}: telling the kernel of the new size: {}", _options.mount_point,
                                      std::strerror(-invalidated)),
                          -invalidated);
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        return make_error(fmt::format("{}: fstat: {}", _options.mount_point, std::strerror(err)), err);
    }
    return {};
}

bool FuseServer::stop(std::chrono::milliseconds grace) {
    if (_stopped) {
        return _ended_by_kernel;
    }
    _stopped = true;
    unmount();
    bool ended;
    {
        std::unique_lock lock(_mutex);
        ended = _changed.wait_for(lock, grace, [&] { return _workers_running == 0; });
    }
    if (!ended && _stop_fd >= 0) {
        uint64_t one = 1;
        (void)!::write(_stop_fd, &one, sizeof one);
    }
    for (std::thread& t : _threads) {
        t.join();
    }
    _threads.clear();
    {
        std::unique_lock lock(_mutex);
        while (!_changed.wait_for(lock, std::chrono::seconds(5), [&] { return _inflight.load() == 0; })) {
            log_warn("{}: waiting for {} request(s) still on the device", _options.mount_point,
                     _inflight.load());
        }
    }
    if (_session != nullptr) {
        // Closes /dev/fuse: if the kernel still has the connection (someone holds the file), it ends
        // now, and their I/O fails with ENOTCONN.
        fuse_session_destroy(_session);
        _session = nullptr;
    }
    if (_stop_fd >= 0) {
        ::close(_stop_fd);
        _stop_fd = -1;
    }
    _ended_by_kernel = ended;
    return ended;
}

FuseServer::~FuseServer() {
    stop(std::chrono::milliseconds(0));
}

} // namespace ispace::attach
