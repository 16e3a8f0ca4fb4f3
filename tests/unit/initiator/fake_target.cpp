// The initiator tests' fake target (see fake_target.hpp).
#include "fake_target.hpp"

#include "common/bytes.hpp"
#include "iscsi/chap.hpp"
#include "iscsi/crc32c.hpp"
#include "iscsi/login.hpp"
#include "iscsi/text.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

namespace ispace::initiator::test {

using namespace ispace::iscsi;

struct FakeTarget::Session {
    uint16_t tsih = 0;
    std::string initiator_name;
    uint64_t isid = 0;
    SessionParams params;
    bool dead = false;
    bool ua_pending = false;
    uint32_t exp_cmd_sn = 0;
    std::set<uint32_t> received_ahead; // CmdSNs received beyond ExpCmdSN
    std::vector<std::weak_ptr<Conn>> conns;
    // Held commands: ITT → LUN.
    std::map<uint32_t, uint64_t> held;

    uint32_t max_cmd_sn(uint32_t window) const { return exp_cmd_sn + window - 1; }
    bool seen(uint32_t cmd_sn) const { return sn_lt(cmd_sn, exp_cmd_sn) || received_ahead.count(cmd_sn) > 0; }
    void mark(uint32_t cmd_sn) {
        if (cmd_sn == exp_cmd_sn) {
            ++exp_cmd_sn;
            while (received_ahead.erase(exp_cmd_sn) > 0) {
                ++exp_cmd_sn;
            }
        } else if (sn_gt(cmd_sn, exp_cmd_sn)) {
            received_ahead.insert(cmd_sn);
        }
    }
};

struct FakeTarget::Conn {
    int fd = -1;
    uint16_t cid = 0;
    std::shared_ptr<Session> session;
    bool header_digest = false;
    bool data_digest = false;
    bool full_feature = false;
    bool logged_out = false; // answered a Logout: closing
    uint32_t initiator_mrdsl = 8192;
    uint32_t stat_sn = 0;
    bool negotiation_asked = false; // AsyncEvent 4 sent (connection thread only)
    uint32_t declared_anew = 0;     // the MaxRecvDataSegmentLength declared since (0: none)
    std::mutex write_mu;
};

namespace {

bool write_all(int fd, const uint8_t* p, size_t n) {
    while (n > 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= size_t(w);
    }
    return true;
}

struct InPdu {
    Bhs bhs;
    std::vector<uint8_t> data;
    bool data_digest_bad = false;
};

} // namespace

// The per-connection protocol machine; runs on the connection's thread.
struct ConnHandler : LoginPolicy {
    FakeTarget& t;
    std::shared_ptr<FakeTarget::Conn> c;
    const std::atomic<bool>& stop;

    struct WriteState {
        uint64_t lun = 0;
        uint64_t lba = 0;
        uint32_t total = 0;
        uint32_t received = 0;
        uint32_t r2t_end = 0; // end of the burst last asked for
        uint32_t unsolicited = 0;
        uint32_t r2t_sn = 0;
        std::vector<uint8_t> data;
        ScsiCommand cmd;
    };
    std::map<uint32_t, WriteState> writes;

    ConnHandler(FakeTarget& target, std::shared_ptr<FakeTarget::Conn> conn, const std::atomic<bool>& s)
        : t(target), c(std::move(conn)), stop(s) {}

    // ---- I/O ----

    // 0: data, 1: timeout (idle), -1: closed.
    int read_exact(uint8_t* p, size_t n, bool idle_allowed) {
        size_t have = 0;
        while (have < n) {
            pollfd pfd{c->fd, POLLIN, 0};
            int r = ::poll(&pfd, 1, 100);
            if (stop) {
                return -1;
            }
            if (r == 0) {
                if (have == 0 && idle_allowed) {
                    return 1;
                }
                continue;
            }
            ssize_t got = ::recv(c->fd, p + have, n - have, 0);
            if (got < 0 && errno == EINTR) {
                continue;
            }
            if (got <= 0) {
                return -1;
            }
            have += size_t(got);
        }
        return 0;
    }

