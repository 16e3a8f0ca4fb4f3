// ErrorRecoveryLevel 2 on the target (RFC 7143 §7.3, §6.2.2, §11.5.1, §11.14.1): a failed connection's
// tasks kept and moved by TASK REASSIGN to another connection of the session or to a connection that
// reinstated it with the same CID — a read's Data-In sent again from the ExpDataSN asked for, a write's
// missing data asked for with an R2T — a Logout that removes a connection for recovery, reassigns that
// name no task or a task still allegiant, orphans that nobody reassigns, aborted in time, and a connection
// an administrator drops (AsyncEvent 2, RFC 7143 §11.9.1) whose tasks wait for the initiator.
#include "harness.hpp"

#include <future>

namespace ispace::iscsi_target::test {
namespace {

LoginOptions erl2() {
    LoginOptions o;
    o.negotiation.error_recovery_level = 2;
    o.negotiation.max_connections = 4;
    o.negotiation.max_recv_data_segment_length = 512; // one Data-In PDU per block
    return o;
}

// A one-second window for orphans (Time2Wait 0 + Time2Retain 1), asked for by both sides.
void one_second_window(ServerConfig& c) {
    c.negotiation.default_time2wait = 0;
    c.negotiation.default_time2retain = 1;
}

LoginOptions erl2_one_second_window() {
    LoginOptions o = erl2();
    o.negotiation.default_time2wait = 0;
    o.negotiation.default_time2retain = 1;
    return o;
}

Command write_command(uint32_t lba, uint16_t blocks, std::vector<uint8_t> immediate = {}) {
    Command c;
    c.cdb = write10(lba, blocks);
    c.write = true;
    c.edtl = uint32_t(blocks) * block_size;
    c.immediate_data = std::move(immediate);
    return c;
}

Command read_command(uint32_t lba, uint16_t blocks) {
    Command c;
    c.cdb = read10(lba, blocks);
    c.read = true;
    c.edtl = uint32_t(blocks) * block_size;
    return c;
}

uint64_t recovery_count(Harness& h, const std::string& name) {
    return h.server().statistics().recovery[name];
}

iscsi::TmfResponse tmf_answer(const std::optional<InPdu>& pdu) {
    EXPECT_TRUE(pdu) << "no TMF response";
    if (!pdu) {
        return iscsi::TmfResponse::function_rejected;
    }
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::task_mgmt_response) << pdu->describe();
    return pdu->as<iscsi::TaskMgmtResponse>().response;
}

uint32_t reassign(FakeInitiator& on, const FakeInitiator& origin, uint32_t itt, uint32_t exp_data_sn = 0) {
    return on.tmf(iscsi::TmfFunction::task_reassign, 0, itt, origin.cmd_sn_of(itt), true, exp_data_sn);
}

std::vector<uint8_t> read_back(FakeInitiator& i, uint32_t lba, uint16_t blocks) {
    i.command(read_command(lba, blocks));
    std::vector<uint8_t> out;
    for (auto& pdu : i.drain()) {
        if (pdu.opcode() == iscsi::Opcode::data_in) {
            out.insert(out.end(), pdu.data.begin(), pdu.data.end());
        }
    }
    return out;
}

// A write of `data` at `lba` on `i` whose first R2T has arrived (and is returned).
iscsi::R2t start_write(FakeInitiator& i, uint32_t lba, std::span<const uint8_t> data, uint32_t& itt) {
    itt = i.command(write_command(lba, uint16_t(data.size() / block_size)));
    auto pdu = i.next();
    EXPECT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::r2t);
    return pdu ? pdu->as<iscsi::R2t>() : iscsi::R2t{};
}

// Answers the R2T that follows a reassign, then expects GOOD status.
void finish_write(FakeInitiator& i, uint32_t itt, std::span<const uint8_t> data, uint32_t offset) {
    auto pdu = i.next();
    ASSERT_TRUE(pdu) << "no R2T on the new connection";
    ASSERT_EQ(pdu->opcode(), iscsi::Opcode::r2t) << pdu->describe();
    auto r2t = pdu->as<iscsi::R2t>();
    EXPECT_EQ(r2t.itt, itt);
    EXPECT_EQ(r2t.buffer_offset, offset);
    EXPECT_EQ(r2t.desired_data_transfer_length, data.size() - offset);
    i.answer_r2t(r2t, data);
    auto response = i.next();
    ASSERT_TRUE(response && response->opcode() == iscsi::Opcode::scsi_response)
        << (response ? response->describe() : "no response");
    EXPECT_EQ(outcome_of(*response).status, 0);
}

