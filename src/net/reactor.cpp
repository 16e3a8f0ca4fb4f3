// Reactor: epoll loop, posted and deferred work, timers, and file I/O on io_uring or a worker pool.
//
// One iteration:
//   1. submit the io_uring SQEs prepared since the last iteration (one io_uring_enter per iteration);
//   2. wait in epoll (timeout: 0 if deferred work is left over, else the nearest timer or the caller's),
//      after a bounded busy-poll if ReactorOptions::poll is set and the last iteration did work;
//   3. refresh now(); dispatch fd events, posted tasks, io_uring completions; due timers;
//   4. after every handler, drain the deferred queue (bounded, so a task that defers itself forever
//      cannot starve the sockets);
//   5. submit the SQEs those handlers prepared, and take what completed inside that submit (a read of
//      cached data does);
//   6. run the iteration-end tasks: work that gains from waiting for the whole batch, such as a
//      socket's writes (one sendmsg for the answers of every command completed in this iteration
//      instead of one each).
#include "net/reactor.hpp"

#include "common/log.hpp"
#include "ispace/buffer.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <mutex>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <unordered_map>

namespace ispace::net {
namespace {

thread_local Reactor* t_current = nullptr;

// epoll data for the reactor's own descriptors; user descriptors carry (generation << 32 | fd).
constexpr uint64_t key_eventfd = ~uint64_t(0);
constexpr uint64_t key_ring = ~uint64_t(0) - 1;

// Deferred tasks run per drain before the loop looks at the sockets again.
constexpr size_t deferred_budget = 4096;
constexpr int max_events = 128;

// Makes `r` the current reactor of this thread for a scope (run_once, teardown) and restores the
// previous one, so a test that drives two reactors by hand on one thread sees the right one.
class CurrentScope {
public:
    explicit CurrentScope(Reactor* r) : _previous(t_current) { t_current = r; }
    ~CurrentScope() { t_current = _previous; }
    CurrentScope(const CurrentScope&) = delete;
    CurrentScope& operator=(const CurrentScope&) = delete;

private:
    Reactor* _previous;
};

// Runs one FileIo synchronously (the worker-pool path). Returns bytes or -errno like the io_uring CQE.
int execute_file_io(const FileIo& io) {
    for (;;) {
        ssize_t r = -1;
        switch (io.op) {
        case FileIo::Op::readv:
            r = ::preadv(io.fd, io.iov, int(io.iovcnt), off_t(io.offset));
            break;
        case FileIo::Op::writev:
            r = ::pwritev2(io.fd, io.iov, int(io.iovcnt), off_t(io.offset), io.rwf_dsync ? RWF_DSYNC : 0);
            break;
        case FileIo::Op::fsync:
            r = ::fsync(io.fd);
            break;
        case FileIo::Op::fdatasync:
            r = ::fdatasync(io.fd);
            break;
        case FileIo::Op::fallocate:
            r = ::fallocate(io.fd, io.mode, off_t(io.offset), off_t(io.length));
            break;
        }
        if (r >= 0) {
            return int(r);
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

// Runs jobs on a few threads. Started lazily: most reactors in tests never need it.
class WorkerPool {
public:
    explicit WorkerPool(unsigned threads) : _thread_count(std::max(1u, threads)) {}
    // Threads are named "reactor-R-wN" (the documented helpers of reactor R: docs/architecture.md).
    void set_name_prefix(std::string prefix) { _name_prefix = std::move(prefix); }
    ~WorkerPool() { shutdown(); }

    void enqueue(Task job) {
        {
            std::lock_guard lock(_mutex);
            _jobs.push_back(std::move(job));
            if (_threads.empty()) {
                for (unsigned i = 0; i < _thread_count; ++i) {
                    _threads.emplace_back([this] { work(); });
                    if (!_name_prefix.empty()) {
                        std::string name = fmt::format("{}-w{}", _name_prefix, i).substr(0, 15);
                        pthread_setname_np(_threads.back().native_handle(), name.c_str());
                    }
                }
            }
        }
        _cv.notify_one();
    }

    // Finishes every queued job, then joins the threads.
    void shutdown() {
        {
            std::lock_guard lock(_mutex);
            _stop = true;
        }
        _cv.notify_all();
        for (auto& t : _threads) {
            t.join();
        }
        _threads.clear();
    }

private:
    void work() {
        for (;;) {
            Task job;
            {
                std::unique_lock lock(_mutex);
                _cv.wait(lock, [this] { return _stop || !_jobs.empty(); });
                if (_jobs.empty()) {
                    return; // stopping and nothing left
                }
                job = std::move(_jobs.front());
                _jobs.pop_front();
            }
            job();
        }
    }

    unsigned _thread_count;
    std::string _name_prefix;
    std::mutex _mutex;
    std::condition_variable _cv;
    std::deque<Task> _jobs;
    std::vector<std::thread> _threads;
    bool _stop = false;
};

} // namespace

struct Reactor::Impl {
    struct FdEntry {
        FdHandler* handler = nullptr;
        uint32_t generation = 0;
    };
    struct TimerEntry {
        Clock::time_point deadline;
        TimerId id;
        // std::push_heap builds a max-heap; invert so the earliest (then lowest id) is on top.
        bool operator<(const TimerEntry& o) const {
            return deadline != o.deadline ? deadline > o.deadline : id > o.id;
        }
    };
    struct Completion {
        FileIo* io;
        int result;
    };

    Impl(Reactor& self, ReactorOptions options)
        : self(self), options(options), pool(options.fallback_workers) {
        pool.set_name_prefix(fmt::format("reactor-{}", self.index()));
    }

    Reactor& self;
    ReactorOptions options;
    int epoll_fd = -1;
    int event_fd = -1;
    std::vector<FdEntry> fds;

    // Posted work (any thread). `posted` is guarded by post_mutex; the eventfd is written only when it
    // goes from empty to non-empty, so a burst of posts costs one wakeup.
    std::mutex post_mutex;
    std::vector<Task> posted;
    std::vector<Task> posted_batch; // reactor thread only
    std::atomic<bool> stopping{false};

    std::vector<Task> deferred;
    std::vector<Task> deferred_batch;
    bool draining_deferred = false;
    std::vector<Task> iteration_end;
    std::vector<Task> iteration_end_batch;

    // Timers: a min-heap of deadlines; the tasks live in a map so cancel is O(1) and the heap entry is
    // dropped lazily when it reaches the top.
    std::vector<TimerEntry> timer_heap;
    std::unordered_map<TimerId, Task> timers;
    TimerId next_timer_id = 1;

    // io_uring
    bool ring_ok = false;
    io_uring ring{};
    unsigned ring_capacity = 0;         // most SQEs in flight at once, so the CQ never overflows
    unsigned sq_pending = 0;            // prepared, not yet submitted
    unsigned ring_in_flight = 0;        // in the SQ or the kernel, not yet reaped
    bool submit_stalled = false;        // io_uring_submit said EAGAIN/EBUSY: retry soon
    bool worked_last_iteration = false; // busy-poll only while there is traffic
    std::deque<FileIo*> overflow;       // waiting for ring space (SQ full or ring_capacity reached)
    std::vector<Completion> completions;

    // Worker pool (fallback file I/O and run_blocking); jobs counted until their completion has run.
    WorkerPool pool;
    uint64_t pool_outstanding = 0;
    bool tearing_down = false;

    void setup();
    void teardown();
    bool iterate(int64_t timeout_ns);
    // Polls for up to options.poll; true if something is ready (n: the events polled, maybe 0).
    bool busy_poll(epoll_event* events, int64_t wait_ns, int& n);
    void dispatch(const epoll_event& ev);
    void drain_eventfd();
    void run_posted();
    void run_deferred();
    void run_iteration_end();
    void run_timers();
    int64_t next_timer_ns(Clock::time_point now);
    void submit_ring();
    bool prep_sqe(FileIo& io);
    void refill_from_overflow();
    void reap_ring();
    void complete(FileIo* io, int result);
    void submit_to_pool(FileIo& io);
};

// ---------------------------------------------------------------------------------------------------
// Setup and teardown

void Reactor::Impl::setup() {
    epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        log_error("reactor {}: epoll_create1: {}", self._index, std::strerror(errno));
        std::abort(); // nothing runs without a loop; this is start-up, not the data path
    }
    event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd < 0) {
        log_error("reactor {}: eventfd: {}", self._index, std::strerror(errno));
        std::abort();
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key_eventfd;
    ::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, event_fd, &ev);

    if (options.use_io_uring) {
        int r = ::io_uring_queue_init(std::max(8u, options.uring_entries), &ring, 0);
        if (r < 0) {
            log_warn("reactor {}: io_uring unavailable ({}); file I/O uses {} worker threads", self._index,
                     std::strerror(-r), options.fallback_workers);
        } else {
            ring_ok = true;
            ring_capacity = ring.sq.ring_entries;
            // The ring fd polls readable while the CQ holds completions, so completions wake epoll.
            ev.events = EPOLLIN;
            ev.data.u64 = key_ring;
            if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, ring.ring_fd, &ev) < 0) {
                log_warn("reactor {}: cannot poll the io_uring fd ({}); using worker threads", self._index,
                         std::strerror(errno));
                ::io_uring_queue_exit(&ring);
                ring_ok = false;
            }
        }
    }
}

