#include "iscsi/pdu.hpp"

#include "common/bytes.hpp"
#include "iscsi/crc32c.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace ispace::iscsi {

namespace {

// Byte 1 flag bits (RFC numbering: bit 0 is the most significant bit of the byte).
constexpr uint8_t flag_f = 0x80;
constexpr uint8_t flag_c = 0x40;      // Text and Login: Continue
constexpr uint8_t flag_t = 0x80;      // Login: Transit
constexpr uint8_t flag_r = 0x40;      // SCSI Command: Read
constexpr uint8_t flag_w = 0x20;      // SCSI Command: Write
constexpr uint8_t flag_a = 0x40;      // Data-In: Acknowledge
constexpr uint8_t flag_bidi_o = 0x10; // SCSI Response: bidirectional read residual overflow
constexpr uint8_t flag_bidi_u = 0x08; // SCSI Response: bidirectional read residual underflow
constexpr uint8_t flag_o = 0x04;      // residual overflow
constexpr uint8_t flag_u = 0x02;      // residual underflow
constexpr uint8_t flag_s = 0x01;      // Data-In: status present

Error decode_error(std::string message) {
    return make_error(std::move(message), EPROTO);
}

// Starts encoding: everything zero (reserved fields are zero on send), then the fields all PDUs share.
void begin(Bhs& bhs, Opcode op, bool immediate, uint8_t flags, uint32_t data_segment_length) {
    bhs.bytes.fill(0);
    bhs.set_opcode(op, immediate);
    bhs.bytes[1] = flags;
    bhs.set_data_segment_length(data_segment_length);
}

Result<void> check_opcode(const Bhs& bhs, Opcode expected) {
    if (bhs.opcode() != expected) {
        return decode_error(fmt::format("expected a {} PDU, got {}", opcode_name(uint8_t(expected)),
                                        opcode_name(bhs.raw_opcode())));
    }
    return {};
}

Result<void> check_no_data(const Bhs& bhs) {
    if (bhs.data_segment_length() != 0) {
        return decode_error(fmt::format("{} PDU with a data segment ({} bytes); it has none",
                                        opcode_name(bhs.raw_opcode()), bhs.data_segment_length()));
    }
    return {};
}

uint32_t be32_at(const Bhs& bhs, size_t offset) {
    return load_be32(bhs.bytes.data() + offset);
}
void put_be32(Bhs& bhs, size_t offset, uint32_t v) {
    store_be32(bhs.bytes.data() + offset, v);
}
uint16_t be16_at(const Bhs& bhs, size_t offset) {
    return load_be16(bhs.bytes.data() + offset);
}
void put_be16(Bhs& bhs, size_t offset, uint16_t v) {
    store_be16(bhs.bytes.data() + offset, v);
}

// The ISID and TSIH share bytes 8-15 in Login PDUs.
Isid isid_at(const Bhs& bhs) {
    Isid isid;
    std::memcpy(isid.data(), bhs.bytes.data() + 8, isid.size());
    return isid;
}
void put_isid(Bhs& bhs, const Isid& isid) {
    std::memcpy(bhs.bytes.data() + 8, isid.data(), isid.size());
}

// Login stage checks shared by request and response (§11.12.3, §11.13.3).
Result<void> check_login_stages(const char* what, bool transit, bool cont, uint8_t csg, uint8_t nsg) {
    if (csg == 2 || csg == 3) {
        return decode_error(fmt::format("{} with CSG {} (only 0 and 1 are valid during login)", what, csg));
    }
    if (transit && cont) {
        return decode_error(fmt::format("{} with both T and C set", what));
    }
    if (transit && (nsg == 2 || nsg <= csg)) {
        return decode_error(
            fmt::format("{} with T set and an invalid transition from stage {} to {}", what, csg, nsg));
    }
    return {};
}

} // namespace

// ---- Opcodes and the BHS ---------------------------------------------------------------------------

bool is_known_opcode(uint8_t opcode) {
    switch (opcode) {
    case 0x00:
    case 0x01:
    case 0x02:
    case 0x03:
    case 0x04:
    case 0x05:
    case 0x06:
    case 0x10:
    case 0x1c:
    case 0x1d:
    case 0x1e:
    case 0x20:
    case 0x21:
    case 0x22:
    case 0x23:
    case 0x24:
    case 0x25:
    case 0x26:
    case 0x31:
    case 0x32:
    case 0x3c:
    case 0x3d:
    case 0x3e:
    case 0x3f:
        return true;
    default:
        return false;
    }
}

