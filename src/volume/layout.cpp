#include "volume/layout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cerrno>

namespace ispace::volume {

std::string_view to_string(LayoutKind kind) {
    switch (kind) {
    case LayoutKind::mirror:
        return "mirror";
    case LayoutKind::stripe:
        return "stripe";
    case LayoutKind::concat:
        return "concat";
    case LayoutKind::stripe_mirror:
        return "stripe_mirror";
    }
    return "unknown";
}

Result<LayoutKind> parse_layout_kind(std::string_view text) {
    if (text == "mirror") {
        return LayoutKind::mirror;
    }
    if (text == "stripe") {
        return LayoutKind::stripe;
    }
    if (text == "concat") {
        return LayoutKind::concat;
    }
    if (text == "stripe_mirror" || text == "stripe-mirror" || text == "raid10") {
        return LayoutKind::stripe_mirror;
    }
    return make_error(fmt::format("layout '{}': expected mirror, stripe, concat or stripe_mirror", text),
                      EINVAL);
}

Result<Layout> make_layout(LayoutKind kind, std::vector<uint64_t> member_bytes, uint32_t block_size,
                           uint64_t chunk, uint32_t copies) {
    size_t n = member_bytes.size();
    if (block_size == 0 || (block_size & (block_size - 1)) != 0) {
        return make_error(fmt::format("block size {}: not a power of two", block_size), EINVAL);
    }
    if (n == 0 || n > max_members) {
        return make_error(fmt::format("{} members: a space has 1 to {}", n, max_members), EINVAL);
    }
    Layout layout;
    layout.kind = kind;
    switch (kind) {
    case LayoutKind::mirror:
        if (n < 2) {
            return make_error("a mirror needs 2 members or more", EINVAL);
        }
        layout.copies = uint32_t(n);
        break;
    case LayoutKind::stripe:
    case LayoutKind::concat:
        layout.copies = 1;
        break;
    case LayoutKind::stripe_mirror:
        if (copies < 2 || n % copies != 0 || n / copies < 2) {
            return make_error(
                fmt::format("stripe_mirror of {} copies over {} members: the members must make two "
                            "columns or more of {} copies each",
                            copies, n, copies),
                EINVAL);
        }
        layout.copies = copies;
        break;
    }
    if (kind == LayoutKind::stripe || kind == LayoutKind::stripe_mirror) {
        layout.chunk = chunk == 0 ? default_chunk : chunk;
        if (layout.chunk % block_size != 0) {
            return make_error(
                fmt::format("chunk {}: not a multiple of the {}-byte block size", layout.chunk, block_size),
                EINVAL);
        }
    }
    uint64_t unit = layout.chunk ? layout.chunk : block_size;
    for (size_t i = 0; i < n; ++i) {
        if (member_bytes[i] % block_size != 0) {
            return make_error(fmt::format("member {}: {} bytes is not a whole number of {}-byte blocks", i,
                                          member_bytes[i], block_size),
                              EINVAL);
        }
        if (member_bytes[i] < unit) {
            return make_error(fmt::format("member {}: {} bytes of data area, less than one {} of {} bytes", i,
                                          member_bytes[i], layout.chunk ? "chunk" : "block", unit),
                              ENOSPC);
        }
    }
    layout.member_bytes = std::move(member_bytes);
    return layout;
}

namespace {
// A stripe's per-member usable length: the smallest member, in whole chunks.
uint64_t stripe_rows_bytes(const Layout& layout) {
    uint64_t smallest = *std::min_element(layout.member_bytes.begin(), layout.member_bytes.end());
    return smallest / layout.chunk * layout.chunk;
}
} // namespace

uint64_t capacity(const Layout& layout) {
    if (layout.member_bytes.empty()) {
        return 0;
    }
    switch (layout.kind) {
    case LayoutKind::mirror:
        return *std::min_element(layout.member_bytes.begin(), layout.member_bytes.end());
    case LayoutKind::stripe:
    case LayoutKind::stripe_mirror:
        return stripe_rows_bytes(layout) * layout.columns();
    case LayoutKind::concat: {
        uint64_t sum = 0;
        for (uint64_t b : layout.member_bytes) {
            sum += b;
        }
        return sum;
    }
    }
    return 0;
}

void map_range(const Layout& layout, uint64_t offset, uint64_t length, std::vector<Extent>& out) {
    assert(offset + length <= capacity(layout));
    switch (layout.kind) {
    case LayoutKind::mirror:
        if (length > 0) {
            out.push_back({offset, length, 0, offset});
        }
        return;
    case LayoutKind::stripe:
    case LayoutKind::stripe_mirror: {
        uint64_t chunk = layout.chunk;
        uint32_t columns = layout.columns();
        while (length > 0) {
            uint64_t index = offset / chunk;
            uint64_t within = offset % chunk;
            uint64_t n = std::min(length, chunk - within);
            uint64_t row = index / columns;
            out.push_back({offset, n, uint32_t(index % columns), row * chunk + within});
            offset += n;
            length -= n;
        }
        return;
    }
    case LayoutKind::concat: {
        uint64_t start = 0;
        for (uint32_t column = 0; column < layout.members() && length > 0; ++column) {
            uint64_t size = layout.member_bytes[column];
            if (offset < start + size) {
                uint64_t within = offset - start;
                uint64_t n = std::min(length, size - within);
                out.push_back({offset, n, column, within});
                offset += n;
                length -= n;
            }
            start += size;
        }
        return;
    }
    }
}

std::vector<uint64_t> member_bytes_used(const Layout& layout, uint64_t space_bytes) {
    std::vector<uint64_t> used(layout.members(), 0);
    switch (layout.kind) {
    case LayoutKind::mirror:
        std::fill(used.begin(), used.end(), space_bytes);
        break;
    case LayoutKind::stripe:
    case LayoutKind::stripe_mirror: {
        uint64_t stripe = layout.chunk * layout.columns();
        uint64_t rows = (space_bytes + stripe - 1) / stripe;
        std::fill(used.begin(), used.end(), std::min(rows * layout.chunk, stripe_rows_bytes(layout)));
        break;
    }
    case LayoutKind::concat: {
        uint64_t left = space_bytes;
        for (uint32_t i = 0; i < layout.members(); ++i) {
            used[i] = std::min(left, layout.member_bytes[i]);
            left -= used[i];
        }
        break;
    }
    }
    return used;
}

} // namespace ispace::volume
