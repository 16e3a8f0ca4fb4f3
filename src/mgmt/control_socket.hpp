// The control socket: a Unix stream socket on which ispace (or anything speaking JSON-RPC 2.0) sends
// one request per line and reads one response per line (mgmt/json_rpc.hpp). It runs on threads of its
// own, never on a reactor, because the methods block (a LUN is opened, a session drains).
//
// Who may connect is decided by the file's mode: 0600 (the daemon's user), or 0660 with the group
// given as --control-group. A request line longer than max_request_bytes is answered with an error and
// the connection is closed; a client that sends nothing for a minute is dropped.
#pragma once

#include "common/result.hpp"

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace ispace::mgmt {

// One request line in, the response out ("" when none is due). Called on the socket's threads.
using LineHandler = std::function<std::string(std::string_view line)>;

struct ControlSocketOptions {
    std::string path;
    std::string group; // empty: mode 0600, else 0660 and this group
    unsigned max_clients = 32;
};

class ControlSocket {
public:
    ControlSocket();
    ~ControlSocket();
    ControlSocket(const ControlSocket&) = delete;
    ControlSocket& operator=(const ControlSocket&) = delete;

    // Binds the socket (replacing a stale one no daemon answers on; refusing one a daemon serves) and
    // starts accepting.
    Result<void> start(ControlSocketOptions options, LineHandler handler);
    // Stops accepting, ends every client connection, joins the threads and removes the socket file.
    void stop();

private:
    struct Client;
    void accept_loop();
    void serve(Client& client);

    ControlSocketOptions _options;
    LineHandler _handler;
    int _listen_fd = -1;
    int _wake_fd = -1; // an eventfd that ends accept_loop()
    std::thread _acceptor;
    std::mutex _clients_mutex;
    std::list<std::unique_ptr<Client>> _clients;
    std::atomic<bool> _stopping{false};
};

// Client side (ispace): connects to `path`, sends `request` plus a newline and returns the response
// line. Errors say whether the daemon is not running or the socket is not ours to use.
Result<std::string> control_request(const std::string& path, std::string_view request);

} // namespace ispace::mgmt
