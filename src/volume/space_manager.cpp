#include "volume/space_manager.hpp"

#include "common/log.hpp"
#include "volume/member_io.hpp"
#include "volume/remote_device.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sys/stat.h>
#include <tuple>

namespace ispace::volume {
namespace {

namespace fs = std::filesystem;

// The URL as labels, logs and status show it: no secret.
std::string shown(const std::string& url) {
    if (url.rfind("iscsi://", 0) != 0) {
        return url;
    }
    auto parsed = initiator::parse_url(url);
    return parsed ? initiator::to_string(*parsed) : url;
}

bool same_member(const std::string& a, const std::string& b) {
    return a == b || shown(a) == shown(b);
}

// An error about `what`, named once: openers often name the member themselves already.
Error with(const std::string& what, const Error& e) {
    if (e.message.rfind(what + ":", 0) == 0) {
        return e;
    }
    return make_error(fmt::format("{}: {}", what, e.message), e.code);
}

} // namespace

SpaceManager::SpaceManager(SpaceManagerOptions options) : _options(std::move(options)) {
    assert(_options.reactors != nullptr);
    if (_options.registry == nullptr) {
        _own_registry = std::make_unique<backstore::Registry>();
        backstore::register_builtin_kinds(*_own_registry);
        _options.registry = _own_registry.get();
    }
}

SpaceManager::~SpaceManager() {
    close_all();
}

Result<HostIdentity> SpaceManager::identity() {
    std::lock_guard lock(_mutex);
    if (!_identity) {
        auto id = load_identity(_options.home);
        if (!id) {
            return id.error();
        }
        _identity = *id;
    }
    return *_identity;
}

// ---- the catalog -----------------------------------------------------------------------------------------

std::string SpaceManager::entry_path(const std::string& name) const {
    return (fs::path(_options.home) / "spaces" / (name + ".json")).string();
}

Result<void> check_space_name(std::string_view name) {
    // The name becomes a file name in the catalog and comes from users and from labels (a hostile disk):
    // nothing that could leave spaces/ or hide there.
    bool ok = !name.empty() && name.size() <= max_name_length && name[0] != '.' && name[0] != '-';
    for (char c : name) {
        ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
    }
    if (!ok) {
        return make_error(fmt::format("space name '{}': use 1 to {} letters, digits, '.', '_' or '-', not "
                                      "starting with '.' or '-'",
                                      name, max_name_length),
                          EINVAL);
    }
    return {};
}

Result<SpaceManager::Entry> SpaceManager::load_entry(const std::string& name) const {
    if (auto valid = check_space_name(name); !valid) {
        return valid.error();
    }
    std::ifstream in(entry_path(name));
    if (!in) {
        return make_error(
            fmt::format("space '{}' is not in the catalog ({}); assemble it from its members' URLs", name,
                        entry_path(name)),
            ENOENT);
    }
    try {
        nlohmann::json j = nlohmann::json::parse(in);
        Entry e;
        e.name = j.at("name").get<std::string>();
        auto uuid = parse_uuid(j.at("uuid").get<std::string>());
        if (!uuid) {
            return uuid.error();
        }
        e.uuid = *uuid;
        e.urls = j.at("members").get<std::vector<std::string>>();
        e.lost = j.value("lost", false);
        e.lost_to = j.value("lost_to", "");
        e.clone_of = j.value("clone_of", "");
        if (!e.clone_of.empty()) {
            if (auto valid = check_space_name(e.clone_of); !valid) {
                return valid.error();
            }
        }
        if (j.contains("layout")) {
            auto kind = parse_layout_kind(j["layout"].get<std::string>());
            if (kind) {
                e.layout = *kind;
            }
            e.copies = j.value("copies", 1u);
            e.block_size = j.value("block_size", 0u);
            e.size = j.value("size", uint64_t(0));
        }
        return e;
    } catch (const std::exception& ex) {
        return make_error(fmt::format("{}: not a catalog entry ({}); assemble the space again",
                                      entry_path(name), ex.what()),
                          EINVAL);
    }
}

Result<void> SpaceManager::save_entry(const Entry& e) const {
    if (auto valid = check_space_name(e.name); !valid) {
        return valid.error();
    }
    fs::path dir = fs::path(_options.home) / "spaces";
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
        return make_error(fmt::format("{}: {}", dir.string(), ec.message()), ec.value());
    }
    nlohmann::json j{{"name", e.name}, {"uuid", to_string(e.uuid)}, {"members", e.urls}};
    if (e.layout) {
        j["layout"] = std::string(to_string(*e.layout));
        j["copies"] = e.copies;
        j["block_size"] = e.block_size;
        j["size"] = e.size;
    }
    if (!e.clone_of.empty()) {
        j["clone_of"] = e.clone_of;
    }
    if (e.lost) {
        j["lost"] = true;
        j["lost_to"] = e.lost_to;
    }
    std::string path = entry_path(e.name);
    std::string tmp = path + ".tmp";
    {
        // The URLs may carry CHAP secrets: readable by the owner only.
        mode_t old = ::umask(077);
        std::ofstream out(tmp, std::ios::trunc);
        ::umask(old);
        out << j.dump(2) << "\n";
        if (!out) {
            return make_error(fmt::format("{}: cannot write", tmp), EIO);
        }
    }
    fs::rename(tmp, path, ec);
    if (ec) {
        return make_error(fmt::format("{}: {}", path, ec.message()), ec.value());
    }
    return {};
}

// ---- members ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<backstore::Device>> SpaceManager::open_device(const std::string& url) {
    if (_options.open_member) {
        return _options.open_member(url);
    }
    if (url.rfind("iscsi://", 0) == 0) {
        if (_options.initiator == nullptr) {
            return make_error(fmt::format("{}: this process has no initiator for remote members", shown(url)),
                              ENOTSUP);
        }
        RemoteOptions o;
        o.url = url;
        o.member = true;
        auto d = RemoteDevice::open(*_options.initiator, o);
        if (!d) {
            return std::move(d).error();
        }
        return std::unique_ptr<backstore::Device>(std::move(*d));
    }
    auto spec = _options.registry->parse(url);
    if (!spec) {
        return spec.error();
    }
    return (*spec)->open();
}

