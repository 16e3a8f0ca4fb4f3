// The engine's sense for a backstore error. Sense itself, its formats and the ASC/ASCQ table are the
// shared SCSI vocabulary (scsi_spec/sense.hpp); which condition a failed read or write of the medium
// reports is the device server's choice, made here.
#pragma once

#include "scsi_spec/sense.hpp"

namespace ispace::scsi {

// The sense for a backstore error (-errno) on a read (write == false) or a write/flush.
Sense sense_from_errno(int error, bool write);

} // namespace ispace::scsi
