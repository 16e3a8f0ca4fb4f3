// The file backstore, on io_uring and on the worker-pool fallback.
#include "backstore/file/file_device.hpp"
#include "backstore_test_util.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

using namespace ispace;
using namespace ispace::backstore;
using namespace ispace::backstore::test;

namespace {

constexpr uint64_t MiB = uint64_t(1) << 20;
constexpr uint64_t KiB = uint64_t(1) << 10;

struct stat stat_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st;
}

void make_file(const std::string& path, uint64_t size) {
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, off_t(size)), 0);
    ::close(fd);
}

bool contains(const std::string& s, std::string_view part) {
    return s.find(part) != std::string::npos;
}

class FileBackstore : public ::testing::TestWithParam<bool> {
protected:
    Harness h{GetParam()};
    TempDir dir;
};

} // namespace

TEST_P(FileBackstore, CreatesAThickFileWithItsSpaceAllocated) {
    std::string path = dir.file("thick.img");
    auto dev = open_spec(path + ",size=8M");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->kind(), "file");
    EXPECT_EQ(dev->describe(), path);
    EXPECT_EQ(dev->geometry().block_size, 512u);
    EXPECT_EQ(dev->geometry().block_count, 8 * MiB / 512);
    auto st = stat_of(path);
    EXPECT_EQ(uint64_t(st.st_size), 8 * MiB);
    EXPECT_GE(uint64_t(st.st_blocks) * 512, 8 * MiB); // allocated at creation
    Features f = dev->features();
    EXPECT_FALSE(f.thin);
    EXPECT_FALSE(f.unmap);
    EXPECT_FALSE(f.read_only);
    EXPECT_TRUE(f.write_zeroes);
    EXPECT_TRUE(f.volatile_cache);
    EXPECT_FALSE(f.allocation_status);
    auto ext = h.allocation(*dev, 0, 8 * MiB);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 1u);
    EXPECT_TRUE((*ext)[0].mapped);
}

TEST_P(FileBackstore, CreatesAThinFileSparse) {
    std::string path = dir.file("thin.img");
    auto dev = open_spec(path + ",size=64M,thin,block=4096");
    ASSERT_TRUE(dev);
    auto st = stat_of(path);
    EXPECT_EQ(uint64_t(st.st_size), 64 * MiB);
    EXPECT_EQ(st.st_blocks, 0);
    EXPECT_EQ(dev->geometry().block_size, 4096u);
    EXPECT_EQ(dev->geometry().block_count, 64 * MiB / 4096);
    Features f = dev->features();
    EXPECT_TRUE(f.thin);
    EXPECT_TRUE(f.unmap);
    EXPECT_TRUE(f.allocation_status);
}

TEST_P(FileBackstore, MissingFileNeedsASize) {
    std::string path = dir.file("missing.img");
    EXPECT_EQ(open_error(path), path + ": no such file; give size= to create it");
    EXPECT_TRUE(contains(open_error(path + ",size=1M,ro"), "no such file"));
    EXPECT_NE(::access(path.c_str(), F_OK), 0); // nothing was created
}

TEST_P(FileBackstore, ExistingFileSmallerThanSizeIsGrown) {
    std::string path = dir.file("grow.img");
    make_file(path, 1 * MiB);
    auto dev = open_spec(path + ",size=4M,thin,grow");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->geometry().bytes(), 4 * MiB);
    EXPECT_EQ(uint64_t(stat_of(path).st_size), 4 * MiB);
    EXPECT_EQ(stat_of(path).st_blocks, 0); // thin: grown sparse
}

TEST_P(FileBackstore, ThickFileGrownIsAllocated) {
    std::string path = dir.file("grow-thick.img");
    make_file(path, 1 * MiB);
    auto dev = open_spec(path + ",size=4M,grow");
    ASSERT_TRUE(dev);
    auto st = stat_of(path);
    EXPECT_EQ(uint64_t(st.st_size), 4 * MiB);
    EXPECT_GE(uint64_t(st.st_blocks) * 512, 3 * MiB);
}