// Completes everything still in flight before the ring and the pool go away: FileIos and worker jobs
// reference caller memory, and the kernel may still write into a read's buffers after
// io_uring_queue_exit(). Queued-but-unsubmitted FileIos complete with -ECANCELED; new ones submitted
// from completions during teardown too, so this terminates.
void Reactor::Impl::teardown() {
    CurrentScope scope(&self);
    tearing_down = true;
    while (!overflow.empty()) {
        FileIo* io = overflow.front();
        overflow.pop_front();
        complete(io, -ECANCELED);
        run_deferred();
    }
    for (;;) {
        run_posted();
        run_deferred();
        run_iteration_end();
        if (ring_ok) {
            submit_ring();
            reap_ring();
        }
        bool busy = (ring_ok && ring_in_flight > 0) || pool_outstanding > 0;
        bool queued = !deferred.empty() || !iteration_end.empty();
        {
            std::lock_guard lock(post_mutex);
            queued = queued || !posted.empty();
        }
        if (!busy && !queued) {
            break;
        }
        if (!queued) {
            // Sleep until the ring completes something or a worker posts its result.
            pollfd pfds[2] = {{event_fd, POLLIN, 0}, {ring_ok ? ring.ring_fd : -1, POLLIN, 0}};
            ::poll(pfds, 2, 100);
        }
    }
    pool.shutdown();
    timers.clear();
    timer_heap.clear();
    if (ring_ok) {
        ::io_uring_queue_exit(&ring);
        ring_ok = false;
    }
    ::close(event_fd);
    ::close(epoll_fd);
}

