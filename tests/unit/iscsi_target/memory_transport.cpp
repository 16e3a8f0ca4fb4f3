#include "memory_transport.hpp"

#include <algorithm>
#include <cerrno>

namespace ispace::iscsi_target::test {

void Wire::initiator_write(const uint8_t* bytes, size_t length) {
    to_target.insert(to_target.end(), bytes, bytes + length);
    if (transport) {
        transport->schedule_readable();
    }
}

void Wire::initiator_close() {
    initiator_closed = true;
    if (transport) {
        transport->schedule_readable();
    }
}

void Wire::drain() {
    reading = true;
    if (transport) {
        transport->drain();
    }
}

MemoryTransport::MemoryTransport(std::shared_ptr<Wire> wire) : _wire(std::move(wire)) {
    _wire->transport = this;
}

MemoryTransport::~MemoryTransport() {
    *_alive = false;
    _wire->transport = nullptr;
    _wire->target_closed = true;
    while (!_held.empty()) {
        net::OutItem* item = _held.front();
        _held.pop_front();
        item->on_sent(false);
    }
}

void MemoryTransport::drain() {
    auto alive = _alive;
    while (!_held.empty() && *alive) {
        net::OutItem* item = _held.front();
        _held.pop_front();
        for (unsigned i = 0; i < item->iovcnt; ++i) {
            auto* p = static_cast<const uint8_t*>(item->iov[i].iov_base);
            _wire->to_initiator.insert(_wire->to_initiator.end(), p, p + item->iov[i].iov_len);
        }
        item->on_sent(true);
    }
}

void MemoryTransport::resume_reading() {
    _paused = false;
    schedule_readable();
}

void MemoryTransport::attach(net::Reactor& reactor, Handler& handler) {
    _reactor = &reactor;
    _handler = &handler;
    ++_binding;
    _readable_posted = false;
    if (!_wire->to_target.empty() || _wire->initiator_closed) {
        schedule_readable();
    }
}

bool MemoryTransport::detach() {
    if (_closed || _reactor == nullptr || !_held.empty()) {
        return false;
    }
    _reactor = nullptr;
    _handler = nullptr;
    ++_binding;
    return true;
}

void MemoryTransport::schedule_readable() {
    if (_reactor == nullptr || _readable_posted || _closed || _read_eof || _paused) {
        return;
    }
    if (_wire->to_target.empty() && !_wire->initiator_closed) {
        return;
    }
    _readable_posted = true;
    _reactor->post([this, alive = _alive, binding = _binding] {
        if (!*alive || binding != _binding) {
            return;
        }
        _readable_posted = false;
        if (_closed || _handler == nullptr || _paused) {
            return;
        }
        uint64_t before = _bytes_read;
        bool eof_before = _read_eof;
        _handler->on_readable();
        if (!*alive) {
            return;
        }
        // Level-triggered, as epoll: what is left is reported again, but only while the handler
        // makes progress (a closing connection stops reading, as TcpStream stops asking epoll).
        bool progress = _bytes_read != before || _read_eof != eof_before;
        if (progress && (!_wire->to_target.empty() || _wire->initiator_closed)) {
            schedule_readable();
        }
    });
}

net::Transport::ReadResult MemoryTransport::read(void* dst, size_t len) {
    if (_read_eof) {
        return {.eof = true};
    }
    if (_closed) {
        return {.error = EBADF};
    }
    if (len == 0) {
        return {};
    }
    if (!_wire->to_target.empty()) {
        size_t n = std::min(len, _wire->to_target.size());
        std::copy_n(_wire->to_target.begin(), n, static_cast<uint8_t*>(dst));
        _wire->to_target.erase(_wire->to_target.begin(), _wire->to_target.begin() + ptrdiff_t(n));
        _bytes_read += n;
        return {.bytes = n};
    }
    if (_wire->initiator_closed) {
        // As TcpStream: EOF closes the transport once what is queued is out (here: at once).
        _read_eof = true;
        close(Error{0, "connection closed by peer"});
        return {.eof = true};
    }
    return {.would_block = true};
}

void MemoryTransport::send(net::OutItem& pdu) {
    if (_closed) {
        // Never inside send(): the sender may not expect its item back yet.
        net::OutItem* item = &pdu;
        _reactor->defer([item] { item->on_sent(false); });
        return;
    }
    if (!_wire->reading || !_held.empty()) {
        _held.push_back(&pdu);
        return;
    }
    for (unsigned i = 0; i < pdu.iovcnt; ++i) {
        auto* p = static_cast<const uint8_t*>(pdu.iov[i].iov_base);
        _wire->to_initiator.insert(_wire->to_initiator.end(), p, p + pdu.iov[i].iov_len);
    }
    pdu.on_sent(true);
}

void MemoryTransport::close(Error why) {
    if (_closed) {
        return;
    }
    _closed = true;
    _wire->target_closed = true;
    _wire->close_reason = why.message;
    if (_reactor == nullptr) {
        return; // detached: nobody to tell
    }
    // Unsent PDUs come back, later, as with TCP.
    std::deque<net::OutItem*> held = std::move(_held);
    _held.clear();
    for (net::OutItem* item : held) {
        _reactor->defer([item] { item->on_sent(false); });
    }
    _reactor->defer([this, alive = _alive, why = std::move(why)] {
        if (*alive && _handler) {
            Handler* handler = _handler;
            _handler = nullptr; // once
            handler->on_closed(why);
        }
    });
}

} // namespace ispace::iscsi_target::test
