// SpaceManager: the catalog is only a cache of the labels (assemble rebuilds it), refusals write nothing,
// one holder at a time (persistent reservations on real remote members), replace and add-member rebuild,
// destroy needs its confirmation, and space:NAME exports a space.
#include "volume/space_manager.hpp"

#include "backstore/memory/memory_device.hpp"
#include "fault_device.hpp"
#include "volume/member_io.hpp"
#include "volume/remote_device.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;
using test::FaultDevice;
using test::random_bytes;

class SpaceManagerTest : public ::testing::Test {
protected:
    SpaceManagerTest() : group(2), io(group.at(1)) { group.start(); }
    ~SpaceManagerTest() override {
        managers.clear();
        group.stop();
    }

    // A member "URL" the injected opener knows: a memory disk behind a FaultDevice, kept across opens.
    std::string disk(const std::string& name, uint64_t bytes = 48 << 20, uint32_t block = 512) {
        auto d = std::make_shared<backstore::MemoryDevice>(bytes, block);
        disks[name] = d;
        faults[name] = std::make_shared<FaultDevice>(d);
        return name;
    }
    SpaceManager& manager(const std::string& home) {
        SpaceManagerOptions o;
        o.home = home;
        o.reactors = &group;
        o.volume.sweep_interval = 50ms;
        o.volume.retry_min = 50ms;
        o.volume.retry_max = 200ms;
        o.open_member = [this](const std::string& url) -> Result<std::unique_ptr<backstore::Device>> {
            auto it = faults.find(url);
            if (it == faults.end() || unreachable.count(url)) {
                return make_error(url + ": cannot connect (no such member)", ECONNREFUSED);
            }
            return std::unique_ptr<backstore::Device>(std::make_unique<test::SharedDevice>(it->second));
        };
        managers.push_back(std::make_unique<SpaceManager>(o));
        return *managers.back();
    }
    CreateRequest mirror(const std::string& name, std::vector<std::string> members) {
        CreateRequest r;
        r.name = name;
        r.layout = LayoutKind::mirror;
        r.members = std::move(members);
        return r;
    }
    uint64_t writes_to_all() {
        uint64_t n = 0;
        for (auto& [_, f] : faults) {
            n += f->writes;
        }
        return n;
    }

    test::TempDir dir;
    net::ReactorGroup group;
    test::Submitter io;
    std::map<std::string, std::shared_ptr<backstore::MemoryDevice>> disks;
    std::map<std::string, std::shared_ptr<FaultDevice>> faults;
    std::set<std::string> unreachable;
    std::vector<std::unique_ptr<SpaceManager>> managers;
};

TEST_F(SpaceManagerTest, CreateOpenWriteCloseAndReopen) {
    auto& m = manager(dir.file("home"));
    auto created = m.create(mirror("data", {disk("a"), disk("b")}));
    ASSERT_TRUE(created) << created.error().message;
    EXPECT_EQ(created->members.size(), 2u);
    EXPECT_TRUE(std::filesystem::exists(dir.file("home/spaces/data.json")));
    EXPECT_TRUE(std::filesystem::exists(dir.file("home/host.json")));
    auto v = m.open("data");
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_FALSE(m.open("data")) << "a space held already is not opened twice";
    auto data = random_bytes(1 << 20, 1);
    {
        VolumeDevice d(*v);
        ASSERT_EQ(io.write(d, 0, data), 0);
    }
    auto st = m.status("data");
    ASSERT_TRUE(st);
    EXPECT_TRUE(st->open);
    EXPECT_EQ(st->members[1].state, MemberState::active);
    ASSERT_TRUE(m.close("data"));
    st = m.status("data");
    ASSERT_TRUE(st) << st.error().message;
    EXPECT_FALSE(st->open);
    EXPECT_TRUE(st->clean);
    v = m.open("data");
    ASSERT_TRUE(v);
    VolumeDevice d(*v);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(d, 0, back), 0);
    EXPECT_EQ(back, data);
    auto listed = m.list();
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].name, "data");
}

