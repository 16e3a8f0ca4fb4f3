// Reactor: posted and deferred work, timers, fd readiness, run_blocking, groups, teardown.
#include "net/reactor.hpp"
#include "net_test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <fcntl.h>
#include <mutex>
#include <set>
#include <string>
#include <sys/epoll.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace ispace;
using namespace ispace::net;
using namespace std::chrono_literals;
using test::run_on;
using test::run_until;

TEST(Reactor, PostRunsInOrderOnTheReactor) {
    Reactor r(0);
    std::vector<int> order;
    for (int i = 0; i < 100; ++i) {
        r.post([&, i] {
            EXPECT_EQ(Reactor::current(), &r);
            order.push_back(i);
        });
    }
    ASSERT_TRUE(run_until(r, [&] { return order.size() == 100; }));
    for (int i = 0; i < 100; ++i) {
        EXPECT_EQ(order[i], i);
    }
    EXPECT_EQ(r.stats().posted, 100u);
    EXPECT_EQ(Reactor::current(), nullptr); // only set while the reactor runs
}

TEST(Reactor, DeferRunsAfterTheHandlerAndBeforeLaterPosts) {
    Reactor r(0);
    std::vector<std::string> order;
    r.post([&] {
        order.push_back("a");
        r.post([&] { order.push_back("posted-from-a"); });
        r.defer([&] {
            order.push_back("deferred-1");
            r.defer([&] { order.push_back("deferred-from-deferred"); });
        });
        r.defer([&] { order.push_back("deferred-2"); });
        order.push_back("a-end"); // deferred work never runs inside the handler
    });
    ASSERT_TRUE(run_until(r, [&] { return order.size() == 6; }));
    std::vector<std::string> want = {
        "a", "a-end", "deferred-1", "deferred-2", "deferred-from-deferred", "posted-from-a"};
    EXPECT_EQ(order, want);
}

TEST(Reactor, SelfReDeferringTaskDoesNotStarveTheLoop) {
    Reactor r(0);
    bool stop = false;
    uint64_t rounds = 0;
    std::function<void()> again = [&] {
        ++rounds;
        if (!stop) {
            r.defer([&] { again(); });
        }
    };
    r.post([&] {
        again();
        // Posted from the reactor itself: it can only run once the loop gets past the deferred chain.
        r.post([&] { stop = true; });
    });
    ASSERT_TRUE(run_until(r, [&] { return stop; }));
    EXPECT_GT(rounds, 1u);
    run_until(r, [&] { return true; });
}

TEST(Reactor, TimersFireInDeadlineThenIdOrder) {
    Reactor r(0);
    std::vector<int> fired;
    Reactor::TimerId a = 0, b = 0, c = 0, d = 0;
    run_on(r, [&] {
        a = r.add_timer(30ms, [&] { fired.push_back(30); });
        b = r.add_timer(10ms, [&] { fired.push_back(10); });
        c = r.add_timer(20ms, [&] { fired.push_back(20); });
        d = r.add_timer(0ms, [&] { fired.push_back(0); });
    });
    EXPECT_LT(a, b);
    EXPECT_LT(b, c);
    EXPECT_LT(c, d);
    ASSERT_TRUE(run_until(r, [&] { return fired.size() == 4; }));
    EXPECT_EQ(fired, (std::vector<int>{0, 10, 20, 30}));
}

TEST(Reactor, CancelledTimersDoNotRun) {
    Reactor r(0);
    std::vector<int> fired;
    run_on(r, [&] {
        auto t1 = r.add_timer(5ms, [&] { fired.push_back(1); });
        auto t2 = r.add_timer(5ms, [&] { fired.push_back(2); });
        auto t3 = r.add_timer(10ms, [&] { fired.push_back(3); });
        EXPECT_TRUE(r.cancel_timer(t2));
        EXPECT_FALSE(r.cancel_timer(t2));        // already cancelled
        EXPECT_FALSE(r.cancel_timer(t3 + 1000)); // never existed
        (void)t1;
    });
    ASSERT_TRUE(run_until(r, [&] { return fired.size() == 2; }));
    EXPECT_EQ(fired, (std::vector<int>{1, 3}));
}

