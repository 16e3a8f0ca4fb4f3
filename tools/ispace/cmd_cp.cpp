// `ispace cp SRC DST`: copies between local files and iSCSI LUNs with a pipeline of --qd chunks.
//
// The main thread runs the pipeline: it reads a chunk from the source (pread, or an asynchronous READ),
// then writes it to the destination (pwrite, or an asynchronous WRITE), keeping up to --qd chunks in
// flight. iSCSI completions arrive on the library's reactor threads and are handed to the main thread
// through a queue, so file I/O never blocks a reactor. A chunk counts as copied only when the
// destination acknowledged it (GOOD status, or pwrite returned); the copy ends with SYNCHRONIZE CACHE
// or fdatasync, and exits 0 only when every byte was acknowledged.
//
// A destination file is written under a temporary name beside it and renamed over DST only once the
// copy is complete and flushed: an interrupted or failed copy never leaves a file of the full size that
// looks like a finished backup. SIGINT and SIGTERM stop the copy (in-flight chunks drain), say how many
// bytes were acknowledged, remove the temporary file and exit 130 / 143; SIGUSR1 prints progress (what
// dd and qemu-img users press). A signal thread waits for them; they are blocked everywhere else.
#include "cli.hpp"

#include "common/units.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace ispace::cli {

namespace {

using initiator::Response;

struct CpOptions {
    SessionKnobs knobs;
    std::string bs = "1M";
    bool progress = true;
    std::string src;
    std::string dst;
};

// One end of the copy.
struct Side {
    std::string label; // for messages: a path or a URL without its secret
    bool iscsi = false;
    // File.
    int fd = -1;
    bool regular = false;
    // iSCSI.
    std::shared_ptr<Session> session;
    uint64_t lun = 0;
    uint32_t block_size = 1;
    uint64_t size = 0;         // bytes
    uint32_t max_transfer = 0; // bytes per command the LUN accepts; 0: no limit stated

    // A regular-file destination: written as `temp_path`, renamed to `label` by commit().
    std::string temp_path;

    ~Side() {
        if (fd >= 0) {
            ::close(fd);
        }
        discard_temp();
    }
    // Removes an uncommitted temporary file (a failed or interrupted copy). Async-signal-safe.
    void discard_temp() {
        if (!temp_path.empty()) {
            ::unlink(temp_path.c_str());
        }
    }
    Result<void> commit() {
        if (temp_path.empty()) {
            return {};
        }
        if (::rename(temp_path.c_str(), label.c_str()) < 0) {
            int err = errno;
            return make_error(fmt::format("rename {} to {}: {}", temp_path, label, std::strerror(err)), err);
        }
        temp_path.clear();
        // The rename itself durable: fsync the directory holding it.
        std::string dir = label.find('/') == std::string::npos ? "." : label.substr(0, label.rfind('/') + 1);
        int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            ::fsync(dfd);
            ::close(dfd);
        }
        return {};
    }
};

struct Event {
    size_t chunk;
    bool read; // true: the source read completed; false: the destination write did
    Response result;
    int signal = 0; // not a chunk: this signal arrived (SIGINT, SIGTERM, SIGUSR1)
};

class EventQueue {
public:
    void push(Event e) {
        {
            std::lock_guard lock(_mu);
            _events.push_back(std::move(e));
        }
        _cv.notify_one();
    }
    Event pop() {
        std::unique_lock lock(_mu);
        _cv.wait(lock, [&] { return !_events.empty(); });
        Event e = std::move(_events.front());
        _events.pop_front();
        return e;
    }

private:
    std::mutex _mu;
    std::condition_variable _cv;
    std::deque<Event> _events;
};

