// The target side of iSNS: keeps one Network Entity registered with an iSNS server (RFC 4171) while
// the process runs. It registers what it is given, replaces the registration when that changes,
// refreshes it before its registration period runs out (§6.2.6), answers the server's Entity Status
// Inquiries (§5.6.5.13) on a TCP port it registers for each portal, re-registers when the server lost
// the entity (a restart, an expiry), and deregisters when stopped.
//
// It runs on a thread of its own, not on a reactor: see docs/architecture.md, "iSNS". Its public
// methods may be called from any thread that is not a reactor's.
#pragma once

#include "isns/client.hpp"
#include "isns/objects.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace ispace::isns {

struct RegistrarOptions {
    ClientOptions client;
    // The ESI interval asked for (seconds; the server may round it into its own bounds). 0: register
    // no ESI port, so the server relies on the registration period alone.
    uint32_t esi_interval = 60;
    // How often the registration is checked when the server names no registration period (it never
    // expires there), so that a server that lost it is noticed.
    std::chrono::seconds idle_check{300};
    // Retries after a failure back off from the first to the second.
    std::chrono::milliseconds retry_first{1000};
    std::chrono::milliseconds retry_max{30000};
};

struct RegistrarStatus {
    bool registered = false;
    std::string entity_id;
    uint32_t registration_period = 0; // as the server answered
    uint16_t esi_port = 0;            // 0: none registered
    uint64_t registrations = 0;       // DevAttrReg messages the server accepted
    uint64_t refreshes = 0;
    uint64_t esi_answered = 0;
    std::string last_error; // empty once things work again
};

class Registrar {
public:
    explicit Registrar(RegistrarOptions options);
    // Deregisters (2 s at most) if still running.
    ~Registrar();
    Registrar(const Registrar&) = delete;
    Registrar& operator=(const Registrar&) = delete;

    // What the entity holds from now on (replacing what it held). `entity_id` must not be empty and
    // must not change. Portal and portal-group addresses that are wildcards (0.0.0.0, ::) are
    // registered as the address this host reaches the server from. ESI ports are filled in here. An
    // entity with no node is deregistered: portals alone say nothing to an initiator.
    void update(Registration desired);
    // Deregisters, waiting for the server at most `grace`, and ends the thread. Idempotent.
    void stop(std::chrono::milliseconds grace);
    RegistrarStatus status() const;

private:
    struct State;
    std::unique_ptr<State> _state;
    std::thread _thread;
};

} // namespace ispace::isns
