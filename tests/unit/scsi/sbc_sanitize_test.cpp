// SANITIZE (SBC-4 5.30): OVERWRITE with its pattern, passes and INVERT, its pacing, BLOCK ERASE,
// CRYPTOGRAPHIC ERASE, EXIT FAILURE MODE, the parameter checks libiscsi's Sanitize suite makes, the
// NOT READY gate while it runs, the failure mode, and an operation that outlives the command that
// started it.
#include "harness.hpp"

#include "scsi/pacer.hpp"
#include "scsi/sbc.hpp"

#include <gtest/gtest.h>

#include <cerrno>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

std::vector<uint8_t> sanitize(uint8_t action, uint16_t length, bool immed = false, bool ause = false) {
    std::vector<uint8_t> c(10, 0);
    c[0] = op::sanitize;
    c[1] = uint8_t(action | (immed ? 0x80 : 0) | (ause ? 0x20 : 0));
    store_be16(&c[7], length);
    return c;
}

std::vector<uint8_t> overwrite_parameters(std::vector<uint8_t> pattern, uint8_t passes = 1,
                                          bool invert = false) {
    std::vector<uint8_t> p(4 + pattern.size(), 0);
    p[0] = uint8_t((invert ? 0x80 : 0) | passes);
    store_be16(&p[2], uint16_t(pattern.size()));
    std::copy(pattern.begin(), pattern.end(), p.begin() + 4);
    return p;
}

// Thin: the device deallocates (BLOCK ERASE is supported). Thick: it zeroes natively but cannot
// deallocate, like a fully provisioned file.
LuConfig small(bool thin_unit = false) {
    LuConfig c;
    c.blocks = 64;
    c.options.max_transfer_bytes = 16 * 512; // four chunks per pass
    c.features.write_zeroes = true;
    if (thin_unit) {
        c.features.thin = true;
        c.features.unmap = true;
    }
    return c;
}

std::unique_ptr<TestTask> overwrite(Harness& h, std::vector<uint8_t> pattern, uint8_t passes = 1,
                                    bool invert = false, bool immed = false) {
    auto p = overwrite_parameters(std::move(pattern), passes, invert);
    return h.make_write(sanitize(sa::sanitize_overwrite, uint16_t(p.size()), immed), p);
}

size_t count(const TestDevice& d, IoOp op) {
    size_t n = 0;
    for (auto& r : d.log) {
        n += r.op == op;
    }
    return n;
}

} // namespace

TEST(Sanitize, OverwriteFillsEveryBlockWithThePattern) {
    Harness h(small());
    auto t = overwrite(h, {0xde, 0xad, 0xbe, 0xef});
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    for (uint64_t at = 0; at < 64 * 512; at += 4) {
        ASSERT_EQ(*h.device().bytes(at), 0xde) << at;
        ASSERT_EQ(*h.device().bytes(at + 3), 0xef) << at;
    }
    EXPECT_EQ(count(h.device(), IoOp::write), 4u) << "chunks of the maximum transfer length";
    EXPECT_EQ(h.device().log.back().op, IoOp::flush) << "each pass ends on the medium";
    EXPECT_FALSE(h.lu().block_state().sanitize.in_progress);
}

TEST(Sanitize, OverwritePassesAndInvert) {
    Harness h(small());
    std::vector<uint8_t> block(512, 0x0f);
    // Two passes with INVERT: the first writes the inverted pattern, the last the pattern itself.
    h.device().hold = true;
    auto t = overwrite(h, block, 2, true);
    h.submit(*t);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    EXPECT_EQ(*h.device().bytes(0), 0xf0) << "first pass: inverted";
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return t->done(); }));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(*h.device().bytes(0), 0x0f);
    EXPECT_EQ(*h.device().bytes(64 * 512 - 1), 0x0f);
    EXPECT_EQ(count(h.device(), IoOp::write), 8u);
    EXPECT_EQ(count(h.device(), IoOp::flush), 2u);
}

TEST(Sanitize, BlockEraseDeallocates) {
    Harness thin(small(true));
    std::memset(thin.device().bytes(0), 'a', 64 * 512);
    auto t = thin.exec(sanitize(sa::sanitize_block_erase, 0));
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(thin.device().log.size(), 2u);
    EXPECT_EQ(thin.device().log[0].op, IoOp::unmap);
    EXPECT_EQ(thin.device().log[0].length, 64u * 512);
    EXPECT_EQ(thin.device().log[1].op, IoOp::flush);
    EXPECT_EQ(*thin.device().bytes(0), 0);
}

