// SpaceManager's verbs for snapshots and clones of thin spaces (docs/thin.md, "Snapshots and clones").
//
// Names: a snapshot is NAME@SNAP (NAME a thin space or a clone), a clone is a name of its own. The pool's
// device table is the truth — the space's device is "space", a snapshot of device D is "D@SNAP", a clone
// is "NEW" — and the catalog only caches where a clone lives: spaces/NEW.json says `clone_of` its space,
// so `attach NEW` and `status NEW` find it without opening every thin space to search their pools. A
// clone's name is unique among the catalog's spaces (it is a catalog file), and a snapshot's within its
// pool.
#include "common/log.hpp"
#include "volume/member_io.hpp"
#include "volume/space_manager.hpp"

#include <fmt/format.h>

#include <cassert>
#include <cerrno>
#include <filesystem>

namespace ispace::volume {

namespace fs = std::filesystem;

namespace {

// The pool's name for what users call `user` in space `space` (and back).
std::string user_name(const std::string& space, const std::string& device) {
    auto at = device.find('@');
    std::string base = device.substr(0, at);
    std::string shown = base == thin_device_name ? space : base;
    return at == std::string::npos ? shown : shown + "@" + device.substr(at + 1);
}

Result<void> check_snapshot_name(const std::string& snap) {
    if (auto valid = check_space_name(snap); !valid) {
        return make_error(fmt::format("snapshot name '{}': use 1 to {} letters, digits, '.', '_' or '-', not "
                                      "starting with '.' or '-'",
                                      snap, max_name_length),
                          EINVAL);
    }
    return {};
}

} // namespace

Result<ThinTarget> SpaceManager::resolve(const std::string& name) {
    std::lock_guard lock(_mutex);
    auto at = name.find('@');
    std::string base = name.substr(0, at);
    if (at != std::string::npos) {
        std::string snap = name.substr(at + 1);
        if (base.empty() || snap.empty() || snap.find('@') != std::string::npos) {
            return make_error(fmt::format("'{}': a snapshot is named NAME@SNAP (one '@')", name), EINVAL);
        }
        if (auto valid = check_snapshot_name(snap); !valid) {
            return valid.error();
        }
    }
    if (auto valid = check_space_name(base); !valid) {
        return valid.error();
    }
    ThinTarget t{base, thin_device_name, false, false};
    if (auto entry = load_entry(base); entry && !entry->clone_of.empty()) {
        t = {entry->clone_of, base, false, true};
    }
    if (at != std::string::npos) {
        t.device += name.substr(at);
        t.snapshot = true;
        t.clone = false;
    }
    if (t.device.size() > thin::max_name_length) {
        return make_error(fmt::format("'{}': too long for the pool's device table ({} characters at most for "
                                      "CLONE@SNAP)",
                                      name, thin::max_name_length),
                          EINVAL);
    }
    return t;
}

Result<std::shared_ptr<Volume>> SpaceManager::hold_locked(const std::string& space, bool& opened) {
    opened = false;
    if (auto it = _held.find(space); it != _held.end()) {
        if (!it->second.volume->thin()) {
            return make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", space),
                              EOPNOTSUPP);
        }
        return it->second.volume;
    }
    // Read the labels first (that writes nothing): a space that is not thin is refused without being
    // opened, which would fence its members and write its labels.
    auto st = status(space);
    if (!st) {
        return st.error();
    }
    if (!st->thin) {
        return make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", space), EOPNOTSUPP);
    }
    auto v = open_locked(space, {});
    if (!v) {
        return v.error();
    }
    opened = true;
    return v;
}

