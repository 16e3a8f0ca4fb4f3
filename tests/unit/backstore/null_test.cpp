// The null backstore: zeroes in, nothing kept.
#include "backstore/null/null_device.hpp"
#include "backstore_test_util.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::backstore;
using namespace ispace::backstore::test;

TEST(NullBackstore, ReadsZeroesAndDiscardsWrites) {
    Harness h;
    auto dev = open_spec("null:1T,block=4096");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->kind(), "null");
    EXPECT_EQ(dev->describe(), "null:1T,block=4096");
    EXPECT_EQ(dev->geometry().block_count, (1ull << 40) / 4096);
    std::vector<uint8_t> data(8192, 0xff);
    EXPECT_EQ(h.write(*dev, 1ull << 39, data), 0);
    std::vector<uint8_t> back(8192);
    EXPECT_EQ(h.read(*dev, 1ull << 39, back), 0);
    EXPECT_TRUE(all_zero(back));
    EXPECT_EQ(h.simple(*dev, IoOp::flush), 0);
    EXPECT_EQ(h.simple(*dev, IoOp::unmap, 0, 1 << 20), 0);
    EXPECT_EQ(h.simple(*dev, IoOp::write_zeroes, 0, 1 << 20), 0);
    EXPECT_EQ(h.read(*dev, 1ull << 40, back), -EINVAL);
    auto ext = h.allocation(*dev, 0, 4096);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 1u);
}
