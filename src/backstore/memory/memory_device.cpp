#include "backstore/memory/memory_device.hpp"

#include "backstore/detail.hpp"
#include "net/reactor.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <mutex>
#include <new>

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
    : _geometry(block_size, size / block_size), _identity(detail::random_identity()),
      _pages(std::make_unique<std::atomic<std::atomic<uint8_t*>*>[]>(max_pages)) {
    for (uint64_t i = 0; i < max_pages; ++i) {
        _pages[i].store(nullptr, std::memory_order_relaxed);
    }
}

MemoryDevice::~MemoryDevice() {
    for (uint64_t p = 0; p < max_pages; ++p) {
        std::atomic<uint8_t*>* page = _pages[p].load(std::memory_order_relaxed);
        if (!page) {
            continue;
        }
        for (uint64_t i = 0; i < chunks_per_page; ++i) {
            std::free(page[i].load(std::memory_order_relaxed));
        }
        delete[] page;
    }
}

std::atomic<uint8_t*>* MemoryDevice::slot(uint64_t index, bool create) {
    uint64_t p = index / chunks_per_page;
    if (p >= max_pages) {
        return nullptr;
    }
    std::atomic<uint8_t*>* page = _pages[p].load(std::memory_order_acquire);
    if (!page && create) {
        auto* fresh = new (std::nothrow) std::atomic<uint8_t*>[chunks_per_page];
        if (!fresh) {
            return nullptr;
        }
        for (uint64_t i = 0; i < chunks_per_page; ++i) {
            fresh[i].store(nullptr, std::memory_order_relaxed);
        }
        if (_pages[p].compare_exchange_strong(page, fresh, std::memory_order_acq_rel)) {
            page = fresh;
        } else {
            delete[] fresh; // another reactor published the page first; `page` holds it
        }
    }
    return page ? &page[index % chunks_per_page] : nullptr;
}

void MemoryDevice::free_chunk(uint64_t index) {
    // Exclusive: no reader or writer may be inside the chunk while it is freed.
    std::unique_lock lock(lock_for(index));
    std::atomic<uint8_t*>* s = slot(index, false);
    uint8_t* chunk = s ? s->exchange(nullptr, std::memory_order_acq_rel) : nullptr;
    if (chunk) {
        std::free(chunk);
        _allocated.fetch_sub(chunk_size, std::memory_order_relaxed);
    }
}

std::string MemoryDevice::describe() const {
    Geometry g = _geometry.load();
    std::string text = "memory:" + detail::compact_size(g.bytes());
    if (g.block_size != 512) {
        text += fmt::format(",block={}", g.block_size);
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
    uint64_t bytes = _geometry.load().bytes();
    return index * chunk_size >= bytes ? 0 : std::min(chunk_size, bytes - index * chunk_size);
}

void MemoryDevice::submit(IoRequest& request) {
    int error = 0;
    if (request.op != IoOp::flush) {
        error = detail::check_range(request, _geometry.load());
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
                              uint8_t* data = chunk(index);
                              if (data) {
                                  cursor.copy_in(data + at, n);
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
            std::atomic<uint8_t*>* s = slot(index, true);
            if (!s) {
                return -ENOMEM;
            }
            uint8_t* data = load_chunk(s);
            if (!data) {
                // Whole chunks, also the last (partial) one: a later grow must not outgrow an allocation.
                // calloc: large zeroed allocations come from mmap, so untouched pages still cost nothing.
                auto* fresh = static_cast<uint8_t*>(std::calloc(1, chunk_size));
                if (!fresh) {
                    return -ENOMEM;
                }
                uint8_t* expected = nullptr;
                if (s->compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
                    data = fresh;
                    _allocated.fetch_add(chunk_size, std::memory_order_relaxed);
                } else {
                    std::free(fresh); // another reactor allocated it first
                    data = expected;
                }
            }
            cursor.copy_out(data + at, n);
            return 0;
        });
}

int MemoryDevice::do_zero(const IoRequest& request, bool free_whole_chunks) {
    return for_each_piece(request.offset, request.length, chunk_size,
                          [&](uint64_t index, uint64_t at, uint64_t n) {
                              if (free_whole_chunks && at == 0 && n == chunk_bytes(index)) {
                                  free_chunk(index);
                                  return 0;
                              }
                              std::shared_lock lock(lock_for(index));
                              uint8_t* data = chunk(index);
                              if (data) {
                                  std::memset(data + at, 0, n);
                              }
                              return 0;
                          });
}

void MemoryDevice::allocation_status(uint64_t offset, uint64_t length,
                                     Function<void(Result<std::vector<Extent>>)> done) {
    uint64_t bytes = _geometry.load().bytes();
    uint64_t start = std::min(offset, bytes);
    uint64_t end = length > bytes - start ? bytes : start + length;
    std::vector<Extent> extents;
    (void)for_each_piece(start, end - start, chunk_size, [&](uint64_t index, uint64_t at, uint64_t n) {
        bool mapped = chunk(index) != nullptr;
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

Result<void> MemoryDevice::resize(uint64_t bytes) {
    if (auto ok = check_resize(bytes); !ok) {
        return ok;
    }
    if (bytes > max_size) {
        return make_error(fmt::format("{}: {} bytes is more than a memory device holds ({})", describe(),
                                      bytes, detail::compact_size(max_size)),
                          EINVAL);
    }
    std::lock_guard resizing(_resize_mutex);
    uint64_t old_bytes = _geometry.load().bytes();
    if (bytes < old_bytes) {
        // Publish the smaller size first: requests past it are refused from now on. The engine holds
        // the whole LU's range lock around a shrink, so none is in flight beyond the new end.
        _geometry.set_block_count(bytes / _geometry.block_size());
        uint64_t first_gone = (bytes + chunk_size - 1) / chunk_size;
        for (uint64_t index = first_gone; index * chunk_size < old_bytes; ++index) {
            free_chunk(index);
        }
        if (uint64_t tail = bytes % chunk_size; tail != 0) {
            std::unique_lock lock(lock_for(bytes / chunk_size));
            if (uint8_t* data = chunk(bytes / chunk_size)) {
                std::memset(data + tail, 0, chunk_size - tail);
            }
        }
    } else {
        _geometry.set_block_count(bytes / _geometry.block_size());
    }
    notify(DeviceEvent::resized);
    return {};
}

} // namespace ispace::backstore
