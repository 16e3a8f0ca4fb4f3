// Block checksums (docs/integrity.md) on a mirror of memory members behind fault-injecting wrappers: every
// read verified; a bad copy repaired from the good one and counted; no good copy -> a medium error (EIO),
// never wrong data; a misdirected write caught; sub-4 KiB writes; the error threshold; a torn write after a
// crash resolved through the bitmap; a member that comes back gets the table.
#include "backstore/memory/memory_device.hpp"
#include "checksummed_mirror.hpp"
#include "common/bytes.hpp"
#include "fault_device.hpp"
#include "volume/checksum_io.hpp"
#include "volume/checksum_page.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <thread>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;
using test::FaultDevice;
using test::random_bytes;

class ChecksumTest : public test::ChecksummedMirror {
protected:
    // Every member, as an assembly finds them; `before_open` runs once the labels are read and the plan made.
    Result<std::shared_ptr<Volume>> assemble(const std::function<void()>& before_open = {}) {
        return open_from({}, before_open);
    }
    // One byte of a member's data area changed behind the volume's back.
    void flip(unsigned slot, uint64_t offset) {
        uint64_t sector = offset / 512 * 512;
        auto b = member_data(slot, sector, 512);
        b[offset - sector] ^= 0x5a;
        put_member_data(slot, sector, b);
    }
    // Where on member `slot` the table page holding layout block `block`'s entry is (from its label):
    // its offset on the member, its number, the entry's index in it and the page format; nothing when the
    // member has no label with a checksums area.
    struct SumAt {
        uint64_t offset = 0;
        uint64_t page = 0;
        uint64_t entry = 0;
        ChecksumPageFormat format = ChecksumPageFormat::checked;
    };
    std::optional<SumAt> sum_page_at(unsigned slot, uint64_t block) {
        LabelReading r = read_member_labels(group.at(0), *disks[slot]);
        const MetadataArea* area = r.label ? r.label->area(AreaType::checksums) : nullptr;
        if (area == nullptr) {
            return std::nullopt;
        }
        ChecksumPageFormat format = r.label->checksum_page_format();
        uint64_t per_page = checksum_entries_per_page(format);
        return SumAt{area->offset + block / per_page * checksum_page_bytes, block / per_page,
                     block % per_page, format};
    }
    std::vector<uint8_t> sum_page(unsigned slot, const SumAt& at) {
        std::vector<uint8_t> page(checksum_page_bytes);
        EXPECT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::read, at.offset, page), 0);
        return page;
    }
    void put_sum_page(unsigned slot, const SumAt& at, std::vector<uint8_t> page) {
        ASSERT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::write, at.offset, page), 0);
    }
    // The table entry of layout block `block` as member `slot` holds it.
    uint32_t stored_sum(unsigned slot, uint64_t block) {
        auto at = sum_page_at(slot, block);
        EXPECT_TRUE(at) << "member " << slot << " has a label with a checksums area";
        return at ? stored_sum(slot, *at) : 0;
    }
    // The same where the entry's place is known: no label read, for a test that polls while the space
    // may be writing its labels (reading a member's disk under a write is a race of the test's own).
    uint32_t stored_sum(unsigned slot, const SumAt& at) {
        return checksum_page_entry(sum_page(slot, at).data(), at.entry);
    }
    // Whether member `slot`'s copy of the table page holding block `block`'s entry passes its own check.
    bool sum_page_sound(unsigned slot, uint64_t block) {
        auto at = sum_page_at(slot, block);
        EXPECT_TRUE(at);
        return at && checksum_page_sound(at->format, at->page, sum_page(slot, *at).data());
    }
    // One bit of the table entry of layout block `block` flipped in member `slot`'s copy of the table;
    // `reseal`: the page's own check made to match (a page some write reached that others missed).
    void flip_sum(unsigned slot, uint64_t block, bool reseal = false) {
        auto at = sum_page_at(slot, block);
        ASSERT_TRUE(at) << "member " << slot << " has a label with a checksums area";
        auto page = sum_page(slot, *at);
        page[at->entry * 4 + 1] ^= 0x10;
        if (reseal) {
            seal_checksum_page(at->format, at->page, page.data());
        }
        put_sum_page(slot, *at, page);
    }
    void scrub_rewrites_a_rotted_copy_of_the_table(ChecksumPageFormat format);
    bool labels_say(ScrubState state) {
        LabelReading r = read_member_labels(group.at(0), *disks[0]);
        return r.label && r.label->scrub.state == state;
    }
};

// Reads spread over the copies by MiB of the space: (offset >> 20) % 2 picks the slot of a 2-way mirror.
// The tests put their data in MiB 1, which slot 1 serves, and damage slot 1.
constexpr uint64_t mib1 = 1 << 20;

// The checksums computed as a read's bytes land equal those of a pass over the finished read, whatever
// the runs they land in; a byte that lands twice (a command sent again), a gap, or a block not whole
// makes finish() refuse, so the caller computes them itself rather than trusting a wrong value.
TEST(LandingSums, EqualAPassOverTheDataAndRefuseAnythingButEveryByteOnceInOrder) {
    constexpr uint64_t first = 77, count = 5;
    auto data = random_bytes(count * checksum_block, 41);
    iovec iov{data.data(), data.size()};
    std::vector<uint32_t> expected(count), got(count);
    block_checksums(&iov, 1, first, count, expected.data());
    auto land = [&](LandingSums& sums, uint64_t from, uint64_t to) {
        sums.landed(from, data.data() + from, to - from);
    };
    {
        LandingSums sums(first, count); // runs that straddle blocks, as Data-In segments do
        uint64_t cuts[] = {0, 1000, 4096, 4097, 9000, 12288, 20480};
        for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
            land(sums, cuts[i], cuts[i + 1]);
        }
        ASSERT_TRUE(sums.finish(got.data()));
        EXPECT_EQ(got, expected);
    }
    {
        LandingSums sums(first, count); // blocks in any order, each in order within itself
        land(sums, 8192, 20480);
        land(sums, 0, 8192);
        ASSERT_TRUE(sums.finish(got.data()));
        EXPECT_EQ(got, expected);
    }
    {
        LandingSums sums(first, count); // a retry lands the first bytes again
        land(sums, 0, 20480);
        land(sums, 0, 4096);
        EXPECT_FALSE(sums.finish(got.data()));
    }
    {
        LandingSums sums(first, count); // a gap
        land(sums, 0, 100);
        land(sums, 200, 20480);
        EXPECT_FALSE(sums.finish(got.data()));
    }
    {
        LandingSums sums(first, count); // not everything arrived
        land(sums, 0, 20000);
        EXPECT_FALSE(sums.finish(got.data()));
    }
    {
        LandingSums sums(first, count); // past the read
        land(sums, 0, 20480);
        sums.landed(20480, data.data(), 1);
        EXPECT_FALSE(sums.finish(got.data()));
    }
}

TEST_F(ChecksumTest, WritesAreChecksummedAndReadsVerifiedAndAFreshSpaceReads) {
    auto v = create();
    VolumeDevice device(v);
    EXPECT_TRUE(v->truth_at_open().checksums());
    EXPECT_NE(v->truth_at_open().incompat & feature::incompat::checksums, 0u);
    // Never written: whatever the members held reads back without a checksum error.
    put_member_data(0, 3 * mib1, random_bytes(8192, 1));
    put_member_data(1, 3 * mib1, random_bytes(8192, 2));
    std::vector<uint8_t> fresh(8192);
    EXPECT_EQ(io.read(device, 3 * mib1, fresh), 0);
    // Written: each block's checksum (seeded with its address) is on both members.
    auto data = random_bytes(64 << 10, 3);
    ASSERT_EQ(io.write(device, mib1, data), 0);
    for (uint64_t i = 0; i < 16; ++i) {
        uint64_t block = mib1 / 4096 + i;
        uint32_t sum = block_checksum(data.data() + i * 4096, block);
        EXPECT_EQ(stored_sum(0, block), sum) << "block " << block;
        EXPECT_EQ(stored_sum(1, block), sum) << "block " << block;
    }
    EXPECT_NE(block_checksum(data.data(), 7), block_checksum(data.data(), 8)) << "the address is the seed";
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u);
}

