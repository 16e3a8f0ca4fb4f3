// EXTENDED COPY (LID1), RECEIVE COPY RESULTS and the Third-party Copy VPD page. See xcopy.hpp.
//
// The parameter list is checked whole before a byte moves: its lengths (PARAMETER LIST LENGTH
// ERROR), the descriptor counts and types (TOO MANY / UNSUPPORTED ... DESCRIPTORS), the fields of
// every CSCD and segment descriptor (INVALID FIELD IN PARAMETER LIST), and then what each segment
// refers to — a CSCD that exists, names a logical unit of this target, is not a null device and has
// room for the blocks (COPY ABORTED otherwise, with a segment pointer). Only then does the copy run,
// segment by segment and chunk by chunk, so a bad list never leaves half a copy behind.
#include "scsi/xcopy.hpp"

#include "common/bytes.hpp"
#include "scsi/block_state.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc_util.hpp"
#include "scsi/sense.hpp"
#include "scsi/target.hpp"
#include "scsi/task.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

namespace ispace::scsi::xcopy {
namespace {

using backstore::IoOp;

constexpr uint32_t header_length = 16;
constexpr uint8_t cscd_identification = 0xe4;
constexpr uint32_t cscd_length = 32;
constexpr uint32_t ip_cscd_length = 64; // IPv6 (EAh) and IP copy service (EBh) CSCD descriptors
constexpr uint8_t segment_block_to_block = 0x02;
constexpr uint32_t block_to_block_length = 28;
constexpr uint8_t designator_naa = 0x3;
constexpr uint8_t association_lu = 0x0;

constexpr uint8_t usage_hold = 0x0;
constexpr uint8_t usage_reserved = 0x1;
constexpr uint8_t usage_none = 0x3;

constexpr uint8_t status_in_progress = 0x00;
constexpr uint8_t status_done = 0x01;
constexpr uint8_t status_failed = 0x02;

Sense parameter_list_length_error() {
    return Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error);
}

Sense illegal_at(uint16_t code, uint16_t byte) {
    Sense s = Sense::invalid_field_in_parameter_list(byte);
    s.code = code;
    return s;
}

// COPY ABORTED with the sense-key-specific segment pointer (SPC-4 4.5.2.4.5, SD=0: an offset into
// the parameter list) on the field that made the segment impossible.
Sense copy_aborted(uint16_t code, uint16_t byte) {
    Sense s = Sense::make(SenseKey::copy_aborted, code);
    s.field_pointer_valid = true;
    s.in_cdb = false;
    s.field_pointer = byte;
    return s;
}

struct Cscd {
    uint32_t offset = 0; // in the parameter list
    bool null_device = false;
    uint32_t block_length = 0;
    std::shared_ptr<LogicalUnit> lu; // null: names nothing of this target (held: the copy outlives a removal)
};

struct Segment {
    uint32_t offset = 0;
    uint16_t source = 0;
    uint16_t destination = 0;
    uint64_t bytes = 0;
    uint64_t source_lba = 0;
    uint64_t destination_lba = 0;
    std::shared_ptr<LogicalUnit> from;
    std::shared_ptr<LogicalUnit> to;
};

struct CopyJob : Execution::HandlerState {
    std::vector<Segment> segments;
    size_t segment = 0;
    uint64_t done = 0;  // bytes of the current segment copied
    uint64_t chunk = 0; // bytes in flight
    uint64_t blocks_written = 0;
    bool hold = false;
    uint8_t list_id = 0;
    uint64_t nexus = 0;
};

CopyJob& job_of(Execution& cmd) {
    return static_cast<CopyJob&>(*cmd.state);
}

// --- held results -------------------------------------------------------------------------------

void record(LogicalUnit& lu, const CopyJob& job, uint8_t status) {
    CopyResults& results = lu.block_state().copies;
    std::lock_guard lock(results.mutex);
    for (CopyResult& r : results.held) {
        if (r.nexus == job.nexus && r.list_id == job.list_id) {
            r.done = status != status_in_progress;
            r.status = status;
            r.segments_processed = uint16_t(std::min<size_t>(job.segment, 0xffff));
            r.blocks_written = job.blocks_written;
            return;
        }
    }
    if (results.held.size() == CopyResults::max_held) {
        results.held.pop_front();
    }
    results.held.push_back({job.nexus, job.list_id, status != status_in_progress, status,
                            uint16_t(std::min<size_t>(job.segment, 0xffff)), job.blocks_written});
}

// A list identifier may not name two operations of one I_T nexus at once (SPC-4 6.4.3).
bool list_id_busy(LogicalUnit& lu, uint64_t nexus, uint8_t list_id) {
    CopyResults& results = lu.block_state().copies;
    std::lock_guard lock(results.mutex);
    for (const CopyResult& r : results.held) {
        if (r.nexus == nexus && r.list_id == list_id && !r.done) {
            return true;
        }
    }
    return false;
}

void end_copy(Execution& cmd, std::optional<Sense> error) {
    CopyJob& job = job_of(cmd);
    if (job.hold) {
        record(*cmd.lu(), job, error ? status_failed : status_done);
    }
    if (error) {
        cmd.complete_check(*error);
        return;
    }
    cmd.complete_good();
}

// --- the copy -----------------------------------------------------------------------------------

void copy_next(Execution& cmd);

// A source or destination error ends the copy as COPY ABORTED, with the additional sense code of
// the error the logical unit's device reported.
bool copy_failed(Execution& cmd, bool write) {
    if (!cmd.io_error()) {
        return false;
    }
    Sense cause = sense_from_errno(cmd.io_error(), write);
    end_copy(cmd, Sense::make(SenseKey::copy_aborted, cause.code));
    return true;
}

void copy_written(Execution& cmd) {
    if (copy_failed(cmd, true)) {
        return;
    }
    cmd.unlock_range();
    CopyJob& job = job_of(cmd);
    Segment& s = job.segments[job.segment];
    job.done += job.chunk;
    job.blocks_written += job.chunk / s.to->block_size();
    copy_next(cmd);
}

void copy_write_locked(Execution& cmd) {
    CopyJob& job = job_of(cmd);
    Segment& s = job.segments[job.segment];
    LogicalUnit& to = *s.to;
    cmd.submit_io(to.device(), IoOp::write, s.destination_lba * to.block_size() + job.done, job.chunk,
                  cmd.scratch.data(), !to.write_cache_enabled(), copy_written);
}

void copy_read(Execution& cmd) {
    if (copy_failed(cmd, false)) {
        return;
    }
    // One range at a time: the source is given back before the destination is taken, so two
    // copies in opposite directions cannot wait for each other.
    cmd.unlock_range();
    CopyJob& job = job_of(cmd);
    Segment& s = job.segments[job.segment];
    uint32_t bs = s.to->block_size();
    cmd.lock_range(*s.to, s.destination_lba + job.done / bs, job.chunk / bs, false, copy_write_locked);
}

void copy_read_locked(Execution& cmd) {
    CopyJob& job = job_of(cmd);
    Segment& s = job.segments[job.segment];
    LogicalUnit& from = *s.from;
    cmd.submit_io(from.device(), IoOp::read, s.source_lba * from.block_size() + job.done, job.chunk,
                  cmd.scratch.data(), false, copy_read);
}

void copy_next(Execution& cmd) {
    CopyJob& job = job_of(cmd);
    while (job.segment < job.segments.size() && job.done == job.segments[job.segment].bytes) {
        ++job.segment;
        job.done = 0;
    }
    if (job.segment == job.segments.size()) {
        end_copy(cmd, std::nullopt);
        return;
    }
    Segment& s = job.segments[job.segment];
    // Chunks of what both logical units accept in one transfer, in whole blocks of both (block
    // sizes are powers of two, so the larger is a multiple of the smaller).
    uint32_t unit = std::max(s.from->block_size(), s.to->block_size());
    uint64_t limit = std::min(s.from->max_transfer_bytes(), s.to->max_transfer_bytes());
    limit = std::max<uint64_t>(unit, limit / unit * unit);
    job.chunk = std::min(s.bytes - job.done, limit);
    if (cmd.scratch.size() < job.chunk) {
        cmd.scratch = Buffer::allocate(job.chunk);
    }
    uint32_t bs = s.from->block_size();
    cmd.lock_range(*s.from, s.source_lba + job.done / bs, job.chunk / bs, false, copy_read_locked);
}

// --- parsing ------------------------------------------------------------------------------------

// Reads the CSCD descriptor list; nullopt when it is well formed.
std::optional<Sense> parse_cscds(const TargetDevice& target, const Nexus* nexus, const uint8_t* p,
                                 uint32_t list_end, std::vector<Cscd>& out) {
    std::vector<uint32_t> offsets;
    for (uint32_t off = header_length; off < list_end;) {
        uint8_t type = p[off];
        uint32_t size = (type == 0xea || type == 0xeb) ? ip_cscd_length : cscd_length;
        if (off + size > list_end) {
            return parameter_list_length_error();
        }
        offsets.push_back(off);
        off += size;
    }
    if (offsets.size() > max_cscd_descriptors) {
        return illegal_at(asc::too_many_target_descriptors, 2);
    }
    for (uint32_t off : offsets) {
        const uint8_t* d = p + off;
        if (d[0] != cscd_identification) {
            return illegal_at(asc::unsupported_target_descriptor_type_code, uint16_t(off));
        }
        // LU ID TYPE qualifies the LU IDENTIFIER field of the port-based CSCD descriptors (E0h-E3h);
        // an identification descriptor has none (it carries a designator), so it is not looked at
        // (libiscsi 1.19's ValidTgtDescr expects GOOD with a reserved value).
        uint8_t length = d[7];
        if (length > 20) {
            return Sense::invalid_field_in_parameter_list(uint16_t(off + 7));
        }
        Cscd c;
        c.offset = off;
        c.null_device = d[1] & 0x20;
        c.block_length = load_be24(d + 29);
        if (!c.null_device) {
            if ((d[1] & 0x1f) != 0) { // block devices only
                return Sense::invalid_field_in_parameter_list(uint16_t(off + 1), 4);
            }
            c.lu = resolve_designator(target, d[4] & 0x0f, d[5], d + 8, length, nexus);
        }
        out.push_back(c);
    }
    return std::nullopt;
}

std::optional<Sense> parse_segments(const uint8_t* p, uint32_t start, uint32_t end,
                                    const std::vector<Cscd>& cscds, std::vector<Segment>& out) {
    std::vector<uint32_t> offsets;
    for (uint32_t off = start; off < end;) {
        if (off + 4 > end) {
            return parameter_list_length_error();
        }
        uint32_t size = 4 + load_be16(p + off + 2);
        if (off + size > end) {
            return parameter_list_length_error();
        }
        offsets.push_back(off);
        off += size;
    }
    if (offsets.size() > max_segment_descriptors) {
        return illegal_at(asc::too_many_segment_descriptors, 8);
    }
    for (uint32_t off : offsets) {
        const uint8_t* d = p + off;
        if (d[0] != segment_block_to_block) {
            return illegal_at(asc::unsupported_segment_descriptor_type_code, uint16_t(off));
        }
        if (4u + load_be16(d + 2) != block_to_block_length) {
            return Sense::invalid_field_in_parameter_list(uint16_t(off + 2));
        }
        Segment s;
        s.offset = off;
        s.source = load_be16(d + 4);
        s.destination = load_be16(d + 6);
        bool dc = d[1] & 0x02;
        uint16_t blocks = load_be16(d + 10);
        s.source_lba = load_be64(d + 12);
        s.destination_lba = load_be64(d + 20);
        // What the segment refers to: both CSCDs exist, name logical units here, are not null.
        for (uint16_t index : {s.source, s.destination}) {
            uint16_t field = uint16_t(off + (index == s.source ? 4 : 6));
            if (index >= cscds.size()) {
                return copy_aborted(asc::unreachable_copy_target, field);
            }
            const Cscd& c = cscds[index];
            if (c.null_device) {
                return copy_aborted(asc::copy_target_device_not_reachable, field);
            }
            if (!c.lu) {
                return copy_aborted(asc::unreachable_copy_target, field);
            }
            if (c.block_length != c.lu->block_size()) {
                return copy_aborted(asc::incorrect_copy_target_device_type, uint16_t(c.offset + 29));
            }
        }
        s.from = cscds[s.source].lu;
        s.to = cscds[s.destination].lu;
        // DC: the count is in destination blocks, else in source blocks; either way whole blocks
        // of both ends (CAT, residual handling, is never needed then).
        s.bytes = uint64_t(blocks) * (dc ? s.to->block_size() : s.from->block_size());
        if (s.bytes % s.from->block_size() != 0 || s.bytes % s.to->block_size() != 0) {
            return copy_aborted(asc::no_additional_sense, uint16_t(off + 10));
        }
        if (s.bytes && check_lba_range(s.source_lba, s.bytes / s.from->block_size(), s.from->block_count())) {
            return copy_aborted(asc::no_additional_sense, uint16_t(off + 12));
        }
        if (s.bytes &&
            check_lba_range(s.destination_lba, s.bytes / s.to->block_size(), s.to->block_count())) {
            return copy_aborted(asc::no_additional_sense, uint16_t(off + 20));
        }
        out.push_back(s);
    }
    return std::nullopt;
}

// Whether `nexus` doing `opcode` (READ(16) or WRITE(16)) on `lu` conflicts with a reservation there.
bool reservation_conflict(const LogicalUnit& lu, uint8_t opcode, const Nexus* nexus) {
    std::array<uint8_t, 16> cdb{};
    cdb[0] = opcode;
    Sense unused;
    const Operation* op = find_operation(cdb, unused);
    return op && lu.reservations().conflicts(*op, cdb.data(), nexus);
}

void parameters_ready(Execution& cmd) {
    uint32_t length = cmd.task().transfer_length;
    if (cmd.data_out_available(length) < length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    const uint8_t* p = cmd.task().buffer.data();
    uint8_t list_id = p[0];
    uint8_t usage = (p[1] >> 3) & 0x03;
    uint32_t cscd_bytes = load_be16(p + 2);
    uint32_t segment_bytes = load_be32(p + 8);
    uint32_t inline_bytes = load_be32(p + 12);
    if (usage == usage_reserved) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(1, 4));
        return;
    }
    if (usage == usage_none && list_id != 0) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(0));
        return;
    }
    if (uint64_t(cscd_bytes) + segment_bytes > max_descriptor_list_length ||
        uint64_t(header_length) + cscd_bytes + segment_bytes + inline_bytes > length) {
        cmd.complete_check(parameter_list_length_error());
        return;
    }
    if (inline_bytes != 0) { // MAXIMUM INLINE DATA LENGTH is 0: no segment type here uses any
        cmd.complete_check(Sense::invalid_field_in_parameter_list(12));
        return;
    }
    std::vector<Cscd> cscds;
    if (auto error = parse_cscds(cmd.target(), cmd.task().nexus, p, header_length + cscd_bytes, cscds)) {
        cmd.complete_check(*error);
        return;
    }
    auto job = std::make_unique<CopyJob>();
    uint32_t start = header_length + cscd_bytes;
    if (auto error = parse_segments(p, start, start + segment_bytes, cscds, job->segments)) {
        cmd.complete_check(*error);
        return;
    }
    // Each end as this I_T nexus would see it with a READ or a WRITE of its own: write protection
    // (a read-only mapping included) and another nexus's reservation apply to the copy as well.
    const Nexus* nexus = cmd.task().nexus;
    bool nexus_read_only = nexus && nexus->read_only;
    for (const Segment& s : job->segments) {
        if (!s.bytes) {
            continue;
        }
        if (s.to->write_protected() || nexus_read_only) {
            cmd.complete_check(Sense::write_protected());
            return;
        }
        if (reservation_conflict(*s.from, op::read_16, nexus) ||
            reservation_conflict(*s.to, op::write_16, nexus)) {
            cmd.complete_status(Status::reservation_conflict);
            return;
        }
    }
    job->hold = usage == usage_hold;
    job->list_id = list_id;
    job->nexus = cmd.nexus_id();
    if (job->hold && list_id_busy(*cmd.lu(), job->nexus, list_id)) {
        cmd.complete_check(Sense::make(SenseKey::illegal_request, asc::operation_in_progress));
        return;
    }
    if (job->hold) {
        record(*cmd.lu(), *job, status_in_progress);
    }
    cmd.state = std::move(job);
    copy_next(cmd);
}

} // namespace

