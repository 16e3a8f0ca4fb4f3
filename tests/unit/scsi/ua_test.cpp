// Unit attentions: the per-nexus queue rules, and the conditions the engine establishes — power on for a
// new nexus, REPORTED LUNS DATA HAS CHANGED when LUs appear, resets — and how they are reported: once,
// on the next command but INQUIRY / REPORT LUNS / REQUEST SENSE, or as REQUEST SENSE data.
#include "harness.hpp"

#include "scsi/ua.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> tur() {
    return cdb_bytes({0x00, 0, 0, 0, 0, 0});
}
std::vector<uint8_t> request_sense() {
    return cdb_bytes({op::request_sense, 0, 0, 0, 252, 0});
}
std::vector<uint8_t> report_luns() {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::report_luns;
    store_be32(&c[6], 4096);
    return c;
}

} // namespace

TEST(UnitAttentionQueue, OncePerNexusInOrder) {
    UnitAttentions ua;
    ua.establish(1, asc::mode_parameters_changed); // unknown nexus: dropped
    EXPECT_EQ(ua.pending(), 0u);
    ua.add_nexus(1);
    ua.add_nexus(2);
    ua.establish(1, asc::reported_luns_data_has_changed);
    ua.establish(1, asc::reported_luns_data_has_changed); // not twice
    ua.establish(1, asc::mode_parameters_changed);
    EXPECT_EQ(ua.pending(), 2u);
    EXPECT_FALSE(ua.peek(2));
    EXPECT_EQ(ua.take(1), asc::reported_luns_data_has_changed);
    EXPECT_EQ(ua.take(1), asc::mode_parameters_changed);
    EXPECT_FALSE(ua.take(1));
    EXPECT_EQ(ua.pending(), 0u);
}

TEST(UnitAttentionQueue, ResetGoesFirstAndSubsumes) {
    UnitAttentions ua;
    ua.add_nexus(1);
    ua.establish(1, asc::reported_luns_data_has_changed);
    ua.establish(1, asc::commands_cleared_by_another_initiator);
    ua.establish(1, asc::power_on_reset_or_bus_device_reset);
    ua.establish(1, asc::bus_device_reset_function_occurred); // replaces the other 29h
    EXPECT_EQ(ua.pending(), 2u);
    EXPECT_EQ(ua.take(1), asc::bus_device_reset_function_occurred);
    EXPECT_EQ(ua.take(1), asc::reported_luns_data_has_changed);
}

TEST(UnitAttentionQueue, BoundedClearAndRemove) {
    UnitAttentions ua;
    ua.add_nexus(7);
    for (uint16_t i = 0; i < 40; ++i) {
        ua.establish(7, uint16_t(0x3f00 + i));
    }
    EXPECT_EQ(ua.pending(), UnitAttentions::max_queued);
    ua.clear(7, 0x3f03);
    EXPECT_EQ(ua.pending(), UnitAttentions::max_queued - 1);
    ua.establish_all(asc::power_on_occurred);
    EXPECT_EQ(ua.peek(7), asc::power_on_occurred) << "a reset is kept even on a full queue";
    ua.remove_nexus(7);
    EXPECT_EQ(ua.pending(), 0u);
    EXPECT_FALSE(ua.has_nexus(7));
}

TEST(UnitAttention, PowerOnForANewNexusReportedOnce) {
    Harness h(LuConfig{}, false);
    auto t = h.exec(tur());
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    EXPECT_EQ(h.exec(tur())->status, Status::good);
}

TEST(UnitAttention, InquiryAndReportLunsNeitherReportNorClear) {
    Harness h(LuConfig{}, false);
    EXPECT_EQ(h.exec(cdb_bytes({op::inquiry, 0, 0, 0, 96, 0}), 96)->status, Status::good);
    EXPECT_EQ(h.exec(report_luns(), 4096)->status, Status::good);
    auto t = h.exec(rw10(op::read_10, 0, 1), 512);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    EXPECT_TRUE(h.device().log.empty()) << "the command reporting a UA is not executed";
}

