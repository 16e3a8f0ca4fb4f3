// EXTENDED COPY (LID1) between logical units of one target, resolved by the NAA designator their VPD
// page 83h reports; the parameter list checks libiscsi's ExtendedCopy suite makes; RECEIVE COPY
// RESULTS; and the Third-party Copy VPD page.
#include "harness.hpp"

#include "scsi/xcopy.hpp"

#include <gtest/gtest.h>

#include <cerrno>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

LuConfig unit(uint64_t naa, uint32_t max_transfer = 8u << 20) {
    LuConfig c;
    c.options.identity.naa = naa;
    c.options.max_transfer_bytes = max_transfer;
    return c;
}

// The first designator of VPD 83h, as an initiator (libiscsi populate_ident_tgt_desc) picks it.
std::vector<uint8_t> naa_of(Harness& h, uint64_t lun) {
    auto t = h.exec(cdb_bytes({0x12, 1, 0x83, 0, 255, 0}), 255, lun);
    auto d = t->received();
    EXPECT_GE(d.size(), 8u);
    std::vector<uint8_t> out(d.begin() + 4, d.begin() + 8 + d[7]);
    return out; // code set, association/type, reserved, length, designator
}

std::vector<uint8_t> cscd(const std::vector<uint8_t>& designator, uint32_t block_size = 512,
                          uint8_t type = 0xe4, bool null_device = false) {
    std::vector<uint8_t> d(32, 0);
    d[0] = type;
    d[1] = null_device ? 0x20 : 0x00;
    std::copy(designator.begin(), designator.end(), d.begin() + 4);
    store_be24(&d[29], block_size);
    return d;
}

std::vector<uint8_t> segment(uint16_t from, uint16_t to, uint16_t blocks, uint64_t src, uint64_t dst,
                             uint8_t type = 0x02) {
    std::vector<uint8_t> d(28, 0);
    d[0] = type;
    store_be16(&d[2], 24);
    store_be16(&d[4], from);
    store_be16(&d[6], to);
    store_be16(&d[10], blocks);
    store_be64(&d[12], src);
    store_be64(&d[20], dst);
    return d;
}

std::vector<uint8_t> parameter_list(const std::vector<std::vector<uint8_t>>& cscds,
                                    const std::vector<std::vector<uint8_t>>& segments, uint8_t list_id = 1,
                                    uint8_t usage = 0x2 /* no hold */) {
    std::vector<uint8_t> p(16, 0);
    p[0] = list_id;
    p[1] = uint8_t(usage << 3);
    size_t cscd_bytes = 0, segment_bytes = 0;
    for (auto& c : cscds) {
        p.insert(p.end(), c.begin(), c.end());
        cscd_bytes += c.size();
    }
    for (auto& s : segments) {
        p.insert(p.end(), s.begin(), s.end());
        segment_bytes += s.size();
    }
    store_be16(&p[2], uint16_t(cscd_bytes));
    store_be32(&p[8], uint32_t(segment_bytes));
    return p;
}

std::vector<uint8_t> xcopy_cdb(uint32_t length) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::extended_copy;
    store_be32(&c[10], length);
    return c;
}

std::unique_ptr<TestTask> run_xcopy(Harness& h, const std::vector<uint8_t>& list, uint64_t lun = 0,
                                    std::optional<uint32_t> length = std::nullopt) {
    uint32_t n = length.value_or(uint32_t(list.size()));
    auto t = h.make_write(xcopy_cdb(n),
                          std::vector<uint8_t>(list.begin(), list.begin() + std::min<size_t>(n, list.size())),
                          n, lun);
    h.exec(*t);
    return t;
}

std::vector<uint8_t> receive_copy_results(uint8_t action, uint8_t list_id, uint32_t allocation = 1024) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::receive_copy_results;
    c[1] = action;
    c[2] = list_id;
    store_be32(&c[10], allocation);
    return c;
}

