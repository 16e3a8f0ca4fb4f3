// Labels: the on-disk truth of a data-space. Every member carries four copies of an 8 KiB label — two at
// the start of the device, two at its end (as ZFS keeps four, so that overwriting the start of a disk, a
// partition table written on it, or a torn write cannot take every copy) — each self-describing and
// checksummed (CRC32C). The local catalog is only a cache of what the labels say.
//
// Member layout (docs/dataspaces.md has the picture):
//
//   0        label copy 0             8 KiB
//   8 KiB    label copy 1             8 KiB
//   16 KiB   reserved                 up to 64 KiB
//   64 KiB   write-intent bitmap      one bit per region of the space, rounded up to 4 KiB
//   ...      further metadata areas   (issue 14: thin mapping pages, block checksums), listed in the label
//   data_offset (1 MiB aligned)       the data area: data_size bytes
//   ...      reserved tail            up to the last 1 MiB boundary before the end
//   end-16K  label copy 2             8 KiB
//   end-8K   label copy 3             8 KiB
//
// The format is little-endian and versioned: `version` says how to read the header; three feature masks
// say what else a reader must know (ext4's scheme): an unknown `incompat` bit means the member cannot be
// used at all, an unknown `ro_compat` bit that it may be read but not written, an unknown `compat` bit
// may be ignored. Issue 14 (thin mapping, checksums) adds incompat bits and metadata areas; the header
// has room (the area table, the reserved bytes after the member table).
//
// The scrub record and the members' checksum error counts (compat bit 1, `scrub`; docs/integrity.md,
// "What the labels keep of a scrub") sit after the member table, at 5120-5375. Compat, not ro_compat: an
// ispace that ignores them loses only the record (a scrub to start again, counts from 0); it cannot damage
// data. But the decoders before this bit refuse any non-zero byte they do not know ("reserved byte 5120 is
// not zero"), so to them a label holding a record is unreadable, as if the bit were incompat; a space made
// by them, or holding no record yet, still reads with them. From this version on, bytes 6144-8191 are
// where later compat features put their fields: a decoder that sees a compat bit it does not know does
// not require those bytes to be zero (and a write by it drops them: a later version must accept its own
// bit with its fields zero).
//
// Every field is read from a hostile disk: decode_label() checks each one and says what is wrong, and
// never trusts a length or an offset it has not checked. tests/fuzz/fuzz_label.cpp holds it to that.
#pragma once

#include "common/result.hpp"
#include "volume/layout.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::volume {

using Uuid = std::array<uint8_t, 16>;
// A random (version 4) UUID.
Uuid make_uuid();
// A random non-zero 64-bit value (generation ids, reservation keys).
uint64_t random_u64();
// "0f1e2d3c-...", lower case.
std::string to_string(const Uuid& uuid);
Result<Uuid> parse_uuid(std::string_view text);
inline bool is_nil(const Uuid& uuid) {
    return uuid == Uuid{};
}

inline constexpr size_t label_size = 8192;
inline constexpr uint32_t label_version = 1;
inline constexpr std::string_view label_magic = "ISPACELB"; // 8 bytes
inline constexpr unsigned label_copies = 4;
inline constexpr uint64_t metadata_start = 64 << 10; // the first metadata area (after two label copies)
inline constexpr uint64_t data_alignment = 1 << 20;  // data_offset and the data area's end
inline constexpr size_t max_name_length = 63;
inline constexpr size_t max_url_length = 183;
inline constexpr size_t max_holder_length = 63;
inline constexpr size_t max_metadata_areas = 8;
// The largest virtual size of a thin space (its members may hold far less): 1 PiB.
inline constexpr uint64_t max_thin_size = uint64_t(1) << 50;

