// The transport seam: what an initiator connection needs from the network, and nothing more.
//
// A Connection (connection.hpp) speaks iSCSI through a Transport: it sends whole PDUs (one OutItem
// each: header, data slices, trailer) and pulls received bytes with read(). In production the transport
// is a TcpStream; tests put a FaultTransport (fault_transport.hpp) in between that drops, delays or
// corrupts single PDUs in either direction or cuts the connection, the way libiscsi's conformance tests
// override queue_pdu. Keeping the seam at "PDUs out, bytes in" leaves the receive path zero-copy in
// production (Data-In lands straight in the command's buffer) while a test wrapper can still see PDU
// boundaries: the connection tells it when digests switch on (set_digests), which is all it needs to
// frame the byte stream itself.
//
// Threading: a transport lives on one reactor and is used only there, like the Connection that owns it.
#pragma once

#include "common/function.hpp"
#include "common/result.hpp"
#include "net/reactor.hpp"
#include "net/tcp_stream.hpp"

#include <memory>
#include <string>

namespace ispace::initiator {

class Transport {
public:
    using ReadResult = net::TcpStream::ReadResult;

    class Handler {
    public:
        // Bytes (or EOF) are ready: call read() until it reports would_block.
        virtual void on_readable() = 0;
        // The transport failed or the peer closed it. Called once, later (never inside a call into
        // the transport). Unsent PDUs were told on_sent(false) before.
        virtual void on_closed(const Error& why) = 0;

    protected:
        ~Handler() = default;
    };

    virtual ~Transport() = default;
    virtual ReadResult read(void* dst, size_t len) = 0;
    // Queues one complete PDU. `pdu.on_sent()` runs once it is written (or dropped by a fault, which
    // looks the same to the sender) or with false when the transport closed first.
    virtual void send(net::OutItem& pdu) = 0;
    // Closes now; on_closed() follows (deferred).
    virtual void close(Error why) = 0;
    // Digests in force from the next received PDU on (after the final Login Response). Only wrappers
    // that frame the stream themselves care.
    virtual void set_digests(bool header, bool data) {}
    // "127.0.0.1:3260", for log lines.
    virtual std::string peer() const = 0;
};

// Creates connected transports. Shared by every connection of an Initiator (or of one session, when a
// session's options carry their own), so it must be thread-safe; each call runs on the reactor the new
// transport will live on.
class TransportFactory {
public:
    using ConnectDone = Function<void(Result<std::unique_ptr<Transport>>)>;
    virtual ~TransportFactory() = default;
    // Connects to host:port within `timeout`. `done` runs later on `reactor`, never inside connect().
    // `handler` receives the events of the transport handed to `done`.
    virtual void connect(net::Reactor& reactor, const std::string& host, uint16_t port,
                         Transport::Handler& handler, net::Clock::duration timeout, ConnectDone done) = 0;
};

// Plain TCP: non-blocking connect, then a TcpStream.
std::shared_ptr<TransportFactory> make_tcp_transport_factory();

} // namespace ispace::initiator