TEST(Reactor, CancelAfterFireReturnsFalseAndIdsAreNotReused) {
    Reactor r(0);
    bool fired = false;
    Reactor::TimerId id = 0;
    run_on(r, [&] { id = r.add_timer(0ms, [&] { fired = true; }); });
    ASSERT_TRUE(run_until(r, [&] { return fired; }));
    std::set<Reactor::TimerId> ids{id};
    run_on(r, [&] {
        EXPECT_FALSE(r.cancel_timer(id));
        for (int i = 0; i < 1000; ++i) {
            auto t = r.add_timer(1h, [] {});
            EXPECT_TRUE(ids.insert(t).second);
            EXPECT_TRUE(r.cancel_timer(t)); // many cancels: the heap is compacted, ids keep growing
        }
    });
}

TEST(Reactor, TimerCanCancelAnotherDueTimer) {
    Reactor r(0);
    std::vector<int> fired;
    Reactor::TimerId second = 0;
    run_on(r, [&] {
        r.add_timer(1ms, [&] {
            fired.push_back(1);
            r.cancel_timer(second);
        });
        second = r.add_timer(1ms, [&] { fired.push_back(2); });
        r.add_timer(3ms, [&] { fired.push_back(3); });
    });
    ASSERT_TRUE(run_until(r, [&] { return fired.size() == 2; }));
    EXPECT_EQ(fired, (std::vector<int>{1, 3}));
}

TEST(Reactor, ZeroDelayTimerThatReArmsItselfDoesNotHoldTheLoop) {
    Reactor r(0);
    int count = 0;
    std::function<void()> tick = [&] {
        if (++count < 50) {
            r.add_timer(0ms, [&] { tick(); });
        }
    };
    run_on(r, [&] { r.add_timer(0ms, [&] { tick(); }); });
    // Each run_once returns; the chain advances about one step per iteration.
    ASSERT_TRUE(run_until(r, [&] { return count == 50; }));
    EXPECT_GE(r.stats().iterations, 25u);
}

TEST(Reactor, NowAdvancesAcrossIterations) {
    Reactor r(0);
    auto before = r.now();
    bool fired = false;
    run_on(r, [&] { r.add_timer(2ms, [&] { fired = true; }); });
    ASSERT_TRUE(run_until(r, [&] { return fired; }));
    EXPECT_GT(r.now(), before);
}

TEST(Reactor, ManyThreadsPostInPerThreadOrder) {
    Reactor r(0);
    constexpr int threads = 8;
    constexpr int per_thread = 5000;
    std::vector<int> last(threads, -1);
    std::atomic<int> total{0};
    bool in_order = true;
    std::vector<std::thread> posters;
    for (int t = 0; t < threads; ++t) {
        posters.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                r.post([&, t, i] {
                    in_order = in_order && last[t] == i - 1;
                    last[t] = i;
                    total.fetch_add(1, std::memory_order_relaxed);
                });
            }
        });
    }
    ASSERT_TRUE(run_until(r, [&] { return total.load() == threads * per_thread; }));
    for (auto& p : posters) {
        p.join();
    }
    EXPECT_TRUE(in_order);
}

namespace {

class PipeHandler : public FdHandler {
public:
    std::function<void(uint32_t)> on_event;
    int calls = 0;
    void on_fd_event(uint32_t events) override {
        ++calls;
        if (on_event) {
            on_event(events);
        }
    }
};

struct Pipe {
    int fds[2] = {-1, -1};
    Pipe() { EXPECT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0); }
    ~Pipe() {
        ::close(fds[0]);
        ::close(fds[1]);
    }
    void put() { EXPECT_EQ(::write(fds[1], "x", 1), 1); }
};

} // namespace

TEST(Reactor, FdReadinessIsLevelTriggered) {
    Reactor r(0);
    Pipe p;
    PipeHandler h;
    run_on(r, [&] { r.add(p.fds[0], EPOLLIN, &h); });
    p.put();
    ASSERT_TRUE(run_until(r, [&] { return h.calls >= 1; }));
    // Not read: reported again on the next iteration.
    ASSERT_TRUE(run_until(r, [&] { return h.calls >= 3; }));
    char c;
    ASSERT_EQ(::read(p.fds[0], &c, 1), 1);
    int calls = h.calls;
    r.run_once(5ms);
    r.run_once(5ms);
    EXPECT_EQ(h.calls, calls);
    run_on(r, [&] { r.remove(p.fds[0]); });
    p.put();
    r.run_once(5ms);
    EXPECT_EQ(h.calls, calls);
}