TEST_F(ChecksumTest, AFlippedByteOnOneCopyIsRepairedFromTheOther) {
    auto v = create();
    VolumeDevice device(v);
    auto data = random_bytes(256 << 10, 4);
    ASSERT_EQ(io.write(device, mib1, data), 0);
    flip(1, mib1 + 40960 + 1024); // block 10 of the write, on the copy that serves MiB 1
    ASSERT_NE(member_data(1, mib1, data.size()), data);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data) << "the good copy's data";
    EXPECT_EQ(member_data(1, mib1, data.size()), data) << "the bad copy rewritten";
    EXPECT_EQ(errors(v, 1), 1u);
    EXPECT_EQ(errors(v, 0), 0u);
    EXPECT_EQ(v->status().members[1].state, MemberState::active);
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(errors(v, 1), 1u) << "repaired: no second error";
}

TEST_F(ChecksumTest, BothCopiesBadFailTheReadWithAMediumErrorNotWrongData) {
    auto v = create();
    VolumeDevice device(v);
    auto data = random_bytes(64 << 10, 5);
    ASSERT_EQ(io.write(device, mib1, data), 0);
    flip(0, mib1 + 8192 + 100);
    flip(1, mib1 + 8192 + 3000);
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(io.read(device, mib1, back), -EIO); // MEDIUM ERROR, UNRECOVERED READ ERROR through SCSI
    std::vector<uint8_t> one(4096);
    EXPECT_EQ(io.read(device, mib1 + 8192, one), -EIO);
    // The rest of the space reads; the copies are left as they were (no copy to repair from).
    EXPECT_EQ(io.read(device, mib1 + 16384, one), 0);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), data.begin() + 16384));
    EXPECT_GE(errors(v, 0) + errors(v, 1), 2u);
    EXPECT_EQ(v->status().members[0].state, MemberState::active);
    EXPECT_EQ(v->status().members[1].state, MemberState::active);
}

// One member's copy of the table rotted while the space was closed: open compares the in-sync copies,
// settles the entries that differ against the data, and rewrites the bad copy; the blocks read as they
// should, and no member is blamed. Slot 0's copy is the one open loads first, slot 1's the one compared.
TEST_F(ChecksumTest, ARottedCopyOfTheTableIsSettledAgainstTheDataAtOpen) {
    auto v = create();
    auto data = random_bytes(64 << 10, 40);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, mib1, data), 0);
    }
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    uint64_t first = mib1 / checksum_block;
    uint32_t good2 = stored_sum(0, first + 2), good5 = stored_sum(1, first + 5);
    ASSERT_EQ(good2, block_checksum(data.data() + 2 * 4096, first + 2));
    // The entries of blocks 2 (on slot 0) and 5 (on slot 1) changed in the members' table areas, each page
    // sound: two versions of the page, as a crash between the members' page writes leaves them (a page that
    // fails its own check is not compared at all: the tests after this one).
    flip_sum(0, first + 2, true);
    flip_sum(1, first + 5, true);
    ASSERT_NE(stored_sum(0, first + 2), good2);

    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    v = *h;
    EXPECT_EQ(stored_sum(0, first + 2), good2) << "slot 0's copy rewritten";
    EXPECT_EQ(stored_sum(1, first + 5), good5) << "slot 1's copy rewritten";
    VolumeDevice device(v);
    for (unsigned round = 0; round < 2; ++round) { // MiB 1 is read from slot 1; then make slot 0 serve it
        std::vector<uint8_t> back(data.size());
        ASSERT_EQ(io.read(device, mib1, back), 0);
        EXPECT_EQ(back, data);
        flip(1, mib1 + 2 * 4096 + 7); // slot 1's data of block 2 bad: the read goes to slot 0's copy
    }
    EXPECT_EQ(errors(v, 0), 0u) << "slot 0's data was good all along";
    EXPECT_EQ(errors(v, 1), 1u) << "only the data flipped on purpose";
}

// The members' table copies differ at open and the block's data cannot be read from one of them: that
// member is failed, as a read error fails a member anywhere, and the entry is settled against the copy
// that could be read.
TEST_F(ChecksumTest, AMemberWhoseDataCannotBeReadWhileTheTableIsSettledIsFailed) {
    auto v = create();
    auto data = random_bytes(64 << 10, 49);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, mib1, data), 0);
    }
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    uint64_t block = mib1 / checksum_block + 5;
    uint32_t good = stored_sum(0, block);
    flip_sum(1, block, true);
    faults[1]->fail_reads(offsets[1] + mib1 + 5 * checksum_block, offsets[1] + mib1 + 6 * checksum_block);
    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    v = *h;
    EXPECT_EQ(v->status().members[1].state, MemberState::failed);
    EXPECT_EQ(v->status().members[0].state, MemberState::active);
    EXPECT_EQ(stored_sum(0, block), good);
    faults[1]->fail_reads(0, 0);
    VolumeDevice device(v);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data);
}

// The only in-sync member's copy of a table page rotted (its other member failed before the space
// closed): no other copy to compare with, so before pages checked themselves the rotted entry was loaded
// and its block, good on disk, read as a MEDIUM ERROR. Now the page fails its check, is made again from the
// data the only copy holds, and is rewritten.
TEST_F(ChecksumTest, ARottedPageOnTheOnlyInSyncMemberIsMadeAgainFromTheData) {
    auto v = create();
    auto data = random_bytes(64 << 10, 70);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, mib1, data), 0);
    }
    ASSERT_TRUE(v->fail_member(1));
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    uint64_t block = mib1 / checksum_block + 3;
    uint32_t good = stored_sum(0, block);
    ASSERT_EQ(good, block_checksum(data.data() + 3 * 4096, block));
    flip_sum(0, block);
    ASSERT_FALSE(sum_page_sound(0, block));
    auto h = assemble([&] { faults[1]->set(FaultDevice::Mode::fail); }); // and it stays away
    ASSERT_TRUE(h) << h.error().message;
    ASSERT_NE((*h)->status().members[1].state, MemberState::active);
    EXPECT_TRUE(sum_page_sound(0, block)) << "the page rewritten";
    EXPECT_EQ(stored_sum(0, block), good);
    VolumeDevice device(*h);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, mib1, back), 0) << "no MEDIUM ERROR for good data";
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(*h, 0), 0u);
}

