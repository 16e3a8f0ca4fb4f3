// scsi::Task: the only thing that crosses from a transport (iSCSI) into the SCSI engine.
//
// A transport ("fabric") receives a command, fills in the fabric part of a Task (it may derive its own
// per-command type from Task) and calls TargetDevice::submit(). The engine parses the CDB, asks the
// fabric for data-out when it needs it, executes against the backstore, fills in status, sense and
// data-in, and hands the task back with Fabric::complete(). The engine never sees a PDU; the fabric
// never parses a CDB.
//
// Threading: a task belongs to the reactor of its connection (`reactor`). The engine and the fabric
// touch a task only on that reactor; work from elsewhere (a LUN reset issued on another connection)
// is posted there.
#pragma once

#include "common/buffer.hpp"
#include "scsi_spec/sam.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ispace::net {
class Reactor;
}

namespace ispace::scsi {

class Execution;
class Fabric;
class LogicalUnit;
class LunView;

// An I_T nexus: one initiator port talking to one target port. For iSCSI the fabric makes one per
// session. Reservations and unit attentions are kept per nexus, keyed by the port names, so a
// re-login with the same ISID finds its registrations again.
struct Nexus {
    uint64_t id = 0;            // unique within the process
    std::string initiator_name; // "iqn.1994-05.com.redhat:abc"
    std::string initiator_port; // SPC TransportID form: "iqn.1994-05.com.redhat:abc,i,0x23d000000001"
    std::string target_name;    // "iqn.2026-11.org.ispace:disk"
    std::string target_port;    // "iqn.2026-11.org.ispace:disk,t,0x0001"
    uint16_t relative_target_port = 1;
    uint16_t target_port_group = 1;
    // LUN masking from the target's ACL: when set, only these LUNs exist for this nexus (others answer
    // as absent LUNs do, and REPORT LUNS leaves them out).
    std::shared_ptr<const std::vector<uint64_t>> visible_luns;
    // A read-only mapping: every LUN is write-protected for this nexus.
    bool read_only = false;

    bool sees(uint64_t lun) const {
        return !visible_luns ||
               std::find(visible_luns->begin(), visible_luns->end(), lun) != visible_luns->end();
    }
};

struct Task {
    static constexpr size_t max_cdb = 260; // 16-byte CDB plus an extended-CDB AHS
    static constexpr size_t max_sense = 252;

    virtual ~Task() = default;

    // --- filled in by the fabric before submit() ---
    Fabric* fabric = nullptr;
    net::Reactor* reactor = nullptr;
    const Nexus* nexus = nullptr;
    // The session's picture of the target's LUN table (target.hpp), so that routing a command takes no
    // lock; null: the engine looks the LUN up under the target's lock (tests, rare fabrics).
    LunView* lun_view = nullptr;
    // The 8-byte SAM LUN field as received, byte 0 in the most significant byte (load_be64 of the
    // iSCSI LUN field). Peripheral (00b) and flat (01b) addressing are understood.
    uint64_t lun = 0;
    uint64_t tag = 0; // the initiator's task tag (iSCSI ITT)
    TaskAttribute attribute = TaskAttribute::simple;
    std::array<uint8_t, max_cdb> cdb{};
    uint16_t cdb_length = 0;
    bool data_out = false;        // the initiator will send data (iSCSI W bit)
    bool data_in = false;         // the initiator expects data (iSCSI R bit)
    uint32_t expected_length = 0; // the initiator's expected data transfer length (EDTL)
    // Data-out already present in `buffer` when submitted (immediate/unsolicited data), and later the
    // total present after Fabric::fetch_data_out().
    uint32_t data_out_length = 0;
    Buffer buffer;

    // --- filled in by the engine ---
    Status status = Status::good;
    std::array<uint8_t, max_sense> sense{};
    uint8_t sense_length = 0;
    // The number of bytes the command itself transfers, from its CDB (for reads, what the device
    // returns; for writes, what it consumes). The fabric sends min(transfer_length, expected_length)
    // bytes of data-in from `buffer` and reports the difference as residual overflow or underflow.
    // Data-in is sent only with GOOD status; with CHECK CONDITION transfer_length still gives the
    // residual (a write whose EDTL is shorter than its CDB reports the overflow either way).
    uint32_t transfer_length = 0;
    // Set when a task management function or nexus loss terminated the task. The fabric sends no
    // response for it (RFC 7143 §11.5.1: the TMF response covers it) and releases it.
    bool aborted = false;

    // --- engine bookkeeping (not for fabrics) ---
    LogicalUnit* lu = nullptr; // the logical unit's task list (for task management) links these
    Task* lu_next = nullptr;
    Task* lu_prev = nullptr;
    Execution* execution = nullptr; // the engine's per-command state while the task is in the engine
};

// What the engine needs from a transport, per task. Calls happen on task.reactor. The engine never
// calls complete() from inside TargetDevice::submit() or data_out_done(): a command that finishes at
// once completes from Reactor::defer(), so a fabric never sees its task vanish under its own call.
class Fabric {
public:
    virtual ~Fabric() = default;
    // The engine needs the command's data-out. Bring task.buffer to hold the first
    // min(length, task.expected_length) bytes (soliciting what has not arrived; iSCSI sends R2Ts), set
    // task.data_out_length, then call TargetDevice::data_out_done(task, ok). ok == false (connection
    // lost, task cancelled) makes the engine abandon the task.
    virtual void fetch_data_out(Task& task, uint32_t length) = 0;
    // The engine terminated the task while fetch_data_out() was in progress (a TMF): stop soliciting and
    // call data_out_done(task, false) soon.
    virtual void cancel_data_out(Task& task) = 0;
    // The task is done: send its data-in and status (or nothing, when task.aborted). The engine does not
    // touch the task after this call.
    virtual void complete(Task& task) = 0;
};

} // namespace ispace::scsi
