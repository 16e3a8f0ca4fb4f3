#include "common/buffer.hpp"
#include "common/bytes.hpp"
#include "common/function.hpp"
#include "common/result.hpp"
#include "common/units.hpp"

#include <gtest/gtest.h>

#include <vector>

#include <cstring>
#include <memory>
#include <thread>

using namespace ispace;

TEST(Bytes, BigEndianRoundTrip) {
    uint8_t b[8];
    store_be16(b, 0x1234);
    EXPECT_EQ(b[0], 0x12);
    EXPECT_EQ(load_be16(b), 0x1234);
    store_be24(b, 0xabcdef);
    EXPECT_EQ(load_be24(b), 0xabcdefu);
    store_be32(b, 0xdeadbeef);
    EXPECT_EQ(b[3], 0xef);
    EXPECT_EQ(load_be32(b), 0xdeadbeefu);
    store_be48(b, 0x0000123456789abcULL);
    EXPECT_EQ(load_be48(b), 0x0000123456789abcULL);
    store_be64(b, 0x0102030405060708ULL);
    EXPECT_EQ(b[0], 1);
    EXPECT_EQ(b[7], 8);
    EXPECT_EQ(load_be64(b), 0x0102030405060708ULL);
    EXPECT_EQ(pad4(0), 0u);
    EXPECT_EQ(pad4(1), 4u);
    EXPECT_EQ(pad4(4), 4u);
    EXPECT_EQ(pad4(5), 8u);
}

TEST(Units, ParseSize) {
    EXPECT_EQ(*parse_size("4096"), 4096u);
    EXPECT_EQ(*parse_size("1G"), 1ull << 30);
    EXPECT_EQ(*parse_size("64M"), 64ull << 20);
    EXPECT_EQ(*parse_size("4k"), 4096u);
    EXPECT_EQ(*parse_size("2GiB"), 2ull << 30);
    EXPECT_EQ(*parse_size("1T"), 1ull << 40);
    EXPECT_EQ(*parse_size("10b"), 10u);
    EXPECT_FALSE(parse_size("").ok());
    EXPECT_FALSE(parse_size("G").ok());
    EXPECT_FALSE(parse_size("12X").ok());
    EXPECT_FALSE(parse_size("1Gx").ok());
    EXPECT_FALSE(parse_size("99999999999999999999").ok());
    EXPECT_FALSE(parse_size("17179869184G").ok()); // 2^64 bytes
    EXPECT_EQ(format_size(1ull << 30), "1 GiB");
    EXPECT_EQ(format_size(1000), "1000 B");
    EXPECT_EQ(format_size(6144), "6 KiB");
}

TEST(Result, ValueAndError) {
    Result<int> good = 5;
    ASSERT_TRUE(good.ok());
    EXPECT_EQ(*good, 5);
    Result<int> bad = make_error("nope", 22);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, 22);
    EXPECT_EQ(bad.error().message, "nope");
    Result<void> v;
    EXPECT_TRUE(v.ok());
    Result<void> e = make_error("x");
    EXPECT_FALSE(e.ok());
}

TEST(Buffer, AlignedSizedAndReused) {
    Buffer::trim_thread_cache();
    auto before = Buffer::thread_stats();
    {
        Buffer b = Buffer::allocate(5000);
        EXPECT_EQ(b.size(), 5000u);
        EXPECT_EQ(b.capacity(), 8192u);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % Buffer::alignment, 0u);
        std::memset(b.data(), 0xab, b.size());
    }
    Buffer again = Buffer::allocate(6000);
    auto after = Buffer::thread_stats();
    EXPECT_EQ(after.allocations - before.allocations, 1u);
    EXPECT_EQ(after.reuses - before.reuses, 1u);
    Buffer zero = Buffer::allocate_zeroed(100);
    for (size_t i = 0; i < zero.size(); ++i) {
        ASSERT_EQ(zero.data()[i], 0);
    }
}

