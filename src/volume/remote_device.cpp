#include "volume/remote_device.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"
#include "scsi_spec/sense.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <future>

namespace ispace::volume {
namespace {

using initiator::DataDirection;
using initiator::Request;
using initiator::Response;
using namespace std::chrono_literals;

constexpr unsigned max_status_retries = 10;
// Commands of this many bytes at most when the target reports no MAXIMUM TRANSFER LENGTH.
constexpr uint64_t default_max_transfer_bytes = 8u << 20;

Request make(uint64_t lun, const scsi::Cdb& cdb, DataDirection direction, Buffer data = {}) {
    Request r;
    r.lun = lun;
    r.cdb = cdb.bytes;
    r.cdb_length = cdb.length;
    r.direction = direction;
    r.data = std::move(data);
    return r;
}

// "iscsi://user%secret@host/..." with the secret replaced, for anything that is logged or shown.
std::string mask_secret(std::string_view text) {
    constexpr std::string_view scheme = "iscsi://";
    if (text.substr(0, scheme.size()) != scheme) {
        return std::string(text);
    }
    std::string_view rest = text.substr(scheme.size());
    size_t end = rest.find('/');
    std::string_view authority = rest.substr(0, end);
    size_t at = authority.rfind('@');
    if (at == std::string_view::npos) {
        return std::string(text);
    }
    std::string_view userinfo = authority.substr(0, at);
    std::string_view user = userinfo.substr(0, userinfo.find('%'));
    return fmt::format("{}{}%***{}", scheme, user, rest.substr(at));
}

// Runs `fn` on `origin` (now when we are on it: the caller is a completion, never inside a submit()).
template <typename Fn> void run_on(net::Reactor* origin, Fn&& fn) {
    if (origin == nullptr || net::Reactor::current() == origin) {
        fn();
    } else {
        origin->post(std::forward<Fn>(fn));
    }
}

// Blocks the calling thread (never a reactor) until an asynchronous helper answers.
template <typename T, typename Start> Result<T> wait_for(const char* what, Start&& start) {
    if (net::Reactor::current() != nullptr) {
        return make_error(fmt::format("{}: a synchronous call from a reactor thread would deadlock", what),
                          EDEADLK);
    }
    auto promise = std::make_shared<std::promise<Result<T>>>();
    auto future = promise->get_future();
    start([promise](Result<T> r) { promise->set_value(std::move(r)); });
    return future.get();
}

Result<void> check(const Response& r, std::string_view what) {
    if (r.ok()) {
        return {};
    }
    ResponseMeaning m = interpret(r);
    return make_error(fmt::format("{}: {}", what, r.describe()), m.error ? -m.error : EIO);
}

} // namespace

ResponseMeaning interpret(const Response& response) {
    ResponseMeaning m;
    if (response.error) {
        m.error = -EIO;
        m.transport = true;
        return m;
    }
    switch (scsi::Status(response.status)) {
    case scsi::Status::good:
    case scsi::Status::condition_met:
        return m;
    case scsi::Status::reservation_conflict:
        m.error = -EBADE;
        return m;
    case scsi::Status::busy:
    case scsi::Status::task_set_full:
        m.error = -EBUSY;
        m.retry = true;
        return m;
    case scsi::Status::check_condition:
        break;
    default:
        m.error = -EIO;
        return m;
    }
    auto sense = scsi::parse_sense(response.sense);
    if (!sense) {
        m.error = -EIO;
        return m;
    }
    switch (sense->key) {
    case scsi::SenseKey::unit_attention:
        m.error = -EAGAIN;
        m.retry = true;
        m.capacity_changed = sense->code == scsi::asc::capacity_data_has_changed;
        return m;
    case scsi::SenseKey::data_protect:
        m.error = sense->code == scsi::asc::space_allocation_failed_write_protect ? -ENOSPC : -EROFS;
        return m;
    case scsi::SenseKey::illegal_request:
        m.error = sense->code == scsi::asc::invalid_command_operation_code ? -EOPNOTSUPP : -EINVAL;
        return m;
    case scsi::SenseKey::no_sense:
    case scsi::SenseKey::recovered_error:
        return m; // the command succeeded (a recovered error is a success with a remark)
    default:
        m.error = -EIO;
        return m;
    }
}

initiator::Timeouts member_timeouts() {
    initiator::Timeouts t;
    t.connect = 3s;
    t.login = 3s;
    t.command = 8s;
    t.task_management = 2s;
    t.nop_interval = 1s;
    t.nop_timeout = 2s;
    t.recovery = 6s;
    t.reconnect_min = 100ms;
    t.reconnect_max = 1s;
    t.logout = 2s;
    return t;
}

// A read received straight into its caller's memory (one iovec): the initiator writes each Data-In PDU
// there, so the data is not copied again out of a buffer of ours. The caller's memory is wrapped in a
// Buffer whose release hook completes the request: the caller gets it back only once nothing of ours,
// nor of the initiator's (a command it still holds), can write into it any more.
struct DirectRead {
    backstore::IoRequest* request = nullptr;
    net::Reactor* origin = nullptr;
    int error = 0; // set by finish() before the last reference of ours drops
};

namespace {

// Smaller reads keep the copy: for them the wrapping's two allocations and the deferred completion cost
// about what the copy does (as for FUSE writes, attach/fuse_server.cpp's lend_from).
constexpr uint64_t direct_read_from = 64 << 10;

void direct_read_released(void* context, uint8_t*) {
    auto* d = static_cast<DirectRead*>(context);
    auto complete = [d] {
        backstore::IoRequest* request = d->request;
        int error = d->error;
        delete d;
        auto done = std::move(request->done);
        done(error);
    };
    // Never inline: the last reference may drop inside the initiator's own bookkeeping.
    if (net::Reactor::current() == d->origin) {
        d->origin->defer(std::move(complete));
    } else {
        d->origin->post(std::move(complete));
    }
}

} // namespace

// One block request in flight: the Buffer the data travels in, and how many commands it became.
struct RemoteDevice::Io {
    backstore::IoRequest* request = nullptr;
    net::Reactor* origin = nullptr;
    DirectRead* direct = nullptr; // a read into the caller's memory (data or parts wrap it)
    Buffer data;                  // the whole request when it fits one command
    std::vector<Buffer> parts;    // one per command otherwise
    uint64_t lba = 0;
    uint32_t blocks_per_piece = 0; // 0: one command
    uint32_t pieces = 1;
    std::atomic<uint32_t> left{0};
    std::atomic<int> error{0};
    std::atomic<uint32_t> retries{0};

