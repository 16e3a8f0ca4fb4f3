// A test program that attaches devices as local block devices through mgmt::Runtime and holds them
// until told to detach, so that system tests can mkfs, mount and kill the holder. It is what `ispace
// attach` will reach in ispaced through the control socket once that exists. Reads one command per
// line on stdin and answers "ok [value]" or "error MESSAGE" on stdout:
//
//   attach SPEC                 → ok /dev/loopN
//   detach PATH [force]         → ok
//   resize PATH SIZE            → ok        (resizes the device behind PATH; memory: and file devices)
//   status                      → ok PATH STATE BYTES BLOCK DIRECT_IO READS WRITES FLUSHES DISCARDS
//   ERRORS;... quit                        → detaches everything (forced) and exits 0
//
// Usage: attach_driver [--attach SPEC ...] [--reactors N] [--threads N] [--run-dir DIR] [--legacy-loop]
//        attach_driver --why-not     prints why this build or machine cannot attach (nothing: it can)
// Devices given with --attach are attached first; then it prints "attached: PATH SPEC" for each on
// stdout, then "ready". SIGTERM or SIGINT detaches everything (forced) and exits 0.
//
// SPEC is any backstore spec (memory:64M, FILE,size=64M) or iscsi://HOST:PORT/IQN/LUN. TEMPORARY: until
// the volume layer registers its remote-LUN kind, iscsi:// is served here by TestRemoteDevice below,
// the smallest Device over an initiator Session (when the runtime has an "iscsi" kind, that one is
// used). It is not the product's remote device and must not move to src/; delete it when the volume
// layer's kind lands.
#include "backstore/device.hpp"
#include "backstore/registry.hpp"
#include "common/log.hpp"
#include "common/units.hpp"
#include "ispace/initiator.hpp"
#include "mgmt/runtime.hpp"
#include "net/reactor.hpp"
#include "scsi_spec/cdb.hpp"

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <pthread.h>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace ispace;

namespace {

// TEMPORARY (see the top of the file): READ(16)/WRITE(16) and SYNCHRONIZE CACHE over one session. No
// UNMAP (discard is refused), no capacity-change events, no failover: enough to carry a filesystem.
class TestRemoteDevice final : public backstore::Device {
public:
    TestRemoteDevice(std::shared_ptr<initiator::Session> session, uint64_t lun, initiator::Capacity capacity,
                     std::string url)
        : _session(std::move(session)), _lun(lun), _capacity(capacity), _url(std::move(url)) {}
    ~TestRemoteDevice() override { _session->close(); }

    std::string_view kind() const override { return "iscsi (test)"; }
    std::string describe() const override { return _url; }
    backstore::Geometry geometry() const override { return {_capacity.block_size, _capacity.blocks}; }
    backstore::Features features() const override {
        backstore::Features f;
        f.volatile_cache = true;
        return f;
    }
    uint64_t identity() const override { return std::hash<std::string>()(_url); }

    void submit(backstore::IoRequest& request) override {
        net::Reactor* reactor = net::Reactor::current();
        uint32_t bs = _capacity.block_size;
        initiator::Request scsi;
        Buffer data;
        switch (request.op) {
        case backstore::IoOp::read:
            scsi = initiator::make_read(_lun, request.offset / bs, uint32_t(request.length / bs), bs);
            data = scsi.data; // shared: the Data-In lands in it
            break;
        case backstore::IoOp::write: {
            data = Buffer::allocate(request.length);
            size_t at = 0;
            for (unsigned i = 0; i < request.iovcnt; ++i) {
                std::memcpy(data.data() + at, request.iov[i].iov_base, request.iov[i].iov_len);
                at += request.iov[i].iov_len;
            }
            scsi = initiator::make_write(_lun, request.offset / bs, uint32_t(request.length / bs), bs, data);
            break;
        }
        case backstore::IoOp::flush: {
            scsi::Cdb cdb = scsi::cdb::synchronize_cache();
            scsi.lun = _lun;
            scsi.cdb = cdb.bytes;
            scsi.cdb_length = cdb.length;
            scsi.direction = initiator::DataDirection::none;
            break;
        }
        default:
            reactor->defer([&request] {
                auto done = std::move(request.done);
                done(-EOPNOTSUPP);
            });
            return;
        }
        backstore::IoRequest* r = &request;
        _session->submit(std::move(scsi), [r, reactor, data](initiator::Response&& response) {
            int error = response.ok() ? 0 : -EIO;
            if (!response.ok()) {
                log_warn("test remote device: {}", response.describe());
            }
            if (error == 0 && r->op == backstore::IoOp::read) {
                size_t at = 0;
                for (unsigned i = 0; i < r->iovcnt; ++i) {
                    std::memcpy(r->iov[i].iov_base, data.data() + at, r->iov[i].iov_len);
                    at += r->iov[i].iov_len;
                }
            }
            // Completions run on some initiator reactor; the device contract wants the submitting one.
            reactor->post([r, error] {
                auto done = std::move(r->done);
                done(error);
            });
        });
    }

    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        done(std::vector<backstore::Extent>{{offset, length, true}});
    }

private:
    std::shared_ptr<initiator::Session> _session;
    uint64_t _lun;
    initiator::Capacity _capacity;
    std::string _url;
};

