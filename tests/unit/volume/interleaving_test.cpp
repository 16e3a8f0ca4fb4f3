// Writes of every shape from both reactors meeting the volume's background passes on a checksummed mirror
// (docs/integrity.md): an online grow's equalizing pass, the full rebuild of a replaced member, snapshots of
// a thin space taken and deleted while a member resyncs, and a member that fails again in the middle of its
// resync. Each test ends byte for byte: the copies equal over the layout range, the space (and every
// snapshot) reading what the model says, no block judged rotten, and a scrub that finds nothing.
//
// The writers are two threads, one per reactor, each alone in its half of every MiB (so that the model is
// exact whatever order their writes land in): 512 B to 512 KiB, FUA every third, members answering 2 ms
// late, so that writes meet the passes' windows with their reads or writes in flight.
#include "backstore/memory/memory_device.hpp"
#include "checksummed_mirror.hpp"
#include "fault_device.hpp"
#include "volume/assembly.hpp"
#include "volume/checksum_io.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <thread>

namespace ispace::volume {
namespace {

using namespace std::chrono_literals;
using test::FaultDevice;
using test::random_bytes;

constexpr uint64_t MiB = 1 << 20;

// Where two images first differ ("none" when they are equal), for a failure's message.
std::string first_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
    auto [x, y] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    if (x == a.end() && y == b.end()) {
        return "none";
    }
    return "first difference at byte " + std::to_string(x - a.begin());
}

class InterleavingTest : public test::ChecksummedMirror {
protected:
    // Every member answers `by` late (zero: at once).
    void slow(std::chrono::milliseconds by) {
        for (auto& f : faults) {
            f->slow_by = by;
            f->set(by.count() > 0 ? FaultDevice::Mode::slow : FaultDevice::Mode::ok);
        }
    }

    // Two writer threads, one per reactor. `mibs()`: how many MiB of the space they write in (read before
    // every write, so that it may grow); `more(i)`: whether a writer writes its i-th (it may wait there).
    struct Writers {
        std::atomic<int> failures{0};
        std::vector<std::thread> threads;
        int join() {
            for (auto& t : threads) {
                t.join();
            }
            threads.clear();
            return failures.load();
        }
        ~Writers() { join(); }
    };
    void start_writers(Writers& w, VolumeDevice& device, std::vector<uint8_t>& model,
                       std::function<uint64_t()> mibs, std::function<bool(int)> more, uint64_t seed) {
        for (unsigned half = 0; half < 2; ++half) {
            w.threads.emplace_back([this, &w, &device, &model, mibs, more, half, seed] {
                test::Submitter sub(group.at(half));
                std::mt19937_64 rng(seed + half);
                const uint64_t sizes[] = {512, 1536, 4096, 64 << 10, 512 << 10};
                for (int i = 0; i < 600 && more(i); ++i) {
                    uint64_t size = sizes[rng() % std::size(sizes)];
                    uint64_t room = (512 << 10) - size;
                    uint64_t at = rng() % mibs() * MiB + half * (512 << 10) +
                                  (room == 0 ? 0 : rng() % (room / 512 + 1) * 512);
                    auto data = random_bytes(size, rng());
                    if (sub.write(device, at, data, i % 3 == 0) != 0) {
                        ++w.failures;
                        continue;
                    }
                    std::copy(data.begin(), data.end(), model.begin() + long(at));
                }
            });
        }
    }

