// Fuzzes the data-space label reader (volume/label.hpp): what a member's disk says is as hostile as what
// the network says, and a damaged label must be an error message, never a crash.
//
// Input: [mode][bytes...]
//   mode bit 0: the bytes are XORed over a valid label (a 3-way mirror) instead of being the label
//   mode bit 1: the label's checksum is recomputed after that, so the field checks behind it are reached
//   mode bit 2: the bytes are also split into four copies for choose_label()
//   mode bit 3: with bit 0, the valid label is a checksummed mirror holding a scrub record and checksum
//               error counts (compat scrub), so that XOR reaches those fields' checks
//
// Invariants: decode_label() returns a label or an error; a label it returns encodes back to exactly the
// bytes it was read from (nothing is lost or invented; with a compat bit this version does not know, up to
// where such a feature's fields begin); the layout it describes maps its whole space
// inside every member's data area; choose_label() picks a copy only when one decodes.
#include "fuzz_check.hpp"
#include "volume/label.hpp"
#include "volume/layout.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

using namespace ispace;
using namespace ispace::volume;

namespace {

std::vector<uint8_t> base_label(bool scrub) {
    Label l;
    l.space_uuid = Uuid{1, 2, 3, 4, 5, 6, 0x47, 8, 0x89, 10, 11, 12, 13, 14, 15, 16};
    l.name = "fuzz";
    l.layout = LayoutKind::mirror;
    l.copies = 3;
    l.block_size = 512;
    l.member_size = 64 << 20;
    l.data_offset = 1 << 20;
    l.data_size = 62 << 20;
    l.space_size = 62 << 20;
    l.region_size = 1 << 20;
    l.compat = feature::compat::bitmap;
    l.areas.push_back({AreaType::bitmap, 0, metadata_start, 4096});
    for (uint8_t i = 0; i < 3; ++i) {
        MemberEntry m;
        m.uuid = Uuid{0x10, i, 3, 4, 5, 6, 0x47, 8, 0x89, 10, 11, 12, 13, 14, 15, 1};
        m.data_bytes = l.data_size;
        m.url = "iscsi://127.0.0.1:3260/iqn.2026-11.org.ispace:fuzz/0";
        l.members.push_back(m);
    }
    l.slot = 1;
    l.member_uuid = l.members[1].uuid;
    if (scrub) {
        l.incompat = feature::incompat::checksums;
        l.compat |= feature::compat::scrub;
        l.areas.push_back({AreaType::checksums, 0, metadata_start + 4096,
                           checksum_area_bytes(62 << 20, ChecksumPageFormat::bare)});
        l.scrub.state = ScrubState::done;
        l.scrub.position = 62 << 20;
        l.scrub.started = 1700000000;
        l.scrub.finished = 1700000600;
        l.scrub.checked = 15000;
        l.scrub.bad = 9;
        l.scrub.repaired = 7;
        l.scrub.unrepairable = 2;
        l.scrub.lost = {8192, 40 << 20};
        l.checksum_errors = {3, 0, 31};
    }
    std::vector<uint8_t> b(label_size);
    encode_label(l, 0, b);
    return b;
}

void fix_checksum(std::vector<uint8_t>& b) {
    std::memset(b.data() + 16, 0, 4);
    uint32_t crc = label_crc32c(b.data(), label_size);
    for (int i = 0; i < 4; ++i) {
        b[16 + i] = uint8_t(crc >> (8 * i));
    }
}

void check_decoded(const std::vector<uint8_t>& bytes) {
    auto label = decode_label(bytes);
    if (!label) {
        FUZZ_CHECK(!label.error().message.empty());
        return;
    }
    std::vector<uint8_t> again(label_size);
    uint32_t copy = uint32_t(bytes[20]) | uint32_t(bytes[21]) << 8 | uint32_t(bytes[22]) << 16 |
                    uint32_t(bytes[23]) << 24;
    encode_label(*label, copy, again);
    if ((label->compat & ~feature::compat::known) == 0) {
        FUZZ_CHECK(std::memcmp(again.data(), bytes.data(), label_size) == 0);
    } else {
        // A later compat feature's fields (from byte 6144) are not this version's: all before them, but the
        // checksum that also covers them, is.
        constexpr size_t compat_fields = 6144;
        FUZZ_CHECK(std::memcmp(again.data(), bytes.data(), 16) == 0);
        FUZZ_CHECK(std::memcmp(again.data() + 20, bytes.data() + 20, compat_fields - 20) == 0);
    }
    auto layout = label->layout_of();
    FUZZ_CHECK(layout.ok());
    FUZZ_CHECK(label->space_size <= capacity(*layout));
    // What a scrub record promises: a position inside the layout, lost blocks below it and ascending.
    FUZZ_CHECK(label->scrub.position <= capacity(*layout));
    FUZZ_CHECK(label->scrub.lost.size() <= max_scrub_lost &&
               label->scrub.lost.size() <= label->scrub.unrepairable);
    for (size_t i = 0; i < label->scrub.lost.size(); ++i) {
        FUZZ_CHECK(label->scrub.lost[i] < label->scrub.position);
        FUZZ_CHECK(i == 0 || label->scrub.lost[i - 1] < label->scrub.lost[i]);
    }
    FUZZ_CHECK(label->scrub.state == ScrubState::none || label->checksums());
    std::vector<Extent> extents;
    uint64_t step = label->space_size / 7 / label->block_size * label->block_size;
    for (uint64_t at = 0; at + label->block_size <= label->space_size && extents.size() < 64;
         at += step ? step : label->block_size) {
        extents.clear();
        map_range(*layout, at, label->block_size, extents);
        FUZZ_CHECK(extents.size() == 1);
        for (uint32_t c = 0; c < layout->copies; ++c) {
            uint32_t m = member_of(*layout, extents[0].column, c);
            FUZZ_CHECK(m < layout->members());
            FUZZ_CHECK(extents[0].member_offset + label->block_size <= layout->member_bytes[m]);
        }
        if (!step) {
            break;
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    ++data;
    --size;
    std::vector<uint8_t> bytes;
    if (mode & 0x01) {
        static const std::vector<uint8_t> plain = base_label(false);
        static const std::vector<uint8_t> scrubbed = base_label(true);
        bytes = (mode & 0x08) ? scrubbed : plain;
        for (size_t i = 0; i < size && i < label_size; ++i) {
            bytes[i] ^= data[i];
        }
    } else {
        bytes.assign(data, data + std::min(size, label_size));
        if (bytes.size() < label_size && (mode & 0x02)) {
            bytes.resize(label_size, 0);
        }
    }
    if ((mode & 0x02) && bytes.size() >= label_size) {
        fix_checksum(bytes);
    }
    check_decoded(bytes);
    (void)looks_like_label(bytes);

    if (mode & 0x04) {
        std::vector<std::vector<uint8_t>> copies(label_copies);
        for (size_t c = 0; c < label_copies; ++c) {
            size_t begin = size * c / label_copies;
            size_t end = size * (c + 1) / label_copies;
            copies[c].assign(data + begin, data + end);
            if ((mode & 0x01) && !copies[c].empty()) {
                copies[c] = bytes; // every copy the same mutated label, but one cut short
                copies[c].resize(label_size - (c == 3 ? 1 : 0));
            }
        }
        std::array<uint64_t, label_copies> offsets = label_offsets(64 << 20);
        LabelReading reading = choose_label(copies, offsets);
        FUZZ_CHECK(reading.valid <= label_copies);
        FUZZ_CHECK(reading.label.has_value() == (reading.valid > 0));
        FUZZ_CHECK(reading.problems.size() >= label_copies - reading.valid);
    }
    return 0;
}
