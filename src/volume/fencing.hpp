// Fencing: one writer per space, enforced by the members themselves with SPC-3 persistent reservations.
//
// The holder registers its reservation key on every member that supports reservations (remote LUNs) and
// holds a Write Exclusive – Registrants Only reservation there: members then refuse writes from anyone
// not registered. Another holder's open is refused, naming the holder (from the labels, which record
// who holds the space). A takeover registers, then PREEMPT AND ABORTs every other key: the old holder's
// registrations and commands are gone, its next write meets RESERVATION CONFLICT, and it stops (volume.hpp:
// "lost"). It cannot come back by registering again: a RemoteDevice that logs in anew checks who holds the
// reservation first.
//
// The holder's identity is a random key kept in $ISPACE_HOME/host.json, with a name ("host:home") for
// messages: two homes on one machine are two holders.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ispace::volume {

struct HostIdentity {
    uint64_t key = 0;
    std::string name; // "hostname:/path/to/home"
};

// Reads `home`/host.json, or creates it (a random key) when it is missing.
Result<HostIdentity> load_identity(const std::string& home);

struct FenceTarget {
    backstore::Device* device = nullptr; // fenced when it is a RemoteDevice; others are skipped
    std::string url;                     // for messages
};

// Registers `me` on every target and reserves it. Refuses (EBUSY), before changing anything on any member,
// when another key holds or is registered on one of them and `takeover` is false; the message names
// `holder_name` (the labels' holder) when its key is the one found. With `takeover`, every other key is
// preempted (PREEMPT AND ABORT). Blocks: not on a reactor.
Result<void> fence(const std::vector<FenceTarget>& targets, const HostIdentity& me, bool takeover,
                   uint64_t holder_key, const std::string& holder_name);
// Releases the reservation and unregisters `me` (a clean close). Errors are ignored: the member may be gone.
void unfence(const std::vector<FenceTarget>& targets, const HostIdentity& me);

} // namespace ispace::volume