// A Data SNACK for `run` Data-In of `itt` from DataSN `beg`; `exp_stat_sn` leaves the status unacknowledged.
void data_snack(FakeInitiator& i, uint32_t itt, uint32_t beg, uint32_t run, uint32_t exp_stat_sn) {
    iscsi::SnackRequest s;
    s.type = iscsi::SnackType::data_r2t;
    s.itt = itt;
    s.exp_stat_sn = exp_stat_sn;
    s.beg_run = beg;
    s.run_length = run;
    iscsi::Bhs bhs;
    s.encode(bhs);
    i.send(bhs);
}

struct Pair {
    FakeInitiator& first;
    FakeInitiator& second;
};

Pair two_connections(Harness& h) {
    FakeInitiator& first = h.logged_in(erl2());
    FakeInitiator& second = h.connect({.numbers = first.numbers()});
    auto joined = second.join(first, 1, erl2());
    EXPECT_TRUE(joined.ok()) << joined.reason;
    EXPECT_EQ(joined.session.error_recovery_level, 2);
    return {first, second};
}

TEST(Reassign, ErlTwoIsGrantedWhenAskedFor) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginResult r = i.login(erl2());
    ASSERT_TRUE(r.ok()) << r.reason;
    EXPECT_EQ(r.session.error_recovery_level, 2);
}

TEST(Reassign, BelowErlTwoTaskReassignIsNotSupported) {
    Harness h;
    LoginOptions o = erl2();
    o.negotiation.error_recovery_level = 1;
    FakeInitiator& i = h.logged_in(o);
    i.tmf(iscsi::TmfFunction::task_reassign, 0, 0x77, 1);
    EXPECT_EQ(tmf_answer(i.next()), iscsi::TmfResponse::reassignment_not_supported);
}

TEST(Reassign, AReadAnsweredOnAFailedConnectionIsSentAgainFromExpDataSn) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(1024, 3);
    a.command(write_command(4, 2, data));
    ASSERT_EQ(outcome_of(*a.next()).status, 0);
    uint32_t itt = b.command(read_command(4, 2));
    auto sent = b.drain();
    ASSERT_EQ(sent.size(), 2u); // two Data-In, the status on the second
    b.close();                  // lost before the initiator acknowledged anything
    h.settle();
    EXPECT_EQ(recovery_count(h, "connection_failed"), 1u);

    reassign(a, b, itt, /*exp_data_sn=*/1);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_complete);
    auto din = a.next();
    ASSERT_TRUE(din && din->opcode() == iscsi::Opcode::data_in) << (din ? din->describe() : "none");
    auto header = din->as<iscsi::DataIn>();
    EXPECT_EQ(header.itt, itt);
    EXPECT_EQ(header.data_sn, 1u);
    EXPECT_EQ(header.buffer_offset, 512u);
    EXPECT_TRUE(header.status_present);
    EXPECT_EQ(din->data, std::vector<uint8_t>(data.begin() + 512, data.end()));
    EXPECT_FALSE(a.next()) << "only what the initiator did not acknowledge goes again";
    EXPECT_EQ(recovery_count(h, "task_reassigned"), 1u);
    // Taken: a second reassign of the same task finds nothing.
    reassign(a, b, itt);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::task_does_not_exist);
}

TEST(Reassign, AnExpDataSnBeyondWhatWasSentIsRejectedAndNothingIsSent) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(1024, 12);
    a.command(write_command(48, 2, data));
    ASSERT_EQ(outcome_of(*a.next()).status, 0);
    uint32_t itt = b.command(read_command(48, 2));
    ASSERT_EQ(b.drain().size(), 2u);
    b.close();
    h.settle();
    reassign(a, b, itt, /*exp_data_sn=*/7); // only DataSN 0 and 1 were sent
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_rejected);
    EXPECT_FALSE(a.next()) << "no Data-In for a refused reassign";
    // The reserved tag and a tag never used name no task.
    a.tmf(iscsi::TmfFunction::task_reassign, 0, iscsi::reserved_tag, 1);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::task_does_not_exist);
    uint32_t ping = a.nop_out({}, true);
    auto pdu = a.next();
    ASSERT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::nop_in) << "the connection must go on";
    EXPECT_EQ(pdu->bhs.itt(), ping);
}

