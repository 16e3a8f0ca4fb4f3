// iSNS attributes (RFC 4171 §5.5): Tag (32 bits), Length (32 bits), Value (Length bytes, a multiple of
// 4). A zero length is a "nil" attribute: a query names what it wants back that way (§5.6.5.2).
// Builders make well-formed values; readers check a value's shape before they use it, so a hostile
// server's attribute is an error value, never an out-of-bounds read.
#pragma once

#include "common/result.hpp"
#include "net/socket.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::isns {

struct Attribute {
    uint32_t tag = 0;
    std::vector<uint8_t> value; // empty: nil

    bool nil() const { return value.empty(); }
    bool operator==(const Attribute&) const = default;
};

// An IP address as iSNS carries it (§6.3.1): 16 bytes, an IPv4 address mapped into IPv6
// (::ffff:a.b.c.d). We send that form and read the IPv4-compatible one (::a.b.c.d) too, which
// open-isns sends.
struct Address {
    std::array<uint8_t, 16> bytes{};

    static Address from_ipv4(uint32_t host_order);
    // The address part of `endpoint` (its port is not part of an Address).
    static Address from_endpoint(const net::Endpoint& endpoint);
    bool is_ipv4() const;
    // 0.0.0.0 or :: (a wildcard listener): not an address anyone can reach.
    bool is_unspecified() const;
    // "192.0.2.1" or "2001:db8::1" (no brackets).
    std::string to_string() const;
    // An endpoint of this address and `port`, as an IPv4 endpoint when the address is a mapped one.
    net::Endpoint to_endpoint(uint16_t port) const;
    bool operator==(const Address&) const = default;
};

// A TCP or UDP port as iSNS carries it (§6.3.2).
struct Port {
    uint16_t number = 0;
    bool udp = false;
    bool operator==(const Port&) const = default;
};

// --- building values ---
Attribute nil_attribute(uint32_t tag);
// A string: UTF-8, NUL-terminated and padded with NULs to a multiple of 4 (§5.5.1).
Attribute string_attribute(uint32_t tag, std::string_view text);
Attribute u32_attribute(uint32_t tag, uint32_t value);
Attribute u64_attribute(uint32_t tag, uint64_t value);
Attribute address_attribute(uint32_t tag, const Address& address);
Attribute port_attribute(uint32_t tag, Port port);

// --- reading values (each checks length and shape) ---
// The text before the first NUL. Fails when the value is nil, holds no NUL, or holds bytes after the
// NUL that are not NUL (padding must be zeros) — RFC 4171 §5.5.1.
Result<std::string> read_string(const Attribute& attribute);
Result<uint32_t> read_u32(const Attribute& attribute);
Result<uint64_t> read_u64(const Attribute& attribute);
Result<Address> read_address(const Attribute& attribute);
// Fails when reserved bits (the top 15) are set.
Result<Port> read_port(const Attribute& attribute);

// A line for logs: "iSCSI Name (32) = \"iqn...\"", "Portal TCP/UDP Port (17) = 3260/tcp", values of
// unknown or malformed shape in hex (at most 32 bytes shown).
std::string describe(const Attribute& attribute);

} // namespace ispace::isns
