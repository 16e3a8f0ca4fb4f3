// The SBC VPD pages: Block Limits (B0h), Block Device Characteristics (B1h) and Logical Block
// Provisioning (B2h). INQUIRY (spc.cpp) serves them; the limits they advertise are the ones the
// handlers enforce, from one function (limits()), so the two cannot drift apart. What they say a
// logical unit supports (LBPU, LBPWS, WABEREQ) comes from the operation table as that logical unit
// sees it (cdb.hpp: supports(), usage_for()), which also routes its commands.
#include "common/bytes.hpp"
#include "scsi/cdb.hpp"
#include "scsi/lu.hpp"
#include "scsi/sbc.hpp"

#include <algorithm>

namespace ispace::scsi::sbc {
namespace {

// Hole punching frees whole filesystem blocks and memory pages; 4 KiB is what both have in common,
// so unmapping in 4 KiB units (aligned to LBA 0) is what actually returns space.
constexpr uint32_t unmap_granularity_bytes = 4096;

// Whether `lu` evaluates WRITE SAME's UNMAP bit (LBPWS, LBPWS10): the usage mask routing applies.
bool write_same_unmaps(const LogicalUnit& lu, uint8_t opcode) {
    const Operation* op = find_operation(opcode, std::nullopt, &lu);
    return op && (usage_for(*op, &lu)[1] & 0x08);
}

std::vector<uint8_t> page(uint8_t code, size_t length) {
    std::vector<uint8_t> d(length, 0);
    d[1] = code;
    store_be16(&d[2], uint16_t(length - 4));
    return d;
}

} // namespace

Limits limits(const LogicalUnit& lu) {
    Limits l;
    uint32_t bs = lu.block_size();
    const backstore::Features& f = lu.features();
    l.max_transfer = lu.max_transfer_bytes() / bs;
    // Both halves of the data-out (verify data, then write data) must fit one transfer; 255 is what
    // the one-byte field can say.
    l.max_compare_and_write = uint8_t(std::min<uint32_t>(255, l.max_transfer / 2));
    l.max_atomic_transfer = l.max_transfer;
    l.lbpme = f.thin;
    l.lbprz = f.thin;
    l.lbpu = supports(lu, op::unmap);
    l.lbpws = write_same_unmaps(lu, op::write_same_16);
    l.lbpws10 = write_same_unmaps(lu, op::write_same_10);
    if (l.lbpu) {
        // Deallocating is one fallocate per descriptor whatever its length: no limit on blocks.
        l.max_unmap_blocks = 0xffffffff;
        l.max_unmap_descriptors = 256;
        l.optimal_unmap_granularity = std::max<uint32_t>(1, unmap_granularity_bytes / bs);
    }
    // MAXIMUM WRITE SAME LENGTH: what one WRITE of the maximum transfer length could cover. A larger
    // value would promise initiators (and libiscsi's WriteSame16.Unmap, which writes MAXIMUM WRITE
    // SAME LENGTH blocks with a single WRITE(16) to check the unmap) more than a WRITE accepts.
    if (supports(lu, op::write_same_16) || supports(lu, op::write_same_10)) {
        l.max_write_same = l.max_transfer;
    }
    return l;
}

std::vector<uint8_t> block_limits_vpd(const LogicalUnit& lu) {
    // SBC-4 6.6.4: page length 3Ch, which also holds the atomic write fields.
    std::vector<uint8_t> d = page(vpd::block_limits, 64);
    Limits l = limits(lu);
    uint32_t bs = lu.block_size();
    uint32_t optimal = std::min(lu.options().optimal_transfer_bytes / bs, l.max_transfer);
    d[4] = 0x00; // WSNZ=0: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 runs to the end of the medium
    d[5] = l.max_compare_and_write;
    store_be16(&d[6], 1); // OPTIMAL TRANSFER LENGTH GRANULARITY: any block
    store_be32(&d[8], l.max_transfer);
    store_be32(&d[12], optimal);
    store_be32(&d[16], l.max_transfer); // MAXIMUM PREFETCH LENGTH
    if (l.lbpu) {
        store_be32(&d[20], l.max_unmap_blocks);
        store_be32(&d[24], l.max_unmap_descriptors);
        store_be32(&d[28], l.optimal_unmap_granularity);
        store_be32(&d[32], 0x80000000u); // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    }
    store_be64(&d[36], l.max_write_same);
    // WRITE ATOMIC(16): any length up to the transfer maximum, no alignment or granularity, and no
    // atomic boundaries (the ATOMIC BOUNDARY field must be zero).
    store_be32(&d[44], l.max_atomic_transfer);
    store_be32(&d[48], 0); // ATOMIC ALIGNMENT
    store_be32(&d[52], 0); // ATOMIC TRANSFER LENGTH GRANULARITY
    store_be32(&d[56], 0); // MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY
    store_be32(&d[60], 0); // MAXIMUM ATOMIC BOUNDARY SIZE
    return d;
}

std::vector<uint8_t> block_device_characteristics_vpd(const LogicalUnit& lu) {
    std::vector<uint8_t> d = page(vpd::block_device_characteristics, 64);
    // MEDIUM ROTATION RATE: 1 = non-rotating (memory and null devices); 0 = not reported, since a
    // file's or block device's medium is unknown here.
    std::string_view kind = lu.device().kind();
    uint16_t rate = (kind == "memory" || kind == "null") ? 1 : 0;
    store_be16(&d[4], rate);
    // WABEREQ=01b where BLOCK ERASE is supported: after it, reads complete with GOOD (deallocated
    // blocks read as zeroes); 00b where it is not, as libiscsi and SBC-4 expect. WACEREQ stays 00b
    // (not specified): CRYPTOGRAPHIC ERASE here changes no key, it deallocates like BLOCK ERASE
    // (sbc_sanitize.cpp), and reads after it complete with GOOD, returning zeroes.
    if (supports(lu, op::sanitize, sa::sanitize_block_erase)) {
        d[7] = 0x40;
    }
    return d;
}

std::vector<uint8_t> logical_block_provisioning_vpd(const LogicalUnit& lu) {
    std::vector<uint8_t> d = page(vpd::logical_block_provisioning, 8);
    Limits l = limits(lu);
    d[4] = 0x00; // THRESHOLD EXPONENT: no provisioning thresholds
    // LBPU, LBPWS, LBPWS10, LBPRZ (001b: unmapped blocks read as zeroes); ANC_SUP=0: no anchored
    // state, so ANCHOR=1 is refused; DP=0: no provisioning group descriptor.
    d[5] =
        uint8_t((l.lbpu ? 0x80 : 0) | (l.lbpws ? 0x40 : 0) | (l.lbpws10 ? 0x20 : 0) | (l.lbprz ? 0x04 : 0));
    d[6] = l.lbpme ? 0x02 : 0x00; // PROVISIONING TYPE: thin / fully provisioned
    return d;
}

} // namespace ispace::scsi::sbc
