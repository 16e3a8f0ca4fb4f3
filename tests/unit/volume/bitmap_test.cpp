// The write-intent bitmap: marked before the write goes, one metadata write per newly dirtied region
// (shared by the writes that wait for it), cleared lazily and only when allowed, never while a write is
// in flight, and the resync's region lock.
#include "volume/bitmap.hpp"

#include "net/reactor.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <random>
#include <set>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;

// A member set that keeps bitmap blocks in memory; completions can be held back or fail.
class FakeStore {
public:
    explicit FakeStore(net::Reactor& home) : _home(home) {}

    WriteIntentBitmap::BlockWriter writer() {
        return [this](uint64_t block, Buffer data, Function<void(bool)> done) {
            std::lock_guard lock(_mutex);
            ++writes;
            if (hold) {
                auto d = std::make_shared<Function<void(bool)>>(std::move(done));
                _held.push_back([this, block, data, d] { complete(block, data, std::move(*d)); });
                return;
            }
            _home.defer([this, block, data, done = std::move(done)]() mutable {
                complete(block, data, std::move(done));
            });
        };
    }
    void release_held() {
        std::vector<std::function<void()>> held;
        {
            std::lock_guard lock(_mutex);
            held.swap(_held);
            hold = false;
        }
        _home.post([held = std::move(held)]() mutable {
            for (auto& h : held) {
                h();
            }
        });
    }
    std::vector<uint8_t> block(uint64_t b) {
        std::lock_guard lock(_mutex);
        return blocks[b];
    }

    std::atomic<int> writes{0};
    bool hold = false;
    bool fail = false;
    std::map<uint64_t, std::vector<uint8_t>> blocks;

private:
    void complete(uint64_t block, const Buffer& data, Function<void(bool)> done) {
        if (!fail) {
            std::lock_guard lock(_mutex);
            blocks[block].assign(data.data(), data.data() + data.size());
        }
        done(!fail);
    }
    net::Reactor& _home;
    std::mutex _mutex;
    std::vector<std::function<void()>> _held;
};

class BitmapTest : public ::testing::Test {
protected:
    BitmapTest() : group(2), store(group.at(0)) {
        group.start();
        bitmap = std::make_unique<WriteIntentBitmap>(space, region, 4096, group.at(0), store.writer());
    }
    ~BitmapTest() override {
        test::on_reactor(group.at(0), [&] { bitmap.reset(); });
        group.stop();
    }

    // begin_write on reactor 1; returns a future that is ready when the write may go (value: ok).
    std::shared_future<bool> begin(uint64_t first, uint64_t last) {
        auto p = std::make_shared<std::promise<bool>>();
        std::shared_future<bool> f = p->get_future().share();
        net::Reactor& r = group.at(1);
        r.post([this, p, first, last, &r] {
            if (bitmap->begin_write(first, last, &r, [p](bool ok) { p->set_value(ok); })) {
                p->set_value(true);
            }
        });
        return f;
    }
    void end(uint64_t first, uint64_t last) {
        test::on_reactor(group.at(1), [&] { bitmap->end_write(first, last); });
    }
    void sweep(bool allowed) {
        test::on_reactor(group.at(0), [&] { bitmap->sweep(allowed); });
        // Let the flush it scheduled finish.
        ASSERT_TRUE(test::eventually([&] {
            bool idle = false;
            test::on_reactor(group.at(0), [&] { idle = bitmap->idle(); });
            return idle;
        }));
    }

    static constexpr uint64_t region = 1 << 20;
    static constexpr uint64_t space = uint64_t(1) << 30; // 1024 regions
    net::ReactorGroup group;
    FakeStore store;
    std::unique_ptr<WriteIntentBitmap> bitmap;
};

TEST_F(BitmapTest, AWriteWaitsForItsRegionToBeMarkedOnce) {
    store.hold = true;
    auto first = begin(3, 3);
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(first.wait_for(0ms), std::future_status::timeout) << "sent before its region was marked";
    // More writes to the same region share the mark in flight.
    auto second = begin(3, 3);
    auto third = begin(3, 3);
    ASSERT_TRUE(test::eventually([&] { return store.writes.load() == 1; }));
    store.release_held();
    EXPECT_TRUE(first.get());
    EXPECT_TRUE(second.get());
    EXPECT_TRUE(third.get());
    EXPECT_TRUE(bitmap->marked(3));
    EXPECT_EQ(store.block(0)[0], 0x08);
    // Marked: the next write goes at once, with no metadata write.
    auto fourth = begin(3, 3);
    EXPECT_EQ(fourth.wait_for(1s), std::future_status::ready);
    EXPECT_EQ(bitmap->stats().regions_marked, 1u);
    EXPECT_EQ(store.writes.load(), 1);
    for (int i = 0; i < 4; ++i) {
        end(3, 3);
    }
}

TEST_F(BitmapTest, RandomSmallWritesCostOneMetadataWritePerNewRegion) {
    std::mt19937_64 rng(7);
    std::set<uint64_t> touched;
    for (int i = 0; i < 4000; ++i) {
        uint64_t offset = (rng() % (space / 4096)) * 4096;
        uint64_t r = offset / region;
        touched.insert(r);
        ASSERT_TRUE(begin(r, r).get());
        end(r, r);
    }
    auto stats = bitmap->stats();
    EXPECT_EQ(stats.regions_marked, touched.size());
    EXPECT_LE(stats.batches, touched.size());
    EXPECT_LE(uint64_t(store.writes.load()), touched.size());
    EXPECT_EQ(bitmap->marked_count(), touched.size());
}

