// The volume with real I/O on memory members behind fault-injecting wrappers: layouts end to end, a member
// that fails mid-write (writes go on, it is marked failed and the epoch raised), comes back (delta resync
// of what it missed, and no more), hangs, is fenced; splits refused and resolved; a resync that resumes from
// its checkpoint; dirty regions made equal after an unclean stop.
#include "volume/volume.hpp"

#include "backstore/memory/memory_device.hpp"
#include "fault_device.hpp"
#include "volume/member_io.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <thread>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;
using test::FaultDevice;
using test::random_bytes;

constexpr uint64_t member_bytes = 40 << 20;

class VolumeTest : public ::testing::Test {
protected:
    VolumeTest() : group(2), io(group.at(1)) { group.start(); }
    ~VolumeTest() override {
        for (auto& v : volumes) {
            (void)v->close();
        }
        volumes.clear();
        group.stop();
    }

    // `n` fresh members (memory), each behind a FaultDevice the test controls.
    void make_members(unsigned n, uint32_t block = 512) {
        for (unsigned i = 0; i < n; ++i) {
            disks.push_back(std::make_shared<backstore::MemoryDevice>(member_size, block));
            faults.push_back(std::make_shared<FaultDevice>(disks.back()));
        }
    }
    std::vector<backstore::Device*> raw() {
        std::vector<backstore::Device*> out;
        for (auto& f : faults) {
            out.push_back(f.get());
        }
        return out;
    }
    VolumeOptions options() {
        VolumeOptions o;
        o.sweep_interval = sweep_interval;
        o.retry_min = 50ms;
        o.retry_max = 200ms;
        o.holder = "test";
        return o;
    }
    std::vector<VolumeMember> members_for(const AssemblyPlan& plan, const std::vector<uint64_t>& offsets,
                                          const std::vector<bool>& present = {}) {
        std::vector<VolumeMember> members;
        for (size_t s = 0; s < plan.truth.members.size(); ++s) {
            VolumeMember m;
            if (present.empty() || present[s]) {
                m.device = std::make_unique<test::SharedDevice>(faults[s]);
            }
            m.data_offset = offsets[s];
            m.url = "m" + std::to_string(s);
            members.push_back(std::move(m));
        }
        return members;
    }
    std::shared_ptr<Volume> create(LayoutKind kind, unsigned n, uint64_t chunk = 0, uint32_t copies = 2) {
        make_members(n);
        SpaceSpec spec;
        spec.name = "test";
        spec.layout = kind;
        spec.chunk = chunk;
        spec.copies = copies;
        for (unsigned i = 0; i < n; ++i) {
            spec.urls.push_back("m" + std::to_string(i));
        }
        auto formatted = format_space(group.at(0), spec, raw(), false);
        EXPECT_TRUE(formatted) << formatted.error().message;
        offsets = formatted->data_offsets;
        for (size_t i = 0; i < faults.size(); ++i) {
            count_data(i, formatted->plan.truth.members[i].data_bytes);
        }
        auto v = Volume::open(group, formatted->plan, members_for(formatted->plan, offsets), options());
        EXPECT_TRUE(v) << v.error().message;
        volumes.push_back(*v);
        return *v;
    }
    // Assembles from the members' labels (those in `slots`), as the space manager does.
    Result<std::shared_ptr<Volume>> assemble(std::vector<uint32_t> slots, AssembleOptions ao = {}) {
        auto plan = plan_assembly(found_on(group.at(0), faults, slots), ao);
        if (!plan) {
            return plan.error();
        }
        std::vector<bool> present(plan->truth.members.size(), false);
        for (size_t s = 0; s < plan->found.size(); ++s) {
            present[s] = plan->found[s].has_value();
        }
        // Slots follow the member table; the devices we found map to their slots by label.
        auto v = Volume::open(group, *plan, members_for(*plan, offsets, present), options());
        if (v) {
            volumes.push_back(*v);
        }
        return v;
    }
    void count_data(size_t slot, uint64_t data_bytes) {
        faults[slot]->count_from = offsets[slot];
        faults[slot]->count_to = offsets[slot] + data_bytes;
    }
    void close(const std::shared_ptr<Volume>& v) {
        ASSERT_TRUE(v->close());
        std::erase(volumes, v);
    }
    std::vector<uint8_t> member_data(unsigned slot, uint64_t offset, uint64_t length) {
        std::vector<uint8_t> out(length);
        EXPECT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::read, offsets[slot] + offset, out),
                  0);
        return out;
    }
    // Every member `bytes` longer, holding different random bytes there (as a LUN resized on its target
    // keeps whatever its new blocks held).
    void extend_members_with_garbage(uint64_t bytes, uint64_t seed) {
        for (unsigned s = 0; s < disks.size(); ++s) {
            ASSERT_TRUE(disks[s]->resize(member_size + bytes));
            auto garbage = random_bytes(bytes, seed + s);
            ASSERT_EQ(member_io(group.at(0), *disks[s], backstore::IoOp::write, member_size, garbage), 0);
        }
    }
    Label label_of(unsigned slot) {
        LabelReading r = read_member_labels(group.at(0), *disks[slot]);
        EXPECT_TRUE(r.label);
        return r.label ? *r.label : Label{};
    }
    MemberState state_of(const std::shared_ptr<Volume>& v, unsigned slot) {
        return v->status().members[slot].state;
    }

    std::chrono::milliseconds sweep_interval = 50ms;
    uint64_t member_size =
        member_bytes; // of the members make_members() makes (memory: costs what is written)
    net::ReactorGroup group;
    test::Submitter io;
    std::vector<std::shared_ptr<backstore::MemoryDevice>> disks;
    std::vector<std::shared_ptr<FaultDevice>> faults;
    std::vector<uint64_t> offsets;
    std::vector<std::shared_ptr<Volume>> volumes;
};

