#include "isns/objects.hpp"

#include <algorithm>
#include <cerrno>
#include <fmt/format.h>
#include <set>
#include <utility>

namespace ispace::isns {
namespace {

Message request(Function f, std::string_view source) {
    Message m;
    m.function = function_id(f);
    // §5.6.1: the Source attribute comes first in every request a client sends.
    m.attributes.push_back(string_attribute(tag::iscsi_name, source));
    return m;
}

void delimiter(Message& m) {
    m.attributes.push_back(nil_attribute(tag::delimiter));
}

// Which object an attribute belongs to, by its tag's range (§6.1: entity 1-15, portal 16-31, iSCSI
// node 32-47, portal group 48-63).
enum class Kind { entity, portal, node, group, other };
Kind kind_of(uint32_t t) {
    if (t >= 1 && t <= 15) {
        return Kind::entity;
    }
    if (t >= 16 && t <= 31) {
        return Kind::portal;
    }
    if (t >= 32 && t <= 47) {
        return Kind::node;
    }
    if (t >= 48 && t <= 63) {
        return Kind::group;
    }
    return Kind::other;
}

Error context(const Error& e, std::string_view where) {
    return make_error(fmt::format("{}: {}", where, e.message), e.code ? e.code : EPROTO);
}

} // namespace

Message dev_attr_reg(const Registration& r, std::string_view source, bool replace) {
    Message m = request(Function::dev_attr_reg, source);
    if (replace) {
        m.flags |= flag::replace;
    }
    // Message Key: the entity (§5.6.5.1); without an identifier the server assigns one.
    if (!r.entity_id.empty()) {
        m.attributes.push_back(string_attribute(tag::entity_identifier, r.entity_id));
    }
    delimiter(m);
    if (!r.entity_id.empty()) {
        m.attributes.push_back(string_attribute(tag::entity_identifier, r.entity_id));
    }
    m.attributes.push_back(u32_attribute(tag::entity_protocol, entity_protocol_iscsi));
    for (const PortalEntry& p : r.portals) {
        m.attributes.push_back(address_attribute(tag::portal_ip_address, p.address));
        m.attributes.push_back(port_attribute(tag::portal_port, {p.port, false}));
        if (p.esi_port) {
            m.attributes.push_back(u32_attribute(tag::esi_interval, p.esi_interval));
            m.attributes.push_back(port_attribute(tag::esi_port, {*p.esi_port, false}));
        }
    }
    for (const NodeEntry& n : r.nodes) {
        m.attributes.push_back(string_attribute(tag::iscsi_name, n.name));
        m.attributes.push_back(u32_attribute(tag::iscsi_node_type, n.type));
        if (!n.alias.empty()) {
            m.attributes.push_back(string_attribute(tag::iscsi_alias, n.alias));
        }
    }
    for (const PortalGroupEntry& g : r.groups) {
        m.attributes.push_back(string_attribute(tag::pg_iscsi_name, g.node));
        m.attributes.push_back(address_attribute(tag::pg_portal_ip_address, g.address));
        m.attributes.push_back(port_attribute(tag::pg_portal_port, {g.port, false}));
        m.attributes.push_back(u32_attribute(tag::pg_tag, g.tag));
    }
    return m;
}

Message dev_dereg_entity(std::string_view source, std::string_view entity_id) {
    // §5.6.5.4: no Message Key; the Operating Attributes name what goes.
    Message m = request(Function::dev_dereg, source);
    delimiter(m);
    m.attributes.push_back(string_attribute(tag::entity_identifier, entity_id));
    return m;
}

Message entity_query(std::string_view source, std::string_view entity_id) {
    Message m = request(Function::dev_attr_qry, source);
    m.attributes.push_back(string_attribute(tag::entity_identifier, entity_id));
    delimiter(m);
    m.attributes.push_back(nil_attribute(tag::entity_identifier));
    m.attributes.push_back(nil_attribute(tag::registration_period));
    return m;
}

Message target_query(std::string_view source) {
    Message m = request(Function::dev_attr_qry, source);
    m.attributes.push_back(u32_attribute(tag::iscsi_node_type, node_type::target));
    delimiter(m);
    for (uint32_t t : {tag::entity_identifier, tag::iscsi_name, tag::iscsi_node_type, tag::iscsi_alias,
                       tag::portal_ip_address, tag::portal_port, tag::pg_iscsi_name,
                       tag::pg_portal_ip_address, tag::pg_portal_port, tag::pg_tag}) {
        m.attributes.push_back(nil_attribute(t));
    }
    return m;
}

Result<RegistrationAck> read_registration_response(const Message& r) {
    if (r.function != response_id(Function::dev_attr_reg)) {
        return make_error(fmt::format("expected DevAttrRegRsp, got {}", function_name(r.function)), EPROTO);
    }
    if (r.status != uint32_t(Status::success)) {
        return make_error(fmt::format("registration refused: {}", status_name(r.status)), EPROTO);
    }
    RegistrationAck ack;
    for (const Attribute& a : r.attributes) {
        if (a.tag == tag::entity_identifier && ack.entity_id.empty() && !a.nil()) {
            auto id = read_string(a);
            if (!id) {
                return id.error();
            }
            ack.entity_id = *id;
        } else if (a.tag == tag::registration_period && !a.nil()) {
            auto period = read_u32(a);
            if (!period) {
                return period.error();
            }
            ack.registration_period = *period;
        }
    }
    if (ack.entity_id.empty()) {
        return make_error("DevAttrRegRsp names no Entity Identifier", EPROTO);
    }
    return ack;
}

Result<QueryObjects> read_objects(std::span<const Attribute> attributes) {
    QueryObjects out;
    Kind current = Kind::other;
    std::set<uint32_t> seen; // tags of the current object
    for (const Attribute& a : attributes) {
        Kind k = kind_of(a.tag);
        if (k == Kind::other) {
            current = Kind::other; // DD and other objects are not ours to read; they end the current one
            continue;
        }
        if (k != current || seen.count(a.tag)) {
            current = k;
            seen.clear();
            size_t entity = out.entities.empty() ? SIZE_MAX : out.entities.size() - 1;
            switch (k) {
            case Kind::entity:
                out.entities.push_back({});
                break;
            case Kind::portal:
                out.portals.push_back({entity, {}, {}});
                break;
            case Kind::node:
                out.nodes.push_back({entity, {}, {}, {}});
                break;
            case Kind::group:
                out.groups.push_back({});
                break;
            case Kind::other:
                break;
            }
        }
        seen.insert(a.tag);
        if (a.nil()) {
            continue; // asked for, but the object has none
        }
        switch (a.tag) {
        case tag::entity_identifier: {
            auto v = read_string(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.entities.back().id = *v;
            break;
        }
        case tag::portal_ip_address: {
            auto v = read_address(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.portals.back().address = *v;
            break;
        }
        case tag::portal_port: {
            auto v = read_port(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.portals.back().port = *v;
            break;
        }
        case tag::iscsi_name:
        case tag::iscsi_alias: {
            auto v = read_string(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            (a.tag == tag::iscsi_name ? out.nodes.back().name : out.nodes.back().alias) = *v;
            break;
        }
        case tag::iscsi_node_type: {
            auto v = read_u32(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.nodes.back().type = *v;
            break;
        }
        case tag::pg_iscsi_name: {
            auto v = read_string(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.groups.back().node = *v;
            break;
        }
        case tag::pg_portal_ip_address: {
            auto v = read_address(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.groups.back().address = *v;
            break;
        }
        case tag::pg_portal_port: {
            auto v = read_port(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.groups.back().port = *v;
            break;
        }
        case tag::pg_tag: {
            auto v = read_u32(a);
            if (!v) {
                return context(v.error(), "query response");
            }
            out.groups.back().tag = *v;
            break;
        }
        default:
            break; // an attribute of a known object that we do not use
        }
    }
    return out;
}

std::string DiscoveredPortal::to_string() const {
    if (address.is_ipv4()) {
        return fmt::format("{}:{}", address.to_string(), port);
    }
    return fmt::format("[{}]:{}", address.to_string(), port);
}

std::vector<DiscoveredTarget> targets_of(const QueryObjects& objects) {
    std::vector<DiscoveredTarget> out;
    std::set<std::string> names;
    for (const QueryObjects::Node& node : objects.nodes) {
        if (node.name.empty() || (node.type && !(*node.type & node_type::target)) || names.count(node.name)) {
            continue;
        }
        names.insert(node.name);
        DiscoveredTarget t{node.name, node.alias, {}};
        std::set<std::pair<std::array<uint8_t, 16>, uint16_t>> seen;
        auto add = [&](const Address& address, uint16_t port, std::optional<uint32_t> tpgt) {
            if (seen.insert({address.bytes, port}).second) {
                t.portals.push_back({address, port, tpgt});
            }
        };
        bool has_groups = false;
        for (const QueryObjects::Group& g : objects.groups) {
            if (g.node != node.name) {
                continue;
            }
            has_groups = true;
            if (g.tag && g.address && g.port && !g.port->udp) {
                add(*g.address, g.port->number, g.tag);
            }
        }
        if (!has_groups && node.entity != SIZE_MAX) {
            for (const QueryObjects::Portal& p : objects.portals) {
                if (p.entity == node.entity && p.address && p.port && !p.port->udp) {
                    add(*p.address, p.port->number, std::nullopt);
                }
            }
        }
        out.push_back(std::move(t));
    }
    std::sort(out.begin(), out.end(),
              [](const DiscoveredTarget& a, const DiscoveredTarget& b) { return a.name < b.name; });
    return out;
}

std::optional<Message> answer_server_message(const Message& request, uint32_t status) {
    Message r;
    r.xid = request.xid;
    r.status = status;
    if (request.function == function_id(Function::esi)) {
        r.function = response_id(Function::esi);
        r.attributes = request.attributes;
        return r;
    }
    if (request.function == function_id(Function::scn)) {
        r.function = response_id(Function::scn);
        if (!request.attributes.empty()) {
            r.attributes.push_back(request.attributes.front());
        }
        return r;
    }
    return std::nullopt;
}

} // namespace ispace::isns
