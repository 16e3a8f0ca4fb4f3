// SBC-3/SBC-4 block commands: the handlers of the operation table (cdb.cpp) that turn CDBs into
// byte-range backstore::IoRequests, shared by every backstore. Split by concern:
//   sbc.cpp              READ, WRITE, VERIFY, WRITE AND VERIFY, SYNCHRONIZE CACHE, PRE-FETCH,
//                        READ CAPACITY, READ DEFECT DATA, START STOP UNIT
//   sbc_provisioning.cpp UNMAP, WRITE SAME (10/16, UNMAP/ANCHOR/NDOB), GET LBA STATUS
//   sbc_atomic.cpp       COMPARE AND WRITE, ORWRITE, WRITE ATOMIC(16): the read-modify-write commands,
//                        atomic through the logical unit's range lock (range_lock.hpp)
//   sbc_sanitize.cpp     SANITIZE and the sanitize-in-progress gate
//   sbc_vpd.cpp          the Block Limits, Block Device Characteristics and Logical Block
//                        Provisioning VPD pages (INQUIRY in spc.cpp serves them)
// EXTENDED COPY and RECEIVE COPY RESULTS are in xcopy.cpp.
#pragma once

#include "scsi_spec/sense.hpp"

#include <cstdint>
#include <optional>
#include <vector>

namespace ispace::scsi {
class Execution;
class LogicalUnit;
struct Operation;
} // namespace ispace::scsi

namespace ispace::scsi::sbc {

// --- sbc.cpp ---
void read(Execution& cmd);             // READ(6/10/12/16)
void write(Execution& cmd);            // WRITE(6/10/12/16)
void verify(Execution& cmd);           // VERIFY(10/12/16), BYTCHK 0, 1 and 3
void write_and_verify(Execution& cmd); // WRITE AND VERIFY(10/12/16), BYTCHK 0 and 1
void synchronize_cache(Execution& cmd);
void pre_fetch(Execution& cmd); // PRE-FETCH(10/16)
void read_capacity_10(Execution& cmd);
void read_capacity_16(Execution& cmd);
void read_defect_data(Execution& cmd); // READ DEFECT DATA(10/12)
void start_stop_unit(Execution& cmd);

// --- sbc_provisioning.cpp ---
void unmap(Execution& cmd);
void write_same(Execution& cmd); // WRITE SAME(10/16)
void get_lba_status(Execution& cmd);

// --- sbc_atomic.cpp ---
void compare_and_write(Execution& cmd);
void orwrite(Execution& cmd);      // ORWRITE(16)
void write_atomic(Execution& cmd); // WRITE ATOMIC(16)

// --- sbc_sanitize.cpp ---
void sanitize(Execution& cmd);
// NOT READY (sanitize in progress) or MEDIUM ERROR (sanitize failed) for a command that may not run
// now (SBC-4 4.11); nullopt when it may.
std::optional<Sense> sanitize_refuses(const LogicalUnit& lu, const Operation& op);
// What REQUEST SENSE reports about a sanitize operation: NOT READY, SANITIZE IN PROGRESS with the
// progress indication (the fraction done, in 65536ths) while it runs; the failure after one failed.
std::optional<Sense> sanitize_status(const LogicalUnit& lu);
// The logical unit is being destroyed (ispaced stops) while a sanitize runs: logs how far it got,
// takes its range out of the lock, and cuts the operation loose, so that freeing it later touches
// nothing of the logical unit. Call only when no reactor runs.
void abandon_sanitize(LogicalUnit& lu);

// --- sbc_vpd.cpp ---
std::vector<uint8_t> block_limits_vpd(const LogicalUnit& lu);                 // B0h
std::vector<uint8_t> block_device_characteristics_vpd(const LogicalUnit& lu); // B1h
std::vector<uint8_t> logical_block_provisioning_vpd(const LogicalUnit& lu);   // B2h

// The limits the Block Limits page advertises and the handlers enforce (in blocks of the LU).
struct Limits {
    uint32_t max_transfer = 0;         // MAXIMUM TRANSFER LENGTH
    uint8_t max_compare_and_write = 0; // MAXIMUM COMPARE AND WRITE LENGTH
    uint32_t max_unmap_blocks = 0;     // MAXIMUM UNMAP LBA COUNT (0xffffffff: no limit)
    uint32_t max_unmap_descriptors = 0;
    uint32_t optimal_unmap_granularity = 0;
    uint64_t max_write_same = 0; // MAXIMUM WRITE SAME LENGTH
    uint32_t max_atomic_transfer = 0;
    // Logical block provisioning (VPD B2h): what the backstore and the operation table support.
    bool lbpme = false; // thin: LBPME in READ CAPACITY(16)
    bool lbprz = false; // unmapped blocks read as zeroes
    bool lbpu = false;  // UNMAP
    bool lbpws = false; // WRITE SAME(16) with UNMAP
    bool lbpws10 = false;
};
Limits limits(const LogicalUnit& lu);

} // namespace ispace::scsi::sbc
