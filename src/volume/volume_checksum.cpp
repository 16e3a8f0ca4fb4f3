// Block checksums (docs/integrity.md): the table, the range lock, the page writer, what a request does
// before and after the layout path, and the table at open (loaded, torn writes resolved, copied to members
// that missed changes). The verification of reads and the repair of a bad copy are in volume_io.cpp, where
// a read's extents are; the scrub is in volume_scrub.cpp.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "volume/checksum_io.hpp"
#include "volume/checksum_page.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <new>
#include <span>
#include <tuple>
#include <vector>

namespace ispace::volume {

namespace {

uint32_t seed_of(uint64_t block) {
    return uint32_t(block) ^ uint32_t(block >> 32);
}

uint32_t never_zero(uint32_t crc) {
    return crc == 0 ? 1 : crc;
}

} // namespace

uint32_t block_checksum(const uint8_t* data, uint64_t block) {
    return never_zero(label_crc32c(data, checksum_block, seed_of(block)));
}

void block_checksums(const iovec* iov, int iovcnt, uint64_t first, uint64_t count, uint32_t* out) {
    int i = 0;
    uint64_t at = 0; // in iov[i]
    for (uint64_t b = 0; b < count; ++b) {
        uint32_t crc = seed_of(first + b);
        uint64_t left = checksum_block;
        while (left > 0 && i < iovcnt) {
            uint64_t n = std::min<uint64_t>(iov[i].iov_len - at, left);
            crc = label_crc32c(static_cast<const uint8_t*>(iov[i].iov_base) + at, n, crc);
            left -= n;
            at += n;
            if (at == iov[i].iov_len) {
                ++i;
                at = 0;
            }
        }
        out[b] = never_zero(crc);
    }
}

LandingSums::LandingSums(uint64_t first_block, uint64_t count)
    : _first(first_block), _crc(count), _have(count, 0) {
    for (uint64_t b = 0; b < count; ++b) {
        _crc[b] = seed_of(first_block + b);
    }
}

void LandingSums::landed(uint64_t offset, const uint8_t* data, size_t length) {
    while (length > 0 && !_broken) {
        uint64_t b = offset / checksum_block;
        uint32_t at = uint32_t(offset % checksum_block);
        if (b >= _crc.size() || _have[b] != at) {
            _broken = true; // outside the read, landing again, or ahead of a gap
            return;
        }
        size_t n = std::min<size_t>(length, checksum_block - at);
        _crc[b] = label_crc32c(data, n, _crc[b]);
        _have[b] += uint32_t(n);
        offset += n;
        data += n;
        length -= n;
    }
}

bool LandingSums::finish(uint32_t* out) const {
    if (_broken) {
        return false;
    }
    for (size_t b = 0; b < _crc.size(); ++b) {
        if (_have[b] != checksum_block) {
            return false;
        }
        out[b] = never_zero(_crc[b]);
    }
    return true;
}

void copy_to_iov(const iovec* iov, int iovcnt, uint64_t skip, const uint8_t* from, uint64_t length) {
    for (int i = 0; i < iovcnt && length > 0; ++i) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        uint64_t n = std::min<uint64_t>(iov[i].iov_len - skip, length);
        std::memcpy(static_cast<uint8_t*>(iov[i].iov_base) + skip, from, n);
        from += n;
        length -= n;
        skip = 0;
    }
}

void copy_from_iov(const iovec* iov, int iovcnt, uint64_t skip, uint8_t* to, uint64_t length) {
    for (int i = 0; i < iovcnt && length > 0; ++i) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        uint64_t n = std::min<uint64_t>(iov[i].iov_len - skip, length);
        std::memcpy(to, static_cast<const uint8_t*>(iov[i].iov_base) + skip, n);
        to += n;
        length -= n;
        skip = 0;
    }
}

ChecksumState::ChecksumState(uint64_t blocks_, uint64_t reach_, uint64_t area_offset_,
                             ChecksumPageFormat format_)
    : blocks(blocks_), reach(std::max(blocks_, reach_)), area_offset(area_offset_), format(format_),
      per_page(checksum_entries_per_page(format_)) {
    pages = pages_for(blocks);
    page_dirty.assign(pages_for(reach), 0);
    // Zero-filled pages on first touch: a space that may grow fourfold costs memory only for what it is.
    void* p = ::mmap(nullptr, std::max<uint64_t>(reach * 4, 1), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        throw std::bad_alloc();
    }
    _table = static_cast<uint32_t*>(p);
}

ChecksumState::~ChecksumState() {
    ::munmap(_table, std::max<uint64_t>(reach * 4, 1));
}