// Random writes and reads against a shadow copy.
void round_trip(test::Submitter& io, Volume& v, uint64_t span, int writes, uint64_t seed) {
    VolumeDevice device(v.shared_from_this());
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> shadow(span, 0);
    ASSERT_EQ(io.write(device, 0, shadow), 0);
    for (int i = 0; i < writes; ++i) {
        uint64_t blocks = 1 + rng() % 600;
        uint64_t first = rng() % (span / 512 - blocks);
        auto data = random_bytes(blocks * 512, rng());
        ASSERT_EQ(io.write(device, first * 512, data), 0) << "write " << i;
        std::memcpy(shadow.data() + first * 512, data.data(), data.size());
    }
    std::vector<uint8_t> back(span);
    ASSERT_EQ(io.read(device, 0, back), 0);
    ASSERT_TRUE(back == shadow);
}

TEST_F(VolumeTest, EveryLayoutRoundTripsAndHasItsCapacity) {
    struct Case {
        LayoutKind kind;
        unsigned members;
        uint64_t chunk;
    };
    for (Case c : {Case{LayoutKind::mirror, 3, 0}, Case{LayoutKind::stripe, 2, 64 << 10},
                   Case{LayoutKind::concat, 3, 0}, Case{LayoutKind::stripe_mirror, 4, 128 << 10}}) {
        SCOPED_TRACE(std::string(to_string(c.kind)));
        disks.clear();
        faults.clear();
        auto v = create(c.kind, c.members, c.chunk);
        ASSERT_TRUE(v);
        uint64_t per = v->truth_at_open().members[0].data_bytes;
        uint64_t expected = c.kind == LayoutKind::mirror   ? per
                            : c.kind == LayoutKind::concat ? per * c.members
                                                           : per / c.chunk * c.chunk * 2; // two columns
        EXPECT_EQ(v->geometry().bytes(), expected);
        round_trip(io, *v, 16 << 20, 60, 11);
        close(v);
    }
}

TEST_F(VolumeTest, AMirrorWriteReachesEveryCopy) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    auto data = random_bytes(3 << 20, 1);
    ASSERT_EQ(io.write(device, 5 << 20, data, true), 0);
    EXPECT_EQ(member_data(0, 5 << 20, data.size()), data);
    EXPECT_EQ(member_data(1, 5 << 20, data.size()), data);
    EXPECT_EQ(io.simple(device, backstore::IoOp::flush), 0);
}

TEST_F(VolumeTest, AMemberThatFailsMidWriteIsDroppedAndWritesGoOn) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    uint64_t epoch = v->status().epoch;
    std::vector<uint8_t> shadow(8 << 20, 0);
    std::mt19937_64 rng(2);
    for (int i = 0; i < 200; ++i) {
        if (i == 50) {
            faults[1]->set(FaultDevice::Mode::fail); // the member dies in the middle of the writes
        }
        uint64_t first = rng() % ((8 << 20) / 4096 - 16);
        auto data = random_bytes(16 * 4096, rng());
        ASSERT_EQ(io.write(device, first * 4096, data), 0)
            << "write " << i << " reached the caller as an error";
        std::memcpy(shadow.data() + first * 4096, data.data(), data.size());
    }
    auto st = v->status();
    EXPECT_EQ(st.members[1].state, MemberState::failed);
    EXPECT_EQ(st.members[0].state, MemberState::active);
    EXPECT_GT(st.epoch, epoch);
    // The survivor's label says so; the failed member's own label does not know.
    Label survivor = label_of(0);
    EXPECT_EQ(survivor.members[1].state, MemberState::failed);
    EXPECT_EQ(survivor.epoch, st.epoch);
    EXPECT_LT(label_of(1).epoch, st.epoch);
    std::vector<uint8_t> back(shadow.size());
    ASSERT_EQ(io.read(device, 0, back), 0);
    EXPECT_TRUE(back == shadow);
    // Reads never go to the failed member (the retry timer's label probes may: they are not data).
    count_data(1, back.size());
    ASSERT_EQ(io.read(device, 0, back), 0);
    EXPECT_EQ(faults[1]->failed_reads.load(), 0u);
}

