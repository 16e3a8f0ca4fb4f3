// TcpStream: a connected non-blocking socket on one reactor, with an ordered, zero-copy send queue.
//
// Receiving is pull-based: when the socket is readable the owner's on_readable() runs and the owner
// calls read()/readv() itself, so payload can land directly in its final buffer (a task's data buffer).
// The owner may pause reading (back-pressure) and resume later.
//
// Sending: the owner queues OutItems. Each item is caller-owned (usually pooled), describes its bytes as
// an iovec array that points into memory the item keeps alive (its own header bytes, a reference-counted
// Buffer), and is told when it has been written in full, or when the stream closed first. Items are
// written in order, many per writev, never copied. Small items wait for the end of the reactor's
// iteration (Reactor::at_iteration_end) so that everything queued in one iteration leaves in one
// sendmsg; once cork_limit bytes are queued, send() writes at once.
//
// Callbacks and lifetime: on_sent(true) may run inside send() (the bytes went out at once) or inside the
// readiness handler; on_sent(false) and on_closed() always run from a deferred task. The owner may
// destroy the stream inside any callback (on_readable, on_sent, on_closed): the stream holds a liveness
// token that its deferred tasks and its own loops check before touching it again. on_closed() is not
// called for a stream the owner destroys first.
//
// Peer close: when read() sees EOF the stream stops reading, flushes what is queued (the peer may only
// have shut its sending side) and then closes, so on_closed() is reported for EOF too.
#pragma once

#include "common/result.hpp"
#include "net/reactor.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
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
    // on_send_space() fires when a backlog of at least this many bytes drains below it.
    static constexpr size_t low_water = size_t(256) << 10;
    // send() writes at once when this much is queued; less waits for the end of the reactor iteration.
    static constexpr size_t cork_limit = size_t(256) << 10;

    // Takes ownership of `fd` (already connected, non-blocking) and registers it with `reactor`.
    TcpStream(Reactor& reactor, int fd, Owner& owner);
    ~TcpStream() override; // closes the fd; unsent items get on_sent(false)

    struct ReadResult {
        size_t bytes = 0; // > 0: that many bytes read
        bool would_block = false;
        bool eof = false; // the peer closed its side
        int error = 0;    // errno on failure
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
    // Hands the socket over (to another reactor) instead of closing it: unregisters it and returns the
    // fd, or -1 if it is closed or data is still queued (a handover must not lose bytes). The stream
    // is then closed without on_closed() and may be destroyed.
    int release();

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
    ReadResult finish_read(ssize_t n);
    void schedule_close_report();
    void report_close();
    OutItem* pop_head();
    static size_t remaining(const OutItem& item);

    Reactor& _reactor;
    int _fd;
    Owner& _owner;
    OutItem* _head = nullptr;
    OutItem* _tail = nullptr;
    size_t _queued_bytes = 0;
    bool _paused = false;
    bool _want_write = false; // EPOLLOUT armed: a backlog waits for socket space
    bool _read_eof = false;
    bool _closed_by_eof = false; // closed on EOF with our generic reason; close() may refine it
    bool _flushing = false;
    bool _flush_scheduled = false; // a flush waits for the end of the reactor iteration
    bool _report_scheduled = false;
    bool _space_wanted = false;
    uint32_t _events = 0; // the epoll mask currently registered
    // Shared with deferred tasks; false once the stream is destroyed.
    std::shared_ptr<bool> _alive = std::make_shared<bool>(true);
    bool _closing_after_flush = false;
    bool _close_reported = false;
    Error _close_reason;
    Stats _stats;
};

} // namespace ispace::net