void ChecksumState::encode_page(uint64_t page, uint8_t* out) const {
    std::memset(out, 0, checksum_page_bytes);
    uint64_t first = page * per_page;
    uint64_t end = std::min(blocks, first + per_page);
    for (uint64_t b = first; b < end; ++b) {
        set_checksum_page_entry(out, b - first, get(b));
    }
    seal_checksum_page(format, page, out);
}

bool ChecksumState::lock(Range range, net::Reactor* origin, Function<void()>& go) {
    std::lock_guard guard(_lock_mutex);
    bool blocked =
        std::any_of(_held.begin(), _held.end(), [&](const Range& h) { return h.conflicts(range); }) ||
        std::any_of(_queued.begin(), _queued.end(),
                    [&](const Queued& q) { return q.range.conflicts(range); });
    if (blocked) {
        _queued.push_back({range, origin, std::move(go)});
        return false;
    }
    _held.push_back(range);
    return true;
}

void ChecksumState::unlock(Range range) {
    std::vector<Queued> granted;
    {
        std::lock_guard guard(_lock_mutex);
        auto it = std::find_if(_held.begin(), _held.end(), [&](const Range& h) {
            return h.first == range.first && h.last == range.last && h.exclusive == range.exclusive;
        });
        assert(it != _held.end());
        if (it != _held.end()) {
            *it = _held.back();
            _held.pop_back();
        }
        // In arrival order: one that conflicts with something held, or with an earlier one still waiting,
        // waits on.
        for (size_t i = 0; i < _queued.size();) {
            const Range& r = _queued[i].range;
            bool blocked =
                std::any_of(_held.begin(), _held.end(), [&](const Range& h) { return h.conflicts(r); });
            for (size_t j = 0; j < i && !blocked; ++j) {
                blocked = _queued[j].range.conflicts(r);
            }
            if (blocked) {
                ++i;
                continue;
            }
            _held.push_back(r);
            granted.push_back(std::move(_queued[i]));
            _queued.erase(_queued.begin() + long(i));
        }
    }
    for (Queued& q : granted) {
        q.origin->post(std::move(q.go));
    }
}

// ---- requests --------------------------------------------------------------------------------------------

namespace {

// A read or write that does not cover whole 4 KiB blocks: done as a read of the whole blocks into a
// bounce buffer (verified like any read), then for a write the caller's bytes merged in and the whole
// blocks written with their new checksums. The range lock makes the read-modify-write atomic.
struct Widened {
    backstore::IoRequest* outer = nullptr;
    net::Reactor* origin = nullptr;
    uint64_t start = 0;
    Buffer bounce;
    iovec iov{};
    backstore::IoRequest inner;
};

} // namespace

void Volume::sums_submit(backstore::IoRequest& request, net::Reactor* origin) {
    if (request.op == backstore::IoOp::flush) {
        submit_layout(request, origin);
        return;
    }
    ChecksumState::Range range{request.offset / checksum_block,
                               (request.offset + request.length - 1) / checksum_block,
                               request.op != backstore::IoOp::read};
    // The caller's completion frees the range first.
    auto done = std::move(request.done);
    request.done = [sums = _sums.get(), range, done = std::move(done)](int error) mutable {
        sums->unlock(range);
        done(error);
    };
    backstore::IoRequest* r = &request;
    Function<void()> go = [this, r, origin] { sums_start(*r, origin); };
    if (_sums->lock(range, origin, go)) {
        go();
    }
}

