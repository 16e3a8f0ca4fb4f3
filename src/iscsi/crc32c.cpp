#include "iscsi/crc32c.hpp"

#include <isa-l/crc.h>

#include <sys/uio.h>

namespace ispace::iscsi {

uint32_t crc32c(const void* data, size_t length, uint32_t seed) {
    // ISA-L works on the raw register; our values are the complemented (finished) form.
    uint32_t reg = ~seed;
    auto* p = static_cast<unsigned char*>(const_cast<void*>(data)); // ISA-L's signature lacks const
    // ISA-L takes an int length: feed very large buffers in slices.
    constexpr size_t slice = size_t(1) << 30;
    while (length > 0) {
        size_t n = length < slice ? length : slice;
        reg = crc32_iscsi(p, int(n), reg);
        p += n;
        length -= n;
    }
    return ~reg;
}

uint32_t crc32c(const iovec* iov, int count, uint32_t seed) {
    uint32_t crc = seed;
    for (int i = 0; i < count; ++i) {
        crc = crc32c(iov[i].iov_base, iov[i].iov_len, crc);
    }
    return crc;
}

} // namespace ispace::iscsi
