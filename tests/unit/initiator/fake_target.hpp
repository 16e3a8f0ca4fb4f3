// FakeTarget: a small in-process iSCSI target for the initiator's unit tests.
//
// Deliberately simple and independent of src/target: blocking sockets on 127.0.0.1, one thread per
// connection, one mutex for everything, one LUN (LUN 0, a RAM disk). It speaks enough of RFC 7143 for
// the initiator's paths — login via the shared TargetLogin, MC/S, session reinstatement (the old
// session's connections are cut and its tasks discarded before the new session is admitted), digests,
// the CmdSN window, immediate/unsolicited data and R2Ts, Data-In with phase-collapsed status, NOP,
// ABORT TASK and LUN RESET (including RFC 7143 §11.5.1's "consider the CmdSN received" for a command
// that never arrived), SendTargets, Logout — and records what it saw so tests can assert on it.
#pragma once

#include "iscsi/params.hpp"
#include "iscsi/pdu.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace ispace::initiator::test {

struct FakeTargetOptions {
    std::string target_name = "iqn.2026-01.org.ispace.test:fake";
    uint64_t blocks = 4096; // 2 MiB of 512-byte blocks
    uint32_t block_size = 512;
    uint16_t max_connections = 8;
    // Refuse (Too many connections) a connection joining a session that has this many already, while
    // declaring max_connections at login: a target whose limit is lower than it said (0: max_connections).
    uint16_t join_limit = 0;
    uint32_t cmd_window = 32;
    uint32_t max_recv_data_segment_length = 16384; // what the target declares
    uint32_t max_burst_length = 65536;
    uint32_t first_burst_length = 16384;
    bool initial_r2t = true;
    bool immediate_data = true;
    uint32_t max_transfer_blocks = 2048;
    // The first command of every new session gets CHECK CONDITION / UNIT ATTENTION (29/07).
    bool unit_attention_on_new_session = false;
    // Send a NOP-In ping on every idle poll interval (100 ms).
    bool ping = false;
    // Require CHAP for normal sessions: user and secret; mutual CHAP answered with these when set.
    std::string chap_user;
    std::string chap_secret;
    // Behave like tgt 1.0.x: take CHAP_A=7 but refuse the SHA-256 response with Initiator error.
    bool misread_chap_sha256 = false;
    std::string mutual_user;
    std::string mutual_secret;
    // Each connection waits this long before taking each SCSI command (a slow LU): commands stay in
    // flight long enough for a test to act while they are.
    std::chrono::milliseconds command_delay{0};
};

struct WriteRecord {
    uint16_t tsih;
    uint64_t lba;
    uint32_t blocks;
    uint8_t first_byte;
};

class FakeTarget {
public:
    explicit FakeTarget(FakeTargetOptions options = {});
    ~FakeTarget();
    FakeTarget(const FakeTarget&) = delete;
    FakeTarget& operator=(const FakeTarget&) = delete;

    uint16_t port() const { return _port; }
    const FakeTargetOptions& options() const { return _options; }

    // Commands for which this returns true are accepted and never answered (a hung LU) until an
    // ABORT TASK or LUN RESET removes them. Called with the target's lock held.
    void set_hold(std::function<bool(const iscsi::ScsiCommand&)> hold);
    // Do not answer task management requests of this function at all.
    void set_ignore_tmf(iscsi::TmfFunction function, bool ignore);
    // Cuts every connection (as if the target process died; the listener stays).
    void drop_all_connections();

    std::vector<uint8_t> disk() const;
    void fill_disk(uint8_t value);
    std::vector<WriteRecord> write_log() const;
    // Commands received per connection CID, over all sessions.
    std::map<uint16_t, uint64_t> commands_per_cid() const;
    // Connections currently in full feature phase in the newest session.
    unsigned live_connections() const;
    // Asks every connection for a negotiation (Asynchronous Message, AsyncEvent 4) and declares
    // `max_recv_data_segment_length` in the answer to the Text Request that follows (RFC 7143 §11.9.1).
    void request_negotiation(uint32_t max_recv_data_segment_length);

    std::atomic<uint64_t> logins{0};         // successful logins (any connection)
    std::atomic<uint64_t> leading_logins{0}; // new sessions
    std::atomic<uint64_t> reinstatements{0}; // new sessions that replaced one with the same ISID
    std::atomic<uint64_t> commands{0};       // SCSI commands received
    std::atomic<uint64_t> aborts{0};
    std::atomic<uint64_t> lun_resets{0};
    std::atomic<uint64_t> window_violations{0}; // a command outside ExpCmdSN..MaxCmdSN
    std::atomic<uint64_t> data_digest_errors{0};
    std::atomic<uint64_t> nop_replies{0}; // NOP-Outs answering our pings
    std::atomic<uint64_t> logouts{0};
    std::atomic<uint64_t> connection_logouts{0}; // Logout reason "close the connection" (1)
    std::atomic<uint64_t> discoveries{0};
    std::atomic<uint64_t> renegotiations{0};     // Text Responses that declared the renegotiated value
    std::atomic<uint64_t> oversized_segments{0}; // data segments above what the target declared anew

    // Internal, shared with the connection threads.
    struct Session;
    struct Conn;

private:
    void accept_loop();
    void serve(std::shared_ptr<Conn> conn);
    friend struct ConnHandler;

    FakeTargetOptions _options;
    int _listen_fd = -1;
    uint16_t _port = 0;
    std::atomic<bool> _stop{false};
    std::thread _acceptor;

    mutable std::mutex _mu;
    std::vector<uint8_t> _disk;
    std::vector<WriteRecord> _writes;
    std::map<uint16_t, uint64_t> _per_cid;
    std::function<bool(const iscsi::ScsiCommand&)> _hold;
    std::set<uint8_t> _ignored_tmfs;
    std::vector<std::shared_ptr<Session>> _sessions;
    std::vector<std::shared_ptr<Conn>> _conns;
    // Connection threads; a finished one is joined when the next connection comes (a fuzzer makes
    // connections by the hundred thousand).
    struct ConnThread {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> finished;
    };
    std::vector<ConnThread> _threads;
    uint16_t _next_tsih = 1;
    std::atomic<uint32_t> _renegotiate_to{0}; // request_negotiation()'s value; 0: none asked
};

} // namespace ispace::initiator::test
