// ispace initiator library: iSCSI sessions to many targets, several connections per session (MC/S),
// an asynchronous command core with thin synchronous wrappers on top.
//
//     ispace::initiator::Initiator ini;                               // one reactor thread per core
//     ispace::initiator::SessionOptions o;
//     o.host = "127.0.0.1"; o.target_name = "iqn.2026-01.com.example:disk"; o.connections = 4;
//     auto session = ini.connect(o);                                  // Result<std::shared_ptr<Session>>
//     if (!session) { /* session.error().message says what went wrong */ }
//     auto cap = (*session)->read_capacity(1);                        // synchronous helper
//     ispace::initiator::Request req = ispace::initiator::make_read(1, lba, blocks, cap->block_size);
//     (*session)->submit(std::move(req), [](ispace::initiator::Response&& r) { ... });  // async
//
// Threading: every method of Initiator and Session may be called from any thread. Completions run on
// one of the initiator's reactor threads and must not block; the synchronous helpers block the calling
// thread and so must not be called from a completion. See docs/initiator.md.
//
// Reliability: a request completes once, with the target's status, or with an error when the library
// gave up (recovery timeout, retries exhausted, session closed). A lost connection is recovered by
// session reinstatement and every request whose status had not arrived is sent again, in submission
// order, before anything submitted later.
//
// Names: a Request is one SCSI command the initiator sends; its Response is what came back for it (the
// target's status, sense and residuals) or why nothing did.
#pragma once

#include "ispace/buffer.hpp"
#include "ispace/data_observer.hpp"
#include "ispace/function.hpp"
#include "ispace/result.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {
class Authenticator;
}