// One member's copy of a page rotted (here the entry of a block never written: 0, "no checksum", became
// something else). Open takes the other member's sound copy of the page as it is, without consulting the
// data: the block keeps no checksum and reads. Comparing the copies entry by entry against the data, as
// open did before pages checked themselves, could not choose 0 (no data matches it) and kept the rotted
// value: a MEDIUM ERROR for a block nobody wrote.
TEST_F(ChecksumTest, ARottedPageOnOneOfTwoMembersIsTakenFromTheOther) {
    auto v = create();
    auto data = random_bytes(64 << 10, 71);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, mib1, data), 0);
    }
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    uint64_t never = mib1 / checksum_block + 40; // in the same table page as the written blocks
    ASSERT_EQ(stored_sum(0, never), 0u);
    flip_sum(0, never); // slot 0: the copy open loads first
    ASSERT_FALSE(sum_page_sound(0, never));
    ASSERT_TRUE(sum_page_sound(1, never));

    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(sum_page_sound(0, never)) << "slot 0's copy rewritten";
    EXPECT_EQ(stored_sum(0, never), 0u) << "slot 1's copy taken, not a checksum made from the data";
    VolumeDevice device(*h);
    for (unsigned round = 0; round < 2; ++round) { // MiB 1 is read from slot 1; then make slot 0 serve it
        std::vector<uint8_t> back(4096);
        ASSERT_EQ(io.read(device, never * checksum_block, back), 0) << "round " << round;
        std::vector<uint8_t> written(data.size());
        ASSERT_EQ(io.read(device, mib1, written), 0) << "round " << round;
        EXPECT_EQ(written, data);
        ASSERT_TRUE((*h)->fail_member(1));
    }
    EXPECT_EQ(errors(*h, 0) + errors(*h, 1), 0u);
}

// A page write torn by a crash: the first half of the page new, the rest old, on both members. The page
// fails its check on both, so it is made again from the data: blocks whose copies agree get their
// checksum; a block whose copies differ takes the copy whose checksum the damaged page still holds (the
// page's new half, here slot 1's), else the lowest in-sync copy (slot 0), and the other copy is made equal.
// Loaded as it was, its old half would have failed the new data of its blocks with a MEDIUM ERROR.
TEST_F(ChecksumTest, ATornTablePageIsRecognisedAndMadeAgainFromTheData) {
    auto v = create();
    // Blocks 500-520: their entries (bytes 2000-2083 of page 0) straddle the tear at byte 2048.
    uint64_t first = 500, count = 21;
    auto old_data = random_bytes(count * 4096, 72);
    auto new_data = random_bytes(count * 4096, 73);
    std::vector<std::vector<uint8_t>> old_pages;
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, first * 4096, old_data), 0);
        auto at = sum_page_at(0, first);
        ASSERT_TRUE(at);
        ASSERT_EQ(at->page, 0u);
        ASSERT_EQ(at->page, sum_page_at(0, first + count - 1)->page);
        old_pages = {sum_page(0, *at), sum_page(1, *at)};
        ASSERT_EQ(io.write(device, first * 4096, new_data), 0);
    }
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    auto at = *sum_page_at(0, first);
    for (unsigned slot = 0; slot < 2; ++slot) {
        auto page = sum_page(slot, at);
        std::copy(old_pages[slot].begin() + 2048, old_pages[slot].end(), page.begin() + 2048);
        put_sum_page(slot, at, page);
        ASSERT_FALSE(sum_page_sound(slot, first));
    }
    // Block 505 (entry in the new half): slot 0 missed its data write. Block 600, never written through
    // the space: its copies differ and the page holds no checksum for it.
    put_member_data(0, 505 * 4096,
                    std::vector<uint8_t>(old_data.begin() + 5 * 4096, old_data.begin() + 6 * 4096));
    auto x = random_bytes(4096, 74), y = random_bytes(4096, 75);
    put_member_data(0, 600 * 4096, x);
    put_member_data(1, 600 * 4096, y);

    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    for (unsigned slot = 0; slot < 2; ++slot) {
        EXPECT_TRUE(sum_page_sound(slot, first)) << "slot " << slot << "'s page rewritten";
        for (uint64_t i = 0; i < count; ++i) {
            EXPECT_EQ(stored_sum(slot, first + i), block_checksum(new_data.data() + i * 4096, first + i))
                << "slot " << slot << " block " << first + i;
        }
        EXPECT_EQ(stored_sum(slot, 600), block_checksum(x.data(), 600));
    }
    EXPECT_EQ(member_data(0, 505 * 4096, 4096), member_data(1, 505 * 4096, 4096)) << "made equal";
    EXPECT_EQ(member_data(1, 600 * 4096, 4096), x) << "the lowest in-sync copy won";
    VolumeDevice device(*h);
    std::vector<uint8_t> back(new_data.size());
    ASSERT_EQ(io.read(device, first * 4096, back), 0);
    EXPECT_EQ(back, new_data);
    EXPECT_EQ(errors(*h, 0) + errors(*h, 1), 0u);
}

// A space made before table pages checked themselves (no label bit, 1024 entries a page, nothing else)
// still opens, reads, verifies and repairs, and its pages keep that format.
TEST_F(ChecksumTest, ASpaceWithBareTablePagesStillWorks) {
    page_format = ChecksumPageFormat::bare;
    auto v = create();
    EXPECT_EQ(v->truth_at_open().incompat & feature::incompat::checksum_pages, 0u);
    // Blocks 1020-1027: across the bare format's first page boundary (1024), not the checked one's (1023).
    uint64_t first = 1020;
    auto data = random_bytes(8 * 4096, 76);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, first * 4096, data), 0);
    }
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    LabelReading r = read_member_labels(group.at(0), *disks[0]);
    ASSERT_TRUE(r.label);
    uint64_t area = r.label->area(AreaType::checksums)->offset;
    std::vector<uint8_t> page(4096);
    ASSERT_EQ(member_io(group.at(0), *disks[0], backstore::IoOp::read, area + 4096, page), 0);
    EXPECT_EQ(load_le32(page.data()), block_checksum(data.data() + 4 * 4096, 1024))
        << "page 1 starts at 1024";
    ASSERT_EQ(member_io(group.at(0), *disks[0], backstore::IoOp::read, area, page), 0);
    EXPECT_EQ(load_le32(page.data() + 4092), block_checksum(data.data() + 3 * 4096, 1023)) << "no check";

    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    VolumeDevice device(*h);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, first * 4096, back), 0);
    EXPECT_EQ(back, data);
    // Either side of the page boundary: block 1021 bad on the copy that serves MiB 3 (slot 1) is repaired
    // from slot 0; block 1025 bad on both copies fails the read.
    flip(1, 1021 * 4096 + 9);
    std::vector<uint8_t> one(4096);
    ASSERT_EQ(io.read(device, 1021 * 4096, one), 0);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), data.begin() + 4096));
    EXPECT_EQ(errors(*h, 1), 1u);
    flip(0, 1025 * 4096 + 9);
    flip(1, 1025 * 4096 + 9);
    EXPECT_EQ(io.read(device, 1025 * 4096, one), -EIO);
}

// A stripe (one copy of every block) with checksums gets a bitmap for them: after a crash, open tells a
// write whose data landed without its checksum from rot (the regions the bitmap marks are recomputed from
// the data), so no good block reads as a medium error. A block that rots afterwards has no other copy: its
// read fails with a medium error, never wrong data, and the member is counted but stays in service.
TEST_F(ChecksumTest, AStripeSettlesATornWriteAtOpenAndFailsARottenBlock) {
    sweep_interval = 3600s; // the regions stay marked
    auto v = create(2, 0, LayoutKind::stripe);
    ASSERT_NE(v->truth_at_open().area(AreaType::bitmap), nullptr);
    auto data = random_bytes(256 << 10, 42); // the first 128 KiB chunk on slot 0, the next on slot 1
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, 0, data), 0);
        EXPECT_GE(v->status().dirty_regions, 1u);
    }
    v->abandon(); // kill -9
    volumes.clear();
    v.reset();
    auto landed = random_bytes(4096, 43);
    put_member_data(0, 8192, landed); // block 2 of the space: its data reached slot 0, its checksum did not
    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    VolumeDevice again(*h);
    std::vector<uint8_t> back(4096);
    ASSERT_EQ(io.read(again, 8192, back), 0) << "no false medium error: the checksum was recomputed";
    EXPECT_EQ(back, landed);
    flip(1, 3 * 4096 + 5); // block 3 of slot 1's first chunk: space offset 128 KiB + 12 KiB
    EXPECT_EQ(io.read(again, (128 << 10) + 3 * 4096, back), -EIO);
    ASSERT_EQ(io.read(again, (128 << 10) + 4 * 4096, back), 0) << "the blocks around it read";
    EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin() + (128 << 10) + 4 * 4096));
    EXPECT_EQ(errors(*h, 1), 1u);
    EXPECT_EQ((*h)->status().members[1].state, MemberState::active);
}

