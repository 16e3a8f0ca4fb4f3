// The scrub (docs/integrity.md, "Scrub"): every block of a space with block checksums read in windows
// in the background and compared with the table, a bad copy repaired from a good one, the members' copies
// of the table compared with the table in memory, progress checkpointed in the labels, paused, resumed
// and rate-limited. The table, the range lock and the page writer it uses are in volume_checksum.cpp.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "common/log_limit.hpp"
#include "volume/checksum_io.hpp"
#include "volume/checksum_page.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace ispace::volume {

// ---- scrub -----------------------------------------------------------------------------------------------

constexpr uint64_t scrub_window_bytes = 1 << 20;
// The position is checkpointed in the labels at most this often (a label write costs four writes per
// member), and at every pause and end: a holder that dies loses at most this much of a scrub's progress.
constexpr uint64_t scrub_checkpoint_windows = 256;
constexpr auto scrub_checkpoint_interval = std::chrono::seconds(5);

uint64_t unix_now() {
    return uint64_t(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

void Volume::scrub_to_book() {
    if (!_sums) {
        return; // at open, before the table is loaded: the book keeps what the labels said
    }
    Label& truth = _book.truth();
    ScrubRecord r;
    {
        std::lock_guard guard(_sums->scrub_mutex);
        const ScrubProgress& p = _sums->scrub;
        if (p.running) {
            r.state = p.paused ? ScrubState::paused : ScrubState::running;
        } else if (p.finished != 0) {
            r.state = ScrubState::done;
        } else if (p.started != 0) {
            r.state = ScrubState::running; // stopped by close: the next open shows it interrupted
        }
        if (r.state != ScrubState::none) {
            r.position = p.done_bytes;
            r.started = p.started;
            r.finished = p.finished;
            r.checked = p.checked_blocks;
            r.bad = p.bad_blocks;
            r.repaired = p.repaired_blocks;
            r.unrepairable = p.unrecoverable_blocks;
            r.lost = p.lost;
        }
    }
    truth.scrub = std::move(r);
    for (uint32_t s = 0; s < _count && s < truth.members.size(); ++s) {
        truth.checksum_errors[s] = std::min(_members[s].checksum_errors.load(), max_checksum_errors);
    }
    truth.compat |= feature::compat::scrub;
}

ScrubProgress scrub_progress_of(const ScrubRecord& r, uint64_t total) {
    ScrubProgress p;
    if (r.state == ScrubState::none) {
        return p;
    }
    p.done_bytes = std::min(r.position, total);
    p.total_bytes = total;
    p.started = r.started;
    p.finished = r.finished;
    p.checked_blocks = r.checked;
    p.bad_blocks = r.bad;
    p.repaired_blocks = r.repaired;
    p.unrecoverable_blocks = r.unrepairable;
    p.lost = r.lost;
    if (r.state == ScrubState::running || r.state == ScrubState::paused) {
        // Not started again by itself: an attach should not begin a scan at full speed nobody asked for
        // now (the rate is not kept). It waits, paused at its checkpoint, for --resume.
        p.running = true;
        p.paused = true;
        p.interrupted = r.state == ScrubState::running;
    }
    return p;
}

void Volume::scrub_from_label(const Label& truth) {
    for (uint32_t s = 0; s < _count && s < truth.members.size(); ++s) {
        _members[s].checksum_errors.store(truth.checksum_errors[s]);
    }
    std::lock_guard guard(_sums->scrub_mutex);
    _sums->scrub = scrub_progress_of(truth.scrub, _space_size);
    if (_sums->scrub.running) {
        _sums->scrub_next = _sums->scrub.done_bytes;
        _sums->scrub_idle = true;
    }
}

void Volume::scrub_checkpoint() {
    _sums->scrub_windows = 0;
    _sums->scrub_checkpointed = std::chrono::steady_clock::now();
    change_labels([](LabelBook& book) { book.bump_sequence(); });
}

// One window of a scrub: every readable copy of each extent read, then the bad block copies rewritten.
struct ScrubWindow {
    // One read from a member into a Buffer of its own.
    struct Read {
        uint32_t slot = 0;
        Buffer data;
        iovec iov{};
        backstore::IoRequest request;
        bool ok = false;

        void prepare(uint32_t member, uint64_t offset, uint64_t length) {
            slot = member;
            data = Buffer::allocate(length);
            iov = {data.data(), length};
            request.op = backstore::IoOp::read;
            request.offset = offset;
            request.length = length;
            request.iov = &iov;
            request.iovcnt = 1;
        }
    };
    // A copy of one extent's data.
    struct Copy : Read {
        uint32_t extent = 0;
    };
    struct Fix {
        uint32_t slot = 0;
        backstore::IoRequest request;
        iovec iov{};
        Buffer data; // shares the good copy's block
    };
    // A member's copy of the table pages that hold this window's checksums.
    struct Table : Read {
        uint64_t first_page = 0;
    };
    ChecksumState::Range range;
    std::vector<Extent> extents;
    std::vector<std::unique_ptr<Copy>> copies;
    std::vector<std::unique_ptr<Table>> tables;
    // The page writer's rounds when the table reads were sent, and whether one was running: a page the
    // writer wrote while it was read may read torn, which is no fault of the member.
    uint64_t page_rounds = 0;
    bool page_writing = false;
    std::vector<std::unique_ptr<Fix>> fixes;
    std::atomic<uint32_t> left{0};
};

Result<void> Volume::scrub(ScrubAction action, uint64_t rate) {
    if (!_sums) {
        return make_error(fmt::format("space '{}' has no block checksums to scrub against (create it with "
                                      "--checksum)",
                                      _truth_at_open.name),
                          EINVAL);
    }
    std::lock_guard guard(_sums->scrub_mutex);
    ScrubProgress& p = _sums->scrub;
    switch (action) {
    case ScrubAction::start: {
        if (p.running) {
            return make_error(fmt::format("space '{}': a scrub is {}", _truth_at_open.name,
                                          p.paused ? "paused (--resume it)" : "running"),
                              EBUSY);
        }
        uint64_t passes = p.passes;
        p = {};
        p.running = true;
        p.total_bytes = _space_size;
        p.passes = passes;
        p.rate = rate;
        p.started = unix_now();
        _home.post([this] {
            _sums->scrub_next = 0;
            _sums->scrub_since = std::chrono::steady_clock::now();
            _sums->scrub_since_offset = 0;
            _sums->scrub_idle = false;
            scrub_checkpoint(); // "running" in the labels from the start
            scrub_window();
        });
        log_info("space {}: scrub started ({} MiB{})", _truth_at_open.name, _space_size >> 20,
                 rate ? fmt::format(", at most {} MiB/s", rate >> 20) : "");
        return {};
    }
    case ScrubAction::pause:
        if (!p.running || p.paused) {
            return make_error(fmt::format("space '{}': no scrub is running", _truth_at_open.name), EINVAL);
        }
        p.paused = true; // the window in flight finishes; scrub_window_done goes no further
        log_info("space {}: scrub paused at {} MiB", _truth_at_open.name, p.done_bytes >> 20);
        return {};
    case ScrubAction::resume:
        if (!p.running || !p.paused) {
            return make_error(fmt::format("space '{}': no scrub is paused", _truth_at_open.name), EINVAL);
        }
        p.paused = false;
        p.interrupted = false;
        p.rate = rate;
        _home.post([this] {
            // A pause lands between windows: none is in flight once it is seen there. If the window that
            // was in flight has not seen it yet, it goes on by itself and this one is not needed.
            if (_sums->scrub_idle) {
                _sums->scrub_idle = false;
                _sums->scrub_since = std::chrono::steady_clock::now();
                _sums->scrub_since_offset = _sums->scrub_next;
                scrub_window();
            }
        });
        log_info("space {}: scrub resumed at {} MiB", _truth_at_open.name, p.done_bytes >> 20);
        return {};
    }
    return {};
}

void Volume::scrub_window() {
    ChecksumState& s = *_sums;
    uint64_t at = s.scrub_next;
    bool paused = false;
    {
        std::lock_guard guard(s.scrub_mutex);
        paused = s.scrub.running && s.scrub.paused;
    }
    if (paused) {
        // Paused while the rate held this window back: it stops here, as it would after a window.
        s.scrub_idle = true;
        if (!_closing.load()) {
            scrub_checkpoint();
        }
        return;
    }
    if (_closing.load() || _lost.load() || at >= _space_size) {
        bool done = at >= _space_size && !_closing.load() && !_lost.load();
        {
            std::lock_guard guard(s.scrub_mutex);
            s.scrub.running = false;
            if (done) {
                ++s.scrub.passes;
                s.scrub.finished = std::max(unix_now(), s.scrub.started); // the label refuses the reverse
                log_info(
                    "space {}: scrub done: {} blocks checked, {} bad block copies, {} repaired, {} blocks "
                    "with no good copy",
                    _truth_at_open.name, s.scrub.checked_blocks, s.scrub.bad_blocks, s.scrub.repaired_blocks,
                    s.scrub.unrecoverable_blocks);
            }
        }
        if (done) {
            scrub_checkpoint(); // the result stays in the labels
        }
        return;
    }
    uint64_t length = std::min(scrub_window_bytes, _space_size - at);
    auto w = std::make_shared<ScrubWindow>();
    w->range = {at / checksum_block, (at + length - 1) / checksum_block, false};
    // Shared, as a read: writers of these blocks wait, so data and checksums agree while we look.
    Function<void()> go = [this, w, at, length] {
        map_range(layout(), at, length, w->extents);
        uint32_t readable = active_mask();
        for (uint32_t e = 0; e < w->extents.size(); ++e) {
            const Extent& x = w->extents[e];
            for (uint32_t c = 0; c < layout().copies; ++c) {
                uint32_t slot = member_of(layout(), x.column, c);
                if (!(readable & (1u << slot))) {
                    continue;
                }
                auto copy = std::make_unique<ScrubWindow::Copy>();
                copy->extent = e;
                copy->prepare(slot, _members[slot].data_offset + x.member_offset, x.length);
                w->copies.push_back(std::move(copy));
            }
        }
        // The members' copies of this window's table entries: under the window's lock no write can change
        // them, and every write that did is on every in-sync member, so an entry that differs from memory
        // is rot in that copy (which would otherwise wait for the next open to be found).
        uint64_t first_page = _sums->page_of(w->range.first);
        uint64_t pages = _sums->page_of(w->range.last) + 1 - first_page;
        for (uint32_t slot = 0; slot < _count; ++slot) {
            if (!(readable & (1u << slot))) {
                continue;
            }
            auto t = std::make_unique<ScrubWindow::Table>();
            t->first_page = first_page;
            t->prepare(slot, _sums->area_offset + first_page * checksum_page_bytes,
                       pages * checksum_page_bytes);
            w->tables.push_back(std::move(t));
        }
        {
            std::lock_guard guard(_sums->page_mutex);
            w->page_rounds = _sums->rounds;
            w->page_writing = _sums->writing;
        }
        auto checked = [this, w, at, length] {
            // Per block: the copies that match, the ones that do not; the first good one over the bad.
            ChecksumState& s = *_sums;
            uint64_t bad = 0, repaired = 0, lost = 0, checked = 0;
            std::vector<uint64_t> lost_at;
            for (uint32_t e = 0; e < w->extents.size(); ++e) {
                const Extent& x = w->extents[e];
                for (uint64_t i = 0; i * checksum_block < x.length; ++i) {
                    uint64_t block = x.space_offset / checksum_block + i;
                    uint32_t stored = s.get(block);
                    if (stored == 0) {
                        continue;
                    }
                    ++checked;
                    ScrubWindow::Copy* good = nullptr;
                    std::vector<ScrubWindow::Copy*> wrong;
                    for (auto& c : w->copies) {
                        if (c->extent != e || !c->ok) {
                            continue;
                        }
                        if (block_checksum(c->data.data() + i * checksum_block, block) == stored) {
                            good = good ? good : c.get();
                        } else {
                            wrong.push_back(c.get());
                        }
                    }
                    for (ScrubWindow::Copy* c : wrong) {
                        ++bad;
                        sums_count_error(c->slot);
                        if (!good) {
                            continue;
                        }
                        auto fix = std::make_unique<ScrubWindow::Fix>();
                        fix->slot = c->slot;
                        fix->data = Buffer::allocate(checksum_block);
                        std::memcpy(fix->data.data(), good->data.data() + i * checksum_block, checksum_block);
                        fix->iov = {fix->data.data(), checksum_block};
                        fix->request.op = backstore::IoOp::write;
                        fix->request.offset = c->request.offset + i * checksum_block;
                        fix->request.length = checksum_block;
                        fix->request.iov = &fix->iov;
                        fix->request.iovcnt = 1;
                        fix->request.done = [this, w, slot = c->slot](int error) {
                            _members[slot].inflight.fetch_sub(1, std::memory_order_relaxed);
                            if (error != 0) {
                                member_error(slot, error, "write");
                            }
                            if (w->left.fetch_sub(1) == 1) {
                                _home.post([this, w] { scrub_window_done(w); });
                            }
                        };
                        w->fixes.push_back(std::move(fix));
                        ++repaired;
                        log_warn(
                            "space {}: scrub: {} block at layout offset {} failed its checksum; rewritten "
                            "from a good copy",
                            _truth_at_open.name, _members[c->slot].url, block * checksum_block);
                    }
                    if (!wrong.empty() && !good) {
                        ++lost;
                        lost_at.push_back(block * checksum_block);
                        log_error("space {}: scrub: block at layout offset {} has no copy that matches its "
                                  "checksum; reads of it fail (medium error)",
                                  _truth_at_open.name, block * checksum_block);
                    }
                }
            }
            uint64_t table_entries = 0, table_pages = 0;
            bool overlapped = false; // a page write round ran while the pages were read
            {
                std::lock_guard guard(s.page_mutex);
                overlapped = w->page_writing || s.rounds != w->page_rounds;
            }
            bool suspect = false;
            for (auto& t : w->tables) {
                if (!t->ok) {
                    continue;
                }
                // A page that fails its own check is rewritten whole, even where its entries (all that
                // memory can compare) are right: the damage may be in the check itself. One that a page
                // write may have changed as it was read is rewritten too, but not reported.
                for (uint64_t i = 0; i * checksum_page_bytes < t->data.size(); ++i) {
                    uint64_t page = t->first_page + i;
                    if (checksum_page_sound(s.format, page, t->data.data() + i * checksum_page_bytes)) {
                        continue;
                    }
                    suspect = true;
                    if (!overlapped) {
                        static LogLimit limit;
                        limit.log(LogLevel::warn,
                                  "space {}: scrub: {}'s copy of checksum table page {} fails its own check; "
                                  "it is written again from the table",
                                  _truth_at_open.name, _members[t->slot].url, page);
                        ++table_pages;
                    }
                }
                uint64_t differ = 0;
                for (uint64_t block = w->range.first; block <= w->range.last; ++block) {
                    const uint8_t* page =
                        t->data.data() + (s.page_of(block) - t->first_page) * checksum_page_bytes;
                    differ += checksum_page_entry(page, block % s.per_page) != s.get(block);
                }
                if (differ != 0) {
                    log_warn(
                        "space {}: scrub: {}'s copy of the block checksums differed from the table at {} "
                        "entries (layout offsets {} to {}); its pages are written again",
                        _truth_at_open.name, _members[t->slot].url, differ, w->range.first * checksum_block,
                        w->range.last * checksum_block);
                    table_entries += differ;
                }
            }
            if (table_entries != 0 || suspect) {
                sums_mark(w->range.first, w->range.last, false); // the page writer puts them on every member
            }
            {
                std::lock_guard guard(s.scrub_mutex);
                s.scrub.table_entries_rewritten += table_entries;
                s.scrub.table_pages_rewritten += table_pages;
                s.scrub.bad_blocks += bad;
                s.scrub.repaired_blocks += repaired;
                s.scrub.unrecoverable_blocks += lost;
                s.scrub.checked_blocks += checked;
                s.scrub.done_bytes = at + length;
                // The first few, in layout order (a stripe's extents need not be).
                std::sort(lost_at.begin(), lost_at.end());
                for (uint64_t off : lost_at) {
                    if (s.scrub.lost.size() < max_scrub_lost &&
                        (s.scrub.lost.empty() || off > s.scrub.lost.back())) {
                        s.scrub.lost.push_back(off);
                    }
                }
            }
            s.scrub_next = at + length;
            if (w->fixes.empty()) {
                scrub_window_done(w);
                return;
            }
            w->left.store(uint32_t(w->fixes.size()));
            for (auto& fix : w->fixes) {
                submit_member(fix->slot, fix->request, nullptr);
            }
        };
        if (w->copies.empty() && w->tables.empty()) {
            checked();
            return;
        }
        w->left.store(uint32_t(w->copies.size() + w->tables.size()));
        auto submit = [this, w, checked](ScrubWindow::Read* read, const char* what) {
            read->request.done = [this, w, read, checked, what](int error) {
                _members[read->slot].inflight.fetch_sub(1, std::memory_order_relaxed);
                if (error != 0) {
                    member_error(read->slot, error, what);
                } else {
                    read->ok = true;
                }
                if (w->left.fetch_sub(1) == 1) {
                    _home.post(checked);
                }
            };
            submit_member(read->slot, read->request, nullptr);
        };
        for (auto& t : w->tables) {
            submit(t.get(), "checksums read");
        }
        for (auto& c : w->copies) {
            submit(c.get(), "read");
        }
    };
    if (s.lock(w->range, &_home, go)) {
        go();
    }
}

void Volume::scrub_window_done(const std::shared_ptr<ScrubWindow>& w) {
    _sums->unlock(w->range);
    ChecksumState& s = *_sums;
    uint64_t rate = 0;
    bool paused = false;
    {
        std::lock_guard guard(s.scrub_mutex);
        paused = s.scrub.paused;
        rate = s.scrub.rate;
    }
    if (paused) {
        s.scrub_idle = true; // resume starts the next window
        scrub_checkpoint();  // where it stopped, in the labels: a resume after a restart starts there
        return;
    }
    if (++s.scrub_windows >= scrub_checkpoint_windows ||
        std::chrono::steady_clock::now() - s.scrub_checkpointed >= scrub_checkpoint_interval) {
        scrub_checkpoint();
    }
    auto delay = std::chrono::steady_clock::duration::zero();
    if (rate > 0) {
        // The pace since start (or resume): the next window may start once the bytes done took as long
        // as the rate allows.
        auto due =
            s.scrub_since +
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                std::chrono::duration<double>(double(s.scrub_next - s.scrub_since_offset) / double(rate)));
        delay = std::max(delay, due - std::chrono::steady_clock::now());
    }
    if (delay > std::chrono::steady_clock::duration::zero()) {
        std::weak_ptr<Volume> weak = shared_from_this();
        _home.add_timer(delay, [weak] {
            if (auto v = weak.lock()) {
                v->scrub_window();
            }
        });
    } else {
        _home.post([this] { scrub_window(); });
    }
}

} // namespace ispace::volume
