// Task management (SAM-5 7): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and the
// iSCSI TARGET WARM/COLD RESET, as a set of tasks to terminate and an operation that completes when
// the last of them is gone.
//
// A task lives on its connection's reactor and only that reactor touches it. A TMF (issued on any
// reactor) therefore never terminates a task itself: under the logical unit's mutex it marks every
// matching task (abort requested, and "tell me when you are gone"), then posts a poke to each task's
// reactor. There the task stops at its next step: a task waiting for data-out is cancelled through
// Fabric::cancel_data_out(); a task with backstore I/O in flight waits for the I/O (it cannot be
// recalled) and then stops. Either way it completes with Task::aborted set, and the last one to go
// runs the TMF's `done` on the reactor that issued it.
//
// Task aborted status: the Control mode page reports TAS=0, so aborted tasks send no status; other
// initiators whose tasks a CLEAR TASK SET removed get COMMANDS CLEARED BY ANOTHER INITIATOR (2F/00).
#pragma once

#include "common/function.hpp"
#include "scsi/target.hpp"

#include <atomic>
#include <cstdint>

namespace ispace::net {
class Reactor;
}

namespace ispace::scsi {

// Which tasks of a logical unit a TMF terminates.
struct TaskMatch {
    bool any_nexus = true;
    uint64_t nexus = 0; // when !any_nexus
    bool one_tag = false;
    uint64_t tag = 0;             // when one_tag
    const Task* except = nullptr; // never this one (PREEMPT AND ABORT spares itself)
    bool matches(const Task& task) const;
};

// One TMF in progress: completes when `pending` drops to zero. The issuer holds one count while it
// marks tasks, so the TMF cannot complete half-way through marking.
struct TmfOp {
    std::atomic<int> pending{1};
    TmfResult result = TmfResult::complete;
    net::Reactor* origin = nullptr; // where `done` runs; nullptr: on whichever thread drops the last count
    Function<void(TmfResult)> done;

    // Starts a TMF on the calling reactor.
    static TmfOp* begin(Function<void(TmfResult)> done);
    // Drops one count; the last one delivers `done` and frees the operation.
    void release();
};

// Delivers a TMF outcome that involved no task, still never inside the caller's call.
void tmf_answer(TmfResult result, Function<void(TmfResult)> done);

} // namespace ispace::scsi