TEST_F(VolumeTest, AReturningMemberResyncsOnlyWhatItMissed) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    // Let the creation's regions age out, so the bitmap holds only what follows.
    auto data = random_bytes(1 << 20, 3);
    ASSERT_EQ(io.write(device, 0, data), 0);
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    ASSERT_EQ(v->status().dirty_regions, 0u);

    faults[1]->set(FaultDevice::Mode::fail);
    ASSERT_EQ(io.write(device, 0, data), 0); // discovers the failure
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::failed; }));
    // 4 MiB of random 4K writes while it is away, over 8 regions.
    std::mt19937_64 rng(4);
    std::set<uint64_t> regions{0};
    for (int i = 0; i < 1024; ++i) {
        uint64_t block = rng() % 2048; // the first 8 MiB
        regions.insert(block * 4096 >> 20);
        ASSERT_EQ(io.write(device, block * 4096, random_bytes(4096, rng())), 0);
    }
    // Sweeps while it is away must not clear what it missed.
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    EXPECT_EQ(v->status().dirty_regions, regions.size());

    faults[1]->reset_counts();
    faults[1]->set(FaultDevice::Mode::ok); // it answers again
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::active; }, 20s));
    uint64_t moved = faults[1]->bytes_written;
    uint64_t dirtied = regions.size() << 20;
    EXPECT_LE(moved, dirtied * 5 / 4) << "resynced " << moved << " bytes for " << dirtied << " dirtied";
    EXPECT_GE(moved, dirtied);
    EXPECT_EQ(member_data(0, 0, 8 << 20), member_data(1, 0, 8 << 20));
    EXPECT_GE(v->status().resync.copied_bytes, dirtied);
    // In sync again: the labels say so, and the bitmap clears.
    EXPECT_EQ(label_of(0).members[1].state, MemberState::active);
    EXPECT_TRUE(test::eventually([&] {
        v->sweep_now();
        return v->status().dirty_regions == 0;
    }));
}

// Two members of a 3-way mirror come back one after the other: the second rejoins while the first one's
// windows hold the regions it needs too. Each region is copied by one window at a time (a second lock of a
// held region would let foreground writes through before the first copy ends); the second waits for them,
// and both end in sync with the same data. (As it happened: both ispaced members of a mirror restarted.)
TEST_F(VolumeTest, ASecondMemberRejoiningDuringAResyncWaitsForTheRegionsInFlight) {
    auto v = create(LayoutKind::mirror, 3, 0, 3);
    VolumeDevice device(v);
    auto data = random_bytes(1 << 20, 30);
    ASSERT_EQ(io.write(device, 0, data), 0);
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    ASSERT_EQ(v->status().dirty_regions, 0u);

    faults[1]->set(FaultDevice::Mode::fail);
    faults[2]->set(FaultDevice::Mode::fail);
    ASSERT_EQ(io.write(device, 0, data), 0); // discovers both failures
    ASSERT_TRUE(test::eventually(
        [&] { return state_of(v, 1) == MemberState::failed && state_of(v, 2) == MemberState::failed; }));
    std::mt19937_64 rng(31);
    for (int i = 0; i < 256; ++i) {
        ASSERT_EQ(io.write(device, (rng() % 2048) * 4096, random_bytes(4096, rng())), 0); // the first 8 MiB
    }
    // The first comes back slowly: its windows stay in flight long enough for the second to rejoin.
    faults[1]->slow_by = 400ms;
    faults[1]->set(FaultDevice::Mode::slow);
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::rebuilding; }));
    faults[2]->set(FaultDevice::Mode::ok);
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 2) != MemberState::failed; }));
    EXPECT_EQ(state_of(v, 1), MemberState::rebuilding) << "the first resync ended before the second rejoined";
    ASSERT_TRUE(test::eventually(
        [&] { return state_of(v, 1) == MemberState::active && state_of(v, 2) == MemberState::active; }, 30s));
    auto want = member_data(0, 0, 8 << 20);
    EXPECT_TRUE(member_data(1, 0, 8 << 20) == want);
    EXPECT_TRUE(member_data(2, 0, 8 << 20) == want);
}

