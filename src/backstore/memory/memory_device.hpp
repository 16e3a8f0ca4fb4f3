// The memory backstore: a zero-filled RAM disk, allocated lazily in chunks.
//
// A chunk is allocated on its first write and freed when unmapped in full, so a large memory LUN costs
// only what has been written. Several reactors may use one device: chunk pointers are atomics, and a
// sharded reader/writer lock keeps a chunk from being freed (unmap) while another reactor copies into
// or out of it. Overlapping concurrent writes land in an unspecified order, as on a disk.
//
// The chunk pointers sit in a two-level table (pages of 4096 pointers, each page allocated on first
// write), so that the device can grow or shrink (resize) without moving a table that other reactors are
// reading: a page, once published, stays where it is until the device is destroyed.
#pragma once

#include "backstore/device.hpp"
#include "backstore/registry.hpp"
#include "backstore/spec_parse.hpp"

#include <atomic>
#include <memory>
#include <shared_mutex>

namespace ispace::backstore {

class MemoryDevice final : public Device {
public:
    static constexpr uint64_t chunk_size = uint64_t(1) << 20;
    static constexpr uint64_t chunks_per_page = 4096;
    static constexpr uint64_t max_pages = 4096;
    // 16 TiB: more than any RAM disk needs, and what the fixed first level of the table can address.
    static constexpr uint64_t max_size = chunk_size * chunks_per_page * max_pages;

    MemoryDevice(uint64_t size, uint32_t block_size);
    ~MemoryDevice() override;
    MemoryDevice(const MemoryDevice&) = delete;
    MemoryDevice& operator=(const MemoryDevice&) = delete;

    std::string_view kind() const override { return "memory"; }
    std::string describe() const override;
    Geometry geometry() const override { return _geometry.load(); }
    Features features() const override;
    uint64_t identity() const override { return _identity; }
    void submit(IoRequest& request) override;
    // Chunk-granular: a chunk never written (or unmapped in full) is unmapped.
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<Extent>>)> done) override;
    // Growing costs nothing until written; shrinking frees the chunks past the new end and zeroes the
    // rest of the last one, so that a later grow reads zeroes there.
    Result<void> resize(uint64_t bytes) override;

    // Bytes of RAM held by chunks, for tests and metrics.
    uint64_t allocated_bytes() const { return _allocated.load(std::memory_order_relaxed); }

private:
    static constexpr size_t lock_shards = 64;

    int do_read(const IoRequest& request);
    int do_write(const IoRequest& request);
    int do_zero(const IoRequest& request, bool free_whole_chunks);
    // The bytes of chunk `index` inside the device now (the last one may be partial).
    uint64_t chunk_bytes(uint64_t index) const;
    // The slot of chunk `index`; null when its page does not exist and `create` is false (or the
    // page cannot be allocated).
    std::atomic<uint8_t*>* slot(uint64_t index, bool create);
    uint8_t* chunk(uint64_t index) { return load_chunk(slot(index, false)); }
    static uint8_t* load_chunk(std::atomic<uint8_t*>* s) {
        return s ? s->load(std::memory_order_acquire) : nullptr;
    }
    void free_chunk(uint64_t index);
    std::shared_mutex& lock_for(uint64_t index) { return _locks[index % lock_shards]; }

    AtomicGeometry _geometry;
    uint64_t _identity;
    std::unique_ptr<std::atomic<std::atomic<uint8_t*>*>[]> _pages; // max_pages entries
    std::mutex _resize_mutex;
    std::shared_mutex _locks[lock_shards];
    std::atomic<uint64_t> _allocated{0};
};

// Registers the "memory" kind (kinds.cpp).
void register_memory_kind(Registry& registry);

} // namespace ispace::backstore
