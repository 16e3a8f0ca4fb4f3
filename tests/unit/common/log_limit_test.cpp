// LogLimit: `burst` lines per interval, the rest counted and reported with the next line let through.
#include "common/log_limit.hpp"

#include <gtest/gtest.h>

namespace ispace {
namespace {

using namespace std::chrono_literals;

TEST(LogLimit, BurstThenCountedThenReported) {
    LogLimit limit(3, 10s);
    auto t0 = LogLimit::Clock::now();
    int admitted = 0;
    int announced = 0;
    for (int i = 0; i < 1000; ++i) {
        auto a = limit.admit(t0 + std::chrono::milliseconds(i));
        admitted += a.admitted;
        announced += a.last_in_window;
    }
    EXPECT_EQ(admitted, 3);
    EXPECT_EQ(announced, 1); // the third line says the limit bites
    EXPECT_EQ(limit.suppressed_total(), 997u);
    // The next window lets a line through, and it carries the count.
    auto next = limit.admit(t0 + 11s);
    ASSERT_TRUE(next.admitted);
    EXPECT_EQ(next.suppressed, 997u);
    EXPECT_GE(next.window, 10s);
    auto after = limit.admit(t0 + 11s + 1ms);
    ASSERT_TRUE(after.admitted);
    EXPECT_EQ(after.suppressed, 0u);
    EXPECT_EQ(LogLimit::describe_suppressed(997, 11s), " (997 more like this suppressed in the last 11 s)");
    EXPECT_EQ(limit.describe_limit(), " (more like this within 10 s are suppressed and counted)");
}

TEST(LogLimit, QuietLinesAreNeverHeldBack) {
    LogLimit limit(2, 1s);
    auto t = LogLimit::Clock::now();
    for (int i = 0; i < 50; ++i) {
        auto a = limit.admit(t + std::chrono::seconds(i));
        EXPECT_TRUE(a.admitted);
        EXPECT_EQ(a.suppressed, 0u);
        EXPECT_FALSE(a.last_in_window);
    }
    EXPECT_EQ(limit.suppressed_total(), 0u);
}

} // namespace
} // namespace ispace