Result<SpaceManager::Opened> SpaceManager::open_all(const std::vector<std::string>& urls, bool tolerate) {
    Opened o;
    for (const std::string& url : urls) {
        auto d = open_device(url);
        if (!d) {
            if (!tolerate) {
                return with(shown(url), d.error());
            }
            log_warn("{}: {}", shown(url), d.error().message);
            o.devices.push_back(nullptr);
            continue;
        }
        o.devices.push_back(std::move(*d));
    }
    for (size_t i = 0; i < urls.size(); ++i) {
        if (!o.devices[i]) {
            continue;
        }
        LabelReading r = read_member_labels(reactor(), *o.devices[i]);
        for (const std::string& p : r.problems) {
            if (r.label) {
                log_warn("{}: label {}", shown(urls[i]), p);
            }
        }
        o.found.push_back({shown(urls[i]), r.label, r.problems});
    }
    return o;
}

// ---- create ----------------------------------------------------------------------------------------------

Result<SpaceStatus> SpaceManager::create(const CreateRequest& request) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    if (auto valid = check_space_name(request.name); !valid) {
        return valid.error();
    }
    if (fs::exists(entry_path(request.name))) {
        return make_error(fmt::format("space '{}' exists in the catalog already ({})", request.name,
                                      entry_path(request.name)),
                          EEXIST);
    }
    if (request.members.empty()) {
        return make_error("a space needs members (--member URL ...)", EINVAL);
    }
    for (size_t i = 0; i < request.members.size(); ++i) {
        for (size_t j = i + 1; j < request.members.size(); ++j) {
            if (same_member(request.members[i], request.members[j])) {
                return make_error(fmt::format("{} is given twice", shown(request.members[i])), EINVAL);
            }
        }
    }
    // Every member reachable before anything is written to any.
    std::vector<std::unique_ptr<backstore::Device>> devices;
    for (const std::string& url : request.members) {
        auto d = open_device(url);
        if (!d) {
            return with(shown(url), d.error());
        }
        devices.push_back(std::move(*d));
    }
    SpaceSpec spec;
    spec.name = request.name;
    spec.layout = request.layout;
    spec.copies = request.copies;
    spec.chunk = request.chunk;
    spec.size = request.size;
    spec.region_size = request.region ? request.region : default_region_size;
    spec.thin = request.thin;
    spec.checksums = request.checksums;
    spec.cluster_size = request.cluster ? request.cluster : spec.cluster_size;
    if (request.thin && request.size == 0) {
        return make_error("a thin space needs --size: the size it provides (it may exceed the members)",
                          EINVAL);
    }
    std::vector<backstore::Device*> raw;
    for (const std::string& url : request.members) {
        spec.urls.push_back(shown(url));
    }
    for (auto& d : devices) {
        raw.push_back(d.get());
    }
    // Members held by someone (a reservation of another key) are not ours to label.
    auto me = identity();
    if (!me) {
        return me.error();
    }
    for (size_t i = 0; i < devices.size(); ++i) {
        if (auto* remote = dynamic_cast<RemoteDevice*>(devices[i].get())) {
            auto r = remote->read_reservation_sync();
            if (r && r->reserved && r->key != me->key && !request.force) {
                return make_error(
                    fmt::format("{} is reserved by another holder (key {:#x}); use --force to reuse it",
                                spec.urls[i], r->key),
                    EBUSY);
            }
        }
    }
    auto formatted = format_space(reactor(), spec, raw, request.force);
    if (!formatted) {
        return formatted.error();
    }
    Entry e;
    e.name = request.name;
    e.uuid = formatted->plan.truth.space_uuid;
    e.urls = request.members;
    e.describe(formatted->plan.truth);
    if (auto saved = save_entry(e); !saved) {
        return saved.error();
    }
    log_info("space {}: created ({}, {} members, {} MiB)", request.name, to_string(request.layout),
             request.members.size(), formatted->plan.truth.space_size >> 20);
    SpaceStatus st;
    const Label& l = formatted->plan.truth;
    st.name = l.name;
    st.uuid = l.space_uuid;
    st.layout = l.layout;
    st.copies = l.copies;
    st.size = l.space_size;
    st.block_size = l.block_size;
    st.chunk = l.chunk;
    st.region = l.region_size;
    st.epoch = l.epoch;
    st.sequence = l.sequence;
    st.clean = true;
    st.checksums = l.checksums();
    if (l.thin()) {
        st.thin = true;
        st.allocation_known = true; // nothing allocated yet
        st.cluster_size = spec.cluster_size;
        st.pool_bytes = formatted->pool_bytes;
    }
    for (uint32_t s = 0; s < l.members.size(); ++s) {
        st.members.push_back({s, spec.urls[s], MemberState::active, RebuildMode::none, 0, 0});
    }
    st.notes = formatted->notes;
    return st;
}

// ---- assemble --------------------------------------------------------------------------------------------

