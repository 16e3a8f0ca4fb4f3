// DeviceFile: file operations (what the FUSE server receives from the loop device and from users of
// the file) turned into IoRequests, checked against a fake device that records every request and
// completes it when the test says.
#include "attach/device_file.hpp"

#include "ispace/buffer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <linux/falloc.h>
#include <optional>
#include <vector>

namespace ispace::attach {
namespace {

class FakeDevice final : public backstore::Device {
public:
    FakeDevice(uint64_t bytes, uint32_t block_size, backstore::Features features = {})
        : _block_size(block_size), _blocks(bytes / block_size), _features(features) {}

    std::string_view kind() const override { return "fake"; }
    std::string describe() const override { return "fake"; }
    backstore::Geometry geometry() const override { return {_block_size, _blocks}; }
    backstore::Features features() const override { return _features; }
    uint64_t identity() const override { return 1; }
    void submit(backstore::IoRequest& request) override {
        // Snapshot of what was asked; the request itself stays until complete().
        Seen seen{request.op,
                  request.offset,
                  request.length,
                  {},
                  request.iovcnt ? request.iov[0].iov_base : nullptr,
                  request.data.data(),
                  request.data.size()};
        for (unsigned i = 0; i < request.iovcnt; ++i) {
            if (request.op == backstore::IoOp::write) {
                auto* p = static_cast<uint8_t*>(request.iov[i].iov_base);
                seen.data.insert(seen.data.end(), p, p + request.iov[i].iov_len);
            }
        }
        seen_requests.push_back(std::move(seen));
        pending.push_back(&request);
    }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        done(std::vector<backstore::Extent>{{offset, length, true}});
    }
    Result<void> resize(uint64_t bytes) override {
        _blocks = bytes / _block_size;
        return {};
    }

    // Completes the oldest pending request; a read gets bytes whose value is their device offset mod 251.
    void complete_next(int error = 0) {
        ASSERT_FALSE(pending.empty());
        backstore::IoRequest* r = pending.front();
        pending.erase(pending.begin());
        if (error == 0 && r->op == backstore::IoOp::read) {
            uint64_t at = r->offset;
            for (unsigned i = 0; i < r->iovcnt; ++i) {
                auto* p = static_cast<uint8_t*>(r->iov[i].iov_base);
                for (size_t j = 0; j < r->iov[i].iov_len; ++j) {
                    p[j] = uint8_t((at + j) % 251);
                }
                at += r->iov[i].iov_len;
            }
        }
        auto done = std::move(r->done);
        done(error);
    }
    void complete_all() {
        while (!pending.empty()) {
            complete_next();
        }
    }

    struct Seen {
        backstore::IoOp op;
        uint64_t offset;
        uint64_t length;
        std::vector<uint8_t> data; // writes
        void* first_iov;
        uint8_t* buffer_data; // the request's `data` Buffer (writes handed one)
        size_t buffer_size;
    };
    std::vector<Seen> seen_requests;
    std::vector<backstore::IoRequest*> pending;

private:
    uint32_t _block_size;
    uint64_t _blocks;
    backstore::Features _features;
};

backstore::Features thin() {
    backstore::Features f;
    f.thin = true;
    f.unmap = true;
    f.write_zeroes = true;
    return f;
}

struct ReadResult {
    std::optional<int> error;
    std::vector<uint8_t> data;
};

struct DeviceFileTest : ::testing::Test {
    std::shared_ptr<FakeDevice> device = std::make_shared<FakeDevice>(uint64_t(1) << 20, 512, thin());
    DeviceFile file{device};

