#include "scsi_spec/sam.hpp"

namespace ispace::scsi {

const char* status_name(Status status) {
    switch (status) {
    case Status::good:
        return "GOOD";
    case Status::check_condition:
        return "CHECK CONDITION";
    case Status::condition_met:
        return "CONDITION MET";
    case Status::busy:
        return "BUSY";
    case Status::reservation_conflict:
        return "RESERVATION CONFLICT";
    case Status::task_set_full:
        return "TASK SET FULL";
    case Status::aca_active:
        return "ACA ACTIVE";
    case Status::task_aborted:
        return "TASK ABORTED";
    }
    return nullptr;
}

std::optional<uint64_t> decode_lun(uint64_t field) {
    uint8_t method = uint8_t(field >> 62);
    // Only first-level addressing: the remaining six bytes must be zero.
    if ((field & 0x0000ffffffffffffull) != 0) {
        return std::nullopt;
    }
    uint8_t b0 = uint8_t(field >> 56);
    uint8_t b1 = uint8_t(field >> 48);
    if (method == 0) {
        // Peripheral device addressing: bus identifier 0 is this target's own LUNs.
        if ((b0 & 0x3f) != 0) {
            return std::nullopt;
        }
        return b1;
    }
    if (method == 1) {
        return uint64_t(b0 & 0x3f) << 8 | b1;
    }
    return std::nullopt;
}

uint64_t encode_lun(uint64_t lun) {
    if (lun < 256) {
        return lun << 48;
    }
    return (uint64_t(0x40 | ((lun >> 8) & 0x3f)) << 56) | (uint64_t(lun & 0xff) << 48);
}

} // namespace ispace::scsi
