// The LBA range lock on its own (grant rules, fairness, the lock-free fast path) and the other
// read-modify-write commands: ORWRITE(16) and WRITE ATOMIC(16).
#include "harness.hpp"

#include "scsi/range_lock.hpp"
#include "scsi/sbc.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;
using backstore::IoOp;

namespace {

// Entries without a reactor resume inline, which makes the grant order visible to a test.
struct Request {
    RangeLock::Entry entry;
    std::vector<int>* order = nullptr;
    int id = 0;
    bool granted = false;

    Request(uint64_t first, uint64_t end, bool exclusive, int id_, std::vector<int>* order_)
        : order(order_), id(id_) {
        entry.first = first;
        entry.end = end;
        entry.exclusive = exclusive;
        entry.resume = [](void* self) {
            auto& r = *static_cast<Request*>(self);
            r.granted = true;
            r.order->push_back(r.id);
        };
        entry.context = this;
    }
    bool acquire(RangeLock& lock) {
        granted = lock.acquire(entry);
        if (granted) {
            order->push_back(id);
        }
        return granted;
    }
};

} // namespace

TEST(RangeLock, SharedRequestsTakeTheFastPath) {
    RangeLock lock;
    std::vector<int> order;
    Request a(0, 10, false, 1, &order), b(5, 15, false, 2, &order);
    EXPECT_TRUE(a.acquire(lock));
    EXPECT_TRUE(b.acquire(lock));
    EXPECT_EQ(lock.queued(), 0u) << "no exclusive request: nothing is recorded";
    EXPECT_EQ(lock.fast_holders(), 2u);
    lock.release(a.entry);
    lock.release(b.entry);
    EXPECT_EQ(lock.fast_holders(), 0u);
}

TEST(RangeLock, AbandonForgetsWithoutGranting) {
    // Teardown: a sanitize holding the whole medium is dropped while a writer waits. Nothing may be
    // resumed (its reactor is gone), and the lock must end empty.
    RangeLock lock;
    std::vector<int> order;
    Request sanitize(0, 100, true, 1, &order), writer(10, 11, true, 2, &order);
    ASSERT_TRUE(sanitize.acquire(lock));
    EXPECT_FALSE(writer.acquire(lock));
    lock.abandon(sanitize.entry);
    EXPECT_FALSE(writer.granted);
    EXPECT_EQ(lock.queued(), 1u);
    lock.abandon(writer.entry);
    EXPECT_EQ(lock.queued(), 0u);
    lock.abandon(writer.entry); // already idle: nothing to do
    Request later(0, 100, true, 3, &order);
    EXPECT_TRUE(later.acquire(lock));
    lock.release(later.entry);
    EXPECT_EQ(order, (std::vector<int>{1, 3}));
}

TEST(RangeLock, ExclusiveWaitsForEveryFastHolder) {
    RangeLock lock;
    std::vector<int> order;
    // Fast-path holders have no recorded range: even a disjoint exclusive request waits for them.
    Request reader(100, 101, false, 1, &order);
    Request caw(0, 1, true, 2, &order);
    ASSERT_TRUE(reader.acquire(lock));
    EXPECT_FALSE(caw.acquire(lock));
    lock.release(reader.entry);
    EXPECT_TRUE(caw.granted);
    lock.release(caw.entry);
    EXPECT_EQ(lock.queued(), 0u);
}

TEST(RangeLock, OverlapDecidesWhileAnExclusiveRequestExists) {
    RangeLock lock;
    std::vector<int> order;
    Request caw(10, 20, true, 1, &order);
    ASSERT_TRUE(caw.acquire(lock));
    Request inside(15, 16, false, 2, &order);
    Request outside(30, 40, false, 3, &order);
    Request touching(20, 25, false, 4, &order); // [20, 25) does not overlap [10, 20)
    EXPECT_FALSE(inside.acquire(lock));
    EXPECT_TRUE(outside.acquire(lock));
    EXPECT_TRUE(touching.acquire(lock));
    lock.release(caw.entry);
    EXPECT_TRUE(inside.granted);
    lock.release(inside.entry);
    lock.release(outside.entry);
    lock.release(touching.entry);
    EXPECT_EQ(lock.queued(), 0u);
}

// Conflicting requests are granted in arrival order: a reader queued behind one exclusive request
// goes before a later exclusive one, and readers cannot starve a writer.
TEST(RangeLock, ArrivalOrderAmongConflicts) {
    RangeLock lock;
    std::vector<int> order;
    Request first(0, 8, true, 1, &order);
    Request reader(0, 8, false, 2, &order);
    Request second(0, 8, true, 3, &order);
    Request late_reader(0, 8, false, 4, &order);
    ASSERT_TRUE(first.acquire(lock));
    EXPECT_FALSE(reader.acquire(lock));
    EXPECT_FALSE(second.acquire(lock));
    EXPECT_FALSE(late_reader.acquire(lock)) << "behind a waiting exclusive request";
    lock.release(first.entry);
    EXPECT_EQ(order, (std::vector<int>{1, 2}));
    lock.release(reader.entry);
    EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
    lock.release(second.entry);
    EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
    lock.release(late_reader.entry);
    EXPECT_EQ(lock.queued(), 0u);
}

TEST(RangeLock, EmptyRangesNeverWait) {
    RangeLock lock;
    std::vector<int> order;
    Request caw(0, 100, true, 1, &order);
    ASSERT_TRUE(caw.acquire(lock));
    Request nothing(50, 50, true, 2, &order);
    EXPECT_TRUE(nothing.acquire(lock));
    lock.release(nothing.entry);
    lock.release(caw.entry);
}