TEST(Sanitize, NoEraseWhereTheDeviceCannotDeallocate) {
    // Both erases leave every block deallocated: a thick logical unit offers neither, and answers
    // as for any service action it does not support. OVERWRITE it does offer.
    Harness thick(small(false));
    std::memset(thick.device().bytes(0), 'a', 64 * 512);
    EXPECT_TRUE(invalid_field(*thick.exec(sanitize(sa::sanitize_block_erase, 0)), 1, 4));
    EXPECT_TRUE(invalid_field(*thick.exec(sanitize(sa::sanitize_crypto_erase, 0)), 1, 4));
    EXPECT_TRUE(thick.device().log.empty());
    EXPECT_EQ(*thick.device().bytes(0), 'a');
    auto t = overwrite(thick, {0});
    thick.exec(*t);
    EXPECT_EQ(t->status, Status::good);
    EXPECT_EQ(*thick.device().bytes(0), 0);
}

TEST(Sanitize, CryptoEraseDeallocates) {
    // No media encryption key to change: the data goes the way BLOCK ERASE makes it go, and reads
    // return zeroes afterwards.
    Harness thin(small(true));
    std::memset(thin.device().bytes(0), 'a', 64 * 512);
    auto t = thin.exec(sanitize(sa::sanitize_crypto_erase, 0));
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(thin.device().log.size(), 2u);
    EXPECT_EQ(thin.device().log[0].op, IoOp::unmap);
    EXPECT_EQ(thin.device().log[0].length, 64u * 512);
    EXPECT_EQ(thin.device().log[1].op, IoOp::flush);
    auto r = thin.exec(rw10(op::read_10, 63, 1), 512);
    ASSERT_EQ(r->status, Status::good);
    EXPECT_EQ(r->received()[0], 0);
}

