// TcpStream: ordered zero-copy sends with partial writes, batching, closing, and owners that destroy the
// stream from inside its callbacks.
#include "net/socket.hpp"
#include "net/tcp_stream.hpp"
#include "net_test_util.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <random>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace ispace;
using namespace ispace::net;
using test::run_until;

namespace {

class Item : public OutItem {
public:
    explicit Item(std::vector<uint8_t> data = {}) : bytes(std::move(data)) {
        iov[0] = {bytes.data(), bytes.size()};
        iovcnt = 1;
    }
    void on_sent(bool written) override {
        ++calls;
        result = written;
        if (sent) {
            sent(written);
        }
    }
    std::vector<uint8_t> bytes;
    std::function<void(bool)> sent;
    int calls = 0;
    bool result = false;
};

class Owner : public TcpStream::Owner {
public:
    void on_readable() override {
        ++readable_calls;
        if (readable) {
            readable();
        }
    }
    void on_closed(const Error& why) override {
        ++closed_calls;
        reason = why;
        if (closed) {
            closed(why);
        }
    }
    void on_send_space() override { ++space_calls; }

    std::function<void()> readable;
    std::function<void(const Error&)> closed;
    int readable_calls = 0;
    int closed_calls = 0;
    int space_calls = 0;
    Error reason;
};

// A connected pair: [0] for the stream (non-blocking), [1] for the test's peer (blocking).
struct SocketPair {
    int fds[2] = {-1, -1};
    SocketPair() {
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        EXPECT_TRUE(set_nonblocking(fds[0]).ok());
    }
    ~SocketPair() { close_peer(); }
    int take_stream_fd() { return std::exchange(fds[0], -1); }
    void close_peer() {
        if (fds[1] >= 0) {
            ::close(fds[1]);
            fds[1] = -1;
        }
        if (fds[0] >= 0) {
            ::close(fds[0]);
            fds[0] = -1;
        }
    }
};

// A loopback TCP connection: returns {stream side (non-blocking), peer side (blocking)}.
std::pair<int, int> tcp_pair() {
    auto where = parse_endpoint("127.0.0.1:0", 0);
    auto lfd = listen_tcp(*where);
    EXPECT_TRUE(lfd.ok());
    auto local = local_endpoint(*lfd);
    auto cfd = connect_tcp(*local);
    EXPECT_TRUE(cfd.ok());
    pollfd p{*lfd, POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 10000), 1);
    auto afd = accept_tcp(*lfd);
    EXPECT_TRUE(afd.ok());
    ::close(*lfd);
    pollfd c{*cfd, POLLOUT, 0};
    EXPECT_EQ(::poll(&c, 1, 10000), 1);
    int flags = ::fcntl(*cfd, F_GETFL);
    ::fcntl(*cfd, F_SETFL, flags & ~O_NONBLOCK);
    return {*afd, *cfd};
}

void set_sndbuf(int fd, int bytes) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

// Reads from a blocking fd until EOF or `limit` bytes.
std::vector<uint8_t> read_all(int fd, size_t limit = SIZE_MAX) {
    std::vector<uint8_t> out;
    std::vector<uint8_t> buf(64 << 10);
    while (out.size() < limit) {
        ssize_t n = ::read(fd, buf.data(), std::min(buf.size(), limit - out.size()));
        if (n <= 0) {
            break;
        }
        out.insert(out.end(), buf.begin(), buf.begin() + n);
    }
    return out;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) {
        b = uint8_t(rng());
    }
    return v;
}

} // namespace

