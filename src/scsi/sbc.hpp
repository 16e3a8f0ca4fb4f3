// SBC-3 block commands: READ and WRITE (6/10/12/16), VERIFY (10/12/16), SYNCHRONIZE CACHE (10/16),
// READ CAPACITY (10/16), START STOP UNIT. Handlers of the operation table (cdb.cpp), shared by every
// backstore: they turn CDBs into byte-range backstore::IoRequests.
#pragma once

namespace ispace::scsi {
class Command;
}

namespace ispace::scsi::sbc {

void read(Command& cmd);   // READ(6/10/12/16)
void write(Command& cmd);  // WRITE(6/10/12/16)
void verify(Command& cmd); // VERIFY(10/12/16), BYTCHK 0, 1 and 3
void synchronize_cache(Command& cmd);
void read_capacity_10(Command& cmd);
void read_capacity_16(Command& cmd);
void start_stop_unit(Command& cmd);

} // namespace ispace::scsi::sbc
