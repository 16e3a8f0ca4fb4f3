// The volume's data path: requests split by the layout into per-column extents, sent to the members'
// copies, failures absorbed by the other copies. See volume.hpp for the rules.
#include "common/log.hpp"
#include "volume/checksum_io.hpp"
#include "volume/remote_device.hpp"
#include "volume/resync.hpp"
#include "volume/volume.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <utility>

namespace ispace::volume {

// One request in flight through the volume. Pooled per thread: its vectors keep their capacity, so a
// request in the steady state allocates nothing.
struct VolumeIo {
    struct Child {
        backstore::IoRequest request;
        VolumeIo* io = nullptr;
        uint32_t index = 0;
        uint32_t extent = 0;
        uint32_t slot = 0;
        uint32_t tried = 0;                   // reads: the members this extent was tried on
        std::unique_ptr<LandingSums> landing; // a large read of a checksummed space: sums as it arrives
    };

    Volume* volume = nullptr;
    backstore::IoRequest* parent = nullptr;
    net::Reactor* origin = nullptr;
    backstore::IoOp op = backstore::IoOp::read;
    uint64_t first_region = 0;
    uint64_t last_region = 0;
    bool in_bitmap = false;
    uint32_t pending = 0;
    int error = 0;
    bool member_failed = false;
    bool in_submit = false;   // completing now would complete inside submit(): defer instead
    uint64_t sums_ticket = 0; // a write of a checksummed space: the checksum pages it waits for
    std::vector<Extent> extents;
    std::vector<iovec> iovs;
    std::vector<uint32_t> iov_first; // per extent: its slice of the parent's iovec in `iovs`
    std::vector<uint32_t> iov_count;
    std::vector<Buffer> staged;      // per extent: the Buffer remote copies share (writes): a slice of
                                     // the caller's Buffer (IoRequest::data), or a copy
    std::vector<uint32_t> copies_ok; // per extent: copies that took a write
    std::vector<Child> children;

