#include "fake_initiator.hpp"

#include "common/bytes.hpp"
#include "iscsi/chap.hpp"

#include <algorithm>

namespace ispace::iscsi_target::test {

iscsi::NegotiationConfig LoginOptions::default_negotiation() {
    iscsi::NegotiationConfig n;
    n.header_digests = {iscsi::Digest::none};
    n.data_digests = {iscsi::Digest::none};
    n.max_recv_data_segment_length = 65536;
    n.max_burst_length = 262144;
    n.first_burst_length = 65536;
    n.initial_r2t = true;
    n.immediate_data = true;
    n.max_connections = 1;
    n.max_outstanding_r2t = 1;
    return n;
}

std::array<uint8_t, 16> test_unit_ready() {
    return {};
}

std::array<uint8_t, 16> read10(uint32_t lba, uint16_t blocks) {
    std::array<uint8_t, 16> cdb{};
    cdb[0] = 0x28;
    store_be32(&cdb[2], lba);
    store_be16(&cdb[7], blocks);
    return cdb;
}

std::array<uint8_t, 16> write10(uint32_t lba, uint16_t blocks) {
    std::array<uint8_t, 16> cdb{};
    cdb[0] = 0x2a;
    store_be32(&cdb[2], lba);
    store_be16(&cdb[7], blocks);
    return cdb;
}

std::vector<uint8_t> pattern(size_t bytes, uint8_t seed) {
    std::vector<uint8_t> out(bytes);
    for (size_t i = 0; i < bytes; ++i) {
        out[i] = uint8_t(seed + i * 7 + (i >> 9));
    }
    return out;
}

FakeInitiator::FakeInitiator(std::shared_ptr<Wire> wire, std::function<void()> settle,
                             std::shared_ptr<SessionNumbers> numbers)
    : _wire(std::move(wire)), _settle(std::move(settle)), _numbers(std::move(numbers)), _reader(*this) {}

// ---- Login -------------------------------------------------------------------------------------------

LoginResult FakeInitiator::login(LoginOptions options) {
    iscsi::InitiatorLoginConfig config;
    config.initiator_name = options.initiator_name;
    config.target_name = options.target_name;
    config.session_type = options.session_type;
    config.isid = iscsi::isid_from_u64(options.isid);
    config.tsih = options.tsih;
    config.cid = options.cid;
    config.exp_stat_sn = options.exp_stat_sn;
    config.cmd_sn = _numbers->cmd_sn; // a login is immediate: the first command reuses it
    config.itt = take_itt();
    config.negotiation = options.negotiation;
    config.extra_keys = options.extra_keys;
    if (options.tsih != 0) {
        config.session = _numbers->params;
    }
    if (options.chap) {
        config.auth_methods = {std::string(iscsi::auth_method_chap)};
        iscsi::ChapCredentials credentials = *options.chap;
        config.make_authenticator = [credentials](std::string_view) {
            iscsi::ChapInitiatorConfig chap;
            chap.credentials = credentials;
            return iscsi::make_chap_initiator_authenticator(std::move(chap));
        };
    }
    _cid = options.cid;
    _isid = options.isid;
    return run_login(std::move(config));
}

LoginResult FakeInitiator::join(const FakeInitiator& leading, uint16_t cid, LoginOptions options) {
    options.tsih = leading._numbers->tsih;
    options.isid = leading._isid;
    options.cid = cid;
    return login(std::move(options));
}

LoginResult FakeInitiator::run_login(iscsi::InitiatorLoginConfig config) {
    LoginResult result;
    _login = std::make_unique<iscsi::InitiatorLogin>(std::move(config));
    auto first = _login->start();
    if (!first) {
        result.reason = first.error().message;
        _login.reset();
        return result;
    }
    send_login_pdu(*first);
    for (int round = 0; round < 64; ++round) {
        _login_answered = false;
        _login_next.reset();
        _settle();
        pump();
        if (!_login_answered) {
            result.reason = "no Login Response";
            break;
        }
        if (!_login_next) {
            break;
        }
        send_login_pdu(*_login_next);
    }
    result.state = _login->state();
    result.status = _login->status();
    if (result.reason.empty()) {
        result.reason = _login->reason();
    }
    if (result.ok()) {
        result.tsih = _login->tsih();
        result.session = _login->session_params();
        result.connection = _login->connection_params();
        result.extra_answers = _login->extra_answers();
        _numbers->tsih = result.tsih;
        _numbers->params = result.session;
        _numbers->exp_cmd_sn = _login->exp_cmd_sn();
        _numbers->max_cmd_sn = _login->max_cmd_sn();
    }
    _login.reset();
    return result;
}

void FakeInitiator::send_login_pdu(const iscsi::LoginRequestPdu& pdu) {
    iscsi::LoginRequest header = pdu.header;
    header.data_segment_length = uint32_t(pdu.data.size());
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, pdu.data);
}

