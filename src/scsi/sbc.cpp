// Plain data transfer and cache commands: READ, WRITE, VERIFY, WRITE AND VERIFY, SYNCHRONIZE CACHE,
// PRE-FETCH, READ CAPACITY, READ DEFECT DATA, START STOP UNIT.
//
// Every command that reads or writes the medium does so under the logical unit's range lock (shared),
// so that COMPARE AND WRITE and the other read-modify-write commands (sbc_atomic.cpp) are atomic
// against it. The lock is taken once the data-out is in, right before the I/O, and released when the
// command completes.
#include "scsi/sbc.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc_util.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace ispace::scsi::sbc {
namespace {

using backstore::IoOp;
using detail::check_blocks;
using detail::failed_io;

// SYNCHRONIZE CACHE with IMMED=1 (and a START STOP UNIT stop) returns before the flush is done: the
// flush goes on by itself and only a failure is logged.
void flush_detached(LogicalUnit& lu, uint64_t offset, uint64_t length) {
    uint64_t lun = lu.lun();
    lu.flush(
        [lun](int error) {
            if (error) {
                log_warn("lun {}: background cache flush failed: {}", lun, std::strerror(-error));
            }
        },
        offset, length);
}

// --- READ ---------------------------------------------------------------------------------------

void read_done(Execution& cmd) {
    if (failed_io(cmd, false)) {
        return;
    }
    cmd.complete_good();
}

void read_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::read, cmd.range.lba * bs, uint64_t(cmd.chunk) * bs, cmd.task().buffer.data(), false,
                  read_done);
}

// --- WRITE --------------------------------------------------------------------------------------

void write_done(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.complete_good();
}

void write_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::write, cmd.range.lba * bs, uint64_t(cmd.chunk) * bs, cmd.task().buffer.data(),
                  cmd.fua, write_done);
}

// How many whole blocks of the CDB's transfer arrived. When the initiator's EDTL is shorter than the
// CDB's transfer, the command acts on what it was given: the whole blocks that arrived are written
// and the command ends GOOD, the fabric reporting the overflow residual (libiscsi's
// test_write10_residuals). A trailing partial block cannot be written and is not: the residual
// says so. (libiscsi's reservation tests write 512 bytes as "one block" to a 4096-byte LUN and
// expect GOOD; refusing the command instead is the other answer test_write10_residuals allows.)
std::optional<Sense> blocks_arrived(const Execution& cmd, uint32_t& blocks) {
    uint32_t bs = cmd.lu()->block_size();
    uint32_t bytes = cmd.task().transfer_length;
    blocks = cmd.data_out_available(bytes) / bs;
    return std::nullopt;
}

void write_data_ready(Execution& cmd) {
    uint32_t blocks = 0;
    if (auto error = blocks_arrived(cmd, blocks)) {
        cmd.complete_check(*error);
        return;
    }
    if (blocks == 0) {
        cmd.complete_good();
        return;
    }
    cmd.chunk = blocks;
    cmd.lock_range(cmd.range.lba, blocks, false, write_locked);
}

// --- VERIFY -------------------------------------------------------------------------------------

constexpr uint8_t bytchk_none = 0; // verify the medium: read it back
constexpr uint8_t bytchk_all = 1;  // compare the data-out with the medium
constexpr uint8_t bytchk_one = 3;  // compare one block of data-out with every block

void verify_read_chunk(Execution& cmd);

void verify_check_chunk(Execution& cmd) {
    if (failed_io(cmd, false)) {
        return;
    }
    LogicalUnit& lu = *cmd.lu();
    uint32_t bs = lu.block_size();
    const uint8_t* medium = cmd.scratch.data();
    const uint8_t* out = cmd.task().buffer.data();
    uint64_t chunk_bytes = uint64_t(cmd.chunk) * bs;
    uint64_t base = cmd.progress * bs; // offset of this chunk from the start of the verified range
    if (cmd.mode == bytchk_all) {
        const uint8_t* expected = out + base;
        if (std::memcmp(medium, expected, chunk_bytes) != 0) {
            uint64_t i = std::mismatch(medium, medium + chunk_bytes, expected).first - medium;
            cmd.complete_check(Sense::miscompare(base + i));
            return;
        }
    } else if (cmd.mode == bytchk_one) {
        for (uint32_t b = 0; b < cmd.chunk; ++b) {
            const uint8_t* block = medium + uint64_t(b) * bs;
            if (std::memcmp(block, out, bs) != 0) {
                uint64_t i = std::mismatch(block, block + bs, out).first - block;
                cmd.complete_check(Sense::miscompare(base + uint64_t(b) * bs + i));
                return;
            }
        }
    }
    cmd.progress += cmd.chunk;
    verify_read_chunk(cmd);
}