    Buffer& buffer_of(size_t piece) { return parts.empty() ? data : parts[piece]; }
};

RemoteDevice::RemoteDevice(initiator::Initiator& ini, RemoteOptions options,
                           initiator::SessionOptions session)
    : _initiator(ini), _options(std::move(options)), _session_options(std::move(session)) {}

RemoteDevice::~RemoteDevice() {
    std::vector<std::shared_ptr<initiator::Session>> sessions;
    {
        std::lock_guard lock(_sessions_mutex);
        _session.store(nullptr);
        sessions.swap(_sessions);
    }
    // Session::close() waits for the commands in flight and the logout, which a reactor thread cannot do
    // (it would wait for itself): there, the sessions are closed on a worker thread.
    if (net::Reactor* reactor = net::Reactor::current(); reactor != nullptr && !sessions.empty()) {
        reactor->run_blocking(
            [sessions = std::move(sessions)]() mutable -> int64_t {
                sessions.clear();
                return 0;
            },
            [](int64_t) {});
    }
}

Result<std::unique_ptr<RemoteDevice>> RemoteDevice::open(initiator::Initiator& ini,
                                                         const RemoteOptions& options) {
    std::string shown = mask_secret(options.url);
    auto url = initiator::parse_url(options.url);
    if (!url) {
        return make_error(fmt::format("{}: not a valid iscsi:// URL", shown), EINVAL);
    }
    if (url->target_name.empty() || !url->lun) {
        return make_error(
            fmt::format("{}: the URL names no {} (expected iscsi://[user%secret@]HOST[:PORT]/IQN/LUN)", shown,
                        url->target_name.empty() ? "target" : "LUN"),
            EINVAL);
    }
    initiator::SessionOptions so;
    so.host = url->host;
    so.port = url->port;
    so.target_name = url->target_name;
    so.chap = url->chap;
    so.header_digest = url->header_digest.value_or(initiator::DigestMode::none);
    so.data_digest = url->data_digest.value_or(initiator::DigestMode::none);
    so.connections = std::max(1u, options.connections);
    so.queue_depth = std::max(1u, options.queue_depth);
    // Unit attentions come back to us: the library's automatic retry would swallow CAPACITY DATA HAS
    // CHANGED, which a device must turn into a `resized` event.
    so.unit_attention_retries = 0;
    if (options.member) {
        so.timeouts = member_timeouts();
        so.command_retries = 0;
        // A member stays at ErrorRecoveryLevel 1. At level 2 a lost connection keeps its tasks for
        // reassignment; under AddressSanitizer's timing (system_space_cli) members killed and restarted
        // were then not taken back within 90 s, and a fenced holder did not report the loss in time.
        // Until the interplay of level 2 with member failure and reservation preemption is understood,
        // a member fails and reconnects as at level 1, which the volume's own resync makes whole.
        so.error_recovery_level = std::min(so.error_recovery_level, 1u);
    }
    if (options.timeouts) {
        so.timeouts = *options.timeouts;
    }
    std::unique_ptr<RemoteDevice> device(new RemoteDevice(ini, options, so));
    device->_lun = *url->lun;
    device->_describe = initiator::to_string(*url);
    auto session = ini.connect(so);
    if (!session) {
        return make_error(fmt::format("{}: {}", device->_describe, session.error().message),
                          session.error().code ? session.error().code : EIO);
    }
    device->_sessions.push_back(*session);
    device->_session.store(session->get());
    if (auto probed = device->probe(); !probed) {
        return make_error(fmt::format("{}: {}", device->_describe, probed.error().message),
                          probed.error().code);
    }
    return device;
}

Result<void> RemoteDevice::probe() {
    initiator::Session& s = *session();
    // INQUIRY may itself meet the unit attention of a fresh nexus (power on / reset): ask twice.
    auto inquiry = s.inquiry(_lun);
    if (!inquiry) {
        inquiry = s.inquiry(_lun);
    }
    if (!inquiry) {
        return inquiry.error();
    }
    if (inquiry->peripheral_qualifier != 0) {
        std::string have;
        if (auto luns = s.report_luns(); luns) {
            for (uint64_t l : *luns) {
                have += (have.empty() ? "" : ", ") + std::to_string(l);
            }
        }
        return make_error(
            fmt::format("the target has no LUN {} (its LUNs: {})", _lun, have.empty() ? "none" : have),
            ENODEV);
    }
    if (inquiry->device_type != scsi::device_type::direct_access_block) {
        return make_error(fmt::format("LUN {} is a {}, not a disk", _lun,
                                      initiator::device_type_name(inquiry->device_type)),
                          ENODEV);
    }
    // A new nexus has unit attentions pending (power on, reset...), one per command until they are
    // reported: TEST UNIT READY takes them, so that READ CAPACITY(16) is not mistaken for unsupported
    // (the library's helper falls back to READ CAPACITY(10), which knows nothing of thin provisioning).
    for (int i = 0; i < 8; ++i) {
        if (s.test_unit_ready(_lun)) {
            break;
        }
    }
    Result<initiator::Capacity> capacity = s.read_capacity(_lun);
    if (!capacity) {
        return capacity.error();
    }
    uint32_t bs = capacity->block_size;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0) {
        return make_error(
            fmt::format("LUN {} has {}-byte blocks (a power of two from 512 to 65536 is needed)", _lun, bs),
            ENOTSUP);
    }
    _geometry = std::make_unique<backstore::AtomicGeometry>(bs, capacity->blocks);
    _features.thin = capacity->thin;
    _features.volatile_cache = true; // we cannot see the target's cache: SYNCHRONIZE CACHE goes through

