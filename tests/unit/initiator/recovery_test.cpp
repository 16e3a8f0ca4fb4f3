// Recovery through the fault-injecting transport: a dropped connection, a lost response, corrupted
// digests both ways, delays, a hung command escalating to ABORT TASK, LUN RESET and reconnection,
// keepalive, the recovery time limit, and the order of re-sent writes.
#include "harness.hpp"

#include <cstring>

namespace ispace::initiator::test {
namespace {

using iscsi::Opcode;

bool is(const FaultPdu& p, FaultDirection d, Opcode op) {
    return p.direction == d && p.opcode() == op;
}

// Submits `n` writes of 4 KiB (pattern seeded by index) and checks that all succeed and land.
void write_many_and_check(Harness& h, Session& s, size_t n, size_t stride_blocks = 8) {
    Completions done;
    for (size_t i = 0; i < n; ++i) {
        s.submit(make_write(0, i * stride_blocks, 8, 512, pattern(4096, uint8_t(i))), done.make(i));
    }
    ASSERT_TRUE(done.wait(n));
    for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(done.at(i).ok()) << "write " << i << ": " << done.at(i).describe();
    }
    auto disk = h.target->disk();
    for (size_t i = 0; i < n; ++i) {
        Buffer expect = pattern(4096, uint8_t(i));
        ASSERT_EQ(0, std::memcmp(disk.data() + i * stride_blocks * 512, expect.data(), 4096))
            << "write " << i;
    }
}

TEST(InitiatorRecovery, DroppedConnectionIsReinstatedAndWritesRetried) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    // Cut the connection as the 20th SCSI command goes out: commands before it may or may not have
    // their status, the rest are still queued.
    auto count = std::make_shared<std::atomic<int>>(0);
    h.faults->set_rule([count](const FaultPdu& p) -> Fault {
        if (is(p, FaultDirection::outbound, Opcode::scsi_command) && ++*count == 20) {
            return {FaultAction::disconnect};
        }
        return {};
    });
    write_many_and_check(h, *s, 64);
    EXPECT_GE(h.faults->stats().disconnects.load(), 1u);
    EXPECT_GE(h.target->reinstatements.load(), 1u);
    EXPECT_GE(s->info().reconnects, 1u);
    EXPECT_EQ(s->info().connections, 1u);
}

TEST(InitiatorRecovery, DroppedConnectionInAnMcsSession) {
    Harness h;
    SessionOptions so = h.options();
    so.connections = 3;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    auto count = std::make_shared<std::atomic<int>>(0);
    h.faults->set_rule([count](const FaultPdu& p) -> Fault {
        if (is(p, FaultDirection::inbound, Opcode::scsi_response) && ++*count == 30) {
            return {FaultAction::disconnect};
        }
        return {};
    });
    write_many_and_check(h, *s, 128);
    EXPECT_GE(h.target->reinstatements.load(), 1u);
    EXPECT_EQ(s->info().connections, 3u);
}

TEST(InitiatorRecovery, TargetProcessDies) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    Completions done;
    constexpr size_t n = 64;
    for (size_t i = 0; i < n; ++i) {
        s->submit(make_write(0, i * 8, 8, 512, pattern(4096, uint8_t(i))), done.make(i));
        if (i == 16) {
            h.target->drop_all_connections();
        }
    }
    ASSERT_TRUE(done.wait(n));
    for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(done.at(i).ok()) << done.at(i).describe();
    }
    auto disk = h.target->disk();
    for (size_t i = 0; i < n; ++i) {
        Buffer expect = pattern(4096, uint8_t(i));
        ASSERT_EQ(0, std::memcmp(disk.data() + i * 4096, expect.data(), 4096)) << i;
    }
}

TEST(InitiatorRecovery, LostResponseIsAbortedAndRetried) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::scsi_response); },
             {FaultAction::drop}));
    Buffer data = pattern(8192, 42);
    Response r = s->execute(make_write(0, 100, 16, 512, data));
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(h.faults->stats().dropped.load(), 1u);
    EXPECT_GE(h.target->aborts.load(), 1u);
    EXPECT_GE(s->info().retries, 1u);
    EXPECT_EQ(s->info().reconnects, 0u); // recovered by ABORT TASK alone
    EXPECT_EQ(0, std::memcmp(h.target->disk().data() + 100 * 512, data.data(), 8192));
}

