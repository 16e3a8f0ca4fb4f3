// Pacer: spreads a background operation's writes over time at a given rate (SANITIZE OVERWRITE,
// sbc_sanitize.cpp). The operation asks, after each chunk, how long to wait before the next one and
// waits on a reactor timer; a reactor thread never sleeps.
//
// Each chunk is given the time its bytes take at the rate, counted from the later of its own start
// and the end of the previous chunk's time. A chunk that finishes early waits out the rest; one that
// took longer than its time (a slow disk) lets the next start at once, and the time it overran is not
// owed back: no credit builds up, so the operation never bursts to catch up.
//
// Pure arithmetic on time points handed in, so tests drive it with made-up times.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace ispace::scsi {

class Pacer {
public:
    using Clock = std::chrono::steady_clock;

    // 0: unlimited (never waits).
    explicit Pacer(uint64_t bytes_per_second) : _rate(bytes_per_second) {}

    bool unlimited() const { return _rate == 0; }

    // The time `bytes` take at the rate (at most about 136 years, so that no time point overflows).
    Clock::duration time_for(uint64_t bytes) const {
        if (_rate == 0) {
            return Clock::duration::zero();
        }
        // Whole seconds and the remainder apart; the remainder's product in 128 bits, since a rate
        // above 18 GB/s times 10^9 would not fit in 64.
        uint64_t seconds = std::min<uint64_t>(bytes / _rate, max_seconds);
        auto rest_ns = uint64_t((unsigned __int128)(bytes % _rate) * 1'000'000'000u / _rate);
        return std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(seconds) +
                                                           std::chrono::nanoseconds(rest_ns));
    }

    // A chunk of `bytes` that started at `started` finished at `now`: how long to wait before the
    // next chunk starts (zero: at once).
    Clock::duration wait_after(uint64_t bytes, Clock::time_point started, Clock::time_point now) {
        if (_rate == 0) {
            return Clock::duration::zero();
        }
        _due = std::max(_due, started) + time_for(bytes);
        return _due > now ? _due - now : Clock::duration::zero();
    }

    // The largest chunk worth issuing at once: what `period` of the rate writes, at least `floor` and
    // at most `ceiling`. Small chunks at slow rates keep each wait short, so a task management
    // function that ends the waiting command is answered within about one period.
    uint64_t chunk_bytes(uint64_t floor, uint64_t ceiling, std::chrono::milliseconds period) const {
        if (_rate == 0) {
            return ceiling;
        }
        uint64_t per_period =
            _rate / 1000 * uint64_t(period.count()) + _rate % 1000 * uint64_t(period.count()) / 1000;
        return std::clamp(per_period, floor, std::max(floor, ceiling));
    }

private:
    static constexpr uint64_t max_seconds = uint64_t(1) << 32;

    uint64_t _rate;
    Clock::time_point _due{};
};

} // namespace ispace::scsi