Result<SpaceStatus> SpaceManager::assemble(const std::vector<std::string>& urls,
                                           const AssembleOptions& options) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    auto opened = open_all(urls, false);
    if (!opened) {
        return opened.error();
    }
    auto plan = plan_assembly(opened->found, options);
    if (!plan) {
        return plan.error();
    }
    const Label& truth = plan->truth;
    if (_held.count(truth.name)) {
        return make_error(
            fmt::format("space '{}' is open in this process; close it before assembling it", truth.name),
            EBUSY);
    }
    if (auto existing = load_entry(truth.name); existing && existing->uuid != truth.space_uuid) {
        return make_error(
            fmt::format("the catalog has another space named '{}' ({}); destroy or rename it first",
                        truth.name, to_string(existing->uuid)),
            EEXIST);
    }
    // Slot order: the URLs given where they were found, the labels' hints (no secret) for the others.
    Entry e;
    e.name = truth.name;
    e.uuid = truth.space_uuid;
    e.describe(truth);
    for (uint32_t s = 0; s < truth.members.size(); ++s) {
        std::string url = truth.members[s].url;
        for (size_t i = 0; i < opened->found.size(); ++i) {
            if (plan->found[s] && *plan->found[s] == i) {
                url = urls[i];
            }
        }
        e.urls.push_back(url);
    }
    if (auto saved = save_entry(e); !saved) {
        return saved.error();
    }
    for (const std::string& note : plan->notes) {
        log_info("space {}: {}", truth.name, note);
    }
    opened->devices.clear();
    if (plan->forced) {
        // The resolution must reach the labels: open (the losing side becomes a full rebuild) and close.
        auto v = open_locked(truth.name, {}, options);
        if (!v) {
            return v.error();
        }
        if (auto closed = close_locked(truth.name); !closed) {
            return closed.error();
        }
    }
    log_info("space {}: assembled into the catalog from {} member(s)", truth.name, urls.size());
    auto st = status(truth.name);
    if (st) {
        record_clones(*st, e); // the pool's clones find their way back into the catalog too
    }
    return st;
}

// ---- open and close --------------------------------------------------------------------------------------

Result<std::shared_ptr<Volume>> SpaceManager::open(const std::string& name, const OpenOptions& options) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    if (_held.count(name)) {
        return make_error(fmt::format("space '{}' is attached already (held by this process)", name), EBUSY);
    }
    return open_locked(name, options);
}

Result<void> SpaceManager::scrub(const std::string& name, ScrubAction action, uint64_t rate) {
    auto v = find(name);
    if (!v) {
        return make_error(
            fmt::format("space '{}' is not held by this process: attach or export it, then scrub it", name),
            ENOENT);
    }
    return v->scrub(action, rate);
}

std::shared_ptr<Volume> SpaceManager::find(const std::string& name) const {
    std::lock_guard lock(_mutex);
    auto it = _held.find(name);
    return it == _held.end() ? nullptr : it->second.volume;
}

Result<std::shared_ptr<Volume>> SpaceManager::open_locked(const std::string& name, const OpenOptions& options,
                                                          const AssembleOptions& assemble_options) {
    auto entry = load_entry(name);
    if (!entry) {
        return entry.error();
    }
    if (!entry->clone_of.empty()) {
        return make_error(
            fmt::format("'{}' is a clone in the pool of space '{}': it has no members of its own "
                        "(its space's verbs act on '{}')",
                        name, entry->clone_of, entry->clone_of),
            EINVAL);
    }
    auto me = identity();
    if (!me) {
        return me.error();
    }
    auto opened = open_all(entry->urls, true);
    if (!opened) {
        return opened.error();
    }
    // Only what was reached takes part; unreachable members are missing.
    std::vector<size_t> index_of_found; // found[i] is devices[index_of_found[i]]
    for (size_t i = 0; i < opened->devices.size(); ++i) {
        if (opened->devices[i]) {
            index_of_found.push_back(i);
        }
    }
    if (opened->found.empty()) {
        return make_error(fmt::format("space '{}': none of its members can be reached", name), ENODEV);
    }
    auto plan = plan_assembly(opened->found, assemble_options);
    if (!plan) {
        return make_error(fmt::format("space '{}': {}", name, plan.error().message), plan.error().code);
    }
    if (plan->truth.space_uuid != entry->uuid) {
        return make_error(
            fmt::format("space '{}': its members now belong to space {} ({}); assemble it again", name,
                        plan->truth.name, to_string(plan->truth.space_uuid)),
            EINVAL);
    }
    const Label& truth = plan->truth;
    uint32_t n = uint32_t(truth.members.size());
    std::vector<VolumeMember> members(n);
    std::vector<std::string> slot_urls(n);
    std::vector<FenceTarget> targets;
    for (uint32_t s = 0; s < n; ++s) {
        slot_urls[s] = truth.members[s].url;
        for (const std::string& u : entry->urls) {
            if (same_member(u, truth.members[s].url)) {
                slot_urls[s] = u;
            }
        }
        if (!plan->found[s]) {
            continue;
        }
        size_t i = index_of_found[*plan->found[s]];
        slot_urls[s] = entry->urls[i];
        members[s].data_offset = opened->found[*plan->found[s]].label->data_offset;
        members[s].url = shown(entry->urls[i]);
        members[s].device = std::move(opened->devices[i]);
        targets.push_back({members[s].device.get(), members[s].url});
    }
    // One writer: the members themselves refuse anyone else from now on.
    if (auto fenced = fence(targets, *me, options.takeover, truth.holder_key, truth.holder); !fenced) {
        return make_error(fmt::format("space '{}': {}", name, fenced.error().message), fenced.error().code);
    }
    VolumeOptions vo = _options.volume;
    vo.holder_key = me->key;
    vo.holder = me->name;
    if (options.resync_rate > 0) {
        vo.resync_rate = options.resync_rate;
    }
    // A member that was missing is looked for again with back-off, and fenced before it is used.
    vo.reopen = [this, slot_urls, id = *me](uint32_t slot) -> Result<std::unique_ptr<backstore::Device>> {
        auto d = open_device(slot_urls[slot]);
        if (!d) {
            return d.error();
        }
        std::vector<FenceTarget> one{{d->get(), shown(slot_urls[slot])}};
        if (auto fenced = fence(one, id, false, 0, ""); !fenced) {
            return make_error(fenced.error().message, EBADE);
        }
        return d;
    };
    vo.on_lost = [this, name] { on_lost(name); };
    auto volume = Volume::open(*_options.reactors, *plan, std::move(members), vo);
    if (!volume) {
        unfence(targets, *me);
        return make_error(fmt::format("space '{}': {}", name, volume.error().message), volume.error().code);
    }
    for (const std::string& note : plan->notes) {
        log_info("space {}: {}", name, note);
    }
    Entry updated = *entry;
    updated.urls = slot_urls;
    updated.describe((*volume)->truth_at_open());
    updated.lost = false;
    updated.lost_to.clear();
    (void)save_entry(updated);
    _held[name] = Held{*volume, slot_urls};
    log_info("space {}: open (epoch {}, holder {})", name, (*volume)->status().epoch, me->name);
    return *volume;
}

