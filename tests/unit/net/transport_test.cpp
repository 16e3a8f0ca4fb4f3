// The TCP Transport (net/transport.hpp): events only once attached, and a detach/attach hand-over to
// another reactor that loses no byte.
#include "net/transport.hpp"
#include "net_test_util.hpp"

#include <gtest/gtest.h>

#include <string>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::net::test {
namespace {

struct Collector final : Transport::Handler {
    Transport* transport = nullptr;
    std::string received;
    bool closed = false;
    void on_readable() override {
        char buf[64];
        for (;;) {
            auto r = transport->read(buf, sizeof buf);
            if (r.bytes == 0) {
                return;
            }
            received.append(buf, r.bytes);
        }
    }
    void on_closed(const Error&) override { closed = true; }
};

struct Bytes final : OutItem {
    explicit Bytes(std::string text) : text(std::move(text)) {
        iov[0] = {this->text.data(), this->text.size()};
        iovcnt = 1;
    }
    void on_sent(bool ok) override { sent = ok; }
    std::string text;
    bool sent = false;
};

TEST(TcpTransport, HandOverToAnotherReactorKeepsUnreadBytes) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    Reactor first(0);
    Reactor second(1);
    auto transport = make_tcp_transport(fds[0], "pair");
    Collector a;
    a.transport = transport.get();
    run_on(first, [&] { transport->attach(first, a); });
    ASSERT_EQ(::write(fds[1], "one", 3), 3);
    ASSERT_TRUE(run_until(first, [&] { return a.received == "one"; }));

    bool detached = false;
    run_on(first, [&] { detached = transport->detach(); });
    ASSERT_TRUE(detached);
    ASSERT_EQ(::write(fds[1], "two", 3), 3);
    // Detached: the first reactor no longer reports anything.
    for (int k = 0; k < 5; ++k) {
        first.run_once(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(a.received, "one");

    Collector b;
    b.transport = transport.get();
    run_on(second, [&] { transport->attach(second, b); });
    ASSERT_TRUE(run_until(second, [&] { return b.received == "two"; }));

    Bytes reply("three");
    run_on(second, [&] { transport->send(reply); });
    EXPECT_TRUE(reply.sent);
    char buf[8] = {};
    ASSERT_EQ(::read(fds[1], buf, sizeof buf), 5);
    EXPECT_EQ(std::string(buf, 5), "three");

    run_on(second, [&] { transport->close_after_flush(Error{0, "done"}); });
    ASSERT_TRUE(run_until(second, [&] { return b.closed; }));
    EXPECT_TRUE(transport->closed());
    EXPECT_FALSE(transport->detach()) << "a closed transport cannot be handed over";
    ::close(fds[1]);
}

TEST(TcpTransport, DetachRefusesWhileDataIsQueued) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    int small = 4096;
    ::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    Reactor reactor(0);
    auto transport = make_tcp_transport(fds[0], "pair");
    Collector c;
    c.transport = transport.get();
    std::vector<std::unique_ptr<Bytes>> items;
    bool detached = true;
    run_on(reactor, [&] {
        transport->attach(reactor, c);
        // More than the socket buffer holds: some of it stays queued.
        for (int k = 0; k < 64; ++k) {
            items.push_back(std::make_unique<Bytes>(std::string(16384, 'x')));
            transport->send(*items.back());
        }
        detached = transport->detach();
    });
    EXPECT_FALSE(detached);
    EXPECT_FALSE(transport->closed());
    transport.reset();
    ::close(fds[1]);
}

} // namespace
} // namespace ispace::net::test
