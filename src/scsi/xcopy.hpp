// Third-party copy (SPC-4 6.4, 6.18; LID1): EXTENDED COPY with identification CSCD descriptors (E4h)
// naming logical units of this target by their NAA designator (VPD 83h), block-to-block segment
// descriptors (02h), and RECEIVE COPY RESULTS with COPY STATUS and OPERATING PARAMETERS, plus the
// Third-party Copy VPD page (8Fh) that advertises them.
//
// The copy manager is the logical unit that received the EXTENDED COPY. It copies through the
// engine's own I/O path: chunks of at most the maximum transfer length, each read from the source
// logical unit's device and written to the destination's, under the range lock of each (shared, so
// that a COMPARE AND WRITE on either side stays atomic), on the command's reactor. One command
// holds at most one chunk of memory, whatever the segment lengths.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace ispace::scsi {
class Execution;
class LogicalUnit;
class TargetDevice;
struct Nexus;
} // namespace ispace::scsi

namespace ispace::scsi::xcopy {

// Copy manager limits (RECEIVE COPY RESULTS OPERATING PARAMETERS, VPD 8Fh).
constexpr uint16_t max_cscd_descriptors = 16;
constexpr uint16_t max_segment_descriptors = 16;
constexpr uint32_t max_descriptor_list_length = 16 + 32 * max_cscd_descriptors + 28 * max_segment_descriptors;
// Bytes one segment may move (MAXIMUM SEGMENT LENGTH): the 16-bit block count of a block-to-block
// segment at 4096-byte blocks.
constexpr uint32_t max_segment_bytes = 0xffff * 4096u;

void extended_copy(Execution& cmd);
void receive_copy_results(Execution& cmd);
std::vector<uint8_t> third_party_copy_vpd(const LogicalUnit& lu);

// The logical unit of `target` an identification CSCD descriptor's designator names (code set,
// association/type byte, designator), or nullptr. Only NAA designators of LU association resolve:
// the one VPD 83h reports first for each logical unit. With a nexus, only the logical units its LUN
// masking lets it see: a copy cannot reach what the initiator could not address itself.
std::shared_ptr<LogicalUnit> resolve_designator(const TargetDevice& target, uint8_t code_set,
                                                uint8_t association_type, const uint8_t* designator,
                                                uint8_t length, const Nexus* nexus = nullptr);

} // namespace ispace::scsi::xcopy