std::string opcode_name(uint8_t opcode) {
    switch (Opcode(opcode)) {
    case Opcode::nop_out:
        return "NOP-Out";
    case Opcode::scsi_command:
        return "SCSI Command";
    case Opcode::task_mgmt_request:
        return "Task Management Request";
    case Opcode::login_request:
        return "Login Request";
    case Opcode::text_request:
        return "Text Request";
    case Opcode::data_out:
        return "Data-Out";
    case Opcode::logout_request:
        return "Logout Request";
    case Opcode::snack_request:
        return "SNACK Request";
    case Opcode::vendor_initiator_1c:
    case Opcode::vendor_initiator_1d:
    case Opcode::vendor_initiator_1e:
        return fmt::format("Vendor Initiator 0x{:02x}", opcode);
    case Opcode::nop_in:
        return "NOP-In";
    case Opcode::scsi_response:
        return "SCSI Response";
    case Opcode::task_mgmt_response:
        return "Task Management Response";
    case Opcode::login_response:
        return "Login Response";
    case Opcode::text_response:
        return "Text Response";
    case Opcode::data_in:
        return "Data-In";
    case Opcode::logout_response:
        return "Logout Response";
    case Opcode::r2t:
        return "R2T";
    case Opcode::async_message:
        return "Async Message";
    case Opcode::vendor_target_3c:
    case Opcode::vendor_target_3d:
    case Opcode::vendor_target_3e:
        return fmt::format("Vendor Target 0x{:02x}", opcode);
    case Opcode::reject:
        return "Reject";
    }
    return fmt::format("opcode 0x{:02x}", opcode);
}

uint32_t Bhs::data_segment_length() const {
    return load_be24(bytes.data() + 5);
}
uint64_t Bhs::lun() const {
    return load_be64(bytes.data() + 8);
}
uint32_t Bhs::itt() const {
    return load_be32(bytes.data() + 16);
}

void Bhs::set_opcode(Opcode op, bool immediate) {
    bytes[0] = uint8_t((immediate ? 0x40 : 0x00) | (uint8_t(op) & 0x3f));
}
void Bhs::set_final_bit(bool f) {
    bytes[1] = uint8_t(f ? (bytes[1] | flag_f) : (bytes[1] & ~flag_f));
}
void Bhs::set_data_segment_length(uint32_t length) {
    store_be24(bytes.data() + 5, length & 0xffffff);
}
void Bhs::set_lun(uint64_t lun) {
    store_be64(bytes.data() + 8, lun);
}
void Bhs::set_itt(uint32_t itt) {
    store_be32(bytes.data() + 16, itt);
}

// ---- Initiator PDUs --------------------------------------------------------------------------------

void ScsiCommand::encode(Bhs& bhs) const {
    uint8_t flags = uint8_t((final_bit ? flag_f : 0) | (read ? flag_r : 0) | (write ? flag_w : 0) |
                            (uint8_t(attr) & 0x07));
    begin(bhs, Opcode::scsi_command, immediate, flags, data_segment_length);
    bhs.set_total_ahs_length(total_ahs_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, expected_data_transfer_length);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
    std::memcpy(bhs.bytes.data() + 32, cdb.data(), cdb.size());
}

Result<ScsiCommand> ScsiCommand::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::scsi_command); !r) {
        return std::move(r).error();
    }
    ScsiCommand c;
    c.immediate = bhs.immediate();
    c.final_bit = (bhs.bytes[1] & flag_f) != 0;
    c.read = (bhs.bytes[1] & flag_r) != 0;
    c.write = (bhs.bytes[1] & flag_w) != 0;
    c.attr = scsi::TaskAttribute(bhs.bytes[1] & 0x07);
    c.total_ahs_length = bhs.total_ahs_length();
    c.data_segment_length = bhs.data_segment_length();
    c.lun = bhs.lun();
    c.itt = bhs.itt();
    c.expected_data_transfer_length = be32_at(bhs, 20);
    c.cmd_sn = be32_at(bhs, 24);
    c.exp_stat_sn = be32_at(bhs, 28);
    std::memcpy(c.cdb.data(), bhs.bytes.data() + 32, c.cdb.size());

    if (!c.final_bit && !c.write) {
        return decode_error("SCSI Command with neither F nor W set (at least one must be 1)");
    }
    if (c.expected_data_transfer_length != 0 && !c.read && !c.write) {
        return decode_error(fmt::format("SCSI Command expects {} bytes but has neither R nor W set",
                                        c.expected_data_transfer_length));
    }
    if (c.data_segment_length != 0 && !c.write) {
        return decode_error(
            fmt::format("SCSI Command carries {} bytes of immediate data without W", c.data_segment_length));
    }
    if (c.data_segment_length > c.expected_data_transfer_length) {
        return decode_error(fmt::format("SCSI Command carries {} bytes of immediate data, more than its "
                                        "expected data transfer length {}",
                                        c.data_segment_length, c.expected_data_transfer_length));
    }
    if (!c.final_bit && c.data_segment_length == c.expected_data_transfer_length) {
        // F=0 announces unsolicited Data-Out, but the immediate data already covers every byte.
        return decode_error(
            fmt::format("SCSI Command with F clear but its immediate data covers all {} bytes",
                        c.expected_data_transfer_length));
    }
    return c;
}

void TaskMgmtRequest::encode(Bhs& bhs) const {
    begin(bhs, Opcode::task_mgmt_request, immediate, uint8_t(flag_f | (uint8_t(function) & 0x7f)), 0);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, referenced_task_tag);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
    put_be32(bhs, 32, ref_cmd_sn);
    put_be32(bhs, 36, exp_data_sn);
}

