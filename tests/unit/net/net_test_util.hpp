// Helpers for driving a reactor by hand in tests.
#pragma once

#include "net/reactor.hpp"

#include <chrono>
#include <functional>

namespace ispace::net::test {

// Runs `r` until `done()` holds. The time limit only turns a hang into a failure; no test asserts on
// how long anything takes.
inline bool run_until(Reactor& r, const std::function<bool()>& done,
                      std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        r.run_once(std::chrono::milliseconds(10));
    }
    return true;
}

// Runs `fn` on the reactor (so Reactor::current() is set) and drives it until fn has run.
inline void run_on(Reactor& r, std::function<void()> fn) {
    bool ran = false;
    r.post([&] {
        fn();
        ran = true;
    });
    run_until(r, [&] { return ran; });
}

} // namespace ispace::net::test
