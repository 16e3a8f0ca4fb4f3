// FdDevice: the I/O engine shared by the file and block backstores.
//
// Both are a file descriptor accessed with positional readv/writev, fdatasync and fallocate through the
// submitting reactor's io_uring (or its worker pool). What differs is opening, geometry and allocation
// status, which the subclasses provide. Short transfers are continued here until the request is done,
// so the SCSI engine never sees one.
#pragma once

#include "backstore/device.hpp"

#include <atomic>
#include <string>

namespace ispace::backstore {

class FdDevice : public Device {
public:
    ~FdDevice() override;
    FdDevice(const FdDevice&) = delete;
    FdDevice& operator=(const FdDevice&) = delete;

    std::string describe() const override { return _path; }
    Geometry geometry() const override { return _geometry.load(); }
    Features features() const override { return _features; }
    uint64_t identity() const override { return _identity; }
    void submit(IoRequest& request) override;
    // One mapped extent; FileDevice overrides it for thin files.
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<Extent>>)> done) override;

    // The file's size (fstat) or the block device's (BLKGETSIZE64), adopted when it grew.
    Result<uint64_t> rescan() override;

    int fd() const { return _fd; }

protected:
    FdDevice(std::string path, int fd, Geometry geometry, Features features, uint64_t identity);

    std::string _path;
    int _fd;
    AtomicGeometry _geometry;
    Features _features;
    uint64_t _identity;

private:
    struct Op;
    void start_rw(Op* op);
    void on_rw(Op* op, int result);
    void start_flush(Op* op);
    void start_zeroing(Op* op);
    void try_fallocate(Op* op);
    void on_fallocate(Op* op, int result);
    void write_zeroes_by_writing(Op* op);
    void on_zero_write(Op* op, int result);
    static void finish(Op* op, int error);

    // Learned at run time: the filesystem said EOPNOTSUPP once, so skip that mode from then on.
    std::atomic<bool> _no_punch_hole{false};
    std::atomic<bool> _no_zero_range{false};
};

} // namespace ispace::backstore
