// scsi::TargetDevice: a SCSI target device, i.e. a set of logical units behind one or more target
// ports. It routes tasks to logical units by LUN and runs task management. Transport-independent: the
// iSCSI front end is one user; a unit test with a fake fabric is another.
#pragma once

#include "backstore/device.hpp"
#include "common/function.hpp"
#include "common/result.hpp"
#include "scsi/alua.hpp"
#include "scsi/task.hpp"
#include "scsi_spec/sense.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ispace::scsi {

// Identity strings reported in INQUIRY and VPD pages.
struct LuIdentity {
    std::string vendor = "ISPACE";       // 8 chars, space padded on the wire
    std::string product = "ispace disk"; // 16 chars
    std::string revision = "0001";       // 4 chars
    std::string serial;                  // unit serial number (VPD 0x80); derived from the device if empty
    uint64_t naa = 0;                    // NAA IEEE Registered identifier low bits; derived if 0
};

struct LuOptions {
    LuIdentity identity;
    // Largest transfer a single command may move (Block Limits VPD MAXIMUM TRANSFER LENGTH); bounds the
    // memory one command can make the target allocate.
    uint32_t max_transfer_bytes = 8u << 20;
    uint32_t optimal_transfer_bytes = 1u << 20;
    bool write_cache = true; // WCE in the caching mode page: writes acknowledged before they are durable
                             // unless FUA; SYNCHRONIZE CACHE flushes.
    // SANITIZE OVERWRITE writes the whole medium in the background; at full speed it would starve every
    // other logical unit on the same disk. It is paced to this many bytes per second (0: unlimited).
    // BLOCK ERASE and CRYPTOGRAPHIC ERASE deallocate or zero ranges and are not paced.
    uint64_t sanitize_bytes_per_second = uint64_t(64) << 20;
    // Where the persistent reservation state of this LU is kept while an initiator asked for APTPL=1
    // (pr.hpp; one file per LU, written atomically). Empty: APTPL is not supported (PTPL_C=0).
    std::string pr_state_path;
    // Reactors whose commands the LU counts (LogicalUnit::statistics): one set of counters each, indexed
    // by Reactor::index(). Commands on a reactor of a higher index are not counted.
    unsigned stats_reactors = 8;
};

enum class TmfResult : uint8_t {
    complete,       // function complete
    task_not_found, // ABORT TASK of a tag that is not (or no longer) known
    lun_not_found,
    not_supported,
    rejected,
};

class LogicalUnit;
class LunTable;

// One session's picture of its target's LUN table: an immutable snapshot it picked up, and the
// generation it was. Routing a command compares the generation with the target's (a plain load of a
// counter that changes only when LUs are added or removed) and uses the snapshot: no lock, no shared
// write on the I/O path. When the table changes, the target also posts a refresh to every view's
// reactor, so an idle session lets go of a removed LU at once instead of at its next command.
// Reactor-local: a view is used only on the reactor it was attached with.
class LunView {
private:
    friend class TargetDevice;
    uint64_t _generation = 0; // 0: never picked up
    std::shared_ptr<const LunTable> _table;
};

// Lifetime: destroy a TargetDevice only once its reactors have stopped running engine work (task
// management posts closures that refer to its logical units).
//
// Live changes: LUs are added, removed and resized while sessions run. The LUN table is copied on
// write and published to the sessions' views (LunView). A removed LU leaves the table at once (new
// commands for it answer LOGICAL UNIT NOT SUPPORTED, every other LU raises REPORTED LUNS DATA HAS
// CHANGED), its commands in flight are aborted, and it is destroyed (its device closed) once the last
// view has let go of it and its last task has left.
class TargetDevice {
public:
    // `name` is the SCSI target name (the iSCSI IQN), used in designators.
    explicit TargetDevice(std::string name);
    ~TargetDevice();

    const std::string& name() const { return _name; }