TEST(Sanitize, ParameterChecks) {
    Harness h(small(true));
    // OVERWRITE: the parameter list is a header and 1..block-length bytes of pattern.
    for (uint16_t length = 0; length < 5; ++length) {
        auto t = h.make_write(sanitize(sa::sanitize_overwrite, length), std::vector<uint8_t>(length, 0));
        h.exec(*t);
        EXPECT_TRUE(invalid_field(*t, 7)) << length;
    }
    auto t = h.make_write(sanitize(sa::sanitize_overwrite, 512 + 5), std::vector<uint8_t>(512 + 5, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 7));
    auto p = overwrite_parameters(std::vector<uint8_t>(512, 1), 0); // OVERWRITE COUNT 0
    t = h.make_write(sanitize(sa::sanitize_overwrite, uint16_t(p.size())), p);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    p = overwrite_parameters(std::vector<uint8_t>(512, 1));
    store_be16(&p[2], 0); // INITIALIZATION PATTERN LENGTH 0
    t = h.make_write(sanitize(sa::sanitize_overwrite, uint16_t(p.size())), p);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    store_be16(&p[2], 516); // longer than a block
    t = h.make_write(sanitize(sa::sanitize_overwrite, uint16_t(p.size())), p);
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT FAILURE MODE take no parameter list.
    t = h.make_write(sanitize(sa::sanitize_block_erase, 8), std::vector<uint8_t>(8, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 7));
    t = h.make_write(sanitize(sa::sanitize_crypto_erase, 8), std::vector<uint8_t>(8, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 7));
    t = h.make_write(sanitize(sa::sanitize_exit_failure_mode, 8), std::vector<uint8_t>(8, 0));
    h.exec(*t);
    EXPECT_TRUE(invalid_field(*t, 7));
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Sanitize, UnsupportedServiceActionsAndReservedBits) {
    Harness h(small(true));
    // Every service action but OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT FAILURE MODE:
    // INVALID FIELD IN CDB, byte 1.
    for (uint8_t action = 0; action < 0x1f; ++action) {
        if (action == sa::sanitize_overwrite || action == sa::sanitize_block_erase ||
            action == sa::sanitize_crypto_erase) {
            continue;
        }
        EXPECT_TRUE(invalid_field(*h.exec(sanitize(action, 0)), 1)) << int(action);
    }
    for (uint8_t action : {sa::sanitize_block_erase, sa::sanitize_crypto_erase}) {
        auto c = sanitize(action, 0);
        c[1] |= 0x40; // ZNR: not a zoned device
        EXPECT_TRUE(invalid_field(*h.exec(c), 1, 6));
        for (int byte = 2; byte < 7; ++byte) {
            c = sanitize(action, 0);
            c[byte] = uint8_t(byte);
            EXPECT_TRUE(invalid_field(*h.exec(c), uint16_t(byte))) << byte;
        }
    }
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Sanitize, WriteProtectedIsDataProtect) {
    LuConfig config = small(true);
    config.features.read_only = true;
    Harness h(config);
    for (uint8_t action : {sa::sanitize_block_erase, sa::sanitize_crypto_erase}) {
        EXPECT_TRUE(has_sense(*h.exec(sanitize(action, 0)), SenseKey::data_protect, asc::write_protected));
    }
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Sanitize, MediumAccessWaitsWhileItRuns) {
    Harness h(small(true));
    h.device().hold = true;
    auto s = overwrite(h, {1, 2, 3, 4}, 1, false, /*immed*/ true);
    h.exec(*s);
    ASSERT_EQ(s->status, Status::good) << "IMMED: status once the parameters are valid";
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    ASSERT_TRUE(h.lu().block_state().sanitize.in_progress);

    auto not_ready = [&](const TestTask& t) {
        return has_sense(t, SenseKey::not_ready, asc::lu_not_ready_sanitize_in_progress);
    };
    EXPECT_TRUE(not_ready(*h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}))));
    EXPECT_TRUE(not_ready(*h.exec(rw10(op::read_10, 0, 1), 512)));
    EXPECT_TRUE(not_ready(*h.exec(cdb_bytes({0x1b, 1, 0, 0, 0x02, 0}))));
    EXPECT_TRUE(not_ready(*h.exec(sanitize(sa::sanitize_block_erase, 0))));
    // What reports on the device still runs.
    EXPECT_EQ(h.exec(cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->status, Status::good);
    EXPECT_EQ(h.exec(cdb_bytes({0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}), 64)->status, Status::good);
    // REQUEST SENSE reports the sanitize with its progress: one chunk of four done.
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    auto rs = h.exec(cdb_bytes({0x03, 0, 0, 0, 18, 0}), 18);
    ASSERT_EQ(rs->status, Status::good);
    auto sense = parse_sense(rs->received());
    ASSERT_TRUE(sense);
    EXPECT_EQ(sense->key, SenseKey::not_ready);
    EXPECT_EQ(sense->code, asc::lu_not_ready_sanitize_in_progress);
    ASSERT_EQ(rs->received().size(), 18u);
    EXPECT_EQ(rs->received()[15] & 0x80, 0x80) << "SKSV";
    EXPECT_EQ(load_be16(&rs->received()[16]), 0x4000) << "a quarter done";

    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return !h.lu().block_state().sanitize.in_progress.load(); }));
    EXPECT_EQ(h.exec(cdb_bytes({0x00, 0, 0, 0, 0, 0}))->status, Status::good);
}

TEST(Sanitize, WaitsForCommandsAlreadyRunning) {
    Harness h(small(true));
    h.device().hold = true;
    auto w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 'w'));
    h.submit(*w);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    auto s = h.make_task(sanitize(sa::sanitize_block_erase, 0, true), 0, false);
    h.exec(*s);
    ASSERT_EQ(s->status, Status::good);
    h.drain();
    EXPECT_EQ(h.device().held.size(), 1u) << "the erase waits for the write in flight";
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return w->done() && !h.lu().block_state().sanitize.in_progress.load(); }));
    EXPECT_EQ(*h.device().bytes(0), 0) << "erased after the write, not before";
}

TEST(Sanitize, AbortEndsTheWaitNotTheOperation) {
    Harness h(small());
    h.device().hold = true;
    auto s = overwrite(h, {7}); // IMMED=0
    h.submit(*s);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    bool answered = false;
    h.target.abort_task(h.nexus, encode_lun(0), s->tag, [&](TmfResult) { answered = true; });
    h.drain();
    h.device().release_held(); // one chunk: the operation notices the abort between chunks
    ASSERT_TRUE(h.run_until([&] { return answered && s->done(); }));
    EXPECT_TRUE(s->aborted);
    EXPECT_TRUE(h.lu().block_state().sanitize.in_progress) << "the sanitize goes on";
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return !h.lu().block_state().sanitize.in_progress.load(); }));
    EXPECT_EQ(*h.device().bytes(64 * 512 - 1), 7);
}

