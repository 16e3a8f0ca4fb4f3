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
#include "ispace/buffer.hpp"
#include "ispace/data_observer.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
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

// A geometry whose size may change while reactors read it (resize): the block size is fixed for the
// device's life, the block count is an atomic.
class AtomicGeometry {
public:
    AtomicGeometry(uint32_t block_size, uint64_t block_count)
        : _block_size(block_size), _block_count(block_count) {}
    Geometry load() const { return {_block_size, _block_count.load(std::memory_order_acquire)}; }
    uint32_t block_size() const { return _block_size; }
    void set_block_count(uint64_t count) { _block_count.store(count, std::memory_order_release); }

private:
    const uint32_t _block_size;
    std::atomic<uint64_t> _block_count;
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
    // Write, optional: a Buffer holding exactly the bytes `iov` names, in order, whose memory stays
    // unchanged while any reference to it lives. A device that would copy the data to keep it (a remote
    // member sends a Buffer) may keep a reference instead, past done(). Empty: only `iov`, valid until
    // done().
    Buffer data;
    // Read, optional: told of the bytes as they arrive (ispace/data_observer.hpp), offsets relative to
    // `offset`. A device that cannot tell (most) never calls it; the caller then does its work on the data
    // after done(). Not owned; valid until done().
    DataObserver* observer = nullptr;
    // 0, or -errno (-EIO, -ENOSPC, -EROFS ...). Runs on the submitting reactor, never inside submit().
    Function<void(int error)> done;
};

// What a device tells the layers above it, unasked (DeviceObserver).
enum class DeviceEvent : uint8_t {
    resized, // geometry().block_count changed: resize() by its owner, or the device grew by itself
    failed,  // the device can serve no more I/O (a remote member lost for good); requests fail
    removed, // the device was withdrawn by its owner; whatever exports it should go too
};
std::string_view to_string(DeviceEvent event);

// Receives a device's events. Called on whatever thread raised the event, with the device's observer
// list locked: an observer must not subscribe or unsubscribe from inside device_event().
class DeviceObserver {
public:
    virtual void device_event(DeviceEvent event) = 0;

protected:
    ~DeviceObserver() = default;
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

    // Changes the size to `bytes`, a non-zero multiple of the block size, and raises
    // DeviceEvent::resized. A shrink drops the data past the new end. May block (a file is allocated):
    // never call it on a reactor thread. Default: not supported (ENOTSUP), saying so for this kind.
    virtual Result<void> resize(uint64_t bytes);
    // Reads the size of the backing storage again, for storage grown from outside (a file extended, a
    // LUN resized on its target): adopts a larger size (whole blocks) and raises DeviceEvent::resized.
    // Returns the size in bytes. A backing object that shrank under the device is an error (nothing is
    // adopted: the data past its end is gone, which the owner must hear about). May block: never on a
    // reactor thread. Default: the size does not change from outside (memory, null).
    virtual Result<uint64_t> rescan();

    // Observers, e.g. the logical unit that exports the device. An observer unsubscribes before it
    // goes away; the device does not own it.
    void subscribe(DeviceObserver* observer);
    void unsubscribe(DeviceObserver* observer);

protected:
    // Tells every observer, with the observer list locked (see DeviceObserver).
    void notify(DeviceEvent event);
    // The checks every resize() makes first: a non-zero whole number of blocks.
    Result<void> check_resize(uint64_t bytes) const;

private:
    std::mutex _observers_mutex;
    std::vector<DeviceObserver*> _observers;
};

} // namespace ispace::backstore