    int read_pdu(InPdu& out) {
        int r = read_exact(out.bhs.bytes.data(), bhs_size, true);
        if (r != 0) {
            return r;
        }
        std::vector<uint8_t> ahs(out.bhs.ahs_bytes());
        if (!ahs.empty() && read_exact(ahs.data(), ahs.size(), false) != 0) {
            return -1;
        }
        if (c->header_digest) {
            uint8_t d[4];
            if (read_exact(d, 4, false) != 0) {
                return -1;
            }
            uint32_t crc = crc32c(out.bhs.bytes.data(), bhs_size);
            crc = crc32c(ahs.data(), ahs.size(), crc);
            if (load_digest(d) != crc) {
                return -1; // header digest error: drop the connection
            }
        }
        uint32_t dsl = out.bhs.data_segment_length();
        out.data.assign(pad4(dsl), 0);
        if (dsl > 0 && read_exact(out.data.data(), out.data.size(), false) != 0) {
            return -1;
        }
        if (dsl > 0 && c->data_digest) {
            uint8_t d[4];
            if (read_exact(d, 4, false) != 0) {
                return -1;
            }
            out.data_digest_bad = load_digest(d) != crc32c(out.data.data(), out.data.size());
        }
        out.data.resize(dsl);
        return 0;
    }

    bool send(const Bhs& bhs, std::span<const uint8_t> data = {}) {
        std::vector<uint8_t> buf(bhs.bytes.begin(), bhs.bytes.end());
        if (c->header_digest) {
            uint8_t d[4];
            store_digest(d, crc32c(bhs.bytes.data(), bhs_size));
            buf.insert(buf.end(), d, d + 4);
        }
        if (!data.empty()) {
            buf.insert(buf.end(), data.begin(), data.end());
            buf.resize(buf.size() + padding_length(data.size()), 0);
            if (c->data_digest) {
                uint8_t d[4];
                store_digest(d, data_digest(data));
                buf.insert(buf.end(), d, d + 4);
            }
        }
        std::lock_guard lock(c->write_mu);
        return write_all(c->fd, buf.data(), buf.size());
    }

    // ---- LoginPolicy ----

    LoginTargetInfo start(const LoginIdentity& id) override {
        LoginTargetInfo info;
        const auto& o = t._options;
        info.negotiation.header_digests = {Digest::none, Digest::crc32c};
        info.negotiation.data_digests = {Digest::none, Digest::crc32c};
        info.negotiation.max_recv_data_segment_length = o.max_recv_data_segment_length;
        info.negotiation.max_burst_length = o.max_burst_length;
        info.negotiation.first_burst_length = o.first_burst_length;
        info.negotiation.initial_r2t = o.initial_r2t;
        info.negotiation.immediate_data = o.immediate_data;
        info.negotiation.max_connections = o.max_connections;
        if (id.session_type == SessionType::normal && id.target_name != o.target_name) {
            info.status = LoginStatus::target_not_found;
            return info;
        }
        if (id.session_type == SessionType::normal && !o.chap_user.empty()) {
            info.auth_methods = {std::string(auth_method_chap)};
        }
        if (!id.leading()) {
            std::lock_guard lock(t._mu);
            for (auto& s : t._sessions) {
                if (s->tsih == id.tsih && !s->dead) {
                    info.session = s->params;
                    return info;
                }
            }
            info.status = LoginStatus::session_does_not_exist;
        }
        return info;
    }

    std::unique_ptr<Authenticator> authenticator(std::string_view method, const LoginIdentity&) override {
        const auto& o = t._options;
        if (method != auth_method_chap || o.chap_user.empty()) {
            return nullptr;
        }
        ChapTargetConfig cfg;
        cfg.users = {{o.chap_user, o.chap_secret}};
        if (!o.mutual_user.empty()) {
            cfg.mutual = iscsi::ChapCredentials{o.mutual_user, o.mutual_secret};
        }
        auto chap = std::make_unique<ChapTargetAuthenticator>(std::move(cfg));
        if (o.misread_chap_sha256) {
            return std::make_unique<Sha256Misreader>(std::move(chap));
        }
        return chap;
    }

    // Wraps the real CHAP and fails a SHA-256 exchange the way tgt does.
    class Sha256Misreader final : public Authenticator {
    public:
        explicit Sha256Misreader(std::unique_ptr<ChapTargetAuthenticator> inner) : _inner(std::move(inner)) {}
        std::string_view method() const override { return _inner->method(); }
        bool owns_key(std::string_view key) const override { return _inner->owns_key(key); }
        AuthResult step(const KeyValueList& received, KeyValueList& out) override {
            AuthResult r = _inner->step(received, out);
            if (r.status == AuthStatus::done && _inner->algorithm() == ChapAlgorithm::sha256) {
                r.status = AuthStatus::failed;
                r.failure = LoginStatus::initiator_error;
                r.message = "CHAP_A=7 read as another digest";
            }
            return r;
        }

