// iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, one typed struct per PDU kind,
// the Additional Header Segments, ISIDs and serial-number arithmetic.
//
// Conventions shared by every PDU struct below:
//  - `void encode(Bhs&) const` writes the *whole* BHS: it zeroes it first (reserved fields are zero on
//    send), then sets the opcode, the I bit where the PDU has one, the flags, TotalAHSLength,
//    DataSegmentLength (from the struct's `data_segment_length` field) and every other field.
//  - `static Result<T> decode(const Bhs&)` checks the opcode, reads every field, ignores reserved
//    fields (RFC 7143 §11.2: "reserved fields ... MUST be ignored on receipt") and rejects what the RFC
//    forbids outright (e.g. a Text Request with both F and C set). Decode errors carry code EPROTO and
//    a message naming the field; the connection answers them with a Reject (Protocol Error / Invalid
//    PDU Field) or, for a login, with an initiator-error login status.
//  - Bits the RFC draws as a fixed "1" (the F bit of single-PDU requests and responses) are set on
//    send and not checked on receipt: some initiators get them wrong and nothing depends on them.
//  - Sequence numbers and tags are host-order uint32_t; the LUN is the raw 8-byte field as a
//    big-endian uint64_t (its SAM encoding is the SCSI layer's business).
//
// Framing (reading BHS, AHS, digests and data from a byte stream) is in pdu_reader.hpp; the send-side
// helpers at the end of this file assemble header, padding and digests for writev.
#pragma once

#include "common/result.hpp"
#include "scsi_spec/sam.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::iscsi {

constexpr size_t bhs_size = 48;
// TotalAHSLength is one byte counting 4-byte words.
constexpr size_t max_ahs_size = 255 * 4;
constexpr size_t digest_size = 4;
// BHS + the largest possible AHS + a header digest: the most a sender writes before the data segment.
constexpr size_t max_header_size = bhs_size + max_ahs_size + digest_size;
// DataSegmentLength is a 24-bit field.
constexpr uint32_t max_data_segment_length = 0xffffff;
// The reserved tag value: "no ITT / no TTT / not a response".
constexpr uint32_t reserved_tag = 0xffffffff;
// iSCSI draft/RFC version number used by every implementation (RFC 7143 §11.12.4).
constexpr uint8_t iscsi_version = 0x00;

enum class Opcode : uint8_t {
    // Initiator opcodes.
    nop_out = 0x00,
    scsi_command = 0x01,
    task_mgmt_request = 0x02,
    login_request = 0x03,
    text_request = 0x04,
    data_out = 0x05,
    logout_request = 0x06,
    snack_request = 0x10,
    vendor_initiator_1c = 0x1c,
    vendor_initiator_1d = 0x1d,
    vendor_initiator_1e = 0x1e,
    // Target opcodes.
    nop_in = 0x20,
    scsi_response = 0x21,
    task_mgmt_response = 0x22,
    login_response = 0x23,
    text_response = 0x24,
    data_in = 0x25,
    logout_response = 0x26,
    r2t = 0x31,
    async_message = 0x32,
    vendor_target_3c = 0x3c,
    vendor_target_3d = 0x3d,
    vendor_target_3e = 0x3e,
    reject = 0x3f,
};

// True for the opcodes RFC 7143 defines (including the vendor-specific ranges).
bool is_known_opcode(uint8_t opcode);
// Initiator opcodes are 0x00-0x1f, target opcodes 0x20-0x3f.
constexpr bool is_initiator_opcode(uint8_t opcode) {
    return opcode < 0x20;
}
// "SCSI Command", "Data-In", ... or "opcode 0x0b" for unknown values.
std::string opcode_name(uint8_t opcode);

// The Basic Header Segment as it is on the wire, with accessors for the fields every PDU shares.
struct Bhs {
    std::array<uint8_t, bhs_size> bytes{};

