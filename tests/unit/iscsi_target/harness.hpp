// Harness for the target front end's unit tests: the real Connection/Session/Server code over
// in-memory transports, two reactors driven by hand on the test's thread, RAM-backed LUNs, and one
// FakeInitiator per connection.
//
// Deterministic: the reactors run only inside settle() (or a test's explicit run of one of them), so
// a test decides what interleaves with what — e.g. a new session's reactor runs while the reactor of
// the session it reinstates does not. Nothing waits on the clock except the few tests of timers
// (NOP-In pings), which run the reactors until the event happens, with a limit that only turns a hang
// into a failure.
//
// The only code here that knows how the target side is assembled is make_target() (as mgmt::Runtime
// does it in production) and connect().
#pragma once

#include "backstore/registry.hpp"
#include "common/log.hpp"
#include "fake_initiator.hpp"
#include "iscsi_target/config.hpp"
#include "iscsi_target/server.hpp"
#include "memory_transport.hpp"
#include "net/reactor.hpp"
#include "net/socket.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ispace::iscsi_target::test {

using namespace std::chrono_literals;

inline constexpr uint32_t block_size = 512;
inline constexpr uint64_t lun0_bytes = 4u << 20;
// The LUN field of a PDU for LUN n (SAM peripheral device addressing).
constexpr uint64_t lun_field(uint64_t lun) {
    return lun << 48;
}

// The target the tests run against unless they change it: one target with two RAM LUNs (0: 4 MiB,
// 1: 1 MiB), the daemon's default negotiation, a CmdSN window of 8.
inline const backstore::Registry& builtin_kinds() {
    static const backstore::Registry* registry = [] {
        auto* r = new backstore::Registry();
        backstore::register_builtin_kinds(*r);
        return r;
    }();
    return *registry;
}

inline ServerConfig default_target_config() {
    ServerConfig config;
    config.reactors = 2;
    // A portal for SendTargets to list; bound on loopback, but no test connects to it.
    config.portals.push_back({"127.0.0.1:0", 1});
    TargetConfig target;
    target.iqn = target_iqn;
    for (uint64_t lun : {0, 1}) {
        LunConfig l;
        l.lun = lun;
        l.spec = fmt::format("memory:{},block={}", lun == 0 ? lun0_bytes : (1u << 20), block_size);
        auto spec = builtin_kinds().parse(l.spec);
        EXPECT_TRUE(spec) << spec.error().message;
        l.device = std::move(*spec);
        target.luns.push_back(l);
    }
    config.targets.push_back(target);
    config.negotiation = default_target_negotiation();
    config.limits.queue_depth = 8;
    return config;
}

struct ConnectOptions {
    unsigned reactor = 0;
    std::string peer = "127.0.0.1:50000";
    std::shared_ptr<SessionNumbers> numbers; // shared with another connection of the session
    uint16_t tpgt = 1;                       // the portal group it arrived on
};

class Harness {
public:
    // `configure` adjusts default_target_config() for one test.
    explicit Harness(const std::function<void(ServerConfig&)>& configure = {}) {
        set_log_level(LogLevel::error);
        ServerConfig config = default_target_config();
        if (configure) {
            configure(config);
        }
        for (const LunConfig& lun : config.targets.at(0).luns) {
            _luns.push_back(lun.lun);
        }
        make_target(std::move(config));
    }

    ~Harness() {
        end_everything();
        _initiators.clear();
        _reactors.reset(); // before the server: their teardown may still run work that refers to it
        _server.reset();
    }

    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    // A new connection (not yet logged in) served on reactor `options.reactor`.
    FakeInitiator& connect(ConnectOptions options) {
        auto wire = std::make_shared<Wire>();
        auto numbers = options.numbers ? options.numbers : std::make_shared<SessionNumbers>();
        _initiators.push_back(std::make_unique<FakeInitiator>(
            wire, [this] { settle(); }, numbers));
        auto peer = net::parse_endpoint(options.peer, 0);
        auto local = net::parse_endpoint("127.0.0.1:3260", 3260);
        EXPECT_TRUE(peer && local);
        net::Reactor& reactor = _reactors->at(options.reactor);
        reactor.post([this, &reactor, transport = std::make_unique<MemoryTransport>(wire), peer = *peer,
                      local = *local, tpgt = options.tpgt]() mutable {
            _server->accept(std::move(transport), reactor, peer, local, tpgt);
        });
        settle();
        return *_initiators.back();
    }
    FakeInitiator& connect() { return connect(ConnectOptions{}); }

    // A connection logged in with `login` (a failed login fails the test), whose new nexus's unit
    // attentions (power on, 29/00, one per LUN of the first target) have been taken by TEST UNIT READY,
    // so that the test's own first command meets none.
    FakeInitiator& logged_in(LoginOptions login = {}, ConnectOptions options = {}) {
        FakeInitiator& initiator = connect(options);
        bool normal = login.session_type == iscsi::SessionType::normal;
        LoginResult result = initiator.login(std::move(login));
        EXPECT_TRUE(result.ok()) << iscsi::describe(result.status) << ": " << result.reason;
        if (result.ok() && normal) {
            for (uint64_t lun : _luns) {
                Command tur;
                tur.cdb = test_unit_ready();
                tur.lun = lun_field(lun);
                initiator.command(tur);
                initiator.drain();
            }
        }
        return initiator;
    }

