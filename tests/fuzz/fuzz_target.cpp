// Fuzzes the target front end's full-feature phase: what a hostile or broken initiator may send once it
// has logged in. fuzz_pdu frames bytes, fuzz_login drives the login machine and fuzz_cdb the SCSI
// engine; this one drives the Connection and Session code between them — SCSI Commands with and
// without immediate data, Data-Out with any TTT, DataSN, offset and length, R2Ts answered or not,
// NOP-Out pings and replies, task management (TASK REASSIGN included), Text negotiation in full
// feature phase, Logout of any reason, SNACKs of every type, raw headers of any initiator opcode, a
// connection closed, joined (MC/S, from either reactor), reinstated or its session reinstated, a
// discovery session beside, a login written by hand on a new connection, an initiator that stops
// reading its socket, time passing (pings, the budget's retries) — at ErrorRecoveryLevel 0-2.
//
// It runs the target front end's unit test harness (tests/unit/iscsi_target/harness.hpp): the real
// Server, Sessions and Connections over in-memory transports, two reactors run by hand until nothing
// more happens, RAM LUNs, and the FakeInitiator that sends exactly the PDUs it is told to. So an input
// runs the same way every time, with no thread in it and no clock but where an action lets time pass.
//
// Input (bytes read from the front; past the end every byte reads as 0):
//   byte 0     the initiator's offer: bits 0-1 ErrorRecoveryLevel (0, 1, 2, 2); bit 2 HeaderDigest
//              CRC32C; bit 3 DataDigest CRC32C; bit 4 InitialR2T=No; bit 5 ImmediateData=No; bit 6
//              MaxRecvDataSegmentLength 512 (many Data-In per read); bit 7 small bursts (MaxBurstLength
//              4 KiB, FirstBurstLength 1 KiB, MaxOutstandingR2T 2)
//   byte 1     the target's configuration: bits 0-1 CmdSN window (8, 1, 2, 32); bit 2 a 16 KiB Data-In
//              buffer budget (commands wait for it); bit 3 the target insists on InitialR2T=Yes; bit 4
//              both sides allow Data PDUs and sequences out of order; bit 5 at most 64 KiB per command;
//              bit 6 DefaultTime2Retain 0 offered (the target still keeps orphans its 1 s floor); bit 7
//              one wait of 120 ms may come (NOP-In pings; slow, so only where asked)
//   then actions, each a kind byte (mod 16) and the fields it reads (see Run::act)
//
// Checked beyond "no crash, no sanitizer report, no leak":
//  - every PDU the target sends frames and decodes (right opcode, lengths within what the initiator
//    declared, fields the RFC allows), and a Data-In stays within the Expected Data Transfer Length of
//    the command whose ITT it carries;
//  - RFC 7143's sequence numbers in everything the target sends, Login Responses included (each rule
//    and the RFC sentence behind it at Run::sequence and Run::window): per connection, StatSN goes up by
//    one with each numbered response, and an R2T or a NOP-In ping carries the next one; a StatSN that
//    goes back is a response sent again, after a SNACK, with the ITT it had; MaxCmdSN is never below
//    ExpCmdSN - 1, and neither goes back on one connection (across connections they may); per task,
//    DataSN and R2TSN never skip one (except where a TASK REASSIGN resumes a task); an R2T asks for 1 to
//    MaxBurstLength bytes;
//  - the reactors go quiet after each step (no busy loop, no PDU ping-pong without end);
//  - afterwards the target still serves: a new session logs in and its NOP-Out is answered;
//  - once every initiator has gone and the sessions are closed, no connection or session is left and the
//    Data-In buffer budget holds nothing.
// A failure of any of these (a gtest expectation of the harness included) aborts, so libFuzzer keeps
// the input. ISPACE_FUZZ_VERBOSE=1 prints the target's log and each action.
#include "harness.hpp"

#include "common/bytes.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

using namespace ispace;
using namespace ispace::iscsi_target;
using namespace ispace::iscsi_target::test;

namespace {

bool verbose() {
    static const bool on = std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr;
    return on;
}

[[noreturn]] void trap(const std::string& why) {
    std::fprintf(stderr, "fuzz_target: %s\n", why.c_str());
    std::abort();
}

// The harness reports with gtest expectations; outside a running test they reach the listeners, and
// this one turns each into an abort.
class TrapOnFailure final : public ::testing::EmptyTestEventListener {
    void OnTestPartResult(const ::testing::TestPartResult& result) override {
        if (result.failed()) {
            trap(fmt::format("{}:{}: {}", result.file_name() ? result.file_name() : "?", result.line_number(),
                             result.message()));
        }
    }
};

// Reads the input from the front; zeros past its end.
class Input {
public:
    Input(const uint8_t* data, size_t size) : _data(data), _size(size) {}
    bool done() const { return _at >= _size; }
    uint8_t u8() { return _at < _size ? _data[_at++] : 0; }
    uint16_t u16() { return uint16_t(u8() << 8 | u8()); }
    uint32_t u32() { return uint32_t(u16()) << 16 | u16(); }
    std::vector<uint8_t> bytes(size_t n) {
        std::vector<uint8_t> out(n);
        for (auto& b : out) {
            b = u8();
        }
        return out;
    }

private:
    const uint8_t* _data;
    size_t _size;
    size_t _at = 0;
};

constexpr size_t max_connections = 6;
constexpr uint64_t lun0_blocks = lun0_bytes / block_size;

struct Peer {
    FakeInitiator* initiator = nullptr;
    bool closed = false;
};

// What one connection's PDUs so far say about its sequence numbers (see Run::sequence).
struct Watch {
    size_t index = 0;                        // in the order connected (verbose output)
    const SessionNumbers* numbers = nullptr; // the session's (ITTs are the session's)
    std::optional<uint32_t> next_stat_sn;    // of the next new numbered response, once known
    struct Numbered {
        uint32_t itt = 0;
        uint64_t resends = 0; // sent again since
    };
    std::map<uint32_t, Numbered> numbered; // StatSN -> the numbered response sent with it
    std::optional<uint32_t> exp_cmd_sn;    // the highest sent on this connection
    std::optional<uint32_t> max_cmd_sn;
    uint32_t max_burst_length = 0; // the session's, once its login is known to be through
};

class Run {
public:
    Run(Harness& h, Input& in, LoginOptions login, bool ping_wait)
        : _h(h), _in(in), _login(std::move(login)), _ping_wait(ping_wait) {}
    Run(const Run&) = delete;
    Run& operator=(const Run&) = delete;
    ~Run() {
        for (FakeInitiator* watched : _watched) {
            watched->observe(nullptr);
        }
    }

