#include "attach/device_file.hpp"

#include "ispace/buffer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <linux/falloc.h>

namespace ispace::attach {

namespace {

uint64_t align_down(uint64_t value, uint64_t block) {
    return value / block * block;
}
uint64_t align_up(uint64_t value, uint64_t block) {
    return (value + block - 1) / block * block;
}

} // namespace

// One request in flight. Owns the IoRequest the device holds until it completes.
struct DeviceFile::Op {
    DeviceFile* file = nullptr;
    backstore::IoRequest request;
    iovec iov{};
    Buffer buffer;     // reads: what the device fills; unaligned writes: the copy
    uint64_t skip = 0; // reads: bytes of the first block before the offset asked for
    uint32_t length = 0;
    ReadDone read_done;
    WriteDone write_done;
    Done done;
};

// Zeroes written by hand, 1 MiB at a time, for ZERO_RANGE on a device with no write_zeroes.
struct DeviceFile::ZeroOp {
    DeviceFile* file = nullptr;
    backstore::IoRequest request;
    iovec iov{};
    Buffer zeroes;
    uint64_t offset = 0;
    uint64_t end = 0;
    Done done;
};

DeviceFile::DeviceFile(std::shared_ptr<backstore::Device> device) : _device(std::move(device)) {}

DeviceFile::Attributes DeviceFile::attributes() const {
    backstore::Geometry geometry = _device->geometry();
    backstore::Features features = _device->features();
    return {geometry.bytes(), geometry.block_size, features.read_only,
            features.unmap || features.write_zeroes};
}

void DeviceFile::fail() {
    _failed.store(true, std::memory_order_release);
}

DeviceFile::Stats DeviceFile::stats() const {
    Stats s;
    s.reads = _reads.load(std::memory_order_relaxed);
    s.writes = _writes.load(std::memory_order_relaxed);
    s.flushes = _flushes.load(std::memory_order_relaxed);
    s.discards = _discards.load(std::memory_order_relaxed);
    s.bytes_read = _bytes_read.load(std::memory_order_relaxed);
    s.bytes_written = _bytes_written.load(std::memory_order_relaxed);
    s.errors = _errors.load(std::memory_order_relaxed);
    s.copied_writes = _copied_writes.load(std::memory_order_relaxed);
    return s;
}

int DeviceFile::count(int error) {
    // EOPNOTSUPP answers a question about capabilities (can this device discard?), it is no failure.
    if (error != 0 && error != EOPNOTSUPP) {
        _errors.fetch_add(1, std::memory_order_relaxed);
    }
    return error;
}

void DeviceFile::submit(Op* op) {
    op->file = this;
    op->request.done = [op](int result) {
        // The device reports -errno; file operations answer errno. `op` holds this callback: move out
        // what is needed, free it, then answer.
        DeviceFile* file = op->file;
        int error = file->count(result < 0 ? -result : result);
        if (op->read_done) {
            ReadDone done = std::move(op->read_done);
            Buffer buffer = std::move(op->buffer);
            uint64_t skip = op->skip;
            uint32_t length = op->length;
            delete op;
            if (error == 0) {
                file->_bytes_read.fetch_add(length, std::memory_order_relaxed);
            }
            done(error,
                 error ? std::span<const uint8_t>() : std::span<const uint8_t>(buffer.data() + skip, length));
        } else if (op->write_done) {
            WriteDone done = std::move(op->write_done);
            uint32_t length = op->length;
            delete op;
            if (error == 0) {
                file->_bytes_written.fetch_add(length, std::memory_order_relaxed);
            }
            done(error, error ? 0 : length);
        } else {
            Done done = std::move(op->done);
            delete op;
            done(error);
        }
    };
    _device->submit(op->request);
}

void DeviceFile::read(uint64_t offset, uint32_t size, ReadDone done) {
    _reads.fetch_add(1, std::memory_order_relaxed);
    if (failed()) {
        done(count(EIO), {});
        return;
    }
    if (size > max_request) {
        // The kernel never asks for more than the max_read we negotiated.
        done(count(EINVAL), {});
        return;
    }
    backstore::Geometry geometry = _device->geometry();
    uint64_t bytes = geometry.bytes();
    if (size == 0 || offset >= bytes) {
        done(0, {}); // end of file
        return;
    }
    uint32_t length = uint32_t(std::min<uint64_t>(size, bytes - offset));
    uint64_t first = align_down(offset, geometry.block_size);
    uint64_t end = align_up(offset + length, geometry.block_size); // <= bytes: a whole number of blocks
    auto* op = new Op;
    op->buffer = Buffer::allocate(size_t(end - first));
    op->iov = {op->buffer.data(), size_t(end - first)};
    op->skip = offset - first;
    op->length = length;
    op->read_done = std::move(done);
    op->request.op = backstore::IoOp::read;
    op->request.offset = first;
    op->request.length = end - first;
    op->request.iov = &op->iov;
    op->request.iovcnt = 1;
    submit(op);
}

void DeviceFile::write(uint64_t offset, const uint8_t* data, uint32_t size, WriteDone done) {
    write_buffer(offset, data, size, Buffer{}, std::move(done));
}

void DeviceFile::write(uint64_t offset, Buffer data, WriteDone done) {
    const uint8_t* bytes = data.data();
    auto size = uint32_t(std::min<size_t>(data.size(), UINT32_MAX));
    write_buffer(offset, bytes, size, std::move(data), std::move(done));
}

void DeviceFile::write_buffer(uint64_t offset, const uint8_t* data, uint32_t size, Buffer owner,
                              WriteDone done) {
    _writes.fetch_add(1, std::memory_order_relaxed);
    if (failed()) {
        done(count(EIO), 0);
        return;
    }
    backstore::Geometry geometry = _device->geometry();
    if (_device->features().read_only) {
        done(count(EROFS), 0);
        return;
    }
    if (size > max_request || offset % geometry.block_size != 0 || size % geometry.block_size != 0) {
        done(count(EINVAL), 0);
        return;
    }
    if (size == 0) {
        done(0, 0);
        return;
    }
    uint64_t bytes = geometry.bytes();
    if (offset >= bytes) {
        done(count(ENOSPC), 0);
        return;
    }
    uint32_t length = uint32_t(std::min<uint64_t>(size, bytes - offset)); // whole blocks: bytes is too
    auto* op = new Op;
    op->length = length;
    op->write_done = std::move(done);
    if (reinterpret_cast<uintptr_t>(data) % data_alignment != 0) {
        _copied_writes.fetch_add(1, std::memory_order_relaxed);
        op->buffer = Buffer::allocate(length);
        std::memcpy(op->buffer.data(), data, length);
        data = op->buffer.data();
        op->request.data = op->buffer;
    } else if (owner) {
        op->request.data = owner.slice(0, length);
    }
    op->iov = {const_cast<uint8_t*>(data), length};
    op->request.op = backstore::IoOp::write;
    op->request.offset = offset;
    op->request.length = length;
    op->request.iov = &op->iov;
    op->request.iovcnt = 1;
    submit(op);
}

void DeviceFile::flush(Done done) {
    _flushes.fetch_add(1, std::memory_order_relaxed);
    if (failed()) {
        done(count(EIO));
        return;
    }
    auto* op = new Op;
    op->done = std::move(done);
    op->request.op = backstore::IoOp::flush; // offset 0, length 0: everything
    submit(op);
}

void DeviceFile::fallocate(int mode, uint64_t offset, uint64_t length, Done done) {
    _discards.fetch_add(1, std::memory_order_relaxed);
    if (failed()) {
        done(count(EIO));
        return;
    }
    constexpr int punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    bool zero_range = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
    if (mode != punch && !zero_range) {
        done(count(EOPNOTSUPP));
        return;
    }
    backstore::Features features = _device->features();
    if (features.read_only) {
        done(count(EROFS));
        return;
    }
    backstore::Geometry geometry = _device->geometry();
    if (offset % geometry.block_size != 0 || length % geometry.block_size != 0) {
        done(count(EINVAL));
        return;
    }
    uint64_t bytes = geometry.bytes();
    if (length == 0 || offset >= bytes) {
        done(0); // nothing of the device is in the range
        return;
    }
    length = std::min(length, bytes - offset);
    backstore::IoOp io;
    if (!zero_range && features.unmap) {
        io = backstore::IoOp::unmap;
    } else if (features.write_zeroes) {
        io = backstore::IoOp::write_zeroes;
    } else if (zero_range) {
        write_zeroes_by_writing(offset, length, std::move(done));
        return;
    } else {
        done(count(EOPNOTSUPP));
        return;
    }
    auto* op = new Op;
    op->done = std::move(done);
    op->request.op = io;
    op->request.offset = offset;
    op->request.length = length;
    submit(op);
}

void DeviceFile::write_zeroes_by_writing(uint64_t offset, uint64_t length, Done done) {
    auto* op = new ZeroOp;
    op->file = this;
    op->zeroes = Buffer::allocate_zeroed(size_t(std::min<uint64_t>(length, max_request)));
    op->offset = offset;
    op->end = offset + length;
    op->done = std::move(done);
    next_zero_write(op);
}

void DeviceFile::next_zero_write(ZeroOp* op) {
    uint64_t piece = std::min<uint64_t>(op->zeroes.size(), op->end - op->offset);
    op->iov = {op->zeroes.data(), size_t(piece)};
    op->request.op = backstore::IoOp::write;
    op->request.offset = op->offset;
    op->request.length = piece;
    op->request.iov = &op->iov;
    op->request.iovcnt = 1;
    op->request.done = [op, piece](int result) {
        op->offset += piece;
        if (result == 0 && op->offset < op->end) {
            // This closure may be op->request.done itself, which the next piece's callback replaces:
            // nothing of it is touched after this call.
            op->file->next_zero_write(op);
            return;
        }
        DeviceFile* file = op->file;
        Done done = std::move(op->done);
        delete op;
        done(file->count(result < 0 ? -result : result));
    };
    _device->submit(op->request);
}

} // namespace ispace::attach
