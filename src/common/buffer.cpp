#include "ispace/buffer.hpp"

#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace ispace {
namespace {

constexpr unsigned min_class_shift = 12; // 4 KiB
constexpr unsigned max_class_shift = 26; // 64 MiB
constexpr unsigned class_count = max_class_shift - min_class_shift + 1;
// A thread keeps at most this many idle bytes; beyond it, released blocks go back to the system.
constexpr uint64_t thread_cache_limit = uint64_t(256) << 20;

unsigned size_class_for(size_t size) {
    unsigned shift = min_class_shift;
    while ((size_t(1) << shift) < size) {
        ++shift;
    }
    return shift - min_class_shift;
}

struct ThreadCache {
    std::vector<void*> free_blocks[class_count];
    Buffer::Stats stats;
    ~ThreadCache() { trim(); }
    void trim() {
        for (auto& list : free_blocks) {
            for (void* block : list) {
                std::free(block);
            }
            list.clear();
        }
        stats.cached_bytes = 0;
    }
};

ThreadCache& cache() {
    thread_local ThreadCache instance;
    return instance;
}

} // namespace

Buffer Buffer::allocate(size_t size) {
    assert(size <= max_size);
    if (size == 0) {
        size = 1; // a real, empty-but-valid buffer keeps callers free of null checks
    }
    unsigned cls = size_class_for(size);
    size_t capacity = size_t(1) << (cls + min_class_shift);
    auto& tc = cache();
    void* raw = nullptr;
    if (!tc.free_blocks[cls].empty()) {
        raw = tc.free_blocks[cls].back();
        tc.free_blocks[cls].pop_back();
        tc.stats.cached_bytes -= capacity;
        ++tc.stats.reuses;
    } else {
        // One alignment unit in front of the data holds the block header and keeps data aligned.
        raw = std::aligned_alloc(alignment, alignment + capacity);
        if (!raw) {
            throw std::bad_alloc();
        }
        ++tc.stats.allocations;
    }
    auto* block = new (raw) Block{};
    block->refs.store(1, std::memory_order_relaxed);
    block->size_class = cls;
    block->capacity = capacity;
    Buffer b;
    b._block = block;
    b._size = size;
    return b;
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
    auto& tc = cache();
    if (tc.stats.cached_bytes + block->capacity <= thread_cache_limit) {
        tc.stats.cached_bytes += block->capacity;
        unsigned cls = block->size_class;
        block->~Block();
        tc.free_blocks[cls].push_back(block);
    } else {
        block->~Block();
        std::free(block);
    }
}

Buffer::Stats Buffer::thread_stats() {
    return cache().stats;
}
void Buffer::trim_thread_cache() {
    cache().trim();
}

} // namespace ispace