    // The 6-bit opcode. May hold a value that is not a known Opcode; check is_known_opcode().
    Opcode opcode() const { return Opcode(bytes[0] & 0x3f); }
    uint8_t raw_opcode() const { return bytes[0] & 0x3f; }
    // The I bit (immediate delivery). Meaningful on initiator PDUs only.
    bool immediate() const { return (bytes[0] & 0x40) != 0; }
    // The F bit (byte 1, bit 7). Its meaning depends on the opcode.
    bool final_bit() const { return (bytes[1] & 0x80) != 0; }
    // In 4-byte words.
    uint8_t total_ahs_length() const { return bytes[4]; }
    size_t ahs_bytes() const { return size_t(bytes[4]) * 4; }
    // 24 bits, in bytes, without padding.
    uint32_t data_segment_length() const;
    // Bytes 8-15 as a big-endian number (the LUN on PDUs that carry one).
    uint64_t lun() const;
    uint32_t itt() const;

    void set_opcode(Opcode op, bool immediate = false);
    void set_final_bit(bool f);
    void set_total_ahs_length(uint8_t words) { bytes[4] = words; }
    // Values above max_data_segment_length are a caller bug; they are truncated to 24 bits.
    void set_data_segment_length(uint32_t length);
    void set_lun(uint64_t lun);
    void set_itt(uint32_t itt);

    bool operator==(const Bhs&) const = default;
};

// One line for logs: opcode name, tags, sequence numbers and lengths, e.g.
// "SCSI Command I=0 F=1 itt=0x00000010 lun=0 cmdsn=5 expstatsn=3 edtl=4096 dsl=0 cdb=28 R".
std::string describe(const Bhs& bhs);

// ---- Enumerations of field values ------------------------------------------------------------------

// SCSI Response "Response" field (§11.4.3).
enum class ScsiResponseCode : uint8_t { command_completed = 0x00, target_failure = 0x01 };

// Task management functions (§11.5.1). Other values are kept as is; the target answers them with
// TmfResponse::not_supported.
enum class TmfFunction : uint8_t {
    abort_task = 1,
    abort_task_set = 2,
    clear_aca = 3,
    clear_task_set = 4,
    lun_reset = 5,
    target_warm_reset = 6,
    target_cold_reset = 7,
    task_reassign = 8,
};
constexpr bool is_known_tmf_function(TmfFunction f) {
    return uint8_t(f) >= 1 && uint8_t(f) <= 8;
}

// Task management response codes (§11.6.1).
enum class TmfResponse : uint8_t {
    function_complete = 0,
    task_does_not_exist = 1,
    lun_does_not_exist = 2,
    task_still_allegiant = 3,
    reassignment_not_supported = 4,
    not_supported = 5,
    authorization_failed = 6,
    function_rejected = 255,
};

// Async Message events (§11.9.1).
enum class AsyncEvent : uint8_t {
    scsi_async_event = 0,
    logout_request = 1,
    drop_connection = 2,
    drop_all_connections = 3,
    negotiation_request = 4,
    task_termination = 5,
    vendor_specific = 255,
};

// Login stages (CSG/NSG, §11.12.3). Value 2 is reserved and rejected by decode.
enum class LoginStage : uint8_t { security = 0, operational = 1, full_feature = 3 };

// Login status as class << 8 | detail (§11.13.5).
enum class LoginStatus : uint16_t {
    success = 0x0000,
    target_moved_temporarily = 0x0101,
    target_moved_permanently = 0x0102,
    initiator_error = 0x0200,
    authentication_failure = 0x0201,
    authorization_failure = 0x0202,
    target_not_found = 0x0203,
    target_removed = 0x0204,
    unsupported_version = 0x0205,
    too_many_connections = 0x0206,
    missing_parameter = 0x0207,
    cannot_include_in_session = 0x0208,
    session_type_not_supported = 0x0209,
    session_does_not_exist = 0x020a,
    invalid_during_login = 0x020b,
    target_error = 0x0300,
    service_unavailable = 0x0301,
    out_of_resources = 0x0302,
};
// Login status classes (the high byte of LoginStatus).
enum class LoginStatusClass : uint8_t { success = 0, redirection = 1, initiator_error = 2, target_error = 3 };

// Logout reason codes (§11.14.1).
enum class LogoutReason : uint8_t {
    close_session = 0,
    close_connection = 1,
    remove_connection_for_recovery = 2
};

