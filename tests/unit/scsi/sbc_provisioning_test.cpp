// Logical block provisioning: UNMAP, WRITE SAME(10/16) with UNMAP/ANCHOR/NDOB, GET LBA STATUS from
// the backstore's allocation, and the VPD pages and READ CAPACITY(16) bits that advertise them.
#include "harness.hpp"

#include "backstore/memory/memory_device.hpp"
#include "scsi/sbc.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

LuConfig thin() {
    LuConfig c;
    c.features.thin = true;
    c.features.unmap = true;
    c.features.write_zeroes = true;
    c.features.allocation_status = true;
    return c;
}

std::vector<uint8_t> unmap_cdb(uint16_t length, uint8_t flags = 0) {
    std::vector<uint8_t> c(10, 0);
    c[0] = op::unmap;
    c[1] = flags;
    store_be16(&c[7], length);
    return c;
}

std::vector<uint8_t> unmap_list(std::initializer_list<std::pair<uint64_t, uint32_t>> ranges) {
    std::vector<uint8_t> p(8 + 16 * ranges.size(), 0);
    store_be16(&p[0], uint16_t(p.size() - 2));
    store_be16(&p[2], uint16_t(16 * ranges.size()));
    size_t at = 8;
    for (auto [lba, blocks] : ranges) {
        store_be64(&p[at], lba);
        store_be32(&p[at + 8], blocks);
        at += 16;
    }
    return p;
}

std::vector<uint8_t> ws10(uint32_t lba, uint16_t blocks, uint8_t flags = 0) {
    return rw10(op::write_same_10, lba, blocks, flags);
}
std::vector<uint8_t> ws16(uint64_t lba, uint32_t blocks, uint8_t flags = 0) {
    return rw16(op::write_same_16, lba, blocks, flags);
}
constexpr uint8_t ws_unmap = 0x08;
constexpr uint8_t ws_anchor = 0x10;
constexpr uint8_t ws_ndob = 0x01;

std::vector<uint8_t> get_lba_status(uint64_t lba, uint32_t allocation) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::service_action_in_16;
    c[1] = sa::get_lba_status;
    store_be64(&c[2], lba);
    store_be32(&c[10], allocation);
    return c;
}

struct Descriptor {
    uint64_t lba;
    uint32_t blocks;
    uint8_t status;
};

std::vector<Descriptor> descriptors(std::span<const uint8_t> d) {
    std::vector<Descriptor> out;
    if (d.size() < 8) {
        return out;
    }
    size_t end = std::min<size_t>(d.size(), 4 + load_be32(&d[0]));
    for (size_t at = 8; at + 16 <= end; at += 16) {
        out.push_back({load_be64(&d[at]), load_be32(&d[at + 8]), uint8_t(d[at + 12] & 0x0f)});
    }
    return out;
}

} // namespace

// --- UNMAP --------------------------------------------------------------------------------------

TEST(Unmap, DeallocatesEachDescriptor) {
    Harness h(thin());
    std::memset(h.device().bytes(0), 'a', 64 * 512);
    auto list = unmap_list({{2, 3}, {10, 0}, {20, 4}});
    auto t = h.make_write(unmap_cdb(uint16_t(list.size())), list);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 2u) << "an empty descriptor does nothing";
    EXPECT_EQ(h.device().log[0].op, IoOp::unmap);
    EXPECT_EQ(h.device().log[0].offset, 2u * 512);
    EXPECT_EQ(h.device().log[0].length, 3u * 512);
    EXPECT_EQ(h.device().log[1].offset, 20u * 512);
    EXPECT_EQ(*h.device().bytes(2 * 512), 0);
    EXPECT_EQ(*h.device().bytes(5 * 512), 'a');
}

TEST(Unmap, ChecksEveryDescriptorFirst) {
    Harness h(thin());
    // The second descriptor runs past the end: nothing at all is unmapped.
    auto list = unmap_list({{0, 8}, {2040, 9}});
    auto t = h.make_write(unmap_cdb(uint16_t(list.size())), list);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_TRUE(h.device().log.empty());
    // Zero blocks at the end of the medium is fine (libiscsi Unmap.ZeroBlocks).
    list = unmap_list({{2048, 0}});
    t = h.make_write(unmap_cdb(uint16_t(list.size())), list);
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
}

TEST(Unmap, ParameterListAndLimits) {
    Harness h(thin());
    EXPECT_EQ(h.exec(unmap_cdb(0))->status, Status::good) << "no parameter list, nothing to do";
    auto t = h.make_write(unmap_cdb(6), std::vector<uint8_t>(6, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::parameter_list_length_error));
    // No descriptors at all (libiscsi "UNMAP without any descriptors").
    auto list = unmap_list({});
    t = h.make_write(unmap_cdb(uint16_t(list.size())), list);
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
    // ANCHOR: anchored blocks are not supported (ANC_SUP=0).
    list = unmap_list({{0, 1}});
    t = h.make_write(unmap_cdb(uint16_t(list.size()), 0x01), list);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 0));
    // More descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    uint32_t max = sbc::limits(h.lu()).max_unmap_descriptors;
    std::vector<uint8_t> many(8 + 16 * (max + 1), 0);
    store_be16(&many[2], uint16_t(16 * (max + 1)));
    t = h.make_write(unmap_cdb(uint16_t(many.size())), many);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Unmap, NotOnAFullyProvisionedUnit) {
    Harness h;
    auto list = unmap_list({{0, 1}});
    auto t = h.make_write(unmap_cdb(uint16_t(list.size())), list);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_command_operation_code));
}

