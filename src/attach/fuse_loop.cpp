#include "attach/fuse_loop.hpp"

#include "attach/device_file.hpp"
#include "attach/fuse_server.hpp"
#include "attach/io_flusher.hpp"
#include "attach/loop_device.hpp"
#include "common/log.hpp"
#include "common/units.hpp"
#include "net/reactor.hpp"

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <sys/mount.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace ispace::attach {

namespace {

constexpr std::string_view mount_file_prefix = "attach-";
// How long detach waits for the kernel to let go of the FUSE file before cutting it off.
constexpr auto release_grace = std::chrono::seconds(5);
constexpr auto forced_grace = std::chrono::seconds(1);

std::atomic<unsigned> g_sequence{0};

// A process killed between mounting and the lazy unmount (a few milliseconds of attach) leaves its
// mount file behind: remove those of processes that are gone.
void clean_stale_mount_files(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
        return;
    }
    while (dirent* entry = ::readdir(d)) {
        std::string_view name(entry->d_name);
        if (name.substr(0, mount_file_prefix.size()) != mount_file_prefix) {
            continue;
        }
        std::string_view rest = name.substr(mount_file_prefix.size());
        long pid = std::strtol(std::string(rest.substr(0, rest.find('-'))).c_str(), nullptr, 10);
        if (pid <= 0 || pid == ::getpid() || ::access(fmt::format("/proc/{}", pid).c_str(), F_OK) == 0) {
            continue;
        }
        std::string path = dir + "/" + std::string(name);
        ::umount2(path.c_str(), MNT_DETACH); // EINVAL when it is not mounted: fine
        if (::unlink(path.c_str()) == 0) {
            log_info("attach: removed {}, left by process {} which is gone", path, pid);
        }
    }
    ::closedir(d);
}

// PR_SET_IO_FLUSHER on every reactor (FUSE workers mark themselves). Idempotent; waits until done.
void mark_reactors(net::ReactorGroup& reactors) {
    std::vector<std::future<Result<void>>> marks;
    for (unsigned i = 0; i < reactors.size(); ++i) {
        auto promise = std::make_shared<std::promise<Result<void>>>();
        marks.push_back(promise->get_future());
        reactors.at(i).post([promise] { promise->set_value(mark_io_flusher()); });
    }
    static std::once_flag warned;
    for (auto& mark : marks) {
        if (Result<void> marked = mark.get(); !marked) {
            std::call_once(warned, [&] {
                log_warn("attach: {}: attached devices work, but writeback through them can deadlock "
                         "when memory runs short",
                         marked.error().message);
            });
        }
    }
}

class FuseLoopAttachment final : public Attachment, private backstore::DeviceObserver {
public:
    FuseLoopAttachment(std::shared_ptr<backstore::Device> device, std::string name)
        : _device(std::move(device)), _file(std::make_shared<DeviceFile>(_device)), _name(std::move(name)) {}

    ~FuseLoopAttachment() override {
        if (auto detached = detach(DetachMode::force); !detached) {
            log_warn("{}: {}", _path, detached.error().message);
        }
        teardown();
    }

    Result<void> setup(net::ReactorGroup& reactors, const AttachOptions& options) {
        _reactors = &reactors;
        std::error_code ec;
        std::filesystem::create_directories(options.run_dir, ec);
        if (ec) {
            return make_error(fmt::format("attach: {}: {}", options.run_dir, ec.message()), ec.value());
        }
        clean_stale_mount_files(options.run_dir);
        unsigned sequence = g_sequence.fetch_add(1);
        _mount_file = fmt::format("{}/{}{}-{}", options.run_dir, mount_file_prefix, ::getpid(), sequence);
        int made = ::open(_mount_file.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (made < 0) {
            int err = errno;
            return make_error(fmt::format("attach: {}: {}", _mount_file, std::strerror(err)), err);
        }
        ::close(made);

        FuseServer::Options fuse;
        fuse.mount_point = _mount_file;
        fuse.threads = options.threads;
        fuse.thread_prefix = fmt::format("attach{}", sequence);
        auto server = FuseServer::start(_file, reactors, fuse);
        if (!server) {
            return server.error();
        }
        _server = std::move(*server);

        DeviceFile::Attributes a = _file->attributes();
        int file_fd = ::open(_mount_file.c_str(), (a.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (file_fd < 0) {
            int err = errno;
            return make_error(
                fmt::format("attach: opening the FUSE file {}: {}", _mount_file, std::strerror(err)), err);
        }
        struct stat st {};
        if (::fstat(file_fd, &st) != 0 || uint64_t(st.st_size) != a.bytes) {
            ::close(file_fd);
            return make_error(fmt::format("attach: the FUSE file {} shows {} bytes, the device has {}",
                                          _mount_file, uint64_t(st.st_size), a.bytes),
                              EIO);
        }
        LoopDevice::Settings settings;
        settings.block_size = a.block_size;
        settings.read_only = a.read_only;
        settings.name = "ispace:" + _name;
        settings.legacy_setup = options.legacy_loop_setup;
        auto loop = LoopDevice::attach(file_fd, settings);
        // The loop device keeps its own reference to the open file. We keep none: a process that is
        // killed closes its files while exiting, and closing an open FUSE file sends FLUSH and waits for
        // the answer — from the process that is exiting. It would never finish dying, and /dev/fuse,
        // closed after, would never end the connection. What we keep is an O_PATH descriptor (for
        // fstat on resize), whose close sends nothing.
        ::close(file_fd);
        if (!loop) {
            return make_error("attach: " + loop.error().message, loop.error().code);
        }
        _loop = std::move(*loop);
        _path_fd = ::open(_mount_file.c_str(), O_PATH | O_CLOEXEC);
        if (_path_fd < 0) {
            int err = errno;
            return make_error(fmt::format("attach: {}: {}", _mount_file, std::strerror(err)), err);
        }
        _path = _loop->path();
        if (!_loop->direct_io()) {
            log_warn(
                "{}: the loop device would not take direct I/O; pages are cached twice (in its page cache "
                "and the filesystem's)",
                _path);
        }
        // The loop device holds the file now: the path is no longer needed, and without it nothing
        // stays in the mount table, even after kill -9.
        _server->unmount();
        ::unlink(_mount_file.c_str());
        _mount_file.clear();

        _events = std::thread(&FuseLoopAttachment::run_events, this);
        _device->subscribe(this);
        _subscribed = true;
        log_info("{}: attached {} ({}, {} blocks of {} bytes{}{}, {} FUSE workers, FUSE connection {})",
                 _path, _name, format_size(a.bytes), a.bytes / a.block_size, a.block_size,
                 a.read_only ? ", read-only" : "", _loop->direct_io() ? ", direct I/O" : "", fuse.threads,
                 _server->connection());
        return {};
    }

    // What setup() made and detach() did not undo (a failed setup, or the destructor).
    void teardown() {
        stop_events();
        if (_loop) {
            _loop->release();
        }
        if (_path_fd >= 0) {
            ::close(_path_fd);
            _path_fd = -1;
        }
        if (_server) {
            _server->stop(std::chrono::milliseconds(0));
        }
        if (!_mount_file.empty()) {
            ::unlink(_mount_file.c_str());
            _mount_file.clear();
        }
    }

    const std::string& path() const override { return _path; }

    AttachmentStatus status() const override {
        AttachmentStatus s;
        DeviceFile::Attributes a = _file->attributes();
        DeviceFile::Stats stats = _file->stats();
        s.path = _path;
        s.backend = "fuse+loop";
        s.device = _name;
        s.bytes = a.bytes;
        s.block_size = a.block_size;
        s.read_only = a.read_only;
        s.direct_io = _loop && _loop->direct_io();
        s.state = _detached.load() ? "detached" : _file->failed() ? "failed" : "attached";
        s.reads = stats.reads;
        s.writes = stats.writes;
        s.flushes = stats.flushes;
        s.discards = stats.discards;
        s.bytes_read = stats.bytes_read;
        s.bytes_written = stats.bytes_written;
        s.errors = stats.errors;
        return s;
    }

    Result<void> detach(DetachMode mode) override {
        std::lock_guard lock(_detach_mutex);
        if (_detached.load() || !_loop) {
            return {};
        }
        if (auto unused = _loop->check_unused(); !unused) {
            if (mode == DetachMode::refuse_if_in_use) {
                return unused;
            }
            log_warn("{}: detaching while in use ({}): syncing it now; its I/O fails from here on, and the "
                     "device goes away when it is unmounted",
                     _path, unused.error().message);
            _loop->sync();
        }
        stop_events();
        // Whatever the device caches goes to its medium before we stop serving it.
        if (auto flushed = flush_device(); !flushed) {
            log_warn("{}: flushing {} before detach: {}", _path, _name, flushed.error().message);
        }
        // The loop device lets go of the file as it clears; then nothing holds the FUSE filesystem
        // (our O_PATH descriptor aside, closed here), and the kernel ends its connection.
        _loop->release();
        ::close(_path_fd);
        _path_fd = -1;
        bool released = _server->stop(mode == DetachMode::force ? forced_grace : release_grace);
        if (!released) {
            log_warn("{}: the FUSE file was still held (the loop device is still open somewhere); its "
                     "connection was cut, so that I/O now fails",
                     _path);
        }
        _detached.store(true);
        log_info("{}: detached {}", _path, _name);
        return {};
    }

private:
    void device_event(backstore::DeviceEvent event) override {
        // Any thread, with the device's observer list locked: note it, the event thread acts.
        std::lock_guard lock(_events_mutex);
        if (event == backstore::DeviceEvent::resized) {
            _resize_pending = true;
        } else {
            _failure = event;
        }
        _events_changed.notify_all();
    }

    void run_events() {
        std::unique_lock lock(_events_mutex);
        for (;;) {
            _events_changed.wait(lock, [&] { return _events_stop || _resize_pending || _failure; });
            if (_events_stop) {
                return;
            }
            if (_failure) {
                backstore::DeviceEvent event = *_failure;
                _failure.reset();
                lock.unlock();
                if (!_file->failed()) {
                    _file->fail();
                    log_error("{}: the device {} {}: I/O to {} fails from now on; detach it", _path, _name,
                              event == backstore::DeviceEvent::failed ? "failed" : "was removed", _path);
                }
                lock.lock();
            }
            if (_resize_pending) {
                _resize_pending = false;
                lock.unlock();
                refresh_size();
                lock.lock();
            }
        }
    }

    // IoOp::flush through a reactor, waited for here.
    Result<void> flush_device() {
        std::promise<int> promise;
        std::future<int> flushed = promise.get_future();
        _reactors->at(0).post(
            [this, &promise] { _file->flush([&promise](int error) { promise.set_value(error); }); });
        int error = flushed.get();
        if (error != 0) {
            return make_error(std::strerror(error), error);
        }
        return {};
    }

    void refresh_size() {
        uint64_t bytes = _file->attributes().bytes;
        Result<void> refreshed = _server->refresh_size(_path_fd);
        if (refreshed) {
            refreshed = _loop->refresh_capacity();
        }
        if (!refreshed) {
            log_error("{}: the device is now {} bytes, but: {}", _path, bytes, refreshed.error().message);
        } else {
            log_info("{}: resized to {} ({} bytes)", _path, format_size(bytes), bytes);
        }
    }

    void stop_events() {
        if (_subscribed) {
            _device->unsubscribe(this);
            _subscribed = false;
        }
        if (_events.joinable()) {
            {
                std::lock_guard lock(_events_mutex);
                _events_stop = true;
                _events_changed.notify_all();
            }
            _events.join();
        }
    }

    std::shared_ptr<backstore::Device> _device;
    std::shared_ptr<DeviceFile> _file;
    std::string _name;
    std::string _path;
    std::string _mount_file; // while set up
    net::ReactorGroup* _reactors = nullptr;
    std::unique_ptr<FuseServer> _server;
    int _path_fd = -1; // O_PATH, on the FUSE file
    std::unique_ptr<LoopDevice> _loop;
    std::mutex _detach_mutex;
    std::atomic<bool> _detached{false};
    bool _subscribed = false;

    std::thread _events;
    std::mutex _events_mutex;
    std::condition_variable _events_changed;
    bool _events_stop = false;
    bool _resize_pending = false;
    std::optional<backstore::DeviceEvent> _failure;
};

} // namespace

namespace {

// Whether this process has CAP_SYS_ADMIN (mount(2), loop device set-up), from /proc/self/status: root
// in a container often lacks it, and then attach would fail half-way instead of saying why up front.
bool has_sys_admin() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("CapEff:", 0) == 0) {
            uint64_t caps = std::strtoull(line.c_str() + 7, nullptr, 16);
            constexpr unsigned cap_sys_admin = 21; // linux/capability.h
            return (caps >> cap_sys_admin) & 1;
        }
    }
    return true; // no /proc: let the calls themselves say
}

} // namespace

