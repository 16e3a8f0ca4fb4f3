// Test harness for the SCSI engine: a fake fabric that records what the engine asks of it, an in-test
// memory device whose I/O can be held, failed and inspected, and a real net::Reactor driven with
// run_once() on the test thread.
#pragma once

#include "backstore/device.hpp"
#include "common/bytes.hpp"
#include "net/reactor.hpp"
#include "scsi/cdb.hpp"
#include "scsi/lu.hpp"
#include "scsi/sense.hpp"
#include "scsi/target.hpp"
#include "scsi/task.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ispace::scsi::test {

// A RAM device that completes through Reactor::defer (as real devices do), with knobs for tests.
class TestDevice final : public backstore::Device {
public:
    struct Record {
        backstore::IoOp op;
        uint64_t offset;
        uint64_t length;
        bool fua;
    };

    TestDevice(uint64_t blocks, uint32_t block_size, backstore::Features features = {},
               std::string kind = "memory", uint64_t identity = 0x1234)
        : _geometry{block_size, blocks}, _features(features), _kind(std::move(kind)), _identity(identity) {
        // Large virtual devices (capacity tests) keep only the first few MiB.
        _data.resize(std::min<uint64_t>(_geometry.bytes(), 8u << 20), 0);
    }

    std::string_view kind() const override { return _kind; }
    std::string describe() const override { return "test:" + std::to_string(_geometry.bytes()); }
    backstore::Geometry geometry() const override { return _geometry; }
    backstore::Features features() const override { return _features; }
    uint64_t identity() const override { return _identity; }

    void submit(backstore::IoRequest& request) override {
        log.push_back({request.op, request.offset, request.length, request.fua});
        if (hold) {
            held.push_back(&request);
            return;
        }
        complete(request);
    }

    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        std::vector<backstore::Extent> e{{offset, length, true}};
        if (!extents.empty()) {
            e = extents;
        }
        net::Reactor::current()->defer(
            [done = std::move(done), e = std::move(e)]() mutable { done(std::move(e)); });
    }

    // Test devices resize at once (no file behind them) and tell their observers, as real ones do.
    Result<void> resize(uint64_t bytes) override {
        if (auto ok = check_resize(bytes); !ok) {
            return ok;
        }
        _geometry.block_count = bytes / _geometry.block_size;
        _data.resize(std::min<uint64_t>(bytes, 8u << 20), 0);
        notify(backstore::DeviceEvent::resized);
        return {};
    }
    void raise(backstore::DeviceEvent event) { notify(event); }

    // Completes the held requests (in order).
    void release_held() {
        auto requests = std::move(held);
        held.clear();
        for (auto* r : requests) {
            complete(*r);
        }
    }

    uint8_t* bytes(uint64_t offset) { return _data.data() + offset; }

    net::Reactor* home = nullptr;           // for completions released from outside the loop
    std::vector<backstore::Extent> extents; // what allocation_status() reports, when not empty
    bool hold = false;
    int fail_with = 0; // -errno for every following request
    std::vector<Record> log;
    std::vector<backstore::IoRequest*> held;

private:
    void complete(backstore::IoRequest& r) {
        int error = fail_with;
        if (!error && r.offset + r.length > _geometry.bytes()) {
            error = -EINVAL;
        }
        if (!error && (r.op == backstore::IoOp::unmap || r.op == backstore::IoOp::write_zeroes)) {
            // Both read back as zeroes afterwards.
            for (uint64_t at = r.offset; at < r.offset + r.length && at < _data.size(); ++at) {
                _data[at] = 0;
            }
        }
        if (!error && (r.op == backstore::IoOp::read || r.op == backstore::IoOp::write)) {
            uint64_t at = r.offset;
            for (unsigned i = 0; i < r.iovcnt; ++i) {
                auto* p = static_cast<uint8_t*>(r.iov[i].iov_base);
                size_t n = r.iov[i].iov_len;
                for (size_t k = 0; k < n; ++k, ++at) {
                    if (at >= _data.size()) {
                        if (r.op == backstore::IoOp::read) {
                            p[k] = 0;
                        }
                        continue;
                    }
                    if (r.op == backstore::IoOp::read) {
                        p[k] = _data[at];
                    } else {
                        _data[at] = p[k];
                    }
                }
            }
        }
        auto* request = &r;
        // release_held() runs on the test thread, outside the reactor loop.
        net::Reactor* reactor = net::Reactor::current() ? net::Reactor::current() : home;
        reactor->defer([request, error] {
            auto done = std::move(request->done);
            done(error);
        });
    }

    backstore::Geometry _geometry;
    backstore::Features _features;
    std::string _kind;
    uint64_t _identity;
    std::vector<uint8_t> _data;
};

struct TestTask : Task {
    std::vector<uint8_t> out; // what the initiator sends as data-out
    int completions = 0;
    int fetches = 0;
    int cancels = 0;
    uint32_t fetch_length = 0; // what the engine last asked for