// Feature bits (see the header comment). This version sets compat::bitmap and, for a thin space,
// incompat::thin: an older ispace must not read a thin space's data area as if it were the space.
namespace feature {
namespace incompat {
constexpr uint64_t thin = 1u << 0; // clusters allocated on write (docs/thin.md); a thin_map area exists
// A CRC32C per 4 KiB block of the layout's range in a checksums area on every member (docs/integrity.md):
// an older ispace would write data without updating it, so that every later read failed.
constexpr uint64_t checksums = 1u << 1;
// Each 4 KiB page of the checksums area holds 1023 entries and its own CRC32C (checksum_page.hpp); without
// it a page is 1024 entries and nothing else (spaces made before). An older ispace would take the check for
// an entry and place every later entry one block off.
constexpr uint64_t checksum_pages = 1u << 2;
constexpr uint64_t known = thin | checksums | checksum_pages; // what this version reads
} // namespace incompat
namespace ro_compat {
constexpr uint64_t known = 0;
}
namespace compat {
constexpr uint64_t bitmap = 1u << 0; // a write-intent bitmap area exists
// The scrub record and per-member checksum error counts may be non-zero (a space with block checksums).
constexpr uint64_t scrub = 1u << 1;
constexpr uint64_t known = bitmap | scrub;
} // namespace compat
} // namespace feature

// The metadata areas a label lists (type field).
enum class AreaType : uint32_t {
    bitmap = 1,    // write-intent bitmap: bit r = region r of the space may differ between copies
    thin_map = 2,  // the thin pool's metadata pages (docs/thin.md, src/volume/thin), on every member
    checksums = 3, // CRC32C per 4 KiB block of the layout's range (docs/integrity.md), on every member
};

struct MetadataArea {
    AreaType type = AreaType::bitmap;
    uint32_t flags = 0;
    uint64_t offset = 0; // bytes from the start of the member
    uint64_t length = 0;
};

// A member's state as the writer of a label saw it.
enum class MemberState : uint8_t {
    active = 1,     // in sync: holds every acknowledged write
    failed = 2,     // errored or stopped answering; out since out_epoch
    missing = 3,    // was not reachable when the space was opened; out since out_epoch
    rebuilding = 4, // being resynced: in sync below recovery_offset (and outside the bitmap, for delta)
    spare = 5,      // holds no data of the space yet (reserved for hot spares)
};
std::string_view to_string(MemberState state);

// How a rebuilding member is being brought back.
enum class RebuildMode : uint8_t {
    none = 0,
    full = 1,  // everything below recovery_offset is in sync, nothing above it
    delta = 2, // only the regions the bitmap marks may differ; those below recovery_offset are done
};

struct MemberEntry {
    Uuid uuid{};
    MemberState state = MemberState::active;
    RebuildMode rebuild = RebuildMode::none;
    uint64_t recovery_offset = 0; // space bytes resynced so far (rebuilding)
    // The epoch at which the member left the in-sync set (failed, missing); 0 while it is in it.
    uint64_t out_epoch = 0;
    // The (epoch, generation) of the last label this member received from the writer of this one. A
    // member that left and whose own label still says exactly this is merely stale; one whose label
    // says anything else was written by someone else since: the members were written apart (a split).
    uint64_t last_epoch = 0;
    uint64_t last_generation = 0;
    uint64_t last_previous_generation = 0; // that label's previous generation: it may be one raise behind
    uint64_t data_bytes = 0;               // the member's data area
    std::string url; // where it was last reached (no secret): a hint for assembly and status
};

// The last (or current) scrub of a space with block checksums, as the labels keep it (docs/integrity.md).
enum class ScrubState : uint8_t {
    none = 0,    // never scrubbed (or the record was dropped by an ispace that does not keep it)
    running = 1, // was running when this label was written: at the next open it is shown as interrupted
    paused = 2,  // paused by the user at `position`
    done = 3,    // finished at `finished`
};
std::string_view to_string(ScrubState state);
inline constexpr size_t max_scrub_lost = 8; // the first unrepairable block offsets a record keeps
// A member is failed at 32 checksum errors; reads and repairs in flight may add a few more. A count past
// this bound is not one any ispace wrote.
inline constexpr uint64_t max_checksum_errors = uint64_t(1) << 32;