// Logout response codes (§11.15.1).
enum class LogoutResponseCode : uint8_t {
    closed_successfully = 0,
    cid_not_found = 1,
    recovery_not_supported = 2,
    cleanup_failed = 3,
};

// SNACK types (§11.16.1).
enum class SnackType : uint8_t { data_r2t = 0, status = 1, data_ack = 2, r_data = 3 };

// Reject reasons (§11.17.1).
enum class RejectReason : uint8_t {
    data_digest_error = 0x02,
    snack_reject = 0x03,
    protocol_error = 0x04,
    command_not_supported = 0x05,
    immediate_command_rejected = 0x06,
    task_in_progress = 0x07,
    invalid_data_ack = 0x08,
    invalid_pdu_field = 0x09,
    long_op_reject = 0x0a,
    negotiation_reset = 0x0b, // deprecated by RFC 7143; kept so it can be named in logs
    waiting_for_logout = 0x0c,
};

// ---- ISID ------------------------------------------------------------------------------------------

using Isid = std::array<uint8_t, 6>;

// 12 lowercase hex digits, e.g. "400001370000".
std::string format_isid(const Isid& isid);
// Accepts 12 hex digits with an optional "0x" prefix.
Result<Isid> parse_isid(std::string_view text);
constexpr uint64_t isid_to_u64(const Isid& isid) {
    uint64_t v = 0;
    for (uint8_t b : isid) {
        v = v << 8 | b;
    }
    return v;
}
constexpr Isid isid_from_u64(uint64_t v) {
    Isid isid{};
    for (size_t i = 0; i < 6; ++i) {
        isid[5 - i] = uint8_t(v >> (8 * i));
    }
    return isid;
}

// ---- Serial number arithmetic (RFC 1982, SERIAL_BITS = 32) -----------------------------------------
// CmdSN, StatSN, DataSN and R2TSN wrap around; compare them only with these. Two numbers exactly 2^31
// apart are incomparable: neither sn_lt nor sn_gt holds.

constexpr bool sn_lt(uint32_t a, uint32_t b) {
    return a != b && ((a < b && b - a < 0x80000000u) || (a > b && a - b > 0x80000000u));
}
constexpr bool sn_gt(uint32_t a, uint32_t b) {
    return sn_lt(b, a);
}
constexpr bool sn_le(uint32_t a, uint32_t b) {
    return a == b || sn_lt(a, b);
}
constexpr bool sn_ge(uint32_t a, uint32_t b) {
    return a == b || sn_gt(a, b);
}

// ---- Initiator PDUs --------------------------------------------------------------------------------

// SCSI Command (0x01, §11.3).
struct ScsiCommand {
    bool immediate = false;
    bool final_bit = true;                                  // no unsolicited Data-Out PDUs follow
    bool read = false;                                      // R
    bool write = false;                                     // W
    scsi::TaskAttribute attr = scsi::TaskAttribute::simple; // ATTR; reserved values 5-7 kept as is
    uint8_t total_ahs_length = 0;                           // in words; the AHS itself travels beside the BHS
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t expected_data_transfer_length = 0;
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;
    std::array<uint8_t, 16> cdb{};

    void encode(Bhs& bhs) const;
    // Rejects: neither F nor W set (§11.3.1: at least one MUST be 1); a non-zero EDTL with neither R
    // nor W; immediate data without W; immediate data longer than EDTL; F clear (more data to come)
    // when the immediate data already covers EDTL.
    static Result<ScsiCommand> decode(const Bhs& bhs);
};

// Task Management Function Request (0x02, §11.5).
struct TaskMgmtRequest {
    bool immediate = false;
    TmfFunction function = TmfFunction::abort_task;
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t referenced_task_tag = reserved_tag; // RTT: the ITT of the task for ABORT TASK / TASK REASSIGN
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;
    uint32_t ref_cmd_sn = 0;
    uint32_t exp_data_sn = 0;

    void encode(Bhs& bhs) const;
    // Unknown functions are accepted (the answer is a TMF Response, not a Reject). A data segment is
    // rejected (the PDU has none).
    static Result<TaskMgmtRequest> decode(const Bhs& bhs);
};