void Volume::sums_start(backstore::IoRequest& request, net::Reactor* origin) {
    uint64_t first = request.offset / checksum_block;
    uint64_t last = (request.offset + request.length - 1) / checksum_block;
    bool whole = request.offset % checksum_block == 0 && request.length % checksum_block == 0;
    switch (request.op) {
    case backstore::IoOp::read:
        if (whole) {
            submit_layout(request, origin); // verified as its extents arrive (sums_verify)
            return;
        }
        break;
    case backstore::IoOp::write:
        if (whole) {
            // The checksums change in memory now (the range lock keeps readers of these blocks out) and
            // their pages go to the members alongside the data; the write is acknowledged once both are
            // there (finish() waits for the ticket).
            thread_local std::vector<uint32_t> sums;
            sums.resize(last + 1 - first);
            block_checksums(request.iov, int(request.iovcnt), first, sums.size(), sums.data());
            for (uint64_t b = first; b <= last; ++b) {
                _sums->set(b, sums[b - first]);
            }
            submit_layout(request, origin, sums_mark(first, last, request.fua));
            return;
        }
        break;
    default:
        // UNMAP, WRITE ZEROES: what the members hold there afterwards is theirs to say; those blocks are
        // not verified until they are written again.
        for (uint64_t b = first; b <= last; ++b) {
            _sums->set(b, 0);
        }
        submit_layout(request, origin, sums_mark(first, last, request.fua));
        return;
    }
    auto* w = new Widened;
    w->outer = &request;
    w->origin = origin;
    w->start = first * checksum_block;
    uint64_t length = (last + 1 - first) * checksum_block;
    w->bounce = Buffer::allocate(length);
    w->iov = {w->bounce.data(), length};
    w->inner.op = backstore::IoOp::read;
    w->inner.offset = w->start;
    w->inner.length = length;
    w->inner.iov = &w->iov;
    w->inner.iovcnt = 1;
    auto finish_outer = [this](Widened* w, int error) {
        backstore::IoRequest* outer = w->outer;
        delete w;
        auto done = std::move(outer->done);
        _completed.fetch_add(1, std::memory_order_acq_rel); // the outer request, admitted in submit
        done(error);
    };
    w->inner.done = [this, w, finish_outer, first, last](int error) {
        backstore::IoRequest& outer = *w->outer;
        uint64_t skip = outer.offset - w->start;
        if (error != 0) {
            finish_outer(w, error);
            return;
        }
        if (outer.op == backstore::IoOp::read) {
            copy_to_iov(outer.iov, int(outer.iovcnt), 0, w->bounce.data() + skip, outer.length);
            finish_outer(w, 0);
            return;
        }
        copy_from_iov(outer.iov, int(outer.iovcnt), 0, w->bounce.data() + skip, outer.length);
        for (uint64_t b = first; b <= last; ++b) {
            _sums->set(b, block_checksum(w->bounce.data() + (b - first) * checksum_block, b));
        }
        w->inner.op = backstore::IoOp::write;
        w->inner.fua = outer.fua;
        w->inner.done = [w, finish_outer](int error) { finish_outer(w, error); };
        if (admit(w->origin, w->inner, _space_size, true)) {
            submit_layout(w->inner, w->origin, sums_mark(first, last, outer.fua));
        }
    };
    if (admit(origin, w->inner, _space_size, true)) {
        submit_layout(w->inner, origin);
    }
}

void Volume::sums_count_error(uint32_t slot) {
    Member& m = _members[slot];
    // With one copy there is nothing to fail over to: failing the member would fail every block of it, not
    // only the bad ones. It is counted, and its bad blocks fail their reads.
    if (m.checksum_errors.fetch_add(1, std::memory_order_acq_rel) + 1 == checksum_error_limit &&
        layout().redundant()) {
        log_error("space {}: {}: {} blocks read from it failed their checksum; it is failed and stays out "
                  "until it is replaced",
                  _truth_at_open.name, m.url, checksum_error_limit);
        member_error(slot, -EIO, "read (too many checksum errors)");
    }
}

// ---- the page writer -------------------------------------------------------------------------------------

uint64_t Volume::sums_mark(uint64_t first, uint64_t last, bool fua) {
    ChecksumState& s = *_sums;
    std::lock_guard guard(s.page_mutex);
    for (uint64_t p = s.page_of(first); p <= s.page_of(last); ++p) {
        if (!s.page_dirty[p]) {
            s.page_dirty[p] = 1;
            s.dirty_list.push_back(p);
        }
    }
    s.fua |= fua;
    uint64_t ticket = ++s.requested;
    if (!s.writing && !s.kick_posted) {
        s.kick_posted = true;
        _home.post([this] { sums_kick(); });
    }
    return ticket;
}

uint64_t Volume::sums_mark_all() {
    if (_sums->blocks == 0) {
        return 0;
    }
    return sums_mark(0, _sums->blocks - 1, false);
}

uint64_t Volume::sums_extend(uint64_t blocks) {
    ChecksumState& s = *_sums;
    uint64_t first = 0;
    {
        std::lock_guard guard(s.page_mutex);
        assert(blocks > s.blocks && blocks <= s.reach);
        first = s.blocks;
        s.blocks = blocks;
        s.pages = s.pages_for(blocks);
    }
    // From the page that held the old last block (its tail, zero in memory, goes out too) to the new end.
    return sums_mark(first, blocks - 1, true);
}

void Volume::sums_wait(uint64_t ticket, net::Reactor* origin, Function<void(int)> done) {
    ChecksumState& s = *_sums;
    int error = 0;
    {
        std::lock_guard guard(s.page_mutex);
        if (s.failed_error == 0 && s.durable < ticket) {
            s.waiters.push_back({ticket, origin, std::move(done)});
            return;
        }
        error = s.failed_error;
    }
    done(error);
}

