#include "mgmt/space_service.hpp"

#include "common/log.hpp"
#include "volume/label.hpp"
#include "volume/layout.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace ispace::mgmt {

namespace fs = std::filesystem;
using nlohmann::json;

std::string default_space_home() {
    if (const char* h = std::getenv("ISPACE_HOME"); h != nullptr && *h != '\0') {
        return h;
    }
    const char* home = std::getenv("HOME");
    return std::string(home != nullptr && *home != '\0' ? home : "/root") + "/.ispace";
}

std::string holder_socket_path(const std::string& home) {
    return (fs::path(home) / "holder.sock").string();
}

json space_status_json(const volume::SpaceStatus& st) {
    json j;
    j["name"] = st.name;
    j["uuid"] = volume::to_string(st.uuid);
    j["layout"] = std::string(volume::to_string(st.layout));
    j["copies"] = st.copies;
    j["size"] = st.size;
    j["block_size"] = st.block_size;
    j["chunk"] = st.chunk;
    j["region"] = st.region;
    j["epoch"] = st.epoch;
    j["sequence"] = st.sequence;
    j["open"] = st.open;
    j["lost"] = st.lost;
    j["lost_to"] = st.lost_to;
    j["holder"] = st.holder;
    j["clean"] = st.clean;
    j["dirty_regions"] = st.dirty_regions;
    j["thin"] = st.thin;
    j["checksums"] = st.checksums;
    if (st.thin) {
        // provisioned: what the space provides; allocated: what its map takes from the members (null
        // when the map could not be read).
        j["provisioned_bytes"] = st.size;
        j["allocated_bytes"] = st.allocation_known ? json(st.allocated_bytes) : json(nullptr);
        j["pool_bytes"] = st.pool_bytes;
        j["cluster_size"] = st.cluster_size;
        j["pool_full"] = st.pool_full;
        // Copy-on-write copies deferred to the background copier (docs/thin.md, "Deferred copies").
        j["deferred_copies"] = st.deferred_copies;
        j["deferred_bytes"] = st.deferred_bytes;
        // Snapshots and clones in the pool: mapped bytes, and the bytes only each maps (what deleting it
        // frees); `created` is the pool transaction that made it.
        j["snapshots"] = json::array();
        j["clones"] = json::array();
        for (const volume::ThinDeviceStatus& d : st.thin_devices) {
            j[d.snapshot ? "snapshots" : "clones"].push_back({{"name", d.name},
                                                              {"origin", d.origin},
                                                              {"created", d.created},
                                                              {"mapped_bytes", d.mapped_bytes},
                                                              {"unique_bytes", d.unique_bytes}});
        }
    }
    if (!st.clone_of.empty()) {
        j["clone_of"] = st.clone_of;
    }
    if (!st.notes.empty()) {
        j["notes"] = st.notes;
    }
    if (st.checksums) { // held here: live; not held: what the labels keep
        j["scrub"] = {{"running", st.scrub.running},
                      {"done_bytes", st.scrub.done_bytes},
                      {"total_bytes", st.scrub.total_bytes},
                      {"bad_blocks", st.scrub.bad_blocks},
                      {"repaired_blocks", st.scrub.repaired_blocks},
                      {"table_entries_rewritten", st.scrub.table_entries_rewritten},
                      {"table_pages_rewritten", st.scrub.table_pages_rewritten},
                      {"unrecoverable_blocks", st.scrub.unrecoverable_blocks},
                      {"passes", st.scrub.passes},
                      {"paused", st.scrub.paused},
                      {"rate", st.scrub.rate}};
        // From the labels, across restarts: the state, when the last one ran, what it found.
        const volume::ScrubProgress& sc = st.scrub;
        std::string state = sc.running         ? (sc.interrupted ? "interrupted"
                                                  : sc.paused    ? "paused"
                                                                 : "running")
                            : sc.finished != 0 ? "done"
                                               : "none";
        j["scrub"]["state"] = state;
        j["scrub"]["interrupted"] = sc.interrupted;
        j["scrub"]["started"] = sc.started;
        j["scrub"]["finished"] = sc.finished;
        j["scrub"]["checked_blocks"] = sc.checked_blocks;
        // Layout offsets of the first blocks with no good copy; of a plain space they are its LBAs too.
        j["scrub"]["unrecoverable_offsets"] = sc.lost;
        if (!st.thin && st.block_size != 0) {
            json lbas = json::array();
            for (uint64_t off : sc.lost) {
                lbas.push_back(off / st.block_size);
            }
            j["scrub"]["unrecoverable_lbas"] = lbas;
        }
    }
    j["members"] = json::array();
    for (const volume::MemberStatus& m : st.members) {
        j["members"].push_back({{"slot", m.slot},
                                {"url", m.url},
                                {"state", std::string(volume::to_string(m.state))},
                                {"recovery_offset", m.recovery_offset},
                                {"errors", m.errors},
                                {"checksum_errors", m.checksum_errors}});
    }
    j["resync"] = {{"running", st.resync.running},
                   {"what", st.resync.what},
                   {"done_bytes", st.resync.done_bytes},
                   {"total_bytes", st.resync.total_bytes},
                   {"rate", st.resync.rate},
                   {"eta_seconds", st.resync.eta_seconds},
                   {"copied_bytes", st.resync.copied_bytes}};
    return j;
}

