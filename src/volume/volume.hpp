// Volume: a data-space at run time — a backstore::Device (VolumeDevice) built from member Devices
// (RemoteDevice, or local files and block devices), laid out by a Layout, recorded in labels, with a
// write-intent bitmap and a background resync.
//
// The data path (volume_io.cpp), on whatever reactor submits:
//  - a request is split into per-column extents (layout.hpp); a write goes to every writable copy of
//    its column (active and rebuilding members) from the caller's own memory — a local member gets the
//    caller's iovec, remote members share one Buffer (RemoteDevice::submit_shared), so a mirrored write
//    is never copied per member; a read goes to one in-sync copy;
//  - a write first counts itself in the bitmap (marked before it is sent; bitmap.hpp);
//  - a member that fails a request is marked failed at once (the other copies carry on: no error reaches
//    the caller while one in-sync copy of each extent exists), and the epoch is raised on the others
//    before any write is acknowledged (a write waits for that label write when it completes, not when it
//    starts, so writes keep flowing meanwhile);
//  - a read that fails is sent to another copy; reads avoid failed members and the part of a rebuilding
//    member not yet resynced;
//  - RESERVATION CONFLICT (EBADE) from any member means another holder took the space over: the volume
//    stops writing anything, reports itself lost and raises `removed` so that whatever exports it goes.
// Per request there is no lock and no allocation in the steady state: request state comes from a
// per-thread pool, member states and masks are atomics.
//
// Everything else runs on the volume's home reactor (volume_meta.cpp, resync.cpp): the label book and its
// writes (two phases, copies 0 and 2 then 1 and 3, each FUA, so a crash leaves two good copies), the
// bitmap's metadata writes and sweeps, retrying failed members with back-off (a RemoteDevice logs in
// again) and rejoining them for a delta resync, and the resync itself.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"
#include "net/reactor.hpp"
#include "volume/assembly.hpp"
#include "volume/bitmap.hpp"
#include "volume/epoch.hpp"
#include "volume/label.hpp"
#include "volume/layout.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ispace::volume {

class RemoteDevice;
class Resync;
struct VolumeIo;
struct ThinIo;
struct ThinState;
struct ChecksumState;
struct ChecksumRepair;
class LandingSums;
struct ScrubWindow;
namespace thin {
struct WritePlan;
struct DeviceInfo;
} // namespace thin

// What taking a snapshot cost (docs/thin.md, "Snapshots and clones"): the time the space's I/O waited
// (nothing new planned while the writes in flight landed, the pool took the snapshot and committed) and
// the part of it the snapshot and its commit took.
struct ThinSnapshotTiming {
    double pause_ms = 0;
    double create_ms = 0;
};

struct VolumeMember {
    std::unique_ptr<backstore::Device> device; // null: not found (missing)
    uint64_t data_offset = 0;                  // from its label (or plan_member at create)
    std::string url;                           // as given (secrets masked), for status and logs
};

struct VolumeOptions {
    std::chrono::milliseconds sweep_interval{2000};
    uint64_t resync_rate = 0;       // bytes per second; 0: unlimited
    unsigned resync_depth = 16;     // windows in flight while no foreground I/O runs
    unsigned resync_busy_depth = 2; // ... and while it does
    std::chrono::milliseconds retry_min{1000};
    std::chrono::milliseconds retry_max{30000};
    // Opens a missing member's device again (blocking: called on a worker thread). Empty: a missing
    // member stays missing until it is replaced.
    std::function<Result<std::unique_ptr<backstore::Device>>(uint32_t slot)> reopen;
    // Who holds the space (written into the labels): reservation key and name.
    uint64_t holder_key = 0;
    std::string holder;
    // Called once (on a worker thread, where it may block) when the volume lost the space to another
    // holder: its owner closes it.
    std::function<void()> on_lost;
};

struct ResyncProgress {
    bool running = false;
    std::string what;        // "rebuild of slot 1 (delta)", "making dirty regions equal"
    uint64_t done_bytes = 0; // of this pass
    uint64_t total_bytes = 0;
    double rate = 0; // bytes per second, recent
    double eta_seconds = 0;
    uint64_t copied_bytes = 0; // moved since the volume opened (all passes)
};

