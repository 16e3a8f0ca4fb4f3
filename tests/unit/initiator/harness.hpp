// Shared set-up for the initiator tests: a FakeTarget, a FaultInjector between it and an Initiator,
// and session options with short timeouts. Waits have generous limits that only turn a hang into a
// failure; no test asserts on how long anything took.
#pragma once

#include "fake_target.hpp"
#include "initiator/fault_transport.hpp"
#include "initiator/internals.hpp"
#include "ispace/initiator.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ispace::initiator::test {

using namespace std::chrono_literals;

inline bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit = 30s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

// Collects asynchronous completions.
class Completions {
public:
    Completion make(size_t index) {
        return [this, index](Response&& r) {
            std::lock_guard lock(_mu);
            if (_results.size() <= index) {
                _results.resize(index + 1);
            }
            _results[index] = std::move(r);
            ++_done;
            _cv.notify_all();
        };
    }
    bool wait(size_t count, std::chrono::milliseconds limit = 60s) {
        std::unique_lock lock(_mu);
        return _cv.wait_for(lock, limit, [&] { return _done >= count; });
    }
    size_t done() const {
        std::lock_guard lock(_mu);
        return _done;
    }
    Response at(size_t i) const {
        std::lock_guard lock(_mu);
        return _results.at(i);
    }

private:
    mutable std::mutex _mu;
    std::condition_variable _cv;
    std::vector<Response> _results;
    size_t _done = 0;
};

struct Harness {
    explicit Harness(FakeTargetOptions target_options = {}, unsigned threads = 2)
        : target(std::make_unique<FakeTarget>(std::move(target_options))),
          faults(std::make_shared<FaultInjector>()), initiator(make_initiator_options(threads, faults)) {}

    static InitiatorOptions make_initiator_options(unsigned threads, std::shared_ptr<FaultInjector> faults) {
        InitiatorOptions o;
        o.threads = threads;
        o.initiator_name = "iqn.2026-01.org.ispace.test:initiator";
        set_transport_factory(o, std::move(faults));
        return o;
    }

    SessionOptions options() const {
        SessionOptions o;
        o.host = "127.0.0.1";
        o.port = target->port();
        o.target_name = target->options().target_name;
        o.timeouts.command = 300ms;
        o.timeouts.task_management = 300ms;
        o.timeouts.nop_interval = 0ms;
        o.timeouts.recovery = 20s;
        o.timeouts.reconnect_min = 10ms;
        o.timeouts.reconnect_max = 100ms;
        o.timeouts.login = 5s;
        o.timeouts.logout = 1s;
        return o;
    }

    std::shared_ptr<Session> connect(SessionOptions o) {
        auto s = initiator.connect(std::move(o));
        if (!s) {
            ADD_FAILURE() << s.error().message;
            return nullptr;
        }
        return *s;
    }
    std::shared_ptr<Session> connect() { return connect(options()); }

    std::unique_ptr<FakeTarget> target;
    std::shared_ptr<FaultInjector> faults;
    Initiator initiator;
};

inline Buffer pattern(size_t bytes, uint8_t seed) {
    Buffer b = Buffer::allocate(bytes);
    for (size_t i = 0; i < bytes; ++i) {
        b.data()[i] = uint8_t(seed + i * 7 + (i >> 9));
    }
    return b;
}

// A fault that fires once: the first PDU for which `match` holds gets `fault`.
inline FaultRule once(std::function<bool(const FaultPdu&)> match, Fault fault,
                      std::shared_ptr<std::atomic<int>> fired = std::make_shared<std::atomic<int>>(0)) {
    return [match = std::move(match), fault, fired](const FaultPdu& p) -> Fault {
        if (match(p) && fired->fetch_add(1) == 0) {
            return fault;
        }
        return {};
    };
}

} // namespace ispace::initiator::test
