// mgmt::Manager and the pieces of the control socket: the JSON-RPC envelope, the atomic file write,
// methods that refuse bad input without changing anything, `apply` as a difference, serialised
// concurrent changes, the control socket's size bound and the service manager's notification.
#include "mgmt/atomic_file.hpp"
#include "mgmt/control_socket.hpp"
#include "mgmt/json_rpc.hpp"
#include "mgmt/manager.hpp"
#include "mgmt/notify.hpp"
#include "mgmt/runtime.hpp"
#include "scsi/lu.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sstream>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

using json = nlohmann::json;
constexpr const char* iqn = "iqn.2026-11.org.ispace:manager-test";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

struct TempDir {
    std::string path;
    TempDir() {
        char pattern[] = "/tmp/ispace-manager-XXXXXX";
        path = ::mkdtemp(pattern);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

TEST(JsonRpc, ReadsAValidRequest) {
    auto request =
        parse_rpc_request(R"({"jsonrpc":"2.0","id":7,"method":"lun.add","params":{"iqn":"x"}})", nullptr);
    ASSERT_TRUE(request);
    EXPECT_EQ(request->method, "lun.add");
    EXPECT_EQ(request->id, 7);
    EXPECT_FALSE(request->notification);
    EXPECT_EQ(request->params["iqn"], "x");
    auto notification = parse_rpc_request(R"({"jsonrpc":"2.0","method":"status"})", nullptr);
    ASSERT_TRUE(notification);
    EXPECT_TRUE(notification->notification);
    EXPECT_TRUE(notification->params.is_object());
}

TEST(JsonRpc, RefusesWhatIsNotARequestWithItsCode) {
    struct Case {
        std::string line;
        int code;
    } cases[] = {
        {"{not json", rpc_error::parse_error},
        {"[1,2]", rpc_error::invalid_request},
        {R"({"jsonrpc":"1.0","id":1,"method":"status"})", rpc_error::invalid_request},
        {R"({"jsonrpc":"2.0","id":1})", rpc_error::invalid_request},
        {R"({"jsonrpc":"2.0","id":{},"method":"status"})", rpc_error::invalid_request},
        {R"({"jsonrpc":"2.0","id":1,"method":"status","params":[1]})", rpc_error::invalid_params},
        {R"({"jsonrpc":"2.0","id":1,"method":"status","extra":1})", rpc_error::invalid_request},
        {std::string(70, '[') + std::string(70, ']'), rpc_error::invalid_request},
        {std::string(max_request_bytes + 1, ' '), rpc_error::too_large},
    };
    for (const Case& c : cases) {
        RpcParseFailure failure;
        EXPECT_FALSE(parse_rpc_request(c.line, &failure)) << c.line.substr(0, 80);
        EXPECT_EQ(failure.error.code, c.code) << c.line.substr(0, 80);
        EXPECT_FALSE(failure.error.message.empty());
        EXPECT_FALSE(json::parse(rpc_error_line(failure.id, failure.error), nullptr, false).is_discarded());
    }
}

TEST(AtomicFile, ReplacesTheFileWithMode0600AndLeavesNoTemporary) {
    TempDir dir;
    std::string path = dir.path + "/config.json";
    ASSERT_TRUE(write_file_atomically(path, "first\n"));
    ASSERT_TRUE(write_file_atomically(path, "second\n"));
    EXPECT_EQ(read_file(path), "second\n");
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(
        std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()),
        1);
    EXPECT_FALSE(write_file_atomically(dir.path + "/no/such/dir/file", "x"));
}

class ManagerTest : public ::testing::Test {
protected:
    void SetUp() override {
        RuntimeOptions options;
        options.reactors = 1;
        runtime = std::make_unique<Runtime>(options);
        iscsi_target::ConfigOverlay overlay;
        overlay.listen = {"127.0.0.1:0"};
        auto config = load_configuration(dir.path + "/ispaced.json", overlay, runtime->backstores());
        ASSERT_TRUE(config) << config.error().message;
        ASSERT_TRUE(runtime->serve(*config));
        ManagerOptions manager_options;
        manager_options.config_path = dir.path + "/ispaced.json";
        manager_options.overlay = overlay;
        manager = std::make_unique<Manager>(*runtime, manager_options);
        manager->adopt(*config);
    }

