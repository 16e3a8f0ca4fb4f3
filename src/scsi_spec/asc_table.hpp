// The one ASC/ASCQ table: a name for code, the value as 0xAAQQ, and the standard's text for it (the
// additional sense code assignments of SPC-5, Annex F, as T10 also publishes them in its numeric list
// asc-num.txt). iSCSI's own assignments (RFC 7143 §11.4.7.2) are in the same list.
//
// Every code the engine raises and every code the initiator names in a message is here: sense.hpp makes
// an asc:: constant of each row and asc_text() looks the text up, so a code cannot be raised without a
// text to describe it. Rows are in numeric order (checked when compiling sense.cpp); a new code is one
// row. The names follow the text, shortened where the engine has long used a shorter one.
//
// X(name, 0xAAQQ, text)
#pragma once

// clang-format off
#define ISPACE_SCSI_ASC_TABLE(X)                                                                              \
    X(no_additional_sense, 0x0000, "NO ADDITIONAL SENSE INFORMATION")                                         \
    X(operation_in_progress, 0x0016, "OPERATION IN PROGRESS")                                                 \
    X(lu_not_ready_cause_not_reportable, 0x0400, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE")              \
    X(lu_becoming_ready, 0x0401, "LOGICAL UNIT IS IN PROCESS OF BECOMING READY")                              \
    X(lu_not_ready_initializing_required, 0x0402, "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED")    \
    X(lu_not_ready_manual_intervention_required, 0x0403,                                                      \
      "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED")                                                 \
    X(lu_not_ready_format_in_progress, 0x0404, "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS")                  \
    X(lu_not_ready_operation_in_progress, 0x0407, "LOGICAL UNIT NOT READY, OPERATION IN PROGRESS")            \
    X(lu_not_ready_self_test_in_progress, 0x0409, "LOGICAL UNIT NOT READY, SELF-TEST IN PROGRESS")            \
    X(lu_not_accessible_asymmetric_access_state_transition, 0x040a,                                           \
      "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION")                                      \
    X(lu_not_accessible_target_port_in_standby_state, 0x040b,                                                 \
      "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE")                                            \
    X(lu_not_accessible_target_port_in_unavailable_state, 0x040c,                                             \
      "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE")                                        \
    X(lu_not_ready_sanitize_in_progress, 0x041b, "LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS")              \
    X(lu_does_not_respond_to_selection, 0x0500, "LOGICAL UNIT DOES NOT RESPOND TO SELECTION")                 \
    X(unreachable_copy_target, 0x0804, "UNREACHABLE COPY TARGET")                                             \
    X(write_error, 0x0c00, "WRITE ERROR")                                                                     \
    X(unexpected_unsolicited_data, 0x0c0c, "UNEXPECTED UNSOLICITED DATA")                                     \
    X(not_enough_unsolicited_data, 0x0c0d, "NOT ENOUGH UNSOLICITED DATA")                                     \
    X(copy_target_device_not_reachable, 0x0d02, "COPY TARGET DEVICE NOT REACHABLE")                           \
    X(incorrect_copy_target_device_type, 0x0d03, "INCORRECT COPY TARGET DEVICE TYPE")                         \
    X(information_unit_too_short, 0x0e01, "INFORMATION UNIT TOO SHORT")                                       \
    X(information_unit_too_long, 0x0e02, "INFORMATION UNIT TOO LONG")                                         \
    X(invalid_field_in_command_iu, 0x0e03, "INVALID FIELD IN COMMAND INFORMATION UNIT")                       \
    X(logical_block_guard_check_failed, 0x1001, "LOGICAL BLOCK GUARD CHECK FAILED")                           \
    X(logical_block_application_tag_check_failed, 0x1002, "LOGICAL BLOCK APPLICATION TAG CHECK FAILED")       \
    X(logical_block_reference_tag_check_failed, 0x1003, "LOGICAL BLOCK REFERENCE TAG CHECK FAILED")           \
    X(unrecovered_read_error, 0x1100, "UNRECOVERED READ ERROR")                                               \
    X(read_error_failed_retransmission_request, 0x1113, "READ ERROR - FAILED RETRANSMISSION REQUEST")         \
    X(parameter_list_length_error, 0x1a00, "PARAMETER LIST LENGTH ERROR")                                     \
    X(miscompare_during_verify, 0x1d00, "MISCOMPARE DURING VERIFY OPERATION")                                 \
    X(invalid_command_operation_code, 0x2000, "INVALID COMMAND OPERATION CODE")                               \
    X(lba_out_of_range, 0x2100, "LOGICAL BLOCK ADDRESS OUT OF RANGE")                                         \
    X(invalid_field_in_cdb, 0x2400, "INVALID FIELD IN CDB")                                                   \
    X(lu_not_supported, 0x2500, "LOGICAL UNIT NOT SUPPORTED")                                                 \
    X(invalid_field_in_parameter_list, 0x2600, "INVALID FIELD IN PARAMETER LIST")                             \
    X(parameter_not_supported, 0x2601, "PARAMETER NOT SUPPORTED")                                             \
    X(parameter_value_invalid, 0x2602, "PARAMETER VALUE INVALID")                                             \
    X(invalid_release_of_persistent_reservation, 0x2604, "INVALID RELEASE OF PERSISTENT RESERVATION")         \
    X(too_many_target_descriptors, 0x2606, "TOO MANY TARGET DESCRIPTORS")                                     \
    X(unsupported_target_descriptor_type_code, 0x2607, "UNSUPPORTED TARGET DESCRIPTOR TYPE CODE")             \
    X(too_many_segment_descriptors, 0x2608, "TOO MANY SEGMENT DESCRIPTORS")                                   \
    X(unsupported_segment_descriptor_type_code, 0x2609, "UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE")           \
    X(write_protected, 0x2700, "WRITE PROTECTED")                                                             \
    X(hardware_write_protected, 0x2701, "HARDWARE WRITE PROTECTED")                                           \
    X(lu_software_write_protected, 0x2702, "LOGICAL UNIT SOFTWARE WRITE PROTECTED")                           \
    X(space_allocation_failed_write_protect, 0x2707, "SPACE ALLOCATION FAILED WRITE PROTECT")                 \
    X(not_ready_to_ready_change, 0x2800, "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED")                 \
    X(power_on_reset_or_bus_device_reset, 0x2900, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED")            \
    X(power_on_occurred, 0x2901, "POWER ON OCCURRED")                                                         \
    X(scsi_bus_reset_occurred, 0x2902, "SCSI BUS RESET OCCURRED")                                             \
    X(bus_device_reset_function_occurred, 0x2903, "BUS DEVICE RESET FUNCTION OCCURRED")                       \
    X(device_internal_reset, 0x2904, "DEVICE INTERNAL RESET")                                                 \
    X(i_t_nexus_loss_occurred, 0x2907, "I_T NEXUS LOSS OCCURRED")                                             \
    X(parameters_changed, 0x2a00, "PARAMETERS CHANGED")                                                       \
    X(mode_parameters_changed, 0x2a01, "MODE PARAMETERS CHANGED")                                             \
    X(log_parameters_changed, 0x2a02, "LOG PARAMETERS CHANGED")                                               \
    X(reservations_preempted, 0x2a03, "RESERVATIONS PREEMPTED")                                               \
    X(reservations_released, 0x2a04, "RESERVATIONS RELEASED")                                                 \
    X(registrations_preempted, 0x2a05, "REGISTRATIONS PREEMPTED")                                             \
    X(asymmetric_access_state_changed, 0x2a06, "ASYMMETRIC ACCESS STATE CHANGED")                             \
    X(capacity_data_has_changed, 0x2a09, "CAPACITY DATA HAS CHANGED")                                         \
    X(command_sequence_error, 0x2c00, "COMMAND SEQUENCE ERROR")                                               \
    X(commands_cleared_by_another_initiator, 0x2f00, "COMMANDS CLEARED BY ANOTHER INITIATOR")                 \
    X(medium_format_corrupted, 0x3100, "MEDIUM FORMAT CORRUPTED")                                             \
    X(sanitize_command_failed, 0x3103, "SANITIZE COMMAND FAILED")                                             \
    X(thin_provisioning_soft_threshold_reached, 0x3807, "THIN PROVISIONING SOFT THRESHOLD REACHED")           \
    X(saving_parameters_not_supported, 0x3900, "SAVING PARAMETERS NOT SUPPORTED")                             \
    X(medium_not_present, 0x3a00, "MEDIUM NOT PRESENT")                                                       \
    X(logical_unit_failure, 0x3e01, "LOGICAL UNIT FAILURE")                                                   \
    X(microcode_has_been_changed, 0x3f01, "MICROCODE HAS BEEN CHANGED")                                       \
    X(inquiry_data_has_changed, 0x3f03, "INQUIRY DATA HAS CHANGED")                                           \
    X(reported_luns_data_has_changed, 0x3f0e, "REPORTED LUNS DATA HAS CHANGED")                               \
    X(internal_target_failure, 0x4400, "INTERNAL TARGET FAILURE")                                             \
    X(scsi_parity_error, 0x4700, "SCSI PARITY ERROR")                                                         \
    X(protocol_service_crc_error, 0x4705, "PROTOCOL SERVICE CRC ERROR")                                       \
    X(some_commands_cleared_by_iscsi_protocol_event, 0x477f, "SOME COMMANDS CLEARED BY ISCSI PROTOCOL EVENT") \
    X(invalid_message_error, 0x4900, "INVALID MESSAGE ERROR")                                                 \
    X(data_phase_error, 0x4b00, "DATA PHASE ERROR")                                                           \
    X(invalid_target_port_transfer_tag, 0x4b01, "INVALID TARGET PORT TRANSFER TAG RECEIVED")                  \
    X(data_offset_error, 0x4b05, "DATA OFFSET ERROR")                                                         \
    X(initiator_response_timeout, 0x4b06, "INITIATOR RESPONSE TIMEOUT")                                       \
    X(medium_removal_prevented, 0x5302, "MEDIUM REMOVAL PREVENTED")                                           \
    X(insufficient_resources, 0x5503, "INSUFFICIENT RESOURCES")                                               \
    X(insufficient_registration_resources, 0x5504, "INSUFFICIENT REGISTRATION RESOURCES")                     \
    X(failure_prediction_threshold_exceeded, 0x5d00, "FAILURE PREDICTION THRESHOLD EXCEEDED")
// clang-format on
