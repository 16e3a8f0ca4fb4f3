// Live changes of a target's logical units while commands run: removal (new commands refused,
// commands in flight aborted, the LU destroyed after its last task and its sessions' views), resize
// (CAPACITY DATA HAS CHANGED; a shrink waits for commands past the new end), device events, and the
// lock-free LUN routing through a session's view.
#include "harness.hpp"

#include "scsi/cdb.hpp"

namespace ispace::scsi::test {
namespace {

std::vector<uint8_t> read10(uint32_t lba, uint16_t blocks) {
    return rw10(op::read_10, lba, blocks);
}

std::vector<uint8_t> read_capacity16() {
    std::vector<uint8_t> c(16, 0);
    c[0] = 0x9e;
    c[1] = 0x10;
    store_be32(&c[10], 32);
    return c;
}

std::vector<uint8_t> report_luns() {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::report_luns;
    store_be32(&c[6], 256);
    return c;
}

std::vector<uint64_t> reported(const TestTask& t) {
    std::vector<uint64_t> luns;
    auto d = t.received();
    for (size_t at = 8; at + 8 <= d.size(); at += 8) {
        luns.push_back(decode_lun(load_be64(&d[at])).value_or(~0ull));
    }
    return luns;
}

// Resizes on the harness's reactor, as the runtime does, and waits for the answer.
Result<void> resize(Harness& h, uint64_t lun, uint64_t bytes, bool allow_shrink, int budget = 300) {
    std::optional<Result<void>> answer;
    h.reactor.post([&] {
        h.target.resize_lu(lun, bytes, allow_shrink, [&](Result<void> r) { answer = std::move(r); });
    });
    EXPECT_TRUE(h.run_until([&] { return answer.has_value(); }, budget)) << "resize did not answer";
    return answer ? std::move(*answer) : make_error("no answer");
}

TEST(LiveLu, AnAddedLuIsAnnouncedToEveryNexusAndServesAtOnce) {
    Harness h;
    h.add_lu(3);
    auto ua = h.exec(read10(0, 1), 512, 0);
    EXPECT_TRUE(has_sense(*ua, SenseKey::unit_attention, asc::reported_luns_data_has_changed));
    h.clear_unit_attentions(3); // its own power-on
    EXPECT_EQ(h.exec(read10(0, 1), 512, 3)->status, Status::good);
    EXPECT_EQ(reported(*h.exec(report_luns(), 256)), (std::vector<uint64_t>{0, 3}));
}

TEST(LiveLu, RemovalRefusesNewCommandsAbortsInflightAndDestroysAfterTheLastTask) {
    Harness h;
    TestDevice& device = h.add_lu(1);
    h.clear_unit_attentions(1);
    device.hold = true;
    auto inflight = h.make_task(read10(0, 8), 4096, true, 1);
    h.submit(*inflight);
    ASSERT_TRUE(h.run_until([&] { return !device.held.empty(); }));

    bool destroyed = false;
    ASSERT_TRUE(h.target.remove_lu(1, [&] { destroyed = true; }));
    EXPECT_FALSE(h.target.remove_lu(1)) << "a LUN that is gone cannot be removed twice";
    auto refused = h.exec(read10(0, 1), 512, 1);
    EXPECT_TRUE(has_sense(*refused, SenseKey::illegal_request, asc::lu_not_supported));
    h.drain();
    EXPECT_FALSE(destroyed) << "a command is still inside the LU's device";

    device.release_held();
    ASSERT_TRUE(h.run_until([&] { return inflight->done() && destroyed; }));
    EXPECT_TRUE(inflight->aborted) << "the command in flight ends as aborted";

    auto ua = h.exec(read10(0, 1), 512, 0);
    EXPECT_TRUE(has_sense(*ua, SenseKey::unit_attention, asc::reported_luns_data_has_changed));
    EXPECT_EQ(reported(*h.exec(report_luns(), 256)), (std::vector<uint64_t>{0}));
    h.devices.erase(1);
}

TEST(LiveLu, ASessionViewRoutesWithoutTheLockAndFollowsChanges) {
    Harness h;
    auto view = std::make_shared<LunView>();
    h.target.attach_view(view, h.reactor);
    auto routed = [&](const std::vector<uint8_t>& cdb, uint32_t length, uint64_t lun) {
        auto t = h.make_task(cdb, length, true, lun);
        t->lun_view = view.get();
        h.exec(*t);
        return t;
    };
    EXPECT_EQ(routed(read10(0, 1), 512, 0)->status, Status::good);
    h.add_lu(5);
    // Picked up by the generation check on the very next command, not only by the posted refresh.
    EXPECT_TRUE(has_sense(*routed(read10(0, 1), 512, 5), SenseKey::unit_attention,
                          asc::power_on_reset_or_bus_device_reset));
    EXPECT_EQ(routed(read10(0, 1), 512, 5)->status, Status::good);
    h.target.detach_view(view.get());
}

TEST(LiveLu, AnIdleViewLetsGoOfARemovedLu) {
    Harness h;
    h.add_lu(1);
    auto view = std::make_shared<LunView>();
    h.target.attach_view(view, h.reactor);
    bool destroyed = false;
    ASSERT_TRUE(h.target.remove_lu(1, [&] { destroyed = true; }));
    // No command on the view: the refresh the target posts to its reactor is what releases the LU.
    EXPECT_TRUE(h.run_until([&] { return destroyed; }));
    h.target.detach_view(view.get());
    h.devices.erase(1);
}

TEST(LiveLu, GrowingRaisesCapacityDataHasChangedAndReportsTheNewSize) {
    Harness h;
    ASSERT_TRUE(resize(h, 0, 4096 * 512, false));
    auto ua = h.exec(read10(0, 1), 512);
    EXPECT_TRUE(has_sense(*ua, SenseKey::unit_attention, asc::capacity_data_has_changed));
    auto cap = h.exec(read_capacity16(), 32);
    ASSERT_EQ(cap->status, Status::good);
    EXPECT_EQ(load_be64(cap->received().data()), 4095u) << "last LBA";
    EXPECT_EQ(h.exec(read10(4000, 8), 4096)->status, Status::good) << "the new blocks are there";
}

TEST(LiveLu, AShrinkMustBeAskedForAndWaitsForCommandsPastTheNewEnd) {
    Harness h;
    auto refused = resize(h, 0, 1024 * 512, false);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("must be asked for"), std::string::npos)
        << refused.error().message;

