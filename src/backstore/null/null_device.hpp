// The null backstore: reads return zeroes, writes are discarded. For benchmarks of everything above
// the storage, and for tests of the front end.
#pragma once

#include "backstore/device.hpp"
#include "backstore/registry.hpp"
#include "backstore/spec_parse.hpp"

namespace ispace::backstore {

class NullDevice final : public Device {
public:
    NullDevice(uint64_t size, uint32_t block_size);

    std::string_view kind() const override { return "null"; }
    std::string describe() const override;
    Geometry geometry() const override { return _geometry.load(); }
    Features features() const override;
    uint64_t identity() const override { return _identity; }
    void submit(IoRequest& request) override;
    void allocation_status(uint64_t offset, uint64_t length,
                           Function<void(Result<std::vector<Extent>>)> done) override;
    Result<void> resize(uint64_t bytes) override;

private:
    AtomicGeometry _geometry;
    uint64_t _identity;
};

// Registers the "null" kind (kinds.cpp).
void register_null_kind(Registry& registry);

} // namespace ispace::backstore
