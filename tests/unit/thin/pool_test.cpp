// The thin pool: allocation on first write, the written-block map, reference counts, snapshots, clones,
// copy on write, UNMAP, a full pool, and what open() reads back after a commit.
#include "thin_test_util.hpp"
#include "volume/thin/pool.hpp"

#include <gtest/gtest.h>

#include <cerrno>

using namespace ispace;
using namespace ispace::volume::thin;
using namespace ispace::volume::thin::testing;

namespace {

constexpr uint32_t cluster = 64 << 10; // 16 blocks of 4 KiB: small enough to fill in tests
constexpr uint32_t blocks = cluster / written_granule;

struct Fixture {
    explicit Fixture(uint64_t clusters, uint64_t pages = 256, unsigned copies = 1)
        : store(pages, copies), data(clusters, blocks), pool_clusters(clusters) {
        auto p = ThinPool::format(store, PoolGeometry{cluster, clusters});
        EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message);
        pool.emplace(std::move(*p));
    }
    ThinPool& operator*() { return *pool; }
    ThinPool* operator->() { return &*pool; }
    void reopen() {
        pool.reset();
        auto p = ThinPool::open(store, pool_clusters);
        ASSERT_TRUE(p.ok()) << p.error().message;
        pool.emplace(std::move(*p));
        ASSERT_TRUE(pool->check().ok()) << pool->check().error().message;
    }
    uint64_t read(uint32_t dev, uint64_t v, uint32_t b) { return read_block(*pool, data, dev, v, b); }
    WritePlan write(uint32_t dev, uint64_t v, uint32_t first, uint32_t count, uint64_t token) {
        auto plan = write_blocks(*pool, data, dev, v, first, count, token);
        EXPECT_TRUE(plan.ok()) << (plan.ok() ? "" : plan.error().message);
        return plan.ok() ? *plan : WritePlan{};
    }

    MemoryMetadataStore store;
    DataArea data;
    uint64_t pool_clusters;
    std::optional<ThinPool> pool;
};

void expect_consistent(ThinPool& pool) {
    auto r = pool.check();
    EXPECT_TRUE(r.ok()) << r.error().message;
}

} // namespace

TEST(ThinPool, FirstWriteAllocatesOneClusterAndRecordsOnlyItsBlocks) {
    Fixture f(8);
    auto dev = f->create_device("vol", 1000); // thin: far more than the pool's 8 clusters
    ASSERT_TRUE(dev.ok());
    EXPECT_EQ(f->stats().allocated_clusters, 0u);
    WritePlan plan = f.write(*dev, 500, 3, 2, 77);
    EXPECT_TRUE(plan.allocated);
    EXPECT_TRUE(plan.metadata_changed);
    EXPECT_EQ(plan.copy_from, no_cluster);
    EXPECT_EQ(f->stats().allocated_clusters, 1u);
    EXPECT_EQ(f.read(*dev, 500, 3), 77u);
    EXPECT_EQ(f.read(*dev, 500, 4), 77u);
    EXPECT_EQ(f.read(*dev, 500, 2), 0u) << "a block never written reads as zeros, whatever the cluster held";
    EXPECT_EQ(f.read(*dev, 499, 3), 0u);
    auto m = f->lookup(*dev, 500);
    ASSERT_TRUE(m.ok() && m->has_value());
    EXPECT_EQ(mask_count((*m)->written), 2u);
    EXPECT_FALSE(f->write(*dev, 1000, 0, 1).ok()) << "beyond the device";
    EXPECT_FALSE(f->write(*dev, 0, 15, 2).ok()) << "beyond the cluster";
    EXPECT_FALSE(f->write(*dev, 0, 0, 0).ok());
    expect_consistent(*f);
}

TEST(ThinPool, OverwriteOfAnOwnedClusterNeedsNoMetadata) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan first = f.write(dev, 1, 0, 16, 1);
    ASSERT_TRUE(f->commit().ok());
    EXPECT_FALSE(f->dirty());
    WritePlan again = f.write(dev, 1, 4, 4, 2);
    EXPECT_EQ(again.physical, first.physical);
    EXPECT_FALSE(again.allocated);
    EXPECT_FALSE(again.metadata_changed) << "written blocks of an unshared cluster: no commit needed";
    EXPECT_FALSE(f->dirty());
    EXPECT_EQ(f.read(dev, 1, 5), 2u);
    EXPECT_EQ(f.read(dev, 1, 8), 1u);
}

