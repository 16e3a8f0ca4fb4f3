// The data path of a thin space (docs/thin.md, "The data path"): the space's virtual blocks are mapped by
// a ThinPool to clusters of the layout's address range, allocated on first write. Every request is planned
// on the thin worker (thin_io.hpp says why) and its data moves through submit_physical(), the ordinary
// mirror/stripe/concat path, from the reactor that submitted it.
//
// The rules it keeps:
//  - a block whose written bit is clear reads as zeros; a write sets the bits of the 4 KiB blocks it
//    covers, and the part of such a block it does not cover is zeroed first (or copied, on copy-on-write),
//    so that nothing a cluster held before becomes visible;
//  - a write that cannot be allocated fails with ENOSPC (DATA PROTECT / SPACE ALLOCATION FAILED WRITE
//    PROTECT at the SCSI layer) and leaves the map as it was: the clusters it already planned are reverted;
//  - a FLUSH, or a FUA write that changed the map, is acknowledged only after the data in flight has
//    landed, the members were flushed and the pool committed (an acknowledged flush survives kill -9);
//  - UNMAP and WRITE ZEROES wait for the requests planned before them, then clear written bits (a cluster
//    with none left is unmapped: reusable at once if no commit knows it, else after the next commit);
//    the partial 4 KiB blocks at their edges are written with zeros like any write (copy-on-write first).
#include "common/log.hpp"
#include "volume/member_io.hpp"
#include "volume/thin_io.hpp"
#include "volume/volume.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <thread>

namespace ispace::volume {

// One thin request: the parent's range cut into segments, each either zeros or a range of the layout.
struct ThinIo {
    struct Segment {
        uint64_t offset = 0; // in the parent request
        uint64_t length = 0;
        uint64_t physical = thin::no_cluster; // byte offset in the layout's range; no_cluster: zeros
    };
    backstore::IoRequest* parent = nullptr;
    net::Reactor* origin = nullptr;
    std::vector<Segment> segments;
    std::vector<std::unique_ptr<backstore::IoRequest>> children;
    std::vector<std::vector<iovec>> iovs;
    uint32_t pending = 0;
    int error = 0;
    bool commit_after = false; // a FUA write that changed the map
    uint32_t device = 0;       // the pool device: the space's own, or a view's (snapshot, clone)
};

namespace {

constexpr uint64_t granule = thin::written_granule;

bool bit(const thin::WrittenMask& m, uint64_t b) {
    return (m[b / 64] >> (b % 64)) & 1;
}

void add_segment(ThinIo& io, uint64_t offset, uint64_t length, uint64_t physical) {
    if (!io.segments.empty()) {
        ThinIo::Segment& last = io.segments.back();
        bool both_zero = last.physical == thin::no_cluster && physical == thin::no_cluster;
        bool contiguous = last.physical != thin::no_cluster && physical == last.physical + last.length;
        if (last.offset + last.length == offset && (both_zero || contiguous)) {
            last.length += length;
            return;
        }
    }
    io.segments.push_back({offset, length, physical});
}

// [offset, offset + length) of the caller's iovec, appended to `out`.
void slice_iov(const iovec* iov, unsigned iovcnt, uint64_t offset, uint64_t length, std::vector<iovec>& out) {
    for (unsigned i = 0; i < iovcnt && length > 0; ++i) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        uint64_t take = std::min<uint64_t>(iov[i].iov_len - offset, length);
        out.push_back({static_cast<uint8_t*>(iov[i].iov_base) + offset, take});
        length -= take;
        offset = 0;
    }
}

void zero_iov(const iovec* iov, unsigned iovcnt, uint64_t offset, uint64_t length) {
    std::vector<iovec> part;
    slice_iov(iov, iovcnt, offset, length, part);
    for (const iovec& v : part) {
        std::memset(v.iov_base, 0, v.iov_len);
    }
}

} // namespace

// ---- open and stop ---------------------------------------------------------------------------------------

Result<void> Volume::thin_open(const Label& truth) {
    const MetadataArea* area = truth.area(AreaType::thin_map);
    if (area == nullptr) {
        return make_error(fmt::format("space '{}': thin, but no thin metadata area", truth.name), EILSEQ);
    }
    // The metadata is current on every member that holds the space now; a member that is out (failed,
    // missing, rebuilding) may have missed commits: it is neither read nor written until it gets a copy.
    uint32_t current = 0;
    for (uint32_t s = 0; s < _count; ++s) {
        const Member& m = _members[s];
        if (m.device && MemberState(m.state.load()) == MemberState::active) {
            backstore::Geometry g = m.device->geometry();
            if (thin::page_size % g.block_size != 0 || area->offset % thin::page_size != 0 ||
                area->offset + area->length > g.bytes()) {
                return make_error(
                    fmt::format("space '{}': {}: the thin metadata area does not fit it", truth.name, m.url),
                    EILSEQ);
            }
            current |= 1u << s;
        }
    }
    if (current == 0) {
        return make_error(fmt::format("space '{}': no member holds a current thin map", truth.name), EIO);
    }
    auto t = std::make_unique<ThinState>();
    t->store =
        std::make_unique<VolumeThinStore>(*this, area->offset, area->length / thin::page_size, current);
    uint64_t layout_bytes = capacity(layout());
    auto pool = thin::ThinPool::open(*t->store, layout_bytes / thin::min_cluster_size);
    if (!pool) {
        return make_error(fmt::format("space '{}': the thin pool: {}", truth.name, pool.error().message),
                          pool.error().code);
    }
    const thin::Superblock& sb = pool->superblock();
    if (sb.pool_clusters * uint64_t(sb.cluster_size) > layout_bytes) {
        return make_error(fmt::format("space '{}': the thin pool counts {} clusters of {} bytes, the members "
                                      "hold {} bytes",
                                      truth.name, sb.pool_clusters, sb.cluster_size, layout_bytes),
                          EILSEQ);
    }
    auto id = pool->find_device(thin_device_name);
    if (!id) {
        return make_error(
            fmt::format("space '{}': the thin pool has no device '{}'", truth.name, thin_device_name),
            EILSEQ);
    }
    t->device = *id;
    t->cluster_size = sb.cluster_size;
    t->virtual_size = truth.space_size;
    t->physical_size = sb.pool_clusters * uint64_t(sb.cluster_size);
    for (const thin::DeviceInfo& d : pool->devices()) {
        if (d.id == *id && d.virtual_clusters * t->cluster_size < truth.space_size) {
            return make_error(fmt::format("space '{}': the thin device maps {} clusters, the space has {} "
                                          "bytes",
                                          truth.name, d.virtual_clusters, truth.space_size),
                              EILSEQ);
        }
    }
    if (auto checked = pool->check(); !checked) {
        return make_error(fmt::format("space '{}': the thin pool: {}", truth.name, checked.error().message),
                          EILSEQ);
    }
    t->pool.emplace(std::move(*pool));
    t->pool->set_deferred_limit(thin::default_deferred_limit); // the worker runs the copier
    _thin = std::move(t);
    thin_update_stats();
    _thin->worker = std::thread([this] { thin_worker_loop(); });
    for (uint32_t s = 0; s < _count; ++s) {
        if (_members[s].device && MemberState(_members[s].state.load()) == MemberState::rebuilding) {
            thin_post([this, s] { thin_include(s); });
        }
    }
    return {};
}

