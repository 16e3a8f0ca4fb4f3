// scsi::Execution: the engine's state for one task while it is inside the engine, and the API the
// command handlers (spc.cpp, sbc.cpp) are written against.
//
// A handler parses its CDB and then either finishes at once (complete_*) or continues in steps:
// fetch_data_out() and submit_io() take the next step as a plain function pointer, which runs on the
// task's reactor when the data or the I/O is there. Each command ends with exactly one complete_*
// call; after it the handler must not touch the Execution.
//
// The engine side (start, data-out arrival, finishing, aborts) lives here too: it is the one place
// that knows the order of things — unlink from the logical unit's task list, mark an aborted task,
// hand the task back to the fabric, then tell waiting task management functions.
//
// Commands come from a per-thread pool: a task is created, executed and completed on one reactor.
#pragma once

#include "backstore/device.hpp"
#include "common/buffer.hpp"
#include "scsi/cdb.hpp"
#include "scsi/range_lock.hpp"
#include "scsi/task.hpp"
#include "scsi_spec/sense.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ispace::scsi {

class LogicalUnit;
class TargetDevice;
struct TmfOp;

class Execution {
public:
    using Step = void (*)(Execution&);

    Task& task() const { return *_task; }
    // nullptr for a LUN with no logical unit (only op_any_lun commands run then).
    LogicalUnit* lu() const { return _lu; }
    TargetDevice& target() const { return *_target; }
    const Operation& op() const { return *_op; }
    const uint8_t* cdb() const { return _task->cdb.data(); }
    uint64_t nexus_id() const { return _task->nexus ? _task->nexus->id : 0; }
    // A task management function asked for this command to end (it ends at its next step).
    bool abort_requested() const { return _abort_requested.load(std::memory_order_acquire); }

    // --- outcomes: each ends the command ---
    // GOOD; transfer_length as already set on the task, or as given.
    void complete_good();
    void complete_good(uint32_t transfer_length);
    // CHECK CONDITION with sense in the logical unit's format (D_SENSE). transfer_length is left as
    // the handler set it, so residuals stay those of the CDB.
    void complete_check(const Sense& sense);
    void complete_status(Status status);
    // GOOD with `data` as data-in, cut to the allocation length: transfer_length = min of the two.
    void complete_data_in(std::span<const uint8_t> data, uint32_t allocation_length);

    // --- data-out ---
    // Brings min(length, expected data-out) bytes into task().buffer (asking the fabric for what has
    // not arrived yet), then runs `next`. task().data_out_length says how much there is.
    void fetch_data_out(uint32_t length, Step next);
    // Bytes of data-out usable from task().buffer, at most `length`.
    uint32_t data_out_available(uint32_t length) const;

    // --- backstore I/O ---
    // One request on the logical unit's device over [data, data + length) (data may be null for
    // flush), then `next` runs with io_error() set (0 or -errno).
    void submit_io(backstore::IoOp op, uint64_t offset, uint64_t length, uint8_t* data, bool fua, Step next);
    // The same on another logical unit's device (EXTENDED COPY between logical units).
    void submit_io(backstore::Device& device, backstore::IoOp op, uint64_t offset, uint64_t length,
                   uint8_t* data, bool fua, Step next);
    // For a wait that is not submit_io (allocation status from a worker thread): the engine treats it
    // like backstore I/O, which a task management function waits for. The handler calls wait_begin()
    // and, when the result is in (on this reactor, never inside the call that began it), wait_end(next).
    void wait_begin();
    void wait_end(Step next);
    int io_error() const { return _io_error; }

    // --- LBA range lock (range_lock.hpp) ---
    // Holds [lba, lba + blocks) of the logical unit against overlapping commands of every session:
    // shared for plain reads and writes, exclusive for read-modify-write commands. `next` runs once
    // the range is granted: at once, or later on this reactor. The range is held until the command
    // completes or unlock_range(); a command holds one range at a time, and only around its I/O.
    void lock_range(uint64_t lba, uint64_t blocks, bool exclusive, Step next);
    // The same on another logical unit (EXTENDED COPY's source or destination).
    void lock_range(LogicalUnit& lu, uint64_t lba, uint64_t blocks, bool exclusive, Step next);
    void unlock_range();

    // --- scratch for handlers that run in steps ---
    BlockRange range;
    uint64_t progress = 0; // blocks done so far
    uint32_t chunk = 0;    // blocks in the I/O in flight
    uint8_t mode = 0;      // handler-specific (VERIFY: BYTCHK)
    bool fua = false;
    Buffer scratch;
    // What a handler keeps beyond these fields (EXTENDED COPY's descriptor lists); freed when the
    // command ends.
    struct HandlerState {
        virtual ~HandlerState() = default;
    };
    std::unique_ptr<HandlerState> state;

    // --- engine side (target.cpp, lu.cpp, tmf.cpp) ---
    static Execution& acquire(Task& task, LogicalUnit* lu, TargetDevice& target);
    // Routes and runs the command (UA check, opcode table, usage check, handler).
    void start();
    // Fabric::fetch_data_out() finished.
    void data_out_done(bool ok);
    // Fabric::fetch_data_out() failed with a transport error that ends the command with `sense`.
    void data_out_failed(const Sense& sense);
    uint64_t serial() const { return _serial; }
    bool waiting_for_data_out() const { return _state == State::waiting_data_out; }

private:
    friend class LogicalUnit;
    enum class State : uint8_t { running, waiting_data_out, waiting_io, waiting_range, done };

    Execution() = default;
    void reset(Task& task, LogicalUnit* lu, TargetDevice& target);
    void finish();
    void finish_now();
    void io_done(int error);
    static void range_granted(void* self);
    void release();

    Task* _task = nullptr;
    LogicalUnit* _lu = nullptr;
    TargetDevice* _target = nullptr;
    const Operation* _op = nullptr;
    Step _next = nullptr;
    State _state = State::running;
    // While > 0 the engine is inside submit()/data_out_done(): finishing then goes through defer().
    unsigned _sync_depth = 0;
    bool _finish_pending = false;
    bool _abandoned = false; // data_out_done(false): the fabric gave the task up
    uint64_t _serial = 0;
    std::chrono::steady_clock::time_point _arrived; // for the LU's latency histogram

    backstore::IoRequest _io;
    iovec _iov{};
    int _io_error = 0;
    RangeLock::Entry _range;
    RangeLock* _range_lock = nullptr; // whose lock _range is held in

    // Task management: set (under the logical unit's mutex) by a TMF on any reactor; read here on
    // the task's reactor at each step.
    std::atomic<bool> _abort_requested{false};
    bool _cancel_sent = false;
    std::vector<TmfOp*> _tmfs; // TMFs waiting for this task to be gone
};

} // namespace ispace::scsi
