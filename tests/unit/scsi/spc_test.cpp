// SPC-4 primary commands: TEST UNIT READY, INQUIRY (standard and VPD), REPORT LUNS, REQUEST SENSE,
// MODE SENSE(6)/(10), and what a LUN with no logical unit answers. Expectations follow what libiscsi's
// test-tool checks (test_inquiry_*, test_modesense6_*, test_mandatory_sbc, ...).
#include "harness.hpp"

#include "scsi/spc.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

std::vector<uint8_t> inquiry_cdb(bool evpd, uint8_t page, uint16_t allocation) {
    std::vector<uint8_t> c(6, 0);
    c[0] = op::inquiry;
    c[1] = evpd ? 1 : 0;
    c[2] = page;
    store_be16(&c[3], allocation);
    return c;
}

std::vector<uint8_t> mode_sense6(uint8_t pc, uint8_t page, uint8_t allocation, bool dbd = false,
                                 uint8_t subpage = 0) {
    return cdb_bytes({op::mode_sense_6, dbd ? 0x08 : 0, pc << 6 | page, subpage, allocation, 0});
}

std::vector<uint8_t> mode_sense10(uint8_t pc, uint8_t page, uint16_t allocation, bool dbd = false,
                                  bool llbaa = false) {
    std::vector<uint8_t> c(10, 0);
    c[0] = op::mode_sense_10;
    c[1] = uint8_t((dbd ? 0x08 : 0) | (llbaa ? 0x10 : 0));
    c[2] = uint8_t(pc << 6 | page);
    store_be16(&c[7], allocation);
    return c;
}

std::vector<uint8_t> report_luns_cdb(uint8_t select, uint32_t allocation) {
    std::vector<uint8_t> c(12, 0);
    c[0] = op::report_luns;
    c[2] = select;
    store_be32(&c[6], allocation);
    return c;
}

// Finds a mode page in MODE SENSE data (after header and block descriptors).
const uint8_t* find_page(std::span<const uint8_t> d, bool ten, uint8_t code) {
    size_t at = ten ? 8 + load_be16(&d[6]) : 4 + d[3];
    while (at + 2 <= d.size()) {
        if ((d[at] & 0x3f) == code) {
            return &d[at];
        }
        at += 2 + d[at + 1];
    }
    return nullptr;
}

struct Designator {
    uint8_t protocol;
    uint8_t code_set;
    bool piv;
    uint8_t association;
    uint8_t type;
    std::vector<uint8_t> value;
};

std::vector<Designator> designators(std::span<const uint8_t> d) {
    std::vector<Designator> out;
    size_t end = 4 + load_be16(&d[2]);
    for (size_t at = 4; at + 4 <= end;) {
        Designator x;
        x.protocol = d[at] >> 4;
        x.code_set = d[at] & 0x0f;
        x.piv = d[at + 1] & 0x80;
        x.association = (d[at + 1] >> 4) & 0x3;
        x.type = d[at + 1] & 0x0f;
        x.value.assign(d.begin() + at + 4, d.begin() + at + 4 + d[at + 3]);
        out.push_back(x);
        at += 4 + d[at + 3];
    }
    return out;
}

} // namespace

TEST(Spc, TestUnitReady) {
    Harness h;
    auto t = h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}));
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 0u);
    // Reserved bytes are checked.
    t = h.exec(cdb_bytes({0x00, 0, 0, 1, 0, 0}));
    EXPECT_TRUE(invalid_field(*t, 3, 0));
}

