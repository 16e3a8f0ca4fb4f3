#include "ispace/buffer.hpp"

#include <algorithm>
#include <cassert>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <new>
#include <sys/mman.h>
#include <vector>

namespace ispace {
namespace {

constexpr unsigned min_class_shift = 12; // 4 KiB
constexpr unsigned max_class_shift = 26; // 64 MiB
constexpr unsigned class_count = max_class_shift - min_class_shift + 1;
// Blocks of this capacity and more are mapped directly: glibc would serve them from a heap after its
// dynamic mmap threshold rose, and keep them when freed (the probe saw 2 of 2.45 GB stay resident).
constexpr size_t mapped_capacity = size_t(256) << 10;
// A thread keeps at most this many idle bytes; beyond it, released blocks go back to the system.
constexpr uint64_t thread_cache_limit = uint64_t(64) << 20;

unsigned size_class_for(size_t size) {
    unsigned shift = min_class_shift;
    while ((size_t(1) << shift) < size) {
        ++shift;
    }
    return shift - min_class_shift;
}

size_t capacity_of(unsigned cls) {
    return size_t(1) << (cls + min_class_shift);
}

void* system_allocate(size_t capacity) {
    // One alignment unit in front of the data holds the block header and keeps data aligned.
    size_t bytes = Buffer::alignment + capacity;
    if (capacity >= mapped_capacity) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? nullptr : p;
    }
    return std::aligned_alloc(Buffer::alignment, bytes);
}

void system_free(void* block, size_t capacity) {
    if (capacity >= mapped_capacity) {
        ::munmap(block, Buffer::alignment + capacity);
        return;
    }
    std::free(block);
}

struct ThreadCache {
    std::vector<void*> free_blocks[class_count];
    // Per class, the fewest blocks the free list held since the last trim_idle(): that many were not
    // needed by any allocation meanwhile.
    size_t low_water[class_count] = {};
    Buffer::Stats stats;
    ~ThreadCache() { trim(); }
    void trim() {
        for (unsigned cls = 0; cls < class_count; ++cls) {
            for (void* block : free_blocks[cls]) {
                system_free(block, capacity_of(cls));
            }
            free_blocks[cls].clear();
            low_water[cls] = 0;
        }
        stats.cached_bytes = 0;
    }
    uint64_t trim_idle() {
        uint64_t freed = 0;
        uint64_t freed_small = 0;
        for (unsigned cls = 0; cls < class_count; ++cls) {
            auto& list = free_blocks[cls];
            size_t idle = std::min(low_water[cls], list.size());
            // The oldest entries are at the front (the list is used as a stack): free those.
            for (size_t i = 0; i < idle; ++i) {
                system_free(list[i], capacity_of(cls));
            }
            list.erase(list.begin(), list.begin() + ptrdiff_t(idle));
            uint64_t bytes = uint64_t(idle) * capacity_of(cls);
            freed += bytes;
            if (capacity_of(cls) < mapped_capacity) {
                freed_small += bytes;
            }
            low_water[cls] = list.size();
        }
        stats.cached_bytes -= freed;
        if (freed_small >= (uint64_t(1) << 20)) {
            ::malloc_trim(0); // the heap's free pages too
        }
        return freed;
    }
};

ThreadCache& cache() {
    thread_local ThreadCache instance;
    return instance;
}

} // namespace

Buffer Buffer::allocate(size_t size) {
    static_assert(sizeof(Block) <= alignment, "a pooled block's header fits in front of its data");
    assert(size <= max_size);
    if (size == 0) {
        size = 1; // a real, empty-but-valid buffer keeps callers free of null checks
    }
    unsigned cls = size_class_for(size);
    size_t capacity = capacity_of(cls);
    auto& tc = cache();
    void* raw = nullptr;
    if (!tc.free_blocks[cls].empty()) {
        raw = tc.free_blocks[cls].back();
        tc.free_blocks[cls].pop_back();
        tc.low_water[cls] = std::min(tc.low_water[cls], tc.free_blocks[cls].size());
        tc.stats.cached_bytes -= capacity;
        ++tc.stats.reuses;
    } else {
        raw = system_allocate(capacity);
        if (!raw) {
            throw std::bad_alloc();
        }
        ++tc.stats.allocations;
    }
    auto* block = new (raw) Block{};
    block->refs.store(1, std::memory_order_relaxed);
    block->size_class = cls;
    block->capacity = capacity;
    block->bytes = reinterpret_cast<uint8_t*>(raw) + alignment;
    Buffer b;
    b._block = block;
    b._size = size;
    return b;
}

Buffer Buffer::wrap(uint8_t* data, size_t size, ReleaseHook release, void* context) {
    auto* block = new Block{};
    block->refs.store(1, std::memory_order_relaxed);
    block->size_class = external_class;
    block->capacity = size;
    block->bytes = data;
    block->release = release;
    block->context = context;
    Buffer b;
    b._block = block;
    b._size = size;
    return b;
}

Buffer Buffer::slice(size_t offset, size_t size) const {
    assert(_block && offset <= _size && size <= _size - offset);
    if (offset == 0 && size == _size) {
        return *this;
    }
    return wrap(
        data() + offset, size, [](void* parent, uint8_t*) { delete static_cast<Buffer*>(parent); },
        new Buffer(*this));
}

Buffer Buffer::allocate_zeroed(size_t size) {
    Buffer b = allocate(size);
    std::memset(b.data(), 0, b.size());
    return b;
}

void Buffer::resize(size_t size) {
    assert(_block && size <= _block->capacity);
    _size = size;
}

void Buffer::release() {
    if (!_block) {
        return;
    }
    if (_block->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) {
        _block = nullptr;
        return;
    }
    Block* block = std::exchange(_block, nullptr);
    if (block->size_class == external_class) {
        ReleaseHook hook = block->release;
        void* context = block->context;
        uint8_t* bytes = block->bytes;
        delete block;
        if (hook) {
            hook(context, bytes);
        }
        return;
    }
    auto& tc = cache();
    size_t capacity = block->capacity;
    unsigned cls = block->size_class;
    block->~Block();
    if (tc.stats.cached_bytes + capacity <= thread_cache_limit) {
        tc.stats.cached_bytes += capacity;
        tc.free_blocks[cls].push_back(block);
    } else {
        system_free(block, capacity);
    }
}

Buffer::Stats Buffer::thread_stats() {
    return cache().stats;
}
void Buffer::trim_thread_cache() {
    cache().trim();
}
uint64_t Buffer::trim_idle_thread_cache() {
    return cache().trim_idle();
}

} // namespace ispace
