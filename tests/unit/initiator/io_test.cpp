// The initiator's normal paths against the fake target: login, SCSI helpers, reads and writes through
// immediate data, unsolicited Data-Out and R2Ts, digests, MC/S, the CmdSN window, discovery, threads.
#include "harness.hpp"

#include <cstring>

namespace ispace::initiator::test {
namespace {

TEST(InitiatorIo, LoginInquiryAndCapacity) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    auto inq = s->inquiry(0);
    ASSERT_TRUE(inq) << inq.error().message;
    EXPECT_EQ(inq->device_type, 0);
    EXPECT_EQ(inq->vendor, "ISPACE");
    EXPECT_EQ(inq->product, "FAKE DISK");
    auto cap = s->read_capacity(0);
    ASSERT_TRUE(cap) << cap.error().message;
    EXPECT_EQ(cap->blocks, 4096u);
    EXPECT_EQ(cap->block_size, 512u);
    auto luns = s->report_luns();
    ASSERT_TRUE(luns);
    EXPECT_EQ(*luns, std::vector<uint64_t>{0});
    auto serial = s->unit_serial_number(0);
    ASSERT_TRUE(serial);
    EXPECT_EQ(*serial, "FAKE0001");
    auto limits = s->block_limits(0);
    ASSERT_TRUE(limits);
    EXPECT_EQ(limits->max_transfer_blocks, 2048u);
    EXPECT_TRUE(s->test_unit_ready(0));
    SessionInfo info = s->info();
    EXPECT_EQ(info.connections, 1u);
    EXPECT_NE(info.tsih, 0);
    EXPECT_EQ(info.isid.substr(0, 2), "c0"); // random ISID type
}

TEST(InitiatorIo, CheckConditionIsReportedWithSense) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    Request c;
    c.cdb[0] = 0xff; // no such opcode
    c.cdb_length = 6;
    Response r = s->execute(std::move(c));
    ASSERT_FALSE(r.error);
    EXPECT_EQ(r.status, 0x02);
    auto key = parse_sense(r.sense);
    ASSERT_TRUE(key);
    EXPECT_EQ(key->key, 0x05);
    EXPECT_EQ(key->asc, 0x20);
    EXPECT_NE(r.describe().find("ILLEGAL REQUEST"), std::string::npos);
    // Out of range LBA.
    std::vector<uint8_t> buf(512);
    auto rr = s->read(0, 4096, 1, 512, buf);
    ASSERT_FALSE(rr);
    EXPECT_NE(rr.error().message.find("21/00"), std::string::npos) << rr.error().message;
}

void write_read_roundtrip(Harness& h, Session& s, size_t bytes, uint64_t lba, uint8_t seed) {
    Buffer data = pattern(bytes, seed);
    uint32_t blocks = uint32_t(bytes / 512);
    Response w = s.execute(make_write(0, lba, blocks, 512, data));
    ASSERT_TRUE(w.ok()) << w.describe();
    std::vector<uint8_t> back(bytes);
    auto r = s.read(0, lba, blocks, 512, back);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(0, std::memcmp(back.data(), data.data(), bytes));
    auto disk = h.target->disk();
    EXPECT_EQ(0, std::memcmp(disk.data() + lba * 512, data.data(), bytes));
}

TEST(InitiatorIo, WritesAndReadsOfEverySize) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    // 512 B (immediate only), 16 KiB (= FirstBurst), 200 KiB (R2T bursts of 64 KiB), 1 MiB.
    write_read_roundtrip(h, *s, 512, 0, 1);
    write_read_roundtrip(h, *s, 16384, 10, 2);
    write_read_roundtrip(h, *s, 200 * 1024, 100, 3);
    write_read_roundtrip(h, *s, 1024 * 1024, 2000, 4);
}

TEST(InitiatorIo, UnsolicitedDataWhenInitialR2TIsNo) {
    FakeTargetOptions o;
    o.initial_r2t = false;
    Harness h(o);
    SessionOptions so = h.options();
    so.initial_r2t = false;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_FALSE(s->info().initial_r2t);
    write_read_roundtrip(h, *s, 100 * 1024, 7, 9);
    write_read_roundtrip(h, *s, 8 * 1024, 500, 10);
}

TEST(InitiatorIo, WithoutImmediateData) {
    Harness h;
    SessionOptions so = h.options();
    so.immediate_data = false;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_FALSE(s->info().immediate_data);
    write_read_roundtrip(h, *s, 40 * 1024, 3, 5);
}

TEST(InitiatorIo, HeaderAndDataDigests) {
    Harness h;
    SessionOptions so = h.options();
    so.header_digest = DigestMode::crc32c;
    so.data_digest = DigestMode::crc32c;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_TRUE(s->info().header_digest);
    EXPECT_TRUE(s->info().data_digest);
    write_read_roundtrip(h, *s, 300 * 1024, 64, 11);
    EXPECT_EQ(h.target->data_digest_errors.load(), 0u);
}

