// MC/S under load: Session::add_connection and remove_connection against the fake target.
#include "harness.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

namespace ispace::initiator::test {
namespace {

constexpr size_t block = 512;
constexpr uint32_t blocks_per_write = 8;

// Writes `n` distinct 4 KiB blocks asynchronously.
void submit_writes(Session& s, Completions& done, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        s.submit(make_write(0, i * blocks_per_write, blocks_per_write, block,
                            pattern(blocks_per_write * block, uint8_t(i))),
                 done.make(i));
    }
}

void expect_all_ok_and_on_disk(const Completions& done, const FakeTarget& target, size_t n) {
    auto disk = target.disk();
    for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(done.at(i).ok()) << i << ": " << done.at(i).describe();
        Buffer expect = pattern(blocks_per_write * block, uint8_t(i));
        ASSERT_EQ(0, std::memcmp(disk.data() + i * blocks_per_write * block, expect.data(), expect.size()))
            << "write " << i;
    }
}

bool has_cid(const SessionInfo& info, uint16_t cid) {
    return std::find(info.connection_ids.begin(), info.connection_ids.end(), cid) !=
           info.connection_ids.end();
}

TEST(InitiatorMembership, AddAndRemoveConnectionsOfALiveSession) {
    Harness h;
    SessionOptions so = h.options();
    so.connections = 1;
    so.max_connections = 4;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    auto added = s->add_connection();
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(*added, 1u) << "the lowest CID not in use";
    auto info = s->info();
    EXPECT_EQ(info.connections, 2u);
    EXPECT_TRUE(has_cid(info, 1));
    EXPECT_EQ(info.tsih, s->info().tsih);
    EXPECT_TRUE(wait_for([&] { return h.target->live_connections() == 2; }));
    EXPECT_EQ(h.target->leading_logins.load(), 1u) << "joined the session, not a new one";

    Completions done;
    constexpr size_t n = 128;
    submit_writes(*s, done, n);
    ASSERT_TRUE(done.wait(n));
    expect_all_ok_and_on_disk(done, *h.target, n);
    auto per = h.target->commands_per_cid();
    EXPECT_GT(per[0], 0u);
    EXPECT_GT(per[1], 0u) << "new commands are dispatched over the added connection too";

    auto removed = s->remove_connection(1);
    ASSERT_TRUE(removed) << removed.error().message;
    info = s->info();
    EXPECT_EQ(info.connections, 1u);
    EXPECT_FALSE(has_cid(info, 1));
    EXPECT_EQ(h.target->connection_logouts.load(), 1u) << "Logout with reason \"close the connection\"";
    EXPECT_TRUE(wait_for([&] { return h.target->live_connections() == 1; }));
    uint64_t on_removed = h.target->commands_per_cid()[1];
    ASSERT_TRUE(s->write(0, 0, 1, block, std::vector<uint8_t>(block, 0x5a)));
    EXPECT_EQ(h.target->commands_per_cid()[1], on_removed) << "nothing goes to a removed connection";

    // The CID is free again.
    added = s->add_connection();
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(*added, 1u);
    info = s->info();
    EXPECT_EQ(info.connections, 2u);
    EXPECT_EQ(info.connections_added, 2u);
    EXPECT_EQ(info.connections_removed, 1u);
    EXPECT_EQ(info.reconnects, 0u);
    EXPECT_EQ(h.target->reinstatements.load(), 0u);
    s->close();
    EXPECT_EQ(h.target->logouts.load(), 2u) << "one per removal, one for the session";
}

TEST(InitiatorMembership, RemoveWhileCommandsAreInFlightCompletesEveryCommand) {
    FakeTargetOptions o;
    o.command_delay = 2ms; // commands stay in flight on every connection
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 3;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Completions done;
    constexpr size_t n = 300;
    submit_writes(*s, done, n);
    ASSERT_TRUE(wait_for([&] { return h.target->commands_per_cid()[1] >= 5; }));
    ASSERT_LT(done.done(), n) << "the test needs commands still in flight";
    auto removed = s->remove_connection(1);
    ASSERT_TRUE(removed) << removed.error().message;
    // Returned once its commands were done: none can have come on it since, nor will.
    uint64_t on_removed = h.target->commands_per_cid()[1];
    EXPECT_GT(on_removed, 0u);
    ASSERT_TRUE(done.wait(n));
    expect_all_ok_and_on_disk(done, *h.target, n);
    EXPECT_EQ(h.target->commands_per_cid()[1], on_removed);
    auto info = s->info();
    EXPECT_EQ(info.connections, 2u);
    EXPECT_EQ(info.connections_removed, 1u);
    EXPECT_EQ(info.reconnects, 0u);
    EXPECT_EQ(info.retries, 0u) << "no command was sent twice";
    EXPECT_EQ(h.target->window_violations.load(), 0u);
    EXPECT_EQ(h.target->connection_logouts.load(), 1u);
}

TEST(InitiatorMembership, RemovingTheLastConnectionOrAnUnknownOneIsRefused) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    auto r = s->remove_connection(0);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EBUSY);
    EXPECT_NE(r.error().message.find("last"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("close"), std::string::npos) << r.error().message;
    r = s->remove_connection(7);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT) << r.error().message;
    EXPECT_EQ(h.target->logouts.load(), 0u);
    EXPECT_TRUE(s->test_unit_ready(0)) << "the session goes on";
    EXPECT_EQ(s->info().connections_removed, 0u);
}

