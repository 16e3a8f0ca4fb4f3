// The read-modify-write and atomic commands: COMPARE AND WRITE (SBC-3 5.2), ORWRITE(16) (5.9) and
// WRITE ATOMIC(16) (SBC-4 5.48).
//
// Each runs its read, its comparison or merge, and its write under an exclusive range lock of the
// logical unit (range_lock.hpp): no other command of any session reads or writes an overlapping
// block in between, and none sees half of the write. That is what VMware's ATS locking relies on.
// The lock is taken only once the data-out is in, so a slow initiator holds nothing while it sends.
//
// What the lock cannot give is atomicity against a power loss in the middle of a multi-block write:
// a file backstore's write is not atomic on the medium. WRITE ATOMIC is atomic against every other
// command, not against a crash.
#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc.hpp"
#include "scsi/sbc_util.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <cstring>

namespace ispace::scsi::sbc {
namespace {

using backstore::IoOp;
using detail::failed_io;

void done_after_write(Execution& cmd) {
    if (failed_io(cmd, true)) {
        return;
    }
    cmd.complete_good();
}

// The data-out must be exactly what the CDB describes: a COMPARE AND WRITE or an atomic write cannot
// act on part of it (libiscsi's InvalidDataOutSize sends both too little and too much).
bool exact_data_out(Execution& cmd) {
    const Task& task = cmd.task();
    uint32_t sent = task.data_out ? task.expected_length : 0;
    if (sent != task.transfer_length) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return false;
    }
    return true;
}

bool data_out_complete(Execution& cmd) {
    uint32_t needed = cmd.task().transfer_length;
    if (cmd.data_out_available(needed) < needed) {
        cmd.complete_check(Sense::invalid_field_in_command_iu());
        return false;
    }
    return true;
}

// --- COMPARE AND WRITE --------------------------------------------------------------------------

void caw_compared(Execution& cmd) {
    if (failed_io(cmd, false)) {
        return;
    }
    uint32_t bs = cmd.lu()->block_size();
    uint64_t bytes = uint64_t(cmd.range.blocks) * bs;
    const uint8_t* medium = cmd.scratch.data();
    const uint8_t* verify = cmd.task().buffer.data();
    if (std::memcmp(medium, verify, bytes) != 0) {
        // INFORMATION: the offset in the data-out of the first byte that differs (SBC-3 5.2). Nothing
        // is written.
        uint64_t at = std::mismatch(medium, medium + bytes, verify).first - medium;
        cmd.complete_check(Sense::miscompare(at));
        return;
    }
    cmd.submit_io(IoOp::write, cmd.range.lba * bs, bytes, cmd.task().buffer.data() + bytes, cmd.fua,
                  done_after_write);
}

void caw_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    uint64_t bytes = uint64_t(cmd.range.blocks) * bs;
    cmd.scratch = Buffer::allocate(bytes);
    cmd.submit_io(IoOp::read, cmd.range.lba * bs, bytes, cmd.scratch.data(), false, caw_compared);
}

void caw_data_ready(Execution& cmd) {
    if (!data_out_complete(cmd)) {
        return;
    }
    cmd.lock_range(cmd.range.lba, cmd.range.blocks, true, caw_locked);
}

// --- ORWRITE ------------------------------------------------------------------------------------

void orwrite_merge(Execution& cmd) {
    if (failed_io(cmd, false)) {
        return;
    }
    uint32_t bs = cmd.lu()->block_size();
    uint64_t bytes = uint64_t(cmd.range.blocks) * bs;
    uint8_t* medium = cmd.scratch.data();
    const uint8_t* out = cmd.task().buffer.data();
    for (uint64_t i = 0; i < bytes; ++i) {
        medium[i] |= out[i];
    }
    cmd.submit_io(IoOp::write, cmd.range.lba * bs, bytes, medium, cmd.fua, done_after_write);
}

void orwrite_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    uint64_t bytes = uint64_t(cmd.range.blocks) * bs;
    cmd.scratch = Buffer::allocate(bytes);
    cmd.submit_io(IoOp::read, cmd.range.lba * bs, bytes, cmd.scratch.data(), false, orwrite_merge);
}

