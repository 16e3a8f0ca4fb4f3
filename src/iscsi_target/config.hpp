// What ispaced serves: portals, targets and their LUNs, and the limits it enforces. Built from the
// command line (quick mode) or a configuration file; validated once at start-up.
#pragma once

#include "backstore/registry.hpp"
#include "common/result.hpp"
#include "iscsi/chap.hpp"
#include "iscsi/params.hpp"
#include "net/socket.hpp"

#include <nlohmann/json_fwd.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi_target {

struct LunConfig {
    uint64_t lun = 0;
    std::string spec; // as given: "var/lun0.img,size=1G,thin"
    // The spec as its kind read it (backstore/registry.hpp); not yet opened.
    std::shared_ptr<const backstore::Spec> device;
    // The logical unit's identifier (VPD 83h NAA, VPD 80h serial), when the configuration pins it;
    // otherwise derived from the device (a file's filesystem and inode), which a copy or a restore of
    // the file, or a different device number after a reboot, would change.
    std::optional<uint64_t> id;
};

// An address range an initiator may come from: "10.0.0.0/8", "fd00::/64", or one address.
struct Cidr {
    int family = 0; // AF_INET or AF_INET6
    uint8_t bytes[16] = {};
    unsigned prefix = 0;

    bool contains(const net::Endpoint& address) const;
    std::string to_string() const;
};
Result<Cidr> parse_cidr(std::string_view text);

// Who may log in to a target, and what they see. An ACL with no entries admits every initiator.
struct AclEntry {
    std::string initiator;                     // an iSCSI name, exactly
    std::vector<Cidr> networks;                // if any: the initiator must connect from one of them
    std::optional<std::vector<uint64_t>> luns; // LUN masking: only these LUNs exist for it
    bool read_only = false;                    // every LUN is write-protected for it
};

// The first entry naming `initiator` whose networks (if any) hold `peer`, or null.
const AclEntry* find_acl_entry(const std::vector<AclEntry>& acl, std::string_view initiator,
                               const net::Endpoint& peer);
// "IQN" or "IQN@CIDR" as given to --allow.
Result<AclEntry> parse_allow(std::string_view text);

struct TargetConfig {
    std::string iqn;
    std::string alias;
    std::vector<LunConfig> luns;
    // CHAP: when set, initiators must authenticate as this user (AuthMethod=None is refused).
    std::optional<iscsi::ChapCredentials> chap;
    // What the target proves to an initiator that asks for mutual CHAP.
    std::optional<iscsi::ChapCredentials> mutual_chap;
    std::vector<AclEntry> acl;
    // Portals of this target alone ("10.0.0.5:3260"): it is served on these and on the shared ones
    // (ServerConfig::portals); a portal no other target names serves only this one.
    std::vector<std::string> portals;
    // Defaults for its new sessions by RFC 7143 key name, over the configuration's (ServerConfig::params).
    std::map<std::string, std::string, std::less<>> params;
    // The --lun specs of ispaced's command line this target has taken in (apply_overlay() writes it,
    // the daemon persists it as "lun_flags"): the same --lun at a later start adds nothing, even when
    // the LUN it made was removed or resized through the control socket since. The file owns a LUN
    // once it is written there.
    std::vector<std::string> lun_flags;
    // What its logins offer and accept: resolve_negotiation() fills it from the two `params`; unset,
    // the server's negotiation applies.
    std::optional<iscsi::NegotiationConfig> negotiation;
};

struct PortalConfig {
    std::string listen; // "127.0.0.1:3260", "[::1]:3260"
    uint16_t tpgt = 1;  // target portal group tag; each portal is its own group in quick mode
    // A shared portal serves every target; one that only targets' `portals` name serves only them.
    bool shared = true;
};

// limits.buffer_memory unless configured: a sixteenth of the machine's memory, from 64 MiB to 512 MiB.
uint64_t default_buffer_memory();

