// COMPARE AND WRITE (SBC-3 5.2): the comparison, the miscompare offset, the limits and data-out
// checks libiscsi's CompareAndWrite suite exercises, and atomicity: against other commands on one
// reactor (deterministic, with held I/O) and against concurrent writers on several reactors.
#include "harness.hpp"

#include "backstore/memory/memory_device.hpp"
#include "net/reactor.hpp"
#include "scsi/sbc.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

std::vector<uint8_t> caw(uint64_t lba, uint8_t blocks, uint8_t flags = 0) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::compare_and_write;
    c[1] = flags;
    store_be64(&c[2], lba);
    c[13] = blocks;
    return c;
}

std::vector<uint8_t> filled(size_t n, uint8_t v) {
    return std::vector<uint8_t>(n, v);
}

std::vector<uint8_t> concat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

} // namespace

TEST(CompareAndWrite, WritesWhenTheBlocksMatch) {
    Harness h;
    std::memset(h.device().bytes(5 * 512), 'A', 2 * 512);
    auto t = h.make_write(caw(5, 2), concat(filled(1024, 'A'), filled(1024, 'B')));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 2048u);
    EXPECT_EQ(*h.device().bytes(5 * 512), 'B');
    EXPECT_EQ(*h.device().bytes(7 * 512 - 1), 'B');
    EXPECT_EQ(*h.device().bytes(7 * 512), 0) << "nothing past the range";
    ASSERT_EQ(h.device().log.size(), 2u);
    EXPECT_EQ(h.device().log[0].op, IoOp::read);
    EXPECT_EQ(h.device().log[1].op, IoOp::write);
    EXPECT_EQ(h.device().log[1].offset, 5u * 512);
    EXPECT_EQ(h.device().log[1].length, 1024u);
}

TEST(CompareAndWrite, MiscompareReportsTheOffsetAndWritesNothing) {
    Harness h;
    std::memset(h.device().bytes(0), 'A', 3 * 512);
    auto verify = filled(3 * 512, 'A');
    verify[3 * 512 - 27] = 'C'; // libiscsi: byte 27 from the end
    auto t = h.make_write(caw(0, 3), concat(verify, filled(3 * 512, 'B')));
    h.exec(*t);
    ASSERT_TRUE(has_sense(*t, SenseKey::miscompare, asc::miscompare_during_verify));
    auto s = *t->sense_data();
    EXPECT_TRUE(s.information_valid);
    EXPECT_EQ(s.information, 3u * 512 - 27);
    EXPECT_EQ(*h.device().bytes(0), 'A');
    ASSERT_EQ(h.device().log.size(), 1u) << "read only";
}

TEST(CompareAndWrite, Limits) {
    Harness h;
    uint8_t max = sbc::limits(h.lu()).max_compare_and_write;
    EXPECT_EQ(max, 255);
    // Block Limits VPD byte 5 says the same.
    auto vpd = h.exec(cdb_bytes({0x12, 1, 0xb0, 0, 64, 0}), 64);
    ASSERT_EQ(vpd->status, Status::good);
    EXPECT_EQ(vpd->received()[5], max);

    // Zero blocks: nothing read, compared or written, GOOD even with data-out attached.
    auto t = h.make_write(caw(0, 0), filled(512, 1));
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_TRUE(h.device().log.empty());

    // 256 blocks wrap the one-byte field to 0: the data-out gives it away, INVALID FIELD IN CDB.
    t = h.make_write(caw(0, 0), filled(2 * 256 * 512, 1));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 13));

    // Beyond the end of the medium.
    t = h.make_write(caw(2047, 2), filled(2048, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));

    // Data-out other than both instances of the blocks (libiscsi InvalidDataOutSize).
    t = h.make_write(caw(0, 1), filled(4 * 512, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_command_iu));
    t = h.make_write(caw(0, 3), filled(4 * 512, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_command_iu));
    EXPECT_TRUE(h.device().log.empty());

    // No protection information: WRPROTECT is refused by the usage mask; DPO and FUA are accepted.
    t = h.make_write(caw(0, 1, 0x20), filled(1024, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 1, 5));
}

TEST(CompareAndWrite, FuaWritesThrough) {
    Harness h;
    auto t = h.make_write(caw(0, 1, 0x08), filled(1024, 0));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 2u);
    EXPECT_TRUE(h.device().log[1].fua);
}

