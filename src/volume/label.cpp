#include "volume/label.hpp"

#include "common/bytes.hpp"

#include <fmt/format.h>
#include <isa-l/crc.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <sys/random.h>
#include <tuple>

namespace ispace::volume {
namespace {

// Where each field sits in a label: the one table encode and decode (and docs/dataspaces.md) follow.
namespace at {
constexpr size_t magic = 0;         // 8  "ISPACELB"
constexpr size_t version = 8;       // u32
constexpr size_t size = 12;         // u32 label_size
constexpr size_t crc = 16;          // u32 CRC32C of the label with this field zero
constexpr size_t copy = 20;         // u32 which copy this is (0-3)
constexpr size_t incompat = 24;     // u64
constexpr size_t ro_compat = 32;    // u64
constexpr size_t compat = 40;       // u64
constexpr size_t space_uuid = 48;   // 16
constexpr size_t member_uuid = 64;  // 16
constexpr size_t name = 80;         // 64, NUL-padded
constexpr size_t layout = 144;      // u8
constexpr size_t copies = 145;      // u8
constexpr size_t members = 146;     // u8
constexpr size_t flags = 147;       // u8: bit 0 clean
constexpr size_t block_size = 148;  // u32
constexpr size_t chunk = 152;       // u64
constexpr size_t space_size = 160;  // u64
constexpr size_t data_offset = 168; // u64
constexpr size_t data_size = 176;   // u64
constexpr size_t member_size = 184; // u64
constexpr size_t epoch = 192;       // u64
constexpr size_t sequence = 200;    // u64
constexpr size_t slot = 208;        // u32
constexpr size_t region_size = 212; // u32
constexpr size_t created = 216;     // u64
constexpr size_t updated = 224;     // u64
constexpr size_t holder_key = 232;  // u64
constexpr size_t generation = 240;  // u64 random id of this epoch (DRBD's generation identifiers)
constexpr size_t previous = 248;    // u64 the generation of the epoch before
constexpr size_t holder = 256;      // 64, NUL-padded
constexpr size_t area_count = 320;  // u32
constexpr size_t areas = 328;       // 8 x 24: type u32, flags u32, offset u64, length u64
constexpr size_t area_size = 24;
constexpr size_t member_table = 1024; // 16 x 256 (520-1023 reserved for the header's growth)
constexpr size_t entry_size = 256;
// In a member entry:
constexpr size_t e_uuid = 0;        // 16
constexpr size_t e_state = 16;      // u8
constexpr size_t e_rebuild = 17;    // u8
constexpr size_t e_recovery = 24;   // u64
constexpr size_t e_out_epoch = 32;  // u64
constexpr size_t e_data_bytes = 40; // u64
constexpr size_t e_last_epoch = 48; // u64 the epoch of the last label the member received
constexpr size_t e_last_gen = 56;   // u64 and its generation
constexpr size_t e_last_prev = 64;  // u64 and that label's previous generation
constexpr size_t e_url = 72;        // 184, NUL-padded
constexpr size_t table_end = member_table + max_members * entry_size; // 5120
// compat::scrub: the scrub record, then the checksum error counts by slot.
constexpr size_t scrub_state = table_end;                 // u8 ScrubState
constexpr size_t scrub_lost_n = 5121;                     // u8 entries in scrub_lost (5122-5127 zero)
constexpr size_t scrub_position = 5128;                   // u64 layout bytes
constexpr size_t scrub_started = 5136;                    // u64 unix seconds
constexpr size_t scrub_finished = 5144;                   // u64 unix seconds
constexpr size_t scrub_checked = 5152;                    // u64 blocks
constexpr size_t scrub_bad = 5160;                        // u64 block copies
constexpr size_t scrub_repaired = 5168;                   // u64 block copies
constexpr size_t scrub_unrepairable = 5176;               // u64 blocks
constexpr size_t scrub_lost = 5184;                       // 8 x u64 layout byte offsets
constexpr size_t checksum_errors = 5248;                  // 16 x u64, by slot
constexpr size_t end = checksum_errors + max_members * 8; // 5376; the rest is reserved (zero)
// Where later compat features put their fields: not required zero when an unknown compat bit is set.
constexpr size_t compat_fields = 6144;
} // namespace at
static_assert(at::areas + max_metadata_areas * at::area_size <= at::member_table);
static_assert(at::scrub_lost + max_scrub_lost * 8 == at::checksum_errors);
static_assert(at::end <= at::compat_fields && at::compat_fields <= label_size);

constexpr uint8_t flag_clean = 0x01;

void put_string(uint8_t* p, size_t field, const std::string& s) {
    std::memset(p, 0, field);
    std::memcpy(p, s.data(), std::min(s.size(), field - 1));
}
// A NUL-terminated printable string in a field of `field` bytes, with only NULs after it.
std::optional<std::string> get_string(const uint8_t* p, size_t field) {
    size_t n = 0;
    while (n < field && p[n] != 0) {
        if (p[n] < 0x20 || p[n] == 0x7f) {
            return std::nullopt;
        }
        ++n;
    }
    if (n == field) {
        return std::nullopt; // no terminator
    }
    for (size_t i = n; i < field; ++i) {
        if (p[i] != 0) {
            return std::nullopt;
        }
    }
    return std::string(reinterpret_cast<const char*>(p), n);
}
bool power_of_two(uint64_t v) {
    return v != 0 && (v & (v - 1)) == 0;
}
Error bad(std::string what) {
    return make_error(std::move(what), EILSEQ);
}

// compat::scrub's fields of `l` (its layout holds `range` bytes): the scrub record and the checksum error
// counts, each checked against what a scrub of that range can produce.
Result<void> decode_scrub(const uint8_t* p, Label& l, uint64_t range) {
    ScrubRecord& r = l.scrub;
    uint8_t state = p[at::scrub_state];
    if (state > uint8_t(ScrubState::done)) {
        return bad(fmt::format("scrub state {} is unknown", state));
    }
    r.state = ScrubState(state);
    size_t lost = p[at::scrub_lost_n];
    r.position = load_le64(p + at::scrub_position);
    r.started = load_le64(p + at::scrub_started);
    r.finished = load_le64(p + at::scrub_finished);
    r.checked = load_le64(p + at::scrub_checked);
    r.bad = load_le64(p + at::scrub_bad);
    r.repaired = load_le64(p + at::scrub_repaired);
    r.unrepairable = load_le64(p + at::scrub_unrepairable);
    for (size_t i = 0; i < l.members.size(); ++i) {
        l.checksum_errors[i] = load_le64(p + at::checksum_errors + i * 8);
        if (l.checksum_errors[i] > max_checksum_errors) {
            return bad(fmt::format("member {}: {} checksum errors", i, l.checksum_errors[i]));
        }
    }
    bool any_errors =
        std::any_of(l.checksum_errors.begin(), l.checksum_errors.end(), [](uint64_t n) { return n != 0; });
    if ((r.state != ScrubState::none || any_errors) &&
        ((l.compat & feature::compat::scrub) == 0 || !l.checksums())) {
        return bad(l.checksums() ? "a scrub record without its feature bit (compat scrub)"
                                 : "a scrub record on a space without block checksums");
    }
    uint64_t blocks = (range + checksum_block - 1) / checksum_block;
    if (r.state == ScrubState::none) {
        if (r.position != 0 || r.started != 0 || r.finished != 0 || r.checked != 0 || r.bad != 0 ||
            r.repaired != 0 || r.unrepairable != 0 || lost != 0) {
            return bad("a scrub record with state none holds values");
        }
        return {};
    }
    if (r.position > range || r.position % checksum_block != 0) {
        return bad(fmt::format("scrub position {} (the layout holds {} bytes)", r.position, range));
    }
    if (r.started == 0 || (r.state == ScrubState::done) != (r.finished != 0) ||
        (r.finished != 0 && r.finished < r.started)) {
        return bad(fmt::format("a {} scrub started at {} and finished at {}", to_string(r.state), r.started,
                               r.finished));
    }
    // Copies: a block has at most max_members of them.
    if (r.checked > blocks || r.checked > r.position / checksum_block || r.bad > r.checked * max_members ||
        r.repaired > r.bad || r.unrepairable > r.checked || lost > max_scrub_lost || lost > r.unrepairable) {
        return bad(
            fmt::format("scrub counts: {} blocks checked, {} bad copies, {} repaired, {} unrepairable, "
                        "{} listed",
                        r.checked, r.bad, r.repaired, r.unrepairable, lost));
    }
    for (size_t i = 0; i < lost; ++i) {
        uint64_t at = load_le64(p + at::scrub_lost + i * 8);
        if (at % checksum_block != 0 || at >= r.position || (i > 0 && at <= r.lost.back())) {
            return bad(fmt::format("unrepairable block {} at layout offset {}", i, at));
        }
        r.lost.push_back(at);
    }
    return {};
}

} // namespace

uint32_t label_crc32c(const void* data, size_t length, uint32_t seed) {
    auto* p = static_cast<unsigned char*>(const_cast<void*>(data)); // ISA-L's signature lacks const
    uint32_t reg = ~seed;
    while (length > 0) {
        size_t n = std::min<size_t>(length, size_t(1) << 30);
        reg = crc32_iscsi(p, int(n), reg);
        p += n;
        length -= n;
    }
    return ~reg;
}

Uuid make_uuid() {
    Uuid u{};
    if (::getrandom(u.data(), u.size(), 0) != ssize_t(u.size())) {
        std::random_device rd;
        for (auto& b : u) {
            b = uint8_t(rd());
        }
    }
    u[6] = uint8_t((u[6] & 0x0f) | 0x40); // version 4 (RFC 4122 4.4)
    u[8] = uint8_t((u[8] & 0x3f) | 0x80); // variant 10
    return u;
}

uint64_t random_u64() {
    for (;;) {
        Uuid u = make_uuid();
        uint64_t v = 0;
        std::memcpy(&v, u.data(), 8);
        if (v != 0) {
            return v;
        }
    }
}

std::string to_string(const Uuid& u) {
    std::string s;
    for (size_t i = 0; i < u.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            s += '-';
        }
        s += fmt::format("{:02x}", u[i]);
    }
    return s;
}