namespace ispace::initiator {

class SessionCore;
class InitiatorCore;

namespace detail {
// Settings only the library's own code reaches (src/initiator/testing.hpp: the transport seam the tests
// use to inject faults). Opaque here, so that this header names no private type.
struct InitiatorInternals;
} // namespace detail

inline constexpr std::string_view default_initiator_name = "iqn.2026-11.org.ispace:initiator";
inline constexpr uint16_t default_port = 3260;

enum class DataDirection : uint8_t { none, read, write };
// What to offer for HeaderDigest/DataDigest: none ("None"), crc32c ("CRC32C": the login fails if the
// target will not), crc32c_or_none ("CRC32C,None": CRC32C when the target does digests).
enum class DigestMode : uint8_t { none, crc32c, crc32c_or_none };

// CHAP credentials. `user`/`secret` authenticate us to the target; `target_user`/`target_secret`, when
// set, make it mutual (the target must prove it knows them too).
struct ChapCredentials {
    std::string user;
    std::string secret;
    std::string target_user;
    std::string target_secret;
    // Offer only CHAP_A=5 (MD5). By default SHA-256 (CHAP_A=7, as LIO and open-iscsi number it) is
    // offered first; a target that reads 7 as something else (tgt 1.0.x takes it for SHA-1) refuses our
    // response, and the library then retries once with MD5 only (logged), when the login failed inside
    // the CHAP exchange.
    bool md5_only = false;
    bool empty() const { return user.empty(); }
    bool mutual() const { return !target_user.empty(); }
};

// Creates the iscsi::Authenticator for an AuthMethod the target chose ("CHAP"). The library asks only
// when credentials are set. The default is the built-in CHAP of iscsi/chap.hpp (SHA-256 preferred, MD5
// accepted; mutual when ChapCredentials::target_user is set).
using AuthenticatorFactory = std::function<std::unique_ptr<iscsi::Authenticator>(
    std::string_view method, const ChapCredentials& credentials)>;

// Time limits and recovery pacing. Zero disables keepalive; the others must be positive.
struct Timeouts {
    std::chrono::milliseconds connect{10000};
    std::chrono::milliseconds login{15000};
    // From sending a command to its status; then ABORT TASK.
    std::chrono::milliseconds command{30000};
    // For each task management request (ABORT TASK, then LUN RESET, then the connection is dropped).
    std::chrono::milliseconds task_management{10000};
    // A NOP-Out ping after this much silence from the target, and the connection is declared dead when
    // the answer takes longer than nop_timeout.
    std::chrono::milliseconds nop_interval{5000};
    std::chrono::milliseconds nop_timeout{10000};
    // After a connection loss, how long to keep trying to reinstate the session before failing the
    // commands that wait (the "replacement timeout" of open-iscsi).
    std::chrono::milliseconds recovery{120000};
    // Reconnect back-off: first retry after reconnect_min, doubling up to reconnect_max.
    std::chrono::milliseconds reconnect_min{100};
    std::chrono::milliseconds reconnect_max{2000};
    std::chrono::milliseconds logout{5000};
};

struct SessionOptions {
    std::string host; // name or address of the portal
    uint16_t port = default_port;
    std::string target_name;    // IQN of the target
    std::string initiator_name; // empty: the Initiator's name
    std::string initiator_alias;
    unsigned connections = 1; // MC/S: TCP connections in the session (the target may allow fewer)
    // The MaxConnections offered at login (0: `connections`), to leave room for Session::add_connection()
    // beyond `connections`. The session's MaxConnections is the smaller of this and the target's.
    unsigned max_connections = 0;
    DigestMode header_digest = DigestMode::none;
    DigestMode data_digest = DigestMode::none;
    ChapCredentials chap;
    AuthenticatorFactory authenticator; // empty: the Initiator's
    // Negotiation. Our MaxRecvDataSegmentLength bounds the Data-In PDUs the target sends us.
    uint32_t max_recv_data_segment_length = 262144;
    uint32_t max_burst_length = 1048576;
    uint32_t first_burst_length = 262144;
    bool immediate_data = true;
    bool initial_r2t = false; // false offers unsolicited Data-Out up to FirstBurstLength
    // Commands in flight per session, at most (the target's CmdSN window may allow fewer).
    unsigned queue_depth = 256;
    Timeouts timeouts;
    // Times a command is re-sent after it timed out and was aborted (or the LUN was reset), or the target
    // failed it at the iSCSI level, before it completes with an error. Re-sending after a connection loss
    // is not counted: that is bounded by timeouts.recovery.
    unsigned command_retries = 5;
    // Re-send commands answered with CHECK CONDITION / UNIT ATTENTION (a new session, a reset, a
    // capacity change), BUSY or TASK SET FULL, as the kernel's SCSI mid layer does. At most this many
    // times per command.
    unsigned unit_attention_retries = 10;
    // Session reinstatement on connection loss. false: a lost connection fails the commands in flight.
    bool reconnect = true;
    // The ErrorRecoveryLevel asked for (RFC 7143 §13.20); the target may grant less. At 1, a lost or
    // corrupt Data-In or response is asked for again with a SNACK instead of costing the command. At 2,
    // a lost connection is logged in again with its CID and its tasks moved to it with TASK REASSIGN,
    // instead of reinstating the session (docs/recovery.md). 0 is what every peer without the key gets.
    unsigned error_recovery_level = 2;
};

// One SCSI command to send. `data` is both the buffer and its length: for a read it receives up to
// data.size() bytes (the Expected Data Transfer Length), for a write it is sent. The buffer is shared,
// not copied: keep it unmodified until the completion runs (a request may be sent more than once).
struct Request {
    uint64_t lun = 0; // the LUN number (0-16383); encoded per SAM (peripheral or flat addressing)
    std::array<uint8_t, 16> cdb{};
    uint8_t cdb_length = 0; // 6, 10, 12 or 16
    DataDirection direction = DataDirection::none;
    Buffer data;
    std::chrono::milliseconds timeout{0}; // 0: the session's Timeouts::command
    // Reads, optional: told of the Data-In bytes as they land in `data` (at their offset in `data`). Not
    // owned; it must outlive the completion.
    DataObserver* observer = nullptr;
};

// What came back for a Request: the target's SCSI status, sense and residuals, or an error.
struct Response {
    // Set when the request did not complete with a SCSI status (the session failed or was closed,
    // retries ran out, the target rejected the command). Then the fields below are meaningless.
    std::optional<Error> error;
    uint8_t status = 0;         // SCSI status: 0x00 GOOD, 0x02 CHECK CONDITION, 0x08 BUSY, ...
    std::vector<uint8_t> sense; // sense data with CHECK CONDITION
    // Residual per the target: bytes not transferred (underflow) or not transferable (overflow).
    uint32_t residual = 0;
    bool underflow = false;
    bool overflow = false;
    // Bytes of Data-In received (reads).
    uint32_t data_received = 0;

