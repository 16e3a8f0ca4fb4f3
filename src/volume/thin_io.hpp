// A thin space's run-time state inside its Volume (volume_thin.cpp): the pool that maps the space's
// virtual clusters to clusters of the layout's address range, its metadata store over the members, and
// the worker thread that owns both.
//
// Why a worker thread: the pool has no lock of its own and its commit writes metadata pages to every
// member and waits for them (member_io blocks), which no reactor may do. Every thin request is
// planned there (lookups, allocation, UNMAP, commits) in the order it arrived, and its data moves through
// the ordinary layout path (Volume::submit_physical) on the reactor that submitted it. Only the rare
// synchronous pieces (zeroing the unwritten rest of a partly written 4 KiB block, the copy of a shared
// cluster, the flush before a commit) wait on the worker.
//
// The metadata store (VolumeThinStore) writes every member whose metadata area is current (`included`):
// the active members at open, and a member that comes back (rejoins for a resync) once the whole area has
// been copied to it from a current one — a member that missed commits must never be read as current, and
// its area would otherwise hold an older, self-consistent state. A member that fails a metadata write is
// failed like one that fails a data write (the epoch is raised) and the commit goes on with the others.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"
#include "ispace/function.hpp"
#include "volume/thin/pool.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

namespace ispace::volume {

class Volume;

class VolumeThinStore final : public thin::MetadataStore {
public:
    VolumeThinStore(Volume& volume, uint64_t area_offset, uint64_t pages, uint32_t included)
        : _v(volume), _offset(area_offset), _pages(pages), _included(included) {}

    uint64_t pages() const override { return _pages; }
    unsigned copies() const override;
    Result<void> read(uint64_t page, unsigned copy, std::span<uint8_t> out) override;
    Result<void> write(uint64_t page, std::span<const uint8_t> data) override;
    Result<void> flush() override;

    // Worker: copies the whole area from a current member to `slot` and includes it from now on.
    Result<void> include(uint32_t slot);
    uint32_t included() const { return _included.load(std::memory_order_acquire); }
    // Whether a member was dropped by a metadata write since the last call (the commit then waits for the
    // labels that record it before it is acknowledged).
    bool take_dropped() { return _dropped.exchange(false, std::memory_order_acq_rel); }

private:
    // The included members that may be written now (slot mask).
    uint32_t targets() const;
    int io(uint32_t slot, backstore::IoOp op, uint64_t offset, std::span<uint8_t> data);

    Volume& _v;
    uint64_t _offset;
    uint64_t _pages;
    std::atomic<uint32_t> _included;
    std::atomic<bool> _dropped{false};
};

struct ThinState {
    std::unique_ptr<VolumeThinStore> store;
    std::optional<thin::ThinPool> pool; // worker only (after open)
    uint32_t device = 0;                // the space's own pool device (thin_device_name)
    uint64_t cluster_size = 0;
    uint64_t virtual_size = 0;  // the space's size as its users see it
    uint64_t physical_size = 0; // pool clusters * cluster size: the layout range the pool uses

    // For status(), any thread; the worker updates them after every change.
    std::atomic<uint64_t> allocated_clusters{0};
    std::atomic<uint64_t> pool_clusters{0};
    std::atomic<bool> full{false}; // the last allocation failed (until one succeeds or space is freed)
    std::atomic<uint64_t> commits{0};
    std::atomic<uint64_t> commit_failures{0};
    std::atomic<uint64_t> deferred_copies{0}; // pending now (docs/thin.md, "Deferred copies")
    std::atomic<uint64_t> deferred_blocks{0};

    // Data requests the worker has planned and handed to a reactor, not yet completed: a commit waits
    // for them (their data reaches the members before the map that points at it is durable, and a
    // cluster freed by UNMAP is not reused under a write still landing in it).
    std::atomic<uint64_t> inflight{0};

    // Views (snapshots, clones) open per pool device: such a device is not removed under them.
    std::mutex views_mutex;
    std::map<uint32_t, unsigned> views;

    std::thread worker;
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Function<void()>> jobs;
    bool stopping = false;
};

} // namespace ispace::volume