TEST(TcpStream, LargeOrderedSendWithPartialWritesOverTcp) {
    Reactor r(0);
    auto [sfd, peer] = tcp_pair();
    tune_stream_socket(sfd);
    // Smaller than the ~10 MB sent, so writes are partial. Not much smaller: loopback segments are
    // 64 KiB, and a send buffer of one segment waits on the peer's delayed ACK every time.
    set_sndbuf(sfd, 128 << 10);
    Owner owner;
    TcpStream stream(r, sfd, owner);

    // Each item: a header, a slice of a shared payload (zero-copy from it), a trailer.
    constexpr int count = 300;
    auto payload = random_bytes(4 << 20, 7);
    struct Multi : OutItem {
        uint8_t header[16];
        uint8_t trailer[4];
        int index = 0;
        std::vector<int>* order = nullptr;
        int calls = 0;
        bool result = false;
        void on_sent(bool written) override {
            ++calls;
            result = written;
            order->push_back(index);
        }
    };
    std::vector<Multi> items(count);
    std::vector<int> order;
    std::vector<uint8_t> expected;
    std::mt19937 rng(3);
    size_t pos = 0;
    for (int i = 0; i < count; ++i) {
        auto& it = items[i];
        it.index = i;
        it.order = &order;
        std::memset(it.header, i & 0xff, sizeof it.header);
        std::memcpy(it.header, &i, sizeof i);
        std::memset(it.trailer, 0xa5, sizeof it.trailer);
        size_t len = rng() % (64 << 10);
        if (pos + len > payload.size()) {
            pos = 0;
        }
        it.iov[0] = {it.header, sizeof it.header};
        it.iov[1] = {payload.data() + pos, len}; // may be empty
        it.iov[2] = {it.trailer, sizeof it.trailer};
        it.iovcnt = 3;
        expected.insert(expected.end(), it.header, it.header + sizeof it.header);
        expected.insert(expected.end(), payload.begin() + pos, payload.begin() + pos + len);
        expected.insert(expected.end(), it.trailer, it.trailer + sizeof it.trailer);
        pos += len;
    }
    std::vector<uint8_t> received;
    std::thread reader([&, peer = peer] { received = read_all(peer, expected.size()); });
    for (auto& it : items) {
        stream.send(it);
    }
    EXPECT_GT(stream.queued_bytes(), 0u); // a backlog: writes were partial
    ASSERT_TRUE(run_until(r, [&] { return order.size() == count; }));
    reader.join();
    ::close(peer);
    ASSERT_EQ(received.size(), expected.size());
    EXPECT_TRUE(received == expected);
    for (int i = 0; i < count; ++i) {
        EXPECT_EQ(order[i], i);
        EXPECT_EQ(items[i].calls, 1);
        EXPECT_TRUE(items[i].result);
    }
    EXPECT_EQ(stream.queued_bytes(), 0u);
    EXPECT_EQ(stream.stats().bytes_out, expected.size());
    EXPECT_EQ(owner.closed_calls, 0);
}

TEST(TcpStream, QueuedItemsGoOutInFewWritevCalls) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    // Fill the socket so everything after waits in the queue.
    Item big(random_bytes(1 << 20, 1));
    stream.send(big);
    ASSERT_GT(stream.queued_bytes(), 0u) << "the socket took 1 MiB at once; the test needs a backlog";
    constexpr int small_count = 200;
    std::vector<std::unique_ptr<Item>> small;
    std::vector<uint8_t> expected = big.bytes;
    for (int i = 0; i < small_count; ++i) {
        small.push_back(std::make_unique<Item>(std::vector<uint8_t>(100, uint8_t(i))));
        expected.insert(expected.end(), small.back()->bytes.begin(), small.back()->bytes.end());
        stream.send(*small.back());
    }
    uint64_t calls_before = stream.stats().writev_calls;
    std::vector<uint8_t> received;
    std::thread reader([&] { received = read_all(sp.fds[1], expected.size()); });
    ASSERT_TRUE(run_until(r, [&] { return small.back()->calls == 1; }));
    reader.join();
    EXPECT_TRUE(received == expected);
    EXPECT_TRUE(big.result);
    // The 200 small items shared writev calls with each other and with the big item's tail.
    EXPECT_LT(stream.stats().writev_calls - calls_before, uint64_t(small_count) / 4);
}