Result<void> open_side(Initiator& ini, const std::string& text, bool is_source, const SessionKnobs& knobs,
                       Side& side) {
    if (text.rfind("iscsi://", 0) == 0) {
        auto url = parse_lun_url(text);
        if (!url) {
            return std::move(url).error();
        }
        side.iscsi = true;
        side.label = initiator::to_string(*url);
        side.lun = *url->lun;
        auto session = open_session(ini, *url, knobs);
        if (!session) {
            return std::move(session).error();
        }
        side.session = *session;
        auto cap = side.session->read_capacity(side.lun);
        if (!cap) {
            return make_error(fmt::format("{}: {}", side.label, cap.error().message), cap.error().code);
        }
        side.block_size = cap->block_size;
        side.size = cap->bytes();
        if (side.block_size == 0) {
            return make_error(fmt::format("{}: the LUN reports a block size of 0", side.label), EPROTO);
        }
        if (!is_source) {
            // Said before the copy, not as a failed first WRITE reported as "holds a partial copy" of a
            // LUN nothing was written to. A device that does not answer MODE SENSE is tried anyway.
            if (auto wp = side.session->write_protected(side.lun); wp && *wp) {
                return make_error(
                    fmt::format("{}: the LUN is read-only (write protected); nothing was written",
                                side.label),
                    EROFS);
            }
        }
        // Block Limits are optional (SBC-3); without them nothing limits the transfer length.
        if (auto limits = side.session->block_limits(side.lun); limits && limits->max_transfer_blocks != 0) {
            uint64_t bytes = uint64_t(limits->max_transfer_blocks) * side.block_size;
            side.max_transfer = uint32_t(std::min<uint64_t>(bytes, 1u << 30));
        }
        return {};
    }
    side.label = text;
    struct stat existing {};
    bool exists = ::stat(text.c_str(), &existing) == 0;
    if (!is_source && (!exists || S_ISREG(existing.st_mode))) {
        // A file destination: written under a temporary name beside it (same filesystem, so the final
        // rename is atomic), with the existing file's permissions.
        size_t slash = text.rfind('/');
        std::string dir = slash == std::string::npos ? "" : text.substr(0, slash + 1);
        std::string base = slash == std::string::npos ? text : text.substr(slash + 1);
        side.temp_path = fmt::format("{}.{}.ispace-cp-{}", dir, base, ::getpid());
        mode_t mode = exists ? (existing.st_mode & 07777) : 0644;
        side.fd = ::open(side.temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (side.fd < 0) {
            int err = errno;
            std::string temp = std::move(side.temp_path);
            side.temp_path.clear(); // not ours to remove
            return make_error(
                fmt::format("{}: cannot create {} to copy into: {}", text, temp, std::strerror(err)), err);
        }
        side.regular = true;
        return {};
    }
    int flags = is_source ? O_RDONLY : O_WRONLY;
    side.fd = ::open(text.c_str(), flags | O_CLOEXEC, 0644);
    if (side.fd < 0) {
        int err = errno;
        return make_error(fmt::format("{}: {}", text, std::strerror(err)), err);
    }
    struct stat st {};
    if (::fstat(side.fd, &st) < 0) {
        int err = errno;
        return make_error(fmt::format("{}: {}", text, std::strerror(err)), err);
    }
    side.regular = S_ISREG(st.st_mode);
    if (S_ISBLK(st.st_mode)) {
        off_t end = ::lseek(side.fd, 0, SEEK_END);
        side.size = end > 0 ? uint64_t(end) : 0;
    } else {
        side.size = uint64_t(st.st_size);
    }
    return {};
}

Result<void> pread_all(int fd, uint8_t* p, size_t n, uint64_t offset, const std::string& label) {
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, off_t(offset));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int err = errno;
            return make_error(fmt::format("read {} at offset {}: {}", label, offset, std::strerror(err)),
                              err);
        }
        if (r == 0) {
            return make_error(
                fmt::format("read {} at offset {}: unexpected end of file (did it shrink?)", label, offset),
                EIO);
        }
        p += r;
        n -= size_t(r);
        offset += uint64_t(r);
    }
    return {};
}

Result<void> pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t offset, const std::string& label) {
    while (n > 0) {
        ssize_t r = ::pwrite(fd, p, n, off_t(offset));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int err = r < 0 ? errno : EIO;
            return make_error(fmt::format("write {} at offset {}: {}", label, offset, std::strerror(err)),
                              err);
        }
        p += r;
        n -= size_t(r);
        offset += uint64_t(r);
    }
    return {};
}

