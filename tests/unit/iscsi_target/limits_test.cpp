// Memory bounded by design under a peer that does not read: the connection stops reading once what it
// has queued passes a bound (back-pressure, not buffering), and reads again once it drains.
#include "harness.hpp"
#include "iscsi_target/buffer_budget.hpp"
#include "iscsi_target/connection.hpp"

namespace ispace::iscsi_target::test {
namespace {

// The NOP-Out flood of the probe, in small: 64 pings of 64 KiB, immediate, while nothing is read.
TEST(BackPressure, APeerThatDoesNotReadIsNotReadEither) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    i.wire().reading = false;
    std::vector<uint8_t> ping = pattern(64 << 10, 7);
    constexpr int pings = 64;
    for (int k = 0; k < pings; ++k) {
        i.nop_out(ping, true);
    }
    EXPECT_TRUE(i.drain().empty()) << "nothing reaches an initiator that does not read";
    MemoryTransport& transport = *i.wire().transport;
    EXPECT_TRUE(transport.reading_paused());
    EXPECT_FALSE(i.wire().to_target.empty()) << "the rest of the flood stays with the peer, unread";
    // What is queued is bounded: the bound, plus the PDU that crossed it.
    size_t held_bytes = transport.held_pdus() * (ping.size() + 48);
    EXPECT_LE(held_bytes, Connection::max_unsent_bytes + ping.size() + 48);
    EXPECT_LT(transport.held_pdus(), size_t(pings));

    // The peer reads again: every ping is answered, none lost.
    int answered = 0;
    for (int round = 0; round < pings && answered < pings; ++round) {
        i.wire().drain();
        for (const InPdu& pdu : i.drain()) {
            answered += pdu.opcode() == iscsi::Opcode::nop_in && pdu.data == ping;
        }
    }
    EXPECT_EQ(answered, pings);
    EXPECT_FALSE(transport.reading_paused());
}

} // namespace
// The daemon-wide Data-In budget: a reservation past the limit is refused (the command waits), a
// session that holds nothing may still dip into the reserve (an initiator that reads is served while
// others hog the budget), and a reservation is given back when its hold goes.
TEST(BufferBudget, RefusesPastTheLimitKeepsAReserveAndGivesBack) {
    auto budget = std::make_shared<BufferBudget>(uint64_t(64) << 20); // reserve: 8 MiB
    auto hog = std::make_shared<BufferBudget::Account>(BufferBudget::Account{budget});
    auto reader = std::make_shared<BufferBudget::Account>(BufferBudget::Account{budget});
    std::vector<BufferBudget::Hold> held;
    for (int k = 0; k < 8; ++k) {
        held.push_back(BufferBudget::reserve(hog, 8 << 20));
        ASSERT_TRUE(held.back()) << k;
    }
    EXPECT_EQ(budget->used(), uint64_t(64) << 20);
    EXPECT_FALSE(BufferBudget::reserve(hog, 4096)) << "full: the hog's next command waits";
    EXPECT_EQ(budget->refusals(), 1u);
    BufferBudget::Hold small = BufferBudget::reserve(reader, 1 << 20);
    EXPECT_TRUE(small) << "a session holding nothing dips into the reserve";
    EXPECT_FALSE(BufferBudget::reserve(reader, 1 << 20)) << "...once, not for a second command";
    small.reset();
    EXPECT_EQ(reader->held, 0u);
    held.pop_back();
    EXPECT_EQ(hog->held, uint64_t(56) << 20);
    EXPECT_TRUE(BufferBudget::reserve(hog, 8 << 20)) << "room again once a hold is given back";
    held.clear();
    EXPECT_EQ(budget->used(), 0u);
    auto huge = BufferBudget::reserve(hog, uint64_t(1) << 30);
    EXPECT_TRUE(huge) << "larger than the whole budget runs alone, or it would wait forever";
}

} // namespace ispace::iscsi_target::test