    private:
        std::unique_ptr<ChapTargetAuthenticator> _inner;
    };

    LoginAdmission admit(const LoginIdentity& id, const SessionParams& params,
                         const ConnectionParams&) override {
        LoginAdmission a;
        std::vector<int> to_cut;
        {
            std::lock_guard lock(t._mu);
            if (id.session_type == SessionType::discovery) {
                a.tsih = t._next_tsih++;
                a.exp_cmd_sn = id.cmd_sn;
                a.max_cmd_sn = id.cmd_sn + t._options.cmd_window - 1;
                return a;
            }
            if (id.leading()) {
                bool reinstated = false;
                for (auto& s : t._sessions) {
                    if (!s->dead && s->initiator_name == id.initiator_name &&
                        s->isid == isid_to_u64(id.isid)) {
                        // Reinstatement: end the old session (its tasks are dropped) before this one runs.
                        s->dead = true;
                        s->held.clear();
                        for (auto& w : s->conns) {
                            if (auto oc = w.lock()) {
                                to_cut.push_back(oc->fd);
                            }
                        }
                        reinstated = true;
                    }
                }
                auto s = std::make_shared<FakeTarget::Session>();
                s->tsih = t._next_tsih++;
                s->initiator_name = id.initiator_name;
                s->isid = isid_to_u64(id.isid);
                s->params = params;
                s->exp_cmd_sn = id.cmd_sn;
                s->ua_pending = t._options.unit_attention_on_new_session;
                s->conns.push_back(c);
                t._sessions.push_back(s);
                c->session = s;
                t.leading_logins++;
                if (reinstated) {
                    t.reinstatements++;
                }
                a.tsih = s->tsih;
                a.exp_cmd_sn = s->exp_cmd_sn;
                a.max_cmd_sn = s->max_cmd_sn(t._options.cmd_window);
            } else {
                std::shared_ptr<FakeTarget::Session> s;
                for (auto& x : t._sessions) {
                    if (x->tsih == id.tsih && !x->dead) {
                        s = x;
                    }
                }
                if (!s) {
                    a.status = LoginStatus::session_does_not_exist;
                    return a;
                }
                // A connection that logged out (or closed) no longer counts, even before its thread ends.
                std::erase_if(s->conns, [](auto& w) {
                    auto conn = w.lock();
                    return !conn || conn->fd < 0 || conn->logged_out;
                });
                uint16_t limit =
                    t._options.join_limit != 0 ? t._options.join_limit : t._options.max_connections;
                if (s->conns.size() >= limit) {
                    a.status = LoginStatus::too_many_connections;
                    return a;
                }
                s->conns.push_back(c);
                c->session = s;
                a.tsih = s->tsih;
                a.exp_cmd_sn = s->exp_cmd_sn;
                a.max_cmd_sn = s->max_cmd_sn(t._options.cmd_window);
            }
        }
        for (int fd : to_cut) {
            ::shutdown(fd, SHUT_RDWR);
        }
        return a;
    }

    // ---- helpers ----

    void window(uint32_t& exp, uint32_t& max) {
        auto& s = c->session;
        exp = s ? s->exp_cmd_sn : 0;
        max = s ? s->max_cmd_sn(t._options.cmd_window) : 0;
    }

    bool send_status(uint32_t itt, uint8_t status, std::span<const uint8_t> sense = {}, uint32_t residual = 0,
                     bool underflow = false) {
        ScsiResponse r;
        r.status = status;
        r.itt = itt;
        r.residual_count = residual;
        r.underflow = underflow;
        {
            std::lock_guard lock(t._mu);
            r.stat_sn = c->stat_sn++;
            window(r.exp_cmd_sn, r.max_cmd_sn);
        }
        std::vector<uint8_t> seg;
        if (!sense.empty()) {
            seg.resize(2);
            store_be16(seg.data(), uint16_t(sense.size()));
            seg.insert(seg.end(), sense.begin(), sense.end());
        }
        r.data_segment_length = uint32_t(seg.size());
        Bhs bhs;
        r.encode(bhs);
        return send(bhs, seg);
    }

