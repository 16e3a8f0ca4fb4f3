// Volume::grow: more room from members that grew (a file extended, a LUN resized on its target), online.
//
// The order makes every instant safe to crash at:
//  1. every member's size is read again (Device::rescan) and the larger layout worked out; nothing
//     changes yet, and anything that stands in the way (a member out of sync, a resync running) refuses
//     the whole grow. A metadata area sized at create (the bitmap, the thin map, the checksums) limits
//     how far it goes, said in a note;
//  1b. on a checksummed space, the table's pages for the new range (zero) are written to every member
//     and waited for, before any label names that range;
//  2. the labels record the larger data areas (and a plain space's larger size) on every member, and
//     grow waits until they are durable;
//  3. the new layout and range are published to the data path (an atomic pointer: a request in flight
//     keeps the layout it started with, which maps every old address the same way);
//  4. a thin space's pool takes the new clusters and commits; a plain space raises `resized`, which an
//     export turns into CAPACITY DATA HAS CHANGED and the attach path into a larger device.
// A crash after 2 leaves labels larger than a thin pool uses: open accepts that (the pool may use less
// than the members give) and the next grow finishes it. Nothing a write was acknowledged for moves: every
// layout maps an existing address where it did before (mirror and stripe addresses do not depend on the
// members' sizes; a concat uses only its last member's growth).
#include "common/log.hpp"
#include "volume/checksum_io.hpp"
#include "volume/member_io.hpp"
#include "volume/remote_device.hpp"
#include "volume/resync.hpp"
#include "volume/thin_io.hpp"
#include "volume/volume.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <future>
#include <thread>

