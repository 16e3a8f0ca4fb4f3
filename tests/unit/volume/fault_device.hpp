// A backstore::Device wrapper that injects faults into a member: fail every request (EIO), stop
// answering (requests complete with EIO after `hang_for`, as a RemoteDevice's session gives up), answer
// slowly, or refuse writes with RESERVATION CONFLICT (EBADE). It counts what passes through, so that tests
// can measure what a resync moved. Reads of a range can be failed alone, and reads or writes of a range
// held back until the test lets them go (to force an interleaving).
#pragma once

#include "backstore/device.hpp"
#include "net/reactor.hpp"

#include <atomic>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace ispace::volume::test {

class FaultDevice final : public backstore::Device {
public:
    enum class Mode { ok, fail, hang, slow, conflict };

    explicit FaultDevice(std::shared_ptr<backstore::Device> inner) : _inner(std::move(inner)) {}

    void set(Mode mode) { _mode.store(mode); }
    Mode mode() const { return _mode.load(); }
    // Atomic: a test changes them while reactors read them (ThreadSanitizer saw it).
    std::atomic<std::chrono::milliseconds> hang_for{std::chrono::milliseconds(300)};
    std::atomic<std::chrono::milliseconds> slow_by{std::chrono::milliseconds(5)};

    std::atomic<uint64_t> bytes_written{0};
    std::atomic<uint64_t> bytes_read{0};
    std::atomic<uint64_t> writes{0}; // every write, metadata included
    std::atomic<uint64_t> failures{0};
    std::atomic<uint64_t> failed_reads{0}; // failed reads in [count_from, count_to): data, not label probes
    // Bytes counted only inside [count_from, count_to) (the data area, leaving labels and bitmap out).
    std::atomic<uint64_t> count_from{0};
    std::atomic<uint64_t> count_to{UINT64_MAX};
    void reset_counts() {
        bytes_written = 0;
        bytes_read = 0;
        writes = 0;
    }

    // Reads that start in [from, to) fail with EIO (the other requests pass).
    void fail_reads(uint64_t from, uint64_t to) {
        std::lock_guard lock(_hold_mutex);
        _fail_from = from;
        _fail_to = to;
    }
    // Reads that start in [from, to) wait (unanswered, unsent) until release_held().
    void hold_reads(uint64_t from, uint64_t to) {
        std::lock_guard lock(_hold_mutex);
        _hold_from = from;
        _hold_to = to;
    }
    // Writes that start in [from, to) wait the same way.
    void hold_writes(uint64_t from, uint64_t to) {
        std::lock_guard lock(_hold_mutex);
        _hold_writes_from = from;
        _hold_writes_to = to;
    }
    size_t held() const {
        std::lock_guard lock(_hold_mutex);
        return _held.size();
    }
    // Stops holding and sends what was held, each on the reactor it came from.
    void release_held() {
        std::vector<std::pair<net::Reactor*, backstore::IoRequest*>> held;
        {
            std::lock_guard lock(_hold_mutex);
            _hold_from = _hold_to = _hold_writes_from = _hold_writes_to = 0;
            held.swap(_held);
        }
        for (auto& h : held) {
            backstore::IoRequest* r = h.second;
            h.first->post([this, r] { _inner->submit(*r); });
        }
    }

    std::string_view kind() const override { return _inner->kind(); }
    std::string describe() const override { return "fault:" + _inner->describe(); }
    backstore::Geometry geometry() const override { return _inner->geometry(); }
    backstore::Features features() const override { return _inner->features(); }
    uint64_t identity() const override { return _inner->identity(); }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        _inner->allocation_status(offset, length, std::move(done));
    }

    void submit(backstore::IoRequest& request) override {
        net::Reactor* reactor = net::Reactor::current();
        assert(reactor);
        backstore::IoRequest* r = &request;
        Mode mode = _mode.load();
        if (mode == Mode::fail) {
            ++failures;
            if (request.op == backstore::IoOp::read && request.offset >= count_from.load() &&
                request.offset < count_to.load()) {
                ++failed_reads;
            }
            reactor->defer([r] { finish(r, -EIO); });
            return;
        }
        if (mode == Mode::hang) {
            ++failures;
            reactor->add_timer(hang_for.load(), [r] { finish(r, -EIO); });
            return;
        }
        if (mode == Mode::conflict && request.op != backstore::IoOp::read) {
            reactor->defer([r] { finish(r, -EBADE); });
            return;
        }
        bool counted = request.offset >= count_from.load() && request.offset < count_to.load();
        if (request.op == backstore::IoOp::write) {
            ++writes;
            bytes_written += counted ? request.length : 0;
            std::lock_guard lock(_hold_mutex);
            if (request.offset >= _hold_writes_from && request.offset < _hold_writes_to) {
                _held.emplace_back(reactor, r);
                return;
            }
        } else if (request.op == backstore::IoOp::read && counted) {
            bytes_read += request.length;
        }
        if (request.op == backstore::IoOp::read) {
            std::lock_guard lock(_hold_mutex);
            if (request.offset >= _hold_from && request.offset < _hold_to) {
                _held.emplace_back(reactor, r);
                return;
            }
            if (request.offset >= _fail_from && request.offset < _fail_to) {
                ++failures;
                reactor->defer([r] { finish(r, -EIO); });
                return;
            }
        }
        if (mode == Mode::slow) {
            reactor->add_timer(slow_by.load(), [this, r] { _inner->submit(*r); });
            return;
        }
        _inner->submit(request);
    }

private:
    static void finish(backstore::IoRequest* r, int error) {
        auto done = std::move(r->done);
        done(error);
    }
    std::shared_ptr<backstore::Device> _inner;
    std::atomic<Mode> _mode{Mode::ok};
    mutable std::mutex _hold_mutex;
    uint64_t _hold_from = 0;
    uint64_t _hold_to = 0;
    uint64_t _hold_writes_from = 0;
    uint64_t _hold_writes_to = 0;
    uint64_t _fail_from = 0;
    uint64_t _fail_to = 0;
    std::vector<std::pair<net::Reactor*, backstore::IoRequest*>> _held;
};

// A device that forwards to one the test keeps (so that the "same disk" can be opened again).
class SharedDevice final : public backstore::Device {
public:
    explicit SharedDevice(std::shared_ptr<backstore::Device> inner) : _inner(std::move(inner)) {}
    std::string_view kind() const override { return _inner->kind(); }
    std::string describe() const override { return _inner->describe(); }
    backstore::Geometry geometry() const override { return _inner->geometry(); }
    backstore::Features features() const override { return _inner->features(); }
    uint64_t identity() const override { return _inner->identity(); }
    void submit(backstore::IoRequest& request) override { _inner->submit(request); }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        _inner->allocation_status(offset, length, std::move(done));
    }

private:
    std::shared_ptr<backstore::Device> _inner;
};

} // namespace ispace::volume::test
