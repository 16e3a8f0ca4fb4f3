#include "volume/fencing.hpp"

#include "common/log.hpp"
#include "scsi_spec/opcodes.hpp"
#include "volume/label.hpp"
#include "volume/remote_device.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace ispace::volume {

Result<HostIdentity> load_identity(const std::string& home) {
    std::filesystem::path path = std::filesystem::path(home) / "host.json";
    std::error_code ec;
    std::filesystem::create_directories(home, ec);
    if (ec) {
        return make_error(fmt::format("{}: {}", home, ec.message()), ec.value());
    }
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::string name = fmt::format("{}:{}", host, std::filesystem::weakly_canonical(home, ec).string());
    if (std::ifstream in(path); in) {
        try {
            nlohmann::json j = nlohmann::json::parse(in);
            HostIdentity id;
            id.key = std::stoull(j.at("key").get<std::string>(), nullptr, 16);
            id.name = j.value("name", name);
            if (id.key == 0) {
                return make_error(fmt::format("{}: the key is 0", path.string()), EINVAL);
            }
            return id;
        } catch (const std::exception& e) {
            return make_error(
                fmt::format("{}: not a host identity ({}); remove it to make a new one (this host "
                            "then counts as another holder)",
                            path.string(), e.what()),
                EINVAL);
        }
    }
    HostIdentity id{random_u64(), name};
    nlohmann::json j{{"key", fmt::format("{:016x}", id.key)}, {"name", id.name}};
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << j.dump(2) << "\n";
        if (!out) {
            return make_error(fmt::format("{}: cannot write", tmp.string()), EIO);
        }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        return make_error(fmt::format("{}: {}", path.string(), ec.message()), ec.value());
    }
    return id;
}

Result<void> fence(const std::vector<FenceTarget>& targets, const HostIdentity& me, bool takeover,
                   uint64_t holder_key, const std::string& holder_name) {
    struct Seen {
        RemoteDevice* remote;
        const FenceTarget* target;
        Reservation reservation;
        std::vector<uint64_t> others; // keys registered that are not ours
    };
    std::vector<Seen> seen;
    // First look everywhere, change nothing: a refusal leaves every member as it was.
    for (const FenceTarget& t : targets) {
        auto* remote = dynamic_cast<RemoteDevice*>(t.device);
        if (remote == nullptr) {
            continue;
        }
        auto reservation = remote->read_reservation_sync();
        if (!reservation) {
            return make_error(fmt::format("{}: {}", t.url, reservation.error().message),
                              reservation.error().code);
        }
        auto keys = remote->read_keys_sync();
        if (!keys) {
            return make_error(fmt::format("{}: {}", t.url, keys.error().message), keys.error().code);
        }
        Seen s{remote, &t, *reservation, {}};
        for (uint64_t k : *keys) {
            if (k != me.key && std::find(s.others.begin(), s.others.end(), k) == s.others.end()) {
                s.others.push_back(k);
            }
        }
        if (reservation->reserved && reservation->key != me.key &&
            std::find(s.others.begin(), s.others.end(), reservation->key) == s.others.end()) {
            s.others.push_back(reservation->key);
        }
        if (!s.others.empty() && !takeover) {
            uint64_t other =
                reservation->reserved && reservation->key != me.key ? reservation->key : s.others[0];
            std::string who = other == holder_key && !holder_name.empty()
                                  ? fmt::format("{} (reservation key {:#x})", holder_name, other)
                                  : fmt::format("another holder (reservation key {:#x})", other);
            return make_error(fmt::format("the space is held by {}: {} {} it; use takeover to take it over "
                                          "(the holder is then fenced off and stops writing)",
                                          who, t.url, reservation->reserved ? "is reserved by" : "registers"),
                              EBUSY);
        }
        seen.push_back(std::move(s));
    }
    for (Seen& s : seen) {
        if (auto r = s.remote->register_key_sync(me.key); !r) {
            return make_error(fmt::format("{}: {}", s.target->url, r.error().message), r.error().code);
        }
        for (uint64_t other : s.others) {
            // SPC-5 5.14.11.4: PREEMPT AND ABORT removes the key's registrations, takes over its reservation
            // (if it held one) with our type, and aborts its commands.
            if (auto r = s.remote->preempt_and_abort_sync(other); !r) {
                return make_error(
                    fmt::format("{}: preempting key {:#x}: {}", s.target->url, other, r.error().message),
                    r.error().code);
            }
            log_warn("{}: key {:#x} preempted (takeover by {})", s.target->url, other, me.name);
        }
        auto now = s.remote->read_reservation_sync();
        if (!now) {
            return make_error(fmt::format("{}: {}", s.target->url, now.error().message), now.error().code);
        }
        if (!now->reserved) {
            if (auto r = s.remote->reserve_sync(); !r) {
                return make_error(fmt::format("{}: {}", s.target->url, r.error().message), r.error().code);
            }
        } else if (now->key != me.key) {
            return make_error(fmt::format("{}: still reserved by key {:#x}", s.target->url, now->key), EBUSY);
        }
        // Reserved with our key (by this nexus or an older one of ours): as a registrant we may write.
    }
    return {};
}

void unfence(const std::vector<FenceTarget>& targets, const HostIdentity& me) {
    for (const FenceTarget& t : targets) {
        auto* remote = dynamic_cast<RemoteDevice*>(t.device);
        if (remote == nullptr || remote->failed() || remote->registered_key() != me.key) {
            continue;
        }
        (void)remote->release_sync(); // only the nexus that reserved can release; harmless otherwise
        // A member that reconnected as a new device (a new I_T nexus) left the reservation with the nexus
        // it had before, registered with our key: this one cannot release it. It takes the reservation
        // over from ourselves first (SPC-5 PREEMPT naming the holder's key: the other nexuses registered
        // with that key go, the preempting one holds), then releases it; else the member stays reserved
        // under our key after detach, and another host is refused as if we still held it.
        auto now = remote->read_reservation_sync();
        if (now && now->reserved && now->key == me.key && remote->preempt_and_abort_sync(me.key)) {
            (void)remote->release_sync();
        }
        (void)remote->register_key_sync(0);
    }
}

} // namespace ispace::volume
