// The engine's side of sense: errno mapping, and the D_SENSE switch end to end. The formats themselves
// are scsi_spec's (tests/unit/scsi_spec/sense_test.cpp).
#include "harness.hpp"

#include "scsi/sense.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

TEST(Sense, ErrnoMapping) {
    EXPECT_EQ(sense_from_errno(-EIO, false).code, asc::unrecovered_read_error);
    EXPECT_EQ(sense_from_errno(-EIO, false).key, SenseKey::medium_error);
    EXPECT_EQ(sense_from_errno(-EIO, true).code, asc::write_error);
    EXPECT_EQ(sense_from_errno(-ENOSPC, true).code, asc::space_allocation_failed_write_protect);
    EXPECT_EQ(sense_from_errno(-ENOSPC, true).key, SenseKey::data_protect);
    EXPECT_EQ(sense_from_errno(-EROFS, true).code, asc::write_protected);
    EXPECT_EQ(sense_from_errno(-EINVAL, true).key, SenseKey::hardware_error);
}

// D_SENSE in the Control mode page selects the format of CHECK CONDITION sense.
TEST(Sense, LogicalUnitFormatFollowsDSense) {
    Harness h;
    auto t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_EQ(t->sense[0], 0x70);

    ModeValues v = h.lu().mode_values();
    v.d_sense = true;
    h.lu().set_mode_values(v);
    t = h.exec(rw16(op::read_16, ~0ull, 1), 512);
    ASSERT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::lba_out_of_range));
    EXPECT_EQ(t->sense[0], 0x72);
}