// The acceptance form: 64 MiB of random 4K writes while a member is away, over a space five times larger
// than the regions they touch; the returning member gets those regions and no more (at most 1.25x their
// bytes), status says how much was resynced, and the copies are identical afterwards.
TEST_F(VolumeTest, SixtyFourMiBOfRandom4KWritesWhileAwayResyncOnlyTheRegionsTheyDirtied) {
    member_size = 640 << 20;
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    uint64_t size = v->geometry().bytes();
    uint64_t region = v->truth_at_open().region_size;
    ASSERT_EQ(region, 1u << 20);
    ASSERT_EQ(io.write(device, 0, random_bytes(4096, 20)), 0);
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    ASSERT_EQ(v->status().dirty_regions, 0u);

    faults[1]->set(FaultDevice::Mode::fail);
    ASSERT_EQ(io.write(device, 0, random_bytes(4096, 21)), 0); // discovers the failure
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::failed; }));
    // 128 regions of the ~630 chosen at random; 16384 writes of 4 KiB at random places inside them.
    std::mt19937_64 rng(22);
    std::vector<uint64_t> chosen;
    std::set<uint64_t> dirtied{0};
    while (chosen.size() < 128) {
        uint64_t r = rng() % (size / region);
        if (std::find(chosen.begin(), chosen.end(), r) == chosen.end()) {
            chosen.push_back(r);
        }
    }
    // 32 in flight at a time, as a file system's writeback would send them.
    constexpr int depth = 32;
    Buffer data = Buffer::allocate(depth * 4096);
    auto pattern = random_bytes(data.size(), 23);
    std::memcpy(data.data(), pattern.data(), data.size());
    for (int batch = 0; batch < 16384 / depth; ++batch) {
        std::vector<backstore::IoRequest> requests(depth);
        std::vector<iovec> iov(depth);
        auto left = std::make_shared<std::atomic<int>>(depth);
        auto errors = std::make_shared<std::atomic<int>>(0);
        auto all = std::make_shared<std::promise<void>>();
        for (int i = 0; i < depth; ++i) {
            uint64_t r = chosen[rng() % chosen.size()];
            dirtied.insert(r);
            iov[i] = {data.data() + i * 4096, 4096};
            requests[i].op = backstore::IoOp::write;
            requests[i].offset = r * region + (rng() % (region / 4096)) * 4096;
            requests[i].length = 4096;
            requests[i].iov = &iov[i];
            requests[i].iovcnt = 1;
            requests[i].done = [left, errors, all](int error) {
                if (error != 0) {
                    ++*errors;
                }
                if (--*left == 0) {
                    all->set_value();
                }
            };
        }
        io.reactor().post([&] {
            for (auto& request : requests) {
                device.submit(request);
            }
        });
        ASSERT_EQ(all->get_future().wait_for(30s), std::future_status::ready);
        ASSERT_EQ(errors->load(), 0) << "batch " << batch;
    }
    for (int i = 0; i < 4; ++i) {
        v->sweep_now(); // sweeps while it is away keep what it missed
    }
    EXPECT_EQ(v->status().dirty_regions, dirtied.size());

    faults[1]->reset_counts();
    faults[1]->set(FaultDevice::Mode::ok);
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::active; }, 30s));
    uint64_t moved = faults[1]->bytes_written;
    uint64_t dirtied_bytes = dirtied.size() * region;
    EXPECT_GE(moved, dirtied_bytes);
    EXPECT_LE(moved, dirtied_bytes * 5 / 4) << "resynced " << moved << " bytes for " << dirtied_bytes;
    EXPECT_LT(moved, size / 4) << "a delta, not a full rebuild";
    auto resync = v->status().resync;
    EXPECT_GE(resync.copied_bytes, dirtied_bytes);
    EXPECT_LE(resync.copied_bytes, dirtied_bytes * 5 / 4);
    for (uint64_t r : dirtied) {
        ASSERT_TRUE(member_data(0, r * region, region) == member_data(1, r * region, region))
            << "region " << r;
    }
}

// --resync-rate: a resync of N windows at R bytes per second takes at least (N - 1) windows' worth of time
// (the first starts at once), and one that is not limited is much faster.
TEST_F(VolumeTest, TheResyncRateLimitsHowFastMissedRegionsAreCopied) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    auto away_and_back = [&](uint64_t rate, uint64_t seed) {
        faults[1]->set(FaultDevice::Mode::fail);
        EXPECT_EQ(io.write(device, 0, random_bytes(4096, seed)), 0);
        EXPECT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::failed; }));
        for (uint64_t r = 1; r < 12; ++r) { // 12 regions missed, 0..11
            EXPECT_EQ(io.write(device, r << 20, random_bytes(4096, seed + r)), 0);
        }
        v->set_resync_rate(rate);
        uint64_t before = v->status().resync.copied_bytes;
        auto t0 = std::chrono::steady_clock::now();
        faults[1]->set(FaultDevice::Mode::ok);
        EXPECT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::active; }, 30s));
        EXPECT_EQ(v->status().resync.copied_bytes - before, 12u << 20);
        EXPECT_EQ(member_data(0, 0, 12 << 20), member_data(1, 0, 12 << 20));
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    double limited = away_and_back(4 << 20, 30); // 4 MiB/s: 11 windows after the first take 2.75 s
    EXPECT_GE(limited, 11.0 / 4.0) << "12 MiB at 4 MiB/s";
    double unlimited = away_and_back(0, 50);
    EXPECT_LT(unlimited, limited / 2) << "unlimited " << unlimited << " s, limited " << limited << " s";
}

TEST_F(VolumeTest, AMemberThatStopsAnsweringIsFailedAndNoErrorReachesTheCaller) {
    auto v = create(LayoutKind::mirror, 3);
    VolumeDevice device(v);
    faults[2]->hang_for = 300ms;
    faults[2]->set(FaultDevice::Mode::hang);
    auto data = random_bytes(64 << 10, 5);
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(io.write(device, 0, data), 0);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_EQ(state_of(v, 2), MemberState::failed);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, 0, back), 0);
    EXPECT_EQ(back, data);
    faults[2]->set(FaultDevice::Mode::ok);
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 2) == MemberState::active; }, 20s));
}