TEST(ThinPool, SnapshotSharesAndTheFirstWriteCopiesOnlyWrittenBlocks) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan orig = f.write(dev, 0, 0, 6, 10); // blocks 0-5 written, 6-15 never
    auto snap = f->snapshot(dev, "vol@1");
    ASSERT_TRUE(snap.ok()) << snap.error().message;
    EXPECT_EQ(f->stats().allocated_clusters, 1u) << "a snapshot is metadata only";

    WritePlan cow = f.write(dev, 0, 2, 1, 20);
    EXPECT_TRUE(cow.allocated);
    EXPECT_EQ(cow.copy_from, orig.physical);
    EXPECT_NE(cow.physical, orig.physical);
    EXPECT_EQ(mask_count(cow.copy_blocks), 5u)
        << "blocks 0,1,3,4,5: not the block written, not the 10 unwritten";
    EXPECT_FALSE(mask_test(cow.copy_blocks, 2));
    EXPECT_FALSE(mask_test(cow.copy_blocks, 6));
    EXPECT_EQ(f->stats().allocated_clusters, 2u);
    EXPECT_EQ(f->stats().copied_blocks, 5u);

    EXPECT_EQ(f.read(dev, 0, 2), 20u);
    EXPECT_EQ(f.read(dev, 0, 1), 10u);
    EXPECT_EQ(f.read(*snap, 0, 2), 10u) << "the snapshot keeps the old content";
    EXPECT_EQ(f.read(*snap, 0, 7), 0u);
    // The second write to the now private cluster goes in place.
    WritePlan second = f.write(dev, 0, 3, 1, 30);
    EXPECT_EQ(second.physical, cow.physical);
    EXPECT_EQ(second.copy_from, no_cluster);
    EXPECT_EQ(f->write(*snap, 0, 0, 1).error().code, EROFS);
    EXPECT_EQ(f->unmap(*snap, 0, 0, 1).error().code, EROFS);
    expect_consistent(*f);
}

TEST(ThinPool, ReadsCostTheSameAtAnySnapshotDepth) {
    Fixture f(64, 1024);
    uint32_t dev = *f->create_device("vol", 1000);
    std::vector<uint32_t> snaps;
    for (int depth = 0; depth < 32; ++depth) {
        f.write(dev, 7, 0, 1, 100 + depth);
        snaps.push_back(*f->snapshot(dev, "s" + std::to_string(depth)));
        ASSERT_TRUE(f->commit().ok());
    }
    // Every device has its own tree of the same height: a lookup is one walk, not a chain.
    for (int depth = 0; depth < 32; ++depth) {
        EXPECT_EQ(f.read(snaps[depth], 7, 0), uint64_t(100 + depth));
    }
    EXPECT_EQ(f->stats().allocated_clusters, 32u);
    expect_consistent(*f);
    f.reopen();
    for (int depth = 0; depth < 32; ++depth) {
        EXPECT_EQ(f.read(snaps[depth], 7, 0), uint64_t(100 + depth));
    }
}

TEST(ThinPool, CloneDivergesWithoutTouchingOriginOrSnapshot) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64);
    f.write(dev, 0, 0, 16, 1);
    f.write(dev, 1, 0, 16, 2);
    uint32_t snap = *f->snapshot(dev, "vol@a");
    auto clone = f->clone(snap, "copy");
    ASSERT_TRUE(clone.ok());
    EXPECT_EQ(f.read(*clone, 1, 9), 2u);
    f.write(*clone, 1, 9, 1, 3);
    f.write(dev, 0, 0, 1, 4);
    EXPECT_EQ(f.read(*clone, 1, 9), 3u);
    EXPECT_EQ(f.read(*clone, 0, 0), 1u);
    EXPECT_EQ(f.read(dev, 1, 9), 2u);
    EXPECT_EQ(f.read(dev, 0, 0), 4u);
    EXPECT_EQ(f.read(snap, 0, 0), 1u);
    EXPECT_EQ(f.read(snap, 1, 9), 2u);
    EXPECT_EQ(f->stats().allocated_clusters, 4u);
    expect_consistent(*f);
}

