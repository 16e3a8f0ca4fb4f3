#include "mgmt/notify.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace ispace::mgmt {

Result<bool> notify_service_manager(std::string_view state) {
    const char* name = std::getenv("NOTIFY_SOCKET");
    if (name == nullptr || name[0] == '\0') {
        return false;
    }
    std::string path(name);
    if ((path[0] != '/' && path[0] != '@') || path.size() >= sizeof(sockaddr_un::sun_path)) {
        return make_error(fmt::format("NOTIFY_SOCKET={} is not a socket path", path), EINVAL);
    }
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.data(), path.size());
    socklen_t length = socklen_t(offsetof(sockaddr_un, sun_path) + path.size());
    if (path[0] == '@') {
        address.sun_path[0] = '\0'; // the abstract namespace; the length says where the name ends
    } else {
        length += 1;
    }
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return make_error(fmt::format("NOTIFY_SOCKET: {}", std::strerror(errno)), errno);
    }
    ssize_t sent = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                            reinterpret_cast<const sockaddr*>(&address), length);
    int saved = errno;
    ::close(fd);
    if (sent < 0) {
        return make_error(fmt::format("NOTIFY_SOCKET {}: {}", path, std::strerror(saved)), saved);
    }
    return true;
}

} // namespace ispace::mgmt
