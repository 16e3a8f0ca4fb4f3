// RemoteDevice: a backstore::Device over one LUN of a remote iSCSI target, reached through the initiator
// library on the runtime's own reactors. It is what a data-space member named by an iscsi:// URL is, and
// what `ispaced --lun iscsi://...` serves as a gateway.
//
// I/O: READ/WRITE (the 16-byte CDB once the LBA or length needs it; FUA passed through), SYNCHRONIZE
// CACHE for flush, UNMAP and WRITE SAME(16) when the target's Logical Block Provisioning VPD page says
// it supports them. A request larger than the target's MAXIMUM TRANSFER LENGTH is split. The data goes
// through a Buffer the device holds a reference to (the initiator's Request carries a Buffer, a backstore
// request an iovec), so a request the volume layer gives up on can never write into memory that is gone.
// A write is copied into a Buffer of the device's own unless it comes with one: the request's `data`
// (the FUSE server hands down its receive buffer that way), or the Buffer the volume layer's mirror
// writes hand to every remote member (submit_shared) — a slice of the caller's when it had one, else
// one copy for all members. A request split into several commands sends slices of that Buffer.
//
// Completion runs on the submitting reactor (the backstore::Device contract): the initiator completes
// on a connection's reactor, and a completion for another reactor is posted there.
//
// Errors, as -errno: EIO (medium, hardware, anything else; and every request once the device failed),
// EROFS (write protected), ENOSPC (SPACE ALLOCATION FAILED WRITE PROTECT), EINVAL (ILLEGAL REQUEST),
// EOPNOTSUPP (an opcode the target does not know), and EBADE for RESERVATION CONFLICT — the code Linux's
// block layer gives it (BLK_STS_RESV_CONFLICT) — so that a fenced holder can tell "someone took the
// space" from "the disk broke".
//
// Events: `failed` when the initiator gave up on a command (its recovery timed out, or its retries ran
// out): the device then fails every request at once until reconnect() brings it back. `resized` when a
// UNIT ATTENTION says CAPACITY DATA HAS CHANGED (the device reads the capacity again). Unit attentions
// are handled here, not by the library's automatic retry, because the library would swallow the one that
// says the capacity changed; BUSY and TASK SET FULL are retried here after a short back-off.
//
// Persistent reservations (SPC-5 5.14): the helpers below are what a data-space needs for fencing —
// REGISTER AND IGNORE EXISTING KEY (APTPL when the target keeps reservations across a restart), RESERVE,
// PREEMPT AND ABORT, RELEASE, READ KEYS and READ RESERVATION. Once a key is registered, the device
// registers it again on every new session (reconnect()): a new session is a new I_T nexus, and a nexus
// that is not registered may not write under Write Exclusive – Registrants Only.
#pragma once

#include "backstore/device.hpp"
#include "backstore/registry.hpp"
#include "common/buffer.hpp"
#include "ispace/initiator.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ispace::net {
class Reactor;
}

namespace ispace::volume {

// What -errno a Response means for a block request (0 for GOOD). `capacity_changed` is set when it was a
// UNIT ATTENTION saying CAPACITY DATA HAS CHANGED; `retry` when the command did not run and should be
// sent again (a unit attention, BUSY, TASK SET FULL). Pure, for the tests.
struct ResponseMeaning {
    int error = 0;
    bool retry = false;
    bool capacity_changed = false;
    bool transport = false; // no SCSI status came back: the initiator gave up
};
ResponseMeaning interpret(const initiator::Response& response);

// Session settings for a data-space member: every command completes (with its status or an error)
// within about 12 s even when the target hangs, so that the volume layer marks a silent member failed
// within 15 s (issue 11): NOP-Out pings every second with a 2 s answer limit, logins and connects bounded
// by 3 s, and 6 s of reinstatement attempts before the session gives up. A gateway LUN keeps the
// library's patient defaults (two minutes of reinstatement), as a kernel initiator would.
initiator::Timeouts member_timeouts();

struct RemoteOptions {
    std::string url;     // iscsi://[user%secret@]HOST[:PORT]/IQN/LUN
    bool member = false; // member_timeouts(), and a command that timed out is not sent again
    unsigned connections = 1;
    unsigned queue_depth = 128;
    // Overrides the timeouts chosen by `member` (tests, and an administrator's settings).
    std::optional<initiator::Timeouts> timeouts;
};

// The reservation of a logical unit as READ RESERVATION reports it.
struct Reservation {
    bool reserved = false;
    uint64_t key = 0; // the holder's reservation key
    uint8_t type = 0; // scsi::pr:: type
    uint32_t generation = 0;
};

class RemoteDevice final : public backstore::Device {
public:
    // Logs in, reads the capacity (READ CAPACITY(16)), the Block Limits and Logical Block Provisioning
    // VPD pages and the device identification. Blocks: not from a reactor thread.
    static Result<std::unique_ptr<RemoteDevice>> open(initiator::Initiator& initiator,
                                                      const RemoteOptions& options);
    ~RemoteDevice() override;

    std::string_view kind() const override { return "iscsi"; }
    std::string describe() const override { return _describe; }
    backstore::Geometry geometry() const override { return _geometry->load(); }
    backstore::Features features() const override { return _features; }
    uint64_t identity() const override { return _identity; }
    void submit(backstore::IoRequest& request) override;
    // READ CAPACITY(16) again (a LUN grown on its target); blocking, from a thread that is no reactor.
    Result<uint64_t> rescan() override;
    // Reports one mapped extent (GET LBA STATUS is not forwarded).
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override;