TEST(ThinPool, DeletingASnapshotFreesWhatOnlyItHeldAfterTheCommit) {
    Fixture f(4);
    uint32_t dev = *f->create_device("vol", 64);
    f.write(dev, 0, 0, 16, 1);
    f.write(dev, 1, 0, 16, 2);
    uint32_t snap = *f->snapshot(dev, "vol@a");
    f.write(dev, 0, 0, 1, 3); // cluster 0 copied: the snapshot alone holds the old one
    ASSERT_TRUE(f->commit().ok());
    EXPECT_EQ(f->stats().allocated_clusters, 3u);
    ASSERT_TRUE(f->remove_device(snap).ok());
    EXPECT_EQ(f->stats().allocated_clusters, 2u);
    EXPECT_EQ(f->stats().held_clusters, 3u)
        << "the committed state still maps it: not reusable before a commit";
    EXPECT_EQ(f.read(dev, 0, 0), 3u);
    EXPECT_EQ(f.read(dev, 1, 0), 2u);
    ASSERT_TRUE(f->commit().ok());
    EXPECT_EQ(f->stats().held_clusters, 2u);
    EXPECT_EQ(f->remove_device(snap).error().code, ENOENT);
    expect_consistent(*f);
}

TEST(ThinPool, AFullPoolFailsWithTheSpaceAllocationErrorAndLosesNothing) {
    Fixture f(3);
    uint32_t dev = *f->create_device("vol", 64);
    for (uint64_t v = 0; v < 3; ++v) {
        f.write(dev, v, 0, 16, 10 + v);
    }
    ASSERT_TRUE(f->commit().ok());
    auto full = f->write(dev, 3, 0, 1);
    ASSERT_FALSE(full.ok());
    EXPECT_EQ(full.error().code, ENOSPC);
    EXPECT_NE(full.error().message.find("space allocation failed"), std::string::npos)
        << full.error().message;
    // A copy on write needs a cluster too: refused, and the map stays as it was.
    uint32_t snap = *f->snapshot(dev, "vol@a");
    auto cow = f->write(dev, 0, 0, 1);
    ASSERT_FALSE(cow.ok());
    EXPECT_EQ(cow.error().code, ENOSPC);
    for (uint64_t v = 0; v < 3; ++v) {
        EXPECT_EQ(f.read(dev, v, 5), 10 + v);
        EXPECT_EQ(f.read(snap, v, 5), 10 + v);
    }
    expect_consistent(*f);
    // Freeing space (the snapshot, then a cluster) makes writes possible again after a commit.
    ASSERT_TRUE(f->remove_device(snap).ok());
    ASSERT_TRUE(f->unmap(dev, 2, 0, 16).ok());
    EXPECT_EQ(f->write(dev, 3, 0, 1).error().code, ENOSPC) << "freed, but the committed state maps it";
    ASSERT_TRUE(f->commit().ok());
    f.write(dev, 3, 0, 1, 99);
    EXPECT_EQ(f.read(dev, 3, 0), 99u);
    EXPECT_EQ(f.read(dev, 0, 0), 10u);
    expect_consistent(*f);
}

TEST(ThinPool, UnmapForgetsBlocksAndFreesEmptyClusters) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64);
    f.write(dev, 0, 0, 16, 1);
    auto changed = f->unmap(dev, 0, 0, 4);
    ASSERT_TRUE(changed.ok());
    EXPECT_TRUE(*changed);
    EXPECT_EQ(f.read(dev, 0, 2), 0u);
    EXPECT_EQ(f.read(dev, 0, 4), 1u);
    EXPECT_EQ(f->stats().allocated_clusters, 1u);
    EXPECT_FALSE(*f->unmap(dev, 0, 0, 4)) << "nothing left to forget there";
    EXPECT_FALSE(*f->unmap(dev, 5, 0, 16)) << "never mapped";

    // On a cluster shared with a snapshot, only this device forgets.
    uint32_t snap = *f->snapshot(dev, "s");
    ASSERT_TRUE(*f->unmap(dev, 0, 4, 12));
    EXPECT_EQ(f.read(dev, 0, 5), 0u);
    EXPECT_EQ(f.read(snap, 0, 5), 1u);
    EXPECT_EQ(f->stats().allocated_clusters, 1u) << "the snapshot still holds it";
    auto m = f->lookup(dev, 0);
    EXPECT_FALSE(m->has_value());
    // Writing a block the device forgot, on a cluster the snapshot holds, does not disturb the snapshot.
    f.write(dev, 0, 5, 1, 2);
    EXPECT_EQ(f.read(snap, 0, 5), 1u);
    EXPECT_EQ(f.read(dev, 0, 6), 0u);
    expect_consistent(*f);
}

