// The thin metadata page format: what is encoded decodes to the same, and what a damaged or foreign page
// says is an error naming the problem, never a value.
#include "volume/thin/format.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <vector>

using namespace ispace;
using namespace ispace::volume::thin;

namespace {

constexpr uint64_t pool_id = 0x1234567890abcdefULL;

PageExpect expect_at(uint64_t page) {
    return PageExpect{page, pool_id, 10, 100, 50, 16};
}

void reseal(std::vector<uint8_t>& page) {
    uint32_t crc = page_crc(page);
    for (int i = 0; i < 4; ++i) {
        page[8 + i] = uint8_t(crc >> (8 * i));
    }
}

Leaf sample_leaf() {
    Leaf leaf;
    leaf.entries[0].physical = 7;
    mask_set_range(leaf.entries[0].written, 0, 16);
    leaf.entries[63].physical = 49;
    mask_set_range(leaf.entries[63].written, 3, 1);
    return leaf;
}

void put64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; ++i) {
        b[at + i] = uint8_t(v >> (8 * i));
    }
}

} // namespace

TEST(ThinFormat, LeafRoundTrips) {
    std::vector<uint8_t> page(page_size);
    Leaf leaf = sample_leaf();
    encode_leaf(leaf, 5, 9, pool_id, page);
    auto back = decode_leaf(page, expect_at(5));
    ASSERT_TRUE(back.ok()) << back.error().message;
    for (uint32_t i = 0; i < leaf_entries; ++i) {
        EXPECT_EQ(back->entries[i], leaf.entries[i]) << i;
    }
}

TEST(ThinFormat, InteriorDeviceTableAndSuperblockRoundTrip) {
    std::vector<uint8_t> page(page_size);
    Interior node;
    node.level = 2;
    node.children[0] = 3;
    node.children[255] = 99;
    encode_interior(node, 4, 10, pool_id, page);
    auto n = decode_interior(page, expect_at(4), 2);
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ(n->children, node.children);
    EXPECT_FALSE(decode_interior(page, expect_at(4), 1).ok()) << "a level 2 node where a level 1 one belongs";

    std::vector<DeviceRecord> devices(2);
    devices[0] = {1, 0, 0, 1, 300, 4, 1, "home"};
    devices[1] = {2, device_read_only, 1, 1, 300, 4, 7, "home@monday"};
    encode_device_table(devices, 6, 10, pool_id, page);
    auto t = decode_device_table(page, expect_at(6));
    ASSERT_TRUE(t.ok()) << t.error().message;
    ASSERT_EQ(t->size(), 2u);
    EXPECT_EQ((*t)[1].name, "home@monday");
    EXPECT_EQ((*t)[1].flags, uint32_t(device_read_only));
    EXPECT_EQ((*t)[0].root_page, 4u);

    Superblock sb;
    sb.sequence = 10;
    sb.pool_id = pool_id;
    sb.cluster_size = 64 << 10;
    sb.pool_clusters = 50;
    sb.metadata_pages = 100;
    sb.device_table_page = 6;
    sb.next_device_id = 3;
    encode_superblock(sb, 0, page);
    auto s = decode_superblock(page, 0);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->sequence, 10u);
    EXPECT_EQ(s->device_table_page, 6u);
    EXPECT_EQ(s->cluster_blocks(), 16u);
    EXPECT_FALSE(decode_superblock(page, 1).ok()) << "slot 0's superblock read from slot 1";
}

TEST(ThinFormat, EveryFlippedByteIsCaught) {
    std::vector<uint8_t> good(page_size);
    encode_leaf(sample_leaf(), 5, 9, pool_id, good);
    for (size_t at = 0; at < page_size; ++at) {
        std::vector<uint8_t> bad = good;
        bad[at] ^= 0x01;
        auto r = decode_leaf(bad, expect_at(5));
        ASSERT_FALSE(r.ok()) << "byte " << at;
        EXPECT_EQ(r.error().code, EILSEQ);
    }
}