TEST(CompareAndWrite, WriteProtectedIsDataProtect) {
    LuConfig config;
    config.features.read_only = true;
    Harness h(config);
    auto t = h.make_write(caw(0, 1), filled(1024, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::data_protect, asc::write_protected));
}

// Between COMPARE AND WRITE's read and its write, nothing that overlaps may run: a WRITE and a READ
// of the same block wait; a WRITE elsewhere does not.
TEST(CompareAndWrite, OverlappingCommandsWaitForIt) {
    Harness h;
    h.device().hold = true;
    auto c = h.make_write(caw(10, 1), filled(1024, 0));
    h.submit(*c);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; })) << "the compare read";

    auto w = h.make_write(rw10(op::write_10, 10, 1), filled(512, 'W'));
    auto r = h.make_task(rw10(op::read_10, 10, 1), 512);
    auto elsewhere = h.make_write(rw10(op::write_10, 20, 1), filled(512, 'E'));
    h.submit(*w);
    h.submit(*r);
    h.submit(*elsewhere);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 2; }));
    h.drain();
    ASSERT_EQ(h.device().held.size(), 2u) << "only the non-overlapping write got through";
    EXPECT_EQ(h.device().log[1].offset, 20u * 512);

    h.device().release_held(); // the compare read and the other write
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    h.drain();
    ASSERT_EQ(h.device().held.size(), 1u);
    EXPECT_EQ(h.device().log.back().op, IoOp::write) << "COMPARE AND WRITE's own write";
    EXPECT_EQ(h.device().log.back().offset, 10u * 512);
    EXPECT_FALSE(w->done());
    EXPECT_FALSE(r->done());

    // Its write done, the waiting commands go.
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return c->done() && w->done() && r->done() && elsewhere->done(); }));
    EXPECT_EQ(c->status, Status::good);
    EXPECT_EQ(w->status, Status::good);
    EXPECT_EQ(*h.device().bytes(10 * 512), 'W') << "the WRITE came after the COMPARE AND WRITE";
}

// And the other way round: a COMPARE AND WRITE waits for a WRITE that was already in flight.
TEST(CompareAndWrite, WaitsForWritesInFlight) {
    Harness h;
    h.device().hold = true;
    auto w = h.make_write(rw10(op::write_10, 10, 1), filled(512, 'A'));
    h.submit(*w);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    auto c = h.make_write(caw(10, 1), concat(filled(512, 'A'), filled(512, 'B')));
    h.submit(*c);
    h.drain();
    EXPECT_EQ(h.device().held.size(), 1u) << "the compare waits for the write in flight";
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return c->done(); }));
    EXPECT_EQ(c->status, Status::good) << "it compared against the finished write";
    EXPECT_EQ(*h.device().bytes(10 * 512), 'B');
}

TEST(CompareAndWrite, AbortWhileWaitingForTheRange) {
    Harness h;
    h.device().hold = true;
    auto first = h.make_write(caw(3, 1), filled(1024, 0));
    h.submit(*first);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    auto second = h.make_write(caw(3, 1), filled(1024, 0));
    h.submit(*second);
    h.drain();
    bool answered = false;
    h.target.abort_task(h.nexus, encode_lun(0), second->tag, [&](TmfResult) { answered = true; });
    h.drain();
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return answered && first->done() && second->done(); }));
    EXPECT_TRUE(second->aborted);
    EXPECT_EQ(first->status, Status::good);
    EXPECT_EQ(h.lu().block_state().range_lock.queued(), 0u);
    EXPECT_EQ(h.lu().block_state().range_lock.fast_holders(), 0u);
}

// --- concurrency across reactors ----------------------------------------------------------------
//
// Several reactors each increment a counter kept in block 0 with read-then-COMPARE AND WRITE (retrying
// on a miscompare); another reactor keeps reading block 0 and writing block 1. With COMPARE AND WRITE
// atomic, no increment is lost, and no read ever sees a half-written block 0.