// size= on an existing file of another size is an error unless grow says so (it grew silently, and a
// typo in size= allocated gigabytes); an empty file is simply given its size.
TEST_P(FileBackstore, ExistingFileIsNotGrownUnlessAsked) {
    std::string path = dir.file("keep.img");
    make_file(path, 1 * MiB);
    std::string e = open_error(path + ",size=64M");
    EXPECT_TRUE(contains(e, path +
                                ": file is 1048576 bytes (1 MiB), smaller than size=67108864 bytes (64 MiB); "
                                "add grow"))
        << e;
    EXPECT_EQ(uint64_t(stat_of(path).st_size), 1 * MiB) << "untouched";
    std::string empty = dir.file("touched.img");
    make_file(empty, 0);
    auto dev = open_spec(empty + ",size=1M,thin");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->geometry().bytes(), 1 * MiB);
}

// Two opens of one backing file: the second is refused while the first holds it (an OFD lock, so
// also within one process), before anything is grown; read-only opens share it.
TEST_P(FileBackstore, ABackingFileServedOnceIsLocked) {
    std::string path = dir.file("locked.img");
    make_file(path, 1 * MiB);
    auto first = open_spec(path);
    ASSERT_TRUE(first);
    std::string e = open_error(path + ",size=2M,grow");
    EXPECT_TRUE(contains(e, path + ": in use: another process serves it")) << e;
    EXPECT_EQ(uint64_t(stat_of(path).st_size), 1 * MiB) << "not grown by the refused open";
    EXPECT_TRUE(contains(open_error(path + ",ro"), "in use")) << "a reader waits for the writer too";
    first.reset();
    auto ro1 = open_spec(path + ",ro");
    ASSERT_TRUE(ro1);
    auto ro2 = open_spec(path + ",ro");
    EXPECT_TRUE(ro2) << "read-only LUNs share the file";
    EXPECT_TRUE(contains(open_error(path), "in use"));
}

TEST_P(FileBackstore, ExistingFileSizeErrors) {
    std::string big = dir.file("big.img");
    make_file(big, 4 * MiB);
    std::string e = open_error(big + ",size=1M");
    EXPECT_TRUE(contains(e, big + ": file is 4194304 bytes (4 MiB), larger than size=1048576 bytes (1 MiB)"))
        << e;
    EXPECT_TRUE(contains(e, "omit size="));
    EXPECT_EQ(uint64_t(stat_of(big).st_size), 4 * MiB); // untouched

    auto whole = open_spec(big); // no size: the file's
    ASSERT_TRUE(whole);
    EXPECT_EQ(whole->geometry().bytes(), 4 * MiB);

    std::string odd = dir.file("odd.img");
    make_file(odd, 1000);
    EXPECT_EQ(open_error(odd), odd + ": file is 1000 bytes, not a multiple of the 512-byte block size");
    std::string odd4k = dir.file("odd4k.img");
    make_file(odd4k, 6144);
    EXPECT_EQ(open_error(odd4k + ",block=4096"),
              odd4k + ": file is 6144 bytes (6 KiB), not a multiple of the 4096-byte block size");

    std::string empty = dir.file("empty.img");
    make_file(empty, 0);
    EXPECT_EQ(open_error(empty), empty + ": file is empty; give size= to set its size");

    EXPECT_EQ(open_error(dir.path()), dir.path() + ": is a directory");

    std::string small_ro = dir.file("small-ro.img");
    make_file(small_ro, 1 * MiB);
    EXPECT_TRUE(contains(open_error(small_ro + ",size=2M,ro"), "ro forbids growing it"));
}

TEST_P(FileBackstore, SizeNotAMultipleOfTheBlockSizeFromAProgrammaticSpec) {
    PathSpec spec;
    spec.path = dir.file("x.img");
    spec.size = 1000;
    auto dev = FileDevice::open(spec);
    ASSERT_FALSE(dev.ok());
    EXPECT_EQ(dev.error().message,
              spec.path + ": size=1000 bytes is not a multiple of the 512-byte block size");
}