Result<void> SpaceManager::close(const std::string& name) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    return close_locked(name);
}

Result<void> SpaceManager::close_locked(const std::string& name) {
    auto it = _held.find(name);
    if (it == _held.end()) {
        return make_error(fmt::format("space '{}' is not open in this process", name), ENOENT);
    }
    std::shared_ptr<Volume> v = it->second.volume;
    _held.erase(it);
    Result<void> closed = v->close();
    if (!v->lost() && _identity) {
        std::vector<FenceTarget> targets;
        for (uint32_t s = 0; s < v->member_count(); ++s) {
            if (auto* d = v->member_device(s)) {
                targets.push_back({d, ""});
            }
        }
        unfence(targets, *_identity);
    }
    return closed;
}

void SpaceManager::close_all() {
    std::lock_guard lock(_mutex);
    while (!_held.empty()) {
        std::string name = _held.begin()->first;
        if (auto r = close_locked(name); !r) {
            log_error("space {}: {}", name, r.error().message);
        }
    }
}

void SpaceManager::on_lost(const std::string& name) {
    {
        std::lock_guard lock(_mutex);
        if (!lost_locked(name)) {
            return;
        }
    }
    if (_options.on_lost) {
        _options.on_lost(name);
    }
}

bool SpaceManager::lost_locked(const std::string& name) {
    auto it = _held.find(name);
    if (it == _held.end()) {
        return false;
    }
    std::string holder = it->second.volume->status().holder;
    (void)close_locked(name);
    // Whoever took it over wrote their name in the labels; read it for status.
    if (auto e = load_entry(name)) {
        e->lost = true;
        auto opened = open_all(e->urls, true);
        if (opened) {
            for (const FoundMember& f : opened->found) {
                if (f.label && f.label->holder != holder) {
                    e->lost_to = f.label->holder;
                }
            }
        }
        (void)save_entry(*e);
    }
    log_error("space {}: lost to another holder{}; this process let go of it", name, [&] {
        auto e = load_entry(name);
        return e && !e->lost_to.empty() ? " (" + e->lost_to + ")" : std::string();
    }());
    return true;
}

// ---- status ----------------------------------------------------------------------------------------------

SpaceStatus SpaceManager::status_of(const Volume& v) const {
    VolumeStatus vs = v.status();
    const Label& t = v.truth_at_open();
    SpaceStatus st;
    st.name = vs.name;
    st.uuid = vs.uuid;
    st.layout = vs.layout;
    st.copies = t.copies;
    st.size = vs.size;
    st.block_size = vs.block_size;
    st.chunk = t.chunk;
    st.region = t.region_size;
    st.epoch = vs.epoch;
    st.sequence = vs.sequence;
    st.open = true;
    st.lost = vs.lost;
    st.holder = vs.holder;
    st.members = vs.members;
    st.resync = vs.resync;
    st.scrub = vs.scrub;
    st.dirty_regions = vs.dirty_regions;
    st.checksums = t.checksums();
    if (vs.thin) {
        st.thin = true;
        st.allocation_known = true;
        st.allocated_bytes = vs.allocated_bytes;
        st.pool_bytes = vs.pool_bytes;
        st.cluster_size = vs.cluster_size;
        st.pool_full = vs.pool_full;
        st.deferred_copies = vs.deferred_copies;
        st.deferred_bytes = vs.deferred_bytes;
    }
    return st;
}

