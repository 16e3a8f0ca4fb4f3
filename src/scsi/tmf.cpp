#include "scsi/tmf.hpp"

#include "net/reactor.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"

#include <utility>
#include <vector>

namespace ispace::scsi {

bool TaskMatch::matches(const Task& task) const {
    if (&task == except) {
        return false;
    }
    if (!any_nexus && (!task.nexus || task.nexus->id != nexus)) {
        return false;
    }
    if (one_tag && task.tag != tag) {
        return false;
    }
    return true;
}

TmfOp* TmfOp::begin(Function<void(TmfResult)> done) {
    auto* op = new TmfOp();
    op->origin = net::Reactor::current();
    op->done = std::move(done);
    return op;
}

void TmfOp::release() {
    if (pending.fetch_sub(1, std::memory_order_acq_rel) != 1) {
        return;
    }
    if (origin) {
        origin->post([this] {
            if (done) {
                done(result);
            }
            delete this;
        });
        return;
    }
    // No reactor issued it (a tool or a test thread): answer where the last task went.
    if (done) {
        done(result);
    }
    delete this;
}

void tmf_answer(TmfResult result, Function<void(TmfResult)> done) {
    TmfOp* op = TmfOp::begin(std::move(done));
    op->result = result;
    op->release();
}

size_t LogicalUnit::abort_tasks(const TaskMatch& match, TmfOp* op, std::vector<uint64_t>* nexuses) {
    struct Poke {
        net::Reactor* reactor;
        uint64_t serial;
    };
    std::vector<Poke> pokes;
    size_t matched = 0;
    {
        std::lock_guard lock(_mutex);
        for (Task* t = _tasks; t; t = t->lu_next) {
            if (!match.matches(*t)) {
                continue;
            }
            Execution* cmd = t->execution;
            ++matched;
            cmd->_abort_requested.store(true, std::memory_order_release);
            if (op) {
                op->pending.fetch_add(1, std::memory_order_relaxed);
                cmd->_tmfs.push_back(op);
            }
            if (nexuses && t->nexus) {
                nexuses->push_back(t->nexus->id);
            }
            if (t->reactor) {
                pokes.push_back({t->reactor, cmd->serial()});
                ++_holds; // the LU outlives the poke, even if the task is gone by then
            }
        }
    }
    // The task may only be touched on its own reactor; the poke finds it again there by serial
    // (it may have completed meanwhile, in which case there is nothing left to do).
    for (const Poke& p : pokes) {
        p.reactor->post([this, serial = p.serial] {
            poke(serial);
            release_hold();
        });
    }
    return matched;
}

void LogicalUnit::poke(uint64_t serial) {
    Task* found = nullptr;
    {
        std::lock_guard lock(_mutex);
        for (Task* t = _tasks; t; t = t->lu_next) {
            if (t->execution && t->execution->serial() == serial) {
                found = t;
                break;
            }
        }
        if (!found || !found->execution->waiting_for_data_out() || found->execution->_cancel_sent) {
            return;
        }
        found->execution->_cancel_sent = true;
    }
    // Safe outside the lock: we are on the task's reactor, the only thread that completes it. The
    // fabric answers with data_out_done(task, false), which finishes the task as aborted. A task
    // waiting for backstore I/O needs no poke: io_done() sees the mark.
    found->fabric->cancel_data_out(*found);
}

} // namespace ispace::scsi
