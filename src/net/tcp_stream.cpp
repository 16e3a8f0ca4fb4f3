#include "net/tcp_stream.hpp"

#include "net/socket.hpp"

#include <cassert>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::net {

TcpStream::TcpStream(Reactor& reactor, int fd, Owner& owner) : _reactor(reactor), _fd(fd), _owner(owner) {
    _events = EPOLLIN | EPOLLRDHUP;
    _reactor.add(_fd, _events, this);
}

TcpStream::~TcpStream() {
    if (_fd >= 0 && _head != nullptr && !_want_write) {
        flush(); // what waited for the iteration's end would have left inside send() unbatched
    }
    *_alive = false;
    if (_fd >= 0) {
        _reactor.remove(_fd);
        ::close(_fd);
        _fd = -1;
    }
    while (_head) {
        pop_head()->on_sent(false);
    }
}

size_t TcpStream::remaining(const OutItem& item) {
    size_t bytes = 0;
    for (size_t i = item._iov_index; i < item.iovcnt; ++i) {
        bytes += item.iov[i].iov_len;
    }
    return bytes - item._iov_offset;
}

OutItem* TcpStream::pop_head() {
    OutItem* item = _head;
    _head = item->_next;
    if (!_head) {
        _tail = nullptr;
    }
    _queued_bytes -= remaining(*item);
    item->_next = nullptr;
    item->_iov_index = 0;
    item->_iov_offset = 0;
    return item;
}

// ---------------------------------------------------------------------------------------------------
// Receiving

TcpStream::ReadResult TcpStream::read(void* dst, size_t len) {
    if (_read_eof) {
        return {.eof = true}; // stays true, also after the stream closed itself
    }
    if (_fd < 0) {
        return {.error = EBADF};
    }
    if (len == 0) {
        return {}; // recv() would return 0, which must not look like EOF
    }
    ssize_t n;
    do {
        n = ::recv(_fd, dst, len, 0);
    } while (n < 0 && errno == EINTR);
    return finish_read(n);
}

TcpStream::ReadResult TcpStream::readv(const iovec* iov, int iovcnt) {
    if (_read_eof) {
        return {.eof = true};
    }
    if (_fd < 0) {
        return {.error = EBADF};
    }
    size_t total = 0;
    for (int i = 0; i < iovcnt; ++i) {
        total += iov[i].iov_len;
    }
    if (total == 0) {
        return {};
    }
    ssize_t n;
    do {
        n = ::readv(_fd, iov, iovcnt);
    } while (n < 0 && errno == EINTR);
    return finish_read(n);
}

TcpStream::ReadResult TcpStream::finish_read(ssize_t n) {
    if (n > 0) {
        _stats.bytes_in += uint64_t(n);
        return {.bytes = size_t(n)};
    }
    if (n == 0) {
        // The peer shut its sending side. It may still read what we have queued (a final response),
        // so flush before closing; on_closed() follows either way.
        _read_eof = true;
        _closed_by_eof = !_closing_after_flush;
        close_after_flush(Error{0, "connection closed by peer"});
        return {.eof = true};
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) {
        return {.would_block = true};
    }
    fail(Error{err, fmt::format("receive: {}", std::strerror(err))});
    return {.error = err};
}

void TcpStream::pause_reading() {
    _paused = true;
    update_interest();
}

void TcpStream::resume_reading() {
    _paused = false;
    update_interest(); // level-triggered: bytes that arrived meanwhile are reported next iteration
}

// ---------------------------------------------------------------------------------------------------
// Sending

