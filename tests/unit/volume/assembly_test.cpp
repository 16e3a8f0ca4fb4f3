// Epochs and assembly: the rules that decide which members are current, driven through the same label
// transitions (LabelBook) the volume makes, on simulated members whose labels we write or do not.
#include "volume/assembly.hpp"
#include "volume/epoch.hpp"

#include <gtest/gtest.h>

#include <map>

namespace ispace::volume {
namespace {

constexpr uint64_t member_size = 64 << 20;

// Members as their disks see them: each holds the label last written to it.
class Cluster {
public:
    Cluster(unsigned members, LayoutKind kind = LayoutKind::mirror) {
        auto plan = plan_member(member_size, 512, member_size * members, 1 << 20);
        Label l;
        l.space_uuid = make_uuid();
        l.name = "space";
        l.layout = kind;
        l.copies = kind == LayoutKind::mirror ? members : 1;
        l.block_size = 512;
        l.chunk = kind == LayoutKind::stripe ? 128 << 10 : 0;
        l.data_offset = plan->data_offset;
        l.data_size = plan->data_size;
        l.member_size = member_size;
        l.region_size = kind == LayoutKind::mirror ? 1 << 20 : 0;
        if (l.region_size) {
            l.areas.push_back(plan->bitmap);
        }
        for (unsigned i = 0; i < members; ++i) {
            MemberEntry e;
            e.uuid = make_uuid();
            e.data_bytes = plan->data_size;
            e.url = "m" + std::to_string(i);
            l.members.push_back(e);
        }
        auto layout = l.layout_of();
        l.space_size = capacity(*layout);
        l.generation = random_u64();
        book = LabelBook(l, {});
        disks.resize(members);
        write({});
    }

    // Writes the book's current labels to `slots` (all when empty).
    void write(std::vector<uint32_t> slots) {
        if (slots.empty()) {
            for (uint32_t s = 0; s < disks.size(); ++s) {
                slots.push_back(s);
            }
        }
        for (uint32_t s : slots) {
            disks[s] = book.label_for(s, member_size, book.truth().data_offset);
            book.written(s);
        }
    }

    std::vector<FoundMember> found(std::vector<uint32_t> slots) const {
        std::vector<FoundMember> out;
        for (uint32_t s : slots) {
            out.push_back({"m" + std::to_string(s), disks[s], {}});
        }
        return out;
    }

    // A holder that opens the space from `slots` and records what the plan says, as the volume does.
    LabelBook open_from(const AssemblyPlan& plan) {
        std::vector<Written> written(plan.truth.members.size(), Written::of(plan.truth));
        for (size_t s = 0; s < plan.found.size(); ++s) {
            if (plan.found[s]) {
                written[s] = Written::of(disks[s]);
            }
        }
        LabelBook b(plan.truth, written);
        for (size_t s = 0; s < plan.slots.size(); ++s) {
            if (plan.slots[s] == SlotPlan::missing) {
                b.member_out(uint32_t(s), MemberState::missing, false);
            }
        }
        if (plan.unclean || plan.membership_changed) {
            b.raise_epoch();
        }
        b.truth().clean = false;
        return b;
    }