bool Volume::sums_idle() const {
    {
        std::lock_guard guard(_sums->scrub_mutex);
        if (_sums->scrub.running && !_sums->scrub_idle) {
            return false; // a window in flight; the next one sees _closing and stops (a paused one has none)
        }
    }
    std::lock_guard guard(_sums->page_mutex);
    return !_sums->writing && _sums->dirty_list.empty();
}

namespace {

// One round of table pages: runs of consecutive dirty pages (up to 1 MiB each), each to every writable
// member.
struct PageBatch {
    struct Write {
        backstore::IoRequest request;
        iovec iov{};
    };
    uint64_t ticket = 0;
    std::vector<Buffer> runs;
    std::unique_ptr<std::atomic<uint32_t>[]> run_ok; // members that took each run
    std::vector<std::unique_ptr<Write>> writes;
    std::atomic<uint32_t> left{0};
};

} // namespace

void Volume::sums_kick() {
    ChecksumState& s = *_sums;
    std::vector<uint64_t> pages;
    bool fua = false;
    auto batch = std::make_shared<PageBatch>();
    {
        std::lock_guard guard(s.page_mutex);
        s.kick_posted = false;
        if (s.writing || s.dirty_list.empty()) {
            return;
        }
        s.writing = true;
        ++s.rounds;
        pages.swap(s.dirty_list);
        for (uint64_t p : pages) {
            s.page_dirty[p] = 0;
        }
        fua = std::exchange(s.fua, false);
        batch->ticket = s.requested;
    }
    // Snapshot the pages after taking them: every checksum set before its ticket was handed out is in.
    std::sort(pages.begin(), pages.end());
    std::vector<std::pair<uint64_t, uint64_t>> runs; // first page, count
    for (uint64_t p : pages) {
        if (!runs.empty() && runs.back().first + runs.back().second == p && runs.back().second < 256) {
            ++runs.back().second;
        } else {
            runs.push_back({p, 1});
        }
    }
    uint32_t writable = writable_mask();
    batch->run_ok.reset(new std::atomic<uint32_t>[runs.size()]);
    for (size_t r = 0; r < runs.size(); ++r) {
        batch->run_ok[r].store(0);
    }
    for (const auto& [first, count] : runs) {
        Buffer b = Buffer::allocate(count * 4096);
        for (uint64_t i = 0; i < count; ++i) {
            s.encode_page(first + i, b.data() + i * 4096);
        }
        batch->runs.push_back(std::move(b));
    }
    auto done = [this, batch] {
        ChecksumState& s = *_sums;
        std::vector<ChecksumState::Waiter> ready;
        {
            std::lock_guard guard(s.page_mutex);
            s.writing = false;
            for (size_t r = 0; r < batch->runs.size(); ++r) {
                if (batch->run_ok[r].load() == 0 && s.failed_error == 0) {
                    // No member holds these checksums: nothing written from now on can be trusted.
                    s.failed_error = -EIO;
                }
            }
            s.durable = std::max(s.durable, batch->ticket);
            for (size_t i = 0; i < s.waiters.size();) {
                if (s.failed_error != 0 || s.waiters[i].ticket <= s.durable) {
                    ready.push_back(std::move(s.waiters[i]));
                    s.waiters[i] = std::move(s.waiters.back());
                    s.waiters.pop_back();
                } else {
                    ++i;
                }
            }
        }
        int error = s.failed_error;
        for (auto& w : ready) {
            w.origin->post([done = std::move(w.done), error]() mutable { done(error); });
        }
        _home.post([this] { sums_kick(); });
    };
    for (size_t r = 0; r < runs.size(); ++r) {
        for (uint32_t slot = 0; slot < _count; ++slot) {
            if (!(writable & (1u << slot))) {
                continue;
            }
            auto w = std::make_unique<PageBatch::Write>();
            w->iov = {batch->runs[r].data(), batch->runs[r].size()};
            w->request.op = backstore::IoOp::write;
            w->request.offset = s.area_offset + runs[r].first * 4096;
            w->request.length = batch->runs[r].size();
            w->request.iov = &w->iov;
            w->request.iovcnt = 1;
            w->request.fua = fua;
            batch->writes.push_back(std::move(w));
        }
    }
    if (batch->writes.empty()) {
        done();
        return;
    }
    batch->left.store(uint32_t(batch->writes.size()));
    size_t index = 0;
    for (size_t r = 0; r < runs.size(); ++r) {
        for (uint32_t slot = 0; slot < _count; ++slot) {
            if (!(writable & (1u << slot))) {
                continue;
            }
            PageBatch::Write& w = *batch->writes[index++];
            w.request.done = [this, batch, r, slot, done](int error) {
                // Counted out as submit_member counted it in: a count left behind kept replace_member
                // refusing the slot ("requests are still in flight to it") for good once a page had gone to
                // it, so a failed member of a space held open could never be replaced.
                _members[slot].inflight.fetch_sub(1, std::memory_order_relaxed);
                if (error != 0) {
                    member_error(slot, error, "checksum write");
                } else {
                    batch->run_ok[r].fetch_add(1);
                }
                if (batch->left.fetch_sub(1) == 1) {
                    _home.post(done);
                }
            };
            submit_member(slot, w.request, &batch->runs[r]);
        }
    }
}