TEST_F(VolumeTest, ReadsFailOverToAnotherCopy) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    auto data = random_bytes(4 << 20, 6);
    ASSERT_EQ(io.write(device, 0, data), 0);
    faults[0]->set(FaultDevice::Mode::fail);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(device, 0, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(state_of(v, 0), MemberState::failed);
    // With no copy left, the caller gets the error.
    faults[1]->set(FaultDevice::Mode::fail);
    EXPECT_EQ(io.read(device, 0, back), -EIO);
    EXPECT_EQ(io.write(device, 0, data), -EIO);
    // `failed` is raised on the volume's home reactor after the member's failure is seen, which need not
    // be before the failed requests complete on the caller's reactor.
    for (int i = 0; i < 500 && !v->status().failed; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(v->status().failed);
    faults[0]->set(FaultDevice::Mode::ok);
    faults[1]->set(FaultDevice::Mode::ok);
}

TEST_F(VolumeTest, AReservationConflictLosesTheSpaceAndNothingMoreIsWritten) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    std::atomic<int> removed{0};
    struct Watch final : backstore::DeviceObserver {
        std::atomic<int>* removed;
        void device_event(backstore::DeviceEvent e) override {
            if (e == backstore::DeviceEvent::removed) {
                ++*removed;
            }
        }
    } watch;
    watch.removed = &removed;
    device.subscribe(&watch);
    auto data = random_bytes(8192, 7);
    ASSERT_EQ(io.write(device, 0, data), 0);
    faults[0]->set(FaultDevice::Mode::conflict); // another holder preempted us
    EXPECT_EQ(io.write(device, 0, data), -EBADE);
    EXPECT_TRUE(v->lost());
    EXPECT_TRUE(v->status().lost);
    ASSERT_TRUE(test::eventually([&] { return removed.load() == 1; }));
    uint64_t writes = faults[1]->writes;
    EXPECT_EQ(io.write(device, 0, data), -EBADE);
    std::this_thread::sleep_for(200ms); // sweeps and label writes would have happened by now
    EXPECT_EQ(faults[1]->writes.load(), writes);
    EXPECT_EQ(state_of(v, 1), MemberState::active) << "a fenced holder marks nobody failed";
    device.unsubscribe(&watch);
    close(v);
    EXPECT_EQ(faults[1]->writes.load(), writes) << "closing wrote a clean label after losing the space";
}

TEST_F(VolumeTest, RandomSmallWritesCostAtMostOneBitmapWritePerNewRegion) {
    sweep_interval = std::chrono::hours(1); // only the sweeps we run: a cleared region would be new again
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    auto before = v->status().bitmap;
    std::mt19937_64 rng(8);
    std::set<uint64_t> regions;
    for (int i = 0; i < 2000; ++i) {
        uint64_t block = rng() % (v->geometry().bytes() / 4096);
        regions.insert(block * 4096 >> 20);
        ASSERT_EQ(io.write(device, block * 4096, random_bytes(4096, i)), 0);
    }
    auto after = v->status().bitmap;
    EXPECT_LE(after.batches - before.batches, regions.size());
    EXPECT_EQ(after.regions_marked - before.regions_marked, regions.size());
}

TEST_F(VolumeTest, ASequentialStreamOfLargeWritesMarksItsNextRegionsAheadInFewMetadataWrites) {
    sweep_interval = std::chrono::hours(1);
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    for (int i = 0; i < 4; ++i) {
        v->sweep_now();
    }
    auto before = v->status().bitmap;
    constexpr uint64_t written = 24; // regions of 1 MiB, one write each, in order
    for (uint64_t i = 0; i < written; ++i) {
        ASSERT_EQ(io.write(device, i << 20, random_bytes(1 << 20, int(i))), 0);
    }
    // The window ahead of the last write is marked too (in the background: eventually).
    ASSERT_TRUE(test::eventually(
        [&] { return v->status().bitmap.regions_marked - before.regions_marked >= written + 8; }));
    auto after = v->status().bitmap;
    // One metadata batch per region without the mark-ahead; with it, one per half window (8 regions).
    EXPECT_LE(after.batches - before.batches, written / 4) << "batches";
    EXPECT_LE(after.regions_marked - before.regions_marked, written + 16)
        << "at most a window past the stream";
    EXPECT_GE(v->status().dirty_regions, written + 8);
}

