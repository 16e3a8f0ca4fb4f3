#include "isns/client.hpp"

#include "net/reactor.hpp"

#include <cassert>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <poll.h>
#include <random>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::isns {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left <= 0 ? 0 : int(std::min<long long>(left, 1 << 30));
}

// Waits for `events` on `fd` until `deadline`: true when ready, an error on timeout, or ECANCELED as
// soon as `cancel_fd` (when not -1) is readable.
Result<void> wait_for(int fd, short events, Clock::time_point deadline, std::string_view what,
                      int cancel_fd) {
    for (;;) {
        pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
        int n = ::poll(p, cancel_fd >= 0 ? 2 : 1, remaining_ms(deadline));
        if (n > 0 && cancel_fd >= 0 && p[1].revents) {
            return make_error(fmt::format("cancelled {}", what), ECANCELED);
        }
        if (n > 0) {
            return {};
        }
        if (n == 0) {
            return make_error(fmt::format("timed out {}", what), ETIMEDOUT);
        }
        if (errno != EINTR) {
            int err = errno;
            return make_error(fmt::format("poll: {}", std::strerror(err)), err);
        }
    }
}

} // namespace

Result<net::Endpoint> parse_server(std::string_view text) {
    return net::parse_endpoint(text, default_port);
}

Client::Client(ClientOptions options)
    : _options(std::move(options)), _next_xid(uint16_t(std::random_device{}())),
      _reader(_options.max_message_bytes) {}

Client::~Client() {
    close();
}

void Client::close() {
    if (_fd >= 0) {
        ::close(_fd);
        _fd = -1;
    }
    _reader = MessageReader(_options.max_message_bytes);
}

Result<void> Client::connect() {
    // Blocking waits: never on a reactor (the registrar has its own thread; the CLI has no reactor).
    assert(net::Reactor::current() == nullptr);
    if (_fd >= 0) {
        return {};
    }
    auto deadline = Clock::now() + _options.timeout;
    auto endpoint = parse_server(_options.server);
    if (!endpoint) {
        return make_error(fmt::format("iSNS server {}: {}", _options.server, endpoint.error().message),
                          endpoint.error().code);
    }
    auto fd = net::connect_tcp(*endpoint);
    if (!fd) {
        return make_error(fmt::format("iSNS server {}: {}", _options.server, fd.error().message),
                          fd.error().code);
    }
    _fd = *fd;
    if (auto ready = wait_for(_fd, POLLOUT, deadline, "connecting", _cancel_fd); !ready) {
        close();
        return make_error(fmt::format("iSNS server {}: {}", _options.server, ready.error().message),
                          ready.error().code);
    }
    if (int err = net::socket_error(_fd); err != 0) {
        close();
        return make_error(fmt::format("iSNS server {}: {}", _options.server, std::strerror(err)), err);
    }
    return {};
}

Result<net::Endpoint> Client::local_endpoint() const {
    if (_fd < 0) {
        return make_error("not connected to the iSNS server", ENOTCONN);
    }
    return net::local_endpoint(_fd);
}

Result<void> Client::send_all(const std::vector<uint8_t>& bytes, Clock::time_point deadline) {
    size_t sent = 0;
    while (sent < bytes.size()) {
        ssize_t n = ::send(_fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += size_t(n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (auto ready = wait_for(_fd, POLLOUT, deadline, "sending", _cancel_fd); !ready) {
                return ready;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        int err = n < 0 ? errno : EPIPE;
        return make_error(fmt::format("send: {}", std::strerror(err)), err);
    }
    return {};
}

Result<Message> Client::call(Message request) {
    if (auto connected = connect(); !connected) {
        return connected.error();
    }
    auto deadline = Clock::now() + _options.timeout;
    request.xid = _next_xid++;
    std::string what = function_name(request.function);
    auto fail = [&](const Error& e) -> Error {
        close();
        return make_error(fmt::format("iSNS server {}: {}: {}", _options.server, what, e.message), e.code);
    };
    if (auto sent = send_all(encode(request, flag::client), deadline); !sent) {
        return fail(sent.error());
    }
    uint8_t buffer[16384];
    for (;;) {
        while (auto message = _reader.next()) {
            if (message->xid == request.xid && message->function == (request.function | response_bit)) {
                return std::move(*message);
            }
            // Anything else (an answer to an abandoned request) is not ours to act on.
        }
        if (auto ready = wait_for(_fd, POLLIN, deadline, "waiting for the response", _cancel_fd); !ready) {
            return fail(ready.error());
        }
        ssize_t n = ::recv(_fd, buffer, sizeof buffer, 0);
        if (n == 0) {
            return fail(make_error("the server closed the connection", ECONNRESET));
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                continue;
            }
            int err = errno;
            return fail(make_error(fmt::format("recv: {}", std::strerror(err)), err));
        }
        if (auto fed = _reader.feed({buffer, size_t(n)}); !fed) {
            return fail(fed.error());
        }
    }
}

} // namespace ispace::isns