// ---- open ------------------------------------------------------------------------------------------------

Result<void> Volume::sums_open(const Label& truth, bool unclean) {
    assert(net::Reactor::current() == nullptr);
    const MetadataArea* area = truth.area(AreaType::checksums);
    ChecksumPageFormat format = truth.checksum_page_format();
    if (area == nullptr || _space_size % checksum_block != 0 ||
        area->length < checksum_area_bytes(_space_size, format)) {
        return make_error(fmt::format("space '{}': the checksums area does not cover the space", truth.name),
                          EINVAL);
    }
    // What the area holds beyond the space is room to grow (docs/integrity.md, "Growing"); the memory for
    // it is only reserved. A label may claim a larger area than this version keeps in memory: only what it
    // keeps is used.
    // (Counted in pages, not bytes of reach: a label's area length is bounded only by its member's size.)
    uint64_t reach = std::min(area->length / checksum_page_bytes * checksum_entries_per_page(format),
                              max_checksum_table / 4);
    auto sums = std::make_unique<ChecksumState>(_space_size / checksum_block, reach, area->offset, format);
    std::vector<uint8_t> image(sums->pages * checksum_page_bytes);
    // From an in-sync member: every checksum page write reached each of them (a member that failed one was
    // failed). A rebuilding member may have missed some; it gets the whole table below.
    bool loaded = false;
    uint32_t from = 0;
    for (uint32_t s = 0; s < _count && !loaded; ++s) {
        Member& m = _members[s];
        if (!m.device || MemberState(m.state.load()) != MemberState::active) {
            continue;
        }
        if (int error = member_io(_home, *m.device, backstore::IoOp::read, area->offset, image); error != 0) {
            member_error(s, error, "checksums read");
            continue;
        }
        loaded = true;
        from = s;
    }
    if (!loaded) {
        return make_error(fmt::format("space '{}': no member's checksums could be read", truth.name), EIO);
    }
    sums_settle_copies(image, sums->blocks, from, area->offset, format, truth.name);
    for (uint64_t b = 0; b < sums->blocks; ++b) {
        sums->set(b, checksum_page_entry(image.data() + sums->page_of(b) * checksum_page_bytes,
                                         b % sums->per_page));
    }
    // On the home reactor, with the scrub record: a member that failed a read above has its failure
    // handled there meanwhile, and that work reads _sums (schedule_retry), and writes labels that carry
    // the scrub record from it (scrub_to_book) — which must be the one the labels hold, not an empty one.
    on_home([&] {
        _sums = std::move(sums);
        scrub_from_label(truth);
    });
    bool rewrite = false;
    for (uint32_t s = 0; s < _count; ++s) {
        rewrite |= MemberState(_members[s].state.load()) == MemberState::rebuilding;
    }
    // After an unclean stop a write may have been torn: data on some copies and not others, its checksum
    // page on some members or none. The bitmap marks every region where that can be. In each, per block:
    // the copy that matches the checksum wins; when none does (the data landed, its page did not), the
    // lowest in-sync copy wins as the unclean resync would choose; then the checksum is recomputed from the
    // winner and the others are made equal to it. Done here, before any read can see the region.
    if (unclean && _bitmap) {
        uint64_t rs = _bitmap->region_size();
        uint64_t resolved = 0, rewritten = 0;
        std::vector<Extent> extents;
        for (uint64_t r = 0; r * rs < _space_size; ++r) {
            if (!_bitmap->marked(r)) {
                continue;
            }
            extents.clear();
            map_range(layout(), r * rs, std::min(rs, _space_size - r * rs), extents);
            for (const Extent& x : extents) {
                ExtentCopies read = read_in_sync_copies(x);
                const auto& copies = read.data;
                for (uint64_t i = 0; i * checksum_block < x.length && !copies.empty(); ++i) {
                    uint64_t block = x.space_offset / checksum_block + i;
                    uint64_t at = i * checksum_block;
                    uint32_t stored = _sums->get(block);
                    size_t winner = 0;
                    for (size_t k = 0; k < copies.size() && stored != 0; ++k) {
                        if (block_checksum(copies[k].data() + at, block) == stored) {
                            winner = k;
                            break;
                        }
                    }
                    uint32_t sum = block_checksum(copies[winner].data() + at, block);
                    resolved += sum != stored;
                    _sums->set(block, sum);
                    rewritten += equalize_block(x, read, winner, at);
                }
            }
        }
        if (resolved + rewritten > 0) {
            log_info("space {}: after an unclean stop, {} checksums were recomputed and {} block copies made "
                     "equal in the dirty regions",
                     truth.name, resolved, rewritten);
        }
        rewrite |= resolved > 0;
    }
    if (rewrite) {
        for (uint64_t p = 0; p < _sums->pages; ++p) {
            _sums->encode_page(p, image.data() + p * 4096);
        }
        for (uint32_t s = 0; s < _count; ++s) {
            Member& m = _members[s];
            if (!(writable_mask() & (1u << s))) {
                continue;
            }
            if (int error = member_io(_home, *m.device, backstore::IoOp::write, area->offset, image, true);
                error != 0) {
                member_error(s, error, "checksums write");
            }
        }
    }
    return {};
}

