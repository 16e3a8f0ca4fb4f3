// Inside the library: a Request from a CDB that scsi_spec built, so that no CDB byte is written by hand
// in the initiator.
#pragma once

#include "ispace/initiator.hpp"
#include "scsi_spec/cdb.hpp"

namespace ispace::initiator {

// `data` is the command's buffer (its size the Expected Data Transfer Length); empty for no data.
Request make_request(uint64_t lun, const scsi::Cdb& cdb, DataDirection direction, Buffer data = {});

} // namespace ispace::initiator
