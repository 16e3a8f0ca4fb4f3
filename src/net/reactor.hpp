// Reactor: one event loop on one thread. ispaced runs one per core (ReactorGroup); every connection, and
// every operation started by it, lives on exactly one reactor. Cross-reactor work goes by post().
//
// The loop waits in epoll for socket readiness, an eventfd for posted work, a timerfd for timers and the
// io_uring completion fd. File and block I/O is submitted to a per-reactor io_uring, so a slow disk never
// stalls the sockets; where io_uring is unavailable the same API runs on a small worker pool.
//
// Threading contract: every method is for the reactor's own thread only, except post(), stop() and
// index(), which any thread may call.
#pragma once

#include "common/function.hpp"
#include "common/result.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <sys/uio.h>
#include <thread>
#include <vector>

namespace ispace::net {

using Task = Function<void()>;
using Clock = std::chrono::steady_clock;

// Receives readiness for a file descriptor registered with Reactor::add().
class FdHandler {
public:
    virtual ~FdHandler() = default;
    // `events` is the epoll event mask (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP).
    virtual void on_fd_event(uint32_t events) = 0;
};

// One asynchronous file operation. The caller owns it and keeps it alive (and its iovecs) until `done`
// runs. `done` receives the syscall result: bytes transferred (>= 0) or -errno. It always runs later on
// the submitting reactor, never inside submit(). A short read or write is reported as is; the caller
// decides whether to continue.
struct FileIo {
    enum class Op : uint8_t { readv, writev, fsync, fdatasync, fallocate };
    Op op = Op::readv;
    int fd = -1;
    const iovec* iov = nullptr; // readv/writev
    unsigned iovcnt = 0;
    uint64_t offset = 0;    // readv/writev/fallocate
    uint64_t length = 0;    // fallocate
    int mode = 0;           // fallocate mode (FALLOC_FL_*)
    bool rwf_dsync = false; // writev: RWF_DSYNC (a FUA write)
    Function<void(int result)> done;
};

struct ReactorOptions {
    unsigned uring_entries = 256;
    bool use_io_uring = true; // false forces the worker-pool fallback (tests exercise both)
    unsigned fallback_workers = 2;
    // Busy-poll before sleeping: after an iteration that did work, the loop polls epoll without
    // blocking for up to this long before it waits in the kernel. A request that arrives meanwhile
    // skips the sleep and the wake-up (tens of microseconds on a VM), which is most of a QD1 round
    // trip; the price is a core spinning while a client is active. 0 (the default) never spins.
    std::chrono::microseconds poll{0};
};

class Reactor {
public:
    explicit Reactor(unsigned index, ReactorOptions options = {});
    ~Reactor();
    Reactor(const Reactor&) = delete;
    Reactor& operator=(const Reactor&) = delete;

    unsigned index() const { return _index; }
    // The reactor running on the calling thread, or nullptr.
    static Reactor* current();

    // Runs the loop on the calling thread until stop(). Sets current().
    void run();
    // Runs one iteration: waits at most `timeout` for events, handles them and any deferred work.
    // For tests that drive a reactor by hand. Returns false once stop() was called.
    bool run_once(std::chrono::milliseconds timeout);
    // Any thread. The loop returns after the current iteration.
    void stop();
    bool stopping() const;

    // Any thread: runs `task` on this reactor's thread, in order of posting.
    void post(Task task);
    // Reactor thread: runs `task` after the current event handler returns, before the loop sleeps again.
    // Use it to complete something "later but now" without re-entering the caller.
    void defer(Task task);
    // Reactor thread: runs `task` once this iteration's events, completions, timers and deferred work
    // are handled, before file I/O is submitted and the loop sleeps. For work that gains from seeing the
    // whole batch: a socket writes the answers of every command completed in the iteration at once.
    void at_iteration_end(Task task);

    // Readiness of a file descriptor (edge-triggered off: level-triggered, so a handler may stop reading
    // early, e.g. for back-pressure, and be called again).
    void add(int fd, uint32_t events, FdHandler* handler);
    void modify(int fd, uint32_t events, FdHandler* handler);
    void remove(int fd);

    // Timers. One-shot; a periodic job re-arms itself. Ids are never reused.
    using TimerId = uint64_t;
    TimerId add_timer(Clock::duration delay, Task task);
    // Returns false if the timer already ran or was cancelled.
    bool cancel_timer(TimerId id);
    // The loop's notion of now, refreshed once per iteration.
    Clock::time_point now() const { return _now; }

    // Asynchronous file I/O (see FileIo).
    void submit(FileIo& io);
    // For calls with no asynchronous form (lseek SEEK_DATA, ioctl, open): runs `work` on a worker thread,
    // then `done(result)` on this reactor.
    void run_blocking(Function<int64_t()> work, Function<void(int64_t result)> done);

    bool using_io_uring() const;

    struct Stats {
        uint64_t iterations = 0;
        uint64_t fd_events = 0;
        uint64_t posted = 0;
        uint64_t file_ios = 0;
    };
    const Stats& stats() const { return _stats; }
    // Time the loop spent working (from epoll's return to the next wait), since the reactor was made;
    // readable from any thread (metrics: the busy fraction is its rate).
    std::chrono::nanoseconds busy_time() const {
        return std::chrono::nanoseconds(_busy_ns.load(std::memory_order_relaxed));
    }

private:
    struct Impl;
    unsigned _index;
    Clock::time_point _now;
    Stats _stats;
    std::atomic<uint64_t> _busy_ns{0}; // written by the loop only
    std::unique_ptr<Impl> _impl;
};

// N reactors, each on its own thread: the process's event loops.
class ReactorGroup {
public:
    explicit ReactorGroup(unsigned count, ReactorOptions options = {});
    ~ReactorGroup(); // stops and joins
    // Starts one thread per reactor.
    void start();
    void stop();
    void join();
    unsigned size() const { return unsigned(_reactors.size()); }
    Reactor& at(unsigned i) { return *_reactors[i]; }
    // Round-robin choice for a new connection.
    Reactor& next();
    // Number of threads the group runs (for tests that check there is no thread per connection).
    unsigned thread_count() const { return unsigned(_threads.size()); }

private:
    std::vector<std::unique_ptr<Reactor>> _reactors;
    std::vector<std::thread> _threads;
    std::atomic<unsigned> _next{0};
};

} // namespace ispace::net