// A scrub of a space with block checksums (docs/integrity.md): every copy of every block read and checked.
struct ScrubProgress {
    bool running = false;
    uint64_t done_bytes = 0; // of the layout range, this pass (or the last)
    uint64_t total_bytes = 0;
    uint64_t bad_blocks = 0;           // block copies that failed their checksum
    uint64_t repaired_blocks = 0;      // ... rewritten from a good copy
    uint64_t unrecoverable_blocks = 0; // blocks with no good copy (their layout offsets are logged)
    uint64_t passes = 0;               // finished since open
    bool paused = false;               // --pause: stopped at done_bytes until --resume
    // Paused because the holder stopped while it ran (the labels said "running" at open): --resume goes on.
    bool interrupted = false;
    uint64_t rate = 0;           // bytes per second it is held to (0: as fast as it goes)
    uint64_t started = 0;        // unix seconds (0: no scrub since the space was made)
    uint64_t finished = 0;       // unix seconds: the last scrub finished then (0: it has not)
    uint64_t checked_blocks = 0; // 4 KiB blocks compared against their stored checksum
    std::vector<uint64_t> lost;  // layout offsets of the first blocks with no good copy (max_scrub_lost)
    // Entries of a member's copy of the checksum table that differed from the table in memory (the copy
    // rotted); the pages holding them were written again. This pass (or the last) since open; not kept in
    // the labels.
    uint64_t table_entries_rewritten = 0;
    // Copies of table pages that failed their own check (docs/integrity.md), written again likewise.
    uint64_t table_pages_rewritten = 0;
};

enum class ScrubAction : uint8_t { start, pause, resume };

// What a label's scrub record says, as progress of a layout range of `total` bytes: a record that was running
// is paused and interrupted (docs/integrity.md).
ScrubProgress scrub_progress_of(const ScrubRecord& record, uint64_t total);

struct MemberStatus {
    uint32_t slot = 0;
    std::string url;
    MemberState state = MemberState::active;
    RebuildMode rebuild = RebuildMode::none;
    uint64_t recovery_offset = 0;
    uint64_t errors = 0;
    uint64_t checksum_errors = 0; // blocks read from it that failed their checksum (kept in the labels)
};

struct VolumeStatus {
    std::string name;
    Uuid uuid{};
    LayoutKind layout = LayoutKind::mirror;
    uint64_t size = 0;
    uint32_t block_size = 0;
    uint64_t epoch = 0;
    uint64_t sequence = 0;
    bool lost = false;   // another holder took the space over (reservation conflict)
    bool failed = false; // some part of the space has no copy left
    std::string holder;
    std::vector<MemberStatus> members;
    ResyncProgress resync;
    ScrubProgress scrub;
    uint64_t dirty_regions = 0;
    WriteIntentBitmap::Stats bitmap;
    // A thin space (docs/thin.md): `size` is what it provides; these say what it takes from its members.
    bool thin = false;
    uint64_t allocated_bytes = 0; // clusters the space's map holds
    uint64_t pool_bytes = 0;      // clusters the members give it
    uint32_t cluster_size = 0;
    bool pool_full = false;       // the last write that needed a cluster found none
    uint64_t deferred_copies = 0; // copy-on-write copies the background copier has yet to do
    uint64_t deferred_bytes = 0;  // ... and their pending bytes
};

// What Volume::grow did: the range in use before and after (a plain space's size; a thin space's pool),
// and why it is less than the members give, when it is.
struct GrowResult {
    bool thin = false;
    uint64_t before = 0;
    uint64_t after = 0;
    std::vector<std::string> notes;
};

class Volume : public std::enable_shared_from_this<Volume> {
public:
    // Opens a space from its assembly plan and its member devices (members[slot]; the plan's `found`
    // says which): marks what the plan says (missing, stale, rebuilding), raises the epoch when
    // membership changed or the last holder did not close cleanly, writes the labels (clean flag off),
    // loads the bitmap and starts the resyncs it needs. Blocks: not on a reactor thread.
    static Result<std::shared_ptr<Volume>> open(net::ReactorGroup& reactors, const AssemblyPlan& plan,
                                                std::vector<VolumeMember> members, VolumeOptions options);
    ~Volume();

