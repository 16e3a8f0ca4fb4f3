// Endpoints and sockets: parsing, listening, connecting, and the error messages users read.
#include "net/socket.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <poll.h>
#include <unistd.h>

using namespace ispace;
using namespace ispace::net;

namespace {

bool ipv6_available() {
    int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) {
        return false;
    }
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

// Waits until fd is ready for `events`; connect completion shows as POLLOUT.
bool wait_for(int fd, short events) {
    pollfd p{fd, events, 0};
    return ::poll(&p, 1, 10000) == 1;
}

} // namespace

TEST(Endpoint, ParsesIpv4WithAndWithoutPort) {
    auto a = parse_endpoint("127.0.0.1:3261", 3260);
    ASSERT_TRUE(a.ok()) << a.error().message;
    EXPECT_EQ(a->port(), 3261);
    EXPECT_FALSE(a->is_ipv6());
    EXPECT_EQ(a->to_string(), "127.0.0.1:3261");
    auto b = parse_endpoint("10.1.2.3", 3260);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->to_string(), "10.1.2.3:3260");
}

TEST(Endpoint, ParsesIpv6InBracketsAndBare) {
    auto a = parse_endpoint("[::1]:3262", 3260);
    ASSERT_TRUE(a.ok()) << a.error().message;
    EXPECT_TRUE(a->is_ipv6());
    EXPECT_EQ(a->to_string(), "[::1]:3262");
    auto b = parse_endpoint("[fe80::1]", 3260);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->port(), 3260);
    auto c = parse_endpoint("::1", 860);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->to_string(), "[::1]:860");
}

TEST(Endpoint, ResolvesNames) {
    auto a = parse_endpoint("localhost:3260", 1);
    ASSERT_TRUE(a.ok()) << a.error().message;
    EXPECT_EQ(a->port(), 3260);
}

TEST(Endpoint, ErrorsSayWhatWasWrong) {
    auto bad_port = parse_endpoint("1.2.3.4:x", 3260);
    ASSERT_FALSE(bad_port.ok());
    EXPECT_NE(bad_port.error().message.find("port 'x'"), std::string::npos) << bad_port.error().message;
    auto big_port = parse_endpoint("1.2.3.4:70000", 3260);
    ASSERT_FALSE(big_port.ok());
    EXPECT_NE(big_port.error().message.find("70000"), std::string::npos);
    auto unclosed = parse_endpoint("[::1:3260", 3260);
    ASSERT_FALSE(unclosed.ok());
    EXPECT_NE(unclosed.error().message.find("']'"), std::string::npos) << unclosed.error().message;
    auto junk = parse_endpoint("[::1]x", 3260);
    EXPECT_FALSE(junk.ok());
    auto no_host = parse_endpoint(":3260", 3260);
    ASSERT_FALSE(no_host.ok());
    EXPECT_NE(no_host.error().message.find("empty host"), std::string::npos);
    EXPECT_FALSE(parse_endpoint("", 3260).ok());
    auto unknown = parse_endpoint("no-such-host.invalid:3260", 3260);
    ASSERT_FALSE(unknown.ok());
    EXPECT_NE(unknown.error().message.find("cannot resolve host 'no-such-host.invalid'"), std::string::npos)
        << unknown.error().message;
}

TEST(Socket, ListenOnPortZeroAndConnect) {
    auto where = parse_endpoint("127.0.0.1:0", 0);
    ASSERT_TRUE(where.ok());
    auto lfd = listen_tcp(*where);
    ASSERT_TRUE(lfd.ok()) << lfd.error().message;
    auto local = local_endpoint(*lfd);
    ASSERT_TRUE(local.ok());
    EXPECT_NE(local->port(), 0);

    auto none = accept_tcp(*lfd);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code, EAGAIN);

    auto cfd = connect_tcp(*local);
    ASSERT_TRUE(cfd.ok()) << cfd.error().message;
    ASSERT_TRUE(wait_for(*cfd, POLLOUT));
    EXPECT_EQ(socket_error(*cfd), 0);
    ASSERT_TRUE(wait_for(*lfd, POLLIN));
    Endpoint peer;
    auto afd = accept_tcp(*lfd, &peer);
    ASSERT_TRUE(afd.ok()) << afd.error().message;
    tune_stream_socket(*afd);
    auto client_local = local_endpoint(*cfd);
    ASSERT_TRUE(client_local.ok());
    EXPECT_EQ(peer.to_string(), client_local->to_string());
    auto server_peer = peer_endpoint(*afd);
    ASSERT_TRUE(server_peer.ok());
    EXPECT_EQ(server_peer->port(), client_local->port());
    ::close(*afd);
    ::close(*cfd);
    ::close(*lfd);
}

TEST(Socket, ListenTwiceSaysAddressInUse) {
    auto where = parse_endpoint("127.0.0.1:0", 0);
    auto first = listen_tcp(*where);
    ASSERT_TRUE(first.ok());
    auto bound = local_endpoint(*first);
    auto second = listen_tcp(*bound);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().code, EADDRINUSE);
    EXPECT_EQ(second.error().message, "listen " + bound->to_string() + ": Address already in use");
    ::close(*first);
}

TEST(Socket, ConnectToAClosedPortFailsWithRefused) {
    auto where = parse_endpoint("127.0.0.1:0", 0);
    auto lfd = listen_tcp(*where);
    ASSERT_TRUE(lfd.ok());
    auto bound = local_endpoint(*lfd);
    ::close(*lfd); // nothing listens there now
    auto cfd = connect_tcp(*bound);
    if (!cfd.ok()) {
        EXPECT_EQ(cfd.error().code, ECONNREFUSED);
        EXPECT_NE(cfd.error().message.find("connect 127.0.0.1:"), std::string::npos);
        return;
    }
    ASSERT_TRUE(wait_for(*cfd, POLLOUT));
    EXPECT_EQ(socket_error(*cfd), ECONNREFUSED);
    ::close(*cfd);
}

TEST(Socket, Ipv6Loopback) {
    if (!ipv6_available()) {
        GTEST_SKIP() << "no IPv6 loopback here";
    }
    auto where = parse_endpoint("[::1]:0", 0);
    ASSERT_TRUE(where.ok());
    auto lfd = listen_tcp(*where);
    ASSERT_TRUE(lfd.ok()) << lfd.error().message;
    auto local = local_endpoint(*lfd);
    ASSERT_TRUE(local.ok());
    EXPECT_TRUE(local->is_ipv6());
    auto cfd = connect_tcp(*local);
    ASSERT_TRUE(cfd.ok());
    ASSERT_TRUE(wait_for(*cfd, POLLOUT));
    EXPECT_EQ(socket_error(*cfd), 0);
    ::close(*cfd);
    ::close(*lfd);
}

TEST(Socket, SetNonblocking) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    EXPECT_TRUE(set_nonblocking(fds[0]).ok());
    char c;
    EXPECT_EQ(::read(fds[0], &c, 1), -1);
    EXPECT_EQ(errno, EAGAIN);
    ::close(fds[0]);
    ::close(fds[1]);
    EXPECT_FALSE(set_nonblocking(fds[0]).ok());
}
