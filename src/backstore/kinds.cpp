// The backstore kinds of this layer, in the order that decides who reads a spec: "block" claims a
// path that is a block device before "file", the fallback, takes every other path. A new kind here is
// its folder and one line. Kinds above the SCSI engine (remote LUNs, data-spaces) register themselves
// from their own layer (mgmt::Runtime), never from here.
#include "backstore/block/block_device.hpp"
#include "backstore/file/file_device.hpp"
#include "backstore/memory/memory_device.hpp"
#include "backstore/null/null_device.hpp"
#include "backstore/registry.hpp"

namespace ispace::backstore {

void register_builtin_kinds(Registry& registry) {
    register_block_kind(registry);
    register_memory_kind(registry);
    register_null_kind(registry);
    register_file_kind(registry);
}

} // namespace ispace::backstore
