// Helpers for the volume layer's tests: requests submitted on a running reactor and awaited from the test
// thread (checking the backstore::Device completion contract), an in-process iSCSI target to be a remote
// member, and random data.
#pragma once

#include "backstore/device.hpp"
#include "common/buffer.hpp"
#include "mgmt/runtime.hpp"
#include "net/reactor.hpp"
#include "volume/assembly.hpp"
#include "volume/member_io.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace ispace::volume::test {

inline std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t x = rng();
        std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
    }
    return v;
}

// What an assembly finds on the member devices in `slots`, as the space manager reads them: each one's
// labels, named "m<slot>" (devices: any vector of pointers to backstore::Device, indexed by slot).
template <typename Devices>
std::vector<FoundMember> found_on(net::Reactor& reactor, const Devices& devices,
                                  const std::vector<uint32_t>& slots) {
    std::vector<FoundMember> found;
    for (uint32_t s : slots) {
        LabelReading r = read_member_labels(reactor, *devices[s]);
        found.push_back({"m" + std::to_string(s), r.label, r.problems});
    }
    return found;
}

// Runs `fn` on `reactor` and waits for it.
template <typename Fn> void on_reactor(net::Reactor& reactor, Fn&& fn) {
    std::promise<void> done;
    reactor.post([&] {
        fn();
        done.set_value();
    });
    done.get_future().get();
}

// Submits requests on one reactor of a running group and waits for them; checks that done() runs once,
// on that reactor, never inside submit().
class Submitter {
public:
    explicit Submitter(net::Reactor& reactor) : _reactor(reactor) {}
    net::Reactor& reactor() { return _reactor; }

    int submit(backstore::Device& device, backstore::IoRequest& request,
               std::chrono::seconds limit = std::chrono::seconds(60)) {
        auto result = std::make_shared<std::promise<int>>();
        auto future = result->get_future();
        auto inside = std::make_shared<bool>(false);
        auto calls = std::make_shared<int>(0);
        net::Reactor* expected = &_reactor;
        request.done = [result, inside, calls, expected](int error) {
            EXPECT_FALSE(*inside) << "completion ran inside submit()";
            EXPECT_EQ(net::Reactor::current(), expected) << "completion on another reactor";
            if (++*calls == 1) {
                result->set_value(error);
            } else {
                ADD_FAILURE() << "completed twice";
            }
        };
        _reactor.post([&device, &request, inside] {
            *inside = true;
            device.submit(request);
            *inside = false;
        });
        if (future.wait_for(limit) != std::future_status::ready) {
            ADD_FAILURE() << "request never completed";
            return INT_MIN;
        }
        return future.get();
    }

    int write(backstore::Device& device, uint64_t offset, const std::vector<uint8_t>& data,
              bool fua = false) {
        Buffer buf = Buffer::allocate(data.size());
        std::memcpy(buf.data(), data.data(), data.size());
        size_t split = data.size() > 8192 ? (data.size() / 2) & ~size_t(4095) : data.size();
        iovec iov[2] = {{buf.data(), split}, {buf.data() + split, data.size() - split}};
        backstore::IoRequest request;
        request.op = backstore::IoOp::write;
        request.offset = offset;
        request.length = data.size();
        request.iov = iov;
        request.iovcnt = split == data.size() ? 1 : 2;
        request.fua = fua;
        return submit(device, request);
    }

    int read(backstore::Device& device, uint64_t offset, std::vector<uint8_t>& out) {
        Buffer buf = Buffer::allocate(out.size());
        std::memset(buf.data(), 0xcd, buf.size());
        size_t split = out.size() > 8192 ? (out.size() / 2) & ~size_t(4095) : out.size();
        iovec iov[2] = {{buf.data(), split}, {buf.data() + split, out.size() - split}};
        backstore::IoRequest request;
        request.op = backstore::IoOp::read;
        request.offset = offset;
        request.length = out.size();
        request.iov = iov;
        request.iovcnt = split == out.size() ? 1 : 2;
        int r = submit(device, request);
        std::memcpy(out.data(), buf.data(), out.size());
        return r;
    }

    int simple(backstore::Device& device, backstore::IoOp op, uint64_t offset = 0, uint64_t length = 0) {
        backstore::IoRequest request;
        request.op = op;
        request.offset = offset;
        request.length = length;
        return submit(device, request);
    }

private:
    net::Reactor& _reactor;
};

// An iSCSI target in this process (mgmt::Runtime on 127.0.0.1, a free port) with the given LUN specs.
class TestTarget {
public:
    static constexpr const char* default_iqn = "iqn.2026-11.org.ispace:volume-test";

    explicit TestTarget(std::vector<std::string> luns, std::string iqn = default_iqn, unsigned reactors = 2,
                        uint32_t max_transfer = 8u << 20)
        : _iqn(std::move(iqn)), _runtime(std::make_unique<mgmt::Runtime>()) {
        iscsi_target::ServerConfig config;
        config.reactors = reactors;
        config.negotiation = iscsi_target::default_target_negotiation();
        config.limits.max_transfer_bytes = max_transfer;
        iscsi_target::ConfigOverlay overlay;
        overlay.listen = {"127.0.0.1:0"};
        overlay.iqn = _iqn;
        overlay.luns = std::move(luns);
        auto applied = iscsi_target::apply_overlay(config, overlay, _runtime->backstores());
        EXPECT_TRUE(applied) << applied.error().message;
        auto served = _runtime->serve(config);
        EXPECT_TRUE(served) << served.error().message;
        _port = _runtime->target_server()->portal_endpoints().at(0).port();
    }
    ~TestTarget() { _runtime->stop(std::chrono::seconds(5)); }

    mgmt::Runtime& runtime() { return *_runtime; }
    uint16_t port() const { return _port; }
    const std::string& iqn() const { return _iqn; }
    std::string url(uint64_t lun) const {
        return "iscsi://127.0.0.1:" + std::to_string(_port) + "/" + _iqn + "/" + std::to_string(lun);
    }

private:
    std::string _iqn;
    std::unique_ptr<mgmt::Runtime> _runtime;
    uint16_t _port = 0;
};

// Waits up to `limit` for `cond`.
template <typename Cond>
bool eventually(Cond&& cond, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

class TempDir {
public:
    TempDir() {
        char name[] = "/tmp/ispace-volume-XXXXXX";
        EXPECT_NE(::mkdtemp(name), nullptr);
        _path = name;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(_path, ec);
    }
    std::string file(const std::string& name) const { return _path + "/" + name; }
    const std::string& path() const { return _path; }

private:
    std::string _path;
};

} // namespace ispace::volume::test
