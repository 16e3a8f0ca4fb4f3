// The vocabulary of iSNSP, the Internet Storage Name Service protocol (RFC 4171): the PDU header's
// fields and flags, the function IDs, the status codes of responses, and the attribute tags that an
// iSCSI target and initiator use. Written once here; the codec, the client, the registrar and the
// CLI name them from this file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ispace::isns {

// RFC 4171 §5.1: the IANA port of iSNS, over TCP or UDP (we use TCP only).
constexpr uint16_t default_port = 3205;
// §5.1: "iSNSP Version ... The current version is 0x0001."
constexpr uint16_t protocol_version = 1;
// §5.1: Version, Function ID, PDU Length, Flags, Transaction ID, Sequence ID, 16 bits each.
constexpr size_t header_size = 12;
// §5.1: PDU Length is a 16-bit count of payload bytes.
constexpr size_t max_pdu_payload = 65535;

// §5.1.3 Function IDs (requests); a response is the request's ID with the top bit set (§5.1.3,
// "...Rsp" = 0x8000 | ID).
enum class Function : uint16_t {
    dev_attr_reg = 0x0001,
    dev_attr_qry = 0x0002,
    dev_get_next = 0x0003,
    dev_dereg = 0x0004,
    scn_reg = 0x0005,
    scn_dereg = 0x0006,
    scn_event = 0x0007,
    scn = 0x0008,
    dd_reg = 0x0009,
    dd_dereg = 0x000A,
    dds_reg = 0x000B,
    dds_dereg = 0x000C,
    esi = 0x000D,
    heartbeat = 0x000E,
};
constexpr uint16_t response_bit = 0x8000;
constexpr uint16_t function_id(Function f) {
    return uint16_t(f);
}
constexpr uint16_t response_id(Function f) {
    return uint16_t(uint16_t(f) | response_bit);
}
// "DevAttrReg", "ESIRsp", or "function 0x1234".
std::string function_name(uint16_t id);

// §5.1.4 Flags.
namespace flag {
constexpr uint16_t client = 0x8000;  // the sender is an iSNS client
constexpr uint16_t server = 0x4000;  // the sender is the iSNS server
constexpr uint16_t auth = 0x2000;    // an authentication block follows (we support none)
constexpr uint16_t replace = 0x1000; // DevAttrReg: replace the registration (§5.6.5.1)
constexpr uint16_t last = 0x0800;    // last PDU of the message
constexpr uint16_t first = 0x0400;   // first PDU of the message
} // namespace flag

// §5.7.3 Status codes (the first word of every response's payload).
enum class Status : uint32_t {
    success = 0,
    unknown_error = 1,
    message_format_error = 2,
    invalid_registration = 3,
    invalid_query = 5,
    source_unknown = 6,
    source_absent = 7,
    source_unauthorized = 8,
    no_such_entry = 9,
    version_not_supported = 10,
    internal_error = 11,
    busy = 12,
    option_not_understood = 13,
    invalid_update = 14,
    message_not_supported = 15,
    scn_event_rejected = 16,
    scn_registration_rejected = 17,
    attribute_not_implemented = 18,
    esi_not_available = 21,
    invalid_deregistration = 22,
    registration_feature_not_supported = 23,
};
// "Source Unknown (6)", or "status 99" for codes the RFC does not define.
std::string status_name(uint32_t status);

// §6.1 Attribute tags (the iSCSI ones; iFCP and FC tags are decoded as opaque values).
namespace tag {
constexpr uint32_t delimiter = 0;
// Network Entity (§6.2)
constexpr uint32_t entity_identifier = 1;
constexpr uint32_t entity_protocol = 2;
constexpr uint32_t management_ip_address = 3;
constexpr uint32_t timestamp = 4;
constexpr uint32_t protocol_version_range = 5;
constexpr uint32_t registration_period = 6;
constexpr uint32_t entity_index = 7;
constexpr uint32_t entity_next_index = 8;
// Portal (§6.3)
constexpr uint32_t portal_ip_address = 16;
constexpr uint32_t portal_port = 17;
constexpr uint32_t portal_symbolic_name = 18;
constexpr uint32_t esi_interval = 19;
constexpr uint32_t esi_port = 20;
constexpr uint32_t portal_index = 22;
constexpr uint32_t scn_port = 23;
constexpr uint32_t portal_next_index = 24;
constexpr uint32_t portal_security_bitmap = 27;
// iSCSI Storage Node (§6.4)
constexpr uint32_t iscsi_name = 32;
constexpr uint32_t iscsi_node_type = 33;
constexpr uint32_t iscsi_alias = 34;
constexpr uint32_t iscsi_scn_bitmap = 35;
constexpr uint32_t iscsi_node_index = 36;
constexpr uint32_t wwnn_token = 37;
constexpr uint32_t iscsi_node_next_index = 38;
constexpr uint32_t iscsi_auth_method = 42;
// Portal Group (§6.5)
constexpr uint32_t pg_iscsi_name = 48;
constexpr uint32_t pg_portal_ip_address = 49;
constexpr uint32_t pg_portal_port = 50;
constexpr uint32_t pg_tag = 51;
constexpr uint32_t pg_index = 52;
constexpr uint32_t pg_next_index = 53;
// Discovery Domain (§6.11)
constexpr uint32_t dd_id = 2065;
constexpr uint32_t dd_symbolic_name = 2066;
constexpr uint32_t dd_member_iscsi_index = 2067;
constexpr uint32_t dd_member_iscsi_name = 2068;
} // namespace tag
// "iSCSI Name (32)", or "tag 1234".
std::string tag_name(uint32_t tag);

// §6.2.2 Entity Protocol values.
constexpr uint32_t entity_protocol_iscsi = 2;

// §6.4.2 iSCSI Node Type: a bit map.
namespace node_type {
constexpr uint32_t target = 0x1;
constexpr uint32_t initiator = 0x2;
constexpr uint32_t control = 0x4;
} // namespace node_type

// §6.3.2 Portal TCP/UDP Port: the port in the low 16 bits; bit 16 set means UDP.
constexpr uint32_t port_udp_bit = 0x10000;

} // namespace ispace::isns
