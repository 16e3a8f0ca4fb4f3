// tcp_pingpong: the loopback round-trip limit that a QD1 iSCSI read cannot beat.
//
// One TCP connection over 127.0.0.1, blocking sockets, TCP_NODELAY on both ends. The client sends a
// 48-byte request (the size of an iSCSI basic header segment: a READ command) and waits for a
// 4,144-byte answer (a Data-In header plus 4 KiB with status); the server, a second thread, answers
// each request as soon as it has read it. Nothing else happens: no parsing, no storage, so the rate is
// what the kernel's loopback path and two thread wake-ups per round trip allow. make bench prints a
// target's 4K QD1 read rate as a fraction of this.
//
// Usage: tcp_pingpong [--seconds S] [--count N] [--request BYTES] [--response BYTES]
// Prints one line: "pingpong: N round trips in S s: R round trips/s, U us per round trip". Exit 0 on
// success, 1 on any socket error, 2 on bad arguments.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
    double seconds = 2;
    unsigned long long count = 0; // 0: run for `seconds`
    size_t request = 48;
    size_t response = 4144;
};

bool write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= size_t(w);
    }
    return true;
}

// False on EOF or error: the peer went away, which ends the server and fails the client.
bool read_all(int fd, char* p, size_t n) {
    while (n > 0) {
        ssize_t r = ::recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return false;
        }
        p += r;
        n -= size_t(r);
    }
    return true;
}

void no_delay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool parse_args(int argc, char** argv, Options& o) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) {
            return false;
        }
        char* end = nullptr;
        const char* v = argv[++i];
        if (a == "--seconds") {
            o.seconds = std::strtod(v, &end);
            if (*end != '\0' || !(o.seconds > 0)) {
                return false;
            }
        } else if (a == "--count") {
            o.count = std::strtoull(v, &end, 10);
            if (*end != '\0' || o.count == 0) {
                return false;
            }
        } else if (a == "--request" || a == "--response") {
            unsigned long long n = std::strtoull(v, &end, 10);
            if (*end != '\0' || n == 0 || n > (64u << 20)) {
                return false;
            }
            (a == "--request" ? o.request : o.response) = size_t(n);
        } else {
            return false;
        }
    }
    return true;
}

} // namespace

int main(int argc, char** argv) {
    Options o;
    if (!parse_args(argc, argv, o)) {
        std::fprintf(stderr,
                     "usage: tcp_pingpong [--seconds S] [--count N] [--request BYTES] [--response BYTES]\n");
        return 2;
    }

    int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0; // any free port: several runs may overlap
    socklen_t len = sizeof addr;
    if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener, 1) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        std::fprintf(stderr, "tcp_pingpong: cannot listen on 127.0.0.1: %s\n", std::strerror(errno));
        return 1;
    }

    std::thread server([&] {
        int fd = ::accept(listener, nullptr, nullptr);
        if (fd < 0) {
            return;
        }
        no_delay(fd);
        std::vector<char> request(o.request);
        std::vector<char> response(o.response, 'x');
        while (read_all(fd, request.data(), request.size()) &&
               write_all(fd, response.data(), response.size())) {
        }
        ::close(fd);
    });

    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        std::fprintf(stderr, "tcp_pingpong: cannot connect: %s\n", std::strerror(errno));
        ::shutdown(listener, SHUT_RDWR);
        server.join();
        return 1;
    }
    no_delay(fd);
    std::vector<char> request(o.request, 'q');
    std::vector<char> response(o.response);
    auto round_trip = [&] {
        return write_all(fd, request.data(), request.size()) &&
               read_all(fd, response.data(), response.size());
    };

    // A short warm-up, so that the first timed round trips do not pay for page faults and slow start.
    bool ok = true;
    for (int i = 0; i < 1000 && ok; ++i) {
        ok = round_trip();
    }
    using clock = std::chrono::steady_clock;
    auto start = clock::now();
    auto deadline =
        start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o.seconds));
    unsigned long long done = 0;
    while (ok) {
        if (o.count != 0 ? done >= o.count : ((done & 255) == 0 && clock::now() >= deadline)) {
            break;
        }
        ok = round_trip();
        done += ok ? 1 : 0;
    }
    double elapsed = std::chrono::duration<double>(clock::now() - start).count();
    ::close(fd); // the server sees EOF and leaves
    server.join();
    ::close(listener);
    if (!ok || done == 0 || elapsed <= 0) {
        std::fprintf(stderr, "tcp_pingpong: the connection failed after %llu round trips\n", done);
        return 1;
    }
    double rate = double(done) / elapsed;
    std::printf("pingpong: %llu round trips in %.3f s: %.0f round trips/s, %.2f us per round trip "
                "(request %zu bytes, response %zu bytes)\n",
                done, elapsed, rate, 1e6 / rate, o.request, o.response);
    return 0;
}
