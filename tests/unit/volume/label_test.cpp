// Labels: encode/decode round trips, every damaged byte is caught, each field is checked, and a member
// whose copies are damaged (three of four overwritten) is still recognised from the one left.
#include "volume/label.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace ispace::volume {
namespace {

Label sample(unsigned members = 3, unsigned slot = 1) {
    Label l;
    l.space_uuid = make_uuid();
    l.name = "projects";
    l.layout = LayoutKind::mirror;
    l.copies = members;
    l.block_size = 512;
    auto plan = plan_member(64 << 20, 512, 64 << 20, 1 << 20);
    EXPECT_TRUE(plan);
    l.data_offset = plan->data_offset;
    l.data_size = plan->data_size;
    l.member_size = 64 << 20;
    l.space_size = plan->data_size;
    l.epoch = 7;
    l.sequence = 42;
    l.generation = random_u64();
    l.previous_generation = random_u64();
    l.region_size = 1 << 20;
    l.compat = feature::compat::bitmap;
    l.areas.push_back(plan->bitmap);
    l.created = 1700000000;
    l.updated = 1700000100;
    l.holder_key = 0x1234abcd5678ef00;
    l.holder = "host-a:/root/.ispace";
    for (unsigned i = 0; i < members; ++i) {
        MemberEntry m;
        m.uuid = make_uuid();
        m.data_bytes = plan->data_size;
        m.url = "iscsi://10.0.0." + std::to_string(i + 1) + ":3260/iqn.2026-11.org.example:disk/0";
        l.members.push_back(m);
    }
    l.members[2 % members].state = MemberState::failed;
    l.members[2 % members].out_epoch = 6;
    l.members[2 % members].last_epoch = 5;
    l.members[2 % members].last_generation = 0x5555;
    l.members[2 % members].last_previous_generation = 0x4444;
    l.slot = slot;
    l.member_uuid = l.members[slot].uuid;
    return l;
}

std::vector<uint8_t> bytes_of(const Label& l, unsigned copy = 0) {
    std::vector<uint8_t> b(label_size);
    encode_label(l, copy, b);
    return b;
}

void expect_same(const Label& a, const Label& b) {
    EXPECT_EQ(a.space_uuid, b.space_uuid);
    EXPECT_EQ(a.member_uuid, b.member_uuid);
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.layout, b.layout);
    EXPECT_EQ(a.copies, b.copies);
    EXPECT_EQ(a.block_size, b.block_size);
    EXPECT_EQ(a.chunk, b.chunk);
    EXPECT_EQ(a.space_size, b.space_size);
    EXPECT_EQ(a.data_offset, b.data_offset);
    EXPECT_EQ(a.data_size, b.data_size);
    EXPECT_EQ(a.member_size, b.member_size);
    EXPECT_EQ(a.epoch, b.epoch);
    EXPECT_EQ(a.sequence, b.sequence);
    EXPECT_EQ(a.slot, b.slot);
    EXPECT_EQ(a.region_size, b.region_size);
    EXPECT_EQ(a.clean, b.clean);
    EXPECT_EQ(a.created, b.created);
    EXPECT_EQ(a.updated, b.updated);
    EXPECT_EQ(a.holder_key, b.holder_key);
    EXPECT_EQ(a.holder, b.holder);
    EXPECT_EQ(a.generation, b.generation);
    EXPECT_EQ(a.previous_generation, b.previous_generation);
    EXPECT_EQ(a.compat, b.compat);
    ASSERT_EQ(a.areas.size(), b.areas.size());
    for (size_t i = 0; i < a.areas.size(); ++i) {
        EXPECT_EQ(a.areas[i].type, b.areas[i].type);
        EXPECT_EQ(a.areas[i].offset, b.areas[i].offset);
        EXPECT_EQ(a.areas[i].length, b.areas[i].length);
    }
    ASSERT_EQ(a.members.size(), b.members.size());
    for (size_t i = 0; i < a.members.size(); ++i) {
        EXPECT_EQ(a.members[i].uuid, b.members[i].uuid);
        EXPECT_EQ(a.members[i].state, b.members[i].state);
        EXPECT_EQ(a.members[i].rebuild, b.members[i].rebuild);
        EXPECT_EQ(a.members[i].recovery_offset, b.members[i].recovery_offset);
        EXPECT_EQ(a.members[i].out_epoch, b.members[i].out_epoch);
        EXPECT_EQ(a.members[i].data_bytes, b.members[i].data_bytes);
        EXPECT_EQ(a.members[i].url, b.members[i].url);
        EXPECT_EQ(a.members[i].last_epoch, b.members[i].last_epoch);
        EXPECT_EQ(a.members[i].last_generation, b.members[i].last_generation);
        EXPECT_EQ(a.members[i].last_previous_generation, b.members[i].last_previous_generation);
    }
}

