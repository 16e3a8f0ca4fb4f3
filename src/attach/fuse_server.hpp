// FuseServer: a DeviceFile served as a FUSE filesystem (libfuse3's low-level API) whose root is one
// regular file, mounted over an empty regular file — the mount point is the file, as in
// qemu-storage-daemon's FUSE export. A loop device on that file makes it a block device (fuse_loop.hpp).
//
// Requests: `threads` worker threads read /dev/fuse and hand each read, write, fsync, flush and
// fallocate to a reactor (round robin by worker), which runs it on the device and sends the reply
// itself. A worker never waits for I/O, so a few workers keep any queue depth in flight, and a reply
// costs no thread switch back. Why the reactor may reply: sending a reply is one writev(2) to /dev/fuse
// that copies into a request the kernel already holds; it does not wait for anything, like a send on a
// socket. Metadata (getattr, open, statfs, ...) is answered on the worker at once.
//
// Write data is never copied: each request is read into its own buffer, laid out so that the payload
// of a WRITE starts on a 4 KiB boundary (O_DIRECT devices need that), and a WRITE keeps its buffer
// until the device has the data. Other requests leave the buffer to the next read.
//
// The workers read a non-blocking /dev/fuse and wait in poll() on it and on an eventfd, so stop() can
// end them even while the kernel keeps the connection (someone still has the file open).
//
// Mounting is a mount(2) of our own (root only — the loop device needs root anyway), so that libfuse
// reads /dev/fuse through our read function (fuse_session_custom_io), which never reads more than the
// buffer holds whatever the library's idea of its buffer size.
#pragma once

#include "attach/device_file.hpp"
#include "common/result.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

struct fuse_session;

namespace ispace::net {
class ReactorGroup;
}

namespace ispace::attach {

class FuseServer {
public:
    struct Options {
        std::string mount_point; // an existing empty regular file
        unsigned threads = 4;
        std::string fsname = "ispace"; // shown in /proc/mounts while mounted
        std::string thread_prefix = "fuse";
    };

    // Mounts and starts serving. The kernel's INIT is answered by the workers; opening the file waits
    // for it.
    static Result<std::unique_ptr<FuseServer>> start(std::shared_ptr<DeviceFile> file,
                                                     net::ReactorGroup& reactors, Options options);
    // stop()s, with no grace.
    ~FuseServer();
    FuseServer(const FuseServer&) = delete;
    FuseServer& operator=(const FuseServer&) = delete;

    const std::string& mount_point() const { return _options.mount_point; }
    // The connection's number under /sys/fs/fuse/connections.
    unsigned connection() const { return _connection; }

    // Lazily unmounts (MNT_DETACH): the path goes, the filesystem lives on while a file of it is open
    // (the loop device's), and ends when the last one closes. Idempotent.
    void unmount();
    // The device's size changed: the kernel forgets the file's attributes, and fstat() on `fd` (a file
    // of this filesystem) fetches them again, so that the loop device sees the new size.
    Result<void> refresh_size(int fd);

    // Waits at most `grace` for the kernel to end the connection (when the last open file of the
    // filesystem closes, after unmount()); then ends it: workers stopped, /dev/fuse closed, so whatever
    // still uses the file gets ENOTCONN. Returns once the requests handed to reactors have completed.
    // True if the kernel ended the connection by itself. Idempotent.
    bool stop(std::chrono::milliseconds grace);

    // Internal, for the libfuse callbacks (fuse_server.cpp).
    struct Worker;
    struct Callbacks;

private:
    FuseServer(std::shared_ptr<DeviceFile> file, net::ReactorGroup& reactors, Options options);
    Result<void> mount_and_start();
    void run_worker(unsigned index);
    // Receive buffers: mappings whose write payload lands 4 KiB-aligned. Shared with the Buffers that
    // WRITE requests hand down (a remote member's command may hold one after this server is gone).
    class ReceiveBuffers;
    void request_started() { _inflight.fetch_add(1, std::memory_order_relaxed); }
    void request_finished();

    std::shared_ptr<DeviceFile> _file;
    net::ReactorGroup& _reactors;
    Options _options;
    fuse_session* _session = nullptr;
    int _stop_fd = -1; // eventfd: readable once the workers must go
    unsigned _connection = 0;
    bool _mounted = false;
    bool _stopped = false;
    bool _ended_by_kernel = false;
    timespec _created{}; // the file's times
    std::vector<std::thread> _threads;

    std::shared_ptr<ReceiveBuffers> _buffers;
    std::mutex _mutex; // worker exits, in-flight wakeups
    std::condition_variable _changed;
    unsigned _workers_running = 0;
    std::atomic<uint64_t> _inflight{0};
};

} // namespace ispace::attach