// The copies of the table on the in-sync members are equal unless one rotted, or a page write reached some
// members and not others when the holder died (the unclean pass in sums_open settles those blocks again
// from the data). Trusting one member's copy blindly would turn one flipped bit in its table into a
// MEDIUM ERROR for a block whose every copy is good, and a scrub that calls them unrepairable. So every
// in-sync copy is compared with the one loaded (1 MiB at a time: a large table is not held twice). A page
// that fails its own check (checksum_page.hpp: rot, a torn write, a page at the wrong place) is lost on
// that member: the first sound copy of it is taken, and when no member has one it is made again from the
// data (sums_rebuild_page). Each entry where sound copies differ is settled against the data: the first
// value (loaded copy first) that some copy of the block matches wins; when none does, the loaded copy's
// value stays (the reads and the scrub report the block). Members whose pages differ from the result, or
// failed their check, get the settled pages.
void Volume::sums_settle_copies(std::vector<uint8_t>& image, uint64_t blocks, uint32_t from,
                                uint64_t area_offset, ChecksumPageFormat format, const std::string& name) {
    const uint64_t per_page = checksum_entries_per_page(format);
    constexpr uint64_t chunk_pages = 256;
    uint64_t pages = image.size() / checksum_page_bytes;
    auto page_at = [&image](uint64_t page) { return image.data() + page * checksum_page_bytes; };
    // A member's copy of a page that is not what `image` holds: one that failed its check (`sound` false;
    // its bytes are not kept), or a sound one that differs.
    struct Copy {
        uint32_t slot;
        uint64_t page;
        bool sound;
        std::vector<uint8_t> content;
    };
    std::vector<Copy> copies;
    std::vector<uint8_t> unsound(pages, 0); // no sound copy of the page seen yet
    uint64_t bad_pages = 0;
    // A line per bad page, up to a point: a member whose whole area was overwritten has tens of thousands
    // (the summary at the end counts them all).
    constexpr uint64_t bad_pages_named = 16;
    auto bad_page = [&](uint32_t slot, uint64_t page) {
        if (bad_pages < bad_pages_named) {
            log_warn("space {}: {}'s copy of checksum table page {} (layout blocks {} to {}) fails its own "
                     "check; it is not used{}",
                     name, _members[slot].url, page, page * per_page,
                     std::min(blocks, (page + 1) * per_page) - 1,
                     bad_pages + 1 == bad_pages_named ? " (further ones are only counted)" : "");
        }
        copies.push_back({slot, page, false, {}});
        ++bad_pages;
    };
    for (uint64_t p = 0; p < pages; ++p) {
        if (!checksum_page_sound(format, p, page_at(p))) {
            unsound[p] = 1;
            bad_page(from, p);
        }
    }
    std::vector<uint8_t> chunk;
    for (uint32_t s = 0; s < _count; ++s) {
        if (s == from || !in_sync(s)) {
            continue;
        }
        for (uint64_t first = 0; first < pages; first += chunk_pages) {
            uint64_t n = std::min(chunk_pages, pages - first);
            chunk.resize(n * checksum_page_bytes);
            if (int error = member_io(_home, *_members[s].device, backstore::IoOp::read,
                                      area_offset + first * checksum_page_bytes, chunk);
                error != 0) {
                member_error(s, error, "checksums read");
                break;
            }
            for (uint64_t i = 0; i < n; ++i) {
                uint64_t page = first + i;
                const uint8_t* theirs = chunk.data() + i * checksum_page_bytes;
                if (!checksum_page_sound(format, page, theirs)) {
                    bad_page(s, page);
                } else if (unsound[page]) {
                    // The first sound copy stands for the page from now on, as if it had been loaded.
                    std::memcpy(page_at(page), theirs, checksum_page_bytes);
                    unsound[page] = 0;
                } else if (std::memcmp(theirs, page_at(page), checksum_page_bytes) != 0) {
                    copies.push_back(
                        {s, page, true, std::vector<uint8_t>(theirs, theirs + checksum_page_bytes)});
                }
            }
        }
    }
    if (copies.empty()) {
        return;
    }
    // Page by page (a page's copies are at most one per member).
    std::sort(copies.begin(), copies.end(), [](const Copy& a, const Copy& b) {
        return std::tie(a.page, a.slot) < std::tie(b.page, b.slot);
    });
    uint64_t settled_pages = 0, entries = 0, unsettled = 0, rebuilt = 0, guessed = 0, rewritten = 0;
    std::vector<uint8_t> loaded(checksum_page_bytes);
    std::vector<Extent> extents;
    for (size_t g = 0; g < copies.size();) {
        uint64_t page = copies[g].page;
        size_t end = g;
        bool differs = false;
        while (end < copies.size() && copies[end].page == page) {
            differs |= copies[end].sound;
            ++end;
        }
        uint8_t* ours = page_at(page);
        std::memcpy(loaded.data(), ours, checksum_page_bytes); // what members not in this group hold
        if (unsound[page]) {
            guessed += sums_rebuild_page(ours, page, blocks, area_offset, format, name);
            ++rebuilt;
        } else if (differs) {
            ++settled_pages;
            for (uint64_t e = 0; e < per_page; ++e) {
                uint64_t block = page * per_page + e;
                if (block >= blocks) {
                    break;
                }
                std::vector<uint32_t> candidates{checksum_page_entry(ours, e)};
                for (size_t i = g; i < end; ++i) {
                    uint32_t v = copies[i].sound ? checksum_page_entry(copies[i].content.data(), e) : 0;
                    if (copies[i].sound &&
                        std::find(candidates.begin(), candidates.end(), v) == candidates.end()) {
                        candidates.push_back(v);
                    }
                }
                if (candidates.size() == 1) {
                    continue;
                }
                ++entries;
                // The block's data, from every in-sync copy of its column (one that fails the read is
                // failed, as at any read).
                std::vector<uint32_t> actual;
                extents.clear();
                map_range(layout(), block * checksum_block, checksum_block, extents);
                for (const Extent& x : extents) {
                    for (const auto& bytes : read_in_sync_copies(x).data) {
                        actual.push_back(block_checksum(bytes.data(), block));
                    }
                }
                auto winner = std::find_if(candidates.begin(), candidates.end(), [&](uint32_t v) {
                    return v != 0 && std::find(actual.begin(), actual.end(), v) != actual.end();
                });
                if (winner == candidates.end()) {
                    ++unsettled;
                    continue; // the loaded value stays
                }
                set_checksum_page_entry(ours, e, *winner);
            }
            seal_checksum_page(format, page, ours);
        }
        // Every in-sync member whose copy differs from the result, or failed its check, gets it.
        std::span<uint8_t> settled(ours, checksum_page_bytes);
        for (uint32_t s = 0; s < _count; ++s) {
            if (!in_sync(s)) {
                continue;
            }
            const uint8_t* theirs = loaded.data();
            for (size_t i = g; i < end; ++i) {
                if (copies[i].slot == s) {
                    theirs = copies[i].sound ? copies[i].content.data() : nullptr;
                }
            }
            if (theirs != nullptr && std::memcmp(theirs, ours, checksum_page_bytes) == 0) {
                continue;
            }
            if (int error = member_io(_home, *_members[s].device, backstore::IoOp::write,
                                      area_offset + page * checksum_page_bytes, settled, true);
                error != 0) {
                member_error(s, error, "checksums write");
                continue;
            }
            ++rewritten;
        }
        g = end;
    }
    log_warn(
        "space {}: the members' copies of the block checksums: {} page copies failed their own check, {} "
        "page(s) made again from the data ({} blocks whose copies differed took the lowest in-sync "
        "copy's checksum), {} page(s) differed ({} entries) and were settled against the data ({} could "
        "not be: the blocks will fail their reads); {} page copies rewritten",
        name, bad_pages, rebuilt, guessed, settled_pages, entries, unsettled, rewritten);
}

