#include "volume/resync.hpp"

#include "common/log.hpp"
#include "volume/checksum_io.hpp"
#include "volume/remote_device.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

namespace ispace::volume {

using namespace std::chrono_literals;

struct Resync::Window {
    uint64_t region = 0;
    uint64_t offset = 0; // space bytes
    uint64_t length = 0;
    std::vector<uint32_t> slots; // rebuild targets served
    bool unclean = false;        // the unclean pass is served too
    bool failed = false;         // a source could not be read: the window is tried again
    bool sums_locked = false;    // its blocks are held shared in the checksum range lock
    unsigned left = 0;
    uint64_t moved = 0; // bytes written to targets
    struct Request {
        backstore::IoRequest request;
        iovec iov{};
    };
    std::vector<Buffer> buffers;   // per extent
    std::vector<Request> requests; // reads and writes; sized before any is sent

    // Its 4 KiB blocks in the checksum table (a window's offset is in the layout's range, as the table's).
    ChecksumState::Range sums_range() const {
        return {offset / checksum_block, (offset + length - 1) / checksum_block, false};
    }
};

Resync::Resync(Volume& volume) : _v(volume) {}
Resync::~Resync() = default;

Resync::Target* Resync::find(uint32_t slot) {
    for (Target& t : _targets) {
        if (t.slot == slot) {
            return &t;
        }
    }
    return nullptr;
}

uint64_t Resync::readable_below(uint64_t checkpoint) const {
    if (!_v._bitmap) {
        return checkpoint;
    }
    uint64_t rs = _v._bitmap->region_size();
    for (uint64_t r = 0; r < checkpoint / rs; ++r) {
        if (_v._bitmap->marked(r)) {
            return r * rs;
        }
    }
    return checkpoint;
}

void Resync::add_target(uint32_t slot, uint64_t checkpoint) {
    if (!_v._bitmap || find(slot)) {
        return;
    }
    auto& m = _v._members[slot];
    Target t;
    t.slot = slot;
    t.mode = RebuildMode(m.rebuild.load());
    uint64_t rs = _v._bitmap->region_size();
    t.next = checkpoint / rs;
    uint64_t regions = _v.regions_in_use();
    // A resync that was interrupted goes on from its checkpoint. What lies below that is in sync only where
    // nothing was written that the member did not get: writes while it was out (it failed again), and
    // writes in flight when the holder stopped uncleanly, which may have reached the other copies alone.
    // Both are marked in the bitmap (which keeps every mark while a member is out of sync), and their
    // regions are copied again: the cursor starts at the first of them, and so does what the member counts
    // as in sync (its checkpoint steps back with it). Only a member that stayed in through a clean close
    // got every write below its checkpoint, and goes on from there alone.
    t.full_from = t.next;
    if (!std::exchange(m.resumes_clean, false)) {
        t.next = readable_below(t.full_from * rs) / rs;
    }
    if (t.next < t.full_from) {
        // In the labels too: a clean close before a window lands must not leave the old checkpoint there,
        // which the next open would take as the member's own (it stayed in through a clean close).
        uint64_t below = t.next * rs;
        m.synced_below.store(below, std::memory_order_release);
        if (_v._book.truth().members[slot].recovery_offset > below) {
            _v.change_labels([slot, below](LabelBook& book) { book.checkpoint(slot, below); });
        }
    }
    uint64_t size = _v._space_size.load();
    for (uint64_t r = t.next; r < regions; ++r) {
        bool whole = t.mode == RebuildMode::full && r >= t.full_from;
        t.total_bytes += whole || _v._bitmap->marked(r) ? std::min<uint64_t>(rs, size - r * rs) : 0;
    }
    log_info("space {}: resync of {} ({}) starts at {} MiB: {} MiB to copy", _v._truth_at_open.name,
             _v._members[slot].url, t.mode == RebuildMode::full ? "full" : "delta", t.next * rs >> 20,
             t.total_bytes >> 20);
    _targets.push_back(std::move(t));
    {
        std::lock_guard lock(_progress_mutex);
        update_progress_locked();
    }
    pump();
}

void Resync::add_unclean_pass(std::string why) {
    if (!_v._bitmap || find(unclean_slot)) {
        return;
    }
    Target t;
    t.slot = unclean_slot;
    t.mode = RebuildMode::delta;
    t.total_bytes = _v._bitmap->marked_count() * _v._bitmap->region_size();
    log_info("space {}: {}: {} marked region(s) are made equal on every copy", _v._truth_at_open.name, why,
             _v._bitmap->marked_count());
    _unclean_why = std::move(why);
    _unclean_next.store(0, std::memory_order_release);
    _targets.push_back(std::move(t));
    {
        std::lock_guard lock(_progress_mutex);
        update_progress_locked();
    }
    pump();
}

void Resync::drop_target(uint32_t slot) {
    std::erase_if(_targets, [slot](const Target& t) { return t.slot == slot; });
    std::lock_guard lock(_progress_mutex);
    update_progress_locked();
}

void Resync::stop(Function<void()> done) {
    _stopping = true;
    if (_inflight == 0) {
        done();
        return;
    }
    _stopped = std::move(done);
}

bool Resync::pending() const {
    return !_targets.empty() || _inflight > 0;
}

void Resync::set_rate(uint64_t bytes_per_second) {
    _rate = bytes_per_second;
    _next_start = net::Clock::now();
    pump();
}

bool Resync::needs(const Target& t, uint64_t region) const {
    return (t.mode == RebuildMode::full && region >= t.full_from) || _v._bitmap->marked(region);
}

uint64_t Resync::next_needed(Target& t) {
    uint64_t regions = _v.regions_in_use();
    while (t.next < regions && !needs(t, t.next)) {
        ++t.next;
    }
    return t.next;
}

void Resync::pump() {
    if (_stopping || _v._lost.load() || !_v._bitmap) {
        return;
    }
    auto now = net::Clock::now();
    uint64_t foreground = _v._foreground.load(std::memory_order_relaxed);
    if (foreground != _seen_foreground) {
        // Foreground I/O since we last looked: yield (fewer windows) for a while.
        _seen_foreground = foreground;
        _busy_until = now + 100ms;
    }
    unsigned depth = now < _busy_until ? _v._options.resync_busy_depth : _v._options.resync_depth;
    uint64_t regions = _v.regions_in_use();
    while (_inflight < std::max(1u, depth) && !_targets.empty()) {
        if (_rate > 0 && now < _next_start) {
            if (!_timer_armed) {
                _timer_armed = true;
                std::weak_ptr<Volume> weak = _v.shared_from_this();
                _v._home.add_timer(_next_start - now, [this, weak] {
                    // The volume may outlive this Resync (close() resets it, on this same reactor): only
                    // the volume's current resync is pumped.
                    if (auto self = weak.lock(); self && self->_resync.get() == this) {
                        _timer_armed = false;
                        pump();
                    }
                });
            }
            return;
        }
        // The lowest region a target needs next that no window holds. A target whose next region is held
        // (it joined while another target's window was copying it) waits: its window starts when that
        // one is done, and window_done pumps again.
        uint64_t region = regions;
        for (Target& t : _targets) {
            uint64_t r = next_needed(t);
            if (!_windows.contains(r)) {
                region = std::min(region, r);
            }
        }
        if (region >= regions) {
            // No window to start now. Targets that have started their last window and have none in
            // flight are finished; the others wait for windows in flight.
            for (size_t i = 0; i < _targets.size();) {
                if (_targets[i].next >= regions && _targets[i].inflight.empty()) {
                    Target t = std::move(_targets[i]);
                    _targets.erase(_targets.begin() + long(i));
                    finished(t);
                } else {
                    ++i;
                }
            }
            // Status must say it ended: nothing else updates the progress once the last window is in.
            std::lock_guard lock(_progress_mutex);
            update_progress_locked();
            return;
        }
        start(region);
        if (_rate > 0) {
            uint64_t bytes = _v._bitmap->region_size();
            _next_start = std::max(_next_start, now) +
                          std::chrono::nanoseconds(uint64_t(double(bytes) / double(_rate) * 1e9));
        }
        // The busy check again after a window: the foreground may have started meanwhile.
        depth = net::Clock::now() < _busy_until ? _v._options.resync_busy_depth : _v._options.resync_depth;
    }
}

void Resync::start(uint64_t region) {
    auto w = std::make_shared<Window>();
    w->region = region;
    uint64_t rs = _v._bitmap->region_size();
    w->offset = region * rs;
    w->length = std::min<uint64_t>(rs, _v._space_size - w->offset);
    for (Target& t : _targets) {
        if (t.next == region && needs(t, region)) {
            t.next = region + 1;
            t.inflight.insert(region);
            if (t.slot == unclean_slot) {
                w->unclean = true;
            } else {
                w->slots.push_back(t.slot);
            }
        }
    }
    ++_inflight;
    _windows.insert(region);
    // Writes in flight in the region finish first; new ones wait until the copy is done.
    auto lock_region = [this, w] { _v._bitmap->lock_region(w->region, [this, w] { copy(w); }); };
    if (!_v._sums) {
        lock_region();
        return;
    }
    // A space with block checksums: the window's blocks are held shared in the checksum range lock too,
    // taken before the region, as a write takes them. A write sets its blocks' new checksums in the table
    // under that lock before it reaches the region; without it a write waiting for this region would have
    // its new checksums in the table while the copy verified the source's old bytes against them, and took
    // good copies for rotten ones (failing members, and the write with them). Region after checksums, in
    // that order on both sides, so neither waits for the other holding what the other needs.
    Function<void()> go = [w, lock_region] {
        w->sums_locked = true;
        lock_region();
    };
    if (_v._sums->lock(w->sums_range(), &_v._home, go)) {
        go();
    }
}

void Resync::copy(std::shared_ptr<Window> w) {
    std::vector<Extent> extents;
    map_range(_v.layout(), w->offset, w->length, extents);
    uint32_t active = _v.active_mask();
    uint32_t writable = _v.writable_mask();
    // Per extent: a source (the lowest in-sync copy that is not a target) and the copies to write.
    struct Plan {
        int source = -1;
        uint32_t targets = 0;
    };
    std::vector<Plan> plans(extents.size());
    size_t requests = 0;
    for (size_t e = 0; e < extents.size(); ++e) {
        uint32_t column_mask = ((1u << _v.layout().copies) - 1) << (extents[e].column * _v.layout().copies);
        uint32_t explicit_targets = 0;
        for (uint32_t slot : w->slots) {
            explicit_targets |= 1u << slot;
        }
        uint32_t sources = active & column_mask & ~explicit_targets;
        if (sources == 0) {
            continue; // nothing in sync to copy from in this column
        }
        plans[e].source = std::countr_zero(sources);
        plans[e].targets = explicit_targets & column_mask & writable;
        if (w->unclean) {
            plans[e].targets |= active & column_mask & ~(1u << plans[e].source);
        }
        if (plans[e].targets != 0) {
            requests += 1 + size_t(std::popcount(plans[e].targets));
        }
    }
    w->requests.resize(requests);
    w->buffers.resize(extents.size());
    w->left = 0;
    for (const Plan& p : plans) {
        w->left += p.targets != 0 ? 1 : 0;
    }
    if (w->left == 0) {
        window_done(w);
        return;
    }
    size_t next = 0;
    for (size_t e = 0; e < extents.size(); ++e) {
        if (plans[e].targets == 0) {
            continue;
        }
        const Extent x = extents[e];
        uint32_t source = uint32_t(plans[e].source);
        uint32_t targets = plans[e].targets;
        Buffer b = Buffer::allocate(x.length);
        w->buffers[e] = b;
        size_t read_index = next++;
        size_t first_write = next;
        next += size_t(std::popcount(targets));
        Window::Request& r = w->requests[read_index];
        r.iov = {b.data(), b.size()};
        r.request.op = backstore::IoOp::read;
        r.request.offset = _v._members[source].data_offset + x.member_offset;
        r.request.length = x.length;
        r.request.iov = &r.iov;
        r.request.iovcnt = 1;
        r.request.done = [this, w, e, x, source, targets, first_write, read_index](int error) {
            _v._members[source].inflight.fetch_sub(1, std::memory_order_relaxed);
            if (error != 0) {
                _v.member_error(source, error, "resync read");
                w->failed = true;
                if (--w->left == 0) {
                    window_done(w);
                }
                return;
            }
            // A space with block checksums: the source's blocks are verified like any read, and one that
            // fails is taken from another in-sync copy (and the source repaired) before it is copied, so a
            // rotten block is not spread to the member being brought back. One that no copy holds intact
            // is copied as it is (the target held no newer data) and logged; reads of it fail as before.
            if (_v._sums && !_v.sums_check(x, source, &w->requests[read_index].iov, 1, nullptr,
                                           [this, w, e, x, targets, first_write](bool) {
                                               write_targets(w, e, x, targets, first_write);
                                           })) {
                return;
            }
            write_targets(w, e, x, targets, first_write);
        };
        _v.submit_member(source, r.request, nullptr);
    }
}

void Resync::write_targets(const std::shared_ptr<Window>& w, size_t e, const Extent& x, uint32_t targets,
                           size_t first_write) {
    // The read is in: write it to every target of the column, from the one Buffer.
    auto remaining = std::make_shared<unsigned>(unsigned(std::popcount(targets)));
    size_t index = first_write;
    for (uint32_t t = targets; t != 0; t &= t - 1) {
        uint32_t slot = uint32_t(std::countr_zero(t));
        Window::Request& wr = w->requests[index++];
        wr.iov = {w->buffers[e].data(), x.length};
        wr.request.op = backstore::IoOp::write;
        wr.request.offset = _v._members[slot].data_offset + x.member_offset;
        wr.request.length = x.length;
        wr.request.iov = &wr.iov;
        wr.request.iovcnt = 1;
        wr.request.done = [this, w, slot, remaining, x](int error) {
            _v._members[slot].inflight.fetch_sub(1, std::memory_order_relaxed);
            if (error != 0) {
                _v.member_error(slot, error, "resync write");
            } else {
                w->moved += x.length;
            }
            if (--*remaining == 0 && --w->left == 0) {
                window_done(w);
            }
        };
        _v.submit_member(slot, wr.request, &w->buffers[e]);
    }
}

void Resync::window_done(std::shared_ptr<Window> w) {
    _v._bitmap->unlock_region(w->region);
    if (w->sums_locked) {
        _v._sums->unlock(w->sums_range());
    }
    _windows.erase(w->region);
    --_inflight;
    uint64_t rs = _v._bitmap->region_size();
    if (w->failed) {
        // A source failed: the window is done again from another copy (the targets' cursors step back).
        for (Target& t : _targets) {
            if (t.inflight.erase(w->region) > 0) {
                t.next = std::min(t.next, w->region);
            }
        }
    } else {
        std::lock_guard lock(_progress_mutex);
        _progress.copied_bytes += w->moved;
        _rate_bytes += w->moved;
    }
    for (Target& t : _targets) {
        if (w->failed || t.inflight.erase(w->region) == 0) {
            continue;
        }
        t.done_bytes += w->length;
        // Everything below the lowest window still in flight is done: the checkpoint.
        uint64_t low = t.inflight.empty() ? t.next : *t.inflight.begin();
        uint64_t below = std::min(_v._space_size.load(), low * rs);
        if (t.slot == unclean_slot) {
            _unclean_next.store(low, std::memory_order_release);
            continue;
        }
        auto& m = _v._members[t.slot];
        m.synced_below.store(below, std::memory_order_release);
        // Into the labels: label writes coalesce (one round in flight, the next takes every change made
        // meanwhile), so this costs at most one round per round-trip, whatever the window rate.
        uint32_t slot = t.slot;
        _v.change_labels([slot, below](LabelBook& book) { book.checkpoint(slot, below); });
    }
    {
        std::lock_guard lock(_progress_mutex);
        update_progress_locked();
    }
    if (_stopping) {
        if (_inflight == 0 && _stopped) {
            auto done = std::move(_stopped);
            done();
        }
        return;
    }
    pump();
}

void Resync::finished(Target& t) {
    if (t.slot == unclean_slot) {
        _unclean_next.store(UINT64_MAX, std::memory_order_release);
        log_info("space {}: {}: equal on every copy", _v._truth_at_open.name, _unclean_why);
        return;
    }
    auto& m = _v._members[t.slot];
    uint8_t expected = uint8_t(MemberState::rebuilding);
    if (!m.state.compare_exchange_strong(expected, uint8_t(MemberState::active), std::memory_order_acq_rel)) {
        return; // it failed meanwhile
    }
    m.rebuild.store(uint8_t(RebuildMode::none));
    m.synced_below.store(0);
    _v.update_masks();
    uint32_t slot = t.slot;
    _v.change_labels([slot](LabelBook& book) { book.member_in_sync(slot); });
    log_info("space {}: {} is in sync again ({} MiB copied)", _v._truth_at_open.name, m.url,
             t.done_bytes >> 20);
}

void Resync::update_progress_locked() {
    uint64_t total = 0, done = 0;
    std::string what;
    for (const Target& t : _targets) {
        total += t.total_bytes;
        done += std::min(t.done_bytes, t.total_bytes);
        std::string one = t.slot == unclean_slot
                              ? _unclean_why
                              : fmt::format("{} ({})", _v._members[t.slot].url,
                                            t.mode == RebuildMode::full ? "full" : "delta");
        what += (what.empty() ? "" : ", ") + one;
    }
    auto now = net::Clock::now();
    if (_rate_since == net::Clock::time_point{}) {
        _rate_since = now;
    }
    double seconds = std::chrono::duration<double>(now - _rate_since).count();
    if (seconds >= 1.0) {
        double instant = double(_rate_bytes) / seconds;
        _progress.rate = _progress.rate == 0 ? instant : 0.7 * _progress.rate + 0.3 * instant;
        _rate_bytes = 0;
        _rate_since = now;
    }
    _progress.running = !_targets.empty();
    _progress.what = what;
    _progress.total_bytes = total;
    _progress.done_bytes = done;
    _progress.eta_seconds = _progress.rate > 0 ? double(total - done) / _progress.rate : 0;
}

ResyncProgress Resync::progress() const {
    std::lock_guard lock(_progress_mutex);
    return _progress;
}

} // namespace ispace::volume
