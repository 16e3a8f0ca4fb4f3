// Secrets (CHAP) kept off the command line: read from a file, and scrubbed from argv once parsed, so
// that `ps`, /proc/PID/cmdline and shell histories do not show them.
#pragma once

#include "common/result.hpp"

#include <string>
#include <string_view>

namespace ispace {

// The contents of `path` as one secret: at most 4 KiB, one trailing newline (LF or CRLF) dropped, not
// empty. `warning` (if given) is set when the file is readable by group or others.
Result<std::string> read_secret_file(const std::string& path, std::string* warning = nullptr);

// Overwrites every occurrence of `secret` in the process's arguments with 'x' (after they were parsed
// and copied): /proc/PID/cmdline reads the process's own memory, so `ps` no longer shows it.
void scrub_argv(int argc, char** argv, std::string_view secret);

} // namespace ispace
