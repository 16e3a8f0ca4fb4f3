// Parsing and printing of human sizes ("1G", "512M", "4096", "4k") as used on command lines.
#pragma once

#include "ispace/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace ispace {

// Accepts a decimal number with an optional binary suffix k/K, m/M, g/G, t/T (optionally followed by
// "i", "iB" or "B"): "1G" is 1073741824. Rejects empty input, junk, and values that overflow 64 bits.
Result<uint64_t> parse_size(std::string_view text);
// "1 GiB", "512 MiB", "4 KiB", "1000 B": the largest binary unit that divides the value exactly.
std::string format_size(uint64_t bytes);

} // namespace ispace