std::shared_ptr<LogicalUnit> resolve_designator(const TargetDevice& target, uint8_t code_set,
                                                uint8_t association_type, const uint8_t* designator,
                                                uint8_t length, const Nexus* nexus) {
    // VPD 83h names each logical unit first by an NAA IEEE Registered Extended designator (binary,
    // LU association, 16 bytes) whose last eight bytes are the LU identifier (spc.cpp).
    uint8_t association = (association_type >> 4) & 0x03;
    uint8_t type = association_type & 0x0f;
    if (code_set != 0x1 || association != association_lu || type != designator_naa || length != 16 ||
        (designator[0] >> 4) != 0x6) {
        return nullptr;
    }
    uint64_t identifier = load_be64(designator + 8);
    for (uint64_t lun : target.luns()) {
        if (nexus && !nexus->sees(lun)) {
            continue;
        }
        std::shared_ptr<LogicalUnit> lu = target.find_lu(lun);
        if (lu && lu->identifier() == identifier) {
            return lu;
        }
    }
    return nullptr;
}

void extended_copy(Execution& cmd) {
    uint32_t length = parameter_list_length(cmd.cdb());
    cmd.task().transfer_length = length;
    if (length == 0) {
        // No parameter list: nothing to copy, and not an error (SPC-4 6.4.1).
        cmd.complete_good();
        return;
    }
    // Too short for a header, or longer than any list the copy manager takes: refused before the
    // data-out is fetched, so a huge length cannot make the target buffer it.
    if (length < header_length || length > header_length + max_descriptor_list_length) {
        cmd.complete_check(parameter_list_length_error());
        return;
    }
    cmd.fetch_data_out(length, parameters_ready);
}

