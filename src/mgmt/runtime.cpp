#include "mgmt/runtime.hpp"

#include "common/log.hpp"
#include "initiator/internals.hpp"
#include "iscsi/params.hpp"
#include "scsi/cdb.hpp"
#include "scsi/lu.hpp"
#include "volume/remote_device.hpp"

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <filesystem>
#include <fmt/format.h>
#include <future>
#include <thread>

namespace ispace::mgmt {
namespace {

void assert_not_on_reactor(const char* what) {
    // Every catalog change blocks its caller (devices are opened, files resized): a reactor must not.
    assert(net::Reactor::current() == nullptr && what);
    (void)what;
}

std::string security_summary(const iscsi_target::TargetConfig& tc) {
    return fmt::format("{}; {}",
                       tc.chap ? fmt::format("CHAP required (user {}{})", tc.chap->user,
                                             tc.mutual_chap ? ", mutual CHAP offered" : "")
                               : std::string("no authentication"),
                       tc.acl.empty() ? std::string("no ACL: every initiator may log in")
                                      : fmt::format("ACL admits {} initiator entr{}", tc.acl.size(),
                                                    tc.acl.size() == 1 ? "y" : "ies"));
}

} // namespace

Runtime::Runtime(RuntimeOptions options) : _options(options) {
    // A remote LUN (iscsi://...) served as a gateway. The initiator is made (and the reactors started)
    // only when such a LUN is opened, from open_lun() with the catalog lock held: hence the recursive
    // lock.
    volume::register_remote_kind(_backstores, [this]() -> initiator::Initiator& { return initiator(); });
    backstore::register_builtin_kinds(_backstores);
}

net::ReactorGroup& Runtime::reactors() {
    if (!_reactors) {
        unsigned count =
            _options.reactors ? _options.reactors : std::max(1u, std::thread::hardware_concurrency());
        _reactors = std::make_unique<net::ReactorGroup>(count, _options.reactor_options);
    }
    return *_reactors;
}

Runtime::~Runtime() {
    if (_started || _reactors_running) {
        stop(std::chrono::seconds(5));
    }
    // Reactors first (a never-started group has nothing posted), then what their work referred to.
    _reactors.reset();
    _server.reset();
}

Result<void> Runtime::begin_attach_call() {
    std::lock_guard lock(_catalog_mutex);
    if (_stopped) {
        return make_error("the runtime has stopped", ESHUTDOWN);
    }
    run_reactors();
    ++_attach_calls;
    return {};
}

void Runtime::end_attach_call() {
    std::lock_guard lock(_catalog_mutex);
    --_attach_calls;
    _attach_calls_done.notify_all();
}

void Runtime::detach_all() {
    std::map<std::string, std::unique_ptr<attach::Attachment>, std::less<>> attachments;
    {
        std::lock_guard lock(_attach_mutex);
        attachments.swap(_attachments);
    }
    for (auto& [path, attachment] : attachments) {
        if (auto detached = attachment->detach(attach::DetachMode::force); !detached) {
            log_warn("{}: {}", path, detached.error().message);
        }
    }
}

void Runtime::run_reactors() {
    if (!_reactors_running) {
        reactors().start();
        _reactors_running = true;
    }
}

initiator::Initiator& Runtime::initiator() {
    assert_not_on_reactor("Runtime::initiator");
    std::lock_guard lock(_catalog_mutex);
    if (!_initiator) {
        run_reactors();
        initiator::InitiatorOptions options;
        initiator::use_reactors(options, *_reactors);
        _initiator = std::make_unique<initiator::Initiator>(std::move(options));
    }
    return *_initiator;
}

Result<std::string> Runtime::pr_state_path(const std::string& iqn, const iscsi_target::LunConfig& lun) const {
    // Where a LUN's persistent-reservation state (APTPL) lives: under state_dir when given, else beside
    // a file LUN as FILE.pr, so the reservations travel with the data they guard. A block device needs
    // state_dir; a RAM or null disk keeps none (its data does not survive a restart either). Empty:
    // APTPL is not supported for that LUN, which REPORT CAPABILITIES says.
    if (!_settings.state_dir.empty()) {
        std::string name = iqn;
        std::replace_if(
            name.begin(), name.end(), [](char c) { return c == ':' || c == '/'; }, '_');
        std::string dir = _settings.state_dir + "/" + name;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) {
            return make_error(fmt::format("state directory {}: {}", dir, ec.message()));
        }
        return fmt::format("{}/lun{}.pr", dir, lun.lun);
    }
    if (std::string file = lun.device->backing_file(); !file.empty()) {
        return file + ".pr";
    }
    if (lun.device->kind() == "block") {
        log_info("target {} lun {}: persistent reservations will not survive a restart (APTPL) without "
                 "--state-dir",
                 iqn, lun.lun);
    }
    return std::string();
}