TEST_F(SpaceManagerTest, RefusedCreatesWriteNothingAnywhere) {
    auto& m = manager(dir.file("home"));
    disk("a");
    disk("b");
    disk("big4k", 48 << 20, 4096);
    disk("tiny", 1 << 20);
    ASSERT_TRUE(m.create(mirror("first", {"a", "b"})));
    uint64_t before = writes_to_all();
    auto reused = m.create(mirror("second", {"a", disk("c")}));
    ASSERT_FALSE(reused);
    EXPECT_NE(reused.error().message.find("member of space 'first'"), std::string::npos)
        << reused.error().message;
    unreachable.insert("d");
    disk("d");
    auto away = m.create(mirror("third", {disk("e"), "d"}));
    ASSERT_FALSE(away);
    EXPECT_NE(away.error().message.find("d: cannot connect"), std::string::npos) << away.error().message;
    auto mixed = m.create(mirror("fourth", {disk("f"), "big4k"}));
    ASSERT_FALSE(mixed);
    EXPECT_NE(mixed.error().message.find("block size"), std::string::npos) << mixed.error().message;
    auto small = m.create(mirror("fifth", {disk("g"), "tiny"}));
    ASSERT_FALSE(small);
    EXPECT_NE(small.error().message.find("too small"), std::string::npos) << small.error().message;
    auto twice = m.create(mirror("sixth", {disk("h"), "h"}));
    ASSERT_FALSE(twice);
    EXPECT_EQ(writes_to_all(), before) << "a refused create wrote to a member";
    // --force reuses a member of another space.
    CreateRequest forced = mirror("second", {"a", "c"});
    forced.force = true;
    EXPECT_TRUE(m.create(forced));
}

TEST_F(SpaceManagerTest, ACreateSaysWhichMemberHasRoomTheLayoutLeavesUnused) {
    auto& m = manager(dir.file("home"));
    // A mirror of 96 MiB and 32 MiB members: the larger one gives the smallest's size, and is named.
    auto uneven = m.create(mirror("uneven", {disk("big", 96 << 20), disk("small", 32 << 20)}));
    ASSERT_TRUE(uneven) << uneven.error().message;
    ASSERT_EQ(uneven->notes.size(), 1u);
    EXPECT_EQ(uneven->notes[0].rfind("big has 64 MiB the mirror does not use", 0), 0u) << uneven->notes[0];
    EXPECT_NE(uneven->notes[0].find("smallest member (small)"), std::string::npos) << uneven->notes[0];
    // Members of one size, or a --size that asks for less on purpose, or a concat (it uses every byte):
    // nothing to say.
    auto even = m.create(mirror("even", {disk("c"), disk("d")}));
    ASSERT_TRUE(even) << even.error().message;
    EXPECT_TRUE(even->notes.empty());
    CreateRequest sized = mirror("sized", {disk("e", 96 << 20), disk("f", 32 << 20)});
    sized.size = 8 << 20;
    auto smaller = m.create(sized);
    ASSERT_TRUE(smaller) << smaller.error().message;
    EXPECT_TRUE(smaller->notes.empty());
    CreateRequest concat = mirror("joined", {disk("g", 96 << 20), disk("h", 32 << 20)});
    concat.layout = LayoutKind::concat;
    auto joined = m.create(concat);
    ASSERT_TRUE(joined) << joined.error().message;
    EXPECT_TRUE(joined->notes.empty());
    // A stripe gives the smallest member's size from each: the larger is named.
    CreateRequest stripe = mirror("striped", {disk("i", 96 << 20), disk("j", 32 << 20)});
    stripe.layout = LayoutKind::stripe;
    auto striped = m.create(stripe);
    ASSERT_TRUE(striped) << striped.error().message;
    ASSERT_EQ(striped->notes.size(), 1u);
    EXPECT_EQ(striped->notes[0].rfind("i has 64 MiB the stripe does not use", 0), 0u) << striped->notes[0];
}