    bool check_condition(uint32_t itt, uint8_t key, uint8_t asc, uint8_t ascq) {
        std::vector<uint8_t> sense(18, 0);
        sense[0] = 0x70;
        sense[2] = key;
        sense[7] = 10;
        sense[12] = asc;
        sense[13] = ascq;
        return send_status(itt, 0x02, sense);
    }

    bool send_data_in(uint32_t itt, const std::vector<uint8_t>& data, uint32_t edtl) {
        uint32_t n = uint32_t(std::min<size_t>(data.size(), edtl));
        uint32_t seg = std::max<uint32_t>(c->initiator_mrdsl, 512);
        uint32_t offset = 0;
        uint32_t data_sn = 0;
        do {
            uint32_t len = std::min(seg, n - offset);
            bool last = offset + len == n;
            DataIn d;
            d.final_bit = last;
            d.status_present = last;
            d.status = 0;
            d.data_segment_length = len;
            d.itt = itt;
            d.data_sn = data_sn++;
            d.buffer_offset = offset;
            if (last && n < edtl) {
                d.underflow = true;
                d.residual_count = edtl - n;
            }
            {
                std::lock_guard lock(t._mu);
                if (last) {
                    d.stat_sn = c->stat_sn++;
                }
                window(d.exp_cmd_sn, d.max_cmd_sn);
            }
            Bhs bhs;
            d.encode(bhs);
            if (!send(bhs, {data.data() + offset, len})) {
                return false;
            }
            offset += len;
        } while (offset < n);
        return true;
    }

    bool send_r2t(uint32_t itt, WriteState& w) {
        uint32_t len = std::min(t._options.max_burst_length, w.total - w.received);
        R2t r;
        r.itt = itt;
        r.ttt = 0x1000 + itt % 0x1000;
        r.r2t_sn = w.r2t_sn++;
        r.buffer_offset = w.received;
        r.desired_data_transfer_length = len;
        w.r2t_end = w.received + len;
        {
            std::lock_guard lock(t._mu);
            r.stat_sn = c->stat_sn;
            window(r.exp_cmd_sn, r.max_cmd_sn);
        }
        Bhs bhs;
        r.encode(bhs);
        return send(bhs);
    }

    // Runs a complete command. Returns false when the connection is to be dropped.
    bool execute(const ScsiCommand& cmd, const std::vector<uint8_t>& out_data) {
        const uint8_t* cdb = cmd.cdb.data();
        auto& o = t._options;
        std::vector<uint8_t> in;
        uint8_t op = cdb[0];
        {
            std::lock_guard lock(t._mu);
            if (!c->session || c->session->dead) {
                return false; // the session was reinstated: its tasks never run
            }
            if (c->session->ua_pending && op != 0x12 && op != 0xa0) {
                c->session->ua_pending = false;
                goto unit_attention;
            }
            switch (op) {
            case 0x00: // TEST UNIT READY
            case 0x35: // SYNCHRONIZE CACHE(10)
                break;
            case 0x12: // INQUIRY
                if (cdb[1] & 1) {
                    if (cdb[2] == 0x00) {
                        in = {0, 0, 0, 3, 0x00, 0x80, 0xb0};
                    } else if (cdb[2] == 0x80) {
                        in = {0, 0x80, 0, 8};
                        for (char ch : std::string("FAKE0001")) {
                            in.push_back(uint8_t(ch));
                        }
                    } else if (cdb[2] == 0xb0) {
                        in.assign(64, 0);
                        in[1] = 0xb0;
                        in[3] = 60;
                        store_be32(&in[8], o.max_transfer_blocks);
                    } else {
                        goto illegal;
                    }
                } else {
                    in.assign(36, ' ');
                    in[0] = 0;
                    in[1] = 0;
                    in[2] = 6;
                    in[3] = 2;
                    in[4] = 31;
                    in[5] = in[6] = in[7] = 0;
                    std::memcpy(&in[8], "ISPACE  ", 8);
                    std::memcpy(&in[16], "FAKE DISK       ", 16);
                    std::memcpy(&in[32], "0001", 4);
                }
                break;
            case 0x25: // READ CAPACITY(10)
                in.assign(8, 0);
                store_be32(&in[0], uint32_t(o.blocks - 1));
                store_be32(&in[4], o.block_size);
                break;
            case 0x9e: // READ CAPACITY(16)
                if ((cdb[1] & 0x1f) != 0x10) {
                    goto illegal;
                }
                in.assign(32, 0);
                store_be64(&in[0], o.blocks - 1);
                store_be32(&in[8], o.block_size);
                break;
            case 0xa0: // REPORT LUNS
                in.assign(16, 0);
                store_be32(&in[0], 8);
                break;
            case 0x28:
            case 0x88:
            case 0x2a:
            case 0x8a: {
                bool is16 = op == 0x88 || op == 0x8a;
                uint64_t lba = is16 ? load_be64(cdb + 2) : load_be32(cdb + 2);
                uint32_t blocks = is16 ? load_be32(cdb + 10) : load_be16(cdb + 7);
                if (lba + blocks > o.blocks) {
                    goto out_of_range;
                }
                size_t off = size_t(lba) * o.block_size;
                size_t len = size_t(blocks) * o.block_size;
                if (op == 0x2a || op == 0x8a) {
                    if (out_data.size() < len) {
                        goto illegal;
                    }
                    std::memcpy(t._disk.data() + off, out_data.data(), len);
                    t._writes.push_back({c->session->tsih, lba, blocks, len ? out_data[0] : uint8_t(0)});
                } else {
                    in.assign(t._disk.begin() + ptrdiff_t(off), t._disk.begin() + ptrdiff_t(off + len));
                }
                break;
            }
            default:
                goto illegal;
            }
        }
        if (cmd.read) {
            if (in.empty()) {
                return send_status(cmd.itt, 0, {}, cmd.expected_data_transfer_length, true);
            }
            return send_data_in(cmd.itt, in, cmd.expected_data_transfer_length);
        }
        return send_status(cmd.itt, 0);
    illegal:
        return check_condition(cmd.itt, 0x05, 0x20, 0x00);
    out_of_range:
        return check_condition(cmd.itt, 0x05, 0x21, 0x00);
    unit_attention:
        return check_condition(cmd.itt, 0x06, 0x29, 0x07);
    }

