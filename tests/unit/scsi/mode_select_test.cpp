// MODE SELECT(6)/(10) against the changeable masks MODE SENSE reports (PC=1): WCE, D_SENSE and SWP,
// the MODE PARAMETERS CHANGED unit attention for the other I_T nexuses, what is refused (saved pages,
// fields that are not changeable, unknown pages, wrong lengths, another block size); and PREVENT
// ALLOW MEDIUM REMOVAL with its START STOP UNIT interaction. libiscsi's set_swp()/clear_swp() do a
// MODE SENSE(6) of the control page with DBD and send it back through MODE SELECT(6) with PF=1.
#include "harness.hpp"

#include "scsi/spc.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> sense6(uint8_t pc, uint8_t page, bool dbd = true) {
    return cdb_bytes({op::mode_sense_6, dbd ? 0x08 : 0x00, pc << 6 | page, 0, 255, 0});
}

// The page (header stripped) from MODE SENSE(6) data.
std::vector<uint8_t> page_of(const TestTask& t) {
    auto d = t.received();
    size_t at = 4 + d[3];
    return std::vector<uint8_t>(d.begin() + at, d.begin() + at + 2 + d[at + 1]);
}

std::vector<uint8_t> select6_cdb(size_t length, bool pf = true, bool sp = false) {
    return cdb_bytes({op::mode_select_6, (pf ? 0x10 : 0) | (sp ? 0x01 : 0), 0, 0, int(length), 0});
}

// MODE SELECT(6) parameter list: header, optional block descriptor, pages.
std::vector<uint8_t> list6(const std::vector<uint8_t>& pages, std::vector<uint8_t> bd = {}) {
    std::vector<uint8_t> d(4, 0);
    d[3] = uint8_t(bd.size());
    d.insert(d.end(), bd.begin(), bd.end());
    d.insert(d.end(), pages.begin(), pages.end());
    return d;
}

class ModeSelectTest : public ::testing::Test {
protected:
    ModeSelectTest() {
        other = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
        h.target.nexus_added(other);
        clear(other);
    }

    std::unique_ptr<TestTask> on(const Nexus& n, const std::vector<uint8_t>& cdb, uint32_t length = 0) {
        auto t = h.make_task(cdb, length, true, 0, &n);
        h.exec(*t);
        return t;
    }
    void clear(const Nexus& n) {
        for (int i = 0; i < 8 && on(n, cdb_bytes({0, 0, 0, 0, 0, 0}))->status != Status::good; ++i) {
        }
    }
    std::unique_ptr<TestTask> select6(const std::vector<uint8_t>& list, bool pf = true, bool sp = false) {
        auto t = h.make_write(select6_cdb(list.size(), pf, sp), list);
        h.exec(*t);
        return t;
    }
    std::vector<uint8_t> current(uint8_t page) { return page_of(*h.exec(sense6(0, page), 255)); }

    Harness h;
    Nexus other;
};

TEST_F(ModeSelectTest, ChangeableMasks) {
    auto caching = page_of(*h.exec(sense6(1, spc::mode_page_caching), 255));
    ASSERT_EQ(caching.size(), 20u);
    EXPECT_EQ(caching[2], 0x04); // WCE
    for (size_t i = 3; i < caching.size(); ++i) {
        EXPECT_EQ(caching[i], 0) << i;
    }
    auto control = page_of(*h.exec(sense6(1, spc::mode_page_control), 255));
    ASSERT_EQ(control.size(), 12u);
    EXPECT_EQ(control[2], 0x04); // D_SENSE
    EXPECT_EQ(control[3], 0x00);
    EXPECT_EQ(control[4], 0x08); // SWP
    auto ie = page_of(*h.exec(sense6(1, spc::mode_page_informational_exceptions), 255));
    for (size_t i = 2; i < ie.size(); ++i) {
        EXPECT_EQ(ie[i], 0);
    }
}

TEST_F(ModeSelectTest, SoftwareWriteProtect) {
    auto control = current(spc::mode_page_control);
    control[4] |= 0x08;
    ASSERT_EQ(select6(list6(control))->status, Status::good);
    EXPECT_EQ(current(spc::mode_page_control)[4] & 0x08, 0x08);
    // WP in the header, and writes refused (libiscsi test_modesense6_control_swp).
    auto whole = h.exec(sense6(0, 0x3f, false), 255);
    EXPECT_EQ(whole->received()[2] & 0x80, 0x80);
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::good);
    auto w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 1));
    h.exec(*w);
    EXPECT_TRUE(has_sense(*w, SenseKey::data_protect, asc::write_protected));
    // The other nexus is told, once; the issuer is not.
    auto t = on(other, cdb_bytes({0, 0, 0, 0, 0, 0}));
    EXPECT_TRUE(has_sense(*t, SenseKey::unit_attention, asc::mode_parameters_changed));
    EXPECT_EQ(on(other, cdb_bytes({0, 0, 0, 0, 0, 0}))->status, Status::good);
    EXPECT_EQ(h.exec(cdb_bytes({0, 0, 0, 0, 0, 0}))->status, Status::good);

    control[4] &= ~0x08;
    ASSERT_EQ(select6(list6(control))->status, Status::good);
    auto w2 = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 1));
    EXPECT_EQ(h.exec(*w2).status, Status::good);
}