TEST(Sanitize, FailureModeAndExit) {
    Harness h(small(true));
    // AUSE=0: a failed sanitize can only be left by one that succeeds.
    h.device().fail_with = -EIO;
    auto t = h.exec(sanitize(sa::sanitize_block_erase, 0));
    EXPECT_TRUE(has_sense(*t, SenseKey::medium_error, asc::sanitize_command_failed));
    h.device().fail_with = 0;
    EXPECT_TRUE(has_sense(*h.exec(rw10(op::read_10, 0, 1), 512), SenseKey::medium_error,
                          asc::sanitize_command_failed));
    EXPECT_EQ(h.exec(cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->status, Status::good);
    EXPECT_TRUE(invalid_field(*h.exec(sanitize(sa::sanitize_exit_failure_mode, 0)), 1, 5));
    EXPECT_EQ(h.exec(sanitize(sa::sanitize_block_erase, 0))->status, Status::good);
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::good);

    // AUSE=1: EXIT FAILURE MODE leaves it.
    h.device().fail_with = -EIO;
    h.exec(sanitize(sa::sanitize_block_erase, 0, false, true));
    h.device().fail_with = 0;
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::check_condition);
    EXPECT_EQ(h.exec(sanitize(sa::sanitize_exit_failure_mode, 0))->status, Status::good);
    EXPECT_EQ(h.exec(rw10(op::read_10, 0, 1), 512)->status, Status::good);
    // With no failure there is nothing to exit, and that is not an error.
    EXPECT_EQ(h.exec(sanitize(sa::sanitize_exit_failure_mode, 0))->status, Status::good);
}

// --- pacing (pacer.hpp) -------------------------------------------------------------------------

namespace {

using Clock = Pacer::Clock;
using std::chrono::milliseconds;

} // namespace

TEST(Pacer, WaitsOutWhatAChunkRanAhead) {
    Pacer p(1 << 20); // 1 MiB/s: 256 KiB take 250 ms
    Clock::time_point t0{};
    EXPECT_EQ(p.time_for(256 << 10), milliseconds(250));
    EXPECT_EQ(p.wait_after(256 << 10, t0, t0 + milliseconds(10)), milliseconds(240));
    // The next chunk starts when the wait ends; its time counts from the end of the previous one.
    EXPECT_EQ(p.wait_after(256 << 10, t0 + milliseconds(250), t0 + milliseconds(260)), milliseconds(240));
}

TEST(Pacer, ASlowChunkBuildsNoCredit) {
    Pacer p(1 << 20);
    Clock::time_point t0{};
    // A chunk that took longer than its 250 ms: the next one goes at once...
    EXPECT_EQ(p.wait_after(256 << 10, t0, t0 + milliseconds(400)), Clock::duration::zero());
    // ...and is given its own 250 ms from when it started, not what is left of a budget that the
    // slow chunk overran: no burst to catch up.
    EXPECT_EQ(p.wait_after(256 << 10, t0 + milliseconds(400), t0 + milliseconds(410)), milliseconds(240));
}

TEST(Pacer, UnlimitedNeverWaits) {
    Pacer p(0);
    Clock::time_point t0{};
    EXPECT_TRUE(p.unlimited());
    EXPECT_EQ(p.wait_after(uint64_t(1) << 40, t0, t0), Clock::duration::zero());
    EXPECT_EQ(p.chunk_bytes(512, 8 << 20, milliseconds(125)), uint64_t(8) << 20);
}

TEST(Pacer, ChunksKeepEachWaitShort) {
    EXPECT_EQ(Pacer(64 << 20).chunk_bytes(512, 8 << 20, milliseconds(125)), uint64_t(8) << 20);
    EXPECT_EQ(Pacer(64 << 20).chunk_bytes(512, 1 << 20, milliseconds(125)), uint64_t(1) << 20);
    EXPECT_EQ(Pacer(1 << 20).chunk_bytes(512, 8 << 20, milliseconds(125)), uint64_t(128) << 10);
    EXPECT_EQ(Pacer(1).chunk_bytes(4096, 8 << 20, milliseconds(125)), 4096u) << "at least a block";
    // No overflow for a large chunk at a slow rate: the time is capped, not wrapped.
    EXPECT_EQ(Pacer(1).time_for(uint64_t(1) << 30), std::chrono::seconds(uint64_t(1) << 30));
    EXPECT_GT(Pacer(1).time_for(uint64_t(1) << 40), std::chrono::hours(24 * 365 * 100));
    EXPECT_GT(Pacer(1).time_for(~uint64_t(0)), std::chrono::hours(24 * 365 * 100));
    // Nor for a very fast rate.
    EXPECT_EQ(Pacer(uint64_t(1) << 40).time_for((uint64_t(1) << 40) - 1),
              std::chrono::nanoseconds(999'999'999));
}