    void check_segment(const InPdu& pdu) {
        if (c->declared_anew && pdu.data.size() > c->declared_anew) {
            t.oversized_segments++;
        }
    }

    // A negotiation request (AsyncEvent 4) once request_negotiation() was called.
    bool maybe_ask_negotiation() {
        if (c->negotiation_asked || t._renegotiate_to.load() == 0) {
            return true;
        }
        c->negotiation_asked = true;
        AsyncMessage a;
        a.event = AsyncEvent::negotiation_request;
        a.parameter3 = 5;
        {
            std::lock_guard lock(t._mu);
            a.stat_sn = c->stat_sn++;
            window(a.exp_cmd_sn, a.max_cmd_sn);
        }
        Bhs bhs;
        a.encode(bhs);
        return send(bhs);
    }

    bool on_command(const InPdu& pdu) {
        auto cmd = ScsiCommand::decode(pdu.bhs);
        if (!cmd) {
            return false;
        }
        check_segment(pdu);
        if (t._options.command_delay.count() > 0) {
            std::this_thread::sleep_for(t._options.command_delay);
        }
        t.commands++;
        {
            std::lock_guard lock(t._mu);
            t._per_cid[c->cid]++;
            auto& s = *c->session;
            if (!cmd->immediate) {
                if (sn_lt(cmd->cmd_sn, s.exp_cmd_sn) ||
                    sn_gt(cmd->cmd_sn, s.max_cmd_sn(t._options.cmd_window))) {
                    t.window_violations++;
                }
                s.mark(cmd->cmd_sn);
            }
            if (t._hold && t._hold(*cmd)) {
                s.held[cmd->itt] = cmd->lun;
                return true;
            }
        }
        if (cmd->write) {
            WriteState w;
            w.cmd = *cmd;
            w.total = cmd->expected_data_transfer_length;
            w.data.assign(w.total, 0);
            size_t imm = std::min<size_t>(pdu.data.size(), w.total);
            std::memcpy(w.data.data(), pdu.data.data(), imm);
            w.received = uint32_t(imm);
            if (w.received >= w.total) {
                return execute(*cmd, w.data);
            }
            if (!cmd->final_bit) {
                w.unsolicited = std::min(t._options.first_burst_length, w.total);
                writes[cmd->itt] = std::move(w);
                return true; // unsolicited Data-Out follows
            }
            auto& ref = writes[cmd->itt] = std::move(w);
            return send_r2t(cmd->itt, ref);
        }
        return execute(*cmd, {});
    }