Result<void> FuseLoopBackend::available() const {
    if (::geteuid() != 0) {
        return make_error("attach (fuse+loop): needs root: it mounts a FUSE file and sets up a loop device",
                          EPERM);
    }
    if (!has_sys_admin()) {
        return make_error("attach (fuse+loop): needs the CAP_SYS_ADMIN capability (mount, loop devices), "
                          "which this process lacks (a container without it?)",
                          EPERM);
    }
    for (const char* node : {"/dev/fuse", "/dev/loop-control"}) {
        if (::access(node, R_OK | W_OK) != 0) {
            int err = errno;
            return make_error(fmt::format("attach (fuse+loop): {}: {} (load the {} module)", node,
                                          std::strerror(err),
                                          std::string_view(node) == "/dev/fuse" ? "fuse" : "loop"),
                              err);
        }
    }
    return {};
}

Result<std::unique_ptr<Attachment>> FuseLoopBackend::attach(std::shared_ptr<backstore::Device> device,
                                                            net::ReactorGroup& reactors,
                                                            const AttachOptions& options) {
    if (auto ok = available(); !ok) {
        return ok.error();
    }
    backstore::Geometry geometry = device->geometry();
    if (geometry.block_size < 512 || geometry.block_size > 4096 || geometry.bytes() == 0) {
        return make_error(
            fmt::format("attach: {}: a loop device takes block sizes of 512 to 4096 bytes and a "
                        "non-empty device ({} blocks of {} bytes)",
                        device->describe(), geometry.block_count, geometry.block_size),
            EINVAL);
    }
    mark_reactors(reactors);
    std::string name = options.name.empty() ? device->describe() : options.name;
    auto attachment = std::make_unique<FuseLoopAttachment>(std::move(device), std::move(name));
    if (auto set_up = attachment->setup(reactors, options); !set_up) {
        attachment->teardown();
        return set_up.error();
    }
    return std::unique_ptr<Attachment>(std::move(attachment));
}

} // namespace ispace::attach
