// Pooled, 4 KiB-aligned, reference-counted data buffers: the currency of the data path.
//
// A Data-Out segment is received straight into a task's Buffer, which is then handed to the backstore
// (O_DIRECT-friendly alignment); a backstore fills a Buffer that the connection then sends with writev.
// Several owners may hold one buffer (a task and a queued PDU that points into it), hence the count.
//
// Buffers come from size classes (powers of two, 4 KiB to 64 MiB) cached per thread, so the fast path
// does no malloc. A buffer may be released on any thread; it joins that thread's cache, up to a cap.
// Classes of 256 KiB and more are mapped and unmapped directly (not left to malloc, which keeps freed
// memory of that size), and a thread that calls trim_idle_thread_cache() now and then (each reactor,
// once a second) returns what its cache did not use since the last call: memory goes back to the
// system once a burst is over.
//
// A Buffer may also refer to memory it does not own (wrap()): a receive buffer that some other layer
// allocated, handed on without a copy. Its owner's release hook runs when the last reference drops, on
// whichever thread drops it, so the memory cannot be reused while anything (a queued PDU, a command the
// initiator still retries) may still read it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace ispace {

class Buffer {
public:
    static constexpr size_t alignment = 4096;
    static constexpr size_t max_size = size_t(64) << 20;

    Buffer() = default;
    // A buffer of at least `size` bytes (size() reports exactly `size`). Contents are uninitialised.
    // Sizes above max_size are a caller bug: callers bound what they allocate from the wire.
    static Buffer allocate(size_t size);
    // As allocate(), zero-filled.
    static Buffer allocate_zeroed(size_t size);
    // A buffer over `size` bytes at `data`, which the caller owns: `release(context, data)` runs once,
    // when the last reference is dropped (on that thread); until then the memory must stay valid and
    // unchanged. capacity() is `size`; resize() may only shrink it.
    using ReleaseHook = void (*)(void* context, uint8_t* data);
    static Buffer wrap(uint8_t* data, size_t size, ReleaseHook release, void* context);
    // `size` bytes of this buffer from `offset`, sharing its memory (which the slice keeps alive): this
    // buffer itself when that is all of it.
    Buffer slice(size_t offset, size_t size) const;

    Buffer(const Buffer& other) noexcept : _block(other._block), _size(other._size) { retain(); }
    Buffer(Buffer&& other) noexcept
        : _block(std::exchange(other._block, nullptr)), _size(std::exchange(other._size, 0)) {}
    Buffer& operator=(const Buffer& other) noexcept {
        if (this != &other) {
            release();
            _block = other._block;
            _size = other._size;
            retain();
        }
        return *this;
    }
    Buffer& operator=(Buffer&& other) noexcept {
        if (this != &other) {
            release();
            _block = std::exchange(other._block, nullptr);
            _size = std::exchange(other._size, 0);
        }
        return *this;
    }
    ~Buffer() { release(); }

    uint8_t* data() const { return _block ? _block->bytes : nullptr; }
    size_t size() const { return _size; }
    size_t capacity() const { return _block ? _block->capacity : 0; }
    bool empty() const { return _size == 0; }
    explicit operator bool() const { return _block != nullptr; }
    std::span<uint8_t> span() const { return {data(), _size}; }
    // Shrinks or grows the visible size within capacity().
    void resize(size_t size);
    void reset() {
        release();
        _block = nullptr;
        _size = 0;
    }

    // Pool statistics of the calling thread, for benchmarks and tests.
    struct Stats {
        uint64_t allocations = 0; // served from the system allocator
        uint64_t reuses = 0;      // served from the thread cache
        uint64_t cached_bytes = 0;
    };
    static Stats thread_stats();
    // Frees the calling thread's cache (thread exit does this too).
    static void trim_thread_cache();
    // Frees the blocks of the calling thread's cache that no allocation needed since the last call
    // (per size class, the fewest that were idle all along). Returns the bytes freed.
    static uint64_t trim_idle_thread_cache();

private:
    // A pooled block's header sits in the alignment unit in front of its data; a wrapped one's is
    // allocated apart (size_class external_class) and carries its owner's hook.
    struct Block {
        std::atomic<uint32_t> refs;
        uint32_t size_class;
        size_t capacity;
        uint8_t* bytes;
        ReleaseHook release = nullptr; // wrapped blocks only
        void* context = nullptr;
    };
    static constexpr uint32_t external_class = UINT32_MAX;
    void retain() {
        if (_block) {
            _block->refs.fetch_add(1, std::memory_order_relaxed);
        }
    }
    void release();

    Block* _block = nullptr;
    size_t _size = 0;
};

} // namespace ispace
