// The production transport factory: a non-blocking TCP connect, then net::make_tcp_transport.
#include "initiator/transport.hpp"

#include "net/socket.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <sys/epoll.h>
#include <unistd.h>

namespace ispace::initiator {

namespace {

// One connect in progress: waits for writability of the socket, or the timeout. Deletes itself.
class PendingConnect final : public net::FdHandler {
public:
    PendingConnect(net::Reactor& reactor, int fd, std::string peer, Transport::Handler& handler,
                   TransportFactory::ConnectDone done)
        : _reactor(reactor), _fd(fd), _peer(std::move(peer)), _handler(handler), _done(std::move(done)) {}

    void start(net::Clock::duration timeout) {
        _reactor.add(_fd, EPOLLOUT, this);
        _timer = _reactor.add_timer(timeout, [this] {
            _timer = 0;
            finish(make_error(fmt::format("connect to {}: timed out", _peer), ETIMEDOUT));
        });
    }

    void on_fd_event(uint32_t events) override {
        int err = net::socket_error(_fd);
        if (err == 0 && (events & (EPOLLERR | EPOLLHUP))) {
            err = ECONNREFUSED;
        }
        if (err != 0) {
            finish(make_error(fmt::format("connect to {}: {}", _peer, std::strerror(err)), err));
            return;
        }
        finish(Result<void>{});
    }

private:
    void finish(Result<void> outcome) {
        if (_timer != 0) {
            _reactor.cancel_timer(_timer);
        }
        _reactor.remove(_fd);
        // Report from a deferred task: the factory promises `done` never runs inside connect(), and the
        // handler may start sending at once.
        _reactor.defer([this, outcome = std::move(outcome)]() mutable {
            if (!outcome) {
                ::close(_fd);
                _done(std::move(outcome).error());
            } else {
                net::tune_stream_socket(_fd);
                std::unique_ptr<Transport> t = net::make_tcp_transport(_fd, _peer);
                t->attach(_reactor, _handler);
                _done(std::move(t));
            }
            delete this;
        });
    }

    net::Reactor& _reactor;
    int _fd;
    std::string _peer;
    Transport::Handler& _handler;
    TransportFactory::ConnectDone _done;
    net::Reactor::TimerId _timer = 0;
};

class TcpTransportFactory final : public TransportFactory {
public:
    void connect(net::Reactor& reactor, const std::string& host, uint16_t port, Transport::Handler& handler,
                 net::Clock::duration timeout, ConnectDone done) override {
        std::string text = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                                               : fmt::format("{}:{}", host, port);
        auto endpoint = net::parse_endpoint(text, port);
        if (!endpoint) {
            reactor.defer([done = std::move(done), e = endpoint.error()]() mutable { done(std::move(e)); });
            return;
        }
        auto fd = net::connect_tcp(*endpoint);
        if (!fd) {
            reactor.defer([done = std::move(done), e = fd.error(), text]() mutable {
                e.message = fmt::format("connect to {}: {}", text, e.message);
                done(std::move(e));
            });
            return;
        }
        auto* pending = new PendingConnect(reactor, *fd, endpoint->to_string(), handler, std::move(done));
        pending->start(timeout);
    }
};

} // namespace

std::shared_ptr<TransportFactory> make_tcp_transport_factory() {
    return std::make_shared<TcpTransportFactory>();
}

} // namespace ispace::initiator
