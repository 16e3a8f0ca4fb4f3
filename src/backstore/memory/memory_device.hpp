// The memory backstore: a zero-filled RAM disk, allocated lazily in chunks.
//
// A chunk is allocated on its first write and freed when unmapped in full, so a large memory LUN costs
// only what has been written. Several reactors may use one device: chunk pointers are atomics, and a
// sharded reader/writer lock keeps a chunk from being freed (unmap) while another reactor copies into
// or out of it. Overlapping concurrent writes land in an unspecified order, as on a disk.
#pragma once

#include "backstore/device.hpp"

#include <atomic>
#include <memory>
#include <shared_mutex>

namespace ispace::backstore {

class MemoryDevice final : public Device {
public:
    static constexpr uint64_t chunk_size = uint64_t(1) << 20;

    MemoryDevice(uint64_t size, uint32_t block_size);
    ~MemoryDevice() override;
    MemoryDevice(const MemoryDevice&) = delete;
    MemoryDevice& operator=(const MemoryDevice&) = delete;

    std::string_view kind() const override { return "memory"; }
    std::string describe() const override;
    Geometry geometry() const override { return _geometry; }
    Features features() const override;
    uint64_t identity() const override { return _identity; }
    void submit(IoRequest& request) override;
    // Chunk-granular: a chunk never written (or unmapped in full) is unmapped.
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<Extent>>)> done) override;

    // Bytes of RAM held by chunks, for tests and metrics.
    uint64_t allocated_bytes() const { return _allocated.load(std::memory_order_relaxed); }

private:
    static constexpr size_t lock_shards = 64;

    int do_read(const IoRequest& request);
    int do_write(const IoRequest& request);
    int do_zero(const IoRequest& request, bool free_whole_chunks);
    uint64_t chunk_bytes(uint64_t index) const;
    std::shared_mutex& lock_for(uint64_t index) { return _locks[index % lock_shards]; }

    Geometry _geometry;
    uint64_t _identity;
    uint64_t _chunk_count;
    std::unique_ptr<std::atomic<uint8_t*>[]> _chunks;
    std::shared_mutex _locks[lock_shards];
    std::atomic<uint64_t> _allocated{0};
};

} // namespace ispace::backstore