namespace {

json failure(const std::string& message) {
    return {{"ok", false}, {"error", message}};
}
json failure(const Error& error) {
    return failure(error.message);
}

std::vector<std::string> strings(const json& request, const char* key) {
    std::vector<std::string> out;
    if (request.contains(key) && request[key].is_array()) {
        for (const json& v : request[key]) {
            if (v.is_string()) {
                out.push_back(v.get<std::string>());
            }
        }
    }
    return out;
}

} // namespace

SpaceService::SpaceService(volume::SpaceManager& manager, Runtime* runtime, std::string home)
    : _manager(manager), _runtime(runtime), _home(std::move(home)) {}

SpaceService::~SpaceService() {
    shutdown();
}

json SpaceService::handle(const json& request) {
    try {
        std::string verb = request.value("verb", "");
        std::string name = request.value("name", "");
        if (verb == "ping") {
            return {{"ok", true}, {"pid", ::getpid()}, {"holder", _runtime != nullptr}};
        }
        if (verb == "create") {
            volume::CreateRequest r;
            r.name = name;
            auto kind = volume::parse_layout_kind(request.value("layout", "mirror"));
            if (!kind) {
                return failure(kind.error());
            }
            r.layout = *kind;
            r.copies = request.value("copies", 2u);
            r.members = strings(request, "members");
            r.size = request.value("size", uint64_t(0));
            r.chunk = request.value("chunk", uint64_t(0));
            r.region = request.value("region", 0u);
            r.force = request.value("force", false);
            r.thin = request.value("thin", false);
            r.cluster = request.value("cluster", 0u);
            r.checksums = request.value("checksums", false);
            auto st = _manager.create(r);
            return st ? json{{"ok", true}, {"status", space_status_json(*st)}} : failure(st.error());
        }
        if (verb == "attach") {
            return attach(request);
        }
        if (verb == "detach") {
            return detach(name);
        }
        if (verb == "status") {
            return status(name);
        }
        if (verb == "list") {
            auto all = _manager.list();
            if (!all) {
                return failure(all.error());
            }
            json spaces = json::array();
            std::lock_guard lock(_mutex);
            for (const volume::SpaceStatus& st : *all) {
                json j = space_status_json(st);
                if (!st.open) {
                    // list reads the catalog, not the labels: the members' states are not known here.
                    for (json& m : j["members"]) {
                        m["state"] = "unknown";
                    }
                }
                if (auto it = _attached.find(st.name); it != _attached.end()) {
                    j["device"] = it->second;
                }
                spaces.push_back(std::move(j));
            }
            return {{"ok", true}, {"spaces", spaces}};
        }
        if (verb == "snapshot") {
            auto t = _manager.snapshot(name, request.value("snap", ""));
            if (!t) {
                return failure(t.error());
            }
            return {{"ok", true}, {"pause_ms", t->pause_ms}, {"create_ms", t->create_ms}};
        }
        if (verb == "clone") {
            auto st = _manager.clone(name, request.value("new", ""));
            return st ? json{{"ok", true}, {"status", space_status_json(*st)}} : failure(st.error());
        }
        if (verb == "snapshot-delete") {
            {
                std::lock_guard lock(_mutex);
                if (auto it = _attached.find(name); it != _attached.end()) {
                    return failure(
                        fmt::format("snapshot '{}' is attached at {}; detach it first", name, it->second));
                }
            }
            auto r = _manager.snapshot_delete(name);
            return r ? json{{"ok", true}} : failure(r.error());
        }
        if (verb == "scrub") {
            std::string action = request.value("action", "start");
            if (action != "start" && action != "pause" && action != "resume") {
                return failure(fmt::format("scrub: unknown action '{}' (start, pause, resume)", action));
            }
            auto a = action == "pause"    ? volume::ScrubAction::pause
                     : action == "resume" ? volume::ScrubAction::resume
                                          : volume::ScrubAction::start;
            if (auto r = _manager.scrub(name, a, request.value("rate", uint64_t(0))); !r) {
                return failure(r.error());
            }
            return status(name);
        }
        if (verb == "replace") {
            auto st = _manager.replace(name, request.value("old", ""), request.value("new", ""),
                                       request.value("force", false));
            return st ? json{{"ok", true}, {"status", space_status_json(*st)}} : failure(st.error());
        }
        if (verb == "grow") {
            volume::SpaceStatus st;
            auto g = _manager.grow(name, request.value("member", ""), request.value("force", false), &st);
            if (!g) {
                return failure(g.error());
            }
            return {{"ok", true},        {"thin", g->thin},   {"before", g->before},
                    {"after", g->after}, {"notes", g->notes}, {"status", space_status_json(st)}};
        }
        if (verb == "add-member") {
            auto st = _manager.add_member(name, request.value("url", ""), request.value("force", false));
            return st ? json{{"ok", true}, {"status", space_status_json(*st)}} : failure(st.error());
        }
        if (verb == "assemble") {
            volume::AssembleOptions o;
            o.force_from = request.value("force_from", "");
            auto st = _manager.assemble(strings(request, "urls"), o);
            return st ? json{{"ok", true}, {"status", space_status_json(*st)}} : failure(st.error());
        }
        if (verb == "destroy") {
            {
                std::lock_guard lock(_mutex);
                if (auto it = _attached.find(name); it != _attached.end()) {
                    return failure(
                        fmt::format("space '{}' is attached at {}; detach it first", name, it->second));
                }
            }
            auto r = _manager.destroy(name, request.value("yes", false));
            return r ? json{{"ok", true}} : failure(r.error());
        }
        return failure(fmt::format("unknown verb '{}'", verb));
    } catch (const json::exception& e) {
        // A request of the wrong shape (a number where a string belongs): the client's mistake, not ours.
        return failure(fmt::format("malformed request: {}", e.what()));
    }
}