    // Block Limits (SBC-4 6.6.4): transfer, unmap and WRITE SAME limits. Optional.
    if (auto page = s.inquiry_vpd(_lun, scsi::vpd::block_limits); page && page->size() >= 16) {
        const auto& p = *page;
        _max_transfer_blocks = load_be32(p.data() + 8);
        if (p.size() >= 24) {
            _max_unmap_blocks = load_be32(p.data() + 20);
        }
        if (p.size() >= 44) {
            _max_write_same_blocks = load_be64(p.data() + 36);
        }
    }
    uint32_t cap_blocks = uint32_t(std::min<uint64_t>(default_max_transfer_bytes / bs, UINT32_MAX));
    if (_max_transfer_blocks == 0 || _max_transfer_blocks > cap_blocks) {
        _max_transfer_blocks = cap_blocks;
    }
    // Logical Block Provisioning (SBC-4 6.6.7): LBPU (UNMAP) and LBPWS (WRITE SAME(16) with UNMAP).
    if (auto page = s.inquiry_vpd(_lun, scsi::vpd::logical_block_provisioning); page && page->size() >= 6) {
        uint8_t flags = (*page)[5];
        _features.unmap = (flags & 0x80) != 0;
        _features.write_zeroes = (flags & 0x40) != 0;
    }
    if (_max_unmap_blocks == 0) {
        _max_unmap_blocks = _features.unmap ? 0xffffffffu : 0;
    }
    if (_max_write_same_blocks == 0) {
        _max_write_same_blocks = _max_transfer_blocks;
    }
    // A designator the target keeps across restarts (VPD 83h), else the URL: the identity of what we
    // serve when we are a gateway.
    std::string basis = fmt::format("{}/{}/{}", _session_options.host, _session_options.target_name, _lun);
    if (auto page = s.inquiry_vpd(_lun, scsi::vpd::device_identification); page && page->size() > 4) {
        basis.assign(page->begin() + 4, page->end());
    }
    uint64_t h = 0xcbf29ce484222325ULL; // FNV-1a
    for (unsigned char c : basis) {
        h = (h ^ c) * 0x100000001b3ULL;
    }
    _identity = h;
    return {};
}

void RemoteDevice::submit(backstore::IoRequest& request) {
    // A write whose caller handed its data as a Buffer (request.data) is sent from it, not copied.
    submit_shared(request, request.data);
}