// Waits for SIGINT, SIGTERM and SIGUSR1 (blocked in every other thread) and hands them to the copy
// loop. Outside the loop (connecting, flushing) an interrupt ends the process at once, after removing
// the temporary destination: nothing is half-done there that the loop would have to drain.
//
// The thread sleeps in poll() on a signalfd and an eventfd that the destructor writes, so it ends the
// moment the copy does. (It used to wake every 100 ms to look at a stop flag, and every copy then took
// up to 100 ms more than its work: the process waited in join() for the next tick.)
class SignalWatcher {
public:
    SignalWatcher(EventQueue& events, Side& dst) : _events(events), _dst(dst) {
        sigemptyset(&_set);
        for (int sig : {SIGINT, SIGTERM, SIGUSR1}) {
            sigaddset(&_set, sig);
        }
        // Before any other thread starts, so that they all inherit the mask.
        pthread_sigmask(SIG_BLOCK, &_set, nullptr);
        _signal_fd = ::signalfd(-1, &_set, SFD_CLOEXEC);
        _stop_fd = ::eventfd(0, EFD_CLOEXEC);
        _thread = std::thread([this] { run(); });
    }
    ~SignalWatcher() {
        _stop.store(true);
        if (_stop_fd >= 0) {
            uint64_t one = 1;
            [[maybe_unused]] ssize_t n = ::write(_stop_fd, &one, sizeof one);
        }
        _thread.join();
        for (int fd : {_signal_fd, _stop_fd}) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    }
    // While set, interrupts go to the loop as events; otherwise they end the process.
    void set_copying(bool copying) {
        std::lock_guard lock(_mu);
        _copying = copying;
    }
    // Held while the destination is being committed (renamed): an interrupt then waits for it.
    std::mutex& commit_mutex() { return _mu; }

private:
    int next_signal() {
        if (_signal_fd < 0 || _stop_fd < 0) {
            // Without the descriptors (out of them at start-up): look at the stop flag every 100 ms.
            timespec tick{0, 100'000'000};
            return ::sigtimedwait(&_set, nullptr, &tick);
        }
        pollfd fds[2] = {{_signal_fd, POLLIN, 0}, {_stop_fd, POLLIN, 0}};
        if (::poll(fds, 2, -1) <= 0 || (fds[0].revents & POLLIN) == 0) {
            return 0; // woken to stop (the loop reads _stop), or EINTR
        }
        signalfd_siginfo info{};
        if (::read(_signal_fd, &info, sizeof info) != sizeof info) {
            return 0;
        }
        return int(info.ssi_signo);
    }

    void run() {
        while (!_stop.load()) {
            int sig = next_signal();
            if (sig <= 0) {
                continue;
            }
            std::lock_guard lock(_mu);
            if (_copying || sig == SIGUSR1) {
                _events.push({0, false, {}, sig});
                continue;
            }
            _dst.discard_temp();
            fmt::print(stderr,
                       "ispace: interrupted by {} before the copy began or while it was flushed; "
                       "{} was not written\n",
                       sig == SIGINT ? "SIGINT" : "SIGTERM", _dst.label);
            std::fflush(stderr);
            ::_exit(128 + sig);
        }
    }

    EventQueue& _events;
    Side& _dst;
    sigset_t _set{};
    std::mutex _mu;
    bool _copying = false;
    int _signal_fd = -1;
    int _stop_fd = -1;
    std::atomic<bool> _stop{false};
    std::thread _thread;
};

