// A test program that drives data-spaces through volume::SpaceManager (until the control socket and the
// `ispace space` verbs exist), so that system tests can put real targets under a space and kill them.
// One command per line on stdin; answers "ok [value]" or "error MESSAGE" on stdout:
//
//   create NAME LAYOUT URL...        open NAME [takeover]          close NAME
//   write NAME OFFSET LENGTH SEED    writes a pattern (256 KiB requests, 8 in flight)
//   verify NAME OFFSET LENGTH SEED   reads it back and compares
//   status NAME                      one line of JSON
//   wait-resync NAME SECONDS         quit
//
// Usage: space_driver --home DIR [--reactors N] [--sweep-ms MS]
#include "common/log.hpp"
#include "common/units.hpp"
#include "initiator/internals.hpp"
#include "net/reactor.hpp"
#include "volume/space_manager.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <future>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

using namespace ispace;
using namespace ispace::volume;

namespace {

void answer(const std::string& text) {
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
}

// The pattern at `offset`: every 8 bytes a function of the offset and the seed, so that any range can be
// checked without keeping what was written.
void fill(uint8_t* p, uint64_t offset, size_t length, uint64_t seed) {
    for (size_t i = 0; i < length; i += 8) {
        uint64_t x = (offset + i) * 0x9e3779b97f4a7c15ULL ^ seed;
        x ^= x >> 29;
        std::memcpy(p + i, &x, 8);
    }
}

// Runs `length` bytes of reads or writes through the device, 8 requests of 256 KiB in flight, on reactor 0.
std::string run_io(net::ReactorGroup& group, backstore::Device& device, bool write, uint64_t offset,
                   uint64_t length, uint64_t seed) {
    constexpr size_t chunk = 256 << 10;
    constexpr unsigned depth = 8;
    struct Slot {
        Buffer buffer;
        iovec iov{};
        backstore::IoRequest request;
    };
    struct State {
        std::vector<Slot> slots{depth};
        uint64_t next = 0;
        unsigned running = 0;
        std::string error;
        std::promise<void> done;
    };
    State st;
    std::function<void(unsigned)> issue = [&](unsigned i) {
        if (st.next >= length || !st.error.empty()) {
            if (--st.running == 0) {
                st.done.set_value();
            }
            return;
        }
        uint64_t at = offset + st.next;
        size_t n = std::min<uint64_t>(chunk, length - st.next);
        st.next += n;
        Slot& s = st.slots[i];
        if (!s.buffer) {
            s.buffer = Buffer::allocate(chunk);
        }
        if (write) {
            fill(s.buffer.data(), at, n, seed);
        }
        s.iov = {s.buffer.data(), n};
        s.request = {};
        s.request.op = write ? backstore::IoOp::write : backstore::IoOp::read;
        s.request.offset = at;
        s.request.length = n;
        s.request.iov = &s.iov;
        s.request.iovcnt = 1;
        s.request.done = [&, i, at, n](int error) {
            if (error != 0 && st.error.empty()) {
                st.error = fmt::format("{} at {}: {}", write ? "write" : "read", at, std::strerror(-error));
            }
            if (!write && error == 0) {
                std::vector<uint8_t> expected(n);
                fill(expected.data(), at, n, seed);
                if (std::memcmp(expected.data(), st.slots[i].buffer.data(), n) != 0 && st.error.empty()) {
                    st.error = fmt::format("data differs in the {} bytes at {}", n, at);
                }
            }
            issue(i);
        };
        device.submit(s.request);
    };
    auto future = st.done.get_future();
    group.at(0).post([&] {
        st.running = depth;
        for (unsigned i = 0; i < depth; ++i) {
            issue(i);
        }
    });
    future.get();
    return st.error;
}

std::string to_json(const SpaceStatus& st) {
    nlohmann::json j;
    j["name"] = st.name;
    j["open"] = st.open;
    j["lost"] = st.lost;
    j["epoch"] = st.epoch;
    j["size"] = st.size;
    j["dirty_regions"] = st.dirty_regions;
    j["resync"] = {{"running", st.resync.running},
                   {"done_bytes", st.resync.done_bytes},
                   {"total_bytes", st.resync.total_bytes},
                   {"copied_bytes", st.resync.copied_bytes},
                   {"rate", st.resync.rate},
                   {"eta_seconds", st.resync.eta_seconds}};
    for (const MemberStatus& m : st.members) {
        j["members"].push_back({{"url", m.url}, {"state", std::string(to_string(m.state))}});
    }
    return j.dump();
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"space_driver: data-spaces for system tests"};
    std::string home;
    unsigned reactors = 2;
    std::string log_level = "info";
    unsigned sweep_ms = 2000;
    app.add_option("--home", home)->required();
    app.add_option("--sweep-ms", sweep_ms,
                   "How often the bitmap is swept (regions clear after two idle sweeps)");
    app.add_option("--reactors", reactors);
    app.add_option("--log-level", log_level);
    CLI11_PARSE(app, argc, argv);
    LogLevel level;
    if (parse_log_level(log_level, level)) {
        set_log_level(level);
    }