void RemoteDevice::submit_shared(backstore::IoRequest& request, const Buffer& shared) {
    net::Reactor* origin = net::Reactor::current();
    assert(origin && "backstore I/O is submitted on a reactor thread");
    backstore::Geometry g = _geometry->load();
    int invalid = 0;
    if (request.op != backstore::IoOp::flush &&
        (request.offset % g.block_size != 0 || request.length % g.block_size != 0 ||
         request.offset > g.bytes() || request.length > g.bytes() - request.offset)) {
        invalid = -EINVAL;
    } else if ((request.op == backstore::IoOp::unmap && !_features.unmap) ||
               (request.op == backstore::IoOp::write_zeroes && !_features.write_zeroes)) {
        invalid = -EOPNOTSUPP;
    } else if (failed()) {
        invalid = -EIO;
    } else if (request.length == 0 && request.op != backstore::IoOp::flush) {
        invalid = 0; // nothing to do
    } else {
        invalid = 1; // proceed
    }
    if (invalid <= 0) {
        backstore::IoRequest* r = &request;
        origin->defer([r, invalid] {
            auto done = std::move(r->done);
            done(invalid);
        });
        return;
    }

    auto* io = new Io;
    io->request = &request;
    io->origin = origin;
    io->lba = request.offset / g.block_size;
    uint64_t blocks = request.length / g.block_size;
    switch (request.op) {
    case backstore::IoOp::read:
    case backstore::IoOp::write: {
        if (blocks > _max_transfer_blocks) {
            io->blocks_per_piece = _max_transfer_blocks;
            io->pieces = uint32_t((blocks + _max_transfer_blocks - 1) / _max_transfer_blocks);
        }
        bool write = request.op == backstore::IoOp::write;
        // Where the data already lives, when no copy is needed: a write's shared Buffer, or a large read's
        // destination (wrapped: see DirectRead).
        Buffer in_place;
        if (write && shared && shared.size() == request.length) {
            in_place = shared;
        } else if (!write && request.length >= direct_read_from && request.iovcnt == 1 &&
                   request.iov[0].iov_len == request.length) {
            io->direct = new DirectRead{&request, origin, 0};
            in_place = Buffer::wrap(static_cast<uint8_t*>(request.iov[0].iov_base), request.length,
                                    direct_read_released, io->direct);
        }
        if (io->pieces == 1) {
            if (in_place) {
                io->data = std::move(in_place);
            } else {
                io->data = Buffer::allocate(request.length);
                if (write) {
                    size_t at = 0;
                    for (unsigned i = 0; i < request.iovcnt; ++i) {
                        std::memcpy(io->data.data() + at, request.iov[i].iov_base, request.iov[i].iov_len);
                        at += request.iov[i].iov_len;
                    }
                }
            }
        } else {
            // Larger than one command may carry: one Buffer per command (the Request's buffer is its
            // transfer length): a slice of the one in place, or a copy of the iovec's piece.
            io->parts.resize(io->pieces);
            size_t piece_bytes = size_t(io->blocks_per_piece) * g.block_size;
            size_t done_bytes = 0;
            unsigned iov_index = 0;
            size_t iov_at = 0;
            for (uint32_t p = 0; p < io->pieces; ++p) {
                size_t n = std::min<size_t>(piece_bytes, request.length - done_bytes);
                if (in_place) {
                    io->parts[p] = in_place.slice(done_bytes, n);
                    done_bytes += n;
                    continue;
                }
                io->parts[p] = Buffer::allocate(n);
                if (write) {
                    size_t copied = 0;
                    while (copied < n && iov_index < request.iovcnt) {
                        size_t take = std::min(n - copied, request.iov[iov_index].iov_len - iov_at);
                        std::memcpy(io->parts[p].data() + copied,
                                    static_cast<uint8_t*>(request.iov[iov_index].iov_base) + iov_at, take);
                        copied += take;
                        iov_at += take;
                        if (iov_at == request.iov[iov_index].iov_len) {
                            ++iov_index;
                            iov_at = 0;
                        }
                    }
                }
                done_bytes += n;
            }
        }
        break;
    }
    case backstore::IoOp::unmap:
        if (blocks > _max_unmap_blocks) {
            io->blocks_per_piece = _max_unmap_blocks;
            io->pieces = uint32_t((blocks + _max_unmap_blocks - 1) / _max_unmap_blocks);
        }
        break;
    case backstore::IoOp::write_zeroes: {
        uint64_t limit = std::min<uint64_t>(_max_write_same_blocks, UINT32_MAX);
        if (blocks > limit) {
            io->blocks_per_piece = uint32_t(limit);
            io->pieces = uint32_t((blocks + limit - 1) / limit);
        }
        break;
    }
    case backstore::IoOp::flush:
        break;
    }
    start(io);
}

void RemoteDevice::start(Io* io) {
    io->left.store(io->pieces, std::memory_order_relaxed);
    for (size_t p = 0; p < io->pieces; ++p) {
        send(io, p);
    }
}

void RemoteDevice::send(Io* io, size_t piece) {
    const backstore::IoRequest& request = *io->request;
    uint32_t bs = _geometry->block_size();
    uint64_t total_blocks = request.length / bs;
    uint64_t first = io->lba + uint64_t(piece) * io->blocks_per_piece;
    uint64_t count =
        io->pieces == 1
            ? total_blocks
            : std::min<uint64_t>(io->blocks_per_piece, total_blocks - uint64_t(piece) * io->blocks_per_piece);
    Request r;
    switch (request.op) {
    case backstore::IoOp::read:
        r = make(_lun, scsi::cdb::read(first, uint32_t(count)), DataDirection::read, io->buffer_of(piece));
        // One command only: the Data-In of several may land at once on different connections' threads,
        // which an observer need not bear (ispace/data_observer.hpp: one thread at a time).
        if (io->pieces == 1) {
            r.observer = request.observer;
        }
        break;
    case backstore::IoOp::write: {
        scsi::Cdb cdb = scsi::cdb::write(first, uint32_t(count));
        if (request.fua) {
            cdb.bytes[1] |= 0x08; // FUA: byte 1 bit 3 in WRITE(10) and WRITE(16) alike (SBC-4 5.40, 5.42)
        }
        r = make(_lun, cdb, DataDirection::write, io->buffer_of(piece));
        break;
    }
    case backstore::IoOp::flush:
        r = make(_lun,
                 request.length == 0
                     ? scsi::cdb::synchronize_cache()
                     : scsi::cdb::synchronize_cache(first, uint32_t(std::min<uint64_t>(count, UINT32_MAX))),
                 DataDirection::none);
        break;
    case backstore::IoOp::unmap: {
        // SBC-4 5.30: an 8-byte header, then one 16-byte block descriptor.
        Buffer list = Buffer::allocate_zeroed(24);
        store_be16(list.data(), 22);
        store_be16(list.data() + 2, 16);
        store_be64(list.data() + 8, first);
        store_be32(list.data() + 16, uint32_t(count));
        r = make(_lun, scsi::cdb::unmap(24), DataDirection::write, std::move(list));
        break;
    }
    case backstore::IoOp::write_zeroes:
        r = make(_lun, scsi::cdb::write_same_16(first, uint32_t(count), false), DataDirection::write,
                 Buffer::allocate_zeroed(bs));
        break;
    }
    initiator::Session* s = session();
    if (s == nullptr) {
        Response failed_response;
        failed_response.error = make_error("no session", ENOTCONN);
        io->origin->post([this, io, piece, resp = std::move(failed_response)]() mutable {
            on_response(io, piece, std::move(resp));
        });
        return;
    }
    s->submit(std::move(r),
              [this, io, piece](Response&& response) { on_response(io, piece, std::move(response)); });
}