    bool on_data_out(const InPdu& pdu) {
        auto d = DataOut::decode(pdu.bhs);
        if (!d) {
            return false;
        }
        check_segment(pdu);
        auto it = writes.find(d->itt);
        if (it == writes.end()) {
            return true; // for an aborted task
        }
        auto& w = it->second;
        if (uint64_t(d->buffer_offset) + pdu.data.size() > w.total) {
            return false;
        }
        std::memcpy(w.data.data() + d->buffer_offset, pdu.data.data(), pdu.data.size());
        w.received = std::max<uint32_t>(w.received, d->buffer_offset + uint32_t(pdu.data.size()));
        if (!d->final_bit) {
            return true;
        }
        if (w.received >= w.total) {
            ScsiCommand cmd = w.cmd;
            std::vector<uint8_t> data = std::move(w.data);
            writes.erase(it);
            return execute(cmd, data);
        }
        return send_r2t(d->itt, w);
    }

    bool on_tmf(const InPdu& pdu) {
        auto r = TaskMgmtRequest::decode(pdu.bhs);
        if (!r) {
            return false;
        }
        TaskMgmtResponse resp;
        resp.itt = r->itt;
        {
            std::lock_guard lock(t._mu);
            if (t._ignored_tmfs.count(uint8_t(r->function))) {
                if (r->function == TmfFunction::abort_task) {
                    t.aborts++;
                } else if (r->function == TmfFunction::lun_reset) {
                    t.lun_resets++;
                }
                return true;
            }
            auto& s = *c->session;
            if (r->function == TmfFunction::abort_task) {
                t.aborts++;
                if (s.held.erase(r->referenced_task_tag) > 0 || writes.erase(r->referenced_task_tag) > 0) {
                    resp.response = TmfResponse::function_complete;
                } else if (!s.seen(r->ref_cmd_sn) &&
                           sn_lt(r->ref_cmd_sn, s.max_cmd_sn(t._options.cmd_window) + 1)) {
                    // RFC 7143 §11.5.1: a command that never arrived is considered received.
                    s.mark(r->ref_cmd_sn);
                    resp.response = TmfResponse::function_complete;
                } else {
                    resp.response = TmfResponse::task_does_not_exist;
                }
            } else if (r->function == TmfFunction::lun_reset) {
                t.lun_resets++;
                std::erase_if(s.held, [&](auto& kv) { return kv.second == r->lun; });
                writes.clear();
                resp.response = TmfResponse::function_complete;
            } else {
                resp.response = TmfResponse::not_supported;
            }
            resp.stat_sn = c->stat_sn++;
            window(resp.exp_cmd_sn, resp.max_cmd_sn);
        }
        Bhs bhs;
        resp.encode(bhs);
        return send(bhs);
    }

    bool on_nop(const InPdu& pdu) {
        auto n = NopOut::decode(pdu.bhs);
        if (!n) {
            return false;
        }
        if (n->ttt != reserved_tag) {
            t.nop_replies++;
            return true;
        }
        if (n->itt == reserved_tag) {
            return true;
        }
        NopIn in;
        in.itt = n->itt;
        in.ttt = reserved_tag;
        in.data_segment_length = uint32_t(pdu.data.size());
        {
            std::lock_guard lock(t._mu);
            in.stat_sn = c->stat_sn++;
            window(in.exp_cmd_sn, in.max_cmd_sn);
        }
        Bhs bhs;
        in.encode(bhs);
        return send(bhs, pdu.data);
    }

    bool ping() {
        NopIn in;
        in.itt = reserved_tag;
        in.ttt = 0x7000;
        {
            std::lock_guard lock(t._mu);
            in.stat_sn = c->stat_sn;
            window(in.exp_cmd_sn, in.max_cmd_sn);
        }
        Bhs bhs;
        in.encode(bhs);
        return send(bhs);
    }