bool copy_aborted(const TestTask& t) {
    return t.status == Status::check_condition && t.sense_data() &&
           t.sense_data()->key == SenseKey::copy_aborted;
}

} // namespace

TEST(ExtendedCopy, CopiesWithinOneLogicalUnit) {
    Harness h(unit(0x1111));
    auto data = pattern(16 * 512, 7);
    std::copy(data.begin(), data.end(), h.device().bytes(0));
    auto self = naa_of(h, 0);
    auto t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 16, 0, 1000)}));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), h.device().bytes(1000 * 512)));
}

TEST(ExtendedCopy, CopiesBetweenLogicalUnitsInChunks) {
    Harness h(unit(0x1111, 8 * 512));
    h.add_lu(1, unit(0x2222, 8 * 512));
    h.clear_unit_attentions(0); // REPORTED LUNS DATA HAS CHANGED
    h.clear_unit_attentions(1);
    auto data = pattern(20 * 512, 3);
    std::copy(data.begin(), data.end(), h.device(0).bytes(40 * 512));
    auto list = parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))},
                               {segment(0, 1, 20, 40, 5), segment(1, 1, 2, 5, 100)});
    auto t = run_xcopy(h, list);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), h.device(1).bytes(5 * 512)));
    EXPECT_TRUE(std::equal(data.begin(), data.begin() + 1024, h.device(1).bytes(100 * 512)));
    // 20 blocks in chunks of the maximum transfer length (8 blocks): three reads, three writes.
    size_t reads = 0;
    for (auto& r : h.device(0).log) {
        reads += r.op == IoOp::read;
        EXPECT_LE(r.length, 8u * 512);
    }
    EXPECT_EQ(reads, 3u);
    EXPECT_TRUE(h.device(0).log.size() == 3u) << "nothing written to the source";
}

// The designator VPD 83h reports is what resolves; anything else names nothing here.
TEST(ExtendedCopy, ResolvesDesignatorsOfThisTarget) {
    Harness h(unit(0xabcdef));
    h.add_lu(7, unit(0x777));
    auto d0 = naa_of(h, 0);
    auto d7 = naa_of(h, 7);
    EXPECT_EQ(xcopy::resolve_designator(h.target, d0[0] & 0x0f, d0[1], &d0[4], d0[3]).get(), &h.lu(0));
    EXPECT_EQ(xcopy::resolve_designator(h.target, d7[0] & 0x0f, d7[1], &d7[4], d7[3]).get(), &h.lu(7));
    auto other = d7;
    other[4 + 15] ^= 0xff;
    EXPECT_EQ(xcopy::resolve_designator(h.target, other[0] & 0x0f, other[1], &other[4], other[3]), nullptr);
    EXPECT_EQ(xcopy::resolve_designator(h.target, 0x2, d7[1], &d7[4], d7[3]), nullptr) << "code set";
}

TEST(ExtendedCopy, ParameterListLengths) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    auto list = parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100)});
    auto pll = [](const TestTask& t) {
        return has_sense(t, SenseKey::illegal_request, asc::parameter_list_length_error);
    };
    EXPECT_EQ(run_xcopy(h, {}, 0, 0)->status, Status::good) << "no list, nothing to do";
    EXPECT_TRUE(pll(*run_xcopy(h, list, 0, 16 + 32 - 1))) << "truncated CSCD descriptor";
    EXPECT_TRUE(pll(*run_xcopy(h, list, 0, 16 + 32 + 28 - 1))) << "truncated segment descriptor";
    EXPECT_TRUE(pll(*run_xcopy(h, list, 0, 8))) << "shorter than the header";
    // Longer than the copy manager's MAXIMUM DESCRIPTOR LIST LENGTH: refused before the data-out.
    std::vector<uint8_t> huge(16 + xcopy::max_descriptor_list_length + 64, 0);
    auto t = run_xcopy(h, huge);
    EXPECT_TRUE(pll(*t));
    EXPECT_EQ(t->fetches, 0);
    EXPECT_TRUE(h.device().log.empty());
}

