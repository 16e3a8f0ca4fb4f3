// mgmt::Runtime: one reactor group for the whole process (the target front end and the initiator share
// it, and no thread is made per session), start-up that creates nothing before everything is
// validated and bound, ordered teardown, and the live catalog's API.
#include "mgmt/runtime.hpp"

#include "common/log.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/text.hpp"
#include "ispace/initiator.hpp"
#include "net/socket.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <netinet/in.h>
#include <set>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::mgmt {
namespace {

constexpr const char* iqn = "iqn.2026-11.org.ispace:runtime-test";

// The names of this process's threads (their comm), with how many of each.
std::map<std::string, int> thread_names() {
    std::map<std::string, int> names;
    DIR* dir = ::opendir("/proc/self/task");
    while (dirent* entry = dir ? ::readdir(dir) : nullptr) {
        if (entry->d_name[0] == '.') {
            continue;
        }
        std::ifstream comm(std::string("/proc/self/task/") + entry->d_name + "/comm");
        std::string name;
        std::getline(comm, name);
        ++names[name];
    }
    if (dir) {
        ::closedir(dir);
    }
    return names;
}

// The threads that are neither the test's own nor io_uring's kernel workers (iou-wrk-*, iou-sqp-*), which
// the kernel creates inside every process that uses io_uring.
std::map<std::string, int> our_threads() {
    std::map<std::string, int> names = thread_names();
    std::erase_if(names, [](const auto& entry) {
        return entry.first.starts_with("iou-") || entry.first == "unit_mgmt";
    });
    return names;
}

// Every thread is a reactor of the group or one of its documented helpers (reactor-N-wM, started for
// system calls that have no asynchronous form), and there are exactly `reactors` reactor threads.
::testing::AssertionResult only_reactors_and_helpers(unsigned reactors) {
    unsigned found = 0;
    for (const auto& [name, count] : our_threads()) {
        bool reactor = name.starts_with("reactor-") && name.find("-w") == std::string::npos;
        bool helper = name.starts_with("reactor-") && name.find("-w") != std::string::npos;
        if (reactor) {
            found += count;
        } else if (!helper) {
            return ::testing::AssertionFailure()
                   << "an undocumented thread: " << name << " (x" << count << ")";
        }
    }
    if (found != reactors) {
        return ::testing::AssertionFailure() << found << " reactor threads, expected " << reactors;
    }
    return ::testing::AssertionSuccess();
}

iscsi_target::ServerConfig config_with(Runtime& runtime, std::vector<std::string> luns, std::string listen) {
    iscsi_target::ServerConfig config;
    config.negotiation = iscsi_target::default_target_negotiation();
    iscsi_target::ConfigOverlay overlay;
    overlay.listen = {std::move(listen)};
    overlay.iqn = iqn;
    overlay.luns = std::move(luns);
    auto applied = iscsi_target::apply_overlay(config, overlay, runtime.backstores());
    EXPECT_TRUE(applied) << applied.error().message;
    return config;
}

uint16_t port_of(Runtime& runtime) {
    return runtime.target_server()->portal_endpoints().at(0).port();
}

// A normal session logged in over a plain blocking socket, with the project's codec: a client that
// brings no threads of its own. Returns the socket (logged in) or -1.
int raw_login(uint16_t port, uint8_t isid_qualifier) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    auto send_all = [fd](const std::vector<uint8_t>& bytes) {
        return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size());
    };
    auto recv_all = [fd](uint8_t* to, size_t length) {
        for (size_t got = 0; got < length;) {
            ssize_t n = ::recv(fd, to + got, length - got, 0);
            if (n <= 0) {
                return false;
            }
            got += size_t(n);
        }
        return true;
    };
    std::vector<uint8_t> text = iscsi::encode_text({{"InitiatorName", "iqn.2026-11.org.ispace:raw"},
                                                    {"TargetName", iqn},
                                                    {"SessionType", "Normal"},
                                                    {"HeaderDigest", "None"},
                                                    {"DataDigest", "None"}});
    // Operational stage straight to full feature, as an initiator without authentication may; a target
    // that answers with keys of its own gets empty requests until it agrees to move on.
    for (uint32_t round = 0; round < 4; ++round) {
        iscsi::LoginRequest request;
        request.transit = true;
        request.csg = iscsi::LoginStage::operational;
        request.nsg = iscsi::LoginStage::full_feature;
        request.isid = {0x80, 0, 0, 0, 0, isid_qualifier};
        request.itt = 1 + round;
        request.cmd_sn = 1;
        request.exp_stat_sn = round;
        request.data_segment_length = uint32_t(text.size());
        iscsi::Bhs bhs;
        request.encode(bhs);
        std::vector<uint8_t> out(bhs.bytes.begin(), bhs.bytes.end());
        out.insert(out.end(), text.begin(), text.end());
        out.resize((out.size() + 3) / 4 * 4, 0);
        iscsi::Bhs answer;
        if (!send_all(out) || !recv_all(answer.bytes.data(), answer.bytes.size())) {
            break;
        }
        auto response = iscsi::LoginResponse::decode(answer);
        std::vector<uint8_t> data(response ? (response->data_segment_length + 3) / 4 * 4 : 0);
        if (!response || response->status_class != 0 || !recv_all(data.data(), data.size())) {
            break;
        }
        if (response->transit && response->nsg == iscsi::LoginStage::full_feature) {
            return fd;
        }
        text.clear();
    }
    ::close(fd);
    return -1;
}