void RemoteDevice::on_response(Io* io, size_t piece, Response&& response) {
    ResponseMeaning m = interpret(response);
    if (m.capacity_changed) {
        refresh_capacity();
    }
    if (m.retry && !failed() &&
        io->retries.fetch_add(1, std::memory_order_relaxed) < max_status_retries * io->pieces) {
        _retries.fetch_add(1, std::memory_order_relaxed);
        if (m.error == -EAGAIN) {
            send(io, piece); // a unit attention: the command did not run; once reported, it is gone
        } else {
            // BUSY / TASK SET FULL: back off a little, on whatever reactor we are.
            net::Reactor* here = net::Reactor::current();
            assert(here);
            here->add_timer(20ms, [this, io, piece] { send(io, piece); });
        }
        return;
    }
    if (m.transport) {
        fail_device(response.error ? response.error->message : "transport error");
    }
    if (m.error != 0) {
        int expected = 0;
        io->error.compare_exchange_strong(expected, m.error, std::memory_order_acq_rel);
    } else if (io->request->op == backstore::IoOp::read &&
               response.data_received < io->buffer_of(piece).size()) {
        int expected = 0; // a short read with GOOD: not what we asked for
        io->error.compare_exchange_strong(expected, -EIO, std::memory_order_acq_rel);
    }
    if (io->left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        run_on(io->origin, [this, io] { finish(io); });
    }
}

void RemoteDevice::finish(Io* io) {
    backstore::IoRequest& request = *io->request;
    int error = io->error.load(std::memory_order_acquire);
    if (io->direct != nullptr) {
        // The data is in place; the request completes when the last reference to the caller's memory
        // drops (here, with io's, unless the initiator still holds a command's).
        io->direct->error = error;
        delete io;
        return;
    }
    if (error == 0 && request.op == backstore::IoOp::read) {
        unsigned iov_index = 0;
        size_t iov_at = 0;
        for (size_t p = 0; p < io->pieces; ++p) {
            const Buffer& b = io->buffer_of(p);
            size_t copied = 0;
            while (copied < b.size() && iov_index < request.iovcnt) {
                size_t take = std::min(b.size() - copied, request.iov[iov_index].iov_len - iov_at);
                std::memcpy(static_cast<uint8_t*>(request.iov[iov_index].iov_base) + iov_at,
                            b.data() + copied, take);
                copied += take;
                iov_at += take;
                if (iov_at == request.iov[iov_index].iov_len) {
                    ++iov_index;
                    iov_at = 0;
                }
            }
        }
    }
    delete io;
    auto done = std::move(request.done);
    done(error);
}

void RemoteDevice::fail_device(const std::string& why) {
    if (_failed.exchange(true, std::memory_order_acq_rel)) {
        return;
    }
    log_error("{}: the initiator gave up ({}); the device has failed", _describe, why);
    notify(backstore::DeviceEvent::failed);
}

Result<uint64_t> RemoteDevice::rescan() {
    initiator::Session* s = session();
    if (s == nullptr || _failed.load(std::memory_order_acquire)) {
        return make_error(fmt::format("{}: not connected", _describe), ENOTCONN);
    }
    // A unit attention (CAPACITY DATA HAS CHANGED among them) answers the first commands after the
    // resize: TEST UNIT READY takes them before the capacity is read.
    for (int i = 0; i < 8 && !s->test_unit_ready(_lun); ++i) {
    }
    Result<initiator::Capacity> capacity = s->read_capacity(_lun);
    if (!capacity) {
        return make_error(fmt::format("{}: READ CAPACITY: {}", _describe, capacity.error().message),
                          capacity.error().code);
    }
    backstore::Geometry now = _geometry->load();
    if (capacity->block_size != now.block_size) {
        return make_error(fmt::format("{}: the block size changed from {} to {}", _describe, now.block_size,
                                      capacity->block_size),
                          EIO);
    }
    if (capacity->blocks < now.block_count) {
        return make_error(fmt::format("{}: it shrank from {} to {} blocks under the device", _describe,
                                      now.block_count, capacity->blocks),
                          EIO);
    }
    if (capacity->blocks > now.block_count) {
        log_info("{}: capacity changed to {} blocks", _describe, capacity->blocks);
        _geometry->set_block_count(capacity->blocks);
        notify(backstore::DeviceEvent::resized);
    }
    return capacity->blocks * uint64_t(now.block_size);
}

