// Task management (RFC 7143 §11.5, §11.6): each function the target offers, and the answers it gives
// to those it does not (§11.6.1).
#include "harness.hpp"

namespace ispace::iscsi_target::test {
namespace {

Command write_command(uint32_t lba, uint16_t blocks, uint64_t lun = 0) {
    Command c;
    c.cdb = write10(lba, blocks);
    c.write = true;
    c.edtl = uint32_t(blocks) * block_size;
    c.lun = lun_field(lun);
    return c;
}

Command tur(uint64_t lun = 0) {
    Command c;
    c.cdb = test_unit_ready();
    c.lun = lun_field(lun);
    return c;
}

void clear_unit_attention(FakeInitiator& i, uint64_t lun = 0) {
    i.command(tur(lun));
    i.drain();
}

// Starts a write and returns its ITT once its R2T arrived: a task in the engine, waiting for Data-Out.
uint32_t write_waiting_for_data(FakeInitiator& i, uint64_t lun = 0, iscsi::R2t* r2t_out = nullptr) {
    uint32_t itt = i.command(write_command(0, 1, lun));
    auto pdu = i.next();
    EXPECT_TRUE(pdu && pdu->opcode() == iscsi::Opcode::r2t);
    if (pdu && r2t_out) {
        *r2t_out = pdu->as<iscsi::R2t>();
    }
    return itt;
}

iscsi::TaskMgmtResponse expect_tmf_response(FakeInitiator& i, uint32_t itt) {
    auto pdus = i.drain();
    EXPECT_EQ(pdus.size(), 1u) << "exactly the TMF response (no response for aborted tasks)";
    for (auto& pdu : pdus) {
        if (pdu.opcode() == iscsi::Opcode::task_mgmt_response) {
            auto response = pdu.as<iscsi::TaskMgmtResponse>();
            EXPECT_EQ(response.itt, itt);
            return response;
        }
        ADD_FAILURE() << "unexpected " << pdu.describe();
    }
    return {};
}

TEST(TaskManagement, AbortTaskEndsAWriteWaitingForDataOut) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    iscsi::R2t r2t;
    uint32_t write = write_waiting_for_data(i, 0, &r2t);
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task, 0, write);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    // Data for it now is data for a task that no longer exists: dropped, no answer.
    auto data = pattern(512, 30);
    i.answer_r2t(r2t, data);
    EXPECT_FALSE(i.next());
}

TEST(TaskManagement, AbortTaskOfAnUnknownTaskSaysItDoesNotExist) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    i.command(tur());
    i.drain();
    // RefCmdSN below ExpCmdSN: a task that came and went.
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task, 0, 0x7777, i.numbers()->cmd_sn - 1);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::task_does_not_exist);
}

TEST(TaskManagement, AbortTaskOfACommandThatNeverArrivedConsumesItsCmdSn) {
    // RFC 7143 §11.5.1: a referenced command whose CmdSN is in the window but has not arrived is
    // considered received (and aborted): the window moves past it, and it is ignored if it comes late.
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t lost = i.numbers()->cmd_sn++; // sent, and lost on the way
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task, 0, 0x5555, lost);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    uint32_t next = i.command(tur());
    auto pdu = i.next();
    ASSERT_TRUE(pdu) << "the command after the aborted CmdSN waits forever";
    EXPECT_EQ(pdu->bhs.itt(), next);
    Command late = tur();
    late.itt = 0x5555;
    late.cmd_sn = lost;
    i.command(late);
    EXPECT_FALSE(i.next()) << "the aborted command is not executed when it arrives late";
}

TEST(TaskManagement, AbortTaskOfACommandNotYetArrivedBehindAGapIsIgnoredWhenItComes) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t gap = i.numbers()->cmd_sn++;
    uint32_t lost = i.numbers()->cmd_sn++;
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task, 0, 0x6666, lost);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    Command late = tur();
    late.itt = 0x6666;
    late.cmd_sn = lost;
    i.command(late);
    uint32_t after = i.nop_out();
    i.numbers()->cmd_sn = gap;
    uint32_t first = i.nop_out();
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u) << "the gap's NOP-Out and the one after the aborted CmdSN; nothing for it";
    EXPECT_EQ(pdus[0].bhs.itt(), first);
    EXPECT_EQ(pdus[1].bhs.itt(), after);
}

TEST(TaskManagement, AbortTaskOfACommandWaitingForItsCmdSnRemovesIt) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    Command held = tur();
    held.cmd_sn = sn + 1;
    uint32_t itt = i.command(held);
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task, 0, itt);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    Command first = tur();
    first.cmd_sn = sn;
    uint32_t first_itt = i.command(first);
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 1u) << "only the command that filled the gap is answered";
    EXPECT_EQ(pdus[0].bhs.itt(), first_itt);
}

TEST(TaskManagement, AbortTaskSetEndsTheTasksOfThatLunOnly) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t on0 = write_waiting_for_data(i, 0);
    iscsi::R2t r2t1;
    uint32_t on1 = write_waiting_for_data(i, 1, &r2t1);
    (void)on0;
    uint32_t tmf = i.tmf(iscsi::TmfFunction::abort_task_set, lun_field(0));
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    auto data = pattern(512, 31);
    i.answer_r2t(r2t1, data);
    auto pdu = i.next();
    ASSERT_TRUE(pdu) << "the task on LUN 1 goes on";
    EXPECT_EQ(pdu->bhs.itt(), on1);
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::scsi_response);
}

TEST(TaskManagement, ClearTaskSetEndsTheTasksOfThatLun) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    write_waiting_for_data(i, 0);
    write_waiting_for_data(i, 0);
    uint32_t tmf = i.tmf(iscsi::TmfFunction::clear_task_set, lun_field(0));
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
}

