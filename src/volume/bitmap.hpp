// The write-intent bitmap (md's bitmap, DRBD's activity log): one bit per region of the space (1 MiB by
// default) that says "the copies of this region may differ". A region is marked on the members before a
// write to it is sent; it is cleared lazily, once it has been idle for two sweeps and every copy holds
// it. After an unclean shutdown only the marked regions need making equal; a member that was away needs
// only the regions marked while it was gone.
//
// Cost: a write to a region already marked costs two atomic operations and no I/O. The first write to an
// unmarked region waits for one metadata write (one bitmap block, to every member); writes that arrive
// meanwhile share it. So 4K random writes pay one metadata write per newly dirtied region, not per write.
//
// Never cleared while it matters: the volume allows a sweep only while every member is in sync and no
// resync is pending. A member that is failed or missing therefore keeps every region it missed marked
// until it is back in sync (an OpenZFS scrub once cleared exactly that record: PR 6103).
//
// Lifetime: posted work refers to the bitmap; its owner destroys it on the home reactor once idle() and
// no write is in flight.
//
// Threading: begin_write()/end_write() on any reactor, lock-free unless a region must be marked or is
// being resynced; everything else on the home reactor. Region words hold an in-flight count and flags:
// ON_DISK (the bit is set in the bitmap on the members), PENDING (a mark is on its way), TOUCHED
// (written since the last sweep), LOCKED (the resync owns the region: writes wait).
#pragma once

#include "common/buffer.hpp"
#include "common/function.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

namespace ispace::net {
class Reactor;
}

namespace ispace::volume {

class WriteIntentBitmap {
public:
    // Writes bitmap block `block` (its bytes in `data`) to every member that keeps the bitmap; `done(ok)`
    // on the home reactor. ok false: no member took it (the space can no longer record intent).
    using BlockWriter = Function<void(uint64_t block, Buffer data, Function<void(bool ok)> done)>;

    // `block_bytes`: the size of one bitmap block on the members (4 KiB, or the block size if larger).
    WriteIntentBitmap(uint64_t space_bytes, uint32_t region_size, uint32_t block_bytes, net::Reactor& home,
                      BlockWriter writer);
    ~WriteIntentBitmap();

    uint64_t regions() const { return _regions; }
    uint32_t region_size() const { return _region_size; }
    uint64_t region_of(uint64_t offset) const { return offset / _region_size; }
    uint32_t block_bytes() const { return _block_bytes; }
    uint64_t blocks() const {
        return (_regions + 8 * uint64_t(_block_bytes) - 1) / (8 * uint64_t(_block_bytes));
    }

    // Any reactor. Counts a write to regions [first, last] in flight. True: every region is marked on the
    // members, send the write now. False: `ready(ok)` runs later on `origin` (never inside this call), once
    // they are (ok false: they could not be marked; fail the write). Every begin_write is paired with one
    // end_write, after `ready` when it was deferred.
    bool begin_write(uint64_t first, uint64_t last, net::Reactor* origin, Function<void(bool ok)> ready);
    // Any reactor. A sequential writer's next regions, marked before it reaches them: once fewer than
    // half of the `ahead` regions after `last` are marked (or on their way), the unmarked ones of them
    // are marked in the background, with no write waiting. A stream of large writes then never waits
    // for a mark past its first region (each region would otherwise hold the stream back for one
    // metadata write), at the price of at most `ahead` regions marked that it may not write: they age
    // and are cleared by the sweeps like any other, and resync copies them if they are still marked.
    void mark_ahead(uint64_t last, uint32_t ahead);
    // Any reactor. The write to [first, last] is done (on every copy it went to).
    void end_write(uint64_t first, uint64_t last);

    // Home reactor. Clears regions idle since the last sweep and writes the blocks that changed, when
    // `allowed` (every member in sync, no resync pending); otherwise only ages them.
    void sweep(bool allowed);
    // Home reactor, before any write: sets the regions the members' bitmaps mark (the OR of them).
    void load(std::span<const uint8_t> image);
    // Whether no metadata write is scheduled or running (home reactor): the owner may go.
    bool idle();

    // The resync's exclusion (home reactor): lock_region waits for the writes in flight in `region` to
    // finish, holds new ones back and calls `locked` (on the home reactor); unlock_region lets them go.
    void lock_region(uint64_t region, Function<void()> locked);
    void unlock_region(uint64_t region);

    bool marked(uint64_t region) const;
    uint64_t marked_count() const;
    // The bitmap as the members hold it (the bits on disk), for tests.
    std::vector<uint8_t> image() const;

    // Counters: metadata write batches, blocks written, regions newly marked, regions cleared.
    struct Stats {
        uint64_t batches = 0;
        uint64_t block_writes = 0;
        uint64_t regions_marked = 0;
        uint64_t regions_cleared = 0;
    };
    Stats stats() const;

private:
    static constexpr uint32_t inflight_mask = 0x00ffffff;
    static constexpr uint32_t locked_bit = 1u << 28;
    static constexpr uint32_t touched_bit = 1u << 29;
    static constexpr uint32_t pending_bit = 1u << 30;
    static constexpr uint32_t on_disk_bit = 1u << 31;

    struct Waiter {
        uint64_t first = 0;
        uint64_t last = 0;
        net::Reactor* origin = nullptr;
        Function<void(bool ok)> ready;
    };

    void schedule_flush(); // any thread
    void flush();          // home
    void finish_flush(std::vector<uint64_t> regions, bool ok);
    void retry_blocked(); // home
    Buffer block_image(uint64_t block) const;

    const uint64_t _regions;
    const uint32_t _region_size;
    const uint32_t _block_bytes;
    net::Reactor& _home;
    BlockWriter _writer;
    std::unique_ptr<std::atomic<uint32_t>[]> _words;

    std::mutex _mutex;              // guards the lists below (slow path only)
    std::vector<uint64_t> _pending; // regions to mark
    std::vector<Waiter> _waiters;   // writes waiting for a mark
    std::vector<Waiter> _blocked;   // writes waiting for a resync lock to go
    bool _flush_scheduled = false;

    // Home reactor only.
    bool _flushing = false;
    std::vector<uint64_t> _cleared_blocks; // blocks the last sweep changed, to write
    std::unordered_map<uint64_t, Function<void()>> _lock_waiters;

    std::atomic<uint64_t> _batches{0}, _block_writes{0}, _regions_marked{0}, _regions_cleared{0};
};

} // namespace ispace::volume