TEST(Spc, StandardInquiry) {
    LuConfig config;
    config.options.identity.vendor = "ACME";
    config.options.identity.product = "Disk\x01Thing";
    Harness h(config);
    auto t = h.exec(inquiry_cdb(false, 0, 260), 260);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_GE(d.size(), 36u);
    EXPECT_EQ(d[0], 0x00);        // qualifier 0, direct access
    EXPECT_EQ(d[1] & 0x80, 0);    // not removable
    EXPECT_EQ(d[2], 0x06);        // SPC-4
    EXPECT_EQ(d[3] & 0x0f, 2);    // response data format
    EXPECT_EQ(d[3] & 0x10, 0x10); // HISUP
    EXPECT_EQ(d[3] & 0xc0, 0);    // AERC/TRMTSK clear
    EXPECT_EQ(size_t(d[4]), d.size() - 5);
    EXPECT_EQ(d[7] & 0x02, 0x02); // CMDQUE
    EXPECT_EQ(std::string(d.begin() + 8, d.begin() + 16), "ACME    ");
    EXPECT_EQ(std::string(d.begin() + 16, d.begin() + 32), "Disk_Thing      "); // ASCII only
    for (size_t i = 8; i < 36; ++i) {
        EXPECT_TRUE(d[i] >= 0x20 && d[i] <= 0x7e) << i;
    }
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    std::set<uint16_t> versions;
    for (size_t i = 58; i < 74; i += 2) {
        versions.insert(load_be16(&d[i]));
    }
    EXPECT_TRUE(versions.count(spc::version_sam5));
    EXPECT_TRUE(versions.count(spc::version_spc4));
    EXPECT_TRUE(versions.count(spc::version_sbc3));
    EXPECT_TRUE(versions.count(spc::version_iscsi));
}

TEST(Spc, InquiryAllocationLengthTruncatesNeverOverruns) {
    Harness h;
    auto full = h.exec(inquiry_cdb(false, 0, 255), 255);
    std::vector<uint8_t> all(full->received().begin(), full->received().end());
    for (uint32_t alloc = 0; alloc < 256; ++alloc) {
        auto t = h.exec(inquiry_cdb(false, 0, uint16_t(alloc)), 4096);
        ASSERT_EQ(t->status, Status::good) << alloc;
        EXPECT_EQ(t->transfer_length, std::min<uint32_t>(alloc, uint32_t(all.size()))) << alloc;
        EXPECT_TRUE(std::equal(t->received().begin(), t->received().end(), all.begin()));
    }
    // 16-bit allocation length (SPC-3+): 256 gives the same data as 255.
    auto t = h.exec(inquiry_cdb(false, 0, 256), 256);
    EXPECT_EQ(t->transfer_length, all.size());
}

TEST(Spc, InquiryEvpdZeroWithPageCodeIsInvalid) {
    Harness h;
    auto t = h.exec(inquiry_cdb(false, 1, 256), 256);
    EXPECT_TRUE(invalid_field(*t, 2));
    // CMDDT (obsolete) is refused as well.
    t = h.exec(cdb_bytes({op::inquiry, 0x02, 0, 0, 255, 0}), 255);
    EXPECT_TRUE(invalid_field(*t, 1, 1));
    // Unknown VPD page.
    t = h.exec(inquiry_cdb(true, 0x99, 255), 255);
    EXPECT_TRUE(invalid_field(*t, 2));
}

TEST(Spc, SupportedVpdPagesAreAllReadable) {
    Harness h;
    auto t = h.exec(inquiry_cdb(true, 0x00, 255), 255);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_GE(d.size(), 4u);
    std::vector<uint8_t> pages(d.begin() + 4, d.begin() + 4 + load_be16(&d[2]));
    EXPECT_EQ(pages, (std::vector<uint8_t>{0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2}));
    for (uint8_t page : pages) {
        auto p = h.exec(inquiry_cdb(true, page, 255), 255);
        ASSERT_EQ(p->status, Status::good) << int(page);
        auto pd = p->received();
        EXPECT_EQ(pd[1], page);
        EXPECT_EQ(pd.size(), 4u + load_be16(&pd[2])) << "page length matches the data, page " << int(page);
    }
}

TEST(Spc, UnitSerialNumber) {
    LuConfig config;
    config.options.identity.serial = "SN-0042";
    Harness h(config);
    auto t = h.exec(inquiry_cdb(true, 0x80, 255), 255);
    auto d = t->received();
    EXPECT_EQ(std::string(d.begin() + 4, d.end()), "SN-0042");

    Harness derived; // from the device identity when not configured
    t = derived.exec(inquiry_cdb(true, 0x80, 255), 255);
    d = t->received();
    EXPECT_EQ(load_be16(&d[2]), 16);
}