Result<Uuid> parse_uuid(std::string_view text) {
    Uuid u{};
    size_t n = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '-') {
            continue;
        }
        auto digit = [](char d) -> int {
            if (d >= '0' && d <= '9') {
                return d - '0';
            }
            if (d >= 'a' && d <= 'f') {
                return d - 'a' + 10;
            }
            if (d >= 'A' && d <= 'F') {
                return d - 'A' + 10;
            }
            return -1;
        };
        if (i + 1 >= text.size() || n >= 16 || digit(c) < 0 || digit(text[i + 1]) < 0) {
            return make_error(fmt::format("'{}' is not a UUID", text), EINVAL);
        }
        u[n++] = uint8_t(digit(c) << 4 | digit(text[i + 1]));
        ++i;
    }
    if (n != 16) {
        return make_error(fmt::format("'{}' is not a UUID", text), EINVAL);
    }
    return u;
}

std::string_view to_string(ScrubState state) {
    switch (state) {
    case ScrubState::none:
        return "none";
    case ScrubState::running:
        return "running";
    case ScrubState::paused:
        return "paused";
    case ScrubState::done:
        return "done";
    }
    return "unknown";
}

std::string_view to_string(MemberState state) {
    switch (state) {
    case MemberState::active:
        return "active";
    case MemberState::failed:
        return "failed";
    case MemberState::missing:
        return "missing";
    case MemberState::rebuilding:
        return "rebuilding";
    case MemberState::spare:
        return "spare";
    }
    return "unknown";
}