    // The end of every test here: the background work done, both members in sync, no block judged by
    // checksums it was not written with, the space reading the model, the copies equal byte for byte over
    // the layout range, and a scrub that finds every copy of every block matching the table.
    void expect_settled(const std::shared_ptr<Volume>& v, VolumeDevice& device,
                        const std::vector<uint8_t>& model) {
        slow(0ms);
        v->set_resync_rate(0); // what is left of a pass, at full speed: the writes are over
        ASSERT_TRUE(test::eventually([&] { return v->status().members[1].state == MemberState::active; }));
        ASSERT_TRUE(v->wait_resync(30s));
        ASSERT_TRUE(test::eventually([&] { return v->status().deferred_copies == 0; }));
        EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u) << "no block judged by checksums it was not written with";
        EXPECT_EQ(v->status().members[0].state, MemberState::active);
        std::vector<uint8_t> back(model.size());
        ASSERT_EQ(io.read(device, 0, back), 0);
        EXPECT_TRUE(back == model) << "the space reads what was written last: "
                                   << first_difference(back, model);
        VolumeStatus st = v->status();
        uint64_t layout_bytes = st.thin ? st.pool_bytes : st.size;
        auto copy0 = member_data(0, 0, layout_bytes);
        auto copy1 = member_data(1, 0, layout_bytes);
        EXPECT_TRUE(copy0 == copy1) << "equal copies: " << first_difference(copy0, copy1);
        ASSERT_TRUE(test::eventually([&] { return !v->status().scrub.running; }));
        ASSERT_TRUE(v->scrub());
        ASSERT_TRUE(test::eventually([&] { return !v->status().scrub.running; }));
        st = v->status();
        EXPECT_GT(st.scrub.checked_blocks, 0u);
        EXPECT_EQ(st.scrub.bad_blocks, 0u);
        EXPECT_EQ(st.scrub.table_entries_rewritten, 0u);
        EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u);
    }

    // The space closed and opened again from member `slot` alone: its labels, its checksum table (and a
    // thin space's map) are whole, and it reads the model.
    void expect_alone(const std::shared_ptr<Volume>& v, unsigned slot, const std::vector<uint8_t>& model) {
        ASSERT_TRUE(v->close());
        volumes.clear();
        auto alone = open_from({slot});
        ASSERT_TRUE(alone) << alone.error().message;
        VolumeDevice reopened(*alone);
        std::vector<uint8_t> back(model.size());
        ASSERT_EQ(io.read(reopened, 0, back), 0);
        EXPECT_TRUE(back == model) << "member " << slot << " alone: " << first_difference(back, model);
        EXPECT_EQ(errors(*alone, slot), 0u) << "its table matches what it holds";
    }

    void writes_through_a_resync(uint64_t thin_size, bool scrub_beside);
    void writes_through_a_full_rebuild(uint64_t thin_size);
    void fails_again_in_its_resync(uint64_t thin_size);
    void killed_in_a_resync(bool full);
    void comes_back_to_its_full_rebuild(bool close_before_its_resync);

    // `model` written over the whole space and its regions swept clean, member 1 failed and replaced by a
    // blank disk, and its full rebuild (paced: a MiB window every 125 ms) past its first 4 MiB.
    void into_a_full_rebuild(const std::shared_ptr<Volume>& v, VolumeDevice& device,
                             const std::vector<uint8_t>& model) {
        ASSERT_EQ(io.write(device, 0, model), 0);
        ASSERT_TRUE(test::eventually([&] { return v->status().dirty_regions == 0; }))
            << "the sweep cleared it";
        faults[1]->set(FaultDevice::Mode::fail);
        ASSERT_TRUE(v->fail_member(1));
        new_disk(1);
        v->set_resync_rate(8 << 20);
        ASSERT_EQ(replace(v, 1), "");
        ASSERT_TRUE(test::eventually([&] { return v->status().members[1].recovery_offset >= 4 * MiB; }));
    }
};

// A member that missed writes to every region returns; writes of every shape land throughout its resync
// (in regions copied, not yet copied, and being copied). A write once set its new checksums before it
// waited for the region a window was copying, and the window judged the source's old bytes by them: every
// block "rotten", members failed (docs/integrity.md; the forced interleaving is ChecksumTest.AWriteArriving
// DuringAResyncsCopyOfItsRegionDoesNotMakeTheSourceLookRotten).
TEST_F(InterleavingTest, WritesOfEveryShapeDuringAResyncLeaveEqualCopiesAndNoChecksumError) {
    writes_through_a_resync(0, false);
}

// The same in a thin space, with a paced scrub beside the resync and the writes.
TEST_F(InterleavingTest, WritesOfEveryShapeDuringAResyncAndAScrubOfAThinSpaceLeaveEqualCopies) {
    writes_through_a_resync(uint64_t(1) << 30, true);
}

