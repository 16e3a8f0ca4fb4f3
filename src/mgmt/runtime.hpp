// mgmt::Runtime: one process's storage runtime. It owns the reactor group every layer runs on, the
// registry of backstore kinds, the iSCSI target front end with its catalog of targets and LUs, the
// initiator, and the devices attached as local block devices (and, as it arrives, the data-space
// manager), all on the same reactors.
//
// It is the one place that knows the order of things:
//   start-up:  validate everything → bind the portals → open the devices → start the reactors → accept;
//              a port in use or a bad spec fails before any file is created;
//   teardown:  detach attached devices → close the initiator's sessions → stop accepting → close every
//              connection → wait for tasks → flush every LU → stop and join the reactors (their
//              teardown runs what was still posted) → free the front end and the devices.
// so that no object outlives, or dies before, what uses it.
//
// Live changes (targets, portals, LUs) go through the methods below from any thread but a reactor's;
// they block their caller until the change is in force (opening a device, resizing a file), never a
// reactor.
#pragma once

#include "attach/attachment.hpp"
#include "backstore/registry.hpp"
#include "common/result.hpp"
#include "iscsi_target/config.hpp"
#include "iscsi_target/server.hpp"
#include "isns/registrar.hpp"
#include "ispace/initiator.hpp"
#include "net/reactor.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::mgmt {

struct RuntimeOptions {
    // 0: what serve()'s configuration says, else one per core.
    unsigned reactors = 0;
    net::ReactorOptions reactor_options;
};

// What a LUN is, as the catalog reports it.
struct LunInfo {
    uint64_t lun = 0;
    std::string spec; // as given (any secret masked by its kind)
    uint64_t bytes = 0;
    uint32_t block_size = 0;
    bool read_only = false;
};

class Runtime {
public:
    explicit Runtime(RuntimeOptions options = {});
    // Stops (5 s grace) if still serving, then tears down in order.
    ~Runtime();
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    // The kinds LUN specs may name. Register kinds from layers above before serve() (or before the
    // configuration is read, which parses specs).
    backstore::Registry& backstores() { return _backstores; }
    // The reactor group, created on first use (or by serve(), with the configuration's count). It runs
    // from serve() until stop().
    net::ReactorGroup& reactors();
    // The front end; null before serve().
    iscsi_target::Server* target_server() { return _server.get(); }
    // The initiator of this process (remote LUNs, data-space members), created on first use on the
    // runtime's own reactors, which it starts if serve() has not. Not from a reactor thread.
    initiator::Initiator& initiator();

    // Serves `config`: everything is validated and every portal bound before any device is opened (so
    // a port in use or a bad spec creates no file), then the devices are opened, the reactors started
    // and the portals accept. On failure nothing keeps running. Once only.
    Result<void> serve(iscsi_target::ServerConfig config);
    bool serving() const { return _server != nullptr && !_stopped; }

    // Ordered teardown (see above); the process may exit afterwards. False if connections or flushes
    // did not finish within `grace`. Idempotent.
    bool stop(std::chrono::milliseconds grace);

    // --- the catalog, live (after serve()) ---
    Result<void> add_target(const iscsi_target::TargetConfig& config);
    Result<void> remove_target(std::string_view iqn);
    // A shared portal serves every target; an unshared one only the targets whose `portals` name it.
    Result<net::Endpoint> add_portal(const std::string& listen, bool shared = true);
    // Stops listening there; sessions already logged in through it go on.
    Result<void> remove_portal(std::string_view listen);
    // Opens `spec` and serves it as LUN `lun` (the lowest free number when not given); the number used.
    // `id` pins the LU's identifier (VPD 83h/80h); without it the device's identity gives one.
    Result<uint64_t> add_lun(std::string_view iqn, std::optional<uint64_t> lun, std::string_view spec,
                             std::optional<uint64_t> id = std::nullopt);
    // Removes the LUN: new commands for it fail at once, commands in flight are aborted, and this
    // returns once its device is closed (or `wait` has passed: then it is closed when its last command
    // leaves, and the error says so).
    Result<void> remove_lun(std::string_view iqn, uint64_t lun,
                            std::chrono::milliseconds wait = std::chrono::seconds(30));
    // Resizes the LUN's device; a smaller size needs `allow_shrink`.
    Result<void> resize_lun(std::string_view iqn, uint64_t lun, uint64_t bytes, bool allow_shrink);
    Result<std::vector<LunInfo>> luns(std::string_view iqn);