Volume::ExtentCopies Volume::read_in_sync_copies(const Extent& x) {
    ExtentCopies copies;
    for (uint32_t c = 0; c < layout().copies; ++c) {
        uint32_t slot = member_of(layout(), x.column, c);
        if (!in_sync(slot)) {
            continue;
        }
        std::vector<uint8_t> bytes(x.length);
        Member& m = _members[slot];
        if (int error =
                member_io(_home, *m.device, backstore::IoOp::read, m.data_offset + x.member_offset, bytes);
            error != 0) {
            member_error(slot, error, "read");
            continue;
        }
        copies.slots.push_back(slot);
        copies.data.push_back(std::move(bytes));
    }
    return copies;
}

uint64_t Volume::equalize_block(const Extent& x, ExtentCopies& copies, size_t winner, uint64_t at) {
    uint64_t rewritten = 0;
    std::span<uint8_t> good(copies.data[winner].data() + at, checksum_block);
    for (size_t k = 0; k < copies.data.size(); ++k) {
        if (k == winner || std::memcmp(copies.data[k].data() + at, good.data(), checksum_block) == 0) {
            continue;
        }
        Member& m = _members[copies.slots[k]];
        if (int error = member_io(_home, *m.device, backstore::IoOp::write,
                                  m.data_offset + x.member_offset + at, good);
            error != 0) {
            member_error(copies.slots[k], error, "write");
        }
        ++rewritten;
    }
    return rewritten;
}