TEST_F(VolumeTest, ASplitIsRefusedAndForceFromResolvesIt) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    auto a = random_bytes(1 << 20, 9);
    ASSERT_EQ(io.write(device, 0, a), 0);
    // Holder 1 loses member 1 and goes on with member 0.
    faults[1]->set(FaultDevice::Mode::fail);
    auto side0 = random_bytes(1 << 20, 10);
    ASSERT_EQ(io.write(device, 0, side0), 0);
    close(v);
    faults[1]->set(FaultDevice::Mode::ok);
    // Holder 2 sees only member 1 (its label says both are fine), and writes there.
    auto h2 = assemble({1});
    ASSERT_TRUE(h2) << h2.error().message;
    auto side1 = random_bytes(1 << 20, 11);
    {
        VolumeDevice d2(*h2);
        ASSERT_EQ(io.write(d2, 0, side1), 0);
    }
    close(*h2);
    // Both together: refused, naming both sides.
    auto both = assemble({0, 1});
    ASSERT_FALSE(both);
    EXPECT_NE(both.error().message.find("written apart"), std::string::npos) << both.error().message;
    // --force-from m0: member 0's data wins; member 1 is rebuilt in full from it.
    auto forced = assemble({0, 1}, AssembleOptions{"m0"});
    ASSERT_TRUE(forced) << forced.error().message;
    ASSERT_TRUE((*forced)->wait_resync(20s));
    VolumeDevice d(*forced);
    std::vector<uint8_t> back(side0.size());
    ASSERT_EQ(io.read(d, 0, back), 0);
    EXPECT_EQ(back, side0);
    EXPECT_EQ(member_data(1, 0, 1 << 20), side0);
    EXPECT_EQ(state_of(*forced, 1), MemberState::active);
}

TEST_F(VolumeTest, AResyncResumesFromItsCheckpointAfterARestart) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    uint64_t size = v->geometry().bytes();
    faults[1]->set(FaultDevice::Mode::fail);
    ASSERT_EQ(io.write(device, 0, random_bytes(4096, 1)), 0);
    ASSERT_TRUE(test::eventually([&] { return state_of(v, 1) == MemberState::failed; }));
    close(v);
    // Member 1 is replaced by a blank disk: a full rebuild, slowed down so that we can stop it midway.
    auto blank = std::make_shared<backstore::MemoryDevice>(member_bytes, 512);
    disks[1] = blank;
    faults[1] = std::make_shared<FaultDevice>(blank);
    count_data(1, label_of(0).members[1].data_bytes);
    auto h = assemble({0});
    ASSERT_TRUE(h) << h.error().message;
    (*h)->set_resync_rate(8 << 20); // 8 MiB/s: about 4 s for the whole space
    MemberEntry fresh;
    fresh.uuid = make_uuid();
    fresh.data_bytes = (*h)->truth_at_open().members[1].data_bytes;
    fresh.url = "m1-new";
    VolumeMember nm;
    nm.device = std::make_unique<test::SharedDevice>(faults[1]);
    nm.data_offset = offsets[1];
    nm.url = "m1-new";
    ASSERT_TRUE((*h)->replace_member(1, std::move(nm), fresh));
    ASSERT_TRUE(
        test::eventually([&] { return (*h)->status().members[1].recovery_offset >= (8u << 20); }, 20s));
    close(*h); // a restart in the middle of the rebuild
    uint64_t checkpoint = label_of(0).members[1].recovery_offset;
    EXPECT_GE(checkpoint, 6u << 20) << "the checkpoint lags the progress by more than a few windows";
    EXPECT_EQ(label_of(0).members[1].rebuild, RebuildMode::full);

    faults[1]->reset_counts();
    auto again = assemble({0, 1});
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ((*again)->status().members[1].state, MemberState::rebuilding);
    ASSERT_TRUE((*again)->wait_resync(30s));
    EXPECT_EQ((*again)->status().members[1].state, MemberState::active);
    // It went on from the checkpoint: what it copied now is the rest, not the whole.
    EXPECT_LE(faults[1]->bytes_written.load(), size - checkpoint + (1 << 20));
    EXPECT_EQ(member_data(0, 0, size), member_data(1, 0, size));
}

TEST_F(VolumeTest, AfterAnUncleanStopDirtyRegionsAreMadeEqual) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    auto data = random_bytes(2 << 20, 12);
    ASSERT_EQ(io.write(device, 3 << 20, data), 0);
    // The holder dies with the regions dirty (no close), and a torn mirror write left the copies
    // different inside them.
    EXPECT_EQ(v->status().dirty_regions, 2u);
    uint64_t epoch = v->status().epoch;
    v->abandon(); // what kill -9 leaves: no clean label
    volumes.clear();
    v.reset();
    auto torn = random_bytes(64 << 10, 13);
    ASSERT_EQ(member_io(group.at(0), *disks[1], backstore::IoOp::write, offsets[1] + (3 << 20), torn), 0);
    ASSERT_NE(member_data(0, 3 << 20, 64 << 10), member_data(1, 3 << 20, 64 << 10));
    auto h = assemble({0, 1});
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_GT((*h)->status().epoch, epoch) << "an open after an unclean stop raises the epoch";
    ASSERT_TRUE((*h)->wait_resync(20s));
    EXPECT_EQ(member_data(0, 0, 8 << 20), member_data(1, 0, 8 << 20));
    EXPECT_EQ(member_data(0, 3 << 20, data.size()), data) << "the lowest slot is the source";
}

