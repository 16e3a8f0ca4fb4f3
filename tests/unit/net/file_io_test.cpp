// FileIo on io_uring and on the worker-pool fallback: the same results either way.
#include "net/reactor.hpp"
#include "net_test_util.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <memory>
#include <random>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace ispace;
using namespace ispace::net;
using test::run_on;
using test::run_until;

namespace {

class TempFile {
public:
    TempFile() {
        char name[] = "/tmp/ispace-fileio-XXXXXX";
        _fd = ::mkstemp(name);
        EXPECT_GE(_fd, 0);
        _path = name;
    }
    ~TempFile() {
        ::close(_fd);
        ::unlink(_path.c_str());
    }
    int fd() const { return _fd; }
    const std::string& path() const { return _path; }

private:
    int _fd = -1;
    std::string _path;
};

class FileIoTest : public ::testing::TestWithParam<bool> {
protected:
    ReactorOptions options() const {
        ReactorOptions o;
        o.use_io_uring = GetParam();
        o.uring_entries = 8; // small, so bursts exercise the overflow queue
        return o;
    }
    // Submits on the reactor and runs it until done; checks done never runs inside submit().
    int run_io(Reactor& r, FileIo& io) {
        int result = INT32_MIN;
        bool inside_submit = false;
        io.done = [&](int res) {
            EXPECT_FALSE(inside_submit);
            EXPECT_EQ(Reactor::current(), &r);
            result = res;
        };
        run_on(r, [&] {
            inside_submit = true;
            r.submit(io);
            inside_submit = false;
        });
        EXPECT_TRUE(run_until(r, [&] { return result != INT32_MIN; }));
        return result;
    }
};

} // namespace

TEST_P(FileIoTest, UsesTheRequestedEngine) {
    Reactor r(0, options());
    if (GetParam()) {
        EXPECT_TRUE(r.using_io_uring()) << "io_uring is expected to work on this kernel";
    } else {
        EXPECT_FALSE(r.using_io_uring());
    }
}

TEST_P(FileIoTest, WritevThenReadvRoundTrip) {
    Reactor r(0, options());
    TempFile f;
    std::vector<uint8_t> a(4096), b(8192);
    std::mt19937 rng(1);
    for (auto& x : a) {
        x = uint8_t(rng());
    }
    for (auto& x : b) {
        x = uint8_t(rng());
    }
    iovec wiov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
    FileIo w;
    w.op = FileIo::Op::writev;
    w.fd = f.fd();
    w.iov = wiov;
    w.iovcnt = 2;
    w.offset = 4096;
    EXPECT_EQ(run_io(r, w), 12288);

    std::vector<uint8_t> back(12288);
    iovec riov[1] = {{back.data(), back.size()}};
    FileIo rd;
    rd.op = FileIo::Op::readv;
    rd.fd = f.fd();
    rd.iov = riov;
    rd.iovcnt = 1;
    rd.offset = 4096;
    EXPECT_EQ(run_io(r, rd), 12288);
    EXPECT_EQ(std::memcmp(back.data(), a.data(), a.size()), 0);
    EXPECT_EQ(std::memcmp(back.data() + a.size(), b.data(), b.size()), 0);
    EXPECT_EQ(r.stats().file_ios, 2u);
}

TEST_P(FileIoTest, ShortReadAtEndOfFileIsReportedAsIs) {
    Reactor r(0, options());
    TempFile f;
    ASSERT_EQ(::ftruncate(f.fd(), 4096), 0);
    std::vector<uint8_t> buf(8192);
    iovec iov{buf.data(), buf.size()};
    FileIo rd;
    rd.op = FileIo::Op::readv;
    rd.fd = f.fd();
    rd.iov = &iov;
    rd.iovcnt = 1;
    EXPECT_EQ(run_io(r, rd), 4096);
    rd.offset = 4096;
    EXPECT_EQ(run_io(r, rd), 0);
}

TEST_P(FileIoTest, DsyncWriteFsyncAndFdatasync) {
    Reactor r(0, options());
    TempFile f;
    std::vector<uint8_t> buf(4096, 0x5a);
    iovec iov{buf.data(), buf.size()};
    FileIo w;
    w.op = FileIo::Op::writev;
    w.fd = f.fd();
    w.iov = &iov;
    w.iovcnt = 1;
    w.rwf_dsync = true;
    EXPECT_EQ(run_io(r, w), 4096);
    FileIo s;
    s.fd = f.fd();
    s.op = FileIo::Op::fsync;
    EXPECT_EQ(run_io(r, s), 0);
    s.op = FileIo::Op::fdatasync;
    EXPECT_EQ(run_io(r, s), 0);
}

