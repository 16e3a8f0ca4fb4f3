#include "scsi/execution.hpp"

#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc.hpp"
#include "scsi/tmf.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace ispace::scsi {
namespace {

// Commands are created and released on the task's reactor, so a thread-local free list serves the
// fast path without locks or malloc. The cap keeps a burst from pinning memory forever.
constexpr size_t pool_cap = 1024;

struct Pool {
    std::vector<Execution*> free;
    ~Pool() {
        for (Execution* c : free) {
            delete c;
        }
    }
};

Pool& pool() {
    thread_local Pool instance;
    return instance;
}

std::atomic<uint64_t> next_serial{1};

} // namespace

Execution& Execution::acquire(Task& task, LogicalUnit* lu, TargetDevice& target) {
    auto& free = pool().free;
    Execution* cmd = nullptr;
    if (!free.empty()) {
        cmd = free.back();
        free.pop_back();
    } else {
        cmd = new Execution();
    }
    cmd->reset(task, lu, target);
    return *cmd;
}

void Execution::reset(Task& task, LogicalUnit* lu, TargetDevice& target) {
    _task = &task;
    _lu = lu;
    _target = &target;
    _op = nullptr;
    _next = nullptr;
    _state = State::running;
    _sync_depth = 0;
    _finish_pending = false;
    _abandoned = false;
    _serial = next_serial.fetch_add(1, std::memory_order_relaxed);
    _arrived = std::chrono::steady_clock::now();
    _io_error = 0;
    _abort_requested.store(false, std::memory_order_relaxed);
    _cancel_sent = false;
    _tmfs.clear();
    range = {};
    progress = 0;
    chunk = 0;
    mode = 0;
    fua = false;
    task.execution = this;
}

void Execution::release() {
    _task = nullptr;
    _lu = nullptr;
    _io.done = nullptr;
    scratch.reset();
    state.reset();
    auto& free = pool().free;
    if (free.size() < pool_cap) {
        free.push_back(this);
    } else {
        delete this;
    }
}

// --- routing ------------------------------------------------------------------------------------

void Execution::start() {
    Task& t = *_task;
    ++_sync_depth;
    Sense error;
    size_t cdb_length = std::clamp<size_t>(t.cdb_length, 1, Task::max_cdb);
    // Among the entries this logical unit supports: one it does not is answered as unknown, as
    // REPORT SUPPORTED OPERATION CODES says (cdb.hpp).
    _op = find_operation(std::span<const uint8_t>(t.cdb.data(), cdb_length), error, _lu);
    // The fabric hands over the whole CDB field (16 bytes for iSCSI); one shorter than the opcode's
    // form cannot be parsed.
    bool short_cdb = _op && cdb_length < _op->cdb_length;
    if (_lu && !_lu->attach(*this)) {
        // The LU was removed after this command's session last looked at the LUN table: it is gone.
        _lu = nullptr;
    }
    if (!_lu) {
        // SPC-4: INQUIRY, REQUEST SENSE and REPORT LUNS answer for any LUN; everything else is
        // LOGICAL UNIT NOT SUPPORTED.
        if (!_op || !(_op->flags & op_any_lun)) {
            complete_check(Sense::lu_not_supported());
        } else if (short_cdb) {
            complete_check(Sense::invalid_field_in_command_iu());
        } else if (auto bad = check_cdb_usage(*_op, cdb())) {
            complete_check(*bad);
        } else {
            _op->execute(*this);
        }
    } else {
        std::optional<uint16_t> ua;
        // A pending unit attention wins over everything but INQUIRY, REPORT LUNS and REQUEST
        // SENSE (SAM-5 5.14), including an unknown opcode, and is cleared by being reported.
        if (!_op || !(_op->flags & op_ua_exempt)) {
            ua = _lu->take_ua(nexus_id());
        }
        if (ua) {
            complete_check(Sense::make(SenseKey::unit_attention, *ua));
        } else if (!_op) {
            complete_check(error);
        } else if (short_cdb) {
            complete_check(Sense::invalid_field_in_command_iu());
        } else if (auto bad = check_cdb_usage(*_op, cdb(), _lu)) {
            complete_check(*bad);
        } else if (auto unavailable = sbc::sanitize_refuses(*_lu, *_op)) {
            // A sanitize operation runs or failed (SBC-4 4.11): medium access waits for it.
            complete_check(*unavailable);
        } else if (_lu->failed() && !(_op->flags & op_ua_exempt)) {
            // The device is gone for good (a lost remote member): say so rather than time out.
            complete_check(Sense::make(SenseKey::hardware_error, asc::logical_unit_failure));
        } else if (_lu->reservations().conflicts(*_op, cdb(), _task->nexus)) {
            // Another I_T nexus's reservation (pr.hpp); before write protection, so that a command
            // that may not run learns nothing else about the logical unit.
            complete_status(Status::reservation_conflict);
        } else if ((_op->flags & op_writes_medium) &&
                   (_lu->write_protected() || (_task->nexus && _task->nexus->read_only))) {
            complete_check(Sense::write_protected());
        } else {
            _op->execute(*this);
        }
    }
    if (--_sync_depth == 0 && _finish_pending) {
        finish();
    }
}