TEST_F(ChecksumTest, AMisdirectedWriteIsCaught) {
    auto v = create();
    VolumeDevice device(v);
    auto a = random_bytes(4096, 6);
    auto b = random_bytes(4096, 7);
    ASSERT_EQ(io.write(device, mib1, a), 0);
    ASSERT_EQ(io.write(device, mib1 + 4096, b), 0);
    // On one member, the write meant for the first block landed on the second as well: whole, valid
    // data, only at the wrong address.
    put_member_data(1, mib1 + 4096, a);
    std::vector<uint8_t> back(4096);
    ASSERT_EQ(io.read(device, mib1 + 4096, back), 0);
    EXPECT_EQ(back, b);
    EXPECT_EQ(member_data(1, mib1 + 4096, 4096), b);
    EXPECT_EQ(errors(v, 1), 1u);
}

TEST_F(ChecksumTest, ASub4KWriteKeepsItsBlocksChecksumRight) {
    auto v = create();
    VolumeDevice device(v);
    auto base = random_bytes(12288, 8);
    ASSERT_EQ(io.write(device, mib1, base), 0);
    // 1.5 KiB across no block boundary, then 1 KiB across one: each block read, merged and rewritten.
    auto small = random_bytes(1536, 9);
    ASSERT_EQ(io.write(device, mib1 + 1024, small), 0);
    std::copy(small.begin(), small.end(), base.begin() + 1024);
    auto across = random_bytes(1024, 10);
    ASSERT_EQ(io.write(device, mib1 + 8192 - 512, across), 0);
    std::copy(across.begin(), across.end(), base.begin() + 8192 - 512);
    // A sub-block read, and the whole.
    std::vector<uint8_t> part(512);
    ASSERT_EQ(io.read(device, mib1 + 1536, part), 0);
    EXPECT_TRUE(std::equal(part.begin(), part.end(), base.begin() + 1536));
    std::vector<uint8_t> back(base.size());
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, base);
    for (uint64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(stored_sum(1, mib1 / 4096 + i), block_checksum(base.data() + i * 4096, mib1 / 4096 + i));
    }
    EXPECT_EQ(member_data(0, mib1, base.size()), base);
    EXPECT_EQ(member_data(1, mib1, base.size()), base);
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u);
}

TEST_F(ChecksumTest, AMemberPastTheErrorThresholdIsFailed) {
    auto v = create();
    VolumeDevice device(v);
    auto data = random_bytes(40 * 4096, 11);
    ASSERT_EQ(io.write(device, mib1, data), 0);
    for (uint64_t i = 0; i < checksum_error_limit - 1; ++i) {
        flip(1, mib1 + i * 4096 + 7);
    }
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(v, 1), checksum_error_limit - 1);
    EXPECT_EQ(v->status().members[1].state, MemberState::active) << "below the threshold it stays";
    flip(1, mib1 + 39 * 4096);
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(v, 1), checksum_error_limit);
    EXPECT_EQ(v->status().members[1].state, MemberState::failed);
    std::this_thread::sleep_for(400ms); // past the retry back-off: it is not taken back
    EXPECT_EQ(v->status().members[1].state, MemberState::failed);
    ASSERT_EQ(io.read(device, mib1, back), 0);
    EXPECT_EQ(back, data);
    // Nor by the next open: its count is in the labels.
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_EQ((*h)->status().members[1].state, MemberState::failed);
    EXPECT_EQ(errors(*h, 1), checksum_error_limit);
}

TEST_F(ChecksumTest, ATornWriteAfterACrashIsResolvedThroughTheBitmap) {
    sweep_interval = 3600s; // the regions stay marked
    auto v = create();
    VolumeDevice device(v);
    auto old_data = random_bytes(8192, 12);
    ASSERT_EQ(io.write(device, mib1, old_data), 0);
    EXPECT_GE(v->status().dirty_regions, 1u);
    v->abandon(); // kill -9: no clean label, the region still marked
    volumes.clear();
    v.reset();
    // Block 0: a write reached copy 1 only (neither its checksum page). Block 1: a write reached both
    // copies but not its checksum page.
    auto torn = random_bytes(4096, 13);
    put_member_data(1, mib1, torn);
    auto landed = random_bytes(4096, 14);
    put_member_data(0, mib1 + 4096, landed);
    put_member_data(1, mib1 + 4096, landed);
    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    VolumeDevice again(*h);
    std::vector<uint8_t> back(4096);
    ASSERT_EQ(io.read(again, mib1, back), 0);
    EXPECT_TRUE(std::equal(back.begin(), back.end(), old_data.begin())) << "the copy matching its checksum";
    EXPECT_EQ(member_data(1, mib1, 4096), member_data(0, mib1, 4096));
    ASSERT_EQ(io.read(again, mib1 + 4096, back), 0) << "no false medium error: the checksum was recomputed";
    EXPECT_EQ(back, landed);
    EXPECT_EQ(stored_sum(0, mib1 / 4096 + 1), block_checksum(landed.data(), mib1 / 4096 + 1));
    EXPECT_EQ(stored_sum(1, mib1 / 4096 + 1), block_checksum(landed.data(), mib1 / 4096 + 1));
    EXPECT_EQ(errors(*h, 0) + errors(*h, 1), 0u);
}

TEST_F(ChecksumTest, AMemberThatComesBackGetsTheChecksumsItMissed) {
    auto v = create();
    VolumeDevice device(v);
    faults[1]->set(FaultDevice::Mode::fail);
    auto data = random_bytes(64 << 10, 15);
    ASSERT_EQ(io.write(device, 2 * mib1, data), 0);
    EXPECT_EQ(v->status().members[1].state, MemberState::failed);
    faults[1]->set(FaultDevice::Mode::ok);
    for (int i = 0; i < 400 && v->status().members[1].state != MemberState::active; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    ASSERT_TRUE(v->wait_resync(20s));
    ASSERT_EQ(v->status().members[1].state, MemberState::active);
    for (uint64_t i = 0; i < 16; ++i) {
        uint64_t block = 2 * mib1 / 4096 + i;
        EXPECT_EQ(stored_sum(1, block), block_checksum(data.data() + i * 4096, block));
    }
    // And it serves verified reads of them.
    ASSERT_TRUE(v->fail_member(0));
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, 2 * mib1, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(v, 1), 0u);
}

