#include "isns/protocol.hpp"

#include <fmt/format.h>

namespace ispace::isns {
namespace {

struct Named {
    uint32_t value;
    const char* name;
};

// Names as RFC 4171 writes them (§5.1.3, §5.7.3, §6.1), for logs and the CLI.
constexpr Named functions[] = {
    {0x0001, "DevAttrReg"}, {0x0002, "DevAttrQry"}, {0x0003, "DevGetNext"}, {0x0004, "DevDereg"},
    {0x0005, "SCNReg"},     {0x0006, "SCNDereg"},   {0x0007, "SCNEvent"},   {0x0008, "SCN"},
    {0x0009, "DDReg"},      {0x000A, "DDDereg"},    {0x000B, "DDSReg"},     {0x000C, "DDSDereg"},
    {0x000D, "ESI"},        {0x000E, "Heartbeat"},
};

constexpr Named statuses[] = {
    {0, "Successful"},
    {1, "Unknown Error"},
    {2, "Message Format Error"},
    {3, "Invalid Registration"},
    {5, "Invalid Query"},
    {6, "Source Unknown"},
    {7, "Source Absent"},
    {8, "Source Unauthorized"},
    {9, "No Such Entry"},
    {10, "Version Not Supported"},
    {11, "Internal Error"},
    {12, "Busy"},
    {13, "Option Not Understood"},
    {14, "Invalid Update"},
    {15, "Message (FUNCTION_ID) Not Supported"},
    {16, "SCN Event Rejected"},
    {17, "SCN Registration Rejected"},
    {18, "Attribute Not Implemented"},
    {19, "FC_DOMAIN_ID Not Available"},
    {20, "FC_DOMAIN_ID Not Allocated"},
    {21, "ESI Not Available"},
    {22, "Invalid Deregistration"},
    {23, "Registration Feature Not Supported"},
};

constexpr Named tags[] = {
    {0, "Delimiter"},
    {1, "Entity Identifier"},
    {2, "Entity Protocol"},
    {3, "Management IP Address"},
    {4, "Timestamp"},
    {5, "Protocol Version Range"},
    {6, "Registration Period"},
    {7, "Entity Index"},
    {8, "Entity Next Index"},
    {16, "Portal IP Address"},
    {17, "Portal TCP/UDP Port"},
    {18, "Portal Symbolic Name"},
    {19, "ESI Interval"},
    {20, "ESI Port"},
    {22, "Portal Index"},
    {23, "SCN Port"},
    {24, "Portal Next Index"},
    {27, "Portal Security Bitmap"},
    {32, "iSCSI Name"},
    {33, "iSCSI Node Type"},
    {34, "iSCSI Alias"},
    {35, "iSCSI SCN Bitmap"},
    {36, "iSCSI Node Index"},
    {37, "WWNN Token"},
    {38, "iSCSI Node Next Index"},
    {42, "iSCSI AuthMethod"},
    {48, "PG iSCSI Name"},
    {49, "PG Portal IP Addr"},
    {50, "PG Portal TCP/UDP Port"},
    {51, "PG Tag"},
    {52, "PG Index"},
    {53, "PG Next Index"},
    {2065, "DD_ID"},
    {2066, "DD_Symbolic_Name"},
    {2067, "DD_Member iSCSI Index"},
    {2068, "DD_Member iSCSI Name"},
};

template <size_t N> const char* find(const Named (&table)[N], uint32_t value) {
    for (const Named& n : table) {
        if (n.value == value) {
            return n.name;
        }
    }
    return nullptr;
}

} // namespace

std::string function_name(uint16_t id) {
    const char* name = find(functions, id & uint16_t(~response_bit));
    if (name == nullptr) {
        return fmt::format("function {:#06x}", id);
    }
    return (id & response_bit) ? fmt::format("{}Rsp", name) : std::string(name);
}

std::string status_name(uint32_t status) {
    const char* name = find(statuses, status);
    return name ? fmt::format("{} ({})", name, status) : fmt::format("status {}", status);
}

std::string tag_name(uint32_t tag) {
    const char* name = find(tags, tag);
    return name ? fmt::format("{} ({})", name, tag) : fmt::format("tag {}", tag);
}

} // namespace ispace::isns
