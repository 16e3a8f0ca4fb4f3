// PDU encode/decode against the RFC 7143 §11 layouts, validation of impossible combinations, AHS,
// ISID, serial-number arithmetic, describe() and the send-side helpers.
#include "iscsi/pdu.hpp"

#include "common/bytes.hpp"
#include "iscsi/crc32c.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

uint32_t be32(const Bhs& b, size_t off) {
    return load_be32(b.bytes.data() + off);
}
uint16_t be16(const Bhs& b, size_t off) {
    return load_be16(b.bytes.data() + off);
}

// Fills every byte with junk so encode() must overwrite (or zero) all of it.
Bhs junk_bhs() {
    Bhs b;
    b.bytes.fill(0xa5);
    return b;
}

// Sets bytes that are reserved in a PDU to junk, to check that decode ignores them.
void scribble(Bhs& b, std::initializer_list<size_t> offsets) {
    for (size_t o : offsets) {
        b.bytes[o] = 0x5a;
    }
}

} // namespace

// ---- Bhs -------------------------------------------------------------------------------------------

TEST(PduBhs, CommonFields) {
    Bhs b;
    b.set_opcode(Opcode::scsi_command, true);
    b.set_final_bit(true);
    b.set_total_ahs_length(3);
    b.set_data_segment_length(0x123456);
    b.set_lun(0x0001000000000000ull);
    b.set_itt(0xdeadbeef);
    EXPECT_EQ(b.bytes[0], 0x41);
    EXPECT_EQ(b.bytes[1], 0x80);
    EXPECT_EQ(b.opcode(), Opcode::scsi_command);
    EXPECT_TRUE(b.immediate());
    EXPECT_TRUE(b.final_bit());
    EXPECT_EQ(b.total_ahs_length(), 3);
    EXPECT_EQ(b.ahs_bytes(), 12u);
    EXPECT_EQ(b.data_segment_length(), 0x123456u);
    EXPECT_EQ(b.bytes[5], 0x12);
    EXPECT_EQ(b.bytes[7], 0x56);
    EXPECT_EQ(b.lun(), 0x0001000000000000ull);
    EXPECT_EQ(b.bytes[9], 0x01);
    EXPECT_EQ(b.itt(), 0xdeadbeefu);
    EXPECT_EQ(b.bytes[16], 0xde);
    b.set_final_bit(false);
    EXPECT_FALSE(b.final_bit());
    b.set_opcode(Opcode::nop_out, false);
    EXPECT_FALSE(b.immediate());
    // Bit 7 of byte 0 is reserved: it does not change the opcode.
    b.bytes[0] = 0x80 | 0x25;
    EXPECT_EQ(b.opcode(), Opcode::data_in);
    // DSL is 24 bits.
    b.set_data_segment_length(0xffffff);
    EXPECT_EQ(b.data_segment_length(), max_data_segment_length);
}

TEST(PduBhs, OpcodeNames) {
    EXPECT_TRUE(is_known_opcode(0x00));
    EXPECT_TRUE(is_known_opcode(0x10));
    EXPECT_TRUE(is_known_opcode(0x1d));
    EXPECT_TRUE(is_known_opcode(0x31));
    EXPECT_TRUE(is_known_opcode(0x3f));
    EXPECT_FALSE(is_known_opcode(0x07));
    EXPECT_FALSE(is_known_opcode(0x27));
    EXPECT_FALSE(is_known_opcode(0x30));
    EXPECT_TRUE(is_initiator_opcode(0x06));
    EXPECT_FALSE(is_initiator_opcode(0x21));
    EXPECT_EQ(opcode_name(0x01), "SCSI Command");
    EXPECT_EQ(opcode_name(0x3f), "Reject");
    EXPECT_EQ(opcode_name(0x0b), "opcode 0x0b");
}

// ---- Initiator PDUs --------------------------------------------------------------------------------

TEST(PduScsiCommand, DecodesTheRfc3720ReadExample) {
    // RFC 3720 B.4: a SCSI Read (10) Command PDU.
    Bhs b;
    b.bytes[0] = 0x01;
    b.bytes[1] = 0xc0;
    b.bytes[16] = 0x14;
    b.bytes[22] = 0x04;
    b.bytes[27] = 0x14;
    b.bytes[31] = 0x18;
    b.bytes[32] = 0x28;
    b.bytes[40] = 0x02;
    auto c = ScsiCommand::decode(b);
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_FALSE(c->immediate);
    EXPECT_TRUE(c->final_bit);
    EXPECT_TRUE(c->read);
    EXPECT_FALSE(c->write);
    EXPECT_EQ(c->attr, scsi::TaskAttribute::untagged);
    EXPECT_EQ(c->itt, 0x14000000u);
    EXPECT_EQ(c->expected_data_transfer_length, 1024u);
    EXPECT_EQ(c->cmd_sn, 0x14u);
    EXPECT_EQ(c->exp_stat_sn, 0x18u);
    EXPECT_EQ(c->cdb[0], 0x28);
    EXPECT_EQ(c->cdb[8], 0x02);
    Bhs again = junk_bhs();
    c->encode(again);
    EXPECT_EQ(again, b);
}