const MetadataArea* Label::area(AreaType type) const {
    for (const MetadataArea& a : areas) {
        if (a.type == type) {
            return &a;
        }
    }
    return nullptr;
}

Result<Layout> Label::layout_of() const {
    std::vector<uint64_t> sizes;
    for (const MemberEntry& e : members) {
        sizes.push_back(e.data_bytes);
    }
    return make_layout(layout, std::move(sizes), block_size, chunk, copies);
}

std::array<uint64_t, label_copies> label_offsets(uint64_t device_bytes) {
    uint64_t end = device_bytes >= 2 * label_size ? device_bytes - 2 * label_size : 0;
    return {0, label_size, end, end + label_size};
}

void encode_label(const Label& l, unsigned copy, std::span<uint8_t> out) {
    uint8_t* p = out.data();
    std::memset(p, 0, label_size);
    std::memcpy(p + at::magic, label_magic.data(), 8);
    store_le32(p + at::version, l.version);
    store_le32(p + at::size, uint32_t(label_size));
    store_le32(p + at::copy, copy);
    store_le64(p + at::incompat, l.incompat);
    store_le64(p + at::ro_compat, l.ro_compat);
    store_le64(p + at::compat, l.compat);
    std::memcpy(p + at::space_uuid, l.space_uuid.data(), 16);
    std::memcpy(p + at::member_uuid, l.member_uuid.data(), 16);
    put_string(p + at::name, max_name_length + 1, l.name);
    p[at::layout] = uint8_t(l.layout);
    p[at::copies] = uint8_t(l.copies);
    p[at::members] = uint8_t(l.members.size());
    p[at::flags] = l.clean ? flag_clean : 0;
    store_le32(p + at::block_size, l.block_size);
    store_le64(p + at::chunk, l.chunk);
    store_le64(p + at::space_size, l.space_size);
    store_le64(p + at::data_offset, l.data_offset);
    store_le64(p + at::data_size, l.data_size);
    store_le64(p + at::member_size, l.member_size);
    store_le64(p + at::epoch, l.epoch);
    store_le64(p + at::sequence, l.sequence);
    store_le32(p + at::slot, l.slot);
    store_le32(p + at::region_size, l.region_size);
    store_le64(p + at::created, l.created);
    store_le64(p + at::updated, l.updated);
    store_le64(p + at::holder_key, l.holder_key);
    store_le64(p + at::generation, l.generation);
    store_le64(p + at::previous, l.previous_generation);
    put_string(p + at::holder, max_holder_length + 1, l.holder);
    size_t areas = std::min(l.areas.size(), max_metadata_areas);
    store_le32(p + at::area_count, uint32_t(areas));
    for (size_t i = 0; i < areas; ++i) {
        uint8_t* a = p + at::areas + i * at::area_size;
        store_le32(a, uint32_t(l.areas[i].type));
        store_le32(a + 4, l.areas[i].flags);
        store_le64(a + 8, l.areas[i].offset);
        store_le64(a + 16, l.areas[i].length);
    }
    for (size_t i = 0; i < std::min<size_t>(l.members.size(), max_members); ++i) {
        const MemberEntry& m = l.members[i];
        uint8_t* e = p + at::member_table + i * at::entry_size;
        std::memcpy(e + at::e_uuid, m.uuid.data(), 16);
        e[at::e_state] = uint8_t(m.state);
        e[at::e_rebuild] = uint8_t(m.rebuild);
        store_le64(e + at::e_recovery, m.recovery_offset);
        store_le64(e + at::e_out_epoch, m.out_epoch);
        store_le64(e + at::e_data_bytes, m.data_bytes);
        store_le64(e + at::e_last_epoch, m.last_epoch);
        store_le64(e + at::e_last_gen, m.last_generation);
        store_le64(e + at::e_last_prev, m.last_previous_generation);
        put_string(e + at::e_url, max_url_length + 1, m.url);
    }
    p[at::scrub_state] = uint8_t(l.scrub.state);
    size_t lost = std::min(l.scrub.lost.size(), max_scrub_lost);
    p[at::scrub_lost_n] = uint8_t(lost);
    store_le64(p + at::scrub_position, l.scrub.position);
    store_le64(p + at::scrub_started, l.scrub.started);
    store_le64(p + at::scrub_finished, l.scrub.finished);
    store_le64(p + at::scrub_checked, l.scrub.checked);
    store_le64(p + at::scrub_bad, l.scrub.bad);
    store_le64(p + at::scrub_repaired, l.scrub.repaired);
    store_le64(p + at::scrub_unrepairable, l.scrub.unrepairable);
    for (size_t i = 0; i < lost; ++i) {
        store_le64(p + at::scrub_lost + i * 8, l.scrub.lost[i]);
    }
    for (size_t i = 0; i < std::min<size_t>(l.members.size(), max_members); ++i) {
        store_le64(p + at::checksum_errors + i * 8, l.checksum_errors[i]);
    }
    store_le32(p + at::crc, label_crc32c(p, label_size));
}

