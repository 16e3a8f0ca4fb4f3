// Transport: the seam between an iSCSI connection (initiator or target) and the network.
//
// A connection speaks iSCSI through a Transport: it sends whole PDUs (one OutItem each: header, data
// slices, trailer) and pulls received bytes with read(). In production the transport is a TcpStream
// (make_tcp_transport); tests put something else there — the initiator's FaultTransport that drops,
// delays or corrupts single PDUs, the target tests' in-memory transport driven by a fake initiator.
// Keeping the seam at "PDUs out, bytes in" leaves the receive path zero-copy in production (data lands
// straight in a command's buffer: read() takes the destination) and the send path one writev per batch
// of PDUs, while a test transport can still see PDU boundaries: the connection tells it when digests
// switch on (set_digests), which is all it needs to frame the byte stream itself.
//
// Binding: a transport is created unbound and reports nothing until attach() gives it the reactor it
// lives on and the handler of its events. A target connection that logged in on one reactor but joins
// a session living on another (MC/S) is handed over: detach() unbinds the transport on the first
// reactor, it travels to the second by post(), and attach() binds it there. Why this rather than
// handing over a file descriptor: the hand-over then works for any transport, and a test can run it
// through the same code as production.
//
// Threading: a bound transport is used only on its reactor, like the connection that owns it; an
// unbound one may move to another thread.
#pragma once

#include "common/result.hpp"
#include "net/reactor.hpp"
#include "net/tcp_stream.hpp"

#include <memory>
#include <string>

namespace ispace::net {

class Transport {
public:
    using ReadResult = TcpStream::ReadResult;

    class Handler {
    public:
        // Bytes (or EOF) are ready: call read() until it reports would_block.
        virtual void on_readable() = 0;
        // The transport failed, the peer closed it, or close() was called. Called once, later (never
        // inside a call into the transport). Unsent PDUs were told on_sent(false) before. The handler
        // may destroy the transport inside this call.
        virtual void on_closed(const Error& why) = 0;

    protected:
        ~Handler() = default;
    };

    virtual ~Transport() = default;

    // Binds the transport to `reactor` (the calling thread's) and `handler`: events flow from now on.
    // Called once after creation, and again on the new reactor after a detach().
    virtual void attach(Reactor& reactor, Handler& handler) = 0;
    // Unbinds it for a hand-over to another reactor: no event is reported until the next attach().
    // False (and nothing changes) when it is closed or still has PDUs to send: a hand-over must not
    // lose bytes.
    virtual bool detach() = 0;

    // Reads into `dst` (the final destination of the bytes: no copy on the way in production).
    virtual ReadResult read(void* dst, size_t len) = 0;
    // Queues one complete PDU. `pdu.on_sent()` runs once it is written (possibly inside send()), or
    // with false when the transport closed first (never inside send()).
    virtual void send(OutItem& pdu) = 0;
    // Back-pressure: stop reporting readability until resume_reading(). The bytes stay in the socket,
    // so a peer that keeps sending stalls in TCP. A target connection pauses when what it has queued
    // for its peer passes a bound: a peer that does not read is not read either, and its requests
    // cannot make us buffer their answers without limit.
    virtual void pause_reading() = 0;
    virtual void resume_reading() = 0;
    // Closes now; on_closed() follows (deferred).
    virtual void close(Error why) = 0;
    // Stops reading, writes what is queued, then closes (a Logout Response, a final Login Response).
    virtual void close_after_flush(Error why) = 0;
    virtual bool closed() const = 0;
    // Digests in force from the next received PDU on (after the final Login Response). Only wrappers
    // that frame the stream themselves care.
    virtual void set_digests(bool header, bool data) {}
    // "127.0.0.1:3260", for log lines.
    virtual std::string peer() const = 0;
};

// The production transport over a connected, non-blocking TCP socket (owned from now on; closed when
// the transport is destroyed). `peer` is for log lines.
std::unique_ptr<Transport> make_tcp_transport(int fd, std::string peer);

} // namespace ispace::net