TEST(InitiatorRecovery, LostCommandIsAbortedAndRetried) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    // The command never reaches the target: the target's CmdSN sequence has a hole until the
    // ABORT TASK tells it to consider that CmdSN received (RFC 7143 §11.5.1).
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::outbound, Opcode::scsi_command); },
             {FaultAction::drop}));
    std::vector<uint8_t> buf(512);
    auto r = s->read(0, 0, 1, 512, buf);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_GE(h.target->aborts.load(), 1u);
    write_many_and_check(h, *s, 8);
}

TEST(InitiatorRecovery, LostDataInIsRecovered) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    Buffer data = pattern(64 * 1024, 5);
    ASSERT_TRUE(s->execute(make_write(0, 0, 128, 512, data)).ok());
    // Losing a Data-In breaks the DataSN sequence: a protocol error at ERL 0, so the connection goes
    // and the read is sent again on the reinstated session.
    h.faults->set_rule(once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::data_in); },
                            {FaultAction::drop}));
    std::vector<uint8_t> back(64 * 1024);
    auto r = s->read(0, 0, 128, 512, back);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(0, std::memcmp(back.data(), data.data(), back.size()));
}

// A target that places a Data-In outside the read's buffer (its Buffer Offset rewritten on the way:
// FaultAction::edit) is a protocol error: the bytes go nowhere near the buffer's end, the connection
// goes, and the read sent again on the reinstated session returns the right data.
TEST(InitiatorRecovery, ADataInOutsideTheReadsBufferIsRefusedAndTheReadSentAgain) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    Buffer data = pattern(8192, 3);
    ASSERT_TRUE(s->execute(make_write(0, 16, 16, 512, data)).ok());
    Fault edit{FaultAction::edit};
    edit.edits.push_back({42, 0x00, 0x10}); // Buffer Offset (bytes 40-43) 0 -> 4096: 4 KiB past the end
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::data_in); }, edit));
    Buffer back = Buffer::allocate(8193); // a larger size class: slack after the 8 KiB the read gets
    std::memset(back.data(), 0, back.capacity());
    back.resize(8192);
    Response r = s->execute(make_read(0, 16, 16, 512, back));
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(0, std::memcmp(back.data(), data.data(), 8192));
    for (size_t i = back.size(); i < back.capacity(); ++i) {
        ASSERT_EQ(back.data()[i], 0) << "written past the buffer at " << i;
    }
    EXPECT_EQ(h.faults->stats().edited.load(), 1u);
    EXPECT_GE(s->info().reconnects, 1u);
}

TEST(InitiatorRecovery, CorruptedDataDigestOnDataIn) {
    Harness h;
    SessionOptions so = h.options();
    so.header_digest = DigestMode::crc32c;
    so.data_digest = DigestMode::crc32c;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Buffer data = pattern(32 * 1024, 9);
    ASSERT_TRUE(s->execute(make_write(0, 64, 64, 512, data)).ok());
    h.faults->set_rule(once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::data_in); },
                            {FaultAction::corrupt_data}));
    std::vector<uint8_t> back(32 * 1024);
    auto r = s->read(0, 64, 64, 512, back);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(0, std::memcmp(back.data(), data.data(), back.size())); // never the corrupted bytes
    EXPECT_EQ(h.faults->stats().corrupted.load(), 1u);
    EXPECT_GE(s->info().digest_errors, 1u);
    EXPECT_GE(s->info().reconnects, 1u);
}