    // --- iSNS (RFC 4171) ---
    // Registers this process with an iSNS server as one Network Entity, `entity_id` (not empty):
    // every portal, every target, and a portal group per target and portal. From then on each catalog
    // change of targets or portals updates the registration; stop() deregisters it before anything
    // else is torn down. The registrar works on a thread of its own and retries a server that does not
    // answer, so this fails only when called before serve() or twice. After serve().
    Result<void> register_with_isns(isns::RegistrarOptions options, std::string entity_id);
    // Null when not registering.
    std::optional<isns::RegistrarStatus> isns_status() const;
    // --- attached devices: any Device as a local block device (src/attach) ---
    // Attaches `device` through the first backend this machine can use (FUSE + loop today) and returns
    // the block device's path. Its I/O runs on the runtime's reactors, started here if nothing else
    // started them. The device stays attached until detach() or stop(). Not from a reactor thread.
    Result<std::string> attach(std::shared_ptr<backstore::Device> device, attach::AttachOptions options = {});
    // Opens `spec` with the kind that claims it (a file, memory:SIZE, and the kinds registered from
    // above) and attaches it; the device's name is the spec as its kind describes it.
    Result<std::string> attach_spec(std::string_view spec, attach::AttachOptions options = {});
    // Detaches the block device `path`. By default refused (EBUSY, naming the mount point) while it
    // is mounted; DetachMode::force cuts it off anyway (stop() does that). Not from a reactor thread.
    Result<void> detach(std::string_view path,
                        attach::DetachMode mode = attach::DetachMode::refuse_if_in_use);
    std::vector<attach::AttachmentStatus> attachments() const;

private:
    Result<std::shared_ptr<iscsi_target::Target>> target(std::string_view iqn) const;
    // Opens a LUN's device (blocking) and adds it to `target`.
    Result<void> open_lun(iscsi_target::Target& target, const iscsi_target::LunConfig& lun);
    Result<std::string> pr_state_path(const std::string& iqn, const iscsi_target::LunConfig& lun) const;

    // Starts the reactor group once (serve() or initiator(), whichever comes first).
    void run_reactors();
    // What the iSNS entity holds now (the catalog as served); with _catalog_mutex held.
    isns::Registration isns_registration() const;
    // Hands the registrar the catalog as it is now, if there is one; with _catalog_mutex held.
    void isns_changed();
    // Detaches every attachment with DetachMode::force (stop()).
    void detach_all();
    // Counts an attach or detach under way (stop() waits for them); fails once stopped. Starts the
    // reactors when nothing else did.
    Result<void> begin_attach_call();
    void end_attach_call();
    struct AttachCallEnd {
        Runtime* runtime;
        ~AttachCallEnd() { runtime->end_attach_call(); }
    };

    backstore::Registry _backstores;
    RuntimeOptions _options;
    std::unique_ptr<net::ReactorGroup> _reactors;
    bool _reactors_running = false;
    std::unique_ptr<initiator::Initiator> _initiator;
    iscsi_target::ServerConfig _settings; // what serve() was given, portals and targets aside
    std::unique_ptr<iscsi_target::Server> _server;
    // Specs as given, per target and LUN, for luns(); catalog changes are serialised by it. Recursive:
    // opening an iscsi:// LUN (under it) asks initiator(), which takes it too.
    mutable std::recursive_mutex _catalog_mutex;
    std::map<std::string, std::map<uint64_t, std::string>, std::less<>> _specs;
    bool _started = false;
    bool _stopped = false;
    std::string _isns_entity;
    std::unique_ptr<isns::Registrar> _isns;
    // Attachments, by block device path. Their own mutex: attach and detach block for a while (a mount,
    // the kernel letting go of a file) and must not hold up the catalog.
    std::vector<std::unique_ptr<attach::AttachBackend>> _attach_backends = attach::builtin_backends();
    unsigned _attach_calls = 0; // under _catalog_mutex
    std::condition_variable_any _attach_calls_done;
    mutable std::mutex _attach_mutex;
    std::map<std::string, std::unique_ptr<attach::Attachment>, std::less<>> _attachments;
};

} // namespace ispace::mgmt
