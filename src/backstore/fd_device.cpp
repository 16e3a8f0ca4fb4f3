#include "backstore/fd_device.hpp"

#include "backstore/detail.hpp"
#include "common/buffer.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <span>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ispace::backstore {
namespace {

constexpr int punch_hole_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
constexpr int zero_range_mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
constexpr int write_zeroes_by_hand = -1;
// The zero source for filesystems without ZERO_RANGE/PUNCH_HOLE: one buffer per request, reused.
constexpr size_t zero_chunk = size_t(1) << 20;

} // namespace

// One request in flight. Lives from submit() to finish(); its FileIo is what the reactor holds.
struct FdDevice::Op {
    FdDevice* device = nullptr;
    IoRequest* request = nullptr;
    net::Reactor* reactor = nullptr;
    net::FileIo io;
    uint64_t progress = 0;   // bytes done (read/write, zero-writing)
    std::vector<iovec> tail; // the rest of request->iov after a short transfer
    int stage = 0;           // zeroing: position in the fallocate fallback chain
    Buffer zeroes;
    iovec zero_iov{};
};

FdDevice::FdDevice(std::string path, int fd, Geometry geometry, Features features, uint64_t identity)
    : _path(std::move(path)), _fd(fd), _geometry(geometry.block_size, geometry.block_count),
      _features(features), _identity(identity) {}

FdDevice::~FdDevice() {
    if (_fd >= 0) {
        ::close(_fd);
    }
}

Result<uint64_t> FdDevice::rescan() {
    struct stat st {};
    if (::fstat(_fd, &st) != 0) {
        int err = errno;
        return make_error(fmt::format("{}: cannot read its size: {}", _path, std::strerror(err)), err);
    }
    uint64_t bytes = uint64_t(st.st_size);
    if (S_ISBLK(st.st_mode) && ::ioctl(_fd, BLKGETSIZE64, &bytes) != 0) {
        int err = errno;
        return make_error(fmt::format("{}: cannot read the device size: {}", _path, std::strerror(err)), err);
    }
    Geometry now = _geometry.load();
    uint64_t blocks = bytes / now.block_size;
    if (blocks < now.block_count) {
        return make_error(fmt::format("{}: it shrank from {} to {} bytes under the device", _path,
                                      now.bytes(), blocks * now.block_size),
                          EIO);
    }
    if (blocks > now.block_count) {
        _geometry.set_block_count(blocks);
        log_info("{}: grew from outside: {} -> {} bytes", _path, now.bytes(), blocks * now.block_size);
        notify(DeviceEvent::resized);
    }
    return blocks * now.block_size;
}

void FdDevice::submit(IoRequest& request) {
    int error = 0;
    bool modifies =
        request.op == IoOp::write || request.op == IoOp::unmap || request.op == IoOp::write_zeroes;
    if (modifies && _features.read_only) {
        error = -EROFS;
    } else if (request.op == IoOp::unmap && !_features.unmap) {
        error = -EOPNOTSUPP;
    } else if (request.op != IoOp::flush) {
        error = detail::check_range(request, _geometry.load());
        if (error == 0 && (request.op == IoOp::read || request.op == IoOp::write) &&
            detail::iov_bytes(request.iov, request.iovcnt) != request.length) {
            error = -EINVAL; // a caller bug; looping on it would never finish
        }
    }
    if (error != 0 || (request.op != IoOp::flush && request.length == 0)) {
        detail::complete_later(request, error);
        return;
    }

    auto* op = new Op;
    op->device = this;
    op->request = &request;
    op->reactor = net::Reactor::current();
    assert(op->reactor && "backstore I/O is submitted on a reactor thread");
    op->io.fd = _fd;
    switch (request.op) {
    case IoOp::read:
    case IoOp::write:
        start_rw(op);
        break;
    case IoOp::flush:
        start_flush(op);
        break;
    case IoOp::unmap:
    case IoOp::write_zeroes:
        start_zeroing(op);
        break;
    }
}

void FdDevice::finish(Op* op, int error) {
    auto done = std::move(op->request->done);
    delete op;
    done(error);
}

// ---------------------------------------------------------------------------------------------------
// Read and write: continue short transfers until the request is complete.

void FdDevice::start_rw(Op* op) {
    IoRequest& request = *op->request;
    bool write = request.op == IoOp::write;
    auto& io = op->io;
    io.op = write ? net::FileIo::Op::writev : net::FileIo::Op::readv;
    io.offset = request.offset + op->progress;
    // FUA: every piece is written with RWF_DSYNC, so the whole request is durable when it completes.
    io.rwf_dsync = write && request.fua;
    if (op->progress == 0) {
        io.iov = request.iov;
        io.iovcnt = request.iovcnt;
    } else {
        op->tail.clear();
        detail::IovCursor cursor(request.iov, request.iovcnt);
        cursor.skip(op->progress);
        cursor.walk(request.length - op->progress, [&](uint8_t* p, size_t len) {
            op->tail.push_back({p, len});
        });
        io.iov = op->tail.data();
        io.iovcnt = unsigned(op->tail.size());
    }
    io.done = [op](int result) { op->device->on_rw(op, result); };
    op->reactor->submit(io);
}