Result<void> Runtime::open_lun(iscsi_target::Target& target, const iscsi_target::LunConfig& lc) {
    auto device = lc.device->open();
    if (!device) {
        return make_error(fmt::format("lun {}: {}", lc.lun, device.error().message), device.error().code);
    }
    backstore::Geometry geometry = (*device)->geometry();
    log_info("target {} lun {}: {} ({} blocks of {} bytes{}{})", target.iqn, lc.lun, (*device)->describe(),
             geometry.block_count, geometry.block_size, (*device)->features().thin ? ", thin" : "",
             (*device)->features().read_only ? ", read-only" : "");
    scsi::LuOptions options;
    options.max_transfer_bytes = _settings.limits.max_transfer_bytes;
    options.sanitize_bytes_per_second = _settings.limits.sanitize_bytes_per_second;
    // A pinned identity (the configuration's "id") survives a copy of the file or a new device number.
    options.identity.naa = lc.id.value_or(0);
    options.stats_reactors = reactors().size();
    auto state_path = pr_state_path(target.iqn, lc);
    if (!state_path) {
        return make_error(fmt::format("lun {}: {}", lc.lun, state_path.error().message));
    }
    options.pr_state_path = *state_path;
    if (auto added = target.device->add_lu(lc.lun, std::move(device).value(), options); !added) {
        return make_error(fmt::format("lun {}: {}", lc.lun, added.error().message), added.error().code);
    }
    _specs[target.iqn][lc.lun] = lc.device->describe();
    return {};
}

Result<void> Runtime::serve(iscsi_target::ServerConfig config) {
    assert_not_on_reactor("Runtime::serve");
    std::lock_guard lock(_catalog_mutex);
    if (_started || _server) {
        return make_error("the runtime serves already", EBUSY);
    }
    if (_stopped) {
        return make_error("the runtime has stopped", ESHUTDOWN);
    }
    if (auto valid = iscsi_target::validate(config); !valid) {
        return valid;
    }
    if (auto valid = iscsi::validate(config.negotiation); !valid) {
        return make_error("negotiation settings: " + valid.error().message);
    }
    // Everything that can be checked without creating anything, before anything is created.
    for (const iscsi_target::TargetConfig& tc : config.targets) {
        for (const iscsi_target::LunConfig& lc : tc.luns) {
            if (auto ok = lc.device->check(); !ok) {
                return make_error(fmt::format("target {} lun {}: {}", tc.iqn, lc.lun, ok.error().message),
                                  ok.error().code);
            }
        }
    }
    if (!_reactors && config.reactors) {
        _options.reactors = config.reactors;
    }
    net::ReactorGroup& group = reactors();
    if (config.reactors && group.size() != config.reactors) {
        return make_error(fmt::format("the configuration asks for {} reactors; the runtime already runs {}",
                                      config.reactors, group.size()),
                          EINVAL);
    }
    _settings = config;
    _settings.portals.clear();
    _settings.targets.clear();
    auto server = std::make_unique<iscsi_target::Server>(config, group);
    // Portals before devices: a port in use must not leave a freshly created LUN file behind.
    for (const iscsi_target::PortalConfig& pc : config.portals) {
        if (auto bound = server->add_portal(pc); !bound) {
            return bound.error();
        }
    }
    for (const iscsi_target::TargetConfig& tc : config.targets) {
        log_info("target {}: {}", tc.iqn, security_summary(tc));
        auto target = server->add_target(tc);
        if (!target) {
            _specs.clear();
            return target.error();
        }
        for (const iscsi_target::LunConfig& lc : tc.luns) {
            if (auto opened = open_lun(**target, lc); !opened) {
                _specs.clear();
                return opened;
            }
        }
    }
    run_reactors();
    _server = std::move(server);
    _server->start();
    _started = true;
    return {};
}