TEST_P(FileBackstore, RandomWritesReadBackThick512) {
    auto dev = open_spec(dir.file("rt.img") + ",size=16M");
    ASSERT_TRUE(dev);
    h.random_round_trip(*dev, 16 * MiB, 300, 11);
}

TEST_P(FileBackstore, RandomWritesReadBackThin4096) {
    auto dev = open_spec(dir.file("rt4k.img") + ",size=16M,thin,block=4096");
    ASSERT_TRUE(dev);
    h.random_round_trip(*dev, 16 * MiB, 200, 12, 32);
}

TEST_P(FileBackstore, RandomWritesReadBackDirect) {
    auto spec = builtin_registry().parse(dir.file("direct.img") + ",size=8M,direct");
    ASSERT_TRUE(spec.ok());
    auto dev = (*spec)->open();
    if (!dev.ok() && contains(dev.error().message, "direct I/O")) {
        GTEST_SKIP() << dev.error().message;
    }
    ASSERT_TRUE(dev.ok()) << dev.error().message;
    EXPECT_TRUE((*dev)->features().volatile_cache); // the disk's own cache still needs a flush
    h.random_round_trip(**dev, 8 * MiB, 150, 13);
}

TEST_P(FileBackstore, FlushAndFuaWriteSucceed) {
    auto dev = open_spec(dir.file("flush.img") + ",size=1M");
    ASSERT_TRUE(dev);
    std::mt19937_64 rng(5);
    auto data = random_bytes(8192, rng);
    EXPECT_EQ(h.write(*dev, 4096, data, true), 0);
    EXPECT_EQ(h.simple(*dev, IoOp::flush), 0);
    EXPECT_EQ(h.simple(*dev, IoOp::flush, 0, 4096), 0);
    std::vector<uint8_t> back(8192);
    EXPECT_EQ(h.read(*dev, 4096, back), 0);
    EXPECT_TRUE(back == data);
}

TEST_P(FileBackstore, UnmapPunchesRealHoles) {
    std::string path = dir.file("unmap.img");
    auto dev = open_spec(path + ",size=4M,thin");
    ASSERT_TRUE(dev);
    std::mt19937_64 rng(6);
    auto data = random_bytes(4 * MiB, rng);
    ASSERT_EQ(h.write(*dev, 0, data), 0);
    ASSERT_EQ(h.simple(*dev, IoOp::flush), 0); // so the blocks are really allocated, not delayed
    auto before = stat_of(path).st_blocks;

    ASSERT_EQ(h.simple(*dev, IoOp::unmap, 1 * MiB, 256 * KiB), 0);
    std::vector<uint8_t> back(4 * MiB);
    ASSERT_EQ(h.read(*dev, 0, back), 0);
    for (uint64_t i = 0; i < back.size(); ++i) {
        uint8_t want = (i >= 1 * MiB && i < 1 * MiB + 256 * KiB) ? 0 : data[i];
        ASSERT_EQ(back[i], want) << "at " << i;
    }
    EXPECT_EQ(uint64_t(before - stat_of(path).st_blocks) * 512, 256 * KiB);

    auto ext = h.allocation(*dev, 0, 4 * MiB);
    ASSERT_TRUE(ext.ok()) << ext.error().message;
    ASSERT_EQ(ext->size(), 3u);
    EXPECT_EQ((*ext)[0].offset, 0u);
    EXPECT_EQ((*ext)[0].length, 1 * MiB);
    EXPECT_TRUE((*ext)[0].mapped);
    EXPECT_EQ((*ext)[1].offset, 1 * MiB);
    EXPECT_EQ((*ext)[1].length, 256 * KiB);
    EXPECT_FALSE((*ext)[1].mapped);
    EXPECT_EQ((*ext)[2].offset, 1 * MiB + 256 * KiB);
    EXPECT_EQ((*ext)[2].length, 3 * MiB - 256 * KiB);
    EXPECT_TRUE((*ext)[2].mapped);
}