std::string decode_error(const std::vector<uint8_t>& b) {
    auto l = decode_label(b);
    return l ? std::string("(decoded)") : l.error().message;
}

TEST(Label, RoundTripsEveryField) {
    Label l = sample();
    l.clean = true;
    l.members[0].state = MemberState::rebuilding;
    l.members[0].rebuild = RebuildMode::delta;
    l.members[0].recovery_offset = 5 << 20;
    for (unsigned copy = 0; copy < label_copies; ++copy) {
        auto decoded = decode_label(bytes_of(l, copy));
        ASSERT_TRUE(decoded) << decoded.error().message;
        expect_same(l, *decoded);
    }
    EXPECT_NE(bytes_of(l, 0), bytes_of(l, 3)); // the copy number is in it
}

TEST(Label, EveryDamagedByteIsCaught) {
    auto good = bytes_of(sample());
    for (size_t i = 0; i < label_size; ++i) {
        auto b = good;
        b[i] ^= 0x01;
        ASSERT_FALSE(decode_label(b)) << "a flipped bit at byte " << i << " went unnoticed";
    }
    auto torn = good; // a torn write: the first sector new, the rest from something older
    std::memset(torn.data() + 512, 0, label_size - 512);
    EXPECT_NE(decode_error(torn).find("checksum"), std::string::npos);
    EXPECT_NE(decode_error(std::vector<uint8_t>(label_size, 0)).find("no label"), std::string::npos);
    EXPECT_NE(decode_error(std::vector<uint8_t>(100, 0)).find("less than a label"), std::string::npos);
}

// Encodes `l` after `change` (a field the encoder writes as given) and returns the decoder's complaint.
template <typename Change> std::string refused(Change&& change) {
    Label l = sample();
    change(l);
    return decode_error(bytes_of(l));
}

// A thin space: the feature bit, its metadata area after the bitmap, and a size beyond the members.
TEST(Label, ThinSpaceRoundTrips) {
    auto plan = plan_member(64 << 20, 512, 64 << 20, 1 << 20, 256 << 10);
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->thin_map.type, AreaType::thin_map);
    EXPECT_EQ(plan->thin_map.offset, plan->bitmap.offset + plan->bitmap.length);
    EXPECT_EQ(plan->thin_map.length, 256u << 10);
    EXPECT_GE(plan->data_offset, plan->thin_map.offset + plan->thin_map.length);
    Label l = sample();
    l.incompat = feature::incompat::thin;
    l.areas = {plan->bitmap, plan->thin_map};
    l.data_offset = plan->data_offset;
    l.data_size = plan->data_size;
    for (auto& m : l.members) {
        m.data_bytes = plan->data_size;
    }
    l.space_size = uint64_t(1) << 40; // far more than 64 MiB members hold
    auto back = decode_label(bytes_of(l));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_TRUE(back->thin());
    EXPECT_EQ(back->space_size, uint64_t(1) << 40);
    ASSERT_NE(back->area(AreaType::thin_map), nullptr);
    EXPECT_EQ(back->area(AreaType::thin_map)->offset, plan->thin_map.offset);
    // Beyond the largest thin size, or without the bit, such a size is refused.
    l.space_size = max_thin_size + 512;
    EXPECT_FALSE(decode_label(bytes_of(l)));
    l.space_size = uint64_t(1) << 40;
    l.incompat = 0;
    l.areas = {plan->bitmap};
    EXPECT_FALSE(decode_label(bytes_of(l)));
}