    TestDevice& device = h.device(0);
    device.hold = true;
    auto tail = h.make_task(read10(2000, 8), 4096);
    h.submit(*tail);
    ASSERT_TRUE(h.run_until([&] { return !device.held.empty(); }));
    std::optional<Result<void>> answer;
    h.reactor.post(
        [&] { h.target.resize_lu(0, 1024 * 512, true, [&](Result<void> r) { answer = std::move(r); }); });
    h.drain();
    EXPECT_FALSE(answer.has_value()) << "the shrink waits for the read past the new end";
    device.release_held();
    device.hold = false;
    ASSERT_TRUE(h.run_until([&] { return answer.has_value() && tail->done(); }));
    EXPECT_TRUE(*answer);
    EXPECT_EQ(tail->status, Status::good);
    h.clear_unit_attentions(0);
    auto past = h.exec(read10(2000, 8), 4096);
    EXPECT_TRUE(has_sense(*past, SenseKey::illegal_request, asc::lba_out_of_range));
}

TEST(LiveLu, AFailedDeviceAnswersLogicalUnitFailureButStillIdentifiesItself) {
    Harness h;
    h.device(0).raise(backstore::DeviceEvent::failed);
    EXPECT_TRUE(has_sense(*h.exec(read10(0, 1), 512), SenseKey::hardware_error, asc::logical_unit_failure));
    std::vector<uint8_t> inquiry{op::inquiry, 0, 0, 0, 96, 0};
    EXPECT_EQ(h.exec(inquiry, 96)->status, Status::good);
}

} // namespace
} // namespace ispace::scsi::test