Result<SpaceStatus> SpaceManager::status(const std::string& name) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    if (auto it = _held.find(name); it != _held.end()) {
        SpaceStatus st = status_of(*it->second.volume);
        if (st.thin) {
            if (auto devices = it->second.volume->thin_devices()) {
                add_thin_devices(st, *devices);
            }
        }
        return st;
    }
    auto entry = load_entry(name);
    if (!entry) {
        return entry.error();
    }
    if (!entry->clone_of.empty()) {
        // A clone: its space's status, named for the clone.
        auto st = status(entry->clone_of);
        if (st) {
            st->clone_of = st->name;
            st->name = name;
        }
        return st;
    }
    // Not open here: what the labels say, read without writing anything.
    auto opened = open_all(entry->urls, true);
    if (!opened) {
        return opened.error();
    }
    SpaceStatus st;
    st.name = name;
    st.uuid = entry->uuid;
    st.lost = entry->lost;
    st.lost_to = entry->lost_to;
    const Label* truth = nullptr;
    for (const FoundMember& f : opened->found) {
        if (f.label && f.label->space_uuid == entry->uuid &&
            (!truth ||
             std::tie(f.label->epoch, f.label->sequence) > std::tie(truth->epoch, truth->sequence))) {
            truth = &*f.label;
        }
    }
    if (!truth) {
        return make_error(fmt::format("space '{}': none of its members can be reached or read", name),
                          ENODEV);
    }
    st.layout = truth->layout;
    st.copies = truth->copies;
    st.size = truth->space_size;
    st.block_size = truth->block_size;
    st.chunk = truth->chunk;
    st.region = truth->region_size;
    st.epoch = truth->epoch;
    st.sequence = truth->sequence;
    st.holder = truth->holder;
    st.clean = truth->clean;
    st.checksums = truth->checksums();
    if (st.checksums) {
        // The scrub as the labels keep it (a thin space's range is its pool: its layout's capacity).
        auto layout = truth->layout_of();
        st.scrub = scrub_progress_of(truth->scrub, truth->thin() && layout ? capacity(*layout) : st.size);
    }
    if (truth->thin()) {
        // The map as its last commit left it, read from the members that carry the current labels
        // (reading writes nothing).
        st.thin = true;
        std::vector<backstore::Device*> current;
        for (size_t i = 0; i < opened->found.size(); ++i) {
            const auto& label = opened->found[i].label;
            // Active in the freshest label: a member being rebuilt may hold an older map.
            if (label && label->space_uuid == truth->space_uuid && label->epoch == truth->epoch &&
                label->slot < truth->members.size() &&
                truth->members[label->slot].state == MemberState::active && opened->devices[i]) {
                current.push_back(opened->devices[i].get());
            }
        }
        auto pool = read_thin_stats(reactor(), current, *truth);
        if (pool) {
            st.allocation_known = true;
            st.allocated_bytes = pool->allocated_clusters * pool->cluster_size;
            st.pool_bytes = pool->pool_clusters * pool->cluster_size;
            st.cluster_size = pool->cluster_size;
            add_thin_devices(st, pool->devices);
        } else {
            log_warn("space {}: the thin map could not be read: {}", name, pool.error().message);
        }
    }
    for (uint32_t s = 0; s < truth->members.size(); ++s) {
        const MemberEntry& e = truth->members[s];
        MemberStatus ms{s, e.url, e.state, e.rebuild, e.recovery_offset, 0};
        ms.checksum_errors = truth->checksum_errors[s];
        bool reached = false;
        for (const FoundMember& f : opened->found) {
            reached |= f.label && f.label->member_uuid == e.uuid;
        }
        if (!reached && e.state == MemberState::active) {
            ms.state = MemberState::missing;
        }
        st.members.push_back(std::move(ms));
    }
    return st;
}

Result<std::vector<SpaceStatus>> SpaceManager::list() {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    std::vector<SpaceStatus> out;
    fs::path dir = fs::path(_options.home) / "spaces";
    std::error_code ec;
    if (!fs::exists(dir, ec)) {
        return out;
    }
    std::vector<std::string> names;
    for (const auto& f : fs::directory_iterator(dir, ec)) {
        if (f.path().extension() == ".json") {
            names.push_back(f.path().stem().string());
        }
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
        if (auto it = _held.find(name); it != _held.end()) {
            out.push_back(status_of(*it->second.volume));
            continue;
        }
        // From the catalog alone: listing must not log in to every member of every space.
        auto e = load_entry(name);
        if (!e) {
            continue;
        }
        SpaceStatus st;
        st.name = name;
        st.uuid = e->uuid;
        st.lost = e->lost;
        st.lost_to = e->lost_to;
        st.clone_of = e->clone_of;
        if (e->layout) {
            st.layout = *e->layout;
            st.copies = e->copies;
            st.block_size = e->block_size;
            st.size = e->size;
        }
        for (uint32_t s = 0; s < e->urls.size(); ++s) {
            st.members.push_back({s, shown(e->urls[s]), MemberState::active, RebuildMode::none, 0, 0});
        }
        out.push_back(std::move(st));
    }
    return out;
}

// ---- replace, add, destroy -------------------------------------------------------------------------------

namespace {

// Where the metadata areas of a space's members end (a new member's data area starts after it).
uint64_t metadata_end_of(const Label& truth) {
    uint64_t end = metadata_start;
    for (const MetadataArea& a : truth.areas) {
        end = std::max(end, a.offset + a.length);
    }
    return end;
}

} // namespace

Result<GrowResult> SpaceManager::grow(const std::string& name, const std::string& new_member, bool force,
                                      SpaceStatus* status) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    bool was_open = _held.count(name) > 0;
    if (!was_open) {
        if (auto v = open_locked(name, {}); !v) {
            return v.error();
        }
    }
    Held& held = _held[name];
    std::shared_ptr<Volume> v = held.volume;
    auto grown = [&]() -> Result<GrowResult> {
        if (new_member.empty()) {
            return v->grow();
        }
        auto column = new_column(name, held, new_member, force);
        if (!column) {
            return column.error();
        }
        auto& [member, entry] = *column;
        auto r = v->grow(std::move(member), entry);
        if (r) {
            held.urls.push_back(new_member);
            if (auto e = load_entry(name)) {
                e->urls = held.urls;
                (void)save_entry(*e);
            }
        }
        return r;
    }();
    if (grown && status != nullptr) {
        *status = status_of(*v);
    }
    if (!was_open) {
        (void)close_locked(name);
    }
    if (grown && grown->after > grown->before) {
        if (auto e = load_entry(name)) {
            e->size = grown->thin ? e->size : grown->after;
            (void)save_entry(*e);
        }
    }
    return grown;
}

Result<std::unique_ptr<backstore::Device>> SpaceManager::open_new_member(const std::string& name,
                                                                         const std::vector<std::string>& urls,
                                                                         const std::string& url, bool force,
                                                                         uint32_t block_size) {
    for (const std::string& u : urls) {
        if (same_member(u, url)) {
            return make_error(fmt::format("{} is a member of '{}' already", shown(url), name), EEXIST);
        }
    }
    auto device = open_device(url);
    if (!device) {
        return with(shown(url), device.error());
    }
    backstore::Device& d = **device;
    LabelReading existing = read_member_labels(reactor(), d);
    if (existing.label && !force) {
        return make_error(fmt::format("{} is a member of space '{}'; use --force to reuse it", shown(url),
                                      existing.label->name),
                          EEXIST);
    }
    if (d.geometry().block_size != block_size) {
        return make_error(fmt::format("{} has {}-byte blocks; the space has {}", shown(url),
                                      d.geometry().block_size, block_size),
                          EINVAL);
    }
    return device;
}

