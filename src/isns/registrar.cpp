#include "isns/registrar.hpp"

#include "common/log.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace ispace::isns {
namespace {

using Clock = std::chrono::steady_clock;

// ESI connections: the server opens one per inquiry (open-isns does) and sends one small message.
constexpr size_t max_esi_connections = 8;
constexpr size_t max_esi_message = 16 * 1024;
constexpr auto esi_idle_timeout = std::chrono::seconds(10);

bool source_lost(uint32_t status) {
    // The server no longer knows our node or entity: it restarted without its database, or the
    // registration expired. Registering again is the cure.
    return status == uint32_t(Status::source_unknown) || status == uint32_t(Status::source_absent) ||
           status == uint32_t(Status::no_such_entry) || status == uint32_t(Status::invalid_registration);
}

std::string summary(const Registration& r) {
    return fmt::format("{} target{}, {} portal{}", r.nodes.size(), r.nodes.size() == 1 ? "" : "s",
                       r.portals.size(), r.portals.size() == 1 ? "" : "s");
}

struct EsiConnection {
    int fd = -1;
    MessageReader reader{max_esi_message, 4};
    Clock::time_point deadline;
};

// A dual-stack TCP listener on an ephemeral port of every address: the server reaches it at each
// portal's address (the ESI destination is the portal's IP with the ESI port, §6.3.5).
Result<int> listen_esi() {
    int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int off = 0;
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        sockaddr_in6 any{};
        any.sin6_family = AF_INET6;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof any) == 0 && ::listen(fd, 8) == 0) {
            return fd;
        }
        ::close(fd);
    }
    // No IPv6 on this host: IPv4 only.
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int err = errno;
        return make_error(fmt::format("ESI socket: {}", std::strerror(err)), err);
    }
    sockaddr_in any{};
    any.sin_family = AF_INET;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof any) != 0 || ::listen(fd, 8) != 0) {
        int err = errno;
        ::close(fd);
        return make_error(fmt::format("ESI socket: {}", std::strerror(err)), err);
    }
    return fd;
}

} // namespace

struct Registrar::State {
    explicit State(RegistrarOptions o) : options(std::move(o)), client(options.client) {}

    RegistrarOptions options;

    // --- shared with the callers, under mutex ---
    mutable std::mutex mutex;
    Registration desired;
    uint64_t version = 0; // of `desired`
    bool stopping = false;
    Clock::time_point stop_deadline;
    RegistrarStatus status;
    int wake_fd = -1;
    // Written once, by stop(): ends a wait on an unresponsive server at once (the client polls it),
    // so a stop is bounded by its grace period, not by the client's timeout.
    int stop_fd = -1;

    // --- the thread's own ---
    Client client;
    int esi_fd = -1;
    uint16_t esi_port = 0;
    bool esi_refused = false; // the server answered ESI Not Available: register without ESI
    std::vector<EsiConnection> esi;
    bool registered = false;
    std::string entity_id; // as registered
    std::string source;    // a node of the registered entity, the Source of our messages
    uint64_t sent_version = ~uint64_t(0);
    bool pending = false; // the wanted registration is not the one the server has
    uint32_t period = 0;
    Clock::time_point next_refresh;
    Clock::time_point retry_at;
    std::chrono::milliseconds backoff{0};
    std::string last_logged_error;

    void run();
    void step(const Registration& want, uint64_t version, Clock::time_point now);
    Result<void> register_entity(const Registration& want);
    Result<void> refresh();
    Result<void> deregister();
    void failed(const Error& e, Clock::time_point now);
    void succeeded();
    Clock::time_point next_deadline(bool has_nodes) const;
    void accept_esi();
    void serve_esi(EsiConnection& c);
    void close_esi(size_t i);
};

Registrar::Registrar(RegistrarOptions options) : _state(std::make_unique<State>(std::move(options))) {
    _state->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    _state->stop_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    _state->client.set_cancel_fd(_state->stop_fd);
    if (_state->options.esi_interval > 0) {
        auto fd = listen_esi();
        if (fd) {
            _state->esi_fd = *fd;
            auto bound = net::local_endpoint(*fd);
            _state->esi_port = bound ? bound->port() : 0;
        } else {
            log_warn("iSNS: no ESI port ({}); the registration period alone keeps the registration",
                     fd.error().message);
        }
    }
    _thread = std::thread([state = _state.get()] {
        pthread_setname_np(pthread_self(), "isns");
        state->run();
    });
}