// Block checksums: the feature bit and an area of a u32 per 4 KiB block of the layout, after the others.
TEST(Label, ChecksummedSpaceRoundTrips) {
    uint64_t sums = checksum_area_bytes(64 << 20, ChecksumPageFormat::bare);
    EXPECT_EQ(sums, (64u << 20) / 4096 * 4);
    auto plan = plan_member(64 << 20, 512, 64 << 20, 1 << 20, 0, sums);
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->checksums.type, AreaType::checksums);
    EXPECT_EQ(plan->checksums.offset, plan->bitmap.offset + plan->bitmap.length);
    EXPECT_GE(plan->data_offset, plan->checksums.offset + plan->checksums.length);
    Label l = sample();
    l.incompat = feature::incompat::checksums;
    l.areas = {plan->bitmap, plan->checksums};
    l.data_offset = plan->data_offset;
    l.data_size = plan->data_size;
    for (auto& m : l.members) {
        m.data_bytes = plan->data_size;
    }
    l.space_size = plan->data_size;
    auto back = decode_label(bytes_of(l));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_TRUE(back->checksums());
    ASSERT_NE(back->area(AreaType::checksums), nullptr);
    EXPECT_EQ(back->area(AreaType::checksums)->length, plan->checksums.length);
    EXPECT_EQ(back->checksum_page_format(), ChecksumPageFormat::bare);

    // Self-checked pages (1023 entries and a check each): 1024 blocks take two of them.
    EXPECT_EQ(checksum_area_bytes(1024 * 4096, ChecksumPageFormat::bare), 4096u);
    EXPECT_EQ(checksum_area_bytes(1024 * 4096, ChecksumPageFormat::checked), 8192u);
    EXPECT_EQ(checksum_area_bytes(1023 * 4096, ChecksumPageFormat::checked), 4096u);
    EXPECT_EQ(checksum_area_reach(8192, ChecksumPageFormat::checked), 2046u * 4096);
    EXPECT_EQ(checksum_area_bytes(64 << 20, ChecksumPageFormat::checked), (16384u + 1022) / 1023 * 4096);
    l.incompat |= feature::incompat::checksum_pages;
    auto bigger = plan_member(64 << 20, 512, 64 << 20, 1 << 20, 0,
                              checksum_area_bytes(64 << 20, ChecksumPageFormat::checked));
    ASSERT_TRUE(bigger);
    l.areas = {bigger->bitmap, bigger->checksums};
    auto checked = decode_label(bytes_of(l));
    ASSERT_TRUE(checked) << checked.error().message;
    EXPECT_EQ(checked->checksum_page_format(), ChecksumPageFormat::checked);
}