TEST(Reassign, AWriteCutMidBurstIsAskedForAgainOnTheNewConnection) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(1024, 5);
    uint32_t itt = 0;
    iscsi::R2t r2t = start_write(b, 8, data, itt);
    b.data_out(itt, r2t.ttt, 0, 0, std::span(data).first(512), false);
    h.settle();
    b.close();
    h.settle();
    reassign(a, b, itt);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_complete);
    finish_write(a, itt, data, 512);
    EXPECT_EQ(read_back(a, 8, 2), data);
}

TEST(Reassign, AnUnknownTaskDoesNotExistAndALiveOneIsStillAllegiant) {
    Harness h;
    auto [a, b] = two_connections(h);
    a.tmf(iscsi::TmfFunction::task_reassign, 0, 0x1234, 9);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::task_does_not_exist);
    auto data = pattern(1024, 6);
    uint32_t itt = 0;
    iscsi::R2t r2t = start_write(a, 0, data, itt);
    reassign(b, a, itt);
    EXPECT_EQ(tmf_answer(b.next()), iscsi::TmfResponse::task_still_allegiant);
    a.answer_r2t(r2t, data);
    auto response = a.next();
    ASSERT_TRUE(response && response->opcode() == iscsi::Opcode::scsi_response);
    EXPECT_EQ(outcome_of(*response).status, 0);
}

TEST(Reassign, ALoginWithTheSameCidReinstatesTheConnection) {
    Harness h;
    FakeInitiator& a = h.logged_in(erl2());
    auto data = pattern(1024, 8);
    uint32_t itt = 0;
    start_write(a, 16, data, itt);
    FakeInitiator& c = h.connect({.numbers = a.numbers()});
    auto joined = c.join(a, a.cid(), erl2());
    ASSERT_TRUE(joined.ok()) << joined.reason;
    EXPECT_TRUE(a.closed_by_target()) << "the connection with the same CID must go";
    EXPECT_EQ(recovery_count(h, "connection_reinstated"), 1u);
    reassign(c, a, itt);
    EXPECT_EQ(tmf_answer(c.next()), iscsi::TmfResponse::function_complete);
    finish_write(c, itt, data, 0);
    EXPECT_EQ(read_back(c, 16, 2), data);
}

// An answered read's status reached the initiator, which may reuse its ITT at once for a new command.
// When that command is lost with the connection, the reassign of its ITT must not find the old read:
// the login restarting the connection acknowledged its answer. Without that acknowledgement the answer
// is still there to be sent again (the initiator may not have it).
void reassign_after_restart(bool acknowledged) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(1024, 5);
    a.command(write_command(4, 2, data));
    ASSERT_EQ(outcome_of(*a.next()).status, 0);
    uint32_t itt = b.command(read_command(4, 2));
    ASSERT_EQ(b.drain().size(), 2u); // two Data-In, the status on the second
    uint32_t received = b.exp_stat_sn();
    b.close();
    h.settle();
    FakeInitiator& c = h.connect({.numbers = a.numbers()});
    LoginOptions o = erl2();
    o.exp_stat_sn = acknowledged ? received : received - 1;
    auto joined = c.join(a, b.cid(), o);
    ASSERT_TRUE(joined.ok()) << joined.reason;
    reassign(c, b, itt);
    if (acknowledged) {
        EXPECT_EQ(tmf_answer(c.next()), iscsi::TmfResponse::task_does_not_exist);
        EXPECT_FALSE(c.next()) << "nothing of the old read may go out";
        return;
    }
    EXPECT_EQ(tmf_answer(c.next()), iscsi::TmfResponse::function_complete);
    std::vector<uint8_t> again;
    for (auto& pdu : c.drain()) {
        ASSERT_EQ(pdu.opcode(), iscsi::Opcode::data_in) << pdu.describe();
        again.insert(again.end(), pdu.data.begin(), pdu.data.end());
    }
    EXPECT_EQ(again, data);
}

TEST(Reassign, ARestartingLoginsExpStatSnLetsTheOldConnectionsAnswersGo) {
    reassign_after_restart(/*acknowledged=*/true);
}

TEST(Reassign, AnswersTheRestartingLoginDidNotAcknowledgeCanStillBeReassigned) {
    reassign_after_restart(/*acknowledged=*/false);
}

