// FaultInjector: a TransportFactory that wraps another and lets a test drop, delay or corrupt single PDUs
// in either direction, or cut a connection at a chosen PDU.
//
// The rule sees every PDU (its header, direction, the connection's ordinal and the PDU's index on it)
// and returns what to do with it. Outbound PDUs are seen whole as the connection queues them; inbound
// bytes are framed into PDUs here (the connection tells the transport when digests switch on, see
// Transport::set_digests), then passed on, dropped, corrupted (one bit flipped in the header or the
// data segment, after the digest was computed: the receiver's digest check catches it), delayed (later
// PDUs wait behind it, as TCP would make them) or turned into a disconnect. `edit` rewrites chosen bytes
// of the PDU as it travels (its header, AHS, digests and data counted from the first byte of the BHS):
// a hostile peer's fields rather than line noise, for the fuzzer of the initiator's receive paths. An
// edit of the framing fields (AHS or data segment length) changes how the receiver frames what follows.
//
// A dropped outbound PDU is reported as sent: the connection cannot tell it from one the network lost.
#pragma once

#include "initiator/transport.hpp"
#include "iscsi/pdu.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace ispace::initiator {

enum class FaultDirection : uint8_t { outbound, inbound };
enum class FaultAction : uint8_t { pass, drop, corrupt_header, corrupt_data, delay, disconnect, edit };

struct FaultPdu {
    FaultDirection direction = FaultDirection::outbound;
    unsigned connection = 0; // ordinal of the transport among those this injector created
    uint64_t index = 0;      // PDUs seen so far in this direction on this connection
    iscsi::Bhs bhs;
    uint32_t data_length = 0;
    iscsi::Opcode opcode() const { return bhs.opcode(); }
};

// One byte of a PDU rewritten by FaultAction::edit: byte `offset` becomes (byte & keep) ^ value, so
// keep 0x00 sets it and keep 0xff flips the bits of `value`. Offsets past the PDU's end are ignored.
struct ByteEdit {
    uint32_t offset = 0;
    uint8_t keep = 0;
    uint8_t value = 0;
};

struct Fault {
    FaultAction action = FaultAction::pass;
    std::chrono::milliseconds delay{0}; // with FaultAction::delay
    std::vector<ByteEdit> edits;        // with FaultAction::edit
};

using FaultRule = std::function<Fault(const FaultPdu&)>;

class FaultInjector final : public TransportFactory {
public:
    explicit FaultInjector(std::shared_ptr<TransportFactory> inner = make_tcp_transport_factory());

    // Thread-safe; the rule runs on reactor threads, so what it captures must be thread-safe too.
    void set_rule(FaultRule rule);
    void clear_rule() { set_rule(nullptr); }
    Fault decide(const FaultPdu& pdu);

    void connect(net::Reactor& reactor, const std::string& host, uint16_t port, Transport::Handler& handler,
                 net::Clock::duration timeout, ConnectDone done) override;

    struct Stats {
        std::atomic<uint64_t> connections{0}; // made so far: also the ordinal of the next one
        std::atomic<uint64_t> dropped{0};
        std::atomic<uint64_t> corrupted{0};
        std::atomic<uint64_t> delayed{0};
        std::atomic<uint64_t> disconnects{0};
        std::atomic<uint64_t> edited{0};
    };
    Stats& stats() { return _stats; }

private:
    std::shared_ptr<TransportFactory> _inner;
    std::mutex _mu;
    FaultRule _rule;
    Stats _stats;
};

} // namespace ispace::initiator