// A read's observer (Request::observer) sees the corrupted segment land, then the read sent again land
// at the same offsets: what it made of the first arrival is what it must distrust, and the second
// arrival is what the read returns.
TEST(InitiatorRecovery, AnObserverSeesAReadSentAgainLandAgain) {
    struct Recorder final : DataObserver {
        void landed(uint64_t offset, const uint8_t* p, size_t n) override {
            if (offset < next) {
                ++again;
            }
            next = offset + n;
            last.resize(std::max<size_t>(last.size(), next));
            std::memcpy(last.data() + offset, p, n);
        }
        uint64_t next = 0;
        int again = 0;
        std::vector<uint8_t> last;
    };
    Harness h;
    SessionOptions so = h.options();
    so.data_digest = DigestMode::crc32c;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Buffer data = pattern(32 * 1024, 10);
    ASSERT_TRUE(s->execute(make_write(0, 64, 64, 512, data)).ok());
    h.faults->set_rule(once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::data_in); },
                            {FaultAction::corrupt_data}));
    Recorder r;
    Request read = make_read(0, 64, 64, 512);
    read.observer = &r;
    Response response = s->execute(read);
    ASSERT_TRUE(response.ok()) << response.describe();
    EXPECT_EQ(0, std::memcmp(read.data.data(), data.data(), data.size()));
    EXPECT_GE(r.again, 1);
    ASSERT_EQ(r.last.size(), data.size());
    EXPECT_EQ(0, std::memcmp(r.last.data(), data.data(), data.size()));
}

TEST(InitiatorRecovery, CorruptedHeaderDigestOnResponse) {
    Harness h;
    SessionOptions so = h.options();
    so.header_digest = DigestMode::crc32c;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::scsi_response); },
             {FaultAction::corrupt_header}));
    write_many_and_check(h, *s, 16);
    EXPECT_GE(s->info().digest_errors, 1u);
    EXPECT_GE(s->info().reconnects, 1u);
}

TEST(InitiatorRecovery, CorruptedDataDigestOnDataOut) {
    Harness h;
    SessionOptions so = h.options();
    so.data_digest = DigestMode::crc32c;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    // The target finds the bad digest, rejects the PDU and drops the connection (ERL 0).
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::outbound, Opcode::data_out); },
             {FaultAction::corrupt_data}));
    Buffer data = pattern(256 * 1024, 3);
    Response r = s->execute(make_write(0, 0, 512, 512, data));
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(h.target->data_digest_errors.load(), 1u);
    EXPECT_EQ(0, std::memcmp(h.target->disk().data(), data.data(), data.size()));
}

TEST(InitiatorRecovery, DelayedPdusChangeNothing) {
    Harness h;
    SessionOptions so = h.options();
    so.timeouts.command = 5s; // delays are not timeouts here
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    auto count = std::make_shared<std::atomic<int>>(0);
    h.faults->set_rule([count](const FaultPdu& p) -> Fault {
        if (++*count % 5 == 0) {
            return {FaultAction::delay, 20ms};
        }
        return {};
    });
    write_many_and_check(h, *s, 40);
    EXPECT_GT(h.faults->stats().delayed.load(), 0u);
    EXPECT_EQ(s->info().reconnects, 0u);
    EXPECT_EQ(s->info().retries, 0u);
}

TEST(InitiatorRecovery, HungCommandEscalatesToLunReset) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    auto held = std::make_shared<std::atomic<int>>(0);
    h.target->set_hold(
        [held](const iscsi::ScsiCommand& c) { return c.cdb[0] == 0x2a && held->fetch_add(1) == 0; });
    h.target->set_ignore_tmf(iscsi::TmfFunction::abort_task, true);
    Buffer data = pattern(4096, 8);
    Response r = s->execute(make_write(0, 8, 8, 512, data));
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_GE(h.target->aborts.load(), 1u);
    EXPECT_GE(h.target->lun_resets.load(), 1u);
    EXPECT_EQ(s->info().reconnects, 0u);
    EXPECT_EQ(0, std::memcmp(h.target->disk().data() + 8 * 512, data.data(), 4096));
}

TEST(InitiatorRecovery, UnansweredLunResetDropsTheConnection) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    auto held = std::make_shared<std::atomic<int>>(0);
    h.target->set_hold(
        [held](const iscsi::ScsiCommand& c) { return c.cdb[0] == 0x28 && held->fetch_add(1) == 0; });
    h.target->set_ignore_tmf(iscsi::TmfFunction::abort_task, true);
    h.target->set_ignore_tmf(iscsi::TmfFunction::lun_reset, true);
    std::vector<uint8_t> buf(4096);
    auto r = s->read(0, 0, 8, 512, buf);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_GE(h.target->lun_resets.load(), 1u);
    EXPECT_GE(s->info().reconnects, 1u);
}

