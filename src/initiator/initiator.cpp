// The public API: Initiator, Session and the synchronous wrappers; SendTargets discovery.
#include "ispace/initiator.hpp"

#include "common/bytes.hpp"
#include "common/log.hpp"
#include "initiator/connection.hpp"
#include "initiator/scsi.hpp"
#include "initiator/session.hpp"
#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <future>

namespace ispace::initiator {

namespace {

Error reactor_thread_error(const char* what) {
    return make_error(
        fmt::format("{}: a synchronous call from a reactor thread (a completion) would deadlock", what),
        EDEADLK);
}

std::string trim(const uint8_t* p, size_t n) {
    std::string s(reinterpret_cast<const char*>(p), n);
    size_t end = s.find_last_not_of(" \t\0", std::string::npos, 3);
    s.erase(end == std::string::npos ? 0 : end + 1);
    size_t begin = s.find_first_not_of(' ');
    return begin == std::string::npos ? std::string{} : s.substr(begin);
}

Result<void> check(const Response& r, std::string_view what) {
    if (r.ok()) {
        return {};
    }
    if (r.error) {
        return make_error(fmt::format("{}: {}", what, r.error->message),
                          r.error->code != 0 ? r.error->code : EIO);
    }
    return make_error(fmt::format("{}: {}", what, r.describe()), EIO);
}

// A command for `cdb` with a zeroed buffer of `length` bytes (none when 0).
Request cdb_request(uint64_t lun, const scsi::Cdb& cdb, DataDirection dir, size_t length) {
    return make_request(lun, cdb, dir, length > 0 ? Buffer::allocate_zeroed(length) : Buffer{});
}

// A discovery session's owner: one connection, no SCSI tasks, its own CmdSN.
class DiscoveryOwner final : public ConnectionOwner {
public:
    DiscoveryOwner(SessionOptions options, std::shared_ptr<TransportFactory> transport)
        : _options(std::move(options)), _transport(std::move(transport)) {}
    const SessionOptions& options() const override { return _options; }
    TransportFactory& transport_factory() override { return *_transport; }
    SessionCounters& counters() override { return _counters; }
    void window_update(Connection&, uint32_t exp_cmd_sn, uint32_t) override {
        if (iscsi::sn_gt(exp_cmd_sn, _cmd_sn)) {
            _cmd_sn = exp_cmd_sn;
        }
    }
    uint32_t immediate_cmd_sn() override { return _cmd_sn; }
    uint32_t allocate_cmd_sn() override { return _cmd_sn++; }
    void take_inbox(Connection&, std::vector<PendingRequest*>&) override {}
    void task_done(Connection&, PendingRequest*, Response&&) override {}
    void task_retry(Connection&, PendingRequest*, std::chrono::milliseconds) override {}
    void connection_failed(Connection&, const Error& why) override {
        if (on_failure) {
            auto f = std::move(on_failure);
            f(why);
        }
    }