    bool done() const { return completions > 0; }
    std::span<const uint8_t> received() const {
        size_t n = std::min<size_t>(transfer_length, expected_length);
        n = std::min(n, buffer.size());
        return {buffer.data(), n};
    }
    std::optional<Sense> sense_data() const { return parse_sense({sense.data(), sense_length}); }
};

class FakeFabric final : public Fabric {
public:
    void fetch_data_out(Task& task, uint32_t length) override {
        auto& t = static_cast<TestTask&>(task);
        ++t.fetches;
        t.fetch_length = length;
        if (hold_data_out) {
            waiting.push_back(&t);
            return;
        }
        deliver(t, length);
    }

    void cancel_data_out(Task& task) override {
        auto& t = static_cast<TestTask&>(task);
        ++t.cancels;
        std::erase(waiting, &t);
        t.reactor->defer([this, &t] { target->data_out_done(t, false); });
    }

    void complete(Task& task) override {
        auto& t = static_cast<TestTask&>(task);
        ++t.completions;
        completed.push_back(&t);
        events.push_back("complete " + std::to_string(t.tag));
    }

    // Brings min(length, EDTL) bytes of the initiator's data into the task, then tells the engine.
    void deliver(TestTask& t, uint32_t length) {
        uint32_t n = std::min<uint32_t>(length, t.expected_length);
        n = std::min<uint32_t>(n, uint32_t(t.out.size()));
        Buffer b = Buffer::allocate(n);
        if (n) {
            std::memcpy(b.data(), t.out.data(), n);
        }
        t.buffer = std::move(b);
        t.data_out_length = n;
        t.reactor->defer([this, &t] { target->data_out_done(t, true); });
    }

    void release_waiting() {
        auto tasks = std::move(waiting);
        waiting.clear();
        for (auto* t : tasks) {
            deliver(*t, t->fetch_length);
        }
    }

    TargetDevice* target = nullptr;
    bool hold_data_out = false;
    std::vector<TestTask*> waiting;
    std::vector<TestTask*> completed;
    std::vector<std::string> events; // order of completions (TMF tests add theirs)
};

inline std::vector<uint8_t> cdb_bytes(std::initializer_list<int> bytes) {
    std::vector<uint8_t> v;
    for (int b : bytes) {
        v.push_back(uint8_t(b));
    }
    return v;
}

// CDB builders for the block commands.
inline std::vector<uint8_t> rw10(uint8_t opcode, uint32_t lba, uint16_t blocks, uint8_t flags = 0) {
    std::vector<uint8_t> c(10, 0);
    c[0] = opcode;
    c[1] = flags;
    store_be32(&c[2], lba);
    store_be16(&c[7], blocks);
    return c;
}
inline std::vector<uint8_t> rw12(uint8_t opcode, uint32_t lba, uint32_t blocks, uint8_t flags = 0) {
    std::vector<uint8_t> c(12, 0);
    c[0] = opcode;
    c[1] = flags;
    store_be32(&c[2], lba);
    store_be32(&c[6], blocks);
    return c;
}
inline std::vector<uint8_t> rw16(uint8_t opcode, uint64_t lba, uint32_t blocks, uint8_t flags = 0) {
    std::vector<uint8_t> c(16, 0);
    c[0] = opcode;
    c[1] = flags;
    store_be64(&c[2], lba);
    store_be32(&c[10], blocks);
    return c;
}
inline std::vector<uint8_t> rw6(uint8_t opcode, uint32_t lba, uint8_t blocks) {
    std::vector<uint8_t> c(6, 0);
    c[0] = opcode;
    store_be24(&c[1], lba & 0x1fffff);
    c[4] = blocks;
    return c;
}

struct LuConfig {
    uint64_t blocks = 2048;
    uint32_t block_size = 512;
    backstore::Features features{};
    std::string kind = "memory";
    LuOptions options{};
};

class Harness {
public:
    static constexpr const char* target_name = "iqn.2026-11.org.ispace:test";

    explicit Harness(LuConfig config = {}, bool consume_power_on = true) : reactor(0), target(target_name) {
        fabric.target = &target;
        nexus = make_nexus(1, "iqn.1994-05.com.example:host1", "0x23d000000001");
        target.nexus_added(nexus);
        add_lu(0, config);
        if (consume_power_on) {
            clear_unit_attentions(0);
        }
    }

    ~Harness() {
        // Let deferred work (completions, detached flushes) run before the device goes away.
        drain();
    }

    static Nexus make_nexus(uint64_t id, const std::string& initiator, const std::string& isid) {
        Nexus n;
        n.id = id;
        n.initiator_name = initiator;
        n.initiator_port = initiator + ",i," + isid;
        n.target_name = target_name;
        n.target_port = std::string(target_name) + ",t,0x0001";
        n.relative_target_port = 1;
        n.target_port_group = 1;
        return n;
    }

