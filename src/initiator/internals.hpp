// What in-process users of the initiator set that the public API does not name:
// - the test seam: which TransportFactory an Initiator's connections go through. The unit tests put a
//   FaultInjector (fault_transport.hpp) there to drop, delay or corrupt PDUs; production uses TCP;
// - the reactors: mgmt::Runtime hands its own reactor group to the Initiator it embeds, so that the
//   target, the initiator and the volumes of one process share one reactor per core instead of each
//   making its own (docs/architecture.md, "Threads").
//
// Why an opaque member of InitiatorOptions and not fields of it: the public header may name no private
// type (net::ReactorGroup, net::Transport). A member whose type the header only declares costs users
// nothing, and keeps Initiator's constructor the only way in.
#pragma once

#include "initiator/transport.hpp"
#include "ispace/initiator.hpp"
#include "net/reactor.hpp"

#include <memory>

namespace ispace::initiator {

namespace detail {
struct InitiatorInternals {
    std::shared_ptr<TransportFactory> transport; // empty: TCP
    // Not owned: it must outlive the Initiator, and run (started) while the Initiator is used. Null:
    // the Initiator makes and owns its own group of InitiatorOptions::threads reactors.
    net::ReactorGroup* reactors = nullptr;
};
} // namespace detail

// Makes every connection of the Initiator built from `options` (sessions and discovery alike) go through
// `factory`.
inline void set_transport_factory(InitiatorOptions& options, std::shared_ptr<TransportFactory> factory) {
    auto internals = options.internals ? std::make_shared<detail::InitiatorInternals>(*options.internals)
                                       : std::make_shared<detail::InitiatorInternals>();
    internals->transport = std::move(factory);
    options.internals = std::move(internals);
}

// Makes the Initiator built from `options` run on `reactors` (running, and outliving the Initiator)
// rather than on a group of its own; InitiatorOptions::threads is then ignored.
inline void use_reactors(InitiatorOptions& options, net::ReactorGroup& reactors) {
    auto internals = options.internals ? std::make_shared<detail::InitiatorInternals>(*options.internals)
                                       : std::make_shared<detail::InitiatorInternals>();
    internals->reactors = &reactors;
    options.internals = std::move(internals);
}

} // namespace ispace::initiator