    void go() {
        if (!open_new_session()) {
            return; // the offer itself was refused (a combination the target does not take)
        }
        for (int step = 0; step < 64 && !_in.done(); ++step) {
            act(_in.u8() % 16);
        }
        settle_all();
    }

    // A fresh session must still log in and be answered.
    void probe() {
        FakeInitiator& fresh = _h.connect();
        Watch* w = watch(fresh);
        LoginOptions o;
        o.isid = 0x400000000fffULL;
        LoginResult r = fresh.login(o);
        w->max_burst_length = r.ok() ? r.session.max_burst_length : 0;
        if (!r.ok()) {
            trap("a new session cannot log in after the input: " + r.reason);
        }
        uint32_t itt = fresh.nop_out(pattern(64, 1));
        bool answered = false;
        for (auto& pdu : fresh.drain()) {
            check(pdu);
            answered |= pdu.opcode() == iscsi::Opcode::nop_in && pdu.bhs.itt() == itt;
        }
        if (!answered) {
            trap("a new session's NOP-Out got no NOP-In after the input");
        }
    }

    // Every initiator (the harness's, the probe's too) goes; then nothing may be held.
    void end() {
        _h.end_everything(); // a connection left open is a (trapped) harness expectation
        if (size_t left = _h.server().sessions().size(); left != 0) {
            trap(fmt::format("{} sessions left after every initiator went and the sessions were closed",
                             left));
        }
        if (uint64_t used = _h.server().buffer_budget()->used(); used != 0) {
            trap(fmt::format("{} bytes of the Data-In budget held after every session ended", used));
        }
    }

private:
    struct Task {
        uint32_t itt = 0;
        uint32_t edtl = 0;
        uint64_t lun = 0;
        size_t peer = 0;
    };

    void act(uint8_t kind) {
        size_t which = _in.u8() % _peers.size();
        Peer& p = _peers[which];
        if (verbose()) {
            std::fprintf(stderr, "-- action %u on connection %zu\n", kind, which);
        }
        switch (kind) {
        case 0:
            command(p, which, /*write=*/false);
            break;
        case 1:
            command(p, which, /*write=*/true);
            break;
        case 2:
            raw_cdb(p, which);
            break;
        case 3:
            data_out(p);
            break;
        case 4:
            answer_r2ts(p);
            break;
        case 5:
            nop(p);
            break;
        case 6:
            tmf(p);
            break;
        case 7:
            text(p);
            break;
        case 8:
            logout(p);
            break;
        case 9:
            snack(p);
            break;
        case 10:
            raw_pdu(p, which);
            break;
        case 11:
            settle_all();
            break;
        case 12:
            if (!p.closed) {
                p.initiator->close();
                p.closed = true;
            }
            break;
        case 13:
            reconnect(which);
            break;
        case 14:
            p.initiator->wire().reading = !p.initiator->wire().reading;
            if (p.initiator->wire().reading) {
                p.initiator->wire().drain();
            }
            break;
        default: {
            uint8_t mode = _in.u8();
            if (mode & 2) {
                // Time passes (the only action that lets the clock in): the Data-In budget's retry
                // (5 ms), and, once and only for an input that asks for it in its configuration (it
                // is slow), 120 ms for NOP-In pings of idle connections (every 100 ms here). Not the
                // end of Time2Retain: orphans are kept at least 1 s, too slow for a fuzzer (the unit
                // tests of reassign_test.cpp cover it).
                std::chrono::milliseconds span = 8ms;
                if ((mode & 4) && _ping_wait) {
                    span = 120ms;
                    _ping_wait = false;
                } else if (_short_waits + span > 40ms) {
                    span = 0ms;
                } else {
                    _short_waits += span;
                }
                if (span > 0ms) {
                    _h.run_until([] { return false; }, span);
                }
                settle_all();
            } else {
                // One reactor runs while the other is frozen: the other order of cross-reactor work.
                _h.settle_only(mode & 1);
            }
            break;
        }
        }
    }

    // ---- SCSI commands ----

    uint64_t lun_field_from(uint8_t b) {
        switch (b & 3) {
        case 0:
            return lun_field(0);
        case 1:
            return lun_field(1);
        case 2:
            return lun_field(7); // none there
        default:
            return uint64_t(b) << 56 | 0x1234; // not an address the target uses
        }
    }

    // EDTL: right, 0, one block more or less, or anything.
    uint32_t edtl_from(uint8_t mode, uint32_t right) {
        switch (mode & 7) {
        case 1:
            return 0;
        case 2:
            return right + block_size;
        case 3:
            return right >= block_size ? right - block_size : right;
        case 4:
            return _in.u32();
        default:
            return right;
        }
    }