TEST(ExtendedCopy, DescriptorCountsAndTypes) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    std::vector<std::vector<uint8_t>> cscds(xcopy::max_cscd_descriptors + 1, cscd(self));
    auto t = run_xcopy(h, parameter_list(cscds, {segment(0, 0, 8, 0, 100)}));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::too_many_target_descriptors));
    std::vector<std::vector<uint8_t>> segments(xcopy::max_segment_descriptors + 1, segment(0, 0, 8, 0, 100));
    t = run_xcopy(h, parameter_list({cscd(self)}, segments));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::too_many_segment_descriptors));
    // Fibre Channel N_Port_Name CSCD (E0h), stream-to-stream segment (03h).
    t = run_xcopy(h, parameter_list({cscd(self, 512, 0xe0)}, {segment(0, 0, 8, 0, 100)}));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::unsupported_target_descriptor_type_code));
    t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100, 0x03)}));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::unsupported_segment_descriptor_type_code));
    // LIST ID USAGE 01b is reserved; 11b needs LIST IDENTIFIER 0.
    t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100)}, 1, 0x1));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100)}, 1, 0x3));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    EXPECT_TRUE(h.device().log.empty());
}

TEST(ExtendedCopy, SegmentsThatCannotBeCopiedAbortBeforeAnyData) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    auto unknown = self;
    unknown[4 + 15] ^= 0x5a;
    // A destination index past the CSCD list (libiscsi ValidSegDescr).
    EXPECT_TRUE(copy_aborted(*run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 1, 8, 0, 100)}))));
    // A null device (NUL), a designator of no logical unit here, a wrong block length.
    EXPECT_TRUE(copy_aborted(
        *run_xcopy(h, parameter_list({cscd(self, 512, 0xe4, true)}, {segment(0, 0, 8, 0, 100)}))));
    EXPECT_TRUE(copy_aborted(*run_xcopy(h, parameter_list({cscd(unknown)}, {segment(0, 0, 8, 0, 100)}))));
    EXPECT_TRUE(copy_aborted(*run_xcopy(h, parameter_list({cscd(self, 4096)}, {segment(0, 0, 8, 0, 100)}))));
    // Past the end of the destination or the source; a later segment fails the whole list.
    EXPECT_TRUE(copy_aborted(*run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 2047)}))));
    auto t =
        run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100), segment(0, 0, 8, 2045, 0)}));
    ASSERT_TRUE(copy_aborted(*t));
    auto s = *t->sense_data();
    EXPECT_TRUE(s.field_pointer_valid);
    EXPECT_FALSE(s.in_cdb);
    EXPECT_EQ(s.field_pointer, 16 + 32 + 28 + 12) << "segment pointer: the second segment's source LBA";
    EXPECT_TRUE(h.device().log.empty()) << "nothing was copied";
}

TEST(ExtendedCopy, ReadErrorsAbortTheCopy) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    h.device().fail_with = -EIO;
    auto t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100)}));
    EXPECT_TRUE(has_sense(*t, SenseKey::copy_aborted, asc::unrecovered_read_error));
}

TEST(ExtendedCopy, WriteProtectedDestination) {
    LuConfig ro = unit(0x2222);
    ro.features.read_only = true;
    Harness h(unit(0x1111));
    h.add_lu(1, ro);
    h.clear_unit_attentions(0);
    h.clear_unit_attentions(1);
    auto t = run_xcopy(h, parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))}, {segment(0, 1, 8, 0, 0)}));
    EXPECT_TRUE(has_sense(*t, SenseKey::data_protect, asc::write_protected));
    // Copying out of it is fine.
    t = run_xcopy(h, parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))}, {segment(1, 0, 8, 0, 0)}));
    EXPECT_EQ(t->status, Status::good);
}