TEST(InitiatorIo, McsSpreadsCommandsOverConnections) {
    Harness h;
    SessionOptions so = h.options();
    so.connections = 4;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->info().connections, 4u);
    EXPECT_TRUE(wait_for([&] { return h.target->live_connections() == 4; }));
    Completions done;
    constexpr size_t n = 256;
    for (size_t i = 0; i < n; ++i) {
        s->submit(make_write(0, i * 8, 8, 512, pattern(4096, uint8_t(i))), done.make(i));
    }
    bool all = done.wait(n);
    auto dbg = s->info();
    ASSERT_TRUE(all) << "done " << done.done() << " commands " << dbg.commands << " target saw "
                     << h.target->commands.load() << " retries " << dbg.retries;
    for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(done.at(i).ok()) << i << ": " << done.at(i).describe();
    }
    auto per = h.target->commands_per_cid();
    EXPECT_EQ(per.size(), 4u);
    for (auto& [cid, count] : per) {
        EXPECT_GT(count, 0u) << "connection " << cid << " carried no command";
    }
    auto info = s->info();
    ASSERT_EQ(info.commands_per_connection.size(), 4u);
    auto disk = h.target->disk();
    for (size_t i = 0; i < n; ++i) {
        Buffer expect = pattern(4096, uint8_t(i));
        ASSERT_EQ(0, std::memcmp(disk.data() + i * 4096, expect.data(), 4096)) << i;
    }
}

TEST(InitiatorIo, TargetAllowingFewerConnections) {
    FakeTargetOptions o;
    o.max_connections = 2;
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 4;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->info().connections, 2u);
    write_read_roundtrip(h, *s, 4096, 0, 1);
}

TEST(InitiatorIo, CmdSnWindowIsNeverExceeded) {
    FakeTargetOptions o;
    o.cmd_window = 2;
    Harness h(o);
    SessionOptions so = h.options();
    so.connections = 2;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    Completions done;
    constexpr size_t n = 200;
    for (size_t i = 0; i < n; ++i) {
        s->submit(make_read(0, i, 1, 512), done.make(i));
    }
    ASSERT_TRUE(done.wait(n));
    for (size_t i = 0; i < n; ++i) {
        EXPECT_TRUE(done.at(i).ok()) << done.at(i).describe();
    }
    EXPECT_EQ(h.target->window_violations.load(), 0u);
}

TEST(InitiatorIo, SendTargetsDiscovery) {
    Harness h;
    DiscoveryOptions d;
    d.host = "127.0.0.1";
    d.port = h.target->port();
    auto targets = h.initiator.discover(d);
    ASSERT_TRUE(targets) << targets.error().message;
    ASSERT_EQ(targets->size(), 1u);
    EXPECT_EQ((*targets)[0].name, h.target->options().target_name);
    ASSERT_EQ((*targets)[0].addresses.size(), 1u);
    EXPECT_EQ(h.target->discoveries.load(), 1u);
}

TEST(InitiatorIo, LoginToUnknownTargetFailsClearly) {
    Harness h;
    SessionOptions so = h.options();
    so.target_name = "iqn.2026-01.org.ispace.test:nobody";
    auto s = h.initiator.connect(so);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().message.find("02/03"), std::string::npos) << s.error().message;
}

TEST(InitiatorIo, ConnectRefused) {
    Harness h;
    SessionOptions so = h.options();
    so.port = 1; // nothing listens there
    auto s = h.initiator.connect(so);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().message.find("connect"), std::string::npos) << s.error().message;
}

TEST(InitiatorIo, ManyThreadsSubmitting) {
    Harness h;
    SessionOptions so = h.options();
    so.connections = 2;
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 50; ++i) {
                uint64_t lba = uint64_t(t) * 512 + uint64_t(i) * 8;
                Buffer data = pattern(4096, uint8_t(t * 50 + i));
                if (!s->execute(make_write(0, lba, 8, 512, data)).ok()) {
                    failures++;
                    continue;
                }
                std::vector<uint8_t> back(4096);
                if (!s->read(0, lba, 8, 512, back) || std::memcmp(back.data(), data.data(), 4096) != 0) {
                    failures++;
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(failures.load(), 0);
}

TEST(InitiatorIo, SessionsToSeveralTargets) {
    Harness h;
    FakeTargetOptions o2;
    o2.target_name = "iqn.2026-01.org.ispace.test:second";
    FakeTarget second(o2);
    auto a = h.connect();
    SessionOptions so = h.options();
    so.port = second.port();
    so.target_name = o2.target_name;
    auto b = h.connect(so);
    ASSERT_TRUE(a && b);
    write_read_roundtrip(h, *a, 4096, 0, 1);
    Buffer d = pattern(4096, 77);
    ASSERT_TRUE(b->execute(make_write(0, 0, 8, 512, d)).ok());
    EXPECT_EQ(0, std::memcmp(second.disk().data(), d.data(), 4096));
    EXPECT_NE(a->info().isid, b->info().isid);
}

TEST(InitiatorIo, CloseWaitsForCommandsInFlightAndLogsOut) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    Completions done;
    for (size_t i = 0; i < 32; ++i) {
        s->submit(make_write(0, i * 8, 8, 512, pattern(4096, uint8_t(i))), done.make(i));
    }
    s->close();
    EXPECT_EQ(done.done(), 32u);
    for (size_t i = 0; i < 32; ++i) {
        EXPECT_TRUE(done.at(i).ok());
    }
    EXPECT_EQ(h.target->logouts.load(), 1u);
    // After close, submits fail (asynchronously).
    Response r = s->execute(make_read(0, 0, 1, 512));
    ASSERT_TRUE(r.error);
}