bool looks_like_label(std::span<const uint8_t> bytes) {
    return bytes.size() >= 8 && std::memcmp(bytes.data(), label_magic.data(), 8) == 0;
}

Result<Label> decode_label(std::span<const uint8_t> bytes) {
    if (bytes.size() < label_size) {
        return bad(fmt::format("{} bytes, less than a label ({})", bytes.size(), label_size));
    }
    const uint8_t* p = bytes.data();
    if (!looks_like_label(bytes)) {
        return bad("no label (magic not found)");
    }
    Label l;
    l.version = load_le32(p + at::version);
    if (l.version != label_version) {
        return bad(l.version > label_version
                       ? fmt::format("made by a newer ispace: label format version {} (this one reads {})",
                                     l.version, label_version)
                       : fmt::format("label format version {} is unknown", l.version));
    }
    if (load_le32(p + at::size) != label_size) {
        return bad(fmt::format("label size {} (expected {})", load_le32(p + at::size), label_size));
    }
    // The checksum covers the whole label with its own field zero.
    uint32_t stored = load_le32(p + at::crc);
    uint8_t zero[4] = {0, 0, 0, 0};
    uint32_t crc = label_crc32c(p, at::crc);
    crc = label_crc32c(zero, 4, crc);
    crc = label_crc32c(p + at::crc + 4, label_size - at::crc - 4, crc);
    if (crc != stored) {
        return bad(fmt::format("bad checksum ({:08x}, the bytes say {:08x})", stored, crc));
    }
    if (load_le32(p + at::copy) >= label_copies) {
        return bad(fmt::format("copy number {}", load_le32(p + at::copy)));
    }
    l.incompat = load_le64(p + at::incompat);
    l.ro_compat = load_le64(p + at::ro_compat);
    l.compat = load_le64(p + at::compat);
    if (uint64_t unknown = l.incompat & ~feature::incompat::known; unknown != 0) {
        return bad(fmt::format(
            "uses features this ispace does not know (incompat {:#x}): made by a newer ispace", unknown));
    }
    std::memcpy(l.space_uuid.data(), p + at::space_uuid, 16);
    std::memcpy(l.member_uuid.data(), p + at::member_uuid, 16);
    if (is_nil(l.space_uuid) || is_nil(l.member_uuid)) {
        return bad("nil space or member UUID");
    }
    auto name = get_string(p + at::name, max_name_length + 1);
    if (!name || name->empty()) {
        return bad("the space name is empty or not printable text");
    }
    l.name = *name;
    uint8_t kind = p[at::layout];
    if (kind < uint8_t(LayoutKind::mirror) || kind > uint8_t(LayoutKind::stripe_mirror)) {
        return bad(fmt::format("layout {} is unknown", kind));
    }
    l.layout = LayoutKind(kind);
    l.copies = p[at::copies];
    size_t members = p[at::members];
    if (members == 0 || members > max_members) {
        return bad(fmt::format("{} members (1 to {})", members, max_members));
    }
    if (p[at::flags] & ~flag_clean) {
        return bad(fmt::format("unknown flags {:#x}", p[at::flags]));
    }
    l.clean = (p[at::flags] & flag_clean) != 0;
    l.block_size = load_le32(p + at::block_size);
    if (l.block_size < 512 || l.block_size > 65536 || !power_of_two(l.block_size)) {
        return bad(fmt::format("block size {}", l.block_size));
    }
    l.chunk = load_le64(p + at::chunk);
    l.space_size = load_le64(p + at::space_size);
    l.data_offset = load_le64(p + at::data_offset);
    l.data_size = load_le64(p + at::data_size);
    l.member_size = load_le64(p + at::member_size);
    if (l.data_offset % l.block_size != 0 || l.data_size % l.block_size != 0 ||
        l.data_offset < metadata_start || l.data_size == 0 || l.data_offset > l.member_size ||
        l.data_size > l.member_size - l.data_offset ||
        l.member_size < l.data_offset + l.data_size + 2 * label_size) {
        return bad(fmt::format("data area at {} of {} bytes does not fit a member of {} bytes", l.data_offset,
                               l.data_size, l.member_size));
    }
    l.epoch = load_le64(p + at::epoch);
    l.sequence = load_le64(p + at::sequence);
    if (l.epoch == 0) {
        return bad("epoch 0");
    }
    l.slot = load_le32(p + at::slot);
    if (l.slot >= members) {
        return bad(fmt::format("slot {} of {} members", l.slot, members));
    }
    l.region_size = load_le32(p + at::region_size);
    if (l.region_size != 0 && (l.region_size < 4096 || !power_of_two(l.region_size))) {
        return bad(fmt::format("bitmap region of {} bytes (a power of two, 4 KiB or more)", l.region_size));
    }
    l.created = load_le64(p + at::created);
    l.updated = load_le64(p + at::updated);
    l.holder_key = load_le64(p + at::holder_key);
    l.generation = load_le64(p + at::generation);
    l.previous_generation = load_le64(p + at::previous);
    auto holder = get_string(p + at::holder, max_holder_length + 1);
    if (!holder) {
        return bad("the holder's name is not printable text");
    }
    l.holder = *holder;
    uint32_t areas = load_le32(p + at::area_count);
    if (areas > max_metadata_areas) {
        return bad(fmt::format("{} metadata areas (at most {})", areas, max_metadata_areas));
    }
    for (uint32_t i = 0; i < areas; ++i) {
        const uint8_t* a = p + at::areas + i * at::area_size;
        MetadataArea area;
        uint32_t type = load_le32(a);
        area.flags = load_le32(a + 4);
        area.offset = load_le64(a + 8);
        area.length = load_le64(a + 16);
        if (type < uint32_t(AreaType::bitmap) || type > uint32_t(AreaType::checksums)) {
            return bad(fmt::format("metadata area {} has unknown type {}", i, type));
        }
        area.type = AreaType(type);
        // Between the start labels and the data area, never overlapping another area.
        if (area.offset < metadata_start || area.length == 0 || area.offset > l.data_offset ||
            area.length > l.data_offset - area.offset) {
            return bad(fmt::format("metadata area {} ({} bytes at {}) is outside the metadata space", i,
                                   area.length, area.offset));
        }
        for (const MetadataArea& other : l.areas) {
            if (area.offset < other.offset + other.length && other.offset < area.offset + area.length) {
                return bad(fmt::format("metadata area {} overlaps another", i));
            }
            if (other.type == area.type) {
                return bad(fmt::format("metadata area type {} listed twice", type));
            }
        }
        l.areas.push_back(area);
    }
    for (size_t i = 0; i < members; ++i) {
        const uint8_t* e = p + at::member_table + i * at::entry_size;
        MemberEntry m;
        std::memcpy(m.uuid.data(), e + at::e_uuid, 16);
        uint8_t state = e[at::e_state];
        if (state < uint8_t(MemberState::active) || state > uint8_t(MemberState::spare)) {
            return bad(fmt::format("member {} has unknown state {}", i, state));
        }
        m.state = MemberState(state);
        uint8_t rebuild = e[at::e_rebuild];
        if (rebuild > uint8_t(RebuildMode::delta)) {
            return bad(fmt::format("member {} has unknown rebuild mode {}", i, rebuild));
        }
        m.rebuild = RebuildMode(rebuild);
        m.recovery_offset = load_le64(e + at::e_recovery);
        m.out_epoch = load_le64(e + at::e_out_epoch);
        m.data_bytes = load_le64(e + at::e_data_bytes);
        m.last_epoch = load_le64(e + at::e_last_epoch);
        m.last_generation = load_le64(e + at::e_last_gen);
        m.last_previous_generation = load_le64(e + at::e_last_prev);
        if (m.data_bytes % l.block_size != 0 || m.recovery_offset > l.space_size) {
            return bad(fmt::format("member {}: data area of {} bytes, recovery offset {}", i, m.data_bytes,
                                   m.recovery_offset));
        }
        auto url = get_string(e + at::e_url, max_url_length + 1);
        if (!url) {
            return bad(fmt::format("member {}: its URL is not printable text", i));
        }
        m.url = *url;
        for (const MemberEntry& other : l.members) {
            if (!is_nil(m.uuid) && other.uuid == m.uuid) {
                return bad(fmt::format("member {}: its UUID is listed twice", i));
            }
        }
        l.members.push_back(std::move(m));
    }
    if (l.members[l.slot].uuid != l.member_uuid) {
        return bad(fmt::format("slot {} of the member table is not this member", l.slot));
    }
    if (l.members[l.slot].data_bytes != l.data_size) {
        return bad(fmt::format("the member table gives this member {} data bytes, the header {}",
                               l.members[l.slot].data_bytes, l.data_size));
    }
    auto layout = l.layout_of();
    if (!layout) {
        return bad("layout: " + layout.error().message);
    }
    if (layout->copies != l.copies) {
        return bad(
            fmt::format("layout {} of {} members with {} copies", to_string(l.layout), members, l.copies));
    }
    // A thin space's size is virtual (clusters are allocated on write); its bitmap covers the data area.
    if (l.space_size == 0 || l.space_size % l.block_size != 0 ||
        (!l.thin() && l.space_size > capacity(*layout)) || (l.thin() && l.space_size > max_thin_size)) {
        return bad(
            fmt::format("space of {} bytes on a layout that holds {}", l.space_size, capacity(*layout)));
    }
    if (l.thin() && l.area(AreaType::thin_map) == nullptr) {
        return bad("a thin space without its thin metadata area");
    }
    if (!l.thin() && l.area(AreaType::thin_map) != nullptr) {
        return bad("a thin metadata area on a space that is not thin");
    }
    if (l.checksums() != (l.area(AreaType::checksums) != nullptr)) {
        return bad(l.checksums() ? "a space with block checksums without its checksums area"
                                 : "a checksums area on a space without block checksums");
    }
    if ((l.incompat & feature::incompat::checksum_pages) != 0 && !l.checksums()) {
        return bad("self-checked checksum pages on a space without block checksums");
    }
    if (const MetadataArea* sums = l.area(AreaType::checksums);
        sums && sums->length < checksum_area_bytes(capacity(*layout), l.checksum_page_format())) {
        return bad(fmt::format("the checksums area ({} bytes) cannot cover {} bytes", sums->length,
                               capacity(*layout)));
    }
    if ((layout->redundant() || l.checksums()) && l.region_size != 0) {
        const MetadataArea* bitmap = l.area(AreaType::bitmap);
        uint64_t covered = l.thin() ? capacity(*layout) : l.space_size;
        uint64_t regions = (covered + l.region_size - 1) / l.region_size;
        if (!bitmap || bitmap->length * 8 < regions) {
            return bad(fmt::format("the bitmap area cannot hold {} regions", regions));
        }
    }
    if (auto scrub = decode_scrub(p, l, capacity(*layout)); !scrub) {
        return scrub.error();
    }
    // Every byte no field of this version covers must be zero (a later version may use it under a feature
    // bit): what we read must encode back to exactly these bytes. A compat feature this version does not
    // know keeps its fields from compat_fields on, which it may ignore.
    size_t compared = (l.compat & ~feature::compat::known) != 0 ? at::compat_fields : label_size;
    std::array<uint8_t, label_size> again;
    encode_label(l, load_le32(p + at::copy), again);
    // The checksum was checked above; it differs whenever any other byte does, so it is left out (the
    // error then names the byte that differs).
    std::memcpy(again.data() + at::crc, p + at::crc, 4);
    if (std::memcmp(again.data(), p, compared) != 0) {
        size_t i = 0;
        while (again[i] == p[i]) {
            ++i;
        }
        return bad(fmt::format("reserved byte {} is not zero", i));
    }
    return l;
}