TEST(Sanitize, UnpacedOverwriteIssuesEveryChunkAtOnce) {
    LuConfig config = small();
    config.options.sanitize_bytes_per_second = 0;
    Harness h(config);
    auto t = overwrite(h, {9}, 1, false, /*immed*/ true);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    // The completions of a device that finishes at once are deferred work of the same loop iteration:
    // with no pacing, the whole pass is done without any timer.
    h.reactor.run_once(milliseconds(0));
    EXPECT_EQ(count(h.device(), IoOp::write), 4u);
    EXPECT_FALSE(h.lu().block_state().sanitize.in_progress);
}

TEST(Sanitize, PacedOverwriteWaitsBetweenChunks) {
    LuConfig config = small();
    config.options.sanitize_bytes_per_second = 1; // one 512-byte block every 512 s
    Harness h(config);
    auto t = overwrite(h, {9}, 1, false, /*immed*/ true);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    h.drain();
    // The first chunk (one block: the most the rate allows per pacing period) is written; the next
    // waits for a timer hundreds of seconds away. No reactor thread sleeps meanwhile.
    ASSERT_EQ(count(h.device(), IoOp::write), 1u);
    EXPECT_EQ(h.device().log[0].length, 512u);
    EXPECT_TRUE(h.lu().block_state().sanitize.in_progress);
    EXPECT_EQ(*h.device().bytes(0), 9);
    EXPECT_EQ(*h.device().bytes(512), 0);
    // The logical unit answers while the operation waits, with the progress of what is written.
    auto rs = h.exec(cdb_bytes({0x03, 0, 0, 0, 18, 0}), 18);
    ASSERT_EQ(rs->status, Status::good);
    ASSERT_EQ(rs->received().size(), 18u);
    EXPECT_EQ(rs->received()[2] & 0x0f, uint8_t(SenseKey::not_ready));
    EXPECT_EQ(rs->received()[15] & 0x80, 0x80) << "SKSV";
    EXPECT_EQ(load_be16(&rs->received()[16]), 65536 / 64) << "one block of 64";
    EXPECT_EQ(h.exec(cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->status, Status::good);
    h.drain();
    EXPECT_EQ(count(h.device(), IoOp::write), 1u);
    // The test ends with the operation owned by its timer. The logical unit goes first (the harness's
    // order) and cuts it loose; tearing the reactor down then frees it without touching the logical
    // unit (ASan would see it). ispaced's order, reactors first, is the operation's own destructor.
}

TEST(Sanitize, ShutdownAbandonsARunningOperation) {
    LuConfig config = small();
    config.options.sanitize_bytes_per_second = 1;
    Harness h(config);
    auto t = overwrite(h, {7}, 1, false, /*immed*/ true);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    h.drain();
    ASSERT_TRUE(h.lu().block_state().sanitize.in_progress);
    EXPECT_EQ(h.lu().block_state().range_lock.queued(), 1u) << "the operation holds the whole medium";
    sbc::abandon_sanitize(h.lu());
    EXPECT_FALSE(h.lu().block_state().sanitize.in_progress);
    EXPECT_EQ(h.lu().block_state().sanitize.op, nullptr);
    EXPECT_EQ(h.lu().block_state().range_lock.queued(), 0u);
    sbc::abandon_sanitize(h.lu()); // nothing left to abandon
    EXPECT_EQ(count(h.device(), IoOp::write), 1u);
}

TEST(Sanitize, PacedOverwriteCompletes) {
    LuConfig config = small();
    config.options.sanitize_bytes_per_second = 128 << 10; // 8 KiB chunks, 62.5 ms each: 0.5 s
    Harness h(config);
    auto t = overwrite(h, {0x5a}, 2); // IMMED=0: the command waits for both passes
    h.submit(*t);
    ASSERT_TRUE(h.run_until([&] { return t->done(); }, 1000));
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(count(h.device(), IoOp::write), 8u);
    EXPECT_EQ(count(h.device(), IoOp::flush), 2u);
    EXPECT_EQ(*h.device().bytes(64 * 512 - 1), 0x5a);
    EXPECT_FALSE(h.lu().block_state().sanitize.in_progress);
    EXPECT_EQ(h.lu().block_state().sanitize.done_blocks.load(), 128u);
}
