#include "volume/bitmap.hpp"

#include "net/reactor.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace ispace::volume {

WriteIntentBitmap::WriteIntentBitmap(uint64_t space_bytes, uint32_t region_size, uint32_t block_bytes,
                                     net::Reactor& home, BlockWriter writer)
    : _regions((space_bytes + region_size - 1) / region_size), _region_size(region_size),
      _block_bytes(block_bytes), _home(home), _writer(std::move(writer)),
      _words(std::make_unique<std::atomic<uint32_t>[]>(_regions)) {
    for (uint64_t r = 0; r < _regions; ++r) {
        _words[r].store(0, std::memory_order_relaxed);
    }
}

WriteIntentBitmap::~WriteIntentBitmap() = default;

bool WriteIntentBitmap::begin_write(uint64_t first, uint64_t last, net::Reactor* origin,
                                    Function<void(bool ok)> ready) {
    assert(first <= last && last < _regions);
    bool unmarked = false;
    bool locked = false;
    for (uint64_t r = first; r <= last; ++r) {
        uint32_t w = _words[r].fetch_add(1, std::memory_order_acq_rel);
        if (!(w & touched_bit)) {
            _words[r].fetch_or(touched_bit, std::memory_order_relaxed);
        }
        locked |= (w & locked_bit) != 0;
        unmarked |= (w & on_disk_bit) == 0;
    }
    if (locked) {
        // The resync is copying one of these regions: step back and wait for it to finish.
        end_write(first, last);
        std::lock_guard lock(_mutex);
        _blocked.push_back({first, last, origin, std::move(ready)});
        return false;
    }
    if (!unmarked) {
        return true; // the fast path: every region is marked already
    }
    std::lock_guard lock(_mutex);
    bool need = false;
    for (uint64_t r = first; r <= last; ++r) {
        uint32_t w = _words[r].load(std::memory_order_acquire);
        if (w & on_disk_bit) {
            continue; // marked meanwhile
        }
        need = true;
        if (!(w & pending_bit)) {
            _words[r].fetch_or(pending_bit, std::memory_order_acq_rel);
            _pending.push_back(r);
        }
    }
    if (!need) {
        return true;
    }
    _waiters.push_back({first, last, origin, std::move(ready)});
    if (!_flush_scheduled) {
        _flush_scheduled = true;
        _home.post([this] { flush(); });
    }
    return false;
}

void WriteIntentBitmap::mark_ahead(uint64_t last, uint32_t ahead) {
    if (ahead == 0 || last + 1 >= _regions) {
        return;
    }
    uint64_t end = std::min<uint64_t>(_regions - 1, last + ahead);
    // The fast path, one load: the middle of the window is marked, so the mark of the window's second
    // half (scheduled when it was not) has been sent already.
    uint64_t probe = std::min<uint64_t>(end, last + (ahead + 1) / 2);
    if (_words[probe].load(std::memory_order_acquire) & (on_disk_bit | pending_bit)) {
        return;
    }
    std::lock_guard lock(_mutex);
    bool added = false;
    for (uint64_t r = last + 1; r <= end; ++r) {
        uint32_t w = _words[r].load(std::memory_order_acquire);
        if (w & (on_disk_bit | pending_bit)) {
            continue;
        }
        // TOUCHED: it ages one sweep before it may be cleared, as a region just written does, so that
        // the mark is still there when the stream arrives.
        _words[r].fetch_or(pending_bit | touched_bit, std::memory_order_acq_rel);
        _pending.push_back(r);
        added = true;
    }
    if (added && !_flush_scheduled) {
        _flush_scheduled = true;
        _home.post([this] { flush(); });
    }
}

void WriteIntentBitmap::end_write(uint64_t first, uint64_t last) {
    for (uint64_t r = first; r <= last; ++r) {
        uint32_t before = _words[r].fetch_sub(1, std::memory_order_acq_rel);
        if ((before & locked_bit) && (before & inflight_mask) == 1) {
            // The last write in a region the resync waits for.
            _home.post([this, r] {
                auto it = _lock_waiters.find(r);
                if (it != _lock_waiters.end() &&
                    (_words[r].load(std::memory_order_acquire) & inflight_mask) == 0) {
                    auto locked = std::move(it->second);
                    _lock_waiters.erase(it);
                    locked();
                }
            });
        }
    }
}

