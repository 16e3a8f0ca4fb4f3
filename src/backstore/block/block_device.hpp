// The block backstore: a LUN on a block device (a disk, a partition, an LV, a loop device).
#pragma once

#include "backstore/fd_device.hpp"
#include "backstore/registry.hpp"
#include "backstore/spec_parse.hpp"

#include <memory>

namespace ispace::backstore {

class BlockDevice final : public FdDevice {
public:
    // Opens spec.path exclusively (O_EXCL: a mounted or otherwise claimed device is refused). Size from
    // BLKGETSIZE64 (or size=, which may be smaller); the block size must be a multiple of the device's
    // logical block size. Unmap is offered when the device can zero with deallocation (fallocate
    // PUNCH_HOLE on a block device guarantees zeroes afterwards, unlike BLKDISCARD).
    static Result<std::unique_ptr<Device>> open(const PathSpec& spec);

    std::string_view kind() const override { return "block"; }
    // Exports more or less of the device, up to its current size (after the device itself was grown,
    // e.g. a logical volume extended).
    Result<void> resize(uint64_t bytes) override;

private:
    using FdDevice::FdDevice;
};

// Registers the "block" kind (kinds.cpp).
void register_block_kind(Registry& registry);

} // namespace ispace::backstore