Registrar::~Registrar() {
    stop(std::chrono::seconds(2));
    for (size_t i = _state->esi.size(); i-- > 0;) {
        _state->close_esi(i);
    }
    if (_state->esi_fd >= 0) {
        ::close(_state->esi_fd);
    }
    if (_state->wake_fd >= 0) {
        ::close(_state->wake_fd);
    }
    if (_state->stop_fd >= 0) {
        ::close(_state->stop_fd);
    }
}

void Registrar::update(Registration desired) {
    std::lock_guard lock(_state->mutex);
    _state->desired = std::move(desired);
    ++_state->version;
    uint64_t one = 1;
    (void)!::write(_state->wake_fd, &one, sizeof one);
}

void Registrar::stop(std::chrono::milliseconds grace) {
    {
        std::lock_guard lock(_state->mutex);
        if (!_state->stopping) {
            _state->stopping = true;
            _state->stop_deadline = Clock::now() + grace;
            uint64_t one = 1;
            (void)!::write(_state->wake_fd, &one, sizeof one);
            (void)!::write(_state->stop_fd, &one, sizeof one);
        }
    }
    if (_thread.joinable()) {
        _thread.join();
    }
}

RegistrarStatus Registrar::status() const {
    std::lock_guard lock(_state->mutex);
    return _state->status;
}

void Registrar::State::run() {
    for (;;) {
        Registration want;
        uint64_t want_version;
        bool stop;
        Clock::time_point deadline;
        {
            std::lock_guard lock(mutex);
            want = desired;
            want_version = version;
            stop = stopping;
            deadline = stop_deadline;
        }
        if (stop) {
            if (registered) {
                // The server gets what is left of the grace period, and no more; the stop signal
                // no longer cancels (it stays raised), the deadline bounds the call.
                client.close();
                client.set_cancel_fd(-1);
                auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
                client.set_timeout(std::clamp(left, std::chrono::milliseconds(100), options.client.timeout));
                if (auto gone = deregister(); gone) {
                    log_info("iSNS: deregistered entity {} from {}", entity_id, options.client.server);
                } else {
                    log_warn("iSNS: deregistering entity {}: {}", entity_id, gone.error().message);
                }
            }
            client.close();
            return;
        }
        step(want, want_version, Clock::now());
        client.close(); // one connection per round: the server may drop idle ones, or restart

        std::vector<pollfd> fds;
        fds.push_back({wake_fd, POLLIN, 0});
        if (esi_fd >= 0) {
            fds.push_back({esi_fd, POLLIN, 0});
        }
        for (const EsiConnection& c : esi) {
            fds.push_back({c.fd, POLLIN, 0});
        }
        auto until = next_deadline(!want.nodes.empty());
        for (const EsiConnection& c : esi) {
            until = std::min(until, c.deadline);
        }
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
        int n = ::poll(fds.data(), fds.size(), int(std::clamp<long long>(wait, 0, 60000)));
        if (n < 0) {
            continue; // EINTR
        }
        if (fds[0].revents) {
            uint64_t count;
            (void)!::read(wake_fd, &count, sizeof count);
        }
        size_t first_conn = esi_fd >= 0 ? 2 : 1;
        // Serve connections before accepting new ones, by index from the back (close_esi reorders).
        for (size_t i = esi.size(); i-- > 0;) {
            if (fds[first_conn + i].revents) {
                serve_esi(esi[i]);
                if (esi[i].fd < 0) {
                    close_esi(i);
                }
            } else if (Clock::now() >= esi[i].deadline) {
                close_esi(i);
            }
        }
        if (esi_fd >= 0 && fds[1].revents) {
            accept_esi();
        }
    }
}

Clock::time_point Registrar::State::next_deadline(bool has_nodes) const {
    if (!has_nodes) {
        return registered ? retry_at : Clock::now() + std::chrono::hours(1);
    }
    if (!registered || pending) {
        return retry_at;
    }
    return next_refresh;
}

