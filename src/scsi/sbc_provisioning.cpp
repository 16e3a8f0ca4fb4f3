// Logical block provisioning (SBC-3 4.7): UNMAP, WRITE SAME(10/16) with the UNMAP, ANCHOR and NDOB
// bits, and GET LBA STATUS.
//
// Deallocation is the backstore's IoOp::unmap (a punched hole for a thin file, a freed chunk for
// memory); "reads as zeroes" is IoOp::write_zeroes. GET LBA STATUS reports the backstore's real
// allocation (Device::allocation_status: SEEK_DATA/SEEK_HOLE on a worker thread for files).
//
// Anchored blocks are not supported (ANC_SUP=0 in the provisioning VPD page): ANCHOR=1 is INVALID
// FIELD IN CDB. Every medium change runs under the range lock (shared), like a WRITE.
#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc.hpp"
#include "scsi/sbc_util.hpp"
#include "scsi/sense.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

namespace ispace::scsi::sbc {
namespace {

using backstore::IoOp;
using detail::failed_io;

// --- UNMAP --------------------------------------------------------------------------------------

constexpr uint32_t unmap_header = 8;
constexpr uint32_t unmap_descriptor = 16;

const uint8_t* unmap_descriptor_at(const Execution& cmd, uint64_t index) {
    return cmd.task().buffer.data() + unmap_header + index * unmap_descriptor;
}

void unmap_next(Execution& cmd);

void unmap_done(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.unlock_range();
    ++cmd.progress;
    unmap_next(cmd);
}

void unmap_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::unmap, cmd.range.lba * bs, uint64_t(cmd.range.blocks) * bs, nullptr, false,
                  unmap_done);
}

// One descriptor at a time, each under its own range lock, so that the command never holds two.
void unmap_next(Execution& cmd) {
    // cmd.chunk holds the number of descriptors.
    for (; cmd.progress < cmd.chunk; ++cmd.progress) {
        const uint8_t* d = unmap_descriptor_at(cmd, cmd.progress);
        uint32_t blocks = load_be32(d + 8);
        if (blocks == 0) {
            continue;
        }
        cmd.range = {load_be64(d), blocks};
        cmd.lock_range(cmd.range.lba, blocks, false, unmap_locked);
        return;
    }
    cmd.complete_good();
}

void unmap_parameters(Execution& cmd) {
    const LogicalUnit& lu = *cmd.lu();
    uint32_t length = cmd.task().transfer_length;
    if (cmd.data_out_available(length) < length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    const uint8_t* p = cmd.task().buffer.data();
    // SBC-3 5.28.2: the descriptor list is what the header says, bounded by what was sent; a partial
    // trailing descriptor is ignored.
    uint32_t listed = load_be16(p + 2);
    uint32_t descriptors = std::min(listed, length - unmap_header) / unmap_descriptor;
    Limits l = limits(lu);
    if (descriptors > l.max_unmap_descriptors) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(2));
        return;
    }
    // Every descriptor is checked before anything is deallocated: all or nothing for range errors.
    uint64_t total = 0;
    for (uint32_t i = 0; i < descriptors; ++i) {
        const uint8_t* d = unmap_descriptor_at(cmd, i);
        uint64_t lba = load_be64(d);
        uint32_t blocks = load_be32(d + 8);
        if (lba > lu.block_count() || blocks > lu.block_count() - lba) {
            cmd.complete_check(Sense::lba_out_of_range());
            return;
        }
        total += blocks;
    }
    if (l.max_unmap_blocks != 0xffffffff && total > l.max_unmap_blocks) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(uint16_t(unmap_header + 8)));
        return;
    }
    cmd.chunk = descriptors;
    cmd.progress = 0;
    unmap_next(cmd);
}

// --- WRITE SAME ---------------------------------------------------------------------------------

enum WriteSameMode : uint8_t { ws_unmap, ws_zeroes, ws_pattern };

void write_same_finish(Execution& cmd);

void write_same_flushed(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.complete_good();
}

// With the write cache disabled, the blocks must be on the medium before GOOD; unmap and
// write-zeroes have no FUA form, so a flush follows them.
void write_same_finish(Execution& cmd) {
    if (cmd.lu()->write_cache_enabled() || cmd.mode == ws_pattern) {
        cmd.complete_good();
        return;
    }
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::flush, cmd.range.lba * bs, uint64_t(cmd.range.blocks) * bs, nullptr, false,
                  write_same_flushed);
}

void write_same_whole_done(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    write_same_finish(cmd);
}

void write_same_pattern_chunk(Execution& cmd);

void write_same_pattern_done(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.progress += cmd.chunk;
    write_same_pattern_chunk(cmd);
}