// Reads the range back in chunks of at most the maximum transfer length, so a VERIFY of any length
// holds at most that much memory.
void verify_read_chunk(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    uint32_t bs = lu.block_size();
    uint64_t remaining = cmd.range.blocks - cmd.progress;
    if (remaining == 0) {
        cmd.complete_good();
        return;
    }
    cmd.chunk = uint32_t(std::min<uint64_t>(remaining, cmd.scratch.size() / bs));
    cmd.submit_io(IoOp::read, (cmd.range.lba + cmd.progress) * bs, uint64_t(cmd.chunk) * bs,
                  cmd.scratch.data(), false, verify_check_chunk);
}

// Allocates the read-back buffer and reads the range (already locked) in chunks.
void verify_medium(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    uint32_t max_blocks = lu.max_transfer_bytes() / lu.block_size();
    uint64_t chunk = std::min<uint64_t>(cmd.range.blocks, max_blocks);
    cmd.scratch = Buffer::allocate(chunk * lu.block_size());
    cmd.progress = 0;
    verify_read_chunk(cmd);
}

void verify_begin(Execution& cmd) {
    uint32_t needed = cmd.task().transfer_length;
    if (cmd.mode != bytchk_none && cmd.data_out_available(needed) < needed) {
        // Nothing to compare against: the initiator sent less than the CDB says.
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return;
    }
    cmd.lock_range(cmd.range.lba, cmd.range.blocks, false, verify_medium);
}

// --- WRITE AND VERIFY ---------------------------------------------------------------------------

void write_and_verify_written(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    verify_medium(cmd);
}

void write_and_verify_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    // Written through to the medium (as FUA): verifying what a volatile cache holds proves nothing.
    cmd.submit_io(IoOp::write, cmd.range.lba * bs, uint64_t(cmd.range.blocks) * bs, cmd.task().buffer.data(),
                  true, write_and_verify_written);
}

void write_and_verify_data_ready(Execution& cmd) {
    uint32_t blocks = 0;
    if (auto error = blocks_arrived(cmd, blocks)) {
        cmd.complete_check(*error);
        return;
    }
    if (blocks == 0) {
        cmd.complete_good();
        return;
    }
    cmd.range.blocks = blocks;
    // Exclusive: between the write and the read-back no other command may change these blocks, or a
    // concurrent writer would turn into a false miscompare.
    cmd.lock_range(cmd.range.lba, blocks, true, write_and_verify_locked);
}

// --- PRE-FETCH ----------------------------------------------------------------------------------

void pre_fetch_done(Execution& cmd) {
    if (failed_io(cmd, false)) {
        return;
    }
    // GOOD rather than CONDITION MET: the blocks went through the backstore's cache (the host page
    // cache for files), which this device server does not control and cannot promise to keep them
    // in. SBC-4 5.11 gives GOOD exactly when the cache cannot hold all of them.
    cmd.complete_good();
}

void pre_fetch_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::read, cmd.range.lba * bs, uint64_t(cmd.chunk) * bs, cmd.scratch.data(), false,
                  pre_fetch_done);
}

// --- SYNCHRONIZE CACHE / START STOP UNIT --------------------------------------------------------

void flush_done(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.complete_good();
}

} // namespace

void read(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    BlockRange r = decode_block_range(cmd.cdb());
    if (auto error = check_blocks(cmd, r, true)) {
        cmd.complete_check(*error);
        return;
    }
    uint32_t bs = lu.block_size();
    uint32_t bytes = r.blocks * bs;
    task.transfer_length = bytes;
    // Read only what the initiator will take (whole blocks covering min(EDTL, transfer)); with a
    // shorter EDTL the rest would be read to be thrown away, and the fabric reports the overflow.
    uint32_t wanted = task.data_in ? std::min(bytes, task.expected_length) : 0;
    uint32_t blocks = (wanted + bs - 1) / bs;
    if (blocks == 0) {
        cmd.complete_good();
        return;
    }
    task.buffer = Buffer::allocate(uint64_t(blocks) * bs);
    cmd.range = r;
    cmd.chunk = blocks;
    // FUA on a read asks for the medium rather than a cache: the backstore reads what is durable or
    // about to be, and DPO is a cache-retention hint; both are accepted and need nothing here.
    cmd.lock_range(r.lba, blocks, false, read_locked);
}