TEST_P(FileBackstore, AllocationStatusOfASparseFile) {
    auto dev = open_spec(dir.file("alloc.img") + ",size=4M,thin");
    ASSERT_TRUE(dev);
    auto fresh = h.allocation(*dev, 0, 4 * MiB);
    ASSERT_TRUE(fresh.ok());
    ASSERT_EQ(fresh->size(), 1u);
    EXPECT_FALSE((*fresh)[0].mapped);
    EXPECT_EQ((*fresh)[0].length, 4 * MiB);

    std::vector<uint8_t> data(4096, 0x11);
    ASSERT_EQ(h.write(*dev, 2 * MiB, data), 0);
    // A window inside the device: the extents are clipped to it.
    auto ext = h.allocation(*dev, 1 * MiB, 2 * MiB);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 3u);
    EXPECT_EQ((*ext)[0].offset, 1 * MiB);
    EXPECT_EQ((*ext)[0].length, 1 * MiB);
    EXPECT_FALSE((*ext)[0].mapped);
    EXPECT_EQ((*ext)[1].offset, 2 * MiB);
    EXPECT_EQ((*ext)[1].length, 4096u);
    EXPECT_TRUE((*ext)[1].mapped);
    EXPECT_EQ((*ext)[2].offset, 2 * MiB + 4096);
    EXPECT_EQ((*ext)[2].length, 1 * MiB - 4096);
    EXPECT_FALSE((*ext)[2].mapped);
}

TEST_P(FileBackstore, ScanAlignsHolesToWholeBlocks) {
    std::string path = dir.file("scan.img");
    make_file(path, 1 * MiB);
    int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> data(4096, 1);
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), 100 * KiB), ssize_t(data.size()));
    std::vector<Extent> ext;
    // With 64 KiB blocks, the 4 KiB of data at 100 KiB makes the block [64 KiB, 128 KiB) mapped.
    ASSERT_EQ(scan_file_extents(fd, 0, 1 * MiB, 65536, ext), 0);
    ::close(fd);
    ASSERT_EQ(ext.size(), 3u);
    EXPECT_EQ(ext[0].length, 64 * KiB);
    EXPECT_FALSE(ext[0].mapped);
    EXPECT_EQ(ext[1].offset, 64 * KiB);
    EXPECT_EQ(ext[1].length, 64 * KiB);
    EXPECT_TRUE(ext[1].mapped);
    EXPECT_EQ(ext[2].offset, 128 * KiB);
    EXPECT_EQ(ext[2].length, 1 * MiB - 128 * KiB);
    EXPECT_FALSE(ext[2].mapped);
}

TEST_P(FileBackstore, UnmapOnAThickFileIsNotSupported) {
    auto dev = open_spec(dir.file("thick-unmap.img") + ",size=1M");
    ASSERT_TRUE(dev);
    EXPECT_EQ(h.simple(*dev, IoOp::unmap, 0, 4096), -EOPNOTSUPP);
}

TEST_P(FileBackstore, WriteZeroesReadsBackZeroes) {
    int n = 0;
    for (const char* options : {",size=2M", ",size=2M,thin"}) {
        std::string path = dir.file("wz" + std::to_string(n++) + ".img");
        auto dev = open_spec(path + options);
        ASSERT_TRUE(dev);
        std::mt19937_64 rng(7);
        auto data = random_bytes(2 * MiB, rng);
        ASSERT_EQ(h.write(*dev, 0, data), 0);
        ASSERT_EQ(h.simple(*dev, IoOp::write_zeroes, 512 * KiB, 512 * KiB + 512), 0);
        std::vector<uint8_t> back(2 * MiB);
        ASSERT_EQ(h.read(*dev, 0, back), 0);
        for (uint64_t i = 0; i < back.size(); ++i) {
            uint8_t want = (i >= 512 * KiB && i < 1 * MiB + 512) ? 0 : data[i];
            ASSERT_EQ(back[i], want) << options << " at " << i;
        }
    }
}

