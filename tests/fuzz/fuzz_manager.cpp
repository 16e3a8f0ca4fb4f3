// Fuzzes the control socket's methods through the real mgmt::Manager: every method's params go through
// the same lookup, validation and live change as in the daemon, against a Runtime that serves one
// target with memory LUNs on one portal of 127.0.0.1:0 and writes no configuration file.
//
// Input: the first byte picks the method (Manager::methods(), modulo), the rest is its params as JSON
// text. Inputs that would reach outside the process are skipped, not run: a LUN spec whose kind is not
// memory or null (a file would be created, a remote target dialled), a portal other than 127.0.0.1:0,
// a secret_file (a file read). Nothing else is filtered: the Manager must refuse the rest by itself.
//
// Checked beyond "no crash, no sanitizer report":
//  - handle() answers one JSON line with either a result or an error with a code and a message;
//  - a refused request changes nothing (config.show before and after are equal), except an `apply`
//    whose answer says what it had applied before a step failed;
//  - afterwards the starting configuration always applies again, and applying it twice changes
//    nothing the second time (the state is reset this way for the next input, so that it does not
//    grow from input to input).
#include "common/log.hpp"
#include "fuzz_check.hpp"
#include "mgmt/manager.hpp"
#include "mgmt/runtime.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

using namespace ispace;
using namespace ispace::mgmt;
using json = nlohmann::json;

namespace {

constexpr const char* target_iqn = "iqn.2026-11.org.ispace:fuzz";

struct Harness {
    std::unique_ptr<Runtime> runtime;
    std::unique_ptr<Manager> manager;
    json baseline; // config.show with secrets, as served at start
};

Harness& harness() {
    static Harness* h = [] {
        set_log_level(LogLevel::off);
        auto* made = new Harness;
        RuntimeOptions options;
        options.reactors = 1;
        made->runtime = std::make_unique<Runtime>(options);
        iscsi_target::ConfigOverlay overlay;
        overlay.listen = {"127.0.0.1:0"};
        overlay.iqn = target_iqn;
        overlay.luns = {"memory:4M", "null:8M"};
        auto config = load_configuration({}, overlay, made->runtime->backstores());
        if (!config || !made->runtime->serve(*config)) {
            __builtin_trap();
        }
        ManagerOptions manager_options; // no config_path: changes are live only
        manager_options.overlay = overlay;
        manager_options.session_wait = std::chrono::milliseconds(200);
        made->manager = std::make_unique<Manager>(*made->runtime, manager_options);
        made->manager->adopt(*config);
        made->baseline = *made->manager->call("config.show", {{"secrets", true}});
        return made;
    }();
    return *h;
}

// Whether running `params` could reach outside the process (see the header comment).
bool escapes(const Runtime& runtime, const json& value, std::string_view key) {
    if (value.is_string()) {
        const std::string& text = value.get_ref<const std::string&>();
        if (key == "spec") {
            auto spec = const_cast<Runtime&>(runtime).backstores().parse(text);
            return spec && (*spec)->kind() != "memory" && (*spec)->kind() != "null";
        }
        if (key == "listen" || key == "portals") {
            return text != "127.0.0.1:0";
        }
        return key == "secret_file";
    }
    if (value.is_object()) {
        for (auto it = value.begin(); it != value.end(); ++it) {
            if (it.key() == "secret_file" || escapes(runtime, it.value(), it.key())) {
                return true;
            }
        }
    } else if (value.is_array()) {
        for (const json& item : value) {
            if (escapes(runtime, item, key)) {
                return true;
            }
        }
    }
    return false;
}

json shown(Manager& manager) {
    return *manager.call("config.show", {{"secrets", true}});
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1 || size > 4096) {
        return 0;
    }
    Harness& h = harness();
    auto methods = Manager::methods();
    std::string_view method = methods[data[0] % methods.size()];
    json params = json::parse(reinterpret_cast<const char*>(data) + 1,
                              reinterpret_cast<const char*>(data) + size, nullptr, false);
    if (params.is_discarded() || escapes(*h.runtime, params, {})) {
        return 0;
    }
    json request = {{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", params}};
    json before = shown(*h.manager);
    std::string line = h.manager->handle(request.dump());
    set_log_level(LogLevel::off); // log.set may have raised it
    FUZZ_CHECK(!line.empty() && line.back() == '\n');
    json answer = json::parse(line, nullptr, false);
    FUZZ_CHECK(!answer.is_discarded() && answer.contains("result") != answer.contains("error"));
    if (answer.contains("error")) {
        FUZZ_CHECK(answer["error"]["code"].is_number_integer());
        const std::string& message = answer["error"]["message"].get_ref<const std::string&>();
        FUZZ_CHECK(!message.empty());
        if (message.find("applied before it") == std::string::npos) {
            FUZZ_CHECK(shown(*h.manager) == before);
        }
    }
    // Back to the start, through the same code: it always applies, and a second time changes nothing.
    auto reset = h.manager->call("config.apply", {{"config", h.baseline}, {"shrink", true}});
    FUZZ_CHECK(reset);
    auto again = h.manager->call("config.apply", {{"config", h.baseline}, {"shrink", true}});
    FUZZ_CHECK(again && (*again)["changes"].empty());
    return 0;
}
