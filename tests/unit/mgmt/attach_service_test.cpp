// mgmt::AttachService: the JSON requests behind `ispace attach URL` and `ispace detach DEV`. Malformed
// requests are answered with what was wrong, whatever the machine; the attach round trip needs root,
// /dev/fuse and loop devices (skipped without them, saying why).
#include "mgmt/attach_service.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace ispace::mgmt {
namespace {

using nlohmann::json;

RuntimeOptions one_reactor() {
    RuntimeOptions o;
    o.reactors = 1;
    return o;
}

bool fails_saying(const json& answer, const std::string& words) {
    return answer.value("ok", true) == false &&
           answer.value("error", std::string()).find(words) != std::string::npos;
}

TEST(AttachService, RoutesOnlyItsOwnVerbs) {
    EXPECT_TRUE(AttachService::handles(json{{"verb", "attach-device"}}));
    EXPECT_TRUE(AttachService::handles(json{{"verb", "detach-device"}}));
    EXPECT_TRUE(AttachService::handles(json{{"verb", "devices"}}));
    EXPECT_FALSE(AttachService::handles(json{{"verb", "attach"}, {"name", "space1"}}));
    EXPECT_FALSE(AttachService::handles(json{{"verb", 3}}));
    EXPECT_FALSE(AttachService::handles(json::array({"attach-device"})));
}

TEST(AttachService, MalformedRequestsSayWhatIsWrongAndAttachNothing) {
    Runtime runtime(one_reactor());
    AttachService service(runtime);
    EXPECT_TRUE(fails_saying(service.handle(json::array()), "JSON object"));
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "mount"}}), "unknown verb \"mount\""));
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "attach-device"}}), "\"spec\""));
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "attach-device"}, {"spec", 7}}), "\"spec\""));
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "attach-device"}, {"spec", "/no-such-dir/x.img"}}),
                             "/no-such-dir/x.img"));
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "detach-device"}}), "\"device\""));
    EXPECT_TRUE(fails_saying(
        service.handle(json{{"verb", "detach-device"}, {"device", "/dev/loop0"}, {"force", "yes"}}),
        "\"force\""));
    // Not attached here (it may be a data-space's device, or nothing): refused, naming the space verb.
    EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "detach-device"}, {"device", "/dev/loop0"}}),
                             "ispace space detach"));
    json listed = service.handle(json{{"verb", "devices"}});
    EXPECT_TRUE(listed.value("ok", false));
    EXPECT_TRUE(listed["devices"].empty());
    EXPECT_TRUE(service.idle());
}

TEST(AttachService, AttachListDetach) {
    if (std::string why = attach::why_not_attachable(); !why.empty()) {
        GTEST_SKIP() << why;
    }
    char dir[] = "/tmp/ispace-attach-service-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    attach::AttachOptions options;
    options.run_dir = dir;
    std::string device;
    {
        Runtime runtime(one_reactor());
        AttachService service(runtime, options);
        json attached = service.handle(json{{"verb", "attach-device"}, {"spec", "memory:16M"}});
        ASSERT_TRUE(attached.value("ok", false)) << attached.dump();
        device = attached.value("device", std::string());
        EXPECT_EQ(device.rfind("/dev/loop", 0), 0u) << device;
        EXPECT_FALSE(service.idle());

        json listed = service.handle(json{{"verb", "devices"}});
        ASSERT_EQ(listed["devices"].size(), 1u) << listed.dump();
        EXPECT_EQ(listed["devices"][0]["device"], device);
        EXPECT_EQ(listed["devices"][0]["spec"], "memory:16M");
        EXPECT_EQ(listed["devices"][0]["bytes"], uint64_t(16) << 20);
        EXPECT_EQ(listed["devices"][0]["state"], "attached");

        json detached = service.handle(json{{"verb", "detach-device"}, {"device", device}});
        EXPECT_TRUE(detached.value("ok", false)) << detached.dump();
        EXPECT_TRUE(service.idle());
        EXPECT_TRUE(service.handle(json{{"verb", "devices"}})["devices"].empty());
        EXPECT_TRUE(runtime.attachments().empty());
        EXPECT_TRUE(fails_saying(service.handle(json{{"verb", "detach-device"}, {"device", device}}),
                                 "not attached"));
    }
    EXPECT_FALSE(std::filesystem::exists("/sys/block/" + device.substr(5) + "/loop/backing_file"));
    std::filesystem::remove_all(dir);
}

} // namespace
} // namespace ispace::mgmt