void receive_copy_results(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint32_t allocation = allocation_length(cdb);
    if (cmd.op().service_action == sa::copy_operating_parameters) {
        std::vector<uint8_t> d(44 + 2, 0);
        store_be32(&d[0], uint32_t(d.size() - 4));
        d[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
        store_be16(&d[8], max_cscd_descriptors);
        store_be16(&d[10], max_segment_descriptors);
        store_be32(&d[12], max_descriptor_list_length);
        store_be32(&d[16], max_segment_bytes);
        store_be32(&d[20], 0); // MAXIMUM INLINE DATA LENGTH
        store_be32(&d[24], 0); // HELD DATA LIMIT: no segment type holds data
        store_be32(&d[28], 0); // MAXIMUM STREAM DEVICE TRANSFER SIZE
        store_be16(&d[34], 0); // TOTAL CONCURRENT COPIES: no fixed limit
        d[36] = 0;             // MAXIMUM CONCURRENT COPIES
        d[37] = 9;             // DATA SEGMENT GRANULARITY: 2^9 bytes (a 512-byte block)
        d[38] = 0;             // INLINE DATA GRANULARITY
        d[39] = 0;             // HELD DATA GRANULARITY
        d[43] = 2;             // IMPLEMENTED DESCRIPTOR LIST LENGTH
        d[44] = segment_block_to_block;
        d[45] = cscd_identification;
        cmd.complete_data_in(d, allocation);
        return;
    }
    // COPY STATUS of the operation this I_T nexus started under LIST IDENTIFIER.
    uint8_t list_id = cdb[2];
    std::optional<CopyResult> found;
    {
        CopyResults& results = lu.block_state().copies;
        std::lock_guard lock(results.mutex);
        for (const CopyResult& r : results.held) {
            if (r.nexus == cmd.nexus_id() && r.list_id == list_id) {
                found = r;
            }
        }
    }
    if (!found) {
        cmd.complete_check(Sense::invalid_field_in_cdb(2));
        return;
    }
    std::vector<uint8_t> d(12, 0);
    store_be32(&d[0], 8);
    d[4] = found->status; // HDD=0
    store_be16(&d[5], found->segments_processed);
    // TRANSFER COUNT in destination blocks (units F1h: logical blocks).
    d[7] = 0xf1;
    store_be32(&d[8], uint32_t(std::min<uint64_t>(found->blocks_written, 0xffffffffu)));
    cmd.complete_data_in(d, allocation);
}

std::vector<uint8_t> third_party_copy_vpd(const LogicalUnit& /*lu: the same for every LU*/) {
    std::vector<uint8_t> d(4, 0);
    d[1] = vpd::third_party_copy;
    auto descriptor = [&](uint16_t type, const std::vector<uint8_t>& body) {
        // Descriptor lengths are multiples of four (SPC-4 7.8.17.1).
        size_t padded = (body.size() + 3) / 4 * 4;
        size_t at = d.size();
        d.resize(at + 4 + padded, 0);
        store_be16(&d[at], type);
        store_be16(&d[at + 2], uint16_t(padded));
        std::copy(body.begin(), body.end(), d.begin() + long(at + 4));
    };
    // Supported Commands (0001h): EXTENDED COPY(LID1), RECEIVE COPY RESULTS COPY STATUS and
    // OPERATING PARAMETERS.
    // Byte 4 is the COMMANDS SUPPORTED LIST LENGTH; each entry is an opcode, the length of its
    // service action list and the service actions.
    descriptor(0x0001, {7, op::extended_copy, 1, sa::extended_copy_lid1, op::receive_copy_results, 2,
                        sa::copy_status_lid1, sa::copy_operating_parameters});
    // Parameter Data (0004h).
    {
        std::vector<uint8_t> b(28, 0);
        store_be16(&b[4], max_cscd_descriptors);
        store_be16(&b[6], max_segment_descriptors);
        store_be32(&b[8], max_descriptor_list_length);
        store_be32(&b[12], 0); // MAXIMUM INLINE DATA LENGTH
        descriptor(0x0004, b);
    }
    // Supported Descriptors (0008h): block-to-block segments, identification CSCDs.
    descriptor(0x0008, {2, segment_block_to_block, cscd_identification});
    // Supported CSCD Descriptor IDs (000Ch): none beyond list indexes.
    descriptor(0x000c, {0, 0});
    // General Copy Operations (8001h).
    {
        std::vector<uint8_t> b(28, 0);
        store_be32(&b[0], 0);                     // TOTAL CONCURRENT COPIES: no fixed limit
        store_be32(&b[4], CopyResults::max_held); // MAXIMUM IDENTIFIED CONCURRENT COPIES
        store_be32(&b[8], max_segment_bytes);
        b[12] = 9; // DATA SEGMENT GRANULARITY (log2 bytes)
        b[13] = 0; // INLINE DATA GRANULARITY
        descriptor(0x8001, b);
    }
    store_be16(&d[2], uint16_t(d.size() - 4));
    return d;
}

} // namespace ispace::scsi::xcopy