TEST(Label, EachFieldIsChecked) {
    EXPECT_NE(refused([](Label& l) { l.version = 2; }).find("newer ispace"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.incompat = uint64_t(1) << 3; }).find("does not know"),
              std::string::npos);
    // Self-checked checksum pages are a format of the checksums area: a space without one has none.
    EXPECT_NE(refused([](Label& l) {
                  l.incompat = feature::incompat::checksum_pages;
              }).find("self-checked checksum pages on a space without block checksums"),
              std::string::npos);
    // Block checksums need their area, large enough for the layout; only such a space has one.
    EXPECT_NE(
        refused([](Label& l) { l.incompat = feature::incompat::checksums; }).find("without its checksums"),
        std::string::npos);
    EXPECT_NE(refused([](Label& l) {
                  l.areas.push_back({AreaType::checksums, 0, l.areas[0].offset + l.areas[0].length, 4096});
              }).find("without block checksums"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) {
                  l.incompat = feature::incompat::checksums;
                  l.areas.push_back({AreaType::checksums, 0, l.areas[0].offset + l.areas[0].length, 4096});
              }).find("cannot cover"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.incompat = uint64_t(1) << 40; }).find("made by a newer ispace"),
              std::string::npos);
    // A thin space needs its metadata area, and only a thin space has one.
    EXPECT_NE(refused([](Label& l) { l.incompat = feature::incompat::thin; }).find("thin metadata area"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) {
                  l.areas.push_back({AreaType::thin_map, 0, l.areas[0].offset + l.areas[0].length, 4096});
              }).find("not thin"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.layout = LayoutKind(9); }).find("layout 9"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.block_size = 1000; }).find("block size"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.slot = 5; }).find("slot"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.name = ""; }).find("name"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.name = "bad\x01name"; }).find("name"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.data_offset = l.member_size; }).find("data area"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.data_size = l.member_size; }).find("data area"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.epoch = 0; }).find("epoch 0"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.region_size = 1000; }).find("region"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.areas[0].offset = 0; }).find("outside"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.areas.push_back(l.areas[0]); }).find("overlaps"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.areas[0].length = 1; }).find("bitmap area"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.members[0].state = MemberState(0); }).find("state"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.members[0].uuid = l.members[1].uuid; }).find("twice"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.member_uuid = make_uuid(); }).find("not this member"),
              std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.space_size = l.data_size + 512; }).find("holds"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.copies = 2; }).find("layout"), std::string::npos);
    EXPECT_NE(refused([](Label& l) { l.space_uuid = Uuid{}; }).find("nil"), std::string::npos);
    // Reserved bytes must be zero (so that later versions can use them under a feature bit).
    auto b = bytes_of(sample());
    b[label_size - 1] = 1;
    uint32_t crc = 0;
    std::memset(b.data() + 16, 0, 4);
    crc = label_crc32c(b.data(), label_size);
    for (int i = 0; i < 4; ++i) {
        b[16 + i] = uint8_t(crc >> (8 * i));
    }
    EXPECT_NE(decode_error(b).find("reserved"), std::string::npos);
}

// A checksummed space's label with a scrub record (compat scrub; docs/integrity.md).
Label scrubbed() {
    Label l = sample();
    auto plan = plan_member(64 << 20, 512, 64 << 20, 1 << 20, 0,
                            checksum_area_bytes(64 << 20, ChecksumPageFormat::bare));
    EXPECT_TRUE(plan);
    l.incompat = feature::incompat::checksums;
    l.compat |= feature::compat::scrub;
    l.areas = {plan->bitmap, plan->checksums};
    l.data_offset = plan->data_offset;
    l.data_size = plan->data_size;
    for (auto& m : l.members) {
        m.data_bytes = plan->data_size;
    }
    l.space_size = plan->data_size;
    l.scrub.state = ScrubState::paused;
    l.scrub.position = 8 << 20;
    l.scrub.started = 1700000200;
    l.scrub.checked = 2000;
    l.scrub.bad = 5;
    l.scrub.repaired = 3;
    l.scrub.unrepairable = 2;
    l.scrub.lost = {4096, 3 << 20};
    l.checksum_errors = {7, 0, 32};
    return l;
}

TEST(Label, TheScrubRecordAndChecksumErrorsRoundTrip) {
    Label l = scrubbed();
    for (ScrubState state : {ScrubState::running, ScrubState::paused, ScrubState::done}) {
        l.scrub.state = state;
        l.scrub.finished = state == ScrubState::done ? 1700000300 : 0;
        auto back = decode_label(bytes_of(l, 2));
        ASSERT_TRUE(back) << back.error().message;
        EXPECT_EQ(back->scrub, l.scrub);
        EXPECT_EQ(back->checksum_errors, l.checksum_errors);
        EXPECT_EQ(back->compat, l.compat);
    }
    // Without a record: all zero, and an older decoder (which knows no compat scrub) reads it too.
    l.scrub = {};
    l.checksum_errors = {};
    auto back = decode_label(bytes_of(l));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->scrub.state, ScrubState::none);
}

template <typename Change> std::string scrub_refused(Change&& change) {
    Label l = scrubbed();
    change(l);
    auto b = bytes_of(l);
    auto back = decode_label(b);
    return back ? std::string("(decoded)") : back.error().message;
}

