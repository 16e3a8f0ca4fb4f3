// FaultInjector and its per-connection FaultTransport (see fault_transport.hpp).
#include "initiator/fault_transport.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <deque>
#include <vector>

namespace ispace::initiator {

namespace {

// A private copy of a PDU's bytes (a corrupted one must not touch the sender's buffer).
class CopiedPdu final : public net::OutItem {
public:
    explicit CopiedPdu(std::vector<uint8_t> bytes) : _bytes(std::move(bytes)) {
        iov[0] = {_bytes.data(), _bytes.size()};
        iovcnt = 1;
    }
    void on_sent(bool) override { delete this; }
    std::vector<uint8_t>& bytes() { return _bytes; }

private:
    std::vector<uint8_t> _bytes;
};

std::vector<uint8_t> flatten(const net::OutItem& item) {
    std::vector<uint8_t> out;
    for (unsigned i = 0; i < item.iovcnt; ++i) {
        auto* p = static_cast<const uint8_t*>(item.iov[i].iov_base);
        out.insert(out.end(), p, p + item.iov[i].iov_len);
    }
    return out;
}

void apply_edits(std::vector<uint8_t>& pdu, const std::vector<ByteEdit>& edits) {
    for (const ByteEdit& e : edits) {
        if (e.offset < pdu.size()) {
            pdu[e.offset] = uint8_t((pdu[e.offset] & e.keep) ^ e.value);
        }
    }
}

class FaultTransport final : public Transport, private Transport::Handler {
public:
    FaultTransport(FaultInjector& injector, net::Reactor& reactor, Transport::Handler& up, unsigned ordinal)
        : _injector(injector), _reactor(reactor), _up(&up), _ordinal(ordinal) {}

    ~FaultTransport() override {
        *_alive = false;
        for (auto id : {_out_timer, _in_timer}) {
            if (id != 0) {
                _reactor.cancel_timer(id);
            }
        }
        _inner.reset();
        fail_held_outbound();
    }

    Transport::Handler& as_handler() { return *this; }
    void wrap(std::unique_ptr<Transport> inner) { _inner = std::move(inner); }

    // Bound at creation to the connecting reactor; attach() only changes the handler there. A wrapper
    // is never handed over (the initiator has no hand-over), so detach() refuses.
    void attach(net::Reactor& reactor, Transport::Handler& handler) override {
        assert(&reactor == &_reactor);
        _up = &handler;
    }
    bool detach() override { return false; }

    ReadResult read(void* dst, size_t len) override {
        for (;;) {
            if (!_ready.empty()) {
                size_t n = std::min(len, _ready.size());
                std::copy_n(_ready.begin(), n, static_cast<uint8_t*>(dst));
                _ready.erase(_ready.begin(), _ready.begin() + ptrdiff_t(n));
                return {.bytes = n};
            }
            if (frame_one()) {
                continue;
            }
            if (_disconnected || !_inner) {
                return {.would_block = true}; // on_closed() follows
            }
            uint8_t chunk[16384];
            ReadResult r = _inner->read(chunk, sizeof chunk);
            if (r.bytes == 0) {
                return r; // would_block, eof or error
            }
            _in.insert(_in.end(), chunk, chunk + r.bytes);
        }
    }

    void send(net::OutItem& item) override {
        if (!_inner) {
            item.on_sent(false);
            return;
        }
        FaultPdu info;
        info.direction = FaultDirection::outbound;
        info.connection = _ordinal;
        info.index = _out_index++;
        auto* header = static_cast<const uint8_t*>(item.iov[0].iov_base);
        std::copy_n(header, iscsi::bhs_size, info.bhs.bytes.begin());
        info.data_length = info.bhs.data_segment_length();
        Fault f = _injector.decide(info);
        switch (f.action) {
        case FaultAction::pass:
            forward(item);
            return;
        case FaultAction::drop:
            _injector.stats().dropped++;
            item.on_sent(true);
            return;
        case FaultAction::corrupt_header:
        case FaultAction::corrupt_data: {
            _injector.stats().corrupted++;
            auto* copy = new CopiedPdu(flatten(item));
            size_t header_length = item.iov[0].iov_len;
            if (f.action == FaultAction::corrupt_data && copy->bytes().size() > header_length) {
                copy->bytes()[header_length] ^= 0x01;
            } else {
                copy->bytes()[20] ^= 0x01; // inside the BHS, covered by the header digest
            }
            item.on_sent(true);
            forward(*copy);
            return;
        }
        case FaultAction::edit: {
            _injector.stats().edited++;
            auto* copy = new CopiedPdu(flatten(item));
            apply_edits(copy->bytes(), f.edits);
            item.on_sent(true);
            forward(*copy);
            return;
        }
        case FaultAction::delay:
            _injector.stats().delayed++;
            _out_held.push_back({&item, net::Clock::now() + f.delay});
            arm_out_timer();
            return;
        case FaultAction::disconnect:
            _injector.stats().disconnects++;
            _out_held.push_back({&item, net::Clock::time_point::max()});
            disconnect();
            return;
        }
    }