void InterleavingTest::writes_through_a_resync(uint64_t thin_size, bool scrub_beside) {
    auto v = create(2, thin_size);
    VolumeDevice device(v);
    const uint64_t span = 8 * MiB;
    std::vector<uint8_t> model = random_bytes(span, 45);
    ASSERT_EQ(io.write(device, 0, model), 0);
    faults[1]->set(FaultDevice::Mode::fail);
    model = random_bytes(span, 46);
    ASSERT_EQ(io.write(device, 0, model), 0); // every region marked: the resync copies all of them
    ASSERT_EQ(v->status().members[1].state, MemberState::failed);
    v->set_resync_rate(16 << 20); // a window every 62 ms: ~0.5 s for the 8 MiB
    slow(2ms);
    ASSERT_TRUE(test::eventually([&] { return v->status().resync.running; }));
    if (scrub_beside) {
        ASSERT_TRUE(v->scrub(ScrubAction::start, 32 << 20)); // ~0.7 s: beside most of the writes
    }
    Writers writers;
    start_writers(
        writers, device, model, [&] { return span / MiB; },
        [&](int i) { return i < 20 || (i < 150 && v->status().resync.running); }, 47);
    EXPECT_EQ(writers.join(), 0);
    expect_settled(v, device, model);
}

// An online grow of a checksummed mirror whose members' devices hold different bytes past their old end (a
// LUN resized on its target keeps whatever its blocks held): the grow's pass makes the new range equal from
// the lowest copy while writes land in the old range throughout, and in the new range as soon as it is
// there.
TEST_F(InterleavingTest, WritesDuringAnOnlineGrowsEqualizingPassLeaveEqualCopies) {
    auto v = create();
    VolumeDevice device(v);
    const uint64_t before = v->geometry().bytes();
    const uint64_t after = before + 16 * MiB;
    std::vector<uint8_t> model(after, 0);
    for (uint64_t at = 0; at < before; at += 8 * MiB) {
        auto piece = random_bytes(std::min(8 * MiB, before - at), 80 + at);
        ASSERT_EQ(io.write(device, at, piece), 0);
        std::copy(piece.begin(), piece.end(), model.begin() + long(at));
    }
    for (unsigned s = 0; s < 2; ++s) {
        ASSERT_TRUE(disks[s]->resize(member_bytes + 16 * MiB));
        auto old_bytes = random_bytes(16 * MiB, 90 + s);
        ASSERT_EQ(member_io(group.at(0), *disks[s], backstore::IoOp::write, member_bytes, old_bytes), 0);
    }
    v->set_resync_rate(48 << 20); // the pass over the 16 MiB grown: ~0.35 s of windows
    slow(2ms);
    std::atomic<uint64_t> mibs{before / MiB};
    std::atomic<bool> grown{false};
    Writers writers;
    start_writers(
        writers, device, model, [&] { return mibs.load(); },
        [&](int i) { return i < 40 || !grown.load() || v->status().resync.running; }, 91);
    std::this_thread::sleep_for(50ms); // writes in flight while the grow plans and writes its labels
    auto g = v->grow();
    ASSERT_TRUE(g) << g.error().message;
    ASSERT_EQ(g->after, after);
    EXPECT_TRUE(v->status().resync.running) << "the pass runs on after the grow returns";
    // What the new range reads until it is written: the lowest copy's bytes (the pass copies them to the
    // other; no writer is there yet).
    auto grown_range = member_data(0, before, after - before);
    std::copy(grown_range.begin(), grown_range.end(), model.begin() + long(before));
    mibs.store(after / MiB);
    grown.store(true);
    EXPECT_EQ(writers.join(), 0);
    expect_settled(v, device, model);
}

// A failed member replaced by a blank disk (its data area full of old bytes) is rebuilt in full, region by
// region from the in-sync copy, while writes of every shape land ahead of the rebuild, behind it and in the
// region it is copying. Then the space is opened from the new member alone: its labels, its checksum table
// (and a thin space's map) are whole, and what it holds reads as written.
TEST_F(InterleavingTest, WritesDuringTheFullRebuildOfAReplacedMemberLeaveEqualCopies) {
    writes_through_a_full_rebuild(0);
}