TEST(TcpStream, SmallItemsOfOneIterationLeaveInOneSendmsgAtItsEnd) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    std::vector<std::unique_ptr<Item>> items;
    std::vector<uint8_t> expected;
    for (int i = 0; i < 32; ++i) {
        items.push_back(std::make_unique<Item>(std::vector<uint8_t>(4144, uint8_t(i))));
        expected.insert(expected.end(), items.back()->bytes.begin(), items.back()->bytes.end());
        stream.send(*items.back());
    }
    EXPECT_EQ(stream.stats().writev_calls, 0u) << "small items wait for the end of the iteration";
    EXPECT_EQ(items.front()->calls, 0);
    r.run_once(std::chrono::milliseconds(0));
    EXPECT_EQ(stream.stats().writev_calls, 1u) << "one sendmsg for the iteration's 32 answers";
    EXPECT_EQ(items.back()->calls, 1);
    EXPECT_EQ(read_all(sp.fds[1], expected.size()), expected);
    // A large item goes at once, taking what waits with it.
    Item small(std::vector<uint8_t>(100, 7));
    Item big(random_bytes(TcpStream::cork_limit, 9));
    stream.send(small);
    stream.send(big);
    EXPECT_EQ(small.calls, 1) << "written inside send() once cork_limit bytes are queued";
    std::thread reader([&] { read_all(sp.fds[1], small.bytes.size() + big.bytes.size()); });
    ASSERT_TRUE(run_until(r, [&] { return big.calls == 1; }));
    reader.join();
}

TEST(TcpStream, CloseWritesWhatWaitsForTheIterationEnd) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    Item last(std::vector<uint8_t>(48, 3)); // a Reject sent just before the connection is closed
    stream.send(last);
    stream.close(Error{0, "bye"});
    EXPECT_EQ(last.calls, 1);
    EXPECT_TRUE(last.result);
    EXPECT_EQ(read_all(sp.fds[1]), last.bytes);
}

TEST(TcpStream, CloseAfterFlushWritesEverythingThenCloses) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    std::vector<std::unique_ptr<Item>> items;
    std::vector<uint8_t> expected;
    for (int i = 0; i < 8; ++i) {
        items.push_back(std::make_unique<Item>(random_bytes(256 << 10, uint32_t(i))));
        expected.insert(expected.end(), items.back()->bytes.begin(), items.back()->bytes.end());
        stream.send(*items.back());
    }
    stream.close_after_flush(Error{0, "logout"});
    EXPECT_FALSE(stream.closed()); // still flushing
    std::vector<uint8_t> received;
    std::thread reader([&] { received = read_all(sp.fds[1]); }); // until EOF
    ASSERT_TRUE(run_until(r, [&] { return owner.closed_calls == 1; }));
    reader.join();
    EXPECT_TRUE(received == expected);
    for (auto& it : items) {
        EXPECT_EQ(it->calls, 1);
        EXPECT_TRUE(it->result);
    }
    EXPECT_EQ(owner.reason.message, "logout");
    EXPECT_TRUE(stream.closed());
    r.run_once(std::chrono::milliseconds(5));
    EXPECT_EQ(owner.closed_calls, 1);
}

TEST(TcpStream, ReadReportsDataWouldBlockAndEof) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    std::vector<uint8_t> got;
    bool saw_would_block = false;
    bool saw_eof = false;
    owner.readable = [&] {
        for (;;) {
            uint8_t buf[3];
            auto res = stream.read(buf, sizeof buf);
            if (res.bytes > 0) {
                got.insert(got.end(), buf, buf + res.bytes);
                continue;
            }
            saw_would_block = saw_would_block || res.would_block;
            saw_eof = saw_eof || res.eof;
            EXPECT_EQ(res.error, 0);
            return;
        }
    };
    auto empty = stream.read(nullptr, 0);
    EXPECT_EQ(empty.bytes, 0u);
    EXPECT_FALSE(empty.eof || empty.would_block);
    ASSERT_EQ(::write(sp.fds[1], "hello", 5), 5);
    ASSERT_TRUE(run_until(r, [&] { return got.size() == 5; }));
    EXPECT_TRUE(saw_would_block);
    EXPECT_FALSE(saw_eof);
    EXPECT_EQ(stream.stats().bytes_in, 5u);
    ::shutdown(sp.fds[1], SHUT_WR);
    ASSERT_TRUE(run_until(r, [&] { return owner.closed_calls == 1; }));
    EXPECT_TRUE(saw_eof);
    EXPECT_TRUE(stream.read(got.data(), 1).eof); // stays at EOF
    for (int i = 0; i < 3; ++i) {
        r.run_once(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(owner.closed_calls, 1);
}

TEST(TcpStream, OwnerReasonForAPeerCloseIsKept) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    owner.readable = [&] {
        char buf[16];
        auto res = stream.read(buf, sizeof buf);
        if (res.eof) {
            stream.close(Error{0, "peer closed the connection mid-PDU"});
        }
    };
    ::close(sp.fds[1]);
    sp.fds[1] = -1;
    ASSERT_TRUE(run_until(r, [&] { return owner.closed_calls == 1; }));
    EXPECT_EQ(owner.reason.message, "peer closed the connection mid-PDU");
}