TEST(PduScsiCommand, RoundTripAndLayout) {
    ScsiCommand c;
    c.immediate = true;
    c.final_bit = false;
    c.read = true;
    c.write = true;
    c.attr = scsi::TaskAttribute::head_of_queue;
    c.total_ahs_length = 2;
    c.data_segment_length = 512;
    c.lun = 0x0102030405060708ull;
    c.itt = 0x11223344;
    c.expected_data_transfer_length = 8192;
    c.cmd_sn = 0xfffffffe;
    c.exp_stat_sn = 77;
    for (size_t i = 0; i < 16; ++i) {
        c.cdb[i] = uint8_t(0xc0 + i);
    }
    Bhs b = junk_bhs();
    c.encode(b);
    EXPECT_EQ(b.bytes[0], 0x41);
    EXPECT_EQ(b.bytes[1], 0x63); // R|W|ATTR=3
    EXPECT_EQ(b.bytes[2], 0);
    EXPECT_EQ(b.bytes[3], 0);
    EXPECT_EQ(b.bytes[4], 2);
    EXPECT_EQ(b.data_segment_length(), 512u);
    EXPECT_EQ(b.lun(), c.lun);
    EXPECT_EQ(be32(b, 20), 8192u);
    EXPECT_EQ(be32(b, 24), 0xfffffffeu);
    EXPECT_EQ(be32(b, 28), 77u);
    EXPECT_EQ(b.bytes[32], 0xc0);
    EXPECT_EQ(b.bytes[47], 0xcf);
    auto d = ScsiCommand::decode(b);
    ASSERT_TRUE(d.ok()) << d.error().message;
    EXPECT_TRUE(d->immediate);
    EXPECT_FALSE(d->final_bit);
    EXPECT_TRUE(d->read);
    EXPECT_TRUE(d->write);
    EXPECT_EQ(d->attr, scsi::TaskAttribute::head_of_queue);
    EXPECT_EQ(d->total_ahs_length, 2);
    EXPECT_EQ(d->data_segment_length, 512u);
    EXPECT_EQ(d->lun, c.lun);
    EXPECT_EQ(d->itt, c.itt);
    EXPECT_EQ(d->expected_data_transfer_length, 8192u);
    EXPECT_EQ(d->cmd_sn, c.cmd_sn);
    EXPECT_EQ(d->exp_stat_sn, 77u);
    EXPECT_EQ(d->cdb, c.cdb);
}

TEST(PduScsiCommand, RejectsImpossibleCombinations) {
    auto make = [](bool f, bool r, bool w, uint32_t edtl, uint32_t dsl) {
        ScsiCommand c;
        c.final_bit = f;
        c.read = r;
        c.write = w;
        c.expected_data_transfer_length = edtl;
        c.data_segment_length = dsl;
        Bhs b;
        c.encode(b);
        return ScsiCommand::decode(b);
    };
    EXPECT_TRUE(make(true, false, false, 0, 0).ok());       // TEST UNIT READY
    EXPECT_TRUE(make(true, true, false, 4096, 0).ok());     // read
    EXPECT_TRUE(make(false, false, true, 4096, 1024).ok()); // write, unsolicited Data-Out follows
    EXPECT_TRUE(make(true, false, true, 4096, 4096).ok());  // write, all immediate
    EXPECT_TRUE(make(true, true, false, 0, 0).ok());        // R with EDTL 0 is allowed
    auto e = make(false, true, false, 4096, 0);             // neither F nor W
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, EPROTO);
    EXPECT_FALSE(make(true, false, false, 512, 0).ok());     // data expected, no direction
    EXPECT_FALSE(make(true, true, false, 4096, 512).ok());   // immediate data without W
    EXPECT_FALSE(make(true, false, true, 1024, 2048).ok());  // immediate data beyond EDTL
    EXPECT_FALSE(make(false, false, true, 1024, 1024).ok()); // F=0 but nothing left to send
    EXPECT_FALSE(make(false, false, true, 0, 0).ok());
    // Wrong opcode.
    Bhs b;
    NopOut{.immediate = true}.encode(b);
    EXPECT_FALSE(ScsiCommand::decode(b).ok());
}

TEST(PduTaskMgmt, RequestRoundTrip) {
    TaskMgmtRequest t;
    t.immediate = true;
    t.function = TmfFunction::abort_task;
    t.lun = 5ull << 48;
    t.itt = 9;
    t.referenced_task_tag = 0x1234;
    t.cmd_sn = 100;
    t.exp_stat_sn = 200;
    t.ref_cmd_sn = 99;
    t.exp_data_sn = 3;
    Bhs b = junk_bhs();
    t.encode(b);
    EXPECT_EQ(b.bytes[0], 0x42);
    EXPECT_EQ(b.bytes[1], 0x81);
    EXPECT_EQ(b.data_segment_length(), 0u);
    EXPECT_EQ(be32(b, 20), 0x1234u);
    EXPECT_EQ(be32(b, 32), 99u);
    EXPECT_EQ(be32(b, 36), 3u);
    EXPECT_EQ(be32(b, 40), 0u);
    auto d = TaskMgmtRequest::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->immediate);
    EXPECT_EQ(d->function, TmfFunction::abort_task);
    EXPECT_EQ(d->lun, t.lun);
    EXPECT_EQ(d->itt, 9u);
    EXPECT_EQ(d->referenced_task_tag, 0x1234u);
    EXPECT_EQ(d->cmd_sn, 100u);
    EXPECT_EQ(d->exp_stat_sn, 200u);
    EXPECT_EQ(d->ref_cmd_sn, 99u);
    EXPECT_EQ(d->exp_data_sn, 3u);

    // Unknown functions decode (the target answers "not supported"); the F bit is not checked.
    b.bytes[1] = 0x7f;
    auto u = TaskMgmtRequest::decode(b);
    ASSERT_TRUE(u.ok());
    EXPECT_FALSE(is_known_tmf_function(u->function));
    EXPECT_TRUE(is_known_tmf_function(TmfFunction::task_reassign));
    // A data segment is not allowed.
    b.set_data_segment_length(4);
    EXPECT_FALSE(TaskMgmtRequest::decode(b).ok());
}

TEST(PduTaskMgmt, ResponseRoundTrip) {
    TaskMgmtResponse t{TmfResponse::function_rejected, 0x77, 5, 6, 7};
    Bhs b = junk_bhs();
    t.encode(b);
    EXPECT_EQ(b.bytes[0], 0x22);
    EXPECT_EQ(b.bytes[1], 0x80);
    EXPECT_EQ(b.bytes[2], 255);
    EXPECT_EQ(be32(b, 20), 0u);
    EXPECT_EQ(be32(b, 24), 5u);
    EXPECT_EQ(be32(b, 32), 7u);
    auto d = TaskMgmtResponse::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->response, TmfResponse::function_rejected);
    EXPECT_EQ(d->itt, 0x77u);
    EXPECT_EQ(d->stat_sn, 5u);
    EXPECT_EQ(d->exp_cmd_sn, 6u);
    EXPECT_EQ(d->max_cmd_sn, 7u);
}