void write(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    BlockRange r = decode_block_range(cmd.cdb());
    if (auto error = check_blocks(cmd, r, true)) {
        cmd.complete_check(*error);
        return;
    }
    task.transfer_length = r.blocks * lu.block_size();
    if (r.blocks == 0) {
        cmd.complete_good();
        return;
    }
    cmd.range = r;
    cmd.fua = detail::write_through(cmd);
    cmd.fetch_data_out(task.transfer_length, write_data_ready);
}

void verify(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint8_t bytchk = (cdb[1] >> 1) & 0x03;
    if (bytchk == 2) {
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 2));
        return;
    }
    BlockRange r = decode_block_range(cdb);
    if (auto error = check_blocks(cmd, r, bytchk == bytchk_all)) {
        cmd.complete_check(*error);
        return;
    }
    if (r.blocks == 0) {
        cmd.complete_good();
        return;
    }
    uint32_t bs = lu.block_size();
    task.transfer_length = bytchk == bytchk_all ? r.blocks * bs : bytchk == bytchk_one ? bs : 0;
    cmd.range = r;
    cmd.mode = bytchk;
    cmd.progress = 0;
    if (bytchk == bytchk_none) {
        verify_begin(cmd);
        return;
    }
    cmd.fetch_data_out(task.transfer_length, verify_begin);
}

void write_and_verify(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    // BYTCHK 0: write, then verify the medium; 1: write, then compare the medium with the data-out.
    // 10b is reserved and 11b (one block for all) has no meaning for a write that sends every block.
    uint8_t bytchk = (cdb[1] >> 1) & 0x03;
    if (bytchk > 1) {
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 2));
        return;
    }
    BlockRange r = decode_block_range(cdb);
    if (auto error = check_blocks(cmd, r, true)) {
        cmd.complete_check(*error);
        return;
    }
    task.transfer_length = r.blocks * lu.block_size();
    if (r.blocks == 0) {
        cmd.complete_good();
        return;
    }
    cmd.range = r;
    cmd.mode = bytchk == 1 ? bytchk_all : bytchk_none;
    cmd.fetch_data_out(task.transfer_length, write_and_verify_data_ready);
}

void synchronize_cache(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    BlockRange r = decode_block_range(cdb);
    // NUMBER OF LOGICAL BLOCKS 0 means "from LBA to the end of the medium".
    if (auto error = check_blocks(cmd, r, false)) {
        cmd.complete_check(*error);
        return;
    }
    uint32_t bs = lu.block_size();
    uint64_t blocks = r.blocks ? r.blocks : lu.block_count() - r.lba;
    bool immed = cdb[1] & 0x02;
    if (immed) {
        flush_detached(lu, r.lba * bs, blocks * bs);
        cmd.complete_good();
        return;
    }
    cmd.submit_io(IoOp::flush, r.lba * bs, blocks * bs, nullptr, false, flush_done);
}

void pre_fetch(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    BlockRange r = decode_block_range(cdb);
    uint32_t max_blocks = limits(lu).max_transfer; // MAXIMUM PREFETCH LENGTH
    if (r.blocks > max_blocks) {
        cmd.complete_check(Sense::invalid_field_in_cdb(transfer_length_offset(cdb)));
        return;
    }
    if (auto error = check_lba_range(r.lba, r.blocks, lu.block_count())) {
        cmd.complete_check(*error);
        return;
    }
    // PREFETCH LENGTH 0: from the LBA to the end of the medium, as much of it as one read holds.
    uint64_t blocks = r.blocks ? r.blocks : std::min<uint64_t>(lu.block_count() - r.lba, max_blocks);
    bool immed = cdb[1] & 0x02;
    if (immed || blocks == 0) {
        // IMMED: status once the CDB is valid. The read-ahead itself is a hint this device server
        // does not have to act on (SBC-4: GOOD when the cache cannot take the blocks).
        cmd.complete_good();
        return;
    }
    cmd.range = r;
    cmd.chunk = uint32_t(blocks);
    cmd.scratch = Buffer::allocate(blocks * lu.block_size());
    cmd.lock_range(r.lba, blocks, false, pre_fetch_locked);
}