TEST(Spc, DeviceIdentification) {
    Harness h;
    auto t = h.exec(inquiry_cdb(true, 0x83, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto ds = designators(t->received());

    auto find = [&](uint8_t association, uint8_t type) -> const Designator* {
        for (const auto& d : ds) {
            if (d.association == association && d.type == type) {
                return &d;
            }
        }
        return nullptr;
    };
    // NAA IEEE Registered Extended for the LU.
    const Designator* naa = find(0, 0x3);
    ASSERT_TRUE(naa);
    EXPECT_EQ(naa->code_set, 1);
    ASSERT_EQ(naa->value.size(), 16u);
    EXPECT_EQ(naa->value[0] >> 4, 6);
    // T10 vendor ID.
    const Designator* t10 = find(0, 0x1);
    ASSERT_TRUE(t10);
    EXPECT_EQ(t10->code_set, 2);
    EXPECT_EQ(std::string(t10->value.begin(), t10->value.begin() + 8), "ISPACE  ");
    // Relative target port and target port group, from the nexus.
    const Designator* rtp = find(1, 0x4);
    ASSERT_TRUE(rtp);
    EXPECT_TRUE(rtp->piv);
    EXPECT_EQ(rtp->protocol, 5);
    EXPECT_EQ(load_be16(&rtp->value[2]), 1);
    const Designator* tpg = find(1, 0x5);
    ASSERT_TRUE(tpg);
    EXPECT_EQ(load_be16(&tpg->value[2]), 1);
    // SCSI name strings: target port and target device, null-terminated, padded to four.
    const Designator* port = find(1, 0x8);
    ASSERT_TRUE(port);
    EXPECT_EQ(port->code_set, 3);
    EXPECT_EQ(port->value.size() % 4, 0u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(port->value.data())), h.nexus.target_port);
    const Designator* device = find(2, 0x8);
    ASSERT_TRUE(device);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(device->value.data())), Harness::target_name);

    // A different device has a different NAA designator; the same identity the same.
    Harness other(LuConfig{}, true);
    other.add_lu(1, LuConfig{});
    auto t1 = other.exec(inquiry_cdb(true, 0x83, 1024), 1024, 1);
    auto ds1 = designators(t1->received());
    EXPECT_EQ(ds1[0].value, naa->value) << "same device identity";
    LuConfig named;
    named.options.identity.naa = 0x1122334455667788ull;
    other.add_lu(2, named);
    auto t2 = other.exec(inquiry_cdb(true, 0x83, 1024), 1024, 2);
    auto ds2 = designators(t2->received());
    EXPECT_NE(ds2[0].value, naa->value);
    EXPECT_EQ(load_be64(&ds2[0].value[8]), 0x1122334455667788ull);
}

TEST(Spc, BlockLimits) {
    LuConfig config;
    config.options.max_transfer_bytes = 1u << 20;
    config.options.optimal_transfer_bytes = 64u << 10;
    Harness h(config);
    auto t = h.exec(inquiry_cdb(true, 0xb0, 64), 64);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 64u);
    EXPECT_EQ(d[3], 0x3c);                           // SBC-3 page length
    EXPECT_EQ(load_be32(&d[8]), (1u << 20) / 512);   // MAXIMUM TRANSFER LENGTH
    EXPECT_EQ(load_be32(&d[12]), (64u << 10) / 512); // OPTIMAL TRANSFER LENGTH
    // No UNMAP support: the unmap fields are zero (libiscsi test_inquiry_block_limits).
    EXPECT_EQ(load_be32(&d[20]), 0u);
    EXPECT_EQ(load_be32(&d[24]), 0u);
}

TEST(Spc, BlockDeviceCharacteristicsRotationRate) {
    Harness mem;
    auto d = mem.exec(inquiry_cdb(true, 0xb1, 64), 64)->received();
    EXPECT_EQ(load_be16(&d[4]), 1) << "memory: non-rotating";
    LuConfig file;
    file.kind = "file";
    Harness f(file);
    d = f.exec(inquiry_cdb(true, 0xb1, 64), 64)->received();
    EXPECT_EQ(load_be16(&d[4]), 0) << "file: not reported";
}