// ---------------------------------------------------------------------------------------------------
// The loop

bool Reactor::Impl::iterate(int64_t timeout_ns) {
    if (ring_ok) {
        submit_ring();
    }
    int64_t wait_ns = timeout_ns;
    if (!deferred.empty() || !iteration_end.empty() || (ring_ok && io_uring_cq_ready(&ring) > 0)) {
        wait_ns = 0;
    } else if (submit_stalled && (wait_ns < 0 || wait_ns > 1000000)) {
        wait_ns = 1000000;
    } else {
        int64_t timer_ns = next_timer_ns(Clock::now());
        if (timer_ns >= 0 && (wait_ns < 0 || timer_ns < wait_ns)) {
            wait_ns = timer_ns;
        }
    }
    if (stopping.load(std::memory_order_acquire)) {
        wait_ns = 0;
    }

    epoll_event events[max_events];
    int n = 0;
    if (wait_ns != 0 && worked_last_iteration && busy_poll(events, wait_ns, n)) {
        wait_ns = 0; // something is ready: take it without sleeping
    }
    if (n == 0 && wait_ns < 0) {
        n = ::epoll_pwait2(epoll_fd, events, max_events, nullptr, nullptr);
    } else if (n == 0) {
        timespec ts{time_t(wait_ns / 1000000000), long(wait_ns % 1000000000)};
        n = ::epoll_pwait2(epoll_fd, events, max_events, &ts, nullptr);
    }
    if (n < 0) {
        if (errno != EINTR) {
            log_error("reactor {}: epoll_pwait2: {}", self._index, std::strerror(errno));
        }
        n = 0;
    }
    self._now = Clock::now();
    ++self._stats.iterations;

    for (int i = 0; i < n; ++i) {
        dispatch(events[i]);
    }
    worked_last_iteration = n > 0;
    // Completions posted by task_work can arrive without the ring fd being reported in this batch.
    if (ring_ok) {
        worked_last_iteration |= io_uring_cq_ready(&ring) > 0;
        reap_ring();
    }
    run_timers();
    run_deferred();
    if (ring_ok) {
        // A buffered read of cached data usually completes inside its submit: its completion is taken
        // now, so the answer it produces leaves with this iteration's writes instead of after one more
        // epoll call with a zero timeout (at queue depth 1, one system call in five per command).
        submit_ring();
        if (io_uring_cq_ready(&ring) > 0) {
            reap_ring();
            run_deferred();
        }
    }
    run_iteration_end();
    if (ring_ok) {
        submit_ring();
    }
    // One clock read per iteration: cheap next to the epoll call it follows.
    auto busy = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - self._now).count();
    self._busy_ns.store(self._busy_ns.load(std::memory_order_relaxed) + uint64_t(busy),
                        std::memory_order_relaxed);
    return !stopping.load(std::memory_order_acquire);
}