// A failed member of a checksummed space held open is replaced by a blank disk: the new one gets the table
// and the data, and serves verified reads. (Every table page written to a member once left it counted in
// flight for good: replace_member refused a slot whose member had ever been sent a page.)
TEST_F(ChecksumTest, AFailedMemberOfASpaceHeldOpenIsReplacedAndGetsTheTable) {
    auto v = create();
    VolumeDevice device(v);
    auto data = random_bytes(256 << 10, 16);
    ASSERT_EQ(io.write(device, 2 * mib1, data), 0); // its table page goes to both members
    faults[1]->set(FaultDevice::Mode::fail);        // gone: its retries fail
    ASSERT_TRUE(v->fail_member(1));
    new_disk(1);
    std::string refused = replace(v, 1, 2s);
    ASSERT_EQ(refused, "") << "refused while the old device's retry is in flight, no longer";
    ASSERT_TRUE(test::eventually([&] { return v->status().members[1].state == MemberState::active; }));
    for (uint64_t i = 0; i < data.size() / checksum_block; i += 7) {
        uint64_t block = 2 * mib1 / checksum_block + i;
        EXPECT_EQ(stored_sum(1, block), block_checksum(data.data() + i * checksum_block, block));
    }
    ASSERT_TRUE(v->fail_member(0));
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, 2 * mib1, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(errors(v, 1), 0u);
}

// Sub-4 KiB writes of every sector of the same blocks, from two reactors at once, with whole-block reads
// among them: each write's read-modify-write of its block holds the block, so none is lost, and no read
// ever sees data and checksum apart (no checksum error, no failed read).
// A 3-way mirror whose slot 2 was away: while it was, a block of what it missed rotted on slot 0, the copy
// its resync reads from. The resync verifies what it reads: the block is taken from slot 1 (and slot 0
// repaired), so slot 2 gets good data rather than the rot.
TEST_F(ChecksumTest, AResyncDoesNotCopyARottenBlockFromItsSource) {
    auto v = create(3);
    VolumeDevice device(v);
    faults[2]->set(FaultDevice::Mode::fail);
    auto data = random_bytes(64 << 10, 41);
    ASSERT_EQ(io.write(device, 2 * mib1, data), 0);
    ASSERT_EQ(v->status().members[2].state, MemberState::failed);
    flip(0, 2 * mib1 + 3 * 4096 + 9);
    faults[2]->set(FaultDevice::Mode::ok);
    ASSERT_TRUE(test::eventually([&] { return v->status().members[2].state == MemberState::active; }));
    ASSERT_TRUE(v->wait_resync(20s));
    EXPECT_EQ(member_data(2, 2 * mib1, data.size()), data) << "the returning member got the good block";
    EXPECT_EQ(member_data(0, 2 * mib1, data.size()), data) << "the source repaired";
    EXPECT_EQ(errors(v, 0), 1u);
    EXPECT_EQ(errors(v, 1) + errors(v, 2), 0u);
}

// A write to a region a resync is copying, arriving while the copy's read of its source is out: the write
// waits for the copy, and the copy verifies the source's bytes against the checksums they were written
// with, not the waiting write's. (The write once set its new checksums before it reached the region's lock:
// the copy then found every block of its source "rotten", failed the member and the write with it.)
TEST_F(ChecksumTest, AWriteArrivingDuringAResyncsCopyOfItsRegionDoesNotMakeTheSourceLookRotten) {
    auto v = create();
    VolumeDevice device(v);
    faults[1]->set(FaultDevice::Mode::fail);
    auto missed = random_bytes(256 << 10, 43);
    ASSERT_EQ(io.write(device, 2 * mib1, missed), 0);
    ASSERT_EQ(v->status().members[1].state, MemberState::failed);
    // The resync's read of the region from slot 0 is held until the write has been sent.
    faults[0]->hold_reads(offsets[0] + 2 * mib1, offsets[0] + 3 * mib1);
    faults[1]->set(FaultDevice::Mode::ok);
    ASSERT_TRUE(test::eventually([&] { return faults[0]->held() > 0; })) << "the resync reads the region";
    auto data = random_bytes(256 << 10, 44);
    int written = INT_MIN;
    std::thread writer([&] { written = io.write(device, 2 * mib1, data, true); });
    std::this_thread::sleep_for(100ms); // the write is in the volume, waiting
    faults[0]->release_held();
    writer.join();
    ASSERT_EQ(written, 0);
    ASSERT_TRUE(v->wait_resync(20s));
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u) << "no block judged by checksums it was not written with";
    EXPECT_EQ(v->status().members[0].state, MemberState::active);
    EXPECT_EQ(v->status().members[1].state, MemberState::active);
    EXPECT_EQ(member_data(0, 2 * mib1, data.size()), data);
    EXPECT_EQ(member_data(1, 2 * mib1, data.size()), data);
    for (uint64_t i = 0; i < data.size() / checksum_block; i += 17) {
        uint64_t block = 2 * mib1 / checksum_block + i;
        EXPECT_EQ(stored_sum(1, block), block_checksum(data.data() + i * checksum_block, block));
    }
}

TEST_F(ChecksumTest, ConcurrentSub4KWritesAndReadsOfTheSameBlocksLoseNothing) {
    auto v = create();
    auto device = std::make_shared<VolumeDevice>(v);
    constexpr uint64_t blocks = 32;
    constexpr uint64_t sectors = blocks * 8;
    auto expected = random_bytes(blocks * 4096, 30);
    std::vector<uint64_t> order(sectors);
    for (uint64_t i = 0; i < sectors; ++i) {
        order[i] = i;
    }
    std::shuffle(order.begin(), order.end(), std::mt19937_64(31));
    struct Req {
        backstore::IoRequest request;
        iovec iov{};
        std::vector<uint8_t> buffer;
    };
    std::vector<std::unique_ptr<Req>> reqs;
    for (uint64_t i = 0; i < sectors; ++i) {
        auto w = std::make_unique<Req>();
        w->buffer.assign(expected.begin() + long(order[i] * 512),
                         expected.begin() + long(order[i] * 512 + 512));
        w->request.op = backstore::IoOp::write;
        w->request.offset = mib1 + order[i] * 512;
        w->request.length = 512;
        reqs.push_back(std::move(w));
        if (i % 4 == 0) {
            auto r = std::make_unique<Req>();
            r->buffer.resize(4096);
            r->request.op = backstore::IoOp::read;
            r->request.offset = mib1 + order[i] / 8 * 4096;
            r->request.length = 4096;
            reqs.push_back(std::move(r));
        }
    }
    std::atomic<size_t> left{reqs.size()};
    std::atomic<int> failed{0};
    std::promise<void> all;
    for (size_t i = 0; i < reqs.size(); ++i) {
        Req& q = *reqs[i];
        q.iov = {q.buffer.data(), q.buffer.size()};
        q.request.iov = &q.iov;
        q.request.iovcnt = 1;
        q.request.done = [&](int error) {
            if (error != 0) {
                ++failed;
            }
            if (--left == 0) {
                all.set_value();
            }
        };
        group.at(i % 2).post([&device, &q] { device->submit(q.request); });
    }
    ASSERT_EQ(all.get_future().wait_for(30s), std::future_status::ready);
    EXPECT_EQ(failed.load(), 0);
    std::vector<uint8_t> back(expected.size());
    ASSERT_EQ(io.read(*device, mib1, back), 0);
    EXPECT_EQ(back, expected) << "a sub-4 KiB write was lost";
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u);
}