Result<TaskMgmtRequest> TaskMgmtRequest::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::task_mgmt_request); !r) {
        return std::move(r).error();
    }
    if (auto r = check_no_data(bhs); !r) {
        return std::move(r).error();
    }
    TaskMgmtRequest t;
    t.immediate = bhs.immediate();
    t.function = TmfFunction(bhs.bytes[1] & 0x7f);
    t.lun = bhs.lun();
    t.itt = bhs.itt();
    t.referenced_task_tag = be32_at(bhs, 20);
    t.cmd_sn = be32_at(bhs, 24);
    t.exp_stat_sn = be32_at(bhs, 28);
    t.ref_cmd_sn = be32_at(bhs, 32);
    t.exp_data_sn = be32_at(bhs, 36);
    return t;
}

void DataOut::encode(Bhs& bhs) const {
    begin(bhs, Opcode::data_out, false, final_bit ? flag_f : 0, data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 28, exp_stat_sn);
    put_be32(bhs, 36, data_sn);
    put_be32(bhs, 40, buffer_offset);
}

Result<DataOut> DataOut::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::data_out); !r) {
        return std::move(r).error();
    }
    DataOut d;
    d.final_bit = bhs.final_bit();
    d.data_segment_length = bhs.data_segment_length();
    d.lun = bhs.lun();
    d.itt = bhs.itt();
    d.ttt = be32_at(bhs, 20);
    d.exp_stat_sn = be32_at(bhs, 28);
    d.data_sn = be32_at(bhs, 36);
    d.buffer_offset = be32_at(bhs, 40);
    return d;
}

void TextRequest::encode(Bhs& bhs) const {
    begin(bhs, Opcode::text_request, immediate,
          uint8_t((final_bit ? flag_f : 0) | (continue_bit ? flag_c : 0)), data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
}

Result<TextRequest> TextRequest::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::text_request); !r) {
        return std::move(r).error();
    }
    TextRequest t;
    t.immediate = bhs.immediate();
    t.final_bit = (bhs.bytes[1] & flag_f) != 0;
    t.continue_bit = (bhs.bytes[1] & flag_c) != 0;
    t.data_segment_length = bhs.data_segment_length();
    t.lun = bhs.lun();
    t.itt = bhs.itt();
    t.ttt = be32_at(bhs, 20);
    t.cmd_sn = be32_at(bhs, 24);
    t.exp_stat_sn = be32_at(bhs, 28);
    if (t.final_bit && t.continue_bit) {
        return decode_error("Text Request with both F and C set");
    }
    return t;
}

void LoginRequest::encode(Bhs& bhs) const {
    uint8_t flags = uint8_t((transit ? flag_t : 0) | (continue_bit ? flag_c : 0) | (uint8_t(csg) & 3) << 2 |
                            (transit ? (uint8_t(nsg) & 3) : 0));
    // A Login Request is always immediate (§11.12).
    begin(bhs, Opcode::login_request, true, flags, data_segment_length);
    bhs.bytes[2] = version_max;
    bhs.bytes[3] = version_min;
    put_isid(bhs, isid);
    put_be16(bhs, 14, tsih);
    bhs.set_itt(itt);
    put_be16(bhs, 20, cid);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
}

Result<LoginRequest> LoginRequest::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::login_request); !r) {
        return std::move(r).error();
    }
    uint8_t flags = bhs.bytes[1];
    bool transit = (flags & flag_t) != 0;
    bool cont = (flags & flag_c) != 0;
    uint8_t csg = (flags >> 2) & 3;
    uint8_t nsg = flags & 3;
    if (auto r = check_login_stages("Login Request", transit, cont, csg, nsg); !r) {
        return std::move(r).error();
    }
    LoginRequest l;
    l.transit = transit;
    l.continue_bit = cont;
    l.csg = LoginStage(csg);
    l.nsg = transit ? LoginStage(nsg) : LoginStage(csg);
    l.version_max = bhs.bytes[2];
    l.version_min = bhs.bytes[3];
    l.data_segment_length = bhs.data_segment_length();
    l.isid = isid_at(bhs);
    l.tsih = be16_at(bhs, 14);
    l.itt = bhs.itt();
    l.cid = be16_at(bhs, 20);
    l.cmd_sn = be32_at(bhs, 24);
    l.exp_stat_sn = be32_at(bhs, 28);
    if (l.version_max < l.version_min) {
        return decode_error(fmt::format("Login Request with Version-max {} below Version-min {}",
                                        l.version_max, l.version_min));
    }
    return l;
}

void LogoutRequest::encode(Bhs& bhs) const {
    begin(bhs, Opcode::logout_request, immediate, uint8_t(flag_f | (uint8_t(reason) & 0x7f)), 0);
    bhs.set_itt(itt);
    put_be16(bhs, 20, cid);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
}

Result<LogoutRequest> LogoutRequest::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::logout_request); !r) {
        return std::move(r).error();
    }
    if (auto r = check_no_data(bhs); !r) {
        return std::move(r).error();
    }
    uint8_t reason = bhs.bytes[1] & 0x7f;
    if (reason > 2) {
        return decode_error(fmt::format("Logout Request with unknown reason code {}", reason));
    }
    LogoutRequest l;
    l.immediate = bhs.immediate();
    l.reason = LogoutReason(reason);
    l.itt = bhs.itt();
    l.cid = be16_at(bhs, 20);
    l.cmd_sn = be32_at(bhs, 24);
    l.exp_stat_sn = be32_at(bhs, 28);
    return l;
}