TEST_F(SpaceManagerTest, AssembleRebuildsTheCatalogFromLabelsAloneEvenWithDamagedCopies) {
    auto& first = manager(dir.file("home1"));
    ASSERT_TRUE(first.create(mirror("photos", {disk("a"), disk("b")})));
    auto v = first.open("photos");
    ASSERT_TRUE(v);
    auto data = random_bytes(2 << 20, 2);
    {
        VolumeDevice d(*v);
        ASSERT_EQ(io.write(d, 1 << 20, data), 0);
    }
    ASSERT_TRUE(first.close("photos"));
    // Three of member a's four label copies overwritten.
    auto offsets = label_offsets(disks["a"]->geometry().bytes());
    std::vector<uint8_t> junk = random_bytes(label_size, 3);
    for (unsigned c : {0u, 1u, 3u}) {
        ASSERT_EQ(member_io(group.at(0), *disks["a"], backstore::IoOp::write, offsets[c], junk), 0);
    }
    // An empty home: the catalog comes back from the labels.
    auto& second = manager(dir.file("home2"));
    auto assembled = second.assemble({"a", "b"});
    ASSERT_TRUE(assembled) << assembled.error().message;
    EXPECT_EQ(assembled->name, "photos");
    auto opened = second.open("photos");
    ASSERT_TRUE(opened) << opened.error().message;
    VolumeDevice d(*opened);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(d, 1 << 20, back), 0);
    EXPECT_EQ(back, data);
    ASSERT_TRUE(second.close("photos"));
    // Its labels were repaired by the open's label write.
    EXPECT_EQ(read_member_labels(group.at(0), *disks["a"]).valid, label_copies);
}

TEST_F(SpaceManagerTest, ReplaceRebuildsTheNewMemberInFull) {
    auto& m = manager(dir.file("home"));
    ASSERT_TRUE(m.create(mirror("work", {disk("a"), disk("b")})));
    auto v = m.open("work");
    ASSERT_TRUE(v);
    VolumeDevice d(*v);
    auto data = random_bytes(4 << 20, 4);
    ASSERT_EQ(io.write(d, 0, data), 0);
    faults["b"]->set(FaultDevice::Mode::fail);
    ASSERT_EQ(io.write(d, 0, data), 0);
    auto replaced = m.replace("work", "b", disk("c"));
    ASSERT_TRUE(replaced) << replaced.error().message;
    ASSERT_TRUE((*v)->wait_resync(30s));
    auto st = m.status("work");
    ASSERT_TRUE(st);
    EXPECT_EQ(st->members[1].url, "c");
    EXPECT_EQ(st->members[1].state, MemberState::active);
    std::vector<uint8_t> direct(data.size());
    uint64_t offset = (*v)->truth_at_open().data_offset;
    ASSERT_EQ(member_io(group.at(0), *disks["c"], backstore::IoOp::read, offset, direct), 0);
    EXPECT_EQ(direct, data);
    EXPECT_FALSE(m.replace("work", "zzz", disk("y")));
}

