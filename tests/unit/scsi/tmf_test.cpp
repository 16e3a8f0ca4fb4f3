// Task management: tasks waiting for data-out are cancelled through the fabric, tasks with backstore
// I/O in flight are waited for, `done` runs once every affected task is gone (on the calling reactor,
// also when the task lives on another reactor's thread), and aborted tasks complete with aborted set.
#include "harness.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> tur() {
    return cdb_bytes({0x00, 0, 0, 0, 0, 0});
}

struct TmfWatch {
    std::optional<TmfResult> result;
    Function<void(TmfResult)> callback(FakeFabric& fabric) {
        return [this, &fabric](TmfResult r) {
            result = r;
            fabric.events.push_back("tmf");
        };
    }
};

} // namespace

TEST(Tmf, AbortTaskWaitingForDataOut) {
    Harness h;
    h.fabric.hold_data_out = true;
    auto w = h.make_write(rw10(op::write_10, 0, 4), pattern(2048, 1));
    h.submit(*w);
    ASSERT_TRUE(h.run_until([&] { return w->fetches == 1; }));
    EXPECT_EQ(h.lu().task_count(), 1u);

    TmfWatch tmf;
    h.target.abort_task(h.nexus, encode_lun(0), w->tag, tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_EQ(*tmf.result, TmfResult::complete);
    EXPECT_EQ(w->cancels, 1);
    EXPECT_EQ(w->completions, 1);
    EXPECT_TRUE(w->aborted);
    EXPECT_TRUE(h.device().log.empty()) << "nothing was written";
    EXPECT_EQ(h.lu().task_count(), 0u);
    // The task was gone before the TMF answered.
    ASSERT_GE(h.fabric.events.size(), 2u);
    EXPECT_EQ(h.fabric.events[h.fabric.events.size() - 2], "complete " + std::to_string(w->tag));
    EXPECT_EQ(h.fabric.events.back(), "tmf");
}

TEST(Tmf, AbortTaskWaitsForBackstoreIo) {
    Harness h;
    h.device().hold = true;
    auto r = h.make_task(rw10(op::read_10, 0, 1), 512);
    h.submit(*r);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));

    TmfWatch tmf;
    h.target.abort_task(h.nexus, encode_lun(0), r->tag, tmf.callback(h.fabric));
    h.drain();
    EXPECT_FALSE(tmf.result.has_value()) << "the I/O is still in flight";
    EXPECT_FALSE(r->done());

    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_EQ(*tmf.result, TmfResult::complete);
    EXPECT_TRUE(r->aborted);
    EXPECT_EQ(r->status, Status::task_aborted);
    EXPECT_EQ(r->completions, 1);
}

TEST(Tmf, AbortTaskNotFound) {
    Harness h;
    TmfWatch tmf;
    h.target.abort_task(h.nexus, encode_lun(0), 999, tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_EQ(*tmf.result, TmfResult::task_not_found);

    // Same tag, other nexus: not this nexus's task.
    Nexus second = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(second);
    auto ua = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*ua); // its power-on unit attention
    h.device().hold = true;
    auto r = h.make_task(rw10(op::read_10, 0, 1), 512, true, 0, &second);
    r->tag = 77;
    h.submit(*r);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    tmf.result.reset();
    h.target.abort_task(h.nexus, encode_lun(0), 77, tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_EQ(*tmf.result, TmfResult::task_not_found);
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return r->done(); }));
    EXPECT_FALSE(r->aborted);
    EXPECT_EQ(r->status, Status::good);
}

