// The memory backstore: a lazily allocated, thin RAM disk shared by several reactors.
#include "backstore/memory/memory_device.hpp"
#include "backstore_test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

using namespace ispace;
using namespace ispace::backstore;
using namespace ispace::backstore::test;

namespace {
constexpr uint64_t MiB = uint64_t(1) << 20;
} // namespace

TEST(MemoryBackstore, OpensFromASpec) {
    auto dev = open_spec("memory:1G,block=4096");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->kind(), "memory");
    EXPECT_EQ(dev->describe(), "memory:1G,block=4096");
    EXPECT_EQ(dev->geometry().block_size, 4096u);
    EXPECT_EQ(dev->geometry().block_count, (1ull << 30) / 4096);
    Features f = dev->features();
    EXPECT_TRUE(f.thin && f.unmap && f.write_zeroes && f.allocation_status);
    EXPECT_FALSE(f.read_only || f.volatile_cache);
    auto other = open_spec("memory:1G");
    EXPECT_NE(dev->identity(), other->identity());
    EXPECT_EQ(other->describe(), "memory:1G");
}

TEST(MemoryBackstore, CostsNothingUntilWritten) {
    Harness h;
    MemoryDevice dev(1ull << 30, 512);
    EXPECT_EQ(dev.allocated_bytes(), 0u);
    std::vector<uint8_t> back(1 * MiB);
    ASSERT_EQ(h.read(dev, 512 * MiB, back), 0);
    EXPECT_TRUE(all_zero(back));
    EXPECT_EQ(dev.allocated_bytes(), 0u); // reading does not allocate

    std::vector<uint8_t> data(4096, 0x5a);
    ASSERT_EQ(h.write(dev, 3 * MiB + 8192, data), 0);
    EXPECT_EQ(dev.allocated_bytes(), MemoryDevice::chunk_size);
    // A write across a chunk boundary allocates both chunks.
    ASSERT_EQ(h.write(dev, 10 * MiB - 2048, data), 0);
    EXPECT_EQ(dev.allocated_bytes(), 3 * MemoryDevice::chunk_size);

    auto ext = h.allocation(dev, 0, 12 * MiB);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 5u);
    EXPECT_FALSE((*ext)[0].mapped);
    EXPECT_EQ((*ext)[0].length, 3 * MiB);
    EXPECT_TRUE((*ext)[1].mapped);
    EXPECT_EQ((*ext)[1].offset, 3 * MiB);
    EXPECT_EQ((*ext)[1].length, 1 * MiB);
    EXPECT_FALSE((*ext)[2].mapped);
    EXPECT_EQ((*ext)[3].offset, 9 * MiB);
    EXPECT_EQ((*ext)[3].length, 2 * MiB);
    EXPECT_TRUE((*ext)[3].mapped);
    EXPECT_FALSE((*ext)[4].mapped);
    EXPECT_EQ((*ext)[4].offset + (*ext)[4].length, 12 * MiB);
}

TEST(MemoryBackstore, RandomWritesReadBack) {
    Harness h;
    MemoryDevice dev(8 * MiB, 512);
    h.random_round_trip(dev, 8 * MiB, 400, 21);
    MemoryDevice dev4k(8 * MiB, 4096);
    h.random_round_trip(dev4k, 8 * MiB, 200, 22, 600); // large writes spanning chunks
}

TEST(MemoryBackstore, UnmapFreesWholeChunksAndZeroesPartOfOne) {
    Harness h;
    MemoryDevice dev(8 * MiB, 512);
    std::vector<uint8_t> data(4 * MiB, 0xab);
    ASSERT_EQ(h.write(dev, 0, data), 0);
    EXPECT_EQ(dev.allocated_bytes(), 4 * MiB);
    // [512 KiB, 2 MiB + 4 KiB): part of chunk 0, all of chunk 1, part of chunk 2.
    ASSERT_EQ(h.simple(dev, IoOp::unmap, 512 * 1024, 3 * MiB / 2 + 4096), 0);
    EXPECT_EQ(dev.allocated_bytes(), 3 * MiB);
    std::vector<uint8_t> back(4 * MiB);
    ASSERT_EQ(h.read(dev, 0, back), 0);
    for (uint64_t i = 0; i < back.size(); ++i) {
        bool zero = i >= 512 * 1024 && i < 2 * MiB + 4096;
        ASSERT_EQ(back[i], zero ? 0 : 0xab) << i;
    }
    auto ext = h.allocation(dev, 0, 4 * MiB);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 3u);
    EXPECT_TRUE((*ext)[0].mapped);
    EXPECT_FALSE((*ext)[1].mapped);
    EXPECT_EQ((*ext)[1].offset, 1 * MiB);
    EXPECT_EQ((*ext)[1].length, 1 * MiB);
    EXPECT_TRUE((*ext)[2].mapped);
}

TEST(MemoryBackstore, WriteZeroesDoesNotAllocate) {
    Harness h;
    MemoryDevice dev(4 * MiB, 512);
    std::vector<uint8_t> data(8192, 0x01);
    ASSERT_EQ(h.write(dev, 0, data), 0);
    ASSERT_EQ(h.simple(dev, IoOp::write_zeroes, 0, 4 * MiB), 0);
    EXPECT_EQ(dev.allocated_bytes(), MemoryDevice::chunk_size);
    std::vector<uint8_t> back(8192);
    ASSERT_EQ(h.read(dev, 0, back), 0);
    EXPECT_TRUE(all_zero(back));
}

