// TargetDevice: LUN routing, the nexus registry, logical unit configuration, and the entry points of
// task management (the per-task mechanics are in tmf.cpp, the per-command flow in command.cpp).
#include "scsi/target.hpp"

#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/tmf.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <fmt/format.h>
#include <map>
#include <mutex>

namespace ispace::scsi {

// An immutable snapshot of the LUN table, sorted by LUN. Its entries keep their LUs alive; the LU's
// deleter (LogicalUnit::retire) waits for the LU's last task before destroying it.
class LunTable {
public:
    std::vector<std::pair<uint64_t, std::shared_ptr<LogicalUnit>>> entries;
    uint64_t generation = 0;

    LogicalUnit* find(uint64_t lun) const {
        auto it = std::lower_bound(entries.begin(), entries.end(), lun,
                                   [](const auto& entry, uint64_t key) { return entry.first < key; });
        return it != entries.end() && it->first == lun ? it->second.get() : nullptr;
    }
};

struct TargetDevice::Impl {
    // Writers only (LU and nexus changes, views): commands route through LunView and never take it.
    // Lock order: this mutex before any logical unit's.
    mutable std::mutex mutex;
    std::map<uint64_t, std::shared_ptr<LogicalUnit>> lus;
    std::shared_ptr<const LunTable> table;
    std::atomic<uint64_t> generation{1};
    struct ViewRef {
        std::weak_ptr<LunView> view;
        const LunView* key = nullptr;
        net::Reactor* reactor = nullptr;
    };
    std::vector<ViewRef> views;
    std::map<uint64_t, Nexus> nexuses;
    std::vector<PortGroup> port_groups; // alua.hpp

