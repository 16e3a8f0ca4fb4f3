// ThinPool: the metadata core of thin data-spaces, snapshots and clones (docs/thin.md). It decides where
// each virtual cluster of each device lives and which of its 4 KiB blocks were written; it moves no data
// itself — write() tells the data path where to write and what to copy first.
//
// - Physical clusters (default 1 MiB) of the pool's data area are allocated on the first write to a
//   virtual cluster and counted: a cluster's reference count is the number of leaves that map it.
// - Each device (a thin volume, a snapshot, a clone) has one radix tree of nodes; a snapshot or clone
//   shares its source's root (one reference more), so taking one costs a node reference, and a read walks
//   one tree of fixed height at any snapshot depth — there is no chain of deltas.
// - A node shared by two trees is copied before one of them changes it (copying a leaf counts one more
//   reference on each cluster it maps); a cluster shared by two leaves is copied before it is written.
// - Nothing durable is overwritten before a commit makes it unreachable: nodes changed since the last
//   commit go to fresh pages, and a cluster or page freed since then is reused only after the commit.
//
// commit() makes the current state durable (see docs/thin.md, "Commit"); open() reads the newest state
// that a commit completed, whatever instant a crash interrupted the ones after it.
//
// Threading: none of its own; one owner calls it at a time. Errors are values: ENOSPC when the pool or its
// metadata area is full (the data path answers SPACE ALLOCATION FAILED WRITE PROTECT), EROFS for a write to
// a snapshot, ENOENT for an unknown device, EINVAL for a bad range, EILSEQ for damaged metadata.
#pragma once

#include "common/result.hpp"
#include "volume/thin/format.hpp"
#include "volume/thin/metadata_store.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ispace::volume::thin {

struct PoolGeometry {
    uint32_t cluster_size = default_cluster_size;
    uint64_t pool_clusters = 0; // the data area the members give, in clusters
};

struct DeviceInfo {
    uint32_t id = 0;
    std::string name;
    bool read_only = false;
    uint32_t origin = 0;
    uint64_t virtual_clusters = 0;
    uint64_t mapped_clusters = 0;  // virtual clusters with a physical cluster
    uint64_t created_sequence = 0; // the transaction that made it durable
    // Clusters no other device maps (through no shared node and with one reference): what removing it
    // would free after the next commit.
    uint64_t unique_clusters = 0;
};

// A deferred copy (docs/thin.md, "Deferred copies"): the first write to a shared cluster took a new
// cluster `cluster` without copying; the blocks in `pending` still live in `base` until the data path
// copies them over and calls deferred_copied(). A property of the physical cluster (every mapping of
// `cluster` reads them from `base`), never a chain: a base never has a record of its own, and a cluster
// with a record is completed before it is copied on write. Held in memory only: commit() refuses while
// one is pending, so the committed state never depends on one (the data path completes them first).
struct DeferredCopy {
    uint64_t cluster = no_cluster;
    uint64_t base = no_cluster; // holds one reference for the record
    WrittenMask pending{};
};

// Where a virtual cluster lives.
struct Mapping {
    uint64_t physical = no_cluster;
    WrittenMask written{}; // blocks never written (or unmapped) read as zeros
    // A deferred copy of `physical`: its written blocks in `pending` are read from `base`.
    uint64_t base = no_cluster;
    WrittenMask pending{};
};

// What the data path does for a write to blocks [first, first + count) of one virtual cluster.
struct WritePlan {
    uint64_t physical = no_cluster; // write the request's blocks here
    // Copy-on-write: before the request's blocks are written, `copy_blocks` (the blocks the shared cluster
    // holds that this write does not cover) are copied from `copy_from` to `physical`; no_cluster: none.
    uint64_t copy_from = no_cluster;
    WrittenMask copy_blocks{};
    // Blocks this write covers whose old contents are still in `base` (a deferred copy's): the part of
    // such a 4 KiB block the write does not cover is filled from there. Also the base of a copy this
    // write deferred (`deferred`): then nothing is copied now, and copy_blocks is empty.
    uint64_t base = no_cluster;
    WrittenMask base_blocks{};
    bool deferred = false;
    bool allocated = false;        // `physical` is a cluster taken for this write
    bool metadata_changed = false; // a commit must follow before a flush or FUA write is acknowledged
    Mapping previous;              // the mapping before, for revert_write()
};

struct PoolStats {
    uint64_t pool_clusters = 0;
    uint64_t allocated_clusters = 0; // referenced by the current state
    uint64_t held_clusters = 0;      // ... or still by the last committed one (not reusable yet)
    uint64_t metadata_pages = 0;
    uint64_t metadata_pages_used = 0;
    uint64_t sequence = 0; // the last committed transaction
    uint64_t cow_copies = 0;
    uint64_t copied_blocks = 0;   // copied at once, on the write
    uint64_t deferred_copies = 0; // records pending now
    uint64_t deferred_blocks = 0; // their pending blocks
};