TEST(InitiatorRecovery, RetriesAreBounded) {
    Harness h;
    SessionOptions so = h.options();
    so.command_retries = 2;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    // Every READ is swallowed: after the retries the command fails instead of hanging forever.
    h.target->set_hold([](const iscsi::ScsiCommand& c) { return c.cdb[0] == 0x28; });
    Response r = s->execute(make_read(0, 0, 1, 512));
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->code, ETIMEDOUT);
    EXPECT_GE(h.target->aborts.load(), 3u);
    h.target->set_hold(nullptr);
    EXPECT_TRUE(s->test_unit_ready(0));
}

TEST(InitiatorRecovery, KeepaliveNoticesADeadConnection) {
    Harness h;
    SessionOptions so = h.options();
    so.timeouts.nop_interval = 50ms;
    so.timeouts.nop_timeout = 150ms;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    // The target goes silent: every NOP-In answer is lost. Only the keepalive can notice.
    h.faults->set_rule(once([](const FaultPdu& p) { return is(p, FaultDirection::inbound, Opcode::nop_in); },
                            {FaultAction::drop}));
    EXPECT_TRUE(wait_for([&] { return s->info().reconnects >= 1; }));
    EXPECT_TRUE(s->test_unit_ready(0));
}

TEST(InitiatorRecovery, GivesUpAfterTheRecoveryTimeout) {
    Harness h;
    SessionOptions so = h.options();
    so.timeouts.recovery = 300ms;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    h.target.reset(); // the target is gone for good
    Response r = s->execute(make_read(0, 0, 1, 512));
    ASSERT_TRUE(r.error);
    // Later submits fail at once with the same reason.
    Response r2 = s->execute(make_read(0, 0, 1, 512));
    ASSERT_TRUE(r2.error);
}

TEST(InitiatorRecovery, UnitAttentionIsRetried) {
    FakeTargetOptions o;
    o.unit_attention_on_new_session = true;
    Harness h(o);
    auto s = h.connect();
    ASSERT_TRUE(s);
    EXPECT_TRUE(s->test_unit_ready(0));
    EXPECT_GE(s->info().unit_attentions, 1u);
    EXPECT_EQ(s->info().retries, 0u) << "the unit attention of a new nexus is not a retry";
}

TEST(InitiatorRecovery, ResentWritesKeepTheirOrder) {
    // Twenty writes of the same block, each with its own value, all in flight at once; the connection
    // is cut while they are. Unacknowledged ones are re-sent in submission order on the new session,
    // so the block ends with the value of the last write — never an older one re-applied after it.
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    auto count = std::make_shared<std::atomic<int>>(0);
    h.faults->set_rule([count](const FaultPdu& p) -> Fault {
        if (is(p, FaultDirection::inbound, Opcode::scsi_response) && ++*count == 5) {
            return {FaultAction::disconnect};
        }
        return {};
    });
    Completions done;
    constexpr size_t n = 20;
    for (size_t i = 0; i < n; ++i) {
        Buffer b = Buffer::allocate(512);
        std::memset(b.data(), int(i + 1), 512);
        s->submit(make_write(0, 7, 1, 512, b), done.make(i));
    }
    ASSERT_TRUE(done.wait(n));
    for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(done.at(i).ok()) << done.at(i).describe();
    }
    EXPECT_GE(h.target->reinstatements.load(), 1u);
    EXPECT_EQ(h.target->disk()[7 * 512], n);
    // Within each session the writes ran in submission order.
    auto log = h.target->write_log();
    for (size_t i = 1; i < log.size(); ++i) {
        if (log[i].tsih == log[i - 1].tsih) {
            EXPECT_LT(log[i - 1].first_byte, log[i].first_byte) << "at " << i;
        }
    }
}

TEST(InitiatorRecovery, NoReconnectFailsCommandsInFlight) {
    Harness h;
    SessionOptions so = h.options();
    so.reconnect = false;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    h.faults->set_rule(
        once([](const FaultPdu& p) { return is(p, FaultDirection::outbound, Opcode::scsi_command); },
             {FaultAction::disconnect}));
    Response r = s->execute(make_read(0, 0, 1, 512));
    ASSERT_TRUE(r.error);
}

} // namespace
} // namespace ispace::initiator::test
