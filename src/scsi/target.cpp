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
#include <cerrno>
#include <fmt/format.h>
#include <map>
#include <shared_mutex>

namespace ispace::scsi {

struct TargetDevice::Impl {
    // Readers: every command (LUN lookup). Writers: add_lu, nexus changes. Lock order: this mutex
    // before any logical unit's.
    mutable std::shared_mutex mutex;
    std::map<uint64_t, std::unique_ptr<LogicalUnit>> lus;
    std::map<uint64_t, Nexus> nexuses;
    std::vector<PortGroup> port_groups; // alua.hpp

    std::vector<LogicalUnit*> all_lus() const {
        std::shared_lock lock(mutex);
        std::vector<LogicalUnit*> out;
        out.reserve(lus.size());
        for (const auto& [lun, lu] : lus) {
            out.push_back(lu.get());
        }
        return out;
    }
};

TargetDevice::TargetDevice(std::string name) : _name(std::move(name)), _impl(std::make_unique<Impl>()) {}

TargetDevice::~TargetDevice() = default;

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
    std::unique_lock lock(_impl->mutex);
    if (_impl->lus.count(lun)) {
        return make_error(fmt::format("lun {}: already configured", lun));
    }
    auto lu = std::make_unique<LogicalUnit>(*this, lun, std::move(device), options);
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
    return {};
}

std::vector<uint64_t> TargetDevice::luns() const {
    std::shared_lock lock(_impl->mutex);
    std::vector<uint64_t> out;
    out.reserve(_impl->lus.size());
    for (const auto& [lun, lu] : _impl->lus) {
        out.push_back(lun);
    }
    return out;
}

LogicalUnit* TargetDevice::find_lu(uint64_t lun) const {
    std::shared_lock lock(_impl->mutex);
    auto it = _impl->lus.find(lun);
    return it == _impl->lus.end() ? nullptr : it->second.get();
}

void TargetDevice::nexus_added(const Nexus& nexus) {
    std::unique_lock lock(_impl->mutex);
    _impl->nexuses[nexus.id] = nexus;
    for (auto& [lun, lu] : _impl->lus) {
        lu->nexus_added(nexus.id, asc::power_on_reset_or_bus_device_reset);
        lu->reservations().nexus_added(nexus);
    }
}

void TargetDevice::nexus_removed(const Nexus& nexus) {
    std::vector<LogicalUnit*> lus;
    {
        std::unique_lock lock(_impl->mutex);
        _impl->nexuses.erase(nexus.id);
        for (auto& [lun, lu] : _impl->lus) {
            lus.push_back(lu.get());
        }
    }
    TaskMatch match;
    match.any_nexus = false;
    match.nexus = nexus.id;
    for (LogicalUnit* lu : lus) {
        lu->abort_tasks(match, nullptr);
        lu->nexus_removed(nexus.id);
        lu->reservations().nexus_removed(nexus.id);
    }
}

void TargetDevice::set_port_groups(std::vector<PortGroup> groups) {
    std::unique_lock lock(_impl->mutex);
    _impl->port_groups = std::move(groups);
}

void TargetDevice::add_port_group(PortGroup group) {
    std::unique_lock lock(_impl->mutex);
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
    std::shared_lock lock(_impl->mutex);
    return _impl->port_groups;
}

void TargetDevice::flush_lu(uint64_t lun, Function<void(int error)> done) {
    LogicalUnit* lu = find_lu(lun);
    if (!lu) {
        net::Reactor* reactor = net::Reactor::current();
        if (reactor) {
            reactor->defer([done = std::move(done)]() mutable { done(-ENOENT); });
        } else {
            done(-ENOENT);
        }
        return;
    }
    lu->flush(std::move(done));
}

void TargetDevice::submit(Task& task) {
    task.status = Status::good;
    task.sense_length = 0;
    task.transfer_length = 0;
    task.aborted = false;
    LogicalUnit* lu = nullptr;
    if (auto lun = decode_lun(task.lun); lun && (!task.nexus || task.nexus->sees(*lun))) {
        lu = find_lu(*lun);
    }
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

LogicalUnit* lu_for_field(const TargetDevice& target, uint64_t lun_field) {
    auto lun = decode_lun(lun_field);
    return lun ? target.find_lu(*lun) : nullptr;
}

} // namespace

void TargetDevice::abort_task(const Nexus& nexus, uint64_t lun, uint64_t tag,
                              Function<void(TmfResult)> done) {
    LogicalUnit* lu = lu_for_field(*this, lun);
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
    LogicalUnit* lu = lu_for_field(*this, lun);
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
    LogicalUnit* lu = lu_for_field(*this, lun);
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
    LogicalUnit* lu = lu_for_field(*this, lun);
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
    for (LogicalUnit* lu : _impl->all_lus()) {
        lu->abort_tasks(TaskMatch{}, op);
        lu->reset(code);
        if (cold) {
            lu->reservations().power_on();
        }
    }
    op->release();
}

} // namespace ispace::scsi