TEST(ThinPool, RemovalsAndClonesAreCopiedUntilCommitted) {
    // The committed state has D and snapshot S sharing one cluster. In memory D is removed, a clone C of S
    // made and S removed: C is then the only holder of the cluster, but the committed one is S — a write
    // to C in place would change S's data under a crash. It is copied instead.
    Fixture f(8);
    uint32_t d = *f->create_device("d", 64);
    WritePlan base = f.write(d, 0, 0, 16, 1);
    uint32_t s = *f->snapshot(d, "s");
    ASSERT_TRUE(f->commit().ok());
    ASSERT_TRUE(f->remove_device(d).ok());
    uint32_t c = *f->clone(s, "c");
    ASSERT_TRUE(f->remove_device(s).ok());
    WritePlan w = f.write(c, 0, 0, 1, 2);
    EXPECT_EQ(w.copy_from, base.physical);
    EXPECT_NE(w.physical, base.physical);
    // A crash now: S and D come back with their data.
    f.reopen();
    EXPECT_EQ(f.read(s, 0, 0), 1u);
    EXPECT_EQ(f.read(d, 0, 0), 1u);
    EXPECT_FALSE(f->find_device("c").has_value());
}

TEST(ThinPool, RevertUndoesAWriteWhoseCopyFailed) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan base = f.write(dev, 0, 0, 16, 1);
    uint32_t snap = *f->snapshot(dev, "s");
    auto plan = f->write(dev, 0, 0, 1);
    ASSERT_TRUE(plan.ok());
    ASSERT_TRUE(f->revert_write(dev, 0, *plan).ok());
    auto m = f->lookup(dev, 0);
    EXPECT_EQ((*m)->physical, base.physical);
    EXPECT_EQ(f->stats().allocated_clusters, 1u);
    auto fresh = f->write(dev, 9, 2, 1);
    ASSERT_TRUE(f->revert_write(dev, 9, *fresh).ok());
    EXPECT_FALSE(f->lookup(dev, 9)->has_value());
    EXPECT_EQ(f.read(snap, 0, 0), 1u);
    expect_consistent(*f);
}

TEST(ThinPool, CommitAndOpenGiveBackTheSameState) {
    Fixture f(32);
    uint32_t a = *f->create_device("a", 20000); // two interior levels above the leaves
    uint32_t b = *f->create_device("b", 10);
    f.write(a, 19999, 15, 1, 1);
    f.write(a, 64, 0, 16, 2);
    f.write(b, 9, 3, 3, 3);
    uint32_t s = *f->snapshot(a, "a@1");
    f.write(a, 64, 1, 1, 4);
    ASSERT_TRUE(f->commit().ok());
    PoolStats before = f->stats();
    f.reopen();
    EXPECT_FALSE(f->dirty()) << "nothing to commit after an open";
    EXPECT_EQ(f->stats().allocated_clusters, before.allocated_clusters);
    EXPECT_EQ(f->stats().sequence, before.sequence);
    EXPECT_EQ(f->stats().metadata_pages_used, before.metadata_pages_used);
    EXPECT_EQ(f.read(a, 19999, 15), 1u);
    EXPECT_EQ(f.read(a, 64, 1), 4u);
    EXPECT_EQ(f.read(s, 64, 1), 2u);
    EXPECT_EQ(f.read(b, 9, 4), 3u);
    auto devs = f->devices();
    ASSERT_EQ(devs.size(), 3u);
    EXPECT_TRUE(devs[2].read_only);
    EXPECT_EQ(devs[2].origin, a);
    EXPECT_EQ(devs[0].mapped_clusters, 2u);
    // The reopened pool goes on: a snapshot's cluster is still shared after the reopen.
    WritePlan w = f.write(a, 19999, 0, 1, 5);
    EXPECT_TRUE(w.copy_from != no_cluster) << "shared with the snapshot: copied";
    ASSERT_TRUE(f->commit().ok());
    f.reopen();
    EXPECT_EQ(f.read(a, 19999, 0), 5u);
    EXPECT_EQ(f.read(s, 19999, 0), 0u);
}