TEST(TaskManagement, LogicalUnitResetEndsTasksAndRaisesAUnitAttentionForOtherNexuses) {
    Harness h;
    FakeInitiator& a = h.logged_in();
    LoginOptions other;
    other.isid = 0x400000000002;
    FakeInitiator& b = h.logged_in(other);
    clear_unit_attention(b);
    write_waiting_for_data(a, 0);
    uint32_t tmf = a.tmf(iscsi::TmfFunction::lun_reset, lun_field(0));
    EXPECT_EQ(expect_tmf_response(a, tmf).response, iscsi::TmfResponse::function_complete);
    b.command(tur());
    auto pdu = b.next();
    ASSERT_TRUE(pdu);
    Outcome o = outcome_of(*pdu);
    EXPECT_EQ(o.sense_key, 0x06);
    EXPECT_EQ(o.asc, scsi::asc::bus_device_reset_function_occurred);
}

TEST(TaskManagement, LogicalUnitResetOfAMissingLunSaysSo) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t tmf = i.tmf(iscsi::TmfFunction::lun_reset, lun_field(9));
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::lun_does_not_exist);
}

TEST(TaskManagement, TargetWarmResetEndsTasksOnEveryLun) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    write_waiting_for_data(i, 0);
    write_waiting_for_data(i, 1);
    uint32_t tmf = i.tmf(iscsi::TmfFunction::target_warm_reset);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::function_complete);
    EXPECT_FALSE(i.closed_by_target()) << "a warm reset keeps the sessions";
}

TEST(TaskManagement, TargetColdResetAnswersThenClosesEverySession) {
    Harness h;
    FakeInitiator& a = h.logged_in();
    LoginOptions other;
    other.isid = 0x400000000002;
    FakeInitiator& b = h.logged_in(other);
    uint32_t tmf = a.tmf(iscsi::TmfFunction::target_cold_reset);
    EXPECT_EQ(expect_tmf_response(a, tmf).response, iscsi::TmfResponse::function_complete);
    EXPECT_TRUE(a.closed_by_target());
    EXPECT_TRUE(b.closed_by_target());
}

// The engine answers a reset later (from the reactor loop); a Logout that ended the session in the meantime
// freed the session under that answer (found by fuzz_target). Every function the engine runs, each
// followed at once by a Logout: the session ends once the answer is in, and nothing else is sent. Under
// ASan (make asan) the old code fails here with a heap-use-after-free.
TEST(TaskManagement, ALogoutRightAfterAResetEndsTheSessionOnceTheResetIsDone) {
    for (auto function : {iscsi::TmfFunction::abort_task_set, iscsi::TmfFunction::clear_task_set,
                          iscsi::TmfFunction::lun_reset, iscsi::TmfFunction::target_warm_reset,
                          iscsi::TmfFunction::target_cold_reset}) {
        SCOPED_TRACE(int(function));
        Harness h;
        FakeInitiator& i = h.logged_in();
        i.tmf(function);
        uint32_t logout = i.logout(iscsi::LogoutReason::close_session, std::nullopt, /*immediate=*/true);
        for (auto& pdu : i.drain()) {
            EXPECT_TRUE(pdu.opcode() == iscsi::Opcode::task_mgmt_response ||
                        (pdu.opcode() == iscsi::Opcode::logout_response && pdu.bhs.itt() == logout))
                << pdu.describe();
        }
        EXPECT_TRUE(i.closed_by_target());
        EXPECT_EQ(h.server().statistics().targets[target_iqn].sessions, 0u);
    }
}

TEST(TaskManagement, ClearAcaIsNotSupported) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t tmf = i.tmf(iscsi::TmfFunction::clear_aca, lun_field(0));
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::not_supported);
}

TEST(TaskManagement, TaskReassignIsNotSupportedAtErrorRecoveryLevel0) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t tmf = i.tmf(iscsi::TmfFunction::task_reassign, 0, 0x1234);
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::reassignment_not_supported);
}

TEST(TaskManagement, UnknownFunctionIsNotSupported) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t tmf = i.tmf(iscsi::TmfFunction(14));
    EXPECT_EQ(expect_tmf_response(i, tmf).response, iscsi::TmfResponse::not_supported);
    EXPECT_FALSE(i.closed_by_target());
}

TEST(TaskManagement, NonImmediateRequestWaitsForItsCmdSn) {
    Harness h;
    FakeInitiator& i = h.logged_in();
    uint32_t sn = i.numbers()->cmd_sn;
    i.numbers()->cmd_sn = sn + 1; // leave a gap at `sn`
    uint32_t tmf =
        i.tmf(iscsi::TmfFunction::clear_aca, lun_field(0), iscsi::reserved_tag, 0, /*immediate=*/false);
    EXPECT_FALSE(i.next());
    i.numbers()->cmd_sn = sn;
    uint32_t first = i.nop_out(); // answered at once when its turn comes
    auto pdus = i.drain();
    ASSERT_EQ(pdus.size(), 2u);
    EXPECT_EQ(pdus[0].bhs.itt(), first);
    EXPECT_EQ(pdus[1].bhs.itt(), tmf);
}

TEST(TaskManagement, IsRejectedInADiscoverySession) {
    Harness h;
    FakeInitiator& i = h.connect();
    LoginOptions o;
    o.session_type = iscsi::SessionType::discovery;
    o.target_name.clear();
    ASSERT_TRUE(i.login(o).ok());
    i.tmf(iscsi::TmfFunction::abort_task_set);
    auto pdu = i.next();
    ASSERT_TRUE(pdu);
    EXPECT_EQ(pdu->opcode(), iscsi::Opcode::reject);
}

} // namespace
} // namespace ispace::iscsi_target::test
