// Small helpers shared by the backstores: deferred completion, iovec copying, identities.
#pragma once

#include "backstore/device.hpp"
#include "net/reactor.hpp"

#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ispace::backstore::detail {

// Runs request.done(error) on the calling reactor after the current handler: a device that finishes at
// once must still not complete inside submit().
inline void complete_later(IoRequest& request, int error) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "backstore I/O is submitted on a reactor thread");
    IoRequest* r = &request;
    reactor->defer([r, error] {
        // Move `done` out first: the callback may destroy the request that holds it.
        auto done = std::move(r->done);
        done(error);
    });
}

// Checks a request against the geometry: block-aligned and inside the device. 0 or -EINVAL.
inline int check_range(const IoRequest& request, const Geometry& geometry) {
    uint64_t bs = geometry.block_size;
    uint64_t bytes = geometry.bytes();
    if (request.offset % bs != 0 || request.length % bs != 0 || request.offset > bytes ||
        request.length > bytes - request.offset) {
        return -EINVAL;
    }
    return 0;
}

inline uint64_t iov_bytes(const iovec* iov, unsigned iovcnt) {
    uint64_t total = 0;
    for (unsigned i = 0; i < iovcnt; ++i) {
        total += iov[i].iov_len;
    }
    return total;
}

// Walks an iovec array as one byte stream.
class IovCursor {
public:
    IovCursor(const iovec* iov, unsigned iovcnt) : _iov(iov), _count(iovcnt) {}

    // Advances by up to n bytes; `fn(ptr, len)` is called for each contiguous piece.
    template <typename Fn> void walk(size_t n, Fn&& fn) {
        while (n > 0 && _index < _count) {
            size_t avail = _iov[_index].iov_len - _offset;
            size_t take = avail < n ? avail : n;
            if (take > 0) {
                fn(static_cast<uint8_t*>(_iov[_index].iov_base) + _offset, take);
            }
            _offset += take;
            n -= take;
            if (_offset == _iov[_index].iov_len) {
                ++_index;
                _offset = 0;
            }
        }
    }
    void copy_in(const uint8_t* src, size_t n) {
        walk(n, [&](uint8_t* p, size_t len) {
            std::memcpy(p, src, len);
            src += len;
        });
    }
    void copy_out(uint8_t* dst, size_t n) {
        walk(n, [&](uint8_t* p, size_t len) {
            std::memcpy(dst, p, len);
            dst += len;
        });
    }
    void zero(size_t n) {
        walk(n, [](uint8_t* p, size_t len) { std::memset(p, 0, len); });
    }
    void skip(size_t n) {
        walk(n, [](uint8_t*, size_t) {});
    }

private:
    const iovec* _iov;
    unsigned _count;
    unsigned _index = 0;
    size_t _offset = 0;
};

// A well-mixed 64-bit value (splitmix64 finaliser), so identities derived from small numbers (device,
// inode) spread over all 64 bits.
inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

inline uint64_t hash_string(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ULL; // FNV-1a, then mixed
    for (unsigned char c : s) {
        h = (h ^ c) * 0x100000001b3ULL;
    }
    return mix64(h);
}

// An identity for devices with no backing object (memory, null): unique per process run.
uint64_t random_identity();

// "1G", "512M", "4k" or plain bytes: the shortest exact form, as a user would write it in a spec.
std::string compact_size(uint64_t bytes);

} // namespace ispace::backstore::detail