    ReadResult read(uint64_t offset, uint32_t size) {
        ReadResult result;
        file.read(offset, size, [&result](int error, std::span<const uint8_t> data) {
            result.error = error;
            result.data.assign(data.begin(), data.end());
        });
        return result;
    }
    std::optional<std::pair<int, uint32_t>> write_result;
    void write(uint64_t offset, const uint8_t* data, uint32_t size) {
        write_result.reset();
        file.write(offset, data, size, [this](int error, uint32_t written) {
            write_result = {error, written};
        });
    }
    std::optional<int> done_error;
    void fallocate(int mode, uint64_t offset, uint64_t length) {
        done_error.reset();
        file.fallocate(mode, offset, length, [this](int error) { done_error = error; });
    }
};

uint8_t pattern_at(uint64_t offset) {
    return uint8_t(offset % 251);
}

TEST_F(DeviceFileTest, AlignedReadIsOneRequestForTheSameRange) {
    ReadResult r;
    file.read(4096, 8192, [&r](int error, std::span<const uint8_t> data) {
        r.error = error;
        r.data.assign(data.begin(), data.end());
    });
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].op, backstore::IoOp::read);
    EXPECT_EQ(device->seen_requests[0].offset, 4096u);
    EXPECT_EQ(device->seen_requests[0].length, 8192u);
    EXPECT_FALSE(r.error) << "answered before the device completed";
    device->complete_next();
    ASSERT_EQ(r.error, 0);
    ASSERT_EQ(r.data.size(), 8192u);
    EXPECT_EQ(r.data[0], pattern_at(4096));
    EXPECT_EQ(r.data[8191], pattern_at(4096 + 8191));
    EXPECT_EQ(file.stats().bytes_read, 8192u);
}

TEST_F(DeviceFileTest, UnalignedReadReadsTheCoveringBlocksAndReturnsTheSlice) {
    ReadResult r;
    file.read(1000, 100, [&r](int error, std::span<const uint8_t> data) {
        r.error = error;
        r.data.assign(data.begin(), data.end());
    });
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].offset, 512u); // blocks 1 and 2 hold bytes 1000..1099
    EXPECT_EQ(device->seen_requests[0].length, 1024u);
    device->complete_next();
    ASSERT_EQ(r.error, 0);
    ASSERT_EQ(r.data.size(), 100u);
    for (size_t i = 0; i < r.data.size(); ++i) {
        ASSERT_EQ(r.data[i], pattern_at(1000 + i)) << i;
    }
}

TEST_F(DeviceFileTest, ReadAcrossTheEndIsCutThereAndPastItIsEndOfFile) {
    uint64_t end = uint64_t(1) << 20;
    ReadResult r;
    file.read(end - 512, 4096, [&r](int error, std::span<const uint8_t> data) {
        r.error = error;
        r.data.assign(data.begin(), data.end());
    });
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].length, 512u);
    device->complete_next();
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.data.size(), 512u);

    ReadResult past = read(end, 4096);
    EXPECT_EQ(past.error, 0);
    EXPECT_TRUE(past.data.empty());
    ReadResult far = read(end * 7, 4096);
    EXPECT_EQ(far.error, 0);
    EXPECT_TRUE(far.data.empty());
    EXPECT_EQ(device->seen_requests.size(), 1u) << "end of file needs no I/O";
}

TEST_F(DeviceFileTest, ReadLargerThanTheNegotiatedMaximumIsRefused) {
    ReadResult r = read(0, DeviceFile::max_request + 512);
    EXPECT_EQ(r.error, EINVAL);
    EXPECT_TRUE(device->seen_requests.empty());
    ReadResult ok;
    file.read(0, DeviceFile::max_request,
              [&ok](int error, std::span<const uint8_t> data) { ok.error = error; });
    EXPECT_EQ(device->seen_requests.size(), 1u);
    device->complete_all();
    EXPECT_EQ(ok.error, 0);
}

TEST_F(DeviceFileTest, AlignedWriteHandsTheCallersMemoryToTheDevice) {
    Buffer data = Buffer::allocate(8192);
    std::memset(data.data(), 0xab, 8192);
    write(1024, data.data(), 8192);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    const auto& seen = device->seen_requests[0];
    EXPECT_EQ(seen.op, backstore::IoOp::write);
    EXPECT_EQ(seen.offset, 1024u);
    EXPECT_EQ(seen.length, 8192u);
    EXPECT_EQ(seen.first_iov, data.data()) << "aligned data is not copied";
    EXPECT_FALSE(write_result);
    device->complete_next();
    ASSERT_TRUE(write_result);
    EXPECT_EQ(write_result->first, 0);
    EXPECT_EQ(write_result->second, 8192u);
    EXPECT_EQ(file.stats().copied_writes, 0u);
    EXPECT_EQ(file.stats().bytes_written, 8192u);
}