TEST(Reassign, TheSessionOutlivesItsLastConnectionForReinstatement) {
    Harness h;
    FakeInitiator& a = h.logged_in(erl2());
    auto data = pattern(512, 9);
    uint32_t itt = 0;
    start_write(a, 24, data, itt);
    a.close();
    h.settle();
    EXPECT_EQ(h.server().sessions().size(), 1u);
    FakeInitiator& c = h.connect({.numbers = a.numbers()});
    auto joined = c.join(a, a.cid(), erl2());
    ASSERT_TRUE(joined.ok()) << joined.reason;
    reassign(c, a, itt);
    EXPECT_EQ(tmf_answer(c.next()), iscsi::TmfResponse::function_complete);
    finish_write(c, itt, data, 0);
}

TEST(Reassign, LogoutRemovingAConnectionForRecoveryKeepsItsTasks) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(1024, 10);
    uint32_t itt = 0;
    start_write(b, 32, data, itt);
    a.logout(iscsi::LogoutReason::remove_connection_for_recovery, 1);
    auto pdu = a.next();
    ASSERT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::logout_response);
    auto response = pdu->as<iscsi::LogoutResponse>();
    EXPECT_EQ(response.response, iscsi::LogoutResponseCode::closed_successfully);
    EXPECT_EQ(response.time2retain, 20u);
    EXPECT_TRUE(b.closed_by_target());
    reassign(a, b, itt);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_complete);
    finish_write(a, itt, data, 0);
}

TEST(Reassign, RemovingAnUnknownCidForRecoveryIsCidNotFound) {
    Harness h;
    auto [a, b] = two_connections(h);
    a.logout(iscsi::LogoutReason::remove_connection_for_recovery, 7);
    auto pdu = a.next();
    ASSERT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::logout_response);
    EXPECT_EQ(pdu->as<iscsi::LogoutResponse>().response, iscsi::LogoutResponseCode::cid_not_found);
    EXPECT_FALSE(b.closed_by_target());
}

TEST(Reassign, AnOrphanNotReassignedWithinTime2WaitPlusTime2RetainIsAborted) {
    Harness h(one_second_window);
    LoginOptions o = erl2_one_second_window();
    FakeInitiator& a = h.logged_in(o);
    FakeInitiator& b = h.connect({.numbers = a.numbers()});
    ASSERT_TRUE(b.join(a, 1, o).ok());
    auto data = pattern(1024, 11);
    uint32_t itt = 0;
    start_write(b, 40, data, itt);
    b.close();
    h.settle();
    ASSERT_TRUE(h.run_until([&] { return recovery_count(h, "reassign_expired") == 1; }, 5s));
    h.settle();
    reassign(a, b, itt);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::task_does_not_exist);
    uint32_t ping = a.nop_out({}, true);
    auto pdu = a.next();
    ASSERT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::nop_in);
    EXPECT_EQ(pdu->bhs.itt(), ping);
}

// The Data-In of a read was going out when its connection failed: the initiator had taken the first
// PDUs, the rest (and the status) were still on their way. Its TASK REASSIGN names the next DataSN it
// expects, and exactly what follows goes again (RFC 7143 §11.5.1), not the whole read from DataSN 0.
TEST(Reassign, AReadCutWhileItsDataInWasGoingOutResumesAtTheExpDataSnAskedFor) {
    Harness h;
    auto [a, b] = two_connections(h);
    auto data = pattern(2048, 15);
    a.command(write_command(72, 4, data));
    ASSERT_EQ(outcome_of(*a.next()).status, 0);
    uint32_t itt = b.command(read_command(72, 4)); // four Data-In of 512 bytes
    auto first = b.next();
    auto second = b.next();
    ASSERT_TRUE(first && second);
    ASSERT_EQ(second->as<iscsi::DataIn>().data_sn, 1u);
    b.close(); // DataSN 2 and 3, with the status, never reached the initiator
    h.settle();
    reassign(a, b, itt, /*exp_data_sn=*/2);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_complete);
    std::vector<uint8_t> rest;
    std::vector<uint32_t> data_sns;
    bool status = false;
    for (auto& pdu : a.drain()) {
        ASSERT_EQ(pdu.opcode(), iscsi::Opcode::data_in) << pdu.describe();
        auto din = pdu.as<iscsi::DataIn>();
        EXPECT_EQ(din.buffer_offset, 1024u + rest.size());
        data_sns.push_back(din.data_sn);
        rest.insert(rest.end(), pdu.data.begin(), pdu.data.end());
        status = din.status_present;
    }
    EXPECT_EQ(data_sns, (std::vector<uint32_t>{2, 3}));
    EXPECT_TRUE(status) << "the status rides on the last one";
    EXPECT_EQ(rest, std::vector<uint8_t>(data.begin() + 1024, data.end()));
}