    // A write whose data is all of `data` (data.size() == request.length): the Buffer itself is sent
    // instead of a copy of the request's iovec, so that the remote members of a mirror send one Buffer
    // and nothing is copied per member. Any other request (or a Buffer of another size) is submit().
    void submit_shared(backstore::IoRequest& request, const Buffer& data);

    // Whether the device gave up (see `failed` above); requests fail with -EIO until reconnect().
    bool failed() const { return _failed.load(std::memory_order_acquire); }
    // Logs in again (a new session), registers the reservation key if one was registered, and takes
    // requests again. `done` runs on a reactor thread. The old session is closed on a worker thread.
    void reconnect(Function<void(Result<void>)> done);

    // --- persistent reservations; `done` runs on a reactor thread (the calling one when there is one) ---
    void read_keys(Function<void(Result<std::vector<uint64_t>>)> done);
    void read_reservation(Function<void(Result<Reservation>)> done);
    // REGISTER AND IGNORE EXISTING KEY with `key` (APTPL when the target supports it); remembered, and
    // registered again on every new session. 0 unregisters.
    void register_key(uint64_t key, Function<void(Result<void>)> done);
    // RESERVE, type Write Exclusive – Registrants Only, with our registered key.
    void reserve(Function<void(Result<void>)> done);
    // PREEMPT AND ABORT (PREEMPT where the target lacks it): removes `victim`'s registrations (and its
    // reservation, which becomes ours, type Write Exclusive – Registrants Only) and aborts its commands.
    void preempt_and_abort(uint64_t victim, Function<void(Result<void>)> done);
    // RELEASE of our Write Exclusive – Registrants Only reservation.
    void release(Function<void(Result<void>)> done);
    uint64_t registered_key() const { return _key.load(std::memory_order_acquire); }

    // Synchronous forms for management code. Not from a reactor thread.
    Result<std::vector<uint64_t>> read_keys_sync();
    Result<Reservation> read_reservation_sync();
    Result<void> register_key_sync(uint64_t key);
    Result<void> reserve_sync();
    Result<void> preempt_and_abort_sync(uint64_t victim);
    Result<void> release_sync();

    // Requests completed with a transport error, requests retried here (unit attention, busy): metrics.
    uint64_t retries() const { return _retries.load(std::memory_order_relaxed); }

private:
    struct Io;
    struct Command;
    RemoteDevice(initiator::Initiator& initiator, RemoteOptions options, initiator::SessionOptions session);

    Result<void> probe(); // capacity, limits, identity: at open
    initiator::Session* session() const { return _session.load(std::memory_order_acquire); }
    void start(Io* io);
    void send(Io* io, size_t piece);
    void on_response(Io* io, size_t piece, initiator::Response&& response);
    void finish(Io* io);
    void fail_device(const std::string& why);
    void refresh_capacity();
    // One PERSISTENT RESERVE OUT with the basic parameter list.
    void pr_out(uint8_t service_action, uint8_t type, uint64_t key, uint64_t sa_key, bool aptpl,
                Function<void(initiator::Response&&)> done);
    void pr_in(uint8_t service_action, Function<void(Result<std::vector<uint8_t>>)> done);
    // Sends `request` and delivers its response on the calling reactor (or any reactor, from a thread
    // that is not one); a unit attention is retried.
    void command(initiator::Request request, Function<void(initiator::Response&&)> done);

    initiator::Initiator& _initiator;
    RemoteOptions _options;
    initiator::SessionOptions _session_options;
    uint64_t _lun = 0;
    std::string _describe;
    std::unique_ptr<backstore::AtomicGeometry> _geometry; // set by probe()
    backstore::Features _features;
    uint64_t _identity = 0;
    uint32_t _max_transfer_blocks = 0; // per command; 0: no limit
    uint32_t _max_unmap_blocks = 0;    // per UNMAP descriptor
    uint64_t _max_write_same_blocks = 0;
    bool _aptpl = true; // offered until the target refuses it once

    // Every session this device ever logged in (kept alive, closed when replaced, so that a raw pointer
    // to the current one is safe to use without a reference count per request).
    std::mutex _sessions_mutex;
    std::vector<std::shared_ptr<initiator::Session>> _sessions;
    std::atomic<initiator::Session*> _session{nullptr};
    std::atomic<bool> _failed{false};
    std::atomic<bool> _refreshing{false};
    std::atomic<uint64_t> _key{0};
    std::atomic<uint64_t> _retries{0};
};

// The "iscsi" backstore kind: iscsi://[user%secret@]HOST[:PORT]/IQN/LUN opened as a RemoteDevice through
// `initiator` (which must outlive every device opened from the registry).
void register_remote_kind(backstore::Registry& registry, initiator::Initiator& initiator);
// The same with the initiator made on first use (mgmt::Runtime creates its initiator, and starts its
// reactors, only when something needs it): `initiator` is called by Spec::open(), never by parse().
void register_remote_kind(backstore::Registry& registry, std::function<initiator::Initiator&()> initiator);

} // namespace ispace::volume
