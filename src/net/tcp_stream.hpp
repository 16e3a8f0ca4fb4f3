// TcpStream: a connected non-blocking socket on one reactor, with an ordered, zero-copy send queue.
//
// Receiving is pull-based: when the socket is readable the owner's on_readable() runs and the owner
// calls read()/readv() itself, so payload can land directly in its final buffer (a task's data buffer).
// The owner may pause reading (back-pressure) and resume later.
//
// Sending: the owner queues OutItems. Each item is caller-owned (usually pooled), describes its bytes as
// an iovec array that points into memory the item keeps alive (its own header bytes, a reference-counted
// Buffer), and is told when it has been written in full, or when the stream closed first. Items are
// written in order, many per writev, never copied.
#pragma once

#include "common/result.hpp"
#include "net/reactor.hpp"

#include <cstddef>
#include <cstdint>
#include <sys/uio.h>

namespace ispace::net {

class OutItem {
public:
    virtual ~OutItem() = default;
    // Called once: written == true when every byte went to the socket, false when the stream closed
    // before that. The item may be destroyed or reused inside this call.
    virtual void on_sent(bool written) = 0;

    static constexpr unsigned max_iov = 8;
    iovec iov[max_iov]{};
    unsigned iovcnt = 0;

private:
    friend class TcpStream;
    OutItem* _next = nullptr;
    size_t _iov_index = 0;  // progress within iov[] for a partial write
    size_t _iov_offset = 0; // bytes already written of iov[_iov_index]
};

class TcpStream final : public FdHandler {
public:
    class Owner {
    public:
        virtual ~Owner() = default;
        // The socket has bytes (or EOF) to read. Read until read() returns would_block, or pause.
        virtual void on_readable() = 0;
        // The stream failed or the peer closed; sent items not yet written were told on_sent(false)
        // before this. Called once. The owner may destroy the stream inside this call.
        virtual void on_closed(const Error& why) = 0;
        // The send queue drained below the low-water mark (for owners that throttle producers).
        virtual void on_send_space() {}
    };

    // Takes ownership of `fd` (already connected, non-blocking) and registers it with `reactor`.
    TcpStream(Reactor& reactor, int fd, Owner& owner);
    ~TcpStream() override; // closes the fd; unsent items get on_sent(false)

    struct ReadResult {
        size_t bytes = 0;     // > 0: that many bytes read
        bool would_block = false;
        bool eof = false;     // the peer closed its side
        int error = 0;        // errno on failure
    };
    ReadResult read(void* dst, size_t len);
    ReadResult readv(const iovec* iov, int iovcnt);

    void pause_reading();
    void resume_reading();
    bool reading_paused() const { return _paused; }

    // Queues an item for sending and tries to write at once. Never calls on_sent() re-entrantly from
    // inside send() with written == false; a failure is reported through on_closed() later (deferred).
    void send(OutItem& item);
    size_t queued_bytes() const { return _queued_bytes; }

    // Closes the socket now: unsent items get on_sent(false) and on_closed() follows (deferred).
    void close(Error why);
    // Stops reading, writes what is queued, then closes (a Logout response, a final Reject).
    void close_after_flush(Error why);
    bool closed() const { return _fd < 0; }

    int fd() const { return _fd; }
    Reactor& reactor() { return _reactor; }

    struct Stats {
        uint64_t bytes_in = 0;
        uint64_t bytes_out = 0;
        uint64_t writev_calls = 0;
    };
    const Stats& stats() const { return _stats; }

    void on_fd_event(uint32_t events) override;

private:
    void flush();
    void update_interest();
    void fail(Error why);

    Reactor& _reactor;
    int _fd;
    Owner& _owner;
    OutItem* _head = nullptr;
    OutItem* _tail = nullptr;
    size_t _queued_bytes = 0;
    bool _paused = false;
    bool _want_write = false;
    bool _closing_after_flush = false;
    bool _close_reported = false;
    Error _close_reason;
    Stats _stats;
};

} // namespace ispace::net
