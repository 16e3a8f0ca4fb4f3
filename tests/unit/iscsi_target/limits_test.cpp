// Memory bounded by design under a peer that does not read: the connection stops reading once what it
// has queued passes a bound (back-pressure, not buffering), and reads again once it drains.
#include "harness.hpp"
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
} // namespace ispace::iscsi_target::test