    void command(Peer& p, size_t which, bool write) {
        uint8_t what = _in.u8();
        uint32_t lba = uint32_t(_in.u16()) % (lun0_blocks + 8);
        uint16_t blocks = uint16_t(_in.u8() % 65);
        uint8_t edtl_mode = _in.u8();
        uint8_t flags = _in.u8();
        Command c;
        c.lun = lun_field_from(flags >> 4);
        uint32_t right = uint32_t(blocks) * block_size;
        std::vector<uint8_t> parameters; // a parameter list that goes as the data
        if (!write) {
            c.read = true;
            switch (what % 6) {
            case 0:
                c.cdb = read10(lba, blocks);
                break;
            case 1:
                c.cdb = {0x88};
                store_be64(&c.cdb[2], lba);
                store_be32(&c.cdb[10], blocks);
                break;
            case 2: // INQUIRY, VPD pages by the LBA's low byte
                c.cdb = {0x12, uint8_t(lba & 1), uint8_t(lba >> 8)};
                right = uint32_t(blocks) * 8;
                store_be16(&c.cdb[3], uint16_t(right));
                break;
            case 3: // REPORT LUNS
                c.cdb = {0xa0};
                right = uint32_t(blocks) * 16;
                store_be32(&c.cdb[6], right);
                break;
            case 4: // READ CAPACITY (16)
                c.cdb = {0x9e, 0x10};
                right = 32;
                store_be32(&c.cdb[10], right);
                break;
            default: // PERSISTENT RESERVE IN, service action by the LBA
                c.cdb = {0x5e, uint8_t(lba & 3)};
                right = 512;
                store_be16(&c.cdb[7], uint16_t(right));
                break;
            }
        } else {
            c.write = true;
            switch (what % 6) {
            case 0:
                c.cdb = write10(lba, blocks);
                break;
            case 1:
                c.cdb = {0x8a};
                store_be64(&c.cdb[2], lba);
                store_be32(&c.cdb[10], blocks);
                break;
            case 2: // COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS in byte 13, twice the data
                c.cdb = {0x89};
                store_be64(&c.cdb[2], lba);
                c.cdb[13] = uint8_t(blocks);
                right *= 2;
                break;
            case 3: // WRITE SAME (16), UNMAP bit by the flags
                c.cdb = {0x93, uint8_t(flags & 8)};
                store_be64(&c.cdb[2], lba);
                store_be32(&c.cdb[10], blocks);
                right = block_size;
                break;
            case 4: { // UNMAP: one descriptor
                parameters.assign(24, 0);
                store_be16(&parameters[0], 22);
                store_be16(&parameters[2], 16);
                store_be64(&parameters[8], lba);
                store_be32(&parameters[16], blocks);
                c.cdb = {0x42};
                right = 24;
                store_be16(&c.cdb[7], uint16_t(right));
                break;
            }
            default: { // PERSISTENT RESERVE OUT: REGISTER, RESERVE, RELEASE, ... by the LBA
                parameters.assign(24, 0);
                store_be64(&parameters[0], lba & 4 ? 0x1111 : 0);
                store_be64(&parameters[8], 0x1111);
                c.cdb = {0x5f, uint8_t(lba & 7), 0x01};
                right = 24;
                store_be32(&c.cdb[5], right);
                break;
            }
            }
        }
        c.edtl = edtl_from(edtl_mode, right);
        if (write) {
            // Immediate data: up to FirstBurstLength and the target's segment limit, none, or any length.
            uint32_t n = std::min({c.edtl, p.initiator->connection_params().max_send_data_segment_length,
                                   p.initiator->numbers()->params.first_burst_length});
            switch ((edtl_mode >> 3) & 3) {
            case 1:
                n = 0;
                break;
            case 2:
                n = _in.u16() % 9000;
                break;
            default:
                break;
            }
            if (!parameters.empty()) {
                parameters.resize(n);
                c.immediate_data = std::move(parameters);
            } else {
                c.immediate_data = pattern(n, uint8_t(lba));
            }
            c.final_bit = !(flags & 1) || c.immediate_data.size() >= c.edtl; // F=0: unsolicited data follows
        }
        c.immediate = (flags & 2) != 0;
        if (flags & 4 && !_tasks.empty()) {
            c.itt = _tasks.back().itt; // a tag already in use
        }
        if ((edtl_mode >> 5) == 7) {
            c.cmd_sn = _in.u32(); // outside the window, or a duplicate
        }
        if ((edtl_mode >> 5) == 6) {
            c.read = !c.read; // the R and W bits the CDB does not imply
            c.write = !c.write;
        }
        send_command(p, which, c);
    }

    void raw_cdb(Peer& p, size_t which) {
        Command c;
        auto cdb = _in.bytes(16);
        std::copy(cdb.begin(), cdb.end(), c.cdb.begin());
        uint8_t flags = _in.u8();
        c.read = flags & 1;
        c.write = flags & 2;
        c.immediate = flags & 4;
        c.lun = lun_field_from(flags >> 4);
        c.edtl = _in.u16();
        c.immediate_data = _in.bytes(_in.u8());
        c.final_bit = !(flags & 8);
        send_command(p, which, c);
    }

    void send_command(Peer& p, size_t which, const Command& c) {
        uint32_t itt = p.initiator->command(c);
        _tasks.push_back({itt, c.edtl, c.lun, which});
        _edtl[itt] = std::max(_edtl[itt], c.edtl);
    }

    Task* task_from(uint8_t b) {
        if (_tasks.empty()) {
            return nullptr;
        }
        return &_tasks[_tasks.size() - 1 - b % _tasks.size()];
    }

    // ---- Data-Out, R2Ts ----

