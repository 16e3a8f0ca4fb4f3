#include "scsi/sense.hpp"

#include <cerrno>

namespace ispace::scsi {

Sense sense_from_errno(int error, bool write) {
    switch (-error) {
    case EIO:
        return Sense::make(SenseKey::medium_error, write ? asc::write_error : asc::unrecovered_read_error);
    case EROFS:
    case EPERM:
    case EACCES:
        return Sense::write_protected();
    case ENOSPC:
    case EDQUOT:
        // A thin device ran out of space: SBC-3 4.7.3.5 names this condition.
        return Sense::make(SenseKey::data_protect, asc::space_allocation_failed_write_protect);
    default:
        return Sense::internal_target_failure();
    }
}

} // namespace ispace::scsi