TEST_F(VolumeTest, CreateRefusesWhatCannotWorkAndWritesNothing) {
    make_members(2);
    disks.push_back(std::make_shared<backstore::MemoryDevice>(member_bytes, 4096));
    faults.push_back(std::make_shared<FaultDevice>(disks.back()));
    SpaceSpec spec;
    spec.name = "bad";
    spec.urls = {"m0", "m1", "m2"};
    auto mixed = format_space(group.at(0), spec, raw(), false);
    ASSERT_FALSE(mixed);
    EXPECT_NE(mixed.error().message.find("block size"), std::string::npos) << mixed.error().message;
    for (auto& f : faults) {
        EXPECT_EQ(f->writes.load(), 0u);
    }
    faults.pop_back();
    spec.urls = {"m0", "m1"};
    spec.size = member_bytes * 2;
    auto big = format_space(group.at(0), spec, raw(), false);
    ASSERT_FALSE(big);
    EXPECT_NE(big.error().message.find("hold at most"), std::string::npos) << big.error().message;
    spec.size = 0;
    ASSERT_TRUE(format_space(group.at(0), spec, raw(), false));
    spec.name = "other";
    auto reused = format_space(group.at(0), spec, raw(), false);
    ASSERT_FALSE(reused);
    EXPECT_NE(reused.error().message.find("member of space 'bad'"), std::string::npos)
        << reused.error().message;
    EXPECT_TRUE(format_space(group.at(0), spec, raw(), true));
}

// grow: members resized under an open mirror; the space takes the room online, old data stays where it was,
// the new range is written on both copies, and the labels carry the new size through a reopen. What the
// members held in their new room differed (as a resized LUN keeps its old blocks): the grow makes the copies
// equal there.
TEST_F(VolumeTest, AMirrorGrowsOnlineWhenItsMembersDo) {
    auto v = create(LayoutKind::mirror, 2);
    VolumeDevice device(v);
    uint64_t before = v->geometry().bytes();
    auto old_data = random_bytes(1 << 20, 7);
    ASSERT_EQ(io.write(device, before - old_data.size(), old_data, true), 0);

    auto nothing = v->grow();
    ASSERT_TRUE(nothing) << nothing.error().message;
    EXPECT_EQ(nothing->after, nothing->before) << "members that did not grow give nothing";

    extend_members_with_garbage(16 << 20, 20);
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    EXPECT_EQ(grown->before, before);
    EXPECT_EQ(grown->after, before + (16 << 20));
    EXPECT_EQ(v->geometry().bytes(), grown->after);
    auto new_data = random_bytes(2 << 20, 8);
    ASSERT_EQ(io.write(device, grown->after - new_data.size(), new_data, true), 0);
    EXPECT_EQ(member_data(0, grown->after - new_data.size(), new_data.size()), new_data);
    EXPECT_EQ(member_data(1, grown->after - new_data.size(), new_data.size()), new_data);
    // The new range holds the same bytes on both copies once the pass that follows the grow is done.
    ASSERT_TRUE(test::eventually([&] { return !v->status().resync.running; }));
    uint64_t fresh = grown->after - before - new_data.size();
    EXPECT_EQ(member_data(0, before, fresh), member_data(1, before, fresh));
    EXPECT_EQ(label_of(0).data_size, grown->after);

    close(v);
    auto again = assemble({0, 1});
    ASSERT_TRUE(again) << again.error().message;
    VolumeDevice reopened(*again);
    EXPECT_EQ((*again)->geometry().bytes(), grown->after);
    std::vector<uint8_t> back(old_data.size());
    ASSERT_EQ(io.read(reopened, before - old_data.size(), back), 0);
    EXPECT_EQ(back, old_data);
    back.resize(new_data.size());
    ASSERT_EQ(io.read(reopened, grown->after - new_data.size(), back), 0);
    EXPECT_EQ(back, new_data);
}

// The pass that makes a grown range equal is cut short by a close: its regions stay marked (a clean close
// clears only what no pass still needs), so the next open makes them equal rather than the sweep clearing
// them with the copies apart. The space is not taken for one that crashed (clean label).
TEST_F(VolumeTest, AGrowsEqualizingPassCutShortByACloseGoesOnAtTheNextOpen) {
    auto v = create(LayoutKind::mirror, 2);
    uint64_t before = v->geometry().bytes();
    v->set_resync_rate(1 << 20); // 16 MiB to make equal: about 16 s, far longer than this test waits
    extend_members_with_garbage(16 << 20, 30);
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    EXPECT_TRUE(v->status().resync.running);
    ASSERT_TRUE(v->close());
    EXPECT_TRUE(label_of(0).clean);
    auto again = assemble({0, 1});
    ASSERT_TRUE(again) << again.error().message;
    ASSERT_TRUE(test::eventually([&] { return !(*again)->status().resync.running; }, 20s));
    uint64_t fresh = grown->after - before;
    EXPECT_EQ(member_data(0, before, fresh), member_data(1, before, fresh));
    ASSERT_TRUE((*again)->close());
    auto third = assemble({0, 1});
    ASSERT_TRUE(third) << third.error().message;
    EXPECT_EQ((*third)->status().dirty_regions, 0u) << "a clean close clears what no pass needs";
    EXPECT_FALSE((*third)->status().resync.running);
}

