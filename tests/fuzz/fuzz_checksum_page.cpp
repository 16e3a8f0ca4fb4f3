// Fuzzes the block checksum table's pages as read from a member (volume/checksum_page.hpp, and what open
// does with them: Volume::sums_open, sums_settle_copies, sums_rebuild_page). A member's checksums area is
// as hostile as the network: a damaged page must be found and replaced, never trusted, crash, or make a
// read return bytes other than the ones written.
//
// Input: [mode][bytes...]
//   mode bit 0: the table's format: self-checked pages (label bit checksum_pages) or, set, bare pages (the
//               format of spaces made before)
//   mode bit 1: the bytes are one page (zero-padded to 4 KiB; its number the first 4 bytes) for the page
//               reader alone, instead of what follows
//   mode bit 2: the space's second member failed before the space was closed: its first is the only
//               in-sync member at open
//   mode bit 3: each page an edit touched gets its check recomputed afterwards, so that a forged page that
//               checks reaches the comparison of copies entry by entry
//   otherwise the bytes are edits (member: 1 byte, page: 1 byte, offset: 2 bytes, xor: 1 byte) to the
//   checksums areas of a real 2-way mirror of memory members (two table pages in use, blocks written
//   and blocks never written), which is then opened and read whole.
//
// Invariants: a page that checks is exactly what sealing its entries gives; a read that succeeds returns
// the bytes written (the data itself is never edited); with self-checked pages and no edited page that
// still checks, every read succeeds (no good block is lost to a damaged table) and every in-sync member's
// pages in use check after open.
#include "backstore/memory/memory_device.hpp"
#include "common/buffer.hpp"
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "fault_device.hpp"
#include "fuzz_check.hpp"
#include "net/reactor.hpp"
#include "volume/assembly.hpp"
#include "volume/checksum_page.hpp"
#include "volume/member_io.hpp"
#include "volume/volume.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <set>
#include <utility>
#include <vector>

using namespace ispace;
using namespace ispace::volume;