TEST_P(FileIoTest, FallocateExtendsAndPunchesHoles) {
    Reactor r(0, options());
    TempFile f;
    FileIo fa;
    fa.op = FileIo::Op::fallocate;
    fa.fd = f.fd();
    fa.offset = 0;
    fa.length = 1 << 20;
    EXPECT_EQ(run_io(r, fa), 0);
    struct stat st {};
    ASSERT_EQ(::fstat(f.fd(), &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);

    std::vector<uint8_t> data(1 << 20, 0xee);
    ASSERT_EQ(::pwrite(f.fd(), data.data(), data.size(), 0), ssize_t(data.size()));
    fa.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    fa.offset = 65536;
    fa.length = 65536;
    EXPECT_EQ(run_io(r, fa), 0);
    std::vector<uint8_t> back(65536 * 3);
    ASSERT_EQ(::pread(f.fd(), back.data(), back.size(), 0), ssize_t(back.size()));
    for (size_t i = 0; i < back.size(); ++i) {
        uint8_t want = (i >= 65536 && i < 131072) ? 0 : 0xee;
        ASSERT_EQ(back[i], want) << "at " << i;
    }
}

TEST_P(FileIoTest, ErrorsArriveAsNegativeErrno) {
    Reactor r(0, options());
    TempFile f;
    int ro = ::open(f.path().c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(ro, 0);
    std::vector<uint8_t> buf(512);
    iovec iov{buf.data(), buf.size()};
    FileIo w;
    w.op = FileIo::Op::writev;
    w.fd = ro;
    w.iov = &iov;
    w.iovcnt = 1;
    EXPECT_EQ(run_io(r, w), -EBADF);
    ::close(ro);

    FileIo bad;
    bad.op = FileIo::Op::fallocate;
    bad.fd = f.fd();
    bad.mode = FALLOC_FL_PUNCH_HOLE; // without KEEP_SIZE: invalid
    bad.length = 4096;
    EXPECT_EQ(run_io(r, bad), -EOPNOTSUPP);
}

TEST_P(FileIoTest, BurstLargerThanTheRingCompletesInFull) {
    Reactor r(0, options());
    TempFile f;
    constexpr int count = 300;
    constexpr size_t block = 4096;
    std::vector<std::vector<uint8_t>> data(count);
    std::vector<iovec> iovs(count);
    std::vector<FileIo> ios(count);
    int completed = 0;
    bool inside_submit = false;
    for (int i = 0; i < count; ++i) {
        data[i].assign(block, uint8_t(i));
        iovs[i] = {data[i].data(), block};
        ios[i].op = FileIo::Op::writev;
        ios[i].fd = f.fd();
        ios[i].iov = &iovs[i];
        ios[i].iovcnt = 1;
        ios[i].offset = uint64_t(i) * block;
        ios[i].done = [&, i](int res) {
            EXPECT_FALSE(inside_submit);
            EXPECT_EQ(res, int(block)) << "write " << i;
            ++completed;
        };
    }
    run_on(r, [&] {
        inside_submit = true;
        for (auto& io : ios) {
            r.submit(io);
        }
        inside_submit = false;
    });
    ASSERT_TRUE(run_until(r, [&] { return completed == count; }));
    std::vector<uint8_t> back(block);
    for (int i = 0; i < count; ++i) {
        ASSERT_EQ(::pread(f.fd(), back.data(), block, off_t(i) * block), ssize_t(block));
        ASSERT_EQ(back[0], uint8_t(i));
        ASSERT_EQ(back[block - 1], uint8_t(i));
    }
}

TEST_P(FileIoTest, CompletionMaySubmitMoreAndFreeItsFileIo) {
    Reactor r(0, options());
    TempFile f;
    ASSERT_EQ(::ftruncate(f.fd(), 1 << 20), 0);
    std::vector<uint8_t> buf(4096);
    iovec iov{buf.data(), buf.size()};
    int chain = 0;
    std::function<void()> next = [&] {
        auto* io = new FileIo;
        io->op = FileIo::Op::readv;
        io->fd = f.fd();
        io->iov = &iov;
        io->iovcnt = 1;
        io->offset = uint64_t(chain) * 4096;
        io->done = [&, io](int res) {
            delete io; // the reactor moved `done` out before calling it
            EXPECT_EQ(res, 4096);
            if (++chain < 20) {
                next();
            }
        };
        r.submit(*io);
    };
    run_on(r, [&] { next(); });
    ASSERT_TRUE(run_until(r, [&] { return chain == 20; }));
}

TEST_P(FileIoTest, TeardownCompletesEverythingInFlight) {
    TempFile f;
    ASSERT_EQ(::ftruncate(f.fd(), 1 << 20), 0);
    constexpr int count = 64;
    std::vector<std::vector<uint8_t>> bufs(count, std::vector<uint8_t>(4096));
    std::vector<iovec> iovs(count);
    std::vector<FileIo> ios(count);
    int completed = 0;
    {
        Reactor r(0, options());
        run_on(r, [&] {
            for (int i = 0; i < count; ++i) {
                iovs[i] = {bufs[i].data(), 4096};
                ios[i].op = FileIo::Op::readv;
                ios[i].fd = f.fd();
                ios[i].iov = &iovs[i];
                ios[i].iovcnt = 1;
                ios[i].offset = uint64_t(i) * 4096;
                ios[i].done = [&](int res) {
                    EXPECT_TRUE(res == 4096 || res == -ECANCELED) << res;
                    ++completed;
                };
                r.submit(ios[i]);
            }
        });
        // Destroyed with I/O in the ring, in the overflow queue or on the workers.
    }
    EXPECT_EQ(completed, count);
}

INSTANTIATE_TEST_SUITE_P(Engines, FileIoTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "workers"; });