Result<std::pair<VolumeMember, MemberEntry>>
SpaceManager::new_column(const std::string& name, const Held& held, const std::string& url, bool force) {
    const Label& truth = held.volume->truth_at_open();
    if (truth.layout != LayoutKind::concat) {
        return make_error(
            fmt::format("space '{}' is a {}: a new member adds room only to a concat (a mirror's "
                        "copies hold the same bytes, a stripe would have to be restriped); grow "
                        "its members instead",
                        name, to_string(truth.layout)),
            ENOTSUP);
    }
    auto device = open_new_member(name, held.urls, url, force, truth.block_size);
    if (!device) {
        return device.error();
    }
    backstore::Device& d = **device;
    // Its data area after the same metadata as the others' (a thin space's map area is copied to it).
    uint64_t data_offset = (metadata_end_of(truth) + data_alignment - 1) / data_alignment * data_alignment;
    uint64_t bytes = d.geometry().bytes();
    uint64_t end = bytes < 2 * label_size ? 0 : (bytes - 2 * label_size) / data_alignment * data_alignment;
    if (end < data_offset + data_alignment) {
        return make_error(
            fmt::format("{}: {} bytes, too small: its data would start at {} (after the labels and "
                        "metadata) and end before another MiB",
                        shown(url), bytes, data_offset),
            ENOSPC);
    }
    auto me = identity();
    if (!me) {
        return me.error();
    }
    std::vector<FenceTarget> one{{&d, shown(url)}};
    if (auto fenced = fence(one, *me, force, 0, ""); !fenced) {
        return fenced.error();
    }
    MemberEntry entry;
    entry.uuid = make_uuid();
    entry.data_bytes = (end - data_offset) / truth.block_size * truth.block_size;
    entry.url = shown(url).substr(0, max_url_length);
    VolumeMember member;
    member.device = std::move(*device);
    member.data_offset = data_offset;
    member.url = shown(url);
    return std::pair<VolumeMember, MemberEntry>{std::move(member), entry};
}

Result<SpaceStatus> SpaceManager::replace(const std::string& name, const std::string& old_url,
                                          const std::string& new_url, bool force) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    bool was_open = _held.count(name) > 0;
    if (!was_open) {
        if (auto v = open_locked(name, {}); !v) {
            return v.error();
        }
    }
    auto closing = [&](Result<SpaceStatus> r) -> Result<SpaceStatus> {
        if (!was_open) {
            (void)close_locked(name);
        }
        return r;
    };
    Held& held = _held[name];
    std::shared_ptr<Volume> v = held.volume;
    const Label& truth = v->truth_at_open();
    VolumeStatus vs = v->status();
    int slot = -1;
    for (uint32_t s = 0; s < held.urls.size(); ++s) {
        if (same_member(held.urls[s], old_url) || same_member(vs.members[s].url, old_url)) {
            slot = int(s);
        }
    }
    if (slot < 0) {
        return closing(
            make_error(fmt::format("{} is not a member of space '{}'", shown(old_url), name), ENOENT));
    }
    auto device = open_device(new_url);
    if (!device) {
        return closing(with(shown(new_url), device.error()));
    }
    backstore::Device& d = **device;
    LabelReading existing = read_member_labels(reactor(), d);
    if (existing.label && !force) {
        return closing(make_error(fmt::format("{} is a member of space '{}' ({}); use --force to reuse it",
                                              shown(new_url), existing.label->name,
                                              to_string(existing.label->space_uuid)),
                                  EEXIST));
    }
    if (d.geometry().block_size != truth.block_size) {
        return closing(make_error(fmt::format("{} has {}-byte blocks; the space has {}", shown(new_url),
                                              d.geometry().block_size, truth.block_size),
                                  EINVAL));
    }
    // Its data area at the same place as the others' (after the same metadata), as large as the slot's.
    // (A thin space's map area is copied to it by the volume before it is written or read.)
    const MetadataArea* bitmap = truth.area(AreaType::bitmap);
    uint64_t metadata_end = metadata_end_of(truth);
    uint64_t data_offset = (metadata_end + data_alignment - 1) / data_alignment * data_alignment;
    uint64_t needed = truth.members[uint32_t(slot)].data_bytes;
    if (d.geometry().bytes() < data_offset + needed + 2 * label_size) {
        return closing(
            make_error(fmt::format("{}: {} bytes, too small: slot {} needs {} bytes of data after {} of "
                                   "metadata",
                                   shown(new_url), d.geometry().bytes(), slot, needed, data_offset),
                       ENOSPC));
    }
    auto me = identity();
    std::vector<FenceTarget> one{{&d, shown(new_url)}};
    if (auto fenced = fence(one, *me, force, 0, ""); !fenced) {
        return closing(fenced.error());
    }
    if (bitmap) {
        std::vector<uint8_t> zero(bitmap->length, 0);
        if (int error = member_io(reactor(), d, backstore::IoOp::write, bitmap->offset, zero); error != 0) {
            return closing(make_error(fmt::format("{}: {}", shown(new_url), std::strerror(-error)), -error));
        }
    }
    if (vs.members[uint32_t(slot)].state == MemberState::active ||
        vs.members[uint32_t(slot)].state == MemberState::rebuilding) {
        if (auto failed = v->fail_member(uint32_t(slot)); !failed) {
            return closing(failed.error());
        }
    }
    MemberEntry entry;
    entry.uuid = make_uuid();
    entry.data_bytes = needed;
    entry.url = shown(new_url).substr(0, max_url_length);
    VolumeMember m;
    m.device = std::move(*device);
    m.data_offset = data_offset;
    m.url = shown(new_url);
    if (auto r = v->replace_member(uint32_t(slot), std::move(m), entry); !r) {
        return closing(r.error());
    }
    held.urls[uint32_t(slot)] = new_url;
    if (auto e = load_entry(name)) {
        e->urls = held.urls;
        (void)save_entry(*e);
    }
    log_info("space {}: {} replaced by {} (slot {}), rebuilt in full", name, shown(old_url), shown(new_url),
             slot);
    return closing(status_of(*v));
}

