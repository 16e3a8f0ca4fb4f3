// FakeInitiator: the initiator side of one connection to the target front end, for unit tests.
//
// It builds every PDU with the project's codec (iscsi/pdu.hpp), frames what the target sends with the
// same PduReader the target uses, and logs in with the codec's InitiatorLogin, so a test chooses the
// keys it offers (NegotiationConfig, extra keys, CHAP) and sees the target's answers. Nothing is
// hidden: it sends exactly what a test asks for, right or wrong (sequence numbers, tags, offsets and
// flags can all be forced), and keeps every PDU the target sent, in order, for the test to take.
//
// It runs on the test's thread. Sending only queues bytes on the Wire; receiving first lets the
// harness run the reactors until nothing more happens (`settle`), so "the target sent nothing" is a
// fact, not a timeout.
#pragma once

#include "iscsi/chap.hpp"
#include "iscsi/login.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/pdu_reader.hpp"
#include "iscsi/text.hpp"
#include "memory_transport.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ispace::iscsi_target::test {

inline constexpr const char* initiator_iqn = "iqn.2026-01.org.ispace.test:initiator";
inline constexpr const char* target_iqn = "iqn.2026-01.org.ispace.test:target";

// One PDU the target sent.
struct InPdu {
    iscsi::Bhs bhs;
    std::vector<uint8_t> data;

    iscsi::Opcode opcode() const { return bhs.opcode(); }
    // Decodes the header as T (iscsi::ScsiResponse, iscsi::R2t, ...); a decode failure is a test failure.
    template <typename T> T as() const {
        auto decoded = T::decode(bhs);
        if (!decoded) {
            ADD_FAILURE_AT(__FILE__, __LINE__)
                << "cannot decode " << iscsi::describe(bhs) << ": " << decoded.error().message;
            return T{};
        }
        return *decoded;
    }
    std::string describe() const { return iscsi::describe(bhs); }
};

// Session-wide numbering shared by every connection of one session (MC/S shares one CmdSN space).
struct SessionNumbers {
    uint32_t cmd_sn = 1;     // the next CmdSN to use
    uint32_t itt = 0x100;    // the next ITT
    uint32_t exp_cmd_sn = 0; // as last announced by the target
    uint32_t max_cmd_sn = 0;
    uint16_t tsih = 0;
    iscsi::SessionParams params; // negotiated at login
};

struct LoginOptions {
    std::string initiator_name = initiator_iqn;
    std::string target_name = target_iqn;
    iscsi::SessionType session_type = iscsi::SessionType::normal;
    uint64_t isid = 0x400000000001;
    uint16_t tsih = 0; // non-zero: join that session (MC/S)
    uint16_t cid = 0;
    // The first Login Request's ExpStatSN: when the login restarts a connection (its CID), it
    // acknowledges the old connection's responses (RFC 7143 §11.12).
    uint32_t exp_stat_sn = 0;
    iscsi::NegotiationConfig negotiation = default_negotiation();
    std::optional<iscsi::ChapCredentials> chap; // offer CHAP (only) with these credentials
    iscsi::KeyValueList extra_keys;

    // What the tests offer unless they say otherwise: no digests, the RFC's burst sizes, one R2T.
    static iscsi::NegotiationConfig default_negotiation();
};

struct LoginResult {
    iscsi::LoginState state = iscsi::LoginState::failed;
    iscsi::LoginStatus status = iscsi::LoginStatus::success;
    std::string reason;
    uint16_t tsih = 0;
    iscsi::SessionParams session;
    iscsi::ConnectionParams connection;
    iscsi::KeyValueList extra_answers;
    bool ok() const { return state == iscsi::LoginState::complete; }
};

// A SCSI Command as a test wants it sent.
struct Command {
    std::array<uint8_t, 16> cdb{};
    uint64_t lun = 0;
    bool read = false;
    bool write = false;
    uint32_t edtl = 0;
    std::vector<uint8_t> immediate_data;
    bool final_bit = true; // false: unsolicited Data-Out follows
    bool immediate = false;
    std::optional<uint32_t> cmd_sn;      // forced; otherwise the next one (consumed unless immediate)
    std::optional<uint32_t> itt;         // forced; otherwise a new one
    std::optional<uint32_t> exp_stat_sn; // forced; otherwise what the initiator has received
    std::vector<uint8_t> ahs;
};

// CDBs the tests use.
std::array<uint8_t, 16> test_unit_ready();
std::array<uint8_t, 16> read10(uint32_t lba, uint16_t blocks);
std::array<uint8_t, 16> write10(uint32_t lba, uint16_t blocks);
// A recognisable byte pattern.
std::vector<uint8_t> pattern(size_t bytes, uint8_t seed);

class FakeInitiator final : private iscsi::PduSink {
public:
    // `settle` runs the target's reactors until nothing more happens.
    FakeInitiator(std::shared_ptr<Wire> wire, std::function<void()> settle,
                  std::shared_ptr<SessionNumbers> numbers = std::make_shared<SessionNumbers>());
    FakeInitiator(const FakeInitiator&) = delete;
    FakeInitiator& operator=(const FakeInitiator&) = delete;