TEST(PduDataOut, RoundTripIgnoresReserved) {
    DataOut o;
    o.final_bit = true;
    o.data_segment_length = 8192;
    o.lun = 1ull << 48;
    o.itt = 0x10;
    o.ttt = 0x20;
    o.exp_stat_sn = 30;
    o.data_sn = 4;
    o.buffer_offset = 32768;
    Bhs b = junk_bhs();
    o.encode(b);
    EXPECT_EQ(b.bytes[0], 0x05);
    EXPECT_EQ(b.bytes[1], 0x80);
    EXPECT_EQ(be32(b, 24), 0u); // reserved, zero on send
    EXPECT_EQ(be32(b, 36), 4u);
    EXPECT_EQ(be32(b, 40), 32768u);
    EXPECT_EQ(be32(b, 44), 0u);
    scribble(b, {2, 3, 24, 25, 32, 44, 47});
    auto d = DataOut::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->final_bit);
    EXPECT_EQ(d->data_segment_length, 8192u);
    EXPECT_EQ(d->lun, o.lun);
    EXPECT_EQ(d->itt, 0x10u);
    EXPECT_EQ(d->ttt, 0x20u);
    EXPECT_EQ(d->exp_stat_sn, 30u);
    EXPECT_EQ(d->data_sn, 4u);
    EXPECT_EQ(d->buffer_offset, 32768u);
}

TEST(PduText, RequestAndResponse) {
    TextRequest r;
    r.immediate = true;
    r.final_bit = false;
    r.continue_bit = true;
    r.data_segment_length = 100;
    r.itt = 1;
    r.ttt = 0x55;
    r.cmd_sn = 2;
    r.exp_stat_sn = 3;
    Bhs b = junk_bhs();
    r.encode(b);
    EXPECT_EQ(b.bytes[0], 0x44);
    EXPECT_EQ(b.bytes[1], 0x40);
    auto d = TextRequest::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->immediate);
    EXPECT_FALSE(d->final_bit);
    EXPECT_TRUE(d->continue_bit);
    EXPECT_EQ(d->ttt, 0x55u);
    EXPECT_EQ(d->cmd_sn, 2u);
    EXPECT_EQ(d->exp_stat_sn, 3u);
    EXPECT_EQ(d->data_segment_length, 100u);
    b.bytes[1] = 0xc0; // F and C
    EXPECT_FALSE(TextRequest::decode(b).ok());

    TextResponse s;
    s.final_bit = false;
    s.continue_bit = true;
    s.itt = 1;
    s.ttt = 0x99;
    s.stat_sn = 4;
    s.exp_cmd_sn = 5;
    s.max_cmd_sn = 6;
    s.data_segment_length = 8;
    s.encode(b);
    EXPECT_EQ(b.bytes[0], 0x24);
    EXPECT_EQ(be32(b, 32), 6u);
    auto t = TextResponse::decode(b);
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(t->continue_bit);
    EXPECT_EQ(t->ttt, 0x99u);
    EXPECT_EQ(t->stat_sn, 4u);
    EXPECT_EQ(t->exp_cmd_sn, 5u);
    EXPECT_EQ(t->max_cmd_sn, 6u);
    b.bytes[1] = 0xc0;
    EXPECT_FALSE(TextResponse::decode(b).ok());
    // F=0 needs a TTT to continue with.
    s.continue_bit = false;
    s.ttt = reserved_tag;
    s.encode(b);
    EXPECT_FALSE(TextResponse::decode(b).ok());
    s.final_bit = true;
    s.encode(b);
    EXPECT_TRUE(TextResponse::decode(b).ok());
}

TEST(PduLogin, RequestRoundTripAndLayout) {
    LoginRequest l;
    l.transit = true;
    l.csg = LoginStage::security;
    l.nsg = LoginStage::operational;
    l.version_max = 0;
    l.version_min = 0;
    l.data_segment_length = 300;
    l.isid = Isid{0x80, 0x12, 0x34, 0x56, 0x78, 0x9a};
    l.tsih = 0x0102;
    l.itt = 0xa;
    l.cid = 0xbeef;
    l.cmd_sn = 1;
    l.exp_stat_sn = 0;
    Bhs b = junk_bhs();
    l.encode(b);
    EXPECT_EQ(b.bytes[0], 0x43); // always immediate
    EXPECT_EQ(b.bytes[1], 0x81); // T, CSG 0, NSG 1
    EXPECT_EQ(b.bytes[8], 0x80);
    EXPECT_EQ(b.bytes[13], 0x9a);
    EXPECT_EQ(be16(b, 14), 0x0102);
    EXPECT_EQ(be16(b, 20), 0xbeef);
    EXPECT_EQ(be16(b, 22), 0);
    auto d = LoginRequest::decode(b);
    ASSERT_TRUE(d.ok()) << d.error().message;
    EXPECT_TRUE(d->transit);
    EXPECT_FALSE(d->continue_bit);
    EXPECT_EQ(d->csg, LoginStage::security);
    EXPECT_EQ(d->nsg, LoginStage::operational);
    EXPECT_EQ(d->isid, l.isid);
    EXPECT_EQ(d->tsih, 0x0102);
    EXPECT_EQ(d->cid, 0xbeef);
    EXPECT_EQ(d->itt, 0xau);
    EXPECT_EQ(d->cmd_sn, 1u);
    EXPECT_EQ(d->data_segment_length, 300u);

    // Operational -> full feature.
    l.csg = LoginStage::operational;
    l.nsg = LoginStage::full_feature;
    l.encode(b);
    EXPECT_EQ(b.bytes[1], 0x87);
    ASSERT_TRUE(LoginRequest::decode(b).ok());
    // Without T the NSG bits are reserved: zero on send, ignored on receipt.
    l.transit = false;
    l.continue_bit = true;
    l.encode(b);
    EXPECT_EQ(b.bytes[1], 0x44);
    b.bytes[1] |= 0x02;
    auto c = LoginRequest::decode(b);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->nsg, LoginStage::operational);
}