    // Stops the resync and the timers, waits for metadata writes, flushes the members and writes labels
    // with the clean flag. No request may be in flight. Blocks: not on a reactor thread. Idempotent.
    Result<void> close();

    // Stops everything the volume does in the background and writes nothing more: what kill -9 of the
    // holder leaves on the members (no clean flag). For tests of unclean stops. Blocks.
    void abandon();

    // The backstore::Device contract (VolumeDevice forwards here).
    backstore::Geometry geometry() const { return {_block_size, _virtual_size / _block_size}; }
    backstore::Features features() const { return _features; }
    void submit(backstore::IoRequest& request);

    VolumeStatus status() const; // any thread
    const Label& truth_at_open() const { return _truth_at_open; }
    bool lost() const { return _lost.load(std::memory_order_acquire); }
    bool thin() const { return _thin != nullptr; }
    // Which parts of [offset, +length) hold data (a thin space's map; anything else is all mapped).
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done);
    // Receives the volume's events (lost -> removed, no copy left -> failed); any thread.
    void set_event_sink(std::function<void(backstore::DeviceEvent)> sink);

    // --- management (any thread but a reactor; blocking) ---
    // Changes the resync rate (bytes per second, 0: unlimited).
    void set_resync_rate(uint64_t bytes_per_second);
    // Takes `slot` out of service (marked failed, epoch raised), as if it had failed: before a replace of
    // a member that is still in sync. Refused when it holds the last in-sync copy of some data.
    Result<void> fail_member(uint32_t slot);
    // Puts `device` in `slot` (which must be failed or missing) as a new member, rebuilt in full.
    Result<void> replace_member(uint32_t slot, VolumeMember member, MemberEntry entry);
    // Takes the room members gained (files extended, LUNs resized on their targets: each member's size is
    // read again) online: a plain space grows, a thin space's pool does (volume_grow.cpp says in which
    // order, and why a crash at any instant is safe). Every member must be in sync and no resync running.
    // after == before: there was nothing to take.
    // `column`: a new member appended to a concat (its `entry.data_bytes` of room; fenced by the caller).
    Result<GrowResult> grow(std::optional<VolumeMember> column = std::nullopt, MemberEntry entry = {});
    // Starts a scrub (a space with block checksums; refused while one runs or is paused), pauses it after
    // the window in flight, or resumes it where it stopped. `rate`: bytes per second for start and resume
    // (0: unlimited). Any thread.
    Result<void> scrub(ScrubAction action = ScrubAction::start, uint64_t rate = 0);
    // Waits until no resync is pending (or `limit` passed); for tests and tools.
    bool wait_resync(std::chrono::milliseconds limit);
    // Runs one bitmap sweep now (as the timer does); for tests.
    void sweep_now();
    // The member device of `slot` (null when missing), for tests and fencing.
    backstore::Device* member_device(uint32_t slot) const;
    uint32_t member_count() const { return _count; }
    net::Reactor& home() { return _home; }

    // --- snapshots and clones of a thin space (volume_thin.cpp; blocking: not on a reactor) ---
    // Names are the pool's device names: "space" (thin_device_name) is the space itself, a snapshot of
    // device D is "D@SNAP", a clone is named by itself.
    // A read-only point-in-time copy of `source`, committed before this returns (crash-consistent: every
    // write acknowledged before the call is in it). EEXIST: the name is taken.
    Result<ThinSnapshotTiming> thin_snapshot(const std::string& source, const std::string& name);
    // A writable device sharing everything snapshot `snapshot` maps; committed before this returns.
    Result<void> thin_clone(const std::string& snapshot, const std::string& name);
    // Drops a snapshot or clone (EBUSY while a view of it is open); what only it held is free after the
    // commit this makes. The space's own device is never removed here (destroy the space).
    Result<void> thin_remove(const std::string& name);
    Result<std::vector<thin::DeviceInfo>> thin_devices();
    // A Device over pool device `name` through this volume's worker and members: read-only for a
    // snapshot. While it lives the device cannot be removed.
    Result<std::shared_ptr<backstore::Device>> thin_view(const std::string& name);