struct ScrubRecord {
    ScrubState state = ScrubState::none;
    uint64_t position = 0; // layout bytes checked (the checkpoint a resume starts from)
    uint64_t started = 0;  // unix seconds
    uint64_t finished = 0; // unix seconds; done only
    uint64_t checked = 0;  // 4 KiB blocks compared against their stored checksum
    uint64_t bad = 0;      // block copies that failed it
    uint64_t repaired = 0; // ... rewritten from a good copy
    uint64_t unrepairable = 0;
    std::vector<uint64_t> lost; // layout byte offsets of the first unrepairable blocks, ascending
    bool operator==(const ScrubRecord&) const = default;
};

// How a checksums area's 4 KiB pages are laid out (label bit feature::incompat::checksum_pages).
enum class ChecksumPageFormat : uint8_t {
    bare,    // 1024 entries, nothing else (spaces made before the bit)
    checked, // 1023 entries and the page's CRC32C seeded with its number (checksum_page.hpp)
};

struct Label {
    uint32_t version = label_version;
    uint64_t incompat = 0;
    uint64_t ro_compat = 0;
    uint64_t compat = 0;
    Uuid space_uuid{};
    Uuid member_uuid{};
    std::string name;
    LayoutKind layout = LayoutKind::mirror;
    uint32_t copies = 1;
    uint32_t block_size = 512;
    uint64_t chunk = 0;
    uint64_t space_size = 0;  // bytes
    uint64_t data_offset = 0; // bytes from the start of this member
    uint64_t data_size = 0;   // this member's data area
    uint64_t member_size = 0; // the device's size when this label was written (where copies 2, 3 are)
    // (epoch, sequence) orders labels: the epoch rises with every change of membership and every open
    // after an unclean shutdown, the sequence with every other label write. Each epoch also has a random
    // generation id, and the label keeps the one before it (DRBD's generation identifiers): two members
    // raised to the same epoch number by two different holders are told apart by it.
    uint64_t epoch = 1;
    uint64_t sequence = 1;
    uint64_t generation = 0;
    uint64_t previous_generation = 0;
    uint32_t slot = 0;        // this member's slot in `members`
    uint32_t region_size = 0; // write-intent bitmap region (bytes); 0: no bitmap
    bool clean = false;       // the holder closed the space; nothing was in flight
    uint64_t created = 0;     // unix seconds
    uint64_t updated = 0;
    uint64_t holder_key = 0; // the holder's persistent-reservation key (0: none)
    std::string holder;      // who that is, for "held by ..." ("host:home")
    std::vector<MetadataArea> areas;
    std::vector<MemberEntry> members; // by slot
    // compat::scrub (block checksums only): the scrub record, and blocks read from each slot's member that
    // failed their checksum (kept across opens; docs/integrity.md).
    ScrubRecord scrub;
    std::array<uint64_t, max_members> checksum_errors{};

    const MetadataArea* area(AreaType type) const;
    bool thin() const { return (incompat & feature::incompat::thin) != 0; }
    bool checksums() const { return (incompat & feature::incompat::checksums) != 0; }
    ChecksumPageFormat checksum_page_format() const {
        return (incompat & feature::incompat::checksum_pages) != 0 ? ChecksumPageFormat::checked
                                                                   : ChecksumPageFormat::bare;
    }
    // The layout the label describes (member data sizes from the member table).
    Result<Layout> layout_of() const;
};

// The byte offsets of the four copies on a device of `device_bytes`.
std::array<uint64_t, label_copies> label_offsets(uint64_t device_bytes);

// Writes `label` as copy `copy` (0..3) into `out` (label_size bytes), with its checksum.
void encode_label(const Label& label, unsigned copy, std::span<uint8_t> out);
// Reads and checks one copy. The error says what is wrong ("bad checksum", "layout 9 is unknown", "made
// by a newer ispace: format version 3").
Result<Label> decode_label(std::span<const uint8_t> bytes);

