#include "scsi/lu.hpp"

#include "common/buffer.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi/execution.hpp"
#include "scsi/sbc.hpp"

#include <algorithm>
#include <fmt/format.h>

namespace ispace::scsi {
namespace {

// SplitMix64 finaliser: spreads a device identity (often a small inode number) over all 64 bits so
// that designators of different devices differ in their high bits too.
uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// SPC-4 4.4.1: ASCII data fields hold 20h-7Eh only.
std::string printable(std::string_view s, size_t max) {
    std::string out;
    for (char c : s) {
        if (out.size() == max) {
            break;
        }
        out.push_back(c >= 0x20 && c <= 0x7e ? c : '_');
    }
    return out;
}

} // namespace

LogicalUnit::LogicalUnit(TargetDevice& target, uint64_t lun, std::unique_ptr<backstore::Device> device,
                         const LuOptions& options)
    : _target(target), _target_name(target.name()), _lun(lun), _device(std::move(device)), _options(options) {
    backstore::Geometry geometry = _device->geometry();
    _block_size = geometry.block_size;
    _block_count.store(geometry.block_count);
    _features = _device->features();
    // Whole blocks, at least one, and never more than one Buffer can hold: the bound on what one
    // command makes the target allocate.
    uint64_t max = std::min<uint64_t>(_options.max_transfer_bytes, Buffer::max_size);
    max -= max % _block_size;
    _max_transfer_bytes = uint32_t(std::max<uint64_t>(max, _block_size));
    _options.max_transfer_bytes = _max_transfer_bytes;
    _identifier = _options.identity.naa ? _options.identity.naa : mix64(_device->identity());
    _serial = _options.identity.serial.empty() ? fmt::format("{:016x}", _identifier)
                                               : printable(_options.identity.serial, 64);
    _reservations = std::make_unique<Reservations>(_options.pr_state_path, fmt::format("lun {}", _lun));
    _stats_slots = std::max(1u, _options.stats_reactors);
    _stats = std::make_unique<LuReactorStats[]>(_stats_slots);
    ModeValues defaults = default_mode_values();
    _wce.store(defaults.wce);
    _d_sense.store(defaults.d_sense);
    _swp.store(defaults.swp);
    _device->subscribe(this);
}

LogicalUnit::~LogicalUnit() {
    _device->unsubscribe(this);
    // A sanitize still running (ispaced stopping) outlives us in its reactor's timer or queue.
    sbc::abandon_sanitize(*this);
    if (_task_count != 0) {
        log_error("lun {}: destroyed with {} tasks still in the engine", _lun, _task_count);
    }
    _device.reset(); // closed before anyone is told the LU is gone
    if (_on_destroyed) {
        _on_destroyed();
    }
}

// --- life cycle ---------------------------------------------------------------------------------

void LogicalUnit::retire(LogicalUnit* lu) {
    bool idle;
    {
        std::lock_guard lock(lu->_mutex);
        lu->_retired = true;
        idle = lu->idle_locked();
    }
    if (idle) {
        destroy_later(lu);
    }
}

void LogicalUnit::destroy_later(LogicalUnit* lu) {
    if (net::Reactor* reactor = net::Reactor::current()) {
        reactor->defer([lu] { delete lu; });
    } else {
        delete lu;
    }
}

void LogicalUnit::release_hold() {
    bool destroy;
    {
        std::lock_guard lock(_mutex);
        --_holds;
        destroy = _retired && idle_locked();
    }
    if (destroy) {
        destroy_later(this);
    }
}

void LogicalUnit::withdraw(Function<void()> on_destroyed) {
    std::lock_guard lock(_mutex);
    _withdrawn.store(true, std::memory_order_release);
    _on_destroyed = std::move(on_destroyed);
}

void LogicalUnit::device_event(backstore::DeviceEvent event) {
    switch (event) {
    case backstore::DeviceEvent::resized: {
        uint64_t blocks = _device->geometry().block_count;
        uint64_t before = _block_count.exchange(blocks, std::memory_order_acq_rel);
        if (blocks != before) {
            log_info("{} lun {}: capacity changed from {} to {} blocks of {} bytes", _target_name, _lun,
                     before, blocks, _block_size);
            // SBC-4 4.5: every I_T nexus learns of the new capacity by unit attention.
            establish_ua_all(asc::capacity_data_has_changed);
        }
        break;
    }
    case backstore::DeviceEvent::failed:
        log_error("{} lun {}: {} failed; medium access answers LOGICAL UNIT FAILURE", _target_name, _lun,
                  _device->describe());
        _failed.store(true, std::memory_order_release);
        break;
    case backstore::DeviceEvent::removed:
        // The owner of the device withdrew it; whoever owns this LU removes it from the target.
        log_warn("{} lun {}: {} was withdrawn by its owner", _target_name, _lun, _device->describe());
        _failed.store(true, std::memory_order_release);
        break;
    }
}

void LogicalUnit::resize(std::shared_ptr<LogicalUnit> self, uint64_t bytes,
                         Function<void(Result<void>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "LogicalUnit::resize runs on a reactor thread");
    struct Resize {
        std::shared_ptr<LogicalUnit> lu;
        uint64_t bytes;
        Function<void(Result<void>)> done;
        RangeLock::Entry range;
        Result<void> result;
        net::Reactor* reactor;
    };
    auto* op = new Resize{std::move(self), bytes, std::move(done), {}, {}, reactor};
    bool shrink = bytes < op->lu->block_count() * op->lu->block_size();
    auto run_device_resize = [](void* context) {
        auto* op = static_cast<Resize*>(context);
        // The device's resize blocks (a file is allocated or truncated): on a worker, never here.
        op->reactor->run_blocking(
            [op]() -> int64_t {
                op->result = op->lu->device().resize(op->bytes);
                return 0;
            },
            [op](int64_t) {
                if (op->range.held()) {
                    op->lu->block_state().range_lock.release(op->range);
                }
                Function<void(Result<void>)> done = std::move(op->done);
                Result<void> result = std::move(op->result);
                delete op;
                done(std::move(result));
            });
    };
    if (!shrink) {
        run_device_resize(op);
        return;
    }
    // The whole LBA range, exclusively: commands past the new end finish first, new ones wait and
    // then see the smaller capacity.
    op->range.first = 0;
    op->range.end = ~uint64_t(0);
    op->range.exclusive = true;
    op->range.reactor = reactor;
    op->range.resume = run_device_resize;
    op->range.context = op;
    if (op->lu->block_state().range_lock.acquire(op->range)) {
        run_device_resize(op);
    }
}

// --- mode pages ---------------------------------------------------------------------------------

ModeValues LogicalUnit::mode_values() const {
    std::lock_guard lock(_mutex);
    return ModeValues{_wce.load(), _d_sense.load(), _swp.load()};
}

ModeValues LogicalUnit::default_mode_values() const {
    ModeValues v;
    v.wce = _options.write_cache;
    v.d_sense = false;
    v.swp = false;
    return v;
}

void LogicalUnit::set_mode_values(const ModeValues& values) {
    std::lock_guard lock(_mutex);
    _wce.store(values.wce);
    _d_sense.store(values.d_sense);
    _swp.store(values.swp);
}

void LogicalUnit::flush(Function<void(int error)> done, uint64_t offset, uint64_t length) {
    struct Flush {
        backstore::IoRequest io;
        Function<void(int)> done;
    };
    auto* f = new Flush();
    f->done = std::move(done);
    f->io.op = backstore::IoOp::flush;
    f->io.offset = offset;
    f->io.length = length;
    f->io.done = [f](int error) {
        Function<void(int)> callback = std::move(f->done);
        // Not freed inside its own callback: the device may still be returning from it.
        if (auto* r = net::Reactor::current()) {
            r->defer([f] { delete f; });
        } else {
            delete f;
        }
        if (callback) {
            callback(error);
        }
    };
    _device->submit(f->io);
}

// --- unit attentions ----------------------------------------------------------------------------

void LogicalUnit::nexus_added(uint64_t nexus, uint16_t code) {
    std::lock_guard lock(_mutex);
    _ua.add_nexus(nexus);
    _ua.establish(nexus, code);
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::nexus_removed(uint64_t nexus) {
    std::lock_guard lock(_mutex);
    _ua.remove_nexus(nexus);
    std::erase(_preventing, nexus);
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::establish_ua(uint64_t nexus, uint16_t code) {
    std::lock_guard lock(_mutex);
    _ua.establish(nexus, code);
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::establish_ua_all(uint16_t code) {
    std::lock_guard lock(_mutex);
    _ua.establish_all(code);
    _ua_pending.store(_ua.pending());
}

std::optional<uint16_t> LogicalUnit::take_ua(uint64_t nexus) {
    // The common case, nothing pending anywhere, costs one relaxed load and no lock.
    if (_ua_pending.load(std::memory_order_relaxed) == 0) {
        return std::nullopt;
    }
    std::lock_guard lock(_mutex);
    auto code = _ua.take(nexus);
    _ua_pending.store(_ua.pending());
    return code;
}

void LogicalUnit::clear_ua(uint64_t nexus, uint16_t code) {
    if (_ua_pending.load(std::memory_order_relaxed) == 0) {
        return;
    }
    std::lock_guard lock(_mutex);
    _ua.clear(nexus, code);
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::reset(uint16_t code) {
    ModeValues defaults = default_mode_values();
    // SPC-2 reservations end with a reset; persistent ones do not. (Reservations' lock is a leaf.)
    _reservations->reset();
    std::lock_guard lock(_mutex);
    _preventing.clear();
    _wce.store(defaults.wce);
    _d_sense.store(defaults.d_sense);
    _swp.store(defaults.swp);
    _ua.establish_all(code);
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::establish_ua_others(uint64_t except, uint16_t code) {
    std::lock_guard lock(_mutex);
    for (uint64_t nexus : _ua.nexuses()) {
        if (nexus != except) {
            _ua.establish(nexus, code);
        }
    }
    _ua_pending.store(_ua.pending());
}

void LogicalUnit::set_prevent(uint64_t nexus, bool prevent) {
    std::lock_guard lock(_mutex);
    std::erase(_preventing, nexus);
    if (prevent) {
        _preventing.push_back(nexus);
    }
}

bool LogicalUnit::medium_removal_prevented() const {
    std::lock_guard lock(_mutex);
    return !_preventing.empty();
}

// --- task list ----------------------------------------------------------------------------------

bool LogicalUnit::attach(Execution& cmd) {
    Task& task = cmd.task();
    std::lock_guard lock(_mutex);
    if (_withdrawn.load(std::memory_order_relaxed)) {
        return false;
    }
    task.lu = this;
    task.lu_prev = nullptr;
    task.lu_next = _tasks;
    if (_tasks) {
        _tasks->lu_prev = &task;
    }
    _tasks = &task;
    ++_task_count;
    return true;
}

bool LogicalUnit::detach(Execution& cmd, std::vector<TmfOp*>& tmfs) {
    Task& task = cmd.task();
    bool destroy = false;
    bool aborted;
    {
        std::lock_guard lock(_mutex);
        if (task.lu_prev) {
            task.lu_prev->lu_next = task.lu_next;
        } else {
            _tasks = task.lu_next;
        }
        if (task.lu_next) {
            task.lu_next->lu_prev = task.lu_prev;
        }
        task.lu_next = task.lu_prev = nullptr;
        --_task_count;
        // Read under the mutex: a TMF marks under it too, so it either saw the task in the list and
        // marked it (and is told below) or did not see it at all.
        tmfs.swap(cmd._tmfs);
        aborted = cmd._abort_requested.load(std::memory_order_relaxed);
        destroy = _retired && idle_locked();
    }
    if (destroy) {
        destroy_later(this);
    }
    return aborted;
}

size_t LogicalUnit::task_count() const {
    std::lock_guard lock(_mutex);
    return _task_count;
}

LuStatistics LogicalUnit::statistics() const {
    LuStatistics out;
    for (unsigned r = 0; r < _stats_slots; ++r) {
        const LuReactorStats& s = _stats[r];
        for (size_t c = 0; c < io_class_count; ++c) {
            out.commands[c] += s.commands[c].get();
            out.bytes[c] += s.bytes[c].get();
            out.latency_sum_us[c] += s.latency[c].sum_us();
            for (size_t b = 0; b < LocalHistogram::bucket_count; ++b) {
                out.latency_buckets[c][b] += s.latency[c].bucket(b);
            }
        }
    }
    return out;
}

} // namespace ispace::scsi