// --- WRITE SAME ---------------------------------------------------------------------------------

TEST(WriteSame, WritesThePatternInChunks) {
    LuConfig config;
    config.options.max_transfer_bytes = 8 * 512; // small chunks, to see them
    Harness h(config);
    auto block = pattern(512, 9);
    auto t = h.make_write(ws10(100, 8), block);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 512u) << "the data-out is one block";
    for (int b = 0; b < 8; ++b) {
        EXPECT_TRUE(std::equal(block.begin(), block.end(), h.device().bytes((100 + b) * 512))) << b;
    }
    EXPECT_EQ(*h.device().bytes(108 * 512), 0);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].length, 8u * 512);
}

TEST(WriteSame, ZeroesUseWriteZeroesAndUnmapDeallocates) {
    Harness h(thin());
    std::memset(h.device().bytes(0), 'x', 32 * 512);
    auto t = h.make_write(ws16(0, 4), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(h.device().log.back().op, IoOp::write_zeroes);
    t = h.make_write(ws16(8, 4, ws_unmap), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(h.device().log.back().op, IoOp::unmap);
    EXPECT_EQ(h.device().log.back().offset, 8u * 512);
    // UNMAP=1 deallocates whatever the block holds (SBC-3, libiscsi UnmapUntilEnd).
    t = h.make_write(ws10(16, 2, ws_unmap), std::vector<uint8_t>(512, 0xff));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(h.device().log.back().op, IoOp::unmap);
    EXPECT_EQ(*h.device().bytes(16 * 512), 0);
    // NDOB: no data-out, zeroes.
    t = h.make_task(ws16(24, 2, ws_ndob), 0, false);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->fetches, 0);
    EXPECT_EQ(h.device().log.back().op, IoOp::write_zeroes);
}

TEST(WriteSame, ZeroBlocksRunsToTheEndWithinTheMaximum) {
    LuConfig config = thin();
    config.options.max_transfer_bytes = 64 * 512; // MAXIMUM WRITE SAME LENGTH follows it
    Harness h(config);
    uint64_t max = sbc::limits(h.lu()).max_write_same;
    ASSERT_LT(max, 2048u);
    // From max blocks before the end: allowed; one more is too many.
    auto t = h.make_write(ws16(2048 - max, 0), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(h.device().log.back().length, max * 512);
    t = h.make_write(ws16(2048 - max - 1, 0), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 10));
    // Past the end is LBA OUT OF RANGE, even with no blocks.
    t = h.make_write(ws10(2049, 0), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.make_write(ws10(2040, 9), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
}

TEST(WriteSame, RefusedFields) {
    Harness h(thin());
    auto zero = std::vector<uint8_t>(512, 0);
    auto t = h.make_write(ws10(0, 1, ws_anchor), zero);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 4)) << "ANCHOR without UNMAP";
    t = h.make_write(ws10(0, 1, ws_anchor | ws_unmap), zero);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 4)) << "ANCHOR with UNMAP: ANC_SUP=0";
    t = h.make_write(ws10(0, 1, 0x20), zero);
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 5)) << "WRPROTECT";
    // The data-out must be exactly one block (libiscsi InvalidDataOutSize).
    t = h.make_write(ws10(0, 1, ws_unmap), std::vector<uint8_t>(256, 0));
    h.exec(*t);
    EXPECT_EQ(t->status, Status::check_condition);
    t = h.make_write(ws10(0, 1, ws_unmap), std::vector<uint8_t>(1024, 0));
    h.exec(*t);
    EXPECT_EQ(t->status, Status::check_condition);
    EXPECT_TRUE(h.device().log.empty());
}

TEST(WriteSame, UnmapBitNeedsAThinUnit) {
    Harness h;
    auto t = h.make_write(ws16(0, 1, ws_unmap), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 3));
}

// --- GET LBA STATUS -----------------------------------------------------------------------------

