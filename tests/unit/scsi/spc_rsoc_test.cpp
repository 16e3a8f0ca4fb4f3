// REPORT SUPPORTED OPERATION CODES (all four reporting options, RCTD) and REPORT SUPPORTED TASK
// MANAGEMENT FUNCTIONS, checked against the operation table they are built from; and docs/scsi.md,
// which must name every command of the table. Expectations follow libiscsi's
// test_report_supported_opcodes_*.
#include "harness.hpp"

#include "scsi/spc.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> rsoc(uint8_t options, uint8_t opcode = 0, uint16_t sa = 0, bool rctd = false,
                          uint32_t allocation = 65535) {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::maintenance_in;
    c[1] = sa::report_supported_operation_codes;
    c[2] = uint8_t((rctd ? 0x80 : 0) | options);
    c[3] = opcode;
    store_be16(&c[4], sa);
    store_be32(&c[6], allocation);
    return c;
}

struct Descriptor {
    uint8_t opcode;
    uint16_t sa;
    bool servactv;
    bool ctdp;
    uint16_t cdb_length;
    uint16_t timeout_length = 0;
};

std::vector<Descriptor> parse_all(std::span<const uint8_t> d) {
    std::vector<Descriptor> out;
    size_t end = 4 + load_be32(&d[0]);
    for (size_t at = 4; at + 8 <= end;) {
        Descriptor x{d[at], load_be16(&d[at + 2]), bool(d[at + 5] & 1), bool(d[at + 5] & 2),
                     load_be16(&d[at + 6])};
        at += 8;
        if (x.ctdp) {
            x.timeout_length = load_be16(&d[at]);
            at += 12;
        }
        out.push_back(x);
    }
    return out;
}

// A logical unit whose device deallocates supports every entry of the table; the default harness
// device (no features) is a fully provisioned one.
LuConfig thin_config() {
    LuConfig c;
    c.features.thin = true;
    c.features.unmap = true;
    c.features.write_zeroes = true;
    return c;
}

size_t supported_count(const LogicalUnit& lu) {
    return size_t(std::count_if(operations().begin(), operations().end(),
                                [&](const Operation& op) { return supported_by(op, lu); }));
}

TEST(Rsoc, AllCommandsIsTheTable) {
    Harness h(thin_config());
    ASSERT_EQ(supported_count(h.lu()), operations().size());
    auto t = h.exec(rsoc(0), 65535);
    ASSERT_EQ(t->status, Status::good);
    auto all = parse_all(t->received());
    ASSERT_EQ(all.size(), operations().size());
    for (size_t i = 0; i < all.size(); ++i) {
        const Operation& op = operations()[i];
        bool sa = op.flags & op_service_action;
        EXPECT_EQ(all[i].opcode, op.opcode);
        EXPECT_EQ(all[i].servactv, sa);
        EXPECT_EQ(all[i].sa, sa ? op.service_action : 0); // libiscsi SERVACTV test
        EXPECT_EQ(all[i].cdb_length, op.cdb_length);
        EXPECT_FALSE(all[i].ctdp);
    }
    // What this work adds is there.
    std::set<std::pair<uint8_t, uint16_t>> have;
    for (auto& x : all) {
        have.insert({x.opcode, x.sa});
    }
    EXPECT_TRUE(have.count({op::persistent_reserve_out, 7}));
    EXPECT_TRUE(have.count({op::persistent_reserve_in, 3}));
    EXPECT_TRUE(have.count({op::maintenance_in, sa::report_target_port_groups}));
    EXPECT_TRUE(have.count({op::maintenance_in, sa::report_supported_tmfs}));
    EXPECT_TRUE(have.count({op::mode_select_10, 0}));
    EXPECT_TRUE(have.count({op::reserve_6, 0}));
    EXPECT_TRUE(have.count({op::prevent_allow_medium_removal, 0}));
}

TEST(Rsoc, TimeoutDescriptors) {
    Harness h(thin_config());
    auto t = h.exec(rsoc(0, 0, 0, true), 65535);
    ASSERT_EQ(t->status, Status::good);
    auto all = parse_all(t->received());
    ASSERT_EQ(all.size(), operations().size());
    for (auto& x : all) {
        EXPECT_TRUE(x.ctdp);
        EXPECT_EQ(x.timeout_length, 0x0a);
    }
    auto d = t->received();
    EXPECT_EQ(load_be32(&d[4 + 8 + 8]), spc::recommended_command_timeout);
}

