// The "file" kind: any spec no other kind claims is a path to a regular file (the fallback).
#include "backstore/file/file_device.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <sys/stat.h>

namespace ispace::backstore {
namespace {

class FileSpec final : public Spec {
public:
    FileSpec(std::string text, PathSpec spec) : _text(std::move(text)), _spec(std::move(spec)) {}
    std::string_view kind() const override { return "file"; }
    std::string describe() const override { return _text; }
    std::optional<uint64_t> size() const override {
        return _spec.size ? std::optional<uint64_t>(_spec.size) : std::nullopt;
    }
    std::string with_size(uint64_t bytes) const override { return replace_spec_size(_text, bytes, false); }
    std::string backing_file() const override { return _spec.path; }
    std::string backing() const override { return std::filesystem::path(_spec.path).lexically_normal(); }
    Result<void> check() const override {
        struct stat st {};
        if (::stat(_spec.path.c_str(), &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                return make_error(fmt::format("{}: is a directory", _spec.path), EISDIR);
            }
            return {};
        }
        if (errno != ENOENT) {
            int err = errno;
            return make_error(fmt::format("{}: {}", _spec.path, std::strerror(err)), err);
        }
        if (_spec.size == 0) {
            return make_error(fmt::format("{}: no such file; give size= to create it", _spec.path), ENOENT);
        }
        if (_spec.read_only) {
            return make_error(fmt::format("{}: no such file (a read-only LUN is not created)", _spec.path),
                              ENOENT);
        }
        std::string dir = _spec.path.substr(0, _spec.path.rfind('/'));
        if (_spec.path.find('/') != std::string::npos && !dir.empty() && ::stat(dir.c_str(), &st) != 0) {
            int err = errno;
            return make_error(
                fmt::format("{}: cannot create it in {}: {}", _spec.path, dir, std::strerror(err)), err);
        }
        return {};
    }
    Result<std::unique_ptr<Device>> open() const override { return FileDevice::open(_spec); }

private:
    std::string _text;
    PathSpec _spec;
};

} // namespace

void register_file_kind(Registry& registry) {
    Kind kind;
    kind.name = "file";
    kind.syntax = "PATH[,size=SIZE][,block=512|4096][,thin][,ro][,direct]";
    kind.help = "a regular file, created when missing and size= is given (sparse with thin, where UNMAP "
                "punches holes; fully allocated otherwise)";
    kind.fallback = true;
    kind.parse = [](std::string_view text) -> Result<std::unique_ptr<Spec>> {
        auto spec = parse_path_spec(text);
        if (!spec) {
            return spec.error();
        }
        return std::unique_ptr<Spec>(std::make_unique<FileSpec>(std::string(text), std::move(*spec)));
    };
    (void)registry.add(std::move(kind));
}

} // namespace ispace::backstore