namespace {

constexpr uint32_t bs = 512;

uint64_t counter_in(const uint8_t* block) {
    uint64_t v = 0;
    std::memcpy(&v, block, sizeof(v));
    return v;
}

std::vector<uint8_t> counter_block(uint64_t v) {
    std::vector<uint8_t> b(bs);
    for (size_t i = 0; i < bs; i += sizeof(v)) {
        std::memcpy(&b[i], &v, sizeof(v));
    }
    return b;
}

bool uniform(const uint8_t* block) {
    for (size_t i = sizeof(uint64_t); i < bs; i += sizeof(uint64_t)) {
        if (std::memcmp(block, block + i, sizeof(uint64_t)) != 0) {
            return false;
        }
    }
    return true;
}

// The memory backstore, with every completion held back a little (on the submitting reactor's
// timer): COMPARE AND WRITE's read and write are then far enough apart for the other reactors to
// collide with it, which without the range lock loses increments.
class DelayingDevice final : public backstore::Device {
public:
    explicit DelayingDevice(uint64_t bytes) : _inner(bytes, bs) {}
    std::string_view kind() const override { return "memory"; }
    std::string describe() const override { return "delaying " + _inner.describe(); }
    backstore::Geometry geometry() const override { return _inner.geometry(); }
    backstore::Features features() const override { return _inner.features(); }
    uint64_t identity() const override { return 77; }
    void submit(backstore::IoRequest& request) override {
        net::Reactor* reactor = net::Reactor::current();
        request.done = [reactor, done = std::move(request.done)](int error) mutable {
            reactor->add_timer(std::chrono::microseconds(200),
                               [done = std::move(done), error]() mutable { done(error); });
        };
        _inner.submit(request);
    }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        _inner.allocation_status(offset, length, std::move(done));
    }

private:
    backstore::MemoryDevice _inner;
};

class Client;

// Fabric for tasks on many reactors: everything happens on the task's own reactor.
class ThreadFabric final : public Fabric {
public:
    void fetch_data_out(Task& task, uint32_t length) override;
    void cancel_data_out(Task& task) override {
        task.reactor->defer([this, &task] { target->data_out_done(task, false); });
    }
    void complete(Task& task) override;
    TargetDevice* target = nullptr;
};

struct ClientTask : Task {
    Client* client = nullptr;
    std::vector<uint8_t> out;
};

// One initiator on one reactor, one command at a time.
class Client {
public:
    enum class Role { incrementer, reader_writer };

    Client(TargetDevice& target, ThreadFabric& fabric, net::Reactor& reactor, const Nexus& nexus, Role role,
           int goal)
        : _target(target), _reactor(reactor), _nexus(nexus), _role(role), _goal(goal) {
        _task.client = this;
        _task.fabric = &fabric;
        _task.reactor = &reactor;
        _task.nexus = &_nexus;
        _task.lun = encode_lun(0);
    }

    void start() {
        _reactor.post([this] { next(); });
    }

    void completed() {
        ++commands;
        if (_task.status == Status::check_condition) {
            auto s = parse_sense({_task.sense.data(), _task.sense_length});
            if (s && s->key == SenseKey::unit_attention) {
                send_again();
                return;
            }
            if (s && s->key == SenseKey::miscompare && _step == Step::compare_and_write) {
                ++miscompares;
                _step = Step::idle;
                next();
                return;
            }
            ++errors;
            finished = true;
            return;
        }
        switch (_step) {
        case Step::read_counter: {
            const uint8_t* d = _task.buffer.data();
            if (!uniform(d)) {
                ++torn_reads;
            }
            _seen = counter_in(d);
            if (_role == Role::incrementer) {
                auto data = counter_block(_seen);
                auto update = counter_block(_seen + 1);
                data.insert(data.end(), update.begin(), update.end());
                send(Step::compare_and_write, caw(0, 1), std::move(data));
                return;
            }
            send(Step::write_other, rw10(op::write_10, 1, 1), counter_block(_done));
            return;
        }
        case Step::compare_and_write:
        case Step::write_other:
            ++_done;
            ++successes;
            _step = Step::idle;
            next();
            return;
        case Step::idle:
            break;
        }
    }

    std::atomic<bool> finished{false};
    std::atomic<int> successes{0};
    std::atomic<int> miscompares{0};
    std::atomic<int> torn_reads{0};
    std::atomic<int> errors{0};
    int commands = 0;
    ClientTask _task;

private:
    enum class Step { idle, read_counter, compare_and_write, write_other };

    void next() {
        if (_done >= _goal) {
            finished = true;
            return;
        }
        send(Step::read_counter, rw10(op::read_10, 0, 1), {});
    }

    void send(Step step, std::vector<uint8_t> cdb, std::vector<uint8_t> out) {
        _step = step;
        _cdb = std::move(cdb);
        _out = std::move(out);
        send_again();
    }

