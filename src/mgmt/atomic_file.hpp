// Writing a file so that a crash at any instant leaves either the old content or the new one, never a
// mix: the new content goes to a temporary file in the same directory, which is flushed (fsync),
// renamed over the old one (rename(2) is atomic within a filesystem) and then the directory is flushed
// so that the rename itself survives a power cut (the pattern in rename(2)'s and fsync(2)'s notes, and
// what SQLite and PostgreSQL do for their control files).
#pragma once

#include "common/result.hpp"

#include <string>
#include <string_view>
#include <sys/types.h>

namespace ispace::mgmt {

// Replaces `path` with `content`, created with `mode` (an existing file keeps its owner, not its mode).
Result<void> write_file_atomically(const std::string& path, std::string_view content, mode_t mode = 0600);

} // namespace ispace::mgmt