TEST(Spc, LogicalBlockProvisioning) {
    Harness full;
    auto d = full.exec(inquiry_cdb(true, 0xb2, 64), 64)->received();
    ASSERT_EQ(d.size(), 8u);
    EXPECT_EQ(d[5], 0x00);
    EXPECT_EQ(d[6] & 0x07, 0); // fully provisioned
    LuConfig thin;
    thin.features.thin = true;
    thin.features.unmap = true;
    Harness t(thin);
    d = t.exec(inquiry_cdb(true, 0xb2, 64), 64)->received();
    EXPECT_EQ(d[6] & 0x07, 2);    // thin
    EXPECT_EQ(d[5] & 0x04, 0x04); // LBPRZ
    // LBPU, LBPWS, LBPWS10: what the operation table routes for this logical unit.
    EXPECT_EQ(d[5] & 0xe0, 0xe0);
    EXPECT_TRUE(supports(t.lu(), op::unmap));
    EXPECT_FALSE(supports(full.lu(), op::unmap));
}

TEST(Spc, ReportLuns) {
    Harness h;
    h.add_lu(3);
    h.add_lu(300);
    h.clear_unit_attentions(0);
    auto t = h.exec(report_luns_cdb(0, 4096), 4096);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 8u + 3 * 8);
    EXPECT_EQ(load_be32(&d[0]), 24u);
    EXPECT_EQ(load_be64(&d[8]), 0u);
    EXPECT_EQ(load_be64(&d[16]), 0x0003000000000000ull);
    EXPECT_EQ(load_be64(&d[24]), 0x412c000000000000ull); // flat addressing for 300

    t = h.exec(report_luns_cdb(2, 4096), 4096);
    EXPECT_EQ(t->transfer_length, 32u);
    t = h.exec(report_luns_cdb(1, 4096), 4096); // well-known LUs only: none
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(load_be32(&t->received()[0]), 0u);
    EXPECT_EQ(t->transfer_length, 8u);
    t = h.exec(report_luns_cdb(0x05, 4096), 4096);
    EXPECT_TRUE(invalid_field(*t, 2));
    // Allocation length below 16 is an error; 16 truncates to one LUN but keeps the full list length.
    t = h.exec(report_luns_cdb(0, 15), 15);
    EXPECT_TRUE(invalid_field(*t, 6));
    t = h.exec(report_luns_cdb(0, 16), 16);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 16u);
    EXPECT_EQ(load_be32(&t->received()[0]), 24u);
}

TEST(Spc, ReportLunsWorksOnALunWithoutLogicalUnit) {
    Harness h;
    auto t = h.exec(report_luns_cdb(0, 4096), 4096, 7);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(load_be32(&t->received()[0]), 8u);
}

TEST(Spc, NonexistentLun) {
    Harness h;
    // INQUIRY: peripheral qualifier 3, device type 1Fh.
    auto t = h.exec(inquiry_cdb(false, 0, 96), 96, 9);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[0], 0x7f);
    t = h.exec(inquiry_cdb(true, 0x83, 96), 96, 9);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[0], 0x7f);
    // REQUEST SENSE: GOOD, with LOGICAL UNIT NOT SUPPORTED as data.
    t = h.exec(cdb_bytes({op::request_sense, 0, 0, 0, 252, 0}), 252, 9);
    ASSERT_EQ(t->status, Status::good);
    auto s = parse_sense(t->received());
    ASSERT_TRUE(s);
    EXPECT_EQ(s->key, SenseKey::illegal_request);
    EXPECT_EQ(s->code, asc::lu_not_supported);
    // Anything else: CHECK CONDITION, LOGICAL UNIT NOT SUPPORTED (even an unknown opcode).
    for (auto cdb :
         {cdb_bytes({0x00, 0, 0, 0, 0, 0}), rw10(op::read_10, 0, 1), cdb_bytes({0xee, 0, 0, 0, 0, 0})}) {
        t = h.exec(cdb, 512, 9);
        EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lu_not_supported)) << int(cdb[0]);
    }
    // A LUN field that no addressing method here decodes is no logical unit either.
    auto odd = h.make_task(cdb_bytes({0x00, 0, 0, 0, 0, 0}));
    odd->lun = 0xc000000000000000ull;
    h.exec(*odd);
    EXPECT_TRUE(has_sense(*odd, SenseKey::illegal_request, asc::lu_not_supported));
}

