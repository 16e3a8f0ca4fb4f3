// Helpers for backstore tests: a reactor to submit on, synchronous wrappers, a shadow-checked random
// workload, temporary directories.
#pragma once

#include "backstore/device.hpp"
#include "backstore/registry.hpp"
#include "common/buffer.hpp"
#include "net/reactor.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace ispace::backstore::test {

class TempDir {
public:
    TempDir() {
        char name[] = "/tmp/ispace-backstore-XXXXXX";
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

inline std::vector<uint8_t> random_bytes(size_t n, std::mt19937_64& rng) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t x = rng();
        std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
    }
    return v;
}

// Drives a device from a hand-run reactor, one request at a time, and checks the completion contract:
// done() runs on the submitting reactor, never inside submit(), exactly once.
class Harness {
public:
    explicit Harness(bool use_io_uring = true) : _reactor(0, options(use_io_uring)) {}

    net::Reactor& reactor() { return _reactor; }

    int submit(Device& device, IoRequest& request) {
        int result = INT_MIN;
        int calls = 0;
        bool inside = false;
        request.done = [&](int error) {
            EXPECT_FALSE(inside) << "completion ran inside submit()";
            EXPECT_EQ(net::Reactor::current(), &_reactor);
            ++calls;
            result = error;
        };
        run_on([&] {
            inside = true;
            device.submit(request);
            inside = false;
        });
        EXPECT_TRUE(run_until([&] { return calls > 0; })) << "request never completed";
        _reactor.run_once(std::chrono::milliseconds(0));
        EXPECT_EQ(calls, 1);
        return result;
    }

    int write(Device& device, uint64_t offset, const std::vector<uint8_t>& data, bool fua = false) {
        Buffer buf = Buffer::allocate(data.size());
        if (!data.empty()) {
            std::memcpy(buf.data(), data.data(), data.size());
        }
        // Two iovecs when possible, so multi-segment requests are covered too.
        size_t split = data.size() > 4096 ? (data.size() / 2) & ~size_t(4095) : data.size();
        iovec iov[2] = {{buf.data(), split}, {buf.data() + split, data.size() - split}};
        IoRequest request;
        request.op = IoOp::write;
        request.offset = offset;
        request.length = data.size();
        request.iov = iov;
        request.iovcnt = split == data.size() ? 1 : 2;
        request.fua = fua;
        return submit(device, request);
    }

    int read(Device& device, uint64_t offset, std::vector<uint8_t>& out) {
        Buffer buf = Buffer::allocate(out.size());
        std::memset(buf.data(), 0xcd, buf.size()); // garbage, so "reads zeroes" is really checked
        iovec iov{buf.data(), out.size()};
        IoRequest request;
        request.op = IoOp::read;
        request.offset = offset;
        request.length = out.size();
        request.iov = &iov;
        request.iovcnt = 1;
        int r = submit(device, request);
        if (!out.empty()) {
            std::memcpy(out.data(), buf.data(), out.size());
        }
        return r;
    }

    int simple(Device& device, IoOp op, uint64_t offset = 0, uint64_t length = 0) {
        IoRequest request;
        request.op = op;
        request.offset = offset;
        request.length = length;
        return submit(device, request);
    }

    Result<std::vector<Extent>> allocation(Device& device, uint64_t offset, uint64_t length) {
        std::optional<Result<std::vector<Extent>>> got;
        bool inside = false;
        run_on([&] {
            inside = true;
            device.allocation_status(offset, length, [&](Result<std::vector<Extent>> r) {
                EXPECT_FALSE(inside);
                got.emplace(std::move(r));
            });
            inside = false;
        });
        EXPECT_TRUE(run_until([&] { return got.has_value(); }));
        return std::move(*got);
    }

    // Random writes (some FUA) of 1..max_blocks blocks at random block offsets within the first
    // `region` bytes, checked against a shadow copy by random reads and a final full read.
    void random_round_trip(Device& device, uint64_t region, int writes, uint64_t seed,
                           unsigned max_blocks = 64) {
        std::mt19937_64 rng(seed);
        uint32_t bs = device.geometry().block_size;
        region = std::min(region, device.geometry().bytes());
        uint64_t blocks = region / bs;
        std::vector<uint8_t> shadow(region);
        std::vector<uint8_t> initial(region);
        ASSERT_EQ(read(device, 0, initial), 0);
        shadow = initial;
        for (int i = 0; i < writes; ++i) {
            uint64_t count = 1 + rng() % std::min<uint64_t>(max_blocks, blocks);
            uint64_t first = rng() % (blocks - count + 1);
            auto data = random_bytes(count * bs, rng);
            ASSERT_EQ(write(device, first * bs, data, rng() % 4 == 0), 0) << "write " << i;
            std::memcpy(shadow.data() + first * bs, data.data(), data.size());
            if (rng() % 3 == 0) {
                uint64_t rcount = 1 + rng() % std::min<uint64_t>(max_blocks, blocks);
                uint64_t rfirst = rng() % (blocks - rcount + 1);
                std::vector<uint8_t> back(rcount * bs);
                ASSERT_EQ(read(device, rfirst * bs, back), 0);
                ASSERT_EQ(std::memcmp(back.data(), shadow.data() + rfirst * bs, back.size()), 0)
                    << "read after write " << i << " at block " << rfirst;
            }
        }
        std::vector<uint8_t> all(region);
        ASSERT_EQ(read(device, 0, all), 0);
        ASSERT_TRUE(all == shadow);
    }

    bool run_until(const std::function<bool()>& done) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            _reactor.run_once(std::chrono::milliseconds(10));
        }
        return true;
    }

    void run_on(const std::function<void()>& fn) {
        bool ran = false;
        _reactor.post([&] {
            fn();
            ran = true;
        });
        run_until([&] { return ran; });
    }

private:
    static net::ReactorOptions options(bool use_io_uring) {
        net::ReactorOptions o;
        o.use_io_uring = use_io_uring;
        return o;
    }

    net::Reactor _reactor;
};

inline bool all_zero(const std::vector<uint8_t>& v) {
    return std::all_of(v.begin(), v.end(), [](uint8_t b) { return b == 0; });
}

// The built-in kinds, as ispaced registers them.
inline const Registry& builtin_registry() {
    static const Registry* registry = [] {
        auto* r = new Registry();
        register_builtin_kinds(*r);
        return r;
    }();
    return *registry;
}

inline std::unique_ptr<Device> open_spec(const std::string& text) {
    auto spec = builtin_registry().parse(text);
    EXPECT_TRUE(spec.ok()) << spec.error().message;
    if (!spec.ok()) {
        return nullptr;
    }
    auto device = (*spec)->open();
    EXPECT_TRUE(device.ok()) << device.error().message;
    if (!device.ok()) {
        return nullptr;
    }
    return std::move(*device);
}

inline std::string open_error(const std::string& text) {
    auto spec = builtin_registry().parse(text);
    if (!spec.ok()) {
        return "spec: " + spec.error().message;
    }
    auto device = (*spec)->open();
    return device.ok() ? std::string("(opened)") : device.error().message;
}

} // namespace ispace::backstore::test