// What a member's label copies say, taken together: the freshest valid copy (epoch, then sequence),
// and what is wrong with the others (for status and logs).
struct LabelReading {
    std::optional<Label> label;
    unsigned valid = 0;
    std::vector<std::string> problems; // "copy 1 at offset 8192: bad checksum"
    // Whether a valid copy is older than the chosen one or damaged: the next label write repairs it.
    bool needs_repair = false;
};
// `copies[i]` is copy i's bytes (empty when it could not be read), read at `offsets[i]`.
LabelReading choose_label(std::span<const std::vector<uint8_t>> copies, std::span<const uint64_t> offsets);
// Whether `bytes` starts with the label magic (a member of some space, damaged or not).
bool looks_like_label(std::span<const uint8_t> bytes);

// Where a member's metadata and data go, for a device of `member_bytes` with `block_size`-byte blocks,
// holding (at most) a space of `max_space_bytes` with a bitmap of `region_size` regions (0: none) and,
// for a thin space, a thin metadata area of `thin_map_bytes` (a multiple of 4 KiB; 0: none) after it.
struct MemberPlan {
    uint64_t data_offset = 0;
    uint64_t data_size = 0;
    MetadataArea bitmap;    // length 0 when there is none
    MetadataArea thin_map;  // length 0 when there is none
    MetadataArea checksums; // length 0 when there is none
};
// `checksum_bytes` (0: none): the bytes of block checksums for the layout range (checksum_area_bytes).
Result<MemberPlan> plan_member(uint64_t member_bytes, uint32_t block_size, uint64_t max_space_bytes,
                               uint32_t region_size, uint64_t thin_map_bytes = 0,
                               uint64_t checksum_bytes = 0);

// Block checksums (docs/integrity.md): one little-endian u32 per 4 KiB block of the layout's address range,
// in a checksums area of whole 4 KiB pages.
inline constexpr uint32_t checksum_block = 4096;
inline constexpr uint64_t checksum_page_bytes = 4096;
// The whole table is held in memory (S/1024 bytes for S bytes of layout): at most this much, 256 MiB, which
// covers 256 GiB of members.
inline constexpr uint64_t max_checksum_table = uint64_t(256) << 20;
// The block -> page arithmetic of both formats goes through this, and only this: entries per 4 KiB page.
inline constexpr uint64_t checksum_entries_per_page(ChecksumPageFormat format) {
    return format == ChecksumPageFormat::checked ? 1023 : 1024;
}
// The table pages that hold `blocks` blocks' checksums.
inline constexpr uint64_t checksum_pages(uint64_t blocks, ChecksumPageFormat format) {
    uint64_t per_page = checksum_entries_per_page(format);
    return (blocks + per_page - 1) / per_page;
}
inline constexpr uint64_t checksum_area_bytes(uint64_t layout_bytes, ChecksumPageFormat format) {
    return checksum_pages((layout_bytes + checksum_block - 1) / checksum_block, format) * checksum_page_bytes;
}
// The layout bytes that many bytes of checksums area hold.
inline constexpr uint64_t checksum_area_reach(uint64_t area_bytes, ChecksumPageFormat format) {
    return area_bytes / checksum_page_bytes * checksum_entries_per_page(format) * checksum_block;
}
// The most layout bytes a space with checksums may have (what max_checksum_table holds in memory): 256 GiB.
inline constexpr uint64_t max_checksum_reach = max_checksum_table / 4 * checksum_block;
// How far a new space's checksums area reaches: four times what its members hold at create, so that the
// space can grow (`ispace space grow`) to four times its size; the area costs 1/1024 of that reach on every
// member (0.4 % of what they hold) and the memory is taken only as the space grows. At least `upper`, at
// most max_checksum_reach.
inline constexpr uint64_t checksum_reach_at_create(uint64_t upper) {
    uint64_t wanted = upper > max_checksum_reach / 4 ? max_checksum_reach : upper * 4;
    return wanted > upper ? wanted : upper;
}

// CRC32C (Castagnoli), as the label checksum uses it: ISA-L's crc32_iscsi, preset and complemented.
uint32_t label_crc32c(const void* data, size_t length, uint32_t seed = 0);

} // namespace ispace::volume