namespace {

bool same_lun(const Url& a, const Url& b) {
    auto lower = [](std::string text) {
        std::transform(text.begin(), text.end(), text.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        return text;
    };
    // iSCSI names compare case-insensitively (RFC 3722); so do host names.
    return lower(a.host) == lower(b.host) && a.port == b.port &&
           lower(a.target_name) == lower(b.target_name) && a.lun == b.lun;
}

} // namespace

int run_cp(GlobalOptions& global, CpOptions& o) {
    auto bs = parse_size(o.bs);
    if (!bs || *bs == 0 || *bs > Buffer::max_size) {
        error(fmt::format("--bs {}: expected a size from 1 to 64M (e.g. 1M)", o.bs));
        return exit_usage;
    }
    if (o.knobs.queue_depth == 0) {
        error("--qd must be at least 1");
        return exit_usage;
    }
    if (auto d = parse_digest_option(o.knobs.digest); !d) {
        error(d.error().message);
        return exit_usage;
    }
    if (auto a = parse_lun_url(o.src), b = parse_lun_url(o.dst); a && b && same_lun(*a, *b)) {
        // Reading back blocks this copy has just written is never what was meant; it changes nothing
        // at best. (Two names of one host are not seen through: this is a guard, not a proof.)
        error(fmt::format("the source and the destination are the same LUN ({}); nothing to copy",
                          initiator::to_string(*a)));
        return exit_usage;
    }
    if (o.src == o.dst) {
        error(fmt::format("the source and the destination are the same ({}); nothing to copy", o.src));
        return exit_usage;
    }
    Side src;
    Side dst;
    EventQueue events;
    SignalWatcher signals(events, dst); // first: every thread started later inherits its mask
    Initiator ini(initiator_options(global));
    if (auto r = open_side(ini, o.src, true, o.knobs, src); !r) {
        error(r.error().message);
        return r.error().code == EINVAL ? exit_usage : exit_failure;
    }
    if (auto r = open_side(ini, o.dst, false, o.knobs, dst); !r) {
        error(r.error().message);
        return r.error().code == EINVAL ? exit_usage : exit_failure;
    }

    uint64_t total = src.size;
    if (dst.iscsi && total > dst.size) {
        error(
            fmt::format("{} is {} bytes, larger than {} ({} bytes)", src.label, total, dst.label, dst.size));
        return exit_failure;
    }
    // The chunk: --bs, within what both LUNs accept per command, a multiple of both block sizes.
    uint64_t align = std::max(src.block_size, dst.block_size);
    if (align % src.block_size != 0 || align % dst.block_size != 0) {
        error(fmt::format("block sizes {} and {} do not divide each other", src.block_size, dst.block_size));
        return exit_failure;
    }
    uint64_t chunk = *bs;
    for (const Side* s : {&src, &dst}) {
        if (s->max_transfer != 0) {
            chunk = std::min<uint64_t>(chunk, s->max_transfer);
        }
    }
    chunk = std::max<uint64_t>(chunk / align * align, align);
    // The destination's last block may be partial when copying a file to a LUN: pad it with zeros.
    uint64_t padded_total = (total + dst.block_size - 1) / dst.block_size * dst.block_size;
    if (padded_total != total) {
        warning(fmt::format(
            "{} is {} bytes, not a multiple of the {}-byte block size: the last block is padded with "
            "zeros",
            src.label, total, dst.block_size));
    }
    if (!dst.iscsi && dst.regular && ::ftruncate(dst.fd, off_t(total)) < 0) {
        int err = errno;
        error(fmt::format("{}: {}", dst.label, std::strerror(err)));
        return exit_failure;
    }

    struct Chunk {
        uint64_t offset = 0;
        uint32_t length = 0;        // bytes of source data
        uint32_t padded_length = 0; // bytes written to an iSCSI destination
        Buffer buffer;
    };
    std::vector<Chunk> chunks;
    std::vector<size_t> free_slots;
    for (unsigned i = 0; i < o.knobs.queue_depth; ++i) {
        chunks.emplace_back();
        free_slots.push_back(i);
    }
    Progress progress(total, o.progress && stderr_is_tty());
    auto started = std::chrono::steady_clock::now();
    uint64_t next = 0;
    uint64_t acknowledged = 0;
    unsigned inflight = 0;
    std::optional<std::string> failure;
    int interrupted = 0;
    auto progress_line = [&] {
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        return fmt::format(
            "{} of {} acknowledged ({:.0f}%) in {} ({}/s)", human_bytes(double(acknowledged)),
            human_bytes(double(total)), total ? 100.0 * double(acknowledged) / double(total) : 100.0,
            human_duration(seconds), human_bytes(seconds > 0 ? double(acknowledged) / seconds : 0));
    };
    signals.set_copying(true);

    auto fail = [&](std::string message) {
        if (!failure) {
            failure = std::move(message);
        }
    };
    auto start_write = [&](size_t slot) {
        Chunk& c = chunks[slot];
        if (dst.iscsi) {
            uint32_t blocks = c.padded_length / dst.block_size;
            if (c.buffer.size() < c.padded_length) {
                // A LUN source with smaller blocks than the destination: pad the tail with zeros.
                Buffer padded = Buffer::allocate_zeroed(c.padded_length);
                std::memcpy(padded.data(), c.buffer.data(), c.length);
                c.buffer = std::move(padded);
            }
            auto cmd =
                initiator::make_write(dst.lun, c.offset / dst.block_size, blocks, dst.block_size, c.buffer);
            cmd.data.resize(c.padded_length);
            dst.session->submit(std::move(cmd), [&events, slot](Response&& r) {
                events.push({slot, false, std::move(r)});
            });
            return;
        }
        auto r = pwrite_all(dst.fd, c.buffer.data(), c.length, c.offset, dst.label);
        Response result;
        if (!r) {
            result.error = r.error();
        }
        events.push({slot, false, std::move(result)});
    };
    auto start_chunk = [&](size_t slot, uint64_t offset) {
        Chunk& c = chunks[slot];
        c.offset = offset;
        c.length = uint32_t(std::min<uint64_t>(chunk, total - offset));
        c.padded_length =
            uint32_t((uint64_t(c.length) + dst.block_size - 1) / dst.block_size * dst.block_size);
        if (src.iscsi) {
            auto cmd = initiator::make_read(src.lun, offset / src.block_size, c.length / src.block_size,
                                            src.block_size);
            c.buffer = cmd.data;
            src.session->submit(std::move(cmd), [&events, slot](Response&& r) {
                events.push({slot, true, std::move(r)});
            });
            return;
        }
        c.buffer = c.padded_length != c.length ? Buffer::allocate_zeroed(c.padded_length)
                                               : Buffer::allocate(c.length);
        auto r = pread_all(src.fd, c.buffer.data(), c.length, offset, src.label);
        if (!r) {
            Response result;
            result.error = r.error();
            events.push({slot, true, std::move(result)});
            return;
        }
        start_write(slot);
    };

    while (acknowledged < total || inflight > 0) {
        while (!failure && next < total && !free_slots.empty()) {
            size_t slot = free_slots.back();
            free_slots.pop_back();
            ++inflight;
            uint64_t offset = next;
            next += std::min<uint64_t>(chunk, total - next);
            start_chunk(slot, offset);
        }
        if (inflight == 0) {
            break; // failed, nothing left to wait for
        }
        Event e = events.pop();
        if (e.signal == SIGUSR1) {
            fmt::print(stderr, "ispace cp: {}\n", progress_line());
            continue;
        }
        if (e.signal != 0) {
            // Stop starting chunks; those in flight drain, so what was acknowledged is known exactly.
            if (!interrupted) {
                interrupted = e.signal;
                fail(fmt::format("interrupted by {}", e.signal == SIGINT ? "SIGINT" : "SIGTERM"));
            }
            continue;
        }
        Chunk& c = chunks[e.chunk];
        const Side& side = e.read ? src : dst;
        if (!e.result.ok()) {
            std::string where = side.iscsi ? fmt::format("{} at LBA {}", e.read ? "READ" : "WRITE",
                                                         c.offset / side.block_size)
                                           : fmt::format("at offset {}", c.offset);
            fail(e.result.error && !side.iscsi
                     ? e.result.error->message
                     : fmt::format("{}: {}: {}", side.label, where, e.result.describe()));
            --inflight;
            free_slots.push_back(e.chunk);
            continue;
        }
        if (e.read) {
            if (failure) {
                --inflight;
                free_slots.push_back(e.chunk);
                continue;
            }
            start_write(e.chunk);
            continue;
        }
        acknowledged += c.length;
        c.buffer.reset();
        --inflight;
        free_slots.push_back(e.chunk);
        progress.update(acknowledged);
    }
    signals.set_copying(false);
    progress.finish();
    // An interrupt that arrived while the last chunks were acknowledged still counts.
    if (failure) {
        error(*failure);
        std::string where = !dst.temp_path.empty()
                                ? fmt::format("{} was not written (the partial copy was removed)", dst.label)
                                : fmt::format("{} holds a partial copy", dst.label);
        error(fmt::format("copy {} after {} of {} bytes were acknowledged; {}",
                          interrupted ? "stopped" : "failed", acknowledged, total, where));
        dst.discard_temp();
        return interrupted ? 128 + interrupted : exit_failure;
    }
    // Make the copy durable before saying so.
    if (dst.iscsi) {
        if (auto r = dst.session->synchronize_cache(dst.lun); !r) {
            error(fmt::format("{}: {}", dst.label, r.error().message));
            return exit_failure;
        }
        dst.session->close();
    } else if (::fdatasync(dst.fd) < 0 && errno != EINVAL && errno != EROFS) {
        int err = errno;
        error(fmt::format("{}: fdatasync: {}", dst.label, std::strerror(err)));
        return exit_failure;
    } else {
        std::lock_guard lock(signals.commit_mutex());
        if (auto r = dst.commit(); !r) {
            error(r.error().message);
            return exit_failure;
        }
    }
    if (src.iscsi) {
        src.session->close();
    }
    // What recovery cost, when there was any (the counters the library keeps, per session).
    for (const auto* side : {&src, &dst}) {
        if (!side->iscsi) {
            continue;
        }
        initiator::SessionInfo info = side->session->info();
        std::vector<std::string> parts;
        auto add = [&](uint64_t n, const char* what) {
            if (n > 0) {
                parts.push_back(fmt::format("{} {}", n, what));
            }
        };
        add(info.reconnects, "session reinstatement(s)");
        add(info.connection_recoveries, "connection(s) logged in again");
        add(info.connection_failovers, "connection(s) removed for recovery, their tasks moved to another");
        add(info.reassignments, "task(s) reassigned");
        add(info.snacks, "SNACK(s)");
        add(info.retries, "command(s) retried");
        if (!parts.empty()) {
            fmt::print(stderr, "{}: recovery: {}\n", side->label, fmt::join(parts, ", "));
        }
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    // On any stderr, not only a terminal: cron and CI logs see the copy happened.
    fmt::print(stderr, "copied {} in {} ({}/s)\n", human_bytes(double(total)), human_duration(seconds),
               human_bytes(seconds > 0 ? double(total) / seconds : 0));
    return exit_ok;
}

} // namespace

Runner add_cp(CLI::App& app, GlobalOptions& global) {
    auto o = std::make_shared<CpOptions>();
    o->knobs.queue_depth = 8;
    auto* cmd = app.add_subcommand("cp", "Copy between local files and iSCSI LUNs");
    cmd->add_option("SRC", o->src,
                    "Source: a file, a block device or iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")
        ->required();
    cmd->add_option("DST", o->dst,
                    "Destination: a file (written under a temporary name, renamed over it when the "
                    "copy is complete), a block device or an iSCSI LUN URL")
        ->required();
    cmd->add_option("--connections", o->knobs.connections, "TCP connections per iSCSI session (MC/S)")
        ->default_val(1)
        ->check(CLI::Range(1, 64));
    cmd->add_option("--digest", o->knobs.digest,
                    "Header and data digests: crc32c (when the target does them), crc32c-only or none")
        ->check(CLI::IsMember({"crc32c", "crc32c-only", "none"}));
    cmd->add_option("--qd", o->knobs.queue_depth, "Chunks in flight")
        ->default_val(8)
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--bs", o->bs, "Chunk size (capped by the LUN's maximum transfer length)")
        ->default_val("1M");
    cmd->add_flag("!--no-progress", o->progress, "No progress bar (it is shown only on a terminal anyway)");
    cmd->footer(R"(Examples:
  ispace cp disk.img iscsi://192.0.2.10/iqn.2026-01.com.example:store/1
  ispace cp --digest crc32c --connections 4 iscsi://h/iqn.2026-01.com.example:a/1 backup.raw
  ispace cp iscsi://h/iqn.2026-01.com.example:a/1 iscsi://h2/iqn.2026-01.com.example:b/0

A lost connection is recovered (reconnect, session reinstatement, every unacknowledged chunk sent again)
without failing the copy. Exit status 0 means every byte was acknowledged by the destination and flushed
(SYNCHRONIZE CACHE / fdatasync). SIGUSR1 prints progress; SIGINT and SIGTERM stop the copy, say how
many bytes were acknowledged and exit 130 / 143 (a destination file is then left as it was).)");
    return [&global, o] { return run_cp(global, *o); };
}

} // namespace ispace::cli