void RemoteDevice::refresh_capacity() {
    if (_refreshing.exchange(true)) {
        return;
    }
    Buffer data = Buffer::allocate_zeroed(32);
    command(
        make(_lun, scsi::cdb::read_capacity_16(32), DataDirection::read, data), [this, data](Response&& r) {
            if (r.ok() && r.data_received >= 12 && load_be32(data.data() + 8) == _geometry->block_size()) {
                uint64_t blocks = load_be64(data.data()) + 1;
                if (blocks != _geometry->load().block_count) {
                    log_info("{}: capacity changed to {} blocks", _describe, blocks);
                    _geometry->set_block_count(blocks);
                    notify(backstore::DeviceEvent::resized);
                }
            }
            _refreshing.store(false);
        });
}

void RemoteDevice::allocation_status(uint64_t offset, uint64_t length,
                                     Function<void(Result<std::vector<backstore::Extent>>)> done) {
    net::Reactor* reactor = net::Reactor::current();
    assert(reactor && "allocation_status is called on a reactor thread");
    uint64_t bytes = _geometry->load().bytes();
    uint64_t start = std::min(offset, bytes);
    uint64_t end = length > bytes - start ? bytes : start + length;
    reactor->defer([start, end, done = std::move(done)]() mutable {
        done(std::vector<backstore::Extent>{{start, end - start, true}});
    });
}

// ---- commands outside the data path: reservations, capacity, reconnect ----------------------------------

namespace {
// One management command and its unit attention retries.
struct Pending {
    initiator::Session* session;
    Request request;
    net::Reactor* origin;
    unsigned attempts = 0;
    Function<void(Response&&)> done;
};

void send_pending(std::shared_ptr<Pending> p) {
    Request copy = p->request; // kept for a retry (the Buffer is shared, not copied)
    initiator::Session* s = p->session;
    s->submit(std::move(copy), [p](Response&& r) mutable {
        ResponseMeaning m = interpret(r);
        if (m.retry && ++p->attempts < max_status_retries) {
            send_pending(std::move(p));
            return;
        }
        auto deliver = [p, r = std::move(r)]() mutable {
            auto done = std::move(p->done);
            done(std::move(r));
        };
        if (p->origin == nullptr || net::Reactor::current() == p->origin) {
            deliver();
        } else {
            p->origin->post(std::move(deliver));
        }
    });
}
} // namespace

void RemoteDevice::command(Request request, Function<void(Response&&)> done) {
    initiator::Session* s = session();
    auto p = std::make_shared<Pending>();
    p->session = s;
    p->request = std::move(request);
    p->origin = net::Reactor::current();
    p->done = std::move(done);
    if (s == nullptr) {
        Response r;
        r.error = make_error(_describe + ": no session", ENOTCONN);
        auto d = std::move(p->done);
        if (p->origin) {
            p->origin->defer([d = std::move(d), r = std::move(r)]() mutable { d(std::move(r)); });
        } else {
            d(std::move(r));
        }
        return;
    }
    send_pending(std::move(p));
}

void RemoteDevice::pr_out(uint8_t service_action, uint8_t type, uint64_t key, uint64_t sa_key, bool aptpl,
                          Function<void(Response&&)> done) {
    // SPC-5 6.17.3: the basic parameter list.
    Buffer list = Buffer::allocate_zeroed(24);
    store_be64(list.data(), key);
    store_be64(list.data() + 8, sa_key);
    list.data()[20] = aptpl ? 0x01 : 0x00;
    command(
        make(_lun, scsi::cdb::persistent_reserve_out(service_action, type, 24), DataDirection::write, list),
        std::move(done));
}

void RemoteDevice::pr_in(uint8_t service_action, Function<void(Result<std::vector<uint8_t>>)> done) {
    constexpr uint16_t length = 8192;
    Buffer data = Buffer::allocate_zeroed(length);
    command(make(_lun, scsi::cdb::persistent_reserve_in(service_action, length), DataDirection::read, data),
            [this, data, done = std::move(done)](Response&& r) mutable {
                if (auto ok = check(r, fmt::format("{}: PERSISTENT RESERVE IN", _describe)); !ok) {
                    done(std::move(ok).error());
                    return;
                }
                size_t n = std::min<size_t>(r.data_received, length);
                done(std::vector<uint8_t>(data.data(), data.data() + n));
            });
}

void RemoteDevice::read_keys(Function<void(Result<std::vector<uint64_t>>)> done) {
    pr_in(scsi::pr::read_keys, [done = std::move(done)](Result<std::vector<uint8_t>> data) mutable {
        if (!data) {
            done(std::move(data).error());
            return;
        }
        const auto& d = *data;
        if (d.size() < 8) {
            done(make_error("READ KEYS: short answer", EPROTO));
            return;
        }
        size_t listed = load_be32(d.data() + 4);
        size_t n = std::min(listed, d.size() - 8) / 8;
        std::vector<uint64_t> keys;
        for (size_t i = 0; i < n; ++i) {
            keys.push_back(load_be64(d.data() + 8 + 8 * i));
        }
        done(std::move(keys));
    });
}

void RemoteDevice::read_reservation(Function<void(Result<Reservation>)> done) {
    pr_in(scsi::pr::read_reservation, [done = std::move(done)](Result<std::vector<uint8_t>> data) mutable {
        if (!data) {
            done(std::move(data).error());
            return;
        }
        const auto& d = *data;
        if (d.size() < 8) {
            done(make_error("READ RESERVATION: short answer", EPROTO));
            return;
        }
        Reservation r;
        r.generation = load_be32(d.data());
        if (load_be32(d.data() + 4) >= 16 && d.size() >= 24) {
            r.reserved = true;
            r.key = load_be64(d.data() + 8);
            r.type = d[21] & 0x0f;
        }
        done(r);
    });
}

