// The backstore kinds: an open set, each kind a folder plus one registration.
//
// A LUN spec ("/srv/a.img,size=1G,thin", "memory:1G", and, registered from the layers above,
// "iscsi://host/iqn/0" or "space:NAME") is read by the kind that claims it. The kind checks its own
// options and returns a Spec, which can say what it is and open the device. Nothing here knows the
// kinds: src/backstore registers file, block, memory and null (register_builtin_kinds, one line each);
// a remote LUN or a data-space registers itself from its own layer, so the backstore layer never
// depends on the initiator or the volume manager (docs/architecture.md, "Layers").
//
// Why explicit registration and not self-registering static objects: the layers are static libraries,
// and a linker drops an object file nobody references, so a kind would silently vanish from a binary
// that does not happen to use a symbol of its folder. The runtime calls the registration functions in
// one place, in the order that decides who claims an ambiguous spec.
#pragma once

#include "backstore/device.hpp"
#include "common/result.hpp"

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::backstore {

// A LUN spec as a kind understood it. Immutable once parsed.
class Spec {
public:
    virtual ~Spec() = default;
    virtual std::string_view kind() const = 0;
    // The spec as the administrator wrote it, with any secret masked: for logs and error messages.
    virtual std::string describe() const = 0;
    // A regular file the device lives in, when there is one: per-LU state such as persistent
    // reservations is kept beside it (FILE.pr). Empty otherwise.
    virtual std::string backing_file() const { return {}; }
    // What holds the device's data, apart from how it is opened: the file's or block device's path, the
    // remote LUN's address, the data-space's name; empty for a kind whose data ends with the device
    // (memory, null). Two specs of one kind with the same backing serve the same data ("a.img" and
    // "a.img,size=2G,thin"), so a LUN whose spec changes that way keeps its identity (VPD 83h).
    virtual std::string backing() const { return {}; }
    // Checks what can be checked without creating or changing anything (the path's directory exists,
    // an existing file's size agrees with size=, the file is not locked by another process), so that
    // a configuration is refused before anything is allocated on disk. Default: nothing to check.
    virtual Result<void> check() const { return {}; }
    // Opens (or creates) the device. May block (a file is created and allocated, a remote target is
    // logged in to): never call it on a reactor thread.
    virtual Result<std::unique_ptr<Device>> open() const = 0;
    // The size the spec asks for, in bytes, when it names one ("size=1G", "memory:1G").
    virtual std::optional<uint64_t> size() const { return std::nullopt; }
    // The spec as written with its size replaced by `bytes`: how a LUN resized at run time is written
    // back to the configuration, so that the next start asks for the size it has. Empty when the kind's
    // spec cannot name a size (the LUN cannot be resized through its spec).
    virtual std::string with_size(uint64_t bytes) const {
        (void)bytes;
        return {};
    }
    // Whether the device's data outlives the process (a file, a block device, a remote LUN) or not
    // (memory, null). The configuration keeps the identity (VPD 83h) of the first kind across restarts;
    // the second comes back empty, so a new identity is the honest one.
    virtual bool keeps_data() const { return true; }
};

struct Kind {
    std::string name;   // "file", "memory", ...
    std::string syntax; // "memory:SIZE[,block=512|4096]", for help texts and errors
    std::string help;   // one line: what the kind is
    // Whether this kind reads `text`. The kind registered with `fallback` claims what no other does.
    std::function<bool(std::string_view text)> claims;
    std::function<Result<std::unique_ptr<Spec>>(std::string_view text)> parse;
    bool fallback = false;
};

// Thread-safe; kinds are normally registered once at start-up, before any spec is parsed.
class Registry {
public:
    // Fails when a kind of that name exists, or a second fallback is registered.
    Result<void> add(Kind kind);
    // The spec read by the first kind (in registration order) that claims it, else by the fallback.
    // Errors quote the spec (secrets masked by the kind) and say what was expected.
    Result<std::unique_ptr<Spec>> parse(std::string_view text) const;
    // The registered kinds' names and syntax lines, in order (for --help and errors).
    std::vector<std::string> names() const;
    std::string syntax_help() const;

private:
    std::string syntax_line() const; // under _mutex
    mutable std::mutex _mutex;
    std::vector<Kind> _kinds;
};

// The kinds of src/backstore: block (a path that is a block device), memory, null, and file (any other
// path; the fallback). Adding a kind here is one line.
void register_builtin_kinds(Registry& registry);

} // namespace ispace::backstore
