#include "common/secret.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ispace {

Result<std::string> read_secret_file(const std::string& path, std::string* warning) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int err = errno;
        return make_error(fmt::format("{}: {}", path, std::strerror(err)), err);
    }
    struct stat st {};
    if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return make_error(fmt::format("{}: not a regular file", path), EINVAL);
    }
    constexpr size_t limit = 4096;
    std::string text(limit + 1, '\0');
    size_t got = 0;
    while (got < text.size()) {
        ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            int err = errno;
            ::close(fd);
            return make_error(fmt::format("{}: {}", path, std::strerror(err)), err);
        }
        if (n == 0) {
            break;
        }
        got += size_t(n);
    }
    ::close(fd);
    if (got > limit) {
        return make_error(
            fmt::format("{}: longer than {} bytes; a secret file holds one secret", path, limit), EINVAL);
    }
    text.resize(got);
    if (!text.empty() && text.back() == '\n') {
        text.pop_back();
        if (!text.empty() && text.back() == '\r') {
            text.pop_back();
        }
    }
    if (text.empty()) {
        return make_error(fmt::format("{}: empty", path), EINVAL);
    }
    if (text.find('\n') != std::string::npos) {
        return make_error(fmt::format("{}: more than one line; a secret file holds one secret", path),
                          EINVAL);
    }
    if (warning != nullptr && (st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
        *warning = fmt::format("{} is readable by other users (mode {:04o}); chmod 600 it", path,
                               unsigned(st.st_mode & 07777));
    }
    return text;
}

void scrub_argv(int argc, char** argv, std::string_view secret) {
    if (secret.empty()) {
        return;
    }
    for (int i = 1; i < argc; ++i) {
        char* arg = argv[i];
        size_t length = std::strlen(arg);
        for (char* hit = arg; (hit = static_cast<char*>(
                                   memmem(hit, length - size_t(hit - arg), secret.data(), secret.size())));) {
            std::memset(hit, 'x', secret.size());
            hit += secret.size();
        }
    }
}

} // namespace ispace
