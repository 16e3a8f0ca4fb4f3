#include "net/socket.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <unistd.h>

namespace ispace::net {
namespace {

std::string errno_text(int err) {
    return std::strerror(err);
}

Result<uint16_t> parse_port(std::string_view text, std::string_view whole) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > 65535) {
        return make_error(
            fmt::format("endpoint '{}': port '{}' is not a number from 0 to 65535", whole, text), EINVAL);
    }
    return uint16_t(value);
}

Result<Endpoint> endpoint_of(int fd, bool peer) {
    Endpoint ep;
    ep.len = sizeof ep.addr;
    int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ep.addr), &ep.len)
                 : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ep.addr), &ep.len);
    if (r < 0) {
        int err = errno;
        return make_error(fmt::format("{}: {}", peer ? "getpeername" : "getsockname", errno_text(err)), err);
    }
    return ep;
}

} // namespace

std::string Endpoint::to_string() const {
    char host[NI_MAXHOST];
    if (len == 0 || ::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof host, nullptr,
                                  0, NI_NUMERICHOST) != 0) {
        return "(no address)";
    }
    if (is_ipv6()) {
        return fmt::format("[{}]:{}", host, port());
    }
    return fmt::format("{}:{}", host, port());
}

uint16_t Endpoint::port() const {
    if (addr.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
    }
    if (addr.ss_family == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    }
    return 0;
}

bool Endpoint::is_ipv6() const {
    return addr.ss_family == AF_INET6;
}

Result<Endpoint> parse_endpoint(std::string_view text, uint16_t default_port) {
    std::string_view host;
    uint16_t port = default_port;
    if (text.empty()) {
        return make_error("empty endpoint: expected HOST[:PORT] or [IPV6][:PORT]", EINVAL);
    }
    if (text.front() == '[') {
        size_t close = text.find(']');
        if (close == std::string_view::npos) {
            return make_error(fmt::format("endpoint '{}': missing ']' after the IPv6 address", text), EINVAL);
        }
        host = text.substr(1, close - 1);
        std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return make_error(fmt::format("endpoint '{}': expected ':PORT' after ']'", text), EINVAL);
            }
            auto p = parse_port(rest.substr(1), text);
            if (!p) {
                return std::move(p).error();
            }
            port = *p;
        }
    } else {
        size_t colon = text.rfind(':');
        if (colon != std::string_view::npos && text.find(':') != colon) {
            host = text; // several colons and no brackets: a bare IPv6 address, default port
        } else if (colon != std::string_view::npos) {
            host = text.substr(0, colon);
            auto p = parse_port(text.substr(colon + 1), text);
            if (!p) {
                return std::move(p).error();
            }
            port = *p;
        } else {
            host = text;
        }
    }
    if (host.empty()) {
        return make_error(
            fmt::format("endpoint '{}': empty host (use 0.0.0.0 or [::] for any address)", text), EINVAL);
    }

    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    std::string host_str(host);
    std::string port_str = std::to_string(port);
    int r = ::getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &found);
    if (r != 0) {
        std::string why = r == EAI_SYSTEM ? errno_text(errno) : ::gai_strerror(r);
        return make_error(fmt::format("endpoint '{}': cannot resolve host '{}': {}", text, host, why),
                          EINVAL);
    }
    Endpoint ep;
    std::memcpy(&ep.addr, found->ai_addr, found->ai_addrlen);
    ep.len = socklen_t(found->ai_addrlen);
    ::freeaddrinfo(found);
    return ep;
}

Result<int> listen_tcp(const Endpoint& where, int backlog) {
    int fd = ::socket(where.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int err = errno;
        return make_error(fmt::format("listen {}: socket: {}", where.to_string(), errno_text(err)), err);
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (where.is_ipv6()) {
        // [::] serves IPv6 only, so a portal may also listen on 0.0.0.0 with the same port whatever
        // net.ipv6.bindv6only says.
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&where.addr), where.len) < 0 ||
        ::listen(fd, backlog) < 0) {
        int err = errno;
        ::close(fd);
        return make_error(fmt::format("listen {}: {}", where.to_string(), errno_text(err)), err);
    }
    return fd;
}

Result<int> connect_tcp(const Endpoint& where) {
    int fd = ::socket(where.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int err = errno;
        return make_error(fmt::format("connect {}: socket: {}", where.to_string(), errno_text(err)), err);
    }
    int r;
    do {
        r = ::connect(fd, reinterpret_cast<const sockaddr*>(&where.addr), where.len);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EINPROGRESS) {
        int err = errno;
        ::close(fd);
        return make_error(fmt::format("connect {}: {}", where.to_string(), errno_text(err)), err);
    }
    return fd;
}

Result<int> accept_tcp(int listen_fd, Endpoint* peer) {
    Endpoint ep;
    ep.len = sizeof ep.addr;
    for (;;) {
        int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ep.addr), &ep.len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            if (peer) {
                *peer = ep;
            }
            return fd;
        }
        int err = errno;
        if (err == EINTR) {
            continue;
        }
        if (err == EAGAIN || err == EWOULDBLOCK) {
            return make_error("accept: no pending connection", EAGAIN);
        }
        return make_error(fmt::format("accept: {}", errno_text(err)), err);
    }
}

int socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        return errno;
    }
    return err;
}

Result<Endpoint> local_endpoint(int fd) {
    return endpoint_of(fd, false);
}

Result<Endpoint> peer_endpoint(int fd) {
    return endpoint_of(fd, true);
}

void tune_stream_socket(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    // A dead peer is noticed after about 10 + 3 * 5 seconds of silence, well inside the initiators'
    // 120-second replacement timeout, instead of the kernel's two hours.
    int idle = 10;
    int interval = 5;
    int count = 3;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

Result<void> set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        int err = errno;
        return make_error(fmt::format("fd {}: cannot set O_NONBLOCK: {}", fd, errno_text(err)), err);
    }
    return {};
}

} // namespace ispace::net
