// attach: any backstore::Device as a local block device that a filesystem can be made on and mounted.
//
// The seam is two small interfaces. An AttachBackend is one way of making a kernel block device whose
// I/O this process serves (FUSE + a loop device today; ublk and NBD, where the kernel has them, are
// meant to be one more backend each). An Attachment is one device attached that way: its path
// (/dev/loop3), its status, and detach(). Nothing above this seam knows which backend made a device.
//
// Threading: attach() and detach() block their caller (a mount, ioctls, waiting for the kernel to let
// go of a file) and must not be called on a reactor thread. The device's I/O runs on the reactors of
// the group given to attach(), as every backstore's does.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::net {
class ReactorGroup;
}

namespace ispace::attach {

struct AttachOptions {
    // What the device is, for logs and the name the kernel shows (losetup's BACK-FILE column); empty:
    // the device's describe().
    std::string name;
    // Threads that take requests from the kernel and hand them to the reactors (FUSE+loop: readers of
    // /dev/fuse). They never wait for I/O, so a few keep any queue depth busy.
    unsigned threads = 4;
    // A directory for the backend's transient files (FUSE+loop: the file the FUSE filesystem is
    // mounted on while the loop device is set up; it is unmounted and removed before attach returns).
    std::string run_dir = "/run/ispace";
    // FUSE+loop: set the loop device up with the ioctls of kernels before 5.8 (LOOP_SET_FD and
    // friends) instead of LOOP_CONFIGURE. For tests of that path; attach falls back to it by itself.
    bool legacy_loop_setup = false;
};

enum class DetachMode : uint8_t {
    // Refuse (EBUSY, naming the mount point when there is one) while the block device is mounted or
    // held exclusively by another user.
    refuse_if_in_use,
    // Detach anyway, as at process exit: a mounted filesystem is synced first, then its I/O fails
    // (EIO) until it is unmounted, and the kernel device goes away at that unmount.
    force,
};

struct AttachmentStatus {
    std::string path;    // the block device: /dev/loop3
    std::string backend; // "fuse+loop"
    std::string device;  // what is attached (AttachOptions::name)
    uint64_t bytes = 0;
    uint32_t block_size = 0;
    bool read_only = false;
    bool direct_io = false; // the kernel device bypasses the page cache on its way to us
    // "attached"; "failed" once the device failed or was removed (I/O errors from then on);
    // "detached" after detach().
    std::string state;
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t flushes = 0;
    uint64_t discards = 0; // deallocations and zeroings (fallocate)
    uint64_t bytes_read = 0;
    uint64_t bytes_written = 0;
    uint64_t errors = 0; // requests answered with an error (not counting "not supported")
};

class Attachment {
public:
    // Detaches with DetachMode::force if detach() did not run.
    virtual ~Attachment() = default;
    virtual const std::string& path() const = 0;
    virtual AttachmentStatus status() const = 0;
    // Takes the block device away and stops serving it. Blocks until the kernel has let go of it (or,
    // when something still holds it, cuts it off: see DetachMode). Idempotent. Not on a reactor.
    virtual Result<void> detach(DetachMode mode) = 0;
};

class AttachBackend {
public:
    virtual ~AttachBackend() = default;
    // "fuse+loop"
    virtual std::string_view name() const = 0;
    // Whether this machine and process can use the backend, and if not, why (what is missing).
    virtual Result<void> available() const = 0;
    // Attaches `device`; its I/O runs on `reactors`, which must be running and outlive the attachment.
    // Blocks; not on a reactor.
    virtual Result<std::unique_ptr<Attachment>> attach(std::shared_ptr<backstore::Device> device,
                                                       net::ReactorGroup& reactors,
                                                       const AttachOptions& options) = 0;
};

// The backends this build has, in order of preference.
std::vector<std::unique_ptr<AttachBackend>> builtin_backends();
// Empty when one of builtin_backends() can attach on this machine, in this process; else what each
// lacks (not root, no /dev/fuse, a build without libfuse3). For tests that must skip, saying why.
std::string why_not_attachable();

} // namespace ispace::attach
