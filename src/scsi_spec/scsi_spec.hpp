// scsi_spec: the SCSI vocabulary of ispace, written once and shared by every layer that speaks SCSI —
// the SCSI engine (src/scsi) that answers commands, the iSCSI codec (src/iscsi) that carries task
// attributes, and the initiator (src/initiator) and the `ispace` CLI that send commands and read sense.
//
//   sam.hpp      SAM-5: status codes, task attributes, the 8-byte LUN field
//   opcodes.hpp  operation codes, service actions, VPD page codes, peripheral device types
//   sense.hpp    sense keys, the ASC/ASCQ table (asc_table.hpp) with the standard's texts, sense data in
//                fixed and descriptor format, both ways
//   cdb.hpp      CDB builders for what an initiator sends, and the field decoders a device server uses
//
// Namespace: ispace::scsi, the engine's, not a namespace of its own. The vocabulary is SCSI's, not the
// engine's, but the engine is its largest user and its code (op::read_10, SenseKey::illegal_request,
// asc::invalid_field_in_cdb, Sense) reads exactly as before; the initiator writes scsi::op::read_10
// just as the engine does. Which library a name lives in is said by the include path: "scsi_spec/..."
// is this layer (depends on src/common only, usable from any layer), "scsi/..." is the engine (depends on
// the backstores). Nothing in scsi_spec knows about logical units, tasks or transports.
#pragma once

#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"
#include "scsi_spec/sense.hpp"