Result<SpaceStatus> SpaceManager::add_member(const std::string& name, const std::string& url, bool force) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    if (_held.count(name)) {
        return make_error(fmt::format("space '{}' is open in this process: detach it first", name), EBUSY);
    }
    auto entry = load_entry(name);
    if (!entry) {
        return entry.error();
    }
    if (!entry->clone_of.empty()) {
        return make_error(fmt::format("'{}' is a clone in the pool of space '{}': add members to '{}'", name,
                                      entry->clone_of, entry->clone_of),
                          EINVAL);
    }
    auto opened = open_all(entry->urls, true);
    if (!opened) {
        return opened.error();
    }
    auto plan = plan_assembly(opened->found);
    if (!plan) {
        return plan.error();
    }
    Label truth = plan->truth;
    if (truth.layout != LayoutKind::mirror) {
        return make_error(fmt::format("space '{}' is a {}: add-member adds a copy to a mirror", name,
                                      to_string(truth.layout)),
                          ENOTSUP);
    }
    if (truth.members.size() >= max_members) {
        return make_error(fmt::format("space '{}' has {} members already, the most there can be", name,
                                      truth.members.size()),
                          ENOSPC);
    }
    auto device = open_new_member(name, entry->urls, url, force, truth.block_size);
    if (!device) {
        return device.error();
    }
    backstore::Device& d = **device;
    const MetadataArea* bitmap = truth.area(AreaType::bitmap);
    uint64_t metadata_end = metadata_end_of(truth);
    uint64_t data_offset = (metadata_end + data_alignment - 1) / data_alignment * data_alignment;
    auto plan_new = plan_member(d.geometry().bytes(), truth.block_size, 0, 0);
    uint64_t end = plan_new ? plan_new->data_offset + plan_new->data_size : 0;
    // A copy holds the space; a thin space's copy holds its pool (the mirror's capacity).
    uint64_t copy_bytes = truth.space_size;
    if (truth.thin()) {
        auto layout = truth.layout_of();
        copy_bytes = layout ? capacity(*layout) : UINT64_MAX / 2;
    }
    if (end < data_offset + copy_bytes) {
        return make_error(fmt::format("{}: {} bytes, too small to hold a copy of {} bytes", shown(url),
                                      d.geometry().bytes(), copy_bytes),
                          ENOSPC);
    }
    uint64_t data_bytes = (end - data_offset) / truth.block_size * truth.block_size;
    // Every member must take the new member table: fence them all (and the new one) first.
    auto me = identity();
    std::vector<FenceTarget> targets;
    std::vector<size_t> index_of_found;
    for (size_t i = 0; i < opened->devices.size(); ++i) {
        if (opened->devices[i]) {
            index_of_found.push_back(i);
            targets.push_back({opened->devices[i].get(), shown(entry->urls[i])});
        }
    }
    targets.push_back({&d, shown(url)});
    if (auto fenced = fence(targets, *me, false, truth.holder_key, truth.holder); !fenced) {
        return fenced.error();
    }
    if (bitmap) {
        std::vector<uint8_t> zero(bitmap->length, 0);
        if (int error = member_io(reactor(), d, backstore::IoOp::write, bitmap->offset, zero); error != 0) {
            unfence(targets, *me);
            return make_error(fmt::format("{}: {}", shown(url), std::strerror(-error)), -error);
        }
    }
    std::vector<Written> written(truth.members.size(), Written::of(truth));
    LabelBook book(truth, written);
    MemberEntry added;
    added.uuid = make_uuid();
    added.state = MemberState::rebuilding;
    added.rebuild = RebuildMode::full;
    added.data_bytes = data_bytes;
    added.url = shown(url).substr(0, max_url_length);
    book.truth().members.push_back(added);
    book.truth().copies = uint32_t(book.truth().members.size());
    book.raise_epoch();
    // The new member first (so that a member table naming it never exists without its label), then the
    // others. A member that cannot take it keeps its old label and is stale at the next assembly.
    uint32_t new_slot = uint32_t(book.truth().members.size() - 1);
    Label mine = book.label_for(new_slot, d.geometry().bytes(), data_offset);
    if (auto w = write_member_labels(reactor(), d, mine); !w) {
        unfence(targets, *me);
        return w.error();
    }
    for (uint32_t s = 0; s < truth.members.size(); ++s) {
        if (!plan->found[s] || plan->slots[s] != SlotPlan::current) {
            continue;
        }
        size_t i = index_of_found[*plan->found[s]];
        const Label& own = *opened->found[*plan->found[s]].label;
        Label l = book.label_for(s, opened->devices[i]->geometry().bytes(), own.data_offset);
        l.member_size = own.member_size;
        if (auto w = write_member_labels(reactor(), *opened->devices[i], l); !w) {
            log_error("space {}: {}", name, w.error().message);
        }
    }
    unfence(targets, *me);
    entry->urls.push_back(url);
    if (auto saved = save_entry(*entry); !saved) {
        return saved.error();
    }
    log_info("space {}: {} added as slot {}; it is rebuilt in full when the space is next opened", name,
             shown(url), new_slot);
    return status(name);
}