void Volume::thin_include(uint32_t slot) {
    auto state = MemberState(_members[slot].state.load());
    if (state != MemberState::rebuilding && state != MemberState::active) {
        return; // gone again; its next return copies again
    }
    if (auto r = _thin->store->include(slot); !r) {
        log_warn("space {}: {}: the thin map could not be copied to it: {}", _truth_at_open.name,
                 _members[slot].url, r.error().message);
        member_error(slot, r.error().code ? -r.error().code : -EIO, "thin metadata copy");
        return;
    }
    log_info("space {}: {}: the thin map copied to it", _truth_at_open.name, _members[slot].url);
}

// ---- the metadata store over the members ---------------------------------------------------------------

uint32_t VolumeThinStore::targets() const {
    return _included.load(std::memory_order_acquire) & _v.writable_mask();
}

int VolumeThinStore::io(uint32_t slot, backstore::IoOp op, uint64_t offset, std::span<uint8_t> data) {
    Volume::Member& m = _v._members[slot];
    // Counted in flight: a member's device is not replaced (a reopen) while a request uses it.
    m.inflight.fetch_add(1, std::memory_order_acq_rel);
    int error = m.device ? member_io(_v._home, *m.device, op, offset, data) : -ENODEV;
    m.inflight.fetch_sub(1, std::memory_order_acq_rel);
    return error;
}

unsigned VolumeThinStore::copies() const {
    return unsigned(std::popcount(targets()));
}

Result<void> VolumeThinStore::read(uint64_t page, unsigned copy, std::span<uint8_t> out) {
    uint32_t mask = targets();
    if (page >= _pages || copy >= unsigned(std::popcount(mask)) || out.size() != thin::page_size) {
        return make_error(fmt::format("thin metadata page {} copy {}: out of range", page, copy), EINVAL);
    }
    for (unsigned i = 0; i < copy; ++i) {
        mask &= mask - 1;
    }
    uint32_t slot = uint32_t(std::countr_zero(mask));
    if (int error = io(slot, backstore::IoOp::read, _offset + page * thin::page_size, out); error != 0) {
        return make_error(fmt::format("thin metadata page {} on {}: read failed: {}", page,
                                      _v._members[slot].url, std::strerror(-error)),
                          -error);
    }
    return {};
}

Result<void> VolumeThinStore::write(uint64_t page, std::span<const uint8_t> data) {
    if (page >= _pages || data.size() != thin::page_size) {
        return make_error(fmt::format("thin metadata page {}: out of range", page), EINVAL);
    }
    std::vector<uint8_t> bytes(data.begin(), data.end());
    uint32_t written = 0;
    for (uint32_t mask = targets(); mask != 0; mask &= mask - 1) {
        uint32_t slot = uint32_t(std::countr_zero(mask));
        if (int error = io(slot, backstore::IoOp::write, _offset + page * thin::page_size, bytes);
            error != 0) {
            // Out of the store before anything else can be committed without it; failed like a data write.
            _included.fetch_and(~(1u << slot), std::memory_order_acq_rel);
            _dropped.store(true, std::memory_order_release);
            _v.member_error(slot, error, "thin metadata write");
            continue;
        }
        ++written;
    }
    if (written == 0) {
        return make_error(fmt::format("thin metadata page {}: no member took it", page), EIO);
    }
    return {};
}

Result<void> VolumeThinStore::flush() {
    uint32_t flushed = 0;
    for (uint32_t mask = targets(); mask != 0; mask &= mask - 1) {
        uint32_t slot = uint32_t(std::countr_zero(mask));
        if (int error = io(slot, backstore::IoOp::flush, 0, {}); error != 0) {
            _included.fetch_and(~(1u << slot), std::memory_order_acq_rel);
            _dropped.store(true, std::memory_order_release);
            _v.member_error(slot, error, "thin metadata flush");
            continue;
        }
        ++flushed;
    }
    if (flushed == 0) {
        return make_error("thin metadata: no member took the flush", EIO);
    }
    return {};
}

Result<void> VolumeThinStore::include(uint32_t slot) {
    uint32_t sources = targets() & _v.active_mask() & ~(1u << slot);
    if (sources == 0) {
        return make_error("no current copy of the thin map to copy from", EIO);
    }
    uint32_t from = uint32_t(std::countr_zero(sources));
    constexpr uint64_t step = 256 << 10;
    uint64_t bytes = _pages * thin::page_size;
    std::vector<uint8_t> buffer;
    for (uint64_t at = 0; at < bytes; at += step) {
        buffer.resize(std::min(step, bytes - at));
        if (int error = io(from, backstore::IoOp::read, _offset + at, buffer); error != 0) {
            return make_error(
                fmt::format("reading the thin map from {}: {}", _v._members[from].url, std::strerror(-error)),
                EIO);
        }
        if (int error = io(slot, backstore::IoOp::write, _offset + at, buffer); error != 0) {
            return make_error(fmt::format("writing the thin map: {}", std::strerror(-error)), -error);
        }
    }
    if (int error = io(slot, backstore::IoOp::flush, 0, {}); error != 0) {
        return make_error(fmt::format("flushing the thin map: {}", std::strerror(-error)), -error);
    }
    _included.fetch_or(1u << slot, std::memory_order_acq_rel);
    return {};
}

