// What ispaced serves: portals, targets and their LUNs, and the limits it enforces. Built from the
// command line (quick mode) or a configuration file; validated once at start-up.
#pragma once

#include "backstore/device.hpp"
#include "iscsi/params.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ispace::target {

struct LunConfig {
    uint64_t lun = 0;
    std::string spec; // as given, for messages: "var/lun0.img,size=1G,thin"
    backstore::DeviceSpec device;
};

struct TargetConfig {
    std::string iqn;
    std::string alias;
    std::vector<LunConfig> luns;
};

struct PortalConfig {
    std::string listen; // "127.0.0.1:3260", "[::1]:3260"
    uint16_t tpgt = 1;  // target portal group tag; each portal is its own group in quick mode
};

struct Limits {
    // The CmdSN window a session gets: how many commands it may have outstanding (MaxCmdSN - ExpCmdSN+1).
    uint32_t queue_depth = 128;
    // Largest data transfer one command may move; bounds what one command makes the target allocate.
    uint32_t max_transfer_bytes = 8u << 20;
    // A connection must finish login within this, or it is dropped.
    std::chrono::milliseconds login_timeout{15000};
    // An idle connection in full feature phase is pinged (NOP-In) after this...
    std::chrono::milliseconds nop_interval{10000};
    // ...and dropped when nothing at all arrives for this long.
    std::chrono::milliseconds nop_timeout{30000};
    // Total connections (any state) the daemon accepts at once; more are closed at accept.
    uint32_t max_connections = 4096;
};

struct ServerConfig {
    unsigned reactors = 0; // 0: one per core
    std::vector<PortalConfig> portals;
    std::vector<TargetConfig> targets;
    iscsi::NegotiationConfig negotiation; // what the target accepts and declares
    Limits limits;
};

// The negotiation settings ispaced uses unless configured otherwise: digests allowed (None preferred,
// the initiator decides), immediate data and unsolicited data accepted, several R2Ts in flight.
iscsi::NegotiationConfig default_target_negotiation();

} // namespace ispace::target
