// ErrorRecoveryLevel 1 on the target (RFC 7143 §7.1-§7.2): SNACK Requests answered from what the
// connection kept (§11.16), and a Data-Out lost to a data digest error asked for again with a recovery
// R2T (§7.8, §11.8). Level 0 never gets here: a connection has a Retention only at level 1 and up.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "iscsi_target/connection.hpp"
#include "iscsi_target/server.hpp"
#include "iscsi_target/session.hpp"

#include <fmt/format.h>

namespace ispace::iscsi_target {

namespace {

const char* refusal_text(Retention::Refusal refusal) {
    switch (refusal) {
    case Retention::Refusal::none:
        return "";
    case Retention::Refusal::unknown_task:
        return "no task with this ITT has anything to send again";
    case Retention::Refusal::not_sent:
        return "it asks for what was never sent";
    case Retention::Refusal::acknowledged:
        return "it asks for what was already acknowledged";
    case Retention::Refusal::no_longer_kept:
        return "what it asks for is no longer kept (retention bound or DefaultTime2Retain passed)";
    }
    return "";
}

} // namespace

void Connection::resend(const Retention::Pdu& pdu, bool fresh_stat_sn_field) {
    iscsi::Bhs bhs = pdu.bhs;
    // The window as it is now; the sequence numbers of the PDU itself are those it had.
    if (_session != nullptr) {
        store_be32(bhs.bytes.data() + 28, _session->exp_cmd_sn());
        store_be32(bhs.bytes.data() + 32, _session->max_cmd_sn());
    }
    if (fresh_stat_sn_field) {
        store_be32(bhs.bytes.data() + 24, current_stat_sn());
    }
    send(bhs, pdu.data, pdu.offset, pdu.length);
}

void Connection::resend_status(const Retention::Pdu& pdu) {
    if (pdu.bhs.opcode() != iscsi::Opcode::data_in) {
        resend(pdu, false);
        return;
    }
    uint32_t stat_sn = load_be32(pdu.bhs.bytes.data() + 24);
    if (const Retention::Pdu* whole = _retention->status_data_in(stat_sn)) {
        resend(*whole, false);
        return;
    }
    // The data was acknowledged (DataACK) and let go: the status goes again as a SCSI Response with the
    // same StatSN, telling how many Data-In PDUs the command had.
    auto din = iscsi::DataIn::decode(pdu.bhs);
    if (!din) {
        return;
    }
    iscsi::ScsiResponse response;
    response.status = din->status;
    response.itt = din->itt;
    response.stat_sn = din->stat_sn;
    command_window(response.exp_cmd_sn, response.max_cmd_sn);
    response.exp_data_sn = din->data_sn + 1;
    response.overflow = din->overflow;
    response.underflow = din->underflow;
    response.residual_count = din->residual_count;
    iscsi::Bhs bhs;
    response.encode(bhs);
    send(bhs);
}

void Connection::snack(const iscsi::Bhs& bhs) {
    auto request = iscsi::SnackRequest::decode(bhs);
    auto refuse = [&](iscsi::RejectReason reason, const std::string& why, uint32_t next_sn = 0) {
        _server.count_recovery(_reactor, RecoveryEvent::snack_rejected);
        reject(bhs, reason, why, next_sn);
    };
    if (!request) {
        refuse(iscsi::RejectReason::invalid_pdu_field, request.error().message);
        return;
    }
    auto refused = [&](const Retention::Lookup& lookup) {
        if (lookup.refusal == Retention::Refusal::none) {
            return false;
        }
        // §11.16: a SNACK for what was not sent or was already acknowledged is a protocol error; the
        // Reject's DataSN/R2TSN field tells the next one the target would send (§11.17). What was let
        // go at a bound is a "SNACK Reject" (§11.17.1).
        refuse(lookup.refusal == Retention::Refusal::no_longer_kept ? iscsi::RejectReason::snack_reject
                                                                    : iscsi::RejectReason::protocol_error,
               refusal_text(lookup.refusal), lookup.next_sn);
        return true;
    };
    switch (request->type) {
    case iscsi::SnackType::data_r2t: {
        Retention::Lookup lookup =
            _retention->data_or_r2t(request->itt, request->beg_run, request->run_length);
        if (refused(lookup)) {
            return;
        }
        bool r2ts = lookup.pdus.front()->bhs.opcode() == iscsi::Opcode::r2t;
        _server.count_recovery(_reactor, r2ts ? RecoveryEvent::r2t_snack : RecoveryEvent::data_snack);
        log_info("connection {}: {} SNACK for ITT {:#x}: resending {} PDU(s) from {} {}", _name,
                 r2ts ? "R2T" : "Data", request->itt, lookup.pdus.size(), r2ts ? "R2TSN" : "DataSN",
                 request->beg_run);
        // Copies: resending lets the retention drop what has aged, which may be what lookup points at.
        std::vector<Retention::Pdu> pdus;
        for (const Retention::Pdu* pdu : lookup.pdus) {
            pdus.push_back(*pdu);
        }
        for (const Retention::Pdu& pdu : pdus) {
            resend(pdu, r2ts);
        }
        return;
    }
    case iscsi::SnackType::status: {
        Retention::Lookup lookup = _retention->status(request->beg_run, request->run_length);
        if (refused(lookup)) {
            return;
        }
        _server.count_recovery(_reactor, RecoveryEvent::status_snack);
        log_info("connection {}: Status SNACK: resending {} response(s) from StatSN {}", _name,
                 lookup.pdus.size(), request->beg_run);
        // Copies: resending may add to the retention and move what the lookup points at.
        std::vector<Retention::Pdu> pdus;
        for (const Retention::Pdu* pdu : lookup.pdus) {
            pdus.push_back(*pdu);
        }
        for (const Retention::Pdu& pdu : pdus) {
            resend_status(pdu);
        }
        return;
    }
    case iscsi::SnackType::data_ack: {
        Retention::Refusal refusal =
            _retention->data_ack(request->itt, request->ttt_or_snack_tag, request->beg_run);
        if (refusal != Retention::Refusal::none) {
            refuse(iscsi::RejectReason::invalid_data_ack, std::string("DataACK: ") + refusal_text(refusal));
            return;
        }
        _server.count_recovery(_reactor, RecoveryEvent::data_ack);
        return;
    }
    case iscsi::SnackType::r_data:
        // R-Data asks for the data again in new segments after MaxRecvDataSegmentLength changed; ispaced
        // never lowers what an initiator declared in a way that needs it, and does not resegment.
        refuse(iscsi::RejectReason::snack_reject, "R-Data SNACK (resegmentation) is not implemented");
        return;
    }
}

void Connection::data_out_digest_error(const iscsi::Bhs& bhs) {
    auto header = iscsi::DataOut::decode(bhs);
    if (!header || _session == nullptr) {
        return;
    }
    _session->recover_data_out(*this, *header);
}

// ---- Session: a recovery R2T for a lost Data-Out ---------------------------------------------------

void Session::recover_data_out(Connection& connection, const iscsi::DataOut& header) {
    DataOutCheck check = check_data_out(connection, header);
    switch (check.verdict) {
    case DataOutCheck::Verdict::drop:
    case DataOutCheck::Verdict::reject: // the digest Reject has answered it
        return;
    case DataOutCheck::Verdict::fail_command:
        // Not where the data was expected: the sequence is broken whatever its data was.
        fail_data_out(*check.command, check.sense, check.error);
        return;
    case DataOutCheck::Verdict::land:
        break;
    }
    IscsiTask& command = *check.command;
    uint32_t length = header.data_segment_length;
    // The header is sound (its digest passed): account for the PDU as if it had landed, and move its
    // range into a burst of its own that the recovery R2T asks for. The initiator carries on with the
    // rest of its sequence meanwhile.
    advance_data_out_sequence(command, header);
    uint32_t r2t_sn = send_r2t(command, connection, header.buffer_offset, length);
    _server.count_recovery(connection.reactor(), RecoveryEvent::recovery_r2t);
    log_info("{}: recovery R2T for ITT {:#x}: {} bytes at offset {} (R2TSN {})", _name, command.itt, length,
             header.buffer_offset, r2t_sn);
}

} // namespace ispace::iscsi_target