void RemoteDevice::register_key(uint64_t key, Function<void(Result<void>)> done) {
    bool aptpl = _aptpl && key != 0;
    pr_out(scsi::pr::register_and_ignore_existing_key, 0, 0, key, aptpl,
           [this, key, aptpl, done = std::move(done)](Response&& r) mutable {
               auto m = interpret(r);
               if (aptpl && m.error == -EINVAL) {
                   // The target keeps no reservations across a restart (a RAM disk, or no state
                   // directory): register for this life of the target only.
                   _aptpl = false;
                   register_key(key, std::move(done));
                   return;
               }
               if (auto ok = check(r, fmt::format("{}: PERSISTENT RESERVE OUT (REGISTER)", _describe)); !ok) {
                   done(std::move(ok).error());
                   return;
               }
               _key.store(key, std::memory_order_release);
               done(Result<void>{});
           });
}

void RemoteDevice::reserve(Function<void(Result<void>)> done) {
    pr_out(scsi::pr::reserve, scsi::pr::write_exclusive_registrants_only, registered_key(), 0, false,
           [this, done = std::move(done)](Response&& r) mutable {
               done(check(r, fmt::format("{}: PERSISTENT RESERVE OUT (RESERVE)", _describe)));
           });
}

void RemoteDevice::preempt_and_abort(uint64_t victim, Function<void(Result<void>)> done) {
    pr_out(scsi::pr::preempt_and_abort, scsi::pr::write_exclusive_registrants_only, registered_key(), victim,
           false, [this, victim, done = std::move(done)](Response&& r) mutable {
               // Some targets leave PREEMPT AND ABORT out (Debian's tgt answers INVALID FIELD IN CDB for
               // that service action): PREEMPT still removes the victim's registration, so its next
               // command meets RESERVATION CONFLICT; only its commands already queued there are not
               // aborted (SPC-5 5.14.11.4 vs 5.14.11.3).
               auto sense = initiator::parse_sense(r.sense);
               bool unsupported = !r.ok() && !r.error && sense && sense->key == 0x05 &&
                                  (sense->asc == 0x24 || sense->asc == 0x20);
               if (!unsupported) {
                   done(check(r, fmt::format("{}: PERSISTENT RESERVE OUT (PREEMPT AND ABORT)", _describe)));
                   return;
               }
               log_warn("{}: PREEMPT AND ABORT is not supported ({}); preempting with PREEMPT", _describe,
                        r.describe());
               pr_out(scsi::pr::preempt, scsi::pr::write_exclusive_registrants_only, registered_key(), victim,
                      false, [this, done = std::move(done)](Response&& again) mutable {
                          done(check(again, fmt::format("{}: PERSISTENT RESERVE OUT (PREEMPT)", _describe)));
                      });
           });
}

void RemoteDevice::release(Function<void(Result<void>)> done) {
    pr_out(scsi::pr::release, scsi::pr::write_exclusive_registrants_only, registered_key(), 0, false,
           [this, done = std::move(done)](Response&& r) mutable {
               done(check(r, fmt::format("{}: PERSISTENT RESERVE OUT (RELEASE)", _describe)));
           });
}

Result<std::vector<uint64_t>> RemoteDevice::read_keys_sync() {
    return wait_for<std::vector<uint64_t>>("READ KEYS", [this](auto done) { read_keys(std::move(done)); });
}
Result<Reservation> RemoteDevice::read_reservation_sync() {
    return wait_for<Reservation>("READ RESERVATION",
                                 [this](auto done) { read_reservation(std::move(done)); });
}
Result<void> RemoteDevice::register_key_sync(uint64_t key) {
    return wait_for<void>("REGISTER", [this, key](auto done) { register_key(key, std::move(done)); });
}
Result<void> RemoteDevice::reserve_sync() {
    return wait_for<void>("RESERVE", [this](auto done) { reserve(std::move(done)); });
}
Result<void> RemoteDevice::preempt_and_abort_sync(uint64_t victim) {
    return wait_for<void>("PREEMPT AND ABORT",
                          [this, victim](auto done) { preempt_and_abort(victim, std::move(done)); });
}
Result<void> RemoteDevice::release_sync() {
    return wait_for<void>("RELEASE", [this](auto done) { release(std::move(done)); });
}

