// The "memory" kind: memory:SIZE[,block=512|4096], a RAM disk allocated as it is written.
#include "backstore/memory/memory_device.hpp"

#include <fmt/format.h>

namespace ispace::backstore {
namespace {

class MemorySpec final : public Spec {
public:
    MemorySpec(std::string text, SizedSpec spec) : _text(std::move(text)), _spec(spec) {}
    std::string_view kind() const override { return "memory"; }
    std::string describe() const override { return _text; }
    std::optional<uint64_t> size() const override { return _spec.size; }
    std::string with_size(uint64_t bytes) const override { return replace_spec_size(_text, bytes, true); }
    bool keeps_data() const override { return false; }
    Result<void> check() const override {
        if (_spec.size > MemoryDevice::max_size) {
            return make_error(fmt::format("{}: a memory device holds at most 16T", _text), EINVAL);
        }
        return {};
    }
    Result<std::unique_ptr<Device>> open() const override {
        if (auto ok = check(); !ok) {
            return ok.error();
        }
        return std::unique_ptr<Device>(std::make_unique<MemoryDevice>(_spec.size, _spec.block_size));
    }

private:
    std::string _text;
    SizedSpec _spec;
};

} // namespace

void register_memory_kind(Registry& registry) {
    Kind kind;
    kind.name = "memory";
    kind.syntax = "memory:SIZE[,block=512|4096]";
    kind.help = "a RAM disk, allocated as it is written (its data ends with the process)";
    kind.claims = [](std::string_view text) { return has_prefix(text, "memory"); };
    kind.parse = [](std::string_view text) -> Result<std::unique_ptr<Spec>> {
        auto spec = parse_sized_spec(text, "memory");
        if (!spec) {
            return spec.error();
        }
        return std::unique_ptr<Spec>(std::make_unique<MemorySpec>(std::string(text), *spec));
    };
    (void)registry.add(std::move(kind));
}

} // namespace ispace::backstore