void SnackRequest::encode(Bhs& bhs) const {
    begin(bhs, Opcode::snack_request, false, uint8_t(flag_f | (uint8_t(type) & 0x0f)), 0);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt_or_snack_tag);
    put_be32(bhs, 28, exp_stat_sn);
    put_be32(bhs, 40, beg_run);
    put_be32(bhs, 44, run_length);
}

Result<SnackRequest> SnackRequest::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::snack_request); !r) {
        return std::move(r).error();
    }
    if (auto r = check_no_data(bhs); !r) {
        return std::move(r).error();
    }
    uint8_t type = bhs.bytes[1] & 0x0f;
    if (type > 3) {
        return decode_error(fmt::format("SNACK Request with unknown type {}", type));
    }
    SnackRequest s;
    s.type = SnackType(type);
    s.lun = bhs.lun();
    s.itt = bhs.itt();
    s.ttt_or_snack_tag = be32_at(bhs, 20);
    s.exp_stat_sn = be32_at(bhs, 28);
    s.beg_run = be32_at(bhs, 40);
    s.run_length = be32_at(bhs, 44);
    return s;
}

void NopOut::encode(Bhs& bhs) const {
    begin(bhs, Opcode::nop_out, immediate, flag_f, data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, cmd_sn);
    put_be32(bhs, 28, exp_stat_sn);
}

Result<NopOut> NopOut::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::nop_out); !r) {
        return std::move(r).error();
    }
    NopOut n;
    n.immediate = bhs.immediate();
    n.data_segment_length = bhs.data_segment_length();
    n.lun = bhs.lun();
    n.itt = bhs.itt();
    n.ttt = be32_at(bhs, 20);
    n.cmd_sn = be32_at(bhs, 24);
    n.exp_stat_sn = be32_at(bhs, 28);
    if (n.itt == reserved_tag && !n.immediate) {
        return decode_error("NOP-Out with ITT 0xffffffff must have the I bit set");
    }
    return n;
}

// ---- Target PDUs -----------------------------------------------------------------------------------

void ScsiResponse::encode(Bhs& bhs) const {
    uint8_t flags =
        uint8_t(flag_f | (bidi_read_overflow ? flag_bidi_o : 0) | (bidi_read_underflow ? flag_bidi_u : 0) |
                (overflow ? flag_o : 0) | (underflow ? flag_u : 0));
    begin(bhs, Opcode::scsi_response, false, flags, data_segment_length);
    bhs.bytes[2] = response;
    bhs.bytes[3] = status;
    bhs.set_itt(itt);
    put_be32(bhs, 20, snack_tag);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    put_be32(bhs, 36, exp_data_sn);
    put_be32(bhs, 40, bidi_read_residual_count);
    put_be32(bhs, 44, residual_count);
}

Result<ScsiResponse> ScsiResponse::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::scsi_response); !r) {
        return std::move(r).error();
    }
    uint8_t flags = bhs.bytes[1];
    ScsiResponse s;
    s.bidi_read_overflow = (flags & flag_bidi_o) != 0;
    s.bidi_read_underflow = (flags & flag_bidi_u) != 0;
    s.overflow = (flags & flag_o) != 0;
    s.underflow = (flags & flag_u) != 0;
    s.response = bhs.bytes[2];
    s.status = bhs.bytes[3];
    s.data_segment_length = bhs.data_segment_length();
    s.itt = bhs.itt();
    s.snack_tag = be32_at(bhs, 20);
    s.stat_sn = be32_at(bhs, 24);
    s.exp_cmd_sn = be32_at(bhs, 28);
    s.max_cmd_sn = be32_at(bhs, 32);
    s.exp_data_sn = be32_at(bhs, 36);
    s.bidi_read_residual_count = be32_at(bhs, 40);
    s.residual_count = be32_at(bhs, 44);
    if (s.bidi_read_overflow && s.bidi_read_underflow) {
        return decode_error("SCSI Response with both o and u set");
    }
    if (s.overflow && s.underflow) {
        return decode_error("SCSI Response with both O and U set");
    }
    return s;
}

void TaskMgmtResponse::encode(Bhs& bhs) const {
    begin(bhs, Opcode::task_mgmt_response, false, flag_f, 0);
    bhs.bytes[2] = uint8_t(response);
    bhs.set_itt(itt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
}

Result<TaskMgmtResponse> TaskMgmtResponse::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::task_mgmt_response); !r) {
        return std::move(r).error();
    }
    TaskMgmtResponse t;
    t.response = TmfResponse(bhs.bytes[2]);
    t.itt = bhs.itt();
    t.stat_sn = be32_at(bhs, 24);
    t.exp_cmd_sn = be32_at(bhs, 28);
    t.max_cmd_sn = be32_at(bhs, 32);
    return t;
}

void DataIn::encode(Bhs& bhs) const {
    uint8_t flags = uint8_t((final_bit ? flag_f : 0) | (acknowledge ? flag_a : 0) | (overflow ? flag_o : 0) |
                            (underflow ? flag_u : 0) | (status_present ? flag_s : 0));
    begin(bhs, Opcode::data_in, false, flags, data_segment_length);
    bhs.bytes[3] = status_present ? status : 0;
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    put_be32(bhs, 36, data_sn);
    put_be32(bhs, 40, buffer_offset);
    put_be32(bhs, 44, residual_count);
}

