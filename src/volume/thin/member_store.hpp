// A MetadataStore over the members of a data-space: the thin metadata area at the same offset of every
// member (listed in its label as AreaType::thin_map), so that the map is mirrored on all of them whatever
// the data layout. A write goes to every member and fails if one fails (the caller — the volume — fails
// that member and commits again with the others; a metadata area that missed a commit must not be read
// as current). A read comes from the member the pool asks for; the pool tries the next one when a page
// fails its checks.
//
// Blocking (member_io): call it from a worker thread, never a reactor.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"
#include "net/reactor.hpp"
#include "volume/thin/metadata_store.hpp"

#include <cstdint>
#include <vector>

namespace ispace::volume::thin {

class MemberMetadataStore final : public MetadataStore {
public:
    struct Member {
        backstore::Device* device = nullptr;
        uint64_t area_offset = 0; // bytes from the start of the device; a multiple of page_size
    };

    // Checks that every member holds `pages` pages at its offset, aligned for its block size.
    static Result<MemberMetadataStore> make(net::Reactor& reactor, std::vector<Member> members,
                                            uint64_t pages);

    uint64_t pages() const override { return _pages; }
    unsigned copies() const override { return unsigned(_members.size()); }
    Result<void> read(uint64_t page, unsigned copy, std::span<uint8_t> out) override;
    Result<void> write(uint64_t page, std::span<const uint8_t> data) override;
    Result<void> flush() override;

private:
    MemberMetadataStore(net::Reactor& reactor, std::vector<Member> members, uint64_t pages)
        : _reactor(&reactor), _members(std::move(members)), _pages(pages) {}

    net::Reactor* _reactor;
    std::vector<Member> _members;
    uint64_t _pages;
};

} // namespace ispace::volume::thin