void Registrar::State::step(const Registration& want, uint64_t want_version, Clock::time_point now) {
    if (want.nodes.empty()) {
        if (registered && now >= retry_at) {
            if (auto gone = deregister(); !gone) {
                failed(gone.error(), now);
                return;
            }
            log_info("iSNS: no target left to register; entity {} deregistered", entity_id);
            succeeded();
        }
        sent_version = want_version;
        pending = false;
        return;
    }
    pending = want_version != sent_version;
    if (!registered || pending) {
        if (want_version != sent_version && sent_version != ~uint64_t(0)) {
            retry_at = now; // a change is sent at once, whatever the backoff was
            backoff = std::chrono::milliseconds(0);
        }
        if (now < retry_at) {
            return;
        }
        bool update = registered;
        if (auto done = register_entity(want); !done) {
            failed(done.error(), now);
            return;
        }
        sent_version = want_version;
        pending = false;
        log_info("iSNS: {} entity {} at {}: {} (registration period {}; {})",
                 update ? "updated" : "registered", entity_id, options.client.server, summary(want),
                 period ? fmt::format("{} s", period) : "none",
                 esi_port && !esi_refused ? fmt::format("ESI on port {}", esi_port) : "no ESI");
        succeeded();
        return;
    }
    if (now >= next_refresh) {
        if (auto fresh = refresh(); !fresh) {
            failed(fresh.error(), now);
            next_refresh = retry_at;
            return;
        }
        succeeded();
    }
}

Result<void> Registrar::State::register_entity(const Registration& want) {
    if (auto connected = client.connect(); !connected) {
        return connected;
    }
    // Wildcard portals are registered as the address the server sees us come from.
    Address self;
    if (auto local = client.local_endpoint()) {
        self = Address::from_endpoint(*local);
    }
    Registration r = want;
    for (PortalEntry& p : r.portals) {
        if (p.address.is_unspecified()) {
            p.address = self;
        }
        if (esi_port && !esi_refused) {
            p.esi_port = esi_port;
            p.esi_interval = options.esi_interval;
        }
    }
    for (PortalGroupEntry& g : r.groups) {
        if (g.address.is_unspecified()) {
            g.address = self;
        }
    }
    // Replace: the whole entity in one message, so what the server holds is exactly what we serve —
    // also after it lost or half-kept an earlier registration.
    auto response = client.call(dev_attr_reg(r, r.nodes.front().name, true));
    if (!response) {
        return response.error();
    }
    if (response->status == uint32_t(Status::esi_not_available) && !esi_refused && esi_port) {
        log_info("iSNS server {} does not do ESI; registering without it", options.client.server);
        esi_refused = true;
        return register_entity(want);
    }
    auto ack = read_registration_response(*response);
    if (!ack) {
        return ack.error();
    }
    registered = true;
    entity_id = ack->entity_id;
    source = r.nodes.front().name;
    period = ack->registration_period;
    // §6.2.6: a message within the period keeps the registration; half of it leaves room for a retry.
    auto interval = period ? std::chrono::seconds(std::max<uint32_t>(1, period / 2)) : options.idle_check;
    next_refresh = Clock::now() + interval;
    std::lock_guard lock(mutex);
    ++status.registrations;
    status.registered = true;
    status.entity_id = entity_id;
    status.registration_period = period;
    status.esi_port = esi_refused ? 0 : esi_port;
    return {};
}

Result<void> Registrar::State::refresh() {
    auto response = client.call(entity_query(source, entity_id));
    if (!response) {
        return response.error();
    }
    bool present = false;
    if (response->status == uint32_t(Status::success)) {
        for (const Attribute& a : response->after_delimiter()) {
            if (a.tag == tag::entity_identifier && !a.nil()) {
                auto id = read_string(a);
                present = present || (id && *id == entity_id);
            }
        }
    }
    if (!present) {
        if (response->status == uint32_t(Status::success) || source_lost(response->status)) {
            log_warn("iSNS server {} no longer holds entity {} ({}); registering again",
                     options.client.server, entity_id,
                     response->status ? status_name(response->status) : std::string("not in its answer"));
            registered = false;
            std::lock_guard lock(mutex);
            status.registered = false;
            return {};
        }
        return make_error(fmt::format("refreshing entity {}: {}", entity_id, status_name(response->status)),
                          EPROTO);
    }
    auto interval = period ? std::chrono::seconds(std::max<uint32_t>(1, period / 2)) : options.idle_check;
    next_refresh = Clock::now() + interval;
    std::lock_guard lock(mutex);
    ++status.refreshes;
    return {};
}

