// Counters for metrics that cost nothing measurable on the I/O path: each is written by one thread only
// (its reactor), so an increment is a plain load and store — no locked instruction, no cache line
// shared between cores — and any thread may read it (relaxed atomics: a scrape sees each counter at
// some recent value, never a torn one). A metric is a set of such counters, one per reactor, summed
// when scraped; keep each reactor's set on cache lines of its own (alignas(64)).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ispace {

class LocalCounter {
public:
    // Only from the thread that owns the counter.
    void add(uint64_t n = 1) {
        _value.store(_value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    // From any thread.
    uint64_t get() const { return _value.load(std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> _value{0};
};

// A latency histogram of one thread: counts per upper bound (microseconds), a +Inf bucket and the sum.
// Buckets follow Prometheus' convention when rendered (cumulative, `le` in seconds).
class LocalHistogram {
public:
    static constexpr std::array<uint32_t, 15> bounds_us = {
        50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000};
    static constexpr size_t bucket_count = bounds_us.size() + 1; // the last is +Inf

    void observe(uint64_t microseconds) {
        size_t i = 0;
        while (i < bounds_us.size() && microseconds > bounds_us[i]) {
            ++i;
        }
        _buckets[i].add();
        _sum_us.add(microseconds);
    }
    uint64_t bucket(size_t i) const { return _buckets[i].get(); }
    uint64_t sum_us() const { return _sum_us.get(); }

private:
    std::array<LocalCounter, bucket_count> _buckets{};
    LocalCounter _sum_us;
};

} // namespace ispace