// A thin mirror's new members (replace while held, add-member while closed) get the map before they are
// written: each one alone later opens the space with every write in place.
// Snapshots and clones through the manager: names resolve (NAME, NAME@SNAP, a clone by its own name), a
// space that is not held is opened for the verb and closed again, a clone's catalog entry comes back with
// an assemble into an empty home (the pool's device table is the truth), destroying the space is refused
// while its pool holds them, and a clone is destroyed by name.
TEST_F(SpaceManagerTest, SnapshotsAndClonesByName) {
    auto& m = manager(dir.file("home"));
    auto plain = m.create(mirror("plain", {disk("p"), disk("q")}));
    ASSERT_TRUE(plain) << plain.error().message;
    uint64_t writes = writes_to_all();
    auto refused = m.snapshot("plain", "s");
    ASSERT_FALSE(refused);
    EXPECT_EQ(writes_to_all(), writes) << "refused without writing anything";
    EXPECT_NE(refused.error().message.find("snapshots need a thin space (--thin)"), std::string::npos);
    EXPECT_FALSE(m.find("plain")) << "opened for the verb, closed again";

    CreateRequest r = mirror("vm", {disk("a"), disk("b")});
    r.thin = true;
    r.size = 256 << 20;
    ASSERT_TRUE(m.create(r));
    auto data = random_bytes(64 << 10, 60);
    {
        auto v = m.open("vm");
        ASSERT_TRUE(v);
        VolumeDevice d(*v);
        ASSERT_EQ(io.write(d, 8 << 20, data), 0);
        auto t = m.snapshot("vm", "s1"); // held: taken on the open volume
        ASSERT_TRUE(t) << t.error().message;
        EXPECT_GE(t->pause_ms, t->create_ms);
        ASSERT_EQ(io.write(d, 8 << 20, random_bytes(64 << 10, 61)), 0);
        ASSERT_TRUE(m.close("vm"));
    }
    EXPECT_EQ(m.snapshot("vm", "s1").error().code, EEXIST);
    EXPECT_EQ(m.resolve("vm@a@b").error().code, EINVAL);
    EXPECT_EQ(m.resolve("vm@").error().code, EINVAL);
    EXPECT_EQ(m.clone("vm", "c").error().code, EINVAL) << "a clone is made from a snapshot";
    EXPECT_EQ(m.clone("vm@s1", "plain").error().code, EEXIST) << "a catalog name";
    auto c = m.clone("vm@s1", "c");
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->clone_of, "vm");
    auto target = m.resolve("c");
    ASSERT_TRUE(target);
    EXPECT_EQ(target->space, "vm");
    EXPECT_TRUE(target->clone);
    target = m.resolve("c@s2");
    ASSERT_TRUE(target);
    EXPECT_EQ(target->device, "c@s2") << "a snapshot of the clone";
    ASSERT_TRUE(m.snapshot("c", "s2"));
    EXPECT_FALSE(m.open("c")) << "a clone has no members of its own";

    // The catalog is a cache: an empty home learns the clone back from the pool.
    auto& fresh = manager(dir.file("home2"));
    ASSERT_TRUE(fresh.assemble({"a", "b"}));
    auto st = fresh.status("vm");
    ASSERT_TRUE(st) << st.error().message;
    std::set<std::string> names;
    for (const ThinDeviceStatus& t : st->thin_devices) {
        names.insert(t.name + (t.snapshot ? ":snapshot" : ":clone") + "<" + t.origin);
    }
    EXPECT_EQ(names, (std::set<std::string>{"vm@s1:snapshot<vm", "c:clone<vm@s1", "c@s2:snapshot<c"}));
    auto cs = fresh.status("c");
    ASSERT_TRUE(cs) << cs.error().message;
    EXPECT_EQ(cs->clone_of, "vm");

    // Reads through views of a space this manager holds.
    ASSERT_TRUE(fresh.open("vm"));
    auto snap = fresh.open_view(*fresh.resolve("vm@s1"));
    auto clone = fresh.open_view(*fresh.resolve("c"));
    ASSERT_TRUE(snap && clone);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(**snap, 8 << 20, back), 0);
    EXPECT_EQ(back, data);
    ASSERT_EQ(io.read(**clone, 8 << 20, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(fresh.snapshot_delete("vm@s1").error().code, EBUSY) << "in use";
    snap->reset();
    clone->reset();
    ASSERT_TRUE(fresh.close("vm"));

    auto destroyed = fresh.destroy("vm", true);
    ASSERT_FALSE(destroyed);
    EXPECT_NE(destroyed.error().message.find("snapshots or clones"), std::string::npos);
    ASSERT_TRUE(fresh.snapshot_delete("vm@s1"));
    ASSERT_TRUE(fresh.snapshot_delete("c@s2"));
    ASSERT_TRUE(fresh.destroy("c", true));
    EXPECT_FALSE(fresh.status("c"));
    ASSERT_TRUE(fresh.destroy("vm", true)) << "nothing left in its pool";
}

TEST_F(SpaceManagerTest, ThinReplaceAndAddMemberCarryTheMap) {
    auto& m = manager(dir.file("home"));
    CreateRequest r = mirror("thin", {disk("a"), disk("b")});
    r.thin = true;
    r.size = 512 << 20; // far more than 48 MiB members
    auto created = m.create(r);
    ASSERT_TRUE(created) << created.error().message;
    EXPECT_TRUE(created->thin);
    auto v = m.open("thin");
    ASSERT_TRUE(v);
    auto one = random_bytes(256 << 10, 31), two = random_bytes(256 << 10, 32);
    {
        VolumeDevice d(*v);
        ASSERT_EQ(io.write(d, 300 << 20, one), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
        faults["b"]->set(FaultDevice::Mode::fail);
        auto replaced = m.replace("thin", "b", disk("c"));
        ASSERT_TRUE(replaced) << replaced.error().message;
        ASSERT_TRUE((*v)->wait_resync(30s));
        ASSERT_EQ(io.write(d, 400 << 20, two), 0);
        ASSERT_EQ(io.simple(d, backstore::IoOp::flush), 0);
    }
    ASSERT_TRUE(m.close("thin"));
    auto check_alone = [&](const std::string& only) {
        for (const char* other : {"a", "b", "c", "d"}) {
            if (only != other) {
                unreachable.insert(other);
            }
        }
        auto alone = m.open("thin");
        ASSERT_TRUE(alone) << only << ": " << alone.error().message;
        {
            VolumeDevice d(*alone);
            std::vector<uint8_t> back(one.size());
            ASSERT_EQ(io.read(d, 300 << 20, back), 0);
            EXPECT_EQ(back, one) << "from " << only;
            ASSERT_EQ(io.read(d, 400 << 20, back), 0);
            EXPECT_EQ(back, two) << "from " << only;
            EXPECT_EQ((*alone)->status().allocated_bytes, 2u << 20) << "two clusters: at 300 and 400 MiB";
        }
        ASSERT_TRUE(m.close("thin"));
        unreachable.clear();
    };
    check_alone("c");
    // add-member while closed: the new copy is rebuilt (map included) at the next open.
    auto added = m.add_member("thin", disk("d"));
    ASSERT_TRUE(added) << added.error().message;
    v = m.open("thin");
    ASSERT_TRUE(v) << v.error().message;
    ASSERT_TRUE((*v)->wait_resync(30s));
    ASSERT_EQ((*v)->status().members[2].state, MemberState::active);
    ASSERT_TRUE(m.close("thin"));
    check_alone("d");
}

TEST_F(SpaceManagerTest, AddMemberAddsACopyRebuiltAtTheNextOpen) {
    auto& m = manager(dir.file("home"));
    ASSERT_TRUE(m.create(mirror("logs", {disk("a"), disk("b")})));
    auto v = m.open("logs");
    ASSERT_TRUE(v);
    auto data = random_bytes(1 << 20, 5);
    {
        VolumeDevice d(*v);
        ASSERT_EQ(io.write(d, 0, data), 0);
    }
    EXPECT_FALSE(m.add_member("logs", disk("c"))) << "added while open";
    ASSERT_TRUE(m.close("logs"));
    auto added = m.add_member("logs", "c");
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(added->members.size(), 3u);
    v = m.open("logs");
    ASSERT_TRUE(v) << v.error().message;
    ASSERT_TRUE((*v)->wait_resync(30s));
    auto st = (*v)->status();
    ASSERT_EQ(st.members.size(), 3u);
    EXPECT_EQ(st.members[2].state, MemberState::active);
    // Read from the new copy alone.
    faults["a"]->set(FaultDevice::Mode::fail);
    faults["b"]->set(FaultDevice::Mode::fail);
    VolumeDevice d(*v);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(d, 0, back), 0);
    EXPECT_EQ(back, data);
    faults["a"]->set(FaultDevice::Mode::ok);
    faults["b"]->set(FaultDevice::Mode::ok);
}

TEST_F(SpaceManagerTest, DestroyNeedsConfirmationAndErasesTheLabels) {
    auto& m = manager(dir.file("home"));
    ASSERT_TRUE(m.create(mirror("old", {disk("a"), disk("b")})));
    auto refused = m.destroy("old", false);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("--yes"), std::string::npos);
    ASSERT_TRUE(m.open("old"));
    EXPECT_FALSE(m.destroy("old", true)) << "destroyed while open";
    ASSERT_TRUE(m.close("old"));
    ASSERT_TRUE(m.destroy("old", true));
    EXPECT_FALSE(read_member_labels(group.at(0), *disks["a"]).label);
    EXPECT_FALSE(m.status("old"));
    EXPECT_TRUE(m.create(mirror("new", {"a", "b"}))) << "its members are free again";
}

