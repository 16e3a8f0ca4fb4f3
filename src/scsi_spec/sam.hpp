// SAM-5 vocabulary: the status a command ends with, the task attributes it is queued with, and the
// 8-byte LUN field that addresses a logical unit.
#pragma once

#include <cstdint>
#include <optional>

namespace ispace::scsi {

// SAM-5 5.3.1, Table 29.
enum class Status : uint8_t {
    good = 0x00,
    check_condition = 0x02,
    condition_met = 0x04,
    busy = 0x08,
    reservation_conflict = 0x18,
    task_set_full = 0x28,
    aca_active = 0x30,
    task_aborted = 0x40,
};

// "GOOD", "CHECK CONDITION", ...; nullptr for a value the standard does not define (or made obsolete).
const char* status_name(Status status);

// SAM-5 task attributes, in the encoding of iSCSI's ATTR field (RFC 7143 §11.3.1, which the iSCSI codec
// carries as is). Values 5-7 are reserved; a decoded PDU may hold them and a device server treats them
// as it chooses (the iSCSI target: as simple).
enum class TaskAttribute : uint8_t { untagged = 0, simple = 1, ordered = 2, head_of_queue = 3, aca = 4 };

// The SAM-5 8-byte LUN field as a number with byte 0 as its most significant byte (what load_be64 of
// the iSCSI LUN field gives). Single-level peripheral (00b) and flat (01b) addressing are decoded;
// anything else, or a non-zero second level, is nullopt.
std::optional<uint64_t> decode_lun(uint64_t field);
// The LUN field for a LUN number: peripheral addressing below 256, flat addressing up to max_lun.
uint64_t encode_lun(uint64_t lun);
constexpr uint64_t max_lun = 16383;

} // namespace ispace::scsi
