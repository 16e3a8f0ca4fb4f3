// The FUSE + loop backend: for kernels and hosts with neither ublk nor NBD (and no iSCSI initiator),
// which is this project's test machines. FUSE and the loop driver are in every distribution kernel.
//
//   device ◀── reactors ◀── FuseServer (workers on /dev/fuse) ◀── FUSE file ◀── /dev/loopN ◀── mkfs, mount
//
// attach():
//   1. an empty file RUN_DIR/attach-PID-N is made, and a FuseServer mounted on it (the root of the FUSE
//      filesystem is that one regular file, the size of the device);
//   2. we open the file, bind a free loop device to it (LOOP_CONFIGURE: direct I/O, the device's
//      logical block size, autoclear) and close it again, keeping only an O_PATH descriptor (a killed
//      process must hold no open FUSE file of its own: see setup());
//   3. the FUSE mount is lazily detached and the file removed at once: the loop device's reference
//      keeps the filesystem alive, and nothing stays behind in the mount table. When the last
//      reference goes (detach, or the process dies), the kernel ends the FUSE connection by itself.
// detach():
//   refuse while mounted (unless forced: then sync, cut off) → flush the device → LOOP_CLR_FD and
//   close → the kernel ends the FUSE connection → the workers end → requests on reactors drain.
//
// kill -9 of the process: the kernel closes /dev/fuse and so aborts the connection: every request
// pending or later fails (ENOTCONN), which the loop device turns into I/O errors (EIO) for whatever
// is on it — a mounted filesystem sees errors, it does not hang. The loop device, whose holder was
// the dead process, clears itself at once if unmounted, else at the unmount (autoclear). The FUSE
// mount was gone since attach. Nothing is left behind but the mounted filesystem the user unmounts.
#pragma once

#include "attach/attachment.hpp"

namespace ispace::attach {

class FuseLoopBackend final : public AttachBackend {
public:
    std::string_view name() const override { return "fuse+loop"; }
    // Root (mount(2) and loop devices need it), /dev/fuse and /dev/loop-control.
    Result<void> available() const override;
    Result<std::unique_ptr<Attachment>> attach(std::shared_ptr<backstore::Device> device,
                                               net::ReactorGroup& reactors,
                                               const AttachOptions& options) override;
};

} // namespace ispace::attach