void Volume::thin_worker_loop() {
    ThinState& t = *_thin;
    // The background copier (docs/thin.md, "Deferred copies") runs only once the worker has had nothing
    // to do for `idle`: a burst of first writes after a snapshot is not slowed by copies, and a request
    // that arrives while it runs waits for at most one piece. Between pieces it leaves `pace`.
    // Under steady load (never idle) it still takes a small piece every `busy_pace` (64 KiB every 50 ms:
    // a few per cent of a request stream), so that the table does not stay full for ever.
    constexpr auto idle = std::chrono::milliseconds(20);
    constexpr auto pace = std::chrono::milliseconds(1);
    constexpr auto busy_pace = std::chrono::milliseconds(50);
    constexpr uint64_t busy_piece = 64 << 10;
    auto last_job = std::chrono::steady_clock::now();
    auto last_piece = last_job;
    for (;;) {
        Function<void()> job;
        {
            std::unique_lock lock(t.mutex);
            auto ready = [&] { return t.stopping || !t.jobs.empty(); };
            if (t.pool->deferred_count() == 0 || t.stopping) {
                t.wake.wait(lock, ready);
            } else if (!t.wake.wait_until(
                           lock, std::max(last_job + idle, std::chrono::steady_clock::now() + pace), ready)) {
                lock.unlock();
                if (t.inflight.load(std::memory_order_acquire) == 0) {
                    thin_copier_step();
                    last_piece = std::chrono::steady_clock::now();
                } else {
                    last_job = std::chrono::steady_clock::now(); // still busy: wait for a quiet moment
                }
                continue;
            }
            if (t.jobs.empty()) {
                return; // stopping, and nothing left to do
            }
            job = std::move(t.jobs.front());
            t.jobs.pop_front();
        }
        job();
        last_job = std::chrono::steady_clock::now();
        if (t.pool->deferred_count() != 0 && last_job - last_piece >= busy_pace) {
            thin_copier_step(busy_piece);
            last_piece = std::chrono::steady_clock::now();
        }
    }
}

void Volume::thin_drain_deferred() {
    // Piece by piece, each a job of its own: the requests queued meanwhile are planned between pieces.
    // Bounded by what was pending at the start, so that writes making new records cannot keep it going.
    uint64_t pieces = 0;
    if (!thin_wait([&] {
            thin::PoolStats s = _thin->pool->stats();
            pieces = s.deferred_blocks * thin::written_granule / (256 << 10) + s.deferred_copies;
        })) {
        return;
    }
    for (uint64_t i = 0; i < pieces; ++i) {
        bool more = false;
        if (!thin_wait([&] {
                thin_copier_step();
                more = _thin->pool->deferred_count() != 0;
            }) ||
            !more) {
            return;
        }
    }
}

void Volume::thin_post(Function<void()> job) {
    {
        std::lock_guard lock(_thin->mutex);
        _thin->jobs.push_back(std::move(job));
    }
    _thin->wake.notify_one();
}

Result<void> Volume::thin_stop(bool commit) {
    if (!_thin || !_thin->worker.joinable()) {
        return {};
    }
    Result<void> result;
    if (commit) {
        std::promise<Result<void>> done;
        auto got = done.get_future();
        thin_post([&] { done.set_value(thin_commit()); });
        result = got.get();
    }
    {
        std::lock_guard lock(_thin->mutex);
        _thin->stopping = true;
    }
    _thin->wake.notify_one();
    _thin->worker.join();
    return result;
}

// ---- worker helpers --------------------------------------------------------------------------------------

int Volume::thin_sync_io(backstore::IoOp op, uint64_t offset, std::span<uint8_t> data) {
    backstore::IoRequest request;
    iovec iov{data.data(), data.size()};
    request.op = op;
    request.offset = offset;
    request.length = op == backstore::IoOp::flush ? 0 : data.size();
    if (op == backstore::IoOp::read || op == backstore::IoOp::write) {
        request.iov = &iov;
        request.iovcnt = 1;
    }
    std::promise<int> done;
    auto got = done.get_future();
    request.done = [&done](int error) { done.set_value(error); };
    _home.post([this, &request] { submit_physical(request); });
    return got.get();
}

Result<void> Volume::thin_commit() {
    ThinState& t = *_thin;
    // Everything planned before lands first: its map must not be durable before its data, and a cluster
    // an UNMAP freed must not be reused (after this commit) under a write still landing in it.
    while (t.inflight.load(std::memory_order_acquire) != 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    // The committed state never depends on a deferred copy: what the copier has not done yet is done
    // now, before the flush that makes it durable with the rest.
    while (const thin::DeferredCopy* d = t.pool->deferred()) {
        if (int error = thin_copy_deferred(d->cluster, 0); error != 0) {
            t.commit_failures.fetch_add(1, std::memory_order_relaxed);
            return make_error(fmt::format("space '{}': a deferred copy before the thin commit: {}",
                                          _truth_at_open.name, std::strerror(-error)),
                              -error);
        }
    }
    if (int error = thin_sync_io(backstore::IoOp::flush, 0, {}); error != 0) {
        t.commit_failures.fetch_add(1, std::memory_order_relaxed);
        return make_error(fmt::format("space '{}': flush before the thin commit: {}", _truth_at_open.name,
                                      std::strerror(-error)),
                          -error);
    }
    if (!t.pool->dirty()) {
        return {};
    }
    if (auto r = t.pool->commit(); !r) {
        t.commit_failures.fetch_add(1, std::memory_order_relaxed);
        log_warn("space {}: thin commit failed: {}", _truth_at_open.name, r.error().message);
        return r;
    }
    if (t.store->take_dropped()) {
        // A member left during the commit: the labels must say so before the commit is relied on, or an
        // assembly after a crash could take its older map for a current one.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!labels_current()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return make_error(fmt::format("space '{}': the labels recording a failed member were not "
                                              "written within 60 s",
                                              _truth_at_open.name),
                                  EIO);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    t.commits.fetch_add(1, std::memory_order_relaxed);
    thin_update_stats();
    return {};
}

