#include "volume/thin/pool.hpp"

#include "volume/label.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

namespace ispace::volume::thin {
namespace {

uint32_t child_index(uint64_t vcluster, uint8_t level) {
    // level >= 1: the leaf consumes 6 bits, each interior level above it 8.
    return uint32_t((vcluster >> (6 + 8 * (level - 1))) & (interior_fanout - 1));
}

Result<void> check_name(const std::string& name) {
    if (name.empty() || name.size() > max_name_length || name.find('\0') != std::string::npos) {
        return make_error(
            fmt::format("device name \"{}\": 1 to {} characters, no NUL", name, max_name_length), EINVAL);
    }
    return {};
}

Error no_space(uint64_t clusters) {
    return make_error(
        fmt::format("space allocation failed: all {} clusters of the pool are in use", clusters), ENOSPC);
}

} // namespace

// --- formatting and opening ---

Result<ThinPool> ThinPool::format(MetadataStore& store, PoolGeometry geometry) {
    if (geometry.cluster_size < min_cluster_size ||
        geometry.cluster_size > max_cluster_blocks * written_granule ||
        (geometry.cluster_size & (geometry.cluster_size - 1)) != 0) {
        return make_error(
            fmt::format("cluster size {}: a power of two from 64 KiB to 1 MiB", geometry.cluster_size),
            EINVAL);
    }
    if (geometry.pool_clusters == 0 || geometry.pool_clusters >= no_cluster - 1) {
        return make_error("a thin pool needs at least one cluster", EINVAL);
    }
    if (store.pages() > (uint64_t(1) << 40)) {
        return make_error(fmt::format("metadata area of {} pages: at most 2^40", store.pages()), EINVAL);
    }
    if (store.pages() < superblock_slots + 2) {
        return make_error(fmt::format("metadata area of {} pages: at least {} are needed", store.pages(),
                                      superblock_slots + 2),
                          ENOSPC);
    }
    ThinPool pool;
    pool._store = &store;
    pool._sb.sequence = 0;
    pool._sb.pool_id = random_u64();
    pool._sb.cluster_size = geometry.cluster_size;
    pool._sb.pool_clusters = geometry.pool_clusters;
    pool._sb.metadata_pages = store.pages();
    pool._refs.assign(geometry.pool_clusters, 0);
    pool._committed_refs.assign(geometry.pool_clusters, 0);
    pool._is_touched.assign(geometry.pool_clusters, 0);
    pool._pages.assign(store.pages(), PageState::free);
    pool._pages[0] = pool._pages[1] = PageState::owned;
    pool._pages_used = superblock_slots;
    // No previous state: an empty device table and transaction 1 in slot 1. Slot 0 is cleared so that a
    // superblock left there by an earlier pool on the same area cannot be taken for this one's.
    std::vector<uint8_t> zero(page_size, 0);
    if (auto r = store.write(0, zero); !r) {
        return std::move(r).error();
    }
    if (auto r = pool.commit(); !r) {
        return std::move(r).error();
    }
    return pool;
}

Result<void> ThinPool::read_page(uint64_t page, std::vector<uint8_t>& out,
                                 const std::function<Result<void>(std::span<const uint8_t>)>& check) {
    out.resize(page_size);
    Error last = make_error(fmt::format("metadata page {}: no copy to read", page), EIO);
    for (unsigned copy = 0; copy < _store->copies(); ++copy) {
        auto r = _store->read(page, copy, out);
        if (r) {
            r = check(out);
            if (r) {
                return {};
            }
        }
        last = std::move(r).error();
        if (_store->copies() > 1) {
            last.message += fmt::format(" (copy {} of {})", copy, _store->copies());
        }
    }
    return last;
}

Result<ThinPool> ThinPool::open(MetadataStore& store, uint64_t max_pool_clusters) {
    ThinPool pool;
    pool._store = &store;
    std::optional<Superblock> best;
    std::vector<std::string> problems;
    std::vector<uint8_t> bytes;
    for (uint64_t slot = 0; slot < superblock_slots && slot < store.pages(); ++slot) {
        std::optional<Superblock> found;
        auto r = pool.read_page(slot, bytes, [&](std::span<const uint8_t> in) -> Result<void> {
            auto sb = decode_superblock(in, slot);
            if (!sb) {
                return std::move(sb).error();
            }
            found = *sb;
            return {};
        });
        if (!r) {
            problems.push_back(r.error().message);
            continue;
        }
        if (best && best->pool_id != found->pool_id) {
            return make_error("the two superblocks belong to different pools", EILSEQ);
        }
        if (!best || found->sequence > best->sequence) {
            best = found;
        }
    }
    if (!best) {
        std::string why = problems.empty() ? "no superblock" : problems.front();
        return make_error(fmt::format("no valid thin superblock: {}", why), EILSEQ);
    }
    if (best->metadata_pages > store.pages()) {
        return make_error(fmt::format("the superblock counts {} metadata pages, the area has {}",
                                      best->metadata_pages, store.pages()),
                          EILSEQ);
    }
    if (best->pool_clusters > max_pool_clusters) {
        return make_error(fmt::format("the superblock counts {} clusters, the members hold at most {}",
                                      best->pool_clusters, max_pool_clusters),
                          EILSEQ);
    }
    pool._sb = *best;
    pool._refs.assign(pool._sb.pool_clusters, 0);
    pool._pages.assign(pool._sb.metadata_pages, PageState::free);
    pool._pages[0] = pool._pages[1] = PageState::owned;
    pool._pages_used = superblock_slots;

    PageExpect expect{pool._sb.device_table_page, pool._sb.pool_id,       pool._sb.sequence,
                      pool._sb.metadata_pages,    pool._sb.pool_clusters, pool._sb.cluster_blocks()};
    std::vector<DeviceRecord> records;
    auto r =
        pool.read_page(pool._sb.device_table_page, bytes, [&](std::span<const uint8_t> in) -> Result<void> {
            auto t = decode_device_table(in, expect);
            if (!t) {
                return std::move(t).error();
            }
            records = std::move(*t);
            return {};
        });
    if (!r) {
        return std::move(r).error();
    }
    pool._pages[pool._sb.device_table_page] = PageState::owned;
    ++pool._pages_used;

    std::unordered_map<uint64_t, NodeId> seen;
    for (DeviceRecord& record : records) {
        if (record.id >= pool._sb.next_device_id) {
            return make_error(
                fmt::format("device {} is not below the next id {}", record.id, pool._sb.next_device_id),
                EILSEQ);
        }
        Device dev;
        dev.record = record;
        if (record.root_page != 0) {
            auto root = pool.load_node(record.root_page, record.level, seen);
            if (!root) {
                return make_error(
                    fmt::format("device {} (\"{}\"): {}", record.id, record.name, root.error().message),
                    EILSEQ);
            }
            dev.root = *root;
        }
        pool._devices.push_back(std::move(dev));
    }
    pool._committed_refs = pool._refs;
    pool._is_touched.assign(pool._sb.pool_clusters, 0);
    pool._held = pool._allocated;
    pool._dirty = false; // what was read is what is committed
    return pool;
}

Result<ThinPool::NodeId> ThinPool::load_node(uint64_t page, uint8_t level,
                                             std::unordered_map<uint64_t, NodeId>& seen) {
    if (auto it = seen.find(page); it != seen.end()) {
        // A node shared by two trees (or two parents): one node in memory, one more reference.
        if (_nodes[it->second].level != level) {
            return make_error(fmt::format("metadata page {} is reached at levels {} and {}", page,
                                          _nodes[it->second].level, level),
                              EILSEQ);
        }
        ref_node(it->second);
        return it->second;
    }
    if (_pages[page] != PageState::free) {
        return make_error(fmt::format("metadata page {} is used twice", page), EILSEQ);
    }
    PageExpect expect{
        page, _sb.pool_id, _sb.sequence, _sb.metadata_pages, _sb.pool_clusters, _sb.cluster_blocks()};
    std::vector<uint8_t> bytes;
    std::optional<Leaf> leaf;
    std::optional<Interior> interior;
    auto r = read_page(page, bytes, [&](std::span<const uint8_t> in) -> Result<void> {
        if (level == 0) {
            auto l = decode_leaf(in, expect);
            if (!l) {
                return std::move(l).error();
            }
            leaf = std::move(*l);
        } else {
            auto n = decode_interior(in, expect, level);
            if (!n) {
                return std::move(n).error();
            }
            interior = *n;
        }
        return {};
    });
    if (!r) {
        return std::move(r).error();
    }
    _pages[page] = PageState::owned;
    ++_pages_used;
    NodeId id = new_node(level);
    seen.emplace(page, id);
    _nodes[id].page = page;
    if (level == 0) {
        for (uint32_t i = 0; i < leaf_entries; ++i) {
            _nodes[id].entries[i] = leaf->entries[i];
            if (leaf->entries[i].mapped()) {
                ref_cluster(leaf->entries[i].physical);
            }
        }
        return id;
    }
    for (uint32_t i = 0; i < interior_fanout; ++i) {
        if (interior->children[i] == 0) {
            continue;
        }
        auto child = load_node(interior->children[i], uint8_t(level - 1), seen);
        if (!child) {
            return std::move(child).error();
        }
        _nodes[id].children[i] = *child;
    }
    return id;
}

// --- nodes, clusters, pages ---

ThinPool::NodeId ThinPool::new_node(uint8_t level) {
    NodeId id;
    if (!_free_nodes.empty()) {
        id = _free_nodes.back();
        _free_nodes.pop_back();
    } else {
        id = NodeId(_nodes.size());
        _nodes.emplace_back();
    }
    Node& n = _nodes[id];
    n.refs = 1;
    n.level = level;
    n.page = 0;
    if (level == 0) {
        n.entries.assign(leaf_entries, LeafEntry{});
        n.children.clear();
    } else {
        n.children.assign(interior_fanout, 0);
        n.entries.clear();
    }
    _dirty = true;
    return id;
}

void ThinPool::unref_node(NodeId id) {
    Node& n = _nodes[id];
    if (--n.refs > 0) {
        return;
    }
    retire_page(n.page);
    std::vector<NodeId> children = std::move(n.children);
    for (const LeafEntry& e : n.entries) {
        if (e.mapped()) {
            unref_cluster(e.physical);
        }
    }
    _nodes[id].entries.clear();
    _nodes[id].children.clear();
    _free_nodes.push_back(id);
    for (NodeId child : children) {
        if (child != 0) {
            unref_node(child);
        }
    }
}

ThinPool::NodeId ThinPool::make_private(NodeId id) {
    _dirty = true;
    if (_nodes[id].refs == 1) {
        retire_page(_nodes[id].page); // changed: the next commit writes it elsewhere
        return id;
    }
    NodeId copy = new_node(_nodes[id].level); // may move _nodes: no reference held across it
    _nodes[copy].children = _nodes[id].children;
    _nodes[copy].entries = _nodes[id].entries;
    for (NodeId child : _nodes[copy].children) {
        if (child != 0) {
            ref_node(child);
        }
    }
    for (const LeafEntry& e : _nodes[copy].entries) {
        if (e.mapped()) {
            ref_cluster(e.physical);
        }
    }
    --_nodes[id].refs; // was shared: stays referenced by the other tree
    return copy;
}

LeafEntry* ThinPool::entry_for_update(Device& dev, uint64_t vcluster, bool create) {
    if (dev.root == 0) {
        if (!create) {
            return nullptr;
        }
        dev.root = new_node(dev.record.level);
    } else {
        dev.root = make_private(dev.root);
    }
    NodeId cur = dev.root;
    for (uint8_t level = dev.record.level; level > 0; --level) {
        uint32_t index = child_index(vcluster, level);
        NodeId child = _nodes[cur].children[index];
        if (child == 0) {
            if (!create) {
                return nullptr;
            }
            child = new_node(uint8_t(level - 1));
        } else {
            child = make_private(child);
        }
        _nodes[cur].children[index] = child;
        cur = child;
    }
    return &_nodes[cur].entries[vcluster % leaf_entries];
}

const LeafEntry* ThinPool::entry_for_read(const Device& dev, uint64_t vcluster, bool* private_path) const {
    bool owned = true;
    NodeId cur = dev.root;
    for (uint8_t level = dev.record.level; cur != 0; --level) {
        owned = owned && _nodes[cur].refs == 1;
        if (level == 0) {
            if (private_path) {
                *private_path = owned;
            }
            return &_nodes[cur].entries[vcluster % leaf_entries];
        }
        cur = _nodes[cur].children[child_index(vcluster, level)];
    }
    return nullptr;
}

uint64_t ThinPool::count_mapped(NodeId id) const {
    if (id == 0) {
        return 0;
    }
    uint64_t n = 0;
    for (const LeafEntry& e : _nodes[id].entries) {
        n += e.mapped();
    }
    for (NodeId child : _nodes[id].children) {
        n += count_mapped(child);
    }
    return n;
}

uint64_t ThinPool::count_unique(NodeId id) const {
    // A node another tree (or another parent) reaches shares everything below it.
    if (id == 0 || _nodes[id].refs > 1) {
        return 0;
    }
    uint64_t n = 0;
    for (const LeafEntry& e : _nodes[id].entries) {
        // A deferred copy's reference on its base is not a device's: the copy completes before the
        // commit that removal makes.
        n += e.mapped() && e.physical < _refs.size() && _refs[e.physical] - base_refs(e.physical) == 1;
    }
    for (NodeId child : _nodes[id].children) {
        n += count_unique(child);
    }
    return n;
}

void ThinPool::touch(uint64_t c) {
    if (!_is_touched.empty() && !_is_touched[c]) {
        _is_touched[c] = 1;
        _touched.push_back(c);
    }
}

void ThinPool::ref_cluster(uint64_t c) {
    touch(c);
    if (_refs[c]++ == 0) {
        ++_allocated;
        if (_committed_refs.empty() || _committed_refs[c] == 0) {
            ++_held;
        }
    }
}

void ThinPool::unref_cluster(uint64_t c) {
    touch(c);
    if (--_refs[c] == 0) {
        --_allocated;
        if (_committed_refs[c] == 0) {
            --_held;
        }
        drop_deferred(c); // a record dies with its cluster (a base never has one: no deeper recursion)
    }
}

void ThinPool::drop_deferred(uint64_t cluster) {
    auto it = _deferred.find(cluster);
    if (it == _deferred.end()) {
        return;
    }
    uint64_t base = erase_deferred(it);
    unref_cluster(base);
    if (_refs[base] == 0 && _committed_refs[base] == 0) {
        // Reads planned before may still be reading the base: not handed to a write before the next
        // commit, which waits for everything planned before it.
        if (_quarantined.size() < _sb.pool_clusters) {
            _quarantined.resize(_sb.pool_clusters, 0);
        }
        if (!_quarantined[base]) {
            _quarantined[base] = 1;
            _quarantine.push_back(base);
        }
    }
}

uint64_t ThinPool::erase_deferred(std::unordered_map<uint64_t, DeferredCopy>::iterator it) {
    uint64_t base = it->second.base;
    _deferred.erase(it);
    if (auto b = _base_refs.find(base); b != _base_refs.end() && --b->second == 0) {
        _base_refs.erase(b);
    }
    return base;
}

uint32_t ThinPool::base_refs(uint64_t c) const {
    auto it = _base_refs.find(c);
    return it == _base_refs.end() ? 0 : it->second;
}

const DeferredCopy* ThinPool::deferred(uint64_t cluster) const {
    if (cluster == no_cluster) {
        return _deferred.empty() ? nullptr : &_deferred.begin()->second;
    }
    auto it = _deferred.find(cluster);
    return it == _deferred.end() ? nullptr : &it->second;
}

void ThinPool::deferred_copied(uint64_t cluster, const WrittenMask& blocks) {
    auto it = _deferred.find(cluster);
    if (it == _deferred.end()) {
        return;
    }
    it->second.pending = mask_and_not(it->second.pending, blocks);
    if (mask_empty(it->second.pending)) {
        drop_deferred(cluster);
    }
}

void ThinPool::take_pending(uint64_t c, const WrittenMask& range, WritePlan& plan) {
    auto it = _deferred.find(c);
    if (it == _deferred.end()) {
        return;
    }
    WrittenMask taken = mask_and_not(range, mask_and_not(range, it->second.pending));
    if (mask_empty(taken)) {
        return;
    }
    plan.base = it->second.base;
    plan.base_blocks = taken;
    deferred_copied(c, taken);
}

Result<uint64_t> ThinPool::allocate_cluster() {
    // Free means free in the current state and in the committed one: a cluster the committed state maps
    // must keep its bytes until a commit no longer does, or a crash would find other data there.
    if (_held >= _sb.pool_clusters) {
        return no_space(_sb.pool_clusters);
    }
    for (uint64_t n = 0; n < _sb.pool_clusters; ++n) {
        uint64_t c = _alloc_cursor;
        _alloc_cursor = (_alloc_cursor + 1) % _sb.pool_clusters;
        if (_refs[c] == 0 && _committed_refs[c] == 0 && (c >= _quarantined.size() || !_quarantined[c])) {
            return c;
        }
    }
    return no_space(_sb.pool_clusters);
}

bool ThinPool::writable_in_place(uint64_t c) const {
    if (_refs[c] != 1) {
        return false;
    }
    // Mapped by nothing durable: a crash forgets this cluster, whatever it holds.
    if (_committed_refs[c] == 0) {
        return true;
    }
    // Mapped once by the committed state, and no snapshot, clone or removal since: that one reference is
    // this one (writes and unmaps only ever drop references to committed clusters), so an overwrite is an
    // ordinary unflushed write of this device. After a structural change the single committed reference
    // may be another device's (a removed snapshot's), and a crash would show it our data.
    return _committed_refs[c] == 1 && _structure_changes == _structure_committed;
}

void ThinPool::retire_page(uint64_t& page) {
    if (page != 0) {
        _pages[page] = PageState::retiring;
        _retiring.push_back(page);
        page = 0;
    }
}

Result<uint64_t> ThinPool::allocate_page() {
    for (uint64_t n = 0; n < _sb.metadata_pages; ++n) {
        uint64_t p = _page_cursor;
        _page_cursor = (_page_cursor + 1) % _sb.metadata_pages;
        if (_pages[p] == PageState::free) {
            _pages[p] = PageState::owned;
            ++_pages_used;
            return p;
        }
    }
    return make_error(
        fmt::format("space allocation failed: the thin metadata area ({} pages) is full", _sb.metadata_pages),
        ENOSPC);
}

// --- devices ---

ThinPool::Device* ThinPool::device(uint32_t id) {
    for (Device& d : _devices) {
        if (d.record.id == id) {
            return &d;
        }
    }
    return nullptr;
}

const ThinPool::Device* ThinPool::device(uint32_t id) const {
    return const_cast<ThinPool*>(this)->device(id);
}

std::optional<uint32_t> ThinPool::find_device(const std::string& name) const {
    for (const Device& d : _devices) {
        if (d.record.name == name) {
            return d.record.id;
        }
    }
    return std::nullopt;
}

Result<uint32_t> ThinPool::add_device(const std::string& name, uint64_t virtual_clusters, uint32_t flags,
                                      uint32_t origin, NodeId root) {
    if (auto r = check_name(name); !r) {
        return std::move(r).error();
    }
    if (find_device(name)) {
        return make_error(fmt::format("a device named \"{}\" exists", name), EEXIST);
    }
    if (_devices.size() >= max_devices || _sb.next_device_id == ~uint32_t(0)) {
        return make_error(fmt::format("the pool holds {} devices, its most", max_devices), ENOSPC);
    }
    if (virtual_clusters == 0 || virtual_clusters > level_capacity(max_level)) {
        return make_error(fmt::format("a device of {} clusters", virtual_clusters), EINVAL);
    }
    Device dev;
    dev.record.id = _sb.next_device_id++;
    dev.record.flags = flags;
    dev.record.origin = origin;
    dev.record.level = level_for(virtual_clusters);
    dev.record.virtual_clusters = virtual_clusters;
    dev.record.created_sequence = _sb.sequence + 1;
    dev.record.name = name;
    dev.root = root;
    if (root != 0) {
        ref_node(root);
    }
    _devices.push_back(std::move(dev));
    _dirty = true;
    return _devices.back().record.id;
}

Result<uint32_t> ThinPool::create_device(const std::string& name, uint64_t virtual_clusters) {
    return add_device(name, virtual_clusters, 0, 0, 0);
}

Result<uint32_t> ThinPool::snapshot(uint32_t source, const std::string& name) {
    const Device* src = device(source);
    if (!src) {
        return make_error(fmt::format("no device {}", source), ENOENT);
    }
    auto id = add_device(name, src->record.virtual_clusters, device_read_only, source, src->root);
    if (id) {
        ++_structure_changes;
    }
    return id;
}

Result<uint32_t> ThinPool::clone(uint32_t source, const std::string& name) {
    const Device* src = device(source);
    if (!src) {
        return make_error(fmt::format("no device {}", source), ENOENT);
    }
    auto id = add_device(name, src->record.virtual_clusters, 0, source, src->root);
    if (id) {
        ++_structure_changes;
    }
    return id;
}

Result<void> ThinPool::remove_device(uint32_t id) {
    auto it =
        std::find_if(_devices.begin(), _devices.end(), [&](const Device& d) { return d.record.id == id; });
    if (it == _devices.end()) {
        return make_error(fmt::format("no device {}", id), ENOENT);
    }
    NodeId root = it->root;
    _devices.erase(it);
    if (root != 0) {
        unref_node(root);
    }
    ++_structure_changes;
    _dirty = true;
    return {};
}

Result<void> ThinPool::resize_device(uint32_t id, uint64_t virtual_clusters) {
    Device* dev = device(id);
    if (!dev) {
        return make_error(fmt::format("no device {}", id), ENOENT);
    }
    if (virtual_clusters < dev->record.virtual_clusters || virtual_clusters > level_capacity(max_level)) {
        return make_error(fmt::format("device \"{}\" of {} clusters cannot become {}", dev->record.name,
                                      dev->record.virtual_clusters, virtual_clusters),
                          EINVAL);
    }
    uint8_t level = level_for(virtual_clusters);
    while (dev->record.level < level) {
        // The old tree becomes child 0 of a new root: the same virtual clusters, one level down.
        uint8_t up = uint8_t(dev->record.level + 1);
        if (dev->root != 0) {
            NodeId root = new_node(up);
            _nodes[root].children[0] = dev->root; // the device's reference moves to the new node
            dev->root = root;
        }
        dev->record.level = up;
    }
    dev->record.virtual_clusters = virtual_clusters;
    _dirty = true;
    return {};
}

Result<void> ThinPool::grow_pool(uint64_t pool_clusters) {
    if (pool_clusters < _sb.pool_clusters || pool_clusters >= no_cluster - 1) {
        return make_error(
            fmt::format("a pool of {} clusters cannot become {}", _sb.pool_clusters, pool_clusters), EINVAL);
    }
    _sb.pool_clusters = pool_clusters;
    _refs.resize(pool_clusters, 0);
    _committed_refs.resize(pool_clusters, 0);
    _is_touched.resize(pool_clusters, 0);
    _dirty = true;
    return {};
}

std::vector<DeviceInfo> ThinPool::devices() const {
    std::vector<DeviceInfo> out;
    for (const Device& d : _devices) {
        out.push_back({d.record.id, d.record.name, (d.record.flags & device_read_only) != 0, d.record.origin,
                       d.record.virtual_clusters, count_mapped(d.root), d.record.created_sequence,
                       count_unique(d.root)});
    }
    return out;
}

// --- the data path ---

Result<std::optional<Mapping>> ThinPool::lookup(uint32_t id, uint64_t vcluster) const {
    const Device* dev = device(id);
    if (!dev) {
        return make_error(fmt::format("no device {}", id), ENOENT);
    }
    if (vcluster >= dev->record.virtual_clusters) {
        return make_error(
            fmt::format("cluster {} is beyond device {}'s {}", vcluster, id, dev->record.virtual_clusters),
            EINVAL);
    }
    const LeafEntry* e = entry_for_read(*dev, vcluster, nullptr);
    if (!e || !e->mapped()) {
        return std::optional<Mapping>();
    }
    Mapping m{e->physical, e->written};
    if (const DeferredCopy* d = deferred(e->physical)) {
        m.base = d->base;
        m.pending = d->pending;
    }
    return std::optional<Mapping>(m);
}

Result<ThinPool::Device*> ThinPool::writable_device(uint32_t id, uint64_t vcluster, uint32_t first,
                                                    uint32_t count, std::string_view verb) {
    Device* dev = device(id);
    if (!dev) {
        return make_error(fmt::format("no device {}", id), ENOENT);
    }
    if (dev->record.flags & device_read_only) {
        return make_error(fmt::format("device \"{}\" is a snapshot: read-only", dev->record.name), EROFS);
    }
    if (vcluster >= dev->record.virtual_clusters || count == 0 || first >= cluster_blocks() ||
        count > cluster_blocks() - first) {
        return make_error(
            fmt::format("{} of blocks {}+{} of cluster {} is out of range", verb, first, count, vcluster),
            EINVAL);
    }
    return dev;
}

Result<WritePlan> ThinPool::write(uint32_t id, uint64_t vcluster, uint32_t first, uint32_t count) {
    auto found = writable_device(id, vcluster, first, count, "write");
    if (!found) {
        return found.error();
    }
    Device* dev = *found;
    WrittenMask range{};
    mask_set_range(range, first, count);
    WritePlan plan;

    // The common case touches no metadata: an overwrite of written blocks of a cluster only this device
    // maps, through nodes only its tree holds.
    bool private_path = false;
    const LeafEntry* seen = entry_for_read(*dev, vcluster, &private_path);
    if (seen && seen->mapped()) {
        plan.previous = {seen->physical, seen->written};
        if (private_path && writable_in_place(seen->physical) &&
            mask_and_not(range, seen->written) == WrittenMask{}) {
            plan.physical = seen->physical;
            take_pending(seen->physical, range, plan); // the write's blocks are no longer the base's
            return plan;
        }
        if ((!private_path || !writable_in_place(seen->physical)) && _deferred.count(seen->physical)) {
            // A copy of a cluster whose own copy is pending would need a chain of bases.
            return make_error(
                fmt::format("cluster {} has a deferred copy: complete it first", seen->physical), EAGAIN);
        }
    }
    // Allocate before changing anything, so that a full pool leaves the map as it was.
    bool mapped = seen && seen->mapped();
    std::optional<uint64_t> fresh;
    if (!mapped || !private_path || !writable_in_place(seen->physical)) {
        // A shared path may still lead to a cluster writable in place once the path is private: that
        // is decided below, after the copy; allocating first is only a reservation.
        auto c = allocate_cluster();
        if (!c) {
            if (!mapped) {
                return std::move(c).error();
            }
        } else {
            fresh = *c;
        }
    }
    LeafEntry* e = entry_for_update(*dev, vcluster, true);
    plan.metadata_changed = true;
    if (!e->mapped()) {
        e->physical = *fresh;
        e->written = range;
        ref_cluster(*fresh);
        plan.physical = *fresh;
        plan.allocated = true;
        return plan;
    }
    if (writable_in_place(e->physical)) {
        e->written = mask_or(e->written, range);
        plan.physical = e->physical;
        take_pending(e->physical, range, plan);
        return plan;
    }
    if (!fresh) {
        return no_space(_sb.pool_clusters);
    }
    WrittenMask rest = mask_and_not(e->written, range);
    if (_deferred.size() < _deferred_limit && !mask_empty(rest)) {
        // Deferred: the new cluster reads the rest from the shared one until the data path copies it
        // (the record holds a reference on it meanwhile). Nothing is copied now.
        uint64_t base = e->physical;
        _deferred.emplace(*fresh, DeferredCopy{*fresh, base, rest});
        ++_base_refs[base];
        plan.copy_from = base; // the partial 4 KiB blocks at the write's edges still come from there
        plan.base = base;
        plan.deferred = true;
        plan.physical = *fresh;
        plan.allocated = true;
        ref_cluster(*fresh);
        e->physical = *fresh; // the tree's reference on the base becomes the record's
        e->written = mask_or(e->written, range);
        return plan;
    }
    // Copy on write: the new cluster takes what the shared one holds outside this write, and nothing
    // that was never written (it reads as zeros either way).
    plan.copy_from = e->physical;
    plan.copy_blocks = mask_and_not(e->written, range);
    plan.physical = *fresh;
    plan.allocated = true;
    unref_cluster(e->physical);
    ref_cluster(*fresh);
    e->physical = *fresh;
    e->written = mask_or(e->written, range);
    ++_cow_copies;
    _copied_blocks += mask_count(plan.copy_blocks);
    return plan;
}

Result<void> ThinPool::revert_write(uint32_t id, uint64_t vcluster, const WritePlan& plan) {
    Device* dev = device(id);
    if (!dev || vcluster >= dev->record.virtual_clusters) {
        return make_error(fmt::format("no cluster {} of device {}", vcluster, id), ENOENT);
    }
    if (!plan.deferred && plan.base != no_cluster && !mask_empty(plan.base_blocks) &&
        plan.physical < _refs.size() && _refs[plan.physical] > 0) {
        // The write took these blocks out of a deferred copy; not carried out, they are the base's again.
        auto it = _deferred.find(plan.physical);
        if (it == _deferred.end()) {
            it = _deferred.emplace(plan.physical, DeferredCopy{plan.physical, plan.base, {}}).first;
            ++_base_refs[plan.base];
            ref_cluster(plan.base); // kept from reuse until a commit (quarantined) since it was dropped
        }
        it->second.pending = mask_or(it->second.pending, plan.base_blocks);
    }
    if (!plan.metadata_changed) {
        return {};
    }
    const LeafEntry* seen = entry_for_read(*dev, vcluster, nullptr);
    if (!seen || seen->physical != plan.physical) {
        return make_error(
            fmt::format("cluster {} of device {} no longer maps what the write did", vcluster, id), EINVAL);
    }
    if (plan.previous.physical != no_cluster && plan.previous.physical != plan.physical &&
        _refs[plan.previous.physical] == 0 && _committed_refs[plan.previous.physical] == 0) {
        // A commit came between, and the old cluster was free to reuse: it cannot be taken back.
        return make_error(fmt::format("cluster {} of device {}: the copied cluster is gone", vcluster, id),
                          EINVAL);
    }
    LeafEntry* e = entry_for_update(*dev, vcluster, false);
    if (plan.allocated) {
        if (plan.deferred) {
            // The record goes with the new cluster; its reference on the base returns to the tree.
            if (auto it = _deferred.find(e->physical); it != _deferred.end()) {
                erase_deferred(it);
                unref_cluster(plan.previous.physical);
            }
        }
        unref_cluster(e->physical);
        if (plan.previous.physical != no_cluster) {
            ref_cluster(plan.previous.physical);
        }
    }
    e->physical = plan.previous.physical;
    e->written = plan.previous.physical == no_cluster ? WrittenMask{} : plan.previous.written;
    return {};
}

Result<bool> ThinPool::unmap(uint32_t id, uint64_t vcluster, uint32_t first, uint32_t count) {
    auto found = writable_device(id, vcluster, first, count, "unmap");
    if (!found) {
        return found.error();
    }
    Device* dev = *found;
    const LeafEntry* seen = entry_for_read(*dev, vcluster, nullptr);
    if (!seen || !seen->mapped()) {
        return false;
    }
    WrittenMask range{};
    mask_set_range(range, first, count);
    WrittenMask left = mask_and_not(seen->written, range);
    if (left == seen->written) {
        return false;
    }
    // Only this device's entry forgets the blocks: another device sharing the cluster still reads them.
    LeafEntry* e = entry_for_update(*dev, vcluster, false);
    e->written = left;
    if (mask_empty(left)) {
        unref_cluster(e->physical);
        e->physical = no_cluster;
    }
    return true;
}

// --- commit ---

Result<void> ThinPool::write_node(NodeId id, std::vector<std::pair<NodeId, uint64_t>>& assigned) {
    if (_nodes[id].page != 0) {
        return {}; // durable, and so is everything under it (a change marks the whole path)
    }
    std::vector<uint8_t> bytes(page_size);
    uint64_t sequence = _sb.sequence + 1;
    if (_nodes[id].level == 0) {
        Leaf leaf;
        std::copy(_nodes[id].entries.begin(), _nodes[id].entries.end(), leaf.entries.begin());
        auto page = allocate_page();
        if (!page) {
            return std::move(page).error();
        }
        _nodes[id].page = *page;
        assigned.emplace_back(id, *page);
        encode_leaf(leaf, *page, sequence, _sb.pool_id, bytes);
        return _store->write(*page, bytes);
    }
    Interior node;
    node.level = _nodes[id].level;
    for (uint32_t i = 0; i < interior_fanout; ++i) {
        NodeId child = _nodes[id].children[i];
        if (child != 0) {
            if (auto r = write_node(child, assigned); !r) {
                return r;
            }
            node.children[i] = _nodes[child].page;
        }
    }
    auto page = allocate_page();
    if (!page) {
        return std::move(page).error();
    }
    _nodes[id].page = *page;
    assigned.emplace_back(id, *page);
    encode_interior(node, *page, sequence, _sb.pool_id, bytes);
    return _store->write(*page, bytes);
}

Result<void> ThinPool::commit() {
    if (!_dirty && _sb.sequence != 0) {
        return {}; // nothing to make durable (a flush with no metadata change costs no I/O)
    }
    if (!_deferred.empty()) {
        // The committed state must not depend on a copy that has not happened: the data path copies
        // (and flushes) every pending block first.
        return make_error(
            fmt::format("{} deferred copies are pending: complete them before a commit", _deferred.size()),
            EBUSY);
    }
    const uint64_t sequence = _sb.sequence + 1;
    std::vector<std::pair<NodeId, uint64_t>> assigned;
    uint64_t table_page = 0;
    bool superblock_sent = false;
    auto fail = [&](Error error) -> Result<void> {
        if (!superblock_sent) {
            // Nothing durable refers to what this attempt wrote: its pages are free again and the changed
            // nodes stay changed, for the next commit.
            for (auto& [id, page] : assigned) {
                _nodes[id].page = 0;
                _pages[page] = PageState::free;
                --_pages_used;
            }
            if (table_page != 0) {
                _pages[table_page] = PageState::free;
                --_pages_used;
            }
            return error;
        }
        // The new superblock may or may not have reached the medium: both states must stay readable
        // until a commit settles it. The attempt's pages stay owned (its nodes keep them), the table
        // page joins the retiring ones, and the clusters either state maps stay held; the next commit
        // writes the same slot again, so the older state's slot is not touched before that.
        _retiring.push_back(table_page);
        _pages[table_page] = PageState::retiring;
        // (Raising a committed count to the current one never changes whether a cluster is held.)
        for (uint64_t c : _touched) {
            _committed_refs[c] = std::max(_committed_refs[c], _refs[c]);
        }
        error.message += " (the commit's outcome is unknown until the next one)";
        return error;
    };

    for (Device& dev : _devices) {
        if (dev.root != 0) {
            if (auto r = write_node(dev.root, assigned); !r) {
                return fail(std::move(r).error());
            }
        }
    }
    auto page = allocate_page();
    if (!page) {
        return fail(std::move(page).error());
    }
    table_page = *page;
    std::vector<DeviceRecord> records;
    for (const Device& dev : _devices) {
        DeviceRecord record = dev.record;
        record.root_page = dev.root != 0 ? _nodes[dev.root].page : 0;
        records.push_back(std::move(record));
    }
    std::vector<uint8_t> bytes(page_size);
    encode_device_table(records, table_page, sequence, _sb.pool_id, bytes);
    if (auto r = _store->write(table_page, bytes); !r) {
        return fail(std::move(r).error());
    }
    // Barrier: every page of the new state is durable before a superblock points at it.
    if (auto r = _store->flush(); !r) {
        return fail(std::move(r).error());
    }
    Superblock next = _sb;
    next.sequence = sequence;
    next.device_table_page = table_page;
    next.metadata_pages = _sb.metadata_pages != 0 ? _sb.metadata_pages : _store->pages();
    uint64_t slot = sequence % superblock_slots;
    encode_superblock(next, slot, bytes);
    superblock_sent = true;
    if (auto r = _store->write(slot, bytes); !r) {
        return fail(std::move(r).error());
    }
    if (auto r = _store->flush(); !r) {
        return fail(std::move(r).error());
    }

    // Durable. What only the previous state used is free now; the new state is what a crash returns to.
    if (_sb.device_table_page != 0) {
        _retiring.push_back(_sb.device_table_page);
    }
    for (uint64_t p : _retiring) {
        if (_pages[p] != PageState::free) {
            _pages[p] = PageState::free;
            --_pages_used;
        }
    }
    _retiring.clear();
    _sb = next;
    for (uint64_t c : _touched) { // only the clusters whose count moved: a commit costs what changed
        _committed_refs[c] = _refs[c];
        _is_touched[c] = 0;
    }
    _touched.clear();
    _held = _allocated;
    for (uint64_t c : _quarantine) {
        _quarantined[c] = 0;
    }
    _quarantine.clear();
    _structure_committed = _structure_changes;
    _dirty = false;
    return {};
}

// --- checks and numbers ---

Result<void> ThinPool::check() const {
    std::vector<uint32_t> node_refs(_nodes.size(), 0);
    std::vector<uint32_t> cluster_refs(_sb.pool_clusters, 0);
    std::vector<uint8_t> visited(_nodes.size(), 0);
    std::vector<uint8_t> page_seen(_sb.metadata_pages, 0);
    auto err = [](std::string what) { return make_error("thin pool check: " + what, EILSEQ); };
    std::function<Result<void>(NodeId, uint8_t, bool)> walk = [&](NodeId id, uint8_t level,
                                                                  bool parent_clean) -> Result<void> {
        ++node_refs[id];
        const Node& n = _nodes[id];
        if (n.level != level) {
            return err(fmt::format("node {} has level {}, its parent expects {}", id, n.level, level));
        }
        if (parent_clean && n.page == 0) {
            return err(fmt::format("node {} changed under a node that did not", id));
        }
        if (visited[id]) {
            return {};
        }
        visited[id] = 1;
        if (n.page != 0) {
            if (n.page >= _sb.metadata_pages || page_seen[n.page] || _pages[n.page] != PageState::owned) {
                return err(fmt::format("node {}'s page {} is not owned by it alone", id, n.page));
            }
            page_seen[n.page] = 1;
        }
        if (level == 0) {
            if (n.entries.size() != leaf_entries) {
                return err(fmt::format("leaf {} has {} entries", id, n.entries.size()));
            }
            for (const LeafEntry& e : n.entries) {
                if (e.mapped()) {
                    if (e.physical >= _sb.pool_clusters || mask_empty(e.written)) {
                        return err(fmt::format("leaf {} maps cluster {} badly", id, e.physical));
                    }
                    ++cluster_refs[e.physical];
                } else if (!mask_empty(e.written)) {
                    return err(fmt::format("leaf {} has written blocks in an unmapped entry", id));
                }
            }
            return {};
        }
        for (NodeId child : n.children) {
            if (child != 0) {
                if (auto r = walk(child, uint8_t(level - 1), n.page != 0); !r) {
                    return r;
                }
            }
        }
        return {};
    };
    for (const Device& d : _devices) {
        if (d.root != 0) {
            if (auto r = walk(d.root, d.record.level, false); !r) {
                return r;
            }
        }
    }
    for (const auto& [cluster, d] : _deferred) {
        if (d.cluster != cluster || cluster >= _sb.pool_clusters || d.base >= _sb.pool_clusters ||
            cluster == d.base || cluster_refs[cluster] == 0 || _deferred.count(d.base) ||
            mask_empty(d.pending)) {
            return err(fmt::format("deferred copy of cluster {} from {} is not one the pool can hold",
                                   cluster, d.base));
        }
        WrittenMask inside{};
        mask_set_range(inside, 0, cluster_blocks());
        if (!mask_empty(mask_and_not(d.pending, inside))) {
            return err(fmt::format("deferred copy of cluster {}: blocks beyond the cluster", cluster));
        }
    }
    for (const auto& [cluster, d] : _deferred) {
        ++cluster_refs[d.base];
    }
    for (NodeId id = 1; id < _nodes.size(); ++id) {
        if (node_refs[id] != _nodes[id].refs) {
            return err(
                fmt::format("node {} has {} references, counted {}", id, _nodes[id].refs, node_refs[id]));
        }
    }
    uint64_t allocated = 0, held = 0;
    for (uint64_t c = 0; c < _sb.pool_clusters; ++c) {
        if (cluster_refs[c] != _refs[c]) {
            return err(fmt::format("cluster {} has {} references, counted {}", c, _refs[c], cluster_refs[c]));
        }
        allocated += _refs[c] != 0;
        held += _refs[c] != 0 || _committed_refs[c] != 0;
    }
    if (allocated != _allocated || held != _held) {
        return err(fmt::format("{} clusters allocated and {} held, counted {} and {}", _allocated, _held,
                               allocated, held));
    }
    uint64_t owned = 0, used = 0;
    for (uint64_t p = 0; p < _sb.metadata_pages; ++p) {
        used += _pages[p] != PageState::free;
        owned += _pages[p] == PageState::owned;
    }
    uint64_t expected_owned = superblock_slots + (_sb.device_table_page != 0);
    for (uint8_t s : page_seen) {
        expected_owned += s;
    }
    if (owned != expected_owned || used != _pages_used) {
        return err(fmt::format("{} metadata pages owned and {} used, counted {} and {}", owned, _pages_used,
                               expected_owned, used));
    }
    return {};
}

PoolStats ThinPool::stats() const {
    PoolStats s;
    s.pool_clusters = _sb.pool_clusters;
    s.allocated_clusters = _allocated;
    s.held_clusters = _held;
    s.metadata_pages = _sb.metadata_pages;
    s.metadata_pages_used = _pages_used;
    s.sequence = _sb.sequence;
    s.cow_copies = _cow_copies;
    s.copied_blocks = _copied_blocks;
    s.deferred_copies = _deferred.size();
    for (const auto& [cluster, d] : _deferred) {
        s.deferred_blocks += mask_count(d.pending);
    }
    return s;
}

} // namespace ispace::volume::thin