TEST(GetLbaStatus, ReportsTheBackstoresExtents) {
    Harness h(thin());
    h.device().extents = {{0, 4096, true}, {4096, 8192, false}, {12288, 2048 * 512 - 12288, true}};
    auto t = h.exec(get_lba_status(2, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = descriptors(t->received());
    ASSERT_EQ(d.size(), 3u);
    EXPECT_EQ(d[0].lba, 2u) << "the first descriptor starts at the requested LBA";
    EXPECT_EQ(d[0].blocks, 6u);
    EXPECT_EQ(d[0].status, 0);
    EXPECT_EQ(d[1].lba, 8u);
    EXPECT_EQ(d[1].blocks, 16u);
    EXPECT_EQ(d[1].status, 1) << "deallocated";
    EXPECT_EQ(d[2].lba, 24u);
    EXPECT_EQ(d[2].blocks, 2048u - 24);
}

TEST(GetLbaStatus, AllocationLengthBoundsTheDescriptors) {
    Harness h(thin());
    h.device().extents = {
        {0, 512, true}, {512, 512, false}, {1024, 512, true}, {1536, 2048 * 512 - 1536, false}};
    auto t = h.exec(get_lba_status(0, 24), 24);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 24u);
    EXPECT_EQ(load_be32(&d[0]), 20u) << "one descriptor fits: the parameter data says so";
    EXPECT_EQ(load_be64(&d[8]), 0u);
    EXPECT_EQ(load_be32(&d[16]), 1u);
}

TEST(GetLbaStatus, BeyondTheEnd) {
    Harness h(thin());
    EXPECT_TRUE(
        has_sense(*h.exec(get_lba_status(2048, 24), 24), SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_TRUE(
        has_sense(*h.exec(get_lba_status(~0ull, 24), 24), SenseKey::illegal_request, asc::lba_out_of_range));
    auto t = h.exec(get_lba_status(2047, 24), 24);
    ASSERT_EQ(t->status, Status::good);
    auto d = descriptors(t->received());
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].blocks, 1u);
}

// With the memory backstore's real allocation: unmapped chunks read back as deallocated.
TEST(GetLbaStatus, FollowsUnmapOnARealBackstore) {
    Harness h;
    ASSERT_TRUE(h.target.add_lu(3, std::make_unique<backstore::MemoryDevice>(8u << 20, 512)).ok());
    h.clear_unit_attentions(3);
    auto w =
        h.make_write(rw16(op::write_16, 0, 4096), std::vector<uint8_t>(4096 * 512, 'a'), std::nullopt, 3);
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    auto list = unmap_list({{0, 2048}}); // the first MiB: one whole chunk of the memory device
    auto u = h.make_write(unmap_cdb(uint16_t(list.size())), list, std::nullopt, 3);
    h.exec(*u);
    ASSERT_EQ(u->status, Status::good);
    auto t = h.exec(get_lba_status(0, 256), 256, 3);
    ASSERT_EQ(t->status, Status::good);
    auto d = descriptors(t->received());
    ASSERT_GE(d.size(), 2u);
    EXPECT_EQ(d[0].lba, 0u);
    EXPECT_EQ(d[0].blocks, 2048u);
    EXPECT_EQ(d[0].status, 1);
    EXPECT_EQ(d[1].lba, 2048u);
    EXPECT_EQ(d[1].status, 0);
}

// --- what advertises it -------------------------------------------------------------------------

TEST(Provisioning, VpdAndReadCapacityAgree) {
    Harness h(thin());
    auto b2 = h.exec(cdb_bytes({0x12, 1, 0xb2, 0, 64, 0}), 64)->received();
    ASSERT_GE(b2.size(), 8u);
    EXPECT_EQ(b2[5] & 0xe0, 0xe0) << "LBPU LBPWS LBPWS10";
    EXPECT_EQ(b2[5] & 0x1c, 0x04) << "LBPRZ 001b";
    EXPECT_EQ(b2[5] & 0x02, 0x00) << "ANC_SUP";
    EXPECT_EQ(b2[6] & 0x07, 0x02) << "thin provisioned";

    std::vector<uint8_t> rc(16, 0);
    rc[0] = op::service_action_in_16;
    rc[1] = sa::read_capacity_16;
    rc[13] = 32;
    auto r = h.exec(rc, 32)->received();
    ASSERT_EQ(r.size(), 32u);
    EXPECT_EQ(r[14] & 0xc0, 0xc0) << "LBPME LBPRZ";

    auto b0 = h.exec(cdb_bytes({0x12, 1, 0xb0, 0, 64, 0}), 64)->received();
    ASSERT_EQ(b0.size(), 64u);
    EXPECT_EQ(b0[3], 0x3c);
    sbc::Limits l = sbc::limits(h.lu());
    EXPECT_EQ(b0[4] & 0x01, 0) << "WSNZ";
    EXPECT_EQ(load_be32(&b0[20]), 0xffffffffu) << "MAXIMUM UNMAP LBA COUNT";
    EXPECT_EQ(load_be32(&b0[24]), l.max_unmap_descriptors);
    EXPECT_EQ(load_be32(&b0[28]), 8u) << "OPTIMAL UNMAP GRANULARITY: 4 KiB of 512-byte blocks";
    EXPECT_EQ(b0[32] & 0x80, 0x80) << "UGAVALID";
    EXPECT_EQ(load_be64(&b0[36]), l.max_write_same);
}

TEST(Provisioning, FullyProvisionedSaysNothing) {
    Harness h;
    auto b2 = h.exec(cdb_bytes({0x12, 1, 0xb2, 0, 64, 0}), 64)->received();
    EXPECT_EQ(b2[5], 0);
    EXPECT_EQ(b2[6], 0);
    auto b0 = h.exec(cdb_bytes({0x12, 1, 0xb0, 0, 64, 0}), 64)->received();
    EXPECT_EQ(load_be32(&b0[20]), 0u);
    EXPECT_EQ(load_be32(&b0[24]), 0u);
}