// The most deferred copies a pool keeps at once: a commit completes them all first, so this bounds what a
// flush may have to copy (256 MiB with 1 MiB clusters). When full, a write copies at once as before.
inline constexpr uint32_t default_deferred_limit = 256;

class ThinPool {
public:
    // Writes an empty pool (transaction 1) to `store` and opens it.
    static Result<ThinPool> format(MetadataStore& store, PoolGeometry geometry);
    // Reads the newest committed state: the valid superblock slot with the higher sequence, then every
    // page it reaches, each checked (trying every copy the store has before giving up on one).
    // `max_pool_clusters`: the most clusters the members' data area can hold (from the labels): a
    // superblock that claims more is refused before anything is sized by it.
    static Result<ThinPool> open(MetadataStore& store, uint64_t max_pool_clusters);

    ThinPool(ThinPool&&) = default;
    ThinPool& operator=(ThinPool&&) = default;

    // --- devices ---
    Result<uint32_t> create_device(const std::string& name, uint64_t virtual_clusters);
    // A read-only point-in-time copy of `source` (by metadata alone: it shares the source's tree).
    Result<uint32_t> snapshot(uint32_t source, const std::string& name);
    // A writable device sharing everything `source` (usually a snapshot) maps.
    Result<uint32_t> clone(uint32_t source, const std::string& name);
    // Drops the device's tree; clusters only it referenced become free after the next commit.
    Result<void> remove_device(uint32_t id);
    // Grows a device to `virtual_clusters` (never shrinks it: UNMAP what is no longer wanted); a taller
    // tree gets new roots above the old one, so nothing is copied.
    Result<void> resize_device(uint32_t id, uint64_t virtual_clusters);
    // Grows the pool to `pool_clusters` (members added or resized); committed by the next commit.
    Result<void> grow_pool(uint64_t pool_clusters);
    std::vector<DeviceInfo> devices() const;
    std::optional<uint32_t> find_device(const std::string& name) const;

    // --- the data path's questions ---
    // The mapping of virtual cluster `vcluster` (none: never written or unmapped: reads as zeros).
    Result<std::optional<Mapping>> lookup(uint32_t device, uint64_t vcluster) const;
    // Prepares a write of blocks [first, first + count) (4 KiB blocks of the cluster): allocates, or copies
    // on write when the cluster is shared, and records the blocks as written.
    Result<WritePlan> write(uint32_t device, uint64_t vcluster, uint32_t first, uint32_t count);
    // Deferred copies: up to `limit` at once (0, the default: every copy-on-write copies at once, as the
    // plan says). The data path sets it when it runs a copier. A write that would copy a cluster that has
    // a record answers EAGAIN: complete that record first (no chain of bases).
    void set_deferred_limit(uint32_t limit) { _deferred_limit = limit; }
    uint32_t deferred_count() const { return uint32_t(_deferred.size()); }
    // The record of `cluster`, or of any cluster when `cluster` is no_cluster (null: none).
    const DeferredCopy* deferred(uint64_t cluster = no_cluster) const;
    // The data path copied `blocks` of the record of `cluster` from its base: they are no longer pending;
    // an empty record is dropped (its base unreferenced).
    void deferred_copied(uint64_t cluster, const WrittenMask& blocks);

    // Undoes write() when the data path could not carry it out (a copy failed): the cluster maps what it did.
    Result<void> revert_write(uint32_t device, uint64_t vcluster, const WritePlan& plan);
    // Forgets blocks [first, first + count); a cluster left with no written block is unmapped (its
    // reference dropped). Returns whether the mapping changed.
    Result<bool> unmap(uint32_t device, uint64_t vcluster, uint32_t first, uint32_t count);

    // --- durability ---
    // Makes the current state durable: the changed nodes and the device table to free pages, a barrier,
    // the superblock to the older slot, a barrier. On error nothing committed is lost and the pool goes on
    // from the state before the call (the next commit retries everything).
    Result<void> commit();
    // Whether anything changed since the last commit.
    bool dirty() const { return _dirty; }

    // Recomputes every reference count and page owner from the trees and compares; an error says what
    // disagrees. For tests and after open().
    Result<void> check() const;

    PoolStats stats() const;
    const Superblock& superblock() const { return _sb; }
    uint32_t cluster_blocks() const { return _sb.cluster_blocks(); }

private:
    ThinPool() = default;

