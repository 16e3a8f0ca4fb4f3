// Layouts: every block of a space maps to exactly one place on each copy, ranges map as their blocks do,
// capacities add up — checked exhaustively over small layouts of every kind, block by block.
#include "volume/layout.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <tuple>

namespace ispace::volume {
namespace {

constexpr uint32_t bs = 512;

Layout layout_of(LayoutKind kind, std::vector<uint64_t> sizes, uint64_t chunk = 0, uint32_t copies = 2) {
    auto layout = make_layout(kind, std::move(sizes), bs, chunk, copies);
    EXPECT_TRUE(layout) << layout.error().message;
    return *layout;
}

// The (member, member offset) of every copy of the block at `offset`, from a one-block map_range.
std::vector<std::pair<uint32_t, uint64_t>> places(const Layout& layout, uint64_t offset) {
    std::vector<Extent> extents;
    map_range(layout, offset, bs, extents);
    EXPECT_EQ(extents.size(), 1u);
    std::vector<std::pair<uint32_t, uint64_t>> out;
    for (uint32_t copy = 0; copy < layout.copies; ++copy) {
        out.emplace_back(member_of(layout, extents[0].column, copy), extents[0].member_offset);
    }
    return out;
}

// The properties every layout has, checked block by block over the whole capacity, and for every range
// of a sample of starts and lengths.
void check_layout(const Layout& layout) {
    uint64_t cap = capacity(layout);
    ASSERT_GT(cap, 0u);
    ASSERT_EQ(cap % bs, 0u);
    // Block by block: each block of the space has one place per copy, inside that member's data area,
    // and no two blocks share a place.
    std::set<std::pair<uint32_t, uint64_t>> seen;
    std::vector<uint64_t> highest(layout.members(), 0);
    for (uint64_t off = 0; off < cap; off += bs) {
        auto p = places(layout, off);
        ASSERT_EQ(p.size(), layout.copies);
        for (auto [member, moff] : p) {
            ASSERT_LT(member, layout.members());
            ASSERT_LE(moff + bs, layout.member_bytes[member])
                << "block " << off / bs << " beyond member " << member;
            ASSERT_TRUE(seen.insert({member, moff}).second)
                << "two blocks at member " << member << " offset " << moff;
            highest[member] = std::max(highest[member], moff + bs);
        }
    }
    // member_bytes_used covers what the whole space uses.
    auto used = member_bytes_used(layout, cap);
    for (uint32_t m = 0; m < layout.members(); ++m) {
        EXPECT_GE(used[m], highest[m]) << "member " << m;
        EXPECT_LE(used[m], layout.member_bytes[m]);
    }
    // Ranges map as their blocks do: contiguous, in order, each extent one column.
    std::mt19937_64 rng(cap);
    for (int i = 0; i < 300; ++i) {
        uint64_t start = (rng() % (cap / bs)) * bs;
        uint64_t length = (1 + rng() % std::min<uint64_t>(64, (cap - start) / bs)) * bs;
        std::vector<Extent> extents;
        map_range(layout, start, length, extents);
        uint64_t at = start;
        for (const Extent& e : extents) {
            ASSERT_EQ(e.space_offset, at);
            ASSERT_GT(e.length, 0u);
            for (uint64_t b = 0; b < e.length; b += bs) {
                auto p = places(layout, e.space_offset + b);
                ASSERT_EQ(p[0].first, member_of(layout, e.column, 0));
                ASSERT_EQ(p[0].second, e.member_offset + b);
            }
            at += e.length;
        }
        ASSERT_EQ(at, start + length);
    }
}

TEST(Layout, MirrorIsOneColumnOfEveryMemberAsLargeAsTheSmallest) {
    for (uint32_t n = 2; n <= 4; ++n) {
        std::vector<uint64_t> sizes;
        for (uint32_t i = 0; i < n; ++i) {
            sizes.push_back((64 + 8 * i) * bs);
        }
        Layout l = layout_of(LayoutKind::mirror, sizes);
        EXPECT_EQ(l.copies, n);
        EXPECT_EQ(l.columns(), 1u);
        EXPECT_EQ(capacity(l), 64u * bs);
        check_layout(l);
    }
    EXPECT_FALSE(make_layout(LayoutKind::mirror, {1 << 20}, bs));
}

TEST(Layout, StripeRoundRobinsChunksOverEqualRows) {
    for (uint32_t n = 1; n <= 4; ++n) {
        for (uint64_t chunk : {uint64_t(bs), uint64_t(4 * bs), uint64_t(8 * bs)}) {
            std::vector<uint64_t> sizes;
            for (uint32_t i = 0; i < n; ++i) {
                sizes.push_back((40 + 3 * i) * bs); // unequal, not whole chunks
            }
            Layout l = layout_of(LayoutKind::stripe, sizes, chunk);
            uint64_t rows = 40 * bs / chunk;
            EXPECT_EQ(capacity(l), rows * chunk * n) << n << " members, chunk " << chunk;
            check_layout(l);
        }
    }
    // Chunk k on column k mod n: the second chunk is on member 1 at offset 0.
    Layout l = layout_of(LayoutKind::stripe, {1 << 20, 1 << 20}, 128 << 10);
    EXPECT_EQ(places(l, 128 << 10)[0], (std::pair<uint32_t, uint64_t>{1, 0}));
    EXPECT_EQ(places(l, 256 << 10)[0], (std::pair<uint32_t, uint64_t>{0, 128 << 10}));
    EXPECT_EQ(l.chunk, default_chunk);
}

TEST(Layout, ConcatIsTheMembersOneAfterTheOther) {
    Layout l = layout_of(LayoutKind::concat, {10 * bs, 3 * bs, 7 * bs});
    EXPECT_EQ(capacity(l), 20u * bs);
    check_layout(l);
    EXPECT_EQ(places(l, 10 * bs)[0], (std::pair<uint32_t, uint64_t>{1, 0}));
    EXPECT_EQ(places(l, 13 * bs)[0], (std::pair<uint32_t, uint64_t>{2, 0}));
    std::vector<Extent> extents;
    map_range(l, 9 * bs, 6 * bs, extents); // crosses all three members
    ASSERT_EQ(extents.size(), 3u);
    EXPECT_EQ(extents[0].length, 1u * bs);
    EXPECT_EQ(extents[1].length, 3u * bs);
    EXPECT_EQ(extents[2].length, 2u * bs);
    auto used = member_bytes_used(l, 12 * bs);
    EXPECT_EQ(used, (std::vector<uint64_t>{10 * bs, 2 * bs, 0}));
}

TEST(Layout, StripeOverMirrorsKeepsCopiesTogether) {
    for (uint32_t copies : {2u, 3u}) {
        for (uint32_t columns : {2u, 3u}) {
            std::vector<uint64_t> sizes(copies * columns, 32 * bs);
            sizes[1] = 24 * bs;
            Layout l = layout_of(LayoutKind::stripe_mirror, sizes, 4 * bs, copies);
            EXPECT_EQ(l.columns(), columns);
            EXPECT_EQ(capacity(l), 24u * bs * columns);
            check_layout(l);
        }
    }
    EXPECT_FALSE(make_layout(LayoutKind::stripe_mirror, {1 << 20, 1 << 20, 1 << 20}, bs, 0, 2)); // 3 % 2
    EXPECT_FALSE(make_layout(LayoutKind::stripe_mirror, {1 << 20, 1 << 20}, bs, 0, 2));          // one column
}

TEST(Layout, RefusesWhatCannotWork) {
    EXPECT_FALSE(make_layout(LayoutKind::stripe, {1 << 20, 1 << 20}, bs, 1000)); // chunk not whole blocks
    EXPECT_FALSE(make_layout(LayoutKind::stripe, {1 << 20, 1000}, bs));          // member not whole blocks
    EXPECT_FALSE(make_layout(LayoutKind::stripe, {1 << 20, 64 << 10}, bs));      // smaller than one chunk
    EXPECT_FALSE(make_layout(LayoutKind::concat, {}, bs));                       // nothing
    EXPECT_FALSE(make_layout(LayoutKind::concat, std::vector<uint64_t>(17, 1 << 20), bs)); // too many
    EXPECT_FALSE(make_layout(LayoutKind::mirror, {1 << 20, 1 << 20}, 1000));               // block size
    EXPECT_TRUE(parse_layout_kind("raid10"));
    EXPECT_EQ(*parse_layout_kind("stripe"), LayoutKind::stripe);
    auto bad = parse_layout_kind("raid5");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("mirror, stripe, concat"), std::string::npos);
}

TEST(Layout, LargeSpacesMapWithoutOverflow) {
    // 16 members of 4 TiB striped in 128 KiB chunks: the last block maps to the last row of the last member.
    Layout l = layout_of(LayoutKind::stripe, std::vector<uint64_t>(16, uint64_t(4) << 40), 128 << 10);
    uint64_t cap = capacity(l);
    EXPECT_EQ(cap, uint64_t(64) << 40);
    auto p = places(l, cap - bs);
    EXPECT_EQ(p[0].first, 15u);
    EXPECT_EQ(p[0].second, (uint64_t(4) << 40) - bs);
}

} // namespace
} // namespace ispace::volume