    void data_out(Peer& p) {
        uint8_t pick = _in.u8();
        uint8_t mode = _in.u8();
        Task* t = task_from(pick);
        uint32_t itt = t ? t->itt : _in.u32();
        uint64_t lun = t ? t->lun : 0;
        uint32_t ttt = iscsi::reserved_tag; // unsolicited
        uint32_t offset = 0;
        const iscsi::R2t* r2t = nullptr;
        for (const auto& r : _r2ts) {
            if (r.itt == itt) {
                r2t = &r;
            }
        }
        switch (mode & 3) {
        case 1:
            if (r2t) {
                ttt = r2t->ttt;
                offset = r2t->buffer_offset;
            }
            break;
        case 2:
            ttt = _in.u32();
            break;
        default:
            break;
        }
        if (mode & 4) {
            offset = _in.u32();
        } else {
            offset += uint32_t(_in.u8()) * block_size;
        }
        uint32_t length = _in.u16() % 9000;
        uint32_t data_sn = _in.u8();
        p.initiator->data_out(itt, ttt, data_sn, offset, pattern(length, uint8_t(offset)), (mode & 8) == 0,
                              lun);
    }

    // The R2Ts received so far, answered with what they ask (all of them, or only the oldest).
    void answer_r2ts(Peer& p) {
        bool all = _in.u8() & 1;
        while (!_r2ts.empty()) {
            iscsi::R2t r2t = _r2ts.front();
            _r2ts.erase(_r2ts.begin());
            uint64_t end = uint64_t(r2t.buffer_offset) + r2t.desired_data_transfer_length;
            if (end <= (1u << 20)) {
                p.initiator->answer_r2t(r2t, pattern(size_t(end), 7));
            }
            if (!all) {
                break;
            }
        }
    }

    // ---- Other requests ----

    void nop(Peer& p) {
        uint8_t mode = _in.u8();
        switch (mode & 3) {
        case 0:
            p.initiator->nop_out(pattern(size_t(_in.u8()) * 33, mode), (mode & 4) != 0);
            break;
        case 1:
            p.initiator->nop_reply(_ping_ttt);
            break;
        case 2:
            p.initiator->nop_reply(_in.u32());
            break;
        default: { // ITT reserved without the I bit, or a TTT and an ITT both set
            iscsi::Bhs bhs;
            bhs.bytes[0] = uint8_t(iscsi::Opcode::nop_out) | ((mode & 4) ? 0x40 : 0);
            bhs.bytes[1] = 0x80;
            store_be32(&bhs.bytes[16], (mode & 8) ? iscsi::reserved_tag : 0x77);
            store_be32(&bhs.bytes[20], (mode & 16) ? _ping_ttt : iscsi::reserved_tag);
            store_be32(&bhs.bytes[24], p.initiator->numbers()->cmd_sn);
            store_be32(&bhs.bytes[28], p.initiator->exp_stat_sn());
            p.initiator->send(bhs);
            break;
        }
        }
    }

    void tmf(Peer& p) {
        uint8_t function = _in.u8() % 10; // 0 and 9 are not functions
        uint8_t pick = _in.u8();
        uint8_t mode = _in.u8();
        Task* t = task_from(pick);
        uint32_t itt = t && !(mode & 1) ? t->itt : (mode & 2 ? iscsi::reserved_tag : _in.u32());
        uint64_t lun = t ? t->lun : lun_field(0);
        std::optional<uint32_t> ref = (mode & 4) ? std::optional<uint32_t>(_in.u32()) : std::nullopt;
        const FakeInitiator& origin = t ? *_peers[t->peer].initiator : *p.initiator;
        if (!ref) {
            ref = origin.cmd_sn_of(itt);
        }
        if (iscsi::TmfFunction(function) == iscsi::TmfFunction::task_reassign) {
            _reassigned.insert(itt);
        }
        p.initiator->tmf(iscsi::TmfFunction(function), lun, itt, ref, (mode & 8) == 0, _in.u8());
    }

    void text(Peer& p) {
        uint8_t mode = _in.u8();
        iscsi::KeyValueList keys;
        switch (mode & 3) {
        case 0:
            keys.push_back({"SendTargets", "All"});
            break;
        case 1:
            // Only down to what the login declared: the FakeInitiator's reader keeps the login's limit,
            // and the target may use a larger one from the end of this exchange on.
            keys.push_back({"MaxRecvDataSegmentLength",
                            std::to_string(std::min(512u << (_in.u8() % 10),
                                                    _login.negotiation.max_recv_data_segment_length))});
            break;
        case 2: {
            auto key = _in.bytes(_in.u8() % 16);
            auto value = _in.bytes(_in.u8() % 16);
            std::string k(key.begin(), key.end());
            std::string v(value.begin(), value.end());
            if (k == "MaxRecvDataSegmentLength" &&
                std::strtoull(v.c_str(), nullptr, 0) > _login.negotiation.max_recv_data_segment_length) {
                v = std::to_string(_login.negotiation.max_recv_data_segment_length); // as above
            }
            keys.push_back({k, v});
            break;
        }
        default:
            break; // an empty request: continues a response that had more
        }
        uint32_t ttt = (mode & 4) ? _text_ttt : iscsi::reserved_tag;
        p.initiator->text(keys, ttt, (mode & 8) != 0);
    }

    void logout(Peer& p) {
        uint8_t mode = _in.u8();
        auto reason = iscsi::LogoutReason(mode % 3);
        std::optional<uint16_t> cid;
        if (mode & 4) {
            cid = uint16_t(_in.u8() % 4);
        }
        p.initiator->logout(reason, cid, (mode & 8) != 0);
    }