    using NodeId = uint32_t; // 0: none
    struct Node {
        uint32_t refs = 0;              // parents (device roots, interior nodes) that point here
        uint8_t level = 0;              // 0: leaf
        uint64_t page = 0;              // where it is durable; 0: changed since (written at the next commit)
        std::vector<NodeId> children;   // interior: interior_fanout entries
        std::vector<LeafEntry> entries; // leaf: leaf_entries entries
    };
    struct Device {
        DeviceRecord record;
        NodeId root = 0;
    };
    enum class PageState : uint8_t { free, owned, retiring };

    Device* device(uint32_t id);
    // The device a write or an unmap of blocks [first, first + count) of `vcluster` may change: it
    // exists, is not a read-only snapshot, and the range lies inside one cluster of it.
    Result<Device*> writable_device(uint32_t id, uint64_t vcluster, uint32_t first, uint32_t count,
                                    std::string_view verb);
    const Device* device(uint32_t id) const;
    NodeId new_node(uint8_t level);
    void ref_node(NodeId id) { ++_nodes[id].refs; }
    void unref_node(NodeId id);
    // Node `id` made private to the path being changed (copied when shared: its children or clusters
    // gain a reference), marked changed; returns the private node's id.
    NodeId make_private(NodeId id);
    // The leaf entry for `vcluster` in `dev`'s tree, every node on the way made private (create: build
    // the path; otherwise null when nothing is mapped there).
    LeafEntry* entry_for_update(Device& dev, uint64_t vcluster, bool create);
    // The leaf entry for `vcluster` without changing anything (null: no leaf there); `private_path`: whether
    // every node on the way belongs to this tree alone.
    const LeafEntry* entry_for_read(const Device& dev, uint64_t vcluster, bool* private_path) const;
    void touch(uint64_t c); // its count moved since the last commit
    void drop_deferred(uint64_t cluster);
    uint64_t erase_deferred(std::unordered_map<uint64_t, DeferredCopy>::iterator it); // returns the base
    uint32_t base_refs(uint64_t c) const; // records whose base is `c`
    // Clears `range` from the pending blocks of `c`'s record, noting in `plan` what they were.
    void take_pending(uint64_t c, const WrittenMask& range, WritePlan& plan);
    void ref_cluster(uint64_t c);
    void unref_cluster(uint64_t c);
    Result<uint64_t> allocate_cluster();
    bool writable_in_place(uint64_t c) const;
    void retire_page(uint64_t& page);
    Result<uint64_t> allocate_page();
    Result<uint32_t> add_device(const std::string& name, uint64_t virtual_clusters, uint32_t flags,
                                uint32_t origin, NodeId root);
    Result<void> read_page(uint64_t page, std::vector<uint8_t>& out,
                           const std::function<Result<void>(std::span<const uint8_t>)>& check);
    Result<NodeId> load_node(uint64_t page, uint8_t level, std::unordered_map<uint64_t, NodeId>& seen);
    Result<void> write_node(NodeId id, std::vector<std::pair<NodeId, uint64_t>>& assigned);
    uint64_t count_mapped(NodeId id) const;
    uint64_t count_unique(NodeId id) const;

    MetadataStore* _store = nullptr;
    Superblock _sb;
    std::vector<Device> _devices;
    std::vector<Node> _nodes{1}; // [0] is "none"
    std::vector<NodeId> _free_nodes;
    std::vector<uint32_t> _refs;           // per cluster, current state
    std::vector<uint32_t> _committed_refs; // per cluster, as of the last commit
    std::vector<uint64_t> _touched;        // clusters whose count moved since the last commit
    std::vector<uint8_t> _is_touched;      // per cluster: in _touched
    uint64_t _allocated = 0;               // clusters with _refs > 0
    uint64_t _held = 0;                    // clusters with _refs > 0 or _committed_refs > 0
    uint64_t _alloc_cursor = 0;
    std::vector<PageState> _pages;
    std::vector<uint64_t> _retiring; // pages the last committed state still uses, freed by the next commit
    uint64_t _pages_used = 0;
    uint64_t _page_cursor = 0;
    // Snapshots, clones and removals change which device owns a reference; until that is committed, a
    // cluster the committed state knows is copied rather than written in place (docs/thin.md, "Copy").
    uint64_t _structure_changes = 0;
    uint64_t _structure_committed = 0;
    bool _dirty = false;
    std::unordered_map<uint64_t, DeferredCopy> _deferred; // by cluster
    std::unordered_map<uint64_t, uint32_t> _base_refs;    // base cluster -> records on it
    uint32_t _deferred_limit = 0;
    // Bases whose last reference a finished record dropped: reads planned before may still be reading
    // them, so they are not reallocated before the next commit (which waits for those reads).
    std::vector<uint8_t> _quarantined;
    std::vector<uint64_t> _quarantine;
    uint64_t _cow_copies = 0;
    uint64_t _copied_blocks = 0;
};

} // namespace ispace::volume::thin