TEST(Runtime, EightSessionsRunOnTheTwoReactorsAndTheirHelpersOnly) {
    set_log_level(LogLevel::warn);
    RuntimeOptions options;
    options.reactors = 2;
    Runtime runtime(options);
    ASSERT_TRUE(runtime.serve(config_with(runtime, {"memory:16M"}, "127.0.0.1:0")));
    EXPECT_TRUE(only_reactors_and_helpers(2));
    std::vector<int> sessions;
    for (uint8_t i = 0; i < 8; ++i) {
        int fd = raw_login(port_of(runtime), i);
        ASSERT_GE(fd, 0) << "login " << int(i);
        sessions.push_back(fd);
    }
    EXPECT_TRUE(only_reactors_and_helpers(2)) << "no thread per session";
    for (int fd : sessions) {
        ::close(fd);
    }
    EXPECT_TRUE(runtime.stop(std::chrono::seconds(5)));
}

TEST(Runtime, TheInitiatorSharesTheRuntimesReactors) {
    set_log_level(LogLevel::warn);
    RuntimeOptions options;
    options.reactors = 2;
    Runtime runtime(options);
    ASSERT_TRUE(runtime.serve(config_with(runtime, {"memory:16M"}, "127.0.0.1:0")));
    initiator::Initiator& ini = runtime.initiator();
    EXPECT_EQ(ini.threads(), 2u);
    std::vector<std::shared_ptr<initiator::Session>> sessions;
    for (int i = 0; i < 8; ++i) {
        initiator::SessionOptions o;
        o.host = "127.0.0.1";
        o.port = port_of(runtime);
        o.target_name = iqn;
        auto session = ini.connect(o);
        ASSERT_TRUE(session) << session.error().message;
        auto capacity = (*session)->read_capacity(0);
        ASSERT_TRUE(capacity) << capacity.error().message;
        EXPECT_EQ(capacity->bytes(), 16u << 20);
        sessions.push_back(std::move(*session));
    }
    EXPECT_TRUE(only_reactors_and_helpers(2))
        << "the target and the initiator of one process run on one group of reactors";
    sessions.clear();
    EXPECT_TRUE(runtime.stop(std::chrono::seconds(5)));
    EXPECT_TRUE(runtime.stop(std::chrono::seconds(5))) << "stop is idempotent";
}

TEST(Runtime, APortInUseFailsBeforeAnyLunFileIsCreated) {
    set_log_level(LogLevel::error);
    int busy = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(busy, 1), 0);
    socklen_t length = sizeof addr;
    ::getsockname(busy, reinterpret_cast<sockaddr*>(&addr), &length);
    std::string file =
        std::filesystem::temp_directory_path() / ("ispace-runtime-" + std::to_string(::getpid()));
    Runtime runtime;
    auto served = runtime.serve(
        config_with(runtime, {file + ",size=64M"}, "127.0.0.1:" + std::to_string(ntohs(addr.sin_port))));
    ASSERT_FALSE(served);
    EXPECT_NE(served.error().message.find("listen"), std::string::npos) << served.error().message;
    EXPECT_FALSE(std::filesystem::exists(file)) << "the LUN file was created although the port was taken";
    ::close(busy);
}

TEST(Runtime, TheLiveCatalogSaysWhatIsWrong) {
    set_log_level(LogLevel::error);
    Runtime runtime;
    EXPECT_FALSE(runtime.add_lun(iqn, std::nullopt, "memory:1M")) << "before serve()";
    ASSERT_TRUE(runtime.serve(config_with(runtime, {"memory:16M"}, "127.0.0.1:0")));
    auto added = runtime.add_lun(iqn, std::nullopt, "memory:8M");
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(*added, 1u) << "the lowest free LUN";
    auto taken = runtime.add_lun(iqn, 1, "memory:8M");
    ASSERT_FALSE(taken);
    EXPECT_NE(taken.error().message.find("in use"), std::string::npos) << taken.error().message;
    EXPECT_FALSE(runtime.add_lun("iqn.2026-11.org.ispace:nobody", std::nullopt, "memory:8M"));
    EXPECT_FALSE(runtime.add_lun(iqn, std::nullopt, "memory:lots")) << "a bad spec";
    auto shrink = runtime.resize_lun(iqn, 0, 8u << 20, false);
    ASSERT_FALSE(shrink);
    EXPECT_NE(shrink.error().message.find("explicitly"), std::string::npos) << shrink.error().message;
    ASSERT_TRUE(runtime.resize_lun(iqn, 0, 32u << 20, false));
    auto luns = runtime.luns(iqn);
    ASSERT_TRUE(luns);
    ASSERT_EQ(luns->size(), 2u);
    EXPECT_EQ((*luns)[0].bytes, 32u << 20);
    EXPECT_EQ((*luns)[1].spec, "memory:8M");
    ASSERT_TRUE(runtime.remove_lun(iqn, 1));
    EXPECT_FALSE(runtime.remove_lun(iqn, 1)) << "removed already";
    EXPECT_EQ(runtime.luns(iqn)->size(), 1u);
    EXPECT_TRUE(runtime.stop(std::chrono::seconds(5)));
    EXPECT_FALSE(runtime.add_lun(iqn, std::nullopt, "memory:1M")) << "after stop()";
}

} // namespace
} // namespace ispace::mgmt