TEST(ThinPool, EveryMetadataPageIsReusedOnlyOnceUnreachable) {
    // Many commits in a small metadata area: the pages of old states are recycled, never those of the
    // last committed state, and the area does not leak.
    Fixture f(16, 24);
    uint32_t dev = *f->create_device("vol", 2000);
    for (int i = 0; i < 200; ++i) {
        f.write(dev, uint64_t(i * 37) % 2000 % 16 * 64, uint32_t(i % 16), 1, uint64_t(i + 1));
        ASSERT_TRUE(f->commit().ok()) << i;
        expect_consistent(*f);
    }
    EXPECT_LT(f->stats().metadata_pages_used, 24u);
    f.reopen();
}

TEST(ThinPool, AFullMetadataAreaRefusesTheCommitAndKeepsTheState) {
    Fixture f(64, 6);
    uint32_t dev = *f->create_device("vol", 64 * 64);
    Result<void> r;
    int i = 0;
    for (; i < 64 && r.ok(); ++i) {
        f.write(dev, uint64_t(i) * 64, 0, 1, uint64_t(i + 1)); // a new leaf each time
        r = f->commit();
    }
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ENOSPC);
    expect_consistent(*f);
    EXPECT_EQ(f.read(dev, uint64_t(i - 1) * 64, 0), uint64_t(i)) << "the write stays in memory";
    f.reopen();
    EXPECT_EQ(f.read(dev, 0, 0), 1u) << "the committed state is intact";
}

TEST(ThinPool, AMirroredMetadataPageIsReadFromTheGoodCopy) {
    Fixture f(8, 64, 2);
    uint32_t dev = *f->create_device("vol", 64);
    f.write(dev, 3, 0, 1, 42);
    ASSERT_TRUE(f->commit().ok());
    // Damage every page of copy 0, superblocks included: the other copy serves them.
    for (uint64_t p = 0; p < 64; ++p) {
        f.store.corrupt(p, 0, 100);
    }
    f.reopen();
    EXPECT_EQ(f.read(dev, 3, 0), 42u);
    for (uint64_t p = 0; p < 64; ++p) {
        f.store.corrupt(p, 1, 100);
    }
    auto broken = ThinPool::open(f.store, 8);
    ASSERT_FALSE(broken.ok());
    EXPECT_EQ(broken.error().code, EILSEQ);
}

TEST(ThinPool, ASnapshotCommitsTwoPagesWhateverTheMapHolds) {
    Fixture f(4096, 1024);
    uint32_t dev = *f->create_device("vol", 20000); // a root, interior nodes and leaves: height 3
    for (uint64_t v = 0; v < 20000; v += 7) {
        ASSERT_TRUE(f->write(dev, v, 0, 1).ok());
    }
    ASSERT_TRUE(f->commit().ok());
    long before = f.store.writes();
    uint32_t snap = *f->snapshot(dev, "vol@1");
    ASSERT_TRUE(f->commit().ok());
    EXPECT_EQ(f.store.writes() - before, 2) << "the device table and the superblock: the tree is shared";
    // The first write after it copies one path of the tree (3 nodes), not the map.
    before = f.store.writes();
    WritePlan w = f.write(dev, 700, 0, 1, 1);
    EXPECT_NE(w.copy_from, no_cluster);
    ASSERT_TRUE(f->commit().ok());
    EXPECT_EQ(f.store.writes() - before, 3 + 2);
    EXPECT_EQ(f->devices()[1].mapped_clusters, f->devices()[0].mapped_clusters);
    (void)snap;
    expect_consistent(*f);
}

TEST(ThinPool, ADeviceGrowsUnderItsSnapshots) {
    Fixture f(8);
    uint32_t dev = *f->create_device("vol", 64); // one leaf
    f.write(dev, 10, 0, 16, 1);
    uint32_t snap = *f->snapshot(dev, "vol@1");
    ASSERT_TRUE(f->commit().ok());
    ASSERT_TRUE(f->resize_device(dev, 20000).ok()); // two levels more
    EXPECT_EQ(f->resize_device(dev, 100).error().code, EINVAL) << "never smaller";
    EXPECT_EQ(f.read(dev, 10, 3), 1u);
    WritePlan w = f.write(dev, 10, 3, 1, 2);
    EXPECT_NE(w.copy_from, no_cluster) << "still shared with the snapshot below the new roots";
    f.write(dev, 19999, 0, 1, 3);
    expect_consistent(*f);
    ASSERT_TRUE(f->commit().ok());
    f.reopen();
    EXPECT_EQ(f.read(dev, 10, 3), 2u);
    EXPECT_EQ(f.read(dev, 19999, 0), 3u);
    EXPECT_EQ(f.read(snap, 10, 3), 1u);
    EXPECT_EQ(f->devices()[0].virtual_clusters, 20000u);
    EXPECT_EQ(f->devices()[1].virtual_clusters, 64u);
}