namespace {

// 4 MiB of data each: 1024 blocks, two self-checked table pages (one bare one).
constexpr uint64_t member_bytes = 6 << 20;

struct Snapshot {
    std::vector<std::vector<uint8_t>> members; // each member's whole device
    std::vector<uint8_t> space;                // what reads of the whole space return
    uint64_t area_offset = 0;
    uint64_t pages = 0; // table pages in use
};

net::ReactorGroup& reactors() {
    static net::ReactorGroup* group = [] {
        set_log_level(LogLevel::off); // every damaged page is logged, at every input
        auto* g = new net::ReactorGroup(2);
        g->start();
        return g;
    }();
    return *group;
}

// Submits `request` to `device` from reactor 1 and waits for it.
int submit(backstore::Device& device, backstore::IoRequest& request) {
    std::promise<int> result;
    request.done = [&result](int error) { result.set_value(error); };
    reactors().at(1).post([&device, &request] { device.submit(request); });
    return result.get_future().get();
}

int space_io(backstore::Device& device, backstore::IoOp op, uint64_t offset, uint8_t* data, uint64_t length) {
    Buffer buf = Buffer::allocate(length);
    if (op == backstore::IoOp::write) {
        std::memcpy(buf.data(), data, length);
    }
    iovec iov{buf.data(), length};
    backstore::IoRequest request;
    request.op = op;
    request.offset = offset;
    request.length = length;
    request.iov = &iov;
    request.iovcnt = 1;
    int error = submit(device, request);
    if (op == backstore::IoOp::read) {
        std::memcpy(data, buf.data(), length);
    }
    return error;
}

VolumeOptions options() {
    VolumeOptions o;
    o.holder = "fuzz";
    return o;
}

using Members = std::vector<std::shared_ptr<backstore::MemoryDevice>>;

// Opens the space on `devices` (the volume reaches them through SharedDevices: they outlive it), from
// their labels; null when it does not open.
std::shared_ptr<Volume> open_space(const Members& devices) {
    std::vector<FoundMember> found;
    for (size_t s = 0; s < devices.size(); ++s) {
        LabelReading r = read_member_labels(reactors().at(0), *devices[s]);
        found.push_back({"m" + std::to_string(s), r.label, r.problems});
    }
    auto plan = plan_assembly(found, {});
    if (!plan) {
        return nullptr;
    }
    std::vector<VolumeMember> members;
    for (size_t s = 0; s < devices.size(); ++s) {
        VolumeMember m;
        m.data_offset = found[s].label ? found[s].label->data_offset : 0;
        m.device = std::make_unique<test::SharedDevice>(devices[s]);
        m.url = found[s].url;
        members.push_back(std::move(m));
    }
    auto v = Volume::open(reactors(), *plan, std::move(members), options());
    return v ? *v : nullptr;
}

// A 2-way mirror with checksums in `format`: 64 KiB written in every other 128 KiB (so both table pages
// hold written and never-written blocks), closed; with `failed`, its second member failed first.
Snapshot make_snapshot(ChecksumPageFormat format, bool failed) {
    Members devices;
    std::vector<backstore::Device*> raw;
    SpaceSpec spec;
    spec.name = "fuzz";
    spec.layout = LayoutKind::mirror;
    spec.checksums = true;
    spec.checksum_pages = format;
    for (int i = 0; i < 2; ++i) {
        devices.push_back(std::make_shared<backstore::MemoryDevice>(member_bytes, 512));
        raw.push_back(devices.back().get());
        spec.urls.push_back("m" + std::to_string(i));
    }
    auto formatted = format_space(reactors().at(0), spec, raw, false);
    FUZZ_CHECK(formatted);
    Snapshot snap;
    snap.area_offset = formatted->plan.truth.area(AreaType::checksums)->offset;
    {
        auto v = open_space(devices);
        FUZZ_CHECK(v != nullptr);
        VolumeDevice device(v);
        uint64_t size = device.geometry().bytes();
        snap.pages = checksum_pages(size / checksum_block, format);
        uint32_t x = 12345;
        std::vector<uint8_t> data(64 << 10);
        for (uint64_t at = 0; at + data.size() <= size; at += 128 << 10) {
            for (auto& b : data) {
                x = x * 1103515245 + 12345;
                b = uint8_t(x >> 16);
            }
            FUZZ_CHECK(space_io(device, backstore::IoOp::write, at, data.data(), data.size()) == 0);
        }
        snap.space.resize(size);
        FUZZ_CHECK(space_io(device, backstore::IoOp::read, 0, snap.space.data(), size) == 0);
        if (failed) {
            FUZZ_CHECK(v->fail_member(1));
        }
        FUZZ_CHECK(v->close());
        for (backstore::Device* d : raw) {
            std::vector<uint8_t> bytes(member_bytes);
            FUZZ_CHECK(member_io(reactors().at(0), *d, backstore::IoOp::read, 0, bytes) == 0);
            snap.members.push_back(std::move(bytes));
        }
    }
    return snap;
}

// Not const: the members' images are written to devices from (member_io takes a mutable span), never
// changed.
Snapshot& snapshot(ChecksumPageFormat format, bool failed) {
    static Snapshot snaps[2][2];
    static bool made[2][2] = {};
    int f = format == ChecksumPageFormat::bare, g = failed;
    if (!made[f][g]) {
        snaps[f][g] = make_snapshot(format, failed);
        made[f][g] = true;
    }
    return snaps[f][g];
}

void page_alone(ChecksumPageFormat format, const uint8_t* data, size_t size) {
    uint64_t page = size >= 4 ? load_le32(data) : 0;
    std::vector<uint8_t> bytes(checksum_page_bytes, 0);
    if (size > 4) {
        std::memcpy(bytes.data(), data + 4, std::min<size_t>(size - 4, bytes.size()));
    }
    uint64_t sum = 0;
    for (uint64_t e = 0; e < checksum_entries_per_page(format); ++e) {
        sum += checksum_page_entry(bytes.data(), e);
    }
    (void)sum;
    if (checksum_page_sound(format, page, bytes.data())) {
        std::vector<uint8_t> again = bytes;
        seal_checksum_page(format, page, again.data());
        FUZZ_CHECK(again == bytes);
    } else {
        FUZZ_CHECK(format == ChecksumPageFormat::checked);
        seal_checksum_page(format, page, bytes.data());
        FUZZ_CHECK(checksum_page_sound(format, page, bytes.data()));
        FUZZ_CHECK(!checksum_page_sound(format, page + 1, bytes.data()));
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    ChecksumPageFormat format = (mode & 1) ? ChecksumPageFormat::bare : ChecksumPageFormat::checked;
    ++data;
    --size;
    if (mode & 2) {
        page_alone(format, data, size);
        return 0;
    }
    bool failed = (mode & 4) != 0;
    bool reseal = (mode & 8) != 0;
    Snapshot& snap = snapshot(format, failed);
    // The edits go to a copy of each member's checksums area only (the pages in use, and the room past
    // them): copying whole members at every input made this fuzzer run at a few inputs a second.
    uint64_t area_pages = snap.pages + 2;
    const uint64_t area_bytes = area_pages * checksum_page_bytes;
    std::vector<std::vector<uint8_t>> areas;
    for (const auto& image : snap.members) {
        areas.emplace_back(image.begin() + ptrdiff_t(snap.area_offset),
                           image.begin() + ptrdiff_t(snap.area_offset + area_bytes));
    }
    std::set<std::pair<unsigned, uint64_t>> touched;
    for (size_t i = 0; i + 5 <= size && i < 5 * 64; i += 5) {
        unsigned m = data[i] & 1;
        uint64_t page = data[i + 1] % area_pages;
        uint64_t offset = (uint64_t(data[i + 2]) | uint64_t(data[i + 3]) << 8) % checksum_page_bytes;
        areas[m][page * checksum_page_bytes + offset] ^= data[i + 4];
        touched.insert({m, page});
    }
    // Whether some edited page still checks though it changed: a forged page, which may fail good blocks.
    bool forged = format == ChecksumPageFormat::bare;
    for (const auto& [m, page] : touched) {
        uint8_t* bytes = areas[m].data() + page * checksum_page_bytes;
        if (reseal) {
            seal_checksum_page(format, page, bytes);
        }
        bool same = std::memcmp(bytes, snap.members[m].data() + snap.area_offset + page * checksum_page_bytes,
                                checksum_page_bytes) == 0;
        forged |= !same && checksum_page_sound(format, page, bytes);
    }
    // Two memory members kept across inputs (their chunks allocated once), each given the snapshot's
    // image whole again (the last input's open and repairs wrote to it), then the edited area.
    static Members kept;
    if (kept.empty()) {
        for (size_t m = 0; m < snap.members.size(); ++m) {
            kept.push_back(std::make_shared<backstore::MemoryDevice>(member_bytes, 512));
        }
    }
    for (size_t m = 0; m < kept.size(); ++m) {
        FUZZ_CHECK(member_io(reactors().at(0), *kept[m], backstore::IoOp::write, 0, snap.members[m]) == 0);
        FUZZ_CHECK(
            member_io(reactors().at(0), *kept[m], backstore::IoOp::write, snap.area_offset, areas[m]) == 0);
    }
    auto v = open_space(kept);
    FUZZ_CHECK(v != nullptr); // the labels were not edited
    {
        VolumeDevice device(v);
        std::vector<uint8_t> back(1 << 20);
        for (uint64_t at = 0; at < snap.space.size(); at += back.size()) {
            uint64_t n = std::min<uint64_t>(back.size(), snap.space.size() - at);
            int error = space_io(device, backstore::IoOp::read, at, back.data(), n);
            FUZZ_CHECK(error == 0 || error == -EIO);
            FUZZ_CHECK(error != 0 || std::memcmp(back.data(), snap.space.data() + at, n) == 0);
            FUZZ_CHECK(error == 0 || forged);
        }
        if (!forged) {
            for (unsigned m = 0; m < (failed ? 1u : 2u); ++m) {
                std::vector<uint8_t> table(snap.pages * checksum_page_bytes);
                FUZZ_CHECK(member_io(reactors().at(0), *kept[m], backstore::IoOp::read, snap.area_offset,
                                     table) == 0);
                for (uint64_t p = 0; p < snap.pages; ++p) {
                    FUZZ_CHECK(checksum_page_sound(format, p, table.data() + p * checksum_page_bytes));
                }
            }
        }
    }
    FUZZ_CHECK(v->close());
    return 0;
}