TEST(PduLogin, RequestRejectsBadStages) {
    auto with_flags = [](uint8_t flags, uint8_t vmax = 0, uint8_t vmin = 0) {
        LoginRequest l;
        Bhs b;
        l.encode(b);
        b.bytes[1] = flags;
        b.bytes[2] = vmax;
        b.bytes[3] = vmin;
        return LoginRequest::decode(b);
    };
    EXPECT_TRUE(with_flags(0x00).ok());        // security, no transit
    EXPECT_TRUE(with_flags(0x83).ok());        // T 0 -> 3
    EXPECT_TRUE(with_flags(0x87).ok());        // T 1 -> 3
    EXPECT_FALSE(with_flags(0xc1).ok());       // T and C
    EXPECT_FALSE(with_flags(0x08).ok());       // CSG 2
    EXPECT_FALSE(with_flags(0x0c).ok());       // CSG 3
    EXPECT_FALSE(with_flags(0x82).ok());       // T to NSG 2
    EXPECT_FALSE(with_flags(0x80).ok());       // T 0 -> 0
    EXPECT_FALSE(with_flags(0x85).ok());       // T 1 -> 1
    EXPECT_FALSE(with_flags(0x00, 0, 1).ok()); // Version-max < Version-min
    EXPECT_TRUE(with_flags(0x00, 2, 0).ok());
}

TEST(PduLogin, ResponseRoundTripAndStatus) {
    LoginResponse l;
    l.transit = true;
    l.csg = LoginStage::operational;
    l.nsg = LoginStage::full_feature;
    l.version_max = 0;
    l.version_active = 0;
    l.isid = isid_from_u64(0x400001370000ull);
    l.tsih = 7;
    l.itt = 0xa;
    l.stat_sn = 0x1000;
    l.exp_cmd_sn = 2;
    l.max_cmd_sn = 33;
    l.data_segment_length = 64;
    l.set_status(LoginStatus::success);
    Bhs b = junk_bhs();
    l.encode(b);
    EXPECT_EQ(b.bytes[0], 0x23);
    EXPECT_EQ(b.bytes[1], 0x87);
    EXPECT_EQ(be32(b, 20), 0u);
    EXPECT_EQ(be32(b, 24), 0x1000u);
    EXPECT_EQ(b.bytes[36], 0);
    EXPECT_EQ(b.bytes[37], 0);
    auto d = LoginResponse::decode(b);
    ASSERT_TRUE(d.ok()) << d.error().message;
    EXPECT_TRUE(d->transit);
    EXPECT_EQ(d->csg, LoginStage::operational);
    EXPECT_EQ(d->nsg, LoginStage::full_feature);
    EXPECT_EQ(d->isid, l.isid);
    EXPECT_EQ(d->tsih, 7);
    EXPECT_EQ(d->stat_sn, 0x1000u);
    EXPECT_EQ(d->exp_cmd_sn, 2u);
    EXPECT_EQ(d->max_cmd_sn, 33u);
    EXPECT_EQ(d->status(), LoginStatus::success);

    l.set_status(LoginStatus::authentication_failure);
    EXPECT_EQ(l.status_class, uint8_t(LoginStatusClass::initiator_error));
    EXPECT_EQ(l.status_detail, 1);
    l.encode(b);
    EXPECT_EQ(b.bytes[36], 2);
    EXPECT_EQ(b.bytes[37], 1);
    // A failed login is reported even with nonsense stage bits.
    b.bytes[1] = 0xcb;
    auto f = LoginResponse::decode(b);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->status(), LoginStatus::authentication_failure);
    EXPECT_FALSE(f->transit);
    // A successful one with the same bits is not.
    b.bytes[36] = 0;
    b.bytes[37] = 0;
    EXPECT_FALSE(LoginResponse::decode(b).ok());
}

TEST(PduLogout, RequestAndResponse) {
    LogoutRequest r;
    r.immediate = true;
    r.reason = LogoutReason::remove_connection_for_recovery;
    r.itt = 3;
    r.cid = 9;
    r.cmd_sn = 10;
    r.exp_stat_sn = 11;
    Bhs b = junk_bhs();
    r.encode(b);
    EXPECT_EQ(b.bytes[0], 0x46);
    EXPECT_EQ(b.bytes[1], 0x82);
    EXPECT_EQ(be16(b, 20), 9);
    auto d = LogoutRequest::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->reason, LogoutReason::remove_connection_for_recovery);
    EXPECT_EQ(d->cid, 9);
    EXPECT_EQ(d->cmd_sn, 10u);
    EXPECT_EQ(d->exp_stat_sn, 11u);
    b.bytes[1] = 0x83;
    EXPECT_FALSE(LogoutRequest::decode(b).ok());

    LogoutResponse s{LogoutResponseCode::cid_not_found, 3, 4, 5, 6, 2, 20};
    s.encode(b);
    EXPECT_EQ(b.bytes[0], 0x26);
    EXPECT_EQ(b.bytes[2], 1);
    EXPECT_EQ(be16(b, 40), 2);
    EXPECT_EQ(be16(b, 42), 20);
    auto t = LogoutResponse::decode(b);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->response, LogoutResponseCode::cid_not_found);
    EXPECT_EQ(t->time2wait, 2);
    EXPECT_EQ(t->time2retain, 20);
    EXPECT_EQ(t->max_cmd_sn, 6u);
    b.bytes[2] = 4;
    EXPECT_FALSE(LogoutResponse::decode(b).ok());
}

TEST(PduSnack, RoundTrip) {
    SnackRequest s;
    s.type = SnackType::r_data;
    s.lun = 2ull << 48;
    s.itt = 0x40;
    s.ttt_or_snack_tag = 0x50;
    s.exp_stat_sn = 60;
    s.beg_run = 0;
    s.run_length = 0;
    Bhs b = junk_bhs();
    s.encode(b);
    EXPECT_EQ(b.bytes[0], 0x10);
    EXPECT_EQ(b.bytes[1], 0x83);
    EXPECT_EQ(be32(b, 24), 0u);
    auto d = SnackRequest::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->type, SnackType::r_data);
    EXPECT_EQ(d->ttt_or_snack_tag, 0x50u);
    s.type = SnackType::data_r2t;
    s.beg_run = 5;
    s.run_length = 7;
    s.encode(b);
    d = SnackRequest::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->beg_run, 5u);
    EXPECT_EQ(d->run_length, 7u);
    b.bytes[1] = 0x84;
    EXPECT_FALSE(SnackRequest::decode(b).ok());
}

