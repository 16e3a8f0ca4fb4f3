// DataObserver: told of a read's bytes as they arrive, before the read completes.
//
// A caller that must pass over a read's data anyway (a checksum per block, a digest) does it cheaper
// while the bytes are still in the CPU's cache from the copy that put them there: after completion, a
// 1 MiB read comes back from memory. Whoever fills the read (the initiator's Data-In, a device built on
// it) calls landed() for each run of bytes it puts in place, in the order it puts them there, from one
// thread at a time, before the read's completion runs. A byte may arrive more than once — a command sent
// again after a lost connection or a lost Data-In writes the same offsets again — and an observer must
// then distrust what it made of the earlier arrival (the bytes there were replaced). What an observer
// computes is only a head start: the caller still holds the data when the read completes, and does the
// work there when the observer did not see every byte exactly once.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ispace {

class DataObserver {
public:
    // `length` bytes at `offset` of the read are in place now, at `data` (valid during the call only).
    virtual void landed(uint64_t offset, const uint8_t* data, size_t length) = 0;

protected:
    ~DataObserver() = default;
};

} // namespace ispace
