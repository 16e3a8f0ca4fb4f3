#include "attach/attachment.hpp"

#include "attach/fuse_loop.hpp"

namespace ispace::attach {

std::vector<std::unique_ptr<AttachBackend>> builtin_backends() {
    // ublk (Linux 6.0, /dev/ublk-control) and NBD (/dev/nbd*) go before FUSE+loop when they come: they
    // reach the block layer with one hop fewer.
    std::vector<std::unique_ptr<AttachBackend>> backends;
    backends.push_back(std::make_unique<FuseLoopBackend>());
    return backends;
}

} // namespace ispace::attach