bool Runtime::stop(std::chrono::milliseconds grace) {
    assert_not_on_reactor("Runtime::stop");
    std::unique_lock lock(_catalog_mutex);
    if (_stopped) {
        return true;
    }
    // Stopped even when nothing ran yet: an attach racing this on another thread must not start the
    // reactors after stop() has returned (the attach test that races them found it did).
    _stopped = true;
    if (!_started && !_reactors_running) {
        return true;
    }
    // Off the iSNS server first, so that no initiator is sent to a target that is going away. The
    // registrar gives the server 2 s at most: an absent iSNS server must not hold up a shutdown.
    if (_isns) {
        _isns->stop(std::chrono::seconds(2));
        _isns.reset();
    }
    // Attached devices first: their I/O runs on the reactors and may go through the initiator. A
    // mounted one is synced, then cut off (docs/architecture.md, "Attach"). An attach or detach under
    // way (no new one starts now) finishes first: it uses the reactors too.
    _attach_calls_done.wait(lock, [&] { return _attach_calls == 0; });
    detach_all();
    // The initiator's sessions first (they may be logged in to our own target): it closes them on the
    // reactors, which still run.
    _initiator.reset();
    bool clean = _server ? _server->shutdown(grace) : true;
    _reactors->stop();
    _reactors->join();
    // The reactors' teardown runs what is still posted to them, which refers to the front end's
    // connections and sessions: so the reactors go before the front end.
    _reactors.reset();
    _server.reset();
    log_info("shutdown complete");
    return clean;
}

