#include "volume/assembly.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <tuple>

namespace ispace::volume {
namespace {

enum class Fit : uint8_t {
    current,  // its label is the truth's epoch and generation
    behind,   // it missed the truth's last epoch raise only
    out,      // the truth lists it out, and its label is the last one the truth's writer gave it
    conflict, // someone else wrote its label: written apart
};

Fit fit(const Label& truth, const MemberEntry& entry, const Label& own) {
    bool same = own.epoch == truth.epoch && own.generation == truth.generation;
    bool previous = own.epoch + 1 == truth.epoch && own.generation == truth.previous_generation;
    switch (entry.state) {
    case MemberState::active:
    case MemberState::rebuilding:
    case MemberState::spare:
        if (same) {
            return Fit::current;
        }
        return previous ? Fit::behind : Fit::conflict;
    case MemberState::failed:
    case MemberState::missing:
        // Stale as the writer left it (or one raise behind that: the writer believed it had a label that
        // never landed); or it received the label that recorded its own exit (the write landed although
        // the writer thought it failed), which lists it out too.
        if ((own.epoch == entry.last_epoch && own.generation == entry.last_generation) ||
            (own.epoch + 1 == entry.last_epoch && own.generation == entry.last_previous_generation) || same ||
            previous) {
            return Fit::out;
        }
        return Fit::conflict;
    }
    return Fit::conflict;
}

std::string who(const FoundMember& m) {
    return m.url.empty() ? to_string(m.label->member_uuid) : m.url;
}

std::string side(const std::vector<const FoundMember*>& members) {
    std::string names;
    for (const FoundMember* m : members) {
        names += (names.empty() ? "" : ", ") + who(*m);
    }
    const Label& l = *members.front()->label;
    return fmt::format("[{}] at epoch {} (sequence {}{})", names, l.epoch, l.sequence,
                       l.holder.empty() ? "" : ", last held by " + l.holder);
}

} // namespace

Result<AssemblyPlan> plan_assembly(std::span<const FoundMember> found, const AssembleOptions& options) {
    if (found.empty()) {
        return make_error("no members given", EINVAL);
    }
    std::string unlabeled;
    for (const FoundMember& m : found) {
        if (!m.label) {
            std::string why;
            for (const std::string& p : m.problems) {
                why += (why.empty() ? "" : "; ") + p;
            }
            unlabeled += fmt::format("{}{}: no valid label ({})", unlabeled.empty() ? "" : "\n", m.url,
                                     why.empty() ? "none found" : why);
        }
    }
    if (!unlabeled.empty()) {
        return make_error(unlabeled +
                              "\n(a member whose four label copies are all damaged cannot be recognised: "
                              "leave it out, assemble the others, then replace it)",
                          ENOENT);
    }
    // The freshest label decides which space this is.
    const FoundMember* freshest = &found[0];
    for (const FoundMember& m : found) {
        if (std::tie(m.label->epoch, m.label->sequence) >
            std::tie(freshest->label->epoch, freshest->label->sequence)) {
            freshest = &m;
        }
    }
    const Uuid space = freshest->label->space_uuid;
    std::map<Uuid, const FoundMember*> by_member;
    for (const FoundMember& m : found) {
        if (m.label->space_uuid != space) {
            return make_error(fmt::format("{} belongs to space '{}' ({}), not to '{}' ({})", m.url,
                                          m.label->name, to_string(m.label->space_uuid),
                                          freshest->label->name, to_string(space)),
                              EINVAL);
        }
        if (!by_member.emplace(m.label->member_uuid, &m).second) {
            return make_error(fmt::format("{} and {} are the same member ({}): a device given twice?",
                                          by_member[m.label->member_uuid]->url, m.url,
                                          to_string(m.label->member_uuid)),
                              EINVAL);
        }
    }

    // The truth: the freshest label, or the one --force-from names.
    const FoundMember* chosen = freshest;
    if (!options.force_from.empty()) {
        chosen = nullptr;
        for (const FoundMember& m : found) {
            if (m.url == options.force_from || to_string(m.label->member_uuid) == options.force_from) {
                chosen = &m;
            }
        }
        if (chosen == nullptr) {
            return make_error(
                fmt::format("--force-from {}: not one of the members given", options.force_from), EINVAL);
        }
    }
    AssemblyPlan plan;
    plan.truth = *chosen->label;
    const Label& truth = plan.truth;
    size_t n = truth.members.size();
    plan.found.assign(n, std::nullopt);
    plan.slots.assign(n, SlotPlan::missing);
    plan.rebuild.assign(n, RebuildMode::none);
    auto layout = truth.layout_of();
    if (!layout) {
        return make_error(fmt::format("space '{}': {}", truth.name, layout.error().message), EILSEQ);
    }
    bool redundant = layout->redundant();

    std::vector<Fit> fits(n, Fit::conflict);
    std::vector<const FoundMember*> agree, disagree;
    for (const FoundMember& m : found) {
        size_t slot = n;
        for (size_t s = 0; s < n; ++s) {
            if (truth.members[s].uuid == m.label->member_uuid) {
                slot = s;
            }
        }
        if (slot == n) {
            return make_error(
                fmt::format("{}: was a member of '{}' but is no longer in its member table (replaced "
                            "or removed at epoch {} or before); leave it out",
                            m.url, truth.name, truth.epoch),
                EINVAL);
        }
        plan.found[slot] = size_t(&m - found.data());
        fits[slot] = fit(truth, truth.members[slot], *m.label);
        (fits[slot] == Fit::conflict ? disagree : agree).push_back(&m);
    }

    if (!disagree.empty() && options.force_from.empty()) {
        // Name what each choice would discard: the other side's writes since they parted.
        uint64_t parted = truth.epoch;
        for (const FoundMember* m : disagree) {
            parted = std::min(parted, m->label->epoch);
            for (const MemberEntry& e : truth.members) {
                if (e.uuid == m->label->member_uuid && e.out_epoch != 0) {
                    parted = std::min(parted, e.last_epoch);
                }
            }
        }
        std::string a = side(agree), b = side(disagree);
        return make_error(
            fmt::format(
                "space '{}': the members were written apart (a split) and are not assembled automatically:\n"
                "  {}\n  {}\nthey have differed since epoch {} at the latest.\n"
                "  --force-from {} keeps that side and discards everything written to {} since then "
                "(rebuilt in full from it);\n"
                "  --force-from {} keeps the other side and discards what was written to {} since then.",
                truth.name, a, b, parted, who(*agree.front()), who(*disagree.front()), who(*disagree.front()),
                who(*agree.front())),
            EEXIST);
    }

    for (size_t s = 0; s < n; ++s) {
        const MemberEntry& entry = truth.members[s];
        std::string name = plan.found[s] ? found[*plan.found[s]].url : entry.url;
        if (!plan.found[s]) {
            if (entry.state == MemberState::active || entry.state == MemberState::rebuilding) {
                plan.slots[s] = SlotPlan::missing;
                plan.membership_changed = true;
                plan.notes.push_back(fmt::format("slot {} ({}): not found; it is marked missing", s, name));
            } else {
                plan.slots[s] = SlotPlan::out;
                plan.notes.push_back(fmt::format("slot {} ({}): not found; {} since epoch {}", s, name,
                                                 to_string(entry.state), entry.out_epoch));
            }
            continue;
        }
        const Label& own = *found[*plan.found[s]].label;
        switch (fits[s]) {
        case Fit::current:
            if (entry.state == MemberState::rebuilding) {
                plan.slots[s] = SlotPlan::rebuild;
                plan.rebuild[s] = entry.rebuild == RebuildMode::none ? RebuildMode::full : entry.rebuild;
                plan.notes.push_back(fmt::format(
                    "slot {} ({}): rebuilding ({}), resumed from {} bytes", s, name,
                    plan.rebuild[s] == RebuildMode::full ? "full" : "delta", entry.recovery_offset));
            } else {
                plan.slots[s] = SlotPlan::current;
            }
            break;
        case Fit::behind:
            // It missed only the last epoch raise: nothing acknowledged after that raise can be missing
            // from it except what the bitmap marks (writes in flight when the holder stopped).
            if (redundant) {
                plan.slots[s] = SlotPlan::rebuild;
                plan.rebuild[s] = RebuildMode::delta;
                plan.membership_changed = true;
                plan.notes.push_back(
                    fmt::format("slot {} ({}): one epoch behind ({} < {}): stale, resynced from the "
                                "bitmap",
                                s, name, own.epoch, truth.epoch));
            } else {
                plan.slots[s] = SlotPlan::current; // its only copy: nothing to resync from
                plan.notes.push_back(
                    fmt::format("slot {} ({}): missed the last label write; it is the only copy "
                                "of its data",
                                s, name));
            }
            break;
        case Fit::out:
            plan.slots[s] = redundant ? SlotPlan::out : SlotPlan::current;
            plan.rebuild[s] = RebuildMode::delta;
            plan.notes.push_back(
                fmt::format("slot {} ({}): {} since epoch {}; resynced from the bitmap when it "
                            "rejoins",
                            s, name, to_string(entry.state), entry.out_epoch));
            break;
        case Fit::conflict: // only with --force-from: the other side of the split
            plan.slots[s] = SlotPlan::rebuild;
            plan.rebuild[s] = RebuildMode::full;
            plan.forced = true;
            plan.membership_changed = true;
            plan.notes.push_back(
                fmt::format("slot {} ({}): written apart (epoch {}); --force-from {}: its writes "
                            "are discarded and it is rebuilt in full",
                            s, name, own.epoch, options.force_from));
            break;
        }
    }

    // Every column needs a current copy.
    for (uint32_t column = 0; column < layout->columns(); ++column) {
        bool any = false;
        std::string why;
        for (uint32_t copy = 0; copy < layout->copies; ++copy) {
            uint32_t s = member_of(*layout, column, copy);
            if (plan.slots[s] == SlotPlan::current) {
                any = true;
            }
            std::string state = plan.slots[s] == SlotPlan::missing ? "not found"
                                : plan.slots[s] == SlotPlan::out
                                    ? std::string(to_string(truth.members[s].state))
                                    : "stale";
            why += fmt::format("{}{} ({})", why.empty() ? "" : ", ",
                               plan.found[s] ? found[*plan.found[s]].url : truth.members[s].url, state);
        }
        if (!any) {
            return make_error(
                fmt::format("space '{}': no in-sync copy of {}: {}", truth.name,
                            layout->columns() > 1 ? fmt::format("column {}", column) : "its data", why),
                ENODEV);
        }
    }
    plan.unclean = !truth.clean;
    return plan;
}

} // namespace ispace::volume