    void reset() {
        parent = nullptr;
        in_bitmap = false;
        in_submit = false;
        sums_ticket = 0;
        pending = 0;
        error = 0;
        member_failed = false;
        extents.clear();
        iovs.clear();
        iov_first.clear();
        iov_count.clear();
        for (Buffer& b : staged) {
            b.reset();
        }
        staged.clear();
        copies_ok.clear();
        children.clear();
    }
};

namespace {

constexpr size_t pool_limit = 1024;

// Reads of a checksummed space from this size on have their checksums computed as they arrive
// (LandingSums): a smaller read is still in the cache when it completes, and would pay an allocation for
// nothing.
constexpr uint64_t landing_sums_from = 64 << 10;

struct IoPool {
    std::vector<VolumeIo*> free;
    ~IoPool() {
        for (VolumeIo* io : free) {
            delete io;
        }
    }
};
thread_local IoPool pool;

VolumeIo* acquire() {
    if (pool.free.empty()) {
        return new VolumeIo;
    }
    VolumeIo* io = pool.free.back();
    pool.free.pop_back();
    return io;
}

void release(VolumeIo* io) {
    io->reset();
    if (pool.free.size() < pool_limit) {
        pool.free.push_back(io);
    } else {
        delete io;
    }
}

void complete_soon(net::Reactor* reactor, backstore::IoRequest& request, int error) {
    backstore::IoRequest* r = &request;
    reactor->defer([r, error] {
        auto done = std::move(r->done);
        done(error);
    });
}

// The n-th set bit of `mask` (n < popcount).
uint32_t nth_bit(uint32_t mask, uint32_t n) {
    for (; n > 0; --n) {
        mask &= mask - 1;
    }
    return uint32_t(std::countr_zero(mask));
}

// Sequential-write detection for the bitmap's mark-ahead (Volume::submit): writes of at least this
// size, starting at the previous one's end or at most this many write lengths past it, mark this many
// regions ahead of them.
constexpr uint64_t stream_min_write = 128 * 1024;
constexpr uint64_t stream_slack_writes = 4;
constexpr uint32_t stream_mark_ahead = 16;

bool is_write(backstore::IoOp op) {
    return op == backstore::IoOp::write || op == backstore::IoOp::unmap ||
           op == backstore::IoOp::write_zeroes;
}

} // namespace

void Volume::submit(backstore::IoRequest& request) {
    if (!_thin) {
        submit_physical(request); // a plain space: its blocks are the layout's
        return;
    }
    net::Reactor* origin = net::Reactor::current();
    assert(origin && "backstore I/O is submitted on a reactor thread");
    // The pool frees clusters itself: UNMAP and WRITE ZEROES need nothing of the members.
    if (admit(origin, request, _virtual_size, /*member_features=*/false)) {
        thin_submit(request, origin);
    }
}

bool Volume::admit(net::Reactor* origin, backstore::IoRequest& request, uint64_t size, bool member_features) {
    if (_lost.load(std::memory_order_acquire)) {
        complete_soon(origin, request, -EBADE);
        return false;
    }
    if (request.op != backstore::IoOp::flush &&
        (request.offset % _block_size != 0 || request.length % _block_size != 0 || request.offset > size ||
         request.length > size - request.offset)) {
        complete_soon(origin, request, -EINVAL);
        return false;
    }
    if (member_features && ((request.op == backstore::IoOp::unmap && !_features.unmap) ||
                            (request.op == backstore::IoOp::write_zeroes && !_features.write_zeroes))) {
        complete_soon(origin, request, -EOPNOTSUPP);
        return false;
    }
    if (request.length == 0 && request.op != backstore::IoOp::flush) {
        complete_soon(origin, request, 0);
        return false;
    }
    // Counted before the closing check, so that close() either sees it or it sees close().
    _foreground.fetch_add(1, std::memory_order_acq_rel);
    if (_closing.load(std::memory_order_acquire) || _lost.load(std::memory_order_acquire)) {
        _completed.fetch_add(1, std::memory_order_acq_rel);
        complete_soon(origin, request, _lost.load() ? -EBADE : -ESHUTDOWN);
        return false;
    }
    return true;
}

void Volume::submit_physical(backstore::IoRequest& request) {
    net::Reactor* origin = net::Reactor::current();
    assert(origin && "backstore I/O is submitted on a reactor thread");
    if (!admit(origin, request, _space_size, /*member_features=*/true)) {
        return;
    }
    if (_sums) {
        sums_submit(request, origin); // verified reads, checksummed writes (volume_checksum.cpp)
        return;
    }
    submit_layout(request, origin);
}

void Volume::submit_layout(backstore::IoRequest& request, net::Reactor* origin, uint64_t sums_ticket) {
    VolumeIo* io = acquire();
    io->sums_ticket = sums_ticket;
    io->volume = this;
    io->parent = &request;
    io->origin = origin;
    io->op = request.op;
    io->in_submit = true;
    struct Leave {
        VolumeIo* io;
        backstore::IoRequest* parent;
        ~Leave() {
            // The request may have been completed (and `io` recycled for another) by now only through a
            // deferred task, which has not run yet: `io` is still ours.
            if (io->parent == parent) {
                io->in_submit = false;
            }
        }
    } leave{io, &request};

    if (request.op == backstore::IoOp::flush) {
        uint32_t writable = writable_mask();
        io->children.reserve(_count);
        for (uint32_t slot = 0; slot < _count; ++slot) {
            if (writable & (1u << slot)) {
                auto& c = io->children.emplace_back();
                c.io = io;
                c.index = uint32_t(io->children.size() - 1);
                c.slot = slot;
                c.request.op = backstore::IoOp::flush;
            }
        }
        if (io->children.empty()) {
            complete(io, -EIO);
            return;
        }
        send_children(io);
        return;
    }

    map_range(layout(), request.offset, request.length, io->extents);
    size_t n = io->extents.size();
    // Slice the caller's iovec per extent (for reads and writes; unmap and write-zeroes carry none).
    if (request.op == backstore::IoOp::read || request.op == backstore::IoOp::write) {
        io->iov_first.resize(n);
        io->iov_count.resize(n);
        io->iovs.reserve(n + request.iovcnt);
        unsigned index = 0;
        size_t at = 0;
        for (size_t e = 0; e < n; ++e) {
            io->iov_first[e] = uint32_t(io->iovs.size());
            uint64_t left = io->extents[e].length;
            while (left > 0 && index < request.iovcnt) {
                size_t take = std::min<uint64_t>(left, request.iov[index].iov_len - at);
                io->iovs.push_back({static_cast<uint8_t*>(request.iov[index].iov_base) + at, take});
                left -= take;
                at += take;
                if (at == request.iov[index].iov_len) {
                    ++index;
                    at = 0;
                }
            }
            io->iov_count[e] = uint32_t(io->iovs.size()) - io->iov_first[e];
            if (left != 0) {
                complete(io, -EINVAL); // the iovec holds less than `length`
                return;
            }
        }
    }
    io->children.reserve(n * layout().copies);

    if (request.op == backstore::IoOp::read) {
        io->pending = uint32_t(n);
        for (uint32_t e = 0; e < n; ++e) {
            read_extent(io, e, 0);
        }
        return;
    }
    if (_bitmap) {
        io->first_region = _bitmap->region_of(request.offset);
        io->last_region = _bitmap->region_of(request.offset + request.length - 1);
        io->in_bitmap = true;
        if (request.op == backstore::IoOp::write && request.length >= stream_min_write) {
            // A write that starts where the previous large write ended, or a little past it (the
            // requests of one stream may arrive slightly out of order over several reactors),
            // continues a stream: its next regions are marked before it gets there. Random writes
            // rarely land there, and a rewrite of the same range is no stream, so they mark only what
            // they write.
            uint64_t end = request.offset + request.length;
            uint64_t previous = _stream_end.exchange(end, std::memory_order_relaxed);
            if (request.offset >= previous &&
                request.offset - previous <= stream_slack_writes * request.length) {
                _bitmap->mark_ahead(io->last_region, stream_mark_ahead);
            }
        }
        if (!_bitmap->begin_write(io->first_region, io->last_region, origin, [io](bool ok) {
                if (!ok) {
                    io->error = -EIO;
                    io->volume->finish(io);
                    return;
                }
                io->volume->start_write(io);
            })) {
            return;
        }
    }
    start_write(io);
}

void Volume::start_write(VolumeIo* io) {
    const backstore::IoRequest& parent = *io->parent;
    uint32_t writable = writable_mask();
    size_t n = io->extents.size();
    io->copies_ok.assign(n, 0);
    io->staged.resize(n);
    for (uint32_t e = 0; e < n; ++e) {
        const Extent& x = io->extents[e];
        bool any_remote = false;
        uint32_t before = uint32_t(io->children.size());
        for (uint32_t copy = 0; copy < layout().copies; ++copy) {
            uint32_t slot = member_of(layout(), x.column, copy);
            if (!(writable & (1u << slot))) {
                continue;
            }
            any_remote |= _members[slot].remote != nullptr;
            auto& c = io->children.emplace_back();
            c.io = io;
            c.index = uint32_t(io->children.size() - 1);
            c.extent = e;
            c.slot = slot;
            c.request.op = parent.op;
            c.request.offset = _members[slot].data_offset + x.member_offset;
            c.request.length = x.length;
            c.request.fua = parent.fua;
            if (parent.op == backstore::IoOp::write) {
                c.request.iov = io->iovs.data() + io->iov_first[e];
                c.request.iovcnt = io->iov_count[e];
            }
        }
        if (io->children.size() == before) {
            io->error = -EIO; // no copy of this extent can be written
        }
        if (any_remote && parent.op == backstore::IoOp::write && parent.data.size() == parent.length) {
            // The caller's Buffer holds the data (the FUSE server's receive buffer): the remote members
            // send a slice of it, kept alive by their references, and nothing is copied.
            io->staged[e] = parent.data.slice(size_t(x.space_offset - parent.offset), size_t(x.length));
        } else if (any_remote && parent.op == backstore::IoOp::write) {
            // One copy of the data for every remote member of the column (RemoteDevice sends a Buffer).
            Buffer b = Buffer::allocate(x.length);
            size_t at = 0;
            for (uint32_t i = 0; i < io->iov_count[e]; ++i) {
                const iovec& v = io->iovs[io->iov_first[e] + i];
                std::memcpy(b.data() + at, v.iov_base, v.iov_len);
                at += v.iov_len;
            }
            io->staged[e] = std::move(b);
        }
    }
    if (io->children.empty()) {
        finish(io);
        return;
    }
    send_children(io);
}

void Volume::send_children(VolumeIo* io) {
    // Count them all first: a child may complete before the last one is sent (not inside submit(), but a
    // device could complete on this reactor from an earlier deferred task).
    io->pending = uint32_t(io->children.size());
    for (auto& c : io->children) {
        c.request.done = [io, index = c.index](int error) { io->volume->child_done(io, index, error); };
        const Buffer* shared =
            io->staged.empty() || io->staged[c.extent].empty() ? nullptr : &io->staged[c.extent];
        submit_member(c.slot, c.request, shared);
    }
}

void Volume::submit_member(uint32_t slot, backstore::IoRequest& request, const Buffer* shared) {
    Member& m = _members[slot];
    m.inflight.fetch_add(1, std::memory_order_relaxed);
    if (shared && m.remote && request.op == backstore::IoOp::write) {
        m.remote->submit_shared(request, *shared);
    } else {
        m.device->submit(request);
    }
}

void Volume::read_extent(VolumeIo* io, uint32_t e, uint32_t tried) {
    const Extent& x = io->extents[e];
    int slot = pick_reader(x.column, x.space_offset, x.length, tried);
    if (slot < 0) {
        if (io->error == 0) {
            io->error = -EIO;
        }
        if (--io->pending == 0) {
            finish(io);
        }
        return;
    }
    auto& c = io->children.emplace_back();
    c.io = io;
    c.index = uint32_t(io->children.size() - 1);
    c.extent = e;
    c.slot = uint32_t(slot);
    c.tried = tried | (1u << slot);
    c.request.op = backstore::IoOp::read;
    c.request.offset = _members[slot].data_offset + x.member_offset;
    c.request.length = x.length;
    c.request.iov = io->iovs.data() + io->iov_first[e];
    c.request.iovcnt = io->iov_count[e];
    if (_sums && x.length >= landing_sums_from) {
        c.landing = std::make_unique<LandingSums>(x.space_offset / checksum_block, x.length / checksum_block);
        c.request.observer = c.landing.get();
    }
    c.request.done = [io, index = c.index](int error) { io->volume->child_done(io, index, error); };
    submit_member(c.slot, c.request, nullptr);
}

bool Volume::synced(uint32_t slot, uint64_t offset, uint64_t length) const {
    const Member& m = _members[slot];
    uint64_t below = m.synced_below.load(std::memory_order_acquire);
    if (RebuildMode(m.rebuild.load(std::memory_order_acquire)) == RebuildMode::full) {
        return offset + length <= below;
    }
    // Delta: a region the bitmap does not mark was not written while the member was away.
    if (!_bitmap) {
        return false;
    }
    for (uint64_t r = _bitmap->region_of(offset); r <= _bitmap->region_of(offset + length - 1); ++r) {
        if (_bitmap->marked(r) && (r + 1) * uint64_t(_bitmap->region_size()) > below) {
            return false;
        }
    }
    return true;
}

int Volume::pick_reader(uint32_t column, uint64_t offset, uint64_t length, uint32_t tried) const {
    uint32_t column_mask = ((1u << layout().copies) - 1) << (column * layout().copies);
    uint32_t active = active_mask() & column_mask & ~tried;
    if (active != 0 && _resync && _bitmap) {
        // A dirty region the unclean pass has not made equal yet: always the copy it copies from, so two
        // reads cannot return two different versions.
        for (uint64_t r = _bitmap->region_of(offset); r <= _bitmap->region_of(offset + length - 1); ++r) {
            if (_resync->unclean_pending(r) && _bitmap->marked(r)) {
                uint32_t lowest = uint32_t(std::countr_zero(active_mask() & column_mask));
                return (tried & (1u << lowest)) ? int(std::countr_zero(active)) : int(lowest);
            }
        }
    }
    if (active != 0) {
        // Spread reads over the copies by MiB of the space, so a sequential reader uses them all.
        uint32_t n = uint32_t(std::popcount(active));
        return int(nth_bit(active, uint32_t((offset >> 20) % n)));
    }
    // No in-sync copy left: a rebuilding one may serve what it has already received.
    uint32_t rebuilding = writable_mask() & column_mask & ~tried;
    while (rebuilding != 0) {
        uint32_t slot = uint32_t(std::countr_zero(rebuilding));
        rebuilding &= rebuilding - 1;
        if (synced(slot, offset, length)) {
            return int(slot);
        }
    }
    return -1;
}

void Volume::child_done(VolumeIo* io, uint32_t index, int error) {
    auto& c = io->children[index];
    uint32_t slot = c.slot;
    _members[slot].inflight.fetch_sub(1, std::memory_order_relaxed);
    if (io->op == backstore::IoOp::read) {
        if (error == 0) {
            if (_sums && !sums_verify(io, index)) {
                return; // a repair completes the extent
            }
            if (--io->pending == 0) {
                finish(io);
            }
            return;
        }
        member_error(slot, error, "read");
        // Another copy, if there is one (pending stays: this extent is still to be read).
        read_extent(io, c.extent, c.tried);
        return;
    }
    if (error == 0) {
        if (io->op != backstore::IoOp::flush) {
            ++io->copies_ok[c.extent];
        }
    } else if (error == -EBADE) {
        lose(slot);
        io->error = -EBADE;
    } else {
        member_error(slot, error, io->op == backstore::IoOp::flush ? "flush" : "write");
        io->member_failed = true;
    }
    if (--io->pending == 0) {
        finish(io);
    }
}

void Volume::finish(VolumeIo* io) {
    if (io->op == backstore::IoOp::flush) {
        // Good if every column still has a writable copy (the ones that failed were marked failed).
        int error = io->error;
        if (error == 0) {
            uint32_t writable = writable_mask();
            for (uint32_t column = 0; column < layout().columns(); ++column) {
                uint32_t column_mask = ((1u << layout().copies) - 1) << (column * layout().copies);
                if ((writable & column_mask) == 0) {
                    error = -EIO;
                }
            }
        }
        complete(io, error);
        return;
    }
    if (is_write(io->op)) {
        if (io->sums_ticket != 0) {
            // The checksum pages before the bitmap's count ends: a region is clean only once both the data
            // and its checksums are on every copy (docs/integrity.md, "Ordering").
            uint64_t ticket = std::exchange(io->sums_ticket, 0);
            sums_wait(ticket, io->origin, [io](int error) {
                if (error != 0 && io->error == 0) {
                    io->error = error;
                }
                io->volume->finish(io);
            });
            return;
        }
        for (uint32_t e = 0; e < io->copies_ok.size() && io->error == 0; ++e) {
            if (io->copies_ok[e] == 0) {
                io->error = -EIO; // every copy of this extent failed
            }
        }
        if (io->in_bitmap) {
            _bitmap->end_write(io->first_region, io->last_region);
            io->in_bitmap = false;
        }
        // A write is acknowledged only once the labels say who holds it: a member dropped since (by
        // this write or another) must be recorded as out before anyone is told the write is done.
        if (io->error == 0 && !labels_current()) {
            wait_labels(io->origin, [io] { io->volume->complete(io, io->error); });
            return;
        }
    }
    complete(io, io->error);
}

void Volume::complete(VolumeIo* io, int error) {
    if (io->in_submit) {
        // Reached from inside submit() (no copy to send to): complete after it returns.
        io->in_submit = false;
        io->origin->defer([io, error] { io->volume->complete(io, error); });
        return;
    }
    backstore::IoRequest* parent = io->parent;
    release(io);
    auto done = std::move(parent->done);
    // Counted before the callback: the caller may close the volume from it.
    _completed.fetch_add(1, std::memory_order_acq_rel);
    done(error);
}

// ---- block checksums: verification and repair (docs/integrity.md) ---------------------------------------

// Repairs the blocks of one extent, read from a member, that failed their checksum on the copy that served
// it: each is read from the column's other copies in turn until one matches; that one goes into the
// caller's buffer and over every copy found bad. A block no copy holds intact is reported to `done` (a
// read fails with EIO: MEDIUM ERROR, UNRECOVERED READ ERROR, rather than return wrong data). The caller
// keeps writers out meanwhile (a read's range lock; a resync window's region lock).
struct ChecksumRepair {
    Volume* v = nullptr;
    Extent x;
    const iovec* dest = nullptr; // the extent's data, as read from first_bad
    int dest_count = 0;
    Function<void(bool intact)> done;
    bool intact = true;
    std::vector<uint64_t> blocks; // layout blocks to repair
    uint32_t first_bad = 0;       // the slot that served the extent
    size_t next = 0;
    uint32_t tried = 0; // for the current block
    uint32_t bad = 0;
    Buffer buffer = Buffer::allocate(checksum_block);
    iovec iov{};
    backstore::IoRequest request;
    std::atomic<uint32_t> writes_left{0};
    std::vector<std::unique_ptr<backstore::IoRequest>> writes;
    std::vector<iovec> write_iov;