void read_capacity_10(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    const LogicalUnit& lu = *cmd.lu();
    bool pmi = cdb[8] & 0x01;
    // SBC-3 5.15: with PMI=0 the LOGICAL BLOCK ADDRESS field must be zero.
    if (!pmi && load_be32(cdb + 2) != 0) {
        cmd.complete_check(Sense::invalid_field_in_cdb(2));
        return;
    }
    uint64_t last = lu.block_count() - 1;
    std::array<uint8_t, 8> d{};
    // Capacities past 2^32 blocks say FFFFFFFFh: "use READ CAPACITY(16)".
    store_be32(&d[0], last >= 0xffffffffu ? 0xffffffffu : uint32_t(last));
    store_be32(&d[4], lu.block_size());
    cmd.complete_data_in(d, uint32_t(d.size()));
}

void read_capacity_16(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    const LogicalUnit& lu = *cmd.lu();
    uint32_t allocation = allocation_length(cdb);
    bool pmi = cdb[14] & 0x01;
    if (!pmi && load_be64(cdb + 2) != 0) {
        cmd.complete_check(Sense::invalid_field_in_cdb(2));
        return;
    }
    Limits l = limits(lu);
    std::array<uint8_t, 32> d{};
    store_be64(&d[0], lu.block_count() - 1);
    store_be32(&d[8], lu.block_size());
    d[12] = 0x00; // no protection information
    d[13] = 0x00; // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0
    // LBPME: logical block provisioning management (thin: UNMAP, WRITE SAME with UNMAP, GET LBA
    // STATUS); LBPRZ: unmapped blocks read back as zeroes. Same values as the provisioning VPD page.
    d[14] = uint8_t((l.lbpme ? 0x80 : 0x00) | (l.lbprz ? 0x40 : 0x00));
    // Any allocation length is valid, 0 to 15 included (it only truncates).
    cmd.complete_data_in(d, allocation);
}

void read_defect_data(Execution& cmd) {
    const uint8_t* cdb = cmd.cdb();
    bool twelve = cdb[0] == op::read_defect_data_12;
    uint8_t flags = twelve ? cdb[1] : cdb[2];
    bool plist = flags & 0x10;
    bool glist = flags & 0x08;
    uint8_t format = flags & 0x07;
    if (format == 0x07) { // reserved
        cmd.complete_check(Sense::invalid_field_in_cdb(twelve ? 1 : 2, 2));
        return;
    }
    uint32_t allocation = allocation_length(cdb);
    // A file or memory has no defects: both lists are valid and empty, in whatever format was asked.
    std::vector<uint8_t> d(twelve ? 8 : 4, 0);
    d[1] = uint8_t((plist ? 0x10 : 0) | (glist ? 0x08 : 0) | format);
    cmd.complete_data_in(d, allocation);
}

void start_stop_unit(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    bool immed = cdb[1] & 0x01;
    uint8_t power_condition = cdb[4] >> 4;
    bool no_flush = cdb[4] & 0x04;
    bool loej = cdb[4] & 0x02;
    bool start = cdb[4] & 0x01;
    switch (power_condition) {
    case 0x0: // START_VALID: process START and LOEJ
        break;
    case 0x1: // ACTIVE
    case 0x2: // IDLE
    case 0x3: // STANDBY
    case 0x7: // LU_CONTROL
    case 0xa: // FORCE_IDLE_0
    case 0xb: // FORCE_STANDBY_0
        // Power conditions have no meaning for this device; START and LOEJ are ignored with them.
        cmd.complete_good();
        return;
    default:
        cmd.complete_check(Sense::invalid_field_in_cdb(4, 7));
        return;
    }
    if (loej && lu.medium_removal_prevented()) {
        // PREVENT ALLOW MEDIUM REMOVAL holds the medium: no load or eject while it does.
        cmd.complete_check(Sense::make(SenseKey::illegal_request, asc::medium_removal_prevented));
        return;
    }
    if (loej) {
        // The medium is not removable (RMB=0): there is nothing to load or eject.
        cmd.complete_check(Sense::invalid_field_in_cdb(4, 1));
        return;
    }
    // The unit is always ready: START=1 is a no-op and a stop leaves it serving. What a stop would
    // promise is that the cache is on the medium, so do that unless NO_FLUSH.
    if (!start && !no_flush) {
        if (immed) {
            flush_detached(lu, 0, 0);
            cmd.complete_good();
            return;
        }
        cmd.submit_io(IoOp::flush, 0, 0, nullptr, false, flush_done);
        return;
    }
    cmd.complete_good();
}

} // namespace ispace::scsi::sbc
