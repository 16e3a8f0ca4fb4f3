// The volume's metadata side, on its home reactor: open and close, the labels, failed members and their
// return, the bitmap's writes and sweeps. See volume.hpp.
#include "common/log.hpp"
#include "volume/checksum_io.hpp"
#include "volume/remote_device.hpp"
#include "volume/resync.hpp"
#include "volume/thin_io.hpp"
#include "volume/volume.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <future>
#include <thread>

namespace ispace::volume {

namespace {

// A request the metadata side owns until it completes.
struct OwnedRequest {
    backstore::IoRequest request;
    Buffer data;
    iovec iov{};
};

} // namespace

Volume::Volume(net::ReactorGroup& reactors, VolumeOptions options)
    : _reactors(reactors), _home(reactors.next()), _options(std::move(options)) {}

uint64_t Volume::regions_in_use() const {
    uint64_t rs = _bitmap->region_size();
    return (_space_size.load(std::memory_order_acquire) + rs - 1) / rs;
}

void Volume::publish_layout(Layout layout) {
    _layouts.push_back(std::make_unique<const Layout>(std::move(layout)));
    _layout.store(_layouts.back().get(), std::memory_order_release);
}

Volume::~Volume() {
    // close() (or abandon()) is the owner's job; a volume dropped without it stops its background work
    // here when it can wait (not on a reactor), so that nothing posted outlives it.
    if (!_closed && net::Reactor::current() == nullptr && _resync) {
        log_warn("space {}: dropped without close(); stopping it without a clean label", _truth_at_open.name);
        abandon();
    }
    if (_thin && _thin->worker.joinable()) {
        (void)thin_stop(false); // an open that failed after the map was read
    }
}

void Volume::set_event_sink(std::function<void(backstore::DeviceEvent)> sink) {
    std::lock_guard lock(_event_mutex);
    _event_sink = std::move(sink);
}

void Volume::raise_event(backstore::DeviceEvent event) {
    std::lock_guard lock(_event_mutex);
    if (_event_sink) {
        _event_sink(event);
    }
}

backstore::Device* Volume::member_device(uint32_t slot) const {
    return slot < _count ? _members[slot].device.get() : nullptr;
}

void Volume::update_masks() {
    uint32_t writable = 0, active = 0;
    for (uint32_t s = 0; s < _count; ++s) {
        auto state = MemberState(_members[s].state.load(std::memory_order_acquire));
        if (state == MemberState::active) {
            active |= 1u << s;
            writable |= 1u << s;
        } else if (state == MemberState::rebuilding) {
            writable |= 1u << s;
        }
    }
    _writable.store(writable, std::memory_order_release);
    _active.store(active, std::memory_order_release);
}

bool Volume::in_sync(uint32_t slot) const {
    return _members[slot].device && MemberState(_members[slot].state.load()) == MemberState::active;
}

bool Volume::all_in_sync() const {
    for (uint32_t s = 0; s < _count; ++s) {
        if (MemberState(_members[s].state.load(std::memory_order_acquire)) != MemberState::active) {
            return false;
        }
    }
    return true;
}

// ---- open ------------------------------------------------------------------------------------------------

Result<std::shared_ptr<Volume>> Volume::open(net::ReactorGroup& reactors, const AssemblyPlan& plan,
                                             std::vector<VolumeMember> members, VolumeOptions options) {
    assert(net::Reactor::current() == nullptr);
    const Label& truth = plan.truth;
    auto layout = truth.layout_of();
    if (!layout) {
        return layout.error();
    }
    if (members.size() != truth.members.size()) {
        return make_error(fmt::format("space '{}': {} member devices for {} slots", truth.name,
                                      members.size(), truth.members.size()),
                          EINVAL);
    }
    std::shared_ptr<Volume> v(new Volume(reactors, std::move(options)));
    v->_truth_at_open = truth;
    v->publish_layout(std::move(*layout));
    v->_count = uint32_t(truth.members.size());
    v->_block_size = truth.block_size;
    v->_space_size = truth.space_size;
    v->_virtual_size = truth.space_size;
    v->_features.volatile_cache = true;
    v->_features.unmap = true;
    v->_features.write_zeroes = true;
    v->_features.thin = true;

    for (uint32_t s = 0; s < v->_count; ++s) {
        Member& m = v->_members[s];
        m.device = std::move(members[s].device);
        m.remote = dynamic_cast<RemoteDevice*>(m.device.get());
        m.data_offset = members[s].data_offset;
        m.url = members[s].url.empty() ? truth.members[s].url : members[s].url;
        m.member_size = m.device ? m.device->geometry().bytes() : 0;
        if (m.device) {
            backstore::Features f = m.device->features();
            v->_features.unmap &= f.unmap;
            v->_features.write_zeroes &= f.write_zeroes;
            v->_features.thin &= f.thin;
            if (m.device->geometry().block_size != truth.block_size) {
                return make_error(fmt::format("{}: {}-byte blocks; the space has {}", m.url,
                                              m.device->geometry().block_size, truth.block_size),
                                  EINVAL);
            }
        }
    }
    // What each member's own label holds, as far as we know (assembly checked it against these): the
    // book records it for a member that leaves, so that a later assembly can tell it stale from
    // written apart. The labels written below replace it for every member they reach.
    std::vector<Written> written(v->_count, Written::of(truth));
    for (uint32_t s = 0; s < v->_count; ++s) {
        const MemberEntry& e = truth.members[s];
        if (plan.slots[s] == SlotPlan::out) {
            written[s] = {e.last_epoch, e.last_generation, e.last_previous_generation};
        }
    }
    LabelBook book(truth, written);

    // Apply the plan to the book and the member states; one epoch raise for all of it.
    bool raise = plan.unclean || plan.membership_changed || plan.forced;
    for (uint32_t s = 0; s < v->_count; ++s) {
        Member& m = v->_members[s];
        const MemberEntry& e = book.truth().members[s];
        switch (plan.slots[s]) {
        case SlotPlan::current:
            m.state.store(uint8_t(MemberState::active));
            break;
        case SlotPlan::missing:
            book.member_out(s, MemberState::missing, false);
            m.state.store(uint8_t(MemberState::missing));
            m.device.reset();
            break;
        case SlotPlan::out:
            if (m.device && truth.checksums() && e.state == MemberState::failed &&
                truth.checksum_errors[s] >= checksum_error_limit) {
                // Failed for its checksum errors (the count is in the labels): its data rots, so it stays
                // out until it is replaced, across opens too (docs/integrity.md).
                log_warn("space {}: {}: {} checksum errors; it stays failed until it is replaced", truth.name,
                         m.url, truth.checksum_errors[s]);
                m.state.store(uint8_t(MemberState::failed));
                m.device.reset();
            } else if (m.device) {
                // Found, and merely stale: it rejoins now, for the regions it missed.
                book.member_rejoins(s, RebuildMode::delta, false);
                m.state.store(uint8_t(MemberState::rebuilding));
                raise = true;
            } else {
                m.state.store(uint8_t(e.state));
            }
            break;
        case SlotPlan::rebuild: {
            RebuildMode mode = plan.rebuild[s] == RebuildMode::none ? RebuildMode::delta : plan.rebuild[s];
            if (e.state == MemberState::rebuilding && e.rebuild == mode) {
                // An interrupted rebuild: resumes from its checkpoint (full) or the bitmap (delta).
                m.resumes_clean = !plan.unclean;
            } else {
                book.member_rejoins(s, mode, false);
                if (mode == RebuildMode::full) {
                    book.truth().members[s].rebuild = RebuildMode::full;
                    book.truth().members[s].recovery_offset = 0;
                }
            }
            m.state.store(uint8_t(MemberState::rebuilding));
            break;
        }
        }
        const MemberEntry& now = book.truth().members[s];
        m.rebuild.store(uint8_t(now.rebuild));
        m.synced_below.store(now.state == MemberState::rebuilding && now.rebuild == RebuildMode::full
                                 ? now.recovery_offset
                                 : (now.state == MemberState::rebuilding ? now.recovery_offset : 0));
    }
    book.truth().holder_key = v->_options.holder_key;
    if (!v->_options.holder.empty()) {
        book.truth().holder = v->_options.holder.substr(0, max_holder_length);
    }
    book.truth().clean = false;
    if (raise) {
        book.raise_epoch();
    } else {
        book.bump_sequence();
    }
    v->_book = std::move(book);
    v->update_masks();
    {
        std::lock_guard lock(v->_status_mutex);
        v->_book_snapshot = v->_book.truth();
    }
    if (truth.thin()) {
        // The map first: a space whose map cannot be read is not opened (nothing is written before).
        // Unmap and write-zeroes are the map's own business, whatever the members support.
        if (auto opened = v->thin_open(truth); !opened) {
            v->_closed = true;
            return opened.error();
        }
        v->_space_size = v->_thin->physical_size;
        v->_features.unmap = true;
        v->_features.write_zeroes = true;
        v->_features.thin = true;
    }

    // The bitmap, from the members' copies (their OR: a region any copy marks may differ).
    const MetadataArea* area = truth.area(AreaType::bitmap);
    if ((v->layout().redundant() || truth.checksums()) && truth.region_size != 0 && area != nullptr) {
        uint32_t block_bytes = std::max<uint32_t>(4096, truth.block_size);
        auto self = v.get();
        // As many regions as the area holds, not only those of the range in use: grow() then raises
        // the range without a new bitmap under the writes in flight (regions past it stay unmarked).
        uint64_t bitmap_bytes =
            std::max(v->_space_size.load(), area->length * 8 * uint64_t(truth.region_size));
        v->_bitmap = std::make_unique<WriteIntentBitmap>(
            bitmap_bytes, truth.region_size, block_bytes, v->_home,
            [self](uint64_t block, Buffer data, Function<void(bool)> done) {
                self->write_bitmap_block(block, std::move(data), std::move(done));
            });
        std::vector<uint8_t> image(area->length, 0);
        for (uint32_t s = 0; s < v->_count; ++s) {
            Member& m = v->_members[s];
            auto state = MemberState(m.state.load());
            if (!m.device || (state != MemberState::active && state != MemberState::rebuilding)) {
                continue;
            }
            // Read on the home reactor and wait here.
            Buffer b = Buffer::allocate(area->length);
            std::promise<int> read;
            auto got = read.get_future();
            OwnedRequest r;
            r.data = b;
            r.iov = {b.data(), b.size()};
            r.request.op = backstore::IoOp::read;
            r.request.offset = area->offset;
            r.request.length = area->length;
            r.request.iov = &r.iov;
            r.request.iovcnt = 1;
            r.request.done = [&read](int error) { read.set_value(error); };
            v->_home.post([&] { m.device->submit(r.request); });
            if (int error = got.get(); error != 0) {
                log_warn("space {}: {}: the bitmap could not be read ({}); the member is failed", truth.name,
                         m.url, std::strerror(-error));
                v->member_error(s, error, "bitmap read");
                continue;
            }
            for (size_t i = 0; i < image.size(); ++i) {
                image[i] |= b.data()[i];
            }
        }
        v->on_home([&] { v->_bitmap->load(image); });
    }

    // Labels before anything else is written: the new epoch (or sequence) and the clean flag off.
    v->on_home([&] { v->change_labels([](LabelBook&) {}); });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!v->on_home([&] { return v->labels_settled(); })) {
        if (std::chrono::steady_clock::now() > deadline) {
            return make_error(
                fmt::format("space '{}': the labels could not be written within 60 s", truth.name),
                ETIMEDOUT);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (v->writable_mask() == 0) {
        v->_closed = true;
        return make_error(fmt::format("space '{}': no member took the labels", truth.name), EIO);
    }
    for (uint32_t s = 0; s < v->_count; ++s) {
        log_info("space {}: slot {} {}: {}", truth.name, s, v->_members[s].url,
                 to_string(MemberState(v->_members[s].state.load())));
    }

    // Block checksums: loaded, torn writes resolved, copied to rebuilding members (before any I/O).
    if (truth.checksums()) {
        if (auto opened = v->sums_open(truth, plan.unclean); !opened) {
            v->_closed = true;
            return opened.error();
        }
    }

    // Resyncs: dirty regions after an unclean stop, and every rebuilding member. Made on the home
    // reactor: a member that failed above (a bitmap or checksums read) has its failure handled there
    // already, and that work reads _resync (ThreadSanitizer saw the race when it was assigned here).
    v->on_home([&] {
        v->_resync = std::make_unique<Resync>(*v);
        v->_resync->set_rate(v->_options.resync_rate);
        // After a clean close, regions still marked with every member in sync are those a pass (a grow's,
        // or this one after an unclean stop) did not finish making equal: it goes on (a clean close clears
        // the rest). With a member away, the marks are also what it missed, and the two cannot be told
        // apart: the in-sync copies are made equal over all of them (a grow's pass cut short by a failure
        // left its new range different on each; regions merely written while the member was away are
        // equal already, and cost a copy).
        if (v->_bitmap && v->layout().redundant() && uint32_t(std::popcount(v->active_mask())) > 1 &&
            (plan.unclean || v->_bitmap->marked_count() > 0)) {
            v->_resync->add_unclean_pass(plan.unclean ? "dirty regions after an unclean stop"
                                         : v->all_in_sync()
                                             ? "regions a pass had not made equal at the last close"
                                             : "regions marked while a member is away");
        }
        for (uint32_t s = 0; s < v->_count; ++s) {
            if (MemberState(v->_members[s].state.load()) == MemberState::rebuilding) {
                v->_resync->add_target(s, v->_members[s].synced_below.load());
            }
        }
        for (uint32_t s = 0; s < v->_count; ++s) {
            auto state = MemberState(v->_members[s].state.load());
            if (state == MemberState::failed || state == MemberState::missing) {
                v->schedule_retry(s);
            }
        }
        v->schedule_sweep();
    });
    return v;
}

// ---- close -----------------------------------------------------------------------------------------------

void Volume::drain() {
    // Requests in flight finish first (members answer, or fail, within their own time limits).
    while (_completed.load(std::memory_order_acquire) != _foreground.load(std::memory_order_acquire)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

// Stops the sweep timer and the resync (windows in flight finish), and waits for both on the home reactor.
void Volume::stop_background() {
    std::promise<void> stopped;
    auto stopped_future = stopped.get_future();
    _home.post([&] {
        if (_sweep_timer) {
            _home.cancel_timer(_sweep_timer);
            _sweep_timer = 0;
        }
        if (_resync) {
            _resync->stop([&] { stopped.set_value(); });
        } else {
            stopped.set_value();
        }
    });
    stopped_future.get();
}

Result<void> Volume::close() {
    assert(net::Reactor::current() == nullptr);
    if (_closed) {
        return {};
    }
    // A thin space's map is committed while requests may still run (the commit's flush goes through the
    // data path); none may be in flight by now (the caller's promise), so it is the last word.
    Result<void> thin_closed = thin_stop(true);
    if (!thin_closed) {
        log_warn("space {}: the thin map could not be committed at close: {}", _truth_at_open.name,
                 thin_closed.error().message);
    }
    _closing.store(true, std::memory_order_release);
    drain();
    stop_background();
    // Metadata writes in flight: the bitmap's batches and the labels.
    auto quiet = [&] {
        return on_home(
            [&] { return (!_bitmap || _bitmap->idle()) && !_labels_writing && (!_sums || sums_idle()); });
    };
    for (int i = 0; i < 60000 && !quiet(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Retries in flight (a reconnect, a reopen on a worker) finish on their own; they see _closing.
    for (int i = 0; i < 10000; ++i) {
        bool busy = on_home([&] {
            for (uint32_t s = 0; s < _count; ++s) {
                if (_members[s].retrying) {
                    return true;
                }
            }
            return false;
        });
        if (!busy) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Result<void> result;
    if (!_lost.load()) {
        // Flush every member, then the clean flag.
        uint32_t writable = writable_mask();
        std::vector<std::unique_ptr<OwnedRequest>> flushes;
        std::vector<std::promise<int>> results(_count);
        for (uint32_t s = 0; s < _count; ++s) {
            if (!(writable & (1u << s))) {
                continue;
            }
            auto r = std::make_unique<OwnedRequest>();
            r->request.op = backstore::IoOp::flush;
            r->request.done = [&results, s](int error) { results[s].set_value(error); };
            backstore::IoRequest* req = &r->request;
            flushes.push_back(std::move(r));
            _home.post([this, s, req] { _members[s].device->submit(*req); });
        }
        for (uint32_t s = 0; s < _count; ++s) {
            if (writable & (1u << s)) {
                if (int error = results[s].get_future().get(); error != 0) {
                    member_error(s, error, "flush");
                }
            }
        }
        // Every write is on every copy now: with every member in sync and no pass left to make regions
        // equal, the bitmap is cleared (two sweeps: the first ages the regions written since the last
        // one). What stays marked at a clean close is what a member out of sync missed, or what a pass cut
        // short still has to make equal: the next open knows which (volume_meta's open).
        if (_bitmap) {
            on_home([&] {
                bool allowed =
                    all_in_sync() && !(_resync && (_resync->pending() || _resync->unclean_unfinished()));
                _bitmap->sweep(allowed);
                _bitmap->sweep(allowed);
            });
        }
        on_home([&] {
            change_labels([](LabelBook& book) {
                book.truth().clean = true;
                book.bump_sequence();
            });
        });
        for (int i = 0; i < 60000 && !(on_home([&] { return labels_settled(); }) && quiet()); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (writable_mask() == 0) {
            result = make_error(
                fmt::format("space '{}': no member took the closing labels", _truth_at_open.name), EIO);
        }
    }
    on_home([&] {
        _resync.reset();
        _bitmap.reset();
    });
    _closed = true;
    log_info("space {}: closed{}", _truth_at_open.name, _lost.load() ? " (lost to another holder)" : "");
    if (result && !thin_closed) {
        return thin_closed;
    }
    return result;
}

void Volume::abandon() {
    assert(net::Reactor::current() == nullptr);
    if (_closed) {
        return;
    }
    _closing.store(true, std::memory_order_release);
    drain();
    (void)thin_stop(false); // what was not committed is lost, as kill -9 would lose it
    stop_background();
    for (int i = 0; i < 60000; ++i) {
        if (on_home([&] {
                return (!_bitmap || _bitmap->idle()) && !_labels_writing && (!_sums || sums_idle());
            })) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    on_home([&] {
        _resync.reset();
        _bitmap.reset();
    });
    _closed = true;
}

// ---- failures --------------------------------------------------------------------------------------------

void Volume::member_error(uint32_t slot, int error, const char* what) {
    if (error == -EBADE) {
        lose(slot);
        return;
    }
    Member& m = _members[slot];
    m.errors.fetch_add(1, std::memory_order_relaxed);
    uint8_t state = m.state.load(std::memory_order_acquire);
    for (;;) {
        if (state != uint8_t(MemberState::active) && state != uint8_t(MemberState::rebuilding)) {
            return; // failed already (or was never in)
        }
        if (m.state.compare_exchange_weak(state, uint8_t(MemberState::failed), std::memory_order_acq_rel)) {
            break;
        }
    }
    update_masks();
    // Writes completing from now on wait for the label that records it.
    _epoch_requested.fetch_add(1, std::memory_order_acq_rel);
    log_error("space {}: {} failed a {} ({}); marked failed, I/O goes on with the other copies",
              _truth_at_open.name, m.url, what, std::strerror(-error));
    // A column with no writable copy left: the space can no longer serve all of its data. Decided here,
    // before the request that found the failure completes, so that `status` says "failed" by the time
    // the caller sees its error.
    int dead_column = -1;
    uint32_t writable = writable_mask();
    for (uint32_t column = 0; column < layout().columns(); ++column) {
        uint32_t mask = ((1u << layout().copies) - 1) << (column * layout().copies);
        if ((writable & mask) == 0 && !_failed.exchange(true)) {
            dead_column = int(column);
        }
    }
    auto self = shared_from_this();
    _home.post([self, slot, dead_column] {
        if (self->_resync) {
            self->_resync->drop_target(slot);
        }
        self->change_labels([slot](LabelBook& book) { book.member_out(slot, MemberState::failed); }, true);
        if (dead_column >= 0) {
            log_error("space {}: no copy of {} is left; requests for it fail", self->_truth_at_open.name,
                      self->layout().columns() > 1 ? fmt::format("column {}", dead_column) : "its data");
            self->raise_event(backstore::DeviceEvent::failed);
        }
        self->schedule_retry(slot);
    });
}

void Volume::lose(uint32_t slot) {
    if (_lost.exchange(true, std::memory_order_acq_rel)) {
        return;
    }
    log_error(
        "space {}: {} answered RESERVATION CONFLICT: another holder took the space over; this one stops "
        "writing and lets go of it",
        _truth_at_open.name, _members[slot].url);
    auto self = shared_from_this();
    _home.post([self] {
        if (self->_resync) {
            self->_resync->stop([] {});
        }
        if (self->_sweep_timer) {
            self->_home.cancel_timer(self->_sweep_timer);
            self->_sweep_timer = 0;
        }
        // Nothing waits for labels any more: nothing more is written.
        std::vector<LabelWaiter> waiters;
        {
            std::lock_guard lock(self->_label_waiters_mutex);
            waiters.swap(self->_label_waiters);
        }
        for (auto& w : waiters) {
            w.origin->post(std::move(w.then));
        }
        self->raise_event(backstore::DeviceEvent::removed);
        if (self->_options.on_lost) {
            self->_home.run_blocking(
                [self]() -> int64_t {
                    self->_options.on_lost();
                    return 0;
                },
                [](int64_t) {});
        }
    });
}

Result<void> Volume::fail_member(uint32_t slot) {
    assert(net::Reactor::current() == nullptr);
    if (slot >= _count) {
        return make_error(fmt::format("slot {}: the space has {}", slot, _count), EINVAL);
    }
    auto state = MemberState(_members[slot].state.load());
    if (state != MemberState::active && state != MemberState::rebuilding) {
        return {};
    }
    uint32_t column = column_of(layout(), slot);
    uint32_t mask = ((1u << layout().copies) - 1) << (column * layout().copies);
    if (state == MemberState::active && (active_mask() & mask & ~(1u << slot)) == 0) {
        return make_error(fmt::format("{} holds the last in-sync copy of its data: it cannot be taken out",
                                      _members[slot].url),
                          EBUSY);
    }
    member_error(slot, -ECANCELED, "removal by the administrator");
    for (int i = 0; i < 60000 && !labels_current(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return {};
}

// ---- labels ----------------------------------------------------------------------------------------------

void Volume::change_labels(Function<void(LabelBook&)> change, bool blocking) {
    scrub_to_book(); // any label write carries the current scrub record and checksum error counts
    change(_book);
    ++_label_applied;
    if (blocking) {
        ++_epoch_applied;
    }
    {
        std::lock_guard lock(_status_mutex);
        _book_snapshot = _book.truth();
    }
    write_labels();
}

bool Volume::labels_current() const {
    return _epoch_durable.load(std::memory_order_acquire) >= _epoch_requested.load(std::memory_order_acquire);
}

void Volume::wait_labels(net::Reactor* origin, Function<void()> then) {
    uint64_t needed = _epoch_requested.load(std::memory_order_acquire);
    {
        std::lock_guard lock(_label_waiters_mutex);
        if (_epoch_durable.load(std::memory_order_acquire) < needed &&
            !_lost.load(std::memory_order_acquire)) {
            _label_waiters.push_back({needed, origin, std::move(then)});
            return;
        }
    }
    origin->post(std::move(then));
}

void Volume::write_labels() {
    if (_lost.load(std::memory_order_acquire)) {
        return;
    }
    if (_labels_writing) {
        _labels_again = true;
        return;
    }
    _labels_writing = true;
    _labels_again = false;
    uint64_t applied = _label_applied;
    uint64_t epoch_applied = _epoch_applied;
    uint32_t targets = writable_mask();
    struct Round {
        uint32_t left = 0;
        uint32_t ok = 0;
    };
    auto round = std::make_shared<Round>();
    auto self = shared_from_this();
    auto finish = [self, round, applied, epoch_applied] {
        for (uint32_t s = 0; s < self->_count; ++s) {
            if (round->ok & (1u << s)) {
                self->_book.written(s);
            }
        }
        self->labels_written(applied, epoch_applied);
    };
    for (uint32_t s = 0; s < _count; ++s) {
        if (targets & (1u << s)) {
            ++round->left;
        }
    }
    if (round->left == 0) {
        // No member to write to: nothing can be recorded, and nothing can be written either.
        finish();
        return;
    }
    for (uint32_t s = 0; s < _count; ++s) {
        if (!(targets & (1u << s))) {
            continue;
        }
        Label label = _book.label_for(s, _members[s].member_size, _members[s].data_offset);
        write_member_label(s, label, [self, round, s, finish](int error) {
            if (error == 0) {
                round->ok |= 1u << s;
            } else {
                self->member_error(s, error, "label write");
            }
            if (--round->left == 0) {
                finish();
            }
        });
    }
}

void Volume::labels_written(uint64_t applied, uint64_t epoch_applied) {
    _labels_writing = false;
    _label_durable = std::max(_label_durable, applied);
    uint64_t durable = std::max(_epoch_durable.load(), epoch_applied);
    _epoch_durable.store(durable, std::memory_order_release);
    std::vector<LabelWaiter> wake;
    {
        std::lock_guard lock(_label_waiters_mutex);
        for (size_t i = 0; i < _label_waiters.size();) {
            if (_label_waiters[i].needed <= durable) {
                wake.push_back(std::move(_label_waiters[i]));
                _label_waiters[i] = std::move(_label_waiters.back());
                _label_waiters.pop_back();
            } else {
                ++i;
            }
        }
    }
    for (auto& w : wake) {
        w.origin->post(std::move(w.then));
    }
    if (_labels_again || _label_applied > applied) {
        write_labels();
    }
}

void Volume::write_member_label(uint32_t slot, const Label& label, Function<void(int)> done) {
    Member& m = _members[slot];
    struct Write {
        Buffer data;
        std::array<OwnedRequest, label_copies> requests;
        unsigned left = 0;
        int error = 0;
        Function<void(int)> done;
    };
    auto w = std::make_shared<Write>();
    w->data = Buffer::allocate(label_size * label_copies);
    for (unsigned c = 0; c < label_copies; ++c) {
        encode_label(label, c, std::span<uint8_t>(w->data.data() + c * label_size, label_size));
    }
    w->done = std::move(done);
    auto offsets = label_offsets(m.member_size);
    backstore::Device* device = m.device.get();
    // Two phases: copies 0 and 2 (one at each end), then 1 and 3. A crash during either leaves two
    // intact copies of one version or the other.
    auto phase = std::make_shared<Function<void(unsigned)>>();
    *phase = [w, offsets, device, phase](unsigned first) {
        w->left = 2;
        for (unsigned c : {first, first + 2}) {
            OwnedRequest& r = w->requests[c];
            r.iov = {w->data.data() + c * label_size, label_size};
            r.request.op = backstore::IoOp::write;
            r.request.offset = offsets[c];
            r.request.length = label_size;
            r.request.iov = &r.iov;
            r.request.iovcnt = 1;
            r.request.fua = true;
            r.request.done = [w, first, phase](int error) {
                if (error != 0 && w->error == 0) {
                    w->error = error;
                }
                if (--w->left > 0) {
                    return;
                }
                if (first == 0 && w->error == 0) {
                    (*phase)(1);
                    return;
                }
                auto done = std::move(w->done);
                *phase = nullptr; // break the cycle
                done(w->error);
            };
            device->submit(r.request);
        }
    };
    (*phase)(0);
}

// ---- bitmap ----------------------------------------------------------------------------------------------

void Volume::write_bitmap_block(uint64_t block, Buffer data, Function<void(bool)> done) {
    const MetadataArea* area = _truth_at_open.area(AreaType::bitmap);
    uint32_t targets = writable_mask();
    struct Batch {
        std::vector<OwnedRequest> requests;
        uint32_t left = 0;
        bool any = false;
        Function<void(bool)> done;
    };
    auto b = std::make_shared<Batch>();
    b->requests.resize(_count);
    b->done = std::move(done);
    for (uint32_t s = 0; s < _count; ++s) {
        if (targets & (1u << s)) {
            ++b->left;
        }
    }
    if (b->left == 0 || _lost.load()) {
        _home.defer([b] { b->done(false); });
        return;
    }
    auto self = shared_from_this();
    for (uint32_t s = 0; s < _count; ++s) {
        if (!(targets & (1u << s))) {
            continue;
        }
        OwnedRequest& r = b->requests[s];
        r.data = data;
        r.iov = {data.data(), data.size()};
        r.request.op = backstore::IoOp::write;
        r.request.offset = area->offset + block * data.size();
        r.request.length = data.size();
        r.request.iov = &r.iov;
        r.request.iovcnt = 1;
        r.request.fua = true;
        r.request.done = [self, b, s](int error) {
            if (error == 0) {
                b->any = true;
            } else {
                self->member_error(s, error, "bitmap write");
            }
            if (--b->left == 0) {
                auto done = std::move(b->done);
                done(b->any);
            }
        };
        _members[s].device->submit(r.request);
    }
}

void Volume::schedule_sweep() {
    if (!_bitmap || _closing.load() || _lost.load()) {
        return;
    }
    auto self = shared_from_this();
    std::weak_ptr<Volume> weak = self;
    _sweep_timer = _home.add_timer(_options.sweep_interval, [weak] {
        auto self = weak.lock();
        if (!self) {
            return;
        }
        self->_sweep_timer = 0;
        self->sweep_now_on_home();
        self->schedule_sweep();
    });
}

void Volume::sweep_now_on_home() {
    if (_bitmap && !_lost.load()) {
        _bitmap->sweep(all_in_sync() && !(_resync && _resync->pending()));
    }
}

void Volume::sweep_now() {
    on_home([&] { sweep_now_on_home(); });
}

// ---- failed members: retry, and rejoin -------------------------------------------------------------------

void Volume::schedule_retry(uint32_t slot) {
    Member& m = _members[slot];
    if (m.retry_scheduled || m.retrying || _closing.load() || _lost.load()) {
        return;
    }
    if (_sums && m.checksum_errors.load() >= checksum_error_limit) {
        return; // its data rots: it stays out until it is replaced (docs/integrity.md)
    }
    if (!m.device && !_options.reopen) {
        return;
    }
    m.retry_delay = m.retry_delay.count() == 0
                        ? _options.retry_min
                        : std::min(_options.retry_max, std::chrono::milliseconds(m.retry_delay.count() * 2));
    m.retry_scheduled = true;
    std::weak_ptr<Volume> weak = shared_from_this();
    _home.add_timer(m.retry_delay, [weak, slot] {
        if (auto self = weak.lock()) {
            self->_members[slot].retry_scheduled = false;
            self->retry_member(slot);
        }
    });
}

void Volume::retry_member(uint32_t slot) {
    Member& m = _members[slot];
    auto state = MemberState(m.state.load());
    if (_closing.load() || _lost.load() || (state != MemberState::failed && state != MemberState::missing)) {
        return;
    }
    m.retrying = true;
    auto self = shared_from_this();
    auto again = [self, slot](const std::string& why) {
        self->_members[slot].retrying = false;
        log_debug("space {}: {} still unavailable: {}", self->_truth_at_open.name, self->_members[slot].url,
                  why);
        self->schedule_retry(slot);
    };
    // Step 3: read its labels and decide.
    auto probe = [self, slot, again] {
        Member& m = self->_members[slot];
        struct Probe {
            std::array<OwnedRequest, label_copies> reads;
            std::vector<std::vector<uint8_t>> copies = std::vector<std::vector<uint8_t>>(label_copies);
            unsigned left = label_copies;
        };
        auto p = std::make_shared<Probe>();
        auto offsets = label_offsets(m.member_size);
        for (unsigned c = 0; c < label_copies; ++c) {
            OwnedRequest& r = p->reads[c];
            r.data = Buffer::allocate(label_size);
            r.iov = {r.data.data(), label_size};
            r.request.op = backstore::IoOp::read;
            r.request.offset = offsets[c];
            r.request.length = label_size;
            r.request.iov = &r.iov;
            r.request.iovcnt = 1;
            r.request.done = [self, slot, p, c, again, offsets](int error) {
                if (error == 0) {
                    p->copies[c].assign(p->reads[c].data.data(), p->reads[c].data.data() + label_size);
                }
                if (--p->left > 0) {
                    return;
                }
                LabelReading reading = choose_label(p->copies, offsets);
                if (!reading.label) {
                    again("its labels cannot be read");
                    return;
                }
                self->_members[slot].retrying = false;
                self->rejoin(slot, *reading.label);
            };
            m.device->submit(r.request);
        }
    };
    // Step 2: a remote member whose session gave up logs in again first.
    auto reconnect = [self, slot, again, probe] {
        Member& m = self->_members[slot];
        if (m.remote && m.remote->failed()) {
            m.remote->reconnect([self, slot, again, probe](Result<void> r) mutable {
                self->_home.post([self, slot, r = std::move(r), again, probe]() mutable {
                    if (!r && r.error().code == EBADE) {
                        // Preempted while it was away: someone else holds the space now.
                        self->_members[slot].retrying = false;
                        self->lose(slot);
                        return;
                    }
                    if (!r) {
                        again(r.error().message);
                        return;
                    }
                    probe();
                });
            });
            return;
        }
        probe();
    };
    // Step 1: a missing member is opened again (blocking: on a worker thread).
    if (!m.device) {
        _home.run_blocking(
            [self, slot]() -> int64_t {
                auto device = self->_options.reopen(slot);
                if (!device) {
                    return -int64_t(device.error().code ? device.error().code : EIO);
                }
                std::lock_guard lock(self->_status_mutex);
                self->_reopened[slot] = std::move(*device);
                return 0;
            },
            [self, slot, again, reconnect](int64_t result) {
                if (result != 0) {
                    again(std::strerror(int(-result)));
                    return;
                }
                Member& m = self->_members[slot];
                {
                    std::lock_guard lock(self->_status_mutex);
                    m.device = std::move(self->_reopened[slot]);
                }
                m.remote = dynamic_cast<RemoteDevice*>(m.device.get());
                m.member_size = m.device->geometry().bytes();
                reconnect();
            });
        return;
    }
    reconnect();
}

void Volume::rejoin(uint32_t slot, const Label& own) {
    Member& m = _members[slot];
    const Label& truth = _book.truth();
    const MemberEntry& e = truth.members[slot];
    auto state = MemberState(m.state.load());
    if (_closing.load() || _lost.load() || (state != MemberState::failed && state != MemberState::missing)) {
        return;
    }
    if (own.space_uuid != truth.space_uuid || own.member_uuid != e.uuid) {
        log_error(
            "space {}: {} answers again but holds another member's label ({} of space {}); not rejoined",
            truth.name, m.url, to_string(own.member_uuid), own.name);
        schedule_retry(slot);
        return;
    }
    // As it was left (the label recorded when it went out, or one raise behind it), or holding the label
    // we last wrote to it: nobody else wrote to it meanwhile.
    Written written = _book.written_of(slot);
    bool as_left = (own.epoch == e.last_epoch && own.generation == e.last_generation) ||
                   (own.epoch + 1 == e.last_epoch && own.generation == e.last_previous_generation) ||
                   (own.epoch == written.epoch && own.generation == written.generation);
    if (!as_left) {
        log_error(
            "space {}: {} was written by someone else while it was out (its label: epoch {}, holder '{}'): "
            "not rejoined; replace it or resolve the split by assembling with --force-from",
            truth.name, m.url, own.epoch, own.holder);
        return;
    }
    if (m.member_size < m.data_offset + e.data_bytes) {
        log_error("space {}: {} is smaller than its data area now; not rejoined", truth.name, m.url);
        return;
    }
    RebuildMode mode = e.rebuild == RebuildMode::full ? RebuildMode::full : RebuildMode::delta;
    uint64_t from = mode == RebuildMode::full ? e.recovery_offset : 0;
    log_info("space {}: {} answers again; it rejoins for a {} resync", truth.name, m.url,
             mode == RebuildMode::full ? "full" : "delta");
    m.rebuild.store(uint8_t(mode));
    // It was out: what the bitmap marks below `from` is copied again, and is neither read from it meanwhile
    // (with checksums its resync starts only once the whole table has reached it) nor left below the
    // checkpoint in the labels (a clean close before then would have the next open resume from `from`).
    uint64_t readable = _resync->readable_below(from);
    m.synced_below.store(readable);
    m.resumes_clean = false;
    m.retry_delay = std::chrono::milliseconds(0);
    m.state.store(uint8_t(MemberState::rebuilding), std::memory_order_release);
    update_masks();
    change_labels([slot, mode, readable](LabelBook& book) {
        book.member_rejoins(slot, mode);
        if (book.truth().members[slot].recovery_offset > readable) {
            book.checkpoint(slot, readable);
        }
    });
    resync_after_checksums(slot, from);
    if (_thin) {
        thin_post([this, slot] { thin_include(slot); });
    }
}

// A member that comes back or is new gets the whole checksum table (it is writable now, so every later
// page write reaches it too) before its resync starts: it cannot be in sync, and be read as holding the
// current table at the next open, before it does.
void Volume::resync_after_checksums(uint32_t slot, uint64_t checkpoint) {
    if (!_sums) {
        _resync->add_target(slot, checkpoint);
        return;
    }
    sums_wait(sums_mark_all(), &_home, [this, slot, checkpoint](int error) {
        if (MemberState(_members[slot].state.load()) != MemberState::rebuilding || _closing.load()) {
            return;
        }
        if (error != 0) {
            member_error(slot, error, "checksums write");
            return;
        }
        _resync->add_target(slot, checkpoint);
    });
}

// ---- replace ---------------------------------------------------------------------------------------------

Result<void> Volume::replace_member(uint32_t slot, VolumeMember member, MemberEntry entry) {
    assert(net::Reactor::current() == nullptr);
    if (slot >= _count) {
        return make_error(fmt::format("slot {}: the space has {}", slot, _count), EINVAL);
    }
    if (!member.device) {
        return make_error("no device to put in", EINVAL);
    }
    return on_home([&]() -> Result<void> {
        Member& m = _members[slot];
        auto state = MemberState(m.state.load());
        if (state != MemberState::failed && state != MemberState::missing) {
            return make_error(fmt::format("{}: slot {} is {}; only a failed or missing member is replaced",
                                          m.url, slot, to_string(state)),
                              EBUSY);
        }
        if (m.inflight.load() != 0 || m.retrying) {
            return make_error(fmt::format("{}: requests are still in flight to it; try again", m.url), EBUSY);
        }
        // The old device goes (closed off the reactor: a RemoteDevice's session waits for its logout).
        auto old = std::make_shared<std::unique_ptr<backstore::Device>>(std::move(m.device));
        _home.run_blocking(
            [old]() -> int64_t {
                old->reset();
                return 0;
            },
            [](int64_t) {});
        m.device = std::move(member.device);
        m.remote = dynamic_cast<RemoteDevice*>(m.device.get());
        m.member_size = m.device->geometry().bytes();
        m.data_offset = member.data_offset;
        m.url = member.url;
        m.retry_delay = std::chrono::milliseconds(0);
        m.checksum_errors.store(0);
        m.rebuild.store(uint8_t(RebuildMode::full));
        m.synced_below.store(0);
        m.resumes_clean = false;
        m.state.store(uint8_t(MemberState::rebuilding), std::memory_order_release);
        update_masks();
        change_labels([slot, entry](LabelBook& book) { book.replace_member(slot, entry); });
        resync_after_checksums(slot, 0);
        if (_thin) {
            thin_post([this, slot] { thin_include(slot); }); // the map, before it is written or read there
        }
        return {};
    });
}

void Volume::set_resync_rate(uint64_t rate) {
    on_home([&] {
        _options.resync_rate = rate;
        if (_resync) {
            _resync->set_rate(rate);
        }
    });
}

bool Volume::wait_resync(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (on_home([&] { return _resync && _resync->pending(); })) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

// ---- status ----------------------------------------------------------------------------------------------

VolumeStatus Volume::status() const {
    VolumeStatus st;
    Label book;
    {
        std::lock_guard lock(_status_mutex);
        book = _book_snapshot;
    }
    st.name = book.name;
    st.uuid = book.space_uuid;
    st.layout = book.layout;
    st.size = _virtual_size;
    st.block_size = _block_size;
    if (_thin) {
        st.thin = true;
        st.cluster_size = uint32_t(_thin->cluster_size);
        st.allocated_bytes = _thin->allocated_clusters.load(std::memory_order_relaxed) * _thin->cluster_size;
        st.pool_bytes = _thin->pool_clusters.load(std::memory_order_relaxed) * _thin->cluster_size;
        st.pool_full = _thin->full.load(std::memory_order_relaxed);
        st.deferred_copies = _thin->deferred_copies.load(std::memory_order_relaxed);
        st.deferred_bytes = _thin->deferred_blocks.load(std::memory_order_relaxed) * thin::written_granule;
    }
    st.epoch = book.epoch;
    st.sequence = book.sequence;
    st.lost = _lost.load();
    st.failed = _failed.load();
    st.holder = book.holder;
    for (uint32_t s = 0; s < _count; ++s) {
        const Member& m = _members[s];
        MemberStatus ms;
        ms.slot = s;
        ms.url = m.url;
        ms.state = MemberState(m.state.load());
        ms.rebuild = RebuildMode(m.rebuild.load());
        ms.recovery_offset = m.synced_below.load();
        ms.errors = m.errors.load();
        ms.checksum_errors = m.checksum_errors.load();
        st.members.push_back(std::move(ms));
    }
    if (_resync) {
        st.resync = _resync->progress();
    }
    if (_sums) {
        std::lock_guard guard(_sums->scrub_mutex);
        st.scrub = _sums->scrub;
    }
    if (_bitmap) {
        st.dirty_regions = _bitmap->marked_count();
        st.bitmap = _bitmap->stats();
    }
    return st;
}

// ---- VolumeDevice ----------------------------------------------------------------------------------------

VolumeDevice::VolumeDevice(std::shared_ptr<Volume> volume) : _volume(std::move(volume)) {
    _volume->set_event_sink([this](backstore::DeviceEvent event) { notify(event); });
}

VolumeDevice::~VolumeDevice() {
    _volume->set_event_sink(nullptr);
}

std::string VolumeDevice::describe() const {
    return "space:" + _volume->truth_at_open().name;
}

uint64_t VolumeDevice::identity() const {
    uint64_t id = 0;
    std::memcpy(&id, _volume->truth_at_open().space_uuid.data(), sizeof id);
    return id;
}

void VolumeDevice::allocation_status(uint64_t offset, uint64_t length,
                                     Function<void(Result<std::vector<backstore::Extent>>)> done) {
    _volume->allocation_status(offset, length, std::move(done));
}

void Volume::allocation_status(uint64_t offset, uint64_t length,
                               Function<void(Result<std::vector<backstore::Extent>>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor);
    uint64_t bytes = geometry().bytes();
    uint64_t start = std::min(offset, bytes);
    uint64_t end = length > bytes - start ? bytes : start + length;
    if (_thin) {
        thin_allocation(start, end - start, reactor, std::move(done)); // the map says, per 4 KiB block
        return;
    }
    // A plain space's every block is backed by its members.
    reactor->defer([start, end, done = std::move(done)]() mutable {
        done(std::vector<backstore::Extent>{{start, end - start, true}});
    });
}

} // namespace ispace::volume