TEST(Label, EachScrubFieldIsChecked) {
    EXPECT_EQ(scrub_refused([](Label&) {}), "(decoded)");
    auto says = [](const std::string& error, const char* what) {
        EXPECT_NE(error.find(what), std::string::npos) << error;
    };
    says(scrub_refused([](Label& l) { l.compat = feature::compat::bitmap; }), "feature bit");
    says(scrub_refused([](Label& l) { l.scrub.state = ScrubState(4); }), "scrub state 4");
    says(scrub_refused([](Label& l) { l.scrub.position = l.space_size + (1 << 20); }), "scrub position");
    says(scrub_refused([](Label& l) { l.scrub.position = 4095; }), "scrub position");
    says(scrub_refused([](Label& l) { l.scrub.started = 0; }), "started");
    says(scrub_refused([](Label& l) { l.scrub.finished = 1700000300; }), "finished"); // paused, not done
    says(scrub_refused([](Label& l) {
             l.scrub.state = ScrubState::done;
             l.scrub.finished = 1; // before it started
         }),
         "finished");
    says(scrub_refused([](Label& l) { l.scrub.checked = (8 << 20) / 4096 + 1; }), "scrub counts");
    says(scrub_refused([](Label& l) { l.scrub.repaired = 6; }), "scrub counts");
    says(scrub_refused([](Label& l) { l.scrub.unrepairable = 1; }), "scrub counts"); // two listed
    says(scrub_refused([](Label& l) { l.scrub.lost = {8192, 4096}; }), "unrepairable block 1");
    says(scrub_refused([](Label& l) { l.scrub.lost = {4097}; }), "unrepairable block 0");
    says(scrub_refused([](Label& l) { l.scrub.lost = {8 << 20}; }), "unrepairable block 0"); // not reached
    says(scrub_refused([](Label& l) {
             l.scrub = {};
             l.scrub.position = 4096;
         }),
         "state none");
    says(scrub_refused([](Label& l) { l.checksum_errors[1] = max_checksum_errors + 1; }), "checksum errors");
    // Only a space with block checksums keeps either.
    says(scrub_refused([](Label& l) {
             l.incompat = 0;
             l.areas.pop_back();
         }),
         "without block checksums");
    // A count in the slot of a member that is not there is a reserved byte.
    auto b = bytes_of(scrubbed());
    b[5248 + 5 * 8] = 1;
    std::memset(b.data() + 16, 0, 4);
    uint32_t crc = label_crc32c(b.data(), label_size);
    for (int i = 0; i < 4; ++i) {
        b[16 + i] = uint8_t(crc >> (8 * i));
    }
    says(decode_error(b), "reserved byte 5288");
}

TEST(Label, AnUnknownCompatBitLetsItsFieldsBeIgnored) {
    // A later version's compat feature keeps its fields from byte 6144 on: this one reads the label.
    Label l = sample();
    l.compat |= uint64_t(1) << 20;
    auto b = bytes_of(l);
    b[7000] = 0x42;
    std::memset(b.data() + 16, 0, 4);
    uint32_t crc = label_crc32c(b.data(), label_size);
    for (int i = 0; i < 4; ++i) {
        b[16 + i] = uint8_t(crc >> (8 * i));
    }
    auto back = decode_label(b);
    ASSERT_TRUE(back) << back.error().message;
    // Without the unknown bit the same byte is a reserved one that must be zero.
    l.compat = feature::compat::bitmap;
    b = bytes_of(l);
    b[7000] = 0x42;
    std::memset(b.data() + 16, 0, 4);
    crc = label_crc32c(b.data(), label_size);
    for (int i = 0; i < 4; ++i) {
        b[16 + i] = uint8_t(crc >> (8 * i));
    }
    EXPECT_NE(decode_error(b).find("reserved byte 7000"), std::string::npos) << decode_error(b);
}