json SpaceService::attach(const json& request) {
    std::string name = request.value("name", "");
    if (_runtime == nullptr) {
        return failure("attach needs the holder process (ispaced); this process cannot hold a space");
    }
    // NAME, NAME@SNAP (read-only) or a clone: each a device of some space's volume.
    auto target = _manager.resolve(name);
    if (!target) {
        check_idle();
        return failure(target.error());
    }
    bool shared = false; // the space is held here for another attachment (a snapshot, a clone, itself)
    {
        std::lock_guard lock(_mutex);
        if (auto it = _attached.find(name); it != _attached.end()) {
            return failure(fmt::format("'{}' is attached already, at {}", name, it->second));
        }
        for (const auto& [key, space] : _space_of) {
            shared |= space == target->space;
        }
    }
    // An exported space is held here already (find()); attaching it as well would give it two writers
    // of one process that know nothing of each other's caches: refused by open(). A snapshot or clone is
    // another device of the pool, served by the same volume, whoever opened it.
    bool view = target->snapshot || target->clone;
    std::shared_ptr<volume::Volume> v = (view || shared) ? _manager.find(target->space) : nullptr;
    bool opened = false;
    if (!v) {
        volume::OpenOptions open_options;
        open_options.takeover = request.value("takeover", false);
        open_options.resync_rate = request.value("resync_rate", uint64_t(0));
        auto o = _manager.open(target->space, open_options);
        if (!o) {
            check_idle(); // a holder started for this attach has nothing to hold
            return failure(o.error());
        }
        v = *o;
        opened = true;
    }
    std::shared_ptr<backstore::Device> device;
    if (view) {
        auto d = _manager.open_view(*target);
        if (!d) {
            if (opened) {
                (void)_manager.close(target->space);
            }
            check_idle();
            return failure(d.error());
        }
        device = *d;
    } else {
        device = std::make_shared<volume::VolumeDevice>(v);
    }
    attach::AttachOptions o;
    o.name = "space:" + name;
    o.run_dir = (fs::path(_home) / "run").string();
    auto path = _runtime->attach(device, o);
    device.reset();
    if (!path) {
        if (opened) {
            (void)_manager.close(target->space);
        }
        check_idle();
        return failure(fmt::format("'{}': {}", name, path.error().message));
    }
    std::lock_guard lock(_mutex);
    _attached[name] = *path;
    _space_of[name] = target->space;
    if (opened) {
        _opened.insert(target->space);
    }
    log_info("space {}: attached at {}{}", name, *path, target->snapshot ? " (read-only)" : "");
    return {{"ok", true}, {"device", *path}, {"read_only", target->snapshot}};
}