// The FUSE server's WRITE hands its receive buffer down as a Buffer: the device sees it as the request's
// `data` (a remote member sends it rather than a copy), cut to what fits before the end.
TEST_F(DeviceFileTest, AWriteFromABufferHandsTheBufferToTheDevice) {
    Buffer data = Buffer::allocate(8192);
    std::memset(data.data(), 0x5a, 8192);
    uint8_t* bytes = data.data();
    std::optional<std::pair<int, uint32_t>> result;
    file.write(0, data, [&result](int error, uint32_t written) { result.emplace(error, written); });
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].first_iov, bytes);
    EXPECT_EQ(device->seen_requests[0].buffer_data, bytes) << "the Buffer itself, not a copy";
    EXPECT_EQ(device->seen_requests[0].buffer_size, 8192u);
    device->complete_next();
    ASSERT_TRUE(result);
    EXPECT_EQ(result->second, 8192u);

    uint64_t end = file.attributes().bytes;
    file.write(end - 4096, data, [&result](int error, uint32_t written) { result.emplace(error, written); });
    ASSERT_EQ(device->seen_requests.size(), 2u);
    EXPECT_EQ(device->seen_requests[1].length, 4096u);
    EXPECT_EQ(device->seen_requests[1].buffer_data, bytes);
    EXPECT_EQ(device->seen_requests[1].buffer_size, 4096u) << "cut at the end, as the request is";
    device->complete_next();
    EXPECT_EQ(result->second, 4096u);
}

TEST_F(DeviceFileTest, UnalignedWriteDataIsCopiedToAnAlignedBuffer) {
    Buffer data = Buffer::allocate(4096 + 80);
    uint8_t* at = data.data() + 80; // where a FUSE WRITE's data would be without our buffer layout
    for (int i = 0; i < 4096; ++i) {
        at[i] = uint8_t(i * 7);
    }
    write(0, at, 4096);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_NE(device->seen_requests[0].first_iov, static_cast<void*>(at));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(device->seen_requests[0].first_iov) % DeviceFile::data_alignment,
              0u);
    EXPECT_EQ(std::memcmp(device->seen_requests[0].data.data(), at, 4096), 0);
    EXPECT_EQ(device->seen_requests[0].buffer_data, device->seen_requests[0].first_iov)
        << "the copy goes down as the request's Buffer, so that no device copies it again";
    device->complete_next();
    EXPECT_EQ(write_result->first, 0);
    EXPECT_EQ(file.stats().copied_writes, 1u);
}

TEST_F(DeviceFileTest, WritesMustBeWholeBlocks) {
    Buffer data = Buffer::allocate(4096);
    write(100, data.data(), 512);
    EXPECT_EQ(write_result->first, EINVAL);
    write(512, data.data(), 100);
    EXPECT_EQ(write_result->first, EINVAL);
    write(512, data.data(), 0);
    EXPECT_EQ(write_result->first, 0);
    EXPECT_EQ(write_result->second, 0u);
    EXPECT_TRUE(device->seen_requests.empty());
    EXPECT_EQ(file.stats().errors, 2u);
}

TEST_F(DeviceFileTest, WriteAcrossTheEndIsShortAndPastItIsNoSpace) {
    uint64_t end = uint64_t(1) << 20;
    Buffer data = Buffer::allocate(4096);
    write(end - 1024, data.data(), 4096);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].length, 1024u);
    device->complete_next();
    EXPECT_EQ(write_result->first, 0);
    EXPECT_EQ(write_result->second, 1024u);
    write(end, data.data(), 4096);
    EXPECT_EQ(write_result->first, ENOSPC);
    EXPECT_EQ(device->seen_requests.size(), 1u);
}

TEST_F(DeviceFileTest, DeviceErrorsComeBackAsPositiveErrno) {
    Buffer data = Buffer::allocate(4096);
    write(0, data.data(), 4096);
    device->complete_next(-ENOSPC);
    EXPECT_EQ(write_result->first, ENOSPC);
    EXPECT_EQ(write_result->second, 0u);
    ReadResult r;
    file.read(0, 4096, [&r](int error, std::span<const uint8_t> d) {
        r.error = error;
        r.data.assign(d.begin(), d.end());
    });
    device->complete_next(-EIO);
    EXPECT_EQ(r.error, EIO);
    EXPECT_TRUE(r.data.empty());
    EXPECT_EQ(file.stats().errors, 2u);
}

