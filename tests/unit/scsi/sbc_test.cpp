// SBC-3 block commands through the engine: READ/WRITE in every form, FUA, protection fields, write
// protection, the transfer bound, residual cases (libiscsi iSCSIResiduals), READ CAPACITY, SYNCHRONIZE
// CACHE, VERIFY (BYTCHK 0/1/3 really comparing), START STOP UNIT, backstore errors.
#include "harness.hpp"

#include "backstore/memory/memory_device.hpp"

#include <gtest/gtest.h>

#include <cerrno>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

std::vector<uint8_t> verify10(uint32_t lba, uint16_t blocks, uint8_t bytchk, uint8_t flags = 0) {
    return rw10(op::verify_10, lba, blocks, uint8_t(flags | bytchk << 1));
}

std::vector<uint8_t> sync_cache10(uint32_t lba, uint16_t blocks, bool immed) {
    return rw10(op::synchronize_cache_10, lba, blocks, immed ? 0x02 : 0);
}

std::vector<uint8_t> read_capacity16(uint32_t allocation, uint64_t lba = 0, bool pmi = false) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::service_action_in_16;
    c[1] = sa::read_capacity_16;
    store_be64(&c[2], lba);
    store_be32(&c[10], allocation);
    c[14] = pmi ? 1 : 0;
    return c;
}

} // namespace

TEST(Sbc, WriteThenReadBackEveryForm) {
    Harness h;
    struct Form {
        uint8_t write;
        uint8_t read;
        std::vector<uint8_t> (*make)(uint8_t, uint32_t, uint32_t);
    };
    auto make6 = [](uint8_t o, uint32_t lba, uint32_t n) { return rw6(o, lba, uint8_t(n)); };
    auto make10 = [](uint8_t o, uint32_t lba, uint32_t n) { return rw10(o, lba, uint16_t(n)); };
    auto make12 = [](uint8_t o, uint32_t lba, uint32_t n) { return rw12(o, lba, n); };
    auto make16 = [](uint8_t o, uint32_t lba, uint32_t n) { return rw16(o, lba, n); };
    Form forms[] = {{op::write_6, op::read_6, make6},
                    {op::write_10, op::read_10, make10},
                    {op::write_12, op::read_12, make12},
                    {op::write_16, op::read_16, make16}};
    uint32_t lba = 10;
    uint8_t seed = 1;
    for (const Form& f : forms) {
        auto data = pattern(3 * 512, seed++);
        auto w = h.make_write(f.make(f.write, lba, 3), data);
        h.exec(*w);
        ASSERT_EQ(w->status, Status::good) << int(f.write);
        EXPECT_EQ(w->transfer_length, 3u * 512);
        EXPECT_TRUE(std::equal(data.begin(), data.end(), h.device().bytes(lba * 512)));

        auto r = h.exec(f.make(f.read, lba, 3), 3 * 512);
        ASSERT_EQ(r->status, Status::good) << int(f.read);
        EXPECT_EQ(r->transfer_length, 3u * 512);
        EXPECT_TRUE(std::equal(data.begin(), data.end(), r->received().begin()));
        lba += 100;
    }
}

TEST(Sbc, RealMemoryBackstore) {
    Harness h;
    auto r = h.target.add_lu(5, std::make_unique<backstore::MemoryDevice>(4u << 20, 4096));
    ASSERT_TRUE(r.ok());
    h.clear_unit_attentions(5);
    auto data = pattern(2 * 4096, 9);
    auto w = h.make_write(rw16(op::write_16, 7, 2), data, std::nullopt, 5);
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    auto rd = h.exec(rw16(op::read_16, 7, 2), 2 * 4096, 5);
    ASSERT_EQ(rd->status, Status::good);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), rd->received().begin()));
    auto cap = h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8, 5);
    EXPECT_EQ(load_be32(&cap->received()[0]), 1023u);
    EXPECT_EQ(load_be32(&cap->received()[4]), 4096u);
}

TEST(Sbc, FuaWriteGoesDownWithFua) {
    Harness h;
    auto w = h.make_write(rw10(op::write_10, 0, 1, 0x08), pattern(512, 1));
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].op, IoOp::write);
    EXPECT_TRUE(h.device().log[0].fua);

    w = h.make_write(rw16(op::write_16, 0, 1, 0x10), pattern(512, 1)); // DPO only
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    EXPECT_FALSE(h.device().log.back().fua);

    // DPO/FUA on reads are accepted (libiscsi test_read10_dpofua with DPOFUA=1).
    for (uint8_t flags : {0x10, 0x08, 0x18}) {
        EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1, flags), 512)->status, Status::good);
    }
}