Result<void> SpaceService::release_space(const std::string& space) {
    {
        std::lock_guard lock(_mutex);
        for (const auto& [key, s] : _space_of) {
            if (s == space) {
                return {}; // still serves another attachment
            }
        }
        if (_opened.erase(space) == 0) {
            return {}; // not ours to close (an export opened it)
        }
    }
    return _manager.close(space);
}

json SpaceService::detach(const std::string& name) {
    std::string path;
    {
        std::lock_guard lock(_mutex);
        auto it = _attached.find(name);
        if (it == _attached.end()) {
            return failure(fmt::format("'{}' is not attached by this holder", name));
        }
        path = it->second;
    }
    if (auto r = _runtime->detach(path); !r) {
        return failure(fmt::format("'{}': {}", name, r.error().message));
    }
    std::string space;
    {
        std::lock_guard lock(_mutex);
        _attached.erase(name);
        space = _space_of[name];
        _space_of.erase(name);
    }
    // Its volume is closed (clean labels) when nothing else attached uses it. A view's device was
    // released by the detach, so the snapshot can be deleted from now on.
    auto closed = release_space(space);
    log_info("{}: detached from {}", name, path);
    check_idle();
    return closed ? json{{"ok", true}, {"device", path}} : failure(closed.error());
}

json SpaceService::status(const std::string& name) {
    if (auto at = name.find('@'); at != std::string::npos) {
        // A snapshot: its line of its space's status, with where it is attached here.
        std::string space = name.substr(0, at);
        auto st = _manager.status(space);
        if (!st) {
            return failure(st.error());
        }
        for (const volume::ThinDeviceStatus& d : st->thin_devices) {
            if (d.snapshot && d.name == name) {
                json j = {{"name", d.name},
                          {"snapshot", true},
                          {"space", st->name},
                          {"origin", d.origin},
                          {"created", d.created},
                          {"mapped_bytes", d.mapped_bytes},
                          {"unique_bytes", d.unique_bytes},
                          {"open", st->open}};
                std::lock_guard lock(_mutex);
                if (auto it = _attached.find(name); it != _attached.end()) {
                    j["device"] = it->second;
                }
                return {{"ok", true}, {"status", j}};
            }
        }
        return failure(
            fmt::format("'{}': no such snapshot (`ispace space status {}` lists them)", name, space));
    }
    auto st = _manager.status(name);
    if (!st) {
        return failure(st.error());
    }
    json j = space_status_json(*st);
    std::lock_guard lock(_mutex);
    if (auto it = _attached.find(name); it != _attached.end()) {
        j["device"] = it->second;
    }
    return {{"ok", true}, {"status", j}};
}