// SCSI Data-Out (0x05, §11.7).
struct DataOut {
    bool final_bit = false;
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t ttt = reserved_tag; // reserved_tag for unsolicited data
    uint32_t exp_stat_sn = 0;
    uint32_t data_sn = 0;
    uint32_t buffer_offset = 0;

    void encode(Bhs& bhs) const;
    static Result<DataOut> decode(const Bhs& bhs);
};

// Text Request (0x04, §11.10).
struct TextRequest {
    bool immediate = false;
    bool final_bit = true;
    bool continue_bit = false; // C: the text continues in the next PDU
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t ttt = reserved_tag; // copied from a Text Response to continue; reserved_tag otherwise
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects F and C both set (§11.10.2).
    static Result<TextRequest> decode(const Bhs& bhs);
};

// Login Request (0x03, §11.12). Always sent with the I bit set.
struct LoginRequest {
    bool transit = false;      // T
    bool continue_bit = false; // C
    LoginStage csg = LoginStage::security;
    LoginStage nsg = LoginStage::security; // meaningful only when transit
    uint8_t version_max = iscsi_version;
    uint8_t version_min = iscsi_version;
    uint32_t data_segment_length = 0;
    Isid isid{};
    uint16_t tsih = 0;
    uint32_t itt = 0;
    uint16_t cid = 0;
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects: CSG 2 or 3 (no login PDU is sent in the reserved stage or in full feature phase); T and
    // C both set; with T, NSG 2 or an NSG not after CSG; Version-max below Version-min.
    static Result<LoginRequest> decode(const Bhs& bhs);
};

// Logout Request (0x06, §11.14).
struct LogoutRequest {
    bool immediate = false;
    LogoutReason reason = LogoutReason::close_session;
    uint32_t itt = 0;
    uint16_t cid = 0; // for close_connection / remove_connection_for_recovery
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects reason codes other than 0-2 and a non-empty data segment.
    static Result<LogoutRequest> decode(const Bhs& bhs);
};

// SNACK Request (0x10, §11.16).
struct SnackRequest {
    SnackType type = SnackType::data_r2t;
    uint64_t lun = 0;
    uint32_t itt = reserved_tag;
    uint32_t ttt_or_snack_tag = reserved_tag; // TTT for DataACK, SNACK Tag for R-Data, else reserved
    uint32_t exp_stat_sn = 0;
    uint32_t beg_run = 0;
    uint32_t run_length = 0;

    void encode(Bhs& bhs) const;
    // Rejects types other than 0-3 and a non-empty data segment.
    static Result<SnackRequest> decode(const Bhs& bhs);
};

// NOP-Out (0x00, §11.18). itt == reserved_tag: no NOP-In is wanted (then I must be 1 and CmdSN is not
// advanced). ttt != reserved_tag: this answers a NOP-In ping carrying that TTT.
struct NopOut {
    bool immediate = false;
    uint32_t data_segment_length = 0; // ping data
    uint64_t lun = 0;
    uint32_t itt = reserved_tag;
    uint32_t ttt = reserved_tag;
    uint32_t cmd_sn = 0;
    uint32_t exp_stat_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects ITT 0xffffffff without the I bit (§11.18.1).
    static Result<NopOut> decode(const Bhs& bhs);
};

// ---- Target PDUs -----------------------------------------------------------------------------------

// SCSI Response (0x21, §11.4).
struct ScsiResponse {
    bool bidi_read_overflow = false;  // o
    bool bidi_read_underflow = false; // u
    bool overflow = false;            // O
    bool underflow = false;           // U
    uint8_t response = uint8_t(ScsiResponseCode::command_completed);
    uint8_t status = 0;               // SCSI status; valid when response is command_completed
    uint32_t data_segment_length = 0; // sense data (2-byte length + sense) and/or response data
    uint32_t itt = 0;
    uint32_t snack_tag = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint32_t exp_data_sn = 0;
    uint32_t bidi_read_residual_count = 0;
    uint32_t residual_count = 0;

    void encode(Bhs& bhs) const;
    // Rejects o with u and O with U (mutually exclusive, §11.4.1).
    static Result<ScsiResponse> decode(const Bhs& bhs);
};

// Task Management Function Response (0x22, §11.6).
struct TaskMgmtResponse {
    TmfResponse response = TmfResponse::function_complete;
    uint32_t itt = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;