TEST_F(DeviceFileTest, FlushIsAFlushOfEverything) {
    std::optional<int> result;
    file.flush([&result](int error) { result = error; });
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].op, backstore::IoOp::flush);
    EXPECT_EQ(device->seen_requests[0].offset, 0u);
    EXPECT_EQ(device->seen_requests[0].length, 0u);
    device->complete_next(-EIO);
    EXPECT_EQ(result, EIO);
    EXPECT_EQ(file.stats().flushes, 1u);
}

TEST_F(DeviceFileTest, PunchHoleIsUnmapOnADeviceThatDeallocates) {
    fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 65536);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].op, backstore::IoOp::unmap);
    EXPECT_EQ(device->seen_requests[0].offset, 8192u);
    EXPECT_EQ(device->seen_requests[0].length, 65536u);
    device->complete_next();
    EXPECT_EQ(done_error, 0);
    EXPECT_TRUE(file.attributes().discard);
}

TEST_F(DeviceFileTest, PunchHoleFallsBackToWriteZeroesThenToNotSupported) {
    backstore::Features zeroes;
    zeroes.write_zeroes = true;
    auto d1 = std::make_shared<FakeDevice>(1 << 20, 512, zeroes);
    DeviceFile f1(d1);
    std::optional<int> r1;
    f1.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, [&r1](int e) { r1 = e; });
    ASSERT_EQ(d1->seen_requests.size(), 1u);
    EXPECT_EQ(d1->seen_requests[0].op, backstore::IoOp::write_zeroes);
    d1->complete_next();
    EXPECT_EQ(r1, 0);

    auto d2 = std::make_shared<FakeDevice>(1 << 20, 512);
    DeviceFile f2(d2);
    std::optional<int> r2;
    f2.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, [&r2](int e) { r2 = e; });
    EXPECT_EQ(r2, EOPNOTSUPP) << "the kernel then reports discard as not supported";
    EXPECT_TRUE(d2->seen_requests.empty());
    EXPECT_FALSE(f2.attributes().discard);
}

TEST_F(DeviceFileTest, ZeroRangeIsWriteZeroes) {
    fallocate(FALLOC_FL_ZERO_RANGE, 4096, 4096);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].op, backstore::IoOp::write_zeroes);
    device->complete_next();
    EXPECT_EQ(done_error, 0);
    fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 512);
    ASSERT_EQ(device->seen_requests.size(), 2u);
    EXPECT_EQ(device->seen_requests[1].op, backstore::IoOp::write_zeroes);
    device->complete_next();
}

TEST_F(DeviceFileTest, ZeroRangeWithoutWriteZeroesWritesZeroesAMebibyteAtATime) {
    auto plain = std::make_shared<FakeDevice>(uint64_t(4) << 20, 4096);
    DeviceFile f(plain);
    std::optional<int> result;
    uint64_t length = (uint64_t(5) << 20) / 2; // 2.5 MiB
    f.fallocate(FALLOC_FL_ZERO_RANGE, 4096, length, [&result](int e) { result = e; });
    for (int piece = 0; piece < 3; ++piece) {
        ASSERT_EQ(plain->seen_requests.size(), size_t(piece + 1)) << "one piece at a time";
        const auto& seen = plain->seen_requests[piece];
        EXPECT_EQ(seen.op, backstore::IoOp::write);
        EXPECT_EQ(seen.offset, 4096 + uint64_t(piece) * DeviceFile::max_request);
        EXPECT_EQ(seen.length,
                  piece < 2 ? uint64_t(DeviceFile::max_request) : length - 2 * DeviceFile::max_request);
        EXPECT_TRUE(std::all_of(seen.data.begin(), seen.data.end(), [](uint8_t b) { return b == 0; }));
        EXPECT_FALSE(result);
        plain->complete_next();
    }
    EXPECT_EQ(result, 0);
}

