// The "null" kind: null:SIZE[,block=512|4096]; reads return zeroes, writes are discarded (benchmarks).
#include "backstore/null/null_device.hpp"

namespace ispace::backstore {
namespace {

class NullSpec final : public Spec {
public:
    NullSpec(std::string text, SizedSpec spec) : _text(std::move(text)), _spec(spec) {}
    std::string_view kind() const override { return "null"; }
    std::string describe() const override { return _text; }
    std::optional<uint64_t> size() const override { return _spec.size; }
    std::string with_size(uint64_t bytes) const override { return replace_spec_size(_text, bytes, true); }
    bool keeps_data() const override { return false; }
    Result<std::unique_ptr<Device>> open() const override {
        return std::unique_ptr<Device>(std::make_unique<NullDevice>(_spec.size, _spec.block_size));
    }

private:
    std::string _text;
    SizedSpec _spec;
};

} // namespace

void register_null_kind(Registry& registry) {
    Kind kind;
    kind.name = "null";
    kind.syntax = "null:SIZE[,block=512|4096]";
    kind.help = "reads return zeroes, writes are discarded (for benchmarks)";
    kind.claims = [](std::string_view text) { return has_prefix(text, "null"); };
    kind.parse = [](std::string_view text) -> Result<std::unique_ptr<Spec>> {
        auto spec = parse_sized_spec(text, "null");
        if (!spec) {
            return spec.error();
        }
        return std::unique_ptr<Spec>(std::make_unique<NullSpec>(std::string(text), *spec));
    };
    (void)registry.add(std::move(kind));
}

} // namespace ispace::backstore