// A thin space: checksums belong to the layout's blocks (the pool's clusters), below the mapping. A virtual
// block far beyond the members is written, read and sub-4 KiB rewritten; its cluster (the pool's first,
// at the start of the layout range, which slot 0 serves) is damaged on slot 0 and repaired.
TEST_F(ChecksumTest, AThinSpaceChecksumsItsClusters) {
    auto v = create(2, uint64_t(1) << 30);
    ASSERT_TRUE(v->thin());
    VolumeDevice device(v);
    auto data = random_bytes(64 << 10, 40);
    uint64_t at = (uint64_t(700) << 20) + 8192;
    ASSERT_EQ(io.write(device, at, data), 0);
    auto small = random_bytes(512, 41);
    ASSERT_EQ(io.write(device, at + 1024, small), 0);
    std::copy(small.begin(), small.end(), data.begin() + 1024);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, at, back), 0);
    EXPECT_EQ(back, data);
    // The cluster's bytes on the members: the first cluster of the layout range, 8 KiB in.
    ASSERT_EQ(member_data(0, 8192, data.size()), data) << "the pool's first cluster holds the write";
    flip(0, 8192 + 5000);
    ASSERT_EQ(io.read(device, at, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(member_data(0, 8192, data.size()), data) << "repaired";
    EXPECT_EQ(errors(v, 0), 1u);
    EXPECT_EQ(errors(v, 1), 0u);
}

// Snapshots of a checksummed thin space: the first write after a snapshot defers its copy, so the
// origin reads the blocks it did not write from the cluster the snapshot keeps (the base). A copy of that
// cluster rotted on one member is caught and repaired whichever device reads it, and the copier's reads
// of the base are verified too: the new cluster gets the good bytes, never the rotten ones.
TEST_F(ChecksumTest, ASnapshotAndItsOriginAreVerifiedThroughTheDeferredCopysBase) {
    auto v = create(2, uint64_t(1) << 30);
    ASSERT_TRUE(v->thin());
    VolumeDevice device(v);
    constexpr uint64_t mib = 1 << 20;
    uint64_t at = 700 * mib; // a whole virtual cluster: the pool's first, at layout offset 0
    auto old_data = random_bytes(mib, 70);
    ASSERT_EQ(io.write(device, at, old_data), 0);
    ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@s"));
    auto fresh = random_bytes(4096, 71);
    ASSERT_EQ(io.write(device, at + 64 * 1024, fresh), 0);
    auto now = old_data;
    std::copy(fresh.begin(), fresh.end(), now.begin() + 64 * 1024);
    ASSERT_EQ(member_data(0, 0, mib), old_data) << "the snapshot's cluster is the pool's first";
    // Rot in the base, in a block the origin did not write: both copies hold it, one is bad.
    flip(0, 200 * 1024 + 7);
    flip(1, 300 * 1024 + 9);
    auto snap = v->thin_view("space@s");
    ASSERT_TRUE(snap);
    std::vector<uint8_t> back(mib);
    ASSERT_EQ(io.read(device, at, back), 0);
    EXPECT_EQ(back, now) << "the origin: its new block, the rest from the base";
    ASSERT_EQ(io.read(**snap, at, back), 0);
    EXPECT_EQ(back, old_data) << "the snapshot";
    // Whatever copies those reads chose, a scrub reads every one: both flips are found by now.
    ASSERT_TRUE(v->scrub());
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    EXPECT_EQ(errors(v, 0), 1u);
    EXPECT_EQ(errors(v, 1), 1u);
    EXPECT_EQ(v->status().scrub.unrecoverable_blocks, 0u);
    EXPECT_EQ(member_data(0, 0, mib), old_data) << "repaired";
    EXPECT_EQ(member_data(1, 0, mib), old_data) << "repaired";
    // The copier completes the deferred copy once the space is idle; what it copied reads back verified.
    ASSERT_TRUE(test::eventually([&] { return v->status().deferred_copies == 0; }));
    ASSERT_EQ(io.read(device, at, back), 0);
    EXPECT_EQ(back, now);
    ASSERT_EQ(io.read(**snap, at, back), 0);
    EXPECT_EQ(back, old_data);
    EXPECT_EQ(errors(v, 0), 1u);
    EXPECT_EQ(errors(v, 1), 1u);
}

// Scrub: 20 flips at random blocks of one member, and one block bad on both copies; every copy of every
// block is read (not the one a read would pick), the 20 repaired, the one reported, all counted.
TEST_F(ChecksumTest, AScrubFindsAndRepairsEveryBadCopy) {
    auto v = create();
    VolumeDevice device(v);
    constexpr uint64_t span = 8 << 20;
    auto data = random_bytes(span, 50);
    ASSERT_EQ(io.write(device, 0, data), 0);
    std::mt19937_64 rng(51);
    std::set<uint64_t> blocks;
    while (blocks.size() < 20) {
        blocks.insert(rng() % (span / 4096 - 1));
    }
    for (uint64_t b : blocks) {
        flip(0, b * 4096 + rng() % 4096); // slot 0: half of them in MiBs reads would send to slot 1
    }
    uint64_t lost = span / 4096 - 1; // not among the 20 (the last block)
    flip(0, lost * 4096 + 9);
    flip(1, lost * 4096 + 10);
    ASSERT_TRUE(v->scrub());
    EXPECT_FALSE(v->scrub()) << "one at a time";
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    ScrubProgress p = v->status().scrub;
    EXPECT_FALSE(p.running);
    EXPECT_EQ(p.bad_blocks, 22u);
    EXPECT_EQ(p.repaired_blocks, 20u);
    EXPECT_EQ(p.unrecoverable_blocks, 1u);
    EXPECT_EQ(p.done_bytes, p.total_bytes);
    EXPECT_EQ(errors(v, 0), 21u);
    EXPECT_EQ(errors(v, 1), 1u);
    EXPECT_EQ(member_data(0, 0, span - 4096), std::vector<uint8_t>(data.begin(), data.end() - 4096));
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(io.read(device, lost * 4096, back), -EIO);
}

// A member's copy of the table rots while the space is open (the table in memory is what reads use, so
// nothing else would notice before the next open): the scrub checks each page it reads and compares each
// window's entries on every in-sync member with memory, and has the page writer put the rotted page back.
// In the bare format (spaces made before pages checked themselves) only the entry comparison finds it.
TEST_F(ChecksumTest, AScrubRewritesARottedCopyOfTheTable) {
    for (ChecksumPageFormat format : {ChecksumPageFormat::checked, ChecksumPageFormat::bare}) {
        SCOPED_TRACE(format == ChecksumPageFormat::checked ? "checked" : "bare");
        scrub_rewrites_a_rotted_copy_of_the_table(format);
        for (auto& v : volumes) {
            ASSERT_TRUE(v->close());
        }
        volumes.clear();
        disks.clear();
        faults.clear();
    }
}

void ChecksumTest::scrub_rewrites_a_rotted_copy_of_the_table(ChecksumPageFormat format) {
    page_format = format;
    auto v = create();
    VolumeDevice device(v);
    auto data = random_bytes(64 << 10, 44);
    ASSERT_EQ(io.write(device, mib1, data), 0);
    uint64_t block = mib1 / checksum_block + 7;
    uint32_t good = stored_sum(1, block);
    flip_sum(1, block);
    ASSERT_NE(stored_sum(1, block), good);
    // Where the entry is, read before the scrub writes labels (its checkpoints).
    auto at0 = sum_page_at(0, block);
    auto at1 = sum_page_at(1, block);
    ASSERT_TRUE(at0 && at1);
    ASSERT_TRUE(v->scrub(ScrubAction::start));
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    ScrubProgress p = v->status().scrub;
    if (format == ChecksumPageFormat::checked) {
        // The page holds blocks 0-1022: the first window (blocks 0-255) finds it failing its check and has
        // it rewritten, which may land before the window of the flipped entry compares it.
        EXPECT_EQ(p.table_pages_rewritten, 1u);
        EXPECT_LE(p.table_entries_rewritten, 1u);
    } else {
        EXPECT_EQ(p.table_pages_rewritten, 0u);
        EXPECT_EQ(p.table_entries_rewritten, 1u);
    }
    EXPECT_EQ(p.bad_blocks, 0u) << "the data was good";
    ASSERT_TRUE(test::eventually([&] { return stored_sum(1, *at1) == good; })) << "slot 1's copy rewritten";
    EXPECT_EQ(stored_sum(0, *at0), good);
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u);
}

