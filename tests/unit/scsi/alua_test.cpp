// Implicit ALUA: TPGS in standard INQUIRY, REPORT TARGET PORT GROUPS in both parameter data formats,
// and the agreement between RTPG and the VPD 83h designators of the asking port.
#include "harness.hpp"

#include "scsi/alua.hpp"

#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> rtpg_cdb(uint8_t format, uint32_t allocation) {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::maintenance_in;
    c[1] = uint8_t(format << 5 | sa::report_target_port_groups);
    store_be32(&c[6], allocation);
    return c;
}

struct Group {
    uint8_t state = 0xff;
    uint8_t supported = 0;
    uint16_t id = 0;
    std::vector<uint16_t> ports;
};

std::vector<Group> parse_groups(std::span<const uint8_t> d, size_t header) {
    std::vector<Group> out;
    size_t end = 4 + load_be32(&d[0]);
    for (size_t at = header; at + 8 <= end && at + 8 <= d.size();) {
        Group g;
        g.state = d[at] & 0x0f;
        g.supported = d[at + 1];
        g.id = load_be16(&d[at + 2]);
        uint8_t count = d[at + 7];
        for (uint8_t i = 0; i < count; ++i) {
            g.ports.push_back(load_be16(&d[at + 8 + 4 * i + 2]));
        }
        out.push_back(g);
        at += 8 + 4 * size_t(count);
    }
    return out;
}

TEST(Alua, StandardInquiryReportsImplicitAlua) {
    Harness h;
    auto t = h.exec(cdb_bytes({op::inquiry, 0, 0, 0, 96, 0}), 96);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[5] & 0x30, 0x10); // TPGS=01b
}

TEST(Alua, WithoutDeclaredGroupsTheNexusGroupIsReported) {
    Harness h;
    auto t = h.exec(rtpg_cdb(0, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto groups = parse_groups(t->received(), 4);
    ASSERT_EQ(groups.size(), 1u);
    EXPECT_EQ(groups[0].id, h.nexus.target_port_group);
    EXPECT_EQ(groups[0].ports, std::vector<uint16_t>{h.nexus.relative_target_port});
    EXPECT_EQ(groups[0].state, alua::active_optimized);
    EXPECT_EQ(groups[0].supported, 0x01); // AO_SUP
}

TEST(Alua, OneGroupPerPortalGroup) {
    Harness h;
    h.target.add_port_group({1, {1}});
    h.target.add_port_group({2, {2}});
    h.target.add_port_group({2, {2, 3}}); // merges
    auto t = h.exec(rtpg_cdb(0, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    EXPECT_EQ(load_be32(&d[0]), d.size() - 4);
    auto groups = parse_groups(d, 4);
    ASSERT_EQ(groups.size(), 2u);
    EXPECT_EQ(groups[0].id, 1);
    EXPECT_EQ(groups[0].ports, std::vector<uint16_t>{1});
    EXPECT_EQ(groups[1].id, 2);
    EXPECT_EQ(groups[1].ports, (std::vector<uint16_t>{2, 3}));
    for (const Group& g : groups) {
        EXPECT_EQ(g.state, alua::active_optimized);
    }
    EXPECT_EQ(alua::target_ports(h.target.port_groups(), &h.nexus), (std::vector<uint16_t>{1, 2, 3}));
}

TEST(Alua, ExtendedHeader) {
    Harness h;
    h.target.set_port_groups({{7, {7}}});
    auto t = h.exec(rtpg_cdb(1, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    EXPECT_EQ(d[4] & 0x70, 0x10); // FORMAT TYPE 001b
    EXPECT_EQ(d[5], 0);           // IMPLICIT TRANSITION TIME
    EXPECT_EQ(load_be32(&d[0]), d.size() - 4);
    auto groups = parse_groups(d, 8);
    ASSERT_EQ(groups.size(), 1u);
    EXPECT_EQ(groups[0].id, 7);
}

TEST(Alua, UnknownFormatAndTruncation) {
    Harness h;
    h.target.set_port_groups({{1, {1}}, {2, {2}}});
    EXPECT_TRUE(invalid_field(*h.exec(rtpg_cdb(2, 1024), 1024), 1, 7));
    auto t = h.exec(rtpg_cdb(0, 6), 6);
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(t->received().size(), 6u);
    EXPECT_EQ(load_be32(&t->received()[0]), 24u); // the full length, not the truncated one
}

TEST(Alua, DeviceIdentificationAgreesWithRtpg) {
    Harness h;
    h.target.set_port_groups({{1, {1}}, {2, {2}}});
    auto vpd = h.exec(cdb_bytes({op::inquiry, 1, 0x83, 0x04, 0x00, 0}), 1024);
    ASSERT_EQ(vpd->status, Status::good);
    auto d = vpd->received();
    std::optional<uint16_t> port, group;
    for (size_t at = 4; at + 4 <= d.size();) {
        uint8_t type = d[at + 1] & 0x0f;
        uint8_t length = d[at + 3];
        if (type == 0x4) {
            port = load_be16(&d[at + 6]);
        } else if (type == 0x5) {
            group = load_be16(&d[at + 6]);
        }
        at += 4 + length;
    }
    ASSERT_TRUE(port && group);
    auto groups = parse_groups(h.exec(rtpg_cdb(0, 1024), 1024)->received(), 4);
    bool found = false;
    for (const Group& g : groups) {
        if (g.id == *group) {
            found = std::find(g.ports.begin(), g.ports.end(), *port) != g.ports.end();
        }
    }
    EXPECT_TRUE(found);
}

TEST(Alua, AllowedThroughReservations) {
    Harness h;
    Nexus other = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(other);
    // An SPC-2 reservation by the first nexus does not hide the port groups from the second.
    ASSERT_EQ(h.exec(cdb_bytes({0x16, 0, 0, 0, 0, 0}))->status, Status::good);
    for (int i = 0; i < 4; ++i) {
        auto t = h.make_task(rtpg_cdb(0, 1024), 1024, true, 0, &other);
        h.exec(*t);
        if (t->status == Status::good) {
            return;
        }
        ASSERT_EQ(t->status, Status::check_condition); // the power-on unit attention first
    }
    FAIL();
}

} // namespace