    void encode(Bhs& bhs) const;
    static Result<TaskMgmtResponse> decode(const Bhs& bhs);
};

// SCSI Data-In (0x25, §11.7).
struct DataIn {
    bool final_bit = false;
    bool acknowledge = false;    // A: the target wants a DataACK SNACK (ERL > 0)
    bool overflow = false;       // O (with S)
    bool underflow = false;      // U (with S)
    bool status_present = false; // S: status, StatSN and residual are valid; implies F
    uint8_t status = 0;
    uint32_t data_segment_length = 0;
    uint64_t lun = 0; // with A set
    uint32_t itt = 0;
    uint32_t ttt = reserved_tag; // with A set
    uint32_t stat_sn = 0;        // with S set
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint32_t data_sn = 0;
    uint32_t buffer_offset = 0;
    uint32_t residual_count = 0; // with S set

    void encode(Bhs& bhs) const;
    // Rejects S without F (§11.7.3) and O with U. O and U without S are ignored (read as false).
    static Result<DataIn> decode(const Bhs& bhs);
};

// Ready To Transfer (0x31, §11.8).
struct R2t {
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t ttt = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint32_t r2t_sn = 0;
    uint32_t buffer_offset = 0;
    uint32_t desired_data_transfer_length = 0;

    void encode(Bhs& bhs) const;
    // Rejects a zero Desired Data Transfer Length (§11.8.4), a reserved TTT, and a data segment.
    static Result<R2t> decode(const Bhs& bhs);
};

// Asynchronous Message (0x32, §11.9). The data segment carries sense data and/or vendor data.
struct AsyncMessage {
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    AsyncEvent event = AsyncEvent::scsi_async_event; // other values are kept as is
    uint8_t vendor_code = 0;                         // AsyncVCode
    uint16_t parameter1 = 0;
    uint16_t parameter2 = 0;
    uint16_t parameter3 = 0;

    void encode(Bhs& bhs) const; // ITT is always 0xffffffff
    static Result<AsyncMessage> decode(const Bhs& bhs);
};

// Text Response (0x24, §11.11).
struct TextResponse {
    bool final_bit = true;
    bool continue_bit = false;
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t itt = 0;
    uint32_t ttt = reserved_tag; // not reserved whenever F is 0
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects F and C both set, and F=0 with a reserved TTT (the initiator could not continue).
    static Result<TextResponse> decode(const Bhs& bhs);
};

// Login Response (0x23, §11.13).
struct LoginResponse {
    bool transit = false;
    bool continue_bit = false;
    LoginStage csg = LoginStage::security;
    LoginStage nsg = LoginStage::security;
    uint8_t version_max = iscsi_version;
    uint8_t version_active = iscsi_version;
    uint32_t data_segment_length = 0;
    Isid isid{};
    uint16_t tsih = 0;
    uint32_t itt = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint8_t status_class = 0;
    uint8_t status_detail = 0;

    LoginStatus status() const { return LoginStatus(uint16_t(status_class) << 8 | status_detail); }
    void set_status(LoginStatus s) {
        status_class = uint8_t(uint16_t(s) >> 8);
        status_detail = uint8_t(uint16_t(s));
    }

    void encode(Bhs& bhs) const;
    // Rejects CSG 2 or 3, T and C both set, and with T an NSG of 2 or not after CSG. A failed login
    // (status class not 0) is accepted whatever its stage bits say.
    static Result<LoginResponse> decode(const Bhs& bhs);
};

// Logout Response (0x26, §11.15).
struct LogoutResponse {
    LogoutResponseCode response = LogoutResponseCode::closed_successfully;
    uint32_t itt = 0;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint16_t time2wait = 0;
    uint16_t time2retain = 0;

    void encode(Bhs& bhs) const;
    static Result<LogoutResponse> decode(const Bhs& bhs);
};

// Reject (0x3f, §11.17). The data segment holds the complete header of the rejected PDU.
struct Reject {
    RejectReason reason = RejectReason::protocol_error; // other values are kept as is
    uint32_t data_segment_length = bhs_size;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;
    uint32_t data_sn = 0; // DataSN/R2TSN for a SNACK Reject; otherwise reserved

