// SpaceService and HolderSocket: the space verbs as JSON (create, status, list, destroy and their
// refusals, malformed requests), the holder's socket round trip, and one holder per home.
#include "mgmt/space_service.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <stdlib.h>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class SpaceServiceTest : public ::testing::Test {
protected:
    SpaceServiceTest() {
        char name[] = "/tmp/ispace-space-service-XXXXXX";
        EXPECT_NE(::mkdtemp(name), nullptr);
        dir = name;
        home = dir + "/home";
        volume::SpaceManagerOptions o;
        o.home = home;
        o.initiator = &runtime.initiator(); // starts the runtime's reactors
        o.reactors = &runtime.reactors();
        o.registry = &runtime.backstores();
        manager = std::make_unique<volume::SpaceManager>(std::move(o));
        service = std::make_unique<SpaceService>(*manager, nullptr, home);
    }
    ~SpaceServiceTest() override {
        service.reset();
        manager.reset();
        runtime.stop(std::chrono::seconds(5));
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    std::string member(const std::string& name, uint64_t bytes = 16 << 20) {
        std::string path = dir + "/" + name;
        std::ofstream(path).close();
        fs::resize_file(path, bytes);
        return path;
    }

    std::string dir, home;
    Runtime runtime;
    std::unique_ptr<volume::SpaceManager> manager;
    std::unique_ptr<SpaceService> service;
};

TEST_F(SpaceServiceTest, CreateStatusListDestroy) {
    std::string a = member("a.img"), b = member("b.img");
    json created =
        service->handle({{"verb", "create"}, {"name", "s"}, {"layout", "mirror"}, {"members", {a, b}}});
    ASSERT_TRUE(created.value("ok", false)) << created.dump();
    EXPECT_EQ(created["status"]["layout"], "mirror");
    EXPECT_EQ(created["status"]["members"].size(), 2u);

    json st = service->handle({{"verb", "status"}, {"name", "s"}});
    ASSERT_TRUE(st.value("ok", false)) << st.dump();
    for (const json& m : st["status"]["members"]) {
        EXPECT_EQ(m["state"], "active");
    }
    EXPECT_FALSE(st["status"]["open"]);
    EXPECT_TRUE(st["status"]["clean"]);
    EXPECT_GT(st["status"]["size"].get<uint64_t>(), 12u << 20);

    json list = service->handle({{"verb", "list"}});
    ASSERT_TRUE(list.value("ok", false));
    ASSERT_EQ(list["spaces"].size(), 1u);
    EXPECT_EQ(list["spaces"][0]["name"], "s");
    // From the catalog alone: the layout and size it recorded, the members' states unknown.
    EXPECT_EQ(list["spaces"][0]["layout"], "mirror");
    EXPECT_EQ(list["spaces"][0]["size"], st["status"]["size"]);
    EXPECT_EQ(list["spaces"][0]["members"][0]["state"], "unknown");

    // Refusals: without yes; a member of another space; attach with no runtime here.
    json refused = service->handle({{"verb", "destroy"}, {"name", "s"}});
    EXPECT_FALSE(refused.value("ok", true));
    json again = service->handle(
        {{"verb", "create"}, {"name", "t"}, {"layout", "mirror"}, {"members", {a, member("c.img")}}});
    EXPECT_FALSE(again.value("ok", true));
    EXPECT_NE(again.value("error", "").find("'s'"), std::string::npos) << again.dump();
    json attach = service->handle({{"verb", "attach"}, {"name", "s"}});
    EXPECT_FALSE(attach.value("ok", true));
    EXPECT_NE(attach.value("error", "").find("holder"), std::string::npos);

    json destroyed = service->handle({{"verb", "destroy"}, {"name", "s"}, {"yes", true}});
    EXPECT_TRUE(destroyed.value("ok", false)) << destroyed.dump();
    EXPECT_EQ(service->handle({{"verb", "list"}})["spaces"].size(), 0u);
}

TEST_F(SpaceServiceTest, MalformedRequestsAreErrorsNotCrashes) {
    EXPECT_FALSE(service->handle({{"verb", "nonsense"}}).value("ok", true));
    EXPECT_FALSE(service->handle(json::object()).value("ok", true));
    json wrong = service->handle({{"verb", "create"}, {"name", 5}, {"members", "not a list"}});
    EXPECT_FALSE(wrong.value("ok", true));
    json odd = service->handle({{"verb", "status"}, {"name", "../../etc/passwd"}});
    EXPECT_FALSE(odd.value("ok", true));
    // A name is a catalog file name: nothing that leaves the catalog directory.
    std::string a = member("a.img"), b = member("b.img");
    for (const char* bad : {"../escape", "a/b", ".hidden", ""}) {
        json r =
            service->handle({{"verb", "create"}, {"name", bad}, {"layout", "mirror"}, {"members", {a, b}}});
        EXPECT_FALSE(r.value("ok", true)) << bad;
    }
    EXPECT_FALSE(fs::exists(dir + "/escape.json"));
}

TEST_F(SpaceServiceTest, TheSocketCarriesRequestsAndOneHolderPerHome) {
    auto socket = HolderSocket::listen(home, [this](const json& r) { return service->handle(r); });
    ASSERT_TRUE(socket) << socket.error().message;
    auto ping = holder_request(home, {{"verb", "ping"}});
    ASSERT_TRUE(ping) << ping.error().message;
    EXPECT_TRUE(ping->value("ok", false));
    EXPECT_EQ(ping->value("pid", 0), ::getpid());
    auto list = holder_request(home, {{"verb", "list"}});
    ASSERT_TRUE(list);
    EXPECT_TRUE(list->value("ok", false));

    auto second = HolderSocket::listen(home, [](const json&) { return json::object(); });
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, EBUSY);
    EXPECT_NE(second.error().message.find(std::to_string(::getpid())), std::string::npos);

    socket->reset();
    auto none = holder_request(home, {{"verb", "ping"}});
    ASSERT_FALSE(none);
    EXPECT_TRUE(none.error().code == ENOENT || none.error().code == ECONNREFUSED) << none.error().message;
}

} // namespace
} // namespace ispace::mgmt