TEST(Sbc, WriteCacheDisabledMeansWriteThrough) {
    LuConfig config;
    config.options.write_cache = false;
    Harness h(config);
    auto w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    EXPECT_TRUE(h.device().log.back().fua);
}

TEST(Sbc, ProtectionFieldsAreInvalid) {
    Harness h;
    for (uint8_t p = 1; p < 8; ++p) {
        auto r = h.exec(rw10(op::read_10, 0, 1, uint8_t(p << 5)), 512);
        EXPECT_TRUE(invalid_field(*r, 1)) << int(p);
        auto w = h.make_write(rw16(op::write_16, 0, 1, uint8_t(p << 5)), pattern(512, 1));
        h.exec(*w);
        EXPECT_TRUE(invalid_field(*w, 1)) << int(p);
        EXPECT_EQ(w->fetches, 0) << "no data solicited for a refused command";
        auto v = h.exec(verify10(0, 1, 0, uint8_t(p << 5)), 0);
        EXPECT_TRUE(invalid_field(*v, 1)) << int(p);
    }
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Sbc, WriteToReadOnlyIsDataProtect) {
    LuConfig ro;
    ro.features.read_only = true;
    Harness h(ro);
    for (auto cdb : {rw6(op::write_6, 0, 1), rw10(op::write_10, 0, 1), rw12(op::write_12, 0, 1),
                     rw16(op::write_16, 0, 1)}) {
        auto w = h.make_write(cdb, pattern(512, 1));
        h.exec(*w);
        EXPECT_TRUE(has_sense(*w, SenseKey::data_protect, asc::write_protected)) << int(cdb[0]);
        EXPECT_EQ(w->fetches, 0);
    }
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::good);
}

TEST(Sbc, SoftwareWriteProtect) {
    Harness h;
    ModeValues v = h.lu().mode_values();
    v.swp = true;
    h.lu().set_mode_values(v);
    auto w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.exec(*w);
    EXPECT_TRUE(has_sense(*w, SenseKey::data_protect, asc::write_protected));
}

TEST(Sbc, TransferOverTheMaximumIsInvalidField) {
    LuConfig config;
    config.options.max_transfer_bytes = 64 * 512;
    Harness h(config);
    auto r = h.exec(rw10(op::read_10, 0, 65), 65 * 512);
    EXPECT_TRUE(invalid_field(*r, 7));
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 64), 64 * 512)->status, Status::good);
    auto w = h.make_write(rw16(op::write_16, 0, 0xffffffffu), {}, 512);
    h.exec(*w);
    EXPECT_TRUE(invalid_field(*w, 10));
    EXPECT_EQ(w->fetches, 0);
    // The bound comes before the range check.
    r = h.exec(rw16(op::read_16, ~0ull, 1000), 512);
    EXPECT_TRUE(invalid_field(*r, 10));
}

// libiscsi test_read10_residuals / test_read10_invalid.
TEST(Sbc, ReadResiduals) {
    Harness h;
    // EDTL 0 for one block: GOOD, nothing read, transfer length one block (overflow 512).
    auto t = h.exec(rw10(op::read_10, 0, 1), 0);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 512u);
    EXPECT_TRUE(h.device().log.empty());
    // EDTL 10000 for one block: GOOD, one block (underflow 10000 - 512).
    t = h.exec(rw10(op::read_10, 0, 1), 10000);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 512u);
    EXPECT_EQ(t->received().size(), 512u);
    // EDTL 200: 200 bytes go out of a one-block read.
    t = h.exec(rw10(op::read_10, 0, 1), 200);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 512u);
    EXPECT_EQ(t->received().size(), 200u);
    // Two blocks, EDTL one block: only the first block is read.
    size_t before = h.device().log.size();
    t = h.exec(rw10(op::read_10, 0, 2), 512);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 1024u);
    ASSERT_EQ(h.device().log.size(), before + 1);
    EXPECT_EQ(h.device().log.back().length, 512u);
    // A READ flagged as a write on the transport: still GOOD.
    auto odd = h.make_write(rw10(op::read_10, 0, 1), pattern(512, 3));
    h.exec(*odd);
    EXPECT_EQ(odd->status, Status::good);
}