TEST(TcpStream, ReadvFillsSeveralBuffers) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    ASSERT_EQ(::write(sp.fds[1], "abcdefgh", 8), 8);
    char a[3], b[5];
    iovec iov[2] = {{a, 3}, {b, 5}};
    TcpStream::ReadResult res;
    owner.readable = [&] { res = stream.readv(iov, 2); };
    ASSERT_TRUE(run_until(r, [&] { return res.bytes > 0; }));
    EXPECT_EQ(res.bytes, 8u);
    EXPECT_EQ(std::string(a, 3), "abc");
    EXPECT_EQ(std::string(b, 5), "defgh");
}

TEST(TcpStream, ConnectionResetIsAnErrorAndClosesOnce) {
    Reactor r(0);
    auto [sfd, peer] = tcp_pair();
    Owner owner;
    TcpStream stream(r, sfd, owner);
    int error = 0;
    owner.readable = [&] {
        char buf[16];
        auto res = stream.read(buf, sizeof buf);
        if (res.error) {
            error = res.error;
        }
    };
    // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    linger lg{1, 0};
    ::setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(peer);
    ASSERT_TRUE(run_until(r, [&] { return owner.closed_calls == 1; }));
    EXPECT_TRUE(error == ECONNRESET || error == 0) << error; // EPOLLERR may report it first
    EXPECT_NE(owner.reason.code, 0);
    EXPECT_EQ(owner.closed_calls, 1);
}

TEST(TcpStream, PeerCloseFailsUnsentItemsBeforeOnClosed) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    std::vector<std::string> events;
    Item big(random_bytes(4 << 20, 2));
    big.sent = [&](bool ok) { events.push_back(ok ? "sent" : "failed"); };
    owner.closed = [&](const Error&) { events.push_back("closed"); };
    stream.send(big);
    ASSERT_GT(stream.queued_bytes(), 0u);
    ::close(sp.fds[1]);
    sp.fds[1] = -1;
    ASSERT_TRUE(run_until(r, [&] { return owner.closed_calls == 1; }));
    EXPECT_EQ(events, (std::vector<std::string>{"failed", "closed"}));
    EXPECT_EQ(stream.queued_bytes(), 0u);
}

TEST(TcpStream, SendOnAClosedStreamFailsLaterNotInsideSend) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    stream.close(Error{0, "bye"});
    EXPECT_TRUE(stream.closed());
    EXPECT_EQ(owner.closed_calls, 0); // deferred
    Item item(std::vector<uint8_t>(10, 1));
    stream.send(item);
    EXPECT_EQ(item.calls, 0);
    ASSERT_TRUE(run_until(r, [&] { return item.calls == 1 && owner.closed_calls == 1; }));
    EXPECT_FALSE(item.result);
    EXPECT_EQ(owner.reason.message, "bye");
    // A send after the close was reported still fails, and on_closed is not repeated.
    Item late(std::vector<uint8_t>(10, 2));
    stream.send(late);
    ASSERT_TRUE(run_until(r, [&] { return late.calls == 1; }));
    EXPECT_EQ(owner.closed_calls, 1);
}