TEST_F(BitmapTest, AStreamsNextRegionsAreMarkedAheadAndItsWritesDoNotWait) {
    ASSERT_TRUE(begin(0, 0).get());
    end(0, 0);
    int writes = store.writes.load();
    auto ahead = [&](uint64_t last) { test::on_reactor(group.at(1), [&] { bitmap->mark_ahead(last, 16); }); };
    ahead(0);
    ASSERT_TRUE(test::eventually([&] { return bitmap->marked_count() == 17; })) << bitmap->marked_count();
    EXPECT_GT(store.writes.load(), writes);
    writes = store.writes.load();
    // The stream's writes to those regions go at once, and no further mark is written while the middle
    // of the window ahead is marked.
    for (uint64_t r = 1; r <= 8; ++r) {
        auto ready = begin(r, r);
        EXPECT_EQ(ready.wait_for(1s), std::future_status::ready);
        ahead(r);
        end(r, r);
    }
    sweep(false); // nothing scheduled is left behind
    EXPECT_EQ(store.writes.load(), writes);
    EXPECT_EQ(bitmap->marked_count(), 17u);
    // Past the middle: the window's rest is marked, still with no write waiting.
    ahead(9);
    ASSERT_TRUE(test::eventually([&] { return bitmap->marked_count() == 26; })) << bitmap->marked_count();
    EXPECT_EQ(store.block(0)[3], 0x03) << "regions 24 and 25 on the members";
    // Never at or past the end of the space.
    ahead(1023);
    ahead(1020);
    ASSERT_TRUE(test::eventually([&] { return bitmap->marked(1023); }));
    EXPECT_EQ(bitmap->marked_count(), 29u);
    // Regions marked ahead but never written age like written ones and go at the second sweep.
    sweep(true);
    EXPECT_EQ(bitmap->marked_count(), 12u) << "regions 0..16, aged by the sweep before, are cleared";
    sweep(true);
    EXPECT_EQ(bitmap->marked_count(), 0u);
}

TEST_F(BitmapTest, SweepsClearIdleRegionsAfterTwoPassesOnlyWhenAllowed) {
    ASSERT_TRUE(begin(10, 11).get());
    end(10, 11);
    ASSERT_TRUE(begin(900, 900).get());
    end(900, 900);
    // Not allowed (a member is out): however long the regions sit, they stay marked.
    for (int i = 0; i < 5; ++i) {
        sweep(false);
    }
    EXPECT_TRUE(bitmap->marked(10));
    EXPECT_TRUE(bitmap->marked(900));
    sweep(true);
    EXPECT_EQ(bitmap->marked_count(), 0u) << "the disallowed sweeps aged them already";
    EXPECT_EQ(store.block(0)[1], 0x00);
    EXPECT_EQ(bitmap->stats().regions_cleared, 3u);

    // A freshly written region survives one allowed sweep, and goes at the second.
    ASSERT_TRUE(begin(5, 5).get());
    end(5, 5);
    sweep(true);
    EXPECT_TRUE(bitmap->marked(5));
    sweep(true);
    EXPECT_FALSE(bitmap->marked(5));
    EXPECT_EQ(store.block(0)[0], 0x00);
}

TEST_F(BitmapTest, ARegionWithAWriteInFlightIsNeverCleared) {
    ASSERT_TRUE(begin(7, 7).get());
    for (int i = 0; i < 4; ++i) {
        sweep(true);
    }
    EXPECT_TRUE(bitmap->marked(7));
    EXPECT_EQ(store.block(0)[0], 0x80);
    end(7, 7);
    sweep(true);
    sweep(true);
    EXPECT_FALSE(bitmap->marked(7));
    // Marked again by the next write, and the member's block says so before it goes.
    ASSERT_TRUE(begin(7, 7).get());
    EXPECT_EQ(store.block(0)[0], 0x80);
    end(7, 7);
}

TEST_F(BitmapTest, AFailedMarkFailsTheWritesWaitingForIt) {
    store.fail = true;
    EXPECT_FALSE(begin(2, 2).get());
    end(2, 2);
    EXPECT_FALSE(bitmap->marked(2));
    store.fail = false;
    EXPECT_TRUE(begin(2, 2).get());
    end(2, 2);
}

TEST_F(BitmapTest, TheResyncLockWaitsForWritesAndHoldsNewOnesBack) {
    ASSERT_TRUE(begin(4, 4).get()); // in flight
    std::promise<void> locked;
    auto locked_future = locked.get_future();
    test::on_reactor(group.at(0), [&] { bitmap->lock_region(4, [&] { locked.set_value(); }); });
    EXPECT_EQ(locked_future.wait_for(50ms), std::future_status::timeout) << "locked with a write in flight";
    end(4, 4);
    EXPECT_EQ(locked_future.wait_for(5s), std::future_status::ready);
    auto held = begin(4, 5);
    EXPECT_EQ(held.wait_for(50ms), std::future_status::timeout) << "a write went into a locked region";
    test::on_reactor(group.at(0), [&] { bitmap->unlock_region(4); });
    EXPECT_TRUE(held.get());
    end(4, 5);
}

TEST_F(BitmapTest, LoadRestoresTheMembersMarks) {
    std::vector<uint8_t> image(128, 0);
    image[0] = 0x81;
    image[127] = 0x80; // region 1023
    test::on_reactor(group.at(0), [&] { bitmap->load(image); });
    EXPECT_TRUE(bitmap->marked(0));
    EXPECT_TRUE(bitmap->marked(7));
    EXPECT_TRUE(bitmap->marked(1023));
    EXPECT_EQ(bitmap->marked_count(), 3u);
    EXPECT_EQ(bitmap->image(), image);
    // Loaded marks need no metadata write.
    auto w = begin(7, 7);
    EXPECT_EQ(w.wait_for(1s), std::future_status::ready);
    EXPECT_EQ(store.writes.load(), 0);
    end(7, 7);
}

} // namespace
} // namespace ispace::volume