// --- outcomes -----------------------------------------------------------------------------------

void Execution::complete_good() {
    _task->status = Status::good;
    _task->sense_length = 0;
    finish();
}

void Execution::complete_good(uint32_t transfer_length) {
    _task->transfer_length = transfer_length;
    complete_good();
}

void Execution::complete_check(const Sense& sense) {
    _task->status = Status::check_condition;
    bool descriptor = _lu && _lu->descriptor_sense();
    _task->sense_length = uint8_t(build_sense(sense, descriptor, _task->sense));
    finish();
}

void Execution::complete_status(Status status) {
    _task->status = status;
    _task->sense_length = 0;
    finish();
}

void Execution::complete_data_in(std::span<const uint8_t> data, uint32_t allocation_length) {
    size_t n = std::min<size_t>(data.size(), allocation_length);
    if (n) {
        _task->buffer = Buffer::allocate(n);
        std::memcpy(_task->buffer.data(), data.data(), n);
    } else {
        _task->buffer.reset();
    }
    complete_good(uint32_t(n));
}

// --- data-out -----------------------------------------------------------------------------------

void Execution::fetch_data_out(uint32_t length, Step next) {
    Task& t = *_task;
    uint32_t wanted = t.data_out ? std::min(length, t.expected_length) : 0;
    if (t.data_out_length >= wanted) {
        // Everything the initiator will send is already here (immediate/unsolicited data).
        next(*this);
        return;
    }
    _next = next;
    _state = State::waiting_data_out;
    t.fabric->fetch_data_out(t, length);
}

uint32_t Execution::data_out_available(uint32_t length) const {
    const Task& t = *_task;
    uint64_t have = std::min<uint64_t>(t.data_out_length, t.buffer.size());
    return uint32_t(std::min<uint64_t>(have, length));
}

void Execution::data_out_done(bool ok) {
    if (_state != State::waiting_data_out) {
        // A fabric bug; continuing would run a step twice.
        log_error("data_out_done for a task that is not waiting for data-out (tag {:#x})", _task->tag);
        return;
    }
    _state = State::running;
    ++_sync_depth;
    if (!ok) {
        _abandoned = true;
        finish();
    } else if (_abort_requested.load(std::memory_order_acquire)) {
        finish();
    } else {
        _next(*this);
    }
    if (--_sync_depth == 0 && _finish_pending) {
        finish();
    }
}

void Execution::data_out_failed(const Sense& sense) {
    if (_state != State::waiting_data_out) {
        log_error("data_out_failed for a task that is not waiting for data-out (tag {:#x})", _task->tag);
        return;
    }
    _state = State::running;
    ++_sync_depth;
    if (_abort_requested.load(std::memory_order_acquire)) {
        finish();
    } else {
        complete_check(sense);
    }
    if (--_sync_depth == 0 && _finish_pending) {
        finish();
    }
}

// --- backstore I/O ------------------------------------------------------------------------------

void Execution::submit_io(backstore::IoOp op, uint64_t offset, uint64_t length, uint8_t* data, bool fua_flag,
                          Step next) {
    assert(_lu);
    submit_io(_lu->device(), op, offset, length, data, fua_flag, next);
}

