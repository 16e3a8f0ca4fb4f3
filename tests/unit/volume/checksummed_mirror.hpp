// The fixture of the checksum and interleaving tests: a checksummed space (a 2-way mirror by default) of
// memory members behind fault-injecting wrappers (fault_device.hpp), on two reactors, opened again from
// its members' labels as an assembly would.
#pragma once

#include "backstore/memory/memory_device.hpp"
#include "fault_device.hpp"
#include "volume/assembly.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ispace::volume::test {

class ChecksummedMirror : public ::testing::Test {
protected:
    ChecksummedMirror() : group(2), io(group.at(1)) { group.start(); }
    ~ChecksummedMirror() override {
        for (auto& v : volumes) {
            (void)v->close();
        }
        volumes.clear();
        group.stop();
    }

    VolumeOptions options() {
        VolumeOptions o;
        o.sweep_interval = sweep_interval;
        o.retry_min = std::chrono::milliseconds(50);
        o.retry_max = std::chrono::milliseconds(200);
        o.holder = "test";
        return o;
    }
    // `n` members of `member_bytes` each, formatted and opened; thin when `thin_size` is given.
    std::shared_ptr<Volume> create(unsigned n = 2, uint64_t thin_size = 0,
                                   LayoutKind kind = LayoutKind::mirror) {
        std::vector<backstore::Device*> raw;
        SpaceSpec spec;
        spec.name = "sums";
        spec.layout = kind;
        spec.checksums = true;
        spec.checksum_pages = page_format;
        spec.thin = thin_size != 0;
        spec.size = thin_size;
        for (unsigned i = 0; i < n; ++i) {
            disks.push_back(std::make_shared<backstore::MemoryDevice>(member_bytes, 512));
            faults.push_back(std::make_shared<FaultDevice>(disks.back()));
            raw.push_back(faults.back().get());
            spec.urls.push_back("m" + std::to_string(i));
        }
        auto formatted = format_space(group.at(0), spec, raw, false);
        EXPECT_TRUE(formatted) << formatted.error().message;
        if (!formatted) {
            return nullptr;
        }
        offsets = formatted->data_offsets;
        std::vector<unsigned> all;
        for (unsigned i = 0; i < n; ++i) {
            all.push_back(i);
        }
        auto v = Volume::open(group, formatted->plan, members_for(all, n), options());
        EXPECT_TRUE(v) << v.error().message;
        if (!v) {
            return nullptr;
        }
        volumes.push_back(*v);
        return *v;
    }
    // The members of a space of `count` slots, those in `present` with their devices.
    std::vector<VolumeMember> members_for(const std::vector<unsigned>& present, size_t count) {
        std::vector<VolumeMember> members(count);
        for (size_t s = 0; s < count; ++s) {
            members[s].data_offset = offsets[s];
            members[s].url = "m" + std::to_string(s);
        }
        for (unsigned s : present) {
            members[s].device = std::make_unique<SharedDevice>(faults[s]);
        }
        return members;
    }
    // The space opened again (after a close) from the members in `slots` (every member when empty), the
    // others missing; `before_open` runs once the labels are read and the plan made.
    Result<std::shared_ptr<Volume>> open_from(std::vector<unsigned> slots = {},
                                              const std::function<void()>& before_open = {}) {
        if (slots.empty()) {
            for (unsigned s = 0; s < faults.size(); ++s) {
                slots.push_back(s);
            }
        }
        auto plan = plan_assembly(found_on(group.at(0), faults, slots), {});
        if (!plan) {
            return plan.error();
        }
        if (before_open) {
            before_open();
        }
        auto v = Volume::open(group, *plan, members_for(slots, plan->truth.members.size()), options());
        if (v) {
            volumes.push_back(*v);
        }
        return v;
    }

    // A new disk (zeroed) in slot `slot` of the fixture, for replace(): the open volume still holds the
    // old one.
    std::shared_ptr<backstore::MemoryDevice> new_disk(unsigned slot) {
        disks[slot] = std::make_shared<backstore::MemoryDevice>(member_bytes, 512);
        faults[slot] = std::make_shared<FaultDevice>(disks[slot]);
        return disks[slot];
    }
    // The fixture's disk in slot `slot` put into `v` by replace_member() as a new member, tried again until
    // the volume takes it or `limit` passes (it refuses while a request, such as the failed member's retry,
    // is in flight): "" once taken, else the last refusal.
    std::string replace(const std::shared_ptr<Volume>& v, unsigned slot,
                        std::chrono::milliseconds limit = std::chrono::seconds(20)) {
        MemberEntry fresh;
        fresh.uuid = make_uuid();
        fresh.data_bytes = v->truth_at_open().members[slot].data_bytes;
        fresh.url = "m" + std::to_string(slot) + "-new";
        std::string refused = "never tried";
        eventually(
            [&] {
                VolumeMember m;
                m.device = std::make_unique<SharedDevice>(faults[slot]);
                m.data_offset = offsets[slot];
                m.url = fresh.url;
                auto r = v->replace_member(slot, std::move(m), fresh);
                refused = r ? "" : r.error().message;
                return bool(r);
            },
            limit);
        return refused;
    }

    std::vector<uint8_t> member_data(unsigned slot, uint64_t offset, uint64_t length) {
        std::vector<uint8_t> out(length);
        EXPECT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::read, offsets[slot] + offset, out),
                  0);
        return out;
    }
    void put_member_data(unsigned slot, uint64_t offset, std::vector<uint8_t> data) {
        ASSERT_EQ(member_io(group.at(0), *disks[slot], backstore::IoOp::write, offsets[slot] + offset, data),
                  0);
    }
    // Blocks read from member `slot` that failed their checksum since the space was opened.
    uint64_t errors(const std::shared_ptr<Volume>& v, unsigned slot) {
        return v->status().members[slot].checksum_errors;
    }

    uint64_t member_bytes = uint64_t(24) << 20;
    std::chrono::milliseconds sweep_interval{50};
    ChecksumPageFormat page_format = ChecksumPageFormat::checked; // of the spaces create() makes
    net::ReactorGroup group;
    Submitter io;
    std::vector<std::shared_ptr<backstore::MemoryDevice>> disks;
    std::vector<std::shared_ptr<FaultDevice>> faults;
    std::vector<uint64_t> offsets;
    std::vector<std::shared_ptr<Volume>> volumes;
};

} // namespace ispace::volume::test