TEST(MemoryBackstore, OddSizedLastChunk) {
    Harness h;
    MemoryDevice dev(MiB + 4096, 512);
    std::vector<uint8_t> data(8192, 0x33);
    ASSERT_EQ(h.write(dev, MiB - 4096, data), 0);
    // Chunks are allocated whole, the partial last one too, so that a later grow never outgrows an
    // allocation (calloc maps them lazily: untouched pages cost no RAM).
    EXPECT_EQ(dev.allocated_bytes(), 2 * MiB);
    ASSERT_EQ(h.simple(dev, IoOp::unmap, MiB, 4096), 0); // the whole last chunk
    EXPECT_EQ(dev.allocated_bytes(), MiB);
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(h.read(dev, MiB + 4096, back), -EINVAL); // past the end
}

TEST(MemoryBackstore, FlushFuaAndRangeChecks) {
    Harness h;
    MemoryDevice dev(1 * MiB, 4096);
    std::vector<uint8_t> data(4096, 9);
    EXPECT_EQ(h.write(dev, 0, data, true), 0);
    EXPECT_EQ(h.simple(dev, IoOp::flush), 0);
    std::vector<uint8_t> half(512, 1);
    EXPECT_EQ(h.write(dev, 0, half), -EINVAL); // not a whole 4 KiB block
    EXPECT_EQ(h.write(dev, 1 * MiB, data), -EINVAL);
}

TEST(MemoryBackstore, ReactorsWriteAndUnmapConcurrently) {
    MemoryDevice dev(16 * MiB, 4096);
    net::ReactorGroup group(2);
    group.start();
    constexpr int rounds = 200;
    std::atomic<int> finished{0};
    std::atomic<int> failures{0};
    // Reactor 0 writes chunks 0..7 over and over; reactor 1 writes 8..15 and unmaps 0..7 in between.
    // Afterwards the last write to each of 8..15 must be intact; 0..7 hold a write or zeroes.
    struct Worker {
        std::vector<uint8_t> data;
        iovec iov{};
        IoRequest req;
        int round = 0;
    };
    Worker workers[2];
    std::function<void(unsigned)> step = [&](unsigned w) {
        Worker& wk = workers[w];
        if (wk.round == rounds) {
            ++finished;
            return;
        }
        uint64_t chunk = (w == 0 ? 0 : 8) + uint64_t(wk.round % 8);
        bool unmap = w == 1 && wk.round % 3 == 0;
        wk.req = IoRequest{};
        if (unmap) {
            wk.req.op = IoOp::unmap;
            wk.req.offset = uint64_t(wk.round % 8) * MiB;
            wk.req.length = MiB;
        } else {
            wk.data.assign(MiB, uint8_t(chunk));
            wk.iov = {wk.data.data(), wk.data.size()};
            wk.req.op = IoOp::write;
            wk.req.offset = chunk * MiB;
            wk.req.length = MiB;
            wk.req.iov = &wk.iov;
            wk.req.iovcnt = 1;
        }
        wk.req.done = [&, w](int err) {
            if (err != 0) {
                ++failures;
            }
            ++workers[w].round;
            step(w);
        };
        dev.submit(wk.req);
    };
    group.at(0).post([&] { step(0); });
    group.at(1).post([&] { step(1); });
    while (finished.load() < 2) {
        std::this_thread::yield();
    }
    group.stop();
    group.join();
    EXPECT_EQ(failures.load(), 0);
    Harness h;
    std::vector<uint8_t> back(16 * MiB);
    ASSERT_EQ(h.read(dev, 0, back), 0);
    for (uint64_t c = 0; c < 16; ++c) {
        uint8_t first = back[c * MiB];
        if (c >= 8) {
            EXPECT_EQ(first, uint8_t(c));
        } else {
            EXPECT_TRUE(first == 0 || first == uint8_t(c)) << c;
        }
    }
}

TEST(MemoryBackstore, GrowsAndShrinksKeepingWhatFits) {
    Harness h;
    MemoryDevice dev(2 * MiB, 512);
    struct Observer : DeviceObserver {
        int resized = 0;
        void device_event(DeviceEvent event) override { resized += event == DeviceEvent::resized; }
    } observer;
    dev.subscribe(&observer);
    std::vector<uint8_t> data(8192, 0x5a);
    ASSERT_EQ(h.write(dev, MiB + 4096, data), 0);
    ASSERT_TRUE(dev.resize(8 * MiB));
    EXPECT_EQ(dev.geometry().bytes(), 8 * MiB);
    EXPECT_EQ(observer.resized, 1);
    std::vector<uint8_t> back(8192);
    ASSERT_EQ(h.read(dev, MiB + 4096, back), 0);
    EXPECT_EQ(back, data) << "growing keeps the data";
    ASSERT_EQ(h.write(dev, 7 * MiB, data), 0) << "the new space is writable";
    // Shrink into the middle of the written range: the rest of that chunk reads as zeroes after a regrow.
    ASSERT_TRUE(dev.resize(MiB + 4096 + 4096));
    EXPECT_EQ(h.read(dev, 7 * MiB, back), -EINVAL) << "past the new end";
    EXPECT_EQ(dev.allocated_bytes(), MiB) << "chunks past the end are freed (chunk 7 goes, chunk 1 stays)";
    ASSERT_TRUE(dev.resize(4 * MiB));
    ASSERT_EQ(h.read(dev, MiB + 4096, back), 0);
    EXPECT_TRUE(std::all_of(back.begin(), back.begin() + 4096, [](uint8_t b) { return b == 0x5a; }));
    EXPECT_TRUE(std::all_of(back.begin() + 4096, back.end(), [](uint8_t b) { return b == 0; }))
        << "what a shrink dropped does not come back";
    EXPECT_FALSE(dev.resize(1000)) << "not a whole number of blocks";
    EXPECT_FALSE(dev.resize(0));
    dev.unsubscribe(&observer);
}