TEST(ThinPool, AFullPoolTakesWritesAgainOnceItGrows) {
    Fixture f(3);
    uint32_t dev = *f->create_device("vol", 64);
    for (uint64_t v = 0; v < 3; ++v) {
        f.write(dev, v, 0, 1, v + 1);
    }
    EXPECT_EQ(f->write(dev, 3, 0, 1).error().code, ENOSPC);
    ASSERT_TRUE(f->grow_pool(5).ok());
    EXPECT_EQ(f->grow_pool(4).error().code, EINVAL);
    f.data.tokens.resize(5 * blocks, 0);
    f.write(dev, 3, 0, 1, 4);
    f.write(dev, 4, 0, 1, 5);
    EXPECT_EQ(f->write(dev, 5, 0, 1).error().code, ENOSPC);
    ASSERT_TRUE(f->commit().ok());
    EXPECT_FALSE(ThinPool::open(f.store, 3).ok()) << "the members must now hold 5 clusters";
    f.pool_clusters = 5;
    f.reopen();
    EXPECT_EQ(f->stats().allocated_clusters, 5u);
    EXPECT_EQ(f.read(dev, 4, 0), 5u);
    EXPECT_EQ(f.read(dev, 0, 0), 1u);
}

TEST(ThinPool, OpenRefusesAPoolLargerThanTheMembers) {
    Fixture f(8);
    auto r = ThinPool::open(f.store, 7);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, EILSEQ);
    EXPECT_TRUE(ThinPool::open(f.store, 8).ok());
}

TEST(ThinPool, NamesAndLimits) {
    Fixture f(8);
    EXPECT_EQ(f->create_device("", 10).error().code, EINVAL);
    EXPECT_EQ(f->create_device(std::string(56, 'x'), 10).error().code, EINVAL);
    EXPECT_EQ(f->create_device("x", 0).error().code, EINVAL);
    ASSERT_TRUE(f->create_device("x", 10).ok());
    EXPECT_EQ(f->create_device("x", 10).error().code, EEXIST);
    EXPECT_EQ(f->snapshot(99, "y").error().code, ENOENT);
    for (uint32_t i = 1; i < max_devices; ++i) {
        ASSERT_TRUE(f->create_device("d" + std::to_string(i), 10).ok());
    }
    EXPECT_EQ(f->create_device("one-more", 10).error().code, ENOSPC);
    ASSERT_TRUE(f->commit().ok());
    f.reopen();
    EXPECT_EQ(f->devices().size(), max_devices);
}