void RemoteDevice::reconnect(Function<void(Result<void>)> done) {
    _initiator.connect_async(_session_options, [this, done = std::move(done)](
                                                   Result<std::shared_ptr<initiator::Session>>
                                                       session) mutable {
        if (!session) {
            done(make_error(fmt::format("{}: {}", _describe, session.error().message), session.error().code));
            return;
        }
        std::shared_ptr<initiator::Session> fresh = *session;
        auto take = [this, fresh, done = std::move(done)](Result<void> registered) mutable {
            if (!registered) {
                // Not ours to write to without a registration: stay failed; the session closes off the
                // reactor.
                net::Reactor::current()->run_blocking(
                    [fresh]() mutable -> int64_t {
                        fresh->close();
                        return 0;
                    },
                    [](int64_t) {});
                done(std::move(registered).error());
                return;
            }
            std::shared_ptr<initiator::Session> old;
            {
                std::lock_guard lock(_sessions_mutex);
                initiator::Session* previous = _session.exchange(fresh.get(), std::memory_order_acq_rel);
                for (auto& s : _sessions) {
                    if (s.get() == previous) {
                        old = s;
                    }
                }
                _sessions.push_back(fresh);
            }
            _failed.store(false, std::memory_order_release);
            log_info("{}: logged in again", _describe);
            if (old) {
                // Session::close() waits for its commands: a worker thread's job, never a reactor's.
                net::Reactor::current()->run_blocking(
                    [old]() mutable -> int64_t {
                        old->close();
                        return 0;
                    },
                    [](int64_t) {});
            }
            refresh_capacity();
            done(Result<void>{});
        };
        uint64_t key = registered_key();
        if (key == 0) {
            take(Result<void>{});
            return;
        }
        // A new session is a new I_T nexus: register our key on it before it may write — unless
        // someone else holds the reservation now (we were preempted while away): registering again
        // would let a fenced holder write.
        constexpr uint16_t length = 8192;
        Buffer reservation = Buffer::allocate_zeroed(length);
        auto check_holder = std::make_shared<Pending>();
        check_holder->session = fresh.get();
        check_holder->request =
            make(_lun, scsi::cdb::persistent_reserve_in(scsi::pr::read_reservation, length),
                 DataDirection::read, reservation);
        check_holder->origin = net::Reactor::current();
        check_holder->done = [this, key, fresh, reservation, take = std::move(take)](Response&& r) mutable {
            if (auto ok = check(r, fmt::format("{}: READ RESERVATION on the new session", _describe)); !ok) {
                take(std::move(ok).error());
                return;
            }
            const uint8_t* d = reservation.data();
            if (r.data_received >= 24 && load_be32(d + 4) >= 16 && load_be64(d + 8) != key) {
                take(make_error(fmt::format("{}: the reservation is held by key {:#x} now: this holder was "
                                            "preempted",
                                            _describe, load_be64(d + 8)),
                                EBADE));
                return;
            }
            Buffer list = Buffer::allocate_zeroed(24);
            store_be64(list.data() + 8, key);
            list.data()[20] = _aptpl ? 0x01 : 0x00;
            auto p = std::make_shared<Pending>();
            p->session = fresh.get();
            p->request = make(
                _lun, scsi::cdb::persistent_reserve_out(scsi::pr::register_and_ignore_existing_key, 0, 24),
                DataDirection::write, list);
            p->origin = net::Reactor::current();
            p->done = [this, take = std::move(take)](Response&& r) mutable {
                take(check(
                    r, fmt::format("{}: PERSISTENT RESERVE OUT (REGISTER) on the new session", _describe)));
            };
            send_pending(std::move(p));
        };
        send_pending(std::move(check_holder));
    });
}

// ---- the "iscsi" kind ----------------------------------------------------------------------------------

namespace {

class RemoteSpec final : public backstore::Spec {
public:
    RemoteSpec(std::string text, std::function<initiator::Initiator&()> initiator)
        : _text(std::move(text)), _initiator(std::move(initiator)) {}
    std::string_view kind() const override { return "iscsi"; }
    std::string describe() const override { return mask_secret(_text); }
    // The URL without its credentials: the same remote LUN reached as another user is the same data.
    std::string backing() const override {
        std::string out = _text;
        size_t host = out.find("://");
        host = host == std::string::npos ? 0 : host + 3;
        size_t at = out.find('@', host);
        if (at != std::string::npos && at < out.find('/', host)) {
            out.erase(host, at + 1 - host);
        }
        return out;
    }
    Result<std::unique_ptr<backstore::Device>> open() const override {
        RemoteOptions options;
        options.url = _text;
        auto device = RemoteDevice::open(_initiator(), options);
        if (!device) {
            return std::move(device).error();
        }
        return std::unique_ptr<backstore::Device>(std::move(*device));
    }

private:
    std::string _text;
    std::function<initiator::Initiator&()> _initiator;
};

} // namespace

void register_remote_kind(backstore::Registry& registry, std::function<initiator::Initiator&()> initiator) {
    backstore::Kind kind;
    kind.name = "iscsi";
    kind.syntax = "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN";
    kind.help = "a LUN of another iSCSI target, reached through this process's initiator (a gateway)";
    kind.claims = [](std::string_view text) { return text.substr(0, 8) == "iscsi://"; };
    kind.parse = [initiator](std::string_view text) -> Result<std::unique_ptr<backstore::Spec>> {
        auto url = initiator::parse_url(text);
        if (!url) {
            // The library's message quotes the URL, secret included: say it again with the secret masked.
            std::string message = url.error().message;
            if (size_t at = message.find(std::string(text)); at != std::string::npos) {
                message.replace(at, text.size(), mask_secret(text));
            }
            return make_error(message, EINVAL);
        }
        if (url->target_name.empty() || !url->lun) {
            return make_error(fmt::format("device '{}': the URL names no {} (expected "
                                          "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN)",
                                          mask_secret(text), url->target_name.empty() ? "target" : "LUN"),
                              EINVAL);
        }
        return std::unique_ptr<backstore::Spec>(std::make_unique<RemoteSpec>(std::string(text), initiator));
    };
    (void)registry.add(std::move(kind));
}

void register_remote_kind(backstore::Registry& registry, initiator::Initiator& ini) {
    register_remote_kind(registry, [&ini]() -> initiator::Initiator& { return ini; });
}

} // namespace ispace::volume