void FakeInitiator::send_login(const iscsi::LoginRequest& request, const iscsi::KeyValueList& keys) {
    std::vector<uint8_t> text = iscsi::encode_text(keys);
    iscsi::LoginRequest header = request;
    header.data_segment_length = uint32_t(text.size());
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, text);
}

// ---- Requests ----------------------------------------------------------------------------------------

uint32_t FakeInitiator::command(const Command& c) {
    iscsi::ScsiCommand header;
    header.immediate = c.immediate;
    header.final_bit = c.final_bit;
    header.read = c.read;
    header.write = c.write;
    header.total_ahs_length = uint8_t(c.ahs.size() / 4);
    header.data_segment_length = uint32_t(c.immediate_data.size());
    header.lun = c.lun;
    header.itt = c.itt ? *c.itt : take_itt();
    header.expected_data_transfer_length = c.edtl;
    header.cmd_sn = c.cmd_sn ? *c.cmd_sn : take_cmd_sn(c.immediate);
    header.exp_stat_sn = c.exp_stat_sn ? *c.exp_stat_sn : _exp_stat_sn;
    header.cdb = c.cdb;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, c.immediate_data, c.ahs);
    _sent_cmd_sns.emplace_back(header.itt, header.cmd_sn);
    return header.itt;
}

void FakeInitiator::data_out(uint32_t itt, uint32_t ttt, uint32_t data_sn, uint32_t offset,
                             std::span<const uint8_t> data, bool final_bit, uint64_t lun) {
    iscsi::DataOut header;
    header.final_bit = final_bit;
    header.data_segment_length = uint32_t(data.size());
    header.lun = lun;
    header.itt = itt;
    header.ttt = ttt;
    header.exp_stat_sn = _exp_stat_sn;
    header.data_sn = data_sn;
    header.buffer_offset = offset;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, data);
}

void FakeInitiator::answer_r2t(const iscsi::R2t& r2t, std::span<const uint8_t> buffer) {
    uint32_t max_segment = _connection.max_send_data_segment_length;
    uint32_t offset = r2t.buffer_offset;
    uint32_t end = r2t.buffer_offset + r2t.desired_data_transfer_length;
    uint32_t data_sn = 0;
    while (offset < end) {
        uint32_t n = std::min(max_segment, end - offset);
        data_out(r2t.itt, r2t.ttt, data_sn++, offset, buffer.subspan(offset, n), offset + n == end, r2t.lun);
        offset += n;
    }
}

uint32_t FakeInitiator::nop_out(std::span<const uint8_t> ping_data, bool immediate) {
    iscsi::NopOut header;
    header.immediate = immediate;
    header.data_segment_length = uint32_t(ping_data.size());
    header.itt = take_itt();
    header.ttt = iscsi::reserved_tag;
    header.cmd_sn = take_cmd_sn(immediate);
    header.exp_stat_sn = _exp_stat_sn;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, ping_data);
    return header.itt;
}

void FakeInitiator::nop_reply(uint32_t ttt) {
    iscsi::NopOut header;
    header.immediate = true;
    header.itt = iscsi::reserved_tag;
    header.ttt = ttt;
    header.cmd_sn = _numbers->cmd_sn;
    header.exp_stat_sn = _exp_stat_sn;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs);
}

uint32_t FakeInitiator::tmf(iscsi::TmfFunction function, uint64_t lun, uint32_t referenced_itt,
                            std::optional<uint32_t> ref_cmd_sn, bool immediate, uint32_t exp_data_sn) {
    iscsi::TaskMgmtRequest header;
    header.immediate = immediate;
    header.function = function;
    header.lun = lun;
    header.itt = take_itt();
    header.referenced_task_tag = referenced_itt;
    header.cmd_sn = take_cmd_sn(immediate);
    header.exp_stat_sn = _exp_stat_sn;
    header.ref_cmd_sn = ref_cmd_sn ? *ref_cmd_sn : cmd_sn_of(referenced_itt);
    header.exp_data_sn = exp_data_sn;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs);
    return header.itt;
}

uint32_t FakeInitiator::logout(iscsi::LogoutReason reason, std::optional<uint16_t> cid, bool immediate) {
    iscsi::LogoutRequest header;
    header.immediate = immediate;
    header.reason = reason;
    header.itt = take_itt();
    header.cid = cid ? *cid : _cid;
    header.cmd_sn = take_cmd_sn(immediate);
    header.exp_stat_sn = _exp_stat_sn;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs);
    return header.itt;
}

uint32_t FakeInitiator::text(const iscsi::KeyValueList& keys, uint32_t ttt, bool immediate) {
    std::vector<uint8_t> data = iscsi::encode_text(keys);
    iscsi::TextRequest header;
    header.immediate = immediate;
    header.final_bit = true;
    header.data_segment_length = uint32_t(data.size());
    header.itt = take_itt();
    header.ttt = ttt;
    header.cmd_sn = take_cmd_sn(immediate);
    header.exp_stat_sn = _exp_stat_sn;
    iscsi::Bhs bhs;
    header.encode(bhs);
    send(bhs, data);
    return header.itt;
}