Result<void> SpaceManager::destroy(const std::string& name, bool confirmed) {
    assert(net::Reactor::current() == nullptr);
    std::lock_guard lock(_mutex);
    if (!confirmed) {
        return make_error(
            fmt::format("destroying space '{}' erases its labels on every member: confirm it (--yes)", name),
            EINVAL);
    }
    if (_held.count(name)) {
        return make_error(fmt::format("space '{}' is open in this process: detach it first", name), EBUSY);
    }
    auto entry = load_entry(name);
    if (!entry) {
        return entry.error();
    }
    if (!entry->clone_of.empty()) {
        return destroy_clone(*entry);
    }
    if (auto st = status(name); st && !st->thin_devices.empty()) {
        // The pool holds more than the space: refused rather than taking clones and snapshots with it.
        std::string names;
        for (const ThinDeviceStatus& d : st->thin_devices) {
            names += (names.empty() ? "" : ", ") + d.name;
        }
        return make_error(fmt::format("space '{}' has snapshots or clones ({}): delete them first "
                                      "(snapshot-delete NAME@SNAP, destroy CLONE)",
                                      name, names),
                          EBUSY);
    }
    auto opened = open_all(entry->urls, true);
    if (!opened) {
        return opened.error();
    }
    auto me = identity();
    std::vector<FenceTarget> targets;
    const Label* truth = nullptr;
    for (size_t i = 0, f = 0; i < opened->devices.size(); ++i) {
        if (!opened->devices[i]) {
            continue;
        }
        const FoundMember& found = opened->found[f++];
        if (found.label && found.label->space_uuid == entry->uuid) {
            targets.push_back({opened->devices[i].get(), shown(entry->urls[i])});
            if (!truth || found.label->epoch > truth->epoch) {
                truth = &*found.label;
            }
        }
    }
    // Held by someone else: not ours to destroy.
    if (auto fenced = fence(targets, *me, false, truth ? truth->holder_key : 0, truth ? truth->holder : "");
        !fenced) {
        return fenced.error();
    }
    std::vector<std::string> left;
    for (size_t i = 0; i < opened->devices.size(); ++i) {
        if (!opened->devices[i]) {
            left.push_back(shown(entry->urls[i]));
            continue;
        }
        backstore::Device& d = *opened->devices[i];
        std::vector<uint8_t> zero(label_size, 0);
        for (uint64_t at : label_offsets(d.geometry().bytes())) {
            (void)member_io(reactor(), d, backstore::IoOp::write, at, zero, true);
        }
    }
    unfence(targets, *me);
    std::error_code ec;
    fs::remove(entry_path(name), ec);
    if (!left.empty()) {
        std::string names;
        for (const std::string& l : left) {
            names += (names.empty() ? "" : ", ") + l;
        }
        log_warn("space {}: destroyed; unreachable members keep their labels: {} (reuse them with --force)",
                 name, names);
    } else {
        log_info("space {}: destroyed", name);
    }
    return {};
}

// ---- the "space" kind ------------------------------------------------------------------------------------

namespace {

// An LU's own Device that forwards to a shared view (the registry hands out unique_ptrs).
class SharedViewDevice final : public backstore::Device {
public:
    explicit SharedViewDevice(std::shared_ptr<backstore::Device> view) : _view(std::move(view)) {}
    std::string_view kind() const override { return _view->kind(); }
    std::string describe() const override { return _view->describe(); }
    backstore::Geometry geometry() const override { return _view->geometry(); }
    backstore::Features features() const override { return _view->features(); }
    uint64_t identity() const override { return _view->identity(); }
    void submit(backstore::IoRequest& request) override { _view->submit(request); }
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<backstore::Extent>>)> done) override {
        _view->allocation_status(offset, length, std::move(done));
    }

private:
    std::shared_ptr<backstore::Device> _view;
};

class SpaceLunSpec final : public backstore::Spec {
public:
    SpaceLunSpec(std::string name, SpaceManager& manager) : _name(std::move(name)), _manager(manager) {}
    std::string_view kind() const override { return "space"; }
    std::string describe() const override { return "space:" + _name; }
    std::string backing() const override { return _name; }
    Result<std::unique_ptr<backstore::Device>> open() const override {
        auto target = _manager.resolve(_name);
        if (!target) {
            return target.error();
        }
        if (target->snapshot || target->clone) {
            // A snapshot (a read-only LU) or a clone, through the space's volume (held for it if need be).
            if (!_manager.find(target->space)) {
                if (auto opened = _manager.open(target->space); !opened) {
                    return opened.error();
                }
            }
            auto view = _manager.open_view(*target);
            if (!view) {
                return view.error();
            }
            return std::unique_ptr<backstore::Device>(std::make_unique<SharedViewDevice>(*view));
        }
        std::shared_ptr<Volume> v = _manager.find(_name);
        if (!v) {
            auto opened = _manager.open(_name);
            if (!opened) {
                return opened.error();
            }
            v = *opened;
        }
        return std::unique_ptr<backstore::Device>(std::make_unique<VolumeDevice>(v));
    }

private:
    std::string _name;
    SpaceManager& _manager;
};

} // namespace

void register_space_kind(backstore::Registry& registry, SpaceManager& manager) {
    backstore::Kind kind;
    kind.name = "space";
    kind.syntax = "space:NAME, space:NAME@SNAP (read-only) or space:CLONE";
    kind.help = "a data-space of this host's catalog ($ISPACE_HOME), opened (and fenced) by this process";
    kind.claims = [](std::string_view text) { return text.rfind("space:", 0) == 0; };
    kind.parse = [&manager](std::string_view text) -> Result<std::unique_ptr<backstore::Spec>> {
        std::string name(text.substr(6));
        if (name.empty() || name.find_first_of("/ ,") != std::string::npos) {
            return make_error(fmt::format("device '{}': expected space:NAME or space:NAME@SNAP", text),
                              EINVAL);
        }
        return std::unique_ptr<backstore::Spec>(std::make_unique<SpaceLunSpec>(name, manager));
    };
    (void)registry.add(std::move(kind));
}

} // namespace ispace::volume