// libiscsi test_write10_residuals: what arrives in whole blocks is written, GOOD, and the fabric
// reports the residual from transfer_length vs EDTL.
TEST(Sbc, WriteResiduals) {
    Harness h;
    // One block, EDTL 0: GOOD, nothing written, overflow of one block.
    auto w = h.make_write(rw10(op::write_10, 0, 1), {}, 0);
    h.exec(*w);
    EXPECT_EQ(w->status, Status::good);
    EXPECT_EQ(w->transfer_length, 512u);
    EXPECT_TRUE(h.device().log.empty());

    // One block, EDTL 10000: one block written, GOOD (underflow).
    w = h.make_write(rw10(op::write_10, 0, 1), pattern(10000, 4));
    h.exec(*w);
    EXPECT_EQ(w->status, Status::good);
    EXPECT_EQ(w->transfer_length, 512u);
    EXPECT_EQ(w->fetch_length, 512u) << "the engine asks for what the CDB transfers";
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].length, 512u);

    // One block, EDTL 200: a partial block cannot be written and is not; GOOD, and the residual (of
    // the CDB's transfer) tells the initiator (libiscsi's reservation tests rely on this at 4096).
    w = h.make_write(rw10(op::write_10, 0, 1), pattern(200, 4));
    h.exec(*w);
    EXPECT_EQ(w->status, Status::good);
    EXPECT_EQ(w->transfer_length, 512u) << "the residual is still that of the CDB";
    EXPECT_EQ(h.device().log.size(), 1u);

    // EDTL > TL: only TL is written ("b" over two blocks of "a", second block stays "a").
    std::vector<uint8_t> a(1024, 'a');
    w = h.make_write(rw10(op::write_10, 0, 2), a);
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(1024, 'b'));
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    EXPECT_EQ(*h.device().bytes(0), 'b');
    EXPECT_EQ(*h.device().bytes(511), 'b');
    EXPECT_EQ(*h.device().bytes(512), 'a');

    // EDTL < TL: only EDTL is written (two blocks of "b" with EDTL one block).
    w = h.make_write(rw10(op::write_10, 0, 2), a);
    h.exec(*w);
    w = h.make_write(rw10(op::write_10, 0, 2), std::vector<uint8_t>(1024, 'b'), 512);
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    EXPECT_EQ(w->transfer_length, 1024u) << "overflow of one block";
    EXPECT_EQ(*h.device().bytes(0), 'b');
    EXPECT_EQ(*h.device().bytes(512), 'a');
}

TEST(Sbc, ImmediateDataNeedsNoFetch) {
    Harness h;
    auto w = h.make_write(rw10(op::write_10, 3, 1), pattern(512, 5));
    w->buffer = Buffer::allocate(512);
    std::memcpy(w->buffer.data(), w->out.data(), 512);
    w->data_out_length = 512;
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    EXPECT_EQ(w->fetches, 0);
    EXPECT_TRUE(std::equal(w->out.begin(), w->out.end(), h.device().bytes(3 * 512)));
}

TEST(Sbc, ReadCapacity10) {
    Harness h;
    auto t = h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->transfer_length, 8u);
    EXPECT_EQ(load_be32(&t->received()[0]), 2047u);
    EXPECT_EQ(load_be32(&t->received()[4]), 512u);
    // PMI=0 with an LBA: INVALID FIELD IN CDB. PMI=1 is fine.
    t = h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0}), 8);
    EXPECT_TRUE(invalid_field(*t, 2));
    t = h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0}), 8);
    EXPECT_EQ(t->status, Status::good);
    // Reserved bit (obsolete RELADR) refused.
    t = h.exec(cdb_bytes({0x25, 1, 0, 0, 0, 0, 0, 0, 0, 0}), 8);
    EXPECT_TRUE(invalid_field(*t, 1, 0));
}

TEST(Sbc, ReadCapacityBeyond32Bits) {
    LuConfig big;
    big.blocks = (1ull << 32) + 10;
    big.block_size = 4096;
    Harness h(big);
    auto t = h.exec(cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8);
    EXPECT_EQ(load_be32(&t->received()[0]), 0xffffffffu);
    t = h.exec(read_capacity16(32), 32);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(load_be64(&t->received()[0]), (1ull << 32) + 9);
    EXPECT_EQ(load_be32(&t->received()[8]), 4096u);

    LuConfig edge; // last LBA exactly FFFFFFFEh still fits
    edge.blocks = 0xffffffffull;
    Harness e(edge);
    t = e.exec(cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8);
    EXPECT_EQ(load_be32(&t->received()[0]), 0xfffffffeu);
}