void WriteIntentBitmap::schedule_flush() {
    std::lock_guard lock(_mutex);
    if (!_flush_scheduled) {
        _flush_scheduled = true;
        _home.post([this] { flush(); });
    }
}

bool WriteIntentBitmap::idle() {
    std::lock_guard lock(_mutex);
    return !_flushing && !_flush_scheduled && _pending.empty() && _waiters.empty() && _blocked.empty();
}

Buffer WriteIntentBitmap::block_image(uint64_t block) const {
    Buffer b = Buffer::allocate_zeroed(_block_bytes);
    uint64_t first = block * 8 * uint64_t(_block_bytes);
    uint64_t last = std::min(_regions, first + 8 * uint64_t(_block_bytes));
    for (uint64_t r = first; r < last; ++r) {
        if (_words[r].load(std::memory_order_acquire) & (on_disk_bit | pending_bit)) {
            b.data()[(r - first) / 8] |= uint8_t(1u << ((r - first) % 8));
        }
    }
    return b;
}

void WriteIntentBitmap::flush() {
    std::vector<uint64_t> regions;
    {
        std::lock_guard lock(_mutex);
        _flush_scheduled = false;
        if (_flushing) {
            // One batch at a time, so that two images of one block are never in flight together; the
            // running batch looks again when it ends.
            return;
        }
        regions.swap(_pending);
        if (regions.empty() && _cleared_blocks.empty()) {
            return;
        }
        _flushing = true;
    }
    std::vector<uint64_t> blocks = std::move(_cleared_blocks);
    _cleared_blocks.clear();
    for (uint64_t r : regions) {
        blocks.push_back(r / (8 * uint64_t(_block_bytes)));
    }
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    _batches.fetch_add(1, std::memory_order_relaxed);
    struct Batch {
        size_t left;
        bool ok = true;
        std::vector<uint64_t> regions;
    };
    auto batch = std::make_shared<Batch>(Batch{blocks.size(), true, std::move(regions)});
    for (uint64_t block : blocks) {
        _block_writes.fetch_add(1, std::memory_order_relaxed);
        _writer(block, block_image(block), [this, batch](bool ok) {
            batch->ok &= ok;
            if (--batch->left == 0) {
                finish_flush(std::move(batch->regions), batch->ok);
            }
        });
    }
}

void WriteIntentBitmap::finish_flush(std::vector<uint64_t> regions, bool ok) {
    if (ok) {
        for (uint64_t r : regions) {
            _words[r].fetch_or(on_disk_bit, std::memory_order_acq_rel);
            _words[r].fetch_and(~pending_bit, std::memory_order_acq_rel);
        }
        _regions_marked.fetch_add(regions.size(), std::memory_order_relaxed);
    }
    std::vector<Waiter> wake;
    bool again = false;
    {
        std::lock_guard lock(_mutex);
        _flushing = false;
        for (size_t i = 0; i < _waiters.size();) {
            Waiter& w = _waiters[i];
            bool all = true;
            for (uint64_t r = w.first; r <= w.last && all; ++r) {
                all = (_words[r].load(std::memory_order_acquire) & on_disk_bit) != 0;
            }
            if (all || !ok) {
                wake.push_back(std::move(w));
                _waiters[i] = std::move(_waiters.back());
                _waiters.pop_back();
            } else {
                ++i;
            }
        }
        if (!ok) {
            // Nothing could be marked: what was pending is not on disk; writes waiting for it fail.
            for (uint64_t r : regions) {
                _words[r].fetch_and(~pending_bit, std::memory_order_acq_rel);
            }
        }
        again = !_pending.empty() || !_cleared_blocks.empty();
        if (again && !_flush_scheduled) {
            _flush_scheduled = true;
        } else {
            again = false;
        }
    }
    for (Waiter& w : wake) {
        w.origin->post([ready = std::move(w.ready), ok]() mutable { ready(ok); });
    }
    if (again) {
        _home.post([this] { flush(); });
    }
}