bool Reactor::Impl::busy_poll(epoll_event* events, int64_t wait_ns, int& n) {
    if (options.poll.count() <= 0) {
        return false;
    }
    // Never spin past the wait the loop was going to make (a timer due sooner, a caller's timeout).
    int64_t poll_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(options.poll).count();
    if (wait_ns >= 0 && wait_ns < poll_ns) {
        poll_ns = wait_ns;
    }
    auto deadline = Clock::now() + std::chrono::nanoseconds(poll_ns);
    timespec zero{0, 0};
    do {
        n = ::epoll_pwait2(epoll_fd, events, max_events, &zero, nullptr);
        if (n > 0) {
            return true;
        }
        if (n < 0) {
            n = 0;
            return false; // the wait that follows reports the error
        }
        if (ring_ok && io_uring_cq_ready(&ring) > 0) {
            return true; // completions are reaped after the (then immediate) wait
        }
    } while (Clock::now() < deadline && !stopping.load(std::memory_order_relaxed));
    return false;
}

void Reactor::Impl::dispatch(const epoll_event& ev) {
    uint64_t key = ev.data.u64;
    if (key == key_eventfd) {
        drain_eventfd();
        run_posted();
        return;
    }
    if (key == key_ring) {
        reap_ring();
        return;
    }
    int fd = int(uint32_t(key));
    uint32_t generation = uint32_t(key >> 32);
    // A handler earlier in this batch may have removed (or replaced) this fd; its entry tells.
    if (size_t(fd) >= fds.size() || fds[fd].handler == nullptr || fds[fd].generation != generation) {
        return;
    }
    ++self._stats.fd_events;
    fds[fd].handler->on_fd_event(ev.events);
    run_deferred();
}

void Reactor::Impl::drain_eventfd() {
    uint64_t value;
    // Read before taking the queue: a post after our swap then finds the queue empty and writes again.
    while (::read(event_fd, &value, sizeof value) < 0 && errno == EINTR) {
    }
}

void Reactor::Impl::run_posted() {
    {
        std::lock_guard lock(post_mutex);
        posted_batch.swap(posted);
    }
    // posted_batch is only touched here and run_posted is not re-entered (a posted task that calls
    // run_once is a bug), so iterate by index and clear at the end to keep its capacity.
    for (size_t i = 0; i < posted_batch.size(); ++i) {
        ++self._stats.posted;
        Task task = std::move(posted_batch[i]);
        task();
        run_deferred();
    }
    posted_batch.clear();
}

void Reactor::Impl::run_deferred() {
    if (draining_deferred) {
        return; // a deferred task's own defer() lands in `deferred` and runs in the next round
    }
    draining_deferred = true;
    size_t ran = 0;
    while (!deferred.empty() && ran < deferred_budget) {
        deferred_batch.swap(deferred);
        size_t i = 0;
        for (; i < deferred_batch.size() && ran < deferred_budget; ++i, ++ran) {
            Task task = std::move(deferred_batch[i]);
            task();
        }
        if (i < deferred_batch.size()) {
            // Budget exhausted: keep the rest ahead of anything deferred meanwhile, in order.
            std::vector<Task> rest;
            rest.reserve(deferred_batch.size() - i + deferred.size());
            for (; i < deferred_batch.size(); ++i) {
                rest.push_back(std::move(deferred_batch[i]));
            }
            for (auto& t : deferred) {
                rest.push_back(std::move(t));
            }
            deferred.swap(rest);
        }
        deferred_batch.clear();
    }
    draining_deferred = false;
}

