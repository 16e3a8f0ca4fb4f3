// The initiator's test seam, kept out of the public API: which TransportFactory an Initiator's
// connections go through. The unit tests put a FaultInjector (fault_transport.hpp) there to drop, delay
// or corrupt PDUs; production uses TCP.
//
// Why an opaque member of InitiatorOptions and not a field of it: the public header may name no private
// type, and the transport interface is the library's own (it is moving, with the target side's, into
// src/net). A member whose type the header only declares costs users nothing, and keeps Initiator's
// constructor the only way in.
#pragma once

#include "initiator/transport.hpp"
#include "ispace/initiator.hpp"

#include <memory>

namespace ispace::initiator {

namespace detail {
struct InitiatorInternals {
    std::shared_ptr<TransportFactory> transport; // empty: TCP
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

} // namespace ispace::initiator
