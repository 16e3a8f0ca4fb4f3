// A blocking iSNS client over TCP (RFC 4171 §5.2: iSNSP over TCP, one request, one response with the
// same Transaction ID). Every wait is bounded by a deadline (connect, send, each response).
//
// Blocking on purpose: it runs on the registrar's own thread or in the `ispace` CLI, never on a
// reactor (see docs/architecture.md, "iSNS"); calling it from a reactor thread is a bug (asserted).
#pragma once

#include "common/result.hpp"
#include "isns/message.hpp"
#include "net/socket.hpp"

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace ispace::isns {

struct ClientOptions {
    std::string server; // HOST[:PORT], the port 3205 by default
    // Bounds the connect, and each request until its whole response has arrived.
    std::chrono::milliseconds timeout{5000};
    // The largest response accepted (a query answer listing many targets is the large one).
    size_t max_message_bytes = 1 << 20;
};

// "HOST[:PORT]" with iSNS's default port (names are resolved here: a blocking call).
Result<net::Endpoint> parse_server(std::string_view text);

class Client {
public:
    explicit Client(ClientOptions options);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Resolves and connects (if not connected).
    Result<void> connect();
    // Sends `request` with the next Transaction ID and returns the response with that ID (a response
    // left over from an earlier request that timed out is skipped). Connects first when needed. Any
    // failure closes the connection: the next call starts afresh.
    Result<Message> call(Message request);
    void close();
    bool connected() const { return _fd >= 0; }
    // Our end of the connection: the address a wildcard portal is registered as (the one the server
    // reaches us by).
    Result<net::Endpoint> local_endpoint() const;
    const std::string& server() const { return _options.server; }
    void set_timeout(std::chrono::milliseconds timeout) { _options.timeout = timeout; }
    // While `fd` (an eventfd, say) is readable, every wait ends at once with ECANCELED: how a thread
    // blocked on an unresponsive server is told to stop. -1: none.
    void set_cancel_fd(int fd) { _cancel_fd = fd; }

private:
    Result<void> send_all(const std::vector<uint8_t>& bytes, std::chrono::steady_clock::time_point deadline);

    ClientOptions _options;
    int _fd = -1;
    int _cancel_fd = -1;
    uint16_t _next_xid;
    MessageReader _reader;
};

} // namespace ispace::isns
