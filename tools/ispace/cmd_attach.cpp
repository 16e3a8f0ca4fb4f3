// ispace attach URL / ispace detach DEV: a device that is not a data-space (a plain remote LUN, for hosts
// with no kernel iSCSI initiator; any spec ispaced can open) as a local block device. Both are requests
// to the holder of $ISPACE_HOME (mgmt::AttachService in ispaced); attach starts one when none runs, so
// that the device keeps working after this command exits.
#include "cli.hpp"

#include "mgmt/space_service.hpp"

#include <fmt/format.h>

namespace ispace::cli {

namespace {

int answered(const Result<nlohmann::json>& answer) {
    if (!answer) {
        error(answer.error().message);
        return exit_failure;
    }
    if (!answer->value("ok", false)) {
        error(answer->value("error", std::string("the holder gave no reason")));
        return exit_failure;
    }
    return exit_ok;
}

} // namespace

Runner add_attach(CLI::App& app, GlobalOptions& /*global*/) {
    auto* cmd = app.add_subcommand(
        "attach", "Attach a remote LUN (or any device spec) as a local block device; prints its path");
    auto url = std::make_shared<std::string>();
    cmd->add_option("URL", *url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN, or a device spec")->required();
    return [url]() -> int {
        std::string home = mgmt::default_space_home();
        auto answer = request_holder(home, {{"verb", "attach-device"}, {"spec", *url}}, true);
        if (int code = answered(answer); code != exit_ok) {
            return code;
        }
        fmt::print("{}\n", answer->value("device", ""));
        return exit_ok;
    };
}

Runner add_detach(CLI::App& app, GlobalOptions& /*global*/) {
    auto* cmd = app.add_subcommand("detach", "Detach a block device made by `ispace attach`");
    auto device = std::make_shared<std::string>();
    auto force = std::make_shared<bool>(false);
    cmd->add_option("DEV", *device, "The block device, /dev/loopN")->required();
    cmd->add_flag("--force", *force, "Detach even while mounted (its filesystem then sees I/O errors)");
    return [device, force]() -> int {
        std::string home = mgmt::default_space_home();
        auto answer =
            request_holder(home, {{"verb", "detach-device"}, {"device", *device}, {"force", *force}}, false);
        if (!answer && (answer.error().code == ENOENT || answer.error().code == ECONNREFUSED)) {
            error(fmt::format("{} is not attached (no holder runs for {})", *device, home));
            return exit_failure;
        }
        return answered(answer);
    };
}

} // namespace ispace::cli