Result<DataIn> DataIn::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::data_in); !r) {
        return std::move(r).error();
    }
    uint8_t flags = bhs.bytes[1];
    DataIn d;
    d.final_bit = (flags & flag_f) != 0;
    d.acknowledge = (flags & flag_a) != 0;
    d.status_present = (flags & flag_s) != 0;
    // O and U mean something only together with status; without S they are ignored like reserved bits.
    d.overflow = d.status_present && (flags & flag_o) != 0;
    d.underflow = d.status_present && (flags & flag_u) != 0;
    d.status = bhs.bytes[3];
    d.data_segment_length = bhs.data_segment_length();
    d.lun = bhs.lun();
    d.itt = bhs.itt();
    d.ttt = be32_at(bhs, 20);
    d.stat_sn = be32_at(bhs, 24);
    d.exp_cmd_sn = be32_at(bhs, 28);
    d.max_cmd_sn = be32_at(bhs, 32);
    d.data_sn = be32_at(bhs, 36);
    d.buffer_offset = be32_at(bhs, 40);
    d.residual_count = be32_at(bhs, 44);
    if (d.status_present && !d.final_bit) {
        return decode_error("Data-In with S set but not F");
    }
    if (d.overflow && d.underflow) {
        return decode_error("Data-In with both O and U set");
    }
    return d;
}

void R2t::encode(Bhs& bhs) const {
    begin(bhs, Opcode::r2t, false, flag_f, 0);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    put_be32(bhs, 36, r2t_sn);
    put_be32(bhs, 40, buffer_offset);
    put_be32(bhs, 44, desired_data_transfer_length);
}

Result<R2t> R2t::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::r2t); !r) {
        return std::move(r).error();
    }
    if (auto r = check_no_data(bhs); !r) {
        return std::move(r).error();
    }
    R2t r;
    r.lun = bhs.lun();
    r.itt = bhs.itt();
    r.ttt = be32_at(bhs, 20);
    r.stat_sn = be32_at(bhs, 24);
    r.exp_cmd_sn = be32_at(bhs, 28);
    r.max_cmd_sn = be32_at(bhs, 32);
    r.r2t_sn = be32_at(bhs, 36);
    r.buffer_offset = be32_at(bhs, 40);
    r.desired_data_transfer_length = be32_at(bhs, 44);
    if (r.desired_data_transfer_length == 0) {
        return decode_error("R2T with a Desired Data Transfer Length of 0");
    }
    if (r.ttt == reserved_tag) {
        // Data-Out with TTT 0xffffffff means unsolicited data, so an R2T cannot use that value.
        return decode_error("R2T with the reserved Target Transfer Tag 0xffffffff");
    }
    return r;
}

void AsyncMessage::encode(Bhs& bhs) const {
    begin(bhs, Opcode::async_message, false, flag_f, data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(reserved_tag);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    bhs.bytes[36] = uint8_t(event);
    bhs.bytes[37] = vendor_code;
    put_be16(bhs, 38, parameter1);
    put_be16(bhs, 40, parameter2);
    put_be16(bhs, 42, parameter3);
}

Result<AsyncMessage> AsyncMessage::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::async_message); !r) {
        return std::move(r).error();
    }
    AsyncMessage a;
    a.data_segment_length = bhs.data_segment_length();
    a.lun = bhs.lun();
    a.stat_sn = be32_at(bhs, 24);
    a.exp_cmd_sn = be32_at(bhs, 28);
    a.max_cmd_sn = be32_at(bhs, 32);
    a.event = AsyncEvent(bhs.bytes[36]);
    a.vendor_code = bhs.bytes[37];
    a.parameter1 = be16_at(bhs, 38);
    a.parameter2 = be16_at(bhs, 40);
    a.parameter3 = be16_at(bhs, 42);
    return a;
}

void TextResponse::encode(Bhs& bhs) const {
    begin(bhs, Opcode::text_response, false, uint8_t((final_bit ? flag_f : 0) | (continue_bit ? flag_c : 0)),
          data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
}

Result<TextResponse> TextResponse::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::text_response); !r) {
        return std::move(r).error();
    }
    TextResponse t;
    t.final_bit = (bhs.bytes[1] & flag_f) != 0;
    t.continue_bit = (bhs.bytes[1] & flag_c) != 0;
    t.data_segment_length = bhs.data_segment_length();
    t.lun = bhs.lun();
    t.itt = bhs.itt();
    t.ttt = be32_at(bhs, 20);
    t.stat_sn = be32_at(bhs, 24);
    t.exp_cmd_sn = be32_at(bhs, 28);
    t.max_cmd_sn = be32_at(bhs, 32);
    if (t.final_bit && t.continue_bit) {
        return decode_error("Text Response with both F and C set");
    }
    if (!t.final_bit && t.ttt == reserved_tag) {
        return decode_error("Text Response with F clear and the reserved Target Transfer Tag");
    }
    return t;
}