    void snack(Peer& p) {
        uint8_t mode = _in.u8();
        Task* t = task_from(_in.u8());
        iscsi::Bhs bhs;
        bhs.bytes[0] = uint8_t(iscsi::Opcode::snack_request);
        bhs.bytes[1] = uint8_t(0x80 | (mode % 5)); // type 4 is none
        store_be64(&bhs.bytes[8], t ? t->lun : 0);
        store_be32(&bhs.bytes[16], t && !(mode & 8) ? t->itt : (mode & 16 ? iscsi::reserved_tag : _in.u32()));
        store_be32(&bhs.bytes[20], (mode & 32) ? _in.u32() : iscsi::reserved_tag); // TTT / SNACK Tag
        store_be32(&bhs.bytes[28], p.initiator->exp_stat_sn() - ((mode & 64) ? _in.u8() : 0));
        store_be32(&bhs.bytes[40], (mode & 128) ? _in.u32() : _in.u8()); // BegRun
        store_be32(&bhs.bytes[44], (mode & 128) ? _in.u32() : _in.u8()); // RunLength
        ++_snacks;
        p.initiator->send(bhs);
    }

    // Any header of an initiator opcode, and a data segment of the length it declares (or not).
    void raw_pdu(Peer& p, size_t which) {
        static constexpr uint8_t opcodes[] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05,
                                              0x06, 0x10, 0x1c, 0x1d, 0x1e, 0x3f};
        iscsi::Bhs bhs;
        auto header = _in.bytes(iscsi::bhs_size);
        std::copy(header.begin(), header.end(), bhs.bytes.begin());
        bhs.bytes[0] = uint8_t((bhs.bytes[0] & 0x40) | opcodes[bhs.bytes[0] % std::size(opcodes)]);
        uint8_t mode = _in.u8();
        if (!(mode & 1)) {
            bhs.bytes[4] = 0; // TotalAHSLength that matches what is sent
        }
        std::vector<uint8_t> data = pattern(size_t(_in.u8()) * 5, mode);
        if (!(mode & 2)) {
            store_be32(&bhs.bytes[4], uint32_t(bhs.bytes[4]) << 24 | uint32_t(data.size()));
        }
        if (bhs.opcode() == iscsi::Opcode::scsi_command) {
            uint32_t itt = bhs.itt();
            _tasks.push_back({itt, load_be32(&bhs.bytes[20]), load_be64(&bhs.bytes[8]), which});
            _edtl[itt] = std::max(_edtl[itt], load_be32(&bhs.bytes[20]));
        }
        if (bhs.opcode() == iscsi::Opcode::snack_request) {
            ++_snacks;
        }
        if (bhs.opcode() == iscsi::Opcode::task_mgmt_request &&
            (bhs.bytes[1] & 0x7f) == uint8_t(iscsi::TmfFunction::task_reassign)) {
            _reassigned.insert(load_be32(&bhs.bytes[20])); // Referenced Task Tag
        }
        p.initiator->send(bhs, data);
    }

    // ---- Connections ----

    bool open_new_session() {
        FakeInitiator& first = _h.connect();
        Watch* w = watch(first);
        LoginResult r = first.login(_login);
        w->max_burst_length = r.ok() ? r.session.max_burst_length : 0;
        _peers.push_back({&first, false});
        if (verbose()) {
            std::fprintf(stderr, "-- login: %s %s\n", r.ok() ? "ok" : "refused", r.reason.c_str());
        }
        if (!r.ok()) {
            return false;
        }
        // The new nexus's unit attentions (power on, one per LUN) are taken first, so that the input's
        // commands reach the paths behind them; later sessions keep theirs.
        for (uint64_t lun : {0, 1}) {
            Command tur;
            tur.cdb = test_unit_ready();
            tur.lun = lun_field(lun);
            first.command(tur);
        }
        for (auto& pdu : first.drain()) {
            check(pdu);
        }
        return true;
    }

    // A new connection: joins the session (MC/S), reinstates a connection (its CID), reinstates the
    // session (same ISID, TSIH 0), or starts another session.
    void reconnect(size_t which) {
        uint8_t mode = _in.u8();
        if (_peers.size() >= max_connections) {
            return;
        }
        Peer& old = _peers[which];
        FakeInitiator* origin = old.initiator;
        LoginOptions o = _login;
        bool shares_numbers = (mode & 3) != 2 && (mode & 3) != 3;
        // On the other reactor: a connection joining a session is handed over to the session's.
        FakeInitiator& fresh = _h.connect(
            {.reactor = (mode & 8) ? 1u : 0u, .numbers = shares_numbers ? origin->numbers() : nullptr});
        Watch* w = watch(fresh);
        if ((mode & 3) == 3 && (mode & 32)) {
            login_by_hand(fresh);
            _peers.push_back({&fresh, false});
            return;
        }
        LoginResult r;
        switch (mode & 3) {
        case 0: // another connection of the session, a CID not in use
            r = fresh.join(*origin, uint16_t(_peers.size()), o);
            break;
        case 1: // the same CID: connection reinstatement
            if (!old.closed && (mode & 4)) {
                origin->close();
                old.closed = true;
            }
            o.exp_stat_sn = origin->exp_stat_sn();
            r = fresh.join(*origin, origin->cid(), o);
            break;
        case 2: // the same ISID, TSIH 0: session reinstatement
            o.isid = origin->isid();
            r = fresh.login(o);
            break;
        default: // another session: a normal one, or a discovery session
            o.isid = 0x400000000100ULL + _peers.size();
            if (mode & 16) {
                o.session_type = iscsi::SessionType::discovery;
                o.target_name.clear();
            }
            r = fresh.login(o);
            break;
        }
        if (verbose()) {
            std::fprintf(stderr, "-- reconnect mode %u: %s %s\n", mode & 3, r.ok() ? "ok" : "refused",
                         r.reason.c_str());
        }
        w->max_burst_length = r.ok() ? fresh.numbers()->params.max_burst_length : 0;
        _peers.push_back({&fresh, !r.ok()});
    }