// The connection the read is reassigned to takes smaller PDUs than the failed one did (its
// MaxRecvDataSegmentLength is 512, the old one's 1024): the kept Data-In is cut to fit, numbered on from
// the ExpDataSN asked for, instead of the reassign being refused (RFC 7143 §11.5.1 lets the count of
// resent PDUs change with MaxRecvDataSegmentLength).
TEST(Reassign, KeptDataInIsResegmentedForANewConnectionThatTakesSmallerPdus) {
    Harness h;
    FakeInitiator& a = h.logged_in(erl2()); // 512-byte PDUs
    LoginOptions larger = erl2();
    larger.negotiation.max_recv_data_segment_length = 1024;
    FakeInitiator& b = h.connect({.numbers = a.numbers()});
    ASSERT_TRUE(b.join(a, 1, larger).ok());
    auto data = pattern(3072, 16);
    a.command(write_command(80, 6, data));
    ASSERT_EQ(outcome_of(*a.next()).status, 0);

    uint32_t itt = b.command(read_command(80, 6));
    auto sent = b.drain();
    ASSERT_EQ(sent.size(), 3u); // three of 1024 bytes
    EXPECT_EQ(sent[0].data.size(), 1024u);
    b.close();
    h.settle();
    // The initiator kept DataSN 0 (bytes 0-1023) and asks from DataSN 1.
    reassign(a, b, itt, /*exp_data_sn=*/1);
    EXPECT_EQ(tmf_answer(a.next()), iscsi::TmfResponse::function_complete);
    auto pdus = a.drain();
    ASSERT_EQ(pdus.size(), 4u) << "bytes 1024-3071 in four PDUs of 512";
    std::vector<uint8_t> rest;
    for (size_t i = 0; i < pdus.size(); ++i) {
        ASSERT_EQ(pdus[i].opcode(), iscsi::Opcode::data_in) << pdus[i].describe();
        auto din = pdus[i].as<iscsi::DataIn>();
        EXPECT_EQ(din.data_sn, 1u + i);
        EXPECT_EQ(din.buffer_offset, 1024u + 512u * i);
        EXPECT_EQ(pdus[i].data.size(), 512u);
        bool last = i + 1 == pdus.size();
        EXPECT_EQ(din.status_present, last);
        EXPECT_EQ(din.acknowledge, last) << "the A bit (ERL >= 1) only on the last";
        // Never F on the first piece of a cut PDU: a sequence cannot end inside what was one PDU.
        if (i % 2 == 0) {
            EXPECT_FALSE(din.final_bit) << "DataSN " << din.data_sn;
        }
        rest.insert(rest.end(), pdus[i].data.begin(), pdus[i].data.end());
    }
    EXPECT_EQ(rest, std::vector<uint8_t>(data.begin() + 1024, data.end()));
    // The resegmented PDUs are what the new connection keeps: a Data SNACK for DataSN 3 gets the third
    // piece again (offset 2048, 512 bytes).
    data_snack(a, itt, 3, 1, pdus.back().as<iscsi::DataIn>().stat_sn);
    auto again = a.next();
    ASSERT_TRUE(again && again->opcode() == iscsi::Opcode::data_in) << (again ? again->describe() : "none");
    EXPECT_EQ(again->as<iscsi::DataIn>().data_sn, 3u);
    EXPECT_EQ(again->as<iscsi::DataIn>().buffer_offset, 2048u);
    EXPECT_EQ(again->data, std::vector<uint8_t>(data.begin() + 2048, data.begin() + 2560));
}