    json call(const std::string& method, json params) {
        json request = {{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", std::move(params)}};
        return json::parse(manager->handle(request.dump()));
    }

    TempDir dir;
    std::unique_ptr<Runtime> runtime;
    std::unique_ptr<Manager> manager;
};

TEST_F(ManagerTest, ChangesAreLiveAndPersistedAndBadRequestsChangeNothing) {
    EXPECT_FALSE(std::filesystem::exists(dir.path + "/ispaced.json")) << "created by the first change only";
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    auto added = call("lun.add", {{"iqn", iqn}, {"spec", "memory:8M"}});
    ASSERT_TRUE(added.contains("result")) << added.dump();
    EXPECT_EQ(added["result"]["lun"], 0);
    ASSERT_TRUE(runtime->luns(iqn));
    EXPECT_EQ(runtime->luns(iqn)->size(), 1u);
    std::string saved = read_file(dir.path + "/ispaced.json");
    json document = json::parse(saved);
    EXPECT_EQ(document["targets"][0]["luns"][0]["spec"], "memory:8M");
    EXPECT_TRUE(document["targets"][0]["luns"][0].contains("id")) << "the identity is pinned";

    const std::pair<std::string, json> bad[] = {
        {"lun.add", {{"iqn", "iqn.2026-11.org.ispace:nope"}, {"spec", "memory:1M"}}},
        {"lun.add", {{"iqn", iqn}, {"spec", "memory:1M"}, {"lun", 0}}},
        {"lun.add", {{"iqn", iqn}, {"spec", dir.path + "/missing/lun.img"}}},
        {"lun.add", {{"iqn", iqn}, {"spec", "memory:1M"}, {"bogus", true}}},
        {"lun.resize", {{"iqn", iqn}, {"lun", 0}, {"size", "4M"}}},
        {"lun.resize", {{"iqn", iqn}, {"lun", 0}, {"size", "twelve"}}},
        {"target.create", {{"iqn", "not-a-name"}}},
        {"target.create", {{"iqn", iqn}}},
        {"acl.add", {{"iqn", iqn}, {"initiator", "iqn.2026-11.org.ispace:h"}, {"luns", "0"}}},
        {"chap.set", {{"iqn", iqn}, {"user", "u"}, {"secret", "short"}}},
        {"param.set", {{"key", "MaxBurstLength"}, {"value", "1"}}},
        {"param.set", {{"key", "ImmediateData"}, {"value", "No"}, {"session", 9}}},
        {"config.apply", {{"config", {{"targets", "x"}}}}},
        {"no.such.method", json::object()},
    };
    for (const auto& [method, params] : bad) {
        json answer = call(method, params);
        ASSERT_TRUE(answer.contains("error")) << method << " " << params.dump();
        EXPECT_FALSE(answer["error"]["message"].get<std::string>().empty());
    }
    EXPECT_EQ(read_file(dir.path + "/ispaced.json"), saved) << "no bad request changed the file";
    EXPECT_EQ(runtime->luns(iqn)->size(), 1u);
    EXPECT_EQ(call("no.such.method", json::object())["error"]["code"], rpc_error::method_not_found);
}

TEST_F(ManagerTest, ApplyChangesOnlyWhatDiffersAndTwiceNothing) {
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    ASSERT_TRUE(call("lun.add", {{"iqn", iqn}, {"spec", "memory:8M"}}).contains("result"));
    json document = call("config.show", {{"secrets", true}})["result"];
    document["targets"][0]["luns"][0]["spec"] = "memory:16M";
    document["targets"][0]["luns"].push_back({{"lun", 3}, {"spec", "memory:4M"}});
    json first = call("config.apply", {{"config", document}});
    ASSERT_TRUE(first.contains("result")) << first.dump();
    EXPECT_EQ(first["result"]["changes"].size(), 2u) << first.dump();
    auto luns = runtime->luns(iqn);
    ASSERT_TRUE(luns);
    ASSERT_EQ(luns->size(), 2u);
    EXPECT_EQ((*luns)[0].bytes, 16u << 20) << "a spec that differs only by size is a resize";
    EXPECT_EQ((*luns)[1].lun, 3u);
    json second = call("config.apply", {{"config", document}});
    ASSERT_TRUE(second.contains("result"));
    EXPECT_TRUE(second["result"]["changes"].empty()) << second.dump();
}

TEST_F(ManagerTest, ApplyShrinksALunOnlyWhenAskedTo) {
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    ASSERT_TRUE(call("lun.add", {{"iqn", iqn}, {"spec", "memory:16M"}}).contains("result"));
    std::string saved = read_file(dir.path + "/ispaced.json");
    json document = call("config.show", {{"secrets", true}})["result"];
    document["targets"][0]["luns"][0]["spec"] = "memory:8M";
    json refused = call("config.apply", {{"config", document}});
    ASSERT_TRUE(refused.contains("error")) << refused.dump();
    EXPECT_NE(refused["error"]["message"].get<std::string>().find("--shrink"), std::string::npos)
        << refused.dump();
    EXPECT_EQ((*runtime->luns(iqn))[0].bytes, 16u << 20);
    EXPECT_EQ(read_file(dir.path + "/ispaced.json"), saved) << "a refused apply changes nothing";
    json shrunk = call("config.apply", {{"config", document}, {"shrink", true}});
    ASSERT_TRUE(shrunk.contains("result")) << shrunk.dump();
    EXPECT_EQ((*runtime->luns(iqn))[0].bytes, 8u << 20);
}

TEST_F(ManagerTest, ConcurrentChangesAreAllKept) {
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([this, t] {
            for (int i = 0; i < 5; ++i) {
                json answer =
                    call("acl.add", {{"iqn", iqn},
                                     {"initiator", "iqn.2026-11.org.ispace:c" + std::to_string(t * 10 + i)}});
                EXPECT_TRUE(answer.contains("result")) << answer.dump();
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    json document = json::parse(read_file(dir.path + "/ispaced.json"));
    EXPECT_EQ(document["targets"][0]["allow"].size(), 40u);
}

// A port free on 127.0.0.1 now (bound and let go; the test binds it again at once).
uint16_t free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
    ::close(fd);
    return ntohs(address.sin_port);
}

bool accepts(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(port);
    bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    ::close(fd);
    return connected;
}

// Unbinding is posted to the listening reactor: wait a little for it.
bool refuses_soon(uint16_t port) {
    for (int i = 0; i < 200; ++i) {
        if (!accepts(port)) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
}

TEST_F(ManagerTest, APortalNoTargetUsesStopsListening) {
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    std::string other = std::string(iqn) + "-other";
    ASSERT_TRUE(call("target.create", {{"iqn", other}}).contains("result"));
    uint16_t port = free_port();
    std::string listen = "127.0.0.1:" + std::to_string(port);
    json added = call("portal.add", {{"iqn", iqn}, {"listen", listen}});
    ASSERT_TRUE(added.contains("result")) << added.dump();
    ASSERT_TRUE(call("portal.add", {{"iqn", other}, {"listen", listen}}).contains("result"));
    EXPECT_TRUE(accepts(port));

    // One of two targets lets go of it: it still serves the other.
    ASSERT_TRUE(call("portal.remove", {{"iqn", iqn}, {"listen", listen}}).contains("result"));
    EXPECT_TRUE(accepts(port));
    // The last one goes (with its target): nothing serves it, so nothing listens there.
    json deleted = call("target.delete", {{"iqn", other}});
    ASSERT_TRUE(deleted.contains("result")) << deleted.dump();
    EXPECT_TRUE(refuses_soon(port));
    EXPECT_EQ(deleted["result"]["changes"][0], "portal " + listen + " removed") << deleted.dump();
    json saved = json::parse(read_file(dir.path + "/ispaced.json"));
    EXPECT_FALSE(saved["targets"][0].contains("portals")) << saved.dump();

    // Added again, it listens again; then `apply` of a document without it unbinds it.
    ASSERT_TRUE(call("portal.add", {{"iqn", iqn}, {"listen", listen}}).contains("result"));
    EXPECT_TRUE(accepts(port));
    json document = call("config.show", {{"secrets", true}})["result"];
    document["targets"][0].erase("portals");
    json applied = call("config.apply", {{"config", document}});
    ASSERT_TRUE(applied.contains("result")) << applied.dump();
    EXPECT_TRUE(refuses_soon(port));
    EXPECT_NE(applied["result"]["changes"].dump().find("portal " + listen + " removed"), std::string::npos)
        << applied.dump();
    EXPECT_TRUE(call("config.apply", {{"config", document}})["result"]["changes"].empty());

    // A shared portal that only a target names afterwards stops serving the others, and keeps listening.
    ASSERT_TRUE(call("portal.add", {{"listen", listen}}).contains("result"));
    document = call("config.show", {{"secrets", true}})["result"];
    document["listen"].erase(std::find(document["listen"].begin(), document["listen"].end(), json(listen)));
    document["targets"][0]["portals"] = {listen};
    applied = call("config.apply", {{"config", document}});
    ASSERT_TRUE(applied.contains("result")) << applied.dump();
    EXPECT_NE(applied["result"]["changes"].dump().find("serves only the targets that name it"),
              std::string::npos)
        << applied.dump();
    EXPECT_TRUE(accepts(port));
    EXPECT_TRUE(call("config.apply", {{"config", document}})["result"]["changes"].empty());
}

TEST_F(ManagerTest, ApplyKeepsTheIdentityOfTheSameDataAndSaysSo) {
    ASSERT_TRUE(call("target.create", {{"iqn", iqn}}).contains("result"));
    std::string a = dir.path + "/a.img";
    json added = call("lun.add", {{"iqn", iqn}, {"spec", a + ",size=8M"}});
    ASSERT_TRUE(added.contains("result")) << added.dump();
    std::string id = added["result"]["id"];
    auto running_id = [&] {
        auto target = runtime->target_server()->find_target(iqn);
        auto lu = target ? target->device->find_lu(0) : nullptr;
        return lu ? iscsi_target::lun_id_text(lu->identifier()) : std::string();
    };
    ASSERT_EQ(running_id(), id);

    // The same file opened otherwise (thin): re-opened, same identity, and the answer says so.
    json document = call("config.show", {{"secrets", true}})["result"];
    document["targets"][0]["luns"][0].erase("id"); // a hand-written file need not pin it
    document["targets"][0]["luns"][0]["spec"] = a + ",size=8M,thin";
    json applied = call("config.apply", {{"config", document}});
    ASSERT_TRUE(applied.contains("result")) << applied.dump();
    ASSERT_EQ(applied["result"]["changes"].size(), 1u) << applied.dump();
    EXPECT_NE(applied["result"]["changes"][0].get<std::string>().find("same identity"), std::string::npos)
        << applied.dump();
    EXPECT_EQ(running_id(), id);
    EXPECT_EQ(json::parse(read_file(dir.path + "/ispaced.json"))["targets"][0]["luns"][0]["id"], id);
    EXPECT_TRUE(call("config.apply", {{"config", document}})["result"]["changes"].empty());

    // Grown as well as made thin: only the size differs from what runs, so it is a resize in place.
    document["targets"][0]["luns"][0]["spec"] = a + ",size=16M,thin";
    applied = call("config.apply", {{"config", document}});
    ASSERT_TRUE(applied.contains("result")) << applied.dump();
    EXPECT_NE(applied["result"]["changes"][0].get<std::string>().find("resized"), std::string::npos)
        << applied.dump();
    EXPECT_EQ(running_id(), id);
    EXPECT_EQ((*runtime->luns(iqn))[0].bytes, 16u << 20);

    // Another file is other data: another LU, with an identity of its own.
    document["targets"][0]["luns"][0]["spec"] = dir.path + "/b.img,size=8M";
    applied = call("config.apply", {{"config", document}});
    ASSERT_TRUE(applied.contains("result")) << applied.dump();
    EXPECT_NE(applied["result"]["changes"][0].get<std::string>().find("new identity"), std::string::npos)
        << applied.dump();
    EXPECT_NE(running_id(), id);
    EXPECT_TRUE(call("config.apply", {{"config", document}})["result"]["changes"].empty());
}

TEST(ManagerSecrets, ASecretFromAFileIsNeverWrittenIntoTheConfiguration) {
    TempDir dir;
    const std::string secret = "a-secret-kept-apart-1";
    {
        std::ofstream(dir.path + "/chap.secret") << secret << "\n";
        ::chmod((dir.path + "/chap.secret").c_str(), 0600);
        std::ofstream(dir.path + "/ispaced.json")
            << json{{"targets",
                     {{{"iqn", iqn},
                       {"luns", {{{"lun", 0}, {"spec", "memory:8M"}}}},
                       {"chap", {{"user", "alice"}, {"secret_file", "chap.secret"}}}}}}};
    }
    RuntimeOptions options;
    options.reactors = 1;
    Runtime runtime(options);
    iscsi_target::ConfigOverlay overlay;
    overlay.listen = {"127.0.0.1:0"};
    auto config = load_configuration(dir.path + "/ispaced.json", overlay, runtime.backstores());
    ASSERT_TRUE(config) << config.error().message;
    ASSERT_EQ(config->targets[0].chap->secret, secret) << "read from the file";
    ASSERT_TRUE(runtime.serve(*config));
    ManagerOptions manager_options;
    manager_options.config_path = dir.path + "/ispaced.json";
    manager_options.overlay = overlay;
    Manager manager(runtime, manager_options);
    manager.adopt(*config);
    auto answer = manager.call("acl.add", {{"iqn", iqn}, {"initiator", "iqn.2026-11.org.ispace:h"}});
    ASSERT_TRUE(answer) << answer.error().message;
    std::string saved = read_file(dir.path + "/ispaced.json");
    EXPECT_EQ(saved.find(secret), std::string::npos) << saved;
    json document = json::parse(saved);
    EXPECT_EQ(document["targets"][0]["chap"], (json{{"user", "alice"}, {"secret_file", "chap.secret"}}));
    // Read back at the next start, it is the same secret; and `apply` of it changes nothing.
    auto again = load_configuration(dir.path + "/ispaced.json", overlay, runtime.backstores());
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(again->targets[0].chap->secret, secret);
    auto reloaded = manager.reload();
    ASSERT_TRUE(reloaded) << reloaded.error().message;
    EXPECT_TRUE((*reloaded)["changes"].empty()) << reloaded->dump();
    // A secret set through the socket is the administrator's choice to keep in the file (mode 0600).
    ASSERT_TRUE(manager.call("chap.set", {{"iqn", iqn}, {"user", "bob"}, {"secret", "bobs-secret-12345"}}));
    EXPECT_EQ(json::parse(read_file(dir.path + "/ispaced.json"))["targets"][0]["chap"]["secret"],
              "bobs-secret-12345");
}

TEST(ControlSocket, AnswersAndBoundsTheRequestSize) {
    TempDir dir;
    ControlSocket socket;
    ControlSocketOptions options;
    options.path = dir.path + "/control.sock";
    ASSERT_TRUE(socket.start(
        options, [](std::string_view line) { return std::string("echo ") + std::string(line) + "\n"; }));
    struct stat st {};
    ASSERT_EQ(::stat(options.path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    auto answer = control_request(options.path, "hello");
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(*answer, "echo hello");
    auto large = control_request(options.path, std::string(max_request_bytes + 10, 'x'));
    ASSERT_TRUE(large);
    EXPECT_NE(large->find("-32001"), std::string::npos) << *large;
    ControlSocket second;
    EXPECT_FALSE(second.start(options, [](std::string_view) { return std::string(); })) << "in use";
    socket.stop();
    EXPECT_FALSE(std::filesystem::exists(options.path));
}

TEST(Notify, SendsTheStateToNotifySocket) {
    TempDir dir;
    std::string path = dir.path + "/notify";
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
    auto sent = notify_service_manager("READY=1");
    ::unsetenv("NOTIFY_SOCKET");
    ASSERT_TRUE(sent);
    EXPECT_TRUE(*sent);
    char buffer[64] = {};
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    ::close(fd);
    EXPECT_EQ(std::string(buffer, size_t(std::max<ssize_t>(n, 0))), "READY=1");
    auto none = notify_service_manager("READY=1");
    ASSERT_TRUE(none);
    EXPECT_FALSE(*none) << "no NOTIFY_SOCKET, nothing sent";
}

} // namespace
} // namespace ispace::mgmt