void LoginResponse::encode(Bhs& bhs) const {
    uint8_t flags = uint8_t((transit ? flag_t : 0) | (continue_bit ? flag_c : 0) | (uint8_t(csg) & 3) << 2 |
                            (transit ? (uint8_t(nsg) & 3) : 0));
    begin(bhs, Opcode::login_response, false, flags, data_segment_length);
    bhs.bytes[2] = version_max;
    bhs.bytes[3] = version_active;
    put_isid(bhs, isid);
    put_be16(bhs, 14, tsih);
    bhs.set_itt(itt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    bhs.bytes[36] = status_class;
    bhs.bytes[37] = status_detail;
}

Result<LoginResponse> LoginResponse::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::login_response); !r) {
        return std::move(r).error();
    }
    uint8_t flags = bhs.bytes[1];
    bool transit = (flags & flag_t) != 0;
    bool cont = (flags & flag_c) != 0;
    uint8_t csg = (flags >> 2) & 3;
    uint8_t nsg = flags & 3;
    uint8_t status_class = bhs.bytes[36];
    if (status_class == 0) {
        if (auto r = check_login_stages("Login Response", transit, cont, csg, nsg); !r) {
            return std::move(r).error();
        }
    } else {
        // A failed login ends the connection; its stage bits carry no meaning, so make them harmless
        // rather than refusing to report the target's status to the user.
        transit = false;
        cont = false;
        if (csg > 1) {
            csg = 0;
        }
        nsg = csg;
    }
    LoginResponse l;
    l.transit = transit;
    l.continue_bit = cont;
    l.csg = LoginStage(csg);
    l.nsg = transit ? LoginStage(nsg) : LoginStage(csg);
    l.version_max = bhs.bytes[2];
    l.version_active = bhs.bytes[3];
    l.data_segment_length = bhs.data_segment_length();
    l.isid = isid_at(bhs);
    l.tsih = be16_at(bhs, 14);
    l.itt = bhs.itt();
    l.stat_sn = be32_at(bhs, 24);
    l.exp_cmd_sn = be32_at(bhs, 28);
    l.max_cmd_sn = be32_at(bhs, 32);
    l.status_class = status_class;
    l.status_detail = bhs.bytes[37];
    return l;
}

void LogoutResponse::encode(Bhs& bhs) const {
    begin(bhs, Opcode::logout_response, false, flag_f, 0);
    bhs.bytes[2] = uint8_t(response);
    bhs.set_itt(itt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    put_be16(bhs, 40, time2wait);
    put_be16(bhs, 42, time2retain);
}

Result<LogoutResponse> LogoutResponse::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::logout_response); !r) {
        return std::move(r).error();
    }
    if (bhs.bytes[2] > 3) {
        return decode_error(fmt::format("Logout Response with unknown response code {}", bhs.bytes[2]));
    }
    LogoutResponse l;
    l.response = LogoutResponseCode(bhs.bytes[2]);
    l.itt = bhs.itt();
    l.stat_sn = be32_at(bhs, 24);
    l.exp_cmd_sn = be32_at(bhs, 28);
    l.max_cmd_sn = be32_at(bhs, 32);
    l.time2wait = be16_at(bhs, 40);
    l.time2retain = be16_at(bhs, 42);
    return l;
}

void Reject::encode(Bhs& bhs) const {
    begin(bhs, Opcode::reject, false, flag_f, data_segment_length);
    bhs.bytes[2] = uint8_t(reason);
    bhs.set_itt(reserved_tag);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
    put_be32(bhs, 36, data_sn);
}

Result<Reject> Reject::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::reject); !r) {
        return std::move(r).error();
    }
    Reject j;
    j.reason = RejectReason(bhs.bytes[2]);
    j.data_segment_length = bhs.data_segment_length();
    j.stat_sn = be32_at(bhs, 24);
    j.exp_cmd_sn = be32_at(bhs, 28);
    j.max_cmd_sn = be32_at(bhs, 32);
    j.data_sn = be32_at(bhs, 36);
    if (j.data_segment_length < bhs_size) {
        return decode_error(fmt::format("Reject with a {}-byte data segment; it must hold the rejected "
                                        "48-byte header",
                                        j.data_segment_length));
    }
    return j;
}

void NopIn::encode(Bhs& bhs) const {
    begin(bhs, Opcode::nop_in, false, flag_f, data_segment_length);
    bhs.set_lun(lun);
    bhs.set_itt(itt);
    put_be32(bhs, 20, ttt);
    put_be32(bhs, 24, stat_sn);
    put_be32(bhs, 28, exp_cmd_sn);
    put_be32(bhs, 32, max_cmd_sn);
}

Result<NopIn> NopIn::decode(const Bhs& bhs) {
    if (auto r = check_opcode(bhs, Opcode::nop_in); !r) {
        return std::move(r).error();
    }
    NopIn n;
    n.data_segment_length = bhs.data_segment_length();
    n.lun = bhs.lun();
    n.itt = bhs.itt();
    n.ttt = be32_at(bhs, 20);
    n.stat_sn = be32_at(bhs, 24);
    n.exp_cmd_sn = be32_at(bhs, 28);
    n.max_cmd_sn = be32_at(bhs, 32);
    if (n.itt != reserved_tag && n.ttt != reserved_tag) {
        return decode_error("NOP-In with both ITT and TTT set (it is either an answer or a ping)");
    }
    if (n.itt == reserved_tag && n.data_segment_length != 0) {
        return decode_error("NOP-In not answering a NOP-Out must not carry data");
    }
    return n;
}

