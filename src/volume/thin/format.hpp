// The on-disk format of a thin pool's metadata (docs/thin.md has the design): fixed 4 KiB pages in a
// metadata area that every member keeps a copy of. Every page starts with one header — magic, version,
// type, a CRC32C over the whole page, the page's own index (a write that landed at the wrong place is
// caught), the transaction that wrote it and the pool's random id (a page left by another pool on a
// reused member is caught).
//
//   page 0, 1      superblock slots: the one with the higher valid sequence is current (ZFS's uberblock
//                  ring, reduced to two); a commit writes the other slot last
//   any other      device table (one page), interior nodes (256 child pages), leaves (64 mappings)
//
// A device's mapping is a radix tree: a leaf maps 64 virtual clusters to {physical cluster, written-block
// mask}; an interior node of level k points at 256 nodes of level k-1. Nodes are shared between devices
// (a snapshot shares its origin's root) and never written in place once committed.
//
// Little-endian throughout. Every field is read from a hostile disk: the decoders check each one against
// what the caller expects (which page, which pool, which level, how many clusters the pool has) and
// return an error that says what is wrong; tests/fuzz/fuzz_thin_page.cpp holds them to that.
#pragma once

#include "common/result.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ispace::volume::thin {

inline constexpr size_t page_size = 4096;
inline constexpr uint32_t format_version = 1;
inline constexpr uint32_t page_magic = 0x4e485449; // "ITHN" read as little-endian bytes
inline constexpr size_t header_size = 64;
inline constexpr uint64_t superblock_slots = 2; // pages 0 and 1

// The unit of allocation and of the written-block map: a written bit covers 4 KiB of a cluster, and a
// cluster has at most 256 of them (1 MiB, the default); smaller clusters use the low bits.
inline constexpr uint32_t written_granule = 4096;
inline constexpr uint32_t max_cluster_blocks = 256;
inline constexpr uint32_t default_cluster_size = 1 << 20;
inline constexpr uint32_t min_cluster_size = 64 << 10;

inline constexpr uint32_t leaf_entries = 64;     // virtual clusters per leaf (6 bits)
inline constexpr uint32_t interior_fanout = 256; // children per interior node (8 bits)
inline constexpr uint8_t max_level = 4;          // root level: 64 * 256^4 clusters is plenty
inline constexpr size_t max_name_length = 55;
inline constexpr uint32_t max_devices = 40; // one device-table page (docs/thin.md: a limit of this slice)

inline constexpr uint64_t no_cluster = ~uint64_t(0);

using WrittenMask = std::array<uint64_t, 4>; // bit b: 4 KiB block b of the cluster was written

enum class PageType : uint8_t { superblock = 1, device_table = 2, interior = 3, leaf = 4 };

// What a decoder checks a page against: where it was read from, the pool it must belong to, the newest
// transaction that may have written it, and the bounds its pointers must respect.
struct PageExpect {
    uint64_t page = 0;
    uint64_t pool_id = 0;
    uint64_t max_sequence = ~uint64_t(0);
    uint64_t metadata_pages = 0;
    uint64_t pool_clusters = 0;
    uint32_t cluster_blocks = max_cluster_blocks;
};

struct Superblock {
    uint64_t sequence = 0; // the transaction; the higher valid slot wins
    uint64_t pool_id = 0;
    uint32_t cluster_size = default_cluster_size;
    uint64_t pool_clusters = 0;  // physical clusters the members give the pool
    uint64_t metadata_pages = 0; // pages in the metadata area (superblock slots included)
    uint64_t device_table_page = 0;
    uint32_t next_device_id = 1;

    uint32_t cluster_blocks() const { return cluster_size / written_granule; }
};

enum DeviceFlags : uint32_t {
    device_read_only = 1u << 0, // a snapshot: writes are refused
    device_flags_known = device_read_only,
};

struct DeviceRecord {
    uint32_t id = 0;
    uint32_t flags = 0;
    uint32_t origin = 0; // the device it was taken from (0: none); informational, it may be gone
    uint8_t level = 0;   // the root's level
    uint64_t virtual_clusters = 0;
    uint64_t root_page = 0; // 0: nothing mapped yet
    uint64_t created_sequence = 0;
    std::string name;
};

struct LeafEntry {
    uint64_t physical = no_cluster;
    WrittenMask written{};

    bool mapped() const { return physical != no_cluster; }
    bool operator==(const LeafEntry&) const = default;
};

struct Leaf {
    std::array<LeafEntry, leaf_entries> entries{};
};

struct Interior {
    uint8_t level = 1;
    std::array<uint64_t, interior_fanout> children{}; // page indexes, 0: none
};

// The clusters a device of `level` can address: 64 * 256^level.
uint64_t level_capacity(uint8_t level);
// The smallest root level that addresses `virtual_clusters`.
uint8_t level_for(uint64_t virtual_clusters);

bool mask_test(const WrittenMask& m, uint32_t block);
void mask_set_range(WrittenMask& m, uint32_t first, uint32_t count);
void mask_clear_range(WrittenMask& m, uint32_t first, uint32_t count);
bool mask_empty(const WrittenMask& m);
uint32_t mask_count(const WrittenMask& m);
WrittenMask mask_and_not(const WrittenMask& a, const WrittenMask& b);
WrittenMask mask_or(const WrittenMask& a, const WrittenMask& b);

// Encoders fill `out` (page_size bytes) completely, checksum included. `page` is where it will be written.
void encode_superblock(const Superblock& sb, uint64_t page, std::span<uint8_t> out);
void encode_device_table(std::span<const DeviceRecord> devices, uint64_t page, uint64_t sequence,
                         uint64_t pool_id, std::span<uint8_t> out);
void encode_interior(const Interior& node, uint64_t page, uint64_t sequence, uint64_t pool_id,
                     std::span<uint8_t> out);
void encode_leaf(const Leaf& leaf, uint64_t page, uint64_t sequence, uint64_t pool_id,
                 std::span<uint8_t> out);

// Decoders: the page's contents, or an error (EILSEQ) naming what is wrong. decode_superblock checks
// the page index only (the pool id and bounds are what it establishes).
Result<Superblock> decode_superblock(std::span<const uint8_t> in, uint64_t page);
Result<std::vector<DeviceRecord>> decode_device_table(std::span<const uint8_t> in, const PageExpect& expect);
Result<Interior> decode_interior(std::span<const uint8_t> in, const PageExpect& expect, uint8_t level);
Result<Leaf> decode_leaf(std::span<const uint8_t> in, const PageExpect& expect);

// CRC32C of a page with its checksum field taken as zero.
uint32_t page_crc(std::span<const uint8_t> page);

} // namespace ispace::volume::thin