TEST_F(InterleavingTest, WritesDuringTheFullRebuildOfAReplacedMemberOfAThinSpaceLeaveEqualCopies) {
    writes_through_a_full_rebuild(uint64_t(1) << 30);
}

void InterleavingTest::writes_through_a_full_rebuild(uint64_t thin_size) {
    auto v = create(2, thin_size);
    VolumeDevice device(v);
    // A thin space: 16 of its pool's clusters written (and rewritten in place below).
    const uint64_t span = thin_size != 0 ? 16 * MiB : v->geometry().bytes();
    std::vector<uint8_t> model(span, 0);
    for (uint64_t at = 0; at < span; at += 8 * MiB) {
        auto piece = random_bytes(std::min(8 * MiB, span - at), 100 + at);
        ASSERT_EQ(io.write(device, at, piece), 0);
        std::copy(piece.begin(), piece.end(), model.begin() + long(at));
    }
    faults[1]->set(FaultDevice::Mode::fail); // gone: its retries fail until it is replaced
    ASSERT_TRUE(v->fail_member(1));
    // The new disk holds old bytes everywhere (its checksum area and a thin space's map area too) but in
    // the bitmap area, which `replace` zeroes before it hands the disk to the volume.
    auto blank = new_disk(1);
    auto old_bytes = random_bytes(member_bytes, 101);
    LabelReading label = read_member_labels(group.at(0), *disks[0]);
    ASSERT_TRUE(label.label && label.label->area(AreaType::bitmap));
    const MetadataArea bitmap = *label.label->area(AreaType::bitmap);
    std::fill_n(old_bytes.begin() + long(bitmap.offset), bitmap.length, 0);
    ASSERT_EQ(member_io(group.at(0), *blank, backstore::IoOp::write, 0, old_bytes), 0);
    v->set_resync_rate(32 << 20); // the whole layout range: ~0.7 s of windows
    slow(2ms);
    std::atomic<bool> replaced{false};
    Writers writers;
    start_writers(
        writers, device, model, [&] { return span / MiB; },
        [&](int i) {
            return i < 40 || !replaced.load() || v->status().members[1].state != MemberState::active;
        },
        102);
    std::this_thread::sleep_for(50ms);
    // Refused while the old device's retry is in flight: tried again.
    ASSERT_EQ(replace(v, 1), "");
    replaced.store(true);
    EXPECT_TRUE(test::eventually([&] { return v->status().resync.running; })) << "the rebuild runs";
    EXPECT_EQ(writers.join(), 0);
    EXPECT_EQ(v->status().members[1].rebuild, RebuildMode::none);
    expect_settled(v, device, model);

    expect_alone(v, 1, model);
}

