#include "attach/io_flusher.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <sys/prctl.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57 // linux/prctl.h, Linux 5.6
#endif

namespace ispace::attach {

Result<void> mark_io_flusher() {
    if (::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
        int err = errno;
        return make_error(fmt::format("prctl(PR_SET_IO_FLUSHER): {}{}", std::strerror(err),
                                      err == EPERM    ? " (needs CAP_SYS_RESOURCE)"
                                      : err == EINVAL ? " (needs Linux 5.6)"
                                                      : ""),
                          err);
    }
    return {};
}

} // namespace ispace::attach