TEST(Sbc, ReadCapacity16) {
    LuConfig thin;
    thin.features.thin = true;
    Harness h(thin);
    auto t = h.exec(read_capacity16(32), 32);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    ASSERT_EQ(d.size(), 32u);
    EXPECT_EQ(load_be64(&d[0]), 2047u);
    EXPECT_EQ(load_be32(&d[8]), 512u);
    EXPECT_EQ(d[12], 0);           // no protection
    EXPECT_EQ(d[13] & 0x0f, 0);    // LBPPBE 0
    EXPECT_EQ(d[14] & 0x80, 0x80); // LBPME
    EXPECT_EQ(d[14] & 0x40, 0x40); // LBPRZ
    // Allocation lengths 0-15 are not an error (libiscsi test_readcapacity16_alloclen).
    for (uint32_t a = 0; a < 16; ++a) {
        t = h.exec(read_capacity16(a), 32);
        EXPECT_EQ(t->status, Status::good) << a;
        EXPECT_EQ(t->transfer_length, a);
    }
    t = h.exec(read_capacity16(32, 5), 32);
    EXPECT_TRUE(invalid_field(*t, 2));

    Harness full;
    t = full.exec(read_capacity16(32), 32);
    EXPECT_EQ(t->received()[14] & 0xc0, 0);
}

TEST(Sbc, SynchronizeCache) {
    Harness h;
    auto t = h.exec(sync_cache10(0, 0, false));
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].op, IoOp::flush);
    EXPECT_EQ(h.device().log[0].offset, 0u);
    EXPECT_EQ(h.device().log[0].length, 2048u * 512); // 0 blocks: to the end

    t = h.exec(rw16(op::synchronize_cache_16, 100, 10));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(h.device().log.back().offset, 100u * 512);
    EXPECT_EQ(h.device().log.back().length, 10u * 512);

    t = h.exec(sync_cache10(2048, 0, false));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(sync_cache10(2000, 100, false));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));

    h.device().fail_with = -EIO;
    t = h.exec(sync_cache10(0, 0, false));
    EXPECT_TRUE(has_sense(*t, SenseKey::medium_error, asc::write_error));
}

TEST(Sbc, SynchronizeCacheImmediateReturnsBeforeTheFlush) {
    Harness h;
    h.device().hold = true;
    auto t = h.exec(sync_cache10(0, 0, true));
    EXPECT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().held.size(), 1u) << "the flush is still running";
    h.device().release_held();
    h.drain();
}

TEST(Sbc, VerifyMediumReadsItBack) {
    Harness h;
    auto t = h.exec(verify10(0, 100, 0));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(t->fetches, 0);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].op, IoOp::read);
    EXPECT_EQ(h.device().log[0].length, 100u * 512);

    h.device().fail_with = -EIO;
    t = h.exec(verify10(0, 1, 0));
    EXPECT_TRUE(has_sense(*t, SenseKey::medium_error, asc::unrecovered_read_error));
}

TEST(Sbc, VerifyLongerThanTheMaximumGoesInChunks) {
    LuConfig config;
    config.options.max_transfer_bytes = 16 * 512;
    Harness h(config);
    auto t = h.exec(verify10(0, 40, 0));
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 3u);
    EXPECT_EQ(h.device().log[0].length, 16u * 512);
    EXPECT_EQ(h.device().log[2].offset, 32u * 512);
    EXPECT_EQ(h.device().log[2].length, 8u * 512);
    // With BYTCHK=1 the data-out is bounded like any transfer.
    t = h.exec(verify10(0, 17, 1), 0);
    EXPECT_TRUE(invalid_field(*t, 7));
}