// Bounded like run_deferred: a task that queues itself again runs in the next iteration (which then
// does not sleep), so it cannot hold the loop here.
void Reactor::Impl::run_iteration_end() {
    if (iteration_end.empty()) {
        return;
    }
    iteration_end_batch.swap(iteration_end);
    for (size_t i = 0; i < iteration_end_batch.size(); ++i) {
        Task task = std::move(iteration_end_batch[i]);
        task();
        run_deferred();
    }
    iteration_end_batch.clear();
}

int64_t Reactor::Impl::next_timer_ns(Clock::time_point now) {
    while (!timer_heap.empty() && !timers.contains(timer_heap.front().id)) {
        std::pop_heap(timer_heap.begin(), timer_heap.end());
        timer_heap.pop_back();
    }
    if (timer_heap.empty()) {
        return -1;
    }
    auto delta = timer_heap.front().deadline - now;
    return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(delta).count());
}

void Reactor::Impl::run_timers() {
    // Timers added while running (even with delay 0) wait for the next iteration, so a timer that
    // re-arms itself with no delay cannot hold the loop.
    TimerId limit = next_timer_id;
    Clock::time_point now = self._now;
    while (!timer_heap.empty()) {
        TimerEntry top = timer_heap.front();
        if (top.deadline > now || top.id >= limit) {
            break;
        }
        std::pop_heap(timer_heap.begin(), timer_heap.end());
        timer_heap.pop_back();
        auto it = timers.find(top.id);
        if (it == timers.end()) {
            continue; // cancelled
        }
        Task task = std::move(it->second);
        timers.erase(it);
        task();
        run_deferred();
    }
}

// ---------------------------------------------------------------------------------------------------
// io_uring

bool Reactor::Impl::prep_sqe(FileIo& io) {
    io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
    if (!sqe) {
        return false;
    }
    switch (io.op) {
    case FileIo::Op::readv:
        ::io_uring_prep_readv(sqe, io.fd, io.iov, io.iovcnt, io.offset);
        break;
    case FileIo::Op::writev:
        ::io_uring_prep_writev2(sqe, io.fd, io.iov, io.iovcnt, io.offset, io.rwf_dsync ? RWF_DSYNC : 0);
        break;
    case FileIo::Op::fsync:
        ::io_uring_prep_fsync(sqe, io.fd, 0);
        break;
    case FileIo::Op::fdatasync:
        ::io_uring_prep_fsync(sqe, io.fd, IORING_FSYNC_DATASYNC);
        break;
    case FileIo::Op::fallocate:
        ::io_uring_prep_fallocate(sqe, io.fd, io.mode, off_t(io.offset), off_t(io.length));
        break;
    }
    ::io_uring_sqe_set_data(sqe, &io);
    ++sq_pending;
    return true;
}

void Reactor::Impl::submit_ring() {
    if (sq_pending == 0) {
        return;
    }
    int r;
    do {
        r = ::io_uring_submit(&ring);
    } while (r == -EINTR);
    if (r >= 0) {
        sq_pending = sq_pending > unsigned(r) ? sq_pending - unsigned(r) : 0;
        submit_stalled = sq_pending > 0;
        return;
    }
    // The SQEs stay in the ring (liburing has already published them to the kernel's tail) and go
    // with the next io_uring_enter; there is no taking them back. EAGAIN/EBUSY are transient (kernel
    // short of memory); anything else is a bug we log. Per-request errors arrive as CQEs, not here.
    submit_stalled = true;
    if (r != -EAGAIN && r != -EBUSY) {
        log_error("reactor {}: io_uring_submit: {}", self._index, std::strerror(-r));
    }
}

void Reactor::Impl::refill_from_overflow() {
    while (!overflow.empty() && ring_in_flight < ring_capacity) {
        if (!prep_sqe(*overflow.front())) {
            break;
        }
        ++ring_in_flight;
        overflow.pop_front();
    }
}

void Reactor::Impl::reap_ring() {
    if (io_uring_cq_ready(&ring) == 0) {
        return;
    }
    completions.clear();
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
        completions.push_back({static_cast<FileIo*>(::io_uring_cqe_get_data(cqe)), cqe->res});
        ++count;
    }
    ::io_uring_cq_advance(&ring, count);
    ring_in_flight -= count;
    refill_from_overflow();
    // Copy out: a completion may submit more I/O and, through a nested reap in teardown, reuse
    // `completions`.
    std::vector<Completion> batch;
    batch.swap(completions);
    for (auto& c : batch) {
        complete(c.io, c.result);
        run_deferred();
    }
    if (completions.empty()) {
        batch.clear();
        completions.swap(batch); // keep the capacity
    }
}