TEST(TcpStream, OwnerMayDestroyTheStreamInsideOnClosed) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    auto stream = std::make_unique<TcpStream>(r, sp.take_stream_fd(), owner);
    Item a(random_bytes(4 << 20, 5));
    Item b(std::vector<uint8_t>(10, 1));
    stream->send(a);
    stream->send(b);
    owner.closed = [&](const Error&) { stream.reset(); };
    ::close(sp.fds[1]);
    sp.fds[1] = -1;
    ASSERT_TRUE(run_until(r, [&] { return !stream; }));
    for (int i = 0; i < 3; ++i) {
        r.run_once(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(owner.closed_calls, 1);
    EXPECT_EQ(a.calls, 1);
    EXPECT_EQ(b.calls, 1);
}

TEST(TcpStream, OwnerMayDestroyTheStreamInsideOnSent) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    auto stream = std::make_unique<TcpStream>(r, sp.take_stream_fd(), owner);
    // First a backlog, so that the three items complete together in one flush.
    Item big(random_bytes(1 << 20, 9));
    stream->send(big);
    Item a(std::vector<uint8_t>(100, 1)), b(std::vector<uint8_t>(100, 2)), c(std::vector<uint8_t>(100, 3));
    a.sent = [&](bool) { stream.reset(); };
    stream->send(a);
    stream->send(b);
    stream->send(c);
    std::thread reader([&] { read_all(sp.fds[1], big.bytes.size() + 300); });
    ASSERT_TRUE(run_until(r, [&] { return !stream; }));
    reader.join();
    for (int i = 0; i < 3; ++i) {
        r.run_once(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(a.calls, 1);
    EXPECT_EQ(b.calls, 1); // written in the same batch (true) or failed by the destructor (false)
    EXPECT_EQ(c.calls, 1);
    EXPECT_EQ(owner.closed_calls, 0); // a destroyed stream reports nothing more
}

TEST(TcpStream, DestroyingWithQueuedItemsFailsThem) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    Item big(random_bytes(4 << 20, 4));
    Item small(std::vector<uint8_t>(10, 1));
    {
        TcpStream stream(r, sp.take_stream_fd(), owner);
        stream.send(big);
        stream.send(small);
        stream.close(Error{0, "abort"}); // the report is deferred; the destructor comes first
    }
    r.run_once(std::chrono::milliseconds(2));
    EXPECT_EQ(big.calls, 1);
    EXPECT_FALSE(big.result);
    EXPECT_EQ(small.calls, 1);
    EXPECT_EQ(owner.closed_calls, 0);
}

TEST(TcpStream, PausedStreamIsNotReadUntilResumed) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    std::string got;
    owner.readable = [&] {
        char buf[64];
        auto res = stream.read(buf, sizeof buf);
        got.append(buf, res.bytes);
    };
    stream.pause_reading();
    EXPECT_TRUE(stream.reading_paused());
    ASSERT_EQ(::write(sp.fds[1], "data", 4), 4);
    for (int i = 0; i < 3; ++i) {
        r.run_once(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(owner.readable_calls, 0);
    stream.resume_reading();
    ASSERT_TRUE(run_until(r, [&] { return got == "data"; }));
}

TEST(TcpStream, SendSpaceIsSignalledWhenABacklogDrains) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    Item big(random_bytes(4 << 20, 6));
    stream.send(big);
    ASSERT_GE(stream.queued_bytes(), TcpStream::low_water);
    std::thread reader([&] { read_all(sp.fds[1], big.bytes.size()); });
    ASSERT_TRUE(run_until(r, [&] { return big.calls == 1; }));
    reader.join();
    EXPECT_GE(owner.space_calls, 1);
}

TEST(TcpStream, ItemsMayBeResentFromOnSent) {
    Reactor r(0);
    SocketPair sp;
    Owner owner;
    TcpStream stream(r, sp.take_stream_fd(), owner);
    Item item(std::vector<uint8_t>{'x', 'y'});
    int rounds = 0;
    item.sent = [&](bool ok) {
        if (ok && ++rounds < 5) {
            stream.send(item); // a pooled item goes straight back into the queue
        }
    };
    stream.send(item);
    ASSERT_TRUE(run_until(r, [&] { return rounds == 5; }));
    EXPECT_EQ(read_all(sp.fds[1], 10),
              (std::vector<uint8_t>{'x', 'y', 'x', 'y', 'x', 'y', 'x', 'y', 'x', 'y'}));
}
