// mgmt::Runtime's attach API in process: a device attached as a block device carries data both ways,
// is listed, is detached by path, and is detached by stop(). Needs root, /dev/fuse and loop devices
// (skipped without them); tests/system/test_attach*.py cover filesystems, kill -9 and remote LUNs.
#include "mgmt/runtime.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

bool loop_bound(const std::string& path) {
    std::string name = path.substr(path.rfind('/') + 1);
    return std::filesystem::exists("/sys/block/" + name + "/loop/backing_file");
}

// Whether the loop device at `path` let go of this test's FUSE file. It may be bound again at once: ctest
// runs other attach tests at the same time and the kernel hands a freed loop device to the next one (its
// backing_file says "/" for any FUSE file, so it cannot tell whose). Ours is gone when the FUSE mount file
// is: a loop device still bound to it would keep the mount busy and the file in `run_dir`.
bool loop_released(const std::string& path, const std::string& run_dir) {
    return !loop_bound(path) || std::filesystem::is_empty(run_dir);
}

class RuntimeAttachTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (std::string why = attach::why_not_attachable(); !why.empty()) {
            GTEST_SKIP() << why;
        }
        char dir[] = "/tmp/ispace-runtime-attach-XXXXXX";
        ASSERT_NE(::mkdtemp(dir), nullptr);
        _run_dir = dir;
        _options.run_dir = _run_dir;
    }
    void TearDown() override {
        if (!_run_dir.empty()) {
            std::filesystem::remove_all(_run_dir);
        }
    }
    RuntimeOptions runtime_options() {
        RuntimeOptions o;
        o.reactors = 1;
        return o;
    }
    std::string _run_dir;
    attach::AttachOptions _options;
};

TEST_F(RuntimeAttachTest, AnAttachedDeviceCarriesDataAndIsListedUntilDetached) {
    Runtime runtime(runtime_options());
    auto path = runtime.attach_spec("memory:16M", _options);
    ASSERT_TRUE(path) << path.error().message;
    EXPECT_EQ(path->rfind("/dev/loop", 0), 0u) << *path;
    EXPECT_TRUE(loop_bound(*path));

    auto list = runtime.attachments();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].path, *path);
    EXPECT_EQ(list[0].backend, "fuse+loop");
    EXPECT_EQ(list[0].device, "memory:16M");
    EXPECT_EQ(list[0].bytes, uint64_t(16) << 20);
    EXPECT_EQ(list[0].state, "attached");

    int fd = ::open(path->c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    void* out = nullptr;
    void* in = nullptr;
    ASSERT_EQ(::posix_memalign(&out, 4096, 65536), 0);
    ASSERT_EQ(::posix_memalign(&in, 4096, 65536), 0);
    for (size_t i = 0; i < 65536; ++i) {
        static_cast<uint8_t*>(out)[i] = uint8_t(i * 13 + 7);
    }
    EXPECT_EQ(::pwrite(fd, out, 65536, 1 << 20), 65536);
    EXPECT_EQ(::fdatasync(fd), 0);
    EXPECT_EQ(::pread(fd, in, 65536, 1 << 20), 65536);
    EXPECT_EQ(std::memcmp(in, out, 65536), 0);
    ::close(fd);
    std::free(out);
    std::free(in);
    list = runtime.attachments();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_GE(list[0].writes, 1u);
    EXPECT_GE(list[0].reads, 1u);
    EXPECT_GE(list[0].flushes, 1u);
    EXPECT_EQ(list[0].errors, 0u);

    ASSERT_TRUE(runtime.detach(*path));
    EXPECT_TRUE(runtime.attachments().empty());
    EXPECT_TRUE(loop_released(*path, _run_dir));
    auto again = runtime.detach(*path);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ENOENT);
    EXPECT_TRUE(std::filesystem::is_empty(_run_dir)) << "the FUSE mount file is removed";
}

TEST_F(RuntimeAttachTest, StopDetachesWhatIsAttached) {
    std::string path;
    {
        Runtime runtime(runtime_options());
        auto attached = runtime.attach_spec("memory:8M,block=4096", _options);
        ASSERT_TRUE(attached) << attached.error().message;
        path = *attached;
        EXPECT_EQ(runtime.attachments().at(0).block_size, 4096u);
        EXPECT_TRUE(runtime.stop(std::chrono::seconds(5)));
        EXPECT_TRUE(runtime.attachments().empty());
        auto late = runtime.attach_spec("memory:8M", _options);
        ASSERT_FALSE(late);
        EXPECT_EQ(late.error().code, ESHUTDOWN);
    }
    EXPECT_TRUE(loop_released(path, _run_dir));
}

// stop() while another thread attaches: the attach either finishes first (and stop() detaches it) or is
// refused (ESHUTDOWN); it never lands after stop() has detached everything, on reactors being torn down.
TEST_F(RuntimeAttachTest, StopDuringAnAttachLeavesNothingAttached) {
    for (int round = 0; round < 6; ++round) {
        std::optional<Result<std::string>> attached;
        {
            Runtime runtime(runtime_options());
            runtime.reactors(); // made, not started: the attach starts them, racing stop()
            std::thread attacher([&] { attached = runtime.attach_spec("memory:8M", _options); });
            std::this_thread::sleep_for(std::chrono::milliseconds(round * 2));
            EXPECT_TRUE(runtime.stop(std::chrono::seconds(5)));
            attacher.join();
            EXPECT_TRUE(runtime.attachments().empty()) << "round " << round;
            ASSERT_TRUE(attached.has_value());
            if (!*attached) {
                EXPECT_EQ(attached->error().code, ESHUTDOWN) << attached->error().message;
            }
        }
        if (*attached) {
            EXPECT_TRUE(loop_released(**attached, _run_dir)) << "round " << round;
        }
    }
}

TEST_F(RuntimeAttachTest, ABadSpecAttachesNothing) {
    Runtime runtime(runtime_options());
    auto attached = runtime.attach_spec(_run_dir + "/no-such-dir/disk.img", _options);
    ASSERT_FALSE(attached);
    EXPECT_NE(attached.error().message.find("no-such-dir"), std::string::npos) << attached.error().message;
    EXPECT_TRUE(runtime.attachments().empty());
}

} // namespace
} // namespace ispace::mgmt