TEST(Sbc, VerifyBytchkComparesByteForByte) {
    LuConfig config;
    config.options.max_transfer_bytes = 8 * 512; // forces chunks: offsets must stay right across them
    Harness h(config);
    auto data = pattern(20 * 512, 11);
    std::memcpy(h.device().bytes(50 * 512), data.data(), data.size());

    // Equal: GOOD.
    auto v = h.make_write(verify10(50, 8, 1), std::vector<uint8_t>(data.begin(), data.begin() + 8 * 512));
    h.exec(*v);
    EXPECT_EQ(v->status, Status::good);

    config.options.max_transfer_bytes = 32 * 512;
    Harness big(config);
    std::memcpy(big.device().bytes(50 * 512), data.data(), data.size());
    for (size_t flip : {size_t(0), size_t(511), size_t(512), size_t(4097), size_t(20 * 512 - 1)}) {
        auto out = data;
        out[flip] ^= 'X';
        auto m = big.make_write(verify10(50, 20, 1), out);
        big.exec(*m);
        ASSERT_TRUE(has_sense(*m, SenseKey::miscompare, asc::miscompare_during_verify)) << flip;
        auto s = *m->sense_data();
        EXPECT_TRUE(s.information_valid);
        EXPECT_EQ(s.information, flip) << "INFORMATION = offset of the first differing byte";
    }
    auto same = big.make_write(verify10(50, 20, 1), data);
    big.exec(*same);
    EXPECT_EQ(same->status, Status::good);
    // DPO is accepted.
    same = big.make_write(verify10(50, 20, 1, 0x10), data);
    big.exec(*same);
    EXPECT_EQ(same->status, Status::good);
}

TEST(Sbc, VerifyBytchkThreeComparesOneBlockWithEach) {
    Harness h;
    auto block = pattern(512, 21);
    for (int b = 0; b < 6; ++b) {
        std::memcpy(h.device().bytes((30 + b) * 512), block.data(), 512);
    }
    auto v = h.make_write(verify10(30, 6, 3), block);
    h.exec(*v);
    EXPECT_EQ(v->status, Status::good);
    EXPECT_EQ(v->transfer_length, 512u) << "data-out is one block";

    *h.device().bytes(34 * 512 + 7) ^= 1;
    v = h.make_write(verify10(30, 6, 3), block);
    h.exec(*v);
    ASSERT_TRUE(has_sense(*v, SenseKey::miscompare, asc::miscompare_during_verify));
    EXPECT_EQ(v->sense_data()->information, 4u * 512 + 7);
}

TEST(Sbc, VerifyEdgeCases) {
    Harness h;
    // BYTCHK=2 is reserved.
    auto t = h.exec(verify10(0, 1, 2));
    EXPECT_TRUE(invalid_field(*t, 1, 2));
    // 0 blocks: GOOD at LBA 0, out of range past the end (libiscsi test_verify10_0blocks).
    t = h.exec(verify10(0, 0, 1));
    EXPECT_EQ(t->status, Status::good);
    t = h.exec(verify10(2049, 0, 1));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    t = h.exec(verify10(0xffffffffu, 0, 1));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    // Beyond the end.
    auto v = h.make_write(verify10(2047, 2, 1), pattern(1024, 1));
    h.exec(*v);
    EXPECT_TRUE(has_sense(*v, SenseKey::illegal_request, asc::lba_out_of_range));
    // Less data-out than the CDB asks to compare.
    v = h.make_write(verify10(0, 2, 1), pattern(512, 1));
    h.exec(*v);
    EXPECT_TRUE(has_sense(*v, SenseKey::illegal_request, asc::invalid_field_in_command_iu));
    // VERIFY(12) and (16) share the handler.
    EXPECT_EQ(h.exec(rw12(op::verify_12, 0, 4))->status, Status::good);
    EXPECT_EQ(h.exec(rw16(op::verify_16, 0, 4))->status, Status::good);
}