void Volume::thin_update_stats() {
    thin::PoolStats s = _thin->pool->stats();
    _thin->deferred_copies.store(s.deferred_copies, std::memory_order_relaxed);
    _thin->deferred_blocks.store(s.deferred_blocks, std::memory_order_relaxed);
    _thin->allocated_clusters.store(s.allocated_clusters, std::memory_order_relaxed);
    _thin->pool_clusters.store(s.pool_clusters, std::memory_order_relaxed);
    if (s.held_clusters < s.pool_clusters) {
        _thin->full.store(false, std::memory_order_relaxed);
    }
}

// Makes [from, to) of 4 KiB block `g` of the cluster `plan` writes to hold what it held before the write
// (the write covers the rest of the block): nothing when the cluster already had it written, a copy when
// the write moved the cluster (copy-on-write), zeros when it was never written.
int Volume::thin_fill(const thin::WritePlan& plan, uint64_t g, uint64_t from, uint64_t to) {
    const ThinState& t = *_thin;
    const thin::Mapping& before = plan.previous;
    bool had = before.physical != thin::no_cluster && bit(before.written, g);
    // Where the block's old bytes are: the base of a deferred copy the write took the block from, else
    // the cluster the write moved from; nothing to do when they are where the write goes.
    uint64_t source = bit(plan.base_blocks, g) ? plan.base : before.physical;
    if (had && source == plan.physical) {
        return 0;
    }
    std::vector<uint8_t> bytes(to - from, 0);
    if (had) {
        if (int error = thin_sync_io(backstore::IoOp::read, source * t.cluster_size + from, bytes);
            error != 0) {
            return error;
        }
    }
    return thin_sync_io(backstore::IoOp::write, plan.physical * t.cluster_size + from, bytes);
}

// Copy-on-write: the blocks of the shared cluster this write does not cover, to the new cluster.
int Volume::thin_copy(const thin::WritePlan& plan) {
    const ThinState& t = *_thin;
    uint64_t blocks = t.cluster_size / granule;
    for (uint64_t b = 0; b < blocks;) {
        if (!bit(plan.copy_blocks, b)) {
            ++b;
            continue;
        }
        uint64_t e = b;
        while (e < blocks && bit(plan.copy_blocks, e)) {
            ++e;
        }
        std::vector<uint8_t> bytes((e - b) * granule);
        if (int error =
                thin_sync_io(backstore::IoOp::read, plan.copy_from * t.cluster_size + b * granule, bytes);
            error != 0) {
            return error;
        }
        if (int error =
                thin_sync_io(backstore::IoOp::write, plan.physical * t.cluster_size + b * granule, bytes);
            error != 0) {
            return error;
        }
        b = e;
    }
    return 0;
}

// Deferred copies (docs/thin.md, "Deferred copies"): the pending blocks of `cluster` from its base, in
// runs, up to `max_bytes` (0: all). The pool forgets each run once it is copied; nothing planned meanwhile
// (this is the worker), and a write planned before to a pending block took it out of the record then.
int Volume::thin_copy_deferred(uint64_t cluster, uint64_t max_bytes) {
    ThinState& t = *_thin;
    uint64_t blocks = t.cluster_size / granule;
    uint64_t budget = max_bytes == 0 ? ~uint64_t(0) : max_bytes;
    const thin::DeferredCopy* d = t.pool->deferred(cluster);
    for (uint64_t b = 0; d != nullptr && b < blocks && budget > 0;) {
        if (!bit(d->pending, b)) {
            ++b;
            continue;
        }
        uint64_t e = b;
        while (e < blocks && bit(d->pending, e) && (e - b + 1) * granule <= budget) {
            ++e;
        }
        if (e == b) {
            break;
        }
        std::vector<uint8_t> bytes((e - b) * granule);
        uint64_t base = d->base;
        if (int error = thin_sync_io(backstore::IoOp::read, base * t.cluster_size + b * granule, bytes);
            error != 0) {
            return error;
        }
        if (int error = thin_sync_io(backstore::IoOp::write, cluster * t.cluster_size + b * granule, bytes);
            error != 0) {
            return error;
        }
        thin::WrittenMask done{};
        thin::mask_set_range(done, uint32_t(b), uint32_t(e - b));
        t.pool->deferred_copied(cluster, done); // may drop the record: look it up again
        d = t.pool->deferred(cluster);
        budget -= (e - b) * granule;
        b = e;
    }
    thin_update_stats();
    return 0;
}

void Volume::thin_copier_step(uint64_t piece) {
    const thin::DeferredCopy* d = _thin->pool->deferred();
    if (d == nullptr) {
        return;
    }
    if (int error = thin_copy_deferred(d->cluster, piece); error != 0) {
        // Left pending: the next idle moment tries again, and a commit copies it or fails.
        log_warn("space {}: deferred copy of cluster {}: {}", _truth_at_open.name, d->cluster,
                 std::strerror(-error));
    }
}

// ---- planning (worker) -----------------------------------------------------------------------------------