// The same pass cut short by a member failing, then a close: the marks stay (the failed member needs them
// for its resync), and the next open makes the two survivors equal in the grown range all the same —
// otherwise two reads of a never-written block could return two different things.
TEST_F(VolumeTest, AGrowsEqualizingPassCutShortByAFailureAndACloseStillEqualizesTheSurvivors) {
    auto v = create(LayoutKind::mirror, 3);
    uint64_t before = v->geometry().bytes();
    v->set_resync_rate(1 << 20);
    extend_members_with_garbage(16 << 20, 31);
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    ASSERT_TRUE(v->fail_member(2));
    ASSERT_TRUE(v->close());
    auto again = assemble({0, 1, 2});
    ASSERT_TRUE(again) << again.error().message;
    ASSERT_TRUE(test::eventually([&] { return !(*again)->status().resync.running; }, 20s));
    uint64_t fresh = grown->after - before;
    EXPECT_EQ(member_data(0, before, fresh), member_data(1, before, fresh));
    // The failed member comes back by itself (its retry) and resyncs from an equal copy.
    ASSERT_TRUE(test::eventually(
        [&] {
            auto st = (*again)->status();
            return !st.resync.running && std::all_of(st.members.begin(), st.members.end(), [](const auto& m) {
                return m.state == MemberState::active;
            });
        },
        20s));
    EXPECT_EQ(member_data(2, before, fresh), member_data(0, before, fresh));
}

TEST_F(VolumeTest, AStripeGrowsByItsShortestMembersGainTimesItsColumns) {
    auto v = create(LayoutKind::stripe, 2);
    uint64_t before = v->geometry().bytes();
    ASSERT_TRUE(disks[0]->resize(member_size + (8 << 20)));
    ASSERT_TRUE(disks[1]->resize(member_size + (4 << 20)));
    auto grown = v->grow();
    ASSERT_TRUE(grown) << grown.error().message;
    EXPECT_EQ(grown->after, before + 2 * (4 << 20)) << "two columns, each as long as the shorter member";
}

TEST_F(VolumeTest, GrowIsRefusedWhileAMemberIsOutOfSync) {
    auto m = create(LayoutKind::mirror, 2);
    ASSERT_TRUE(m->fail_member(1));
    ASSERT_TRUE(disks[0]->resize(member_size + (8 << 20)));
    ASSERT_TRUE(disks[1]->resize(member_size + (8 << 20)));
    auto refused = m->grow();
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EBUSY);
    EXPECT_NE(refused.error().message.find("in sync"), std::string::npos) << refused.error().message;
}

// grow with a new member: a concat gains a column online; what was written stays, the new range is on the
// new member, and the space assembles from the four labels (the new member's written first).
TEST_F(VolumeTest, AConcatGrowsByANewMemberOnline) {
    auto v = create(LayoutKind::concat, 2);
    VolumeDevice device(v);
    uint64_t before = v->geometry().bytes();
    auto old_data = random_bytes(1 << 20, 11);
    ASSERT_EQ(io.write(device, before - old_data.size(), old_data, true), 0);

    make_members(1);
    VolumeMember column;
    column.device = std::make_unique<test::SharedDevice>(faults[2]);
    column.data_offset = offsets[0];
    column.url = "m2";
    MemberEntry entry;
    entry.uuid = make_uuid();
    entry.data_bytes = label_of(0).data_size;
    entry.url = "m2";
    auto grown = v->grow(std::move(column), entry);
    ASSERT_TRUE(grown) << grown.error().message;
    EXPECT_EQ(grown->after, before + entry.data_bytes);
    EXPECT_EQ(v->member_count(), 3u);
    auto new_data = random_bytes(2 << 20, 12);
    ASSERT_EQ(io.write(device, before + (1 << 20), new_data, true), 0);
    offsets.push_back(offsets[0]);
    EXPECT_EQ(member_data(2, 1 << 20, new_data.size()), new_data) << "the new range is the new member's";
    EXPECT_EQ(label_of(2).members.size(), 3u);
    EXPECT_EQ(label_of(0).members.size(), 3u);

    close(v);
    auto again = assemble({0, 1, 2});
    ASSERT_TRUE(again) << again.error().message;
    VolumeDevice reopened(*again);
    EXPECT_EQ((*again)->geometry().bytes(), grown->after);
    std::vector<uint8_t> back(old_data.size());
    ASSERT_EQ(io.read(reopened, before - old_data.size(), back), 0);
    EXPECT_EQ(back, old_data);
    back.resize(new_data.size());
    ASSERT_EQ(io.read(reopened, before + (1 << 20), back), 0);
    EXPECT_EQ(back, new_data);
}

TEST_F(VolumeTest, ANewMemberIsRefusedForAMirror) {
    auto v = create(LayoutKind::mirror, 2);
    make_members(1);
    VolumeMember column;
    column.device = std::make_unique<test::SharedDevice>(faults[2]);
    column.data_offset = offsets[0];
    MemberEntry entry;
    entry.data_bytes = 1 << 20;
    auto refused = v->grow(std::move(column), entry);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ENOTSUP);
    EXPECT_EQ(faults[2]->writes.load(), 0u) << "nothing written to it";
}

} // namespace
} // namespace ispace::volume