    net::ReactorGroup group(reactors);
    group.start();
    std::unique_ptr<initiator::Initiator> ini;
    {
        initiator::InitiatorOptions o;
        initiator::use_reactors(o, group);
        ini = std::make_unique<initiator::Initiator>(std::move(o));
    }
    auto manager = std::make_unique<SpaceManager>([&] {
        SpaceManagerOptions o;
        o.home = home;
        o.reactors = &group;
        o.initiator = ini.get();
        o.volume.retry_min = std::chrono::milliseconds(500);
        o.volume.retry_max = std::chrono::milliseconds(2000);
        o.volume.sweep_interval = std::chrono::milliseconds(sweep_ms);
        return o;
    }());
    std::map<std::string, std::unique_ptr<VolumeDevice>> devices;

    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string verb, name;
        in >> verb >> name;
        if (verb == "quit" || verb.empty()) {
            break;
        }
        if (verb == "create") {
            CreateRequest r;
            r.name = name;
            std::string layout;
            in >> layout;
            auto kind = parse_layout_kind(layout);
            if (!kind) {
                answer("error " + kind.error().message);
                continue;
            }
            r.layout = *kind;
            for (std::string url; in >> url;) {
                r.members.push_back(url);
            }
            auto st = manager->create(r);
            answer(st ? "ok " + to_json(*st) : "error " + st.error().message);
        } else if (verb == "open") {
            std::string flag;
            in >> flag;
            auto v = manager->open(name, OpenOptions{flag == "takeover"});
            if (!v) {
                answer("error " + v.error().message);
                continue;
            }
            devices[name] = std::make_unique<VolumeDevice>(*v);
            answer("ok");
        } else if (verb == "close") {
            devices.erase(name);
            auto r = manager->close(name);
            answer(r ? "ok" : "error " + r.error().message);
        } else if (verb == "write" || verb == "verify") {
            uint64_t offset = 0, length = 0, seed = 0;
            in >> offset >> length >> seed;
            auto it = devices.find(name);
            if (it == devices.end()) {
                answer("error not open");
                continue;
            }
            std::string error = run_io(group, *it->second, verb == "write", offset, length, seed);
            answer(error.empty() ? "ok" : "error " + error);
        } else if (verb == "status") {
            auto st = manager->status(name);
            answer(st ? "ok " + to_json(*st) : "error " + st.error().message);
        } else if (verb == "wait-resync") {
            unsigned seconds = 0;
            in >> seconds;
            auto v = manager->find(name);
            bool done = v && v->wait_resync(std::chrono::seconds(seconds));
            answer(done ? "ok" : "error resync still running");
        } else {
            answer("error unknown command " + verb);
        }
    }
    devices.clear();
    manager.reset();
    ini.reset();
    group.stop();
    return 0;
}