// A thin checksummed space: snapshots taken while writers write and a member resyncs (the writers paused
// around each, so that the model at that moment is what the snapshot must hold), one of them deleted while
// the writes go on; every first write after a snapshot copies (or defers the copy of) a cluster the resync
// may be copying. Each snapshot left reads what the space held when it was taken.
TEST_F(InterleavingTest, SnapshotsTakenAndDeletedDuringWritesAndAResyncHoldWhatTheSpaceHeldThen) {
    member_bytes = 40 * MiB; // the pool: the origin's 4 clusters and 4 more per snapshot, at most
    auto v = create(2, uint64_t(1) << 30);
    ASSERT_TRUE(v->thin());
    VolumeDevice device(v);
    constexpr uint64_t span = 4 * MiB;
    auto model = random_bytes(span, 110);
    ASSERT_EQ(io.write(device, 0, model), 0);
    faults[1]->set(FaultDevice::Mode::fail);
    model = random_bytes(span, 111);
    ASSERT_EQ(io.write(device, 0, model), 0); // every cluster's region marked: the resync copies them
    ASSERT_EQ(v->status().members[1].state, MemberState::failed);
    v->set_resync_rate(16 << 20); // a MiB window every 62 ms, meeting the writes
    slow(2ms);
    ASSERT_TRUE(test::eventually([&] { return v->status().resync.running; }));

    constexpr int rounds = 4;
    constexpr int batch = 12; // writes per writer between two snapshots
    std::barrier sync(3);     // both writers and this thread: the writers stop while a snapshot is taken
    Writers writers;
    start_writers(
        writers, device, model, [] { return span / MiB; },
        [&](int i) {
            if (i % batch == 0 && i / batch < rounds) {
                sync.arrive_and_wait(); // every write of this writer acknowledged: the snapshot is taken
                sync.arrive_and_wait();
            }
            return i < (rounds + 1) * batch;
        },
        112);
    std::vector<std::string> names;
    std::vector<std::vector<uint8_t>> held; // the model when each was taken
    for (int k = 0; k < rounds; ++k) {
        sync.arrive_and_wait();
        if (k == 0) {
            EXPECT_TRUE(v->status().resync.running) << "the first snapshot is taken during the resync";
        }
        names.push_back("space@s" + std::to_string(k));
        auto taken = v->thin_snapshot(thin_device_name, names.back());
        EXPECT_TRUE(taken) << taken.error().message;
        held.push_back(model);
        sync.arrive_and_wait();
        if (k == 2) {
            EXPECT_TRUE(v->thin_remove(names[1])) << "deleted while the writes go on";
        }
    }
    EXPECT_EQ(writers.join(), 0);
    EXPECT_FALSE(v->status().pool_full);
    expect_settled(v, device, model);
    EXPECT_FALSE(v->thin_view(names[1])) << "deleted";
    for (int k = 0; k < rounds; ++k) {
        if (k == 1) {
            continue;
        }
        auto view = v->thin_view(names[size_t(k)]);
        ASSERT_TRUE(view) << names[size_t(k)];
        std::vector<uint8_t> back(span);
        ASSERT_EQ(io.read(**view, 0, back), 0);
        EXPECT_TRUE(back == held[size_t(k)])
            << names[size_t(k)]
            << " holds what the space held then: " << first_difference(back, held[size_t(k)]);
    }
    EXPECT_EQ(errors(v, 0) + errors(v, 1), 0u) << "the snapshots' reads verified too";
}

// A returning member fails again in the middle of its resync (windows in flight to it, writes going on),
// comes back, and its resync starts again from what the bitmap still marks and finishes; the space then opens
// from it alone.
TEST_F(InterleavingTest, AMemberFailingAgainInTheMiddleOfItsResyncComesBackAndFinishes) {
    fails_again_in_its_resync(0);
}

// The same in a thin space: the returning member gets the pool's map again each time it rejoins.
TEST_F(InterleavingTest, AMemberOfAThinSpaceFailingAgainInTheMiddleOfItsResyncComesBackAndFinishes) {
    fails_again_in_its_resync(uint64_t(1) << 30);
}

void InterleavingTest::fails_again_in_its_resync(uint64_t thin_size) {
    auto v = create(2, thin_size);
    VolumeDevice device(v);
    // A thin space's writers also reach 4 MiB never written before: clusters are allocated (and the map
    // changed) while the member is away, each time.
    const uint64_t written = 8 * MiB;
    const uint64_t span = thin_size != 0 ? 12 * MiB : written;
    std::vector<uint8_t> model(span, 0);
    auto first = random_bytes(written, 120);
    ASSERT_EQ(io.write(device, 0, first), 0);
    faults[1]->set(FaultDevice::Mode::fail);
    first = random_bytes(written, 121);
    ASSERT_EQ(io.write(device, 0, first), 0); // every region marked
    std::copy(first.begin(), first.end(), model.begin());
    ASSERT_EQ(v->status().members[1].state, MemberState::failed);
    v->set_resync_rate(16 << 20); // a window every 62 ms: ~0.5 s for the 8 MiB
    slow(2ms);
    ASSERT_TRUE(test::eventually([&] { return v->status().resync.running; }));
    std::atomic<bool> back_again{false};
    Writers writers;
    start_writers(
        writers, device, model, [&] { return span / MiB; },
        [&](int i) {
            return i < 40 || !back_again.load() || v->status().members[1].state != MemberState::active;
        },
        122);
    ASSERT_TRUE(test::eventually([&] { return v->status().resync.done_bytes >= 3 * MiB; }));
    faults[1]->set(FaultDevice::Mode::fail); // the next window's write to it, or a write, fails it
    EXPECT_TRUE(test::eventually([&] { return v->status().members[1].state == MemberState::failed; }));
    std::this_thread::sleep_for(100ms); // writes land without it
    faults[1]->set(FaultDevice::Mode::slow);
    back_again.store(true);
    EXPECT_EQ(writers.join(), 0);
    expect_settled(v, device, model);
    expect_alone(v, 1, model);
}