// Deferred copies (docs/thin.md, "Deferred copies"): the first write to a shared cluster copies nothing;
// the new cluster reads the blocks it has not received from the shared one until the data path copies them.
TEST(ThinPool, TheFirstWriteAfterASnapshotDefersTheCopy) {
    Fixture f(8);
    f->set_deferred_limit(4);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan orig = f.write(dev, 0, 0, blocks, 10); // the whole cluster written
    uint32_t snap = *f->snapshot(dev, "vol@1");
    WritePlan w = f.write(dev, 0, 3, 1, 20);
    EXPECT_TRUE(w.deferred);
    EXPECT_TRUE(w.allocated);
    EXPECT_EQ(w.base, orig.physical);
    EXPECT_TRUE(mask_empty(w.copy_blocks)) << "nothing is copied on the write";
    EXPECT_EQ(f->stats().copied_blocks, 0u);
    EXPECT_EQ(f->stats().deferred_copies, 1u);
    EXPECT_EQ(f->stats().deferred_blocks, blocks - 1);
    auto m = f->lookup(dev, 0);
    ASSERT_TRUE(m.ok() && m->has_value());
    EXPECT_EQ((*m)->physical, w.physical);
    EXPECT_EQ((*m)->base, orig.physical);
    EXPECT_FALSE(mask_test((*m)->pending, 3));
    EXPECT_TRUE(mask_test((*m)->pending, 4));
    EXPECT_EQ(f.read(dev, 0, 3), 20u);
    EXPECT_EQ(f.read(dev, 0, 4), 10u) << "read through the base";
    EXPECT_EQ(f.read(snap, 0, 3), 10u);
    EXPECT_EQ(f->stats().allocated_clusters, 2u);
    expect_consistent(*f);
    EXPECT_EQ(f->commit().error().code, EBUSY) << "a commit never depends on a pending copy";

    // A write to the new (private) cluster takes its blocks out of the record: no copy for them later.
    WritePlan again = f.write(dev, 0, 5, 2, 30);
    EXPECT_EQ(again.physical, w.physical);
    EXPECT_FALSE(again.allocated);
    EXPECT_EQ(again.base, orig.physical) << "the edges of the write fill from the base";
    EXPECT_TRUE(mask_test(again.base_blocks, 5) && mask_test(again.base_blocks, 6));
    EXPECT_EQ(f->stats().deferred_blocks, blocks - 3);
    EXPECT_EQ(f.read(dev, 0, 5), 30u);

    // The copier, in two pieces; the base keeps its reference until the record is done.
    complete_deferred(*f, f.data, w.physical, 4);
    EXPECT_EQ(f->stats().deferred_blocks, blocks - 7);
    expect_consistent(*f);
    complete_deferred(*f, f.data);
    EXPECT_EQ(f->deferred_count(), 0u);
    expect_consistent(*f);
    for (uint32_t b = 0; b < blocks; ++b) {
        uint64_t want = b == 3 ? 20 : (b == 5 || b == 6) ? 30 : 10;
        EXPECT_EQ(f.read(dev, 0, b), want) << b;
        EXPECT_EQ(f.read(snap, 0, b), 10u) << b;
    }
    ASSERT_TRUE(f->commit().ok());
    f.reopen();
    EXPECT_EQ(f.read(dev, 0, 4), 10u);
    EXPECT_EQ(f.read(dev, 0, 3), 20u);
    EXPECT_EQ(f.read(snap, 0, 3), 10u);
}

// A snapshot of a cluster whose copy is pending shares the record (it is the physical cluster's); the next
// write there completes that copy first rather than chaining a second base.
TEST(ThinPool, ASnapshotOfADeferredClusterCompletesItBeforeCopyingIt) {
    Fixture f(8);
    f->set_deferred_limit(4);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan orig = f.write(dev, 0, 0, blocks, 10);
    uint32_t s1 = *f->snapshot(dev, "vol@1");
    WritePlan w = f.write(dev, 0, 3, 1, 20);
    ASSERT_TRUE(w.deferred);
    uint32_t s2 = *f->snapshot(dev, "vol@2");
    EXPECT_EQ(f.read(s2, 0, 0), 10u) << "the second snapshot reads the pending blocks through the base";
    EXPECT_EQ(f.read(s2, 0, 3), 20u);
    EXPECT_EQ(f->write(dev, 0, 7, 1).error().code, EAGAIN) << "complete the pending copy first";
    WritePlan next = f.write(dev, 0, 7, 1, 40); // the helper completes, then writes
    EXPECT_TRUE(next.deferred);
    EXPECT_EQ(next.base, w.physical) << "based on the completed cluster, not on the first base";
    expect_consistent(*f);
    EXPECT_EQ(f.read(dev, 0, 7), 40u);
    EXPECT_EQ(f.read(dev, 0, 3), 20u);
    EXPECT_EQ(f.read(dev, 0, 0), 10u);
    EXPECT_EQ(f.read(s2, 0, 7), 10u);
    EXPECT_EQ(f.read(s1, 0, 3), 10u);
    EXPECT_NE(next.physical, orig.physical);
}