int Volume::thin_plan_read(ThinIo& io) {
    ThinState& t = *_thin;
    const backstore::IoRequest& r = *io.parent;
    uint64_t cs = t.cluster_size;
    for (uint64_t pos = r.offset, end = r.offset + r.length; pos < end;) {
        uint64_t vc = pos / cs;
        uint64_t base = vc * cs;
        uint64_t piece_end = std::min(end, base + cs);
        auto m = t.pool->lookup(io.device, vc);
        if (!m) {
            log_warn("space {}: thin lookup of cluster {}: {}", _truth_at_open.name, vc, m.error().message);
            return -EIO;
        }
        if (!*m) {
            add_segment(io, pos - r.offset, piece_end - pos, thin::no_cluster);
        } else {
            for (uint64_t p = pos; p < piece_end;) {
                uint64_t g = (p - base) / granule;
                uint64_t g_end = std::min(piece_end, base + (g + 1) * granule);
                bool written = bit((*m)->written, g);
                // A deferred copy's pending block is still in its base.
                uint64_t from = bit((*m)->pending, g) ? (*m)->base : (*m)->physical;
                add_segment(io, p - r.offset, g_end - p, written ? from * cs + (p - base) : thin::no_cluster);
                p = g_end;
            }
        }
        pos = piece_end;
    }
    return 0;
}

int Volume::thin_plan_write(ThinIo& io) {
    ThinState& t = *_thin;
    const backstore::IoRequest& r = *io.parent;
    uint64_t cs = t.cluster_size;
    struct Done {
        uint64_t vcluster;
        thin::WritePlan plan;
    };
    std::vector<Done> planned;
    auto undo = [&] {
        for (auto it = planned.rbegin(); it != planned.rend(); ++it) {
            if (auto reverted = t.pool->revert_write(io.device, it->vcluster, it->plan); !reverted) {
                log_warn("space {}: thin revert of cluster {}: {}", _truth_at_open.name, it->vcluster,
                         reverted.error().message);
            }
        }
    };
    bool changed = false;
    for (uint64_t pos = r.offset, end = r.offset + r.length; pos < end;) {
        uint64_t vc = pos / cs;
        uint64_t base = vc * cs;
        uint64_t piece_end = std::min(end, base + cs);
        uint64_t in_first = pos - base, in_end = piece_end - base;
        uint64_t first_g = in_first / granule, last_g = (in_end - 1) / granule;
        auto plan = t.pool->write(io.device, vc, uint32_t(first_g), uint32_t(last_g - first_g + 1));
        if (!plan && plan.error().code == EAGAIN) {
            // The cluster has a deferred copy and must itself be copied (it is shared now): its copy is
            // completed first, so that bases never chain.
            int error = -EIO;
            if (auto m = t.pool->lookup(io.device, vc); m && *m) {
                error = thin_copy_deferred((*m)->physical, 0);
            }
            if (error == 0) {
                plan = t.pool->write(io.device, vc, uint32_t(first_g), uint32_t(last_g - first_g + 1));
            }
        }
        if (!plan) {
            undo();
            if (plan.error().code == ENOSPC) {
                t.full.store(true, std::memory_order_relaxed);
                return -ENOSPC;
            }
            log_warn("space {}: thin write of cluster {}: {}", _truth_at_open.name, vc, plan.error().message);
            return plan.error().code == EROFS ? -EROFS : -EIO;
        }
        planned.push_back({vc, *plan});
        int error = 0;
        if (plan->copy_from != thin::no_cluster) {
            error = thin_copy(*plan);
        }
        if (error == 0 && in_first % granule != 0) {
            uint64_t g_start = first_g * granule;
            error = thin_fill(*plan, first_g, g_start, in_first);
        }
        if (error == 0 && in_end % granule != 0) {
            uint64_t g_end = (last_g + 1) * granule;
            error = thin_fill(*plan, last_g, in_end, std::min<uint64_t>(g_end, cs));
        }
        if (error != 0) {
            undo();
            return error;
        }
        changed |= plan->metadata_changed;
        add_segment(io, pos - r.offset, piece_end - pos, plan->physical * cs + in_first);
        pos = piece_end;
    }
    // A FUA write is durable with the map that reaches it: a commit when this write changed the map, and
    // also when it changed none but the pool has uncommitted changes — an overwrite of a cluster (or of a
    // deferred copy's block) that no commit maps yet would otherwise be lost to a crash.
    io.commit_after = r.fua && (changed || t.pool->dirty());
    if (changed) {
        thin_update_stats();
    }
    return 0;
}