// A replaced member fails again in the middle of its full rebuild, with its checkpoint past the first
// regions; writes land below the checkpoint while it is out. When it comes back its rebuild goes on from the
// checkpoint, and the regions written below it meanwhile are copied too (they once were not: the member
// came back in sync with stale data there, which only the checksums caught).
TEST_F(InterleavingTest, AMemberFailingAgainInItsFullRebuildGetsWhatWasWrittenBelowItsCheckpoint) {
    auto v = create();
    VolumeDevice device(v);
    const uint64_t size = v->geometry().bytes();
    auto model = random_bytes(size, 130);
    ASSERT_NO_FATAL_FAILURE(into_a_full_rebuild(v, device, model));
    faults[1]->set(FaultDevice::Mode::fail);
    auto below = random_bytes(64 << 10, 131); // the write that finds it gone
    ASSERT_EQ(io.write(device, MiB + 8192, below), 0);
    std::copy(below.begin(), below.end(), model.begin() + long(MiB + 8192));
    ASSERT_TRUE(test::eventually([&] { return v->status().members[1].state == MemberState::failed; }));
    EXPECT_EQ(v->status().members[1].rebuild, RebuildMode::full);
    below = random_bytes(4096, 132); // and one while it is out
    ASSERT_EQ(io.write(device, 2 * MiB, below), 0);
    std::copy(below.begin(), below.end(), model.begin() + long(2 * MiB));
    faults[1]->count_from = offsets[1];
    faults[1]->count_to = offsets[1] + size;
    faults[1]->reset_counts();
    faults[1]->set(FaultDevice::Mode::ok); // back: its retry rejoins it
    expect_settled(v, device, model);
    // Not the whole space again: what was written below the checkpoint, and the rest from it.
    EXPECT_LE(faults[1]->bytes_written.load(), size - 2 * MiB);
}

// The same member coming back, caught before its resync starts: that waits until the whole checksum table
// has reached it (held here). Meanwhile it counts as in sync only below the first region it missed, so no
// read of what it missed can be served from it, and the labels say so too: closed cleanly then, the space
// opened again resyncs that region (the member once kept its old checkpoint until its resync started, and
// after a clean close the next open went on from there alone, leaving the region stale).
TEST_F(InterleavingTest, AMemberComingBackToItsFullRebuildIsNotReadWhereItMissedWritesBeforeItsResyncStarts) {
    comes_back_to_its_full_rebuild(false);
}

TEST_F(InterleavingTest, AMemberComingBackToItsFullRebuildThenACleanCloseLeavesNoRegionItMissedStale) {
    comes_back_to_its_full_rebuild(true);
}