    // Up to three Login Requests with any header (opcode and I bit kept) and a text that starts as a
    // real first request does or is the input's bytes; the connection then stays in the actions' reach
    // whatever state its login is left in, so full feature phase PDUs meet a login in progress too.
    void login_by_hand(FakeInitiator& fresh) {
        uint8_t count = 1 + _in.u8() % 3;
        for (uint8_t n = 0; n < count; ++n) {
            iscsi::Bhs bhs;
            auto header = _in.bytes(iscsi::bhs_size);
            std::copy(header.begin(), header.end(), bhs.bytes.begin());
            bhs.bytes[0] = uint8_t(iscsi::Opcode::login_request) | 0x40;
            bhs.bytes[4] = 0;
            std::vector<uint8_t> text;
            if (_in.u8() & 1) {
                iscsi::KeyValueList keys = {
                    {"InitiatorName", initiator_iqn}, {"SessionType", "Normal"}, {"TargetName", target_iqn}};
                text = iscsi::encode_text(keys);
            }
            auto more = _in.bytes(_in.u8() % 64);
            text.insert(text.end(), more.begin(), more.end());
            store_be32(&bhs.bytes[4], uint32_t(text.size()));
            fresh.send(bhs, text);
            _h.settle();
            for (auto& pdu : fresh.drain()) {
                check(pdu);
            }
        }
    }

    // ---- What the target sends ----

    // Follows every PDU the target sends on `initiator`'s connection, from its first Login Response on.
    Watch* watch(FakeInitiator& initiator) {
        _watches.push_back(std::make_unique<Watch>());
        Watch* w = _watches.back().get();
        w->numbers = initiator.numbers().get();
        w->index = _watches.size() - 1;
        _watched.push_back(&initiator);
        initiator.observe([this, w](const InPdu& pdu) { sequence(*w, pdu); });
        return w;
    }

    // RFC 7143's sequence numbers of what the target sends, each rule as the RFC states it for the target
    // and only where nothing the input does (SNACKs, TASK REASSIGN, MC/S, reinstatement, pings) allows
    // otherwise.
    void sequence(Watch& w, const InPdu& pdu) {
        if (iscsi::is_initiator_opcode(pdu.bhs.raw_opcode())) {
            return; // check() traps on it
        }
        const uint8_t* b = pdu.bhs.bytes.data();
        iscsi::Opcode op = pdu.opcode();
        uint32_t itt = pdu.bhs.itt();
        uint32_t stat_sn = load_be32(b + 24);
        if (verbose()) {
            std::fprintf(stderr, "-- watch %zu: %s StatSN %u ExpCmdSN %u MaxCmdSN %u\n", w.index,
                         pdu.describe().c_str(), stat_sn, load_be32(b + 28), load_be32(b + 32));
        }
        bool login = op == iscsi::Opcode::login_response;
        // Login Response: its StatSN "is only valid if the Status-Class is 0" (§11.13); the command
        // window is taken only from the response that ends the login (T=1, NSG=3, success).
        bool login_ok = login && b[36] == 0;
        bool login_final = login_ok && (b[1] & 0x80) != 0 && (b[1] & 0x03) == 3;
        if (!login || login_final) {
            window(w, pdu, load_be32(b + 28), load_be32(b + 32));
        }

        // StatSN, per connection (§4.2.2.2): "Responses/statuses are numbered by StatSN ... on a
        // connection"; the first Login Response sets the start, and "the next response of any kind --
        // including the next Login Response, if any, in the same Login Phase -- will carry this number
        // + 1" (§11.13). Numbered: every response that carries status — SCSI Response, Data-In with
        // S=1 (§11.7: StatSN has meaningful content only with S), TMF, Text, Logout Responses, a NOP-In
        // that answers a NOP-Out, a Reject ("the StatSN is advanced after a Reject", §11.17). Not
        // numbered but carrying "the next StatSN": an R2T (§11.8: "The StatSN for this connection is not
        // advanced after this PDU is sent") and a NOP-In with ITT 0xffffffff (§11.19: "when the
        // Initiator Task Tag is set to 0xffffffff, the StatSN for the connection is not advanced").
        // Going back is a retransmission, which only a SNACK asks for: "the numbered-response(s) ...
        // requested by a SNACK MUST be delivered as exact replicas of the ones that the target
        // transmitted originally except for the fields ExpCmdSN, MaxCmdSN, and ExpDataSN" (§11.16),
        // so it carries the StatSN and ITT of a response already sent here, and comes back once at most
        // for each SNACK. (A status acknowledged with DataACK may come back as a SCSI Response instead of
        // its Data-In: same ITT, same StatSN.)
        bool numbered = false;
        bool carries_next = false;
        switch (op) {
        case iscsi::Opcode::scsi_response:
        case iscsi::Opcode::task_mgmt_response:
        case iscsi::Opcode::text_response:
        case iscsi::Opcode::logout_response:
        case iscsi::Opcode::reject:
            numbered = true;
            break;
        case iscsi::Opcode::login_response:
            numbered = login_ok;
            if (!login_ok) {
                w.next_stat_sn.reset(); // not valid; the connection ends
            }
            break;
        case iscsi::Opcode::nop_in:
            numbered = itt != iscsi::reserved_tag;
            carries_next = !numbered;
            break;
        case iscsi::Opcode::data_in:
            numbered = (b[1] & 0x01) != 0;
            break;
        case iscsi::Opcode::r2t:
            carries_next = true;
            break;
        case iscsi::Opcode::async_message:
            // Not sent by this target; whether it takes a StatSN is left open here.
            w.next_stat_sn.reset();
            break;
        default:
            break;
        }
        if (carries_next && w.next_stat_sn && stat_sn != *w.next_stat_sn) {
            trap(fmt::format("StatSN {} where the connection's next StatSN is {}: {}", stat_sn,
                             *w.next_stat_sn, pdu.describe()));
        }
        if (numbered) {
            if (!w.next_stat_sn || stat_sn == *w.next_stat_sn) {
                w.next_stat_sn = stat_sn + 1;
                if (w.numbered.size() < 100000) {
                    w.numbered[stat_sn] = {itt, 0};
                }
            } else if (iscsi::sn_lt(stat_sn, *w.next_stat_sn)) {
                auto sent = w.numbered.find(stat_sn);
                if (sent == w.numbered.end() && w.numbered.size() >= 100000) {
                    // not recorded (bound): nothing to compare with
                } else if (sent == w.numbered.end()) {
                    trap(fmt::format("StatSN {} goes back (next {}) to a response never sent on this "
                                     "connection: {}",
                                     stat_sn, *w.next_stat_sn, pdu.describe()));
                } else if (sent->second.itt != itt) {
                    trap(fmt::format("StatSN {} sent again for ITT {:#x}, first sent for ITT {:#x}: {}",
                                     stat_sn, itt, sent->second.itt, pdu.describe()));
                } else if (++sent->second.resends > _snacks) {
                    // Each SNACK has a response sent again once at most. (Counted from the start: the
                    // SNACK may have gone before the initiator read the response it asks for.)
                    trap(fmt::format("StatSN {} sent again (next {}) for the {}th time after {} SNACKs: {}",
                                     stat_sn, *w.next_stat_sn, sent->second.resends, _snacks,
                                     pdu.describe()));
                }
            } else {
                trap(fmt::format("StatSN {} skips ahead of the connection's next StatSN {}: {}", stat_sn,
                                 *w.next_stat_sn, pdu.describe()));
            }
        }

        // R2T (§11.8): "The Desired Data Transfer Length MUST NOT be 0 and MUST NOT exceed
        // MaxBurstLength."
        if (op == iscsi::Opcode::r2t && w.max_burst_length != 0) {
            uint32_t desired = load_be32(b + 44);
            if (desired == 0 || desired > w.max_burst_length) {
                trap(fmt::format("an R2T asks for {} bytes (MaxBurstLength {}): {}", desired,
                                 w.max_burst_length, pdu.describe()));
            }
        }

        // DataSN and R2TSN, per task (§4.2.2.3): "For input (read) data PDUs, DataSN starts with 0 for
        // the first data PDU of an input command and advances by 1 for each subsequent data PDU"; "the
        // first R2T has an R2TSN of 0 and advances by 1 for each subsequent R2T" (one sequence for both
        // in a bidirectional command). So none skips one: each is at most one past the highest its task
        // had. That holds too for resends (replicas, §11.16), an ITT used again by a later command,
        // and, as counted per (session, ITT), for two commands given one ITT. Only a TASK REASSIGN lets
        // a task resume where the initiator's ExpDataSN says (§11.5), which the input may make up: an
        // ITT a TASK REASSIGN named is not checked for skips from then on.
        if (op == iscsi::Opcode::data_in || op == iscsi::Opcode::r2t) {
            uint32_t sn = load_be32(b + 36);
            auto key = std::make_pair(w.numbers, itt);
            auto it = _next_data_sn.find(key);
            uint32_t next = it == _next_data_sn.end() ? 0 : it->second;
            if (sn > next && _reassigned.count(itt) == 0) {
                trap(fmt::format("{} {} skips ahead of the task's next {}: {}",
                                 op == iscsi::Opcode::r2t ? "R2TSN" : "DataSN", sn, next, pdu.describe()));
            }
            if (sn >= next && sn != UINT32_MAX) {
                _next_data_sn[key] = sn + 1;
            }
        }
    }

