// MemoryTransport: a net::Transport over two in-memory byte queues, for the target front end's unit
// tests. The target's Connection owns the MemoryTransport; the FakeInitiator holds the other end of the
// same Wire. Everything runs on the test's thread, which drives the reactors by hand, so nothing here
// is locked.
//
// It behaves as the TCP transport does where the Connection can tell: events arrive from the reactor
// loop (a posted task), never inside a call into the transport; on_closed() is deferred; EOF from the
// initiator is readable after the bytes before it; detach() and attach() move it to another reactor
// (the MC/S hand-over), and bytes still unread then are reported on the new reactor. A test can make
// the initiator stop reading (Wire::reading = false): PDUs the target sends then stay queued, unsent,
// until Wire::drain(), as they would behind a full socket.
#pragma once

#include "net/transport.hpp"

#include <deque>
#include <memory>
#include <string>

namespace ispace::iscsi_target::test {

class MemoryTransport;

// One connection's two directions.
struct Wire {
    std::deque<uint8_t> to_target;    // written by the initiator, not yet read by the target
    std::deque<uint8_t> to_initiator; // written by the target, not yet read by the initiator
    bool initiator_closed = false;    // the initiator closed its side: EOF after to_target
    bool target_closed = false;       // the target's transport closed (or was destroyed)
    std::string close_reason;         // what the target gave as the reason
    MemoryTransport* transport = nullptr;
    bool reading = true; // false: the initiator reads nothing; the target's PDUs wait, unsent

    // The initiator side: queue bytes for the target and tell it.
    void initiator_write(const uint8_t* bytes, size_t length);
    void initiator_close();
    // The initiator reads again: every PDU held back is sent (and its on_sent() runs).
    void drain();
};

class MemoryTransport final : public net::Transport {
public:
    explicit MemoryTransport(std::shared_ptr<Wire> wire);
    ~MemoryTransport() override;

    void attach(net::Reactor& reactor, Handler& handler) override;
    bool detach() override;
    ReadResult read(void* dst, size_t len) override;
    void send(net::OutItem& pdu) override;
    void close(Error why) override;
    void close_after_flush(Error why) override { close(std::move(why)); }
    void pause_reading() override { _paused = true; }
    void resume_reading() override;
    bool closed() const override { return _closed; }
    std::string peer() const override { return "fake initiator"; }

    // The initiator wrote or closed: report readability from the reactor loop.
    void schedule_readable();
    bool reading_paused() const { return _paused; }
    size_t held_pdus() const { return _held.size(); }
    void drain();
    net::Reactor* reactor() const { return _reactor; }

private:
    std::shared_ptr<Wire> _wire;
    net::Reactor* _reactor = nullptr;
    Handler* _handler = nullptr;
    uint64_t _binding = 0; // changes on every attach/detach: a stale posted event is dropped
    bool _readable_posted = false;
    bool _read_eof = false;
    bool _closed = false;
    bool _paused = false;
    uint64_t _bytes_read = 0;
    std::deque<net::OutItem*> _held; // sent while the initiator was not reading
    std::shared_ptr<bool> _alive = std::make_shared<bool>(true);
};

} // namespace ispace::iscsi_target::test
