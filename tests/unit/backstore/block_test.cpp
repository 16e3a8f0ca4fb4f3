// The block backstore, on a loop device over a temporary file (skipped where loop devices cannot be
// made, e.g. unprivileged containers).
#include "backstore/block/block_device.hpp"
#include "backstore_test_util.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fcntl.h>
#include <unistd.h>

using namespace ispace;
using namespace ispace::backstore;
using namespace ispace::backstore::test;

namespace {

constexpr uint64_t MiB = uint64_t(1) << 20;

std::string run_command(const std::string& command) {
    std::string out;
    FILE* p = ::popen((command + " 2>/dev/null").c_str(), "r");
    if (!p) {
        return out;
    }
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) {
        out += buf;
    }
    if (::pclose(p) != 0) {
        return {};
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    return out;
}

// A loop device over a sparse file; detached on destruction.
class LoopDevice {
public:
    LoopDevice(const TempDir& dir, uint64_t size, unsigned sector_size = 512) {
        std::string file = dir.file("backing-" + std::to_string(sector_size) + ".img");
        int fd = ::open(file.c_str(), O_CREAT | O_RDWR, 0644);
        if (fd < 0 || ::ftruncate(fd, off_t(size)) != 0) {
            return;
        }
        ::close(fd);
        _path = run_command("losetup -f --show -b " + std::to_string(sector_size) + " " + file);
        if (_path.rfind("/dev/", 0) != 0) {
            _path.clear();
        }
    }
    ~LoopDevice() {
        if (!_path.empty()) {
            run_command("losetup -d " + _path);
        }
    }
    const std::string& path() const { return _path; }
    explicit operator bool() const { return !_path.empty(); }

private:
    std::string _path;
};

#define REQUIRE_LOOP(loop)                                                                                   \
    if (!(loop)) {                                                                                           \
        GTEST_SKIP() << "cannot create a loop device here (needs root and /dev/loop-control)";               \
    }

bool contains(const std::string& s, std::string_view part) {
    return s.find(part) != std::string::npos;
}

} // namespace

TEST(BlockBackstore, RoundTripOnALoopDevice) {
    TempDir dir;
    LoopDevice loop(dir, 16 * MiB);
    REQUIRE_LOOP(loop);
    Harness h;
    auto dev = open_spec(loop.path());
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->kind(), "block");
    EXPECT_EQ(dev->describe(), loop.path());
    EXPECT_EQ(dev->geometry().block_size, 512u);
    EXPECT_EQ(dev->geometry().bytes(), 16 * MiB);
    EXPECT_FALSE(dev->features().read_only);
    EXPECT_TRUE(dev->features().write_zeroes);
    h.random_round_trip(*dev, 16 * MiB, 200, 31);
    EXPECT_EQ(h.simple(*dev, IoOp::flush), 0);
}

TEST(BlockBackstore, DirectIoAndFourKiBlocks) {
    TempDir dir;
    LoopDevice loop(dir, 8 * MiB);
    REQUIRE_LOOP(loop);
    Harness h(false); // the worker-pool path too
    auto dev = open_spec(loop.path() + ",block=4096,direct");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->geometry().block_size, 4096u);
    EXPECT_EQ(dev->geometry().block_count, 8 * MiB / 4096);
    h.random_round_trip(*dev, 8 * MiB, 100, 32, 16);
}

TEST(BlockBackstore, UnmapAndWriteZeroesReadBackZeroes) {
    TempDir dir;
    LoopDevice loop(dir, 8 * MiB);
    REQUIRE_LOOP(loop);
    Harness h;
    auto dev = open_spec(loop.path());
    ASSERT_TRUE(dev);
    std::vector<uint8_t> data(8 * MiB, 0xc3);
    ASSERT_EQ(h.write(*dev, 0, data), 0);
    ASSERT_EQ(h.simple(*dev, IoOp::write_zeroes, 1 * MiB, 64 * 1024), 0);
    bool unmap = dev->features().unmap;
    if (unmap) {
        EXPECT_TRUE(dev->features().thin);
        ASSERT_EQ(h.simple(*dev, IoOp::unmap, 4 * MiB, 1 * MiB), 0);
    } else {
        EXPECT_EQ(h.simple(*dev, IoOp::unmap, 4 * MiB, 1 * MiB), -EOPNOTSUPP);
    }
    std::vector<uint8_t> back(8 * MiB);
    ASSERT_EQ(h.read(*dev, 0, back), 0);
    for (uint64_t i = 0; i < back.size(); ++i) {
        bool zero = (i >= 1 * MiB && i < 1 * MiB + 64 * 1024) || (unmap && i >= 4 * MiB && i < 5 * MiB);
        ASSERT_EQ(back[i], zero ? 0 : 0xc3) << i;
    }
    auto ext = h.allocation(*dev, 0, 8 * MiB);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 1u); // block devices do not report allocation
    EXPECT_TRUE((*ext)[0].mapped);
}

TEST(BlockBackstore, OpenIsExclusive) {
    TempDir dir;
    LoopDevice loop(dir, 4 * MiB);
    REQUIRE_LOOP(loop);
    auto first = open_spec(loop.path());
    ASSERT_TRUE(first);
    std::string e = open_error(loop.path());
    EXPECT_EQ(e, loop.path() + ": device is in use (mounted, or held by another program)");
}

TEST(BlockBackstore, GeometryErrors) {
    TempDir dir;
    LoopDevice loop(dir, 4 * MiB, 4096);
    REQUIRE_LOOP(loop);
    std::string e = open_error(loop.path());
    EXPECT_TRUE(contains(e, "block=512 does not suit the device's 4096-byte logical block size")) << e;
    EXPECT_TRUE(contains(open_error(loop.path() + ",block=4096,size=8M"), "larger than the device")) << e;
    EXPECT_TRUE(contains(open_error(loop.path() + ",thin"), "thin applies to files"));
    auto part = open_spec(loop.path() + ",block=4096,size=1M");
    ASSERT_TRUE(part);
    EXPECT_EQ(part->geometry().bytes(), 1 * MiB);
}

TEST(BlockBackstore, ReadOnly) {
    TempDir dir;
    LoopDevice loop(dir, 4 * MiB);
    REQUIRE_LOOP(loop);
    Harness h;
    auto dev = open_spec(loop.path() + ",ro");
    ASSERT_TRUE(dev);
    EXPECT_TRUE(dev->features().read_only);
    std::vector<uint8_t> data(4096, 1);
    EXPECT_EQ(h.write(*dev, 0, data), -EROFS);
    EXPECT_EQ(h.simple(*dev, IoOp::write_zeroes, 0, 4096), -EROFS);
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(h.read(*dev, 0, back), 0);
    EXPECT_TRUE(all_zero(back));
}
