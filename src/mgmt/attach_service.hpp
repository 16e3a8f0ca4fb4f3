// AttachService: attaching devices that are not data-spaces (a plain remote LUN, iscsi://..., for hosts
// with no kernel initiator; a file; memory:SIZE — any spec a registered kind claims) as one JSON request
// and one JSON answer each, in the process that holds attachments.
//
// That process is the holder the `ispace` CLI reaches (the volume layer's holder on
// $ISPACE_HOME/holder.sock, which holds data-spaces the same way): `ispace attach URL` and
// `ispace detach DEV` are requests to it, so that the block device keeps working after the command
// exits. The requests and answers follow the space verbs' shape:
//
//   {"verb": "attach-device", "spec": "iscsi://HOST/IQN/LUN"}  → {"ok": true, "device": "/dev/loop3"}
//   {"verb": "detach-device", "device": "/dev/loop3", "force": false}  → {"ok": true}
//   {"verb": "devices"}  → {"ok": true, "devices": [{"device", "spec", "backend", "bytes", "block_size",
//                                                     "state", "reads", "writes", ..., "errors"}]}
//   any failure          → {"ok": false, "error": "what was wrong"}
//
// Only what this service attached is listed or detached here: a data-space's block device belongs to
// the space verbs, which keep their own books (detach it with `ispace space detach NAME`).
#pragma once

#include "mgmt/runtime.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <mutex>
#include <string>

namespace ispace::mgmt {

class AttachService {
public:
    AttachService(Runtime& runtime, attach::AttachOptions options = {});
    AttachService(const AttachService&) = delete;
    AttachService& operator=(const AttachService&) = delete;

    // Whether `request` is one of this service's verbs (a holder routes the others elsewhere).
    static bool handles(const nlohmann::json& request);
    // Any thread but a reactor; blocks while a device is opened, attached or detached.
    nlohmann::json handle(const nlohmann::json& request);
    // Nothing attached through this service (a holder that exits when idle asks).
    bool idle() const;

private:
    nlohmann::json attach(const nlohmann::json& request);
    nlohmann::json detach(const nlohmann::json& request);
    nlohmann::json devices() const;

    Runtime& _runtime;
    attach::AttachOptions _options;
    mutable std::mutex _mutex;
    std::map<std::string, std::string> _specs; // block device path → spec, as attached here
};

} // namespace ispace::mgmt