Result<std::shared_ptr<iscsi_target::Target>> Runtime::target(std::string_view iqn) const {
    if (!_server || _stopped) {
        return make_error("the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    auto found = _server->find_target(iqn);
    if (!found) {
        return make_error(fmt::format("target {}: no such target", iqn), ENOENT);
    }
    return found;
}

Result<void> Runtime::add_target(const iscsi_target::TargetConfig& config) {
    assert_not_on_reactor("Runtime::add_target");
    std::lock_guard lock(_catalog_mutex);
    if (!_server || _stopped) {
        return make_error("the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    if (auto valid = iscsi_target::validate_target(config); !valid) {
        return valid;
    }
    for (const iscsi_target::LunConfig& lc : config.luns) {
        if (auto ok = lc.device->check(); !ok) {
            return make_error(fmt::format("target {} lun {}: {}", config.iqn, lc.lun, ok.error().message));
        }
    }
    auto target = _server->add_target(config);
    if (!target) {
        return target.error();
    }
    log_info("target {}: added; {}", config.iqn, security_summary(config));
    for (const iscsi_target::LunConfig& lc : config.luns) {
        if (auto opened = open_lun(**target, lc); !opened) {
            (void)_server->remove_target(config.iqn);
            _specs.erase(config.iqn);
            return opened;
        }
    }
    isns_changed();
    return {};
}

Result<void> Runtime::remove_target(std::string_view iqn) {
    assert_not_on_reactor("Runtime::remove_target");
    std::lock_guard lock(_catalog_mutex);
    if (!_server || _stopped) {
        return make_error("the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    if (auto removed = _server->remove_target(iqn); !removed) {
        return removed;
    }
    if (auto it = _specs.find(iqn); it != _specs.end()) {
        _specs.erase(it);
    }
    log_info("target {}: removed; its sessions are closed", iqn);
    isns_changed();
    return {};
}

Result<net::Endpoint> Runtime::add_portal(const std::string& listen, bool shared) {
    assert_not_on_reactor("Runtime::add_portal");
    std::lock_guard lock(_catalog_mutex);
    if (!_server || _stopped) {
        return make_error("the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    auto bound = _server->add_portal({listen, 0, shared});
    if (bound) {
        isns_changed();
    }
    return bound;
}

Result<void> Runtime::remove_portal(std::string_view listen) {
    assert_not_on_reactor("Runtime::remove_portal");
    std::lock_guard lock(_catalog_mutex);
    if (!_server || _stopped) {
        return make_error("the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    auto removed = _server->remove_portal(listen);
    if (removed) {
        isns_changed();
    }
    return removed;
}

Result<uint64_t> Runtime::add_lun(std::string_view iqn, std::optional<uint64_t> lun,
                                  std::string_view spec_text, std::optional<uint64_t> id) {
    assert_not_on_reactor("Runtime::add_lun");
    std::lock_guard lock(_catalog_mutex);
    auto found = target(iqn);
    if (!found) {
        return found.error();
    }
    std::vector<uint64_t> used = (*found)->device->luns();
    uint64_t number = 0;
    if (lun) {
        number = *lun;
        if (std::find(used.begin(), used.end(), number) != used.end()) {
            return make_error(
                fmt::format("target {}: LUN {} is in use (remove it first, or leave the number out "
                            "to take the next free one)",
                            iqn, number),
                EEXIST);
        }
    } else {
        while (std::find(used.begin(), used.end(), number) != used.end()) {
            ++number;
        }
    }
    if (number > scsi::max_lun) {
        return make_error(fmt::format("target {}: LUN {} is above {}", iqn, number, scsi::max_lun), EINVAL);
    }
    auto spec = _backstores.parse(spec_text);
    if (!spec) {
        return spec.error();
    }
    if (auto ok = (*spec)->check(); !ok) {
        return ok.error();
    }
    iscsi_target::LunConfig lc{number, std::string(spec_text), std::move(*spec), id};
    if (auto opened = open_lun(**found, lc); !opened) {
        return opened.error();
    }
    log_info("target {} lun {}: added ({})", iqn, number, lc.device->describe());
    return number;
}

Result<void> Runtime::remove_lun(std::string_view iqn, uint64_t lun, std::chrono::milliseconds wait) {
    assert_not_on_reactor("Runtime::remove_lun");
    std::unique_lock lock(_catalog_mutex);
    auto found = target(iqn);
    if (!found) {
        return found.error();
    }
    struct Gone {
        std::mutex mutex;
        std::condition_variable cv;
        bool done = false;
    };
    auto gone = std::make_shared<Gone>();
    auto removed = (*found)->device->remove_lu(lun, [gone] {
        std::lock_guard l(gone->mutex);
        gone->done = true;
        gone->cv.notify_all();
    });
    if (!removed) {
        return make_error(fmt::format("target {}: {}", iqn, removed.error().message), removed.error().code);
    }
    if (auto it = _specs.find(iqn); it != _specs.end()) {
        it->second.erase(lun);
    }
    lock.unlock();
    log_info("target {} lun {}: removed; waiting for its commands to leave", iqn, lun);
    std::unique_lock l(gone->mutex);
    if (!gone->cv.wait_for(l, wait, [&] { return gone->done; })) {
        return make_error(
            fmt::format("target {} lun {}: removed, but commands still hold it after {} ms; its "
                        "device is closed when the last one leaves",
                        iqn, lun, wait.count()),
            EBUSY);
    }
    return {};
}

Result<void> Runtime::resize_lun(std::string_view iqn, uint64_t lun, uint64_t bytes, bool allow_shrink) {
    assert_not_on_reactor("Runtime::resize_lun");
    std::lock_guard lock(_catalog_mutex);
    auto found = target(iqn);
    if (!found) {
        return found.error();
    }
    std::promise<Result<void>> promise;
    auto future = promise.get_future();
    std::shared_ptr<iscsi_target::Target> t = *found;
    reactors().at(0).post([t, lun, bytes, allow_shrink, &promise] {
        t->device->resize_lu(lun, bytes, allow_shrink,
                             [&promise](Result<void> result) { promise.set_value(std::move(result)); });
    });
    auto result = future.get();
    if (!result) {
        return make_error(fmt::format("target {}: {}", iqn, result.error().message), result.error().code);
    }
    return {};
}

Result<std::vector<LunInfo>> Runtime::luns(std::string_view iqn) {
    std::lock_guard lock(_catalog_mutex);
    auto found = target(iqn);
    if (!found) {
        return found.error();
    }
    std::vector<LunInfo> out;
    for (uint64_t number : (*found)->device->luns()) {
        auto lu = (*found)->device->find_lu(number);
        if (!lu) {
            continue;
        }
        LunInfo info;
        info.lun = number;
        if (auto t = _specs.find(iqn); t != _specs.end()) {
            if (auto s = t->second.find(number); s != t->second.end()) {
                info.spec = s->second;
            }
        }
        info.block_size = lu->block_size();
        info.bytes = lu->block_count() * lu->block_size();
        info.read_only = lu->write_protected();
        out.push_back(std::move(info));
    }
    return out;
}

Result<void> Runtime::register_with_isns(isns::RegistrarOptions options, std::string entity_id) {
    assert_not_on_reactor("Runtime::register_with_isns");
    std::lock_guard lock(_catalog_mutex);
    if (!_server || _stopped) {
        return make_error("iSNS: the runtime does not serve (yet, or any more)", ESHUTDOWN);
    }
    if (_isns) {
        return make_error("iSNS: registered already", EBUSY);
    }
    if (entity_id.empty()) {
        return make_error("iSNS: an entity identifier is needed", EINVAL);
    }
    log_info("iSNS: registering with {} as entity {}", options.client.server, entity_id);
    _isns_entity = std::move(entity_id);
    _isns = std::make_unique<isns::Registrar>(std::move(options));
    isns_changed();
    return {};
}

std::optional<isns::RegistrarStatus> Runtime::isns_status() const {
    std::lock_guard lock(_catalog_mutex);
    if (!_isns) {
        return std::nullopt;
    }
    return _isns->status();
}

isns::Registration Runtime::isns_registration() const {
    isns::Registration r;
    r.entity_id = _isns_entity;
    if (!_server) {
        return r;
    }
    std::vector<iscsi_target::Server::PortalInfo> portals = _server->portals();
    for (const auto& p : portals) {
        r.portals.push_back({isns::Address::from_endpoint(p.endpoint), p.endpoint.port(), std::nullopt, 0});
    }
    // Every target is served on every portal, each portal being its own portal group: one PG object
    // per target and portal with that portal's tag (RFC 4171 §3.4), which is what an initiator reads
    // as "log in here, with this TPGT".
    for (const auto& target : _server->targets()) {
        r.nodes.push_back({target->iqn, isns::node_type::target, target->config()->alias});
        for (const auto& p : portals) {
            r.groups.push_back(
                {target->iqn, isns::Address::from_endpoint(p.endpoint), p.endpoint.port(), p.tpgt});
        }
    }
    return r;
}

void Runtime::isns_changed() {
    if (_isns) {
        _isns->update(isns_registration());
    }
}

Result<std::string> Runtime::attach(std::shared_ptr<backstore::Device> device,
                                    attach::AttachOptions options) {
    assert_not_on_reactor("Runtime::attach");
    if (auto began = begin_attach_call(); !began) {
        return began.error();
    }
    AttachCallEnd end{this};
    std::string why_not;
    for (auto& backend : _attach_backends) {
        if (auto usable = backend->available(); !usable) {
            why_not += (why_not.empty() ? "" : "; ") + usable.error().message;
            continue;
        }
        auto attachment = backend->attach(std::move(device), *_reactors, options);
        if (!attachment) {
            return attachment.error();
        }
        std::string path = (*attachment)->path();
        std::lock_guard lock(_attach_mutex);
        _attachments[path] = std::move(*attachment);
        return path;
    }
    return make_error("no way to attach a block device here: " + why_not, ENOTSUP);
}

Result<std::string> Runtime::attach_spec(std::string_view spec_text, attach::AttachOptions options) {
    assert_not_on_reactor("Runtime::attach_spec");
    auto spec = _backstores.parse(spec_text);
    if (!spec) {
        return spec.error();
    }
    if (auto ok = (*spec)->check(); !ok) {
        return ok.error();
    }
    auto device = (*spec)->open();
    if (!device) {
        return device.error();
    }
    if (options.name.empty()) {
        options.name = (*spec)->describe();
    }
    return attach(std::shared_ptr<backstore::Device>(std::move(*device)), std::move(options));
}

Result<void> Runtime::detach(std::string_view path, attach::DetachMode mode) {
    assert_not_on_reactor("Runtime::detach");
    if (auto began = begin_attach_call(); !began) {
        return make_error(fmt::format("{}: the runtime has stopped, and detached everything", path),
                          ESHUTDOWN);
    }
    AttachCallEnd end{this};
    std::unique_ptr<attach::Attachment> attachment;
    {
        std::lock_guard lock(_attach_mutex);
        auto found = _attachments.find(path);
        if (found == _attachments.end()) {
            return make_error(fmt::format("{}: not attached by this process", path), ENOENT);
        }
        // Detached outside the lock (it waits for the kernel); taken out so that no one else does.
        attachment = std::move(found->second);
        _attachments.erase(found);
    }
    if (auto detached = attachment->detach(mode); !detached) {
        std::lock_guard lock(_attach_mutex);
        _attachments[std::string(path)] = std::move(attachment);
        return detached;
    }
    return {};
}

std::vector<attach::AttachmentStatus> Runtime::attachments() const {
    std::lock_guard lock(_attach_mutex);
    std::vector<attach::AttachmentStatus> out;
    for (const auto& [path, attachment] : _attachments) {
        out.push_back(attachment->status());
    }
    return out;
}

} // namespace ispace::mgmt