LabelReading choose_label(std::span<const std::vector<uint8_t>> copies, std::span<const uint64_t> offsets) {
    LabelReading reading;
    std::vector<Label> valid;
    for (size_t i = 0; i < copies.size(); ++i) {
        uint64_t where = i < offsets.size() ? offsets[i] : 0;
        if (copies[i].empty()) {
            reading.problems.push_back(fmt::format("copy {} at offset {}: could not be read", i, where));
            continue;
        }
        auto label = decode_label(copies[i]);
        if (!label) {
            reading.problems.push_back(
                fmt::format("copy {} at offset {}: {}", i, where, label.error().message));
            continue;
        }
        valid.push_back(std::move(*label));
    }
    reading.valid = unsigned(valid.size());
    reading.needs_repair = valid.size() < copies.size();
    if (valid.empty()) {
        return reading;
    }
    auto freshest = std::max_element(valid.begin(), valid.end(), [](const Label& a, const Label& b) {
        return std::tie(a.epoch, a.sequence) < std::tie(b.epoch, b.sequence);
    });
    for (const Label& l : valid) {
        if (l.space_uuid != freshest->space_uuid || l.member_uuid != freshest->member_uuid) {
            reading.problems.push_back(
                fmt::format("a copy belongs to space {} member {}: left over from an older use",
                            to_string(l.space_uuid), to_string(l.member_uuid)));
            reading.needs_repair = true;
        } else if (l.epoch != freshest->epoch || l.sequence != freshest->sequence) {
            reading.needs_repair = true; // a copy the last label write did not reach
        }
    }
    reading.label = std::move(*freshest);
    return reading;
}

