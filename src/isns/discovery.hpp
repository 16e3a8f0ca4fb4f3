// Discovery through iSNS from the initiator's side: the targets an iSNS server lets one initiator see
// (RFC 4171 §2.2.2: its discovery domains decide), with the portals to log in through. Blocking: for
// the CLI and other threads that are not reactors.
#pragma once

#include "common/result.hpp"
#include "isns/client.hpp"
#include "isns/objects.hpp"

#include <string>
#include <vector>

namespace ispace::isns {

struct DiscoveryResult {
    std::vector<DiscoveredTarget> targets;
    // The initiator had to be registered for the query (the server refused an unknown source) and
    // was deregistered afterwards.
    bool registered = false;
};

// Queries as `initiator_name` (the Source, §5.6.1). A server that refuses an unregistered source
// (Source Unknown / Absent / Unauthorized) gets the initiator registered as a node of its own entity
// first, and deregistered after the answer (or an error) came.
Result<DiscoveryResult> discover_targets(const ClientOptions& options, const std::string& initiator_name);

} // namespace ispace::isns