TEST(Tmf, UnknownLun) {
    Harness h;
    TmfWatch tmf;
    h.target.logical_unit_reset(h.nexus, encode_lun(12), tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_EQ(*tmf.result, TmfResult::lun_not_found);
}

TEST(Tmf, AbortTaskSetOnlyThatNexus) {
    Harness h;
    Nexus second = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(second);
    auto ua = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*ua);

    h.device().hold = true;
    auto mine1 = h.make_task(rw10(op::read_10, 0, 1), 512);
    auto mine2 = h.make_task(rw10(op::read_10, 1, 1), 512);
    auto theirs = h.make_task(rw10(op::read_10, 2, 1), 512, true, 0, &second);
    for (auto* t : {mine1.get(), mine2.get(), theirs.get()}) {
        h.submit(*t);
    }
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 3; }));

    TmfWatch tmf;
    h.target.abort_task_set(h.nexus, encode_lun(0), tmf.callback(h.fabric));
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value() && theirs->done(); }));
    EXPECT_TRUE(mine1->aborted);
    EXPECT_TRUE(mine2->aborted);
    EXPECT_FALSE(theirs->aborted);
    EXPECT_EQ(theirs->status, Status::good);
    // ABORT TASK SET leaves no unit attention for the other nexus.
    auto t = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
}

TEST(Tmf, ClearTaskSetTellsOtherInitiators) {
    Harness h;
    Nexus second = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(second);
    auto ua = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*ua);

    h.fabric.hold_data_out = true;
    auto mine = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    auto theirs = h.make_task(rw10(op::write_10, 1, 1), 512, false, 0, &second);
    theirs->data_out = true;
    theirs->out = pattern(512, 2);
    h.submit(*mine);
    h.submit(*theirs);
    ASSERT_TRUE(h.run_until([&] { return mine->fetches == 1 && theirs->fetches == 1; }));

    TmfWatch tmf;
    h.target.clear_task_set(h.nexus, encode_lun(0), tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_TRUE(mine->aborted);
    EXPECT_TRUE(theirs->aborted);
    EXPECT_EQ(theirs->cancels, 1);

    auto t = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::commands_cleared_by_another_initiator));
    EXPECT_EQ(h.exec(tur())->status, Status::good) << "the issuer knows already";
}

TEST(Tmf, LogicalUnitResetAbortsEverything) {
    Harness h;
    h.add_lu(1);
    h.clear_unit_attentions(0); // REPORTED LUNS DATA HAS CHANGED
    h.clear_unit_attentions(1);
    h.device().hold = true;
    auto a = h.make_task(rw10(op::read_10, 0, 1), 512);
    h.fabric.hold_data_out = true;
    auto b = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 3));
    auto other_lu = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 3), std::nullopt, 1);
    h.submit(*a);
    h.submit(*b);
    h.submit(*other_lu);
    ASSERT_TRUE(h.run_until(
        [&] { return h.device().held.size() == 1 && b->fetches == 1 && other_lu->fetches == 1; }));

    TmfWatch tmf;
    h.target.logical_unit_reset(h.nexus, encode_lun(0), tmf.callback(h.fabric));
    h.drain();
    EXPECT_TRUE(b->done()) << "the data-out wait was cancelled at once";
    EXPECT_FALSE(tmf.result.has_value()) << "the read is still in flight";
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_TRUE(a->aborted);
    EXPECT_TRUE(b->aborted);
    EXPECT_FALSE(other_lu->done()) << "another LU is untouched";
    h.fabric.release_waiting();
    ASSERT_TRUE(h.run_until([&] { return other_lu->done(); }));
    EXPECT_EQ(other_lu->status, Status::good);
}

TEST(Tmf, TargetResetAbortsEveryLu) {
    Harness h;
    h.add_lu(1);
    h.clear_unit_attentions(0); // REPORTED LUNS DATA HAS CHANGED
    h.clear_unit_attentions(1);
    h.fabric.hold_data_out = true;
    auto a = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 3));
    auto b = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 3), std::nullopt, 1);
    h.submit(*a);
    h.submit(*b);
    ASSERT_TRUE(h.run_until([&] { return a->fetches == 1 && b->fetches == 1; }));
    TmfWatch tmf;
    h.target.target_reset(h.nexus, false, tmf.callback(h.fabric));
    ASSERT_TRUE(h.run_until([&] { return tmf.result.has_value(); }));
    EXPECT_TRUE(a->aborted);
    EXPECT_TRUE(b->aborted);
}