private:
    friend class ThinViewDevice;
    friend class Resync;
    friend struct VolumeIo;
    friend class VolumeThinStore;
    friend struct ChecksumRepair;
    Volume(net::ReactorGroup& reactors, VolumeOptions options);

    // A member at run time. States change by CAS (any reactor for failures; home for the rest).
    struct Member {
        std::atomic<uint8_t> state{uint8_t(MemberState::missing)};
        std::unique_ptr<backstore::Device> device;
        RemoteDevice* remote = nullptr; // when `device` is one: shared buffers, reconnect
        uint64_t data_offset = 0;
        uint64_t member_size = 0;
        std::string url;
        std::atomic<uint64_t> errors{0};
        std::atomic<uint64_t> checksum_errors{0};
        std::atomic<uint32_t> inflight{0};
        // Rebuilding: the space offset below which it is in sync (full) or below which the bitmap's
        // regions were copied to it (delta); home writes it, readers may look.
        std::atomic<uint64_t> synced_below{0};
        std::atomic<uint8_t> rebuild{uint8_t(RebuildMode::none)};
        // Set at open for a member whose rebuild was interrupted by a clean close while it stayed in: every
        // write below its checkpoint reached it, so its resync goes on from there alone (Resync::add_target).
        bool resumes_clean = false;
        // Home reactor only: retry back-off.
        std::chrono::milliseconds retry_delay{0};
        bool retry_scheduled = false;
        bool retrying = false;
    };

    // --- data path (volume_io.cpp) ---
    // A request on the layout's address range (for a thin space: the pool's clusters).
    void submit_physical(backstore::IoRequest& request);
    // The layout path for an admitted request; `sums_ticket`: the checksum pages its write waits for.
    void submit_layout(backstore::IoRequest& request, net::Reactor* origin, uint64_t sums_ticket = 0);
    // The checks a request passes before it counts as in flight (lost space, alignment and range
    // against `size`, UNMAP/WRITE ZEROES the members cannot do when `member_features`, empty, closing);
    // false when it was completed here.
    bool admit(net::Reactor* origin, backstore::IoRequest& request, uint64_t size, bool member_features);
    void start_write(VolumeIo* io);
    void send_children(VolumeIo* io);
    void child_done(VolumeIo* io, uint32_t child, int error);
    void read_extent(VolumeIo* io, uint32_t extent, uint32_t tried);
    void finish(VolumeIo* io);
    void complete(VolumeIo* io, int error);
    // A copy of column `column` that can serve [offset, +length) of the space, not in `tried`; -1: none.
    int pick_reader(uint32_t column, uint64_t offset, uint64_t length, uint32_t tried) const;
    bool synced(uint32_t slot, uint64_t offset, uint64_t length) const;
    // Submits `request` to member `slot` (counting it in flight), with a shared Buffer for remote writes.
    void submit_member(uint32_t slot, backstore::IoRequest& request, const Buffer* shared);

    // --- block checksums (volume_checksum.cpp, docs/integrity.md) ---
    Result<void> sums_open(const Label& truth, bool unclean); // at open, after the labels
    // At open: the other in-sync members' copies of the table compared with `image` (read from slot
    // `from`); a page that fails its own check is never used (another member's sound copy is, or else the
    // page is made again from the data); differing entries settled against the data, and every copy that
    // differs or failed its check rewritten.
    void sums_settle_copies(std::vector<uint8_t>& image, uint64_t blocks, uint32_t from, uint64_t area_offset,
                            ChecksumPageFormat format, const std::string& name);
    // At open: table page `page` (into `out`), which no in-sync member holds intact, made again from the
    // blocks it covers; the blocks whose copies differed and matched no entry of the damaged copies.
    uint64_t sums_rebuild_page(uint8_t* out, uint64_t page, uint64_t blocks, uint64_t area_offset,
                               ChecksumPageFormat format, const std::string& name);
    // At open, for the two above: every in-sync copy of extent `x`, read whole (a copy that cannot be read
    // is reported and left out); and copy `winner`'s 4 KiB block at `at` (bytes into the extent) written
    // over every other copy that differs there. Returns the copies rewritten.
    struct ExtentCopies {
        std::vector<uint32_t> slots;
        std::vector<std::vector<uint8_t>> data;
    };
    ExtentCopies read_in_sync_copies(const Extent& x);
    uint64_t equalize_block(const Extent& x, ExtentCopies& copies, size_t winner, uint64_t at);
    void sums_submit(backstore::IoRequest& request, net::Reactor* origin);
    void sums_start(backstore::IoRequest& request, net::Reactor* origin); // its blocks locked
    // A read child's data checked; false when a repair took the extent over (it completes it).
    bool sums_verify(VolumeIo* io, uint32_t child);
    // Verifies extent `x` as read from member `slot` into `iov` against the table. True: every block
    // matched (or has no checksum), `done` is not called. False: the blocks that failed are being repaired
    // from the column's other copies (ChecksumRepair, volume_io.cpp); `done(intact)` runs when they are, with
    // false if some block has no good copy (its bytes in `iov` are then the bad ones). `landed`: the
    // checksums computed as the read's bytes arrived, if it observed them (null: computed here).
    bool sums_check(const Extent& x, uint32_t slot, const iovec* iov, int iovcnt, const LandingSums* landed,
                    Function<void(bool intact)> done);
    void sums_count_error(uint32_t slot);
    // Any thread: pages of blocks [first, last] must be written; the ticket to wait for.
    uint64_t sums_mark(uint64_t first, uint64_t last, bool fua);
    uint64_t sums_mark_all();
    // Home, grow: the table holds `blocks` blocks (new entries zero); returns the ticket of their pages.
    uint64_t sums_extend(uint64_t blocks);
    // Any thread: `done(error)` on `origin` once the pages of `ticket` are on the members.
    void sums_wait(uint64_t ticket, net::Reactor* origin, Function<void(int)> done);
    void sums_kick(); // home: writes the marked pages
    bool sums_idle() const;
    void scrub_window(); // home: the next window of a scrub
    // Home: the scrub record and the checksum error counts into the book (with every label change).
    void scrub_to_book();
    void scrub_from_label(const Label& truth); // at open: the record and the counts the labels hold
    void scrub_checkpoint();                   // home: the record into the labels now
    void scrub_window_done(const std::shared_ptr<ScrubWindow>& window);

    // --- a thin space (volume_thin.cpp, thin_io.hpp) ---
    Result<void> thin_open(const Label& truth); // at open, before anything is written
    // Stops the worker; `commit`: after making everything durable (close), else not (abandon).
    Result<void> thin_stop(bool commit);
    void thin_worker_loop();
    void thin_post(Function<void()> job);
    void thin_submit(backstore::IoRequest& request, net::Reactor* origin,
                     uint32_t device = ~uint32_t(0)); // default: the space's own
    // A view's request (thin_view): a snapshot's writes are refused with EROFS (WRITE PROTECTED).
    void thin_view_submit(backstore::IoRequest& request, uint32_t device, bool read_only);
    // Runs `job` on the worker and waits for it (management calls; not on a reactor); false: the worker
    // has stopped (the volume is closing) and `job` did not run.
    bool thin_wait(Function<void()> job);
    void thin_send(const std::shared_ptr<ThinIo>& io);
    void thin_sent(const std::shared_ptr<ThinIo>& io);
    void thin_complete(ThinIo& io, int error);
    void thin_allocation(uint64_t offset, uint64_t length, net::Reactor* origin,
                         Function<void(Result<std::vector<backstore::Extent>>)> done,
                         uint32_t device = ~uint32_t(0)); // default: the space's own
    // Worker only:
    int thin_plan_read(ThinIo& io);
    int thin_plan_write(ThinIo& io);
    int thin_unmap(const backstore::IoRequest& request, uint32_t device);
    int thin_fill(const thin::WritePlan& plan, uint64_t block, uint64_t from, uint64_t to);
    int thin_copy(const thin::WritePlan& plan);
    // Copies up to `max_bytes` of the pending blocks of `cluster`'s deferred copy from its base and tells
    // the pool (0: all of them); 0 or a negative errno.
    int thin_copy_deferred(uint64_t cluster, uint64_t max_bytes);
    // The background copier's step (worker): one piece of one deferred copy.
    void thin_copier_step(uint64_t piece = 256 << 10);
    // Management thread: completes the deferred copies pending now, one piece per worker job, while I/O
    // goes on (before a snapshot's pause, whose commit would otherwise copy them all).
    void thin_drain_deferred();
    int thin_sync_io(backstore::IoOp op, uint64_t offset, std::span<uint8_t> data);
    Result<void> thin_commit();
    void thin_update_stats();
    void thin_include(uint32_t slot); // worker: a member that came back gets the metadata area

    // --- membership and labels (volume_meta.cpp) ---
    // Any reactor: `slot` failed a request with `error`. Marks it failed (once) and raises the epoch.
    void member_error(uint32_t slot, int error, const char* what);
    void lose(uint32_t slot);
    // Home: applies a change to the book and writes the labels to every writable member. `blocking`: a
    // member left; writes completing from now on are acknowledged only once this is on the members
    // (member_error counted it already, on the reactor that saw the failure).
    void change_labels(Function<void(LabelBook&)> change, bool blocking = false);
    void write_labels();
    void labels_written(uint64_t applied, uint64_t epoch_applied);
    // Any reactor: whether every member departure so far is recorded on the members.
    bool labels_current() const;
    // Any reactor: runs `then` on `origin` once labels_current() holds for what was requested until now.
    void wait_labels(net::Reactor* origin, Function<void()> then);
    // Home: every change so far is written and no label write runs.
    bool labels_settled() const { return _label_durable >= _label_applied && !_labels_writing; }
    // Writes `label` (4 copies, two phases, FUA) to member `slot`; done(error) on home.
    void write_member_label(uint32_t slot, const Label& label, Function<void(int)> done);
    void write_bitmap_block(uint64_t block, Buffer data, Function<void(bool)> done);
    void schedule_sweep();
    void sweep_now_on_home();
    void schedule_retry(uint32_t slot);
    void retry_member(uint32_t slot);
    void rejoin(uint32_t slot, const Label& own);
    // Home: the checksum table to `slot`, then its resync (a full one from `checkpoint`).
    void resync_after_checksums(uint32_t slot, uint64_t checkpoint);
    void update_masks();
    uint32_t writable_mask() const { return _writable.load(std::memory_order_acquire); }
    uint32_t active_mask() const { return _active.load(std::memory_order_acquire); }
    bool all_in_sync() const;
    // The member is open and holds current data: its reads count as a copy (open's passes, the
    // checksum table's repair). Its state, not the mask update_masks() last published.
    bool in_sync(uint32_t slot) const;
    // The bitmap's regions that cover the range in use (the bitmap holds as many as its area can, so
    // that grow() needs no new one): what a resync walks.
    uint64_t regions_in_use() const;
    void drain();           // waits until no request is in flight
    void stop_background(); // the sweep timer and the resync, stopped and waited for
    void raise_event(backstore::DeviceEvent event);
    // Blocking helpers for open/close (not on a reactor): run `fn` on home and wait.
    template <typename Fn> auto on_home(Fn&& fn);

    net::ReactorGroup& _reactors;
    net::Reactor& _home;
    VolumeOptions _options;
    Label _truth_at_open;
    // The layout in use. grow() publishes a new one (larger member data areas) while requests run, so
    // readers take the pointer once per request; every version published stays until the volume goes
    // (one per grow), so a request that started with an older one never reads freed memory.
    const Layout& layout() const { return *_layout.load(std::memory_order_acquire); }
    void publish_layout(Layout layout); // home, or open before any request
    std::atomic<const Layout*> _layout{nullptr};
    std::vector<std::unique_ptr<const Layout>> _layouts;
    std::atomic<uint32_t> _count{0}; // grow() appends a concat's column while requests run
    uint32_t _block_size = 512;
    // Atomics: grow() raises them while requests run.
    std::atomic<uint64_t> _space_size{0};   // the layout range in use (a thin space: its pool's clusters)
    std::atomic<uint64_t> _virtual_size{0}; // what the space provides (a thin space: more, maybe)
    std::unique_ptr<ThinState> _thin;       // a thin space only
    std::unique_ptr<ChecksumState> _sums;   // a space with block checksums only
    backstore::Features _features;
    std::array<Member, max_members> _members;
    std::atomic<uint32_t> _writable{0}; // active | rebuilding
    std::atomic<uint32_t> _active{0};
    std::atomic<bool> _lost{false};
    std::atomic<bool> _failed{false};
    std::atomic<bool> _closing{false};
    bool _closed = false;

    // Labels. Every change is applied to the book and written on the home reactor (_label_*); the
    // departures of members are also counted where they are seen (_epoch_requested, any reactor), because
    // writes must not be acknowledged before those are recorded, while other changes (checkpoints, the
    // clean flag) hold nobody up.
    uint64_t _label_applied = 0; // home
    uint64_t _label_durable = 0; // home
    uint64_t _epoch_applied = 0; // home
    std::atomic<uint64_t> _epoch_requested{0};
    std::atomic<uint64_t> _epoch_durable{0};
    bool _labels_writing = false; // home
    bool _labels_again = false;   // home
    LabelBook _book;              // home
    std::mutex _label_waiters_mutex;
    struct LabelWaiter {
        uint64_t needed;
        net::Reactor* origin;
        Function<void()> then;
    };
    std::vector<LabelWaiter> _label_waiters;
    mutable std::mutex _status_mutex; // guards _book_snapshot for status()
    Label _book_snapshot;

    std::array<std::unique_ptr<backstore::Device>, max_members> _reopened; // handed over from a worker

    std::unique_ptr<WriteIntentBitmap> _bitmap; // redundant layouts only
    // Where the last large write ended: a write near it continues a sequential stream (volume_io.cpp).
    std::atomic<uint64_t> _stream_end{UINT64_MAX / 2};
    std::unique_ptr<Resync> _resync;
    net::Reactor::TimerId _sweep_timer = 0;
    // Requests started and completed: the resync yields while the first moves; close() waits until they
    // meet (a volume closed under a request in flight would free what it uses).
    std::atomic<uint64_t> _foreground{0};
    std::atomic<uint64_t> _completed{0};

    std::mutex _event_mutex;
    std::function<void(backstore::DeviceEvent)> _event_sink;
};

// Runs `fn` on the volume's home reactor and waits for its result (management threads only).
template <typename Fn> auto Volume::on_home(Fn&& fn) {
    using R = decltype(fn());
    std::promise<R> promise;
    auto future = promise.get_future();
    _home.post([&] {
        if constexpr (std::is_void_v<R>) {
            fn();
            promise.set_value();
        } else {
            promise.set_value(fn());
        }
    });
    return future.get();
}

// The Device face of a Volume: what an LU exports or the attach path exposes. Destroying it does not close
// the volume (its owner, the SpaceManager, does).
class VolumeDevice final : public backstore::Device {
public:
    explicit VolumeDevice(std::shared_ptr<Volume> volume);
    ~VolumeDevice() override;
    std::string_view kind() const override { return "space"; }
    std::string describe() const override;
    backstore::Geometry geometry() const override { return _volume->geometry(); }
    backstore::Features features() const override { return _volume->features(); }
    uint64_t identity() const override;
    void submit(backstore::IoRequest& request) override { _volume->submit(request); }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override;
    const std::shared_ptr<Volume>& volume() const { return _volume; }

private:
    std::shared_ptr<Volume> _volume;
};

} // namespace ispace::volume
