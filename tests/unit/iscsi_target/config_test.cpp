// The JSON configuration file: limits and their defaults, discovery CHAP, and the refusal of keys
// and values nobody defined.
#include "iscsi_target/config.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

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

// The same spec given twice is two LUNs; given again over a file that has it, it is that LUN.
TEST(ConfigOverlay, RepeatedLunSpecsAreCountedNotMerged) {
    ServerConfig config;
    ConfigOverlay overlay;
    overlay.iqn = "iqn.2026-11.org.example:a";
    overlay.luns = {"memory:16M", "memory:16M"};
    ASSERT_TRUE(apply_overlay(config, overlay, backstores()));
    ASSERT_EQ(config.targets.size(), 1u);
    EXPECT_EQ(config.targets[0].luns.size(), 2u);
    overlay.luns = {"memory:16M", "memory:16M", "memory:16M"};
    ASSERT_TRUE(apply_overlay(config, overlay, backstores()));
    EXPECT_EQ(config.targets[0].luns.size(), 3u); // two were there already; the third is new
}

// The file owns a flag's LUN once it has written it: removed or resized through the control socket,
// it is not made again by the same --lun at the next start; a new flag still adds its LUN.
TEST(ConfigOverlay, AFlagsLunRemovedOrResizedSinceIsNotMadeAgain) {
    ServerConfig config;
    ConfigOverlay overlay;
    overlay.iqn = "iqn.2026-11.org.example:a";
    overlay.luns = {"memory:16M", "memory:32M"};
    ASSERT_TRUE(apply_overlay(config, overlay, backstores()));
    ASSERT_EQ(config.targets[0].luns.size(), 2u);
    // Through the socket: LUN 0 removed, LUN 1 resized (its spec rewritten with the new size).
    config.targets[0].luns.erase(config.targets[0].luns.begin());
    config.targets[0].luns[0].spec = "memory:64M";
    auto resized = backstores().parse("memory:64M");
    ASSERT_TRUE(resized);
    config.targets[0].luns[0].device = std::move(*resized);
    // Written and read back, as at the next start.
    auto reread = config_from_json(config_to_json(config, true), backstores());
    ASSERT_TRUE(reread) << reread.error().message;
    EXPECT_EQ(reread->targets[0].lun_flags, (std::vector<std::string>{"memory:16M", "memory:32M"}));
    EXPECT_FALSE(config_to_json(config, false)["targets"][0].contains("lun_flags")) << "the daemon's own";
    ASSERT_TRUE(apply_overlay(*reread, overlay, backstores()));
    ASSERT_EQ(reread->targets[0].luns.size(), 1u);
    EXPECT_EQ(reread->targets[0].luns[0].spec, "memory:64M");
    overlay.luns.push_back("memory:8M");
    ASSERT_TRUE(apply_overlay(*reread, overlay, backstores()));
    ASSERT_EQ(reread->targets[0].luns.size(), 2u);
    EXPECT_EQ(reread->targets[0].luns[1].spec, "memory:8M");
    // A file written before the record: a LUN with the flag's spec is that flag's.
    ServerConfig legacy;
    TargetConfig t;
    t.iqn = overlay.iqn;
    auto spec = backstores().parse("memory:16M");
    ASSERT_TRUE(spec);
    t.luns.push_back({0, "memory:16M", std::move(*spec)});
    legacy.targets.push_back(t);
    overlay.luns = {"memory:16M"};
    ASSERT_TRUE(apply_overlay(legacy, overlay, backstores()));
    EXPECT_EQ(legacy.targets[0].luns.size(), 1u);
    EXPECT_EQ(legacy.targets[0].lun_flags, (std::vector<std::string>{"memory:16M"}));
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

// What ispaced writes when a change is persisted reads back to the same configuration.
TEST(ConfigFile, WrittenDocumentReadsBackTheSame) {
    ConfigFile file(R"({"listen": ["127.0.0.1:3260", "127.0.0.1:3261"], "state_dir": "/var/lib/x",
        "limits": {"queue_depth": 64},
        "discovery": {"chap": "disco:discovery-secret-1"},
        "params": {"ImmediateData": "No"},
        "targets": [{"iqn": "iqn.2026-11.org.example:a", "alias": "disks",
                     "luns": ["memory:16M", {"lun": 4, "spec": "/tmp/x.img,size=1M", "id": "00c0ffee00c0ffee"}],
                     "portals": ["127.0.0.1:3262"],
                     "params": {"MaxRecvDataSegmentLength": "65536"},
                     "chap": "alice:alice-secret-123", "mutual_chap": "tgt:target-secret-456",
                     "allow": ["iqn.2026-11.org.example:h1", "iqn.2026-11.org.example:h2@10.0.0.0/8",
                               {"initiator": "iqn.2026-11.org.example:h3", "luns": [0], "read_only": true}]},
                    {"iqn": "iqn.2026-11.org.example:empty", "luns": []}]})");
    auto config = load_config_file(file.path(), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_FALSE(config->negotiation.immediate_data);
    ASSERT_TRUE(config->targets[0].negotiation);
    EXPECT_EQ(config->targets[0].negotiation->max_recv_data_segment_length, 65536u);
    EXPECT_FALSE(config->targets[0].negotiation->immediate_data); // the global params, then its own
    EXPECT_FALSE(config->targets[1].negotiation);
    EXPECT_EQ(config->targets[0].luns[1].id, std::optional<uint64_t>(0x00c0ffee00c0ffeeull));

    nlohmann::json written = config_to_json(*config);
    auto again = config_from_json(written, backstores());
    ASSERT_TRUE(again) << again.error().message << "\n" << written.dump(2);
    EXPECT_EQ(config_to_json(*again), written);
    EXPECT_EQ(written["limits"], nlohmann::json({{"queue_depth", 64}})); // defaults are left out
    EXPECT_EQ(written["targets"][0]["luns"][1]["id"], "00c0ffee00c0ffee");
    EXPECT_EQ(written["targets"][0]["allow"][1], "iqn.2026-11.org.example:h2@10.0.0.0/8");
    // Secrets can be left out of what is shown.
    std::string shown = config_to_json(*config, false).dump();
    EXPECT_EQ(shown.find("alice-secret-123"), std::string::npos);
    EXPECT_EQ(shown.find("discovery-secret-1"), std::string::npos);
    EXPECT_NE(written.dump().find("alice-secret-123"), std::string::npos);
}

TEST(ConfigFile, AnEmptyConfigurationIsValid) {
    auto config = config_from_json(nlohmann::json::parse(R"({"targets": []})"), backstores());
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_TRUE(config->targets.empty());
    EXPECT_EQ(config_to_json(*config), nlohmann::json::parse(R"({"targets": []})"));
}

TEST(ConfigFile, RefusesBadParamsPortalsAndIds) {
    auto error_of = [](const std::string& text) {
        auto config = config_from_json(nlohmann::json::parse(text), backstores());
        return config ? std::string("(accepted)") : config.error().message;
    };
    auto target = [](const std::string& extra) {
        return R"({"targets": [{"iqn": "iqn.2026-11.org.example:a", "luns": [)" + extra + "]}]}";
    };
    EXPECT_NE(error_of(R"({"params": {"ImmediateData": "Maybe"}, "targets": []})").find("Yes or No"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"params": {"HeaderDigest": 5}, "targets": []})").find("HeaderDigest"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"params": {"MaxBurstLength": "16777215"}, "targets": []})").find("max_transfer"),
              std::string::npos);
    EXPECT_NE(error_of(target(R"({"spec": "memory:1M", "id": "xyz"})")).find("16 hex digits"),
              std::string::npos);
    EXPECT_NE(error_of(target(R"({"spec": "memory:1M", "id": "0"})")).find("16 hex digits"),
              std::string::npos);
    ServerConfig config;
    TargetConfig t;
    t.iqn = "iqn.2026-11.org.example:a";
    t.portals = {"not a portal"};
    EXPECT_FALSE(validate_target(t));
    t.portals = {"127.0.0.1:3260", "127.0.0.1:3260"};
    EXPECT_FALSE(validate_target(t));
    t.portals.clear();
    t.params = {{"MaxConnections", "0"}};
    auto bad = validate_target(t);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("target iqn.2026-11.org.example:a"), std::string::npos);
}

TEST(ConfigOverlay, PinnedLunNumbersSurviveAChangedFile) {
    ServerConfig config;
    TargetConfig t;
    t.iqn = "iqn.2026-11.org.example:a";
    for (uint64_t lun : {0, 2}) {
        auto spec = backstores().parse("memory:1M");
        ASSERT_TRUE(spec);
        t.luns.push_back({lun, "memory:1M", std::move(*spec)});
    }
    config.targets.push_back(t);
    ConfigOverlay overlay;
    overlay.iqn = t.iqn;
    overlay.luns = {"null:1G"};
    overlay.lun_numbers = {1};
    ASSERT_TRUE(apply_overlay(config, overlay, backstores()));
    EXPECT_EQ(config.targets[0].luns.back().lun, 1u);
    overlay.lun_numbers = {2}; // taken by the file now
    auto clash = apply_overlay(config, overlay, backstores());
    ASSERT_FALSE(clash);
    EXPECT_NE(clash.error().message.find("LUN 2 already"), std::string::npos);
}

} // namespace
} // namespace ispace::iscsi_target