// A record dies with its cluster (UNMAP of everything, a removed device) and gives its base back; a write
// the data path could not carry out is reverted with its record.
TEST(ThinPool, ADeferredCopyGoesWithItsClusterOrItsRevertedWrite) {
    Fixture f(8);
    f->set_deferred_limit(4);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan orig = f.write(dev, 0, 0, blocks, 10);
    f.write(dev, 1, 0, blocks, 11);
    uint32_t snap = *f->snapshot(dev, "vol@1");
    WritePlan w = f.write(dev, 0, 0, 1, 20);
    ASSERT_TRUE(w.deferred);
    EXPECT_EQ(f->devices()[1].unique_clusters, 1u)
        << "the snapshot's cluster is its own: the record's reference on it is not a device's";
    ASSERT_TRUE(f->unmap(dev, 0, 0, blocks).ok());
    EXPECT_EQ(f->deferred_count(), 0u);
    EXPECT_EQ(f->stats().allocated_clusters, 2u);
    expect_consistent(*f);

    auto plan = f->write(dev, 1, 2, 1);
    ASSERT_TRUE(plan.ok() && plan->deferred);
    ASSERT_TRUE(f->revert_write(dev, 1, *plan).ok());
    EXPECT_EQ(f->deferred_count(), 0u);
    expect_consistent(*f);
    EXPECT_EQ(f.read(dev, 1, 2), 11u);

    f.write(dev, 1, 2, 1, 21);
    EXPECT_EQ(f->deferred_count(), 1u);
    ASSERT_TRUE(f->remove_device(snap).ok());
    EXPECT_EQ(f->deferred_count(), 1u) << "the base is held by the record, not by the snapshot";
    expect_consistent(*f);
    ASSERT_TRUE(f->remove_device(dev).ok());
    EXPECT_EQ(f->deferred_count(), 0u);
    EXPECT_EQ(f->stats().allocated_clusters, 0u);
    expect_consistent(*f);
    ASSERT_TRUE(f->commit().ok());
    EXPECT_NE(orig.physical, no_cluster);
}

// The table is bounded: past its limit a write copies at once, as without deferral; a base whose record is
// finished is not handed out again before the next commit (reads planned before may still use it).
TEST(ThinPool, AFullTableCopiesAtOnceAndAFinishedBaseWaitsForACommit) {
    Fixture f(8);
    f->set_deferred_limit(1);
    uint32_t dev = *f->create_device("vol", 64);
    f.write(dev, 0, 0, blocks, 10);
    WritePlan second = f.write(dev, 1, 0, blocks, 11);
    uint32_t snap = *f->snapshot(dev, "vol@1");
    ASSERT_TRUE(f->commit().ok());
    EXPECT_TRUE(f.write(dev, 0, 0, 1, 20).deferred);
    WritePlan copied = f.write(dev, 1, 0, 1, 21);
    EXPECT_FALSE(copied.deferred);
    EXPECT_EQ(mask_count(copied.copy_blocks), blocks - 1) << "the table is full: copied on the write";
    EXPECT_EQ(f.read(dev, 1, 5), 11u);
    expect_consistent(*f);
    // The snapshot goes and its commit would free cluster 1's copy source... but the record still holds 0's.
    complete_deferred(*f, f.data);
    ASSERT_TRUE(f->remove_device(snap).ok());
    ASSERT_TRUE(f->commit().ok());
    // Now the finished bases are free; allocations take them again.
    EXPECT_EQ(f->stats().allocated_clusters, 2u);
    EXPECT_NE(second.physical, no_cluster);
    expect_consistent(*f);
}

// A record's base freed by the copier before any commit knows of it stays out of reach until a commit.
TEST(ThinPool, ABaseFreedByACopyIsNotReusedBeforeACommit) {
    Fixture f(3);
    f->set_deferred_limit(2);
    uint32_t dev = *f->create_device("vol", 64);
    WritePlan orig = f.write(dev, 0, 0, blocks, 10);
    uint32_t snap = *f->snapshot(dev, "vol@1"); // not committed: nothing durable maps the cluster
    WritePlan w = f.write(dev, 0, 0, 1, 20);
    ASSERT_TRUE(w.deferred);
    ASSERT_TRUE(f->remove_device(snap).ok());
    complete_deferred(*f, f.data); // the base's last reference goes
    EXPECT_EQ(f->stats().allocated_clusters, 1u);
    WritePlan other = f.write(dev, 1, 0, 1, 30);
    EXPECT_NE(other.physical, orig.physical) << "a read planned before may still read the old base";
    EXPECT_EQ(f->write(dev, 2, 0, 1).error().code, ENOSPC) << "three clusters: one held back until a commit";
    ASSERT_TRUE(f->commit().ok());
    WritePlan after = f.write(dev, 2, 0, 1, 40);
    EXPECT_EQ(after.physical, orig.physical);
    expect_consistent(*f);
}