TEST(ReceiveCopyResults, OperatingParameters) {
    Harness h(unit(0x1111));
    auto t = h.exec(receive_copy_results(sa::copy_operating_parameters, 0), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 46u);
    EXPECT_EQ(load_be32(&d[0]), 42u);
    EXPECT_EQ(load_be16(&d[8]), xcopy::max_cscd_descriptors);
    EXPECT_EQ(load_be16(&d[10]), xcopy::max_segment_descriptors);
    EXPECT_EQ(load_be32(&d[12]), xcopy::max_descriptor_list_length);
    EXPECT_EQ(d[43], 2);
    EXPECT_EQ(d[44], 0x02);
    EXPECT_EQ(d[45], 0xe4);
}

TEST(ReceiveCopyResults, CopyStatusOfAHeldCopy) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    // Nothing under list identifier 5 yet.
    EXPECT_TRUE(invalid_field(*h.exec(receive_copy_results(sa::copy_status_lid1, 5), 1024), 2));
    auto t = run_xcopy(
        h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100), segment(0, 0, 4, 0, 200)}, 5, 0x0));
    ASSERT_EQ(t->status, Status::good);
    t = h.exec(receive_copy_results(sa::copy_status_lid1, 5), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 12u);
    EXPECT_EQ(load_be32(&d[0]), 8u);
    EXPECT_EQ(d[4], 0x01) << "completed without errors";
    EXPECT_EQ(load_be16(&d[5]), 2u) << "segments processed";
    EXPECT_EQ(d[7], 0xf1) << "in logical blocks";
    EXPECT_EQ(load_be32(&d[8]), 12u);
    // A copy whose LIST ID USAGE says "do not hold" leaves nothing to report.
    t = run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 1, 0, 100)}, 6, 0x2));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(invalid_field(*h.exec(receive_copy_results(sa::copy_status_lid1, 6), 1024), 2));
    // Another I_T nexus has its own list identifiers.
    Nexus other = Harness::make_nexus(2, "iqn.1994-05.com.example:host2", "0x23d000000002");
    h.target.nexus_added(other);
    auto o = h.make_task(receive_copy_results(sa::copy_status_lid1, 5), 1024, true, 0, &other);
    h.exec(*o);
    EXPECT_TRUE(has_sense(*o, SenseKey::unit_attention, asc::power_on_reset_or_bus_device_reset));
    o = h.make_task(receive_copy_results(sa::copy_status_lid1, 5), 1024, true, 0, &other);
    h.exec(*o);
    EXPECT_TRUE(invalid_field(*o, 2));
}

TEST(ReceiveCopyResults, FailedCopiesAreHeldToo) {
    Harness h(unit(0x1111));
    auto self = naa_of(h, 0);
    h.device().fail_with = -EIO;
    run_xcopy(h, parameter_list({cscd(self)}, {segment(0, 0, 8, 0, 100)}, 9, 0x0));
    h.device().fail_with = 0;
    auto t = h.exec(receive_copy_results(sa::copy_status_lid1, 9), 1024);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->received()[4], 0x02) << "completed with errors";
}