    // Every connection goes the way a vanished initiator's would; then no connection may be left open.
    // An ErrorRecoveryLevel 2 session outlives its connections (waiting for one to be reinstated): those
    // end as at shutdown. The destructor does this; a caller may first, to look at what is left.
    void end_everything() {
        for (auto& initiator : _initiators) {
            initiator->close();
        }
        settle();
        EXPECT_EQ(_server->open_connections(), 0u) << "connections left open after every initiator went";
        for (const auto& target : _server->targets()) {
            _server->close_sessions_of(target->iqn, "end of test");
        }
        settle();
    }

    // Runs every reactor until a whole pass (two, to be sure of cross-reactor posts) does nothing.
    void settle() { run_until_quiet(all()); }
    // Runs only reactor `index`: the others are frozen in the meantime.
    void settle_only(unsigned index) { run_until_quiet({&_reactors->at(index)}); }

    // For the few tests of timers: runs the reactors until `done` holds, at most `limit`.
    bool run_until(const std::function<bool()>& done, std::chrono::milliseconds limit = 10s) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            for (net::Reactor* reactor : all()) {
                reactor->run_once(5ms);
            }
        }
        return true;
    }

    net::Reactor& reactor(unsigned index) { return _reactors->at(index); }
    Server& server() { return *_server; }

private:
    // The one place that builds the target side, as mgmt::Runtime does but with a reactor group that is
    // never started: its reactors run only when the harness drives them by hand. Connections are
    // injected with Server::accept.
    void make_target(ServerConfig config) {
        _reactors = std::make_unique<net::ReactorGroup>(config.reactors);
        _server = std::make_unique<Server>(config, *_reactors);
        for (const PortalConfig& pc : config.portals) {
            auto bound = _server->add_portal(pc);
            ASSERT_TRUE(bound) << bound.error().message;
        }
        for (const TargetConfig& tc : config.targets) {
            auto target = _server->add_target(tc);
            ASSERT_TRUE(target) << target.error().message;
            for (const LunConfig& lc : tc.luns) {
                auto device = lc.device->open();
                ASSERT_TRUE(device) << device.error().message;
                auto added = (*target)->device->add_lu(lc.lun, std::move(*device));
                ASSERT_TRUE(added) << added.error().message;
            }
        }
        _server->start();
    }

    std::vector<net::Reactor*> all() const {
        std::vector<net::Reactor*> out;
        for (unsigned i = 0; i < _reactors->size(); ++i) {
            out.push_back(&_reactors->at(i));
        }
        return out;
    }

    void run_until_quiet(const std::vector<net::Reactor*>& reactors) {
        auto activity = [&] {
            uint64_t sum = 0;
            for (net::Reactor* r : reactors) {
                sum += r->stats().posted + r->stats().fd_events + r->stats().file_ios;
            }
            return sum;
        };
        int quiet = 0;
        for (int round = 0; round < 100000 && quiet < 2; ++round) {
            uint64_t before = activity();
            for (net::Reactor* r : reactors) {
                r->run_once(0ms);
            }
            quiet = activity() == before ? quiet + 1 : 0;
        }
        ASSERT_EQ(quiet, 2) << "the reactors never went quiet";
    }

    // Declared first, destroyed last: the reactors' teardown may refer to it.
    std::unique_ptr<Server> _server;
    std::unique_ptr<net::ReactorGroup> _reactors;
    std::vector<std::unique_ptr<FakeInitiator>> _initiators;
    std::vector<uint64_t> _luns; // of the first target
};

// A login that offers MC/S: up to four connections in the session.
inline LoginOptions mcs() {
    LoginOptions o;
    o.negotiation.max_connections = 4;
    return o;
}

// SCSI status and sense of a SCSI Response.
struct Outcome {
    uint8_t status = 0xff;
    uint8_t sense_key = 0;
    uint16_t asc = 0; // ASC << 8 | ASCQ
};

inline Outcome outcome_of(const InPdu& pdu) {
    Outcome o;
    if (pdu.opcode() == iscsi::Opcode::data_in) {
        o.status = pdu.as<iscsi::DataIn>().status;
        return o;
    }
    auto response = pdu.as<iscsi::ScsiResponse>();
    o.status = response.status;
    if (pdu.data.size() >= 2 + 14) {
        const uint8_t* sense = pdu.data.data() + 2;
        if ((sense[0] & 0x7f) >= 0x72) { // descriptor format
            o.sense_key = sense[1] & 0x0f;
            o.asc = uint16_t(sense[2] << 8 | sense[3]);
        } else {
            o.sense_key = sense[2] & 0x0f;
            o.asc = uint16_t(sense[12] << 8 | sense[13]);
        }
    }
    return o;
}

} // namespace ispace::iscsi_target::test