TEST(Reactor, FdRemovedByAnEarlierHandlerInTheSameBatchIsNotDispatched) {
    Reactor r(0);
    Pipe p1, p2;
    PipeHandler h1, h2;
    // Whichever runs first removes the other; both are ready in the same epoll batch.
    char c;
    h1.on_event = [&](uint32_t) {
        EXPECT_EQ(::read(p1.fds[0], &c, 1), 1);
        r.remove(p2.fds[0]);
    };
    h2.on_event = [&](uint32_t) {
        EXPECT_EQ(::read(p2.fds[0], &c, 1), 1);
        r.remove(p1.fds[0]);
    };
    run_on(r, [&] {
        r.add(p1.fds[0], EPOLLIN, &h1);
        r.add(p2.fds[0], EPOLLIN, &h2);
    });
    p1.put();
    p2.put();
    ASSERT_TRUE(run_until(r, [&] { return h1.calls + h2.calls >= 1; }));
    r.run_once(5ms);
    EXPECT_EQ(h1.calls + h2.calls, 1);
}

TEST(Reactor, ModifyChangesInterest) {
    Reactor r(0);
    Pipe p;
    PipeHandler h;
    uint32_t seen = 0;
    h.on_event = [&](uint32_t ev) { seen |= ev; };
    run_on(r, [&] { r.add(p.fds[1], 0, &h); });
    r.run_once(5ms);
    EXPECT_EQ(h.calls, 0);
    run_on(r, [&] { r.modify(p.fds[1], EPOLLOUT, &h); });
    ASSERT_TRUE(run_until(r, [&] { return h.calls > 0; }));
    EXPECT_TRUE(seen & EPOLLOUT);
    run_on(r, [&] { r.remove(p.fds[1]); });
}

TEST(Reactor, RunBlockingRunsOnAWorkerAndCompletesOnTheReactor) {
    Reactor r(0);
    std::thread::id worker_thread;
    std::thread::id done_thread;
    int64_t result = 0;
    bool done = false;
    run_on(r, [&] {
        r.run_blocking(
            [&]() -> int64_t {
                worker_thread = std::this_thread::get_id();
                return 42;
            },
            [&](int64_t v) {
                EXPECT_EQ(Reactor::current(), &r);
                done_thread = std::this_thread::get_id();
                result = v;
                done = true;
            });
        EXPECT_FALSE(done);
    });
    ASSERT_TRUE(run_until(r, [&] { return done; }));
    EXPECT_EQ(result, 42);
    EXPECT_NE(worker_thread, std::this_thread::get_id());
    EXPECT_EQ(done_thread, std::this_thread::get_id());
}

TEST(Reactor, StopEndsRunAndRunOnceReportsIt) {
    Reactor r(0);
    std::thread t([&] { r.run(); });
    std::atomic<bool> ran{false};
    r.post([&] { ran = true; });
    while (!ran) {
        std::this_thread::yield();
    }
    r.stop();
    t.join();
    EXPECT_TRUE(r.stopping());
    EXPECT_FALSE(r.run_once(0ms));
}

TEST(Reactor, TeardownRunsWorkStillQueued) {
    int posted = 0;
    int blocking = 0;
    {
        Reactor r(0);
        run_on(r, [&] {
            for (int i = 0; i < 10; ++i) {
                r.run_blocking([] { return int64_t(1); }, [&](int64_t v) { blocking += int(v); });
            }
        });
        r.post([&] { ++posted; });
        r.stop();
    }
    EXPECT_EQ(posted, 1);
    EXPECT_EQ(blocking, 10);
}

TEST(ReactorGroup, RunsOneThreadPerReactorAndRoundRobins) {
    ReactorGroup group(3);
    EXPECT_EQ(group.size(), 3u);
    EXPECT_EQ(group.thread_count(), 0u);
    group.start();
    EXPECT_EQ(group.thread_count(), 3u);
    std::set<unsigned> chosen;
    for (int i = 0; i < 6; ++i) {
        chosen.insert(group.next().index());
    }
    EXPECT_EQ(chosen.size(), 3u);

    std::mutex m;
    std::set<std::thread::id> threads;
    std::atomic<int> seen{0};
    for (unsigned i = 0; i < group.size(); ++i) {
        Reactor* expected = &group.at(i);
        group.at(i).post([&, expected] {
            EXPECT_EQ(Reactor::current(), expected);
            std::lock_guard lock(m);
            threads.insert(std::this_thread::get_id());
            ++seen;
        });
    }
    while (seen.load() < 3) {
        std::this_thread::yield();
    }
    EXPECT_EQ(threads.size(), 3u);
    group.stop();
    group.join();
    EXPECT_EQ(group.thread_count(), 0u);
}