    void pause_reading() override {
        if (_inner) {
            _inner->pause_reading();
        }
    }
    void resume_reading() override {
        if (_inner) {
            _inner->resume_reading();
        }
    }
    void close(Error why) override {
        if (_inner) {
            _inner->close(std::move(why));
        }
    }

    void close_after_flush(Error why) override {
        if (_inner) {
            _inner->close_after_flush(std::move(why));
        }
    }

    bool closed() const override { return !_inner || _inner->closed(); }

    void set_digests(bool header, bool data) override {
        _header_digest = header;
        _data_digest = data;
    }

    std::string peer() const override { return _inner ? _inner->peer() : std::string("(fault transport)"); }

private:
    struct HeldOut {
        net::OutItem* item;
        net::Clock::time_point due;
    };
    struct HeldIn {
        std::vector<uint8_t> bytes;
        net::Clock::time_point due;
    };

    // Transport::Handler of the inner transport.
    void on_readable() override { _up->on_readable(); }
    void on_closed(const Error& why) override {
        fail_held_outbound();
        _up->on_closed(why);
    }

    void forward(net::OutItem& item) {
        if (!_out_held.empty()) {
            _out_held.push_back({&item, net::Clock::time_point::min()}); // keep the order
            return;
        }
        _inner->send(item);
    }

    void arm_out_timer() {
        if (_out_timer != 0 || _out_held.empty()) {
            return;
        }
        auto due = _out_held.front().due;
        if (due == net::Clock::time_point::max()) {
            return;
        }
        auto alive = _alive;
        _out_timer = _reactor.add_timer(
            std::max(due - net::Clock::now(), net::Clock::duration::zero()), [this, alive] {
                if (!*alive) {
                    return;
                }
                _out_timer = 0;
                auto now = net::Clock::now();
                while (!_out_held.empty() && _out_held.front().due <= now && _inner) {
                    net::OutItem* item = _out_held.front().item;
                    _out_held.pop_front();
                    _inner->send(*item);
                }
                arm_out_timer();
            });
    }

    void fail_held_outbound() {
        while (!_out_held.empty()) {
            net::OutItem* item = _out_held.front().item;
            _out_held.pop_front();
            item->on_sent(false);
        }
    }

    void disconnect() {
        _disconnected = true;
        if (_inner) {
            _inner->close(Error{ECONNRESET, "connection cut by fault injection"});
        }
    }

    // Takes one complete PDU from _in, applies the rule, and returns true if it made progress.
    bool frame_one() {
        if (_in.size() < iscsi::bhs_size) {
            return false;
        }
        iscsi::Bhs bhs;
        std::copy_n(_in.begin(), iscsi::bhs_size, bhs.bytes.begin());
        size_t header = iscsi::bhs_size + bhs.ahs_bytes() + (_header_digest ? iscsi::digest_size : 0);
        uint32_t dsl = bhs.data_segment_length();
        size_t data = dsl == 0 ? 0 : pad4(dsl) + (_data_digest ? iscsi::digest_size : 0);
        if (_in.size() < header + data) {
            return false;
        }
        std::vector<uint8_t> pdu(_in.begin(), _in.begin() + ptrdiff_t(header + data));
        _in.erase(_in.begin(), _in.begin() + ptrdiff_t(header + data));
        FaultPdu info;
        info.direction = FaultDirection::inbound;
        info.connection = _ordinal;
        info.index = _in_index++;
        info.bhs = bhs;
        info.data_length = dsl;
        Fault f = _injector.decide(info);
        switch (f.action) {
        case FaultAction::pass:
            deliver(std::move(pdu), net::Clock::time_point::min());
            break;
        case FaultAction::drop:
            _injector.stats().dropped++;
            break;
        case FaultAction::corrupt_header:
        case FaultAction::corrupt_data:
            _injector.stats().corrupted++;
            if (f.action == FaultAction::corrupt_data && dsl > 0) {
                pdu[header] ^= 0x01;
            } else {
                pdu[20] ^= 0x01;
            }
            deliver(std::move(pdu), net::Clock::time_point::min());
            break;
        case FaultAction::edit:
            _injector.stats().edited++;
            apply_edits(pdu, f.edits);
            deliver(std::move(pdu), net::Clock::time_point::min());
            break;
        case FaultAction::delay:
            _injector.stats().delayed++;
            deliver(std::move(pdu), net::Clock::now() + f.delay);
            break;
        case FaultAction::disconnect:
            _injector.stats().disconnects++;
            _in.clear();
            disconnect();
            break;
        }
        return true;
    }

