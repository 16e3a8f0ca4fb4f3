#include "mgmt/control_socket.hpp"

#include "common/log.hpp"
#include "mgmt/json_rpc.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <grp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(address.sun_path)) {
        return make_error(fmt::format("control socket path '{}' must be 1 to {} bytes long", path,
                                      sizeof(address.sun_path) - 1),
                          EINVAL);
    }
    std::memcpy(address.sun_path, path.data(), path.size());
    return address;
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        data.remove_prefix(size_t(n));
    }
    return true;
}

} // namespace

struct ControlSocket::Client {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> finished{false};
};

ControlSocket::ControlSocket() = default;

ControlSocket::~ControlSocket() {
    stop();
}

Result<void> ControlSocket::start(ControlSocketOptions options, LineHandler handler) {
    _options = std::move(options);
    _handler = std::move(handler);
    auto address = unix_address(_options.path);
    if (!address) {
        return address.error();
    }
    gid_t gid = gid_t(-1);
    if (!_options.group.empty()) {
        group entry{};
        group* found = nullptr;
        std::string buffer(16384, '\0');
        if (::getgrnam_r(_options.group.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 ||
            !found) {
            return make_error(fmt::format("--control-group {}: no such group", _options.group), ENOENT);
        }
        gid = found->gr_gid;
    }
    // A socket file left by a daemon that died: replace it, unless a daemon still answers on it.
    struct stat st {};
    if (::lstat(_options.path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return make_error(
                fmt::format("control socket {}: a file that is not a socket is in the way", _options.path),
                EEXIST);
        }
        int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 &&
                    ::connect(probe, reinterpret_cast<const sockaddr*>(&*address), sizeof(sockaddr_un)) == 0;
        if (probe >= 0) {
            ::close(probe);
        }
        if (live) {
            return make_error(fmt::format("control socket {}: another ispaced serves it", _options.path),
                              EADDRINUSE);
        }
        ::unlink(_options.path.c_str());
    }
    _listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (_listen_fd < 0) {
        return make_error(fmt::format("control socket: {}", std::strerror(errno)), errno);
    }
    // The mode is set at bind (through the umask) so that no one can connect in the instant between
    // bind and chmod; chmod then makes it exact whatever umask the daemon inherited.
    mode_t old_mask = ::umask(gid == gid_t(-1) ? 0177 : 0117);
    int bound = ::bind(_listen_fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(sockaddr_un));
    int bind_errno = errno;
    ::umask(old_mask);
    if (bound != 0) {
        auto error = make_error(
            fmt::format("control socket {}: {}", _options.path, std::strerror(bind_errno)), bind_errno);
        ::close(std::exchange(_listen_fd, -1));
        return error;
    }
    if (gid != gid_t(-1) && ::chown(_options.path.c_str(), uid_t(-1), gid) != 0) {
        auto error = make_error(fmt::format("control socket {}: cannot give it to group {}: {}",
                                            _options.path, _options.group, std::strerror(errno)),
                                errno);
        stop();
        return error;
    }
    ::chmod(_options.path.c_str(), gid == gid_t(-1) ? 0600 : 0660);
    if (::listen(_listen_fd, 64) != 0) {
        auto error =
            make_error(fmt::format("control socket {}: {}", _options.path, std::strerror(errno)), errno);
        stop();
        return error;
    }
    _wake_fd = ::eventfd(0, EFD_CLOEXEC);
    _acceptor = std::thread([this] { accept_loop(); });
    return {};
}

void ControlSocket::stop() {
    if (_stopping.exchange(true)) {
        return;
    }
    if (_wake_fd >= 0) {
        uint64_t one = 1;
        (void)!::write(_wake_fd, &one, sizeof(one));
    }
    if (_acceptor.joinable()) {
        _acceptor.join();
    }
    {
        std::lock_guard lock(_clients_mutex);
        for (auto& client : _clients) {
            ::shutdown(client->fd, SHUT_RDWR);
        }
    }
    for (auto& client : _clients) {
        if (client->thread.joinable()) {
            client->thread.join();
        }
        ::close(client->fd);
    }
    _clients.clear();
    if (_listen_fd >= 0) {
        ::close(std::exchange(_listen_fd, -1));
        ::unlink(_options.path.c_str());
    }
    if (_wake_fd >= 0) {
        ::close(std::exchange(_wake_fd, -1));
    }
}

void ControlSocket::accept_loop() {
    while (!_stopping.load()) {
        pollfd fds[2] = {{_listen_fd, POLLIN, 0}, {_wake_fd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            log_error("control socket: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[1].revents != 0) {
            return;
        }
        int fd = ::accept4(_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        std::lock_guard lock(_clients_mutex);
        // Reap the clients that left.
        for (auto it = _clients.begin(); it != _clients.end();) {
            if ((*it)->finished.load()) {
                (*it)->thread.join();
                ::close((*it)->fd);
                it = _clients.erase(it);
            } else {
                ++it;
            }
        }
        if (_clients.size() >= _options.max_clients) {
            send_all(fd,
                     rpc_error_line(nullptr, {rpc_error::failed, fmt::format("the control socket serves {} "
                                                                             "clients at once; try again",
                                                                             _options.max_clients)}));
            ::close(fd);
            continue;
        }
        // A client that stalls (sends half a line and waits) cannot hold its thread for ever.
        timeval timeout{60, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
        auto client = std::make_unique<Client>();
        client->fd = fd;
        Client& ref = *client;
        _clients.push_back(std::move(client));
        ref.thread = std::thread([this, &ref] {
            serve(ref);
            ref.finished.store(true);
        });
    }
}

void ControlSocket::serve(Client& client) {
    std::string buffer;
    char chunk[65536];
    while (!_stopping.load()) {
        size_t newline = buffer.find('\n');
        if (newline == std::string::npos || newline > max_request_bytes) {
            if ((newline == std::string::npos ? buffer.size() : newline) > max_request_bytes) {
                // Answer, then discard what the client still sends for a moment (so that it reads the
                // answer instead of a reset), and hang up.
                send_all(client.fd,
                         rpc_error_line(nullptr, {rpc_error::too_large,
                                                  fmt::format("the request is longer than {} bytes, "
                                                              "the most the control socket reads",
                                                              max_request_bytes)}));
                ::shutdown(client.fd, SHUT_WR);
                timeval brief{2, 0};
                ::setsockopt(client.fd, SOL_SOCKET, SO_RCVTIMEO, &brief, sizeof(brief));
                size_t drained = 0;
                while (drained < (size_t(64) << 20)) {
                    ssize_t n = ::recv(client.fd, chunk, sizeof(chunk), 0);
                    if (n <= 0) {
                        break;
                    }
                    drained += size_t(n);
                }
                return;
            }
            ssize_t n = ::recv(client.fd, chunk, sizeof(chunk), 0);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                // EOF: a last request without a newline is still a request.
                if (n == 0 && !buffer.empty()) {
                    std::string response = _handler(buffer);
                    send_all(client.fd, response);
                }
                return;
            }
            buffer.append(chunk, size_t(n));
            continue;
        }
        std::string line = buffer.substr(0, newline);
        buffer.erase(0, newline + 1);
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        if (line.empty()) {
            continue;
        }
        std::string response = _handler(line);
        if (!response.empty() && !send_all(client.fd, response)) {
            return;
        }
    }
}

Result<std::string> control_request(const std::string& path, std::string_view request) {
    auto address = unix_address(path);
    if (!address) {
        return address.error();
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return make_error(fmt::format("socket: {}", std::strerror(errno)), errno);
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(sockaddr_un)) != 0) {
        int saved = errno;
        ::close(fd);
        std::string hint =
            saved == ENOENT || saved == ECONNREFUSED ? "is ispaced running with --control " + path + "?"
            : saved == EACCES ? "the socket is not yours to use (run as the daemon's user or as a "
                                "member of its --control-group)"
                              : std::string(std::strerror(saved));
        return make_error(
            fmt::format("cannot reach the control socket {}: {} ({})", path, std::strerror(saved), hint),
            saved);
    }
    std::string line(request);
    line += '\n';
    if (!send_all(fd, line)) {
        int saved = errno;
        ::close(fd);
        return make_error(fmt::format("control socket {}: send: {}", path, std::strerror(saved)), saved);
    }
    std::string response;
    char chunk[65536];
    while (response.find('\n') == std::string::npos) {
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        response.append(chunk, size_t(n));
    }
    ::close(fd);
    if (response.empty()) {
        return make_error(
            fmt::format("control socket {}: the daemon closed the connection without an answer", path),
            EPROTO);
    }
    return response.substr(0, response.find('\n'));
}

} // namespace ispace::mgmt