// ---- describe --------------------------------------------------------------------------------------

std::string describe(const Bhs& bhs) {
    const uint8_t op = bhs.raw_opcode();
    const uint8_t f = bhs.bytes[1];
    std::string out = fmt::format("{} I={} F={} itt=0x{:08x}", opcode_name(op), int(bhs.immediate()),
                                  int(bhs.final_bit()), bhs.itt());
    auto sn = [&](size_t offset) { return be32_at(bhs, offset); };
    switch (Opcode(op)) {
    case Opcode::scsi_command:
        out += fmt::format(" lun=0x{:x} cmdsn={} expstatsn={} edtl={} cdb={:02x}{}{} attr={}", bhs.lun(),
                           sn(24), sn(28), sn(20), bhs.bytes[32], (f & flag_r) ? " R" : "",
                           (f & flag_w) ? " W" : "", f & 7);
        break;
    case Opcode::scsi_response:
        out += fmt::format(
            " response=0x{:02x} status=0x{:02x} statsn={} expcmdsn={} maxcmdsn={} residual={}{}{}",
            bhs.bytes[2], bhs.bytes[3], sn(24), sn(28), sn(32), sn(44), (f & flag_o) ? " O" : "",
            (f & flag_u) ? " U" : "");
        break;
    case Opcode::task_mgmt_request:
        out += fmt::format(" function={} lun=0x{:x} rtt=0x{:08x} cmdsn={} refcmdsn={}", f & 0x7f, bhs.lun(),
                           sn(20), sn(24), sn(32));
        break;
    case Opcode::task_mgmt_response:
        out += fmt::format(" response={} statsn={}", bhs.bytes[2], sn(24));
        break;
    case Opcode::data_out:
        out += fmt::format(" ttt=0x{:08x} datasn={} offset={} expstatsn={}", sn(20), sn(36), sn(40), sn(28));
        break;
    case Opcode::data_in:
        out += fmt::format(" datasn={} offset={}", sn(36), sn(40));
        if (f & flag_s) {
            out += fmt::format(" S status=0x{:02x} statsn={} residual={}", bhs.bytes[3], sn(24), sn(44));
        }
        break;
    case Opcode::r2t:
        out += fmt::format(" ttt=0x{:08x} r2tsn={} offset={} length={}", sn(20), sn(36), sn(40), sn(44));
        break;
    case Opcode::async_message:
        out += fmt::format(" event={} statsn={}", bhs.bytes[36], sn(24));
        break;
    case Opcode::login_request:
    case Opcode::login_response:
        out += fmt::format(" T={} C={} csg={} nsg={} isid={} tsih={} sn={}", (f & flag_t) ? 1 : 0,
                           (f & flag_c) ? 1 : 0, (f >> 2) & 3, f & 3, format_isid(isid_at(bhs)),
                           be16_at(bhs, 14), sn(24));
        if (Opcode(op) == Opcode::login_response) {
            out += fmt::format(" status={:02x}{:02x}", bhs.bytes[36], bhs.bytes[37]);
        }
        break;
    case Opcode::text_request:
    case Opcode::text_response:
        out += fmt::format(" C={} ttt=0x{:08x} sn={}", (f & flag_c) ? 1 : 0, sn(20), sn(24));
        break;
    case Opcode::logout_request:
        out += fmt::format(" reason={} cid={} cmdsn={}", f & 0x7f, be16_at(bhs, 20), sn(24));
        break;
    case Opcode::logout_response:
        out += fmt::format(" response={} statsn={}", bhs.bytes[2], sn(24));
        break;
    case Opcode::snack_request:
        out += fmt::format(" type={} begrun={} runlength={}", f & 0x0f, sn(40), sn(44));
        break;
    case Opcode::reject:
        out += fmt::format(" reason=0x{:02x} statsn={}", bhs.bytes[2], sn(24));
        break;
    case Opcode::nop_out:
    case Opcode::nop_in:
        out += fmt::format(" ttt=0x{:08x} sn={}", sn(20), sn(24));
        break;
    default:
        break;
    }
    out += fmt::format(" ahs={} dsl={}", bhs.ahs_bytes(), bhs.data_segment_length());
    return out;
}

// ---- ISID ------------------------------------------------------------------------------------------

std::string format_isid(const Isid& isid) {
    return fmt::format("{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", isid[0], isid[1], isid[2], isid[3], isid[4],
                       isid[5]);
}