TEST_F(SpaceManagerTest, TheSpaceKindExportsAnOpenSpace) {
    auto& m = manager(dir.file("home"));
    ASSERT_TRUE(m.create(mirror("lun", {disk("a"), disk("b")})));
    backstore::Registry registry;
    register_space_kind(registry, m);
    backstore::register_builtin_kinds(registry);
    auto spec = registry.parse("space:lun");
    ASSERT_TRUE(spec) << spec.error().message;
    EXPECT_EQ((*spec)->describe(), "space:lun");
    auto device = (*spec)->open();
    ASSERT_TRUE(device) << device.error().message;
    EXPECT_EQ((*device)->kind(), "space");
    EXPECT_TRUE(m.find("lun"));
    auto again = (*spec)->open(); // attach and export share the one open volume
    ASSERT_TRUE(again);
    auto data = random_bytes(64 << 10, 6);
    ASSERT_EQ(io.write(**device, 0, data), 0);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(**again, 0, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_FALSE(registry.parse("space:"));
    auto missing = registry.parse("space:nothing");
    ASSERT_TRUE(missing);
    EXPECT_FALSE((*missing)->open());
}

// Fencing needs members that keep reservations: remote LUNs of a real target in this process.
class FencingTest : public ::testing::Test {
protected:
    FencingTest() : group(2), io(group.at(1)) { group.start(); }
    ~FencingTest() override {
        managers.clear();
        group.stop();
    }
    SpaceManager& manager(const std::string& home) {
        SpaceManagerOptions o;
        o.home = home;
        o.reactors = &group;
        o.initiator = &initiator;
        o.volume.sweep_interval = 50ms;
        o.volume.retry_min = 50ms;
        managers.push_back(std::make_unique<SpaceManager>(o));
        return *managers.back();
    }

    test::TempDir dir;
    test::TestTarget target{{"memory:48M", "memory:48M"}};
    initiator::Initiator initiator{initiator::InitiatorOptions{.threads = 2}};
    net::ReactorGroup group;
    test::Submitter io;
    std::vector<std::unique_ptr<SpaceManager>> managers;
};

TEST_F(FencingTest, AnotherHolderIsRefusedUntilItTakesOverAndThenTheFirstLosesTheSpace) {
    auto& host_a = manager(dir.file("a"));
    auto& host_b = manager(dir.file("b"));
    CreateRequest r;
    r.name = "shared";
    r.members = {target.url(0), target.url(1)};
    {
        auto created = host_a.create(r);
        ASSERT_TRUE(created) << created.error().message;
    }
    auto va = host_a.open("shared");
    ASSERT_TRUE(va) << va.error().message;
    auto data = random_bytes(256 << 10, 7);
    VolumeDevice da(*va);
    ASSERT_EQ(io.write(da, 0, data), 0);

    ASSERT_TRUE(host_b.assemble({target.url(0), target.url(1)}));
    auto refused = host_b.open("shared");
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EBUSY);
    auto id_a = host_a.identity();
    ASSERT_TRUE(id_a);
    EXPECT_NE(refused.error().message.find(id_a->name), std::string::npos)
        << "the refusal names the holder: " << refused.error().message;

    auto vb = host_b.open("shared", OpenOptions{true});
    ASSERT_TRUE(vb) << vb.error().message;
    // A's next write meets RESERVATION CONFLICT; A stops and lets go by itself.
    // RESERVATION CONFLICT (-EBADE) when this write is the one that meets it; -EIO when a background
    // label or bitmap write met it first and the volume already knows it lost (a slower machine, ASan).
    int refused_write = io.write(da, 0, random_bytes(4096, 8));
    EXPECT_TRUE(refused_write == -EBADE || refused_write == -EIO) << refused_write;
    EXPECT_TRUE((*va)->lost());
    ASSERT_TRUE(test::eventually([&] { return host_a.find("shared") == nullptr; }));
    auto st = host_a.status("shared");
    ASSERT_TRUE(st) << st.error().message;
    EXPECT_TRUE(st->lost);
    auto id_b = host_b.identity();
    EXPECT_EQ(st->lost_to, id_b->name);
    // B has A's data and writes on.
    VolumeDevice db(*vb);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(db, 0, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(io.write(db, 0, random_bytes(4096, 9)), 0);
    ASSERT_TRUE(host_b.close("shared"));
    // Released on close: A may hold it again.
    auto again = host_a.open("shared");
    ASSERT_TRUE(again) << again.error().message;
}

// A write that comes with its data in a Buffer (the FUSE server's receive buffer) reaches remote members
// as slices of that Buffer, not as a copy of the iovec: here the iovec says something else, and what the
// members get is the Buffer's bytes, each chunk of the stripe the right slice of it.
TEST_F(FencingTest, AWriteWithItsDataInABufferReachesRemoteMembersAsSlicesOfIt) {
    auto& host = manager(dir.file("a"));
    CreateRequest r;
    r.name = "striped";
    r.layout = LayoutKind::stripe;
    r.chunk = 64 << 10;
    r.members = {target.url(0), target.url(1)};
    ASSERT_TRUE(host.create(r));
    auto v = host.open("striped");
    ASSERT_TRUE(v) << v.error().message;
    VolumeDevice device(*v);
    auto data = random_bytes(512 << 10, 11);
    std::vector<uint8_t> memory = data;
    std::vector<uint8_t> other(data.size(), 0xee);
    iovec iov{other.data(), other.size()};
    backstore::IoRequest request;
    request.op = backstore::IoOp::write;
    request.offset = 32 << 10; // chunks cut in the middle: slices at offsets other than 0
    request.length = data.size();
    request.iov = &iov;
    request.iovcnt = 1;
    request.data = Buffer::wrap(memory.data(), memory.size(), nullptr, nullptr);
    ASSERT_EQ(io.submit(device, request), 0);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, 32 << 10, back), 0);
    EXPECT_EQ(back, data);
    request.data.reset();
    ASSERT_TRUE(host.close("striped"));
}