TEST_F(DeviceFileTest, ZeroRangeByWritingStopsAtTheFirstError) {
    auto plain = std::make_shared<FakeDevice>(uint64_t(4) << 20, 4096);
    DeviceFile f(plain);
    std::optional<int> result;
    f.fallocate(FALLOC_FL_ZERO_RANGE, 0, uint64_t(3) << 20, [&result](int e) { result = e; });
    plain->complete_next(-EIO);
    EXPECT_EQ(result, EIO);
    EXPECT_EQ(plain->seen_requests.size(), 1u);
}

TEST_F(DeviceFileTest, FallocateModesTheFileCannotDoAreRefused) {
    for (int mode : {0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE,
                     FALLOC_FL_UNSHARE_RANGE, FALLOC_FL_PUNCH_HOLE /* without KEEP_SIZE */}) {
        fallocate(mode, 0, 4096);
        EXPECT_EQ(done_error, EOPNOTSUPP) << "mode " << mode;
    }
    EXPECT_TRUE(device->seen_requests.empty());
}

TEST_F(DeviceFileTest, FallocateRangesAreWholeBlocksCutAtTheEnd) {
    int punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    fallocate(punch, 100, 4096);
    EXPECT_EQ(done_error, EINVAL);
    fallocate(punch, 0, 100);
    EXPECT_EQ(done_error, EINVAL);
    uint64_t end = uint64_t(1) << 20;
    fallocate(punch, end, 4096);
    EXPECT_EQ(done_error, 0) << "nothing of the device in the range";
    fallocate(punch, 0, 0);
    EXPECT_EQ(done_error, 0);
    EXPECT_TRUE(device->seen_requests.empty());
    fallocate(punch, end - 4096, 1 << 20);
    ASSERT_EQ(device->seen_requests.size(), 1u);
    EXPECT_EQ(device->seen_requests[0].offset, end - 4096);
    EXPECT_EQ(device->seen_requests[0].length, 4096u);
    device->complete_next();
    EXPECT_EQ(done_error, 0);
}

TEST_F(DeviceFileTest, AReadOnlyDeviceRefusesWritesAndFallocate) {
    backstore::Features ro = thin();
    ro.read_only = true;
    auto d = std::make_shared<FakeDevice>(1 << 20, 512, ro);
    DeviceFile f(d);
    Buffer data = Buffer::allocate(4096);
    std::optional<int> w, a;
    f.write(0, data.data(), 4096, [&w](int e, uint32_t) { w = e; });
    f.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, [&a](int e) { a = e; });
    EXPECT_EQ(w, EROFS);
    EXPECT_EQ(a, EROFS);
    EXPECT_TRUE(d->seen_requests.empty());
    EXPECT_TRUE(f.attributes().read_only);
}

TEST_F(DeviceFileTest, AfterFailEverythingIsAnIoError) {
    file.fail();
    EXPECT_TRUE(file.failed());
    Buffer data = Buffer::allocate(4096);
    ReadResult r = read(0, 4096);
    EXPECT_EQ(r.error, EIO);
    write(0, data.data(), 4096);
    EXPECT_EQ(write_result->first, EIO);
    std::optional<int> f;
    file.flush([&f](int e) { f = e; });
    EXPECT_EQ(f, EIO);
    fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096);
    EXPECT_EQ(done_error, EIO);
    EXPECT_TRUE(device->seen_requests.empty());
    EXPECT_EQ(file.stats().errors, 4u);
}

TEST_F(DeviceFileTest, TheSizeFollowsTheDevice) {
    EXPECT_EQ(file.attributes().bytes, uint64_t(1) << 20);
    EXPECT_EQ(file.attributes().block_size, 512u);
    ASSERT_TRUE(device->resize(uint64_t(2) << 20));
    EXPECT_EQ(file.attributes().bytes, uint64_t(2) << 20);
    ReadResult r;
    file.read(uint64_t(3) << 19, 512, [&r](int error, std::span<const uint8_t> data) {
        r.error = error;
        r.data.assign(data.begin(), data.end());
    });
    ASSERT_EQ(device->seen_requests.size(), 1u) << "the grown part is readable";
    device->complete_next();
    EXPECT_EQ(r.data.size(), 512u);
}

} // namespace
} // namespace ispace::attach