TEST_P(FileBackstore, FallbacksWhereTheFilesystemLacksZeroRange) {
    // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: write-zeroes must fall back.
    struct statfs fs {};
    if (::statfs("/dev/shm", &fs) != 0 || fs.f_type != 0x01021994 /* TMPFS_MAGIC */) {
        GTEST_SKIP() << "no tmpfs at /dev/shm";
    }
    char name[] = "/dev/shm/ispace-backstore-XXXXXX";
    ASSERT_NE(::mkdtemp(name), nullptr);
    std::string shm = name;
    for (const char* options : {",size=1M", ",size=1M,thin"}) {
        std::string path = shm + "/f.img";
        {
            auto dev = open_spec(path + options);
            ASSERT_TRUE(dev);
            std::vector<uint8_t> ones(1 * MiB, 0xff);
            ASSERT_EQ(h.write(*dev, 0, ones), 0);
            ASSERT_EQ(h.simple(*dev, IoOp::write_zeroes, 4096, 3 * 4096), 0);
            ASSERT_EQ(h.simple(*dev, IoOp::write_zeroes, 8192 * 4, 4096),
                      0); // the second time skips ZERO_RANGE
            if (dev->features().unmap) {
                ASSERT_EQ(h.simple(*dev, IoOp::unmap, 65536, 65536), 0);
            }
            std::vector<uint8_t> back(1 * MiB);
            ASSERT_EQ(h.read(*dev, 0, back), 0);
            for (uint64_t i = 0; i < back.size(); ++i) {
                bool zero = (i >= 4096 && i < 4 * 4096) || (i >= 8192 * 4 && i < 8192 * 4 + 4096) ||
                            (dev->features().unmap && i >= 65536 && i < 131072);
                ASSERT_EQ(back[i], zero ? 0 : 0xff) << options << " at " << i;
            }
        }
        ::unlink(path.c_str());
    }
    ::rmdir(shm.c_str());
}

TEST_P(FileBackstore, ReadOnlyRejectsEveryModification) {
    std::string path = dir.file("ro.img");
    {
        auto rw = open_spec(path + ",size=1M");
        ASSERT_TRUE(rw);
        std::vector<uint8_t> data(4096, 0x42);
        ASSERT_EQ(h.write(*rw, 0, data), 0);
        ASSERT_EQ(h.simple(*rw, IoOp::flush), 0);
    }
    auto dev = open_spec(path + ",ro");
    ASSERT_TRUE(dev);
    EXPECT_TRUE(dev->features().read_only);
    std::vector<uint8_t> data(4096, 0x43);
    EXPECT_EQ(h.write(*dev, 0, data), -EROFS);
    EXPECT_EQ(h.simple(*dev, IoOp::write_zeroes, 0, 4096), -EROFS);
    EXPECT_EQ(h.simple(*dev, IoOp::unmap, 0, 4096), -EROFS);
    EXPECT_EQ(h.simple(*dev, IoOp::flush), 0);
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(h.read(*dev, 0, back), 0);
    EXPECT_EQ(back[0], 0x42);
}

TEST_P(FileBackstore, RequestsOutsideTheDeviceOrMisalignedAreInvalid) {
    auto dev = open_spec(dir.file("range.img") + ",size=1M");
    ASSERT_TRUE(dev);
    std::vector<uint8_t> data(4096, 1);
    EXPECT_EQ(h.write(*dev, 1 * MiB, data), -EINVAL);
    EXPECT_EQ(h.write(*dev, 1 * MiB - 2048, data), -EINVAL);
    EXPECT_EQ(h.write(*dev, 100, data), -EINVAL);
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(h.read(*dev, 2 * MiB, back), -EINVAL);
    EXPECT_EQ(h.simple(*dev, IoOp::write_zeroes, 0, 100), -EINVAL);
    std::vector<uint8_t> none;
    EXPECT_EQ(h.read(*dev, 0, none), 0); // empty is fine
}

