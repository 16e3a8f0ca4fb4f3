// The production Transport: a TcpStream, created when the transport is bound to a reactor.
#include "net/transport.hpp"

#include <unistd.h>

namespace ispace::net {

namespace {

class TcpTransport final : public Transport, private TcpStream::Owner {
public:
    TcpTransport(int fd, std::string peer) : _fd(fd), _peer(std::move(peer)) {}
    ~TcpTransport() override {
        _stream.reset(); // closes the socket and fails unsent PDUs
        if (_fd >= 0) {
            ::close(_fd); // never attached, or detached and not attached again
        }
    }

    void attach(Reactor& reactor, Handler& handler) override {
        _handler = &handler;
        if (!_stream && _fd >= 0) {
            _stream = std::make_unique<TcpStream>(reactor, _fd, static_cast<TcpStream::Owner&>(*this));
            _fd = -1; // the stream owns it now
        }
    }

    bool detach() override {
        if (!_stream) {
            return false;
        }
        int fd = _stream->release();
        if (fd < 0) {
            return false;
        }
        _stream.reset();
        _fd = fd;
        _handler = nullptr;
        return true;
    }

    ReadResult read(void* dst, size_t len) override {
        if (!_stream) {
            return {.error = EBADF};
        }
        return _stream->read(dst, len);
    }
    void send(OutItem& pdu) override {
        if (!_stream) {
            pdu.on_sent(false); // unbound: a caller bug, but the item must come back
            return;
        }
        _stream->send(pdu);
    }
    void pause_reading() override {
        if (_stream) {
            _stream->pause_reading();
        }
    }
    void resume_reading() override {
        if (_stream) {
            _stream->resume_reading();
        }
    }
    void close(Error why) override {
        if (_stream) {
            _stream->close(std::move(why));
        }
    }
    void close_after_flush(Error why) override {
        if (_stream) {
            _stream->close_after_flush(std::move(why));
        }
    }
    bool closed() const override { return !_stream || _stream->closed(); }
    std::string peer() const override { return _peer; }

private:
    // TcpStream::Owner
    void on_readable() override { _handler->on_readable(); }
    void on_closed(const Error& why) override { _handler->on_closed(why); }

    int _fd;
    std::string _peer;
    Handler* _handler = nullptr;
    std::unique_ptr<TcpStream> _stream;
};

} // namespace

std::unique_ptr<Transport> make_tcp_transport(int fd, std::string peer) {
    return std::make_unique<TcpTransport>(fd, std::move(peer));
}

} // namespace ispace::net