int Volume::thin_unmap(const backstore::IoRequest& r, uint32_t device) {
    ThinState& t = *_thin;
    // The reads and writes planned before land first: a cluster freed here and never committed is
    // allocatable at once, and must not be handed to another write while one of them still uses it (a
    // late write would land in the other's data). Nothing new is planned meanwhile (this is the worker).
    while (t.inflight.load(std::memory_order_acquire) != 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    uint64_t cs = t.cluster_size;
    bool changed = false;
    for (uint64_t pos = r.offset, end = r.offset + r.length; pos < end;) {
        uint64_t vc = pos / cs;
        uint64_t base = vc * cs;
        uint64_t piece_end = std::min(end, base + cs);
        uint64_t in_first = pos - base, in_end = piece_end - base;
        pos = piece_end;
        auto m = t.pool->lookup(device, vc);
        if (!m) {
            return -EIO;
        }
        if (!*m) {
            continue; // nothing mapped: it reads as zeros already
        }
        // Whole 4 KiB blocks are forgotten; the partial ones at the edges are zeroed where written. The
        // device's last block counts as whole when the range reaches the device's end.
        uint64_t device_end = std::min(cs, _thin->virtual_size - base);
        uint64_t run_first = 0, run_count = 0;
        auto flush_run = [&]() -> int {
            if (run_count == 0) {
                return 0;
            }
            auto dropped = t.pool->unmap(device, vc, uint32_t(run_first), uint32_t(run_count));
            run_count = 0;
            if (!dropped) {
                log_warn("space {}: thin unmap of cluster {}: {}", _truth_at_open.name, vc,
                         dropped.error().message);
                return -EIO;
            }
            changed |= *dropped;
            return 0;
        };
        for (uint64_t g = in_first / granule; g <= (in_end - 1) / granule; ++g) {
            uint64_t from = std::max(in_first, g * granule);
            uint64_t to = std::min(in_end, (g + 1) * granule);
            bool whole = from == g * granule && to == std::min((g + 1) * granule, device_end);
            if (whole) {
                if (run_count == 0) {
                    run_first = g;
                }
                ++run_count;
                continue;
            }
            if (int error = flush_run(); error != 0) {
                return error;
            }
            if (!bit((*m)->written, g)) {
                continue; // reads as zeros already
            }
            // Zeros in part of a written block are a write of that part: planned like one, so that a
            // cluster a snapshot shares is copied (or its copy deferred) first and the snapshot keeps its
            // bytes, and the rest of the block is filled from wherever it is read now.
            auto plan = t.pool->write(device, vc, uint32_t(g), 1);
            if (!plan && plan.error().code == EAGAIN) {
                if (int error = thin_copy_deferred((*m)->physical, 0); error != 0) {
                    return error;
                }
                plan = t.pool->write(device, vc, uint32_t(g), 1);
            }
            if (!plan) {
                if (plan.error().code == ENOSPC) {
                    t.full.store(true, std::memory_order_relaxed);
                    return -ENOSPC;
                }
                log_warn("space {}: thin zeroing in cluster {}: {}", _truth_at_open.name, vc,
                         plan.error().message);
                return -EIO;
            }
            changed |= plan->metadata_changed;
            int error = plan->copy_from != thin::no_cluster ? thin_copy(*plan) : 0;
            uint64_t g_start = g * granule, g_end = std::min((g + 1) * granule, cs);
            if (error == 0 && from > g_start) {
                error = thin_fill(*plan, g, g_start, from);
            }
            if (error == 0 && to < g_end) {
                error = thin_fill(*plan, g, to, g_end);
            }
            if (error == 0) {
                std::vector<uint8_t> zeros(to - from, 0);
                error = thin_sync_io(backstore::IoOp::write, plan->physical * cs + from, zeros);
            }
            if (error != 0) {
                return error;
            }
            m = t.pool->lookup(device, vc); // the cluster may have moved
            if (!m || !*m) {
                return -EIO;
            }
        }
        if (int error = flush_run(); error != 0) {
            return error;
        }
    }
    if (changed) {
        thin_update_stats();
    }
    return 0;
}

// ---- the request path ------------------------------------------------------------------------------------

void Volume::thin_submit(backstore::IoRequest& request, net::Reactor* origin, uint32_t device) {
    auto io = std::make_shared<ThinIo>();
    io->parent = &request;
    io->origin = origin;
    io->device = device == ~uint32_t(0) ? _thin->device : device;
    switch (request.op) {
    case backstore::IoOp::flush:
        thin_post([this, io] {
            auto r = thin_commit();
            int error = r ? 0 : (r.error().code == ENOSPC ? -ENOSPC : -EIO);
            io->origin->post([this, io, error] { thin_complete(*io, error); });
        });
        return;
    case backstore::IoOp::unmap:
    case backstore::IoOp::write_zeroes:
        // Both read as zeros afterwards; a thin space keeps no allocation it does not need.
        thin_post([this, io] {
            int error = thin_unmap(*io->parent, io->device);
            io->origin->post([this, io, error] { thin_complete(*io, error); });
        });
        return;
    case backstore::IoOp::read:
    case backstore::IoOp::write:
        thin_post([this, io] {
            int error = io->parent->op == backstore::IoOp::read ? thin_plan_read(*io) : thin_plan_write(*io);
            if (error != 0) {
                io->origin->post([this, io, error] { thin_complete(*io, error); });
                return;
            }
            _thin->inflight.fetch_add(1, std::memory_order_acq_rel);
            io->origin->post([this, io] { thin_send(io); });
        });
        return;
    }
}

void Volume::thin_send(const std::shared_ptr<ThinIo>& io) {
    const backstore::IoRequest& parent = *io->parent;
    uint32_t physical = 0;
    for (const auto& s : io->segments) {
        if (s.physical == thin::no_cluster) {
            zero_iov(parent.iov, parent.iovcnt, s.offset, s.length); // reads only: writes always map
        } else {
            ++physical;
        }
    }
    io->children.reserve(physical);
    io->iovs.reserve(physical);
    io->pending = physical + 1; // one for this loop: no child completes the request while it runs
    for (const auto& s : io->segments) {
        if (s.physical == thin::no_cluster) {
            continue;
        }
        auto& iov = io->iovs.emplace_back();
        slice_iov(parent.iov, parent.iovcnt, s.offset, s.length, iov);
        auto child = std::make_unique<backstore::IoRequest>();
        child->op = parent.op;
        child->offset = s.physical;
        child->length = s.length;
        child->fua = parent.fua;
        child->iov = iov.data();
        child->iovcnt = unsigned(iov.size());
        child->done = [this, io](int error) {
            if (error != 0 && io->error == 0) {
                io->error = error;
            }
            if (--io->pending == 0) {
                thin_sent(io);
            }
        };
        backstore::IoRequest* raw = child.get();
        io->children.push_back(std::move(child));
        submit_physical(*raw);
    }
    if (--io->pending == 0) {
        thin_sent(io);
    }
}

void Volume::thin_sent(const std::shared_ptr<ThinIo>& io) {
    _thin->inflight.fetch_sub(1, std::memory_order_acq_rel);
    if (io->error == 0 && io->commit_after) {
        // A FUA write that changed the map: the map is durable before the write is acknowledged.
        thin_post([this, io] {
            auto r = thin_commit();
            int error = r ? 0 : -EIO;
            io->origin->post([this, io, error] { thin_complete(*io, error); });
        });
        return;
    }
    thin_complete(*io, io->error);
}

void Volume::thin_complete(ThinIo& io, int error) {
    backstore::IoRequest* parent = io.parent;
    auto done = std::move(parent->done);
    _completed.fetch_add(1, std::memory_order_acq_rel);
    done(error);
}

// ---- allocation status -----------------------------------------------------------------------------------

void Volume::thin_allocation(uint64_t offset, uint64_t length, net::Reactor* origin,
                             Function<void(Result<std::vector<backstore::Extent>>)> done, uint32_t device) {
    auto shared = std::make_shared<Function<void(Result<std::vector<backstore::Extent>>)>>(std::move(done));
    if (device == ~uint32_t(0)) {
        device = _thin->device;
    }
    thin_post([this, offset, length, origin, shared, device] {
        ThinState& t = *_thin;
        uint64_t cs = t.cluster_size;
        std::vector<backstore::Extent> extents;
        auto add = [&](uint64_t at, uint64_t len, bool mapped) {
            if (!extents.empty() && extents.back().mapped == mapped &&
                extents.back().offset + extents.back().length == at) {
                extents.back().length += len;
            } else {
                extents.push_back({at, len, mapped});
            }
        };
        int error = 0;
        for (uint64_t pos = offset, end = offset + length; pos < end;) {
            uint64_t vc = pos / cs;
            uint64_t base = vc * cs;
            uint64_t piece_end = std::min(end, base + cs);
            auto m = t.pool->lookup(device, vc);
            if (!m) {
                error = EIO;
                break;
            }
            for (uint64_t p = pos; p < piece_end;) {
                uint64_t g = (p - base) / granule;
                uint64_t g_end = std::min(piece_end, base + (g + 1) * granule);
                add(p, g_end - p, *m && bit((*m)->written, g));
                p = g_end;
            }
            pos = piece_end;
        }
        origin->post([shared, error, extents = std::move(extents)]() mutable {
            if (error != 0) {
                (*shared)(make_error("thin allocation lookup failed", error));
            } else {
                (*shared)(std::move(extents));
            }
        });
    });
}

// ---- snapshots, clones and their views ------------------------------------------------------------------

// A snapshot or clone of a thin space as a Device: its requests go through the space's worker and members
// like the space's own, against another device of the same pool. A snapshot's is read-only: it says so in
// its features (the attached block device and an exported LU are write-protected) and refuses writes with
// EROFS (DATA PROTECT / WRITE PROTECTED) should one arrive anyway.
class ThinViewDevice final : public backstore::Device {
public:
    ThinViewDevice(std::shared_ptr<Volume> volume, uint32_t device, std::string name, bool read_only)
        : _volume(std::move(volume)), _device(device), _name(std::move(name)), _read_only(read_only) {
        _features = _volume->features();
        _features.read_only = read_only;
        if (read_only) {
            _features.unmap = false;
            _features.write_zeroes = false;
        }
    }
    ~ThinViewDevice() override {
        ThinState& t = *_volume->_thin;
        std::lock_guard lock(t.views_mutex);
        if (auto it = t.views.find(_device); it != t.views.end() && --it->second == 0) {
            t.views.erase(it);
        }
    }
    std::string_view kind() const override { return "space"; }
    std::string describe() const override { return "space:" + _name; }
    backstore::Geometry geometry() const override { return _volume->geometry(); }
    backstore::Features features() const override { return _features; }
    uint64_t identity() const override {
        // The space's, told apart per pool device (an LU's identifiers derive from it).
        uint64_t id = 0;
        std::memcpy(&id, _volume->truth_at_open().space_uuid.data(), sizeof id);
        return id ^ (uint64_t(_device) * 0x9e3779b97f4a7c15ull);
    }
    void submit(backstore::IoRequest& request) override {
        _volume->thin_view_submit(request, _device, _read_only);
    }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        net::Reactor* reactor = net::Reactor::current();
        assert(reactor);
        uint64_t bytes = geometry().bytes();
        uint64_t start = std::min(offset, bytes);
        uint64_t end = length > bytes - start ? bytes : start + length;
        _volume->thin_allocation(start, end - start, reactor, std::move(done), _device);
    }

private:
    std::shared_ptr<Volume> _volume;
    uint32_t _device;
    std::string _name;
    bool _read_only;
    backstore::Features _features;
};