Result<Isid> parse_isid(std::string_view text) {
    std::string_view digits = text;
    if (digits.size() >= 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
        digits.remove_prefix(2);
    }
    if (digits.size() != 12) {
        return make_error(fmt::format("ISID '{}': expected 12 hex digits", text), EINVAL);
    }
    Isid isid{};
    for (size_t i = 0; i < 6; ++i) {
        int hi = hex_digit_value(digits[2 * i]);
        int lo = hex_digit_value(digits[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return make_error(fmt::format("ISID '{}': not a hex number", text), EINVAL);
        }
        isid[i] = uint8_t(hi << 4 | lo);
    }
    return isid;
}

// ---- AHS -------------------------------------------------------------------------------------------

Result<ParsedAhs> parse_ahs(std::span<const uint8_t> ahs) {
    ParsedAhs parsed;
    if (ahs.size() % 4 != 0 || ahs.size() > max_ahs_size) {
        return decode_error(fmt::format("AHS area of {} bytes (must be a multiple of 4, at most {})",
                                        ahs.size(), max_ahs_size));
    }
    size_t pos = 0;
    while (pos < ahs.size()) {
        // Each AHS: AHSLength (2), AHSType (1), AHS-specific (1 + AHSLength - 1), padded to 4 bytes.
        // AHSLength counts everything after the type byte, before padding.
        const uint8_t* p = ahs.data() + pos;
        size_t length = load_be16(p);
        uint8_t type = p[2] & 0x3f; // the two high bits are reserved
        size_t total = pad4(3 + length);
        if (total > ahs.size() - pos) {
            return decode_error(fmt::format("AHS at offset {} claims {} bytes but only {} remain", pos,
                                            length, ahs.size() - pos - 3));
        }
        switch (AhsType(type)) {
        case AhsType::extended_cdb: {
            if (parsed.extended_cdb_length != 0) {
                return decode_error("more than one Extended CDB AHS");
            }
            // AHSLength = CDB length - 15: one reserved byte, then CDB bytes 16.. .
            if (length < 2) {
                return decode_error(
                    fmt::format("Extended CDB AHS with AHSLength {} carries no CDB bytes", length));
            }
            size_t tail = length - 1;
            if (16 + tail > max_cdb_size) {
                return decode_error(fmt::format("Extended CDB AHS makes a {}-byte CDB (at most {})",
                                                16 + tail, max_cdb_size));
            }
            std::memcpy(parsed.extended_cdb.data(), p + 4, tail);
            parsed.extended_cdb_length = tail;
            break;
        }
        case AhsType::bidi_read_length:
            if (parsed.has_bidi_read_length) {
                return decode_error("more than one Bidirectional Read Expected Data Transfer Length AHS");
            }
            if (length != 5) {
                return decode_error(fmt::format(
                    "Bidirectional Read Expected Data Transfer Length AHS with AHSLength {} (must be 5)",
                    length));
            }
            parsed.has_bidi_read_length = true;
            parsed.bidi_read_expected_data_transfer_length = load_be32(p + 4);
            break;
        default:
            return decode_error(fmt::format("AHS of unknown type {}", type));
        }
        pos += total;
    }
    return parsed;
}

bool append_extended_cdb_ahs(std::vector<uint8_t>& ahs, std::span<const uint8_t> cdb_tail) {
    if (cdb_tail.empty() || 16 + cdb_tail.size() > max_cdb_size) {
        return false;
    }
    size_t start = ahs.size();
    size_t length = cdb_tail.size() + 1;
    ahs.resize(start + pad4(3 + length), 0);
    store_be16(ahs.data() + start, uint16_t(length));
    ahs[start + 2] = uint8_t(AhsType::extended_cdb);
    std::memcpy(ahs.data() + start + 4, cdb_tail.data(), cdb_tail.size());
    return true;
}

void append_bidi_read_length_ahs(std::vector<uint8_t>& ahs, uint32_t length) {
    size_t start = ahs.size();
    ahs.resize(start + 8, 0);
    store_be16(ahs.data() + start, 5);
    ahs[start + 2] = uint8_t(AhsType::bidi_read_length);
    store_be32(ahs.data() + start + 4, length);
}

// ---- Send side -------------------------------------------------------------------------------------

size_t build_pdu_header(const Bhs& bhs, std::span<const uint8_t> ahs, bool header_digest, uint8_t* out) {
    size_t ahs_len = ahs.size() < max_ahs_size ? ahs.size() : max_ahs_size;
    size_t padded = pad4(ahs_len);
    std::memcpy(out, bhs.bytes.data(), bhs_size);
    out[4] = uint8_t(padded / 4);
    if (ahs_len > 0) {
        std::memcpy(out + bhs_size, ahs.data(), ahs_len);
    }
    std::memset(out + bhs_size + ahs_len, 0, padded - ahs_len);
    size_t n = bhs_size + padded;
    if (header_digest) {
        store_digest(out + n, crc32c(out, n));
        n += digest_size;
    }
    return n;
}

namespace {
constexpr uint8_t zero_pad[4] = {0, 0, 0, 0};
}

uint32_t data_digest(std::span<const uint8_t> data) {
    uint32_t crc = crc32c(data);
    return crc32c(zero_pad, padding_length(data.size()), crc);
}

DataTrailer make_data_trailer(size_t data_length, bool digest, uint32_t data_crc) {
    DataTrailer t;
    size_t pad = padding_length(data_length);
    t.size = pad; // bytes[] is already zero
    // No data segment, no data digest (§11.1: the digest covers a data segment that is present).
    if (digest && data_length > 0) {
        store_digest(t.bytes.data() + pad, crc32c(zero_pad, pad, data_crc));
        t.size += digest_size;
    }
    return t;
}

DataTrailer make_data_trailer(std::span<const uint8_t> data, bool digest) {
    return make_data_trailer(data.size(), digest, digest ? crc32c(data) : 0);
}

} // namespace ispace::iscsi
