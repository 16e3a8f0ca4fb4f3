// The block backstore: a LUN on a block device (a disk, a partition, an LV, a loop device).
#pragma once

#include "backstore/fd_device.hpp"

#include <memory>

namespace ispace::backstore {

class BlockDevice final : public FdDevice {
public:
    // Opens spec.path exclusively (O_EXCL: a mounted or otherwise claimed device is refused). Size from
    // BLKGETSIZE64 (or size=, which may be smaller); the block size must be a multiple of the device's
    // logical block size. Unmap is offered when the device can zero with deallocation (fallocate
    // PUNCH_HOLE on a block device guarantees zeroes afterwards, unlike BLKDISCARD).
    static Result<std::unique_ptr<Device>> open(const DeviceSpec& spec);

    std::string_view kind() const override { return "block"; }

private:
    using FdDevice::FdDevice;
};

} // namespace ispace::backstore