TEST(PduNop, OutSemantics) {
    NopOut n;
    n.immediate = true;
    n.itt = reserved_tag;
    n.ttt = 0x1234; // answering a target ping
    n.lun = 3ull << 48;
    n.cmd_sn = 8;
    n.exp_stat_sn = 9;
    Bhs b = junk_bhs();
    n.encode(b);
    EXPECT_EQ(b.bytes[0], 0x40);
    EXPECT_EQ(b.bytes[1], 0x80);
    auto d = NopOut::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->ttt, 0x1234u);
    EXPECT_EQ(d->itt, reserved_tag);
    // ITT 0xffffffff without I is a protocol error.
    n.immediate = false;
    n.encode(b);
    EXPECT_FALSE(NopOut::decode(b).ok());
    // A ping with ping data.
    n.itt = 5;
    n.ttt = reserved_tag;
    n.data_segment_length = 16;
    n.encode(b);
    d = NopOut::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->data_segment_length, 16u);
}

TEST(PduNop, InSemantics) {
    NopIn n;
    n.itt = 5; // answer
    n.ttt = reserved_tag;
    n.data_segment_length = 16;
    n.stat_sn = 1;
    n.exp_cmd_sn = 2;
    n.max_cmd_sn = 3;
    Bhs b = junk_bhs();
    n.encode(b);
    EXPECT_EQ(b.bytes[0], 0x20);
    auto d = NopIn::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->max_cmd_sn, 3u);
    // Ping: ITT reserved, TTT valid, no data.
    n.itt = reserved_tag;
    n.ttt = 0x77;
    n.data_segment_length = 0;
    n.encode(b);
    ASSERT_TRUE(NopIn::decode(b).ok());
    n.data_segment_length = 4;
    n.encode(b);
    EXPECT_FALSE(NopIn::decode(b).ok());
    n.data_segment_length = 0;
    n.itt = 5;
    n.encode(b);
    EXPECT_FALSE(NopIn::decode(b).ok()); // both tags valid
}

// ---- Target PDUs -----------------------------------------------------------------------------------

TEST(PduScsiResponse, RoundTripAndFlags) {
    ScsiResponse r;
    r.bidi_read_underflow = true;
    r.overflow = true;
    r.response = 0;
    r.status = 0x02;
    r.data_segment_length = 20;
    r.itt = 0x31;
    r.snack_tag = 0x32;
    r.stat_sn = 0x33;
    r.exp_cmd_sn = 0x34;
    r.max_cmd_sn = 0x35;
    r.exp_data_sn = 0x36;
    r.bidi_read_residual_count = 0x37;
    r.residual_count = 0x38;
    Bhs b = junk_bhs();
    r.encode(b);
    EXPECT_EQ(b.bytes[0], 0x21);
    EXPECT_EQ(b.bytes[1], 0x80 | 0x08 | 0x04);
    EXPECT_EQ(b.bytes[3], 0x02);
    EXPECT_EQ(be32(b, 8), 0u);
    EXPECT_EQ(be32(b, 20), 0x32u);
    EXPECT_EQ(be32(b, 36), 0x36u);
    EXPECT_EQ(be32(b, 40), 0x37u);
    EXPECT_EQ(be32(b, 44), 0x38u);
    auto d = ScsiResponse::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_FALSE(d->bidi_read_overflow);
    EXPECT_TRUE(d->bidi_read_underflow);
    EXPECT_TRUE(d->overflow);
    EXPECT_FALSE(d->underflow);
    EXPECT_EQ(d->status, 0x02);
    EXPECT_EQ(d->stat_sn, 0x33u);
    EXPECT_EQ(d->exp_cmd_sn, 0x34u);
    EXPECT_EQ(d->max_cmd_sn, 0x35u);
    EXPECT_EQ(d->residual_count, 0x38u);
    EXPECT_EQ(d->bidi_read_residual_count, 0x37u);
    b.bytes[1] = 0x86; // O and U
    EXPECT_FALSE(ScsiResponse::decode(b).ok());
    b.bytes[1] = 0x98; // o and u
    EXPECT_FALSE(ScsiResponse::decode(b).ok());
}

TEST(PduDataIn, RoundTripAndValidation) {
    DataIn d;
    d.final_bit = true;
    d.status_present = true;
    d.underflow = true;
    d.status = 0;
    d.data_segment_length = 4096;
    d.itt = 0x10;
    d.stat_sn = 50;
    d.exp_cmd_sn = 51;
    d.max_cmd_sn = 52;
    d.data_sn = 2;
    d.buffer_offset = 8192;
    d.residual_count = 512;
    Bhs b = junk_bhs();
    d.encode(b);
    EXPECT_EQ(b.bytes[0], 0x25);
    EXPECT_EQ(b.bytes[1], 0x83);
    EXPECT_EQ(be32(b, 20), reserved_tag);
    EXPECT_EQ(be32(b, 44), 512u);
    auto e = DataIn::decode(b);
    ASSERT_TRUE(e.ok());
    EXPECT_TRUE(e->status_present);
    EXPECT_TRUE(e->underflow);
    EXPECT_EQ(e->data_sn, 2u);
    EXPECT_EQ(e->buffer_offset, 8192u);
    EXPECT_EQ(e->stat_sn, 50u);
    EXPECT_EQ(e->residual_count, 512u);
    b.bytes[1] = 0x01; // S without F
    EXPECT_FALSE(DataIn::decode(b).ok());
    b.bytes[1] = 0x87; // O and U
    EXPECT_FALSE(DataIn::decode(b).ok());
    b.bytes[1] = 0x06; // O/U without S: ignored
    e = DataIn::decode(b);
    ASSERT_TRUE(e.ok());
    EXPECT_FALSE(e->overflow);
    EXPECT_FALSE(e->underflow);
    b.bytes[1] = 0x40; // A
    e = DataIn::decode(b);
    ASSERT_TRUE(e.ok());
    EXPECT_TRUE(e->acknowledge);
    EXPECT_FALSE(e->final_bit);
}