TEST(Label, AMemberWithThreeOfFourCopiesOverwrittenIsStillRecognised) {
    Label l = sample();
    auto offsets = label_offsets(l.member_size);
    std::mt19937_64 rng(1);
    for (unsigned survivor = 0; survivor < label_copies; ++survivor) {
        std::vector<std::vector<uint8_t>> copies;
        for (unsigned c = 0; c < label_copies; ++c) {
            auto b = bytes_of(l, c);
            if (c != survivor) {
                for (auto& byte : b) {
                    byte = uint8_t(rng()); // overwritten by something else entirely
                }
            }
            copies.push_back(b);
        }
        LabelReading r = choose_label(copies, offsets);
        ASSERT_TRUE(r.label) << "survivor " << survivor;
        expect_same(l, *r.label);
        EXPECT_EQ(r.valid, 1u);
        EXPECT_EQ(r.problems.size(), 3u);
        EXPECT_TRUE(r.needs_repair);
    }
    // All four gone: no label, and every copy's problem is said.
    std::vector<std::vector<uint8_t>> none(label_copies, std::vector<uint8_t>(label_size, 0));
    none[2].clear(); // unreadable
    LabelReading r = choose_label(none, offsets);
    EXPECT_FALSE(r.label);
    ASSERT_EQ(r.problems.size(), 4u);
    EXPECT_NE(r.problems[2].find("could not be read"), std::string::npos);
    EXPECT_NE(r.problems[3].find(std::to_string(offsets[3])), std::string::npos);
}

TEST(Label, TheFreshestCopyWinsAndOlderOnesAreRepaired) {
    Label l = sample();
    Label newer = l;
    newer.sequence = 43;
    Label newest_epoch = l;
    newest_epoch.epoch = 8;
    newest_epoch.sequence = 1; // a new epoch restarts nothing: (epoch, sequence) orders
    std::vector<std::vector<uint8_t>> copies{bytes_of(l, 0), bytes_of(newer, 1), bytes_of(newest_epoch, 2),
                                             bytes_of(l, 3)};
    auto offsets = label_offsets(l.member_size);
    LabelReading r = choose_label(copies, offsets);
    ASSERT_TRUE(r.label);
    EXPECT_EQ(r.label->epoch, 8u);
    EXPECT_EQ(r.valid, 4u);
    EXPECT_TRUE(r.needs_repair);
    std::vector<std::vector<uint8_t>> same{bytes_of(l, 0), bytes_of(l, 1), bytes_of(l, 2), bytes_of(l, 3)};
    r = choose_label(same, offsets);
    EXPECT_FALSE(r.needs_repair);
    EXPECT_TRUE(r.problems.empty());
}

TEST(Label, PlansPutTheDataBetweenMetadataAndEndLabels) {
    auto plan = plan_member(1ull << 30, 4096, 4ull << 30, 1 << 20);
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->bitmap.offset, metadata_start);
    EXPECT_EQ(plan->bitmap.length, 4096u); // 4096 regions: 512 bytes, rounded up to 4 KiB
    EXPECT_EQ(plan->data_offset, 1u << 20);
    EXPECT_EQ(plan->data_offset + plan->data_size, (1ull << 30) - (1 << 20));
    auto offsets = label_offsets(1ull << 30);
    EXPECT_GE(offsets[2], plan->data_offset + plan->data_size);
    // A big bitmap pushes the data area out to the next MiB.
    plan = plan_member(1ull << 40, 512, 16ull << 40, 64 << 10);
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->bitmap.length, (16ull << 40) / (64 << 10) / 8);
    EXPECT_EQ(plan->data_offset % data_alignment, 0u);
    EXPECT_GE(plan->data_offset, metadata_start + plan->bitmap.length);
    auto small = plan_member(2 << 20, 512, 2 << 20, 1 << 20);
    ASSERT_FALSE(small);
    EXPECT_NE(small.error().message.find("too small"), std::string::npos);
}

TEST(Label, UuidsAreRandomAndPrintable) {
    Uuid a = make_uuid(), b = make_uuid();
    EXPECT_NE(a, b);
    EXPECT_EQ(a[6] >> 4, 4);
    std::string text = to_string(a);
    EXPECT_EQ(text.size(), 36u);
    auto back = parse_uuid(text);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, a);
    EXPECT_FALSE(parse_uuid("not-a-uuid"));
    EXPECT_FALSE(parse_uuid(text + "00"));
}

} // namespace
} // namespace ispace::volume
