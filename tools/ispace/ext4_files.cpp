// Which files of an ext4 filesystem hold given bytes of its device: the scrub's report of blocks with no good
// copy names them (docs/dataspaces.md, "Block checksums"). e2fsprogs' debugfs does the lookup, read-only and
// in catastrophic mode (no bitmaps read), so it works while the filesystem is mounted: `icheck` maps
// filesystem blocks to inodes, `ncheck` inodes to paths. Anything unexpected (no ext4 superblock, no
// debugfs, output we do not understand) gives an empty answer, never a guess.
#include "cli.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <regex>
#include <sstream>

namespace ispace::cli {

namespace {

// The standard output of `argv` (stdin and stderr on /dev/null), or nothing when it cannot be run or exits
// with an error. At most 4 MiB of it is kept.
std::optional<std::string> capture(const std::vector<std::string>& argv) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        return std::nullopt;
    }
    std::vector<const char*> args;
    for (const std::string& a : argv) {
        args.push_back(a.c_str());
    }
    args.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return std::nullopt;
    }
    if (pid == 0) {
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(fds[1], 1);
        ::dup2(null, 2);
        ::execvp(args[0], const_cast<char* const*>(args.data()));
        // Not in PATH (a user's shell without /sbin): where Debian installs it.
        std::string sbin = std::string("/sbin/") + args[0];
        ::execv(sbin.c_str(), const_cast<char* const*>(args.data()));
        ::_exit(127);
    }
    ::close(fds[1]);
    std::string out;
    char chunk[65536];
    for (;;) {
        ssize_t n = ::read(fds[0], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        if (out.size() < (4u << 20)) {
            out.append(chunk, size_t(n));
        }
    }
    ::close(fds[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return std::nullopt;
    }
    return out;
}

// The filesystem block size of the ext4 (or ext2/3) filesystem on `device`, or 0 when it holds none.
uint32_t ext_block_size(const std::string& device) {
    int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    uint8_t sb[1024];
    ssize_t n = ::pread(fd, sb, sizeof sb, 1024);
    ::close(fd);
    if (n != ssize_t(sizeof sb)) {
        return 0;
    }
    uint16_t magic = uint16_t(sb[56] | (sb[57] << 8));
    uint32_t log_block =
        uint32_t(sb[24]) | uint32_t(sb[25]) << 8 | uint32_t(sb[26]) << 16 | uint32_t(sb[27]) << 24;
    if (magic != 0xEF53 || log_block > 6) { // ext4 blocks are 1 KiB to 64 KiB
        return 0;
    }
    return 1024u << log_block;
}

} // namespace

std::vector<std::pair<uint64_t, std::string>> ext4_files_at(const std::string& device,
                                                            const std::vector<uint64_t>& offsets) {
    std::vector<std::pair<uint64_t, std::string>> found;
    uint32_t block_size = ext_block_size(device);
    if (block_size == 0 || offsets.empty()) {
        return found;
    }
    std::string icheck = "icheck";
    for (uint64_t off : offsets) {
        icheck += " " + std::to_string(off / block_size);
    }
    auto blocks_out = capture({"debugfs", "-c", "-R", icheck, device});
    if (!blocks_out) {
        return found;
    }
    // "Block\tInode number" then one line per block: "<block>\t<inode>" or "<block>\t<block not found>".
    static const std::regex block_line(R"(^(\d+)\s+(\d+)\s*$)");
    std::map<uint64_t, uint64_t> inode_of; // filesystem block -> inode
    std::istringstream lines(*blocks_out);
    std::string line;
    std::smatch m;
    while (std::getline(lines, line)) {
        if (std::regex_match(line, m, block_line)) {
            inode_of[std::stoull(m[1])] = std::stoull(m[2]);
        }
    }
    if (inode_of.empty()) {
        return found;
    }
    std::string ncheck = "ncheck -c";
    for (const auto& [block, inode] : inode_of) {
        ncheck += " " + std::to_string(inode);
    }
    auto names_out = capture({"debugfs", "-c", "-R", ncheck, device});
    if (!names_out) {
        return found;
    }
    // "Inode\tPathname" then "<inode>\t<path>" (a hard-linked file once per name).
    static const std::regex name_line(R"(^(\d+)\s+(/.*)$)");
    std::map<uint64_t, std::string> path_of;
    std::istringstream names(*names_out);
    while (std::getline(names, line)) {
        if (std::regex_match(line, m, name_line)) {
            // debugfs writes a name in the root directory as "//name": one slash is enough.
            std::string path = m[2];
            path.erase(
                std::unique(path.begin(), path.end(), [](char a, char b) { return a == '/' && b == '/'; }),
                path.end());
            path_of.emplace(std::stoull(m[1]), path);
        }
    }
    for (uint64_t off : offsets) {
        auto inode = inode_of.find(off / block_size);
        if (inode == inode_of.end()) {
            continue;
        }
        auto path = path_of.find(inode->second);
        found.emplace_back(off, path != path_of.end()
                                    ? path->second
                                    : fmt::format("inode {} (no name found)", inode->second));
    }
    return found;
}

} // namespace ispace::cli