void FakeInitiator::send(const iscsi::Bhs& bhs, std::span<const uint8_t> data, std::span<const uint8_t> ahs) {
    std::array<uint8_t, iscsi::max_header_size> header{};
    size_t n = iscsi::build_pdu_header(bhs, ahs, _header_digest, header.data());
    _wire->initiator_write(header.data(), n);
    if (!data.empty()) {
        _wire->initiator_write(data.data(), data.size());
        iscsi::DataTrailer trailer = iscsi::make_data_trailer(data, _data_digest);
        if (trailer.size > 0) {
            _wire->initiator_write(trailer.bytes.data(), trailer.size);
        }
    }
}

void FakeInitiator::close() {
    _wire->initiator_close();
}

uint32_t FakeInitiator::cmd_sn_of(uint32_t itt) const {
    for (auto& [sent_itt, cmd_sn] : _sent_cmd_sns) {
        if (sent_itt == itt) {
            return cmd_sn;
        }
    }
    return 0;
}

// ---- Receiving ---------------------------------------------------------------------------------------

void FakeInitiator::pump() {
    if (_wire->to_initiator.empty()) {
        return;
    }
    std::vector<uint8_t> bytes(_wire->to_initiator.begin(), _wire->to_initiator.end());
    _wire->to_initiator.clear();
    _reader.feed(bytes);
}

std::optional<InPdu> FakeInitiator::poll() {
    pump();
    if (_inbox.empty()) {
        return std::nullopt;
    }
    InPdu pdu = std::move(_inbox.front());
    _inbox.pop_front();
    return pdu;
}

std::optional<InPdu> FakeInitiator::next() {
    _settle();
    return poll();
}

std::vector<InPdu> FakeInitiator::drain() {
    _settle();
    pump();
    std::vector<InPdu> all(std::make_move_iterator(_inbox.begin()), std::make_move_iterator(_inbox.end()));
    _inbox.clear();
    return all;
}

bool FakeInitiator::closed_by_target() {
    _settle();
    pump();
    return _wire->target_closed && _wire->to_initiator.empty();
}

void FakeInitiator::pdu_received(iscsi::ReceivedPdu&& pdu) {
    InPdu in;
    in.bhs = pdu.bhs;
    auto segment = pdu.segment();
    in.data.assign(segment.begin(), segment.end());
    if (_observer) {
        _observer(in);
    }
    const uint8_t* b = in.bhs.bytes.data();
    iscsi::Opcode op = in.opcode();
    // Every target PDU carries ExpCmdSN and MaxCmdSN at the same place (RFC 7143 §11).
    if (!iscsi::is_initiator_opcode(in.bhs.raw_opcode()) && op != iscsi::Opcode::async_message) {
        _numbers->exp_cmd_sn = load_be32(b + 28);
        _numbers->max_cmd_sn = load_be32(b + 32);
    }
    bool carries_status = false;
    switch (op) {
    case iscsi::Opcode::scsi_response:
    case iscsi::Opcode::task_mgmt_response:
    case iscsi::Opcode::text_response:
    case iscsi::Opcode::logout_response:
    case iscsi::Opcode::login_response:
    case iscsi::Opcode::reject:
        carries_status = true;
        break;
    case iscsi::Opcode::nop_in:
        carries_status = in.bhs.itt() != iscsi::reserved_tag;
        break;
    case iscsi::Opcode::data_in:
        carries_status = (b[1] & 0x01) != 0;
        break;
    default:
        break;
    }
    if (carries_status) {
        _exp_stat_sn = load_be32(b + 24) + 1;
    }
    if (_login && op == iscsi::Opcode::login_response) {
        auto header = iscsi::LoginResponse::decode(in.bhs);
        if (!header) {
            ADD_FAILURE() << "bad Login Response: " << header.error().message;
            return;
        }
        _login_answered = true;
        _login_next = _login->receive(*header, in.data);
        if (_login->state() == iscsi::LoginState::complete) {
            // Digests and limits apply from the next PDU on (RFC 7143 §6.3).
            _connection = _login->connection_params();
            _header_digest = _connection.header_digest == iscsi::Digest::crc32c;
            _data_digest = _connection.data_digest == iscsi::Digest::crc32c;
            iscsi::ReaderLimits limits;
            limits.max_data_segment_length = _connection.max_recv_data_segment_length;
            limits.header_digest = _header_digest;
            limits.data_digest = _data_digest;
            _reader.set_limits(limits);
        }
        return;
    }
    _inbox.push_back(std::move(in));
}

void FakeInitiator::read_error(const iscsi::ReadError& error) {
    ADD_FAILURE() << "the target sent a PDU the initiator cannot read: " << error.message;
}

} // namespace ispace::iscsi_target::test