void WriteIntentBitmap::sweep(bool allowed) {
    uint64_t per_block = 8 * uint64_t(_block_bytes);
    uint64_t cleared = 0;
    for (uint64_t r = 0; r < _regions; ++r) {
        uint32_t w = _words[r].load(std::memory_order_acquire);
        if (!(w & on_disk_bit) || (w & (pending_bit | locked_bit | inflight_mask))) {
            continue;
        }
        if (w & touched_bit) {
            // Written since the last sweep: it ages one sweep first (a hot region is not cleared and
            // marked again all the time).
            _words[r].compare_exchange_strong(w, w & ~touched_bit, std::memory_order_acq_rel);
            continue;
        }
        if (!allowed) {
            continue;
        }
        // A write that starts now finds the region unmarked and marks it again after this block is
        // written (one batch at a time keeps the two block images in order).
        if (_words[r].compare_exchange_strong(w, w & ~on_disk_bit, std::memory_order_acq_rel)) {
            ++cleared;
            uint64_t block = r / per_block;
            if (_cleared_blocks.empty() || _cleared_blocks.back() != block) {
                _cleared_blocks.push_back(block);
            }
        }
    }
    if (cleared > 0) {
        _regions_cleared.fetch_add(cleared, std::memory_order_relaxed);
        schedule_flush();
    }
}

void WriteIntentBitmap::load(std::span<const uint8_t> image) {
    for (uint64_t r = 0; r < _regions && r / 8 < image.size(); ++r) {
        if (image[r / 8] & (1u << (r % 8))) {
            _words[r].fetch_or(on_disk_bit, std::memory_order_acq_rel);
        }
    }
}

void WriteIntentBitmap::lock_region(uint64_t region, Function<void()> locked) {
    uint32_t w = _words[region].fetch_or(locked_bit, std::memory_order_acq_rel);
    assert(!(w & locked_bit));
    if ((w & inflight_mask) == 0) {
        _home.defer(std::move(locked));
        return;
    }
    _lock_waiters[region] = std::move(locked);
}

void WriteIntentBitmap::unlock_region(uint64_t region) {
    _words[region].fetch_and(~locked_bit, std::memory_order_acq_rel);
    retry_blocked();
}

void WriteIntentBitmap::retry_blocked() {
    std::vector<Waiter> blocked;
    {
        std::lock_guard lock(_mutex);
        blocked.swap(_blocked);
    }
    for (Waiter& w : blocked) {
        // Try again from the start, on the writer's own reactor.
        w.origin->post([this, w = std::move(w)]() mutable {
            net::Reactor* origin = w.origin;
            auto ready = std::make_shared<Function<void(bool)>>(std::move(w.ready));
            if (begin_write(w.first, w.last, origin, [ready](bool ok) { (*ready)(ok); })) {
                (*ready)(true);
            }
        });
    }
}

bool WriteIntentBitmap::marked(uint64_t region) const {
    return (_words[region].load(std::memory_order_acquire) & on_disk_bit) != 0;
}

uint64_t WriteIntentBitmap::marked_count() const {
    uint64_t n = 0;
    for (uint64_t r = 0; r < _regions; ++r) {
        n += marked(r) ? 1 : 0;
    }
    return n;
}

std::vector<uint8_t> WriteIntentBitmap::image() const {
    std::vector<uint8_t> out((_regions + 7) / 8, 0);
    for (uint64_t r = 0; r < _regions; ++r) {
        if (marked(r)) {
            out[r / 8] |= uint8_t(1u << (r % 8));
        }
    }
    return out;
}

WriteIntentBitmap::Stats WriteIntentBitmap::stats() const {
    return {_batches.load(std::memory_order_relaxed), _block_writes.load(std::memory_order_relaxed),
            _regions_marked.load(std::memory_order_relaxed),
            _regions_cleared.load(std::memory_order_relaxed)};
}

} // namespace ispace::volume