// The pattern block repeated over a buffer of up to the maximum transfer length, written chunk by
// chunk: any WRITE SAME holds at most that much memory.
void write_same_pattern_chunk(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    uint64_t remaining = cmd.range.blocks - cmd.progress;
    if (remaining == 0) {
        write_same_finish(cmd);
        return;
    }
    cmd.chunk = uint32_t(std::min<uint64_t>(remaining, cmd.scratch.size() / bs));
    cmd.submit_io(IoOp::write, (cmd.range.lba + cmd.progress) * bs, uint64_t(cmd.chunk) * bs,
                  cmd.scratch.data(), cmd.fua, write_same_pattern_done);
}

void write_same_locked(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    uint32_t bs = lu.block_size();
    uint64_t offset = cmd.range.lba * bs;
    uint64_t bytes = uint64_t(cmd.range.blocks) * bs;
    switch (cmd.mode) {
    case ws_unmap:
        cmd.submit_io(IoOp::unmap, offset, bytes, nullptr, false, write_same_whole_done);
        return;
    case ws_zeroes:
        if (lu.features().write_zeroes) {
            cmd.submit_io(IoOp::write_zeroes, offset, bytes, nullptr, false, write_same_whole_done);
            return;
        }
        break;
    default:
        break;
    }
    // A pattern, or zeroes the backstore cannot write natively.
    uint64_t chunk = std::min<uint64_t>(cmd.range.blocks, lu.max_transfer_bytes() / bs);
    Buffer pattern = Buffer::allocate(chunk * bs);
    for (uint64_t b = 0; b < chunk; ++b) {
        if (cmd.mode == ws_zeroes) {
            std::memset(pattern.data() + b * bs, 0, bs);
        } else {
            std::memcpy(pattern.data() + b * bs, cmd.task().buffer.data(), bs);
        }
    }
    cmd.scratch = std::move(pattern);
    cmd.progress = 0;
    cmd.mode = ws_pattern;
    write_same_pattern_chunk(cmd);
}

bool all_zero(const uint8_t* p, size_t n) {
    return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

void write_same_data_ready(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    if (cmd.mode != ws_unmap && cmd.task().transfer_length != 0) {
        if (cmd.data_out_available(bs) < bs) {
            cmd.complete_check(Sense::invalid_field_in_command_iu());
            return;
        }
        if (all_zero(cmd.task().buffer.data(), bs)) {
            cmd.mode = ws_zeroes;
        }
    }
    cmd.lock_range(cmd.range.lba, cmd.range.blocks, false, write_same_locked);
}

} // namespace

void unmap(Execution& cmd) {
    // Only a logical unit whose device deallocates gets here: on any other the operation table does
    // not route UNMAP (INVALID COMMAND OPERATION CODE, LBPU=0; cdb.cpp).
    const uint8_t* cdb = cmd.cdb();
    if (cdb[1] & 0x01) { // ANCHOR, with ANC_SUP=0
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 0));
        return;
    }
    uint32_t length = parameter_list_length(cdb);
    cmd.task().transfer_length = length;
    if (length == 0) {
        cmd.complete_good();
        return;
    }
    if (length < unmap_header) {
        cmd.complete_check(Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error));
        return;
    }
    cmd.fetch_data_out(length, unmap_parameters);
}

void write_same(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    bool sixteen = cdb[0] == op::write_same_16;
    bool anchor = cdb[1] & 0x10;
    bool unmap_bit = cdb[1] & 0x08;
    bool ndob = sixteen && (cdb[1] & 0x01);
    Limits l = limits(lu);
    if (anchor) {
        // ANCHOR without UNMAP is always invalid; with it, anchored blocks are not supported.
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 4));
        return;
    }
    // UNMAP=1 reaches here only where the device deallocates: elsewhere the bit is outside the usage
    // mask (INVALID FIELD IN CDB before the handler runs, LBPWS=0; cdb.cpp).
    BlockRange r = decode_block_range(cdb);
    if (auto error = check_lba_range(r.lba, r.blocks, lu.block_count())) {
        cmd.complete_check(*error);
        return;
    }
    // WSNZ=0: NUMBER OF LOGICAL BLOCKS 0 is every block from the LBA to the end of the medium.
    uint64_t blocks = r.blocks ? r.blocks : lu.block_count() - r.lba;
    if (blocks > l.max_write_same) {
        cmd.complete_check(Sense::invalid_field_in_cdb(transfer_length_offset(cdb)));
        return;
    }
    uint32_t bs = lu.block_size();
    task.transfer_length = ndob ? 0 : bs;
    // The data-out is one block, exactly: anything else is a malformed command (libiscsi's
    // InvalidDataOutSize), not a residual to shrug off.
    uint32_t sent = task.data_out ? task.expected_length : 0;
    if (sent != task.transfer_length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    cmd.range = {r.lba, uint32_t(blocks)};
    cmd.fua = !lu.write_cache_enabled();
    // UNMAP=1 deallocates whatever the data-out block holds (SBC-3; what Linux, ESXi and libiscsi
    // rely on); NDOB means a block of zeroes.
    cmd.mode = unmap_bit ? ws_unmap : ndob ? ws_zeroes : ws_pattern;
    if (task.transfer_length == 0) {
        write_same_data_ready(cmd);
        return;
    }
    cmd.fetch_data_out(task.transfer_length, write_same_data_ready);
}