void TcpStream::send(OutItem& item) {
    assert(item.iovcnt <= OutItem::max_iov);
    item._next = nullptr;
    item._iov_index = 0;
    item._iov_offset = 0;
    if (_tail) {
        _tail->_next = &item;
    } else {
        _head = &item;
    }
    _tail = &item;
    _queued_bytes += remaining(item);
    if (_fd < 0) {
        schedule_close_report(); // fails it later, never inside send()
        return;
    }
    if (_want_write) {
        // A backlog already waits for EPOLLOUT; writing now would only return EAGAIN.
        if (_queued_bytes >= low_water) {
            _space_wanted = true;
        }
        return;
    }
    if (_queued_bytes >= cork_limit) {
        flush(); // large enough that one more system call costs nothing next to the copy
        return;
    }
    // Small PDUs wait for the end of the reactor's iteration, so that the answers of every command
    // completed in it leave in one sendmsg (a 4 KiB read at queue depth 32 otherwise costs a sendmsg
    // per command, and the peer a wake-up per command).
    if (!_flush_scheduled) {
        _flush_scheduled = true;
        _reactor.at_iteration_end([this, alive = _alive] {
            if (*alive) {
                _flush_scheduled = false;
                flush();
            }
        });
    }
}

void TcpStream::flush() {
    if (_flushing || _fd < 0) {
        return; // re-entered from on_sent(): the outer loop picks up what was queued meanwhile
    }
    _flushing = true;
    auto alive = _alive;
    iovec iov[IOV_MAX];
    bool blocked = false;
    while (_head && _fd >= 0) {
        int count = 0;
        size_t total = 0;
        for (OutItem* it = _head; it && count < IOV_MAX; it = it->_next) {
            for (size_t i = it->_iov_index; i < it->iovcnt && count < IOV_MAX; ++i) {
                size_t skip = i == it->_iov_index ? it->_iov_offset : 0;
                size_t len = it->iov[i].iov_len - skip;
                if (len > 0) {
                    iov[count++] = {static_cast<uint8_t*>(it->iov[i].iov_base) + skip, len};
                    total += len;
                }
            }
        }

        size_t written = 0;
        if (total > 0) {
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = size_t(count);
            // sendmsg rather than writev: MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
            ssize_t n = ::sendmsg(_fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            ++_stats.writev_calls;
            if (n < 0) {
                int err = errno;
                if (err == EINTR) {
                    continue;
                }
                if (err == EAGAIN || err == EWOULDBLOCK) {
                    blocked = true;
                    break;
                }
                fail(Error{err, fmt::format("send: {}", std::strerror(err))});
                break;
            }
            written = size_t(n);
            _stats.bytes_out += written;
            _queued_bytes -= written;
        }

        // Advance through the queue; items written in full move to a local list to be told.
        OutItem* done = nullptr;
        OutItem** done_tail = &done;
        size_t left = written;
        while (_head) {
            OutItem* it = _head;
            while (it->_iov_index < it->iovcnt) {
                size_t avail = it->iov[it->_iov_index].iov_len - it->_iov_offset;
                if (avail > left) {
                    it->_iov_offset += left;
                    left = 0;
                    break;
                }
                left -= avail;
                ++it->_iov_index;
                it->_iov_offset = 0;
            }
            if (it->_iov_index < it->iovcnt) {
                break;
            }
            _head = it->_next;
            if (!_head) {
                _tail = nullptr;
            }
            it->_next = nullptr;
            *done_tail = it;
            done_tail = &it->_next;
        }
        // Tell every completed item even if an earlier callback destroyed the stream: they are off
        // the queue, so nobody else would.
        while (done) {
            OutItem* it = done;
            done = it->_next;
            it->_next = nullptr;
            it->_iov_index = 0;
            it->_iov_offset = 0;
            it->on_sent(true);
        }
        if (!*alive) {
            return;
        }
        if (written < total) {
            blocked = true; // the socket buffer is full
            break;
        }
    }
    _flushing = false;
    if (_fd >= 0 && !_head && _closing_after_flush) {
        // Everything is out: half-close first so the peer reads our last bytes before the FIN.
        ::shutdown(_fd, SHUT_WR);
        fail(_close_reason);
        return;
    }
    if (blocked && _queued_bytes >= low_water) {
        _space_wanted = true;
    }
    update_interest();
}

void TcpStream::update_interest() {
    if (_fd < 0) {
        return;
    }
    uint32_t want = 0;
    if (!_paused && !_read_eof && !_closing_after_flush) {
        want |= EPOLLIN | EPOLLRDHUP;
    }
    _want_write = _head != nullptr;
    if (_want_write) {
        want |= EPOLLOUT;
    }
    if (want != _events) {
        _events = want;
        _reactor.modify(_fd, want, this);
    }
}

// ---------------------------------------------------------------------------------------------------
// Closing

int TcpStream::release() {
    if (_fd >= 0 && _head != nullptr && !_want_write) {
        auto alive = _alive;
        flush(); // what waits for the iteration's end (a final Login Response) goes out now
        if (!*alive) {
            return -1;
        }
    }
    if (_fd < 0 || _head != nullptr) {
        return -1;
    }
    int fd = _fd;
    _reactor.remove(fd);
    _fd = -1;
    _close_reported = true; // nothing to report: the owner handed the socket on
    return fd;
}

void TcpStream::close(Error why) {
    if (_fd >= 0 && _head != nullptr && !_want_write) {
        // What waits for the iteration's end would have been written inside send() without the
        // batching; closing now must not lose it (a Reject or a response sent just before).
        auto alive = _alive;
        flush();
        if (!*alive) {
            return;
        }
    }
    if (_fd < 0) {
        // Already closed because read() saw EOF, not yet reported: the owner's reason says more
        // ("peer closed the connection mid-PDU") than ours.
        if (_closed_by_eof && !_close_reported) {
            _close_reason = std::move(why);
        }
        return;
    }
    fail(std::move(why));
}

void TcpStream::close_after_flush(Error why) {
    if (_fd < 0) {
        return;
    }
    if (!_closing_after_flush) {
        _closing_after_flush = true;
        _close_reason = std::move(why);
    }
    if (!_head) {
        ::shutdown(_fd, SHUT_WR);
        fail(_close_reason);
        return;
    }
    update_interest(); // stop reading; EPOLLOUT stays while the backlog drains
}

void TcpStream::fail(Error why) {
    if (_fd < 0) {
        return;
    }
    _reactor.remove(_fd);
    ::close(_fd);
    _fd = -1;
    _want_write = false;
    _close_reason = std::move(why);
    schedule_close_report();
}

void TcpStream::schedule_close_report() {
    if (_report_scheduled) {
        return;
    }
    _report_scheduled = true;
    _reactor.defer([this, alive = _alive] {
        if (!*alive) {
            return; // destroyed meanwhile; the destructor told the items
        }
        _report_scheduled = false;
        report_close();
    });
}

void TcpStream::report_close() {
    auto alive = _alive;
    while (_head) {
        pop_head()->on_sent(false);
        if (!*alive) {
            return;
        }
    }
    if (!_close_reported) {
        _close_reported = true;
        Error why = _close_reason; // a copy: the owner may destroy the stream (and the reason) inside
        _owner.on_closed(why);
    }
}

void TcpStream::on_fd_event(uint32_t events) {
    auto alive = _alive;
    if (_fd < 0) {
        return;
    }
    if (events & EPOLLERR) {
        int err = socket_error(_fd);
        if (err == 0) {
            err = ECONNRESET;
        }
        fail(Error{err, fmt::format("socket error: {}", std::strerror(err))});
        return;
    }
    if (events & EPOLLOUT) {
        flush();
        if (!*alive || _fd < 0) {
            return;
        }
        if (_space_wanted && _queued_bytes < low_water) {
            _space_wanted = false;
            _owner.on_send_space();
            if (!*alive || _fd < 0) {
                return;
            }
        }
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
        if (!_paused && !_read_eof && !_closing_after_flush) {
            _owner.on_readable();
        } else if (events & EPOLLHUP) {
            // Both directions are gone and nobody reads: epoll reports HUP whatever the mask, so
            // waiting for the owner to resume would spin.
            fail(Error{ECONNRESET, "connection closed by peer"});
        }
    }
}

} // namespace ispace::net