TEST(Tmf, NexusLossAbortsItsTasks) {
    Harness h;
    h.fabric.hold_data_out = true;
    auto w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.submit(*w);
    ASSERT_TRUE(h.run_until([&] { return w->fetches == 1; }));
    h.target.nexus_removed(h.nexus);
    ASSERT_TRUE(h.run_until([&] { return w->done(); }));
    EXPECT_TRUE(w->aborted);
    EXPECT_EQ(w->cancels, 1);
}

TEST(Tmf, FabricGivingUpDataOutAbandonsTheTask) {
    Harness h;
    h.fabric.hold_data_out = true;
    auto w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.submit(*w);
    ASSERT_TRUE(h.run_until([&] { return w->fetches == 1; }));
    h.reactor.post([&] { h.target.data_out_done(*w, false); });
    ASSERT_TRUE(h.run_until([&] { return w->done(); }));
    EXPECT_TRUE(w->aborted);
    EXPECT_TRUE(h.device().log.empty());
    EXPECT_EQ(h.lu().task_count(), 0u);
}

TEST(Tmf, TwoTmfsOnOneTask) {
    Harness h;
    h.device().hold = true;
    auto r = h.make_task(rw10(op::read_10, 0, 1), 512);
    h.submit(*r);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    TmfWatch first, second;
    h.target.abort_task(h.nexus, encode_lun(0), r->tag, first.callback(h.fabric));
    h.target.logical_unit_reset(h.nexus, encode_lun(0), second.callback(h.fabric));
    h.drain();
    EXPECT_FALSE(first.result || second.result);
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return first.result && second.result; }));
    EXPECT_EQ(r->completions, 1);
}

// A task on another reactor's thread: the TMF issued on this reactor posts there, the task is
// cancelled on its own thread, and `done` comes back here.
namespace {

class ThreadSafeFabric final : public Fabric {
public:
    void fetch_data_out(Task&, uint32_t) override { fetching.store(true); }
    void cancel_data_out(Task& task) override {
        cancel_thread = std::this_thread::get_id();
        task.reactor->defer([this, &task] { target->data_out_done(task, false); });
    }
    void complete(Task& task) override {
        complete_thread = std::this_thread::get_id();
        aborted.store(task.aborted);
        completed.store(true);
    }
    TargetDevice* target = nullptr;
    std::atomic<bool> fetching{false};
    std::atomic<bool> completed{false};
    std::atomic<bool> aborted{false};
    std::thread::id cancel_thread;
    std::thread::id complete_thread;
};

} // namespace

TEST(Tmf, AbortAcrossReactors) {
    Harness h;
    net::Reactor other(1);
    ThreadSafeFabric fabric;
    fabric.target = &h.target;
    std::thread::id other_thread;
    std::thread runner([&] {
        other_thread = std::this_thread::get_id();
        other.run();
    });

    TestTask task;
    task.fabric = &fabric;
    task.reactor = &other;
    task.nexus = &h.nexus;
    task.lun = encode_lun(0);
    task.tag = 4242;
    auto cdb = rw10(op::write_10, 0, 1);
    std::copy(cdb.begin(), cdb.end(), task.cdb.begin());
    task.cdb_length = 16;
    task.data_out = true;
    task.expected_length = 512;
    other.post([&] { h.target.submit(task); });
    for (int i = 0; i < 500 && !fabric.fetching.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_TRUE(fabric.fetching.load());

    std::optional<TmfResult> result;
    net::Reactor* done_on = nullptr;
    h.reactor.post([&] {
        h.target.abort_task(h.nexus, encode_lun(0), 4242, [&](TmfResult r) {
            result = r;
            done_on = net::Reactor::current();
        });
    });
    ASSERT_TRUE(h.run_until([&] { return result.has_value(); }));
    EXPECT_EQ(*result, TmfResult::complete);
    EXPECT_EQ(done_on, &h.reactor) << "done runs on the issuing reactor";
    EXPECT_TRUE(fabric.completed.load());
    EXPECT_TRUE(fabric.aborted.load());

    other.stop();
    runner.join();
    EXPECT_EQ(fabric.cancel_thread, other_thread) << "the task was touched only on its reactor";
    EXPECT_EQ(fabric.complete_thread, other_thread);
}
