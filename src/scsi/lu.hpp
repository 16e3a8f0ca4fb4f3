// scsi::LogicalUnit: one LU of a TargetDevice — a backstore device, its options and identity, and the
// state SCSI keeps per LU: unit attention queues per I_T nexus, the task list that task management
// walks, and the mode page values.
//
// Threads (docs/architecture.md "Threads"): tasks of many reactors use one LU at once. The shared
// state is small and rarely written, so it sits behind one mutex (`_mutex`); the values the data
// path reads per command (D_SENSE, WCE, SWP, "any unit attention pending?") are mirrored in atomics
// so a READ or WRITE takes the lock only to enter and leave the task list.
#pragma once

#include "backstore/device.hpp"
#include "common/counter.hpp"
#include "common/function.hpp"
#include "scsi/block_state.hpp"
#include "scsi/pr.hpp"
#include "scsi/target.hpp"
#include "scsi/ua.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ispace::scsi {

class Execution;
struct TaskMatch;
struct TmfOp;

// Mode page values a MODE SELECT may change (issue: MODE SELECT), reported by MODE SENSE.
struct ModeValues {
    bool wce = true;      // Caching page: write cache enabled
    bool d_sense = false; // Control page: descriptor format sense data
    bool swp = false;     // Control page: software write protect
};

// What the LU counts per command, for metrics: the class of the command (it reads the medium, writes
// it, or neither), the bytes it moved and how long it took from arrival in the engine to completion.
enum class IoClass : uint8_t { read, write, other };
inline constexpr size_t io_class_count = 3;

// One reactor's counters (written only by that reactor, read by anyone: common/counter.hpp).
struct alignas(64) LuReactorStats {
    std::array<LocalCounter, io_class_count> commands{};
    std::array<LocalCounter, io_class_count> bytes{};
    std::array<LocalHistogram, io_class_count> latency{};
};

// The sum over reactors, as a scrape sees it.
struct LuStatistics {
    std::array<uint64_t, io_class_count> commands{};
    std::array<uint64_t, io_class_count> bytes{};
    std::array<std::array<uint64_t, LocalHistogram::bucket_count>, io_class_count> latency_buckets{};
    std::array<uint64_t, io_class_count> latency_sum_us{};
};

// Lifetime: a TargetDevice holds its LUs by shared_ptr whose deleter is retire(): the last holder
// letting go does not destroy an LU that still has tasks inside (or pokes on their way to them); the
// last of those destroys it instead. That is what lets an LU be removed while sessions run.
class LogicalUnit final : private backstore::DeviceObserver {
public:
    LogicalUnit(TargetDevice& target, uint64_t lun, std::unique_ptr<backstore::Device> device,
                const LuOptions& options);
    ~LogicalUnit();
    // The deleter of the shared_ptrs that hold an LU (TargetDevice::add_lu).
    static void retire(LogicalUnit* lu);
    LogicalUnit(const LogicalUnit&) = delete;
    LogicalUnit& operator=(const LogicalUnit&) = delete;

    TargetDevice& target() const { return _target; }
    uint64_t lun() const { return _lun; }
    backstore::Device& device() const { return *_device; }
    const LuOptions& options() const { return _options; }
    const backstore::Features& features() const { return _features; }
    uint32_t block_size() const { return _block_size; }
    // Changes when the device is resized (DeviceEvent::resized), so read it once per command.
    uint64_t block_count() const { return _block_count.load(std::memory_order_acquire); }
    // A whole number of blocks, at least one, at most Buffer::max_size.
    uint32_t max_transfer_bytes() const { return _max_transfer_bytes; }
    // VPD 0x80 and the basis of the NAA designator.
    const std::string& serial() const { return _serial; }
    uint64_t identifier() const { return _identifier; }

    // --- mode pages ---
    ModeValues mode_values() const;
    ModeValues default_mode_values() const;
    bool descriptor_sense() const { return _d_sense.load(std::memory_order_relaxed); }
    bool write_cache_enabled() const { return _wce.load(std::memory_order_relaxed); }
    // Read-only backstore or SWP set.
    bool write_protected() const { return _features.read_only || _swp.load(std::memory_order_relaxed); }
    void set_mode_values(const ModeValues& values);

    // --- unit attentions (ua.hpp) ---
    void nexus_added(uint64_t nexus, uint16_t code);
    void nexus_removed(uint64_t nexus);
    void establish_ua(uint64_t nexus, uint16_t code);
    void establish_ua_all(uint16_t code);
    std::optional<uint16_t> take_ua(uint64_t nexus);
    void clear_ua(uint64_t nexus, uint16_t code);
    // To every nexus but `except` (MODE PARAMETERS CHANGED after a MODE SELECT).
    void establish_ua_others(uint64_t except, uint16_t code);

    // --- reservations (pr.hpp) and medium removal prevention ---
    Reservations& reservations() const { return *_reservations; }
    // PREVENT ALLOW MEDIUM REMOVAL: prevention holds while any I_T nexus prevents; it ends for a nexus
    // with PREVENT=0, its loss, and for all with a logical unit or target reset.
    void set_prevent(uint64_t nexus, bool prevent);
    bool medium_removal_prevented() const;