// grow: a checksummed mirror takes its members' new room online. The table's entries for the new range are
// zero on every member before a label names it (here the area past the old range held garbage, as a
// replaced member's device may), so a block never written there reads without an error after a reopen; a
// block written there is verified and repaired like any other. The area was sized at create for four times
// what the members held: a grow past that stops at it, and the labels stay readable.
TEST_F(ChecksumTest, AChecksummedMirrorGrowsOnlineAndItsNewRangeIsVerified) {
    auto v = create();
    VolumeDevice device(v);
    uint64_t before = v->geometry().bytes();
    LabelReading r = read_member_labels(group.at(0), *disks[0]);
    ASSERT_TRUE(r.label);
    const MetadataArea area = *r.label->area(AreaType::checksums);
    EXPECT_GE(checksum_area_reach(area.length, r.label->checksum_page_format()), 4 * 2 * member_bytes)
        << "room to grow fourfold";
    uint64_t first_new = before / checksum_block; // the table entry of the first block grown
    for (unsigned slot = 0; slot < 2; ++slot) {
        auto at = sum_page_at(slot, first_new);
        ASSERT_TRUE(at);
        auto page = sum_page(slot, *at);
        auto junk = random_bytes(checksum_page_bytes, 58 + slot);
        std::copy(junk.begin() + at->entry * 4, junk.end(), page.begin() + at->entry * 4);
        put_sum_page(slot, *at, page);
        uint64_t from = at->offset + checksum_page_bytes;
        auto tail = random_bytes(area.offset + area.length - from, 60 + slot);
        ASSERT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::write, from, tail), 0);
    }
    auto old_data = random_bytes(1 << 20, 61);
    ASSERT_EQ(io.write(device, before - old_data.size(), old_data, true), 0);

    for (auto& d : disks) {
        ASSERT_TRUE(d->resize(member_bytes + (16 << 20)));
    }
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    EXPECT_EQ(grown->after, before + (16 << 20));
    EXPECT_EQ(v->geometry().bytes(), grown->after);
    auto new_data = random_bytes(2 << 20, 62);
    uint64_t at = grown->after - new_data.size() - (1 << 20); // MiB-aligned; a MiB left unwritten after it
    ASSERT_EQ(io.write(device, at, new_data, true), 0);
    uint64_t block = at / checksum_block + 5;
    uint32_t sum = block_checksum(new_data.data() + 5 * checksum_block, block);
    EXPECT_EQ(stored_sum(0, block), sum);
    EXPECT_EQ(stored_sum(1, block), sum);
    uint64_t never = grown->after / checksum_block - 1; // the last block: never written
    EXPECT_EQ(stored_sum(0, never), 0u) << "the garbage there was replaced";
    EXPECT_EQ(stored_sum(1, never), 0u);
    EXPECT_EQ(stored_sum(0, first_new - 1),
              block_checksum(old_data.data() + old_data.size() - 4096, first_new - 1))
        << "the old range's last entry kept";

    ASSERT_TRUE(v->close());
    auto again = assemble();
    ASSERT_TRUE(again) << again.error().message;
    VolumeDevice reopened(*again);
    EXPECT_EQ((*again)->geometry().bytes(), grown->after);
    std::vector<uint8_t> back(grown->after - before);
    ASSERT_EQ(io.read(reopened, before, back), 0) << "nothing in the new range fails its checksum";
    EXPECT_TRUE(std::equal(new_data.begin(), new_data.end(), back.begin() + (at - before)));
    back.resize(old_data.size());
    ASSERT_EQ(io.read(reopened, before - old_data.size(), back), 0);
    EXPECT_EQ(back, old_data);
    // A flipped byte in the new range, on the copy that serves it: found and repaired.
    unsigned serving = unsigned((at >> 20) % 2);
    flip(serving, at + 5 * checksum_block + 100);
    back.assign(new_data.size(), 0);
    ASSERT_EQ(io.read(reopened, at, back), 0);
    EXPECT_EQ(back, new_data);
    EXPECT_EQ(member_data(serving, at, new_data.size()), new_data) << "the bad copy rewritten";
    EXPECT_EQ(errors(*again, serving), 1u);

    // Far more room than the area reaches: the space grows to the reach, no further.
    uint64_t reach = checksum_area_reach(area.length, r.label->checksum_page_format());
    for (auto& d : disks) {
        ASSERT_TRUE(d->resize(reach + (64 << 20)));
    }
    auto capped = (*again)->grow();
    ASSERT_TRUE(capped) << capped.error().message;
    EXPECT_EQ(capped->after, reach);
    ASSERT_EQ(capped->notes.size(), 1u);
    EXPECT_NE(capped->notes.back().find("checksums area covers"), std::string::npos) << capped->notes.back();
    ASSERT_EQ(io.write(reopened, reach - new_data.size(), new_data, true), 0);
    ASSERT_TRUE((*again)->close());
    auto third = assemble();
    ASSERT_TRUE(third) << third.error().message << ": the labels' layout stays within the area";
    EXPECT_EQ((*third)->geometry().bytes(), reach);
}

// A checksummed thin space's pool grows too: the clusters it gains are in the table's range, and what is
// written there is verified after a reopen.
TEST_F(ChecksumTest, AChecksummedThinPoolGrows) {
    auto v = create(2, uint64_t(1) << 30);
    VolumeDevice device(v);
    for (auto& d : disks) {
        ASSERT_TRUE(d->resize(member_bytes + (16 << 20)));
    }
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    ASSERT_TRUE(grown->thin);
    EXPECT_TRUE(grown->notes.empty())
        << grown->notes.front() << ": the metadata area has room for the pool grown";
    EXPECT_GE(grown->after, grown->before + (15 << 20));
    // More clusters than the pool had before the grow, each written once.
    uint64_t clusters = grown->before / (1 << 20) + 8;
    std::vector<std::vector<uint8_t>> written;
    for (uint64_t c = 0; c < clusters; ++c) {
        written.push_back(random_bytes(64 << 10, 70 + c));
        ASSERT_EQ(io.write(device, (c * 16) << 20, written.back(), true), 0) << "cluster " << c;
    }
    ASSERT_TRUE(v->close());
    auto again = assemble();
    ASSERT_TRUE(again) << again.error().message;
    VolumeDevice reopened(*again);
    std::vector<uint8_t> back(64 << 10);
    for (uint64_t c = 0; c < clusters; ++c) {
        ASSERT_EQ(io.read(reopened, (c * 16) << 20, back), 0) << "cluster " << c;
        EXPECT_EQ(back, written[c]) << "cluster " << c;
    }
    EXPECT_EQ(errors(*again, 0) + errors(*again, 1), 0u);
}

