#include "isns/attribute.hpp"

#include "common/bytes.hpp"
#include "isns/protocol.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace ispace::isns {
namespace {

Error shape_error(const Attribute& a, std::string_view expected) {
    return make_error(
        fmt::format("iSNS attribute {}: {} bytes, expected {}", tag_name(a.tag), a.value.size(), expected),
        EPROTO);
}

bool is_string_tag(uint32_t t) {
    return t == tag::entity_identifier || t == tag::portal_symbolic_name || t == tag::iscsi_name ||
           t == tag::iscsi_alias || t == tag::pg_iscsi_name || t == tag::iscsi_auth_method ||
           t == tag::dd_symbolic_name || t == tag::dd_member_iscsi_name;
}

bool is_address_tag(uint32_t t) {
    return t == tag::management_ip_address || t == tag::portal_ip_address || t == tag::pg_portal_ip_address;
}

bool is_port_tag(uint32_t t) {
    return t == tag::portal_port || t == tag::esi_port || t == tag::scn_port || t == tag::pg_portal_port;
}

} // namespace

Address Address::from_ipv4(uint32_t host_order) {
    Address a;
    a.bytes[10] = 0xff;
    a.bytes[11] = 0xff;
    store_be32(a.bytes.data() + 12, host_order);
    return a;
}

Address Address::from_endpoint(const net::Endpoint& endpoint) {
    if (endpoint.addr.ss_family == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(endpoint.addr);
        return from_ipv4(ntohl(in.sin_addr.s_addr));
    }
    Address a;
    if (endpoint.addr.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(endpoint.addr);
        std::memcpy(a.bytes.data(), &in6.sin6_addr, 16);
    }
    return a;
}

bool Address::is_ipv4() const {
    for (size_t i = 0; i < 10; ++i) {
        if (bytes[i] != 0) {
            return false;
        }
    }
    if (bytes[10] == 0xff && bytes[11] == 0xff) {
        return true; // ::ffff:a.b.c.d, as RFC 4171 §6.3.1 writes it
    }
    // ::a.b.c.d, the deprecated IPv4-compatible form, which open-isns sends; not :: and ::1.
    return bytes[10] == 0 && bytes[11] == 0 && load_be32(bytes.data() + 12) > 1;
}

bool Address::is_unspecified() const {
    if (is_ipv4()) {
        return load_be32(bytes.data() + 12) == 0;
    }
    for (uint8_t b : bytes) {
        if (b != 0) {
            return false;
        }
    }
    return true;
}

std::string Address::to_string() const {
    char text[INET6_ADDRSTRLEN] = {};
    if (is_ipv4()) {
        ::inet_ntop(AF_INET, bytes.data() + 12, text, sizeof text);
    } else {
        ::inet_ntop(AF_INET6, bytes.data(), text, sizeof text);
    }
    return text;
}

net::Endpoint Address::to_endpoint(uint16_t port) const {
    net::Endpoint ep;
    if (is_ipv4()) {
        auto& in = reinterpret_cast<sockaddr_in&>(ep.addr);
        in.sin_family = AF_INET;
        in.sin_port = htons(port);
        std::memcpy(&in.sin_addr, bytes.data() + 12, 4);
        ep.len = sizeof(sockaddr_in);
    } else {
        auto& in6 = reinterpret_cast<sockaddr_in6&>(ep.addr);
        in6.sin6_family = AF_INET6;
        in6.sin6_port = htons(port);
        std::memcpy(&in6.sin6_addr, bytes.data(), 16);
        ep.len = sizeof(sockaddr_in6);
    }
    return ep;
}

Attribute nil_attribute(uint32_t tag) {
    return Attribute{tag, {}};
}

Attribute string_attribute(uint32_t tag, std::string_view text) {
    Attribute a{tag, {}};
    a.value.assign(text.begin(), text.end());
    a.value.resize(pad4(text.size() + 1), 0); // the NUL, then padding
    return a;
}

Attribute u32_attribute(uint32_t tag, uint32_t value) {
    Attribute a{tag, std::vector<uint8_t>(4)};
    store_be32(a.value.data(), value);
    return a;
}

Attribute u64_attribute(uint32_t tag, uint64_t value) {
    Attribute a{tag, std::vector<uint8_t>(8)};
    store_be64(a.value.data(), value);
    return a;
}

Attribute address_attribute(uint32_t tag, const Address& address) {
    return Attribute{tag, std::vector<uint8_t>(address.bytes.begin(), address.bytes.end())};
}

Attribute port_attribute(uint32_t tag, Port port) {
    return u32_attribute(tag, uint32_t(port.number) | (port.udp ? port_udp_bit : 0));
}

Result<std::string> read_string(const Attribute& a) {
    if (a.value.empty() || a.value.size() % 4 != 0) {
        return shape_error(a, "a NUL-terminated string padded to 4 bytes");
    }
    const uint8_t* begin = a.value.data();
    const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(begin, 0, a.value.size()));
    if (nul == nullptr) {
        return shape_error(a, "a NUL-terminated string (no NUL found)");
    }
    for (const uint8_t* p = nul; p < begin + a.value.size(); ++p) {
        if (*p != 0) {
            return shape_error(a, "NUL padding after the string");
        }
    }
    return std::string(reinterpret_cast<const char*>(begin), size_t(nul - begin));
}

Result<uint32_t> read_u32(const Attribute& a) {
    if (a.value.size() != 4) {
        return shape_error(a, "4");
    }
    return load_be32(a.value.data());
}

Result<uint64_t> read_u64(const Attribute& a) {
    if (a.value.size() != 8) {
        return shape_error(a, "8");
    }
    return load_be64(a.value.data());
}

Result<Address> read_address(const Attribute& a) {
    if (a.value.size() != 16) {
        return shape_error(a, "16 (an IPv6 or IPv4-mapped address)");
    }
    Address address;
    std::memcpy(address.bytes.data(), a.value.data(), 16);
    return address;
}

Result<Port> read_port(const Attribute& a) {
    auto word = read_u32(a);
    if (!word) {
        return word.error();
    }
    if ((*word & ~(port_udp_bit | 0xffffu)) != 0) {
        return make_error(
            fmt::format("iSNS attribute {}: reserved bits set in {:#010x}", tag_name(a.tag), *word), EPROTO);
    }
    return Port{uint16_t(*word & 0xffff), (*word & port_udp_bit) != 0};
}

std::string describe(const Attribute& a) {
    std::string name = tag_name(a.tag);
    if (a.nil()) {
        return fmt::format("{} = nil", name);
    }
    if (is_string_tag(a.tag)) {
        if (auto s = read_string(a)) {
            return fmt::format("{} = \"{}\"", name, *s);
        }
    } else if (is_address_tag(a.tag)) {
        if (auto ip = read_address(a)) {
            return fmt::format("{} = {}", name, ip->to_string());
        }
    } else if (is_port_tag(a.tag)) {
        if (auto port = read_port(a)) {
            return fmt::format("{} = {}/{}", name, port->number, port->udp ? "udp" : "tcp");
        }
    } else if (a.value.size() == 4) {
        return fmt::format("{} = {}", name, load_be32(a.value.data()));
    } else if (a.value.size() == 8) {
        return fmt::format("{} = {}", name, load_be64(a.value.data()));
    }
    std::string hex;
    for (size_t i = 0; i < a.value.size() && i < 32; ++i) {
        hex += fmt::format("{:02x}", a.value[i]);
    }
    return fmt::format("{} = {} bytes {}{}", name, a.value.size(), hex, a.value.size() > 32 ? "..." : "");
}

} // namespace ispace::isns