    // --- block commands (block_state.hpp): LBA range lock, sanitize state, held copy results ---
    BlockState& block_state() const { return *_block_state; }

    // A flush of the device not tied to a task (SYNCHRONIZE CACHE with IMMED, shutdown). On a reactor
    // thread; `done(0 or -errno)` runs there later. 0/0 is the whole device.
    void flush(Function<void(int error)> done, uint64_t offset = 0, uint64_t length = 0);

    // --- statistics ---
    // A command finished on reactor `reactor` (its thread only).
    void count(unsigned reactor, IoClass io_class, uint64_t bytes, uint64_t latency_us) {
        if (reactor < _stats_slots) {
            LuReactorStats& s = _stats[reactor];
            s.commands[size_t(io_class)].add();
            s.bytes[size_t(io_class)].add(bytes);
            s.latency[size_t(io_class)].observe(latency_us);
        }
    }
    // From any thread: the counters of every reactor, summed.
    LuStatistics statistics() const;

    // --- life cycle (target.hpp: live changes) ---
    // Removed from its target: tasks that still find it are refused at attach(). `on_destroyed` runs in
    // the destructor, once the device is closed.
    void withdraw(Function<void()> on_destroyed);
    bool withdrawn() const { return _withdrawn.load(std::memory_order_acquire); }
    // The device failed for good (DeviceEvent::failed): medium access answers HARDWARE ERROR, LOGICAL
    // UNIT FAILURE.
    bool failed() const { return _failed.load(std::memory_order_acquire); }
    // Resizes the device (TargetDevice::resize_lu; `self` keeps the LU alive meanwhile). A shrink holds
    // the whole LBA range exclusively while the device shrinks. On a reactor thread; `done` runs there.
    void resize(std::shared_ptr<LogicalUnit> self, uint64_t bytes, Function<void(Result<void>)> done);

    // --- reset (LOGICAL UNIT RESET, target resets): SAM-5 6.3.3 ---
    // Mode values back to their defaults and `code` established for every nexus.
    void reset(uint16_t code);

    // --- task list (execution.cpp) and task management (tmf.cpp) ---
    // Links the command's task; false (nothing linked) when the LU was withdrawn.
    bool attach(Execution& cmd);
    // Unlinks the command's task; returns whether a TMF asked for it to be aborted and hands over
    // the TMFs waiting for it.
    bool detach(Execution& cmd, std::vector<TmfOp*>& tmfs);
    // Marks every matching task for abort on behalf of `op` (may be null: nexus loss) and pokes each
    // on its reactor. Returns how many matched; `nexuses`, when given, receives their nexus ids.
    size_t abort_tasks(const TaskMatch& match, TmfOp* op, std::vector<uint64_t>* nexuses = nullptr);
    size_t task_count() const;

private:
    // On the task's reactor: moves a marked task along (cancels its data-out wait).
    void poke(uint64_t serial);
    void device_event(backstore::DeviceEvent event) override;
    // Under _mutex: nothing inside (no task, no poke on its way), so a retired LU may be destroyed.
    bool idle_locked() const { return _task_count == 0 && _holds == 0; }
    // Called after _mutex is released, when a retired LU became idle: destroys it (deferred on a
    // reactor, so that no caller up the stack still uses it).
    static void destroy_later(LogicalUnit* lu);
    // A poke on its way finished: drop its hold (and destroy a retired, idle LU).
    void release_hold();

    TargetDevice& _target;
    // For log lines after the target is gone (a resize that outlives a removed target holds the LU).
    std::string _target_name;
    uint64_t _lun;
    std::unique_ptr<backstore::Device> _device;
    LuOptions _options;
    uint32_t _block_size = 512;
    std::atomic<uint64_t> _block_count{0};
    backstore::Features _features;
    uint32_t _max_transfer_bytes = 0;
    std::string _serial;
    uint64_t _identifier = 0;

    mutable std::mutex _mutex;
    UnitAttentions _ua;                 // under _mutex
    std::atomic<size_t> _ua_pending{0}; // mirror of _ua.pending()
    Task* _tasks = nullptr;             // under _mutex: intrusive list through lu_next/lu_prev
    size_t _task_count = 0;             // under _mutex
    std::atomic<bool> _wce{true};       // written under _mutex
    std::atomic<bool> _d_sense{false};
    std::atomic<bool> _swp{false};
    std::unique_ptr<Reservations> _reservations;
    std::vector<uint64_t> _preventing; // under _mutex: nexuses with medium removal prevented
    std::unique_ptr<BlockState> _block_state = std::make_unique<BlockState>();
    unsigned _stats_slots = 0;
    std::unique_ptr<LuReactorStats[]> _stats;
    size_t _holds = 0;     // under _mutex: pokes posted and not yet run
    bool _retired = false; // under _mutex: no holder left; destroyed once idle
    std::atomic<bool> _withdrawn{false};
    std::atomic<bool> _failed{false};
    Function<void()> _on_destroyed; // under _mutex
};

} // namespace ispace::scsi
