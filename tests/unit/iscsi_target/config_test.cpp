// The JSON configuration file: limits and their defaults, discovery CHAP, and the refusal of keys
// and values nobody defined.
#include "iscsi_target/config.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <unistd.h>

namespace ispace::iscsi_target {
namespace {

// A configuration file in /tmp, removed when the test ends.
class ConfigFile {
public:
    explicit ConfigFile(const std::string& text) {
        char name[] = "/tmp/ispace-config-XXXXXX";
        int fd = ::mkstemp(name);
        EXPECT_GE(fd, 0);
        ::close(fd);
        _path = name;
        std::ofstream(_path) << text;
    }
    ~ConfigFile() { std::remove(_path.c_str()); }
    const std::string& path() const { return _path; }

private:
    std::string _path;
};

const backstore::Registry& backstores() {
    static const backstore::Registry* registry = [] {
        auto* r = new backstore::Registry();
        backstore::register_builtin_kinds(*r);
        return r;
    }();
    return *registry;
}

std::string with_limits(const std::string& limits) {
    return R"({"listen": ["127.0.0.1:3260"], "limits": )" + limits +
           R"(, "targets": [{"iqn": "iqn.2026-11.org.example:t", "luns": ["memory:16M"]}]})";
}

TEST(Config, DefaultsSurviveAFileWithoutLimits) {
    ConfigFile file(R"({"targets": [{"iqn": "iqn.2026-11.org.example:t", "luns": ["memory:16M"]}]})");
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    Limits defaults;
    EXPECT_EQ(config->limits.nop_timeout, defaults.nop_timeout);
    EXPECT_EQ(config->limits.sanitize_bytes_per_second, defaults.sanitize_bytes_per_second);
    // An initiator that leaves its socket unread for a minute (libiscsi's Sanitize.Reset) keeps it.
    EXPECT_GT(defaults.nop_timeout, std::chrono::seconds(60));
}

TEST(Config, LimitsTakeNumbersAndSizes) {
    ConfigFile file(with_limits(R"({"queue_depth": 64, "max_transfer": "1M", "sanitize_rate": "32M",
                                    "nop_interval_ms": 5000, "nop_timeout_ms": 100})"));
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_EQ(config->limits.queue_depth, 64u);
    EXPECT_EQ(config->limits.max_transfer_bytes, 1u << 20);
    EXPECT_EQ(config->limits.sanitize_bytes_per_second, uint64_t(32) << 20);
    // A silence timeout shorter than the ping interval would drop connections before pinging them.
    EXPECT_EQ(config->limits.nop_timeout, std::chrono::milliseconds(5000));
}

TEST(Config, IsnsTakesAServerOrAnObjectAndFlagsReplaceIt) {
    const std::string target = R"("targets": [{"iqn": "iqn.2026-11.org.example:t", "luns": ["memory:16M"]}])";
    ConfigFile short_form("{\"isns\": \"192.0.2.5\", " + target + "}");
    auto config = load_config_file(short_form.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_EQ(config->isns.server, "192.0.2.5");
    EXPECT_EQ(config->isns.esi_interval, 60u);

    ConfigFile long_form(
        R"({"isns": {"server": "192.0.2.5:3206", "entity": "storage1", "esi_interval": 0}, )" + target + "}");
    config = load_config_file(long_form.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_EQ(config->isns.server, "192.0.2.5:3206");
    EXPECT_EQ(config->isns.entity, "storage1");
    EXPECT_EQ(config->isns.esi_interval, 0u);

    ConfigOverlay overlay;
    overlay.isns_server = "192.0.2.6";
    overlay.isns_esi_interval = 30;
    ASSERT_TRUE(apply_overlay(*config, overlay, backstores()));
    EXPECT_EQ(config->isns.server, "192.0.2.6");
    EXPECT_EQ(config->isns.entity, "storage1"); // not given: the file's stays
    EXPECT_EQ(config->isns.esi_interval, 30u);

    for (const char* bad : {R"({"isns": {"entity": "x"}, )", R"({"isns": {"server": "h", "sever": "h"}, )",
                            R"({"isns": 3205, )", R"({"isns": {"server": "h", "esi_interval": 100000}, )"}) {
        ConfigFile file(std::string(bad) + target + "}");
        EXPECT_FALSE(load_config_file(file.path(), backstores())) << bad;
    }
}

TEST(Config, SanitizeRateZeroMeansUnlimited) {
    ConfigFile file(with_limits(R"({"sanitize_rate": 0})"));
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_EQ(config->limits.sanitize_bytes_per_second, 0u);
}

TEST(Config, RefusesUnknownAndOutOfRangeLimits) {
    for (const char* limits :
         {R"({"sanitize_rte": "1M"})", R"({"queue_depth": 0})", R"({"max_transfer": "1G"})",
          R"({"sanitize_rate": "fast"})", R"({"nop_timeout_ms": -1})"}) {
        ConfigFile file(with_limits(limits));
        auto config = load_config_file(file.path(), backstores());
        EXPECT_FALSE(config) << limits;
    }
}

std::string with_discovery(const std::string& discovery) {
    return R"({"discovery": )" + discovery +
           R"(, "targets": [{"iqn": "iqn.2026-11.org.example:t", "luns": ["memory:16M"]}]})";
}

TEST(Config, DiscoveryTakesMutualChap) {
    ConfigFile file(
        with_discovery(R"({"chap": "disco:discovery-secret-1", "mutual_chap": "tgt:target-proof-22"})"));
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    ASSERT_TRUE(config->discovery_mutual_chap);
    EXPECT_EQ(config->discovery_mutual_chap->user, "tgt");
    ASSERT_TRUE(
        apply_overlay(*config, {}, backstores())); // as ispaced does: the default portal when none is given
    EXPECT_TRUE(validate(*config));
}

TEST(Config, DiscoveryMutualChapNeedsDiscoveryChapAndItsOwnSecret) {
    ConfigFile alone(with_discovery(R"({"mutual_chap": "tgt:target-proof-22"})"));
    auto config = load_config_file(alone.path(), backstores());
    EXPECT_TRUE(!config || !validate(*config));
    ConfigFile same(
        with_discovery(R"({"chap": "disco:same-secret-1234", "mutual_chap": "tgt:same-secret-1234"})"));
    config = load_config_file(same.path(), backstores());
    EXPECT_TRUE(!config || !validate(*config));
    ConfigFile short_secret(
        with_discovery(R"({"chap": "disco:discovery-secret-1", "mutual_chap": "tgt:short"})"));
    config = load_config_file(short_secret.path(), backstores());
    EXPECT_TRUE(!config || !validate(*config));
}

// Flags beside --config: one value replaces, a repeatable flag adds; security flags reach every target.
TEST(ConfigOverlay, SecurityFlagsApplyToEveryTargetOfTheFile) {
    ConfigFile file(R"({"targets": [{"iqn": "iqn.2026-11.org.example:a", "luns": ["memory:16M"]},
                                     {"iqn": "iqn.2026-11.org.example:b", "luns": ["memory:16M"],
                                      "allow": ["iqn.2026-11.org.example:old"]}]})");
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    ConfigOverlay overlay;
    overlay.chap = iscsi::ChapCredentials{"alice", "alice-secret-1234"};
    overlay.allow.push_back(*parse_allow("iqn.2026-11.org.example:host1"));
    ASSERT_TRUE(apply_overlay(*config, overlay, backstores()));
    ASSERT_EQ(config->targets.size(), 2u);
    for (const TargetConfig& target : config->targets) {
        ASSERT_TRUE(target.chap) << target.iqn;
        EXPECT_EQ(target.chap->user, "alice");
        EXPECT_TRUE(find_acl_entry(target.acl, "iqn.2026-11.org.example:host1", net::Endpoint{}) != nullptr);
    }
    EXPECT_EQ(config->targets[1].acl.size(), 2u); // added to the file's list, not replacing it
    EXPECT_TRUE(validate(*config));
}

TEST(ConfigOverlay, IqnScopesTheFlagsAndLunsAreNumberedAfterTheFile) {
    ConfigFile file(R"({"listen": "127.0.0.1:3260",
                        "targets": [{"iqn": "iqn.2026-11.org.example:a", "luns": ["memory:16M", {"lun": 4, "spec": "memory:8M"}]},
                                    {"iqn": "iqn.2026-11.org.example:b", "luns": ["memory:16M"]}]})");
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    ConfigOverlay overlay;
    overlay.iqn = "iqn.2026-11.org.example:a";
    overlay.luns = {"null:1G"};
    overlay.allow.push_back(*parse_allow("iqn.2026-11.org.example:host1"));
    overlay.listen = {"127.0.0.1:3260", "127.0.0.1:3261"};
    overlay.queue_depth = 32;
    ASSERT_TRUE(apply_overlay(*config, overlay, backstores()));
    EXPECT_EQ(config->targets[0].luns.back().lun, 5u);
    EXPECT_EQ(config->targets[0].acl.size(), 1u);
    EXPECT_TRUE(config->targets[1].acl.empty());
    ASSERT_EQ(config->portals.size(), 2u); // the file's portal is not repeated
    EXPECT_EQ(config->portals[1].tpgt, 2);
    EXPECT_EQ(config->limits.queue_depth, 32u);
}

// HOST:0 asks for a fresh ephemeral port each time: two of them are two portals, not one.
TEST(ConfigOverlay, EphemeralPortalsAreNeverMerged) {
    ServerConfig config;
    ConfigOverlay overlay;
    overlay.listen = {"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:3260", "127.0.0.1:3260"};
    ASSERT_TRUE(apply_overlay(config, overlay, backstores()));
    ASSERT_EQ(config.portals.size(), 3u);
    EXPECT_EQ(config.portals[0].tpgt, 1);
    EXPECT_EQ(config.portals[1].tpgt, 2);
}

TEST(ConfigOverlay, AFlagWithNothingToApplyToIsAnError) {
    ServerConfig empty;
    ConfigOverlay chap;
    chap.chap = iscsi::ChapCredentials{"alice", "alice-secret-1234"};
    auto applied = apply_overlay(empty, chap, backstores());
    ASSERT_FALSE(applied);
    EXPECT_NE(applied.error().message.find("--chap"), std::string::npos);
    EXPECT_EQ(applied.error().message.find("alice-secret"), std::string::npos);
    ConfigOverlay lun;
    lun.luns = {"memory:1M"};
    EXPECT_FALSE(apply_overlay(empty, lun, backstores()));
    // Nothing given: the default portal, and nothing else.
    ServerConfig config;
    ASSERT_TRUE(apply_overlay(config, ConfigOverlay{}, backstores()));
    ASSERT_EQ(config.portals.size(), 1u);
    EXPECT_EQ(config.portals[0].listen, "127.0.0.1:3260");
}

} // namespace
} // namespace ispace::iscsi_target