    uint32_t _cmd_sn = 1;
    Function<void(const Error&)> on_failure;

private:
    SessionOptions _options;
    std::shared_ptr<TransportFactory> _transport;
    SessionCounters _counters;
};

Result<std::vector<DiscoveredTarget>> parse_send_targets(std::span<const uint8_t> text) {
    auto pairs = iscsi::parse_text(text);
    if (!pairs) {
        return make_error("SendTargets response: " + pairs.error().message, EPROTO);
    }
    std::vector<DiscoveredTarget> out;
    for (const auto& kv : *pairs) {
        if (kv.key == "TargetName") {
            out.push_back({kv.value, {}});
        } else if (kv.key == "TargetAddress" && !out.empty()) {
            out.back().addresses.push_back(kv.value);
        }
    }
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------------
// Session

Session::Session(std::shared_ptr<SessionCore> core) : _core(std::move(core)) {}

Session::~Session() {
    close();
}

void Session::submit(Request request, Completion done) {
    _core->submit(std::move(request), std::move(done));
}

Response Session::execute(Request request) {
    if (net::Reactor::current() != nullptr) {
        Response r;
        r.error = reactor_thread_error("Session::execute");
        return r;
    }
    auto promise = std::make_shared<std::promise<Response>>();
    auto future = promise->get_future();
    _core->submit(std::move(request), [promise](Response&& r) { promise->set_value(std::move(r)); });
    return future.get();
}

void Session::close() {
    if (!_core || net::Reactor::current() != nullptr) {
        return;
    }
    auto done = std::make_shared<std::promise<void>>();
    _core->close([done] { done->set_value(); });
    done->get_future().wait();
}

Result<uint16_t> Session::add_connection() {
    if (net::Reactor::current() != nullptr) {
        return reactor_thread_error("Session::add_connection");
    }
    auto promise = std::make_shared<std::promise<Result<uint16_t>>>();
    auto future = promise->get_future();
    _core->add_connection([promise](Result<uint16_t> r) { promise->set_value(std::move(r)); });
    return future.get();
}

Result<void> Session::remove_connection(uint16_t cid) {
    if (net::Reactor::current() != nullptr) {
        return reactor_thread_error("Session::remove_connection");
    }
    auto promise = std::make_shared<std::promise<Result<void>>>();
    auto future = promise->get_future();
    _core->remove_connection(cid, [promise](Result<void> r) { promise->set_value(std::move(r)); });
    return future.get();
}

SessionInfo Session::info() const {
    return _core->info();
}

Result<void> Session::test_unit_ready(uint64_t lun) {
    return check(execute(cdb_request(lun, scsi::cdb::test_unit_ready(), DataDirection::none, 0)),
                 fmt::format("TEST UNIT READY on LUN {}", lun));
}

Result<InquiryData> Session::inquiry(uint64_t lun) {
    Request c = cdb_request(lun, scsi::cdb::inquiry(255), DataDirection::read, 255);
    Buffer data = c.data;
    Response r = execute(std::move(c));
    if (auto ok = check(r, fmt::format("INQUIRY on LUN {}", lun)); !ok) {
        return std::move(ok).error();
    }
    if (r.data_received < 5) {
        return make_error(fmt::format("INQUIRY on LUN {}: only {} bytes of data", lun, r.data_received),
                          EPROTO);
    }
    const uint8_t* p = data.data();
    size_t n = std::min<size_t>(r.data_received, 255);
    InquiryData d;
    d.peripheral_qualifier = p[0] >> 5;
    d.device_type = p[0] & 0x1f;
    d.removable = (p[1] & 0x80) != 0;
    d.version = p[2];
    if (n >= 16) {
        d.vendor = trim(p + 8, 8);
    }
    if (n >= 32) {
        d.product = trim(p + 16, 16);
    }
    if (n >= 36) {
        d.revision = trim(p + 32, 4);
    }
    return d;
}

Result<std::vector<uint8_t>> Session::inquiry_vpd(uint64_t lun, uint8_t page) {
    constexpr size_t length = 4096;
    Request c = cdb_request(lun, scsi::cdb::inquiry_vpd(page, length), DataDirection::read, length);
    Buffer data = c.data;
    Response r = execute(std::move(c));
    if (auto ok = check(r, fmt::format("INQUIRY VPD page {:#04x} on LUN {}", page, lun)); !ok) {
        return std::move(ok).error();
    }
    size_t n = std::min<size_t>(r.data_received, length);
    if (n < 4 || data.data()[1] != page) {
        return make_error(fmt::format("INQUIRY VPD page {:#04x} on LUN {}: malformed answer", page, lun),
                          EPROTO);
    }
    size_t total = std::min<size_t>(n, 4 + load_be16(data.data() + 2));
    return std::vector<uint8_t>(data.data(), data.data() + total);
}

Result<std::string> Session::unit_serial_number(uint64_t lun) {
    auto page = inquiry_vpd(lun, scsi::vpd::unit_serial_number);
    if (!page) {
        return std::move(page).error();
    }
    return trim(page->data() + 4, page->size() - 4);
}

Result<BlockLimits> Session::block_limits(uint64_t lun) {
    auto page = inquiry_vpd(lun, scsi::vpd::block_limits);
    if (!page) {
        return std::move(page).error();
    }
    BlockLimits b;
    const auto& p = *page;
    if (p.size() >= 12) {
        b.max_transfer_blocks = load_be32(p.data() + 8);
    }
    if (p.size() >= 16) {
        b.optimal_transfer_blocks = load_be32(p.data() + 12);
    }
    if (p.size() >= 24) {
        b.max_unmap_blocks = load_be32(p.data() + 20);
    }
    return b;
}

Result<Capacity> Session::read_capacity(uint64_t lun) {
    Request c16 = cdb_request(lun, scsi::cdb::read_capacity_16(32), DataDirection::read, 32);
    Buffer d16 = c16.data;
    Response r16 = execute(std::move(c16));
    if (r16.ok() && r16.data_received >= 12) {
        Capacity cap;
        const uint8_t* p = d16.data();
        cap.blocks = load_be64(p) + 1;
        cap.block_size = load_be32(p + 8);
        if (r16.data_received >= 15) {
            cap.physical_exponent = p[13] & 0x0f;
            cap.thin = (p[14] & 0x80) != 0;
        }
        return cap;
    }
    if (r16.error) {
        return check(r16, fmt::format("READ CAPACITY(16) on LUN {}", lun)).error();
    }
    // Not supported (a pre-SBC-2 device): READ CAPACITY(10).
    Request c10 = cdb_request(lun, scsi::cdb::read_capacity_10(), DataDirection::read, 8);
    Buffer d10 = c10.data;
    Response r10 = execute(std::move(c10));
    if (auto ok = check(r10, fmt::format("READ CAPACITY on LUN {}", lun)); !ok) {
        return std::move(ok).error();
    }
    if (r10.data_received < 8) {
        return make_error(fmt::format("READ CAPACITY on LUN {}: short answer", lun), EPROTO);
    }
    Capacity cap;
    cap.blocks = uint64_t(load_be32(d10.data())) + 1;
    cap.block_size = load_be32(d10.data() + 4);
    return cap;
}

Result<bool> Session::write_protected(uint64_t lun) {
    // Every page (3Fh), as the Linux sd driver asks: some devices refuse a header-only request for a
    // page they lack. The header alone decides; what follows is not read.
    Request c6 = cdb_request(lun, scsi::cdb::mode_sense_6(0x3f, 255), DataDirection::read, 255);
    Buffer d6 = c6.data;
    Response r6 = execute(std::move(c6));
    if (r6.ok()) {
        if (r6.data_received < 4) {
            return make_error(fmt::format("MODE SENSE(6) on LUN {}: short answer", lun), EPROTO);
        }
        return (d6.data()[2] & 0x80) != 0;
    }
    if (r6.error) {
        return check(r6, fmt::format("MODE SENSE(6) on LUN {}", lun)).error();
    }
    constexpr uint16_t length = 512;
    Request c10 = cdb_request(lun, scsi::cdb::mode_sense_10(0x3f, length), DataDirection::read, length);
    Buffer d10 = c10.data;
    Response r10 = execute(std::move(c10));
    if (auto ok = check(r10, fmt::format("MODE SENSE on LUN {}", lun)); !ok) {
        return std::move(ok).error();
    }
    if (r10.data_received < 8) {
        return make_error(fmt::format("MODE SENSE(10) on LUN {}: short answer", lun), EPROTO);
    }
    return (d10.data()[3] & 0x80) != 0;
}

Result<std::vector<uint64_t>> Session::report_luns() {
    constexpr uint32_t length = 16384;
    Request c = cdb_request(0, scsi::cdb::report_luns(length), DataDirection::read, length);
    Buffer data = c.data;
    Response r = execute(std::move(c));
    if (auto ok = check(r, "REPORT LUNS"); !ok) {
        return std::move(ok).error();
    }
    if (r.data_received < 8) {
        return make_error("REPORT LUNS: short answer", EPROTO);
    }
    size_t list = load_be32(data.data());
    size_t n = std::min<size_t>({list, r.data_received - 8, length - 8}) / 8;
    std::vector<uint64_t> luns;
    for (size_t i = 0; i < n; ++i) {
        uint64_t field = load_be64(data.data() + 8 + 8 * i);
        // A LUN in an addressing method we do not decode is kept as its raw field.
        luns.push_back(scsi::decode_lun(field).value_or(field));
    }
    return luns;
}

Result<void> Session::read(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size,
                           std::span<uint8_t> out) {
    size_t bytes = size_t(blocks) * block_size;
    if (out.size() < bytes) {
        return make_error("read: the output buffer is smaller than the blocks asked for", EINVAL);
    }
    Request c = make_read(lun, lba, blocks, block_size);
    Buffer data = c.data;
    Response r = execute(std::move(c));
    if (auto ok = check(r, fmt::format("READ of {} blocks at LBA {} on LUN {}", blocks, lba, lun)); !ok) {
        return ok;
    }
    std::memcpy(out.data(), data.data(), bytes);
    return {};
}

Result<void> Session::write(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size,
                            std::span<const uint8_t> in) {
    size_t bytes = size_t(blocks) * block_size;
    if (in.size() < bytes) {
        return make_error("write: the input is smaller than the blocks to write", EINVAL);
    }
    Buffer data = Buffer::allocate(bytes);
    std::memcpy(data.data(), in.data(), bytes);
    return check(execute(make_write(lun, lba, blocks, block_size, std::move(data))),
                 fmt::format("WRITE of {} blocks at LBA {} on LUN {}", blocks, lba, lun));
}

Result<void> Session::synchronize_cache(uint64_t lun) {
    return check(execute(cdb_request(lun, scsi::cdb::synchronize_cache(), DataDirection::none, 0)),
                 fmt::format("SYNCHRONIZE CACHE on LUN {}", lun));
}

// ---------------------------------------------------------------------------------------------------
// Initiator

Initiator::Initiator(InitiatorOptions options) : _core(std::make_shared<InitiatorCore>(std::move(options))) {}

Initiator::~Initiator() {
    _core->shutdown();
}

unsigned Initiator::threads() const {
    return _core->threads();
}

const std::string& Initiator::initiator_name() const {
    return _core->options().initiator_name;
}

void Initiator::connect_async(SessionOptions options, Function<void(Result<std::shared_ptr<Session>>)> done) {
    std::optional<Error> invalid;
    if (options.host.empty() || options.target_name.empty()) {
        invalid = make_error("connect: a host and a target name are needed", EINVAL);
    } else if (auto c = check_credentials(options.chap); !c && !options.authenticator) {
        invalid = c.error();
    }
    if (invalid) {
        _core->reactor(0).post([done = std::move(done), e = std::move(*invalid)]() mutable { done(e); });
        return;
    }
    unsigned home = _core->next_home();
    auto core = std::make_shared<SessionCore>(*_core, std::move(options), _core->next_isid(), home);
    _core->add_session(core);
    core->start([core, done = std::move(done)](Result<void> r) mutable {
        if (!r) {
            done(std::move(r).error());
            return;
        }
        done(std::shared_ptr<Session>(new Session(core)));
    });
}

Result<std::shared_ptr<Session>> Initiator::connect(SessionOptions options) {
    if (_core->on_reactor_thread()) {
        return reactor_thread_error("Initiator::connect");
    }
    auto promise = std::make_shared<std::promise<Result<std::shared_ptr<Session>>>>();
    auto future = promise->get_future();
    connect_async(std::move(options),
                  [promise](Result<std::shared_ptr<Session>> r) { promise->set_value(std::move(r)); });
    // The session's last reference may be dropped here, on the caller's thread, when the login failed.
    return future.get();
}

Result<std::vector<DiscoveredTarget>> Initiator::discover(DiscoveryOptions options) {
    if (_core->on_reactor_thread()) {
        return reactor_thread_error("Initiator::discover");
    }
    SessionOptions so;
    so.host = options.host;
    so.port = options.port;
    so.initiator_name =
        options.initiator_name.empty() ? _core->options().initiator_name : options.initiator_name;
    so.header_digest = options.header_digest;
    so.data_digest = options.data_digest;
    so.chap = options.chap;
    so.authenticator = options.authenticator ? options.authenticator : _core->options().authenticator;
    so.timeouts = options.timeouts;
    if (auto c = check_credentials(so.chap); !c && !options.authenticator) {
        return c.error();
    }

    iscsi::InitiatorLoginConfig cfg;
    cfg.initiator_name = so.initiator_name;
    cfg.session_type = iscsi::SessionType::discovery;
    cfg.isid = _core->next_isid();
    cfg.cmd_sn = 1;
    cfg.negotiation.header_digests = offered_digests(so.header_digest);
    cfg.negotiation.data_digests = offered_digests(so.data_digest);
    cfg.negotiation.max_recv_data_segment_length = so.max_recv_data_segment_length;
    if (!so.chap.empty()) {
        // Credentials are for the target's sessions; many targets leave discovery open. Offer CHAP
        // first and accept None: a SendTargets answer reveals names only.
        cfg.auth_methods = {std::string(iscsi::auth_method_chap), std::string(iscsi::auth_method_none)};
        cfg.make_authenticator = [factory = so.authenticator, creds = so.chap](std::string_view method) {
            return factory(method, creds);
        };
    }

    auto owner = std::make_shared<DiscoveryOwner>(so, _core->transport());
    net::Reactor& reactor = _core->reactor(_core->next_home());
    auto conn = std::make_shared<Connection>(owner, reactor, 0, 0, 0);
    using Out = Result<std::vector<DiscoveredTarget>>;
    auto promise = std::make_shared<std::promise<Out>>();
    auto future = promise->get_future();
    auto finished = std::make_shared<bool>(false);
    // Runs on the reactor, once: closes the connection and hands the answer over.
    auto finish = [conn, promise, finished](Out out) {
        if (*finished) {
            return;
        }
        *finished = true;
        conn->shutdown(Error{0, "discovery done"});
        promise->set_value(std::move(out));
    };
    reactor.post([owner, conn, finish, host = so.host, port = so.port, cfg = std::move(cfg)]() mutable {
        owner->on_failure = [finish](const Error& e) { finish(e); };
        conn->login(host, port, std::move(cfg), [owner, conn, finish](LoginOutcome&& outcome) {
            if (outcome.error) {
                finish(std::move(*outcome.error));
                return;
            }
            owner->_cmd_sn = outcome.exp_cmd_sn;
            conn->enter_full_feature(outcome.session);
            std::vector<uint8_t> keys;
            iscsi::append_text(keys, "SendTargets", "All");
            conn->send_text(std::move(keys), [conn, finish](Result<std::vector<uint8_t>> text) {
                if (!text) {
                    finish(std::move(text).error());
                    return;
                }
                auto targets = parse_send_targets(*text);
                // Log out politely; the answer stands whatever the logout says.
                conn->logout([finish, targets = std::move(targets)](Result<void>) mutable {
                    finish(std::move(targets));
                });
            });
        });
    });
    return future.get();
}

} // namespace ispace::initiator