TEST(UnitAttention, RequestSenseReturnsAndClears) {
    Harness h(LuConfig{}, false);
    auto t = h.exec(request_sense(), 252);
    ASSERT_EQ(t->status, Status::good);
    auto s = parse_sense(t->received());
    ASSERT_TRUE(s);
    EXPECT_EQ(s->key, SenseKey::unit_attention);
    EXPECT_EQ(s->code, asc::power_on_reset_or_bus_device_reset);
    EXPECT_EQ(h.exec(tur())->status, Status::good);
    t = h.exec(request_sense(), 252);
    EXPECT_EQ(parse_sense(t->received())->key, SenseKey::no_sense);
}

TEST(UnitAttention, WinsOverAnUnknownOpcode) {
    Harness h(LuConfig{}, false);
    auto t = h.exec(cdb_bytes({0xee, 0, 0, 0, 0, 0}));
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    t = h.exec(cdb_bytes({0xee, 0, 0, 0, 0, 0}));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_command_operation_code));
}

TEST(UnitAttention, EachNexusHasItsOwn) {
    Harness h; // nexus 1's power-on consumed
    Nexus second = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(second);
    EXPECT_EQ(h.exec(tur())->status, Status::good);
    auto t = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    // A nexus that goes away and comes back starts with a fresh power-on.
    h.target.nexus_removed(second);
    h.target.nexus_added(second);
    t = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
}

TEST(UnitAttention, AddedLunSignalsReportedLunsDataChanged) {
    Harness h;
    h.add_lu(4);
    // The existing LU reports REPORTED LUNS DATA HAS CHANGED; the new one its power-on.
    auto t = h.exec(tur());
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::reported_luns_data_has_changed));
    t = h.exec(tur(), 0, 4);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    EXPECT_EQ(h.exec(tur())->status, Status::good);
}

TEST(UnitAttention, ReportLunsClearsReportedLunsDataChanged) {
    Harness h;
    h.add_lu(4);
    EXPECT_EQ(h.exec(report_luns(), 4096)->status, Status::good);
    EXPECT_EQ(h.exec(tur())->status, Status::good) << "REPORT LUNS cleared it";
}

TEST(UnitAttention, LogicalUnitResetForEveryNexus) {
    Harness h;
    Nexus second = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(second);
    auto drain2 = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*drain2);

    std::optional<TmfResult> result;
    h.target.logical_unit_reset(h.nexus, encode_lun(0), [&](TmfResult r) { result = r; });
    ASSERT_TRUE(h.run_until([&] { return result.has_value(); }));
    EXPECT_EQ(*result, TmfResult::complete);
    auto t = h.exec(tur());
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::bus_device_reset_function_occurred));
    t = h.make_task(tur(), 0, false, 0, &second);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::bus_device_reset_function_occurred));
}

TEST(UnitAttention, LogicalUnitResetRestoresModeDefaults) {
    Harness h;
    ModeValues v = h.lu().mode_values();
    v.d_sense = true;
    v.wce = false;
    h.lu().set_mode_values(v);
    bool done = false;
    h.target.logical_unit_reset(h.nexus, encode_lun(0), [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    EXPECT_FALSE(h.lu().mode_values().d_sense);
    EXPECT_TRUE(h.lu().mode_values().wce);
}

TEST(UnitAttention, TargetResets) {
    Harness h;
    h.add_lu(1);
    h.clear_unit_attentions(0);
    h.clear_unit_attentions(1);
    bool done = false;
    h.target.target_reset(h.nexus, false, [&](TmfResult r) {
        EXPECT_EQ(r, TmfResult::complete);
        done = true;
    });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    EXPECT_TRUE(has_sense(*h.exec(tur()), SenseKey::unit_attention, asc::scsi_bus_reset_occurred));
    EXPECT_TRUE(has_sense(*h.exec(tur(), 0, 1), SenseKey::unit_attention, asc::scsi_bus_reset_occurred));

    done = false;
    h.target.target_reset(h.nexus, true, [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    EXPECT_TRUE(has_sense(*h.exec(tur()), SenseKey::unit_attention, asc::power_on_occurred));
}

TEST(UnitAttention, DescriptorSenseForUnitAttention) {
    Harness h(LuConfig{}, false);
    ModeValues v = h.lu().mode_values();
    v.d_sense = true;
    h.lu().set_mode_values(v);
    auto t = h.exec(tur());
    EXPECT_EQ(t->sense[0], 0x72);
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
}
