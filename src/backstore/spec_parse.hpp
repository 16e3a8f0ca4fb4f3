// The grammar the built-in kinds share: "HEAD[,key=value][,flag]...". A path kind (file, block) reads
// PATH[,size=SIZE][,block=512|4096][,thin][,ro][,direct][,grow]; a sized kind (memory, null) reads
// NAME:SIZE[,block=512|4096]. Errors quote the whole spec and name the offending option.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::backstore {

struct PathSpec {
    std::string path;
    uint64_t size = 0; // bytes; 0 = take the existing file's (or device's) size
    uint32_t block_size = 512;
    bool thin = false; // file: created sparse; unmap punches holes
    bool read_only = false;
    bool direct = false; // O_DIRECT
    bool grow = false;   // file: an existing file smaller than size= may be grown (never silently)
};
Result<PathSpec> parse_path_spec(std::string_view text);

struct SizedSpec {
    uint64_t size = 0; // bytes, a non-zero multiple of block_size
    uint32_t block_size = 512;
};
// `prefix` is "memory" or "null"; `text` starts with it.
Result<SizedSpec> parse_sized_spec(std::string_view text, std::string_view prefix);

// `text` (a spec of either grammar) with its size replaced by `bytes`: the head's SIZE for a sized
// kind (memory:SIZE), else the size= option (added when missing). Sizes are written with the largest
// K/M/G/T suffix that divides them ("512M"), else in bytes.
std::string replace_spec_size(std::string_view text, uint64_t bytes, bool sized_head);

// Whether `text` is "PREFIX" or starts with "PREFIX:".
bool has_prefix(std::string_view text, std::string_view prefix);

} // namespace ispace::backstore