    bool on_text(const InPdu& pdu) {
        auto r = TextRequest::decode(pdu.bhs);
        if (!r) {
            return false;
        }
        std::vector<uint8_t> text;
        if (pdu.data.empty() && c->negotiation_asked && !c->declared_anew) {
            // The Text Request our AsyncEvent 4 asked for: declare the new value.
            c->declared_anew = t._renegotiate_to.load();
            append_text(text, "MaxRecvDataSegmentLength", std::to_string(c->declared_anew));
            t.renegotiations++;
        } else {
            t.discoveries++;
            append_text(text, "TargetName", t._options.target_name);
            append_text(text, "TargetAddress", "127.0.0.1:" + std::to_string(t._port) + ",1");
        }
        TextResponse resp;
        resp.final_bit = true;
        resp.itt = r->itt;
        resp.ttt = reserved_tag;
        resp.data_segment_length = uint32_t(text.size());
        resp.stat_sn = c->stat_sn++;
        resp.exp_cmd_sn = r->cmd_sn + 1;
        resp.max_cmd_sn = r->cmd_sn + 8;
        Bhs bhs;
        resp.encode(bhs);
        return send(bhs, text);
    }

    bool on_logout(const InPdu& pdu) {
        auto r = LogoutRequest::decode(pdu.bhs);
        if (!r) {
            return false;
        }
        t.logouts++;
        LogoutResponse resp;
        resp.itt = r->itt;
        {
            std::lock_guard lock(t._mu);
            resp.stat_sn = c->stat_sn++;
            window(resp.exp_cmd_sn, resp.max_cmd_sn);
            if (c->session && r->reason == LogoutReason::close_session) {
                c->session->dead = true;
            }
            if (r->reason == LogoutReason::close_connection) {
                t.connection_logouts++;
            }
            c->logged_out = true;
        }
        Bhs bhs;
        resp.encode(bhs);
        send(bhs);
        return false; // close after the response
    }