void Volume::thin_view_submit(backstore::IoRequest& request, uint32_t device, bool read_only) {
    net::Reactor* origin = net::Reactor::current();
    assert(origin && "backstore I/O is submitted on a reactor thread");
    if (read_only && request.op != backstore::IoOp::read && request.op != backstore::IoOp::flush) {
        backstore::IoRequest* r = &request;
        origin->defer([r] {
            auto done = std::move(r->done);
            done(-EROFS);
        });
        return;
    }
    if (admit(origin, request, _virtual_size, /*member_features=*/false)) {
        thin_submit(request, origin, device);
    }
}

bool Volume::thin_wait(Function<void()> job) {
    assert(net::Reactor::current() == nullptr);
    std::promise<void> done;
    auto got = done.get_future();
    {
        // A job queued before the worker is told to stop still runs; none is queued after.
        std::lock_guard lock(_thin->mutex);
        if (_thin->stopping || !_thin->worker.joinable()) {
            return false;
        }
        _thin->jobs.push_back([&] {
            job();
            done.set_value();
        });
    }
    _thin->wake.notify_one();
    got.wait();
    return true;
}

namespace {

Error closing(const std::string& space) {
    return make_error(fmt::format("space '{}' is closing", space), ESHUTDOWN);
}

Error not_thin(const std::string& space) {
    return make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", space), EOPNOTSUPP);
}

double ms_since(std::chrono::steady_clock::time_point from) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - from).count();
}

} // namespace