    bool ok() const { return !error && status == 0; }
    // "GOOD", "CHECK CONDITION: ILLEGAL REQUEST, asc/ascq 24/00 (INVALID FIELD IN CDB)", or the error.
    std::string describe() const;
};

using Completion = Function<void(Response&&)>;

// ---- Decoded SCSI data (the synchronous helpers) -----------------------------------------------------

struct InquiryData {
    uint8_t peripheral_qualifier = 0;
    uint8_t device_type = 0; // 0x00 disk, 0x05 CD/DVD, 0x0c storage array controller, 0x1f unknown
    bool removable = false;
    uint8_t version = 0;
    std::string vendor;   // trimmed
    std::string product;  // trimmed
    std::string revision; // trimmed
};

struct Capacity {
    uint64_t blocks = 0;     // number of logical blocks (last LBA + 1)
    uint32_t block_size = 0; // bytes per logical block
    bool thin = false;       // LBPME
    uint8_t physical_exponent = 0;
    uint64_t bytes() const { return blocks * block_size; }
};

// Block Limits VPD page (B0h); zero means "not reported".
struct BlockLimits {
    uint32_t max_transfer_blocks = 0;
    uint32_t optimal_transfer_blocks = 0;
    uint32_t max_unmap_blocks = 0;
};

// "disk", "tape", "cd/dvd", "controller", "enclosure", ... or "type 0x..".
std::string device_type_name(uint8_t type);
// "ILLEGAL REQUEST, asc/ascq 24/00 (INVALID FIELD IN CDB)" for fixed or descriptor sense data.
std::string describe_sense(std::span<const uint8_t> sense);
// Sense data decoded: its sense key, additional sense code and qualifier.
struct Sense {
    uint8_t key = 0; // 0x05 ILLEGAL REQUEST, 0x06 UNIT ATTENTION, ...
    uint8_t asc = 0;
    uint8_t ascq = 0;
};
// Fixed or descriptor format (current or deferred); nullopt when the data is in neither.
std::optional<Sense> parse_sense(std::span<const uint8_t> sense);

// Requests for the common commands (READ(16)/WRITE(16) when the LBA or length needs them).
Request make_read(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer buffer = {});
Request make_write(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer data);

// ---- Sessions ----------------------------------------------------------------------------------------

struct SessionInfo {
    std::string target_name;
    std::string portal; // host:port
    std::string isid;   // 12 hex digits
    uint16_t tsih = 0;
    unsigned connections = 0; // in full feature phase now
    bool header_digest = false;
    bool data_digest = false;
    uint32_t max_burst_length = 0;
    uint32_t first_burst_length = 0;
    uint32_t max_send_data_segment_length = 0; // the target's MaxRecvDataSegmentLength
    bool immediate_data = false;
    bool initial_r2t = true;
    uint16_t max_outstanding_r2t = 1;
    uint8_t error_recovery_level = 0; // as negotiated
    // Counters since the session was created.
    uint64_t commands = 0;                         // completed (with a status or an error)
    uint64_t reconnects = 0;                       // successful session reinstatements
    uint64_t retries = 0;                          // commands sent again after a failure (lost, busy)
    uint64_t unit_attentions = 0;                  // unit attentions reported (the command sent again)
    uint64_t aborts = 0;                           // ABORT TASK requests sent
    uint64_t lun_resets = 0;                       // LUN RESET requests sent
    uint64_t digest_errors = 0;                    // PDUs received with a bad digest
    uint64_t snacks = 0;                           // SNACK Requests sent (ERL 1 recovery)
    uint64_t connection_recoveries = 0;            // connections logged in again with their CID (ERL 2)
    uint64_t reassignments = 0;                    // tasks moved to another connection (TASK REASSIGN)
    uint64_t connection_failovers = 0;             // failed connections removed for recovery by another
    uint64_t connections_added = 0;                // by add_connection()
    uint64_t connections_removed = 0;              // by remove_connection()
    std::vector<uint64_t> commands_per_connection; // sent on each connection of the current login
    std::vector<uint16_t> connection_ids;          // their CIDs, in the same order
};

class Session {
public:
    ~Session(); // close()s
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Any thread. `done` runs once on a reactor thread (also for errors; never inside submit()).
    void submit(Request request, Completion done);
    // Blocks until the request completes. Not from a reactor thread.
    Response execute(Request request);

    // Synchronous helpers: GOOD, or an error naming the command and the sense. Not from a reactor thread.
    Result<void> test_unit_ready(uint64_t lun);
    Result<InquiryData> inquiry(uint64_t lun);
    // A VPD page's bytes (header included).
    Result<std::vector<uint8_t>> inquiry_vpd(uint64_t lun, uint8_t page);
    Result<std::string> unit_serial_number(uint64_t lun);
    Result<BlockLimits> block_limits(uint64_t lun);
    // READ CAPACITY(16), falling back to READ CAPACITY(10).
    Result<Capacity> read_capacity(uint64_t lun);
    // Whether the LUN refuses writes: WP in the DEVICE-SPECIFIC PARAMETER of MODE SENSE(6)'s header
    // (SBC-4 §6.5.1), MODE SENSE(10) if the device does not do the 6-byte form.
    Result<bool> write_protected(uint64_t lun);
    // LUN numbers, in the target's order.
    Result<std::vector<uint64_t>> report_luns();
    Result<void> read(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size,
                      std::span<uint8_t> out);
    Result<void> write(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size,
                       std::span<const uint8_t> in);
    Result<void> synchronize_cache(uint64_t lun);

