// DeviceFile: a backstore::Device seen as one regular file of fixed size — what the FUSE front end
// serves, and what the loop device on top of it reads and writes. It turns file operations on byte
// ranges into IoRequests; the kernel side (FUSE, loop) is not its business, so it is tested alone
// with a fake device (tests/unit/attach).
//
// The rules are those of O_DIRECT on a block device, which is what the loop device sends (whole
// blocks, inside the device):
//  - read: may start or end inside a block (someone reading the file directly): the blocks covering it
//    are read and the slice returned. At or past the end: 0 bytes (end of file); across it: cut there.
//  - write: block-aligned offset and length, else EINVAL — no read-modify-write behind the writer's
//    back, where two such writes to one block would race. Across the end: cut there (a short write,
//    as a block device does); at or past it: ENOSPC.
//  - flush (fsync, and FUSE's flush at close): IoOp::flush.
//  - fallocate PUNCH_HOLE|KEEP_SIZE (the loop device's discard, so fstrim works): IoOp::unmap where the
//    device deallocates, else IoOp::write_zeroes where it has it, else EOPNOTSUPP (the kernel then
//    reports that discard is not supported). ZERO_RANGE (the loop device's write-zeroes): IoOp::
//    write_zeroes, or zeroes written 1 MiB at a time. Block-aligned ranges only (EINVAL), cut at the
//    end of the device. Other modes (allocate, collapse, insert, unshare): EOPNOTSUPP, since the file
//    can neither grow nor move its blocks.
//  - a read-only device answers EROFS to writes and fallocate; after fail() every request gets EIO.
//
// Threading: read/write/flush/fallocate are called on a reactor thread (they submit to the device) and
// complete on it; `done` may also run inside the call, for requests answered without I/O. attributes(),
// stats() and fail() from any thread.
#pragma once

#include "backstore/device.hpp"
#include "common/function.hpp"
#include "ispace/buffer.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>

namespace ispace::attach {

class DeviceFile {
public:
    // What one read or write may move at most (the FUSE server negotiates max_read/max_write to it).
    static constexpr uint32_t max_request = uint32_t(1) << 20;
    // Write data at an address aligned to this is handed to the device as is; other data is copied to
    // an aligned buffer first (devices opened with O_DIRECT need aligned memory).
    static constexpr uintptr_t data_alignment = 4096;

    explicit DeviceFile(std::shared_ptr<backstore::Device> device);
    DeviceFile(const DeviceFile&) = delete;
    DeviceFile& operator=(const DeviceFile&) = delete;

    struct Attributes {
        uint64_t bytes = 0;
        uint32_t block_size = 0;
        bool read_only = false;
        bool discard = false; // fallocate(PUNCH_HOLE) works
    };
    Attributes attributes() const;
    backstore::Device& device() const { return *_device; }

    // error is 0 or a positive errno. `data` is valid only during the call.
    using ReadDone = Function<void(int error, std::span<const uint8_t> data)>;
    using WriteDone = Function<void(int error, uint32_t written)>;
    using Done = Function<void(int error)>;

    void read(uint64_t offset, uint32_t size, ReadDone done);
    // `data` must stay valid until `done` runs.
    void write(uint64_t offset, const uint8_t* data, uint32_t size, WriteDone done);
    // The same with the data in a Buffer (at most max_request bytes), which goes down to the device as
    // the request's `data`: a device that keeps the data past completion (a remote mirror member) keeps
    // a reference to it rather than a copy.
    void write(uint64_t offset, Buffer data, WriteDone done);
    void flush(Done done);
    void fallocate(int mode, uint64_t offset, uint64_t length, Done done);

    // From now on every request fails with EIO (the device failed, or was removed by its owner).
    void fail();
    bool failed() const { return _failed.load(std::memory_order_acquire); }

    struct Stats {
        uint64_t reads = 0;
        uint64_t writes = 0;
        uint64_t flushes = 0;
        uint64_t discards = 0;
        uint64_t bytes_read = 0;
        uint64_t bytes_written = 0;
        uint64_t errors = 0; // requests answered with an error (EOPNOTSUPP, a capability answer, aside)
        uint64_t copied_writes = 0; // writes whose data was not aligned and had to be copied
    };
    Stats stats() const;

private:
    struct Op;
    struct ZeroOp;
    void submit(Op* op);
    void write_buffer(uint64_t offset, const uint8_t* data, uint32_t size, Buffer owner, WriteDone done);
    void write_zeroes_by_writing(uint64_t offset, uint64_t length, Done done);
    void next_zero_write(ZeroOp* op);
    int count(int error);

    std::shared_ptr<backstore::Device> _device;
    std::atomic<bool> _failed{false};
    std::atomic<uint64_t> _reads{0}, _writes{0}, _flushes{0}, _discards{0};
    std::atomic<uint64_t> _bytes_read{0}, _bytes_written{0}, _errors{0}, _copied_writes{0};
};

} // namespace ispace::attach