void Reactor::Impl::complete(FileIo* io, int result) {
    // Move `done` out first: the callback may destroy or reuse the FileIo that holds it.
    auto done = std::move(io->done);
    done(result);
}

void Reactor::Impl::submit_to_pool(FileIo& io) {
    ++pool_outstanding;
    FileIo* p = &io;
    Reactor* r = &self;
    pool.enqueue([p, r] {
        int result = execute_file_io(*p);
        r->post([p, r, result] {
            --r->_impl->pool_outstanding;
            r->_impl->complete(p, result);
        });
    });
}

// ---------------------------------------------------------------------------------------------------
// Reactor

Reactor::Reactor(unsigned index, ReactorOptions options)
    : _index(index), _now(Clock::now()), _impl(std::make_unique<Impl>(*this, options)) {
    _impl->setup();
}

Reactor::~Reactor() {
    _impl->teardown();
}

Reactor* Reactor::current() {
    return t_current;
}

namespace {

// A reactor thread's buffer cache gives back, once a second, what it did not use in the last second:
// after a burst, memory returns to the system (Buffer::trim_idle_thread_cache).
void trim_buffer_cache_every_second(Reactor& reactor) {
    reactor.add_timer(std::chrono::seconds(1), [&reactor] {
        Buffer::trim_idle_thread_cache();
        trim_buffer_cache_every_second(reactor);
    });
}

} // namespace

void Reactor::run() {
    CurrentScope scope(this);
    trim_buffer_cache_every_second(*this);
    while (_impl->iterate(-1)) {
    }
}

bool Reactor::run_once(std::chrono::milliseconds timeout) {
    if (stopping()) {
        return false;
    }
    CurrentScope scope(this);
    int64_t ns =
        timeout.count() < 0 ? -1 : std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
    return _impl->iterate(ns);
}

void Reactor::stop() {
    _impl->stopping.store(true, std::memory_order_release);
    uint64_t one = 1;
    ssize_t r = ::write(_impl->event_fd, &one, sizeof one);
    (void)r; // EAGAIN means the counter is already non-zero: the loop wakes anyway
}

bool Reactor::stopping() const {
    return _impl->stopping.load(std::memory_order_acquire);
}

void Reactor::post(Task task) {
    bool was_empty;
    {
        std::lock_guard lock(_impl->post_mutex);
        was_empty = _impl->posted.empty();
        _impl->posted.push_back(std::move(task));
    }
    if (was_empty) {
        uint64_t one = 1;
        ssize_t r = ::write(_impl->event_fd, &one, sizeof one);
        (void)r;
    }
}

void Reactor::defer(Task task) {
    _impl->deferred.push_back(std::move(task));
}

void Reactor::at_iteration_end(Task task) {
    _impl->iteration_end.push_back(std::move(task));
}