struct Limits {
    // The CmdSN window a session gets: how many commands it may have outstanding (MaxCmdSN - ExpCmdSN+1).
    uint32_t queue_depth = 128;
    // Largest data transfer one command may move; bounds what one command makes the target allocate.
    uint32_t max_transfer_bytes = 8u << 20;
    // A connection must finish login within this, or it is dropped.
    std::chrono::milliseconds login_timeout{15000};
    // An idle connection in full feature phase is pinged (NOP-In) after this...
    std::chrono::milliseconds nop_interval{10000};
    // ...and dropped when nothing at all arrives for this long. Generous on purpose: an initiator may
    // legitimately leave its socket unread for a minute (libiscsi's Sanitize.Reset polls TEST UNIT
    // READY every 60 s from one thread). Dropping it sooner makes it log in again, and the new
    // nexus's unit attention fails its next poll, forever. A vanished peer is still found within 90 s.
    std::chrono::milliseconds nop_timeout{90000};
    // SANITIZE OVERWRITE's pace, bytes per second per logical unit (0: unlimited); see LuOptions.
    uint64_t sanitize_bytes_per_second = uint64_t(64) << 20;
    // Total connections (any state) the daemon accepts at once; more are closed at accept.
    uint32_t max_connections = 4096;
    // Connections still logging in (unauthenticated) at once; more are closed at accept, so a flood
    // of half-open connections cannot starve logged-in initiators of memory.
    uint32_t max_login_connections = 512;
    // ...of which one source address may hold at once: a flood from one address fills its own share,
    // not every login slot, so initiators elsewhere still log in.
    uint32_t max_login_connections_per_source = 64;
    // Normal sessions one initiator name may hold at once.
    uint32_t max_sessions_per_initiator = 64;
    // Bytes of Data-In buffers all sessions together may hold until sent (iscsi_target/buffer_budget.hpp):
    // past it, commands wait and MaxCmdSN stops advancing instead of memory being allocated.
    uint64_t buffer_memory = default_buffer_memory();
};

// Where the process announces itself for discovery (RFC 4171 iSNS). Plain settings: mgmt hands them to
// the isns layer, which this layer does not know.
struct IsnsSettings {
    std::string server;         // HOST[:PORT]; empty: no iSNS
    std::string entity;         // the network entity identifier; empty: the program picks one
    uint32_t esi_interval = 60; // seconds asked of the server between status inquiries; 0: no ESI
};

struct ServerConfig {
    unsigned reactors = 0; // 0: one per core
    std::vector<PortalConfig> portals;
    std::vector<TargetConfig> targets;
    iscsi::NegotiationConfig negotiation; // what the target accepts and declares
    Limits limits;
    // CHAP for discovery sessions; without it discovery needs no authentication.
    std::optional<iscsi::ChapCredentials> discovery_chap;
    // What the target proves in discovery sessions to an initiator that asks for mutual CHAP; needs
    // discovery_chap. Without it such an initiator's discovery login fails (Authentication failure).
    std::optional<iscsi::ChapCredentials> discovery_mutual_chap;
    // Where persistent-reservation state (APTPL) is kept; empty: next to each file LUN as FILE.pr.
    std::string state_dir;
    // Defaults for new sessions by RFC 7143 key name ("ImmediateData": "No"), over the daemon's own
    // (default_target_negotiation()); resolve_negotiation() turns them into `negotiation`.
    std::map<std::string, std::string, std::less<>> params;
    IsnsSettings isns;
};