TEST(PduR2t, RoundTripAndValidation) {
    R2t r;
    r.lun = 1ull << 48;
    r.itt = 1;
    r.ttt = 2;
    r.stat_sn = 3;
    r.exp_cmd_sn = 4;
    r.max_cmd_sn = 5;
    r.r2t_sn = 6;
    r.buffer_offset = 65536;
    r.desired_data_transfer_length = 262144;
    Bhs b = junk_bhs();
    r.encode(b);
    EXPECT_EQ(b.bytes[0], 0x31);
    EXPECT_EQ(b.bytes[1], 0x80);
    EXPECT_EQ(be32(b, 36), 6u);
    EXPECT_EQ(be32(b, 40), 65536u);
    EXPECT_EQ(be32(b, 44), 262144u);
    auto d = R2t::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->ttt, 2u);
    EXPECT_EQ(d->r2t_sn, 6u);
    EXPECT_EQ(d->desired_data_transfer_length, 262144u);
    r.desired_data_transfer_length = 0;
    r.encode(b);
    EXPECT_FALSE(R2t::decode(b).ok());
    r.desired_data_transfer_length = 1;
    r.ttt = reserved_tag;
    r.encode(b);
    EXPECT_FALSE(R2t::decode(b).ok());
    r.ttt = 2;
    r.encode(b);
    b.set_data_segment_length(4);
    EXPECT_FALSE(R2t::decode(b).ok());
}

TEST(PduAsync, RoundTrip) {
    AsyncMessage a;
    a.lun = 4ull << 48;
    a.stat_sn = 1;
    a.exp_cmd_sn = 2;
    a.max_cmd_sn = 3;
    a.event = AsyncEvent::logout_request;
    a.vendor_code = 9;
    a.parameter1 = 0x1111;
    a.parameter2 = 0x2222;
    a.parameter3 = 0x3333;
    a.data_segment_length = 18;
    Bhs b = junk_bhs();
    a.encode(b);
    EXPECT_EQ(b.bytes[0], 0x32);
    EXPECT_EQ(b.itt(), reserved_tag);
    EXPECT_EQ(b.bytes[36], 1);
    EXPECT_EQ(b.bytes[37], 9);
    EXPECT_EQ(be16(b, 38), 0x1111);
    EXPECT_EQ(be16(b, 40), 0x2222);
    EXPECT_EQ(be16(b, 42), 0x3333);
    EXPECT_EQ(be32(b, 44), 0u);
    auto d = AsyncMessage::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->event, AsyncEvent::logout_request);
    EXPECT_EQ(d->parameter3, 0x3333);
    EXPECT_EQ(d->lun, a.lun);
    EXPECT_EQ(d->data_segment_length, 18u);
}

TEST(PduReject, RoundTrip) {
    Reject r;
    r.reason = RejectReason::data_digest_error;
    r.stat_sn = 10;
    r.exp_cmd_sn = 11;
    r.max_cmd_sn = 12;
    Bhs b = junk_bhs();
    r.encode(b);
    EXPECT_EQ(b.bytes[0], 0x3f);
    EXPECT_EQ(b.bytes[2], 0x02);
    EXPECT_EQ(b.itt(), reserved_tag);
    EXPECT_EQ(b.data_segment_length(), 48u);
    auto d = Reject::decode(b);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->reason, RejectReason::data_digest_error);
    EXPECT_EQ(d->stat_sn, 10u);
    b.set_data_segment_length(12);
    EXPECT_FALSE(Reject::decode(b).ok());
}

TEST(PduDecode, EveryDecoderChecksItsOpcode) {
    Bhs b;
    b.set_opcode(Opcode::vendor_target_3c);
    EXPECT_FALSE(ScsiCommand::decode(b).ok());
    EXPECT_FALSE(TaskMgmtRequest::decode(b).ok());
    EXPECT_FALSE(DataOut::decode(b).ok());
    EXPECT_FALSE(TextRequest::decode(b).ok());
    EXPECT_FALSE(LoginRequest::decode(b).ok());
    EXPECT_FALSE(LogoutRequest::decode(b).ok());
    EXPECT_FALSE(SnackRequest::decode(b).ok());
    EXPECT_FALSE(NopOut::decode(b).ok());
    EXPECT_FALSE(ScsiResponse::decode(b).ok());
    EXPECT_FALSE(TaskMgmtResponse::decode(b).ok());
    EXPECT_FALSE(DataIn::decode(b).ok());
    EXPECT_FALSE(R2t::decode(b).ok());
    EXPECT_FALSE(AsyncMessage::decode(b).ok());
    EXPECT_FALSE(TextResponse::decode(b).ok());
    EXPECT_FALSE(LoginResponse::decode(b).ok());
    EXPECT_FALSE(LogoutResponse::decode(b).ok());
    EXPECT_FALSE(Reject::decode(b).ok());
    EXPECT_FALSE(NopIn::decode(b).ok());
    auto e = NopIn::decode(b);
    EXPECT_NE(e.error().message.find("Vendor Target 0x3c"), std::string::npos) << e.error().message;
}

TEST(PduDecode, ArbitraryBytesNeverCrash) {
    // Cheap stand-in for the fuzzer: every decoder on pseudo-random headers.
    uint32_t x = 12345;
    for (int i = 0; i < 20000; ++i) {
        Bhs b;
        for (auto& byte : b.bytes) {
            x = x * 1103515245 + 12345;
            byte = uint8_t(x >> 16);
        }
        (void)ScsiCommand::decode(b);
        (void)TaskMgmtRequest::decode(b);
        (void)DataOut::decode(b);
        (void)TextRequest::decode(b);
        (void)LoginRequest::decode(b);
        (void)LogoutRequest::decode(b);
        (void)SnackRequest::decode(b);
        (void)NopOut::decode(b);
        (void)ScsiResponse::decode(b);
        (void)TaskMgmtResponse::decode(b);
        (void)DataIn::decode(b);
        (void)R2t::decode(b);
        (void)AsyncMessage::decode(b);
        (void)TextResponse::decode(b);
        (void)LoginResponse::decode(b);
        (void)LogoutResponse::decode(b);
        (void)Reject::decode(b);
        (void)NopIn::decode(b);
        EXPECT_FALSE(describe(b).empty());
        (void)parse_ahs(std::span<const uint8_t>(b.bytes.data(), 44));
    }
}

