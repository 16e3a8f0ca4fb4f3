// The initiator's small parts: URL parsing, the ITT-indexed task table, sense decoding, CDB builders.
#include "initiator/connection.hpp"
#include "initiator/task_table.hpp"
#include "ispace/initiator.hpp"

#include <gtest/gtest.h>

#include <set>

namespace ispace::initiator {
namespace {

TEST(Url, FullForm) {
    auto u = parse_url("iscsi://alice%s3cr3t@10.0.0.5:3261/iqn.2026-01.com.example:disk/3");
    ASSERT_TRUE(u) << u.error().message;
    EXPECT_EQ(u->host, "10.0.0.5");
    EXPECT_EQ(u->port, 3261);
    EXPECT_EQ(u->target_name, "iqn.2026-01.com.example:disk");
    ASSERT_TRUE(u->lun);
    EXPECT_EQ(*u->lun, 3u);
    EXPECT_EQ(u->chap.user, "alice");
    EXPECT_EQ(u->chap.secret, "s3cr3t");
    EXPECT_EQ(to_string(*u), "iscsi://alice@10.0.0.5:3261/iqn.2026-01.com.example:disk/3"); // no secret
}

TEST(Url, PortalOnlyAndDefaults) {
    auto u = parse_url("iscsi://storage.example");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "storage.example");
    EXPECT_EQ(u->port, 3260);
    EXPECT_TRUE(u->target_name.empty());
    EXPECT_FALSE(u->lun);
    auto v = parse_url("iscsi://[::1]:3262/iqn.x:y/0?header_digest=crc32c&data_digest=none");
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_EQ(v->host, "::1");
    EXPECT_EQ(v->port, 3262);
    EXPECT_EQ(v->portal(), "[::1]:3262");
    EXPECT_EQ(*v->lun, 0u);
    EXPECT_EQ(v->header_digest, DigestMode::crc32c);
    EXPECT_EQ(v->data_digest, DigestMode::none);
}

TEST(Url, EscapedSecret) {
    auto u = parse_url("iscsi://bob%p%40ss%25word@h/iqn.a:b/1");
    ASSERT_TRUE(u) << u.error().message;
    EXPECT_EQ(u->chap.user, "bob");
    EXPECT_EQ(u->chap.secret, "p@ss%word");
}

TEST(Url, Rejects) {
    ::unsetenv(chap_secret_variable);
    for (const char* bad :
         {"http://h/iqn/0", "iscsi://", "iscsi://h:0/iqn/1", "iscsi://h:99999/i/1", "iscsi://h/i/x",
          "iscsi://h/i/16384", "iscsi://user@h/i/0", "iscsi://h/i/0?bogus=1", "iscsi://[::1/i/0",
          "iscsi://h:/i/0", "iscsi://h/i/0?header_digest=md5"}) {
        auto u = parse_url(bad);
        EXPECT_FALSE(u) << bad;
        if (!u) {
            EXPECT_NE(u.error().message.find("expected iscsi://"), std::string::npos);
        }
    }
}

// A URL that does not parse is quoted in the error without its secret (the report: "URL
// 'iscsi://alice%alice-secret-123@...': bad LUN 'x'").
TEST(Url, ErrorsNeverEchoTheSecret) {
    ::unsetenv(chap_target_secret_variable);
    for (const char* bad : {"iscsi://alice%alice-secret-123@127.0.0.1/iqn.2026-11.org.x:t/x",
                            "iscsi://alice%alice-secret-123@h:99999/iqn.2026-11.org.x:t/0",
                            "iscsi://alice%alice-secret-123/iqn.2026-11.org.x:t/0",
                            "iscsi://alice%alice-secret-123@h/iqn.2026-11.org.x:t/0?bogus=1",
                            "iscsi://alice%alice-secret-123@h/iqn.x:t/0?target_user=b&target_password=alice-"
                            "secret-123&header_digest=md5",
                            "iscsi://alice%alice-secret-123@/i/0", "iscsi://alice%al/ice-secret-123@h/i/0"}) {
        auto u = parse_url(bad);
        ASSERT_FALSE(u) << bad;
        EXPECT_EQ(u.error().message.find("secret-123"), std::string::npos) << u.error().message;
    }
    EXPECT_EQ(redact_url("iscsi://alice%s3cr3t@h:3261/iqn.x:y/0?target_user=t&target_password=pw&x=1"),
              "iscsi://alice%***@h:3261/iqn.x:y/0?target_user=t&target_password=***&x=1");
    EXPECT_EQ(redact_url("iscsi://[fe80::1%25eth0]:3260/iqn.x:y/0"),
              "iscsi://[fe80::1%25eth0]:3260/iqn.x:y/0");
    EXPECT_EQ(redact_url("iscsi://h/iqn.x:y/0"), "iscsi://h/iqn.x:y/0");
}

// iscsi://user@HOST takes the secret from ISPACE_CHAP_SECRET; target_user without target_password
// from ISPACE_CHAP_TARGET_SECRET.
TEST(Url, SecretsFromTheEnvironment) {
    ::setenv(chap_secret_variable, "from-the-environment", 1);
    ::setenv(chap_target_secret_variable, "target-side-secret", 1);
    auto u = parse_url("iscsi://alice@h/iqn.2026-01.com.example:disk/0?target_user=tgt");
    ::unsetenv(chap_secret_variable);
    ::unsetenv(chap_target_secret_variable);
    ASSERT_TRUE(u) << u.error().message;
    EXPECT_EQ(u->chap.user, "alice");
    EXPECT_EQ(u->chap.secret, "from-the-environment");
    EXPECT_EQ(u->chap.target_user, "tgt");
    EXPECT_EQ(u->chap.target_secret, "target-side-secret");
    auto missing = parse_url("iscsi://alice@h/iqn.2026-01.com.example:disk/0");
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find(chap_secret_variable), std::string::npos);
}