void orwrite_data_ready(Execution& cmd) {
    if (!data_out_complete(cmd)) {
        return;
    }
    cmd.lock_range(cmd.range.lba, cmd.range.blocks, true, orwrite_locked);
}

// --- WRITE ATOMIC -------------------------------------------------------------------------------

void atomic_locked(Execution& cmd) {
    uint32_t bs = cmd.lu()->block_size();
    cmd.submit_io(IoOp::write, cmd.range.lba * bs, uint64_t(cmd.range.blocks) * bs, cmd.task().buffer.data(),
                  cmd.fua, done_after_write);
}

void atomic_data_ready(Execution& cmd) {
    if (!data_out_complete(cmd)) {
        return;
    }
    cmd.lock_range(cmd.range.lba, cmd.range.blocks, true, atomic_locked);
}

} // namespace

void compare_and_write(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint64_t lba = load_be64(cdb + 2);
    uint32_t blocks = cdb[13];
    uint32_t max_blocks = limits(lu).max_compare_and_write;
    // More data-out than any COMPARE AND WRITE may carry means more blocks than the device allows:
    // the one-byte NUMBER OF LOGICAL BLOCKS wrapped (libiscsi's Simple test sends 256 blocks as 0).
    uint32_t sent = task.data_out ? task.expected_length : 0;
    if (blocks > max_blocks || uint64_t(sent) > 2ull * max_blocks * lu.block_size()) {
        cmd.complete_check(Sense::invalid_field_in_cdb(13));
        return;
    }
    if (auto error = check_lba_range(lba, blocks, lu.block_count())) {
        cmd.complete_check(*error);
        return;
    }
    if (blocks == 0) {
        // SBC-3: no blocks is no read, no comparison and no write, and not an error; whatever
        // data-out came along is left unread (the fabric reports it as residual).
        cmd.complete_good();
        return;
    }
    // The data-out is the verify instance followed by the write instance of the blocks.
    task.transfer_length = 2 * blocks * lu.block_size();
    if (!exact_data_out(cmd)) {
        return;
    }
    cmd.range = {lba, blocks};
    cmd.fua = detail::write_through(cmd);
    cmd.fetch_data_out(task.transfer_length, caw_data_ready);
}

void orwrite(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    BlockRange r = decode_block_range(cmd.cdb());
    if (auto error = detail::check_blocks(cmd, r, true)) {
        cmd.complete_check(*error);
        return;
    }
    task.transfer_length = r.blocks * lu.block_size();
    if (r.blocks == 0) {
        cmd.complete_good();
        return;
    }
    if (!exact_data_out(cmd)) {
        return;
    }
    cmd.range = r;
    cmd.fua = detail::write_through(cmd);
    cmd.fetch_data_out(task.transfer_length, orwrite_data_ready);
}

void write_atomic(Execution& cmd) {
    Task& task = cmd.task();
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint64_t lba = load_be64(cdb + 2);
    uint16_t boundary = load_be16(cdb + 10);
    uint32_t blocks = load_be16(cdb + 12);
    // MAXIMUM ATOMIC BOUNDARY SIZE is 0: atomic boundaries are not supported.
    if (boundary != 0) {
        cmd.complete_check(Sense::invalid_field_in_cdb(10));
        return;
    }
    if (blocks > limits(lu).max_atomic_transfer) {
        cmd.complete_check(Sense::invalid_field_in_cdb(12));
        return;
    }
    if (auto error = check_lba_range(lba, blocks, lu.block_count())) {
        cmd.complete_check(*error);
        return;
    }
    task.transfer_length = blocks * lu.block_size();
    if (blocks == 0) {
        cmd.complete_good();
        return;
    }
    // All or nothing: a short data-out is refused rather than written in part.
    if (!exact_data_out(cmd)) {
        return;
    }
    cmd.range = {lba, blocks};
    cmd.fua = detail::write_through(cmd);
    cmd.fetch_data_out(task.transfer_length, atomic_data_ready);
}

} // namespace ispace::scsi::sbc
