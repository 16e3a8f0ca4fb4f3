// Where a thin pool's metadata pages live: an abstract array of 4 KiB pages with a write barrier. The
// pool only ever asks for these four things, so the same commit protocol runs against memory in the tests
// and, for a space, against the metadata area that every member keeps (a write goes to every member's
// copy; a read may come from any copy, and the pool tries the next copy when a page fails its checks —
// so the map is mirrored even when the data is striped).
//
// Durability contract (what the commit protocol relies on): a write may reach the medium in any order,
// whole or torn, until flush() returns; after flush() returns every write before it is durable.
//
// Threading: synchronous. The pool calls it from wherever its owner runs the commit; a store over member
// I/O is meant to be driven from a worker thread (never a reactor), as the label writes at open are.
#pragma once

#include "common/result.hpp"
#include "volume/thin/format.hpp"

#include <cstdint>
#include <map>
#include <span>
#include <vector>

namespace ispace::volume::thin {

class MetadataStore {
public:
    virtual ~MetadataStore() = default;
    // Pages in the area (superblock slots included).
    virtual uint64_t pages() const = 0;
    // How many copies a page has (members keeping the area); read() takes 0..copies()-1.
    virtual unsigned copies() const { return 1; }
    virtual Result<void> read(uint64_t page, unsigned copy, std::span<uint8_t> out) = 0;
    // Writes every copy of `page` (page_size bytes).
    virtual Result<void> write(uint64_t page, std::span<const uint8_t> data) = 0;
    // Every write before this is durable on every copy when it returns.
    virtual Result<void> flush() = 0;
};

// A store in memory, with a model of what a crash does to writes that were not flushed: tests stop it
// after any number of writes (as kill -9 would stop the holder) and then crash it, which keeps an
// arbitrary part of the unflushed writes, possibly tearing one.
class MemoryMetadataStore final : public MetadataStore {
public:
    explicit MemoryMetadataStore(uint64_t pages, unsigned copies = 1);

    uint64_t pages() const override { return _pages; }
    unsigned copies() const override { return unsigned(_durable.size()); }
    Result<void> read(uint64_t page, unsigned copy, std::span<uint8_t> out) override;
    Result<void> write(uint64_t page, std::span<const uint8_t> data) override;
    Result<void> flush() override;

    // From now on, writes and flushes after the first `writes` writes fail with EIO (the process died
    // there). A negative value: never.
    void stop_after(long writes);
    long writes() const { return _writes; }

    // What a crash keeps of the writes since the last flush.
    enum class CrashKeeps {
        nothing, // none reached the medium
        everything,
        even,      // every other one (0th, 2nd, ...): reordering
        torn_last, // all but the last, and the first half of the last
    };
    // Applies the unflushed writes as `keeps` says, forgets the rest, and lets writes through again.
    void crash(CrashKeeps keeps);

    // Damages copy `copy` of `page` (flips a byte at `offset`), for tests of mirrored reads.
    void corrupt(uint64_t page, unsigned copy, size_t offset);

private:
    struct Pending {
        uint64_t page;
        std::vector<uint8_t> bytes;
    };
    std::vector<uint8_t>* durable_page(unsigned copy, uint64_t page);

    uint64_t _pages;
    std::vector<std::map<uint64_t, std::vector<uint8_t>>> _durable; // per copy; absent pages read as zero
    std::vector<Pending> _pending;
    long _writes = 0;
    long _stop_after = -1;
};

} // namespace ispace::volume::thin