TEST(Sbc, StartStopUnit) {
    Harness h;
    auto ssu = [&](bool immed, uint8_t pc, bool no_flush, bool loej, bool start) {
        return h.exec(cdb_bytes({op::start_stop_unit, immed ? 1 : 0, 0, 0,
                                 pc << 4 | (no_flush ? 4 : 0) | (loej ? 2 : 0) | (start ? 1 : 0), 0}));
    };
    EXPECT_EQ(ssu(false, 0, false, false, true)->status, Status::good);
    // Stop: flushes unless NO_FLUSH, and the unit stays ready.
    size_t before = h.device().log.size();
    EXPECT_EQ(ssu(false, 0, false, false, false)->status, Status::good);
    EXPECT_EQ(h.device().log.size(), before + 1);
    EXPECT_EQ(h.device().log.back().op, IoOp::flush);
    EXPECT_EQ(ssu(false, 0, true, false, false)->status, Status::good);
    EXPECT_EQ(h.device().log.size(), before + 1);
    EXPECT_EQ(ssu(true, 0, false, false, false)->status, Status::good);
    h.drain();
    EXPECT_EQ(h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}))->status, Status::good);
    // LOEJ on a non-removable medium: refused (libiscsi test_startstopunit_simple with RMB=0).
    EXPECT_TRUE(invalid_field(*ssu(true, 0, false, true, false), 4, 1));
    EXPECT_TRUE(invalid_field(*ssu(true, 0, false, true, true), 4, 1));
    // Power conditions are accepted and change nothing; reserved ones are refused.
    EXPECT_EQ(ssu(false, 2, false, false, false)->status, Status::good);
    EXPECT_TRUE(invalid_field(*ssu(false, 4, false, false, false), 4, 7));
}

TEST(Sbc, BackstoreErrorsBecomeSense) {
    Harness h;
    h.device().fail_with = -EIO;
    auto r = h.exec(rw10(op::read_10, 0, 1), 512);
    EXPECT_TRUE(has_sense(*r, SenseKey::medium_error, asc::unrecovered_read_error));
    auto w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.exec(*w);
    EXPECT_TRUE(has_sense(*w, SenseKey::medium_error, asc::write_error));
    h.device().fail_with = -ENOSPC;
    w = h.make_write(rw10(op::write_10, 0, 1), pattern(512, 1));
    h.exec(*w);
    EXPECT_TRUE(has_sense(*w, SenseKey::data_protect, asc::space_allocation_failed_write_protect));
}

TEST(Sbc, CompletionIsNeverInsideSubmit) {
    Harness h;
    auto t = h.make_task(cdb_bytes({0x00, 0, 0, 0, 0, 0}));
    bool returned = false;
    h.reactor.post([&] {
        h.target.submit(*t);
        EXPECT_EQ(t->completions, 0) << "completed inside submit()";
        returned = true;
    });
    EXPECT_TRUE(h.run_until([&] { return t->done(); }));
    EXPECT_TRUE(returned);
    EXPECT_EQ(t->completions, 1);
}

TEST(Sbc, FlushLuForShutdown) {
    Harness h;
    std::optional<int> result;
    std::optional<int> missing;
    h.reactor.post([&] {
        h.target.flush_lu(0, [&](int error) { result = error; });
        h.target.flush_lu(42, [&](int error) { missing = error; });
    });
    ASSERT_TRUE(h.run_until([&] { return result && missing; }));
    EXPECT_EQ(*result, 0);
    EXPECT_EQ(*missing, -ENOENT);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].op, IoOp::flush);
}

// The per-LUN counters the metrics report: every command once, by class, with the bytes it moved and
// a latency histogram whose count is the number of commands.
TEST(Sbc, CountsCommandsBytesAndLatencyPerClass) {
    Harness h;
    auto w = h.make_write(rw10(op::write_10, 0, 4), pattern(4 * 512, 7));
    h.exec(*w);
    ASSERT_EQ(w->status, Status::good);
    for (int i = 0; i < 3; ++i) {
        auto r = h.exec(rw10(op::read_10, 0, 2), 2 * 512);
        ASSERT_EQ(r->status, Status::good);
    }
    auto tur = h.exec(std::vector<uint8_t>(6, 0), 0);
    auto out_of_range = h.exec(rw10(op::read_10, 0xfffffff0, 1), 512);
    ASSERT_EQ(out_of_range->status, Status::check_condition);

    LuStatistics s = h.lu().statistics();
    EXPECT_EQ(s.commands[size_t(IoClass::write)], 1u);
    EXPECT_EQ(s.bytes[size_t(IoClass::write)], 4u * 512);
    EXPECT_EQ(s.commands[size_t(IoClass::read)], 4u);        // a failed read is a read too...
    EXPECT_EQ(s.bytes[size_t(IoClass::read)], 3u * 2 * 512); // ...that moved nothing
    EXPECT_GE(s.commands[size_t(IoClass::other)], 1u);
    for (size_t c = 0; c < io_class_count; ++c) {
        uint64_t observed = 0;
        for (uint64_t n : s.latency_buckets[c]) {
            observed += n;
        }
        EXPECT_EQ(observed, s.commands[c]) << "class " << c;
    }
}