    // ExpCmdSN and MaxCmdSN (§4.2.2.1): "The target MUST NOT transmit a MaxCmdSN that is less than
    // ExpCmdSN - 1" (serial arithmetic, RFC 1982). Neither goes back on one connection: ExpCmdSN
    // acknowledges every command before it, and a MaxCmdSN below one announced closes the window on
    // commands the initiator may already have sent, which "the target MUST silently ignore"; retransmitted
    // PDUs too "MUST carry the current values" (§11.16). Across connections a PDU may carry older
    // values: the initiator takes the highest "because updates may arrive out of order (e.g., the updates
    // are sent on different TCP connections)" (§4.2.2.1), so that is not checked.
    void window(Watch& w, const InPdu& pdu, uint32_t exp_cmd_sn, uint32_t max_cmd_sn) {
        if (iscsi::sn_lt(max_cmd_sn, exp_cmd_sn - 1)) {
            trap(fmt::format("MaxCmdSN {} is less than ExpCmdSN {} - 1: {}", max_cmd_sn, exp_cmd_sn,
                             pdu.describe()));
        }
        if (w.exp_cmd_sn && iscsi::sn_lt(exp_cmd_sn, *w.exp_cmd_sn)) {
            trap(fmt::format("ExpCmdSN {} goes back on a connection that sent {}: {}", exp_cmd_sn,
                             *w.exp_cmd_sn, pdu.describe()));
        }
        if (w.max_cmd_sn && iscsi::sn_lt(max_cmd_sn, *w.max_cmd_sn)) {
            trap(fmt::format("MaxCmdSN {} goes back on a connection that sent {}: {}", max_cmd_sn,
                             *w.max_cmd_sn, pdu.describe()));
        }
        w.exp_cmd_sn = exp_cmd_sn;
        w.max_cmd_sn = max_cmd_sn;
    }

    void settle_all() {
        for (auto& p : _peers) {
            for (auto& pdu : p.initiator->drain()) {
                check(pdu);
                note(pdu);
            }
        }
    }

