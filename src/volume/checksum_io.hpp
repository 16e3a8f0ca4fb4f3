// Block checksums at run time (docs/integrity.md): the table of a CRC32C per 4 KiB block of the layout's
// address range, held in memory whole, the range lock that keeps a block's data and its checksum
// changing together, and the page writer that puts changed table pages on every member.
//
// Why the layout's range and not the space's: a thin space maps its blocks onto clusters of that range, so
// a cluster shared by snapshots has one checksum whoever reads it, and the seed (the block's layout
// address) catches a write that landed on the wrong block of a member.
//
// Why a range lock: a read that sees a block's new data before its new checksum (or the reverse) would take
// the good copy for a bad one and "repair" it with stale data. Writes, UNMAP and WRITE ZEROES take their 4
// KiB blocks exclusively from before their checksums change until both data and checksums are on the
// members; reads share them. A request waits for any conflicting request held or queued before it (first
// come, first served: a stream of reads cannot starve a write).
#pragma once

#include "ispace/data_observer.hpp"
#include "ispace/function.hpp"
#include "net/reactor.hpp"
#include "volume/label.hpp"
#include "volume/volume.hpp"

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

namespace ispace::volume {

// A member is failed (taken out like one that fails I/O, and not retried) once this many blocks read from
// it failed their checksum since the space was opened.
inline constexpr uint64_t checksum_error_limit = 32;

// The checksum of one 4 KiB block at layout block `block`: CRC32C seeded with the block's address, never 0
// (0 in the table means "no checksum yet": a block never written since the space was created, or last
// UNMAPped or zeroed, is not verified).
uint32_t block_checksum(const uint8_t* data, uint64_t block);
// The checksums of `count` consecutive blocks from `first` held in an iovec, in one pass over it.
void block_checksums(const iovec* iov, int iovcnt, uint64_t first, uint64_t count, uint32_t* out);

// The checksums of a read's 4 KiB blocks, computed as its bytes land (ispace/data_observer.hpp): the
// copy that put them in place (the socket's, for a remote member) left them in the cache, where the
// CRC reads them for a fraction of what a second pass over the whole read costs once it completed
// (docs/integrity.md, "Cost"). Each block's bytes must land once, in order, for its running CRC to be
// its checksum; anything else (a byte landing twice after a retry, a gap) and finish() refuses, and the
// caller checksums the data itself.
class LandingSums final : public DataObserver {
public:
    LandingSums(uint64_t first_block, uint64_t count);
    void landed(uint64_t offset, const uint8_t* data, size_t length) override;
    // block_checksum() of each block into `out` (count of them), or false when some block's bytes did not
    // land exactly once in order.
    bool finish(uint32_t* out) const;

private:
    uint64_t _first = 0;
    std::vector<uint32_t> _crc;  // per block: running CRC32C of what landed
    std::vector<uint32_t> _have; // per block: bytes of it that landed
    bool _broken = false;
};

// Copies `length` bytes from `from` into an iovec, `skip` bytes in; and out of one.
void copy_to_iov(const iovec* iov, int iovcnt, uint64_t skip, const uint8_t* from, uint64_t length);
void copy_from_iov(const iovec* iov, int iovcnt, uint64_t skip, uint8_t* to, uint64_t length);

struct ChecksumState {
    // `reach`: the blocks the checksums area can hold (what the space can grow to); the table's memory is
    // reserved for them but taken only as it is written (an anonymous mapping: untouched pages are zero).
    ChecksumState(uint64_t blocks_, uint64_t reach_, uint64_t area_offset_, ChecksumPageFormat format_);
    ~ChecksumState();
    ChecksumState(const ChecksumState&) = delete;
    ChecksumState& operator=(const ChecksumState&) = delete;

    // 4 KiB blocks of the layout range in use, and the 4 KiB pages of the table that hold them: larger
    // after a grow (changed on home under page_mutex, before the range is published; read on home).
    uint64_t blocks = 0;
    uint64_t pages = 0;
    uint64_t reach = 0;       // blocks the area holds (>= blocks)
    uint64_t area_offset = 0; // the checksums area, the same on every member
    ChecksumPageFormat format = ChecksumPageFormat::checked;
    uint64_t per_page = 0; // entries per table page (checksum_entries_per_page)

    // The 4 KiB table pages that hold `n` blocks' checksums.
    uint64_t pages_for(uint64_t n) const { return checksum_pages(n, format); }
    uint64_t page_of(uint64_t block) const { return block / per_page; }

    uint32_t get(uint64_t block) const {
        return std::atomic_ref<uint32_t>(_table[block]).load(std::memory_order_relaxed);
    }
    void set(uint64_t block, uint32_t sum) {
        std::atomic_ref<uint32_t>(_table[block]).store(sum, std::memory_order_relaxed);
    }
    // Page `page` of the table as it goes on disk (checksum_page.hpp).
    void encode_page(uint64_t page, uint8_t* out) const;

    // --- the range lock (any thread) ---
    struct Range {
        uint64_t first = 0;
        uint64_t last = 0;
        bool exclusive = false;
        bool conflicts(const Range& o) const {
            return first <= o.last && o.first <= last && (exclusive || o.exclusive);
        }
    };
    // Runs `go` now (true) or later on `origin` once the range is free (false).
    bool lock(Range range, net::Reactor* origin, Function<void()>& go);
    void unlock(Range range);

    // --- the page writer (marks from any thread; writes on home) ---
    std::mutex page_mutex;
    std::vector<uint8_t> page_dirty;
    std::vector<uint64_t> dirty_list;
    uint64_t requested = 0; // tickets handed out
    uint64_t durable = 0;   // tickets whose pages are on the members
    bool writing = false;
    uint64_t rounds = 0; // rounds started (the scrub tells a page read during one)
    bool kick_posted = false;
    bool fua = false;     // a FUA write waits for this round: its pages go with FUA too
    int failed_error = 0; // a batch that reached no member: every ticket from then on fails
    struct Waiter {
        uint64_t ticket;
        net::Reactor* origin;
        Function<void(int)> done;
    };
    std::vector<Waiter> waiters;

    // --- the scrub (home; `progress` also read by status() under scrub_mutex) ---
    mutable std::mutex scrub_mutex;
    ScrubProgress scrub;
    uint64_t scrub_next = 0; // layout offset of the next window
    // Home: the rate's reference point (the pace is measured from here: start or resume).
    std::chrono::steady_clock::time_point scrub_since{};
    uint64_t scrub_since_offset = 0;
    bool scrub_idle = false; // home: paused with no window in flight
    // Home: the last checkpoint of the scrub's position in the labels (every scrub_checkpoint_windows
    // windows or scrub_checkpoint_interval, whichever comes first, and at pause and end).
    std::chrono::steady_clock::time_point scrub_checkpointed{};
    uint64_t scrub_windows = 0; // since then

private:
    uint32_t* _table = nullptr; // `reach` entries, mapped
    std::mutex _lock_mutex;
    std::vector<Range> _held;
    struct Queued {
        Range range;
        net::Reactor* origin;
        Function<void()> go;
    };
    std::deque<Queued> _queued;
};

} // namespace ispace::volume
