#include "volume/thin/member_store.hpp"

#include "volume/member_io.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace ispace::volume::thin {

Result<MemberMetadataStore> MemberMetadataStore::make(net::Reactor& reactor, std::vector<Member> members,
                                                      uint64_t pages) {
    if (members.empty() || pages < superblock_slots + 2) {
        return make_error(
            fmt::format("a thin metadata area needs a member and {} pages", superblock_slots + 2), EINVAL);
    }
    for (size_t i = 0; i < members.size(); ++i) {
        const Member& m = members[i];
        if (!m.device) {
            return make_error(fmt::format("thin metadata: member {} is missing", i), ENODEV);
        }
        backstore::Geometry g = m.device->geometry();
        if (m.area_offset % page_size != 0 || page_size % g.block_size != 0) {
            return make_error(
                fmt::format("thin metadata on member {}: offset {} or block size {} does not fit "
                            "4 KiB pages",
                            i, m.area_offset, g.block_size),
                EINVAL);
        }
        if (m.area_offset > g.bytes() || (g.bytes() - m.area_offset) / page_size < pages) {
            return make_error(
                fmt::format("thin metadata on member {}: {} pages at {} do not fit its {} bytes", i, pages,
                            m.area_offset, g.bytes()),
                ENOSPC);
        }
    }
    return MemberMetadataStore(reactor, std::move(members), pages);
}

Result<void> MemberMetadataStore::read(uint64_t page, unsigned copy, std::span<uint8_t> out) {
    if (page >= _pages || copy >= _members.size() || out.size() != page_size) {
        return make_error(fmt::format("thin metadata page {} copy {}: out of range", page, copy), EINVAL);
    }
    const Member& m = _members[copy];
    int error = member_io(*_reactor, *m.device, backstore::IoOp::read, m.area_offset + page * page_size, out);
    if (error != 0) {
        return make_error(fmt::format("thin metadata page {} on member {}: read failed: {}", page, copy,
                                      std::strerror(-error)),
                          -error);
    }
    return {};
}

Result<void> MemberMetadataStore::write(uint64_t page, std::span<const uint8_t> data) {
    if (page >= _pages || data.size() != page_size) {
        return make_error(fmt::format("thin metadata page {}: out of range", page), EINVAL);
    }
    std::vector<uint8_t> bytes(data.begin(), data.end());
    for (size_t i = 0; i < _members.size(); ++i) {
        const Member& m = _members[i];
        int error =
            member_io(*_reactor, *m.device, backstore::IoOp::write, m.area_offset + page * page_size, bytes);
        if (error != 0) {
            return make_error(fmt::format("thin metadata page {} on member {}: write failed: {}", page, i,
                                          std::strerror(-error)),
                              -error);
        }
    }
    return {};
}

Result<void> MemberMetadataStore::flush() {
    for (size_t i = 0; i < _members.size(); ++i) {
        int error = member_io(*_reactor, *_members[i].device, backstore::IoOp::flush, 0, {});
        if (error != 0) {
            return make_error(
                fmt::format("thin metadata on member {}: flush failed: {}", i, std::strerror(-error)),
                -error);
        }
    }
    return {};
}

} // namespace ispace::volume::thin
