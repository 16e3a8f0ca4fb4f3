#include "volume/member_io.hpp"

#include "volume/checksum_page.hpp"
#include "volume/thin/member_store.hpp"
#include "volume/thin/pool.hpp"

#include "common/buffer.hpp"

#include <fmt/format.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <future>

namespace ispace::volume {

int member_io(net::Reactor& reactor, backstore::Device& device, backstore::IoOp op, uint64_t offset,
              std::span<uint8_t> data, bool fua) {
    assert(net::Reactor::current() == nullptr && "member_io blocks: not on a reactor thread");
    // Through an aligned Buffer: the device may use O_DIRECT.
    Buffer buffer = Buffer::allocate(std::max<size_t>(data.size(), 1));
    if (op == backstore::IoOp::write && !data.empty()) {
        std::memcpy(buffer.data(), data.data(), data.size());
    }
    iovec iov{buffer.data(), data.size()};
    backstore::IoRequest request;
    request.op = op;
    request.offset = offset;
    request.length = data.size();
    if (!data.empty()) {
        request.iov = &iov;
        request.iovcnt = 1;
    }
    request.fua = fua;
    std::promise<int> done;
    auto future = done.get_future();
    request.done = [&done](int error) { done.set_value(error); };
    reactor.post([&] { device.submit(request); });
    int error = future.get();
    if (error == 0 && op == backstore::IoOp::read && !data.empty()) {
        std::memcpy(data.data(), buffer.data(), data.size());
    }
    return error;
}

LabelReading read_member_labels(net::Reactor& reactor, backstore::Device& device) {
    uint64_t bytes = device.geometry().bytes();
    auto offsets = label_offsets(bytes);
    std::vector<std::vector<uint8_t>> copies(label_copies);
    if (bytes < 4 * label_size) {
        LabelReading none;
        none.problems.push_back(fmt::format("{} bytes: too small to hold labels", bytes));
        return none;
    }
    for (unsigned c = 0; c < label_copies; ++c) {
        std::vector<uint8_t> b(label_size);
        if (member_io(reactor, device, backstore::IoOp::read, offsets[c], b) == 0) {
            copies[c] = std::move(b);
        }
    }
    LabelReading reading = choose_label(copies, offsets);
    // A device that grew keeps its end copies where its labels say it ended.
    if (reading.label && reading.label->member_size != bytes && reading.label->member_size <= bytes) {
        auto old = label_offsets(reading.label->member_size);
        std::vector<std::vector<uint8_t>> more = copies;
        for (unsigned c = 2; c < label_copies; ++c) {
            std::vector<uint8_t> b(label_size);
            if (member_io(reactor, device, backstore::IoOp::read, old[c], b) == 0) {
                more[c] = std::move(b);
            }
        }
        std::array<uint64_t, label_copies> where{offsets[0], offsets[1], old[2], old[3]};
        LabelReading again = choose_label(more, where);
        if (again.valid > reading.valid) {
            reading = std::move(again);
        }
    }
    return reading;
}

Result<void> write_member_labels(net::Reactor& reactor, backstore::Device& device, const Label& label) {
    auto offsets = label_offsets(label.member_size);
    for (unsigned first : {0u, 1u}) {
        for (unsigned c : {first, first + 2}) {
            std::vector<uint8_t> b(label_size);
            encode_label(label, c, b);
            if (int error = member_io(reactor, device, backstore::IoOp::write, offsets[c], b, true);
                error != 0) {
                return make_error(fmt::format("{}: label copy {} could not be written: {}", device.describe(),
                                              c, std::strerror(-error)),
                                  -error);
            }
        }
    }
    return {};
}

std::vector<uint8_t> read_member_bitmap(net::Reactor& reactor, backstore::Device& device,
                                        const Label& label) {
    const MetadataArea* area = label.area(AreaType::bitmap);
    if (area == nullptr) {
        return {};
    }
    std::vector<uint8_t> b(area->length);
    if (member_io(reactor, device, backstore::IoOp::read, area->offset, b) != 0) {
        return {};
    }
    return b;
}

Result<MemberPlan> plan_for(const SpaceSpec& spec, uint64_t device_bytes, uint32_t block_size,
                            uint64_t space_bytes, uint64_t thin_map_bytes, uint64_t checksum_bytes) {
    // A layout with one copy gets a bitmap only for its checksums: it says where a crash may have left a
    // write's data and its checksum apart (docs/integrity.md, "Layouts with one copy").
    bool redundant = spec.layout == LayoutKind::mirror || spec.layout == LayoutKind::stripe_mirror;
    return plan_member(device_bytes, block_size, space_bytes,
                       redundant || spec.checksums ? spec.region_size : 0, thin_map_bytes, checksum_bytes);
}

uint64_t thin_metadata_pages(uint64_t pool_clusters, uint64_t virtual_clusters) {
    // Leaves in use at most: one per mapped cluster when writes are sparse, one per 64 virtual clusters
    // when the device is smaller than that.
    uint64_t leaves =
        std::min(pool_clusters, (virtual_clusters + thin::leaf_entries - 1) / thin::leaf_entries);
    // Snapshots and clones: a leaf is copied for a device when a write there diverges from a tree it
    // shares, which (but for UNMAP) takes a cluster too. So the distinct leaves of every device together
    // stay near the space's own plus one per pool cluster, and never exceed one map per device; 16 maps'
    // worth bounds the area for large pools (0.2 % of a 1 TiB pool of 1 MiB clusters), where a space with
    // more snapshots that all diverge everywhere gets ENOSPC for its next snapshot or write.
    uint64_t all_devices = std::min(leaves * 16, leaves + pool_clusters);
    // Each twice (a changed leaf goes to a free page while its old page is the durable state until the
    // commit), the interior nodes above them (a 256th as many, per level: a 64th is ample), the two
    // superblocks, device tables and room to spare.
    return 64 + 2 * all_devices + all_devices / 64;
}

Result<ThinPoolSummary> read_thin_stats(net::Reactor& reactor, const std::vector<backstore::Device*>& devices,
                                        const Label& truth) {
    const MetadataArea* area = truth.area(AreaType::thin_map);
    if (area == nullptr || devices.empty()) {
        return make_error("no thin metadata area to read", ENODEV);
    }
    std::vector<thin::MemberMetadataStore::Member> members;
    for (auto* d : devices) {
        members.push_back({d, area->offset});
    }
    auto store = thin::MemberMetadataStore::make(reactor, std::move(members), area->length / thin::page_size);
    if (!store) {
        return store.error();
    }
    auto layout = truth.layout_of();
    if (!layout) {
        return layout.error();
    }
    auto pool = thin::ThinPool::open(*store, capacity(*layout) / thin::min_cluster_size);
    if (!pool) {
        return pool.error();
    }
    thin::PoolStats s = pool->stats();
    return ThinPoolSummary{s.allocated_clusters, s.pool_clusters, pool->superblock().cluster_size,
                           pool->devices()};
}

namespace {

// Room that members of different sizes leave unused, worth a word when it is more than 1 MiB and 1 % of
// the member (as mdadm warns): the user may have meant another member, or will want `space grow` later.
std::vector<std::string> unused_room_notes(const Layout& layout, const std::vector<std::string>& urls) {
    std::vector<std::string> notes;
    uint32_t smallest = 0;
    for (uint32_t s = 1; s < layout.members(); ++s) {
        if (layout.member_bytes[s] < layout.member_bytes[smallest]) {
            smallest = s;
        }
    }
    std::vector<uint64_t> used = member_bytes_used(layout, capacity(layout));
    for (uint32_t s = 0; s < layout.members(); ++s) {
        uint64_t unused = layout.member_bytes[s] - used[s];
        if (unused < (uint64_t(1) << 20) || unused * 100 < layout.member_bytes[s]) {
            continue;
        }
        notes.push_back(fmt::format("{} has {} MiB the {} does not use: the smallest member ({}) sets "
                                    "what each member gives; `ispace space grow` takes the rest once the "
                                    "smaller members grow too",
                                    urls.at(s), unused >> 20, to_string(layout.kind), urls.at(smallest)));
    }
    return notes;
}

// Writes an empty pool with the space's one device to the thin area of every member (before the labels:
// a member is a member only once everything it needs is in place).
Result<void> format_thin(net::Reactor& reactor, const std::vector<backstore::Device*>& devices,
                         const MemberPlan& plan, uint32_t cluster_size, uint64_t pool_clusters,
                         uint64_t space_bytes) {
    std::vector<thin::MemberMetadataStore::Member> members;
    for (auto* d : devices) {
        members.push_back({d, plan.thin_map.offset});
    }
    auto store =
        thin::MemberMetadataStore::make(reactor, std::move(members), plan.thin_map.length / thin::page_size);
    if (!store) {
        return store.error();
    }
    auto pool = thin::ThinPool::format(*store, {cluster_size, pool_clusters});
    if (!pool) {
        return make_error(fmt::format("the thin pool could not be written: {}", pool.error().message),
                          pool.error().code);
    }
    uint64_t virtual_clusters = (space_bytes + cluster_size - 1) / cluster_size;
    if (auto id = pool->create_device(thin_device_name, virtual_clusters); !id) {
        return id.error();
    }
    if (auto c = pool->commit(); !c) {
        return make_error(fmt::format("the thin pool could not be written: {}", c.error().message),
                          c.error().code);
    }
    return {};
}

} // namespace

Result<FormattedSpace> format_space(net::Reactor& reactor, const SpaceSpec& spec,
                                    const std::vector<backstore::Device*>& devices, bool force) {
    if (spec.name.empty() || spec.name.size() > max_name_length ||
        spec.name.find_first_of("/ \t\n\\:") != std::string::npos) {
        return make_error(fmt::format("space name '{}': 1 to {} characters, no '/', ':', '\\' or blanks",
                                      spec.name, max_name_length),
                          EINVAL);
    }
    if (spec.region_size < 4096 || (spec.region_size & (spec.region_size - 1)) != 0) {
        return make_error(fmt::format("region size {}: a power of two, 4 KiB or more", spec.region_size),
                          EINVAL);
    }
    if (devices.empty() || devices.size() != spec.urls.size()) {
        return make_error("a space needs its members", EINVAL);
    }
    if (spec.checksums && spec.chunk % checksum_block != 0) {
        return make_error(fmt::format("--checksum needs a chunk that is whole 4 KiB blocks"), EINVAL);
    }
    // Block sizes agree.
    uint32_t bs = devices[0]->geometry().block_size;
    for (size_t i = 0; i < devices.size(); ++i) {
        if (devices[i]->geometry().block_size != bs) {
            return make_error(
                fmt::format("{} has {}-byte blocks and {} has {}: the members of a space must have one "
                            "block size",
                            spec.urls[0], bs, spec.urls[i], devices[i]->geometry().block_size),
                EINVAL);
        }
    }
    // Nobody else's member (unless forced): read every member's labels before writing anything.
    for (size_t i = 0; i < devices.size(); ++i) {
        LabelReading existing = read_member_labels(reactor, *devices[i]);
        if (existing.label && !force) {
            return make_error(
                fmt::format("{} is a member of space '{}' ({}, slot {}, epoch {}); use --force to "
                            "reuse it (that space loses this member)",
                            spec.urls[i], existing.label->name, to_string(existing.label->space_uuid),
                            existing.label->slot, existing.label->epoch),
                EEXIST);
        }
    }
    // Sizes: plan each member for the largest space the members could make, then the layout decides.
    uint64_t upper = 0;
    for (auto* d : devices) {
        upper += d->geometry().bytes();
    }
    std::vector<MemberPlan> plans;
    std::vector<uint64_t> data_sizes;
    // Checksums cover the layout's range, which is at most what the members hold together; the area is
    // sized for more, so that the space can grow.
    uint64_t checksum_bytes =
        spec.checksums ? checksum_area_bytes(checksum_reach_at_create(upper), spec.checksum_pages) : 0;
    if (spec.checksums && upper > max_checksum_reach) {
        return make_error(fmt::format("--checksum: the members hold {} GiB; checksums are kept in memory and "
                                      "this version takes at most {} GiB of members",
                                      upper >> 30, (max_checksum_table / 4 * checksum_block) >> 30),
                          EINVAL);
    }
    for (size_t i = 0; i < devices.size(); ++i) {
        auto plan = plan_for(spec, devices[i]->geometry().bytes(), bs, upper, 0, checksum_bytes);
        if (!plan) {
            return make_error(fmt::format("{}: {}", spec.urls[i], plan.error().message), plan.error().code);
        }
        plans.push_back(*plan);
        data_sizes.push_back(plan->data_size);
    }
    auto layout = make_layout(spec.layout, data_sizes, bs, spec.chunk, spec.copies);
    if (!layout) {
        return layout.error();
    }
    uint64_t cap = capacity(*layout);
    uint64_t size = spec.size == 0 ? cap : spec.size;
    if (size % bs != 0) {
        return make_error(fmt::format("size {}: not a whole number of {}-byte blocks", size, bs), EINVAL);
    }
    if (spec.checksums && (size % checksum_block != 0 || cap % checksum_block != 0)) {
        return make_error(fmt::format("--checksum: size {} is not whole 4 KiB blocks", size), EINVAL);
    }
    uint64_t pool_clusters = 0;
    if (spec.thin) {
        uint32_t cs = spec.cluster_size;
        if (cs < thin::min_cluster_size || cs > thin::default_cluster_size || (cs & (cs - 1)) != 0) {
            return make_error(fmt::format("cluster size {}: a power of two from {} KiB to {} KiB", cs,
                                          thin::min_cluster_size >> 10, thin::default_cluster_size >> 10),
                              EINVAL);
        }
        if (size > max_thin_size) {
            return make_error(fmt::format("size {} MiB: a thin space holds at most {} TiB", size >> 20,
                                          max_thin_size >> 40),
                              EINVAL);
        }
        // The metadata area comes out of the members' data areas: plan again with it. It is sized for a
        // pool four times this one, so that the pool can grow with its members (`ispace space grow`) as
        // far as the checksums area lets a checksummed space grow; a pool that large costs a larger area
        // only while the space's own leaves do not bound it (small pools).
        uint64_t pages = thin_metadata_pages(4 * (cap / cs), (size + cs - 1) / cs);
        plans.clear();
        data_sizes.clear();
        for (size_t i = 0; i < devices.size(); ++i) {
            auto plan = plan_for(spec, devices[i]->geometry().bytes(), bs, upper, pages * thin::page_size,
                                 checksum_bytes);
            if (!plan) {
                return make_error(fmt::format("{}: {}", spec.urls[i], plan.error().message),
                                  plan.error().code);
            }
            plans.push_back(*plan);
            data_sizes.push_back(plan->data_size);
        }
        layout = make_layout(spec.layout, data_sizes, bs, spec.chunk, spec.copies);
        if (!layout) {
            return layout.error();
        }
        cap = capacity(*layout);
        pool_clusters = cap / cs;
        if (pool_clusters == 0) {
            return make_error(fmt::format("the members hold {} KiB as a {}: less than one {} KiB cluster",
                                          cap >> 10, to_string(spec.layout), cs >> 10),
                              ENOSPC);
        }
    }
    if (!spec.thin && size > cap) {
        std::string sizes;
        for (size_t i = 0; i < devices.size(); ++i) {
            sizes += fmt::format("{}{} ({} MiB usable)", sizes.empty() ? "" : ", ", spec.urls[i],
                                 data_sizes[i] >> 20);
        }
        return make_error(fmt::format("size {} MiB: the members hold at most {} MiB as a {} ({})", size >> 20,
                                      cap >> 20, to_string(spec.layout), sizes),
                          ENOSPC);
    }
    // The bitmap areas were sized for `upper`; a space of `size` needs no more.
    Label l;
    l.space_uuid = make_uuid();
    l.name = spec.name;
    l.layout = spec.layout;
    l.copies = layout->copies;
    l.block_size = bs;
    l.chunk = layout->chunk;
    l.space_size = size;
    l.epoch = 1;
    l.sequence = 1;
    l.generation = random_u64();
    l.clean = true;
    l.created = l.updated = uint64_t(std::time(nullptr));
    if (layout->redundant() || spec.checksums) {
        l.region_size = spec.region_size;
        l.compat |= feature::compat::bitmap;
        l.areas.push_back(plans[0].bitmap); // every member's bitmap area sits at the same place
    }
    if (spec.thin) {
        l.incompat |= feature::incompat::thin;
        l.areas.push_back(plans[0].thin_map); // so does the thin metadata area
    }
    if (spec.checksums) {
        l.incompat |= feature::incompat::checksums;
        if (spec.checksum_pages == ChecksumPageFormat::checked) {
            l.incompat |= feature::incompat::checksum_pages;
        }
        l.areas.push_back(plans[0].checksums); // and the checksums area
    }
    for (size_t i = 0; i < devices.size(); ++i) {
        MemberEntry e;
        e.uuid = make_uuid();
        e.data_bytes = data_sizes[i];
        e.url = spec.urls[i].substr(0, max_url_length);
        l.members.push_back(std::move(e));
    }
    FormattedSpace out;
    out.plan.truth = l;
    out.plan.slots.assign(devices.size(), SlotPlan::current);
    out.plan.rebuild.assign(devices.size(), RebuildMode::none);
    for (size_t i = 0; i < devices.size(); ++i) {
        out.plan.found.push_back(i);
        out.data_offsets.push_back(plans[i].data_offset);
    }
    out.pool_bytes = pool_clusters * spec.cluster_size;
    if (spec.size == 0 || spec.thin) {
        out.notes = unused_room_notes(*layout, spec.urls);
    }
    // Now write: the bitmap area zeroed, then the labels (the labels last: a member is a member only once
    // everything it needs is in place).
    for (size_t i = 0; i < devices.size(); ++i) {
        if (layout->redundant() || spec.checksums) {
            std::vector<uint8_t> zero(plans[i].bitmap.length, 0);
            if (int error =
                    member_io(reactor, *devices[i], backstore::IoOp::write, plans[i].bitmap.offset, zero);
                error != 0) {
                return make_error(fmt::format("{}: the bitmap area could not be written: {}", spec.urls[i],
                                              std::strerror(-error)),
                                  -error);
            }
        }
    }
    if (spec.checksums) {
        // Zero: "no checksum yet" for every block (docs/integrity.md), so a fresh space reads whatever
        // its members held before without a false mismatch; each page with its own check.
        for (size_t i = 0; i < devices.size(); ++i) {
            std::vector<uint8_t> zero(plans[i].checksums.length, 0);
            for (uint64_t p = 0; p < zero.size() / checksum_page_bytes; ++p) {
                seal_checksum_page(spec.checksum_pages, p, zero.data() + p * checksum_page_bytes);
            }
            if (int error =
                    member_io(reactor, *devices[i], backstore::IoOp::write, plans[i].checksums.offset, zero);
                error != 0) {
                return make_error(fmt::format("{}: the checksums area could not be written: {}", spec.urls[i],
                                              std::strerror(-error)),
                                  -error);
            }
        }
    }
    if (spec.thin) {
        if (auto r = format_thin(reactor, devices, plans[0], spec.cluster_size, pool_clusters, size); !r) {
            return r.error();
        }
    }
    for (size_t i = 0; i < devices.size(); ++i) {
        Label mine = l;
        mine.slot = uint32_t(i);
        mine.member_uuid = l.members[i].uuid;
        mine.data_offset = plans[i].data_offset;
        mine.data_size = data_sizes[i];
        mine.member_size = devices[i]->geometry().bytes();
        if (auto written = write_member_labels(reactor, *devices[i], mine); !written) {
            return written.error();
        }
    }
    return out;
}

} // namespace ispace::volume