Result<void> Registrar::State::deregister() {
    auto response = client.call(dev_dereg_entity(source, entity_id));
    if (!response) {
        return response.error();
    }
    // Gone already is as good as gone.
    if (response->status != uint32_t(Status::success) && !source_lost(response->status)) {
        return make_error(fmt::format("DevDereg of entity {}: {}", entity_id, status_name(response->status)),
                          EPROTO);
    }
    registered = false;
    std::lock_guard lock(mutex);
    status.registered = false;
    return {};
}

void Registrar::State::failed(const Error& e, Clock::time_point now) {
    if (e.code == ECANCELED) {
        return; // stop() cut the wait short: not the server's fault, and the loop ends next
    }
    backoff = backoff.count() == 0 ? options.retry_first : std::min(backoff * 2, options.retry_max);
    retry_at = now + backoff;
    // Once per distinct error, not once per retry: an absent server must not flood the log.
    if (e.message != last_logged_error) {
        log_warn("iSNS: {} (retrying, at most every {} s)", e.message,
                 std::chrono::duration_cast<std::chrono::seconds>(options.retry_max).count());
        last_logged_error = e.message;
    }
    std::lock_guard lock(mutex);
    status.last_error = e.message;
}

void Registrar::State::succeeded() {
    if (!last_logged_error.empty()) {
        log_info("iSNS: the server {} answers again", options.client.server);
        last_logged_error.clear();
    }
    backoff = std::chrono::milliseconds(0);
    retry_at = Clock::now();
    std::lock_guard lock(mutex);
    status.last_error.clear();
}

void Registrar::State::accept_esi() {
    for (;;) {
        auto fd = net::accept_tcp(esi_fd);
        if (!fd) {
            return; // EAGAIN: none left
        }
        if (esi.size() >= max_esi_connections) {
            ::close(*fd); // more at once than a server needs: not a server, or a misbehaving one
            continue;
        }
        EsiConnection c;
        c.fd = *fd;
        c.deadline = Clock::now() + esi_idle_timeout;
        esi.push_back(std::move(c));
    }
}

void Registrar::State::serve_esi(EsiConnection& c) {
    uint8_t buffer[4096];
    ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        ::close(c.fd);
        c.fd = -1;
        return;
    }
    if (n < 0) {
        return;
    }
    if (auto fed = c.reader.feed({buffer, size_t(n)}); !fed) {
        log_warn("iSNS: a malformed message on the ESI port: {}", fed.error().message);
        ::close(c.fd);
        c.fd = -1;
        return;
    }
    c.deadline = Clock::now() + esi_idle_timeout;
    while (auto message = c.reader.next()) {
        // An inquiry about our entity is answered Successful; about another, No Such Entry, so the
        // server does not take a stranger's silence for ours.
        uint32_t answer = uint32_t(Status::success);
        if (message->function == function_id(Function::esi)) {
            const Attribute* eid = message->find(tag::entity_identifier);
            auto id = eid ? read_string(*eid) : Result<std::string>(make_error("no EID"));
            if (!registered || !id || *id != entity_id) {
                answer = uint32_t(Status::no_such_entry);
            }
        }
        auto response = answer_server_message(*message, answer);
        if (!response) {
            log_debug("iSNS: ignoring {} on the ESI port", function_name(message->function));
            continue;
        }
        auto bytes = encode(*response, flag::client);
        if (::send(c.fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT) != ssize_t(bytes.size())) {
            ::close(c.fd);
            c.fd = -1;
            return;
        }
        if (message->function == function_id(Function::esi)) {
            log_debug("iSNS: answered ESI ({})", status_name(answer));
            std::lock_guard lock(mutex);
            ++status.esi_answered;
        }
    }
}

void Registrar::State::close_esi(size_t i) {
    if (esi[i].fd >= 0) {
        ::close(esi[i].fd);
    }
    esi.erase(esi.begin() + ptrdiff_t(i));
}

} // namespace ispace::isns