Result<MemberPlan> plan_member(uint64_t member_bytes, uint32_t block_size, uint64_t max_space_bytes,
                               uint32_t region_size, uint64_t thin_map_bytes, uint64_t checksum_bytes) {
    MemberPlan plan;
    uint64_t metadata_end = metadata_start;
    if (region_size != 0) {
        uint64_t regions = (max_space_bytes + region_size - 1) / region_size;
        // Whole bitmap blocks: 4 KiB, or the block size when larger (what one bitmap write covers).
        uint64_t unit = std::max<uint64_t>(4096, block_size);
        uint64_t bytes = std::max<uint64_t>((regions + 7) / 8, 1);
        bytes = (bytes + unit - 1) / unit * unit;
        plan.bitmap = {AreaType::bitmap, 0, metadata_start, bytes};
        metadata_end += bytes;
    }
    if (thin_map_bytes != 0) {
        // 4 KiB pages at a 4 KiB boundary (the bitmap ends on one: it is whole 4 KiB units).
        metadata_end = (metadata_end + 4095) / 4096 * 4096;
        plan.thin_map = {AreaType::thin_map, 0, metadata_end, (thin_map_bytes + 4095) / 4096 * 4096};
        metadata_end += plan.thin_map.length;
    }
    if (checksum_bytes != 0) {
        metadata_end = (metadata_end + 4095) / 4096 * 4096;
        plan.checksums = {AreaType::checksums, 0, metadata_end, (checksum_bytes + 4095) / 4096 * 4096};
        metadata_end += plan.checksums.length;
    }
    plan.data_offset = (metadata_end + data_alignment - 1) / data_alignment * data_alignment;
    // The data area ends at the last 1 MiB boundary that leaves room for the two end copies.
    if (member_bytes < plan.data_offset + 2 * label_size) {
        return make_error(fmt::format("{} bytes: too small for a member (labels and metadata take {})",
                                      member_bytes, plan.data_offset + 2 * label_size),
                          ENOSPC);
    }
    uint64_t end = (member_bytes - 2 * label_size) / data_alignment * data_alignment;
    if (end <= plan.data_offset) {
        return make_error(
            fmt::format("{} bytes: too small for a member (labels and metadata take {}, and the "
                        "data area is whole MiB)",
                        member_bytes, plan.data_offset + 2 * label_size),
            ENOSPC);
    }
    plan.data_size = (end - plan.data_offset) / block_size * block_size;
    return plan;
}

} // namespace ispace::volume