TEST(InitiatorIo, ChapAndMutualChap) {
    FakeTargetOptions o;
    o.chap_user = "alice";
    o.chap_secret = "alice-secret-123";
    o.mutual_user = "target1";
    o.mutual_secret = "target-secret-456";
    Harness h(o);
    SessionOptions so = h.options();
    EXPECT_FALSE(h.initiator.connect(so)) << "no credentials: refused";
    so.chap.user = "alice";
    so.chap.secret = "wrong-secret-999";
    auto bad = h.initiator.connect(so);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("02/01"), std::string::npos) << bad.error().message;
    so.chap.secret = "alice-secret-123";
    auto s = h.connect(so);
    ASSERT_TRUE(s);
    EXPECT_TRUE(s->test_unit_ready(0));
    s->close();
    so.chap.target_user = "target1";
    so.chap.target_secret = "target-secret-456";
    auto mutual = h.connect(so);
    ASSERT_TRUE(mutual);
    EXPECT_TRUE(mutual->test_unit_ready(0));
    mutual->close();
    so.chap.target_secret = "not-the-target-secret";
    auto impostor = h.initiator.connect(so);
    ASSERT_FALSE(impostor) << "a target that cannot prove the mutual secret is refused";
    so.chap.secret = "short";
    auto weak = h.initiator.connect(so);
    ASSERT_FALSE(weak);
    EXPECT_EQ(weak.error().code, EINVAL) << weak.error().message;
}

TEST(InitiatorIo, ChapFallsBackToMd5WhenTheTargetMisreadsSha256) {
    FakeTargetOptions o;
    o.chap_user = "alice";
    o.chap_secret = "alice-secret-123";
    o.misread_chap_sha256 = true;
    Harness h(o);
    SessionOptions so = h.options();
    so.chap.user = "alice";
    so.chap.secret = "alice-secret-123";
    auto s = h.connect(so);
    ASSERT_TRUE(s) << "one retry offering MD5 only logs in";
    EXPECT_TRUE(s->test_unit_ready(0));
    s->close();
    so.chap.secret = "wrong-secret-999";
    auto bad = h.initiator.connect(so);
    ASSERT_FALSE(bad) << "a wrong secret still fails after the MD5 retry";
}

TEST(InitiatorIo, AnswersTargetPings) {
    FakeTargetOptions o;
    o.ping = true;
    Harness h(o);
    auto s = h.connect();
    ASSERT_TRUE(s);
    EXPECT_TRUE(wait_for([&] { return h.target->nop_replies.load() >= 2; }));
    EXPECT_TRUE(s->test_unit_ready(0));
}

// RFC 7143 §11.9.1: the target asks for a negotiation (AsyncEvent 4); the initiator answers with a
// Text Request, and from the answer on sends data segments no larger than the target declares anew.
TEST(InitiatorIo, AnswersANegotiationRequestAndHonoursTheNewValue) {
    Harness h;
    auto s = h.connect();
    ASSERT_TRUE(s);
    write_read_roundtrip(h, *s, 64 * 1024, 0, 1);
    h.target->request_negotiation(4096);
    EXPECT_TRUE(wait_for([&] { return h.target->renegotiations.load() == 1; }));
    // A command on the same connection after the Text Response: its answer comes after that one.
    EXPECT_TRUE(s->test_unit_ready(0));
    write_read_roundtrip(h, *s, 200 * 1024, 100, 2);
    write_read_roundtrip(h, *s, 12 * 1024, 900, 3); // immediate data too
    EXPECT_EQ(h.target->oversized_segments.load(), 0u);
    EXPECT_EQ(h.target->renegotiations.load(), 1u);
}

} // namespace
} // namespace ispace::initiator::test
