// The "block" kind: a path that names a block device (checked with stat when the spec is read).
#include "backstore/block/block_device.hpp"

#include <filesystem>
#include <sys/stat.h>

namespace ispace::backstore {
namespace {

class BlockSpec final : public Spec {
public:
    BlockSpec(std::string text, PathSpec spec) : _text(std::move(text)), _spec(std::move(spec)) {}
    std::string_view kind() const override { return "block"; }
    std::string describe() const override { return _text; }
    std::optional<uint64_t> size() const override {
        return _spec.size ? std::optional<uint64_t>(_spec.size) : std::nullopt;
    }
    // size= exports the first SIZE bytes of the device.
    std::string with_size(uint64_t bytes) const override { return replace_spec_size(_text, bytes, false); }
    std::string backing() const override { return std::filesystem::path(_spec.path).lexically_normal(); }
    Result<std::unique_ptr<Device>> open() const override { return BlockDevice::open(_spec); }

private:
    std::string _text;
    PathSpec _spec;
};

bool is_block_device(std::string_view text) {
    std::string path(text.substr(0, text.find(',')));
    struct stat st {};
    return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

} // namespace

void register_block_kind(Registry& registry) {
    Kind kind;
    kind.name = "block";
    kind.syntax = "/dev/BLOCKDEVICE[,size=SIZE][,block=512|4096][,ro][,direct]";
    kind.help = "a block device (opened exclusively; unmap where the device supports it)";
    kind.claims = is_block_device;
    kind.parse = [](std::string_view text) -> Result<std::unique_ptr<Spec>> {
        auto spec = parse_path_spec(text);
        if (!spec) {
            return spec.error();
        }
        return std::unique_ptr<Spec>(std::make_unique<BlockSpec>(std::string(text), std::move(*spec)));
    };
    (void)registry.add(std::move(kind));
}

} // namespace ispace::backstore