void FdDevice::on_rw(Op* op, int result) {
    IoRequest& request = *op->request;
    if (result == -EINTR || result == -EAGAIN) {
        start_rw(op);
        return;
    }
    if (result < 0) {
        finish(op, result);
        return;
    }
    if (result == 0) {
        if (request.op == IoOp::read) {
            // End of file inside the device: only if the file shrank under us. Past EOF reads as zeroes.
            detail::IovCursor cursor(request.iov, request.iovcnt);
            cursor.skip(op->progress);
            cursor.zero(request.length - op->progress);
            finish(op, 0);
        } else {
            finish(op, -EIO); // a write that moves nothing would loop forever
        }
        return;
    }
    op->progress += uint64_t(result);
    if (op->progress >= request.length) {
        finish(op, 0);
        return;
    }
    start_rw(op);
}

// ---------------------------------------------------------------------------------------------------
// Flush

void FdDevice::start_flush(Op* op) {
    // fdatasync covers the whole file: a range-bounded flush has no durable system call of its own.
    op->io.op = net::FileIo::Op::fdatasync;
    op->io.done = [op](int result) {
        if (result == -EINTR || result == -EAGAIN) {
            op->device->start_flush(op);
            return;
        }
        finish(op, result < 0 ? result : 0);
    };
    op->reactor->submit(op->io);
}

// ---------------------------------------------------------------------------------------------------
// Unmap and write-zeroes: fallocate modes in order of preference, falling back when the filesystem
// (or block device) says EOPNOTSUPP, and finally writing zeroes.
//
//   unmap:        PUNCH_HOLE (deallocates) -> ZERO_RANGE -> write zeroes
//   write_zeroes: ZERO_RANGE (stays allocated) -> PUNCH_HOLE (thin only) -> write zeroes

namespace {

int zeroing_mode(IoOp op, bool thin, int stage) {
    static constexpr int unmap_chain[] = {punch_hole_mode, zero_range_mode};
    static constexpr int zeroes_thin_chain[] = {zero_range_mode, punch_hole_mode};
    static constexpr int zeroes_thick_chain[] = {zero_range_mode};
    std::span<const int> chain = op == IoOp::unmap ? std::span<const int>(unmap_chain)
                                 : thin            ? std::span<const int>(zeroes_thin_chain)
                                                   : std::span<const int>(zeroes_thick_chain);
    return size_t(stage) < chain.size() ? chain[size_t(stage)] : write_zeroes_by_hand;
}

} // namespace

void FdDevice::start_zeroing(Op* op) {
    op->stage = 0;
    try_fallocate(op);
}

void FdDevice::try_fallocate(Op* op) {
    for (;;) {
        int mode = zeroing_mode(op->request->op, _features.thin, op->stage);
        if (mode == write_zeroes_by_hand) {
            write_zeroes_by_writing(op);
            return;
        }
        bool unsupported = mode == punch_hole_mode ? _no_punch_hole.load(std::memory_order_relaxed)
                                                   : _no_zero_range.load(std::memory_order_relaxed);
        if (unsupported) {
            ++op->stage;
            continue;
        }
        auto& io = op->io;
        io.op = net::FileIo::Op::fallocate;
        io.mode = mode;
        io.offset = op->request->offset;
        io.length = op->request->length;
        io.done = [op](int result) { op->device->on_fallocate(op, result); };
        op->reactor->submit(io);
        return;
    }
}

void FdDevice::on_fallocate(Op* op, int result) {
    if (result == -EINTR || result == -EAGAIN) {
        try_fallocate(op);
        return;
    }
    if (result == -EOPNOTSUPP) {
        (op->io.mode == punch_hole_mode ? _no_punch_hole : _no_zero_range)
            .store(true, std::memory_order_relaxed);
        ++op->stage;
        try_fallocate(op);
        return;
    }
    finish(op, result < 0 ? result : 0);
}

void FdDevice::write_zeroes_by_writing(Op* op) {
    IoRequest& request = *op->request;
    if (!op->zeroes) {
        op->zeroes = Buffer::allocate_zeroed(size_t(std::min<uint64_t>(request.length, zero_chunk)));
    }
    uint64_t chunk = std::min<uint64_t>(op->zeroes.size(), request.length - op->progress);
    op->zero_iov = {op->zeroes.data(), size_t(chunk)};
    auto& io = op->io;
    io.op = net::FileIo::Op::writev;
    io.iov = &op->zero_iov;
    io.iovcnt = 1;
    io.offset = request.offset + op->progress;
    io.rwf_dsync = false;
    io.done = [op](int result) { op->device->on_zero_write(op, result); };
    op->reactor->submit(io);
}

void FdDevice::on_zero_write(Op* op, int result) {
    if (result == -EINTR || result == -EAGAIN) {
        write_zeroes_by_writing(op);
        return;
    }
    if (result <= 0) {
        finish(op, result < 0 ? result : -EIO);
        return;
    }
    op->progress += uint64_t(result);
    if (op->progress >= op->request->length) {
        finish(op, 0);
        return;
    }
    write_zeroes_by_writing(op);
}

// ---------------------------------------------------------------------------------------------------

void FdDevice::allocation_status(uint64_t offset, uint64_t length,
                                 Function<void(Result<std::vector<Extent>>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "allocation_status is called on a reactor thread");
    reactor->defer([offset, length, done = std::move(done)]() mutable {
        done(std::vector<Extent>{{offset, length, true}});
    });
}

} // namespace ispace::backstore
