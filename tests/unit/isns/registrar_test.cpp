// The registrar against a fake iSNS server on 127.0.0.1 (written with the codec under test, checked
// against open-isns by tests/system/test_isns.py): registration, replacement on change, refresh
// within the registration period, registration again when the server lost the entity, ESI answered,
// deregistration on stop, and a stop that does not wait for a server that never answers.
#include "isns/message.hpp"
#include "isns/objects.hpp"
#include "isns/registrar.hpp"
#include "net/socket.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace ispace::isns {
namespace {

using namespace std::chrono_literals;

// One connection at a time, one message at a time, as the registrar talks.
class FakeServer {
public:
    explicit FakeServer(uint32_t period) : _period(period) {
        auto fd = net::listen_tcp(*net::parse_endpoint("127.0.0.1:0", 0));
        EXPECT_TRUE(fd);
        _fd = *fd;
        _port = net::local_endpoint(_fd)->port();
        _thread = std::thread([this] { run(); });
    }
    ~FakeServer() {
        _stop = true;
        _thread.join();
        ::close(_fd);
    }

    std::string address() const { return "127.0.0.1:" + std::to_string(_port); }
    // Requests received, by function.
    size_t count(Function f) {
        std::lock_guard lock(_mutex);
        size_t n = 0;
        for (const Message& m : _received) {
            n += m.function == function_id(f);
        }
        return n;
    }
    std::vector<Message> received() {
        std::lock_guard lock(_mutex);
        return _received;
    }
    // Waits until `pred` holds or `timeout` passed (polled: it may look at the registrar too).
    static bool wait(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5s) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!pred()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            std::this_thread::sleep_for(5ms);
        }
        return true;
    }
    // The server forgets the entity (a restart without its database).
    void forget() {
        std::lock_guard lock(_mutex);
        _entity.clear();
    }
    // The server stops answering (accepts, reads, says nothing).
    void go_silent() { _silent = true; }
    std::string entity() {
        std::lock_guard lock(_mutex);
        return _entity;
    }

private:
    void run() {
        while (!_stop) {
            pollfd p{_fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) {
                continue;
            }
            auto c = net::accept_tcp(_fd);
            if (!c) {
                continue;
            }
            serve(*c);
            ::close(*c);
        }
    }

    void serve(int fd) {
        MessageReader reader;
        uint8_t buffer[8192];
        while (!_stop) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) {
                continue;
            }
            ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
                return;
            }
            if (n < 0 || !reader.feed({buffer, size_t(n)})) {
                continue;
            }
            while (auto m = reader.next()) {
                if (_silent) {
                    continue;
                }
                Message answer = respond(*m);
                {
                    // Recorded before it is answered: a test that checks the count once the client has
                    // its answer (registrar.stop returned) must find the request counted.
                    std::lock_guard lock(_mutex);
                    _received.push_back(*m);
                }
                auto bytes = encode(answer, flag::server);
                (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            }
        }
    }

    Message respond(const Message& m) {
        Message r;
        r.function = uint16_t(m.function | response_bit);
        r.xid = m.xid;
        std::lock_guard lock(_mutex);
        if (m.function == function_id(Function::dev_attr_reg)) {
            const Attribute* eid = m.find(tag::entity_identifier);
            _entity = eid ? *read_string(*eid) : "assigned";
            r.attributes = {string_attribute(tag::entity_identifier, _entity),
                            u32_attribute(tag::registration_period, _period)};
        } else if (m.function == function_id(Function::dev_attr_qry)) {
            if (_entity.empty()) {
                r.status = uint32_t(Status::no_such_entry);
            } else {
                r.attributes = {nil_attribute(tag::delimiter),
                                string_attribute(tag::entity_identifier, _entity)};
            }
        } else if (m.function == function_id(Function::dev_dereg)) {
            _entity.clear();
        }
        return r;
    }

    uint32_t _period;
    int _fd = -1;
    uint16_t _port = 0;
    std::atomic<bool> _stop{false};
    std::atomic<bool> _silent{false};
    std::mutex _mutex;
    std::vector<Message> _received;
    std::string _entity;
    std::thread _thread;
};

Registration one_target(const std::string& entity, const std::string& iqn) {
    Registration r;
    r.entity_id = entity;
    Address local = Address::from_ipv4(0x7f000001);
    r.portals.push_back({local, 3260, std::nullopt, 0});
    r.nodes.push_back({iqn, node_type::target, "alias"});
    r.groups.push_back({iqn, local, 3260, 1});
    return r;
}

RegistrarOptions options_for(const FakeServer& server, uint32_t esi) {
    RegistrarOptions o;
    o.client.server = server.address();
    o.client.timeout = 2s;
    o.esi_interval = esi;
    o.retry_first = 50ms;
    o.retry_max = 200ms;
    return o;
}

bool has_node(const Message& m, const std::string& iqn) {
    for (const Attribute& a : m.attributes) {
        if (a.tag == tag::iscsi_name && read_string(a) && *read_string(a) == iqn) {
            return true;
        }
    }
    return false;
}