void Execution::submit_io(backstore::Device& device, backstore::IoOp op, uint64_t offset, uint64_t length,
                          uint8_t* data, bool fua_flag, Step next) {
    _iov.iov_base = data;
    _iov.iov_len = data ? length : 0;
    _io.op = op;
    _io.offset = offset;
    _io.length = length;
    _io.iov = data ? &_iov : nullptr;
    _io.iovcnt = data ? 1 : 0;
    _io.fua = fua_flag;
    _io.done = [this](int error) { io_done(error); };
    _next = next;
    _state = State::waiting_io;
    device.submit(_io);
}

void Execution::wait_begin() {
    _state = State::waiting_io;
}

void Execution::wait_end(Step next) {
    _state = State::running;
    if (_abort_requested.load(std::memory_order_acquire)) {
        finish();
        return;
    }
    next(*this);
}

// --- LBA range lock -------------------------------------------------------------------------------

void Execution::lock_range(uint64_t lba, uint64_t blocks, bool exclusive, Step next) {
    assert(_lu);
    lock_range(*_lu, lba, blocks, exclusive, next);
}

void Execution::lock_range(LogicalUnit& lu, uint64_t lba, uint64_t blocks, bool exclusive, Step next) {
    assert(!_range.held());
    _range_lock = &lu.block_state().range_lock;
    _range.first = lba;
    _range.end = lba + blocks;
    _range.exclusive = exclusive;
    _range.reactor = _task->reactor;
    _range.resume = range_granted;
    _range.context = this;
    if (_range_lock->acquire(_range)) {
        next(*this);
        return;
    }
    _next = next;
    _state = State::waiting_range;
}

void Execution::unlock_range() {
    if (_range.held()) {
        _range_lock->release(_range);
    }
}

void Execution::range_granted(void* self) {
    auto& cmd = *static_cast<Execution*>(self);
    cmd._state = State::running;
    if (cmd._abort_requested.load(std::memory_order_acquire)) {
        // Aborted while it waited: the range is given back by finishing.
        cmd.finish();
        return;
    }
    cmd._next(cmd);
}

void Execution::io_done(int error) {
    _state = State::running;
    _io_error = error;
    if (_abort_requested.load(std::memory_order_acquire)) {
        // The I/O could not be recalled; now that it is over the task can go.
        finish();
        return;
    }
    _next(*this);
}

// --- finishing ----------------------------------------------------------------------------------

void Execution::finish() {
    if (_state == State::done) {
        return;
    }
    if (_sync_depth > 0) {
        // Still inside the fabric's submit()/data_out_done(): complete from the reactor instead.
        _finish_pending = true;
        return;
    }
    _state = State::done;
    if (_finish_pending && _task->reactor) {
        _task->reactor->defer([this] { finish_now(); });
        return;
    }
    finish_now();
}

void Execution::finish_now() {
    Task& t = *_task;
    // Before the task goes back to the fabric: whoever waits for the range may go on.
    unlock_range();
    if (_lu && _op) {
        // Per reactor, no shared write (lu.hpp): what the metrics report per LUN. Before detach(): the
        // last task to leave a removed LU may be what frees it.
        IoClass io_class = (_op->flags & op_writes_medium) ? IoClass::write
                           : (_op->flags & op_pr_read)     ? IoClass::read
                                                           : IoClass::other;
        uint64_t bytes = t.status == Status::good ? std::min(t.transfer_length, t.expected_length) : 0;
        auto latency = std::chrono::steady_clock::now() - _arrived;
        _lu->count(t.reactor ? t.reactor->index() : 0, io_class, bytes,
                   uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(latency).count()));
    }
    std::vector<TmfOp*> tmfs;
    bool aborted = _abandoned;
    if (_lu) {
        aborted = _lu->detach(*this, tmfs) || aborted;
    }
    if (aborted) {
        t.aborted = true;
        t.status = Status::task_aborted;
        t.sense_length = 0;
        t.transfer_length = 0;
    }
    t.execution = nullptr;
    release();
    t.fabric->complete(t);
    for (TmfOp* op : tmfs) {
        op->release();
    }
}

} // namespace ispace::scsi
