// SpaceService: what the `ispace space` verbs do, as one JSON request and one JSON answer each, and the
// small local socket through which the ispace CLI reaches the process that holds spaces.
//
// One process per host (per $ISPACE_HOME) holds the spaces it has attached or exports: ispaced, which
// already owns a runtime whose reactors the members' initiator and the attachments run on. It listens on
// $ISPACE_HOME/holder.sock (a Unix stream socket, mode 0600, peers checked by uid) and serves one request
// per connection. This socket is deliberately minimal — only the space verbs — and stands in until the
// live-management control socket exists; the verbs' JSON is meant to move there unchanged.
//
// When no holder runs, the CLI handles the verbs that need no holder (create, status, list, replace,
// add-member, assemble, destroy) in its own process with the same SpaceService, and `attach` starts a
// holder (ispaced --holder --idle-exit, logging to $ISPACE_HOME/ispaced.log) that exits once it holds
// nothing.
#pragma once

#include "common/result.hpp"
#include "mgmt/runtime.hpp"
#include "volume/space_manager.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace ispace::mgmt {

// $ISPACE_HOME, else $HOME/.ispace.
std::string default_space_home();
std::string holder_socket_path(const std::string& home);

// The status of a space as the CLI's --json prints it.
nlohmann::json space_status_json(const volume::SpaceStatus& status);

class SpaceService {
public:
    // `runtime` null: attach and detach are refused (the CLI's own process, when no holder runs).
    SpaceService(volume::SpaceManager& manager, Runtime* runtime, std::string home);
    ~SpaceService();
    SpaceService(const SpaceService&) = delete;
    SpaceService& operator=(const SpaceService&) = delete;

    // {"verb": "...", ...} → {"ok": true, ...} or {"ok": false, "error": "..."}. Any thread but a reactor.
    nlohmann::json handle(const nlohmann::json& request);
    // The manager let go of `name` (another holder took it over): detach its block device, at once and
    // from another thread (this is called from inside the manager).
    void lost(const std::string& name);
    // Whether a space is attached or held here (an exported one included).
    bool holds_anything();
    // Detaches every attached space (force) and closes them: before the runtime stops. From its start
    // on, neither callback below is called; when it returns, no thread of this service runs one.
    void shutdown();
    // Called once nothing is attached or held after a detach or a loss (ispaced --idle-exit).
    // Both are set before requests come (the threads that serve them read these).
    std::function<void()> on_idle;
    // Whether the holder still has work besides spaces (devices attached by another service): then a
    // holder started with --idle-exit stays.
    std::function<bool()> busy_elsewhere;

private:
    nlohmann::json attach(const nlohmann::json& request);
    nlohmann::json detach(const std::string& name);
    nlohmann::json status(const std::string& name);
    void check_idle();
    // After something left _attached: closes `space` when an attach opened it and nothing attached uses it.
    Result<void> release_space(const std::string& space);

    volume::SpaceManager& _manager;
    Runtime* _runtime;
    std::string _home;
    std::mutex _mutex;
    std::map<std::string, std::string> _attached; // what was attached (NAME, NAME@SNAP, CLONE) → block device
    std::map<std::string, std::string> _space_of; // ... → the space whose volume serves it
    std::set<std::string> _opened;                // spaces an attach opened (closed with their last one)
    std::vector<std::thread> _detachers;
    std::atomic<bool> _stopping{false}; // shutdown() began
};

// The holder's end of $ISPACE_HOME/holder.sock. listen() takes $ISPACE_HOME/holder.lock (flock) for the
// life of the process, so two holders of one home cannot both run: the second is told the first's pid.
class HolderSocket {
public:
    using Handler = std::function<nlohmann::json(const nlohmann::json&)>;
    static Result<std::unique_ptr<HolderSocket>> listen(const std::string& home, Handler handler);
    ~HolderSocket();
    HolderSocket(const HolderSocket&) = delete;
    HolderSocket& operator=(const HolderSocket&) = delete;

private:
    HolderSocket() = default;
    void run();
    void serve(int fd);

    Handler _handler;
    std::string _path;
    int _lock_fd = -1;
    int _listen_fd = -1;
    int _wake[2] = {-1, -1};
    std::atomic<bool> _stopping{false};
    std::thread _thread;
    std::mutex _mutex;
    std::condition_variable _none_active;
    unsigned _active = 0; // requests being served (each on its own detached thread)
};

// The CLI's end: sends one request and waits for its answer (at most `timeout`). ENOENT or ECONNREFUSED
// when no holder listens for `home`.
Result<nlohmann::json> holder_request(const std::string& home, const nlohmann::json& request,
                                      std::chrono::seconds timeout = std::chrono::seconds(300));

} // namespace ispace::mgmt