    // ---- Login ----
    // A whole login with the codec's InitiatorLogin; ends in full feature phase when ok().
    LoginResult login(LoginOptions options = {});
    // Joins the session `leading` is in (same InitiatorName, ISID, TSIH) as connection `cid`.
    LoginResult join(const FakeInitiator& leading, uint16_t cid, LoginOptions options = {});
    // One raw Login Request; the response lands in the inbox like any PDU.
    void send_login(const iscsi::LoginRequest& request, const iscsi::KeyValueList& keys);

    // ---- Requests ----
    // Returns the ITT.
    uint32_t command(const Command& command);
    void data_out(uint32_t itt, uint32_t ttt, uint32_t data_sn, uint32_t offset,
                  std::span<const uint8_t> data, bool final_bit, uint64_t lun = 0);
    // Answers an R2T from `buffer` (the whole write) in PDUs of at most the target's
    // MaxRecvDataSegmentLength, DataSN from 0, F on the last.
    void answer_r2t(const iscsi::R2t& r2t, std::span<const uint8_t> buffer);
    // NOP-Out with an ITT (answer wanted); returns the ITT.
    uint32_t nop_out(std::span<const uint8_t> ping_data = {}, bool immediate = false);
    // NOP-Out answering the target's ping `ttt` (ITT reserved, I=1).
    void nop_reply(uint32_t ttt);
    // Returns the ITT. `ref_cmd_sn` defaults to the CmdSN the referenced command was sent with.
    // `exp_data_sn`: the ExpDataSN field (TASK REASSIGN).
    uint32_t tmf(iscsi::TmfFunction function, uint64_t lun = 0, uint32_t referenced_itt = iscsi::reserved_tag,
                 std::optional<uint32_t> ref_cmd_sn = std::nullopt, bool immediate = true,
                 uint32_t exp_data_sn = 0);
    uint32_t logout(iscsi::LogoutReason reason = iscsi::LogoutReason::close_session,
                    std::optional<uint16_t> cid = std::nullopt, bool immediate = false);
    uint32_t text(const iscsi::KeyValueList& keys, uint32_t ttt = iscsi::reserved_tag,
                  bool immediate = false);
    // Any PDU, digests and padding added as negotiated.
    void send(const iscsi::Bhs& bhs, std::span<const uint8_t> data = {}, std::span<const uint8_t> ahs = {});
    // Closes the initiator's side of the connection (the target reads EOF).
    void close();

    // ---- What the target sent ----
    // Settles, then takes the oldest PDU not yet taken; nullopt when there is none.
    std::optional<InPdu> next();
    // Settles, then takes every PDU not yet taken.
    std::vector<InPdu> drain();
    // Takes what has already arrived, without running the reactors.
    std::optional<InPdu> poll();
    // Settles; true once the target closed this connection and every byte it sent was taken.
    bool closed_by_target();

    // What runs the target while this initiator waits for answers (the harness settles every reactor
    // unless a test freezes some).
    void drive(std::function<void()> settle) { _settle = std::move(settle); }
    // Sees every PDU the target sends on this connection, in the order it was sent, Login Responses
    // included (before the login or the inbox takes them): for checks that follow a whole connection.
    void observe(std::function<void(const InPdu&)> observer) { _observer = std::move(observer); }

    // ---- State ----
    uint16_t cid() const { return _cid; }
    uint64_t isid() const { return _isid; }
    std::shared_ptr<SessionNumbers> numbers() const { return _numbers; }
    const iscsi::ConnectionParams& connection_params() const { return _connection; }
    uint32_t exp_stat_sn() const { return _exp_stat_sn; }
    // The CmdSN a command with this ITT was sent with.
    uint32_t cmd_sn_of(uint32_t itt) const;
    Wire& wire() { return *_wire; }

private:
    // PduSink
    void pdu_received(iscsi::ReceivedPdu&& pdu) override;
    void read_error(const iscsi::ReadError& error) override;

    void pump();
    LoginResult run_login(iscsi::InitiatorLoginConfig config);
    void send_login_pdu(const iscsi::LoginRequestPdu& pdu);
    uint32_t take_itt() { return _numbers->itt++; }
    uint32_t take_cmd_sn(bool immediate) { return immediate ? _numbers->cmd_sn : _numbers->cmd_sn++; }

    std::shared_ptr<Wire> _wire;
    std::function<void()> _settle;
    std::function<void(const InPdu&)> _observer;
    std::shared_ptr<SessionNumbers> _numbers;
    iscsi::PduReader _reader;
    std::deque<InPdu> _inbox;
    std::vector<std::pair<uint32_t, uint32_t>> _sent_cmd_sns; // (itt, cmd_sn)

    uint16_t _cid = 0;
    uint64_t _isid = 0;
    uint32_t _exp_stat_sn = 0;
    iscsi::ConnectionParams _connection; // in force after login (digests, segment limits)
    bool _header_digest = false;
    bool _data_digest = false;

    // During login: the machine, and what its last response produced.
    std::unique_ptr<iscsi::InitiatorLogin> _login;
    bool _login_answered = false;
    std::optional<iscsi::LoginRequestPdu> _login_next;
};

} // namespace ispace::iscsi_target::test
