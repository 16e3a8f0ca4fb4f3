// A test program that serves targets through mgmt::Runtime and changes its catalog on command, so that
// system tests can drive live changes (LU add, remove, resize; targets; portals) with real clients
// attached. Reads one command per line on stdin and answers "ok [value]" or "error MESSAGE" on stdout:
//
//   add-lun IQN SPEC [LUN]      remove-lun IQN LUN      resize-lun IQN LUN SIZE [shrink]
//   add-target IQN              remove-target IQN       add-portal HOST:PORT     remove-portal HOST:PORT
//   luns IQN                    quit
//
// Usage: runtime_driver --listen HOST:PORT --iqn IQN --lun SPEC [--lun SPEC ...] [--reactors N]
//                       [--isns HOST:PORT [--isns-entity ID] [--isns-esi-interval S]]
// It prints the same "ready: iscsi://..." lines as ispaced once it serves.
#include "common/log.hpp"
#include "common/units.hpp"
#include "mgmt/runtime.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

using namespace ispace;

namespace {

void answer(const Result<void>& r) {
    if (r) {
        std::printf("ok\n");
    } else {
        std::printf("error %s\n", r.error().message.c_str());
    }
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"runtime_driver: live catalog changes for system tests"};
    std::vector<std::string> listen{"127.0.0.1:0"};
    std::string iqn;
    std::vector<std::string> luns;
    unsigned reactors = 2;
    app.add_option("--listen", listen);
    app.add_option("--iqn", iqn)->required();
    app.add_option("--lun", luns);
    app.add_option("--reactors", reactors);
    std::string isns_server;
    std::string isns_entity = "runtime-driver";
    app.add_option("--isns", isns_server, "Register with this iSNS server");
    app.add_option("--isns-entity", isns_entity);
    uint32_t isns_esi_interval = 60;
    app.add_option("--isns-esi-interval", isns_esi_interval);
    CLI11_PARSE(app, argc, argv);

    mgmt::Runtime runtime;
    iscsi_target::ServerConfig config;
    config.reactors = reactors;
    config.negotiation = iscsi_target::default_target_negotiation();
    iscsi_target::ConfigOverlay overlay;
    overlay.listen = listen;
    overlay.iqn = iqn;
    overlay.luns = luns;
    if (auto applied = iscsi_target::apply_overlay(config, overlay, runtime.backstores()); !applied) {
        std::fprintf(stderr, "runtime_driver: %s\n", applied.error().message.c_str());
        return 2;
    }
    if (auto served = runtime.serve(config); !served) {
        std::fprintf(stderr, "runtime_driver: %s\n", served.error().message.c_str());
        return 1;
    }
    for (const net::Endpoint& endpoint : runtime.target_server()->portal_endpoints()) {
        for (uint64_t lun : runtime.target_server()->find_target(iqn)->device->luns()) {
            log_write(LogLevel::info, fmt::format("ready: iscsi://{}/{}/{}", endpoint.to_string(), iqn, lun));
        }
    }

    if (!isns_server.empty()) {
        isns::RegistrarOptions options;
        options.client.server = isns_server;
        options.esi_interval = isns_esi_interval;
        if (auto registering = runtime.register_with_isns(options, isns_entity); !registering) {
            std::fprintf(stderr, "runtime_driver: %s\n", registering.error().message.c_str());
            return 1;
        }
    }

    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string verb, name;
        in >> verb >> name;
        if (verb == "quit") {
            break;
        }
        if (verb == "add-lun") {
            std::string spec;
            in >> spec;
            std::optional<uint64_t> number;
            if (uint64_t n; in >> n) {
                number = n;
            }
            auto added = runtime.add_lun(name, number, spec);
            if (added) {
                std::printf("ok %llu\n", static_cast<unsigned long long>(*added));
                std::fflush(stdout);
            } else {
                answer(added.error());
            }
        } else if (verb == "remove-lun") {
            uint64_t lun = 0;
            in >> lun;
            answer(runtime.remove_lun(name, lun));
        } else if (verb == "resize-lun") {
            uint64_t lun = 0;
            std::string size, shrink;
            in >> lun >> size >> shrink;
            auto bytes = parse_size(size);
            answer(bytes ? runtime.resize_lun(name, lun, *bytes, shrink == "shrink")
                         : Result<void>(bytes.error()));
        } else if (verb == "add-target") {
            iscsi_target::TargetConfig target;
            target.iqn = name;
            answer(runtime.add_target(target));
        } else if (verb == "remove-target") {
            answer(runtime.remove_target(name));
        } else if (verb == "add-portal") {
            auto bound = runtime.add_portal(name);
            if (bound) {
                std::printf("ok %s\n", bound->to_string().c_str());
                std::fflush(stdout);
            } else {
                answer(bound.error());
            }
        } else if (verb == "remove-portal") {
            answer(runtime.remove_portal(name));
        } else if (verb == "luns") {
            auto list = runtime.luns(name);
            if (!list) {
                answer(list.error());
                continue;
            }
            std::string text;
            for (const mgmt::LunInfo& info : *list) {
                text += fmt::format(" {}:{}", info.lun, info.bytes);
            }
            std::printf("ok%s\n", text.c_str());
            std::fflush(stdout);
        } else {
            answer(make_error("unknown command: " + verb));
        }
    }
    return runtime.stop(std::chrono::seconds(10)) ? 0 : 1;
}