TEST(ThirdPartyCopyVpd, DescribesTheCopyManager) {
    Harness h(unit(0x1111));
    auto std_inq = h.exec(cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->received();
    EXPECT_EQ(std_inq[5] & 0x08, 0x08) << "3PC";
    auto t = h.exec(cdb_bytes({0x12, 1, 0x8f, 0x04, 0, 0}), 1024);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_GE(d.size(), 4u);
    EXPECT_EQ(d[1], 0x8f);
    EXPECT_EQ(load_be16(&d[2]) + 4u, d.size());
    // Walk the descriptors: each a multiple of four bytes; Supported Commands lists both commands.
    bool commands = false, parameters = false;
    for (size_t at = 4; at + 4 <= d.size();) {
        uint16_t type = load_be16(&d[at]);
        uint16_t length = load_be16(&d[at + 2]);
        EXPECT_EQ(length % 4, 0) << type;
        if (type == 0x0001) {
            commands = true;
            uint8_t list = d[at + 4];
            EXPECT_EQ(length, (list + 1 + 3) / 4 * 4);
            std::vector<uint8_t> expected{op::extended_copy,
                                          1,
                                          sa::extended_copy_lid1,
                                          op::receive_copy_results,
                                          2,
                                          sa::copy_status_lid1,
                                          sa::copy_operating_parameters};
            EXPECT_EQ(std::vector<uint8_t>(d.begin() + long(at + 5), d.begin() + long(at + 5 + list)),
                      expected);
        }
        if (type == 0x0004) {
            parameters = true;
            EXPECT_EQ(load_be16(&d[at + 8]), xcopy::max_cscd_descriptors);
            EXPECT_EQ(load_be16(&d[at + 10]), xcopy::max_segment_descriptors);
        }
        at += 4 + length;
    }
    EXPECT_TRUE(commands);
    EXPECT_TRUE(parameters);
}

// LUN masking: a copy cannot reach a logical unit the initiator could not address itself, nor write
// through a read-only mapping.
TEST(ExtendedCopy, RespectsTheNexusView) {
    Harness h(unit(0x1111));
    h.add_lu(1, unit(0x2222));
    h.clear_unit_attentions(0);
    h.clear_unit_attentions(1);
    auto list = parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))}, {segment(1, 0, 8, 0, 0)});

    Nexus masked = Harness::make_nexus(3, "iqn.1994-05.com.example:masked", "0x23d000000003");
    masked.visible_luns = std::make_shared<const std::vector<uint64_t>>(std::vector<uint64_t>{0});
    h.target.nexus_added(masked);
    auto send = [&](const Nexus& n) {
        auto t = h.make_task(xcopy_cdb(uint32_t(list.size())), uint32_t(list.size()), false, 0, &n);
        t->data_out = true;
        t->out = list;
        h.exec(*t);
        return t;
    };
    auto t = send(masked);
    EXPECT_EQ(t->sense_data()->key, SenseKey::unit_attention);
    t = send(masked);
    EXPECT_TRUE(has_sense(*t, SenseKey::copy_aborted, asc::unreachable_copy_target)) << "LUN 1 is masked";

    Nexus read_only = Harness::make_nexus(4, "iqn.1994-05.com.example:ro", "0x23d000000004");
    read_only.read_only = true;
    h.target.nexus_added(read_only);
    send(read_only);
    t = send(read_only);
    EXPECT_TRUE(has_sense(*t, SenseKey::data_protect, asc::write_protected));
    EXPECT_TRUE(h.device(0).log.empty());
}

// Another I_T nexus's reservation of the destination (or an exclusive one of the source) stops the
// copy, as it would stop the nexus's own WRITE or READ.
TEST(ExtendedCopy, ReservationsOfEitherEnd) {
    Harness h(unit(0x1111));
    h.add_lu(1, unit(0x2222));
    h.clear_unit_attentions(0);
    h.clear_unit_attentions(1);
    Nexus other = Harness::make_nexus(5, "iqn.1994-05.com.example:other", "0x23d000000005");
    h.target.nexus_added(other);
    auto reserve = [&](uint64_t lun) {
        for (int i = 0; i < 3; ++i) {
            auto t = h.make_task(cdb_bytes({0x16, 0, 0, 0, 0, 0}), 0, false, lun, &other);
            h.exec(*t);
            if (t->status == Status::good) {
                return;
            }
        }
        FAIL() << "RESERVE(6) failed";
    };
    reserve(1);
    auto t = run_xcopy(h, parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))}, {segment(0, 1, 8, 0, 0)}));
    EXPECT_EQ(t->status, Status::reservation_conflict);
    t = run_xcopy(h, parameter_list({cscd(naa_of(h, 0)), cscd(naa_of(h, 1))}, {segment(1, 0, 8, 0, 0)}));
    EXPECT_EQ(t->status, Status::reservation_conflict) << "an SPC-2 reservation excludes reads too";
    t = run_xcopy(h, parameter_list({cscd(naa_of(h, 0))}, {segment(0, 0, 8, 0, 100)}));
    EXPECT_EQ(t->status, Status::good) << "LU 0 is not reserved";
}
