// backstore::Device: the narrow interface between the SCSI engine and storage.
//
// A device is a flat array of bytes with a block size; the SCSI engine (shared by every backstore) turns
// CDBs into byte-range requests. A device says what it can do (Features) and runs requests
// asynchronously; it knows nothing of SCSI or iSCSI.
//
// Threading: submit() and allocation_status() are called on reactor threads (several reactors may use
// one device at once; implementations are thread-safe). Completion runs on the submitting reactor and
// never inside submit() (Reactor::defer() for devices that finish at once).
#pragma once

#include "common/function.hpp"
#include "common/result.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <sys/uio.h>
#include <vector>

namespace ispace::backstore {

struct Geometry {
    uint32_t block_size = 512; // 512 or 4096
    uint64_t block_count = 0;
    uint64_t bytes() const { return uint64_t(block_size) * block_count; }
};

struct Features {
    bool read_only = false;
    bool thin = false;         // unmap deallocates; unmapped blocks read back as zeroes
    bool unmap = false;        // IoOp::unmap is supported
    bool write_zeroes = false; // IoOp::write_zeroes is supported natively (else the engine writes zeroes)
    bool allocation_status = false; // allocation_status() reports real mapped/unmapped extents
    bool volatile_cache = false;    // writes may sit in a volatile cache until flush (WCE)
};

enum class IoOp : uint8_t {
    read,         // fill iov from [offset, offset+length)
    write,        // store iov at offset
    flush,        // make every completed write durable (offset/length may bound it; 0/0 is everything)
    unmap,        // deallocate [offset, offset+length); afterwards it reads as zeroes
    write_zeroes, // [offset, offset+length) reads as zeroes; stays allocated
};

struct IoRequest {
    IoOp op = IoOp::read;
    uint64_t offset = 0;        // bytes; a multiple of the block size
    uint64_t length = 0;        // bytes; a multiple of the block size
    const iovec* iov = nullptr; // read/write: total iov length == length
    unsigned iovcnt = 0;
    bool fua = false; // write: durable before completion
    // 0, or -errno (-EIO, -ENOSPC, -EROFS ...). Runs on the submitting reactor, never inside submit().
    Function<void(int error)> done;
};

struct Extent {
    uint64_t offset = 0;
    uint64_t length = 0;
    bool mapped = true; // false: deallocated (a hole)
};

class Device {
public:
    virtual ~Device() = default;
    // "file", "block", "memory", "null", ...
    virtual std::string_view kind() const = 0;
    // What an administrator recognises: the path, or "memory:1G".
    virtual std::string describe() const = 0;
    virtual Geometry geometry() const = 0;
    virtual Features features() const = 0;
    // A stable 64-bit identity for designators (VPD 0x83, 0x80): derived from the backing object
    // (device/inode for files) so it survives restarts where the storage does.
    virtual uint64_t identity() const = 0;

    // Starts a request; the request must stay alive until done() runs.
    virtual void submit(IoRequest& request) = 0;

    // The mapped/unmapped extents covering [offset, offset+length) in order, possibly starting before
    // offset or ending past it. Devices without Features::allocation_status report one mapped extent.
    virtual void allocation_status(uint64_t offset, uint64_t length,
                                   Function<void(Result<std::vector<Extent>>)> done) = 0;
};

// How a LUN is described on the command line: PATH[,size=1G][,block=512|4096][,thin][,ro][,direct],
// memory:SIZE[,block=..], null:SIZE[,block=..]. A PATH that is a block device opens the block backstore.
struct DeviceSpec {
    enum class Kind { file, block, memory, null };
    Kind kind = Kind::file;
    std::string path;  // file or block device
    uint64_t size = 0; // bytes; 0 = take the existing file's size
    uint32_t block_size = 512;
    bool thin = false; // file: created sparse; unmap punches holes
    bool read_only = false;
    bool direct = false; // O_DIRECT (option "direct")
};

// Parses a --lun argument. Errors name the offending option.
Result<DeviceSpec> parse_device_spec(std::string_view text);
// Opens (creating a missing file when size= is given) the device a spec describes. Errors name the path
// and what to do: "lun 2: /srv/a.img: file is 1000 bytes, not a multiple of the 512-byte block size".
Result<std::unique_ptr<Device>> open_device(const DeviceSpec& spec);

} // namespace ispace::backstore