// One entry through reporting options 1-3, as the logical unit of `h` sees it: supported with its
// usage data, or SUPPORT 001b.
void one_command_for(Harness& h, const Operation& op) {
    bool sa = op.flags & op_service_action;
    std::array<uint8_t, 16> usage = usage_for(op, &h.lu());
    if (!supported_by(op, h.lu())) {
        auto t = h.exec(rsoc(sa ? 2 : 1, op.opcode, op.service_action), 65535);
        ASSERT_EQ(t->status, Status::good);
        EXPECT_EQ(t->received()[1] & 0x07, 0x01); // not supported
        t = h.exec(rsoc(3, op.opcode, op.service_action), 65535);
        ASSERT_EQ(t->status, Status::good);
        EXPECT_EQ(t->received()[1] & 0x07, 0x01);
        return;
    }
    // libiscsi test_report_supported_opcodes_one_command: option 1 for commands without service
    // actions, option 2 for those with; the other one is INVALID FIELD IN CDB.
    auto wrong = h.exec(rsoc(sa ? 1 : 2, op.opcode, op.service_action), 65535);
    EXPECT_TRUE(invalid_field(*wrong, 3));
    for (bool rctd : {false, true}) {
        auto t = h.exec(rsoc(sa ? 2 : 1, op.opcode, op.service_action, rctd), 65535);
        ASSERT_EQ(t->status, Status::good);
        auto d = t->received();
        EXPECT_EQ(d[1] & 0x07, 0x03); // supported, standard
        EXPECT_EQ(bool(d[1] & 0x80), rctd);
        ASSERT_EQ(load_be16(&d[2]), op.cdb_length);
        ASSERT_EQ(d.size(), 4u + op.cdb_length + (rctd ? 12 : 0));
        EXPECT_EQ(d[4], op.opcode);
        if (sa) {
            EXPECT_EQ(d[5] & 0x1f, op.service_action);
        } else {
            EXPECT_EQ(d[5], usage[1]);
        }
        for (unsigned i = 2; i < op.cdb_length; ++i) {
            EXPECT_EQ(d[4 + i], usage[i]) << "byte " << i;
        }
        // Option 3 finds the same.
        auto three = h.exec(rsoc(3, op.opcode, op.service_action, rctd), 65535);
        EXPECT_EQ(std::vector<uint8_t>(three->received().begin(), three->received().end()),
                  std::vector<uint8_t>(d.begin(), d.end()));
    }
}

TEST(Rsoc, OneCommandForEveryEntry) {
    for (bool thin : {true, false}) {
        SCOPED_TRACE(thin ? "thin" : "thick");
        Harness h(thin ? thin_config() : LuConfig{});
        for (const Operation& op : operations()) {
            SCOPED_TRACE(op.name);
            one_command_for(h, op);
        }
    }
}

TEST(Rsoc, UnsupportedAndInvalid) {
    Harness h;
    auto t = h.exec(rsoc(1, 0xc5), 65535);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[1] & 0x07, 0x01); // not supported
    t = h.exec(rsoc(2, op::persistent_reserve_in, 0x1e), 65535);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[1] & 0x07, 0x01);
    EXPECT_TRUE(invalid_field(*h.exec(rsoc(4), 65535), 2, 2));
    // Truncation keeps COMMAND DATA LENGTH whole.
    t = h.exec(rsoc(0, 0, 0, false, 12), 12);
    ASSERT_EQ(t->received().size(), 12u);
    EXPECT_EQ(load_be32(&t->received()[0]), 8 * supported_count(h.lu()));
}

std::vector<uint8_t> vpd(Harness& h, uint8_t page) {
    auto t = h.exec(cdb_bytes({0x12, 0x01, page, 0, 255, 0}), 255);
    EXPECT_EQ(t->status, Status::good);
    return {t->received().begin(), t->received().end()};
}