// A member that reconnected as another device (another I_T nexus) while the space was held: letting go
// through the new device still releases the reservation the old nexus took, so another host may use it.
TEST_F(FencingTest, LettingGoReleasesAReservationAnOlderNexusOfOursTook) {
    HostIdentity me{0x1234abcd, "test:me"};
    auto open = [&] {
        RemoteOptions o;
        o.url = target.url(0);
        o.member = true;
        auto d = RemoteDevice::open(initiator, o);
        EXPECT_TRUE(d) << d.error().message;
        return std::move(*d);
    };
    auto before = open();
    ASSERT_TRUE(fence({{before.get(), "m"}}, me, false, 0, ""));
    auto after = open(); // the member as reopened after it came back
    ASSERT_TRUE(fence({{after.get(), "m"}}, me, false, 0, ""));
    unfence({{after.get(), "m"}}, me);
    auto other = open();
    auto r = other->read_reservation_sync();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->reserved) << "still reserved by key " << std::hex << r->key;
    auto keys = other->read_keys_sync();
    ASSERT_TRUE(keys);
    EXPECT_TRUE(keys->empty()) << keys->size() << " registration(s) left";
}

// Create's refusals over real remote members (the default opener: URLs through the initiator): a LUN the
// target does not have, a URL that names no LUN, members of different block sizes, a member too small, a
// target that does not answer. Each is refused with words that name the member, and nothing is written to
// any member: the good LUN carries no label afterwards and is labelled by the create that follows.
class RemoteCreateTest : public FencingTest {
protected:
    RemoteCreateTest() = default;
    // Whatever a refused create left on LUN 0 of the target: a label, or nothing.
    bool labelled(uint64_t lun) {
        RemoteOptions o;
        o.url = target4k.url(lun);
        auto d = RemoteDevice::open(initiator, o);
        EXPECT_TRUE(d) << d.error().message;
        return d && read_member_labels(group.at(0), **d).label.has_value();
    }
    CreateRequest request(std::vector<std::string> members) {
        CreateRequest r;
        r.name = "refused";
        r.members = std::move(members);
        return r;
    }
    // LUN 0 and 1: 48 MiB of 512-byte blocks; 2: 4096-byte blocks; 3: too small for any space.
    test::TestTarget target4k{{"memory:48M", "memory:48M", "memory:48M,block=4096", "memory:256K"},
                              "iqn.2026-11.org.ispace:refusals"};
};

