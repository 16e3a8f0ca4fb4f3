// SpaceManager: the C++ API the management layer (mgmt: control socket, CLI verbs, ispaced) drives
// data-spaces through. No sockets, no command line: every call blocks its caller (never a reactor) until
// it is done, and says what went wrong in words a user can act on.
//
// It keeps a catalog under its home directory ($ISPACE_HOME): the host identity (host.json: the
// reservation key that fences members, fencing.hpp) and one file per space (spaces/NAME.json: its UUID and
// its members' URLs, secrets included, mode 0600). The catalog is only a cache: assemble() rebuilds an
// entry from the members' labels alone.
//
// A space is "open" while this manager holds it: its members are fenced (reservations) and a Volume runs
// on the runtime's reactors. open() is what attach and export share (find() returns the open one);
// close() writes the clean labels and lets go of the members. A space this holder lost to another
// (takeover) is closed by itself, and status() says so.
//
// Refusals write nothing to any member: create checks every member (reachable, same block size, large
// enough, not a member of another space unless `force`) before it writes; open checks the labels and the
// reservations before it changes anything.
#pragma once

#include "backstore/registry.hpp"
#include "common/result.hpp"
#include "ispace/initiator.hpp"
#include "net/reactor.hpp"
#include "volume/assembly.hpp"
#include "volume/fencing.hpp"
#include "volume/layout.hpp"
#include "volume/thin/pool.hpp"
#include "volume/volume.hpp"

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ispace::volume {

struct SpaceManagerOptions {
    std::string home;                              // $ISPACE_HOME
    net::ReactorGroup* reactors = nullptr;         // where volumes run (the runtime's); must be running
    initiator::Initiator* initiator = nullptr;     // reaches iscsi:// members; null: local members only
    const backstore::Registry* registry = nullptr; // opens local members (file, block...); null: built-ins
    // Opens a member by URL or spec. Default: iscsi:// through `initiator` with member timeouts
    // (remote_device.hpp), anything else through `registry`. Tests put their own devices here.
    std::function<Result<std::unique_ptr<backstore::Device>>(const std::string& url)> open_member;
    VolumeOptions volume; // defaults for every volume (rates, intervals)
    // Called (on a blocking worker, never a reactor; the manager's lock not held) once a space this manager
    // held was lost to another holder and closed here: the holder detaches what it had attached.
    std::function<void(const std::string& name)> on_lost;
};

struct CreateRequest {
    std::string name;
    LayoutKind layout = LayoutKind::mirror;
    uint32_t copies = 2;              // stripe_mirror
    std::vector<std::string> members; // URLs or specs, in slot order
    uint64_t size = 0;                // 0: what the members hold
    uint64_t chunk = 0;               // stripes; 0: 128 KiB
    uint32_t region = 0;              // bitmap region; 0: 1 MiB
    bool force = false;               // reuse members that belong to another space
    // Thin (docs/thin.md): `size` (required) may exceed the members; clusters are allocated on write.
    bool thin = false;
    uint32_t cluster = 0;   // thin cluster size; 0: 1 MiB
    bool checksums = false; // a CRC32C per 4 KiB block, verified on every read (docs/integrity.md)
};

struct OpenOptions {
    bool takeover = false; // preempt another holder (PREEMPT AND ABORT) instead of refusing
    // Bytes per second for this volume's resyncs; 0: the manager's default. Given here rather than set
    // after open, so that the resync open starts (dirty regions, a rebuild) is paced from its first window.
    uint64_t resync_rate = 0;
};

// A snapshot or clone in a thin space's pool (docs/thin.md, "Snapshots and clones"), named as users name
// it: NAME@SNAP for a snapshot (of the space, or CLONE@SNAP of a clone), NEW for a clone.
struct ThinDeviceStatus {
    std::string name;
    bool snapshot = false;     // read-only; else a clone (writable)
    std::string origin;        // what it was taken from ("" when that is gone)
    uint64_t created = 0;      // the pool transaction that made it
    uint64_t mapped_bytes = 0; // clusters it maps
    uint64_t unique_bytes = 0; // ... that no other device maps: what deleting it frees
};

// What a name given to a thin verb designates: a device of the pool of space `space`.
struct ThinTarget {
    std::string space;  // the catalog space whose pool holds it
    std::string device; // the pool's name for it (thin_device_name for the space itself)
    bool snapshot = false;
    bool clone = false;
};

struct SpaceStatus {
    std::string name;
    Uuid uuid{};
    LayoutKind layout = LayoutKind::mirror;
    uint32_t copies = 1;
    uint64_t size = 0;
    uint32_t block_size = 0;
    uint64_t chunk = 0;
    uint32_t region = 0;
    uint64_t epoch = 0;
    uint64_t sequence = 0;
    bool open = false;                 // held by this manager
    bool lost = false;                 // this manager held it and another holder took it over
    std::string lost_to;               // who, when known
    std::string holder;                // who the labels say holds (or last held) it
    bool clean = false;                // from the labels, when not open here
    std::vector<MemberStatus> members; // URL (no secret) and state; missing when not reachable
    ResyncProgress resync;
    ScrubProgress scrub; // held here, with checksums
    uint64_t dirty_regions = 0;
    // A thin space: `size` is what it provides (provisioned); these say what it takes from the members.
    bool checksums = false; // block checksums (docs/integrity.md)
    bool thin = false;
    bool allocation_known = false; // read from the map (open here, or read from the members)
    uint64_t allocated_bytes = 0;
    uint64_t pool_bytes = 0;
    uint32_t cluster_size = 0;
    bool pool_full = false;       // the last write that needed a cluster found none (open here only)
    uint64_t deferred_copies = 0; // copy-on-write copies pending (open here only; docs/thin.md)
    uint64_t deferred_bytes = 0;
    // Snapshots and clones in the pool (every device but the space's own); for a clone's status, `name`
    // is the clone and `clone_of` the space whose pool holds it.
    std::vector<ThinDeviceStatus> thin_devices;
    std::string clone_of;
    // What the call that answered wants the user told (create: room a member has that the layout leaves
    // unused). Empty from status.
    std::vector<std::string> notes;
};

class SpaceManager {
public:
    explicit SpaceManager(SpaceManagerOptions options);
    // Closes every open space (clean labels, reservations released).
    ~SpaceManager();
    SpaceManager(const SpaceManager&) = delete;
    SpaceManager& operator=(const SpaceManager&) = delete;

    // The host identity (created on first use).
    Result<HostIdentity> identity();

    // Labels the members and records the space in the catalog; it is not opened.
    Result<SpaceStatus> create(const CreateRequest& request);
    // Reads the labels of the devices at `urls` and (re)writes the space's catalog entry from them alone.
    // Refuses a split unless options.force_from names the side to keep; resolving one writes the labels
    // (the space is opened, fenced, and closed again).
    Result<SpaceStatus> assemble(const std::vector<std::string>& urls, const AssembleOptions& options = {});
    // Opens (holds) a space from the catalog: assembles it from its members' labels, fences the members and
    // starts its volume. Refused when this manager holds it already (use find()), or another holder does
    // (unless takeover).
    Result<std::shared_ptr<Volume>> open(const std::string& name, const OpenOptions& options = {});
    std::shared_ptr<Volume> find(const std::string& name) const;
    // Starts a scrub of a space held here with block checksums (docs/integrity.md); status shows it.
    // `action`: start, pause or resume it (Volume::scrub); `rate`: bytes per second, 0 unlimited.
    Result<void> scrub(const std::string& name, ScrubAction action = ScrubAction::start, uint64_t rate = 0);
    Result<void> close(const std::string& name);
    void close_all();
    Result<SpaceStatus> status(const std::string& name);
    Result<std::vector<SpaceStatus>> list();
    // Puts the member at `old_url` (failed, missing, or in sync while another copy of its data is) out and
    // `new_url` in, rebuilt in full. A space not open here is opened for it and closed again (the rebuild
    // goes on, from its checkpoint, at the next open).
    Result<SpaceStatus> replace(const std::string& name, const std::string& old_url,
                                const std::string& new_url, bool force = false);
    // Takes the room its members gained (Volume::grow), online when this manager holds the space; a space
    // not open here is opened for it and closed again. `status`: the space afterwards.
    // `new_member`: a device appended to a concat as a new column (checked as add_member checks; `force`
    // reuses one that belongs to another space).
    Result<GrowResult> grow(const std::string& name, const std::string& new_member = "", bool force = false,
                            SpaceStatus* status = nullptr);
    // Adds a copy to a mirror (rebuilt in full at the next open). The space must not be open here.
    Result<SpaceStatus> add_member(const std::string& name, const std::string& url, bool force = false);
    // --- snapshots and clones of thin spaces (space_thin.cpp; docs/thin.md) ---
    // NAME (a space or a clone), NAME@SNAP (a snapshot of it) or a clone's name -> the pool device.
    Result<ThinTarget> resolve(const std::string& name);
    // `name` (a thin space or a clone) gets the read-only snapshot `snap`, committed before this returns.
    // A space not open here is opened for it and closed again.
    Result<ThinSnapshotTiming> snapshot(const std::string& name, const std::string& snap);
    // A writable clone NEW of snapshot `source` (NAME@SNAP) in the same pool, recorded in the catalog as
    // an entry that names its space (clone_of).
    Result<SpaceStatus> clone(const std::string& source, const std::string& new_name);
    // Deletes snapshot `name` (NAME@SNAP); refused while it is attached or exported.
    Result<void> snapshot_delete(const std::string& name);
    // A Device over the snapshot or clone `target` of a space this manager holds.
    Result<std::shared_ptr<backstore::Device>> open_view(const ThinTarget& target);

    // Erases the labels of every reachable member and the catalog entry. `confirmed` must be true (the CLI's
    // --yes); the space must not be open, nor held by another holder.
    Result<void> destroy(const std::string& name, bool confirmed);

private:
    struct Entry {
        std::string name;
        Uuid uuid{};
        std::vector<std::string> urls; // slot order; secrets included
        std::string lost_to;
        bool lost = false;
        std::string clone_of; // a clone: the space whose pool holds it (no members of its own)
        // What the labels said when the entry was last written, for list() (which reads no label).
        std::optional<LayoutKind> layout;
        uint32_t copies = 1;
        uint32_t block_size = 0;
        uint64_t size = 0;
        void describe(const Label& truth) {
            layout = truth.layout;
            copies = truth.copies;
            block_size = truth.block_size;
            size = truth.space_size;
        }
    };
    struct Held {
        std::shared_ptr<Volume> volume;
        std::vector<std::string> urls; // by slot, as opened (secrets included)
    };
    struct Opened {
        std::vector<std::unique_ptr<backstore::Device>> devices; // by URL given
        std::vector<FoundMember> found;
    };

    Result<std::unique_ptr<backstore::Device>> open_device(const std::string& url);
    // Opens every URL (failures: missing when `tolerate`, else an error naming it) and reads its labels.
    Result<Opened> open_all(const std::vector<std::string>& urls, bool tolerate);
    Result<Entry> load_entry(const std::string& name) const;
    Result<void> save_entry(const Entry& entry) const;
    std::string entry_path(const std::string& name) const;
    Result<std::shared_ptr<Volume>> open_locked(const std::string& name, const OpenOptions& options,
                                                const AssembleOptions& assemble = {});
    Result<void> close_locked(const std::string& name);
    // Opens a device to join space `name` (members `urls`): not one of them, not a member of another space
    // (unless `force`), `block_size`-byte blocks.
    Result<std::unique_ptr<backstore::Device>> open_new_member(const std::string& name,
                                                               const std::vector<std::string>& urls,
                                                               const std::string& url, bool force,
                                                               uint32_t block_size);
    // A device checked, fenced and planned as a concat's new column (grow --member).
    Result<std::pair<VolumeMember, MemberEntry>> new_column(const std::string& name, const Held& held,
                                                            const std::string& url, bool force);
    SpaceStatus status_of(const Volume& volume) const;
    // The held volume of `space`, opened for the caller when not held (`opened`: close it afterwards).
    Result<std::shared_ptr<Volume>> hold_locked(const std::string& space, bool& opened);
    Result<void> destroy_clone(const Entry& clone);
    // Writes the catalog entries of the clones `st` lists that the catalog lacks (after an assemble).
    void record_clones(const SpaceStatus& st, const Entry& base);
    void add_thin_devices(SpaceStatus& st, const std::vector<thin::DeviceInfo>& devices) const;
    void on_lost(const std::string& name);
    bool lost_locked(const std::string& name); // closes it; false when it was not held
    net::Reactor& reactor() { return _options.reactors->at(0); }

    SpaceManagerOptions _options;
    mutable std::recursive_mutex _mutex;
    std::map<std::string, Held, std::less<>> _held;
    std::optional<HostIdentity> _identity;
    std::unique_ptr<backstore::Registry> _own_registry;
};

// Whether `name` may name a space (it becomes a catalog file name): 1 to 63 of [A-Za-z0-9._-], not
// starting with '.' or '-'.
Result<void> check_space_name(std::string_view name);

// The "space" backstore kind: space:NAME serves (exports) the space NAME of `manager`'s catalog, opening it
// if this process does not hold it yet. mgmt calls this once it has a SpaceManager.
void register_space_kind(backstore::Registry& registry, SpaceManager& manager);

} // namespace ispace::volume