TEST_F(ModeSelectTest, DescriptorSense) {
    auto control = current(spc::mode_page_control);
    control[2] |= 0x04;
    ASSERT_EQ(select6(list6(control))->status, Status::good);
    auto t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    ASSERT_EQ(t->status, Status::check_condition);
    EXPECT_EQ(t->sense[0] & 0x7f, 0x72);
}

TEST_F(ModeSelectTest, WriteCacheDisabledMeansWriteThrough) {
    auto caching = current(spc::mode_page_caching);
    ASSERT_EQ(caching[2] & 0x04, 0x04);
    caching[2] &= ~0x04;
    ASSERT_EQ(select6(list6(caching))->status, Status::good);
    EXPECT_FALSE(h.lu().write_cache_enabled());
    h.device().log.clear();
    auto w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 1));
    h.exec(*w);
    ASSERT_FALSE(h.device().log.empty());
    EXPECT_TRUE(h.device().log.back().fua);
}

TEST_F(ModeSelectTest, NothingChangedNoUnitAttention) {
    ASSERT_EQ(select6(list6(current(spc::mode_page_control)))->status, Status::good);
    EXPECT_EQ(on(other, cdb_bytes({0, 0, 0, 0, 0, 0}))->status, Status::good);
}

TEST_F(ModeSelectTest, FieldsThatAreNotChangeable) {
    auto control = current(spc::mode_page_control);
    control[3] ^= 0x10; // QUEUE ALGORITHM MODIFIER
    auto t = select6(list6(control));
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    EXPECT_FALSE(t->sense_data()->in_cdb);
    EXPECT_EQ(t->sense_data()->field_pointer, 4 + 3);
    EXPECT_EQ(t->sense_data()->bit_pointer, 4);

    auto ie = current(spc::mode_page_informational_exceptions);
    ie[2] = 0;
    EXPECT_TRUE(
        has_sense(*select6(list6(ie)), SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
}

TEST_F(ModeSelectTest, PagesAndLengths) {
    auto control = current(spc::mode_page_control);
    // Unknown page.
    std::vector<uint8_t> unknown = {0x19, 0x02, 0, 0};
    EXPECT_TRUE(
        has_sense(*select6(list6(unknown)), SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // Wrong page length.
    auto bad = control;
    bad[1] = 0x08;
    bad.resize(10);
    EXPECT_TRUE(
        has_sense(*select6(list6(bad)), SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // A page cut short by the parameter list length.
    auto cut = list6(control);
    cut.resize(cut.size() - 3);
    EXPECT_TRUE(has_sense(*select6(cut), SenseKey::illegal_request, asc::parameter_list_length_error));
    // Two pages at once, PS set as MODE SENSE may report it.
    auto caching = current(spc::mode_page_caching);
    caching[0] |= 0x80;
    std::vector<uint8_t> both = caching;
    both.insert(both.end(), control.begin(), control.end());
    EXPECT_EQ(select6(list6(both))->status, Status::good);
    // No parameter list at all: nothing to do.
    EXPECT_EQ(h.exec(select6_cdb(0))->status, Status::good);
}

TEST_F(ModeSelectTest, SavedPagesAndPf) {
    auto control = current(spc::mode_page_control);
    EXPECT_TRUE(invalid_field(*select6(list6(control), true, true), 1, 0));
    EXPECT_TRUE(invalid_field(*select6(list6(control), false), 1, 4));
    EXPECT_TRUE(has_sense(*h.exec(sense6(3, spc::mode_page_control), 255), SenseKey::illegal_request,
                          asc::saving_parameters_not_supported));
}

TEST_F(ModeSelectTest, BlockDescriptorMustMatch) {
    auto control = current(spc::mode_page_control);
    std::vector<uint8_t> bd(8, 0);
    store_be24(&bd[5], 512);
    EXPECT_EQ(select6(list6(control, bd))->status, Status::good);
    store_be32(&bd[0], uint32_t(h.lu().block_count()));
    EXPECT_EQ(select6(list6(control, bd))->status, Status::good);
    store_be24(&bd[5], 4096);
    auto t = select6(list6(control, bd));
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    EXPECT_EQ(t->sense_data()->field_pointer, 4 + 5);
    bd.resize(4);
    EXPECT_TRUE(has_sense(*select6(list6(control, bd)), SenseKey::illegal_request,
                          asc::invalid_field_in_parameter_list));
}

TEST_F(ModeSelectTest, ModeSelect10) {
    auto control = current(spc::mode_page_control);
    control[4] |= 0x08;
    std::vector<uint8_t> list(8, 0);
    list.insert(list.end(), control.begin(), control.end());
    std::vector<uint8_t> c(10, 0);
    c[0] = op::mode_select_10;
    c[1] = 0x10;
    store_be16(&c[7], uint16_t(list.size()));
    auto t = h.make_write(c, list);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(h.lu().write_protected());
}

TEST_F(ModeSelectTest, ResetRestoresDefaults) {
    auto control = current(spc::mode_page_control);
    control[4] |= 0x08;
    select6(list6(control));
    bool done = false;
    h.target.logical_unit_reset(h.nexus, encode_lun(0), [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    h.clear_unit_attentions(0);
    EXPECT_FALSE(h.lu().write_protected());
}

TEST(ModeSelectReadOnly, SwpIsNotChangeable) {
    LuConfig config;
    config.features.read_only = true;
    Harness h(config);
    auto control = page_of(*h.exec(sense6(1, spc::mode_page_control), 255));
    EXPECT_EQ(control[4], 0x00);
    auto cur = page_of(*h.exec(sense6(0, spc::mode_page_control), 255));
    EXPECT_EQ(cur[4] & 0x08, 0x08);
    // Echoing the current page is fine; clearing SWP is not.
    auto t = h.make_write(select6_cdb(4 + cur.size()), list6(cur));
    EXPECT_EQ(h.exec(*t).status, Status::good);
    cur[4] &= ~0x08;
    auto t2 = h.make_write(select6_cdb(4 + cur.size()), list6(cur));
    EXPECT_TRUE(has_sense(h.exec(*t2), SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // Writes refused, PROUT and MODE SELECT still served.
    auto w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 1));
    EXPECT_TRUE(has_sense(h.exec(*w), SenseKey::data_protect, asc::write_protected));
}

TEST_F(ModeSelectTest, ReadOnlyMappingShowsAsWriteProtected) {
    Nexus viewer = Harness::make_nexus(3, "iqn.1994-05.com.example:viewer", "0x23d000000003");
    viewer.read_only = true;
    h.target.nexus_added(viewer);
    clear(viewer);
    // WP and SWP for the read-only nexus only; SWP is not changeable for it.
    auto whole = on(viewer, sense6(0, 0x3f, false), 255);
    EXPECT_EQ(whole->received()[2] & 0x80, 0x80);
    EXPECT_EQ(page_of(*on(viewer, sense6(0, spc::mode_page_control), 255))[4] & 0x08, 0x08);
    EXPECT_EQ(page_of(*on(viewer, sense6(1, spc::mode_page_control), 255))[4], 0x00);
    EXPECT_EQ(h.exec(sense6(0, 0x3f, false), 255)->received()[2] & 0x80, 0x00);
    EXPECT_FALSE(h.lu().write_protected());
}

// --- PREVENT ALLOW MEDIUM REMOVAL -----------------------------------------------------------------

std::vector<uint8_t> prevent(uint8_t value) {
    return cdb_bytes({op::prevent_allow_medium_removal, 0, 0, 0, value, 0});
}
std::vector<uint8_t> eject() {
    return cdb_bytes({op::start_stop_unit, 0, 0, 0, 0x02, 0});
}

TEST_F(ModeSelectTest, PreventBlocksLoadAndEject) {
    ASSERT_EQ(h.exec(prevent(1))->status, Status::good);
    EXPECT_TRUE(has_sense(*h.exec(eject()), SenseKey::illegal_request, asc::medium_removal_prevented));
    EXPECT_TRUE(has_sense(*h.exec(cdb_bytes({op::start_stop_unit, 0, 0, 0, 0x03, 0})),
                          SenseKey::illegal_request, asc::medium_removal_prevented));
    // Another nexus's PREVENT=0 does not end this one's prevention.
    ASSERT_EQ(on(other, prevent(0))->status, Status::good);
    EXPECT_TRUE(has_sense(*h.exec(eject()), SenseKey::illegal_request, asc::medium_removal_prevented));
    ASSERT_EQ(h.exec(prevent(0))->status, Status::good);
    // Allowed again: the medium is still not removable.
    EXPECT_TRUE(invalid_field(*h.exec(eject()), 4, 1));
    EXPECT_TRUE(invalid_field(*h.exec(prevent(2)), 4, 1));
    EXPECT_EQ(h.exec(cdb_bytes({op::start_stop_unit, 0, 0, 0, 0x01, 0}))->status, Status::good);
}

TEST_F(ModeSelectTest, PreventionEndsWithNexusLossAndResets) {
    ASSERT_EQ(on(other, prevent(1))->status, Status::good);
    EXPECT_TRUE(h.lu().medium_removal_prevented());
    h.target.nexus_removed(other);
    EXPECT_FALSE(h.lu().medium_removal_prevented());

    ASSERT_EQ(h.exec(prevent(1))->status, Status::good);
    bool done = false;
    h.target.target_reset(h.nexus, false, [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    EXPECT_FALSE(h.lu().medium_removal_prevented());
    h.clear_unit_attentions(0);

    ASSERT_EQ(h.exec(prevent(1))->status, Status::good);
    done = false;
    h.target.logical_unit_reset(h.nexus, encode_lun(0), [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    EXPECT_FALSE(h.lu().medium_removal_prevented());
}

} // namespace