TEST_F(RemoteCreateTest, BadMembersAreRefusedNamingThemAndNothingIsWrittenToAny) {
    auto& m = manager(dir.file("home"));
    std::string good = target4k.url(0);
    auto expect_refused = [&](const std::vector<std::string>& members, const std::string& words) {
        auto r = m.create(request(members));
        ASSERT_FALSE(r) << "created over " << members.back();
        EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
        EXPECT_FALSE(labelled(0)) << "a refused create (" << words << ") wrote a label to " << good;
        EXPECT_FALSE(labelled(1));
        EXPECT_FALSE(std::filesystem::exists(dir.file("home/spaces/refused.json")));
    };
    expect_refused({good, target4k.url(7)}, "no LUN 7");
    expect_refused({good, "iscsi://127.0.0.1:" + std::to_string(target4k.port()) + "/" + target4k.iqn()},
                   "names no LUN");
    expect_refused({good, target4k.url(2)}, "block size");
    expect_refused({good, target4k.url(1), target4k.url(3)}, "too small");
    uint16_t closed = 0;
    {
        // A port nobody listens on (bound, then let go).
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        closed = ntohs(a.sin_port);
        ::close(fd);
    }
    std::string away = "iscsi://127.0.0.1:" + std::to_string(closed) + "/" + target4k.iqn() + "/0";
    auto t0 = std::chrono::steady_clock::now();
    expect_refused({good, away}, "127.0.0.1:" + std::to_string(closed));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s) << "an unreachable member is reported in time";
    // The members are free: the same create with good members works and labels them.
    auto created = m.create(request({good, target4k.url(1)}));
    ASSERT_TRUE(created) << created.error().message;
    EXPECT_TRUE(labelled(0));
    EXPECT_TRUE(labelled(1));
}

} // namespace
} // namespace ispace::volume
