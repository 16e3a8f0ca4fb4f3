// A thin space's data path end to end on memory members: clusters allocated on first write with only the
// written 4 KiB blocks readable, zeros everywhere else (even where the members hold old bytes), a full pool
// answering ENOSPC with everything written before intact, UNMAP and WRITE ZEROES freeing clusters, GET LBA
// STATUS's view of the map, and a map that survives a reopen — and kill -9 after a flush or FUA write.
#include "backstore/memory/memory_device.hpp"
#include "fault_device.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;
using test::found_on;
using test::random_bytes;

constexpr uint64_t MiB = 1 << 20;

class ThinVolumeTest : public ::testing::Test {
protected:
    ThinVolumeTest() : group(2), io(group.at(1)) { group.start(); }
    ~ThinVolumeTest() override {
        for (auto& v : volumes) {
            (void)v->close();
        }
        volumes.clear();
        group.stop();
    }

    // A thin space of `size` bytes over `n` memory members of `member_size` bytes, whose every byte was
    // 0xab before (a cluster's old contents must never show through).
    std::shared_ptr<Volume> create(LayoutKind kind, unsigned n, uint64_t member_size, uint64_t size) {
        for (unsigned i = 0; i < n; ++i) {
            disks.push_back(std::make_shared<backstore::MemoryDevice>(member_size, 512));
            std::vector<uint8_t> junk(8 * MiB, 0xab); // in pieces: member_io stages at most 64 MiB
            for (uint64_t at = 0; at < member_size; at += junk.size()) {
                std::span<uint8_t> piece(junk.data(), std::min<uint64_t>(junk.size(), member_size - at));
                EXPECT_EQ(member_io(group.at(0), *disks.back(), backstore::IoOp::write, at, piece), 0);
            }
            faults.push_back(std::make_shared<test::FaultDevice>(disks.back()));
        }
        SpaceSpec spec;
        spec.name = "thin";
        spec.layout = kind;
        spec.thin = true;
        spec.size = size;
        std::vector<backstore::Device*> raw;
        for (unsigned i = 0; i < n; ++i) {
            spec.urls.push_back("m" + std::to_string(i));
            raw.push_back(disks[i].get());
        }
        auto formatted = format_space(group.at(0), spec, raw, false);
        EXPECT_TRUE(formatted) << formatted.error().message;
        if (!formatted) {
            return nullptr;
        }
        offsets = formatted->data_offsets;
        auto v =
            Volume::open(group, formatted->plan, members(formatted->plan.truth.members.size()), options());
        EXPECT_TRUE(v) << v.error().message;
        if (!v) {
            return nullptr;
        }
        volumes.push_back(*v);
        return *v;
    }
    VolumeOptions options() {
        VolumeOptions o;
        o.sweep_interval = 50ms;
        o.retry_min = 50ms;
        o.retry_max = 200ms;
        return o;
    }
    std::vector<VolumeMember> members(size_t n, const std::vector<bool>& present = {}) {
        std::vector<VolumeMember> out;
        for (size_t s = 0; s < n; ++s) {
            VolumeMember m;
            if (present.empty() || present[s]) {
                m.device = std::make_unique<test::SharedDevice>(faults[s]);
            }
            m.data_offset = offsets[s];
            m.url = "m" + std::to_string(s);
            out.push_back(std::move(m));
        }
        return out;
    }
    // Assembles again from the members' labels (those in `slots`; empty: all), as the space manager does.
    std::shared_ptr<Volume> reopen(std::vector<uint32_t> slots = {}) {
        if (slots.empty()) {
            for (uint32_t s = 0; s < disks.size(); ++s) {
                slots.push_back(s);
            }
        }
        auto plan = plan_assembly(found_on(group.at(0), disks, slots), {});
        EXPECT_TRUE(plan) << plan.error().message;
        if (!plan) {
            return nullptr;
        }
        std::vector<bool> present(disks.size(), false);
        for (uint32_t s : slots) {
            present[s] = true;
        }
        auto v = Volume::open(group, *plan, members(disks.size(), present), options());
        EXPECT_TRUE(v) << v.error().message;
        if (!v) {
            return nullptr;
        }
        volumes.push_back(*v);
        return *v;
    }
    void drop(const std::shared_ptr<Volume>& v, bool crash) {
        if (crash) {
            v->abandon(); // what kill -9 of the holder leaves
        } else {
            ASSERT_TRUE(v->close());
        }
        std::erase(volumes, v);
    }
    std::vector<uint8_t> read(backstore::Device& d, uint64_t offset, uint64_t length) {
        std::vector<uint8_t> out(length);
        EXPECT_EQ(io.read(d, offset, out), 0);
        return out;
    }
    std::vector<backstore::Extent> allocation(Volume& v, uint64_t offset, uint64_t length) {
        std::promise<Result<std::vector<backstore::Extent>>> got;
        auto future = got.get_future();
        io.reactor().post([&] {
            v.allocation_status(offset, length, [&got](Result<std::vector<backstore::Extent>> r) {
                got.set_value(std::move(r));
            });
        });
        auto r = future.get();
        EXPECT_TRUE(r);
        return r ? *r : std::vector<backstore::Extent>{};
    }

