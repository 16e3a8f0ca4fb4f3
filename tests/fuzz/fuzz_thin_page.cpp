// Fuzzes the thin pool's metadata reader (volume/thin/format.hpp, ThinPool::open): a member's metadata
// area is as hostile as the network, and a damaged page must be an error, never a crash or a pool that
// believes something its pages do not say.
//
// Input: [mode][bytes...]
//   mode bits 0-1: the page type (superblock, device table, interior node, leaf)
//   mode bit 2:    the bytes are XORed over a valid page of that type instead of being the page
//   mode bit 3:    the page's checksum is recomputed after that, so the field checks behind it are reached
//   mode bit 4:    instead, the bytes are edits (page, offset, xor: 4 bytes each, checksum recomputed when
//                  mode bit 3 says so) to the metadata area of a real pool with devices, snapshots and a
//                  clone, which is then opened
//
// Invariants: a decoder returns a value or an error with a message; a page it accepts encodes back to
// exactly the bytes it was read from; a pool that opens passes check() (every reference count and page
// owner agrees with its trees) and takes a write, a resize, a snapshot and a commit, and passes check()
// after.
#include "fuzz_check.hpp"
#include "volume/thin/format.hpp"
#include "volume/thin/metadata_store.hpp"
#include "volume/thin/pool.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

using namespace ispace;
using namespace ispace::volume::thin;