// ---- describe --------------------------------------------------------------------------------------

TEST(PduDescribe, NamesTheImportantFields) {
    ScsiCommand c;
    c.read = true;
    c.itt = 0x10;
    c.cmd_sn = 5;
    c.expected_data_transfer_length = 4096;
    c.cdb[0] = 0x28;
    Bhs b;
    c.encode(b);
    std::string s = describe(b);
    EXPECT_NE(s.find("SCSI Command"), std::string::npos) << s;
    EXPECT_NE(s.find("itt=0x00000010"), std::string::npos) << s;
    EXPECT_NE(s.find("cmdsn=5"), std::string::npos) << s;
    EXPECT_NE(s.find("edtl=4096"), std::string::npos) << s;
    EXPECT_NE(s.find("cdb=28"), std::string::npos) << s;

    LoginRequest l;
    l.isid = isid_from_u64(0x400001370000ull);
    l.encode(b);
    s = describe(b);
    EXPECT_NE(s.find("isid=400001370000"), std::string::npos) << s;

    b.bytes[0] = 0x0b;
    EXPECT_NE(describe(b).find("opcode 0x0b"), std::string::npos);
}

// ---- ISID and serial numbers -----------------------------------------------------------------------

TEST(PduIsid, FormatAndParse) {
    Isid isid{0x40, 0x00, 0x01, 0x37, 0x00, 0x0a};
    EXPECT_EQ(format_isid(isid), "40000137000a");
    auto p = parse_isid("40000137000A");
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, isid);
    p = parse_isid("0x40000137000a");
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, isid);
    EXPECT_FALSE(parse_isid("4000013700").ok());
    EXPECT_FALSE(parse_isid("40000137000g").ok());
    EXPECT_FALSE(parse_isid("").ok());
    EXPECT_EQ(isid_to_u64(isid), 0x40000137000aull);
    EXPECT_EQ(isid_from_u64(0x40000137000aull), isid);
    static_assert(isid_to_u64(isid_from_u64(0xffffffffffffull)) == 0xffffffffffffull);
}

TEST(PduSerial, Rfc1982Comparisons) {
    EXPECT_TRUE(sn_lt(1, 2));
    EXPECT_FALSE(sn_lt(2, 1));
    EXPECT_FALSE(sn_lt(5, 5));
    EXPECT_TRUE(sn_le(5, 5));
    EXPECT_TRUE(sn_ge(5, 5));
    // Wrap-around.
    EXPECT_TRUE(sn_lt(0xffffffff, 0));
    EXPECT_TRUE(sn_gt(0, 0xffffffff));
    EXPECT_TRUE(sn_lt(0xfffffff0, 0x10));
    EXPECT_TRUE(sn_le(0xfffffff0, 0x10));
    EXPECT_FALSE(sn_ge(0xfffffff0, 0x10));
    // Just under half the space apart: ordered.
    EXPECT_TRUE(sn_lt(0, 0x7fffffff));
    EXPECT_TRUE(sn_gt(0x7fffffff, 0));
    EXPECT_TRUE(sn_lt(0x80000001, 0));
    // Exactly 2^31 apart: undefined, so neither order holds.
    EXPECT_FALSE(sn_lt(0, 0x80000000));
    EXPECT_FALSE(sn_gt(0, 0x80000000));
    EXPECT_FALSE(sn_lt(0x80000000, 0));
    EXPECT_FALSE(sn_le(0, 0x80000000));
    static_assert(sn_lt(0xffffffffu, 1u));
}

// ---- AHS -------------------------------------------------------------------------------------------

TEST(PduAhs, ExtendedCdbRoundTrip) {
    std::vector<uint8_t> tail(16);
    for (size_t i = 0; i < tail.size(); ++i) {
        tail[i] = uint8_t(0x10 + i);
    }
    std::vector<uint8_t> ahs;
    ASSERT_TRUE(append_extended_cdb_ahs(ahs, tail)); // a 32-byte CDB
    ASSERT_EQ(ahs.size(), 20u);                      // 3 + 17 = 20, already aligned
    EXPECT_EQ(load_be16(ahs.data()), 17);            // CDB length - 15
    EXPECT_EQ(ahs[2], 1);
    EXPECT_EQ(ahs[3], 0);
    EXPECT_EQ(ahs[4], 0x10);
    auto p = parse_ahs(ahs);
    ASSERT_TRUE(p.ok()) << p.error().message;
    EXPECT_EQ(p->extended_cdb_length, 16u);
    EXPECT_EQ(p->extended_cdb[15], 0x1f);
    EXPECT_FALSE(p->has_bidi_read_length);

    // A 17-byte CDB: 1 tail byte, AHSLength 2, padded to 8 bytes.
    ahs.clear();
    ASSERT_TRUE(append_extended_cdb_ahs(ahs, std::span<const uint8_t>(tail.data(), 1)));
    EXPECT_EQ(ahs.size(), 8u);
    p = parse_ahs(ahs);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->extended_cdb_length, 1u);

    // The largest: 260-byte CDB.
    std::vector<uint8_t> big(max_cdb_size - 16, 0xee);
    ahs.clear();
    ASSERT_TRUE(append_extended_cdb_ahs(ahs, big));
    p = parse_ahs(ahs);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->extended_cdb_length, max_cdb_size - 16);
    big.push_back(0xee);
    ahs.clear();
    EXPECT_FALSE(append_extended_cdb_ahs(ahs, big));
    EXPECT_FALSE(append_extended_cdb_ahs(ahs, {}));
    EXPECT_TRUE(ahs.empty());
}

