// Helpers the block command handlers share (sbc_*.cpp, xcopy.cpp). Not part of the engine's API.
#pragma once

#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/sense.hpp"

#include <cstdint>
#include <optional>

namespace ispace::scsi::sbc::detail {

// FUA of a 10/12/16-byte write (byte 1 bit 3); the 6-byte forms have none.
inline bool fua_bit(const uint8_t* cdb) {
    return cdb_length_for(cdb[0]) != 6 && (cdb[1] & 0x08);
}

// With the write cache disabled (WCE=0) every write is write-through, as if FUA were set.
inline bool write_through(const Execution& cmd) {
    return fua_bit(cmd.cdb()) || !cmd.lu()->write_cache_enabled();
}

// The checks every block command shares, in SBC order: a transfer over the Block Limits maximum is
// INVALID FIELD IN CDB (on the length field) before the range is looked at; then LBA OUT OF RANGE.
// `moves_data`: the command transfers its blocks (a VERIFY with BYTCHK=0 or a SYNCHRONIZE CACHE does
// not, so it is not bounded by the maximum transfer length).
inline std::optional<Sense> check_blocks(const Execution& cmd, const BlockRange& r, bool moves_data) {
    const LogicalUnit& lu = *cmd.lu();
    if (moves_data && uint64_t(r.blocks) * lu.block_size() > lu.max_transfer_bytes()) {
        return Sense::invalid_field_in_cdb(transfer_length_offset(cmd.cdb()));
    }
    return check_lba_range(r.lba, r.blocks, lu.block_count());
}

// Ends the command with the sense for its backstore error, if there was one. True when it did.
inline bool failed_io(Execution& cmd, bool write) {
    if (cmd.io_error()) {
        cmd.complete_check(sense_from_errno(cmd.io_error(), write));
        return true;
    }
    return false;
}

} // namespace ispace::scsi::sbc::detail
