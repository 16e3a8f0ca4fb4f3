#include "mgmt/attach_service.hpp"

#include <fmt/format.h>

namespace ispace::mgmt {

using nlohmann::json;

namespace {

json failure(std::string message) {
    return json{{"ok", false}, {"error", std::move(message)}};
}

// The string member `key` of `request`, or empty when it is missing or not a string.
std::string string_member(const json& request, const char* key) {
    auto found = request.find(key);
    return found != request.end() && found->is_string() ? found->get<std::string>() : std::string();
}

} // namespace

AttachService::AttachService(Runtime& runtime, attach::AttachOptions options)
    : _runtime(runtime), _options(std::move(options)) {}

bool AttachService::handles(const json& request) {
    std::string verb = request.is_object() ? string_member(request, "verb") : std::string();
    return verb == "attach-device" || verb == "detach-device" || verb == "devices";
}

json AttachService::handle(const json& request) {
    if (!request.is_object()) {
        return failure("a request is a JSON object with a \"verb\"");
    }
    std::string verb = string_member(request, "verb");
    if (verb == "attach-device") {
        return attach(request);
    }
    if (verb == "detach-device") {
        return detach(request);
    }
    if (verb == "devices") {
        return devices();
    }
    return failure(fmt::format("unknown verb \"{}\" (attach-device, detach-device, devices)", verb));
}

bool AttachService::idle() const {
    std::lock_guard lock(_mutex);
    return _specs.empty();
}

json AttachService::attach(const json& request) {
    std::string spec = string_member(request, "spec");
    if (spec.empty()) {
        return failure("attach-device: give the device to attach as \"spec\" (iscsi://HOST/IQN/LUN, a "
                       "file, memory:SIZE)");
    }
    auto path = _runtime.attach_spec(spec, _options);
    if (!path) {
        return failure(fmt::format("attach {}: {}", spec, path.error().message));
    }
    std::lock_guard lock(_mutex);
    _specs[*path] = spec;
    return json{{"ok", true}, {"device", *path}};
}

json AttachService::detach(const json& request) {
    std::string device = string_member(request, "device");
    if (device.empty()) {
        return failure("detach-device: give the block device as \"device\" (/dev/loopN)");
    }
    auto force = request.find("force");
    if (force != request.end() && !force->is_boolean()) {
        return failure("detach-device: \"force\" is true or false");
    }
    bool forced = force != request.end() && force->get<bool>();
    {
        std::lock_guard lock(_mutex);
        if (_specs.find(device) == _specs.end()) {
            return failure(fmt::format("{}: not attached with `ispace attach` in this holder (a data-space's "
                                       "device is detached with `ispace space detach NAME`)",
                                       device));
        }
    }
    auto detached =
        _runtime.detach(device, forced ? attach::DetachMode::force : attach::DetachMode::refuse_if_in_use);
    if (!detached) {
        return failure(detached.error().message);
    }
    std::lock_guard lock(_mutex);
    _specs.erase(device);
    return json{{"ok", true}};
}

json AttachService::devices() const {
    std::map<std::string, std::string> specs;
    {
        std::lock_guard lock(_mutex);
        specs = _specs;
    }
    json list = json::array();
    for (const auto& s : _runtime.attachments()) {
        auto ours = specs.find(s.path);
        if (ours == specs.end()) {
            continue;
        }
        list.push_back(json{{"device", s.path},
                            {"spec", ours->second},
                            {"backend", s.backend},
                            {"bytes", s.bytes},
                            {"block_size", s.block_size},
                            {"read_only", s.read_only},
                            {"state", s.state},
                            {"reads", s.reads},
                            {"writes", s.writes},
                            {"flushes", s.flushes},
                            {"discards", s.discards},
                            {"bytes_read", s.bytes_read},
                            {"bytes_written", s.bytes_written},
                            {"errors", s.errors}});
    }
    return json{{"ok", true}, {"devices", list}};
}

} // namespace ispace::mgmt
