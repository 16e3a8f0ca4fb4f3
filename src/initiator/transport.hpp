// The initiator's side of the transport seam (net/transport.hpp): how a connection gets a connected
// Transport. In production that is a TCP connect (make_tcp_transport_factory); tests wrap the factory
// in a FaultInjector (fault_transport.hpp) that drops, delays or corrupts single PDUs in either
// direction or cuts the connection, the way libiscsi's conformance tests override queue_pdu.
//
// Threading: a transport lives on one reactor and is used only there, like the Connection that owns it.
#pragma once

#include "common/function.hpp"
#include "common/result.hpp"
#include "net/reactor.hpp"
#include "net/transport.hpp"

#include <memory>
#include <string>

namespace ispace::initiator {

// One interface serves the initiator and the target: see net/transport.hpp.
using Transport = net::Transport;

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