TEST(ThinFormat, FieldsAreCheckedBehindTheChecksum) {
    std::vector<uint8_t> good(page_size);
    encode_leaf(sample_leaf(), 5, 9, pool_id, good);

    auto with = [&](auto change) {
        std::vector<uint8_t> b = good;
        change(b);
        reseal(b);
        return decode_leaf(b, expect_at(5));
    };
    // A cluster beyond the pool (entry 0's physical + 1 at offset 64).
    auto r = with([](auto& b) { put64(b, 64, 50 + 1); });
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("the pool has 50"), std::string::npos) << r.error().message;
    // A mapped entry with no written block.
    EXPECT_FALSE(with([](auto& b) { std::memset(b.data() + 72, 0, 32); }).ok());
    // Written bits beyond the cluster's 16 blocks.
    EXPECT_FALSE(with([](auto& b) { b[72 + 3] = 0x01; }).ok());
    // Written bits in an unmapped entry.
    EXPECT_FALSE(with([](auto& b) { b[64 + 40 + 8] = 0x01; }).ok());
    // The header's count disagrees.
    EXPECT_FALSE(with([](auto& b) { b[12] = 3; }).ok());
    // Reserved bytes.
    EXPECT_FALSE(with([](auto& b) { b[50] = 1; }).ok());

    // The page knows where it belongs, which pool and which transaction wrote it.
    auto misdirected = decode_leaf(good, expect_at(6));
    ASSERT_FALSE(misdirected.ok());
    EXPECT_NE(misdirected.error().message.find("misdirected"), std::string::npos);
    PageExpect other_pool = expect_at(5);
    other_pool.pool_id = 42;
    EXPECT_FALSE(decode_leaf(good, other_pool).ok());
    PageExpect older = expect_at(5);
    older.max_sequence = 8;
    EXPECT_FALSE(decode_leaf(good, older).ok())
        << "a page newer than the superblock is not part of its state";
    EXPECT_FALSE(decode_interior(good, expect_at(5), 1).ok()) << "a leaf read as an interior node";
    EXPECT_FALSE(decode_leaf(std::span<const uint8_t>(good.data(), 100), expect_at(5)).ok());
}

TEST(ThinFormat, PointersStayInsideTheArea) {
    std::vector<uint8_t> page(page_size);
    Interior node;
    node.level = 1;
    node.children[3] = 1; // a superblock slot
    encode_interior(node, 4, 10, pool_id, page);
    EXPECT_FALSE(decode_interior(page, expect_at(4), 1).ok());
    node.children[3] = 100; // one past the area
    encode_interior(node, 4, 10, pool_id, page);
    EXPECT_FALSE(decode_interior(page, expect_at(4), 1).ok());

    std::vector<DeviceRecord> devices(1);
    devices[0] = {1, 0, 0, 0, 65, 4, 1, "x"}; // 65 clusters need level 1
    encode_device_table(devices, 6, 10, pool_id, page);
    EXPECT_FALSE(decode_device_table(page, expect_at(6)).ok());
    devices[0] = {1, 0x80, 0, 0, 60, 4, 1, "x"}; // an unknown flag
    encode_device_table(devices, 6, 10, pool_id, page);
    EXPECT_FALSE(decode_device_table(page, expect_at(6)).ok());
    devices.push_back(devices[0]);
    devices[0].flags = devices[1].flags = 0;
    encode_device_table(devices, 6, 10, pool_id, page);
    EXPECT_FALSE(decode_device_table(page, expect_at(6)).ok()) << "one id twice";

    Superblock sb;
    sb.sequence = 1;
    sb.pool_id = pool_id;
    sb.pool_clusters = 10;
    sb.metadata_pages = 16;
    sb.device_table_page = 2;
    for (uint32_t size : {0u, 4096u, 3u << 16, 2u << 20}) {
        sb.cluster_size = size;
        encode_superblock(sb, 1, page);
        EXPECT_FALSE(decode_superblock(page, 1).ok()) << size;
    }
}
