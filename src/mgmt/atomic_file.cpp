#include "mgmt/atomic_file.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

Result<void> fail(const std::string& what, const std::string& path) {
    int saved = errno;
    return make_error(fmt::format("{} {}: {}", what, path, std::strerror(saved)), saved);
}

std::string directory_of(const std::string& path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos) {
        return ".";
    }
    return slash == 0 ? "/" : path.substr(0, slash);
}

} // namespace

Result<void> write_file_atomically(const std::string& path, std::string_view content, mode_t mode) {
    // The pid in the name: two processes writing the same file never share a temporary. mkstemp would
    // do as well; a fixed pattern lets an operator recognise (and remove) a leftover after a crash.
    std::string temporary = fmt::format("{}.tmp.{}", path, ::getpid());
    int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        return fail("cannot create", temporary);
    }
    size_t done = 0;
    while (done < content.size()) {
        ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            auto error = fail("cannot write", temporary);
            ::close(fd);
            ::unlink(temporary.c_str());
            return error;
        }
        done += size_t(n);
    }
    if (::fsync(fd) != 0) {
        auto error = fail("cannot flush", temporary);
        ::close(fd);
        ::unlink(temporary.c_str());
        return error;
    }
    ::close(fd);
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
        auto error = fail("cannot rename a temporary file over", path);
        ::unlink(temporary.c_str());
        return error;
    }
    std::string directory = directory_of(path);
    int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        return fail("cannot open the directory", directory);
    }
    int synced = ::fsync(dir);
    ::close(dir);
    if (synced != 0) {
        return fail("cannot flush the directory", directory);
    }
    return {};
}

} // namespace ispace::mgmt