// --- ORWRITE ------------------------------------------------------------------------------------

namespace {

std::vector<uint8_t> orwrite16(uint64_t lba, uint32_t blocks, uint8_t flags = 0) {
    return rw16(op::orwrite_16, lba, blocks, flags);
}

std::vector<uint8_t> write_atomic16(uint64_t lba, uint16_t blocks, uint16_t boundary = 0, uint8_t flags = 0) {
    std::vector<uint8_t> c(16, 0);
    c[0] = op::write_atomic_16;
    c[1] = flags;
    store_be64(&c[2], lba);
    store_be16(&c[10], boundary);
    store_be16(&c[12], blocks);
    return c;
}

} // namespace

TEST(Orwrite, OrsTheDataIntoTheBlocks) {
    Harness h;
    std::memset(h.device().bytes(4 * 512), 0xa5, 2 * 512);
    auto t = h.make_write(orwrite16(4, 2), std::vector<uint8_t>(1024, 0x5a));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_EQ(*h.device().bytes(4 * 512), 0xff);
    EXPECT_EQ(*h.device().bytes(6 * 512 - 1), 0xff);
    ASSERT_EQ(h.device().log.size(), 2u);
    EXPECT_EQ(h.device().log[0].op, IoOp::read);
    EXPECT_EQ(h.device().log[1].op, IoOp::write);
}

TEST(Orwrite, EdgeCases) {
    Harness h;
    auto t = h.exec(orwrite16(0, 0));
    EXPECT_EQ(t->status, Status::good);
    t = h.exec(orwrite16(2049, 0));
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    auto w = h.make_write(orwrite16(2047, 2), std::vector<uint8_t>(1024, 1));
    h.exec(*w);
    EXPECT_TRUE(has_sense(*w, SenseKey::illegal_request, asc::lba_out_of_range));
    w = h.make_write(orwrite16(0, 1, 0x20), std::vector<uint8_t>(512, 1)); // ORPROTECT
    h.exec(*w);
    EXPECT_TRUE(invalid_field(*w, 1, 5));
    EXPECT_TRUE(h.device().log.empty());
}

TEST(Orwrite, ExcludesOverlappingWrites) {
    Harness h;
    h.device().hold = true;
    auto o = h.make_write(orwrite16(0, 1), std::vector<uint8_t>(512, 0x01));
    h.submit(*o);
    ASSERT_TRUE(h.run_until([&] { return h.device().held.size() == 1; }));
    auto w = h.make_write(rw10(op::write_10, 0, 1), std::vector<uint8_t>(512, 0x10));
    h.submit(*w);
    h.drain();
    EXPECT_EQ(h.device().held.size(), 1u) << "the WRITE waits for the merge to be written";
    h.device().hold = false;
    h.device().release_held();
    ASSERT_TRUE(h.run_until([&] { return o->done() && w->done(); }));
    EXPECT_EQ(*h.device().bytes(0), 0x10) << "the WRITE came last";
}

// --- WRITE ATOMIC -------------------------------------------------------------------------------

TEST(WriteAtomic, WritesAllBlocksInOneRequest) {
    Harness h;
    auto data = pattern(8 * 512, 3);
    auto t = h.make_write(write_atomic16(16, 8), data);
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    ASSERT_EQ(h.device().log.size(), 1u);
    EXPECT_EQ(h.device().log[0].offset, 16u * 512);
    EXPECT_EQ(h.device().log[0].length, 8u * 512);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), h.device().bytes(16 * 512)));
}

TEST(WriteAtomic, LimitsAndEdgeCases) {
    Harness h;
    sbc::Limits l = sbc::limits(h.lu());
    EXPECT_EQ(l.max_atomic_transfer, l.max_transfer);
    auto vpd = h.exec(cdb_bytes({0x12, 1, 0xb0, 0, 64, 0}), 64);
    auto d = vpd->received();
    ASSERT_EQ(d.size(), 64u);
    EXPECT_EQ(load_be32(&d[44]), l.max_atomic_transfer);
    EXPECT_EQ(load_be32(&d[48]), 0u) << "ATOMIC ALIGNMENT";
    EXPECT_EQ(load_be32(&d[52]), 0u) << "ATOMIC TRANSFER LENGTH GRANULARITY";
    EXPECT_EQ(load_be32(&d[60]), 0u) << "MAXIMUM ATOMIC BOUNDARY SIZE";

    EXPECT_EQ(h.exec(write_atomic16(0, 0))->status, Status::good);
    EXPECT_TRUE(
        has_sense(*h.exec(write_atomic16(2049, 0)), SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_TRUE(invalid_field(*h.exec(write_atomic16(0, 1, 1)), 10)) << "atomic boundaries are not supported";
    auto t = h.make_write(write_atomic16(2047, 2), std::vector<uint8_t>(1024, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    // All or nothing: a short data-out is refused, not written in part.
    t = h.make_write(write_atomic16(0, 4), std::vector<uint8_t>(1024, 0));
    h.exec(*t);
    EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::invalid_field_in_command_iu));
    EXPECT_TRUE(h.device().log.empty());
    // DPO and FUA accepted (MODE SENSE DPOFUA=1), FUA writes through.
    t = h.make_write(write_atomic16(0, 1, 0, 0x18), std::vector<uint8_t>(512, 0));
    h.exec(*t);
    ASSERT_EQ(t->status, Status::good);
    EXPECT_TRUE(h.device().log.back().fua);
}