TEST(PduAhs, BidiAndCombined) {
    std::vector<uint8_t> ahs;
    append_bidi_read_length_ahs(ahs, 0x00123456);
    ASSERT_EQ(ahs.size(), 8u);
    EXPECT_EQ(load_be16(ahs.data()), 5);
    EXPECT_EQ(ahs[2], 2);
    uint8_t tail[4] = {1, 2, 3, 4};
    ASSERT_TRUE(append_extended_cdb_ahs(ahs, tail));
    auto p = parse_ahs(ahs);
    ASSERT_TRUE(p.ok()) << p.error().message;
    EXPECT_TRUE(p->has_bidi_read_length);
    EXPECT_EQ(p->bidi_read_expected_data_transfer_length, 0x00123456u);
    EXPECT_EQ(p->extended_cdb_length, 4u);
    EXPECT_EQ(p->extended_cdb[3], 4);
    EXPECT_TRUE(parse_ahs({}).ok());
}

TEST(PduAhs, RejectsMalformed) {
    std::vector<uint8_t> ahs;
    append_bidi_read_length_ahs(ahs, 1);
    // Not a multiple of 4.
    EXPECT_FALSE(parse_ahs(std::span<const uint8_t>(ahs.data(), 6)).ok());
    // AHSLength running past the area.
    auto bad = ahs;
    store_be16(bad.data(), 9);
    EXPECT_FALSE(parse_ahs(bad).ok());
    store_be16(bad.data(), 0xffff);
    EXPECT_FALSE(parse_ahs(bad).ok());
    // Bidi with the wrong length.
    bad = ahs;
    store_be16(bad.data(), 4);
    EXPECT_FALSE(parse_ahs(bad).ok());
    // Unknown type.
    bad = ahs;
    bad[2] = 3;
    EXPECT_FALSE(parse_ahs(bad).ok());
    // Reserved type bits are ignored.
    bad = ahs;
    bad[2] = 0xc2;
    EXPECT_TRUE(parse_ahs(bad).ok());
    // Duplicates.
    bad = ahs;
    append_bidi_read_length_ahs(bad, 2);
    EXPECT_FALSE(parse_ahs(bad).ok());
    bad.clear();
    uint8_t tail[1] = {9};
    ASSERT_TRUE(append_extended_cdb_ahs(bad, tail));
    ASSERT_TRUE(append_extended_cdb_ahs(bad, tail));
    EXPECT_FALSE(parse_ahs(bad).ok());
    // Extended CDB with no CDB bytes.
    std::vector<uint8_t> empty_cdb = {0, 1, 1, 0};
    EXPECT_FALSE(parse_ahs(empty_cdb).ok());
    // Extended CDB beyond 260 bytes (AHSLength 246 -> 261-byte CDB) in a big enough area.
    std::vector<uint8_t> huge(pad4(3 + 246), 0);
    store_be16(huge.data(), 246);
    huge[2] = 1;
    EXPECT_FALSE(parse_ahs(huge).ok());
    // Truncated header of a second AHS: an all-zero word parses as an AHS of unknown type 0.
    bad = ahs;
    bad.resize(12, 0);
    EXPECT_FALSE(parse_ahs(bad).ok());
    // Larger than any PDU can carry.
    std::vector<uint8_t> too_big(max_ahs_size + 4, 0);
    EXPECT_FALSE(parse_ahs(too_big).ok());
}

// ---- Send side -------------------------------------------------------------------------------------

TEST(PduSend, BuildHeader) {
    NopOut n;
    n.immediate = true;
    n.data_segment_length = 5;
    Bhs b;
    n.encode(b);
    uint8_t out[max_header_size];
    size_t len = build_pdu_header(b, {}, false, out);
    EXPECT_EQ(len, 48u);
    EXPECT_EQ(std::memcmp(out, b.bytes.data(), 48), 0);

    len = build_pdu_header(b, {}, true, out);
    EXPECT_EQ(len, 52u);
    EXPECT_EQ(load_digest(out + 48), crc32c(b.bytes.data(), 48));

    // AHS of 6 bytes: padded to 8, TotalAHSLength set to 2, digest over BHS + padded AHS.
    uint8_t ahs[6] = {0, 3, 9, 0, 0xab, 0xcd};
    len = build_pdu_header(b, ahs, true, out);
    EXPECT_EQ(len, 48u + 8 + 4);
    EXPECT_EQ(out[4], 2);
    EXPECT_EQ(out[48 + 5], 0xcd);
    EXPECT_EQ(out[48 + 6], 0);
    EXPECT_EQ(out[48 + 7], 0);
    EXPECT_EQ(load_digest(out + 56), crc32c(out, 56));
}

TEST(PduSend, PaddingAndDataTrailer) {
    EXPECT_EQ(padding_length(0), 0u);
    EXPECT_EQ(padding_length(1), 3u);
    EXPECT_EQ(padding_length(2), 2u);
    EXPECT_EQ(padding_length(3), 1u);
    EXPECT_EQ(padding_length(4), 0u);
    EXPECT_EQ(padding_length(4097), 3u);

    const uint8_t data[5] = {1, 2, 3, 4, 5};
    const uint8_t padded[8] = {1, 2, 3, 4, 5, 0, 0, 0};
    EXPECT_EQ(data_digest(data), crc32c(padded, 8));

    DataTrailer t = make_data_trailer(data, false);
    EXPECT_EQ(t.size, 3u);
    EXPECT_EQ(t.span()[0], 0);
    t = make_data_trailer(data, true);
    ASSERT_EQ(t.size, 7u);
    EXPECT_EQ(load_digest(t.bytes.data() + 3), crc32c(padded, 8));
    // Chained CRC from a sender that gathered the data from two buffers.
    uint32_t crc = crc32c(data, 2);
    crc = crc32c(data + 2, 3, crc);
    DataTrailer t2 = make_data_trailer(5, true, crc);
    EXPECT_EQ(t2.size, 7u);
    EXPECT_EQ(std::memcmp(t2.bytes.data(), t.bytes.data(), 7), 0);
    // Aligned data: no padding, digest only.
    t = make_data_trailer(std::span<const uint8_t>(data, 4), true);
    EXPECT_EQ(t.size, 4u);
    EXPECT_EQ(load_digest(t.bytes.data()), crc32c(data, 4));
    // No data segment: no padding and no digest.
    t = make_data_trailer(0, true, 0);
    EXPECT_EQ(t.size, 0u);
}