    void deliver(std::vector<uint8_t> pdu, net::Clock::time_point due) {
        if (_in_held.empty() && due == net::Clock::time_point::min()) {
            _ready.insert(_ready.end(), pdu.begin(), pdu.end());
            return;
        }
        if (!_in_held.empty()) {
            due = std::max(due, _in_held.back().due); // nothing overtakes a delayed PDU
        }
        _in_held.push_back({std::move(pdu), due});
        arm_in_timer();
    }

    void arm_in_timer() {
        if (_in_timer != 0 || _in_held.empty()) {
            return;
        }
        auto alive = _alive;
        auto wait = std::max(_in_held.front().due - net::Clock::now(), net::Clock::duration::zero());
        _in_timer = _reactor.add_timer(wait, [this, alive] {
            if (!*alive) {
                return;
            }
            _in_timer = 0;
            auto now = net::Clock::now();
            bool released = false;
            while (!_in_held.empty() && _in_held.front().due <= now) {
                auto& bytes = _in_held.front().bytes;
                _ready.insert(_ready.end(), bytes.begin(), bytes.end());
                _in_held.pop_front();
                released = true;
            }
            arm_in_timer();
            if (released) {
                _up->on_readable();
            }
        });
    }

    FaultInjector& _injector;
    net::Reactor& _reactor;
    Transport::Handler* _up;
    unsigned _ordinal;
    std::unique_ptr<Transport> _inner;
    std::shared_ptr<bool> _alive = std::make_shared<bool>(true);
    bool _header_digest = false;
    bool _data_digest = false;
    bool _disconnected = false;
    uint64_t _out_index = 0;
    uint64_t _in_index = 0;
    std::deque<HeldOut> _out_held;
    std::vector<uint8_t> _in;    // raw bytes not yet framed
    std::deque<uint8_t> _ready;  // bytes the connection may read
    std::deque<HeldIn> _in_held; // delayed inbound PDUs, in order
    net::Reactor::TimerId _out_timer = 0;
    net::Reactor::TimerId _in_timer = 0;
};

} // namespace

FaultInjector::FaultInjector(std::shared_ptr<TransportFactory> inner) : _inner(std::move(inner)) {}

void FaultInjector::set_rule(FaultRule rule) {
    std::lock_guard lock(_mu);
    _rule = std::move(rule);
}

Fault FaultInjector::decide(const FaultPdu& pdu) {
    FaultRule rule;
    {
        std::lock_guard lock(_mu);
        rule = _rule;
    }
    return rule ? rule(pdu) : Fault{};
}

void FaultInjector::connect(net::Reactor& reactor, const std::string& host, uint16_t port,
                            Transport::Handler& handler, net::Clock::duration timeout, ConnectDone done) {
    auto ordinal = unsigned(_stats.connections.fetch_add(1)); // FaultPdu::connection
    auto wrapper = std::make_unique<FaultTransport>(*this, reactor, handler, ordinal);
    Transport::Handler& inner_handler = wrapper->as_handler();
    _inner->connect(
        reactor, host, port, inner_handler, timeout,
        [wrapper = std::move(wrapper), done = std::move(done)](Result<std::unique_ptr<Transport>> r) mutable {
            if (!r) {
                done(std::move(r).error());
                return;
            }
            wrapper->wrap(std::move(r.value()));
            std::unique_ptr<Transport> t = std::move(wrapper);
            done(std::move(t));
        });
}

} // namespace ispace::initiator
