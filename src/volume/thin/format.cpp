#include "volume/thin/format.hpp"

#include "common/bytes.hpp"
#include "volume/label.hpp"

#include <fmt/format.h>

#include <bit>
#include <cerrno>
#include <cstring>

namespace ispace::volume::thin {
namespace {

// The header every page starts with.
namespace at {
constexpr size_t magic = 0;     // u32 page_magic
constexpr size_t version = 4;   // u16
constexpr size_t type = 6;      // u8 PageType
constexpr size_t level = 7;     // u8 (interior nodes; 0 elsewhere)
constexpr size_t crc = 8;       // u32 CRC32C of the page with this field zero
constexpr size_t count = 12;    // u32 entries in use (device records, children, mapped clusters)
constexpr size_t page = 16;     // u64 where the page belongs
constexpr size_t sequence = 24; // u64 the transaction that wrote it
constexpr size_t pool_id = 32;  // u64
// 40..63 reserved, zero
} // namespace at

// Superblock payload.
namespace sb {
constexpr size_t cluster_size = 64;      // u32
constexpr size_t next_device_id = 68;    // u32
constexpr size_t pool_clusters = 72;     // u64
constexpr size_t metadata_pages = 80;    // u64
constexpr size_t device_table_page = 88; // u64
constexpr size_t end = 96;
} // namespace sb

// A device record in the device table.
namespace dev {
constexpr size_t size = 96;
constexpr size_t id = 0;                // u32
constexpr size_t flags = 4;             // u32
constexpr size_t origin = 8;            // u32
constexpr size_t level = 12;            // u8, then 3 zero bytes
constexpr size_t virtual_clusters = 16; // u64
constexpr size_t root_page = 24;        // u64
constexpr size_t created = 32;          // u64
constexpr size_t name = 40;             // 56, NUL-padded
} // namespace dev

constexpr size_t leaf_entry_size = 40; // u64 physical + 1 (0: unmapped), 32 bytes written mask
static_assert(header_size + max_devices * dev::size <= page_size);
static_assert(header_size + leaf_entries * leaf_entry_size <= page_size);
static_assert(header_size + interior_fanout * 8 <= page_size);

Error bad(std::string what) {
    return make_error(std::move(what), EILSEQ);
}

bool all_zero(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

void start_page(std::span<uint8_t> out, PageType type, uint8_t level, uint32_t count, uint64_t page,
                uint64_t sequence, uint64_t pool_id) {
    std::memset(out.data(), 0, page_size);
    uint8_t* p = out.data();
    store_le32(p + at::magic, page_magic);
    store_le16(p + at::version, uint16_t(format_version));
    p[at::type] = uint8_t(type);
    p[at::level] = level;
    store_le32(p + at::count, count);
    store_le64(p + at::page, page);
    store_le64(p + at::sequence, sequence);
    store_le64(p + at::pool_id, pool_id);
}

void seal_page(std::span<uint8_t> out) {
    store_le32(out.data() + at::crc, page_crc(out));
}

struct Header {
    PageType type;
    uint8_t level;
    uint32_t count;
    uint64_t page;
    uint64_t sequence;
    uint64_t pool_id;
};

// The checks every page passes before its payload is looked at. `pool_id` 0: not known yet (superblock).
Result<Header> check_header(std::span<const uint8_t> in, PageType want, uint64_t page, uint64_t pool_id,
                            uint64_t max_sequence) {
    if (in.size() != page_size) {
        return bad(fmt::format("metadata page {}: {} bytes, expected {}", page, in.size(), page_size));
    }
    const uint8_t* p = in.data();
    if (load_le32(p + at::magic) != page_magic) {
        return bad(fmt::format("metadata page {}: not a thin metadata page (bad magic)", page));
    }
    if (load_le32(p + at::crc) != page_crc(in)) {
        return bad(fmt::format("metadata page {}: bad checksum", page));
    }
    if (load_le16(p + at::version) != format_version) {
        return bad(fmt::format("metadata page {}: format version {} (this ispace reads {})", page,
                               load_le16(p + at::version), format_version));
    }
    Header h{PageType(p[at::type]),       p[at::level],
             load_le32(p + at::count),    load_le64(p + at::page),
             load_le64(p + at::sequence), load_le64(p + at::pool_id)};
    if (h.type != want) {
        return bad(fmt::format("metadata page {}: type {}, expected {}", page, unsigned(p[at::type]),
                               unsigned(want)));
    }
    if (h.page != page) {
        return bad(fmt::format("metadata page {}: says it is page {} (a misdirected write)", page, h.page));
    }
    if (pool_id != 0 && h.pool_id != pool_id) {
        return bad(fmt::format("metadata page {}: belongs to another pool ({:016x}, expected {:016x})", page,
                               h.pool_id, pool_id));
    }
    if (h.sequence == 0 || h.sequence > max_sequence) {
        return bad(fmt::format("metadata page {}: written by transaction {}, newer than the superblock's {}",
                               page, h.sequence, max_sequence));
    }
    if (!all_zero(p + 40, header_size - 40)) {
        return bad(fmt::format("metadata page {}: reserved header bytes are not zero", page));
    }
    return h;
}

Result<void> check_child(uint64_t child, const PageExpect& e, const char* what) {
    if (child < superblock_slots || child >= e.metadata_pages) {
        return bad(fmt::format("metadata page {}: {} points at page {}, outside 2..{}", e.page, what, child,
                               e.metadata_pages - 1));
    }
    return {};
}

} // namespace

uint32_t page_crc(std::span<const uint8_t> page) {
    static const uint8_t zero[4] = {};
    uint32_t crc = label_crc32c(page.data(), at::crc);
    crc = label_crc32c(zero, 4, crc);
    return label_crc32c(page.data() + at::crc + 4, page.size() - at::crc - 4, crc);
}

uint64_t level_capacity(uint8_t level) {
    uint64_t c = leaf_entries;
    for (uint8_t l = 0; l < level; ++l) {
        c *= interior_fanout;
    }
    return c;
}

uint8_t level_for(uint64_t virtual_clusters) {
    uint8_t level = 0;
    while (level < max_level && level_capacity(level) < virtual_clusters) {
        ++level;
    }
    return level;
}

bool mask_test(const WrittenMask& m, uint32_t block) {
    return (m[block / 64] >> (block % 64)) & 1;
}
void mask_set_range(WrittenMask& m, uint32_t first, uint32_t count) {
    for (uint32_t b = first; b < first + count; ++b) {
        m[b / 64] |= uint64_t(1) << (b % 64);
    }
}
void mask_clear_range(WrittenMask& m, uint32_t first, uint32_t count) {
    for (uint32_t b = first; b < first + count; ++b) {
        m[b / 64] &= ~(uint64_t(1) << (b % 64));
    }
}
bool mask_empty(const WrittenMask& m) {
    return (m[0] | m[1] | m[2] | m[3]) == 0;
}
uint32_t mask_count(const WrittenMask& m) {
    uint32_t n = 0;
    for (uint64_t w : m) {
        n += uint32_t(std::popcount(w));
    }
    return n;
}
WrittenMask mask_and_not(const WrittenMask& a, const WrittenMask& b) {
    return {a[0] & ~b[0], a[1] & ~b[1], a[2] & ~b[2], a[3] & ~b[3]};
}
WrittenMask mask_or(const WrittenMask& a, const WrittenMask& b) {
    return {a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]};
}

void encode_superblock(const Superblock& s, uint64_t page, std::span<uint8_t> out) {
    start_page(out, PageType::superblock, 0, 0, page, s.sequence, s.pool_id);
    uint8_t* p = out.data();
    store_le32(p + sb::cluster_size, s.cluster_size);
    store_le32(p + sb::next_device_id, s.next_device_id);
    store_le64(p + sb::pool_clusters, s.pool_clusters);
    store_le64(p + sb::metadata_pages, s.metadata_pages);
    store_le64(p + sb::device_table_page, s.device_table_page);
    seal_page(out);
}

Result<Superblock> decode_superblock(std::span<const uint8_t> in, uint64_t page) {
    auto h = check_header(in, PageType::superblock, page, 0, ~uint64_t(0));
    if (!h) {
        return std::move(h).error();
    }
    const uint8_t* p = in.data();
    Superblock s;
    s.sequence = h->sequence;
    s.pool_id = h->pool_id;
    s.cluster_size = load_le32(p + sb::cluster_size);
    s.next_device_id = load_le32(p + sb::next_device_id);
    s.pool_clusters = load_le64(p + sb::pool_clusters);
    s.metadata_pages = load_le64(p + sb::metadata_pages);
    s.device_table_page = load_le64(p + sb::device_table_page);
    if (h->level != 0 || h->count != 0) {
        return bad(fmt::format("superblock {}: level {} count {}, expected 0", page, h->level, h->count));
    }
    if (s.pool_id == 0) {
        return bad(fmt::format("superblock {}: pool id 0", page));
    }
    if (s.cluster_size < min_cluster_size || s.cluster_size > max_cluster_blocks * written_granule ||
        !std::has_single_bit(s.cluster_size)) {
        return bad(fmt::format("superblock {}: cluster size {} (a power of two from 64 KiB to 1 MiB)", page,
                               s.cluster_size));
    }
    if (s.pool_clusters == 0 || s.pool_clusters >= no_cluster - 1) {
        return bad(fmt::format("superblock {}: pool of {} clusters", page, s.pool_clusters));
    }
    if (s.metadata_pages < superblock_slots + 1 || s.metadata_pages > (uint64_t(1) << 40)) {
        return bad(fmt::format("superblock {}: metadata area of {} pages", page, s.metadata_pages));
    }
    if (s.device_table_page < superblock_slots || s.device_table_page >= s.metadata_pages) {
        return bad(fmt::format("superblock {}: device table at page {}, outside 2..{}", page,
                               s.device_table_page, s.metadata_pages - 1));
    }
    if (s.next_device_id == 0) {
        return bad(fmt::format("superblock {}: next device id 0", page));
    }
    if (!all_zero(p + sb::end, page_size - sb::end)) {
        return bad(fmt::format("superblock {}: bytes after the fields are not zero", page));
    }
    return s;
}

void encode_device_table(std::span<const DeviceRecord> devices, uint64_t page, uint64_t sequence,
                         uint64_t pool_id, std::span<uint8_t> out) {
    start_page(out, PageType::device_table, 0, uint32_t(devices.size()), page, sequence, pool_id);
    uint8_t* p = out.data() + header_size;
    for (const DeviceRecord& d : devices) {
        store_le32(p + dev::id, d.id);
        store_le32(p + dev::flags, d.flags);
        store_le32(p + dev::origin, d.origin);
        p[dev::level] = d.level;
        store_le64(p + dev::virtual_clusters, d.virtual_clusters);
        store_le64(p + dev::root_page, d.root_page);
        store_le64(p + dev::created, d.created_sequence);
        std::memcpy(p + dev::name, d.name.data(), std::min(d.name.size(), max_name_length));
        p += dev::size;
    }
    seal_page(out);
}

Result<std::vector<DeviceRecord>> decode_device_table(std::span<const uint8_t> in, const PageExpect& e) {
    auto h = check_header(in, PageType::device_table, e.page, e.pool_id, e.max_sequence);
    if (!h) {
        return std::move(h).error();
    }
    if (h->level != 0 || h->count > max_devices) {
        return bad(fmt::format("device table {}: level {}, {} devices (at most {})", e.page, h->level,
                               h->count, max_devices));
    }
    std::vector<DeviceRecord> out;
    const uint8_t* p = in.data() + header_size;
    for (uint32_t i = 0; i < h->count; ++i, p += dev::size) {
        DeviceRecord d;
        d.id = load_le32(p + dev::id);
        d.flags = load_le32(p + dev::flags);
        d.origin = load_le32(p + dev::origin);
        d.level = p[dev::level];
        d.virtual_clusters = load_le64(p + dev::virtual_clusters);
        d.root_page = load_le64(p + dev::root_page);
        d.created_sequence = load_le64(p + dev::created);
        const char* name = reinterpret_cast<const char*>(p + dev::name);
        size_t n = strnlen(name, max_name_length + 1);
        if (n > max_name_length || n == 0) {
            return bad(fmt::format("device table {}: device {} has no terminated name", e.page, i));
        }
        if (!all_zero(p + dev::name + n, max_name_length + 1 - n) || !all_zero(p + dev::level + 1, 3)) {
            return bad(fmt::format("device table {}: device {} has stray bytes", e.page, i));
        }
        d.name.assign(name, n);
        if (d.id == 0 || (d.flags & ~uint32_t(device_flags_known)) != 0) {
            return bad(
                fmt::format("device table {}: device {} has id {} flags {:#x}", e.page, i, d.id, d.flags));
        }
        if (d.level > max_level || d.virtual_clusters == 0 || d.virtual_clusters > level_capacity(d.level) ||
            level_for(d.virtual_clusters) != d.level) {
            return bad(fmt::format("device table {}: device {} of {} clusters has root level {}", e.page,
                                   d.id, d.virtual_clusters, d.level));
        }
        if (d.root_page != 0) {
            if (auto r = check_child(d.root_page, e, "a device root"); !r) {
                return std::move(r).error();
            }
        }
        if (d.created_sequence > e.max_sequence) {
            return bad(
                fmt::format("device table {}: device {} created by a later transaction", e.page, d.id));
        }
        for (const DeviceRecord& other : out) {
            if (other.id == d.id || other.name == d.name) {
                return bad(
                    fmt::format("device table {}: device id {} or name \"{}\" twice", e.page, d.id, d.name));
            }
        }
        out.push_back(std::move(d));
    }
    if (!all_zero(p, page_size - size_t(p - in.data()))) {
        return bad(fmt::format("device table {}: bytes after the records are not zero", e.page));
    }
    return out;
}

void encode_interior(const Interior& node, uint64_t page, uint64_t sequence, uint64_t pool_id,
                     std::span<uint8_t> out) {
    uint32_t count = 0;
    for (uint64_t c : node.children) {
        count += c != 0;
    }
    start_page(out, PageType::interior, node.level, count, page, sequence, pool_id);
    uint8_t* p = out.data() + header_size;
    for (uint64_t c : node.children) {
        store_le64(p, c);
        p += 8;
    }
    seal_page(out);
}

Result<Interior> decode_interior(std::span<const uint8_t> in, const PageExpect& e, uint8_t level) {
    auto h = check_header(in, PageType::interior, e.page, e.pool_id, e.max_sequence);
    if (!h) {
        return std::move(h).error();
    }
    if (h->level != level || level == 0 || level > max_level) {
        return bad(fmt::format("interior node {}: level {}, expected {}", e.page, h->level, level));
    }
    Interior node;
    node.level = level;
    uint32_t count = 0;
    const uint8_t* p = in.data() + header_size;
    for (uint32_t i = 0; i < interior_fanout; ++i, p += 8) {
        uint64_t c = load_le64(p);
        if (c != 0) {
            if (auto r = check_child(c, e, "a child"); !r) {
                return std::move(r).error();
            }
            ++count;
        }
        node.children[i] = c;
    }
    if (count != h->count) {
        return bad(fmt::format("interior node {}: {} children, the header says {}", e.page, count, h->count));
    }
    if (!all_zero(p, page_size - size_t(p - in.data()))) {
        return bad(fmt::format("interior node {}: bytes after the children are not zero", e.page));
    }
    return node;
}

void encode_leaf(const Leaf& leaf, uint64_t page, uint64_t sequence, uint64_t pool_id,
                 std::span<uint8_t> out) {
    uint32_t count = 0;
    for (const LeafEntry& entry : leaf.entries) {
        count += entry.mapped();
    }
    start_page(out, PageType::leaf, 0, count, page, sequence, pool_id);
    uint8_t* p = out.data() + header_size;
    for (const LeafEntry& entry : leaf.entries) {
        if (entry.mapped()) {
            store_le64(p, entry.physical + 1);
            for (int w = 0; w < 4; ++w) {
                store_le64(p + 8 + 8 * w, entry.written[w]);
            }
        }
        p += leaf_entry_size;
    }
    seal_page(out);
}

Result<Leaf> decode_leaf(std::span<const uint8_t> in, const PageExpect& e) {
    auto h = check_header(in, PageType::leaf, e.page, e.pool_id, e.max_sequence);
    if (!h) {
        return std::move(h).error();
    }
    if (h->level != 0) {
        return bad(fmt::format("leaf {}: level {}", e.page, h->level));
    }
    // Bits beyond the cluster's blocks must be clear: a mask that claims them was not written by us.
    WrittenMask outside{};
    mask_set_range(outside, 0, max_cluster_blocks);
    mask_clear_range(outside, 0, std::min(e.cluster_blocks, max_cluster_blocks));
    Leaf leaf;
    uint32_t count = 0;
    const uint8_t* p = in.data() + header_size;
    for (uint32_t i = 0; i < leaf_entries; ++i, p += leaf_entry_size) {
        uint64_t stored = load_le64(p);
        LeafEntry& entry = leaf.entries[i];
        for (int w = 0; w < 4; ++w) {
            entry.written[w] = load_le64(p + 8 + 8 * w);
        }
        if (stored == 0) {
            if (!mask_empty(entry.written)) {
                return bad(fmt::format("leaf {}: entry {} is unmapped but has written blocks", e.page, i));
            }
            continue;
        }
        entry.physical = stored - 1;
        if (entry.physical >= e.pool_clusters) {
            return bad(fmt::format("leaf {}: entry {} maps cluster {}, the pool has {}", e.page, i,
                                   entry.physical, e.pool_clusters));
        }
        if (mask_empty(entry.written)) {
            return bad(fmt::format("leaf {}: entry {} has no written block", e.page, i));
        }
        if (!mask_empty(WrittenMask{entry.written[0] & outside[0], entry.written[1] & outside[1],
                                    entry.written[2] & outside[2], entry.written[3] & outside[3]})) {
            return bad(fmt::format("leaf {}: entry {} marks blocks beyond the cluster's {}", e.page, i,
                                   e.cluster_blocks));
        }
        ++count;
    }
    if (count != h->count) {
        return bad(fmt::format("leaf {}: {} mapped entries, the header says {}", e.page, count, h->count));
    }
    if (!all_zero(p, page_size - size_t(p - in.data()))) {
        return bad(fmt::format("leaf {}: bytes after the entries are not zero", e.page));
    }
    return leaf;
}

} // namespace ispace::volume::thin