    void run() {
        TargetLoginSettings settings;
        settings.cmd_window = t._options.cmd_window;
        TargetLogin login(*this, settings);
        InPdu pdu;
        // Login phase.
        for (;;) {
            if (read_pdu(pdu) != 0) {
                if (stop) {
                    return;
                }
                continue; // (idle) keep waiting
            }
            auto req = LoginRequest::decode(pdu.bhs);
            LoginResponsePdu resp =
                req ? login.receive(*req, pdu.data) : login.fail(LoginStatus::initiator_error, "bad");
            resp.header.data_segment_length = uint32_t(resp.data.size());
            Bhs bhs;
            resp.header.encode(bhs);
            bool complete = login.state() == LoginState::complete;
            if (complete) {
                t.logins++; // before the answer: an initiator that has it sees the count
            }
            if (!send(bhs, resp.data)) {
                return;
            }
            if (complete) {
                break;
            }
            if (login.state() != LoginState::in_progress) {
                return;
            }
        }
        c->header_digest = login.connection_params().header_digest == Digest::crc32c;
        c->data_digest = login.connection_params().data_digest == Digest::crc32c;
        c->initiator_mrdsl = login.connection_params().max_send_data_segment_length;
        c->cid = login.identity().cid;
        {
            std::lock_guard lock(t._mu);
            c->stat_sn = login.last_stat_sn() + 1;
            c->full_feature = true;
        }
        for (;;) {
            int r = read_pdu(pdu);
            if (r < 0) {
                return;
            }
            if (!maybe_ask_negotiation()) {
                return;
            }
            if (r == 1) {
                if (t._options.ping && !ping()) {
                    return;
                }
                continue;
            }
            if (pdu.data_digest_bad) {
                t.data_digest_errors++;
                Reject rej;
                rej.reason = RejectReason::data_digest_error;
                {
                    std::lock_guard lock(t._mu);
                    rej.stat_sn = c->stat_sn++;
                    window(rej.exp_cmd_sn, rej.max_cmd_sn);
                }
                Bhs bhs;
                rej.encode(bhs);
                send(bhs, pdu.bhs.bytes);
                return; // ERL 0: and drop the connection
            }
            bool ok = true;
            switch (pdu.bhs.opcode()) {
            case Opcode::scsi_command:
                ok = on_command(pdu);
                break;
            case Opcode::data_out:
                ok = on_data_out(pdu);
                break;
            case Opcode::task_mgmt_request:
                ok = on_tmf(pdu);
                break;
            case Opcode::nop_out:
                ok = on_nop(pdu);
                break;
            case Opcode::text_request:
                ok = on_text(pdu);
                break;
            case Opcode::logout_request:
                ok = on_logout(pdu);
                break;
            default:
                ok = false;
                break;
            }
            if (!ok) {
                return;
            }
        }
    }
};

FakeTarget::FakeTarget(FakeTargetOptions options) : _options(std::move(options)) {
    _disk.assign(size_t(_options.blocks) * _options.block_size, 0);
    _listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(_listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
        ::listen(_listen_fd, 64) < 0) {
        throw std::runtime_error("fake target: cannot listen");
    }
    socklen_t len = sizeof addr;
    ::getsockname(_listen_fd, reinterpret_cast<sockaddr*>(&addr), &len);
    _port = ntohs(addr.sin_port);
    _acceptor = std::thread([this] { accept_loop(); });
}

FakeTarget::~FakeTarget() {
    _stop = true;
    ::shutdown(_listen_fd, SHUT_RDWR);
    _acceptor.join();
    ::close(_listen_fd);
    drop_all_connections();
    std::vector<ConnThread> threads;
    {
        std::lock_guard lock(_mu);
        threads.swap(_threads);
    }
    for (auto& th : threads) {
        th.thread.join();
    }
}

void FakeTarget::accept_loop() {
    while (!_stop) {
        pollfd pfd{_listen_fd, POLLIN, 0};
        if (::poll(&pfd, 1, 100) <= 0) {
            continue;
        }
        int fd = ::accept4(_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto conn = std::make_shared<Conn>();
        conn->fd = fd;
        std::vector<ConnThread> done;
        {
            std::lock_guard lock(_mu);
            auto first_done = std::stable_partition(_threads.begin(), _threads.end(),
                                                    [](const ConnThread& t) { return !t.finished->load(); });
            std::move(first_done, _threads.end(), std::back_inserter(done));
            _threads.erase(first_done, _threads.end());
            // Sessions that ended with no connection left: nothing refers to them any more.
            std::erase_if(_sessions, [](const std::shared_ptr<Session>& s) {
                return s->dead && std::none_of(s->conns.begin(), s->conns.end(),
                                               [](const std::weak_ptr<Conn>& w) { return !w.expired(); });
            });
            _conns.push_back(conn);
            auto finished = std::make_shared<std::atomic<bool>>(false);
            _threads.push_back({std::thread([this, conn, finished] {
                                    serve(conn);
                                    finished->store(true);
                                }),
                                finished});
        }
        for (auto& t : done) {
            t.thread.join();
        }
    }
}

void FakeTarget::serve(std::shared_ptr<Conn> conn) {
    {
        ConnHandler h(*this, conn, _stop);
        h.run();
    }
    std::lock_guard lock(_mu);
    ::shutdown(conn->fd, SHUT_RDWR);
    ::close(conn->fd);
    conn->fd = -1;
    conn->full_feature = false;
    std::erase(_conns, conn);
}

void FakeTarget::set_hold(std::function<bool(const ScsiCommand&)> hold) {
    std::lock_guard lock(_mu);
    _hold = std::move(hold);
}

void FakeTarget::set_ignore_tmf(TmfFunction function, bool ignore) {
    std::lock_guard lock(_mu);
    if (ignore) {
        _ignored_tmfs.insert(uint8_t(function));
    } else {
        _ignored_tmfs.erase(uint8_t(function));
    }
}

void FakeTarget::drop_all_connections() {
    std::lock_guard lock(_mu);
    for (auto& c : _conns) {
        if (c->fd >= 0) {
            ::shutdown(c->fd, SHUT_RDWR);
        }
    }
}

void FakeTarget::request_negotiation(uint32_t max_recv_data_segment_length) {
    _renegotiate_to = max_recv_data_segment_length;
}

std::vector<uint8_t> FakeTarget::disk() const {
    std::lock_guard lock(_mu);
    return _disk;
}

void FakeTarget::fill_disk(uint8_t value) {
    std::lock_guard lock(_mu);
    std::fill(_disk.begin(), _disk.end(), value);
}

std::vector<WriteRecord> FakeTarget::write_log() const {
    std::lock_guard lock(_mu);
    return _writes;
}

std::map<uint16_t, uint64_t> FakeTarget::commands_per_cid() const {
    std::lock_guard lock(_mu);
    return _per_cid;
}

unsigned FakeTarget::live_connections() const {
    std::lock_guard lock(_mu);
    unsigned n = 0;
    if (_sessions.empty()) {
        return 0;
    }
    auto& s = _sessions.back();
    for (auto& w : s->conns) {
        if (auto c = w.lock(); c && c->full_feature && !c->logged_out && !s->dead) {
            ++n;
        }
    }
    return n;
}

} // namespace ispace::initiator::test