void SpaceService::lost(const std::string& name) {
    std::lock_guard lock(_mutex);
    if (_runtime == nullptr || _stopping.load()) {
        return; // shutting down: shutdown() detaches what is attached
    }
    _opened.erase(name);                                   // the manager closed it already
    std::vector<std::pair<std::string, std::string>> gone; // what was attached from it, and where
    for (auto it = _space_of.begin(); it != _space_of.end();) {
        if (it->second == name) {
            gone.emplace_back(it->first, _attached[it->first]);
            _attached.erase(it->first);
            it = _space_of.erase(it);
        } else {
            ++it;
        }
    }
    for (const auto& entry : gone) {
        // Named copies: clang 14 cannot capture structured bindings.
        std::string key = entry.first, path = entry.second;
        // Not from here: the manager calls us with its lock held, and a detach waits for the kernel, which
        // may be flushing through this very space.
        _detachers.emplace_back([this, key, path] {
            // Force: the space refuses writes now (the members fence us), so a mounted filesystem gets EIO
            // until it is unmounted rather than keeping the device in limbo.
            if (auto r = _runtime->detach(path, attach::DetachMode::force); !r) {
                log_error("space {}: detaching {} after the loss: {}", key, path, r.error().message);
            } else {
                log_error("space {}: lost to another holder; {} detached", key, path);
            }
            check_idle();
        });
    }
}

bool SpaceService::holds_anything() {
    {
        std::lock_guard lock(_mutex);
        if (!_attached.empty()) {
            return true;
        }
    }
    auto all = _manager.list();
    if (all) {
        for (const volume::SpaceStatus& st : *all) {
            if (st.open) {
                return true;
            }
        }
    }
    return false;
}

void SpaceService::check_idle() {
    // Once shutdown() began, what busy_elsewhere asks about may be going away (ispaced ends its attach
    // service next), and the process is ending anyway.
    if (_stopping.load() || !on_idle) {
        return;
    }
    if (!holds_anything() && !(busy_elsewhere && busy_elsewhere())) {
        on_idle();
    }
}

void SpaceService::shutdown() {
    std::map<std::string, std::string> attached;
    std::set<std::string> opened;
    std::vector<std::thread> detachers;
    {
        std::lock_guard lock(_mutex);
        _stopping.store(true);
        attached.swap(_attached);
        opened.swap(_opened);
        _space_of.clear();
        detachers.swap(_detachers);
    }
    for (std::thread& t : detachers) {
        t.join();
    }
    for (const auto& [name, path] : attached) {
        if (auto r = _runtime->detach(path, attach::DetachMode::force); !r) {
            log_error("space {}: detaching {}: {}", name, path, r.error().message);
        }
    }
    for (const std::string& space : opened) {
        (void)_manager.close(space);
    }
}

// ---- the socket --------------------------------------------------------------------------------------

namespace {

// Requests and answers are one JSON document on one line; nothing we send is near this.
constexpr size_t max_message = 1 << 20;

Result<std::string> read_line(int fd, std::chrono::milliseconds timeout) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (out.find('\n') == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                          std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            return make_error("no answer in time", ETIMEDOUT);
        }
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, int(std::min<int64_t>(left.count(), 1000)));
        if (n < 0 && errno != EINTR) {
            return make_error(std::string("poll: ") + std::strerror(errno), errno);
        }
        if (n <= 0) {
            continue;
        }
        ssize_t got = ::read(fd, buf, sizeof(buf));
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return make_error("the connection closed before a full message", EPIPE);
        }
        out.append(buf, size_t(got));
        if (out.size() > max_message) {
            return make_error("message too long", EMSGSIZE);
        }
    }
    out.resize(out.find('\n'));
    return out;
}

bool write_all(int fd, const std::string& text) {
    size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        done += size_t(n);
    }
    return true;
}

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof(a.sun_path)) {
        return make_error(
            fmt::format("{}: the path is too long for a Unix socket (set a shorter ISPACE_HOME)", path),
            ENAMETOOLONG);
    }
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    return a;
}

} // namespace

