// REPORT SUPPORTED OPERATION CODES (all four reporting options, RCTD) and REPORT SUPPORTED TASK
// MANAGEMENT FUNCTIONS, checked against the operation table they are built from; and docs/scsi.md,
// which must name every command of the table. Expectations follow libiscsi's
// test_report_supported_opcodes_*.
#include "harness.hpp"

#include "scsi/spc.hpp"

#include <gtest/gtest.h>

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

TEST(Rsoc, AllCommandsIsTheTable) {
    Harness h;
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
    Harness h;
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

TEST(Rsoc, OneCommandForEveryEntry) {
    Harness h;
    for (const Operation& op : operations()) {
        SCOPED_TRACE(op.name);
        bool sa = op.flags & op_service_action;
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
                EXPECT_EQ(d[5], op.usage[1]);
            }
            for (unsigned i = 2; i < op.cdb_length; ++i) {
                EXPECT_EQ(d[4 + i], op.usage[i]) << "byte " << i;
            }
            // Option 3 finds the same.
            auto three = h.exec(rsoc(3, op.opcode, op.service_action, rctd), 65535);
            EXPECT_EQ(std::vector<uint8_t>(three->received().begin(), three->received().end()),
                      std::vector<uint8_t>(d.begin(), d.end()));
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
    EXPECT_EQ(load_be32(&t->received()[0]), 8 * operations().size());
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
    auto path = std::filesystem::path(__FILE__).parent_path() / "../../../docs/scsi.md";
    std::ifstream in(path);
    ASSERT_TRUE(in) << path;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (const Operation& op : operations()) {
        EXPECT_NE(text.find(op.name), std::string::npos) << op.name << " is missing from " << path;
    }
}

} // namespace