// A level-2 session whose initiator vanished waits DefaultTime2Wait + DefaultTime2Retain for it and, until
// then, is one of the sessions its initiator holds (Limits::max_sessions_per_initiator). A login with the
// same ISID reinstates it at once (RFC 7143 §6.3.5); one with another ISID is another I_T nexus, which
// does not end it: at the limit it is refused until the window ends (docs/recovery.md says why).
TEST(Reassign, AVanishedInitiatorsSessionHoldsItsPlaceUntilTheWindowEndsUnlessItsIsidReinstatesIt) {
    Harness h([](ServerConfig& c) {
        one_second_window(c);
        c.limits.max_sessions_per_initiator = 1;
    });
    LoginOptions o = erl2_one_second_window();
    FakeInitiator& a = h.logged_in(o);
    a.close(); // vanished
    h.settle();
    ASSERT_EQ(h.server().sessions().size(), 1u);

    LoginOptions other = o;
    other.isid = 0x400000000002;
    LoginResult refused = h.connect().login(other);
    EXPECT_FALSE(refused.ok()) << "a new ISID is a new session, and the initiator holds its one";
    EXPECT_EQ(refused.status, iscsi::LoginStatus::out_of_resources);

    // The window ends: the session goes, and the new ISID is admitted.
    ASSERT_TRUE(h.run_until([&] { return h.server().sessions().size() == 0; }, 5s));
    FakeInitiator& b = h.connect();
    LoginResult admitted = b.login(other);
    ASSERT_TRUE(admitted.ok()) << admitted.reason;

    // That one vanishes too; a login with its ISID reinstates it at once, limit or not.
    b.close();
    h.settle();
    ASSERT_EQ(h.server().sessions().size(), 1u);
    LoginResult reinstated = h.connect().login(other);
    EXPECT_TRUE(reinstated.ok()) << reinstated.reason;
    EXPECT_NE(reinstated.tsih, admitted.tsih) << "a new session replaced the one left waiting";
}

// ---- An administrator drops one connection (Server::drop_connection, AsyncEvent 2) -----------------

// Runs a blocking Server method on another thread while the test thread drives the reactors, as the
// control thread and the reactors do in ispaced.
template <typename F> auto while_reactors_run(Harness& h, F call) {
    auto future = std::async(std::launch::async, std::move(call));
    EXPECT_TRUE(h.run_until([&] { return future.wait_for(0ms) == std::future_status::ready; }, 20s));
    return future.get();
}

iscsi::AsyncMessage drop_message(FakeInitiator& i) {
    auto pdu = i.next();
    EXPECT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::async_message) << (pdu ? pdu->describe() : "none");
    return pdu ? pdu->as<iscsi::AsyncMessage>() : iscsi::AsyncMessage{};
}

TEST(Reassign, AnAdministratorsDropAnnouncesTimeToWaitAndRetainAndKeepsTheTasksForReassignment) {
    Harness h;
    LoginOptions o = erl2();
    o.negotiation.default_time2wait = 3;   // the target offers 2: the larger wins
    o.negotiation.default_time2retain = 7; // the target offers 20: the smaller wins
    FakeInitiator& a = h.logged_in(o);
    FakeInitiator& b = h.connect({.numbers = a.numbers()});
    ASSERT_TRUE(b.join(a, 1, o).ok());
    auto data = pattern(1024, 13);
    uint32_t itt = 0;
    start_write(b, 56, data, itt);
    uint16_t tsih = a.numbers()->tsih;
    ASSERT_NE(tsih, 0);

    auto dropped = while_reactors_run(h, [&] { return h.server().drop_connection(tsih, 1, 2s, 5s); });
    ASSERT_TRUE(dropped) << dropped.error().message;
    EXPECT_EQ(dropped->time2wait, 3);
    EXPECT_EQ(dropped->time2retain, 7);
    EXPECT_EQ(dropped->tasks, 1u);
    EXPECT_EQ(dropped->remaining, 1u);
    // On the connection that goes: AsyncEvent 2, Parameter1 its CID, Parameter2 Time2Wait,
    // Parameter3 Time2Retain, a StatSN of its own (an Asynchronous Message is numbered).
    uint32_t expected_stat_sn = b.exp_stat_sn();
    iscsi::AsyncMessage message = drop_message(b);
    EXPECT_EQ(message.event, iscsi::AsyncEvent::drop_connection);
    EXPECT_EQ(message.parameter1, 1);
    EXPECT_EQ(message.parameter2, 3);
    EXPECT_EQ(message.parameter3, 7);
    EXPECT_EQ(message.stat_sn, expected_stat_sn);
    EXPECT_FALSE(a.poll()) << "nothing on the connection that stays";
    // A second drop of the same connection while the first is under way is refused.
    auto again = while_reactors_run(h, [&] { return h.server().drop_connection(tsih, 1, 2s, 5s); });
    EXPECT_FALSE(again);
    // The initiator does not close it: the target does, after the grace, as a failed connection.
    ASSERT_TRUE(h.run_until([&] { return b.closed_by_target(); }, 5s));
    EXPECT_EQ(recovery_count(h, "connection_dropped"), 1u);
    EXPECT_EQ(recovery_count(h, "connection_failed"), 1u);
    EXPECT_EQ(h.server().sessions().size(), 1u) << "the session survives";
    // The initiator logs the CID in again after Time2Wait and reassigns the write there.
    FakeInitiator& c = h.connect({.numbers = a.numbers()});
    auto joined = c.join(a, 1, o);
    ASSERT_TRUE(joined.ok()) << joined.reason;
    reassign(c, b, itt);
    EXPECT_EQ(tmf_answer(c.next()), iscsi::TmfResponse::function_complete);
    finish_write(c, itt, data, 0);
    EXPECT_EQ(read_back(a, 56, 2), data);
}