    TestDevice& add_lu(uint64_t lun, LuConfig config = {}) {
        auto device =
            std::make_unique<TestDevice>(config.blocks, config.block_size, config.features, config.kind);
        TestDevice& ref = *device;
        ref.home = &reactor;
        auto r = target.add_lu(lun, std::move(device), config.options);
        EXPECT_TRUE(r.ok());
        devices[lun] = &ref;
        return ref;
    }

    TestDevice& device(uint64_t lun = 0) { return *devices[lun]; }
    LogicalUnit& lu(uint64_t lun = 0) { return *target.find_lu(lun); }

    std::unique_ptr<TestTask> make_task(const std::vector<uint8_t>& cdb, uint32_t expected_length = 0,
                                        bool data_in = true, uint64_t lun = 0, const Nexus* on = nullptr) {
        auto t = std::make_unique<TestTask>();
        t->fabric = &fabric;
        t->reactor = &reactor;
        t->nexus = on ? on : &nexus;
        t->lun = encode_lun(lun);
        t->tag = next_tag++;
        std::copy(cdb.begin(), cdb.end(), t->cdb.begin());
        t->cdb_length = uint16_t(std::max<size_t>(cdb.size(), 16));
        t->data_in = data_in && expected_length > 0;
        t->expected_length = expected_length;
        return t;
    }

    // A write-type task carrying `out` as its data-out (EDTL = out.size() unless given).
    std::unique_ptr<TestTask> make_write(const std::vector<uint8_t>& cdb, std::vector<uint8_t> out,
                                         std::optional<uint32_t> expected = std::nullopt, uint64_t lun = 0) {
        auto t = make_task(cdb, expected.value_or(uint32_t(out.size())), false, lun);
        t->data_out = t->expected_length > 0;
        t->out = std::move(out);
        return t;
    }

    // Calls submit() on the reactor, as a fabric does.
    void submit(TestTask& t) {
        reactor.post([this, &t] { target.submit(t); });
    }

    // Runs the reactor until `done` holds or the iteration budget is spent.
    bool run_until(const std::function<bool()>& done, int max_iterations = 300) {
        for (int i = 0; i < max_iterations; ++i) {
            if (done()) {
                return true;
            }
            reactor.run_once(std::chrono::milliseconds(10));
        }
        return done();
    }

    void drain() {
        for (int i = 0; i < 20; ++i) {
            reactor.run_once(std::chrono::milliseconds(0));
        }
    }

    // Submits and runs to completion.
    TestTask& exec(TestTask& t) {
        submit(t);
        EXPECT_TRUE(run_until([&] { return t.done(); })) << "task did not complete";
        return t;
    }
    std::unique_ptr<TestTask> exec(const std::vector<uint8_t>& cdb, uint32_t expected_length = 0,
                                   uint64_t lun = 0) {
        auto t = make_task(cdb, expected_length, true, lun);
        exec(*t);
        return t;
    }

    void clear_unit_attentions(uint64_t lun) {
        for (int i = 0; i < 8; ++i) {
            auto t = exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}), 0, lun);
            if (t->status == Status::good) {
                return;
            }
        }
    }

    net::Reactor reactor;
    TargetDevice target;
    FakeFabric fabric;
    Nexus nexus;
    std::map<uint64_t, TestDevice*> devices;
    uint64_t next_tag = 1;
};

// Assertion helpers.
inline ::testing::AssertionResult has_sense(const TestTask& t, SenseKey key, uint16_t code) {
    if (t.status != Status::check_condition) {
        return ::testing::AssertionFailure() << "status " << int(t.status) << ", expected CHECK CONDITION";
    }
    auto s = t.sense_data();
    if (!s) {
        return ::testing::AssertionFailure() << "unparseable sense (" << int(t.sense_length) << " bytes)";
    }
    if (s->key != key || s->code != code) {
        return ::testing::AssertionFailure() << "sense " << std::hex << int(s->key) << "/" << s->code
                                             << ", expected " << int(key) << "/" << code;
    }
    return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult invalid_field(const TestTask& t,
                                                std::optional<uint16_t> byte = std::nullopt,
                                                std::optional<uint8_t> bit = std::nullopt) {
    auto r = has_sense(t, SenseKey::illegal_request, asc::invalid_field_in_cdb);
    if (!r) {
        return r;
    }
    auto s = *t.sense_data();
    if (byte && (!s.field_pointer_valid || s.field_pointer != *byte)) {
        return ::testing::AssertionFailure() << "field pointer " << s.field_pointer << ", expected " << *byte;
    }
    if (bit && (!s.bit_pointer_valid || s.bit_pointer != *bit)) {
        return ::testing::AssertionFailure()
               << "bit pointer " << int(s.bit_pointer) << ", expected " << int(*bit);
    }
    return ::testing::AssertionSuccess();
}

inline std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) {
        v[i] = uint8_t(seed + i * 7 + (i >> 9));
    }
    return v;
}

} // namespace ispace::scsi::test
