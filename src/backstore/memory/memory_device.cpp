#include "backstore/memory/memory_device.hpp"

#include "backstore/detail.hpp"
#include "net/reactor.hpp"

#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <mutex>

namespace ispace::backstore {
namespace {

// Calls fn(chunk_index, offset_in_chunk, length) for each chunk piece of [offset, offset+length).
template <typename Fn> int for_each_piece(uint64_t offset, uint64_t length, uint64_t chunk, Fn&& fn) {
    while (length > 0) {
        uint64_t index = offset / chunk;
        uint64_t in_chunk = offset % chunk;
        uint64_t n = std::min(length, chunk - in_chunk);
        int r = fn(index, in_chunk, n);
        if (r != 0) {
            return r;
        }
        offset += n;
        length -= n;
    }
    return 0;
}

} // namespace

MemoryDevice::MemoryDevice(uint64_t size, uint32_t block_size)
    : _geometry{block_size, size / block_size}, _identity(detail::random_identity()),
      _chunk_count((size + chunk_size - 1) / chunk_size),
      _chunks(std::make_unique<std::atomic<uint8_t*>[]>(_chunk_count)) {
    for (uint64_t i = 0; i < _chunk_count; ++i) {
        _chunks[i].store(nullptr, std::memory_order_relaxed);
    }
}

MemoryDevice::~MemoryDevice() {
    for (uint64_t i = 0; i < _chunk_count; ++i) {
        std::free(_chunks[i].load(std::memory_order_relaxed));
    }
}

std::string MemoryDevice::describe() const {
    std::string text = "memory:" + detail::compact_size(_geometry.bytes());
    if (_geometry.block_size != 512) {
        text += fmt::format(",block={}", _geometry.block_size);
    }
    return text;
}

Features MemoryDevice::features() const {
    Features f;
    f.thin = true;
    f.unmap = true;
    f.write_zeroes = true;
    f.allocation_status = true;
    f.volatile_cache = false; // RAM is the medium: nothing more durable to flush to
    return f;
}

uint64_t MemoryDevice::chunk_bytes(uint64_t index) const {
    return std::min(chunk_size, _geometry.bytes() - index * chunk_size);
}

void MemoryDevice::submit(IoRequest& request) {
    int error = 0;
    if (request.op != IoOp::flush) {
        error = detail::check_range(request, _geometry);
    }
    if (error == 0 && (request.op == IoOp::read || request.op == IoOp::write) &&
        detail::iov_bytes(request.iov, request.iovcnt) != request.length) {
        error = -EINVAL;
    }
    if (error == 0) {
        switch (request.op) {
        case IoOp::read:
            error = do_read(request);
            break;
        case IoOp::write:
            error = do_write(request);
            break;
        case IoOp::flush:
            break;
        case IoOp::unmap:
            error = do_zero(request, true);
            break;
        case IoOp::write_zeroes:
            // Zero in place; chunks never written already read as zeroes and stay unallocated.
            error = do_zero(request, false);
            break;
        }
    }
    detail::complete_later(request, error);
}

int MemoryDevice::do_read(const IoRequest& request) {
    detail::IovCursor cursor(request.iov, request.iovcnt);
    return for_each_piece(request.offset, request.length, chunk_size,
                          [&](uint64_t index, uint64_t at, uint64_t n) {
                              std::shared_lock lock(lock_for(index));
                              uint8_t* chunk = _chunks[index].load(std::memory_order_acquire);
                              if (chunk) {
                                  cursor.copy_in(chunk + at, n);
                              } else {
                                  cursor.zero(n);
                              }
                              return 0;
                          });
}

int MemoryDevice::do_write(const IoRequest& request) {
    detail::IovCursor cursor(request.iov, request.iovcnt);
    return for_each_piece(
        request.offset, request.length, chunk_size, [&](uint64_t index, uint64_t at, uint64_t n) {
            std::shared_lock lock(lock_for(index));
            uint8_t* chunk = _chunks[index].load(std::memory_order_acquire);
            if (!chunk) {
                // calloc: large zeroed allocations come from mmap, so untouched pages still cost nothing.
                auto* fresh = static_cast<uint8_t*>(std::calloc(1, chunk_bytes(index)));
                if (!fresh) {
                    return -ENOMEM;
                }
                uint8_t* expected = nullptr;
                if (_chunks[index].compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
                    chunk = fresh;
                    _allocated.fetch_add(chunk_bytes(index), std::memory_order_relaxed);
                } else {
                    std::free(fresh); // another reactor allocated it first
                    chunk = expected;
                }
            }
            cursor.copy_out(chunk + at, n);
            return 0;
        });
}

int MemoryDevice::do_zero(const IoRequest& request, bool free_whole_chunks) {
    return for_each_piece(
        request.offset, request.length, chunk_size, [&](uint64_t index, uint64_t at, uint64_t n) {
            if (free_whole_chunks && at == 0 && n == chunk_bytes(index)) {
                // Exclusive: no reader or writer may be inside the chunk while it is freed.
                std::unique_lock lock(lock_for(index));
                uint8_t* chunk = _chunks[index].exchange(nullptr, std::memory_order_acq_rel);
                if (chunk) {
                    std::free(chunk);
                    _allocated.fetch_sub(chunk_bytes(index), std::memory_order_relaxed);
                }
                return 0;
            }
            std::shared_lock lock(lock_for(index));
            uint8_t* chunk = _chunks[index].load(std::memory_order_acquire);
            if (chunk) {
                std::memset(chunk + at, 0, n);
            }
            return 0;
        });
}

void MemoryDevice::allocation_status(uint64_t offset, uint64_t length,
                                     Function<void(Result<std::vector<Extent>>)> done) {
    uint64_t bytes = _geometry.bytes();
    uint64_t start = std::min(offset, bytes);
    uint64_t end = length > bytes - start ? bytes : start + length;
    std::vector<Extent> extents;
    (void)for_each_piece(start, end - start, chunk_size, [&](uint64_t index, uint64_t at, uint64_t n) {
        bool mapped = _chunks[index].load(std::memory_order_acquire) != nullptr;
        uint64_t piece = index * chunk_size + at;
        if (!extents.empty() && extents.back().mapped == mapped) {
            extents.back().length += n;
        } else {
            extents.push_back({piece, n, mapped});
        }
        return 0;
    });
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "allocation_status is called on a reactor thread");
    reactor->defer(
        [extents = std::move(extents), done = std::move(done)]() mutable { done(std::move(extents)); });
}

} // namespace ispace::backstore
