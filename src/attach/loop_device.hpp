// LoopDevice: a kernel loop device (/dev/loopN) over an open file, through the ioctls of linux/loop.h
// (the ones util-linux's losetup uses).
//
// It is set up with LO_FLAGS_AUTOCLEAR: the kernel clears the device at its last close. This process
// holds it open while it serves the file, so the device stays; when the process goes (detach, exit,
// or kill -9) the device goes as soon as nobody else has it open — at once when it is not mounted, at
// the unmount otherwise. Nothing is left for an administrator to clean up.
//
// Blocking calls (ioctls, opens): not on a reactor thread.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace ispace::attach {

class LoopDevice {
public:
    struct Settings {
        uint32_t block_size = 512; // the logical block size the device shows (512..4096)
        bool read_only = false;
        bool direct_io = true; // the loop device bypasses the page cache on its way to the file
        std::string name;      // shown as the backing file's name (LOOP_GET_STATUS64, losetup)
        // LOOP_SET_FD + LOOP_SET_STATUS64 + LOOP_SET_BLOCK_SIZE + LOOP_SET_DIRECT_IO (kernels before
        // 5.8) instead of LOOP_CONFIGURE. Used by itself when LOOP_CONFIGURE is unknown.
        bool legacy_setup = false;
    };

    // Takes a free loop device (LOOP_CTL_GET_FREE; another process may take the same one first, then
    // the next is tried) and binds it to `backing_fd`, which the kernel keeps its own reference to.
    static Result<std::unique_ptr<LoopDevice>> attach(int backing_fd, const Settings& settings);
    // release()s.
    ~LoopDevice();
    LoopDevice(const LoopDevice&) = delete;
    LoopDevice& operator=(const LoopDevice&) = delete;

    const std::string& path() const { return _path; }
    unsigned number() const { return _number; }
    // Whether the kernel took LO_FLAGS_DIRECT_IO (it may refuse it for a file that cannot do O_DIRECT).
    bool direct_io() const { return _direct_io; }

    // The backing file's size changed: the device takes it (LOOP_SET_CAPACITY).
    Result<void> refresh_capacity();
    // Fails with EBUSY while the device is mounted or held exclusively (O_EXCL) by someone; the error
    // names the mount point when it is in this mount namespace.
    Result<void> check_unused() const;
    // Syncs a filesystem mounted on the device, then the device (BLKFLSBUF): what can still be written
    // before the device is cut off.
    void sync();
    // Lets go of the device: LOOP_CLR_FD, then close. The kernel clears it at once unless someone else
    // holds it open; then at their last close (autoclear). Idempotent.
    void release();

private:
    LoopDevice(int fd, unsigned number, std::string path);
    Result<void> configure(int backing_fd, const Settings& settings);
    Result<void> configure_legacy(int backing_fd, const Settings& settings);

    int _fd = -1;
    unsigned _number = 0;
    std::string _path;
    bool _direct_io = false;
};

// The mount point of the block device `path` in this mount namespace, or empty.
std::string mount_point_of(const std::string& path);

} // namespace ispace::attach
