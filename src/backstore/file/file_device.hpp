// The file backstore: a LUN stored in a regular file, I/O through the reactor's io_uring.
#pragma once

#include "backstore/fd_device.hpp"
#include "backstore/registry.hpp"
#include "backstore/spec_parse.hpp"

#include <memory>

namespace ispace::backstore {

class FileDevice final : public FdDevice {
public:
    // Opens spec.path, creating it when missing and size= is given (sparse when thin, else allocated
    // up front so a full disk shows now, not on the first write), growing a smaller file to size=.
    static Result<std::unique_ptr<Device>> open(const PathSpec& spec);

    std::string_view kind() const override { return "file"; }
    // Thin files: the holes and data of the file, found with lseek(SEEK_DATA/SEEK_HOLE) on a worker.
    // Thick files: one mapped extent (a preallocated file's unwritten extents would look like holes).
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<Extent>>)> done) override;
    // Grows (sparse when thin, else allocated) or shrinks (truncates) the file.
    Result<void> resize(uint64_t bytes) override;

private:
    using FdDevice::FdDevice;
};

// Scans [start, end) of `fd` for data and holes. Holes are shrunk to whole blocks of `block_size`
// (a partly written block is mapped); adjacent extents of one kind are merged. 0 or -errno.
int scan_file_extents(int fd, uint64_t start, uint64_t end, uint32_t block_size, std::vector<Extent>& out);

// Registers the "file" kind (kinds.cpp).
void register_file_kind(Registry& registry);

} // namespace ispace::backstore