    uint64_t member_offset(uint32_t slot, uint64_t block) const {
        return v->_members[slot].data_offset + x.member_offset + (block * checksum_block - x.space_offset);
    }

    void start_block() {
        tried = bad = 1u << first_bad;
        try_copy();
    }

    void try_copy() {
        uint64_t block = blocks[next];
        int slot = v->pick_reader(x.column, block * checksum_block, checksum_block, tried);
        if (slot < 0) {
            log_error(
                "space {}: block at layout offset {} has no copy that matches its checksum (reads of it "
                "fail with a medium error)",
                v->_truth_at_open.name, block * checksum_block);
            intact = false;
            step();
            return;
        }
        tried |= 1u << slot;
        iov = {buffer.data(), checksum_block};
        request = {};
        request.op = backstore::IoOp::read;
        request.offset = member_offset(uint32_t(slot), block);
        request.length = checksum_block;
        request.iov = &iov;
        request.iovcnt = 1;
        request.done = [this, slot](int error) { read_done(uint32_t(slot), error); };
        v->submit_member(uint32_t(slot), request, nullptr);
    }

    void read_done(uint32_t slot, int error) {
        v->_members[slot].inflight.fetch_sub(1, std::memory_order_relaxed);
        uint64_t block = blocks[next];
        if (error != 0) {
            v->member_error(slot, error, "read");
            try_copy();
            return;
        }
        if (block_checksum(buffer.data(), block) != v->_sums->get(block)) {
            bad |= 1u << slot;
            v->sums_count_error(slot);
            try_copy();
            return;
        }
        // Good: into the caller's buffer, and over the bad copies still in service.
        copy_to_iov(dest, dest_count, block * checksum_block - x.space_offset, buffer.data(), checksum_block);
        uint32_t targets = bad & v->writable_mask();
        writes.clear();
        write_iov.assign(size_t(std::popcount(targets)), iovec{buffer.data(), checksum_block});
        writes_left.store(uint32_t(std::popcount(targets)) + 1);
        size_t i = 0;
        for (uint32_t t = targets; t != 0; t &= t - 1) {
            uint32_t target = uint32_t(std::countr_zero(t));
            auto w = std::make_unique<backstore::IoRequest>();
            w->op = backstore::IoOp::write;
            w->offset = member_offset(target, block);
            w->length = checksum_block;
            w->iov = &write_iov[i++];
            w->iovcnt = 1;
            w->done = [this, target, block](int error) {
                v->_members[target].inflight.fetch_sub(1, std::memory_order_relaxed);
                if (error != 0) {
                    v->member_error(target, error, "write");
                } else {
                    log_warn("space {}: {}: block at layout offset {} failed its checksum; rewritten from "
                             "a good copy",
                             v->_truth_at_open.name, v->_members[target].url, block * checksum_block);
                }
                written();
            };
            writes.push_back(std::move(w));
        }
        for (auto& w : writes) {
            uint32_t target = uint32_t(std::countr_zero(targets));
            targets &= targets - 1;
            v->submit_member(target, *w, nullptr);
        }
        written();
    }