// The metrics' busy fraction: time spent working between waits, not time spent waiting.
TEST(Reactor, CountsBusyTimeNotWaitingTime) {
    net::Reactor reactor(0);
    reactor.post([] {
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(30);
        while (std::chrono::steady_clock::now() < until) {
        }
    });
    reactor.run_once(std::chrono::milliseconds(0));
    auto busy = reactor.busy_time();
    EXPECT_GE(busy, std::chrono::milliseconds(30));
    reactor.run_once(std::chrono::milliseconds(50)); // waits, does nothing
    EXPECT_LT(reactor.busy_time() - busy, std::chrono::milliseconds(20));
}

// Busy-poll (ReactorOptions::poll, `ispaced --poll-us`). What it must never do is change what the loop
// does: events, posted work and timers are handled as without it, and the spin never outlasts the wait
// the loop was going to make. A poll of 10 s makes any overrun obvious without timing anything finely.
namespace {

ReactorOptions polling(std::chrono::microseconds poll) {
    ReactorOptions o;
    o.poll = poll;
    return o;
}

// One iteration that handled something, so that the next one busy-polls.
void do_some_work(Reactor& r) {
    bool ran = false;
    r.post([&] { ran = true; });
    while (!ran) {
        r.run_once(100ms);
    }
}

} // namespace

TEST(ReactorBusyPoll, ReadinessArrivingWhilePollingIsDispatched) {
    Reactor r(0, polling(10s));
    Pipe p;
    PipeHandler h;
    run_on(r, [&] { r.add(p.fds[0], EPOLLIN, &h); });
    do_some_work(r);
    std::thread writer([&] {
        std::this_thread::sleep_for(20ms);
        p.put();
    });
    auto start = Clock::now();
    r.run_once(-1ms); // no timeout: only the event (or a runaway spin) ends it
    writer.join();
    EXPECT_EQ(h.calls, 1);
    EXPECT_LT(Clock::now() - start, 5s);
    run_on(r, [&] { r.remove(p.fds[0]); });
}

TEST(ReactorBusyPoll, WorkPostedWhilePollingRuns) {
    Reactor r(0, polling(10s));
    do_some_work(r);
    std::atomic<bool> ran{false};
    std::thread poster([&] {
        std::this_thread::sleep_for(20ms);
        r.post([&] { ran = true; });
    });
    auto start = Clock::now();
    r.run_once(-1ms);
    poster.join();
    EXPECT_TRUE(ran);
    EXPECT_LT(Clock::now() - start, 5s);
}

TEST(ReactorBusyPoll, NeverSpinsPastADueTimerOrTheCallersTimeout) {
    Reactor r(0, polling(10s));
    do_some_work(r);
    bool fired = false;
    run_on(r, [&] { r.add_timer(20ms, [&] { fired = true; }); });
    auto start = Clock::now();
    while (!fired && Clock::now() - start < 5s) {
        r.run_once(-1ms);
    }
    EXPECT_TRUE(fired);
    EXPECT_LT(Clock::now() - start, 5s);

    do_some_work(r);
    start = Clock::now();
    r.run_once(30ms); // nothing arrives: returns at the timeout, not after the 10 s poll
    EXPECT_LT(Clock::now() - start, 5s);
}

TEST(ReactorBusyPoll, StopEndsAPoll) {
    Reactor r(0, polling(10s));
    do_some_work(r);
    std::thread stopper([&] {
        std::this_thread::sleep_for(20ms);
        r.stop();
    });
    auto start = Clock::now();
    EXPECT_FALSE(r.run_once(-1ms));
    stopper.join();
    EXPECT_LT(Clock::now() - start, 5s);
}

TEST(ReactorBusyPoll, FileCompletionsAreReapedWhilePolling) {
    Reactor r(0, polling(10s));
    char path[] = "/tmp/ispace-poll-XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::unlink(path);
    ASSERT_EQ(::pwrite(fd, "data", 4, 0), 4);
    char buf[4] = {};
    iovec iov{buf, sizeof buf};
    int result = -1;
    bool done = false;
    FileIo io;
    io.fd = fd;
    io.iov = &iov;
    io.iovcnt = 1;
    io.done = [&](int res) {
        result = res;
        done = true;
    };
    do_some_work(r);
    run_on(r, [&] { r.submit(io); });
    auto start = Clock::now();
    while (!done && Clock::now() - start < 5s) {
        r.run_once(-1ms);
    }
    ::close(fd);
    EXPECT_TRUE(done);
    EXPECT_EQ(result, 4);
    EXPECT_EQ(std::string(buf, 4), "data");
}