    void send_again() {
        _task.cdb.fill(0);
        std::copy(_cdb.begin(), _cdb.end(), _task.cdb.begin());
        _task.cdb_length = 16;
        _task.tag = ++_tag;
        _task.out = _out;
        _task.data_out = !_out.empty();
        _task.data_in = _out.empty();
        _task.expected_length = _out.empty() ? bs : uint32_t(_out.size());
        _task.data_out_length = 0;
        _task.buffer.reset();
        // Not inside the previous task's completion: a fabric submits from its own event handling.
        _reactor.defer([this] { _target.submit(_task); });
    }

    TargetDevice& _target;
    net::Reactor& _reactor;
    Nexus _nexus;
    Role _role;
    int _goal;
    int _done = 0;
    uint64_t _seen = 0;
    uint64_t _tag = 0;
    Step _step = Step::idle;
    std::vector<uint8_t> _cdb;
    std::vector<uint8_t> _out;
};

void ThreadFabric::fetch_data_out(Task& task, uint32_t length) {
    auto& t = static_cast<ClientTask&>(task);
    uint32_t n = std::min<uint32_t>({length, t.expected_length, uint32_t(t.out.size())});
    t.buffer = Buffer::allocate(n);
    std::memcpy(t.buffer.data(), t.out.data(), n);
    t.data_out_length = n;
    t.reactor->defer([this, &t] { target->data_out_done(t, true); });
}

void ThreadFabric::complete(Task& task) {
    static_cast<ClientTask&>(task).client->completed();
}

} // namespace

TEST(CompareAndWrite, AtomicAgainstConcurrentWritersOnSeveralReactors) {
    constexpr unsigned incrementers = 3;
    constexpr int increments = 200;
    net::ReactorGroup reactors(incrementers + 1);
    TargetDevice target("iqn.2026-11.org.ispace:caw");
    ThreadFabric fabric;
    fabric.target = &target;
    // The memory backstore is thread-safe and completes on the submitting reactor.
    ASSERT_TRUE(target.add_lu(0, std::make_unique<DelayingDevice>(1u << 20)).ok());

    std::vector<std::unique_ptr<Client>> clients;
    for (unsigned i = 0; i <= incrementers; ++i) {
        Nexus n = Harness::make_nexus(i + 1, "iqn.1994-05.com.example:host" + std::to_string(i),
                                      "0x23d00000000" + std::to_string(i));
        target.nexus_added(n);
        auto role = i < incrementers ? Client::Role::incrementer : Client::Role::reader_writer;
        clients.push_back(std::make_unique<Client>(target, fabric, reactors.at(i), n, role,
                                                   role == Client::Role::incrementer ? increments : 400));
    }
    reactors.start();
    for (auto& c : clients) {
        c->start();
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    auto all_done = [&] {
        for (auto& c : clients) {
            if (!c->finished) {
                return false;
            }
        }
        return true;
    };
    while (!all_done() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(all_done()) << "clients did not finish";
    reactors.stop();
    reactors.join();

    int total = 0;
    int miscompares = 0;
    for (unsigned i = 0; i < incrementers; ++i) {
        EXPECT_EQ(clients[i]->errors, 0);
        EXPECT_EQ(clients[i]->successes, increments);
        EXPECT_EQ(clients[i]->torn_reads, 0);
        total += clients[i]->successes;
        miscompares += clients[i]->miscompares;
    }
    EXPECT_EQ(clients[incrementers]->errors, 0);
    EXPECT_EQ(clients[incrementers]->torn_reads, 0) << "a read saw half of a COMPARE AND WRITE";

    // Read block 0 back through a fresh reactor on this thread.
    net::Reactor reader(99);
    Buffer block = Buffer::allocate(bs);
    backstore::IoRequest io;
    iovec iov{block.data(), bs};
    io.op = IoOp::read;
    io.offset = 0;
    io.length = bs;
    io.iov = &iov;
    io.iovcnt = 1;
    bool done = false;
    io.done = [&](int error) {
        EXPECT_EQ(error, 0);
        done = true;
    };
    reader.post([&] { target.find_lu(0)->device().submit(io); });
    for (int i = 0; i < 100 && !done; ++i) {
        reader.run_once(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(done);
    EXPECT_TRUE(uniform(block.data()));
    EXPECT_EQ(counter_in(block.data()), uint64_t(total)) << "an increment was lost";
    // The test only means something if the incrementers really collided.
    EXPECT_GT(miscompares, 0);
    RecordProperty("miscompares", miscompares);
    std::printf("%d increments by %u reactors, %d miscompares on the way\n", total, incrementers,
                miscompares);
}
