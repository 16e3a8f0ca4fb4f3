#include "backstore/null/null_device.hpp"

#include "backstore/detail.hpp"
#include "net/reactor.hpp"

#include <fmt/format.h>

namespace ispace::backstore {

NullDevice::NullDevice(uint64_t size, uint32_t block_size)
    : _geometry(block_size, size / block_size), _identity(detail::random_identity()) {}

std::string NullDevice::describe() const {
    Geometry g = _geometry.load();
    std::string text = "null:" + detail::compact_size(g.bytes());
    if (g.block_size != 512) {
        text += fmt::format(",block={}", g.block_size);
    }
    return text;
}

Features NullDevice::features() const {
    Features f;
    // Every block reads as zeroes, so unmap and write-zeroes are trivially honoured.
    f.thin = true;
    f.unmap = true;
    f.write_zeroes = true;
    return f;
}

void NullDevice::submit(IoRequest& request) {
    int error = 0;
    if (request.op != IoOp::flush) {
        error = detail::check_range(request, _geometry.load());
    }
    if (error == 0 && request.op == IoOp::read) {
        detail::IovCursor(request.iov, request.iovcnt).zero(request.length);
    }
    detail::complete_later(request, error);
}

void NullDevice::allocation_status(uint64_t offset, uint64_t length,
                                   Function<void(Result<std::vector<Extent>>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "allocation_status is called on a reactor thread");
    reactor->defer([offset, length, done = std::move(done)]() mutable {
        done(std::vector<Extent>{{offset, length, true}});
    });
}

Result<void> NullDevice::resize(uint64_t bytes) {
    if (auto ok = check_resize(bytes); !ok) {
        return ok;
    }
    _geometry.set_block_count(bytes / _geometry.block_size());
    notify(DeviceEvent::resized);
    return {};
}

} // namespace ispace::backstore