    SessionInfo info() const;

    // MC/S while the session runs (docs/initiator.md, "Adding and removing connections"). Both block until
    // done; not from a reactor thread; safe while other threads submit.
    //
    // Logs in one more connection to the session (same ISID, the session's TSIH, a CID not in use, on the
    // session's portal) and dispatches new commands over it too; returns its CID. Fails when the session
    // is not up (being recovered, closing), is at its negotiated MaxConnections (see
    // SessionOptions::max_connections), or the target refuses the login (its message is returned).
    Result<uint16_t> add_connection();
    // Stops dispatching new commands to connection `cid` (they go to the others), lets its commands in
    // flight finish (if it is lost meanwhile, it is recovered as any lost connection first), then logs it
    // out with reason "close the connection" (RFC 7143 §11.14). The other connections go on. Refused for
    // the session's last connection (that is close()), an unknown CID, or one already being removed. A
    // session reinstated meanwhile comes back without it.
    Result<void> remove_connection(uint16_t cid);

    // Waits for the commands in flight (they complete or fail), logs out and closes every connection.
    // Later submits fail. Idempotent. Not from a reactor thread.
    void close();

private:
    friend class Initiator;
    explicit Session(std::shared_ptr<SessionCore> core);
    std::shared_ptr<SessionCore> _core;
};

struct DiscoveredTarget {
    std::string name;
    // TargetAddress values: "host:port,portal-group-tag".
    std::vector<std::string> addresses;
};

struct DiscoveryOptions {
    std::string host;
    uint16_t port = default_port;
    std::string initiator_name; // empty: the Initiator's
    DigestMode header_digest = DigestMode::none;
    DigestMode data_digest = DigestMode::none;
    ChapCredentials chap;
    AuthenticatorFactory authenticator;
    Timeouts timeouts;
};

struct InitiatorOptions {
    // Reactor threads; 0: one per core. Sessions (and the connections of each session) are spread
    // over them.
    unsigned threads = 0;
    std::string initiator_name{default_initiator_name};
    AuthenticatorFactory authenticator;
    // Library-internal; leave empty (set through src/initiator/internals.hpp by the library's tests and by
    // an embedding runtime).
    std::shared_ptr<const detail::InitiatorInternals> internals;
};

class Initiator {
public:
    explicit Initiator(InitiatorOptions options = {});
    // Closes the sessions still open, then stops the reactors.
    ~Initiator();
    Initiator(const Initiator&) = delete;
    Initiator& operator=(const Initiator&) = delete;

    // Logs in (all connections) and returns the session; blocks. Any thread but a reactor's.
    Result<std::shared_ptr<Session>> connect(SessionOptions options);
    // The same, asynchronously: `done` runs on a reactor thread.
    void connect_async(SessionOptions options, Function<void(Result<std::shared_ptr<Session>>)> done);
    // SendTargets=All in a discovery session; blocks.
    Result<std::vector<DiscoveredTarget>> discover(DiscoveryOptions options);

    unsigned threads() const;
    const std::string& initiator_name() const;

private:
    std::shared_ptr<InitiatorCore> _core;
};

// ---- URLs ----------------------------------------------------------------------------------------------

// iscsi://[user%secret@]HOST[:PORT][/IQN[/LUN]][?header_digest=crc32c&data_digest=crc32c]
// (libiscsi's form; HOST may be [IPv6]; user and secret are percent-decoded).
// A secret left out of the URL comes from the environment, so that `ps` never shows it:
// iscsi://user@HOST/... takes ISPACE_CHAP_SECRET, ?target_user=NAME without target_password takes
// ISPACE_CHAP_TARGET_SECRET (as libiscsi takes LIBISCSI_CHAP_PASSWORD).
inline constexpr const char* chap_secret_variable = "ISPACE_CHAP_SECRET";
inline constexpr const char* chap_target_secret_variable = "ISPACE_CHAP_TARGET_SECRET";
struct Url {
    std::string host;
    uint16_t port = default_port;
    std::string target_name; // empty when the URL names only a portal
    std::optional<uint64_t> lun;
    ChapCredentials chap;
    std::optional<DigestMode> header_digest; // from the query, if given
    std::optional<DigestMode> data_digest;
    std::string portal() const; // "host:port" ("[v6]:port")
};
Result<Url> parse_url(std::string_view text);
// The URL without the secret ("iscsi://user@host:port/iqn/lun"), for messages.
std::string to_string(const Url& url);
// URL text (parsed or not) with its secrets replaced by "***": "iscsi://alice%***@h/iqn/x", and
// target_password=***. For messages that quote what the user typed.
std::string redact_url(std::string_view text);

} // namespace ispace::initiator