// What REPORT SUPPORTED OPERATION CODES lists, what the logical unit executes and what its VPD pages
// advertise are one answer, on a logical unit whose device deallocates and on one whose does not.
TEST(Rsoc, AgreesWithRoutingAndVpdPages) {
    for (bool thin : {true, false}) {
        SCOPED_TRACE(thin ? "thin" : "thick");
        Harness h(thin ? thin_config() : LuConfig{});
        auto t = h.exec(rsoc(0), 65535);
        ASSERT_EQ(t->status, Status::good);
        std::set<std::pair<uint8_t, uint16_t>> listed;
        for (auto& x : parse_all(t->received())) {
            listed.insert({x.opcode, x.sa});
        }
        for (const Operation& op : operations()) {
            uint16_t sa = (op.flags & op_service_action) ? op.service_action : 0;
            EXPECT_EQ(listed.count({op.opcode, sa}) == 1, supported_by(op, h.lu())) << op.name;
        }
        EXPECT_EQ(listed.count({op::unmap, 0}), thin ? 1u : 0u);
        EXPECT_EQ(listed.count({op::sanitize, sa::sanitize_block_erase}), thin ? 1u : 0u);
        EXPECT_EQ(listed.count({op::sanitize, sa::sanitize_crypto_erase}), thin ? 1u : 0u);
        EXPECT_EQ(listed.count({op::sanitize, sa::sanitize_overwrite}), 1u);
        EXPECT_EQ(listed.count({op::write_same_16, 0}), 1u);
        EXPECT_EQ(listed.count({op::service_action_in_16, sa::get_lba_status}), 1u);

        // Routing: what is not listed is answered as unknown, never pretended.
        auto u = h.exec(cdb_bytes({op::unmap, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
        if (thin) {
            EXPECT_EQ(u->status, Status::good);
        } else {
            EXPECT_TRUE(has_sense(*u, SenseKey::illegal_request, asc::invalid_command_operation_code));
        }
        for (uint8_t action : {sa::sanitize_block_erase, sa::sanitize_crypto_erase}) {
            auto be = h.exec(cdb_bytes({op::sanitize, action, 0, 0, 0, 0, 0, 0, 0, 0}));
            if (thin) {
                EXPECT_EQ(be->status, Status::good);
            } else {
                EXPECT_TRUE(invalid_field(*be, 1, 4));
            }
        }
        auto ws = h.make_write(rw16(op::write_same_16, 0, 8, 0x08), std::vector<uint8_t>(512, 0));
        h.exec(*ws);
        if (thin) {
            EXPECT_EQ(ws->status, Status::good);
        } else {
            EXPECT_TRUE(invalid_field(*ws, 1, 3));
        }
        // WRITE SAME without UNMAP writes real data everywhere, and GET LBA STATUS answers everywhere
        // (a thick logical unit: every block mapped, which is true).
        auto plain = h.make_write(rw16(op::write_same_16, 0, 8), std::vector<uint8_t>(512, 'x'));
        h.exec(*plain);
        EXPECT_EQ(plain->status, Status::good);
        std::vector<uint8_t> gls(16, 0);
        gls[0] = op::service_action_in_16;
        gls[1] = sa::get_lba_status;
        store_be32(&gls[10], 24);
        EXPECT_EQ(h.exec(gls, 24)->status, Status::good);

        // RSOC's usage data for WRITE SAME(16): the UNMAP bit only where it is evaluated.
        auto one = h.exec(rsoc(1, op::write_same_16), 65535);
        ASSERT_EQ(one->status, Status::good);
        EXPECT_EQ(one->received()[5], thin ? 0x19 : 0x11);

        // The VPD pages: LBPU, LBPWS, LBPWS10 in B2h; UNMAP limits in B0h; WABEREQ in B1h. WACEREQ is
        // 00b on both: CRYPTOGRAPHIC ERASE changes no key here.
        auto b2 = vpd(h, 0xb2);
        EXPECT_EQ(b2[5] & 0xe0, thin ? 0xe0 : 0x00);
        auto b0 = vpd(h, 0xb0);
        EXPECT_EQ(load_be32(&b0[20]) != 0, thin) << "MAXIMUM UNMAP LBA COUNT";
        EXPECT_EQ(load_be32(&b0[24]) != 0, thin) << "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT";
        auto b1 = vpd(h, 0xb1);
        EXPECT_EQ(b1[7] & 0x30, 0x00) << "WACEREQ";
        EXPECT_EQ(b1[7] & 0xc0, thin ? 0x40 : 0x00) << "WABEREQ";
    }
}

TEST(Rsoc, ReservedBitsOfTheCdb) {
    Harness h;
    auto c = rsoc(0);
    c[2] |= 0x40;
    EXPECT_TRUE(invalid_field(*h.exec(c, 65535), 2, 6));
}

std::vector<uint8_t> rstmf(bool repd, uint32_t allocation) {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::maintenance_in;
    c[1] = sa::report_supported_tmfs;
    c[2] = repd ? 0x80 : 0x00;
    store_be32(&c[6], allocation);
    return c;
}

TEST(Rstmf, WhatTheFrontEndCarries) {
    Harness h;
    auto t = h.exec(rstmf(false, 255), 255);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 4u);
    EXPECT_EQ(d[0], 0x80 | 0x40 | 0x10 | 0x08 | 0x02); // ATS ATSS CTSS LURS TRS
    EXPECT_EQ(d[0] & 0x20, 0);                         // no CLEAR ACA
    EXPECT_EQ(d[1], 0);                                // no QUERY TASK family, no I_T NEXUS RESET
    t = h.exec(rstmf(true, 255), 255);
    ASSERT_EQ(t->received().size(), 16u);
    EXPECT_EQ(t->received()[3], 0x0c);
    EXPECT_TRUE(invalid_field(*h.exec(rstmf(false, 3), 3), 6));
}

// docs/scsi.md lists every command the table holds, by its table name.
TEST(Docs, ScsiMdNamesEveryCommand) {
    // The source tree from the build (tests/CMakeLists.txt): __FILE__ may be relative (ccache base_dir).
    auto path = std::filesystem::path(ISPACE_SOURCE_DIR) / "docs/scsi.md";
    std::ifstream in(path);
    ASSERT_TRUE(in) << path;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (const Operation& op : operations()) {
        EXPECT_NE(text.find(op.name), std::string::npos) << op.name << " is missing from " << path;
    }
}

} // namespace