namespace ispace::volume {

namespace {

// Cuts back what `next` takes from the members that grew, as little as it must, until its capacity is within
// `most` (what a metadata area covers), so that the labels' layout never reaches past the metadata that
// serves it (decode_label checks that). A new column is not cut (its label is written already): false when
// the layout with it is too large.
bool fit_layout(Layout& next, const Layout& old, uint64_t most, uint32_t block_size, bool column) {
    if (capacity(next) <= most) {
        return true;
    }
    if (column) {
        return false;
    }
    const Layout grown = next;
    auto cut = [&](uint64_t limit) {
        Layout l = grown;
        for (size_t s = 0; s < l.member_bytes.size(); ++s) {
            uint64_t keep = std::min(grown.member_bytes[s], limit / block_size * block_size);
            l.member_bytes[s] = std::max(old.member_bytes[s], keep);
        }
        return l;
    };
    uint64_t lo = 0;
    uint64_t hi = *std::max_element(grown.member_bytes.begin(), grown.member_bytes.end());
    while (lo < hi) { // the largest per-member limit that fits (capacity grows with it)
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if (capacity(cut(mid)) <= most) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    next = cut(lo);
    return capacity(next) <= most;
}

} // namespace

Result<GrowResult> Volume::grow(std::optional<VolumeMember> column, MemberEntry entry) {
    assert(net::Reactor::current() == nullptr);
    if (_lost.load() || _failed.load() || _closing.load()) {
        return make_error(fmt::format("space '{}' is {}", _truth_at_open.name,
                                      _lost.load() ? "lost to another holder" : "failed or closing"),
                          EIO);
    }
    // 1. What the members hold now (blocking reads of sizes: on this thread, not a reactor).
    std::vector<uint64_t> device_bytes(_count, 0);
    for (uint32_t s = 0; s < _count; ++s) {
        Member& m = _members[s];
        if (!m.device || MemberState(m.state.load()) != MemberState::active) {
            return make_error(fmt::format("space '{}': member {} is {}: a space grows only with every member "
                                          "in sync",
                                          _truth_at_open.name, m.url, to_string(MemberState(m.state.load()))),
                              EBUSY);
        }
        auto bytes = m.device->rescan();
        if (!bytes) {
            return make_error(
                fmt::format("space '{}': member {}: {}", _truth_at_open.name, m.url, bytes.error().message),
                bytes.error().code);
        }
        device_bytes[s] = *bytes;
    }

    GrowResult result;
    result.thin = _thin != nullptr;
    std::vector<uint64_t> old_sizes(_count, 0);
    std::vector<uint64_t> old_member_bytes(_count, 0);
    uint64_t sums_ticket = 0;
    auto plan = [&]() -> Result<GrowResult> {
        result.notes.clear(); // a plan run again says its notes again
        if (_resync && _resync->pending()) {
            return make_error(
                fmt::format("space '{}': a resync is running; grow it once it is done", _truth_at_open.name),
                EBUSY);
        }
        if (column && !labels_settled()) {
            return make_error("a label write is running", EAGAIN); // retried below
        }
        const Layout& old = layout();
        Layout next = old;
        for (uint32_t s = 0; s < _count; ++s) {
            const Member& m = _members[s];
            uint64_t end = device_bytes[s] < 2 * label_size
                               ? 0
                               : (device_bytes[s] - 2 * label_size) / data_alignment * data_alignment;
            uint64_t data = end > m.data_offset ? (end - m.data_offset) / _block_size * _block_size : 0;
            bool usable = old.kind != LayoutKind::concat || s + 1 == _count; // a concat's earlier columns
            if (data > old.member_bytes[s] && usable) {
                next.member_bytes[s] = data;
            } else if (data > old.member_bytes[s]) {
                result.notes.push_back(
                    fmt::format("{} grew, but only the last member of a concat can use it", m.url));
            }
        }
        if (column) {
            if (old.kind != LayoutKind::concat) {
                return make_error(
                    fmt::format("space '{}' is a {}: a new member adds room only to a concat (a "
                                "mirror's copies hold the same bytes, a stripe would have to be "
                                "restriped); grow its members instead",
                                _truth_at_open.name, to_string(old.kind)),
                    ENOTSUP);
            }
            if (_count >= max_members) {
                return make_error(fmt::format("space '{}' has {} members, the most there can be",
                                              _truth_at_open.name, uint32_t(_count)),
                                  ENOSPC);
            }
            next.member_bytes.push_back(entry.data_bytes);
        }
        uint64_t room = capacity(next);
        uint64_t before = _space_size.load();
        uint64_t target = room;
        if (_bitmap) {
            uint64_t most = _bitmap->regions() * uint64_t(_bitmap->region_size());
            if (target > most) {
                result.notes.push_back(
                    fmt::format("the write-intent bitmap covers {} bytes: the space uses that "
                                "much of {}",
                                most, room));
                target = most;
            }
            if (_thin && !fit_layout(next, old, most, _block_size, column.has_value())) {
                return make_error(fmt::format("space '{}': the new member lies past what the bitmap covers",
                                              _truth_at_open.name),
                                  ENOSPC);
            }
        }
        if (_sums) {
            // The checksums area was sized at create for four times what the members held then
            // (checksum_reach_at_create); a label's layout never reaches past it (decode_label checks).
            uint64_t most = _sums->reach * checksum_block;
            if (target > most) {
                result.notes.push_back(fmt::format(
                    "the checksums area covers {} bytes: the space uses that much of {}", most, room));
                target = most;
            }
            if (!fit_layout(next, old, most, _block_size, column.has_value())) {
                return make_error(
                    fmt::format("space '{}': the new member lies past what the checksums area covers",
                                _truth_at_open.name),
                    ENOSPC);
            }
            target = target / checksum_block * checksum_block;
        }
        if (_thin) {
            uint64_t cs = _thin->cluster_size;
            uint64_t clusters = target / cs;
            // The metadata area was sized for the pool at create: as many clusters as its pages can map.
            uint64_t pages = _thin->store->pages();
            uint64_t virtual_clusters = (_virtual_size.load() + cs - 1) / cs;
            if (thin_metadata_pages(clusters, virtual_clusters) > pages) {
                uint64_t lo = 0, hi = clusters;
                while (lo < hi) {
                    uint64_t mid = lo + (hi - lo + 1) / 2;
                    if (thin_metadata_pages(mid, virtual_clusters) <= pages) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                result.notes.push_back(fmt::format("the thin metadata area maps {} clusters at most", lo));
                clusters = lo;
            }
            target = clusters * cs;
        } else {
            target = target / _block_size * _block_size;
        }
        result.before = before;
        result.after = std::max(before, target);
        if (target <= before) {
            result.after = before;
            if (column) {
                return make_error(fmt::format("space '{}': the new member would add no room{}",
                                              _truth_at_open.name,
                                              result.notes.empty() ? "" : ": " + result.notes.back()),
                                  ENOSPC);
            }
            return result; // nothing to gain (the caller says so)
        }

        if (_sums && target / checksum_block > _sums->blocks) {
            // The table's entries for the new range are zero in memory, and their pages go to every member
            // before any label names the larger range: a member's area past the old range may hold
            // anything (a member that replaced another got only the pages of the range then), and it
            // would be loaded as checksums at the next open.
            sums_ticket = sums_extend(target / checksum_block);
            return make_error("the checksum pages of the new range are being written", EINPROGRESS);
        }

        // 2. The labels first: the larger data areas (and a plain space's size) on every member.
        for (uint32_t s = 0; s < _count; ++s) {
            old_sizes[s] = _members[s].member_size;
            old_member_bytes[s] = old.member_bytes[s];
            _members[s].member_size = device_bytes[s];
        }
        uint32_t count = _count;
        if (column) {
            // In the table, written (labels, flushes) but given no data until the layout has its column.
            Member& m = _members[count];
            m.device = std::move(column->device);
            m.remote = dynamic_cast<RemoteDevice*>(m.device.get());
            m.member_size = m.device->geometry().bytes();
            m.data_offset = column->data_offset;
            m.url = column->url;
            m.errors.store(0);
            m.rebuild.store(uint8_t(RebuildMode::none));
            m.synced_below.store(0);
            m.retry_delay = std::chrono::milliseconds(0);
            m.state.store(uint8_t(MemberState::active), std::memory_order_release);
            _count.store(count + 1, std::memory_order_release);
            update_masks();
        }
        auto change = [&next, &entry, target, thin = _thin != nullptr, count,
                       add = column.has_value()](LabelBook& book) {
            if (add) {
                book.add_member(entry);
            }
            for (uint32_t s = 0; s < count; ++s) {
                book.truth().members[s].data_bytes = next.member_bytes[s];
            }
            if (!thin) {
                book.truth().space_size = target;
            }
            book.bump_sequence();
        };
        if (!column) {
            change_labels(std::move(change));
            return result;
        }
        // A new member gets its own label before any other member's table names it (a table naming a
        // member without a label would assemble with that member missing). No other label write runs
        // (checked above); those asked for meanwhile wait (_labels_writing) and follow.
        change(_book);
        ++_label_applied;
        {
            std::lock_guard lock(_status_mutex);
            _book_snapshot = _book.truth();
        }
        _labels_writing = true;
        Label mine = _book.label_for(count, _members[count].member_size, _members[count].data_offset);
        auto self = shared_from_this();
        write_member_label(count, mine, [self, count](int error) {
            if (error == 0) {
                self->_book.written(count);
            } else {
                self->member_error(count, error, "label write");
            }
            self->_labels_writing = false;
            self->write_labels();
        });
        return result;
    };
    auto planned = on_home(plan);
    for (int i = 0; i < 5000 && !planned; ++i) {
        if (planned.error().code == EINPROGRESS) {
            // Wait for the new range's checksum pages, then plan again (the table covers it now).
            std::promise<int> written;
            auto future = written.get_future();
            on_home(
                [&] { sums_wait(sums_ticket, &_home, [&written](int error) { written.set_value(error); }); });
            if (int error = future.get(); error != 0) {
                return make_error(fmt::format("space '{}': writing the checksum pages of the new range: {}",
                                              _truth_at_open.name, std::strerror(-error)),
                                  -error);
            }
        } else if (planned.error().code == EAGAIN) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        } else {
            break;
        }
        planned = on_home(plan);
    }
    if (!planned || planned->after == planned->before) {
        return planned;
    }
    GrowResult r = std::move(*planned);
    {
        // Wait for the labels (written on home; a member that fails the write is failed and the grow
        // stops: the space grew on the members that took it, which the next grow completes).
        for (int i = 0; i < 60000 && !on_home([&] { return labels_settled(); }); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        bool all = on_home([&] {
            for (uint32_t s = 0; s < _count; ++s) {
                if (MemberState(_members[s].state.load()) != MemberState::active) {
                    return false;
                }
            }
            return labels_settled();
        });
        if (!all) {
            return make_error(fmt::format("space '{}': a member failed while the labels recorded the grow",
                                          _truth_at_open.name),
                              EIO);
        }
        // The end copies of earlier labels now lie inside the larger data areas, different on every member
        // (slot, UUID): erased before anything is written there, so that the copies of a mirror hold the
        // same bytes in the new range as far as the members did. They are where the last label write put
        // them (the size at open) and, when the member was extended before that open, where the labels
        // of the old size were: just past the old data area (which ends at the last MiB boundary before
        // them). Labels of sizes in between (extended, opened, extended again) are not looked for.
        for (uint32_t s = 0; s < old_sizes.size(); ++s) {
            uint64_t data_end =
                _members[s].data_offset + on_home([&] { return _book.truth().members[s].data_bytes; });
            uint64_t old_end = _members[s].data_offset + old_member_bytes[s];
            std::vector<std::pair<uint64_t, uint64_t>> spans{
                {old_end, std::min(data_end, old_end + data_alignment + 2 * label_size)}};
            uint64_t last = label_offsets(old_sizes[s])[2];
            if (last >= old_end + data_alignment && last + 2 * label_size <= data_end) {
                spans.emplace_back(last, last + 2 * label_size);
            }
            for (auto [from, to] : spans) {
                if (to <= from) {
                    continue;
                }
                std::vector<uint8_t> zeros(to - from, 0);
                int e = member_io(_home, *_members[s].device, backstore::IoOp::write, from, zeros, true);
                if (e != 0) {
                    return make_error(fmt::format("space '{}': member {}: erasing its old end labels: {}",
                                                  _truth_at_open.name, _members[s].url, std::strerror(-e)),
                                      -e);
                }
            }
        }
        // 2b. A redundant layout's new range holds on each copy whatever that member held there (a LUN
        // resized on its target keeps its old blocks): different bytes, so two reads of a block never
        // written could see two different copies, and a compare of the members would find them apart.
        // Its regions are marked in the bitmap now (durably) and, once published, made equal from the
        // lowest in-sync copy by the pass that follows an unclean stop (reads of a region it has not
        // reached go to that copy meanwhile). md resyncs a grown RAID1's new range the same way.
        bool equalize = !_thin && _bitmap && layout().redundant();
        uint64_t first_region = 0;
        uint64_t last_region = 0;
        if (equalize) {
            first_region = r.before / _bitmap->region_size();
            last_region = (r.after - 1) / _bitmap->region_size();
            std::promise<bool> marked;
            auto future = marked.get_future();
            bool now = on_home([&] {
                return _bitmap->begin_write(first_region, last_region, &_home,
                                            [&marked](bool ok) { marked.set_value(ok); });
            });
            if (!now && !future.get()) {
                on_home([&] { _bitmap->end_write(first_region, last_region); });
                return make_error(fmt::format("space '{}': the grown range could not be marked in the "
                                              "write-intent bitmap",
                                              _truth_at_open.name),
                                  EIO);
            }
        }
        // 3. Published: the layout, then the range (a request inside the new range finds its layout).
        on_home([&] {
            Layout next = layout();
            const Label& truth = _book.truth();
            next.member_bytes.resize(_count);
            for (uint32_t s = 0; s < _count; ++s) {
                next.member_bytes[s] = truth.members[s].data_bytes;
            }
            publish_layout(std::move(next));
            _space_size.store(r.after, std::memory_order_release);
            if (!_thin) {
                _virtual_size.store(r.after, std::memory_order_release);
            }
            if (equalize) {
                // The pass first: the sweep clears nothing while it is pending.
                _resync->add_unclean_pass(fmt::format("the {} MiB a grow added", (r.after - r.before) >> 20));
                _bitmap->end_write(first_region, last_region);
            }
        });
        // 4. The pool takes the clusters (thin), or the users hear of the size (plain).
        if (_thin) {
            std::promise<Result<void>> grown;
            auto future = grown.get_future();
            uint64_t clusters = r.after / _thin->cluster_size;
            uint32_t added = column ? uint32_t(old_sizes.size()) : UINT32_MAX;
            thin_post([&, clusters, added] {
                if (added != UINT32_MAX) {
                    thin_include(added); // the map's copy, before a commit counts on it
                }
                auto g = _thin->pool->grow_pool(clusters);
                if (g) {
                    g = thin_commit();
                }
                thin_update_stats();
                grown.set_value(std::move(g));
            });
            if (auto g = future.get(); !g) {
                return make_error(
                    fmt::format("space '{}': the pool: {}", _truth_at_open.name, g.error().message),
                    g.error().code);
            }
            _thin->physical_size = r.after;
        } else {
            raise_event(backstore::DeviceEvent::resized);
        }
        log_info("space {}: grown from {} to {} bytes{}", _truth_at_open.name, r.before, r.after,
                 r.thin ? " of pool" : "");
    }
    return r;
}

} // namespace ispace::volume
