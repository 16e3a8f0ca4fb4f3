// Log lines: a date, time and UTC offset, then logfmt fields that no value from the outside can break.
#include "common/log.hpp"

#include <gtest/gtest.h>

#include <regex>

using namespace ispace;

TEST(Log, LineStartsWithDateTimeAndOffset) {
    std::string line = format_log_line(LogLevel::info, {}, "hello", {});
    EXPECT_TRUE(std::regex_match(
        line,
        std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2} level=info msg=hello)")))
        << line;
}

TEST(Log, FreeTextIsOneQuotedField) {
    EXPECT_EQ(format_log_line(LogLevel::warn, {}, "target a: added", {}, "T"),
              "T level=warn msg=\"target a: added\"");
}

TEST(Log, EventWithFields) {
    EXPECT_EQ(format_log_line(LogLevel::info, "lun.added", {},
                              {log_field("target", "iqn.x:a"), log_field("lun", 2), {"spec", "/srv/a b.img"}},
                              "T"),
              "T level=info event=lun.added target=iqn.x:a lun=2 spec=\"/srv/a b.img\"");
}

TEST(Log, ValuesCannotBreakTheLineOrForgeAField) {
    // An initiator name from the wire with a newline and a fake field stays one field on one line.
    std::string hostile = "iqn.evil\nT level=error msg=\"forged\" x=y\x01";
    std::string line = format_log_line(LogLevel::info, "login", {}, {{"initiator", hostile}}, "T");
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(line,
              "T level=info event=login initiator=\"iqn.evil\\nT level=error msg=\\\"forged\\\" x=y\\x01\"");
}

TEST(Log, QuotingRules) {
    EXPECT_EQ(log_quote("plain"), "plain");
    EXPECT_EQ(log_quote(""), "\"\"");
    EXPECT_EQ(log_quote("a=b"), "\"a=b\"");
    EXPECT_EQ(log_quote("back\\slash"), "\"back\\\\slash\"");
    EXPECT_EQ(log_quote("tab\there"), "\"tab\\there\"");
}

TEST(Log, LevelsChangeAtRunTime) {
    LogLevel saved = log_level();
    set_log_level(LogLevel::error);
    EXPECT_EQ(log_level(), LogLevel::error);
    LogLevel parsed;
    ASSERT_TRUE(parse_log_level("debug", parsed));
    set_log_level(parsed);
    EXPECT_EQ(log_level(), LogLevel::debug);
    EXPECT_FALSE(parse_log_level("verbose", parsed));
    EXPECT_EQ(log_level_name(LogLevel::warn), "warn");
    set_log_level(saved);
}
