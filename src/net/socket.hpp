// TCP endpoints: parsing "host:port", listening and connecting sockets, all non-blocking.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace ispace::net {

struct Endpoint {
    sockaddr_storage addr{};
    socklen_t len = 0;
    // "127.0.0.1:3260" or "[::1]:3260"
    std::string to_string() const;
    uint16_t port() const;
    bool is_ipv6() const;
};

// Parses "HOST:PORT", "[V6]:PORT", or "HOST" (then default_port). HOST is a numeric address or a name
// resolved with getaddrinfo (the first result). Errors say what part was wrong.
Result<Endpoint> parse_endpoint(std::string_view text, uint16_t default_port);

// A non-blocking listening socket with SO_REUSEADDR. Port 0 picks a free port (see local_endpoint()).
Result<int> listen_tcp(const Endpoint& where, int backlog = 128);
// Accepts one pending connection as a non-blocking, close-on-exec socket. Error code EAGAIN when none
// is pending (the listener is level-triggered: call until then). `peer` may be null.
Result<int> accept_tcp(int listen_fd, Endpoint* peer = nullptr);
// Starts a non-blocking connect; completion is signalled by writability (check with socket_error()).
Result<int> connect_tcp(const Endpoint& where);
// SO_ERROR of a socket (0 when the connect succeeded).
int socket_error(int fd);
Result<Endpoint> local_endpoint(int fd);
Result<Endpoint> peer_endpoint(int fd);
// TCP_NODELAY, and SO_KEEPALIVE with short probes so dead peers are noticed.
void tune_stream_socket(int fd);
Result<void> set_nonblocking(int fd);

} // namespace ispace::net