TEST(Spc, RequestSenseWithNothingPending) {
    Harness h;
    auto t = h.exec(cdb_bytes({op::request_sense, 0, 0, 0, 252, 0}), 252);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 18u);
    EXPECT_EQ(t->received()[0], 0x70);
    EXPECT_EQ(t->received()[2], 0x00); // NO SENSE
    // DESC=1 gives descriptor format; the allocation length truncates.
    t = h.exec(cdb_bytes({op::request_sense, 1, 0, 0, 252, 0}), 252);
    EXPECT_EQ(t->received()[0], 0x72);
    EXPECT_EQ(t->transfer_length, 8u);
    t = h.exec(cdb_bytes({op::request_sense, 0, 0, 0, 4, 0}), 252);
    EXPECT_EQ(t->transfer_length, 4u);
}

TEST(Spc, ModeSenseAllPages) {
    Harness h;
    auto t = h.exec(mode_sense6(0, 0x3f, 255), 255);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    EXPECT_EQ(size_t(d[0]), d.size() - 1); // mode data length
    EXPECT_GE(d[0], 3);
    EXPECT_EQ(d[2] & 0x10, 0x10); // DPOFUA
    EXPECT_EQ(d[2] & 0x80, 0);    // not write protected
    EXPECT_EQ(d[3], 8);           // one short block descriptor
    EXPECT_EQ(load_be32(&d[4]), 2048u);
    EXPECT_EQ(load_be24(&d[9]), 512u);
    const uint8_t* caching = find_page(d, false, 0x08);
    ASSERT_TRUE(caching);
    EXPECT_EQ(caching[1], 0x12);
    EXPECT_EQ(caching[2] & 0x04, 0x04); // WCE by default
    const uint8_t* control = find_page(d, false, 0x0a);
    ASSERT_TRUE(control);
    EXPECT_EQ(control[1], 0x0a);
    EXPECT_EQ(control[2] & 0x04, 0);     // D_SENSE off
    EXPECT_LE(control[3] >> 4, 1);       // QUEUE ALGORITHM MODIFIER 0 or 1
    EXPECT_NE((control[3] >> 1) & 3, 2); // QERR != 2
    EXPECT_NE((control[4] >> 4) & 3, 1); // UA_INTLCK_CTRL != 1
    ASSERT_TRUE(find_page(d, false, 0x1c));

    // The CONTROL page fetched directly equals the one from all pages.
    auto direct = h.exec(mode_sense6(0, 0x0a, 255), 255);
    const uint8_t* c2 = find_page(direct->received(), false, 0x0a);
    ASSERT_TRUE(c2);
    EXPECT_TRUE(std::equal(c2, c2 + 12, control));
}

TEST(Spc, ModeSenseResiduals) {
    Harness h;
    // 4 bytes of allocation: at most 4 bytes, no overflow (transfer length 4).
    auto t = h.exec(mode_sense6(0, 0x3f, 4), 4);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 4u);
    // 255: the real length, so the fabric reports the underflow.
    t = h.exec(mode_sense6(0, 0x3f, 255), 255);
    EXPECT_LT(t->transfer_length, 255u);
    EXPECT_EQ(t->transfer_length, t->received()[0] + 1u);
}