void InterleavingTest::comes_back_to_its_full_rebuild(bool close_before_its_resync) {
    auto v = create();
    const uint64_t size = v->geometry().bytes();
    auto model = random_bytes(size, 150);
    {
        VolumeDevice device(v);
        ASSERT_NO_FATAL_FAILURE(into_a_full_rebuild(v, device, model));
        faults[1]->set(FaultDevice::Mode::fail);
        auto missed = random_bytes(4096, 151);
        ASSERT_EQ(io.write(device, 2 * MiB, missed), 0); // finds it gone
        std::copy(missed.begin(), missed.end(), model.begin() + long(2 * MiB));
        ASSERT_TRUE(test::eventually([&] { return v->status().members[1].state == MemberState::failed; }));
        LabelReading label = read_member_labels(group.at(0), *disks[1]);
        const MetadataArea* table = label.label ? label.label->area(AreaType::checksums) : nullptr;
        ASSERT_NE(table, nullptr);
        faults[1]->hold_writes(table->offset, table->offset + table->length);
        faults[1]->set(FaultDevice::Mode::ok); // back: its retry rejoins it, and the table goes to it first
        ASSERT_TRUE(test::eventually([&] { return faults[1]->held() > 0; })) << "the table written to it";
        VolumeStatus st = v->status();
        EXPECT_EQ(st.members[1].state, MemberState::rebuilding);
        EXPECT_EQ(st.members[1].rebuild, RebuildMode::full);
        EXPECT_LE(st.members[1].recovery_offset, 2 * MiB) << "in sync up to the region it missed, no further";
        EXPECT_TRUE(test::eventually([&] {
            LabelReading r = read_member_labels(group.at(0), *disks[0]);
            return r.label && r.label->members[1].recovery_offset <= 2 * MiB;
        })) << "and the labels say so";
        if (!close_before_its_resync) {
            faults[1]->release_held();
            expect_settled(v, device, model);
            return;
        }
        // Closed cleanly before the resync starts (the table's write is let go while the close waits).
        std::thread release([&] {
            std::this_thread::sleep_for(300ms);
            faults[1]->release_held();
        });
        EXPECT_TRUE(v->close());
        release.join();
    }
    volumes.clear();
    v.reset();
    auto again = open_from({0, 1});
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ((*again)->status().members[1].state, MemberState::rebuilding);
    VolumeDevice device(*again);
    expect_settled(*again, device, model);
}

// The holder killed in the middle of a resync while a write below the checkpoint was in flight: it reached
// the in-sync copy, not the member being resynced. At the next open the resync goes on from its checkpoint
// and copies that region again (the bitmap marks it); it once went on from the checkpoint alone and the
// member came back in sync without the write. A full rebuild of a replaced member, and a delta resync.
TEST_F(InterleavingTest, AKillInTheMiddleOfAFullRebuildLeavesNoRegionBelowItsCheckpointStale) {
    killed_in_a_resync(true);
}

TEST_F(InterleavingTest, AKillInTheMiddleOfADeltaResyncLeavesNoRegionBelowItsCheckpointStale) {
    killed_in_a_resync(false);
}

void InterleavingTest::killed_in_a_resync(bool full) {
    auto v = create();
    const uint64_t size = v->geometry().bytes();
    auto model = random_bytes(size, 140);
    {
        VolumeDevice device(v);
        ASSERT_EQ(io.write(device, 0, model), 0);
        ASSERT_TRUE(test::eventually([&] { return v->status().dirty_regions == 0; }))
            << "the sweep cleared it";
        faults[1]->set(FaultDevice::Mode::fail);
        if (full) {
            ASSERT_TRUE(v->fail_member(1));
            new_disk(1);
        } else {
            model = random_bytes(size, 141);
            ASSERT_EQ(io.write(device, 0, model), 0); // every region marked: the delta
            ASSERT_EQ(v->status().members[1].state, MemberState::failed);
        }
        v->set_resync_rate(8 << 20); // a MiB window every 125 ms
        if (full) {
            ASSERT_EQ(replace(v, 1), "");
        } else {
            faults[1]->set(FaultDevice::Mode::ok); // back: a delta resync
        }
        ASSERT_TRUE(test::eventually([&] {
            LabelReading r = read_member_labels(group.at(0), *disks[0]);
            return r.label && r.label->members[1].recovery_offset >= 4 * MiB;
        })) << "the checkpoint in the labels";
        const uint64_t at = MiB + 8192;
        auto before = member_data(1, at, 64 << 10);
        auto late = random_bytes(64 << 10, 142);
        ASSERT_EQ(io.write(device, at, late), 0);
        std::copy(late.begin(), late.end(), model.begin() + long(at));
        v->abandon(); // kill -9
        // The write reached slot 0 only: slot 1 holds what it held before.
        ASSERT_EQ(member_io(group.at(0), *disks[1], backstore::IoOp::write, offsets[1] + at, before), 0);
    }
    volumes.clear();
    v.reset();
    auto again = open_from({0, 1});
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ((*again)->status().members[1].state, MemberState::rebuilding);
    VolumeDevice device(*again);
    expect_settled(*again, device, model);
}

} // namespace
} // namespace ispace::volume