    void check(const InPdu& pdu) {
        uint8_t op = pdu.bhs.raw_opcode();
        if (iscsi::is_initiator_opcode(op)) {
            trap("the target sent an initiator opcode: " + pdu.describe());
        }
        auto fail = [&](const auto& decoded) {
            if (!decoded) {
                trap("the target sent a PDU that does not decode: " + pdu.describe() + ": " +
                     decoded.error().message);
            }
        };
        switch (pdu.opcode()) {
        case iscsi::Opcode::data_in: {
            auto d = iscsi::DataIn::decode(pdu.bhs);
            fail(d);
            auto known = _edtl.find(d->itt);
            if (known == _edtl.end()) {
                trap("a Data-In for an ITT never sent: " + pdu.describe());
            }
            if (uint64_t(d->buffer_offset) + pdu.data.size() > known->second) {
                trap(fmt::format("a Data-In past the EDTL ({}): {}", known->second, pdu.describe()));
            }
            break;
        }
        case iscsi::Opcode::scsi_response:
            fail(iscsi::ScsiResponse::decode(pdu.bhs));
            break;
        case iscsi::Opcode::r2t:
            fail(iscsi::R2t::decode(pdu.bhs));
            break;
        case iscsi::Opcode::nop_in:
            fail(iscsi::NopIn::decode(pdu.bhs));
            break;
        case iscsi::Opcode::task_mgmt_response:
            fail(iscsi::TaskMgmtResponse::decode(pdu.bhs));
            break;
        case iscsi::Opcode::logout_response:
            fail(iscsi::LogoutResponse::decode(pdu.bhs));
            break;
        case iscsi::Opcode::text_response:
            fail(iscsi::TextResponse::decode(pdu.bhs));
            break;
        case iscsi::Opcode::reject:
            fail(iscsi::Reject::decode(pdu.bhs));
            break;
        case iscsi::Opcode::async_message:
            fail(iscsi::AsyncMessage::decode(pdu.bhs));
            break;
        default:
            break;
        }
    }

    void note(const InPdu& pdu) {
        switch (pdu.opcode()) {
        case iscsi::Opcode::r2t:
            if (_r2ts.size() < 64) {
                _r2ts.push_back(pdu.as<iscsi::R2t>());
            }
            break;
        case iscsi::Opcode::nop_in:
            if (load_be32(&pdu.bhs.bytes[20]) != iscsi::reserved_tag) {
                _ping_ttt = load_be32(&pdu.bhs.bytes[20]);
            }
            break;
        case iscsi::Opcode::text_response:
            _text_ttt = load_be32(&pdu.bhs.bytes[20]);
            break;
        default:
            break;
        }
    }

    Harness& _h;
    Input& _in;
    LoginOptions _login;
    bool _ping_wait;                           // one wait of 120 ms may still come
    std::chrono::milliseconds _short_waits{0}; // what the 8 ms waits took
    std::vector<Peer> _peers;
    std::vector<Task> _tasks;
    std::map<uint32_t, uint32_t> _edtl; // ITT -> the largest EDTL sent with it
    std::vector<iscsi::R2t> _r2ts;
    uint32_t _ping_ttt = iscsi::reserved_tag;
    uint32_t _text_ttt = iscsi::reserved_tag;

    // Sequence numbers (Run::sequence).
    std::vector<std::unique_ptr<Watch>> _watches;
    std::vector<FakeInitiator*> _watched;
    uint64_t _snacks = 0; // SNACK Requests sent, on any connection
    // Per task (the session's numbers, ITT): the DataSN/R2TSN the next new Data-In or R2T carries.
    std::map<std::pair<const SessionNumbers*, uint32_t>, uint32_t> _next_data_sn;
    std::set<uint32_t> _reassigned; // ITTs a TASK REASSIGN named: their Data-In/R2Ts may resume anywhere
};

LoginOptions offer_from(uint8_t o) {
    LoginOptions login;
    auto& n = login.negotiation;
    n.error_recovery_level = uint8_t(std::min(o & 3, 2));
    if (o & 4) {
        n.header_digests = {iscsi::Digest::crc32c};
    }
    if (o & 8) {
        n.data_digests = {iscsi::Digest::crc32c};
    }
    n.initial_r2t = !(o & 16);
    n.immediate_data = !(o & 32);
    if (o & 64) {
        n.max_recv_data_segment_length = 512;
    }
    if (o & 128) {
        n.max_burst_length = 4096;
        n.first_burst_length = 1024;
        n.max_outstanding_r2t = 2;
    }
    n.max_connections = 4;
    n.default_time2wait = 0;
    n.default_time2retain = 1;
    return login;
}

void configure_target(ServerConfig& c, uint8_t t) {
    static constexpr uint32_t windows[] = {8, 1, 2, 32};
    c.limits.queue_depth = windows[t & 3];
    if (t & 4) {
        c.limits.buffer_memory = 16 * 1024;
    }
    if (t & 8) {
        c.negotiation.initial_r2t = true;
    }
    if (t & 16) {
        c.negotiation.data_pdu_in_order = false;
        c.negotiation.data_sequence_in_order = false;
    }
    if (t & 32) {
        c.limits.max_transfer_bytes = 64 * 1024;
    }
    c.negotiation.default_time2wait = 0;
    c.negotiation.default_time2retain = 1;
    c.limits.nop_interval = std::chrono::milliseconds(100); // the least the daemon allows
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    ::testing::UnitTest::GetInstance()->listeners().Append(new TrapOnFailure);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Input in(data, size);
    LoginOptions login = offer_from(in.u8());
    uint8_t target = in.u8();
    if (login.negotiation.data_pdu_in_order && (target & 16)) {
        login.negotiation.data_pdu_in_order = false;
        login.negotiation.data_sequence_in_order = false;
    }
    Harness h([target](ServerConfig& c) { configure_target(c, target); });
    set_log_level(verbose() ? LogLevel::debug : LogLevel::off);
    if (target & 64) {
        login.negotiation.default_time2retain = 0;
    }
    Run run(h, in, std::move(login), (target & 128) != 0);
    run.go();
    run.probe();
    run.end();
    return 0;
}