class TestRemoteSpec final : public backstore::Spec {
public:
    TestRemoteSpec(mgmt::Runtime& runtime, initiator::Url url) : _runtime(runtime), _url(std::move(url)) {}
    std::string_view kind() const override { return "iscsi"; }
    std::string describe() const override { return initiator::to_string(_url); }
    Result<std::unique_ptr<backstore::Device>> open() const override {
        initiator::SessionOptions options;
        options.host = _url.host;
        options.port = _url.port;
        options.target_name = _url.target_name;
        options.chap = _url.chap;
        auto session = _runtime.initiator().connect(options);
        if (!session) {
            return session.error();
        }
        uint64_t lun = _url.lun.value_or(0);
        auto capacity = (*session)->read_capacity(lun);
        if (!capacity) {
            return capacity.error();
        }
        return std::unique_ptr<backstore::Device>(
            std::make_unique<TestRemoteDevice>(std::move(*session), lun, *capacity, describe()));
    }

private:
    mgmt::Runtime& _runtime;
    initiator::Url _url;
};

// Registered only while the runtime registers no "iscsi" kind of its own: once the volume layer's is
// there, the tests go through it.
void register_test_remote_kind(mgmt::Runtime& runtime) {
    for (const std::string& name : runtime.backstores().names()) {
        if (name == "iscsi") {
            return;
        }
    }
    backstore::Kind kind;
    kind.name = "iscsi";
    kind.syntax = "iscsi://HOST[:PORT]/IQN/LUN";
    kind.help = "a remote LUN (test driver's temporary device)";
    kind.claims = [](std::string_view text) { return text.substr(0, 8) == "iscsi://"; };
    kind.parse = [&runtime](std::string_view text) -> Result<std::unique_ptr<backstore::Spec>> {
        auto url = initiator::parse_url(text);
        if (!url) {
            return url.error();
        }
        if (url->target_name.empty() || !url->lun) {
            return make_error(std::string(text) + ": give the target and the LUN: iscsi://HOST/IQN/LUN",
                              EINVAL);
        }
        return std::unique_ptr<backstore::Spec>(std::make_unique<TestRemoteSpec>(runtime, std::move(*url)));
    };
    (void)runtime.backstores().add(std::move(kind));
}

void answer(const Result<void>& r, const std::string& value = {}) {
    if (r) {
        std::printf("ok%s%s\n", value.empty() ? "" : " ", value.c_str());
    } else {
        std::printf("error %s\n", r.error().message.c_str());
    }
    std::fflush(stdout);
}

std::string status_line(const mgmt::Runtime& runtime) {
    std::string text;
    for (const attach::AttachmentStatus& s : runtime.attachments()) {
        text += fmt::format("{}{} {} {} {} {} {} {} {} {} {}", text.empty() ? "" : ";", s.path, s.state,
                            s.bytes, s.block_size, s.direct_io ? 1 : 0, s.reads, s.writes, s.flushes,
                            s.discards, s.errors);
    }
    return text;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"attach_driver: attach devices as local block devices for system tests"};
    std::vector<std::string> specs;
    unsigned reactors = 2;
    attach::AttachOptions options;
    app.add_option("--attach", specs);
    app.add_option("--reactors", reactors);
    app.add_option("--threads", options.threads);
    app.add_option("--run-dir", options.run_dir);
    app.add_flag("--legacy-loop", options.legacy_loop_setup);
    bool why_not = false;
    app.add_flag("--why-not", why_not);
    CLI11_PARSE(app, argc, argv);
    if (why_not) {
        std::printf("%s\n", attach::why_not_attachable().c_str());
        return 0;
    }

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    mgmt::RuntimeOptions runtime_options;
    runtime_options.reactors = reactors;
    mgmt::Runtime runtime(runtime_options);
    register_test_remote_kind(runtime);
    // The devices the driver opened, by block device path, for `resize`.
    std::map<std::string, std::shared_ptr<backstore::Device>> devices;
    auto attach_one = [&](const std::string& text) -> Result<std::string> {
        auto spec = runtime.backstores().parse(text);
        if (!spec) {
            return spec.error();
        }
        auto device = (*spec)->open();
        if (!device) {
            return device.error();
        }
        std::shared_ptr<backstore::Device> shared(std::move(*device));
        attach::AttachOptions o = options;
        o.name = (*spec)->describe();
        auto path = runtime.attach(shared, o);
        if (path) {
            devices[*path] = shared;
        }
        return path;
    };
    for (const std::string& text : specs) {
        auto path = attach_one(text);
        if (!path) {
            std::fprintf(stderr, "attach_driver: %s\n", path.error().message.c_str());
            return 1;
        }
        std::printf("attached: %s %s\n", path->c_str(), text.c_str());
    }
    std::printf("ready\n");
    std::fflush(stdout);

    std::thread([&runtime, &signals] {
        int signal = 0;
        sigwait(&signals, &signal);
        log_info("attach_driver: signal {}: detaching everything", signal);
        bool clean = runtime.stop(std::chrono::seconds(10));
        std::fflush(stdout);
        std::_Exit(clean ? 0 : 1);
    }).detach();

    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string verb, arg;
        in >> verb >> arg;
        if (verb == "quit") {
            break;
        }
        if (verb == "attach") {
            auto path = attach_one(arg);
            answer(path ? Result<void>() : Result<void>(path.error()), path ? *path : "");
        } else if (verb == "detach") {
            std::string mode;
            in >> mode;
            auto detached = runtime.detach(arg, mode == "force" ? attach::DetachMode::force
                                                                : attach::DetachMode::refuse_if_in_use);
            if (detached) {
                devices.erase(arg);
            }
            answer(detached);
        } else if (verb == "resize") {
            std::string size;
            in >> size;
            auto bytes = parse_size(size);
            auto found = devices.find(arg);
            if (!bytes) {
                answer(bytes.error());
            } else if (found == devices.end()) {
                answer(make_error(arg + ": not attached here"));
            } else {
                answer(found->second->resize(*bytes));
            }
        } else if (verb == "status") {
            answer({}, status_line(runtime));
        } else {
            answer(make_error("unknown command: " + verb));
        }
    }
    devices.clear();
    return runtime.stop(std::chrono::seconds(10)) ? 0 : 1;
}
