// The service manager's readiness protocol (sd_notify(3)): "READY=1" once the daemon serves,
// "RELOADING=1" while SIGHUP is applied, "STOPPING=1" when it shuts down, each as one datagram to the
// Unix socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). Written here
// instead of linking libsystemd: the protocol is one sendmsg(), and the daemon then runs the same
// without systemd (no NOTIFY_SOCKET: nothing is sent).
#pragma once

#include "common/result.hpp"

#include <string_view>

namespace ispace::mgmt {

// Sends `state` (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET; false and nothing sent when the
// variable is unset. An error when it is set and the datagram cannot be sent.
Result<bool> notify_service_manager(std::string_view state);

} // namespace ispace::mgmt
