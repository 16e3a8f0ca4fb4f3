// Blocking I/O on member devices for management code (create, assemble, status tools): each call runs the
// request on a reactor and waits for it. Never from a reactor thread.
//
// And formatting: the labels and the empty bitmap of a new space, written only after every member passed
// every check, so that a refused create has written nothing anywhere.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"
#include "net/reactor.hpp"
#include "volume/assembly.hpp"
#include "volume/label.hpp"
#include "volume/layout.hpp"
#include "volume/thin/pool.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ispace::volume {

// 0 or -errno. `data` is read into or written from (empty for flush).
int member_io(net::Reactor& reactor, backstore::Device& device, backstore::IoOp op, uint64_t offset,
              std::span<uint8_t> data, bool fua = false);

// The four label copies of `device`, read and chosen (label.hpp's choose_label).
LabelReading read_member_labels(net::Reactor& reactor, backstore::Device& device);
// Writes `label` as all four copies, copies 0 and 2 first, then 1 and 3, each FUA.
Result<void> write_member_labels(net::Reactor& reactor, backstore::Device& device, const Label& label);
// Reads a member's bitmap area (empty on error).
std::vector<uint8_t> read_member_bitmap(net::Reactor& reactor, backstore::Device& device, const Label& label);

inline constexpr uint32_t default_region_size = 1 << 20;

struct SpaceSpec {
    std::string name;
    LayoutKind layout = LayoutKind::mirror;
    uint32_t copies = 2;                        // stripe_mirror only
    uint64_t chunk = 0;                         // stripe kinds (default_chunk)
    uint64_t size = 0;                          // 0: all the layout holds
    uint32_t region_size = default_region_size; // bitmap region (redundant layouts)
    std::vector<std::string> urls;              // in slot order (for the labels and messages; no secrets)
    // Thin (docs/thin.md): `size` is virtual and may exceed what the members hold; clusters of
    // `cluster_size` bytes are allocated from the members on first write.
    bool thin = false;
    uint32_t cluster_size = 1 << 20;
    // Block checksums (docs/integrity.md): a CRC32C per 4 KiB block, verified on every read. Redundant
    // layouts only (a mismatch is repaired from another copy; a torn write is resolved through the bitmap).
    bool checksums = false;
    // How the table's pages are laid out: always `checked` for a new space; `bare` makes one as a version
    // before label bit feature::incompat::checksum_pages did (for the tests that such spaces still work).
    ChecksumPageFormat checksum_pages = ChecksumPageFormat::checked;
};

// The pages a thin metadata area gets for a pool of `pool_clusters` and a device of `virtual_clusters`:
// room for every leaf the device can need, plus the leaves its snapshots and clones diverge into (about
// one per pool cluster, at most 16 maps' worth), twice over (a commit writes changed nodes to fresh pages
// while the old ones are still the durable state), with interior nodes and the device table: 1.6 % of a
// pool of 1 MiB clusters at the very most, 0.2 % for a pool as large as its device. A map that outgrows it
// makes commits fail (ENOSPC).
uint64_t thin_metadata_pages(uint64_t pool_clusters, uint64_t virtual_clusters);

// The name of the one thin device of a thin space in its pool (snapshots and clones will be others).
inline constexpr const char* thin_device_name = "space";

// A space whose members were just labelled.
struct FormattedSpace {
    AssemblyPlan plan;                  // every member current, clean
    std::vector<uint64_t> data_offsets; // per slot
    uint64_t pool_bytes = 0;            // thin: the clusters the members give the pool
    // For the user, not the log: a member with room the layout leaves unused (a mirror is as large as its
    // smallest member), when no --size asked for less.
    std::vector<std::string> notes;
};

// Checks everything first — a name that fits, block sizes that agree, members large enough, members that
// carry no label of a space (unless `force`; the error names the space) — then writes each member's bitmap
// area (zeroes), for a thin space an empty pool in its metadata area (mirrored on every member), and the
// labels last. Nothing is written when a check fails.
Result<FormattedSpace> format_space(net::Reactor& reactor, const SpaceSpec& spec,
                                    const std::vector<backstore::Device*>& devices, bool force);

// What a thin space's map says about its allocation, read from `devices` (members with the current labels;
// each holds a copy of the metadata area). Blocking; writes nothing.
struct ThinPoolSummary {
    uint64_t allocated_clusters = 0;
    uint64_t pool_clusters = 0;
    uint64_t cluster_size = 0;
    std::vector<thin::DeviceInfo> devices;
};
Result<ThinPoolSummary> read_thin_stats(net::Reactor& reactor, const std::vector<backstore::Device*>& devices,
                                        const Label& truth);

// What a member's data area would be for `spec` on a device of `bytes` (for add/replace): its plan.
Result<MemberPlan> plan_for(const SpaceSpec& spec, uint64_t device_bytes, uint32_t block_size,
                            uint64_t space_bytes, uint64_t thin_map_bytes = 0, uint64_t checksum_bytes = 0);

} // namespace ispace::volume