TEST(IsnsRegistrar, RegistersReplacesOnChangeAndDeregistersOnStop) {
    FakeServer server(3600);
    Registrar registrar(options_for(server, 0));
    registrar.update(one_target("e1", "iqn.2026-11.org.test:a"));
    ASSERT_TRUE(server.wait([&] { return server.count(Function::dev_attr_reg) == 1; }));
    auto first = server.received().back();
    EXPECT_TRUE(first.flags & flag::replace) << "the whole entity is replaced, never merged";
    EXPECT_TRUE(has_node(first, "iqn.2026-11.org.test:a"));
    ASSERT_TRUE(server.wait([&] { return registrar.status().registered; }));
    EXPECT_EQ(registrar.status().entity_id, "e1");
    EXPECT_EQ(registrar.status().esi_port, 0);

    Registration two = one_target("e1", "iqn.2026-11.org.test:a");
    two.nodes.push_back({"iqn.2026-11.org.test:b", node_type::target, ""});
    registrar.update(two);
    ASSERT_TRUE(server.wait([&] { return server.count(Function::dev_attr_reg) == 2; }));
    EXPECT_TRUE(has_node(server.received().back(), "iqn.2026-11.org.test:b"));

    registrar.stop(2s);
    EXPECT_EQ(server.count(Function::dev_dereg), 1u);
    EXPECT_TRUE(server.entity().empty());
    EXPECT_FALSE(registrar.status().registered);
}

TEST(IsnsRegistrar, RefreshesWithinThePeriodAndRegistersAgainWhenTheServerLostIt) {
    FakeServer server(2); // refreshed every second
    Registrar registrar(options_for(server, 0));
    registrar.update(one_target("e2", "iqn.2026-11.org.test:a"));
    ASSERT_TRUE(server.wait([&] { return registrar.status().refreshes >= 1; }, 3s))
        << "no refresh within the registration period";
    EXPECT_GE(server.count(Function::dev_attr_qry), 1u);
    EXPECT_EQ(server.count(Function::dev_attr_reg), 1u);

    server.forget();
    ASSERT_TRUE(server.wait([&] { return server.count(Function::dev_attr_reg) == 2; }, 4s))
        << "the entity the server lost was not registered again";
    EXPECT_EQ(server.entity(), "e2");
}

TEST(IsnsRegistrar, NoTargetLeftDeregisters) {
    FakeServer server(3600);
    Registrar registrar(options_for(server, 0));
    registrar.update(one_target("e3", "iqn.2026-11.org.test:a"));
    ASSERT_TRUE(server.wait([&] { return registrar.status().registered; }));
    Registration empty = one_target("e3", "iqn.2026-11.org.test:a");
    empty.nodes.clear();
    empty.groups.clear();
    registrar.update(empty);
    ASSERT_TRUE(server.wait([&] { return server.count(Function::dev_dereg) == 1; }));
    EXPECT_TRUE(server.entity().empty());
}

TEST(IsnsRegistrar, AnswersEsiForItsOwnEntityOnly) {
    FakeServer server(3600);
    Registrar registrar(options_for(server, 10));
    registrar.update(one_target("e4", "iqn.2026-11.org.test:a"));
    ASSERT_TRUE(server.wait([&] { return registrar.status().registered; }));
    uint16_t esi_port = registrar.status().esi_port;
    ASSERT_NE(esi_port, 0);
    // The ESI port and interval are registered with each portal (RFC 4171 §6.3.4-6.3.5).
    auto reg = server.received().front();
    const Attribute* port = reg.find(tag::esi_port);
    ASSERT_NE(port, nullptr);
    EXPECT_EQ(read_port(*port)->number, esi_port);

    auto inquire = [&](const std::string& entity) -> std::optional<Message> {
        auto fd = net::connect_tcp(*net::parse_endpoint("127.0.0.1:" + std::to_string(esi_port), 0));
        if (!fd) {
            return std::nullopt;
        }
        pollfd w{*fd, POLLOUT, 0};
        ::poll(&w, 1, 2000);
        Message esi;
        esi.function = function_id(Function::esi);
        esi.xid = 77;
        esi.attributes = {string_attribute(tag::entity_identifier, entity)};
        auto bytes = encode(esi, flag::server);
        (void)::send(*fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        MessageReader reader;
        std::optional<Message> answer;
        for (int i = 0; i < 100 && !answer; ++i) {
            pollfd p{*fd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) {
                continue;
            }
            uint8_t buffer[1024];
            ssize_t n = ::recv(*fd, buffer, sizeof buffer, 0);
            if (n <= 0 || !reader.feed({buffer, size_t(n)})) {
                break;
            }
            answer = reader.next();
        }
        ::close(*fd);
        return answer;
    };
    auto ours = inquire("e4");
    ASSERT_TRUE(ours);
    EXPECT_EQ(ours->function, response_id(Function::esi));
    EXPECT_EQ(ours->xid, 77);
    EXPECT_EQ(ours->status, uint32_t(Status::success));
    auto other = inquire("someone-else");
    ASSERT_TRUE(other);
    EXPECT_EQ(other->status, uint32_t(Status::no_such_entry));
    EXPECT_GE(registrar.status().esi_answered, 1u);
}

TEST(IsnsRegistrar, StopDoesNotWaitForAServerThatNeverAnswers) {
    FakeServer server(3600);
    server.go_silent();
    RegistrarOptions o = options_for(server, 0);
    o.client.timeout = 10s;
    Registrar registrar(o);
    registrar.update(one_target("e5", "iqn.2026-11.org.test:a"));
    std::this_thread::sleep_for(200ms); // the registration is waiting for its answer now
    auto started = std::chrono::steady_clock::now();
    registrar.stop(2s);
    EXPECT_LT(std::chrono::steady_clock::now() - started, 2500ms);
    EXPECT_FALSE(registrar.status().registered);
}

} // namespace
} // namespace ispace::isns