    std::vector<std::shared_ptr<LogicalUnit>> all_lus() const {
        std::lock_guard lock(mutex);
        std::vector<std::shared_ptr<LogicalUnit>> out;
        out.reserve(lus.size());
        for (const auto& [lun, lu] : lus) {
            out.push_back(lu);
        }
        return out;
    }
};

TargetDevice::TargetDevice(std::string name) : _name(std::move(name)), _impl(std::make_unique<Impl>()) {
    auto table = std::make_shared<LunTable>();
    table->generation = 1;
    _impl->table = std::move(table);
}

TargetDevice::~TargetDevice() = default;

void TargetDevice::publish_locked() {
    auto table = std::make_shared<LunTable>();
    table->generation = _impl->table->generation + 1;
    for (const auto& [lun, lu] : _impl->lus) {
        table->entries.emplace_back(lun, lu);
    }
    _impl->table = table;
    _impl->generation.store(table->generation, std::memory_order_release);
    // Idle sessions pick the table up now rather than at their next command, so that a removed LU is
    // not kept alive by a session that sends nothing.
    std::erase_if(_impl->views, [](const Impl::ViewRef& ref) { return ref.view.expired(); });
    for (const Impl::ViewRef& ref : _impl->views) {
        ref.reactor->post([view = ref.view, table] {
            if (auto v = view.lock(); v && v->_generation < table->generation) {
                v->_table = table;
                v->_generation = table->generation;
            }
        });
    }
}

void TargetDevice::attach_view(const std::shared_ptr<LunView>& view, net::Reactor& reactor) {
    std::lock_guard lock(_impl->mutex);
    view->_table = _impl->table;
    view->_generation = _impl->table->generation;
    _impl->views.push_back({view, view.get(), &reactor});
}

void TargetDevice::detach_view(const LunView* view) {
    std::lock_guard lock(_impl->mutex);
    std::erase_if(_impl->views, [view](const Impl::ViewRef& ref) { return ref.key == view; });
}

LogicalUnit* TargetDevice::route(Task& task, std::shared_ptr<const LunTable>& hold) {
    auto lun = decode_lun(task.lun);
    if (!lun || (task.nexus && !task.nexus->sees(*lun))) {
        return nullptr;
    }
    if (LunView* view = task.lun_view) {
        if (view->_generation != _impl->generation.load(std::memory_order_acquire)) {
            std::lock_guard lock(_impl->mutex);
            view->_table = _impl->table;
            view->_generation = _impl->table->generation;
        }
        // The view holds the table for as long as this (synchronous) routing needs it.
        return view->_table->find(*lun);
    }
    {
        std::lock_guard lock(_impl->mutex);
        hold = _impl->table;
    }
    return hold->find(*lun);
}

Result<void> TargetDevice::add_lu(uint64_t lun, std::unique_ptr<backstore::Device> device,
                                  LuOptions options) {
    if (!device) {
        return make_error(fmt::format("lun {}: no device", lun));
    }
    if (lun > max_lun) {
        return make_error(fmt::format("lun {}: LUNs go from 0 to {} (flat addressing)", lun, max_lun));
    }
    backstore::Geometry g = device->geometry();
    if (g.block_size != 512 && g.block_size != 4096) {
        return make_error(fmt::format("lun {}: {}: block size {} is not 512 or 4096", lun, device->describe(),
                                      g.block_size));
    }
    if (g.block_count == 0) {
        return make_error(fmt::format("lun {}: {}: the device is empty", lun, device->describe()));
    }
    std::lock_guard lock(_impl->mutex);
    if (_impl->lus.count(lun)) {
        return make_error(fmt::format("lun {}: already configured", lun), EEXIST);
    }
    std::shared_ptr<LogicalUnit> lu(new LogicalUnit(*this, lun, std::move(device), options),
                                    LogicalUnit::retire);
    // APTPL: registrations and the reservation an earlier run persisted (pr.hpp).
    if (auto restored = lu->reservations().load(); !restored) {
        return restored;
    }
    // SPC-4 / SAM-5: every nexus sees the new LU's power-on, and REPORTED LUNS DATA HAS CHANGED on the
    // LUs it already knew, so that initiators rescan.
    for (const auto& [id, nexus] : _impl->nexuses) {
        lu->nexus_added(id, asc::power_on_reset_or_bus_device_reset);
        lu->reservations().nexus_added(nexus);
    }
    if (!_impl->nexuses.empty()) {
        for (auto& [other_lun, other] : _impl->lus) {
            other->establish_ua_all(asc::reported_luns_data_has_changed);
        }
    }
    _impl->lus.emplace(lun, std::move(lu));
    publish_locked();
    return {};
}

Result<void> TargetDevice::remove_lu(uint64_t lun, Function<void()> done) {
    std::shared_ptr<LogicalUnit> lu;
    {
        std::lock_guard lock(_impl->mutex);
        auto it = _impl->lus.find(lun);
        if (it == _impl->lus.end()) {
            return make_error(fmt::format("lun {}: no such LUN", lun), ENOENT);
        }
        lu = std::move(it->second);
        _impl->lus.erase(it);
        // Commands that still find it in an old view are refused when they attach (withdraw).
        lu->withdraw(std::move(done));
        for (auto& [other_lun, other] : _impl->lus) {
            other->establish_ua_all(asc::reported_luns_data_has_changed);
        }
        publish_locked();
    }
    // Commands already inside end as aborted: the LU is gone for every nexus.
    lu->abort_tasks(TaskMatch{}, nullptr);
    return {};
}

void TargetDevice::resize_lu(uint64_t lun, uint64_t bytes, bool allow_shrink,
                             Function<void(Result<void>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "resize_lu is called on a reactor thread");
    std::shared_ptr<LogicalUnit> lu = find_lu(lun);
    auto answer = [reactor](Function<void(Result<void>)> callback, Result<void> result) {
        reactor->defer([callback = std::move(callback), result = std::move(result)]() mutable {
            callback(std::move(result));
        });
    };
    if (!lu) {
        answer(std::move(done), make_error(fmt::format("lun {}: no such LUN", lun), ENOENT));
        return;
    }
    uint64_t current = lu->block_count() * lu->block_size();
    if (bytes == current) {
        answer(std::move(done), Result<void>{});
        return;
    }
    if (bytes < current && !allow_shrink) {
        answer(
            std::move(done),
            make_error(fmt::format("lun {}: {} bytes is smaller than the LU ({} bytes); a shrink drops the "
                                   "data past the new end, so it must be asked for explicitly",
                                   lun, bytes, current),
                       EINVAL));
        return;
    }
    lu->resize(std::move(lu), bytes, std::move(done));
}

std::vector<uint64_t> TargetDevice::luns() const {
    std::lock_guard lock(_impl->mutex);
    std::vector<uint64_t> out;
    out.reserve(_impl->lus.size());
    for (const auto& [lun, lu] : _impl->lus) {
        out.push_back(lun);
    }
    return out;
}

std::shared_ptr<LogicalUnit> TargetDevice::find_lu(uint64_t lun) const {
    std::lock_guard lock(_impl->mutex);
    auto it = _impl->lus.find(lun);
    return it == _impl->lus.end() ? nullptr : it->second;
}

void TargetDevice::nexus_added(const Nexus& nexus) {
    std::lock_guard lock(_impl->mutex);
    _impl->nexuses[nexus.id] = nexus;
    for (auto& [lun, lu] : _impl->lus) {
        lu->nexus_added(nexus.id, asc::power_on_reset_or_bus_device_reset);
        lu->reservations().nexus_added(nexus);
    }
}

void TargetDevice::nexus_removed(const Nexus& nexus) {
    {
        std::lock_guard lock(_impl->mutex);
        _impl->nexuses.erase(nexus.id);
    }
    TaskMatch match;
    match.any_nexus = false;
    match.nexus = nexus.id;
    for (const std::shared_ptr<LogicalUnit>& lu : _impl->all_lus()) {
        lu->abort_tasks(match, nullptr);
        lu->nexus_removed(nexus.id);
        lu->reservations().nexus_removed(nexus.id);
    }
}

void TargetDevice::set_port_groups(std::vector<PortGroup> groups) {
    std::lock_guard lock(_impl->mutex);
    _impl->port_groups = std::move(groups);
}

void TargetDevice::add_port_group(PortGroup group) {
    std::lock_guard lock(_impl->mutex);
    for (PortGroup& g : _impl->port_groups) {
        if (g.id == group.id) {
            for (uint16_t port : group.relative_port_ids) {
                if (std::find(g.relative_port_ids.begin(), g.relative_port_ids.end(), port) ==
                    g.relative_port_ids.end()) {
                    g.relative_port_ids.push_back(port);
                }
            }
            return;
        }
    }
    _impl->port_groups.push_back(std::move(group));
}

std::vector<PortGroup> TargetDevice::port_groups() const {
    std::lock_guard lock(_impl->mutex);
    return _impl->port_groups;
}

void TargetDevice::flush_lu(uint64_t lun, Function<void(int error)> done) {
    std::shared_ptr<LogicalUnit> lu = find_lu(lun);
    if (!lu) {
        net::Reactor* reactor = net::Reactor::current();
        if (reactor) {
            reactor->defer([done = std::move(done)]() mutable { done(-ENOENT); });
        } else {
            done(-ENOENT);
        }
        return;
    }
    // The LU (and its device) stays alive until the flush is done, even if it is removed meanwhile.
    lu->flush([lu, done = std::move(done)](int error) mutable { done(error); });
}

void TargetDevice::submit(Task& task) {
    task.status = Status::good;
    task.sense_length = 0;
    task.transfer_length = 0;
    task.aborted = false;
    // Routing holds the table (through the task's view, or `hold`) until the execution is attached to
    // the LU's task list inside start(); from then on the task list keeps the LU alive.
    std::shared_ptr<const LunTable> hold;
    LogicalUnit* lu = route(task, hold);
    Execution::acquire(task, lu, *this).start();
}

void TargetDevice::data_out_done(Task& task, bool ok) {
    if (!task.execution) {
        log_error("data_out_done for a task that is not in the engine (tag {:#x})", task.tag);
        return;
    }
    task.execution->data_out_done(ok);
}

void TargetDevice::data_out_failed(Task& task, const Sense& sense) {
    if (!task.execution) {
        log_error("data_out_failed for a task that is not in the engine (tag {:#x})", task.tag);
        return;
    }
    task.execution->data_out_failed(sense);
}

// --- task management ----------------------------------------------------------------------------

namespace {

std::shared_ptr<LogicalUnit> lu_for_field(const TargetDevice& target, uint64_t lun_field) {
    auto lun = decode_lun(lun_field);
    return lun ? target.find_lu(*lun) : nullptr;
}

} // namespace

void TargetDevice::abort_task(const Nexus& nexus, uint64_t lun, uint64_t tag,
                              Function<void(TmfResult)> done) {
    std::shared_ptr<LogicalUnit> lu = lu_for_field(*this, lun);
    if (!lu) {
        tmf_answer(TmfResult::lun_not_found, std::move(done));
        return;
    }
    TmfOp* op = TmfOp::begin(std::move(done));
    TaskMatch match;
    match.any_nexus = false;
    match.nexus = nexus.id;
    match.one_tag = true;
    match.tag = tag;
    if (lu->abort_tasks(match, op) == 0) {
        op->result = TmfResult::task_not_found;
    }
    op->release();
}

void TargetDevice::abort_task_set(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done) {
    std::shared_ptr<LogicalUnit> lu = lu_for_field(*this, lun);
    if (!lu) {
        tmf_answer(TmfResult::lun_not_found, std::move(done));
        return;
    }
    TmfOp* op = TmfOp::begin(std::move(done));
    TaskMatch match;
    match.any_nexus = false;
    match.nexus = nexus.id;
    lu->abort_tasks(match, op);
    op->release();
}

void TargetDevice::clear_task_set(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done) {
    std::shared_ptr<LogicalUnit> lu = lu_for_field(*this, lun);
    if (!lu) {
        tmf_answer(TmfResult::lun_not_found, std::move(done));
        return;
    }
    TmfOp* op = TmfOp::begin(std::move(done));
    std::vector<uint64_t> hit;
    lu->abort_tasks(TaskMatch{}, op, &hit);
    // TAS=0: the other initiators learn of their lost commands by unit attention (SAM-5 5.6).
    for (uint64_t id : hit) {
        if (id != nexus.id) {
            lu->establish_ua(id, asc::commands_cleared_by_another_initiator);
        }
    }
    op->release();
}

void TargetDevice::logical_unit_reset(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done) {
    std::shared_ptr<LogicalUnit> lu = lu_for_field(*this, lun);
    if (!lu) {
        tmf_answer(TmfResult::lun_not_found, std::move(done));
        return;
    }
    TmfOp* op = TmfOp::begin(std::move(done));
    lu->abort_tasks(TaskMatch{}, op);
    // SAM-5 6.3.3: mode parameters back to default, BUS DEVICE RESET FUNCTION OCCURRED for every
    // nexus, the issuer included.
    lu->reset(asc::bus_device_reset_function_occurred);
    op->release();
}

void TargetDevice::target_reset(const Nexus& nexus, bool cold, Function<void(TmfResult)> done) {
    TmfOp* op = TmfOp::begin(std::move(done));
    // A warm reset is a hard reset of every LU (SCSI BUS RESET OCCURRED); a cold reset is a power on
    // (POWER ON OCCURRED). The iSCSI layer drops the sessions of a cold reset itself.
    uint16_t code = cold ? asc::power_on_occurred : asc::scsi_bus_reset_occurred;
    for (const std::shared_ptr<LogicalUnit>& lu : _impl->all_lus()) {
        lu->abort_tasks(TaskMatch{}, op);
        lu->reset(code);
        if (cold) {
            lu->reservations().power_on();
        }
    }
    op->release();
}

} // namespace ispace::scsi