Result<ThinSnapshotTiming> SpaceManager::snapshot(const std::string& name, const std::string& snap) {
    assert(net::Reactor::current() == nullptr);
    if (name.find('@') != std::string::npos) {
        return make_error(fmt::format("'{}': snapshot takes a space (or clone) and a new name: ispace space "
                                      "snapshot NAME SNAP",
                                      name),
                          EINVAL);
    }
    auto target = resolve(name + "@" + snap);
    if (!target) {
        return target.error();
    }
    std::lock_guard lock(_mutex);
    bool opened = false;
    auto v = hold_locked(target->space, opened);
    if (!v) {
        return v.error();
    }
    Result<ThinSnapshotTiming> r = make_error("", EINVAL);
    if (!(*v)->thin()) {
        r = make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", target->space),
                       EOPNOTSUPP);
    } else {
        std::string source = target->device.substr(0, target->device.find('@'));
        r = (*v)->thin_snapshot(source, target->device);
        if (!r && r.error().code == EEXIST) {
            r = make_error(fmt::format("snapshot '{}@{}' exists already", name, snap), EEXIST);
        } else if (!r && r.error().code == ENOENT) {
            r = make_error(fmt::format("'{}': no such clone in the pool of space '{}' (its catalog entry is "
                                       "stale)",
                                       name, target->space),
                           ENOENT);
        }
    }
    if (opened) {
        (void)close_locked(target->space);
    }
    return r;
}

Result<SpaceStatus> SpaceManager::clone(const std::string& source, const std::string& new_name) {
    assert(net::Reactor::current() == nullptr);
    auto target = resolve(source);
    if (!target) {
        return target.error();
    }
    if (!target->snapshot) {
        return make_error(fmt::format("'{}': a clone is made from a snapshot: NAME@SNAP (take one first: "
                                      "ispace space snapshot {} SNAP)",
                                      source, source),
                          EINVAL);
    }
    if (auto valid = check_space_name(new_name); !valid) {
        return valid.error();
    }
    if (new_name == thin_device_name) {
        return make_error(
            fmt::format("'{}' is the pool's name for a space's own device: choose another", new_name),
            EINVAL);
    }
    std::lock_guard lock(_mutex);
    std::error_code ec;
    if (fs::exists(entry_path(new_name), ec)) {
        return make_error(fmt::format("'{}' exists already in the catalog (a space or a clone)", new_name),
                          EEXIST);
    }
    auto base = load_entry(target->space);
    if (!base) {
        return base.error();
    }
    bool opened = false;
    auto v = hold_locked(target->space, opened);
    if (!v) {
        return v.error();
    }
    auto closing = [&](Result<SpaceStatus> r) {
        if (opened) {
            (void)close_locked(target->space);
        }
        return r;
    };
    if (!(*v)->thin()) {
        return closing(make_error(
            fmt::format("space '{}': snapshots need a thin space (--thin)", target->space), EOPNOTSUPP));
    }
    if (auto r = (*v)->thin_clone(target->device, new_name); !r) {
        if (r.error().code == ENOENT) {
            return closing(make_error(fmt::format("'{}': no such snapshot", source), ENOENT));
        }
        return closing(r.error());
    }
    // The pool has it (committed); the catalog learns where it lives.
    Entry e;
    e.name = new_name;
    e.uuid = base->uuid;
    e.clone_of = target->space;
    e.layout = base->layout;
    e.copies = base->copies;
    e.block_size = base->block_size;
    e.size = base->size;
    if (auto saved = save_entry(e); !saved) {
        return closing(saved.error());
    }
    log_info("space {}: clone {} made from {}", target->space, new_name, source);
    SpaceStatus st = status_of(**v);
    if (auto devices = (*v)->thin_devices()) {
        add_thin_devices(st, *devices);
    }
    st.clone_of = st.name;
    st.name = new_name;
    return closing(st);
}

Result<void> SpaceManager::snapshot_delete(const std::string& name) {
    assert(net::Reactor::current() == nullptr);
    auto target = resolve(name);
    if (!target) {
        return target.error();
    }
    if (!target->snapshot) {
        return make_error(
            fmt::format("'{}': snapshot-delete takes NAME@SNAP (a clone goes with destroy)", name), EINVAL);
    }
    std::lock_guard lock(_mutex);
    bool opened = false;
    auto v = hold_locked(target->space, opened);
    if (!v) {
        return v.error();
    }
    Result<void> r;
    if (!(*v)->thin()) {
        r = make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", target->space),
                       EOPNOTSUPP);
    } else if (r = (*v)->thin_remove(target->device); !r) {
        r = make_error(fmt::format("snapshot '{}': {}", name,
                                   r.error().code == ENOENT ? "no such snapshot" : r.error().message),
                       r.error().code);
    }
    if (opened) {
        (void)close_locked(target->space);
    }
    return r;
}