TEST(InitiatorMembership, AddBeyondMaxConnectionsIsRefusedCleanly) {
    FakeTargetOptions o;
    o.max_connections = 2;
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 2;
    so.max_connections = 8; // the target's 2 wins the negotiation
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    uint64_t logins = h.target->logins.load();
    auto added = s->add_connection();
    ASSERT_FALSE(added);
    EXPECT_EQ(added.error().code, EBUSY);
    EXPECT_NE(added.error().message.find("MaxConnections is 2"), std::string::npos) << added.error().message;
    EXPECT_EQ(h.target->logins.load(), logins) << "refused without trying the target";
    EXPECT_EQ(s->info().connections, 2u);
    ASSERT_TRUE(s->test_unit_ready(0));
}

TEST(InitiatorMembership, TargetRefusingTheJoinIsReturnedAndTheSessionGoesOn) {
    FakeTargetOptions o;
    o.max_connections = 4;
    o.join_limit = 2; // says 4, takes 2
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 2;
    so.max_connections = 4;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    auto added = s->add_connection();
    ASSERT_FALSE(added);
    EXPECT_NE(added.error().message.find("could not join"), std::string::npos) << added.error().message;
    auto info = s->info();
    EXPECT_EQ(info.connections, 2u);
    EXPECT_EQ(info.connections_added, 0u);
    EXPECT_EQ(info.reconnects, 0u);
    Completions done;
    submit_writes(*s, done, 32);
    ASSERT_TRUE(done.wait(32));
    expect_all_ok_and_on_disk(done, *h.target, 32);
    // A removal makes room on the target; the refused connection held none.
    ASSERT_TRUE(s->remove_connection(1));
    added = s->add_connection();
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(*added, 1u);
}

TEST(InitiatorMembership, SessionReinstatedDuringARemovalComesBackWithoutIt) {
    FakeTargetOptions o;
    o.command_delay = 2ms;
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 2;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Completions done;
    constexpr size_t n = 200;
    submit_writes(*s, done, n);
    ASSERT_TRUE(wait_for([&] { return h.target->commands_per_cid()[1] >= 5; }));
    std::thread cut([&] {
        std::this_thread::sleep_for(5ms);
        h.target->drop_all_connections(); // the target restarts while connection 1 drains
    });
    auto removed = s->remove_connection(1);
    cut.join();
    EXPECT_TRUE(removed) << removed.error().message;
    ASSERT_TRUE(done.wait(n));
    expect_all_ok_and_on_disk(done, *h.target, n);
    ASSERT_TRUE(wait_for([&] { return s->info().connections == 1 && h.target->live_connections() == 1; }))
        << s->info().connections << " connection(s)";
    EXPECT_EQ(s->info().connections_removed, 1u);
}

TEST(InitiatorMembership, CloseDuringARemovalWaitsForTheCommandsAndAnswersTheRemoval) {
    FakeTargetOptions o;
    o.command_delay = 2ms;
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 2;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Completions done;
    constexpr size_t n = 100;
    submit_writes(*s, done, n);
    ASSERT_TRUE(wait_for([&] { return h.target->commands_per_cid()[1] >= 3; }));
    std::optional<Result<void>> removed;
    std::thread remover([&] { removed.emplace(s->remove_connection(1)); });
    s->close();
    remover.join();
    ASSERT_EQ(done.done(), n) << "close waits for every command";
    expect_all_ok_and_on_disk(done, *h.target, n);
    ASSERT_TRUE(removed.has_value());
    // Either the removal finished before the close began, or the close answered it.
    if (!*removed) {
        EXPECT_EQ(removed->error().code, ESHUTDOWN) << removed->error().message;
    }
    auto again = s->remove_connection(0);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ESHUTDOWN);
    EXPECT_FALSE(s->add_connection());
}

// Adds and removes from one thread while two others submit: every command completes with its data,
// every change is counted.
TEST(InitiatorMembership, ChurnWhileThreadsSubmit) {
    Harness h;
    SessionOptions so = h.options();
    so.connections = 3;
    so.max_connections = 4;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> failures{0};
    std::atomic<uint64_t> ios{0};
    auto submitter = [&](uint64_t first_lba) {
        std::vector<uint8_t> out(4096);
        std::vector<uint8_t> in(4096);
        for (uint64_t i = 0; !stop.load(); ++i) {
            uint64_t lba = first_lba + (i % 64) * 8;
            std::fill(out.begin(), out.end(), uint8_t(i * 13 + first_lba));
            if (!s->write(0, lba, 8, block, out) || !s->read(0, lba, 8, block, in) || in != out) {
                failures++;
            }
            ios++;
        }
    };
    std::thread a(submitter, 0);
    std::thread b(submitter, 1024);
    unsigned added = 0;
    unsigned removed = 0;
    for (int round = 0; round < 20; ++round) {
        auto info = s->info();
        if (info.connection_ids.size() > 1) {
            auto r = s->remove_connection(info.connection_ids[size_t(round) % info.connection_ids.size()]);
            EXPECT_TRUE(r) << r.error().message;
            removed += r ? 1 : 0;
        }
        auto r = s->add_connection();
        EXPECT_TRUE(r) << r.error().message;
        added += r ? 1 : 0;
        std::this_thread::sleep_for(5ms);
    }
    stop = true;
    a.join();
    b.join();
    EXPECT_EQ(failures.load(), 0u);
    EXPECT_GT(ios.load(), 20u);
    auto info = s->info();
    EXPECT_EQ(info.connections_added, added);
    EXPECT_EQ(info.connections_removed, removed);
    EXPECT_EQ(info.reconnects, 0u);
    EXPECT_EQ(h.target->reinstatements.load(), 0u);
    EXPECT_EQ(h.target->window_violations.load(), 0u);
}

} // namespace
} // namespace ispace::initiator::test