    void written() {
        if (writes_left.fetch_sub(1) == 1) {
            step();
        }
    }

    void step() {
        if (++next < blocks.size()) {
            start_block();
            return;
        }
        auto finished = std::move(done);
        bool ok = intact;
        delete this;
        finished(ok);
    }
};

bool Volume::sums_verify(VolumeIo* io, uint32_t index) {
    const auto& c = io->children[index];
    return sums_check(io->extents[c.extent], c.slot, io->iovs.data() + io->iov_first[c.extent],
                      int(io->iov_count[c.extent]), c.landing.get(), [this, io](bool intact) {
                          if (!intact) {
                              io->error = -EIO;
                          }
                          if (--io->pending == 0) {
                              finish(io);
                          }
                      });
}

bool Volume::sums_check(const Extent& x, uint32_t slot, const iovec* iov, int iovcnt,
                        const LandingSums* landed, Function<void(bool intact)> done) {
    assert(x.space_offset % checksum_block == 0 && x.length % checksum_block == 0);
    uint64_t first = x.space_offset / checksum_block;
    thread_local std::vector<uint32_t> sums;
    sums.resize(x.length / checksum_block);
    if (landed == nullptr || !landed->finish(sums.data())) {
        block_checksums(iov, iovcnt, first, sums.size(), sums.data());
    }
    ChecksumRepair* repair = nullptr;
    for (uint64_t i = 0; i < sums.size(); ++i) {
        uint32_t stored = _sums->get(first + i);
        if (stored == 0 || sums[i] == stored) {
            continue;
        }
        sums_count_error(slot);
        if (!repair) {
            repair = new ChecksumRepair;
            repair->v = this;
            repair->x = x;
            repair->dest = iov;
            repair->dest_count = iovcnt;
            repair->done = std::move(done);
            repair->first_bad = slot;
        }
        repair->blocks.push_back(first + i);
    }
    if (!repair) {
        return true;
    }
    repair->start_block();
    return false;
}

} // namespace ispace::volume