    LabelBook book;
    std::vector<Label> disks;
};

std::vector<SlotPlan> slots_of(const Result<AssemblyPlan>& plan) {
    return plan ? plan->slots : std::vector<SlotPlan>{};
}

TEST(Assembly, AllMembersCurrentAfterACleanClose) {
    Cluster c(3);
    c.book.truth().clean = true;
    c.book.bump_sequence();
    c.write({});
    auto plan = plan_assembly(c.found({0, 1, 2}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->slots, std::vector<SlotPlan>(3, SlotPlan::current));
    EXPECT_FALSE(plan->unclean);
    EXPECT_FALSE(plan->membership_changed);
}

TEST(Assembly, AMemberNotFoundIsMissingAndTheRestGoesOn) {
    Cluster c(3);
    auto plan = plan_assembly(c.found({0, 2}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(slots_of(plan),
              (std::vector<SlotPlan>{SlotPlan::current, SlotPlan::missing, SlotPlan::current}));
    EXPECT_TRUE(plan->membership_changed);
    EXPECT_TRUE(plan->unclean); // never closed
}

TEST(Assembly, AFailedMemberIsStaleNotCurrentAndComesBackByDelta) {
    Cluster c(2);
    c.book.member_out(1, MemberState::failed); // member 1 errored: epoch raised on the survivor only
    c.write({0});
    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(slots_of(plan), (std::vector<SlotPlan>{SlotPlan::current, SlotPlan::out}));
    EXPECT_EQ(plan->rebuild[1], RebuildMode::delta);
    // Alone, the stale member cannot be assembled: it is not current anywhere.
    auto alone = plan_assembly(c.found({1}));
    ASSERT_TRUE(alone) << "its own label is the freshest it knows; it is current by itself";
    // ...but assembled with the survivor, whose epoch is higher, it never is.
    EXPECT_NE(plan->slots[1], SlotPlan::current);
}

TEST(Assembly, OneEpochBehindIsNeverCurrent) {
    // The md bug to avoid ("events - 1 counts as current"): the holder raised the epoch, the label
    // reached member 0 and the holder stopped before it reached member 1.
    Cluster c(2);
    c.book.raise_epoch();
    c.write({0});
    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->slots[0], SlotPlan::current);
    EXPECT_EQ(plan->slots[1], SlotPlan::rebuild);
    EXPECT_EQ(plan->rebuild[1], RebuildMode::delta);
    EXPECT_TRUE(plan->membership_changed);
    // Two behind while listed active cannot happen honestly: it is treated as written apart.
    c.book.raise_epoch();
    c.write({0});
    auto two = plan_assembly(c.found({0, 1}));
    ASSERT_FALSE(two);
    EXPECT_NE(two.error().message.find("written apart"), std::string::npos);
}

TEST(Assembly, ASplitIsRefusedNamingBothSidesAndForceFromResolvesIt) {
    // Holder H1 loses member 1 and writes on member 0; later H2 finds only member 1, marks member 0
    // missing and writes there. Each side raised the epoch by one from the same number.
    Cluster c(2);
    LabelBook h1 = c.book;
    h1.member_out(1, MemberState::failed);
    c.book = h1;
    c.write({0});
    auto h2_plan = plan_assembly(c.found({1}));
    ASSERT_TRUE(h2_plan) << h2_plan.error().message;
    c.book = c.open_from(*h2_plan);
    c.write({1});
    ASSERT_EQ(c.disks[0].epoch, c.disks[1].epoch) << "the epoch numbers collide; only the generations differ";

    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_FALSE(plan);
    const std::string& m = plan.error().message;
    EXPECT_NE(m.find("written apart"), std::string::npos) << m;
    EXPECT_NE(m.find("[m0]"), std::string::npos) << m;
    EXPECT_NE(m.find("[m1]"), std::string::npos) << m;
    EXPECT_NE(m.find("--force-from m0"), std::string::npos) << m;
    EXPECT_NE(m.find("discards"), std::string::npos) << m;

    AssembleOptions keep0{"m0"};
    auto forced = plan_assembly(c.found({0, 1}), keep0);
    ASSERT_TRUE(forced) << forced.error().message;
    EXPECT_TRUE(forced->forced);
    EXPECT_EQ(forced->slots[0], SlotPlan::current);
    EXPECT_EQ(forced->slots[1], SlotPlan::rebuild);
    EXPECT_EQ(forced->rebuild[1], RebuildMode::full);
    AssembleOptions keep1{"m1"};
    forced = plan_assembly(c.found({0, 1}), keep1);
    ASSERT_TRUE(forced) << forced.error().message;
    EXPECT_EQ(forced->slots[1], SlotPlan::current);
    EXPECT_EQ(forced->rebuild[0], RebuildMode::full);
    AssembleOptions nobody{"m7"};
    EXPECT_FALSE(plan_assembly(c.found({0, 1}), nobody));
}

TEST(Assembly, ASplitIsFoundEvenWhenTheOtherSideIsAtALowerEpoch) {
    // Epoch numbers alone would call member 1 merely stale here: H1 went on raising epochs after
    // dropping it, while H2 wrote to it at a lower epoch number.
    Cluster c(2);
    c.book.member_out(1, MemberState::failed);
    c.book.raise_epoch();
    c.book.raise_epoch();
    c.write({0});
    Cluster other = c; // H2's world: only member 1, which still says epoch 1 and both active
    auto h2 = plan_assembly(other.found({1}));
    ASSERT_TRUE(h2) << h2.error().message;
    other.book = other.open_from(*h2);
    other.write({1});
    c.disks[1] = other.disks[1];
    ASSERT_LT(c.disks[1].epoch, c.disks[0].epoch);
    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_FALSE(plan);
    EXPECT_NE(plan.error().message.find("written apart"), std::string::npos) << plan.error().message;
}

TEST(Assembly, AMemberMissingAtOpenThatWasOneRaiseBehindIsStaleNotSplit) {
    // The labels of a raise reached member 0 only; the next holder finds member 1 unreachable, marks it
    // missing (believing it holds the label member 0 has) and writes on. Member 1 comes back.
    Cluster c(2);
    c.book.raise_epoch();
    c.write({0});
    auto h2 = plan_assembly(c.found({0}));
    ASSERT_TRUE(h2) << h2.error().message;
    c.book = c.open_from(*h2);
    c.write({0});
    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->slots[1], SlotPlan::out);
    EXPECT_EQ(plan->rebuild[1], RebuildMode::delta);
}

TEST(Assembly, AMemberThatComesBackAndResyncsIsCurrentAgain) {
    Cluster c(3);
    c.book.member_out(2, MemberState::failed);
    c.write({0, 1});
    c.book.member_rejoins(2, RebuildMode::delta);
    c.write({});
    auto mid = plan_assembly(c.found({0, 1, 2}));
    ASSERT_TRUE(mid) << mid.error().message;
    EXPECT_EQ(mid->slots[2], SlotPlan::rebuild);
    EXPECT_EQ(mid->rebuild[2], RebuildMode::delta);
    c.book.checkpoint(2, 8 << 20);
    c.write({});
    c.book.member_in_sync(2);
    c.write({});
    auto done = plan_assembly(c.found({0, 1, 2}));
    ASSERT_TRUE(done) << done.error().message;
    EXPECT_EQ(done->slots, std::vector<SlotPlan>(3, SlotPlan::current));
}

TEST(Assembly, AFullRebuildInterruptedResumesFullFromItsCheckpoint) {
    Cluster c(2);
    c.book.member_out(1, MemberState::failed);
    c.write({0});
    MemberEntry fresh;
    fresh.uuid = make_uuid();
    fresh.data_bytes = c.book.truth().members[1].data_bytes;
    fresh.url = "m1";
    c.book.replace_member(1, fresh);
    c.write({});
    c.book.checkpoint(1, 4 << 20);
    c.write({});
    auto plan = plan_assembly(c.found({0, 1}));
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->slots[1], SlotPlan::rebuild);
    EXPECT_EQ(plan->rebuild[1], RebuildMode::full);
    EXPECT_EQ(plan->truth.members[1].recovery_offset, 4u << 20);
    // The replaced member's old disk is no longer a member.
    Cluster old = c;
    old.disks[1].member_uuid = make_uuid();
    auto refused = plan_assembly(old.found({0, 1}));
    ASSERT_FALSE(refused);
}

TEST(Assembly, RefusesForeignUnlabeledAndDuplicateDevices) {
    Cluster a(2), b(2);
    auto foreign = plan_assembly(std::vector<FoundMember>{{"m0", a.disks[0], {}}, {"x", b.disks[1], {}}});
    ASSERT_FALSE(foreign);
    EXPECT_NE(foreign.error().message.find("belongs to space"), std::string::npos) << foreign.error().message;
    auto blank = plan_assembly(
        std::vector<FoundMember>{{"m0", a.disks[0], {}}, {"blank", std::nullopt, {"no magic"}}});
    ASSERT_FALSE(blank);
    EXPECT_NE(blank.error().message.find("blank: no valid label (no magic)"), std::string::npos);
    auto twice = plan_assembly(std::vector<FoundMember>{{"m0", a.disks[0], {}}, {"again", a.disks[0], {}}});
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.error().message.find("same member"), std::string::npos);
}

TEST(Assembly, NothingCurrentMeansNoAssembly) {
    Cluster c(2);
    c.book.member_out(1, MemberState::failed);
    c.write({0});
    auto plan = plan_assembly(c.found({1}));
    // Member 1's own label is all it knows: by itself it looks current (nothing says otherwise), so it
    // assembles — which is why assembly wants every member it can reach, and status names the missing.
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->slots[0], SlotPlan::missing);
    // A stripe with a member missing has no copy of that column.
    Cluster s(3, LayoutKind::stripe);
    auto stripe = plan_assembly(s.found({0, 2}));
    ASSERT_FALSE(stripe);
    EXPECT_NE(stripe.error().message.find("no in-sync copy of column 1"), std::string::npos)
        << stripe.error().message;
}

TEST(Assembly, EpochTransitionsKeepTheOrder) {
    LabelBook b;
    b.truth().members.resize(2);
    b = LabelBook(b.truth(), {});
    uint64_t e = b.truth().epoch, g = b.truth().generation;
    b.bump_sequence();
    EXPECT_EQ(b.truth().epoch, e);
    b.raise_epoch();
    EXPECT_EQ(b.truth().epoch, e + 1);
    EXPECT_EQ(b.truth().previous_generation, g);
    EXPECT_NE(b.truth().generation, g);
    b.written(1);
    b.member_out(1, MemberState::missing);
    EXPECT_EQ(b.truth().members[1].out_epoch, e + 2);
    EXPECT_EQ(b.truth().members[1].last_epoch, e + 1);
    EXPECT_EQ(b.truth().epoch, e + 2);
}

} // namespace
} // namespace ispace::volume