TEST(TaskTable, TagsAreUniqueAndStaleTagsMiss) {
    TaskTable t(3);
    std::set<uint32_t> seen;
    std::vector<uint32_t> itts;
    for (int i = 0; i < 100; ++i) {
        uint32_t itt = t.allocate(TaskTable::Kind::scsi, nullptr);
        EXPECT_EQ(itt >> 24, 3u);
        EXPECT_TRUE(seen.insert(itt).second);
        itts.push_back(itt);
    }
    EXPECT_EQ(t.size(), 100u);
    uint32_t old = itts[10];
    ASSERT_NE(t.find(old), nullptr);
    t.release(old);
    EXPECT_EQ(t.find(old), nullptr);
    uint32_t reused = t.allocate(TaskTable::Kind::nop, nullptr);
    EXPECT_EQ(reused & 0xffff, old & 0xffff); // same slot ...
    EXPECT_NE(reused, old);                   // ... another generation
    EXPECT_EQ(t.find(old), nullptr);
    ASSERT_NE(t.find(reused), nullptr);
    EXPECT_EQ(t.find(reused)->kind, TaskTable::Kind::nop);
    // Another connection's tag never matches.
    EXPECT_EQ(t.find((reused & 0x00ffffff) | (4u << 24)), nullptr);
    EXPECT_EQ(t.find(0xffffffff), nullptr);
    size_t live = 0;
    t.for_each([&](uint32_t, TaskTable::Entry&) { ++live; });
    EXPECT_EQ(live, 100u);
}

// A connection restarting a failed one's CID goes on from its generations: none of the ITTs the old one
// used last comes back at once (the target may still keep an answer for one of them).
TEST(TaskTable, ARestartedConnectionDoesNotHandOutTheOldOnesLastTags) {
    TaskTable old(5);
    std::set<uint32_t> used;
    for (int round = 0; round < 3; ++round) {
        std::vector<uint32_t> itts;
        for (int i = 0; i < 8; ++i) {
            itts.push_back(old.allocate(TaskTable::Kind::scsi, nullptr));
            used.insert(itts.back());
        }
        for (uint32_t itt : itts) {
            old.release(itt);
        }
    }
    uint32_t live = old.allocate(TaskTable::Kind::scsi, nullptr); // in flight when the connection failed
    used.insert(live);
    TaskTable fresh(5);
    fresh.continue_generations(old);
    for (int i = 0; i < 8; ++i) {
        uint32_t itt = fresh.allocate(TaskTable::Kind::scsi, nullptr);
        EXPECT_EQ(itt >> 24, 5u);
        EXPECT_FALSE(used.count(itt)) << std::hex << itt;
    }
    // A table that does not continue hands the first slot's first generation out again.
    TaskTable unrelated(5);
    EXPECT_TRUE(used.count(unrelated.allocate(TaskTable::Kind::scsi, nullptr)));
}

TEST(Sense, FixedAndDescriptor) {
    std::vector<uint8_t> fixed(18, 0);
    fixed[0] = 0x70;
    fixed[2] = 0x06;
    fixed[12] = 0x29;
    fixed[13] = 0x07;
    auto k = parse_sense(fixed);
    ASSERT_TRUE(k);
    EXPECT_EQ(k->key, 6);
    EXPECT_EQ(describe_sense(fixed), "UNIT ATTENTION, asc/ascq 29/07 (I_T NEXUS LOSS OCCURRED)");
    std::vector<uint8_t> desc = {0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0};
    EXPECT_EQ(describe_sense(desc), "ILLEGAL REQUEST, asc/ascq 24/00 (INVALID FIELD IN CDB)");
    EXPECT_FALSE(parse_sense(std::vector<uint8_t>{}));
}

TEST(Cdb, ReadWriteBuilders) {
    Request r = make_read(2, 100, 8, 512);
    EXPECT_EQ(r.cdb[0], 0x28);
    EXPECT_EQ(r.cdb_length, 10);
    EXPECT_EQ(r.data.size(), 4096u);
    EXPECT_EQ(r.direction, DataDirection::read);
    Request w = make_write(0, uint64_t(1) << 33, 8, 512, Buffer::allocate(4096));
    EXPECT_EQ(w.cdb[0], 0x8a);
    EXPECT_EQ(w.cdb_length, 16);
    Request big = make_read(0, 0, 70000, 512);
    EXPECT_EQ(big.cdb[0], 0x88); // more blocks than READ(10) can say
}

} // namespace
} // namespace ispace::initiator