// --- GET LBA STATUS -----------------------------------------------------------------------------

namespace {

constexpr uint8_t status_mapped = 0x0;
constexpr uint8_t status_deallocated = 0x1;

// One query covers at most this much of the medium: the answer may stop short of the end (the
// initiator asks again from where it stopped), and a badly fragmented file cannot make the worker
// produce an unbounded extent list.
constexpr uint64_t max_query_bytes = uint64_t(4) << 30;

// The parameter data (SBC-3 5.16.2) for blocks [start, end) from the device's extents: consecutive
// descriptors from `start`, adjacent ones of one status merged, at most `room` of them.
std::vector<uint8_t> lba_status_data(const std::vector<backstore::Extent>& extents, uint32_t bs,
                                     uint64_t start, uint64_t end, size_t room) {
    std::vector<uint8_t> d(8, 0);
    auto emit = [&](uint64_t first, uint64_t count, uint8_t status) {
        while (count > 0) {
            size_t n = (d.size() - 8) / 16;
            uint8_t* last = n ? &d[8 + (n - 1) * 16] : nullptr;
            uint32_t last_count = last ? load_be32(last + 8) : 0;
            if (last && last[12] == status && load_be64(last) + last_count == first &&
                last_count < 0xffffffffu) {
                uint64_t add = std::min<uint64_t>(count, 0xffffffffu - last_count);
                store_be32(last + 8, uint32_t(last_count + add));
                first += add;
                count -= add;
                continue;
            }
            if (n == room) {
                return;
            }
            d.resize(d.size() + 16, 0);
            uint8_t* e = &d[d.size() - 16];
            uint64_t take = std::min<uint64_t>(count, 0xffffffffu);
            store_be64(e, first);
            store_be32(e + 8, uint32_t(take));
            e[12] = status;
            first += take;
            count -= take;
        }
    };
    uint64_t next = start;
    for (const backstore::Extent& x : extents) {
        // Extents may begin before the query and end after it; a partly allocated block is mapped
        // (the file backstore already rounds holes inwards to whole blocks).
        uint64_t first = std::max(next, x.offset / bs);
        uint64_t last = std::min(end, (x.offset + x.length + bs - 1) / bs);
        if (first >= last) {
            continue;
        }
        if (first > next) {
            emit(next, first - next, status_mapped); // a gap the device did not describe
        }
        emit(first, last - first, x.mapped ? status_mapped : status_deallocated);
        next = last;
    }
    if (next < end) {
        emit(next, end - next, status_mapped);
    }
    store_be32(&d[0], uint32_t(d.size() - 4));
    return d;
}

void lba_status_send(Execution& cmd) {
    uint32_t allocation = load_be32(cmd.cdb() + 10);
    cmd.complete_data_in(std::span<const uint8_t>(cmd.scratch.data(), cmd.scratch.size()), allocation);
}

void lba_status_failed(Execution& cmd) {
    cmd.complete_check(sense_from_errno(-int(cmd.chunk), false));
}

} // namespace

void get_lba_status(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint64_t lba = load_be64(cdb + 2);
    if (lba >= lu.block_count()) {
        cmd.complete_check(Sense::lba_out_of_range());
        return;
    }
    uint32_t bs = lu.block_size();
    uint64_t end = lba + std::min(lu.block_count() - lba, max_query_bytes / bs);
    uint32_t allocation = allocation_length(cdb);
    // A truncated first descriptor still says something: always describe at least one.
    size_t room = std::max<size_t>(1, allocation > 8 ? (allocation - 8) / 16 : 0);
    Execution* self = &cmd;
    // The command cannot go away while it waits: task management waits for this like for I/O.
    cmd.wait_begin();
    lu.device().allocation_status(lba * bs, (end - lba) * bs,
                                  [self, bs, lba, end, room](Result<std::vector<backstore::Extent>> result) {
                                      if (!result) {
                                          self->chunk =
                                              uint32_t(result.error().code ? result.error().code : EIO);
                                          self->wait_end(lba_status_failed);
                                          return;
                                      }
                                      std::vector<uint8_t> d = lba_status_data(*result, bs, lba, end, room);
                                      self->scratch = Buffer::allocate(d.size());
                                      std::memcpy(self->scratch.data(), d.data(), d.size());
                                      self->wait_end(lba_status_send);
                                  });
}

} // namespace ispace::scsi::sbc