TEST(Reassign, ADroppedOnlyConnectionsTasksAreKeptTheWindowItAnnouncedAndNoLonger) {
    // Time2Wait 0 + Time2Retain 1: the orphan must live at least the second announced, and not be kept
    // forever either (the retain timer runs once a second).
    Harness h(one_second_window);
    LoginOptions o = erl2_one_second_window();
    FakeInitiator& a = h.logged_in(o);
    auto data = pattern(512, 14);
    uint32_t itt = 0;
    start_write(a, 64, data, itt);
    auto dropped =
        while_reactors_run(h, [&] { return h.server().drop_connection(a.numbers()->tsih, a.cid(), 2s, 5s); });
    ASSERT_TRUE(dropped) << dropped.error().message;
    EXPECT_EQ(dropped->remaining, 0u);
    iscsi::AsyncMessage message = drop_message(a);
    EXPECT_EQ(message.parameter2, 0);
    EXPECT_EQ(message.parameter3, 1);
    auto dropped_at = std::chrono::steady_clock::now();
    a.close(); // the initiator closes it at once, as the ispace initiator does
    h.settle();
    EXPECT_EQ(h.server().sessions().size(), 1u) << "a level-2 session outlives its only connection";
    ASSERT_TRUE(h.run_until([&] { return recovery_count(h, "reassign_expired") == 1; }, 5s));
    EXPECT_GE(std::chrono::steady_clock::now() - dropped_at, 1s) << "kept less than Time2Wait + Time2Retain";
    // Nobody came back: the session ends with the window.
    ASSERT_TRUE(h.run_until([&] { return h.server().sessions().size() == 0; }, 5s));
}

TEST(Reassign, DroppingAConnectionBelowLevelTwoOrAnUnknownCidIsRefusedAndChangesNothing) {
    Harness h;
    LoginOptions o = erl2();
    o.negotiation.error_recovery_level = 1;
    FakeInitiator& a = h.logged_in(o);
    uint16_t tsih = a.numbers()->tsih;
    auto refused = while_reactors_run(h, [&] { return h.server().drop_connection(tsih, a.cid(), 2s, 5s); });
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EOPNOTSUPP);
    EXPECT_NE(refused.error().message.find("ErrorRecoveryLevel 1"), std::string::npos);
    EXPECT_FALSE(a.poll()) << "no Asynchronous Message below level 2";

    Harness h2;
    FakeInitiator& b = h2.logged_in(erl2());
    auto unknown_cid =
        while_reactors_run(h2, [&] { return h2.server().drop_connection(b.numbers()->tsih, 9, 2s, 5s); });
    ASSERT_FALSE(unknown_cid);
    EXPECT_EQ(unknown_cid.error().code, ENOENT);
    auto unknown_session =
        while_reactors_run(h2, [&] { return h2.server().drop_connection(0x7777, 0, 2s, 5s); });
    ASSERT_FALSE(unknown_session);
    EXPECT_EQ(unknown_session.error().code, ENOENT);
    EXPECT_FALSE(b.poll());
    EXPECT_FALSE(b.closed_by_target());
    EXPECT_EQ(recovery_count(h2, "connection_dropped"), 0u);
}

} // namespace
} // namespace ispace::iscsi_target::test
