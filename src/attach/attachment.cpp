#include "attach/attachment.hpp"

#ifdef ISPACE_HAVE_FUSE3
#include "attach/fuse_loop.hpp"
#endif

#include <cerrno>

namespace ispace::attach {

namespace {

// Stands in for the FUSE + loop backend in a build configured without libfuse3, so that attach says
// why it cannot rather than that no backend exists.
class UnbuiltBackend final : public AttachBackend {
public:
    std::string_view name() const override { return "fuse+loop"; }
    Result<void> available() const override {
        return make_error("attach (fuse+loop): this build has no FUSE support: libfuse3-dev was not "
                          "installed when it was configured (scripts/install-deps.sh installs it; then "
                          "configure and build again)",
                          ENOTSUP);
    }
    Result<std::unique_ptr<Attachment>> attach(std::shared_ptr<backstore::Device>, net::ReactorGroup&,
                                               const AttachOptions&) override {
        return available().error();
    }
};

} // namespace

std::vector<std::unique_ptr<AttachBackend>> builtin_backends() {
    // ublk (Linux 6.0, /dev/ublk-control) and NBD (/dev/nbd*) go before FUSE+loop when they come: they
    // reach the block layer with one hop fewer.
    std::vector<std::unique_ptr<AttachBackend>> backends;
#ifdef ISPACE_HAVE_FUSE3
    backends.push_back(std::make_unique<FuseLoopBackend>());
#else
    backends.push_back(std::make_unique<UnbuiltBackend>());
#endif
    return backends;
}

std::string why_not_attachable() {
    std::string why;
    for (const auto& backend : builtin_backends()) {
        auto usable = backend->available();
        if (usable) {
            return {};
        }
        why += (why.empty() ? "" : "; ") + usable.error().message;
    }
    return why.empty() ? "this build has no attach backend" : why;
}

} // namespace ispace::attach