Result<void> SpaceManager::destroy_clone(const Entry& clone) {
    bool opened = false;
    auto v = hold_locked(clone.clone_of, opened);
    if (!v) {
        return v.error();
    }
    Result<void> r;
    if (!(*v)->thin()) {
        r = make_error(
            fmt::format("space '{}' is not thin: '{}' cannot be its clone", clone.clone_of, clone.name),
            EINVAL);
    } else {
        r = (*v)->thin_remove(clone.name);
        if (!r && r.error().code == ENOENT) {
            r = {}; // the pool no longer has it: only the catalog entry is left to remove
        }
    }
    if (opened) {
        (void)close_locked(clone.clone_of);
    }
    if (!r) {
        return make_error(fmt::format("clone '{}': {}", clone.name, r.error().message), r.error().code);
    }
    std::error_code ec;
    fs::remove(entry_path(clone.name), ec);
    log_info("space {}: clone {} destroyed", clone.clone_of, clone.name);
    return {};
}

Result<std::shared_ptr<backstore::Device>> SpaceManager::open_view(const ThinTarget& target) {
    std::shared_ptr<Volume> v = find(target.space);
    if (!v) {
        return make_error(fmt::format("space '{}' is not held by this process", target.space), ENOENT);
    }
    if (!v->thin()) {
        return make_error(fmt::format("space '{}': snapshots need a thin space (--thin)", target.space),
                          EOPNOTSUPP);
    }
    auto view = v->thin_view(target.device);
    if (!view) {
        return make_error(fmt::format("'{}': {}", user_name(target.space, target.device),
                                      target.snapshot ? "no such snapshot" : "no such clone in the pool"),
                          view.error().code);
    }
    return view;
}

void SpaceManager::record_clones(const SpaceStatus& st, const Entry& base) {
    for (const ThinDeviceStatus& d : st.thin_devices) {
        if (d.snapshot) {
            continue;
        }
        // Names come from the members (a hostile disk): save_entry() checks them like any space name.
        auto existing = load_entry(d.name);
        if (existing) {
            if (existing->clone_of != base.name) {
                log_warn("space {}: its clone '{}' is not in the catalog: the name belongs to another space",
                         base.name, d.name);
            }
            continue;
        }
        Entry e;
        e.name = d.name;
        e.uuid = base.uuid;
        e.clone_of = base.name;
        e.layout = base.layout;
        e.copies = base.copies;
        e.block_size = base.block_size;
        e.size = base.size;
        if (auto saved = save_entry(e); !saved) {
            log_warn("space {}: clone '{}': {}", base.name, d.name, saved.error().message);
        } else {
            log_info("space {}: clone {} recorded in the catalog", base.name, d.name);
        }
    }
}

void SpaceManager::add_thin_devices(SpaceStatus& st, const std::vector<thin::DeviceInfo>& devices) const {
    uint64_t cs = st.cluster_size;
    for (const thin::DeviceInfo& d : devices) {
        if (d.name == thin_device_name) {
            continue;
        }
        ThinDeviceStatus t;
        t.name = user_name(st.name, d.name);
        t.snapshot = d.read_only;
        for (const thin::DeviceInfo& o : devices) {
            if (o.id == d.origin) {
                t.origin = user_name(st.name, o.name);
            }
        }
        t.created = d.created_sequence;
        t.mapped_bytes = d.mapped_clusters * cs;
        t.unique_bytes = d.unique_clusters * cs;
        st.thin_devices.push_back(std::move(t));
    }
}

} // namespace ispace::volume