TEST_P(FileBackstore, ReadOfAFileShrunkUnderneathContinuesAndZeroFills) {
    std::string path = dir.file("shrunk.img");
    auto dev = open_spec(path + ",size=1M");
    ASSERT_TRUE(dev);
    std::vector<uint8_t> data(1 * MiB, 0x77);
    ASSERT_EQ(h.write(*dev, 0, data), 0);
    ASSERT_EQ(::truncate(path.c_str(), 512 * KiB), 0); // someone shrinks the file behind our back
    std::vector<uint8_t> back(8192);
    ASSERT_EQ(h.read(*dev, 512 * KiB - 4096, back), 0); // a short read, then EOF
    for (size_t i = 0; i < back.size(); ++i) {
        ASSERT_EQ(back[i], i < 4096 ? 0x77 : 0) << i;
    }
}

TEST_P(FileBackstore, IdentityFollowsTheFile) {
    std::string a = dir.file("a.img");
    std::string b = dir.file("b.img");
    uint64_t id_a, id_b;
    {
        auto dev = open_spec(a + ",size=1M");
        ASSERT_TRUE(dev);
        id_a = dev->identity();
    }
    {
        auto dev = open_spec(b + ",size=1M");
        ASSERT_TRUE(dev);
        id_b = dev->identity();
    }
    auto again = open_spec(a);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->identity(), id_a);
    EXPECT_NE(id_a, id_b);
}

TEST_P(FileBackstore, SeveralReactorsShareOneDevice) {
    auto dev = open_spec(dir.file("shared.img") + ",size=8M,thin");
    ASSERT_TRUE(dev);
    net::ReactorOptions options;
    options.use_io_uring = GetParam();
    net::ReactorGroup group(2, options);
    group.start();
    constexpr int per_reactor = 64;
    std::atomic<int> done{0};
    std::atomic<int> failures{0};
    // Reactor i writes blocks i, i+2, i+4 ... of 64 KiB, each filled with its index.
    std::vector<std::vector<uint8_t>> bufs(2 * per_reactor);
    std::vector<iovec> iovs(2 * per_reactor);
    std::vector<IoRequest> reqs(2 * per_reactor);
    for (unsigned r = 0; r < 2; ++r) {
        group.at(r).post([&, r] {
            for (int k = 0; k < per_reactor; ++k) {
                int n = k * 2 + int(r);
                bufs[n].assign(64 * KiB, uint8_t(n));
                iovs[n] = {bufs[n].data(), bufs[n].size()};
                auto& req = reqs[n];
                req.op = IoOp::write;
                req.offset = uint64_t(n) * 64 * KiB;
                req.length = 64 * KiB;
                req.iov = &iovs[n];
                req.iovcnt = 1;
                req.done = [&, r](int err) {
                    if (err != 0 || net::Reactor::current() != &group.at(r)) {
                        ++failures;
                    }
                    ++done;
                };
                dev->submit(req);
            }
        });
    }
    while (done.load() < 2 * per_reactor) {
        std::this_thread::yield();
    }
    group.stop();
    group.join();
    EXPECT_EQ(failures.load(), 0);
    std::vector<uint8_t> back(2 * per_reactor * 64 * KiB);
    ASSERT_EQ(h.read(*dev, 0, back), 0);
    for (int n = 0; n < 2 * per_reactor; ++n) {
        ASSERT_EQ(back[size_t(n) * 64 * KiB], uint8_t(n));
        ASSERT_EQ(back[size_t(n + 1) * 64 * KiB - 1], uint8_t(n));
    }
}

INSTANTIATE_TEST_SUITE_P(Engines, FileBackstore, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "workers"; });