Result<std::unique_ptr<HolderSocket>> HolderSocket::listen(const std::string& home, Handler handler) {
    std::error_code ec;
    fs::create_directories(home, ec);
    std::unique_ptr<HolderSocket> s(new HolderSocket());
    s->_handler = std::move(handler);
    s->_path = holder_socket_path(home);
    std::string lock_path = (fs::path(home) / "holder.lock").string();
    s->_lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->_lock_fd < 0) {
        return make_error(fmt::format("{}: {}", lock_path, std::strerror(errno)), errno);
    }
    if (::flock(s->_lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = {};
        ssize_t n = ::pread(s->_lock_fd, pid, sizeof(pid) - 1, 0);
        std::string who = n > 0 ? std::string(pid, size_t(n)) : "?";
        while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) {
            who.pop_back();
        }
        return make_error(fmt::format("another process (pid {}) holds the spaces of {}", who, home), EBUSY);
    }
    std::string me = std::to_string(::getpid()) + "\n";
    (void)::ftruncate(s->_lock_fd, 0);
    (void)::pwrite(s->_lock_fd, me.data(), me.size(), 0);
    auto address = unix_address(s->_path);
    if (!address) {
        return address.error();
    }
    // We hold the lock: a socket file left here is a dead holder's.
    ::unlink(s->_path.c_str());
    s->_listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->_listen_fd < 0 || ::pipe2(s->_wake, O_CLOEXEC) != 0) {
        return make_error(std::string("socket: ") + std::strerror(errno), errno);
    }
    mode_t old = ::umask(0177); // 0600: the socket hands out the home's spaces
    int bound = ::bind(s->_listen_fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(*address));
    ::umask(old);
    if (bound != 0 || ::listen(s->_listen_fd, 16) != 0) {
        return make_error(fmt::format("{}: {}", s->_path, std::strerror(errno)), errno);
    }
    s->_thread = std::thread([p = s.get()] { p->run(); });
    log_info("holding spaces of {} (socket {})", home, s->_path);
    return s;
}

HolderSocket::~HolderSocket() {
    _stopping = true;
    if (_wake[1] >= 0) {
        (void)!::write(_wake[1], "x", 1);
    }
    if (_thread.joinable()) {
        _thread.join();
    }
    {
        std::unique_lock lock(_mutex);
        _none_active.wait(lock, [this] { return _active == 0; });
    }
    if (_listen_fd >= 0) {
        ::unlink(_path.c_str());
        ::close(_listen_fd);
    }
    for (int fd : _wake) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
    if (_lock_fd >= 0) {
        ::close(_lock_fd); // releases the flock
    }
}

void HolderSocket::run() {
    while (!_stopping) {
        pollfd p[2] = {{_listen_fd, POLLIN, 0}, {_wake[0], POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            continue;
        }
        if (_stopping || (p[1].revents & POLLIN) != 0) {
            break;
        }
        int fd = ::accept4(_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        // Only this user (or root) may drive the holder: the socket's mode says so too, this says it
        // again for sockets in a directory others can reach.
        ucred peer{};
        socklen_t len = sizeof(peer);
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 ||
            (peer.uid != ::getuid() && peer.uid != 0)) {
            ::close(fd);
            continue;
        }
        // One thread per request: an attach may take seconds, and `status` from another shell must not
        // wait for it.
        {
            std::lock_guard lock(_mutex);
            ++_active;
        }
        std::thread([this, fd] {
            serve(fd);
            std::lock_guard lock(_mutex);
            if (--_active == 0) {
                _none_active.notify_all();
            }
        }).detach();
    }
}

void HolderSocket::serve(int fd) {
    auto line = read_line(fd, std::chrono::seconds(10));
    json answer;
    if (!line) {
        answer = failure(line.error());
    } else {
        json request = json::parse(*line, nullptr, false);
        answer = request.is_object() ? _handler(request) : failure("the request is not a JSON object");
    }
    (void)write_all(fd, answer.dump() + "\n");
    ::close(fd);
}

Result<json> holder_request(const std::string& home, const json& request, std::chrono::seconds timeout) {
    auto address = unix_address(holder_socket_path(home));
    if (!address) {
        return address.error();
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return make_error(std::string("socket: ") + std::strerror(errno), errno);
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
        int e = errno;
        ::close(fd);
        return make_error(fmt::format("no holder at {}: {}", holder_socket_path(home), std::strerror(e)), e);
    }
    if (!write_all(fd, request.dump() + "\n")) {
        int e = errno;
        ::close(fd);
        return make_error(std::string("sending to the holder: ") + std::strerror(e), e);
    }
    auto line = read_line(fd, timeout);
    ::close(fd);
    if (!line) {
        return make_error("the holder: " + line.error().message, line.error().code);
    }
    json answer = json::parse(*line, nullptr, false);
    if (!answer.is_object()) {
        return make_error("the holder answered something that is not JSON", EPROTO);
    }
    return answer;
}

} // namespace ispace::mgmt