// Settings given on the command line, applied over a configuration file (or over an empty one in quick
// mode) by one rule: a flag that takes one value replaces the file's value; a repeatable flag (--listen,
// --lun, --allow) adds entries to the file's list, except an entry the file has taken in already: the
// daemon writes its flags into the file it persists, and the same flags at the next start must not
// add them twice. For --listen and --allow that is an equal entry in the list; for --lun it is the
// target's record of the --lun specs it took in (TargetConfig::lun_flags), so that a flag's LUN
// removed or resized through the control socket is not made again (files without the record: a LUN
// with the same spec). Security settings apply to the target named by
// --iqn, or to every target of the file when --iqn is not given; they are never dropped silently.
struct ConfigOverlay {
    std::vector<std::string> listen; // portals added (a portal the file already has is not repeated)
    std::optional<unsigned> reactors;
    std::optional<std::string> state_dir;
    std::string iqn; // the target --alias/--lun/--chap/--allow apply to (created if new)
    std::optional<std::string> alias;
    std::vector<std::string> luns; // numbered after the target's highest LUN...
    // ...unless numbered here, one per entry of `luns` (a daemon that re-applies its flags over a
    // changed file keeps the numbers they had at start-up).
    std::vector<uint64_t> lun_numbers;
    std::optional<iscsi::ChapCredentials> chap;
    std::optional<iscsi::ChapCredentials> mutual_chap;
    std::vector<AclEntry> allow;
    std::optional<iscsi::ChapCredentials> discovery_chap;
    std::optional<iscsi::ChapCredentials> discovery_mutual_chap;
    std::optional<uint32_t> queue_depth;
    std::optional<uint32_t> max_transfer_bytes;
    std::optional<std::chrono::milliseconds> login_timeout;
    std::optional<std::chrono::milliseconds> nop_interval;
    std::optional<std::chrono::milliseconds> nop_timeout;
    std::optional<uint64_t> sanitize_bytes_per_second;
    std::optional<std::string> isns_server;
    std::optional<std::string> isns_entity;
    std::optional<uint32_t> isns_esi_interval;
    std::optional<uint64_t> buffer_memory;
    // --max-erl: the highest ErrorRecoveryLevel accepted, as params["ErrorRecoveryLevel"].
    std::optional<unsigned> max_erl;
};

// Applies `overlay` to `config` (see ConfigOverlay). Fails, naming the flag, when a flag has nothing to
// apply to (--lun without --iqn beside a file; --chap or --allow with no target at all).
// LUN specs are read by `backstores`.
Result<void> apply_overlay(ServerConfig& config, const ConfigOverlay& overlay,
                           const backstore::Registry& backstores);

// Checks one target's settings (name, LUN numbers, CHAP, ACL). A target may have no LUN yet.
Result<void> validate_target(const TargetConfig& target);

// Checks a whole configuration (names, LUN numbers, CHAP secrets, ACLs) before anything is opened.
// Errors name the target and field at fault and never echo a secret.
Result<void> validate(const ServerConfig& config);

// Reads a JSON configuration file (format in docs/configuration.md). Quick-mode settings are the same
// fields; a file gives several targets and per-initiator ACLs.
// LUN specs are read by `backstores`.
Result<ServerConfig> load_config_file(const std::string& path, const backstore::Registry& backstores);
// The same from a document already parsed (the control socket's `apply`); errors say where in it.
// `base_dir`: where relative paths in the file (secret_file) are read from; empty for the current directory.
Result<ServerConfig> config_from_json(const nlohmann::json& root, const backstore::Registry& backstores,
                                      const std::string& base_dir = {});
// The configuration as a document load_config_file() reads back to the same configuration: what
// ispaced writes when a change made through the control socket is persisted. Settings still at their
// defaults are left out. With `show_secrets` false, CHAP secrets are written as `masked_secret`.
nlohmann::json config_to_json(const ServerConfig& config, bool show_secrets = true);
inline constexpr std::string_view masked_secret = "********";

// Sets config.negotiation (the daemon's defaults, then `params`) and each target's negotiation (when
// it has params of its own), holding MaxBurstLength and FirstBurstLength within max_transfer_bytes.
// Errors name the key and the target.
Result<void> resolve_negotiation(ServerConfig& config);

// A LUN identifier as the configuration writes it: 16 hex digits.
std::string lun_id_text(uint64_t id);
Result<uint64_t> parse_lun_id(std::string_view text);

// The negotiation settings ispaced uses unless configured otherwise: digests allowed (None preferred,
// the initiator decides), immediate data and unsolicited data accepted, several R2Ts in flight.
iscsi::NegotiationConfig default_target_negotiation();

} // namespace ispace::iscsi_target