void Reactor::add(int fd, uint32_t events, FdHandler* handler) {
    assert(fd >= 0 && handler);
    auto& fds = _impl->fds;
    if (size_t(fd) >= fds.size()) {
        fds.resize(std::max(size_t(fd) + 1, fds.size() * 2));
    }
    auto& entry = fds[fd];
    ++entry.generation;
    entry.handler = handler;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = uint64_t(entry.generation) << 32 | uint32_t(fd);
    if (::epoll_ctl(_impl->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        log_error("reactor {}: epoll add fd {}: {}", _index, fd, std::strerror(errno));
        entry.handler = nullptr;
    }
}

void Reactor::modify(int fd, uint32_t events, FdHandler* handler) {
    auto& fds = _impl->fds;
    assert(fd >= 0 && size_t(fd) < fds.size() && fds[fd].handler);
    auto& entry = fds[fd];
    entry.handler = handler;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = uint64_t(entry.generation) << 32 | uint32_t(fd);
    if (::epoll_ctl(_impl->epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        log_error("reactor {}: epoll modify fd {}: {}", _index, fd, std::strerror(errno));
    }
}

void Reactor::remove(int fd) {
    auto& fds = _impl->fds;
    if (fd < 0 || size_t(fd) >= fds.size() || !fds[fd].handler) {
        return;
    }
    fds[fd].handler = nullptr;
    ++fds[fd].generation; // events already fetched for this fd in this batch are now stale
    if (::epoll_ctl(_impl->epoll_fd, EPOLL_CTL_DEL, fd, nullptr) < 0 && errno != EBADF && errno != ENOENT) {
        log_error("reactor {}: epoll remove fd {}: {}", _index, fd, std::strerror(errno));
    }
}

Reactor::TimerId Reactor::add_timer(Clock::duration delay, Task task) {
    // Measured from the real time of the call, not the iteration's now(): a long handler must not
    // make its timers fire early.
    TimerId id = _impl->next_timer_id++;
    _impl->timers.emplace(id, std::move(task));
    _impl->timer_heap.push_back({Clock::now() + std::max(delay, Clock::duration::zero()), id});
    std::push_heap(_impl->timer_heap.begin(), _impl->timer_heap.end());
    return id;
}

bool Reactor::cancel_timer(TimerId id) {
    auto& impl = *_impl;
    if (impl.timers.erase(id) == 0) {
        return false;
    }
    // Heap entries of cancelled timers are skipped lazily; rebuild when they dominate, so a
    // connection that re-arms and cancels a timer per command does not grow the heap without bound.
    if (impl.timer_heap.size() > 64 && impl.timer_heap.size() > 4 * impl.timers.size()) {
        std::erase_if(impl.timer_heap,
                      [&](const Impl::TimerEntry& e) { return !impl.timers.contains(e.id); });
        std::make_heap(impl.timer_heap.begin(), impl.timer_heap.end());
    }
    return true;
}

void Reactor::submit(FileIo& io) {
    auto& impl = *_impl;
    ++_stats.file_ios;
    if (impl.tearing_down) {
        FileIo* p = &io;
        defer([p, this] { _impl->complete(p, -ECANCELED); });
        return;
    }
    if (!impl.ring_ok) {
        impl.submit_to_pool(io);
        return;
    }
    // Keep order: once anything overflowed, later requests queue behind it. Capping what is in the
    // ring at its SQ size keeps the CQ (twice as large) from ever overflowing.
    if (!impl.overflow.empty() || impl.ring_in_flight >= impl.ring_capacity || !impl.prep_sqe(io)) {
        impl.overflow.push_back(&io);
        return;
    }
    ++impl.ring_in_flight;
}

void Reactor::run_blocking(Function<int64_t()> work, Function<void(int64_t result)> done) {
    auto& impl = *_impl;
    if (impl.tearing_down) {
        defer([done = std::move(done)]() mutable { done(-ECANCELED); });
        return;
    }
    ++impl.pool_outstanding;
    // Both callables are move-only; the pair travels to the worker and back in one heap object.
    struct Job {
        Function<int64_t()> work;
        Function<void(int64_t)> done;
    };
    auto* job = new Job{std::move(work), std::move(done)};
    impl.pool.enqueue([job, this] {
        int64_t result = job->work();
        post([job, this, result] {
            --_impl->pool_outstanding;
            auto done = std::move(job->done);
            delete job;
            done(result);
        });
    });
}

bool Reactor::using_io_uring() const {
    return _impl->ring_ok;
}

// ---------------------------------------------------------------------------------------------------
// ReactorGroup

ReactorGroup::ReactorGroup(unsigned count, ReactorOptions options) {
    _reactors.reserve(count);
    for (unsigned i = 0; i < count; ++i) {
        _reactors.push_back(std::make_unique<Reactor>(i, options));
    }
}

ReactorGroup::~ReactorGroup() {
    stop();
    join();
}

void ReactorGroup::start() {
    for (auto& r : _reactors) {
        Reactor* reactor = r.get();
        _threads.emplace_back([reactor] { reactor->run(); });
        // "reactor-N" in top -H, perf and /proc/PID/task/*/comm (at most 15 characters).
        std::string name = fmt::format("reactor-{}", reactor->index()).substr(0, 15);
        pthread_setname_np(_threads.back().native_handle(), name.c_str());
    }
}

void ReactorGroup::stop() {
    for (auto& r : _reactors) {
        r->stop();
    }
}

void ReactorGroup::join() {
    for (auto& t : _threads) {
        if (t.joinable()) {
            t.join();
        }
    }
    _threads.clear();
}

Reactor& ReactorGroup::next() {
    return *_reactors[_next.fetch_add(1, std::memory_order_relaxed) % _reactors.size()];
}

} // namespace ispace::net
