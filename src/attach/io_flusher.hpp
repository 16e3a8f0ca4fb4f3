// PR_SET_IO_FLUSHER (prctl(2), Linux 5.6): a thread that serves I/O for a block device in this machine
// must not wait for that device's own writeback. When memory is short the kernel frees it by writing
// dirty pages, some of them to the attached device, whose I/O we serve; if serving it needed memory
// that waits for the same writeback, nothing would move again. An I/O flusher's allocations do not
// recurse into filesystem or block I/O (PF_MEMALLOC_NOIO) and it is not throttled on the dirty pages
// of the device it serves (PF_LOCAL_THROTTLE). The marks are per thread and new threads inherit them,
// so every thread on the I/O path is marked: FUSE workers and reactors.
#pragma once

#include "common/result.hpp"

namespace ispace::attach {

// Marks the calling thread. Fails without CAP_SYS_RESOURCE (EPERM) or on kernels before 5.6 (EINVAL).
Result<void> mark_io_flusher();

} // namespace ispace::attach