// No in-sync member holds page `page` intact, so its entries are made again from the data they cover:
// every in-sync copy of each block is read; copies that agree give its checksum. Where they differ, the
// first copy whose checksum some damaged copy of the page still holds at that entry wins (a torn page
// keeps most of its entries, and a rotted entry cannot match by chance), else the lowest in-sync copy, as
// the unclean resync would choose; the other copies are made equal to the winner. A block no copy of
// which could be read gets no checksum (0). Damaged bytes are only ever compared with, never taken.
uint64_t Volume::sums_rebuild_page(uint8_t* out, uint64_t page, uint64_t blocks, uint64_t area_offset,
                                   ChecksumPageFormat format, const std::string& name) {
    const uint64_t per_page = checksum_entries_per_page(format);
    uint64_t first = page * per_page;
    uint64_t count = std::min(blocks, first + per_page) - first;
    std::vector<std::vector<uint8_t>> damaged;
    for (uint32_t s = 0; s < _count; ++s) {
        Member& m = _members[s];
        if (!m.device || MemberState(m.state.load()) != MemberState::active) {
            continue;
        }
        std::vector<uint8_t> bytes(checksum_page_bytes);
        if (member_io(_home, *m.device, backstore::IoOp::read, area_offset + page * checksum_page_bytes,
                      bytes) == 0) {
            damaged.push_back(std::move(bytes));
        }
    }
    std::vector<uint32_t> sums(count, 0);
    uint64_t guessed = 0, unread = 0, rewritten = 0;
    uint64_t first_guessed = 0;
    std::vector<Extent> extents;
    map_range(layout(), first * checksum_block, count * checksum_block, extents);
    for (const Extent& x : extents) {
        ExtentCopies read = read_in_sync_copies(x);
        const auto& data = read.data;
        std::vector<uint32_t> got(data.size());
        for (uint64_t i = 0; i * checksum_block < x.length; ++i) {
            uint64_t block = x.space_offset / checksum_block + i;
            uint64_t at = i * checksum_block;
            if (data.empty()) {
                ++unread;
                continue;
            }
            for (size_t k = 0; k < data.size(); ++k) {
                got[k] = block_checksum(data[k].data() + at, block);
            }
            size_t winner = 0;
            if (std::any_of(got.begin(), got.end(), [&](uint32_t v) { return v != got[0]; })) {
                auto hinted = [&](uint32_t v) {
                    return std::any_of(damaged.begin(), damaged.end(), [&](const std::vector<uint8_t>& d) {
                        return checksum_page_entry(d.data(), block - first) == v;
                    });
                };
                auto it = std::find_if(got.begin(), got.end(), hinted);
                if (it != got.end()) {
                    winner = size_t(it - got.begin());
                } else {
                    first_guessed = guessed == 0 ? block : first_guessed;
                    ++guessed;
                }
                rewritten += equalize_block(x, read, winner, at);
            }
            sums[block - first] = got[winner];
        }
    }
    std::memset(out, 0, checksum_page_bytes);
    for (uint64_t e = 0; e < count; ++e) {
        set_checksum_page_entry(out, e, sums[e]);
    }
    seal_checksum_page(format, page, out);
    log_warn("space {}: no in-sync member holds checksum table page {} intact: its {} entries were made "
             "again from the data ({} block copies made equal to the winning copy; {} blocks could not be "
             "read and are not verified)",
             name, page, count, rewritten, unread);
    if (guessed != 0) {
        log_warn(
            "space {}: {} blocks of checksum table page {} (the first at layout offset {}) had copies that "
            "differ and matched no entry of the damaged page: the lowest in-sync copy was taken",
            name, guessed, page, first_guessed * checksum_block);
    }
    return guessed;
}

} // namespace ispace::volume