// After a burst the cache gives its blocks back: what no allocation needed between two calls of
// trim_idle_thread_cache() is freed (the probe saw 2 of 2.45 GB stay resident after a burst).
TEST(Buffer, IdleCacheGoesBackToTheSystem) {
    Buffer::trim_thread_cache();
    {
        std::vector<Buffer> burst;
        for (int i = 0; i < 4; ++i) {
            burst.push_back(Buffer::allocate(8 << 20));
        }
    }
    EXPECT_EQ(Buffer::thread_stats().cached_bytes, uint64_t(32) << 20) << "kept for the next burst";
    Buffer::trim_idle_thread_cache(); // starts watching: nothing was idle for a whole interval yet
    Buffer reused = Buffer::allocate(8 << 20);
    EXPECT_EQ(Buffer::trim_idle_thread_cache(), uint64_t(24) << 20)
        << "three blocks sat idle all along; the fourth was taken meanwhile";
    reused.reset();
    EXPECT_GT(Buffer::thread_stats().cached_bytes, 0u);
    Buffer::trim_idle_thread_cache();
    Buffer::trim_idle_thread_cache();
    EXPECT_EQ(Buffer::thread_stats().cached_bytes, 0u) << "an idle cache ends empty";
}

TEST(Buffer, SharedOwnershipAcrossThreads) {
    Buffer b = Buffer::allocate(4096);
    b.data()[0] = 42;
    Buffer copy = b;
    EXPECT_EQ(copy.data(), b.data());
    b.reset();
    EXPECT_EQ(copy.data()[0], 42);
    std::thread t([c = std::move(copy)]() mutable { c.reset(); }); // released on another thread
    t.join();
}

// Memory the Buffer does not own: the owner's hook runs once, when the last reference (a copy, a slice,
// on whichever thread) is dropped, and not before.
TEST(Buffer, WrappedMemoryGoesBackWhenTheLastReferenceDrops) {
    std::vector<uint8_t> memory(8192, 7);
    struct Owner {
        std::atomic<int> released{0};
        uint8_t* at = nullptr;
    } owner;
    Buffer wrapped = Buffer::wrap(
        memory.data(), memory.size(),
        [](void* context, uint8_t* data) {
            auto* o = static_cast<Owner*>(context);
            o->at = data;
            o->released.fetch_add(1);
        },
        &owner);
    EXPECT_EQ(wrapped.data(), memory.data());
    EXPECT_EQ(wrapped.size(), 8192u);
    Buffer copy = wrapped;
    Buffer tail = wrapped.slice(4096, 4096);
    EXPECT_EQ(tail.data(), memory.data() + 4096);
    EXPECT_EQ(tail.size(), 4096u);
    EXPECT_EQ(wrapped.slice(0, 8192).data(), memory.data()) << "all of it is the buffer itself";
    wrapped.reset();
    copy.reset();
    EXPECT_EQ(owner.released.load(), 0) << "the slice still refers to it";
    std::thread t([t2 = std::move(tail)]() mutable { t2.reset(); });
    t.join();
    EXPECT_EQ(owner.released.load(), 1);
    EXPECT_EQ(owner.at, memory.data());
}

TEST(Buffer, ASliceOfAPooledBufferKeepsItAlive) {
    Buffer b = Buffer::allocate(16384);
    std::memset(b.data(), 3, b.size());
    Buffer middle = b.slice(4096, 8192);
    b.reset();
    EXPECT_EQ(middle.size(), 8192u);
    for (size_t i = 0; i < middle.size(); ++i) {
        ASSERT_EQ(middle.data()[i], 3);
    }
}

TEST(Function, InlineHeapAndMoveOnly) {
    int calls = 0;
    Function<void()> small = [&calls] { ++calls; };
    small();
    EXPECT_EQ(calls, 1);

    auto owned = std::make_unique<int>(7);
    Function<int()> move_only = [p = std::move(owned)] { return *p; };
    Function<int()> moved = std::move(move_only);
    EXPECT_FALSE(move_only);
    EXPECT_EQ(moved(), 7);

    char big[200] = {};
    big[199] = 3;
    Function<int(int)> heap = [big](int x) { return big[199] + x; };
    EXPECT_EQ(heap(1), 4);
    Function<int(int)> heap2 = std::move(heap);
    EXPECT_EQ(heap2(2), 5);

    auto counter = std::make_shared<int>(0);
    {
        Function<void()> f = [counter] {};
        EXPECT_EQ(counter.use_count(), 2);
    }
    EXPECT_EQ(counter.use_count(), 1);
}