    net::ReactorGroup group;
    test::Submitter io;
    std::vector<std::shared_ptr<backstore::MemoryDevice>> disks;
    std::vector<std::shared_ptr<test::FaultDevice>> faults;
    std::vector<uint64_t> offsets;
    std::vector<std::shared_ptr<Volume>> volumes;
};

TEST_F(ThinVolumeTest, AWriteAllocatesOneClusterAndOnlyItsBlocksReadBack) {
    auto v = create(LayoutKind::mirror, 2, 8 * MiB, 64 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    EXPECT_EQ(d.geometry().bytes(), 64 * MiB) << "the size is virtual: more than the members hold";
    VolumeStatus st = v->status();
    EXPECT_TRUE(st.thin);
    EXPECT_EQ(st.allocated_bytes, 0u);
    EXPECT_GT(st.pool_bytes, 0u);
    EXPECT_LT(st.pool_bytes, 8 * MiB);
    EXPECT_EQ(read(d, 40 * MiB, 64 << 10), std::vector<uint8_t>(64 << 10, 0)) << "never written: zeros";

    // 1.5 KiB in the middle of a 4 KiB block, far beyond what the members hold.
    auto data = random_bytes(1536, 1);
    ASSERT_EQ(io.write(d, 50 * MiB + 4096 + 1024, data), 0);
    EXPECT_EQ(v->status().allocated_bytes, MiB);
    auto back = read(d, 50 * MiB, 16 << 10);
    std::vector<uint8_t> expect(16 << 10, 0);
    std::copy(data.begin(), data.end(), expect.begin() + 4096 + 1024);
    EXPECT_EQ(back, expect) << "the rest of the block and of the cluster read as zeros, not the old 0xab";

    auto extents = allocation(*v, 50 * MiB, MiB);
    ASSERT_EQ(extents.size(), 3u);
    EXPECT_FALSE(extents[0].mapped);
    EXPECT_TRUE(extents[1].mapped);
    EXPECT_EQ(extents[1].offset, 50 * MiB + 4096);
    EXPECT_EQ(extents[1].length, 4096u) << "only the written 4 KiB block is mapped";
    EXPECT_FALSE(extents[2].mapped);

    // An overwrite of written blocks allocates nothing more; a second cluster does.
    ASSERT_EQ(io.write(d, 50 * MiB + 4096, random_bytes(4096, 2)), 0);
    ASSERT_EQ(io.write(d, 3 * MiB, random_bytes(8192, 3)), 0);
    EXPECT_EQ(v->status().allocated_bytes, 2 * MiB);
}

TEST_F(ThinVolumeTest, AFullPoolFailsWritesWithENOSPCAndLosesNothing) {
    auto v = create(LayoutKind::mirror, 2, 8 * MiB, 64 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    uint64_t clusters = v->status().pool_bytes / MiB;
    ASSERT_GE(clusters, 2u);
    std::vector<std::vector<uint8_t>> written;
    for (uint64_t c = 0; c < clusters; ++c) {
        written.push_back(random_bytes(64 << 10, 10 + c));
        ASSERT_EQ(io.write(d, c * 4 * MiB, written.back()), 0) << "cluster " << c;
    }
    EXPECT_EQ(v->status().allocated_bytes, clusters * MiB);
    EXPECT_FALSE(v->status().pool_full);
    // The next new cluster has nowhere to go.
    EXPECT_EQ(io.write(d, 61 * MiB, random_bytes(4096, 99)), -ENOSPC);
    EXPECT_TRUE(v->status().pool_full);
    // A write that spans a mapped cluster and a new one fails whole: the mapped part is not changed.
    auto before = read(d, 4 * MiB - 4096, 4096);
    EXPECT_EQ(io.write(d, 4 * MiB + MiB - 4096, random_bytes(8192, 98)), -ENOSPC);
    EXPECT_EQ(read(d, 5 * MiB - 4096, 4096), std::vector<uint8_t>(4096, 0))
        << "the blocks of the failed write were not recorded as written";
    EXPECT_EQ(read(d, 4 * MiB - 4096, 4096), before);
    // Overwrites of what is mapped still work, and everything written before reads back.
    ASSERT_EQ(io.write(d, 0, written[0]), 0);
    for (uint64_t c = 0; c < clusters; ++c) {
        EXPECT_EQ(read(d, c * 4 * MiB, 64 << 10), written[c]) << "cluster " << c;
    }
    // Freeing a cluster (UNMAP, then the commit a flush makes) lets writes allocate again.
    ASSERT_EQ(io.simple(d, backstore::IoOp::unmap, 0, MiB), 0);
    ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
    EXPECT_EQ(v->status().allocated_bytes, (clusters - 1) * MiB);
    EXPECT_EQ(io.write(d, 61 * MiB, random_bytes(4096, 99)), 0);
    EXPECT_FALSE(v->status().pool_full);
}

TEST_F(ThinVolumeTest, UnmapAndWriteZeroesFreeClustersAndZeroPartialBlocks) {
    auto v = create(LayoutKind::stripe, 3, 8 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    auto data = random_bytes(3 * MiB, 4);
    ASSERT_EQ(io.write(d, 100 * MiB, data), 0);
    EXPECT_EQ(v->status().allocated_bytes, 3 * MiB);
    EXPECT_EQ(read(d, 100 * MiB, 3 * MiB), data) << "striped clusters read back";
    // The middle cluster whole, and 512 bytes inside a 4 KiB block of the first.
    ASSERT_EQ(io.simple(d, backstore::IoOp::unmap, 101 * MiB, MiB), 0);
    ASSERT_EQ(io.simple(d, backstore::IoOp::write_zeroes, 100 * MiB + 512, 512), 0);
    EXPECT_EQ(v->status().allocated_bytes, 2 * MiB);
    auto back = read(d, 100 * MiB, 3 * MiB);
    auto expect = data;
    std::fill(expect.begin() + MiB, expect.begin() + 2 * MiB, 0);
    std::fill(expect.begin() + 512, expect.begin() + 1024, 0);
    EXPECT_EQ(back, expect);
    // The last cluster in 4 KiB pieces: freed once no block of it is left.
    for (uint64_t at = 0; at < MiB; at += 4096) {
        ASSERT_EQ(io.simple(d, backstore::IoOp::unmap, 102 * MiB + at, 4096), 0);
    }
    EXPECT_EQ(v->status().allocated_bytes, MiB);
    auto extents = allocation(*v, 100 * MiB, 3 * MiB);
    ASSERT_FALSE(extents.empty());
    EXPECT_TRUE(extents[0].mapped);
    EXPECT_EQ(extents[0].length, MiB);
    EXPECT_FALSE(extents.back().mapped);
}

TEST_F(ThinVolumeTest, TheMapSurvivesReopenAndKillAfterAFlushOrAFuaWrite) {
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 1024 * MiB);
    ASSERT_TRUE(v);
    auto a = random_bytes(MiB + 4096, 5);
    {
        VolumeDevice d(v);
        ASSERT_EQ(io.write(d, 700 * MiB, a), 0);
    }
    drop(v, false); // a clean close commits
    v = reopen();
    ASSERT_TRUE(v);
    auto b = random_bytes(8192, 6);
    auto c = random_bytes(4096, 7);
    auto lost = random_bytes(4096, 8);
    auto e = random_bytes(4096, 9);
    {
        VolumeDevice d(v);
        EXPECT_EQ(read(d, 700 * MiB, a.size()), a);
        EXPECT_EQ(v->status().allocated_bytes, 2 * MiB);
        ASSERT_EQ(io.write(d, 10 * MiB, b), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0); // acknowledged: survives kill -9
        ASSERT_EQ(io.write(d, 20 * MiB, c, true), 0);       // FUA: so does this
        ASSERT_EQ(io.write(d, 30 * MiB, lost), 0);          // neither: a crash may forget it
        // A FUA overwrite of a block whose cluster no commit maps yet: the overwrite itself changes no
        // metadata, but the map that reaches it must be durable before the FUA write is acknowledged.
        ASSERT_EQ(io.write(d, 40 * MiB, lost), 0);
        ASSERT_EQ(io.write(d, 40 * MiB, e, true), 0);
    }
    drop(v, true);
    v = reopen();
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    EXPECT_EQ(read(d, 700 * MiB, a.size()), a);
    EXPECT_EQ(read(d, 10 * MiB, b.size()), b);
    EXPECT_EQ(read(d, 20 * MiB, c.size()), c);
    auto maybe = read(d, 30 * MiB, lost.size());
    EXPECT_TRUE(maybe == lost || maybe == std::vector<uint8_t>(4096, 0)) << "old or new, nothing else";
    EXPECT_EQ(read(d, 40 * MiB, e.size()), e) << "a FUA overwrite of an uncommitted cluster";
    EXPECT_GE(v->status().allocated_bytes, 5 * MiB);
}

// A member that fails is dropped from the map's store (commits go on with the other), and when it comes
// back it gets a copy of the map before it is written again: afterwards it alone holds the current map.
TEST_F(ThinVolumeTest, AMemberThatFailsIsDroppedAndGetsTheMapBackWhenItReturns) {
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    auto a = random_bytes(64 << 10, 21), b = random_bytes(64 << 10, 22), c = random_bytes(64 << 10, 23);
    {
        VolumeDevice d(v);
        ASSERT_EQ(io.write(d, 100 * MiB, a), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
        faults[1]->set(test::FaultDevice::Mode::fail);
        ASSERT_EQ(io.write(d, 150 * MiB, b), 0) << "the other copy takes it";
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0) << "the commit goes on without the failed member";
        EXPECT_EQ(v->status().members[1].state, MemberState::failed);
        faults[1]->set(test::FaultDevice::Mode::ok);
        // It answers again: rejoins, gets the map, is resynced.
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (v->status().members[1].state != MemberState::active &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(20ms);
        }
        ASSERT_EQ(v->status().members[1].state, MemberState::active);
        ASSERT_EQ(io.write(d, 200 * MiB, c), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
    }
    drop(v, false);
    // Only the member that was away: its map must be the current one (not the one it had when it left).
    v = reopen({1});
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    EXPECT_EQ(read(d, 100 * MiB, a.size()), a);
    EXPECT_EQ(read(d, 150 * MiB, b.size()), b);
    EXPECT_EQ(read(d, 200 * MiB, c.size()), c);
    EXPECT_EQ(v->status().allocated_bytes, 3 * MiB);
}

TEST_F(ThinVolumeTest, RandomWritesMatchAShadowCopy) {
    auto v = create(LayoutKind::mirror, 2, 24 * MiB, 512 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    // 16 MiB of the virtual range spread over 400 MiB of it (fits the pool), unaligned blocks.
    std::mt19937_64 rng(9);
    std::map<uint64_t, std::vector<uint8_t>> shadow; // per window of 1 MiB
    for (int i = 0; i < 200; ++i) {
        uint64_t window = (rng() % 16) * 25 * MiB;
        uint64_t blocks = 1 + rng() % 300;
        uint64_t first = rng() % (MiB / 512 - blocks);
        auto data = random_bytes(blocks * 512, rng());
        ASSERT_EQ(io.write(d, window + first * 512, data), 0);
        auto& s = shadow[window];
        s.resize(MiB, 0);
        std::copy(data.begin(), data.end(), s.begin() + first * 512);
        if (i % 50 == 0) {
            ASSERT_EQ(io.simple(d, backstore::IoOp::unmap, window, 64 << 10), 0);
            std::fill(s.begin(), s.begin() + (64 << 10), 0);
        }
    }
    for (auto& [window, s] : shadow) {
        EXPECT_EQ(read(d, window, MiB), s) << "window at " << window;
    }
    EXPECT_LE(v->status().allocated_bytes, 16 * MiB);
}

// The metadata area holds the map of the sparsest device the pool allows (a leaf per cluster, twice) and
// what snapshots diverge into.
TEST(ThinMetadataPages, RoomForEveryLeafTwice) {
    // 1 TiB over a 1 GiB pool: every cluster may sit in a leaf of its own.
    EXPECT_GE(thin_metadata_pages(1024, uint64_t(1) << 20), 2u * 1024 + 2);
    // 1 GiB over 512 MiB: 16 leaves cover the device; snapshots that diverge get up to 16 such maps.
    EXPECT_GE(thin_metadata_pages(512, 1024), 2u * 16 * 16 + 2);
    EXPECT_LE(thin_metadata_pages(512, 1024), 1024u);
    // Large pools: at most 16 maps, 0.2 % of a 1 TiB pool as large as its device (4 KiB pages).
    uint64_t tib = uint64_t(1) << 20;
    EXPECT_LE(thin_metadata_pages(tib, tib) * 4096, (uint64_t(1) << 40) / 400);
}

// The sparsest use the pool allows: every cluster in a leaf of its own (one write per 64 MiB of a device
// 64 times the pool). The metadata area holds that map, and the commits go through.
TEST_F(ThinVolumeTest, ASparseMapOfAClusterPerLeafFitsItsMetadataArea) {
    auto v = create(LayoutKind::mirror, 2, 110 * MiB, 8192 * MiB);
    ASSERT_TRUE(v);
    uint64_t clusters = v->status().pool_bytes / MiB;
    ASSERT_GE(clusters, 100u);
    {
        VolumeDevice d(v);
        for (uint64_t i = 0; i < clusters; ++i) {
            ASSERT_EQ(io.write(d, i * 64 * MiB, random_bytes(4096, i)), 0) << i;
            if (i % 16 == 15) {
                ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0) << "commit after " << i + 1 << " leaves";
            }
        }
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
    }
    drop(v, true);
    v = reopen();
    ASSERT_TRUE(v);
    EXPECT_EQ(v->status().allocated_bytes, clusters * MiB);
    VolumeDevice d(v);
    EXPECT_EQ(read(d, (clusters - 1) * 64 * MiB, 4096), random_bytes(4096, clusters - 1));
}

TEST_F(ThinVolumeTest, CreateRefusesBadThinSizes) {
    for (int i = 0; i < 2; ++i) {
        disks.push_back(std::make_shared<backstore::MemoryDevice>(8 * MiB, 512));
    }
    SpaceSpec spec;
    spec.name = "thin";
    spec.thin = true;
    spec.urls = {"m0", "m1"};
    std::vector<backstore::Device*> raw{disks[0].get(), disks[1].get()};
    spec.size = max_thin_size * 2;
    auto huge = format_space(group.at(0), spec, raw, false);
    ASSERT_FALSE(huge);
    EXPECT_NE(huge.error().message.find("at most"), std::string::npos) << huge.error().message;
    spec.size = 64 * MiB + 100;
    EXPECT_FALSE(format_space(group.at(0), spec, raw, false)) << "not whole blocks";
    spec.size = 64 * MiB;
    spec.cluster_size = 3000;
    EXPECT_FALSE(format_space(group.at(0), spec, raw, false)) << "a cluster size that is no power of two";
    // Nothing was written by the refusals: the members carry no label.
    EXPECT_FALSE(read_member_labels(group.at(0), *disks[0]).label);
}

// ---- snapshots and clones (docs/thin.md, "Snapshots and clones") ----------------------------------------

// A snapshot keeps what the space held when it was taken, whatever is written to the space afterwards, and
// refuses writes: its view is read-only and a write that reaches it anyway fails with EROFS.
TEST_F(ThinVolumeTest, ASnapshotKeepsTheOldDataAndRefusesWrites) {
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    auto old_data = random_bytes(MiB + 8192, 20);
    ASSERT_EQ(io.write(d, 10 * MiB + 4096, old_data), 0);
    auto taken = v->thin_snapshot(thin_device_name, "space@s1");
    ASSERT_TRUE(taken) << taken.error().message;
    EXPECT_EQ(v->thin_snapshot(thin_device_name, "space@s1").error().code, EEXIST);
    auto fresh = random_bytes(4096, 21);
    ASSERT_EQ(io.write(d, 10 * MiB + 8192, fresh), 0); // inside the shared cluster: copy-on-write
    auto view = v->thin_view("space@s1");
    ASSERT_TRUE(view) << view.error().message;
    backstore::Device& snap = **view;
    EXPECT_TRUE(snap.features().read_only);
    EXPECT_EQ(snap.geometry().bytes(), d.geometry().bytes());
    EXPECT_EQ(read(snap, 10 * MiB + 4096, old_data.size()), old_data) << "the snapshot keeps the old bytes";
    auto now = old_data;
    std::copy(fresh.begin(), fresh.end(), now.begin() + 4096);
    EXPECT_EQ(read(d, 10 * MiB + 4096, now.size()), now) << "the space has the new ones";
    EXPECT_EQ(read(snap, 0, 64 << 10), std::vector<uint8_t>(64 << 10, 0)) << "never written: zeros";
    EXPECT_EQ(io.write(snap, 10 * MiB, fresh), -EROFS);
    EXPECT_EQ(io.simple(snap, backstore::IoOp::unmap, 10 * MiB, 4096), -EROFS);
    EXPECT_EQ(read(snap, 10 * MiB + 4096, old_data.size()), old_data) << "nothing changed by the refusals";
    EXPECT_EQ(v->status().allocated_bytes, 3 * MiB) << "two clusters shared, one copied";
    // A partial 4 KiB block zeroed in the space (WRITE ZEROES of 512 bytes) is the space's alone.
    ASSERT_EQ(io.simple(d, backstore::IoOp::write_zeroes, 10 * MiB + MiB + 512, 512), 0);
    EXPECT_EQ(read(snap, 10 * MiB + 4096, old_data.size()), old_data) << "the snapshot keeps its bytes";
    auto zeroed = now;
    std::fill(zeroed.begin() + long(MiB - 4096 + 512), zeroed.begin() + long(MiB - 4096 + 1024), 0);
    EXPECT_EQ(read(d, 10 * MiB + 4096, zeroed.size()), zeroed);
    EXPECT_FALSE(v->thin_view("space@nope"));
}

// A clone of a snapshot is writable, and what is written to it shows neither in the space nor in the
// snapshot; what is written to the space afterwards does not show in the clone.
TEST_F(ThinVolumeTest, ACloneDivergesWithoutTouchingTheOriginOrTheSnapshot) {
    auto v = create(LayoutKind::stripe, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    auto a = random_bytes(2 * MiB, 30);
    ASSERT_EQ(io.write(d, 40 * MiB, a), 0);
    ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@base"));
    ASSERT_TRUE(v->thin_clone("space@base", "work"));
    EXPECT_EQ(v->thin_clone("space@base", "work").error().code, EEXIST);
    EXPECT_EQ(v->thin_clone("space@gone", "other").error().code, ENOENT);
    auto clone = v->thin_view("work");
    auto snap = v->thin_view("space@base");
    ASSERT_TRUE(clone && snap);
    EXPECT_FALSE((*clone)->features().read_only);
    EXPECT_EQ(read(**clone, 40 * MiB, a.size()), a) << "a clone starts as its snapshot";
    auto c = random_bytes(6144, 31); // partial 4 KiB blocks at both ends
    ASSERT_EQ(io.write(**clone, 40 * MiB + 512, c), 0);
    auto b = random_bytes(4096, 32);
    ASSERT_EQ(io.write(d, 41 * MiB, b), 0);
    auto in_clone = a;
    std::copy(c.begin(), c.end(), in_clone.begin() + 512);
    auto in_space = a;
    std::copy(b.begin(), b.end(), in_space.begin() + MiB);
    EXPECT_EQ(read(**clone, 40 * MiB, a.size()), in_clone);
    EXPECT_EQ(read(d, 40 * MiB, a.size()), in_space);
    EXPECT_EQ(read(**snap, 40 * MiB, a.size()), a);
    ASSERT_EQ(io.simple(**clone, backstore::IoOp::flush), 0);
    EXPECT_EQ(v->status().allocated_bytes, 4 * MiB) << "the two shared clusters, one copy each side";
}

// Deleting a snapshot frees the clusters only it held (after the commit it makes); it is refused while the
// snapshot is attached; the space's own device is never deleted this way.
TEST_F(ThinVolumeTest, DeletingASnapshotFreesWhatOnlyItHeld) {
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    ASSERT_EQ(io.write(d, 0, random_bytes(4 * MiB, 40)), 0);
    ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@old"));
    ASSERT_EQ(io.write(d, MiB, random_bytes(2 * MiB, 41)), 0); // two whole clusters, copied on write
    EXPECT_EQ(v->status().allocated_bytes, 6 * MiB);
    auto devices = v->thin_devices();
    ASSERT_TRUE(devices);
    ASSERT_EQ(devices->size(), 2u);
    const thin::DeviceInfo& snap = (*devices)[1];
    EXPECT_EQ(snap.name, "space@old");
    EXPECT_TRUE(snap.read_only);
    EXPECT_EQ(snap.mapped_clusters, 4u);
    EXPECT_EQ(snap.unique_clusters, 2u) << "the two overwritten clusters are the snapshot's alone";
    EXPECT_EQ((*devices)[0].unique_clusters, 2u);
    {
        auto view = v->thin_view("space@old");
        ASSERT_TRUE(view);
        EXPECT_EQ(v->thin_remove("space@old").error().code, EBUSY) << "attached: refused";
    }
    EXPECT_EQ(v->thin_remove(thin_device_name).error().code, EINVAL);
    ASSERT_TRUE(v->thin_remove("space@old"));
    EXPECT_EQ(v->thin_remove("space@old").error().code, ENOENT);
    EXPECT_EQ(v->status().allocated_bytes, 4 * MiB) << "the snapshot's two clusters are free";
    // Space is taken again as usual afterwards.
    ASSERT_EQ(io.write(d, 100 * MiB, random_bytes(2 * MiB, 42)), 0);
    EXPECT_EQ(v->status().allocated_bytes, 6 * MiB);
}

// The snapshot is committed before thin_snapshot() returns: kill -9 right after it (with writes to the
// space since, never flushed) leaves the snapshot with every write acknowledged before it was taken —
// including writes that were never flushed.
TEST_F(ThinVolumeTest, ASnapshotSurvivesKillAndReopen) {
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    auto a = random_bytes(MiB, 50);
    {
        VolumeDevice d(v);
        ASSERT_EQ(io.write(d, 5 * MiB, a), 0); // acknowledged, not flushed
        ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@s"));
        ASSERT_EQ(io.write(d, 5 * MiB, random_bytes(MiB, 51)), 0);
    }
    drop(v, true);
    v = reopen();
    ASSERT_TRUE(v);
    auto view = v->thin_view("space@s");
    ASSERT_TRUE(view) << view.error().message;
    EXPECT_EQ(read(**view, 5 * MiB, a.size()), a);
    EXPECT_TRUE((*view)->features().read_only);
    EXPECT_EQ(io.write(**view, 5 * MiB, a), -EROFS);
    view->reset();
    ASSERT_TRUE(v->thin_clone("space@s", "c"));
    drop(v, false);
    v = reopen();
    ASSERT_TRUE(v);
    auto clone = v->thin_view("c");
    ASSERT_TRUE(clone) << "a clone is committed too";
    EXPECT_EQ(read(**clone, 5 * MiB, a.size()), a);
}

// Snapshots taken while writers run: the space loses no acknowledged write (a write still landing when a
// snapshot shares its cluster must not be missed by the copy-on-write of the next write there), and every
// block of every snapshot holds one of the versions written to it (or zeros), never a mix.
TEST_F(ThinVolumeTest, WritesRacingSnapshotsAreNeitherLostNorTorn) {
    auto v = create(LayoutKind::mirror, 2, 48 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    constexpr uint64_t slots = 4 * MiB / 4096; // four clusters, written by every writer
    constexpr unsigned writers = 3;
    std::vector<std::vector<std::vector<uint8_t>>> history(slots); // every version acknowledged, per slot
    std::vector<std::vector<uint8_t>> last(slots, std::vector<uint8_t>(4096, 0));
    std::mutex mutex;
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (unsigned w = 0; w < writers; ++w) {
        threads.emplace_back([&, w] {
            for (unsigned i = 0; i < 200 && !failed; ++i) {
                uint64_t slot = (uint64_t(i) * 7919 + w * 104729) % (slots / writers) * writers + w;
                auto data = random_bytes(4096, 1000 + w * 1000 + i);
                if (io.write(d, 60 * MiB + slot * 4096, data) != 0) {
                    failed = true;
                }
                std::lock_guard lock(mutex);
                history[slot].push_back(data);
                last[slot] = data;
            }
        });
    }
    std::vector<std::string> snaps;
    for (unsigned k = 0; k < 8; ++k) {
        std::this_thread::sleep_for(2ms);
        snaps.push_back("space@r" + std::to_string(k));
        auto taken = v->thin_snapshot(thin_device_name, snaps.back());
        ASSERT_TRUE(taken) << taken.error().message;
    }
    for (auto& t : threads) {
        t.join();
    }
    ASSERT_FALSE(failed);
    auto all = read(d, 60 * MiB, slots * 4096);
    for (uint64_t s = 0; s < slots; ++s) {
        ASSERT_TRUE(std::equal(last[s].begin(), last[s].end(), all.begin() + s * 4096))
            << "slot " << s << ": the space lost an acknowledged write";
    }
    std::vector<uint8_t> zeros(4096, 0);
    for (const std::string& name : snaps) {
        auto view = v->thin_view(name);
        ASSERT_TRUE(view);
        auto image = read(**view, 60 * MiB, slots * 4096);
        for (uint64_t s = 0; s < slots; ++s) {
            std::vector<uint8_t> block(image.begin() + s * 4096, image.begin() + (s + 1) * 4096);
            bool known =
                block == zeros || std::find(history[s].begin(), history[s].end(), block) != history[s].end();
            ASSERT_TRUE(known) << name << " slot " << s << ": a block that was never written whole";
        }
    }
}

// The first write into a fully written cluster after a snapshot copies nothing on the write (docs/thin.md,
// "Deferred copies"): the space reads the blocks it has not received from the snapshot's cluster, the
// partial 4 KiB blocks at the write's edges are filled from there, the background copier completes the
// copy once the space is idle, and a crash before any commit returns to the committed state.
TEST_F(ThinVolumeTest, TheFirstWriteAfterASnapshotDefersItsCopy) {
    auto slice = [](const std::vector<uint8_t>& from, uint64_t at) {
        return std::vector<uint8_t>(from.begin() + long(at), from.begin() + long(at) + 4096);
    };
    auto v = create(LayoutKind::mirror, 2, 16 * MiB, 256 * MiB);
    ASSERT_TRUE(v);
    auto old_data = random_bytes(2 * MiB, 60);
    auto fresh = random_bytes(6144, 61); // partial 4 KiB blocks at both ends
    auto now = old_data;
    std::copy(fresh.begin(), fresh.end(), now.begin() + 8192 + 512);
    {
        VolumeDevice d(v);
        ASSERT_EQ(io.write(d, 10 * MiB, old_data), 0);
        ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@s"));
        ASSERT_EQ(io.write(d, 10 * MiB + 8192 + 512, fresh), 0);
        ASSERT_EQ(io.write(d, 11 * MiB, slice(now, MiB)),
                  0); // unchanged bytes
        // Right after the writes (the copier waits for the space to be idle), nothing was copied yet.
        // (Two, unless this thread slept for the copier's 20 ms of idleness and more.)
        EXPECT_GE(v->status().deferred_copies, 1u) << "copied on the write";
        EXPECT_LE(v->status().deferred_bytes, 2 * MiB - 3 * 4096);
        EXPECT_EQ(read(d, 10 * MiB, now.size()), now) << "new blocks and old, read through the base";
        auto view = v->thin_view("space@s");
        ASSERT_TRUE(view);
        EXPECT_EQ(read(**view, 10 * MiB, old_data.size()), old_data);
        EXPECT_EQ(v->status().allocated_bytes, 4 * MiB);
    }
    // Kill -9 before any commit: the map that made the copies deferred was never durable.
    drop(v, true);
    v = reopen();
    ASSERT_TRUE(v);
    {
        VolumeDevice d(v);
        EXPECT_EQ(read(d, 10 * MiB, old_data.size()), old_data) << "the committed state: the snapshot's";
        EXPECT_EQ(v->status().deferred_copies, 0u);
        ASSERT_EQ(io.write(d, 10 * MiB + 8192 + 512, fresh), 0);
        ASSERT_EQ(io.write(d, 11 * MiB, slice(now, MiB)), 0);
        // The copier: once the space is idle it completes both copies, in pieces.
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (v->status().deferred_copies != 0 && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(10ms);
        }
        EXPECT_EQ(v->status().deferred_copies, 0u) << "the background copier did not finish";
        EXPECT_EQ(v->status().deferred_bytes, 0u);
        EXPECT_EQ(read(d, 10 * MiB, now.size()), now);
        ASSERT_EQ(io.write(d, 11 * MiB + 4096, slice(now, MiB + 4096)), 0);
        // A flush with a copy pending: the commit completes it first; kill -9 after keeps everything.
        ASSERT_TRUE(v->thin_snapshot(thin_device_name, "space@t"));
        ASSERT_EQ(io.write(d, 10 * MiB + 8192 + 512, fresh), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
        EXPECT_EQ(v->status().deferred_copies, 0u);
    }
    drop(v, true);
    v = reopen();
    ASSERT_TRUE(v);
    VolumeDevice d(v);
    EXPECT_EQ(read(d, 10 * MiB, now.size()), now);
    auto s = v->thin_view("space@s");
    ASSERT_TRUE(s);
    EXPECT_EQ(read(**s, 10 * MiB, old_data.size()), old_data);
    auto t = v->thin_view("space@t");
    ASSERT_TRUE(t);
    EXPECT_EQ(read(**t, 10 * MiB, now.size()), now);
}

} // namespace
} // namespace ispace::volume