namespace {

constexpr uint64_t pool_id = 0x0123456789abcdefULL;
constexpr uint64_t page_at = 5;

PageExpect expect() {
    return PageExpect{page_at, pool_id, 100, 64, 32, 16};
}

void reseal(std::vector<uint8_t>& page) {
    uint32_t crc = page_crc(page);
    for (int i = 0; i < 4; ++i) {
        page[8 + i] = uint8_t(crc >> (8 * i));
    }
}

std::vector<uint8_t> base_page(unsigned type) {
    std::vector<uint8_t> b(page_size);
    switch (type) {
    case 0: {
        Superblock sb;
        sb.sequence = 9;
        sb.pool_id = pool_id;
        sb.cluster_size = 64 << 10;
        sb.pool_clusters = 32;
        sb.metadata_pages = 64;
        sb.device_table_page = 7;
        sb.next_device_id = 4;
        encode_superblock(sb, page_at, b);
        break;
    }
    case 1: {
        std::vector<DeviceRecord> d(3);
        d[0] = {1, 0, 0, 1, 300, 8, 2, "home"};
        d[1] = {2, device_read_only, 1, 1, 300, 9, 5, "home@1"};
        d[2] = {3, 0, 2, 0, 12, 0, 6, "clone"};
        encode_device_table(d, page_at, 9, pool_id, b);
        break;
    }
    case 2: {
        Interior node;
        node.level = 1;
        node.children[0] = 8;
        node.children[17] = 63;
        encode_interior(node, page_at, 9, pool_id, b);
        break;
    }
    default: {
        Leaf leaf;
        leaf.entries[0].physical = 3;
        mask_set_range(leaf.entries[0].written, 0, 16);
        leaf.entries[40].physical = 31;
        mask_set_range(leaf.entries[40].written, 5, 2);
        encode_leaf(leaf, page_at, 9, pool_id, b);
        break;
    }
    }
    return b;
}

void check_page(unsigned type, const std::vector<uint8_t>& bytes) {
    std::vector<uint8_t> again(page_size);
    switch (type) {
    case 0: {
        auto sb = decode_superblock(bytes, page_at);
        if (!sb) {
            FUZZ_CHECK(!sb.error().message.empty());
            return;
        }
        encode_superblock(*sb, page_at, again);
        break;
    }
    case 1: {
        auto t = decode_device_table(bytes, expect());
        if (!t) {
            FUZZ_CHECK(!t.error().message.empty());
            return;
        }
        uint64_t sequence = 0;
        for (int i = 0; i < 8; ++i) {
            sequence |= uint64_t(bytes[24 + i]) << (8 * i);
        }
        for (const DeviceRecord& d : *t) {
            FUZZ_CHECK(d.virtual_clusters <= level_capacity(d.level));
            FUZZ_CHECK(d.root_page == 0 || (d.root_page >= superblock_slots && d.root_page < 64));
        }
        encode_device_table(*t, page_at, sequence, pool_id, again);
        break;
    }
    case 2: {
        auto n = decode_interior(bytes, expect(), 1);
        if (!n) {
            FUZZ_CHECK(!n.error().message.empty());
            return;
        }
        uint64_t sequence = 0;
        for (int i = 0; i < 8; ++i) {
            sequence |= uint64_t(bytes[24 + i]) << (8 * i);
        }
        encode_interior(*n, page_at, sequence, pool_id, again);
        break;
    }
    default: {
        auto l = decode_leaf(bytes, expect());
        if (!l) {
            FUZZ_CHECK(!l.error().message.empty());
            return;
        }
        uint64_t sequence = 0;
        for (int i = 0; i < 8; ++i) {
            sequence |= uint64_t(bytes[24 + i]) << (8 * i);
        }
        for (const LeafEntry& e : l->entries) {
            FUZZ_CHECK(!e.mapped() || e.physical < 32);
        }
        encode_leaf(*l, page_at, sequence, pool_id, again);
        break;
    }
    }
    FUZZ_CHECK(std::memcmp(again.data(), bytes.data(), page_size) == 0);
}

// A pool with some history: devices at two tree heights, a snapshot sharing a tree, a clone of it that
// diverged, unmapped blocks, several commits (so that pages were recycled).
const MemoryMetadataStore& base_store() {
    static const MemoryMetadataStore store = [] {
        MemoryMetadataStore s(64);
        auto pool = ThinPool::format(s, PoolGeometry{64 << 10, 32});
        FUZZ_CHECK(pool.ok());
        uint32_t a = *pool->create_device("a", 200);
        uint32_t b = *pool->create_device("b", 20);
        for (uint64_t v = 0; v < 200; v += 23) {
            FUZZ_CHECK(pool->write(a, v, uint32_t(v % 16), 1).ok());
        }
        FUZZ_CHECK(pool->write(b, 3, 0, 16).ok());
        FUZZ_CHECK(pool->commit().ok());
        uint32_t snap = *pool->snapshot(a, "a@1");
        uint32_t clone = *pool->clone(snap, "c");
        FUZZ_CHECK(pool->write(clone, 23, 0, 2).ok());
        FUZZ_CHECK(pool->unmap(a, 46, 0, 16).ok());
        FUZZ_CHECK(pool->commit().ok());
        FUZZ_CHECK(pool->write(a, 0, 5, 1).ok());
        FUZZ_CHECK(pool->commit().ok());
        return s;
    }();
    return store;
}

void fuzz_pool(const uint8_t* data, size_t size, bool seal) {
    MemoryMetadataStore store = base_store();
    std::vector<uint8_t> page(page_size);
    for (size_t i = 0; i + 4 <= size && i < 4 * 64; i += 4) {
        uint64_t p = data[i] % store.pages();
        size_t offset = (size_t(data[i + 1]) | size_t(data[i + 2]) << 8) % page_size;
        FUZZ_CHECK(store.read(p, 0, page).ok());
        page[offset] ^= data[i + 3];
        if (seal) {
            reseal(page);
        }
        FUZZ_CHECK(store.write(p, page).ok());
    }
    FUZZ_CHECK(store.flush().ok());
    auto pool = ThinPool::open(store, 32);
    if (!pool) {
        FUZZ_CHECK(!pool.error().message.empty());
        return;
    }
    FUZZ_CHECK(pool->check().ok());
    for (const DeviceInfo& d : pool->devices()) {
        for (uint64_t v = 0; v < d.virtual_clusters && v < 256; ++v) {
            auto m = pool->lookup(d.id, v);
            FUZZ_CHECK(m.ok());
            FUZZ_CHECK(!m->has_value() || (*m)->physical < pool->superblock().pool_clusters);
        }
        if (!d.read_only) {
            auto w = pool->write(d.id, d.virtual_clusters - 1, 0, 1);
            FUZZ_CHECK(w.ok() || !w.error().message.empty());
            auto r = pool->resize_device(d.id, d.virtual_clusters + 70000);
            FUZZ_CHECK(r.ok() || !r.error().message.empty());
        }
        (void)pool->snapshot(d.id, "fuzz-snap");
    }
    (void)pool->commit();
    FUZZ_CHECK(pool->check().ok());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    ++data;
    --size;
    if (mode & 0x10) {
        fuzz_pool(data, size, (mode & 0x08) != 0);
        return 0;
    }
    unsigned type = mode & 0x03;
    std::vector<uint8_t> bytes;
    if (mode & 0x04) {
        bytes = base_page(type);
        for (size_t i = 0; i < size && i < page_size; ++i) {
            bytes[i] ^= data[i];
        }
    } else {
        bytes.assign(data, data + std::min(size, page_size));
        bytes.resize(page_size, 0);
    }
    if (mode & 0x08) {
        reseal(bytes);
    }
    check_page(type, bytes);
    return 0;
}