TEST(Spc, ModeSensePageControl) {
    Harness h;
    // Changeable: exactly what MODE SELECT accepts (mode_select_test.cpp): WCE here.
    auto t = h.exec(mode_sense6(1, 0x08, 255, true), 255);
    ASSERT_EQ(t->status, Status::good);
    const uint8_t* caching = find_page(t->received(), false, 0x08);
    ASSERT_TRUE(caching);
    EXPECT_EQ(caching[2], 0x04);
    // Default.
    t = h.exec(mode_sense6(2, 0x08, 255, true), 255);
    caching = find_page(t->received(), false, 0x08);
    ASSERT_TRUE(caching);
    EXPECT_EQ(caching[2] & 0x04, 0x04);
    // Saved: SAVING PARAMETERS NOT SUPPORTED.
    t = h.exec(mode_sense6(3, 0x08, 255), 255);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::saving_parameters_not_supported));
    // Unknown page and unknown subpage.
    t = h.exec(mode_sense6(0, 0x19, 255), 255);
    EXPECT_TRUE(invalid_field(*t, 2, 5));
    t = h.exec(mode_sense6(0, 0x0a, 255, false, 0x01), 255);
    EXPECT_TRUE(invalid_field(*t, 3));
    t = h.exec(mode_sense6(0, 0x3f, 255, false, 0xff), 255);
    EXPECT_EQ(t->status, Status::good);
}

TEST(Spc, ModeSenseDbdAndTen) {
    Harness h;
    auto t = h.exec(mode_sense6(0, 0x08, 255, true), 255);
    auto d = t->received();
    EXPECT_EQ(d[3], 0); // no block descriptor
    EXPECT_EQ(d.size(), 4u + 20);

    t = h.exec(mode_sense10(0, 0x3f, 1024), 1024);
    ASSERT_EQ(t->status, Status::good);
    d = t->received();
    EXPECT_EQ(size_t(load_be16(&d[0])), d.size() - 2);
    EXPECT_EQ(d[3] & 0x10, 0x10);
    EXPECT_EQ(d[4] & 0x01, 0); // short LBA
    EXPECT_EQ(load_be16(&d[6]), 8);
    ASSERT_TRUE(find_page(d, true, 0x0a));

    t = h.exec(mode_sense10(0, 0x3f, 1024, false, true), 1024);
    d = t->received();
    EXPECT_EQ(d[4] & 0x01, 1); // LONGLBA
    EXPECT_EQ(load_be16(&d[6]), 16);
    EXPECT_EQ(load_be64(&d[8]), 2048u);
    EXPECT_EQ(load_be32(&d[20]), 512u);
    ASSERT_TRUE(find_page(d, true, 0x08));
}

TEST(Spc, ModeSenseBigDeviceBlockDescriptor) {
    LuConfig big;
    big.blocks = 1ull << 33;
    Harness h(big);
    auto d = h.exec(mode_sense6(0, 0x08, 255), 255)->received();
    EXPECT_EQ(load_be32(&d[4]), 0xffffffffu);
}

TEST(Spc, ModeSenseWriteProtect) {
    LuConfig ro;
    ro.features.read_only = true;
    Harness h(ro);
    auto d = h.exec(mode_sense6(0, 0x3f, 255), 255)->received();
    EXPECT_EQ(d[2] & 0x80, 0x80); // WP
    const uint8_t* control = find_page(d, false, 0x0a);
    ASSERT_TRUE(control);
    EXPECT_EQ(control[4] & 0x08, 0x08); // SWP
}

TEST(Spc, ModeSenseReflectsState) {
    LuConfig config;
    config.options.write_cache = false;
    Harness h(config);
    auto d = h.exec(mode_sense6(0, 0x08, 255, true), 255)->received();
    EXPECT_EQ(find_page(d, false, 0x08)[2] & 0x04, 0);
    ModeValues v = h.lu().mode_values();
    v.d_sense = true;
    h.lu().set_mode_values(v);
    d = h.exec(mode_sense6(0, 0x0a, 255, true), 255)->received();
    EXPECT_EQ(find_page(d, false, 0x0a)[2] & 0x04, 0x04);
}

TEST(Spc, MandatorySbcSet) {
    // libiscsi test_mandatory_sbc: all of these answer GOOD on a fresh LU.
    Harness h;
    EXPECT_EQ(h.exec(inquiry_cdb(false, 0, 255), 255)->status, Status::good);
    EXPECT_EQ(h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8)->status, Status::good);
    EXPECT_EQ(h.exec(cdb_bytes({0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0}), 15)->status,
              Status::good);
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::good);
    EXPECT_EQ(h.exec(rw16(op::read_16, 0, 1), 512)->status, Status::good);
    EXPECT_EQ(h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}))->status, Status::good);
}
