// Layouts: where a byte of a data-space lives on its members. Pure functions, no I/O.
//
// A layout arranges the members in columns of `copies` members each; every member of a column holds the
// same bytes at the same offset of its data area (a mirror), and the space's address range is spread over
// the columns:
//
//   mirror         one column of N copies (2..N copies of everything)
//   stripe         N columns of one member; chunk k of the space is on column k mod N, row k div N
//   concat         N columns of one member, one after the other, each as large as its member
//   stripe_mirror  N/copies columns of `copies` members, striped as `stripe` (RAID 10)
//
// Offsets here are bytes of the data area (a member's label and metadata come before it; see label.hpp),
// multiples of the block size.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::volume {

enum class LayoutKind : uint8_t { mirror = 1, stripe = 2, concat = 3, stripe_mirror = 4 };

std::string_view to_string(LayoutKind kind);
// "mirror", "stripe", "concat", "stripe_mirror" (also "raid10").
Result<LayoutKind> parse_layout_kind(std::string_view text);

inline constexpr uint64_t default_chunk = 128 << 10;
inline constexpr uint32_t max_members = 16;

struct Layout {
    LayoutKind kind = LayoutKind::mirror;
    uint32_t copies = 1; // members per column
    uint64_t chunk = 0;  // stripe and stripe_mirror; 0 for the others
    // Usable bytes of each member's data area, in slot order (concat's columns are as long as these).
    std::vector<uint64_t> member_bytes;

    uint32_t members() const { return uint32_t(member_bytes.size()); }
    uint32_t columns() const { return copies == 0 ? 0 : members() / copies; }
    // Whether a lost member can be rebuilt from the others (mirror, stripe_mirror).
    bool redundant() const { return copies > 1; }
};

// Checks and builds a layout: 1..max_members members (a mirror needs 2 or more, stripe_mirror a multiple
// of `copies` >= 2 with two columns or more), a chunk that is a multiple of the block size (stripe kinds;
// default_chunk when 0), member sizes that are whole blocks and hold at least one chunk. `copies` is
// ignored for mirror (all members), stripe and concat (one).
Result<Layout> make_layout(LayoutKind kind, std::vector<uint64_t> member_bytes, uint32_t block_size,
                           uint64_t chunk = 0, uint32_t copies = 2);

// The largest space the layout can hold: a mirror's smallest member; a stripe's smallest member (in whole
// chunks) times the columns; a concat's sum.
uint64_t capacity(const Layout& layout);

// One piece of a space range, on one column: [space_offset, +length) of the space is
// [member_offset, +length) of the data area of every member of `column`.
struct Extent {
    uint64_t space_offset = 0;
    uint64_t length = 0;
    uint32_t column = 0;
    uint64_t member_offset = 0;
};

// Appends the extents of [offset, offset + length) to `out`, in space order; extents of a stripe that are
// adjacent on the same column are not merged (one per chunk). The range must lie within capacity().
void map_range(const Layout& layout, uint64_t offset, uint64_t length, std::vector<Extent>& out);

// The slot of copy `copy` of `column`.
inline uint32_t member_of(const Layout& layout, uint32_t column, uint32_t copy) {
    return column * layout.copies + copy;
}
inline uint32_t column_of(const Layout& layout, uint32_t member) {
    return member / layout.copies;
}

// How many bytes of each member's data area a space of `space_bytes` uses (what a replacement member
// must at least hold), in slot order.
std::vector<uint64_t> member_bytes_used(const Layout& layout, uint64_t space_bytes);

} // namespace ispace::volume