// --rate holds a scrub back (never ahead of its pace: an upper bound a slow machine cannot break), --pause
// stops it after the window in flight, --resume goes on where it stopped.
TEST_F(ChecksumTest, AScrubIsPacedPausedAndResumed) {
    auto v = create();
    uint64_t rate = 4 << 20;
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(v->scrub(ScrubAction::start, rate));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ScrubProgress p = v->status().scrub;
    EXPECT_TRUE(p.running);
    EXPECT_EQ(p.rate, rate);
    EXPECT_LE(p.done_bytes, uint64_t(seconds * double(rate)) + (2 << 20)) << "no faster than the rate";
    EXPECT_LT(p.done_bytes, p.total_bytes);

    ASSERT_TRUE(v->scrub(ScrubAction::pause));
    EXPECT_FALSE(v->scrub(ScrubAction::pause)) << "paused already";
    std::this_thread::sleep_for(std::chrono::milliseconds(300)); // the window in flight lands
    uint64_t stopped = v->status().scrub.done_bytes;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    p = v->status().scrub;
    EXPECT_TRUE(p.paused && p.running);
    EXPECT_EQ(p.done_bytes, stopped) << "a paused scrub reads nothing";
    auto again = v->scrub();
    ASSERT_FALSE(again);
    EXPECT_NE(again.error().message.find("paused"), std::string::npos) << again.error().message;

    ASSERT_TRUE(v->scrub(ScrubAction::resume)); // unlimited from here
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    p = v->status().scrub;
    EXPECT_FALSE(p.running || p.paused);
    EXPECT_EQ(p.done_bytes, p.total_bytes);
    EXPECT_FALSE(v->scrub(ScrubAction::resume)) << "nothing to resume";
}

// The scrub's position and result and the members' checksum errors are kept in the labels
// (docs/integrity.md): a paused scrub, the space closed and opened again, resumes at its checkpoint; the
// last scrub and the counts are there after the next open; a scrub running when the holder died is shown
// interrupted at its last checkpoint and resumed by --resume.
TEST_F(ChecksumTest, AScrubIsResumedFromItsCheckpointAfterTheSpaceIsOpenedAgain) {
    auto v = create();
    constexpr uint64_t written = 8 << 20;
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, 0, random_bytes(written, 30)), 0);
        flip(0, 4096); // MiB 0 is read from slot 0: one checksum error there, repaired
        std::vector<uint8_t> back(4096);
        ASSERT_EQ(io.read(device, 4096, back), 0);
    }
    ASSERT_EQ(errors(v, 0), 1u);
    ASSERT_TRUE(v->scrub(ScrubAction::start, 4 << 20));
    std::this_thread::sleep_for(300ms);
    ASSERT_TRUE(v->scrub(ScrubAction::pause));
    ASSERT_TRUE(test::eventually([&] {
        uint64_t before = v->status().scrub.done_bytes;
        std::this_thread::sleep_for(100ms);
        return v->status().scrub.done_bytes == before;
    }));
    uint64_t stopped = v->status().scrub.done_bytes;
    ASSERT_GT(stopped, 0u);
    ASSERT_LT(stopped, written) << "paused inside the written part, so a restart from 0 would be seen";
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();
    LabelReading labels = read_member_labels(group.at(0), *disks[1]);
    ASSERT_TRUE(labels.label);
    EXPECT_EQ(labels.label->scrub.state, ScrubState::paused);
    EXPECT_EQ(labels.label->scrub.position, stopped);
    EXPECT_EQ(labels.label->checksum_errors[0], 1u);

    auto h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    v = *h;
    ScrubProgress p = v->status().scrub;
    EXPECT_TRUE(p.running && p.paused && !p.interrupted);
    EXPECT_EQ(p.done_bytes, stopped);
    EXPECT_EQ(errors(v, 0), 1u) << "checksum errors survive the reopen";
    EXPECT_FALSE(v->scrub(ScrubAction::start)) << "paused: resume it";
    ASSERT_TRUE(v->scrub(ScrubAction::resume));
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    p = v->status().scrub;
    EXPECT_EQ(p.checked_blocks, written / checksum_block) << "every written block checked exactly once";
    EXPECT_EQ(p.bad_blocks, 0u) << "the flipped block was repaired by the read";
    EXPECT_NE(p.finished, 0u);
    EXPECT_GE(p.finished, p.started);
    ASSERT_TRUE(v->close());
    volumes.clear();
    v.reset();

    // The last scrub, shown after the next open; then one running when the holder is killed.
    h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    v = *h;
    p = v->status().scrub;
    EXPECT_FALSE(p.running);
    EXPECT_EQ(p.checked_blocks, written / checksum_block);
    EXPECT_EQ(p.done_bytes, p.total_bytes);
    EXPECT_NE(p.finished, 0u);
    ASSERT_TRUE(v->scrub(ScrubAction::start, 1 << 20));
    ASSERT_TRUE(test::eventually([&] { return labels_say(ScrubState::running); }));
    v->abandon(); // kill -9
    volumes.clear();
    v.reset();
    h = assemble();
    ASSERT_TRUE(h) << h.error().message;
    v = *h;
    p = v->status().scrub;
    EXPECT_TRUE(p.running && p.paused && p.interrupted);
    EXPECT_EQ(p.finished, 0u);
    ASSERT_TRUE(v->scrub(ScrubAction::resume));
    ASSERT_TRUE(test::eventually([&] { return v->status().scrub.passes == 1; }));
    EXPECT_EQ(v->status().scrub.checked_blocks, written / checksum_block);
}

// The cost of verification on 1 MiB sequential reads (docs/dataspaces.md, "Block checksums"): a plain
// mirror and a checksummed one over memory members, read in alternating rounds. Memory members cost
// nothing, so this is the worst case (over iSCSI members the same CPU is a smaller share). Disabled: a
// measurement, run by hand with --gtest_also_run_disabled_tests --gtest_filter='*ReadCost*'.
TEST_F(ChecksumTest, DISABLED_ReadCostOf1MiBSequentialReads) {
    auto plain_volume = [&] {
        std::vector<backstore::Device*> raw;
        SpaceSpec spec;
        spec.name = "plain";
        spec.urls = {"p0", "p1"};
        size_t first = faults.size();
        for (int i = 0; i < 2; ++i) {
            disks.push_back(std::make_shared<backstore::MemoryDevice>(member_bytes, 512));
            faults.push_back(std::make_shared<FaultDevice>(disks.back()));
            raw.push_back(faults.back().get());
        }
        auto formatted = format_space(group.at(0), spec, raw, false);
        EXPECT_TRUE(formatted);
        std::vector<VolumeMember> members;
        for (size_t s = 0; s < 2; ++s) {
            VolumeMember m;
            m.device = std::make_unique<test::SharedDevice>(faults[first + s]);
            m.data_offset = formatted->data_offsets[s];
            members.push_back(std::move(m));
        }
        auto v = Volume::open(group, formatted->plan, std::move(members), options());
        EXPECT_TRUE(v);
        volumes.push_back(*v);
        return *v;
    };
    auto sums = create();
    auto plain = plain_volume();
    constexpr uint64_t span = 16 << 20;
    auto data = random_bytes(span, 20);
    VolumeDevice a(plain), b(sums);
    ASSERT_EQ(io.write(a, 0, data), 0);
    ASSERT_EQ(io.write(b, 0, data), 0);
    std::vector<uint8_t> back(1 << 20);
    auto round = [&](VolumeDevice& d) {
        auto start = std::chrono::steady_clock::now();
        for (int pass = 0; pass < 8; ++pass) {
            for (uint64_t at = 0; at < span; at += back.size()) {
                EXPECT_EQ(io.read(d, at, back), 0);
            }
        }
        EXPECT_TRUE(std::equal(back.begin(), back.end(), data.end() - long(back.size())));
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    double t_plain = 0, t_sums = 0;
    for (int r = 0; r < 6; ++r) {
        t_plain += round(a);
        t_sums += round(b);
    }
    double mb = 6.0 * 8 * span / 1e6;
    std::printf(
        "1 MiB sequential reads, QD 1, memory members: plain %.0f MB/s, checksummed %.0f MB/s (%.1f %%)\n",
        mb / t_plain, mb / t_sums, 100.0 * t_plain / t_sums);
    EXPECT_EQ(errors(sums, 0) + errors(sums, 1), 0u);
}

} // namespace
} // namespace ispace::volume
