// Assembly: which members of a space hold its current data, decided from their labels alone. Pure
// functions; the rules and why they are what they are are in docs/dataspaces.md ("Epochs").
//
// The rules, in short:
//  - The freshest label — the highest (epoch, sequence) — is the truth: its member table says who is in
//    sync. Labels carry a random generation id per epoch (DRBD's generation identifiers) because epoch
//    numbers alone collide: two holders that each raised a different half of the members from 5 to 6
//    wrote two different epochs 6.
//  - A member is current only if its own label carries the truth's epoch and generation and the truth
//    lists it active. Nothing "one behind" counts as current (md once treated events − 1 as current, and
//    assembled a member that lacked writes). A member that missed only the last epoch raise (the holder
//    stopped while writing labels: its label has the truth's previous generation) is stale and is
//    resynced from the bitmap.
//  - A member the truth lists as failed or missing is stale if its own label is exactly the last label
//    the truth's writer gave it (MemberEntry::last_epoch/last_generation); anything else means someone
//    wrote to it after it left: the members were written apart (a split). A split is never assembled
//    automatically: the error names both sides and what --force-from would discard.
//  - Every column needs one current copy; a non-redundant layout (stripe, concat) needs every member.
#pragma once

#include "common/result.hpp"
#include "volume/label.hpp"

#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ispace::volume {

// One device given to assembly, and what its label copies said.
struct FoundMember {
    std::string url;            // as the user named it (for messages; no secret)
    std::optional<Label> label; // the freshest valid copy; empty when none is valid
    std::vector<std::string> problems;
};

// What to do with each slot of the space.
enum class SlotPlan : uint8_t {
    current, // in sync: serve reads and writes
    rebuild, // found, but stale (or overruled by --force-from): resync (rebuild mode says how)
    missing, // not found: out (it is marked missing; writes go on without it)
    out,     // found, already out (failed/missing) and stale: resync from the bitmap when it rejoins
};

struct AssemblyPlan {
    Label truth;                              // the label the space is opened from (its member table)
    std::vector<std::optional<size_t>> found; // per slot: the index in the FoundMember list, if found
    std::vector<SlotPlan> slots;
    std::vector<RebuildMode> rebuild; // per slot, for SlotPlan::rebuild and ::out
    bool unclean = false;             // the holder did not close it: dirty regions must be made equal
    bool forced = false;              // --force-from overruled a split
    // Whether the membership differs from what the truth says (a member newly missing or stale), so that
    // the epoch must be raised before the first write.
    bool membership_changed = false;
    std::vector<std::string> notes; // one line per decision, for the log
};

struct AssembleOptions {
    // A split is resolved in favour of this member (URL as given, or member UUID): its side is kept, the
    // other side's members are rebuilt in full from it.
    std::string force_from;
};

// Decides how to assemble a space from `found` (every device named for it). Fails, saying why, when a
// device belongs to another space or to none, when the members were written apart (unless force_from
// names one of them), or when some part of the space has no current copy.
Result<AssemblyPlan> plan_assembly(std::span<const FoundMember> found, const AssembleOptions& options = {});

} // namespace ispace::volume