    void encode(Bhs& bhs) const; // ITT is always 0xffffffff
    // Rejects a data segment shorter than a BHS.
    static Result<Reject> decode(const Bhs& bhs);
};

// NOP-In (0x20, §11.19). ttt != reserved_tag: a ping the initiator must answer (then ITT is
// reserved). itt != reserved_tag: the answer to a NOP-Out (then TTT is reserved).
struct NopIn {
    uint32_t data_segment_length = 0;
    uint64_t lun = 0;
    uint32_t itt = reserved_tag;
    uint32_t ttt = reserved_tag;
    uint32_t stat_sn = 0;
    uint32_t exp_cmd_sn = 0;
    uint32_t max_cmd_sn = 0;

    void encode(Bhs& bhs) const;
    // Rejects ITT and TTT both not reserved (a NOP-In is either an answer or a ping, never both).
    static Result<NopIn> decode(const Bhs& bhs);
};

// ---- Additional Header Segments (§11.2.2) ----------------------------------------------------------

enum class AhsType : uint8_t { extended_cdb = 1, bidi_read_length = 2 };

// The largest CDB we accept: 16 bytes in the BHS and the rest in an Extended CDB AHS (SPC's variable
// length CDBs top out at 260 bytes).
constexpr size_t max_cdb_size = 260;

struct ParsedAhs {
    // CDB bytes 16.. from an Extended CDB AHS; extended_cdb_length == 0 when there is none.
    std::array<uint8_t, max_cdb_size - 16> extended_cdb{};
    size_t extended_cdb_length = 0;
    // From a Bidirectional Read Expected Data Transfer Length AHS.
    bool has_bidi_read_length = false;
    uint32_t bidi_read_expected_data_transfer_length = 0;
};

// Parses the AHS area of a PDU (whose size is a multiple of 4). Rejects a truncated AHS, an AHSLength
// running past the area, an unknown AHS type, a duplicate AHS, an Extended CDB longer than
// max_cdb_size or empty, and a bidi AHS whose AHSLength is not 5.
Result<ParsedAhs> parse_ahs(std::span<const uint8_t> ahs);
// Appends an Extended CDB AHS carrying `cdb_tail` (CDB bytes 16..), padded to 4 bytes.
// Returns false (appending nothing) if the tail is empty or the CDB would exceed max_cdb_size.
bool append_extended_cdb_ahs(std::vector<uint8_t>& ahs, std::span<const uint8_t> cdb_tail);
void append_bidi_read_length_ahs(std::vector<uint8_t>& ahs, uint32_t length);

// ---- Send side -------------------------------------------------------------------------------------

// Writes BHS + AHS (+ header digest) to `out`, which must hold at least max_header_size bytes; returns
// the number of bytes written. The AHS is padded with zeros to 4 bytes and TotalAHSLength in the copy
// is set from its size (ahs.size() must be at most max_ahs_size; larger is a caller bug and is cut).
size_t build_pdu_header(const Bhs& bhs, std::span<const uint8_t> ahs, bool header_digest, uint8_t* out);

// Bytes of zero padding after a data segment of `length` bytes (0-3).
constexpr size_t padding_length(size_t length) {
    return (4 - (length & 3)) & 3;
}

// The data digest of a segment: CRC32C over the data and its zero padding.
uint32_t data_digest(std::span<const uint8_t> data);

// What follows a data segment on the wire: zero padding and, if enabled, the data digest. Small enough
// to live in the PDU being sent, so a sender writes {header, data..., trailer} with one writev.
struct DataTrailer {
    std::array<uint8_t, 8> bytes{};
    size_t size = 0;
    std::span<const uint8_t> span() const { return {bytes.data(), size}; }
};
// `data_crc` is the crc32c (see crc32c.hpp) of the data segment *without* padding, so a sender that
// gathers the data from several buffers can chain it; with `digest` false it is ignored.
DataTrailer make_data_trailer(size_t data_length, bool digest, uint32_t data_crc = 0);
// As above, computing the CRC over `data`.
DataTrailer make_data_trailer(std::span<const uint8_t> data, bool digest);

} // namespace ispace::iscsi