Result<ThinSnapshotTiming> Volume::thin_snapshot(const std::string& source, const std::string& name) {
    if (!_thin) {
        return not_thin(_truth_at_open.name);
    }
    Result<ThinSnapshotTiming> out = ThinSnapshotTiming{};
    // The commit below completes every deferred copy (docs/thin.md, "Deferred copies"): done here, while
    // the space's I/O goes on, the pause only has those made in the last moments.
    thin_drain_deferred();
    // The commit below flushes the members first (the map must not be durable before the data it points
    // at). Most of what a busy space has in the members' caches is flushed here, while its I/O still
    // flows, so that the flush inside the pause only has the last moments' writes to wait for.
    if (int error = thin_sync_io(backstore::IoOp::flush, 0, {}); error != 0) {
        return make_error(fmt::format("'{}': flushing the members: {}", name, std::strerror(-error)), -error);
    }
    auto queued = std::chrono::steady_clock::now();
    bool ran = thin_wait([&] {
        ThinState& t = *_thin;
        // From here nothing new is planned (this is the worker): the pause starts.
        auto paused = std::chrono::steady_clock::now();
        auto src = t.pool->find_device(source);
        if (!src) {
            out = make_error(fmt::format("'{}': no such device in the pool", source), ENOENT);
            return;
        }
        if (t.pool->find_device(name)) {
            out = make_error(fmt::format("'{}' exists already", name), EEXIST);
            return;
        }
        // The writes planned before land before this job ends — here, so that `create_ms` is the snapshot
        // and its commit alone (thin_commit() would wait for them too). Were one still landing once the
        // next write to its cluster is planned, the copy-on-write of that cluster could miss it.
        while (t.inflight.load(std::memory_order_acquire) != 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
        auto created = std::chrono::steady_clock::now();
        auto id = t.pool->snapshot(*src, name);
        if (!id) {
            out = id.error();
            return;
        }
        if (auto c = thin_commit(); !c) {
            // Not durable: take it back (if the superblock did land, the next commit removes it again).
            (void)t.pool->remove_device(*id);
            thin_update_stats();
            out = make_error(fmt::format("'{}': the commit failed: {}", name, c.error().message),
                             c.error().code);
            return;
        }
        out = ThinSnapshotTiming{ms_since(paused), ms_since(created)};
    });
    if (!ran) {
        return closing(_truth_at_open.name);
    }
    if (out) {
        log_info("space {}: snapshot {} of {} taken; I/O paused {:.2f} ms (queued {:.2f} ms before), created "
                 "and committed in {:.2f} ms",
                 _truth_at_open.name, name, source, out->pause_ms, ms_since(queued) - out->pause_ms,
                 out->create_ms);
    }
    return out;
}

Result<void> Volume::thin_clone(const std::string& snapshot, const std::string& name) {
    if (!_thin) {
        return not_thin(_truth_at_open.name);
    }
    Result<void> out;
    thin_drain_deferred(); // the commit below would copy them all at once otherwise
    bool ran = thin_wait([&] {
        ThinState& t = *_thin;
        auto src = t.pool->find_device(snapshot);
        if (!src) {
            out = make_error(fmt::format("'{}': no such snapshot", snapshot), ENOENT);
            return;
        }
        if (t.pool->find_device(name)) {
            out = make_error(fmt::format("'{}' exists already in the pool", name), EEXIST);
            return;
        }
        auto id = t.pool->clone(*src, name);
        if (!id) {
            out = id.error();
            return;
        }
        if (auto c = thin_commit(); !c) {
            (void)t.pool->remove_device(*id);
            out = make_error(fmt::format("'{}': the commit failed: {}", name, c.error().message),
                             c.error().code);
        }
    });
    if (!ran) {
        return closing(_truth_at_open.name);
    }
    if (out) {
        log_info("space {}: clone {} of {} made", _truth_at_open.name, name, snapshot);
    }
    return out;
}

Result<void> Volume::thin_remove(const std::string& name) {
    if (!_thin) {
        return not_thin(_truth_at_open.name);
    }
    Result<void> out;
    bool ran = thin_wait([&] {
        ThinState& t = *_thin;
        auto id = t.pool->find_device(name);
        if (!id) {
            out = make_error(fmt::format("'{}': no such snapshot or clone", name), ENOENT);
            return;
        }
        if (*id == t.device) {
            out = make_error("the space's own device is removed only with the space (destroy)", EINVAL);
            return;
        }
        {
            std::lock_guard lock(t.views_mutex);
            if (t.views.count(*id) != 0) {
                out = make_error(fmt::format("'{}' is attached or exported; detach it first", name), EBUSY);
                return;
            }
        }
        if (auto r = t.pool->remove_device(*id); !r) {
            out = r.error();
            return;
        }
        // Its clusters are free once this commit is durable (the last committed state still maps them).
        if (auto c = thin_commit(); !c) {
            out = make_error(fmt::format("'{}': removed, but the commit failed (the next one retries): {}",
                                         name, c.error().message),
                             c.error().code);
        }
        thin_update_stats();
    });
    if (!ran) {
        return closing(_truth_at_open.name);
    }
    if (out) {
        log_info("space {}: {} removed from the pool", _truth_at_open.name, name);
    }
    return out;
}

Result<std::vector<thin::DeviceInfo>> Volume::thin_devices() {
    if (!_thin) {
        return not_thin(_truth_at_open.name);
    }
    std::vector<thin::DeviceInfo> out;
    if (!thin_wait([&] { out = _thin->pool->devices(); })) {
        return closing(_truth_at_open.name);
    }
    return out;
}

Result<std::shared_ptr<backstore::Device>> Volume::thin_view(const std::string& name) {
    if (!_thin) {
        return not_thin(_truth_at_open.name);
    }
    Result<std::shared_ptr<backstore::Device>> out = make_error("unset", EINVAL);
    bool ran = thin_wait([&] {
        ThinState& t = *_thin;
        for (const thin::DeviceInfo& d : t.pool->devices()) {
            if (d.name != name) {
                continue;
            }
            {
                // Counted here, on the worker: a removal (also on the worker) sees it.
                std::lock_guard lock(t.views_mutex);
                ++t.views[d.id];
            }
            out = std::shared_ptr<backstore::Device>(std::make_shared<ThinViewDevice>(
                shared_from_this(), d.id, _truth_at_open.name + "/" + name, d.read_only));
            return;
        }
        out = make_error(fmt::format("'{}': no such snapshot or clone", name), ENOENT);
    });
    if (!ran) {
        return closing(_truth_at_open.name);
    }
    return out;
}

} // namespace ispace::volume
