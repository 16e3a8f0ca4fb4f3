// Resync: bringing copies back into agreement, in the background, on the volume's home reactor.
//
// Work comes as targets: a member being rebuilt (full: every region from its checkpoint; delta: the
// regions the bitmap marks), and the pass after an unclean stop that makes the marked regions equal on
// every in-sync copy. Windows are regions (1 MiB by default), many in flight (16 while no foreground I/O
// runs, fewer while it does), in region order; all targets that need a region are served by one read of
// it. A window locks its region in the bitmap (writes to it wait for the copy, so a foreground write can
// never be overwritten by an older copy), reads an in-sync copy and writes the others. Progress is
// checkpointed in the labels (a member's recovery offset: everything below it is done), so a restart
// resumes where the last label write left it, not from 0. A rate limit (bytes per second) paces windows
// with a timer, never a sleep.
#pragma once

#include "common/function.hpp"
#include "net/reactor.hpp"
#include "volume/label.hpp"
#include "volume/volume.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace ispace::volume {

class Resync {
public:
    explicit Resync(Volume& volume);
    ~Resync();

    // Home reactor. A rebuilding member (its mode comes from the member): full from `checkpoint`, its
    // recovery offset (0 for a new member); delta over the marked regions.
    void add_target(uint32_t slot, uint64_t checkpoint);
    // Home reactor. Below a member's checkpoint, the regions the bitmap marks may hold what it missed
    // (written while it was out, or in flight at an unclean stop): the offset below which it may be read
    // is the first of them, or the checkpoint if none is marked.
    uint64_t readable_below(uint64_t checkpoint) const;
    // Home reactor. The regions marked now are made equal on every in-sync copy (from the lowest slot):
    // after an unclean stop, or the range a grow added (`why` says which, in the log and the status).
    void add_unclean_pass(std::string why);
    // Home reactor. The member failed: its windows are let go.
    void drop_target(uint32_t slot);
    // Home reactor. No new window; `done` once those in flight are finished.
    void stop(Function<void()> done);
    bool pending() const; // home reactor
    void set_rate(uint64_t bytes_per_second);

    ResyncProgress progress() const; // any thread
    // Reads of a marked region the unclean pass has not reached go to the lowest in-sync slot (so two
    // reads cannot see two different copies). Any thread.
    bool unclean_pending(uint64_t region) const {
        return region >= _unclean_next.load(std::memory_order_acquire);
    }
    // Whether an unclean pass started and has not finished (any thread).
    bool unclean_unfinished() const { return _unclean_next.load(std::memory_order_acquire) != UINT64_MAX; }

private:
    static constexpr uint32_t unclean_slot = UINT32_MAX;
    struct Target {
        uint32_t slot = 0;
        RebuildMode mode = RebuildMode::delta;
        uint64_t next = 0;           // the next region not yet started
        uint64_t full_from = 0;      // full: every region from here on; below it, those the bitmap marks
        std::set<uint64_t> inflight; // regions started, not finished
        uint64_t total_bytes = 0;
        uint64_t done_bytes = 0;
    };
    struct Window;

    Target* find(uint32_t slot);
    bool needs(const Target& t, uint64_t region) const;
    // The next region ≥ t.next that `t` needs (advancing t.next over those it does not); regions() if none.
    uint64_t next_needed(Target& t);
    void pump();
    void start(uint64_t region);
    void copy(std::shared_ptr<Window> w);
    void window_done(std::shared_ptr<Window> w);
    // Extent `e` of window `w` is read (and verified): its Buffer goes to every target of its column.
    void write_targets(const std::shared_ptr<Window>& w, size_t e, const Extent& x, uint32_t targets,
                       size_t first_write);
    void finished(Target& t);
    void update_progress_locked();

    Volume& _v;
    std::vector<Target> _targets;
    std::string _unclean_why; // what the unclean pass is for (home)
    // Regions with a window in flight. A region is locked by one window at a time: a target that needs a
    // region another window holds (it joined while that window was in flight) waits for it to finish.
    std::set<uint64_t> _windows;
    unsigned _inflight = 0;
    bool _stopping = false;
    Function<void()> _stopped;
    bool _timer_armed = false;
    uint64_t _rate = 0;
    net::Clock::time_point _next_start{};
    uint64_t _seen_foreground = 0;
    net::Clock::time_point _busy_until{};
    std::atomic<uint64_t> _unclean_next{UINT64_MAX};

    mutable std::mutex _progress_mutex;
    ResyncProgress _progress;
    net::Clock::time_point _rate_since{};
    uint64_t _rate_bytes = 0;
};

} // namespace ispace::volume