    // Configuration (before serving, or at run time with a REPORTED LUNS DATA HAS CHANGED unit attention).
    // LUNs are 0..16383 (peripheral addressing below 256, flat above); the block size must be 512 or 4096.
    // Any thread.
    Result<void> add_lu(uint64_t lun, std::unique_ptr<backstore::Device> device, LuOptions options = {});
    // Takes the LU out of the table and aborts its commands in flight (see the class comment).
    // `done` runs once the LU is destroyed and its device closed: on the thread that let go of it
    // last (a reactor, or the caller). Any thread. ENOENT for a LUN that does not exist.
    Result<void> remove_lu(uint64_t lun, Function<void()> done = {});
    // Resizes the LU's device to `bytes` (DeviceEvent::resized then raises CAPACITY DATA HAS CHANGED for
    // every nexus). A shrink first takes the whole LU's range lock, so no command runs past the new end
    // while the device shrinks. Call on a reactor thread; the device's resize runs on a worker and
    // `done` runs on the calling reactor. Refuses a shrink unless `allow_shrink`.
    void resize_lu(uint64_t lun, uint64_t bytes, bool allow_shrink, Function<void(Result<void>)> done);
    std::vector<uint64_t> luns() const;
    // The LU, kept alive while the caller holds it (a removed LU is destroyed after its last holder).
    std::shared_ptr<LogicalUnit> find_lu(uint64_t lun) const;

    // Sessions' views of the LUN table (LunView). Attach on the view's reactor before its first task;
    // detach there before it is destroyed.
    void attach_view(const std::shared_ptr<LunView>& view, net::Reactor& reactor);
    void detach_view(const LunView* view);

    // Target port groups (alua.hpp): which relative target ports exist and how they are grouped, for
    // REPORT TARGET PORT GROUPS and for PERSISTENT RESERVE OUT's ALL_TG_PT and REGISTER AND MOVE. The
    // iSCSI daemon declares one group per portal group (id = relative port id = TPGT). add_port_group
    // merges into a group of the same id.
    void set_port_groups(std::vector<PortGroup> groups);
    void add_port_group(PortGroup group);
    std::vector<PortGroup> port_groups() const;

    // A new I_T nexus (session) appeared / went away. Adding one establishes a power-on unit attention
    // for it on every LU; losing one aborts its tasks (they complete with Task::aborted) and drops its
    // unit attentions. Nexus::id identifies it in the engine.
    void nexus_added(const Nexus& nexus);
    void nexus_removed(const Nexus& nexus);

    // Flushes a logical unit's device (shutdown: every acknowledged write durable). Call on a reactor
    // thread; `done(0 or -errno)` runs on it later, -ENOENT for an unknown LUN (a LUN number here).
    void flush_lu(uint64_t lun, Function<void(int error)> done);

    // Executes a task; ends with task.fabric->complete(task) on task.reactor.
    void submit(Task& task);
    // Continues a task after Fabric::fetch_data_out().
    void data_out_done(Task& task, bool ok);
    // The transport could not deliver the data-out (a Data-Out sequence error the transport chose to
    // answer per command rather than by dropping the connection): the task ends with CHECK CONDITION
    // and `sense` (in the logical unit's sense format), nothing written.
    void data_out_failed(Task& task, const Sense& sense);

    // Task management. `lun` is the SAM LUN field, as in Task::lun. `done` runs on the calling reactor
    // (posted, never inside the call) once every affected task has been terminated; called from a thread
    // with no reactor, it runs on the thread that terminates the last task. Tasks waiting for data-out
    // are cancelled (Fabric::cancel_data_out), tasks with backstore I/O in flight are waited for, and
    // each completes with Task::aborted set. ABORT TASK of an unknown tag answers task_not_found.
    void abort_task(const Nexus& nexus, uint64_t lun, uint64_t tag, Function<void(TmfResult)> done);
    void abort_task_set(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done);
    void clear_task_set(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done);
    void logical_unit_reset(const Nexus& nexus, uint64_t lun, Function<void(TmfResult)> done);
    void target_reset(const Nexus& nexus, bool cold, Function<void(TmfResult)> done);

private:
    struct Impl;
    // The LU a task's LUN routes to, through its view when it has one.
    LogicalUnit* route(Task& task, std::shared_ptr<const LunTable>& hold);
    void publish_locked(); // under Impl::mutex: a new table from Impl::lus, to every view
    std::string _name;
    std::unique_ptr<Impl> _impl;
};

} // namespace ispace::scsi
