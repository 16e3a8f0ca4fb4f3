// What an iSCSI target and initiator say to an iSNS server, as messages (RFC 4171 §5.6.5), and what
// they read from its answers: a registration of a Network Entity with its Portals, Storage Nodes and
// Portal Groups; its deregistration; queries; and the answers to the server's own messages (ESI, SCN).
#pragma once

#include "common/result.hpp"
#include "isns/attribute.hpp"
#include "isns/message.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ispace::isns {

// §6.3: a portal, and (§6.3.4-6.3.5) where the server may send Entity Status Inquiries for it.
struct PortalEntry {
    Address address;
    uint16_t port = 0;
    std::optional<uint16_t> esi_port; // TCP
    uint32_t esi_interval = 0;        // seconds; with esi_port
    bool operator==(const PortalEntry&) const = default;
};

// §6.4: an iSCSI Storage Node.
struct NodeEntry {
    std::string name;
    uint32_t type = node_type::target;
    std::string alias;
    bool operator==(const NodeEntry&) const = default;
};

// §6.5: a Portal Group: `node` is reachable through the portal with this tag (PGT, the TPGT the
// target uses on that portal).
struct PortalGroupEntry {
    std::string node;
    Address address;
    uint16_t port = 0;
    uint32_t tag = 0;
    bool operator==(const PortalGroupEntry&) const = default;
};

// One Network Entity with everything in it.
struct Registration {
    std::string entity_id; // empty: the server assigns one (§6.2.1)
    std::vector<PortalEntry> portals;
    std::vector<NodeEntry> nodes;
    std::vector<PortalGroupEntry> groups;
    bool operator==(const Registration&) const = default;
};

// DevAttrReg (§5.6.5.1). With `replace`, the entity named by the key is replaced as a whole — objects
// not listed are removed — in one message, which is how a changed catalog is pushed. `source` is the
// iSCSI Name of a node of the entity (one in `registration`).
Message dev_attr_reg(const Registration& registration, std::string_view source, bool replace);
// DevDereg of a whole entity (§5.6.5.4): its portals, nodes and portal groups go with it.
Message dev_dereg_entity(std::string_view source, std::string_view entity_id);
// DevAttrQry for the entity's own identifier and registration period: a refresh of the registration
// (§6.2.6: any message from the client refreshes it) that also tells whether the server still has it.
Message entity_query(std::string_view source, std::string_view entity_id);
// DevAttrQry for every target node the source may see (its discovery domains decide, §5.6.5.2), with
// their portal groups and portals.
Message target_query(std::string_view source);

// What a DevAttrRegRsp says: the entity's identifier (assigned or not) and its registration period
// (0: none, the registration does not expire). Fails, naming the status, unless it is Successful.
struct RegistrationAck {
    std::string entity_id;
    uint32_t registration_period = 0;
};
Result<RegistrationAck> read_registration_response(const Message& response);

// The objects of a query response, in the order listed (§5.7.5.2: each object's attributes follow
// one another; an object starts where its kind changes or a tag repeats).
struct QueryObjects {
    struct Entity {
        std::string id;
    };
    struct Portal {
        size_t entity = SIZE_MAX; // index into entities, if an entity came first
        std::optional<Address> address;
        std::optional<Port> port;
    };
    struct Node {
        size_t entity = SIZE_MAX;
        std::string name;
        std::optional<uint32_t> type;
        std::string alias;
    };
    struct Group {
        std::string node;
        std::optional<Address> address;
        std::optional<Port> port;
        std::optional<uint32_t> tag; // nil: the portal gives no access to the node (§6.5.4)
    };
    std::vector<Entity> entities;
    std::vector<Portal> portals;
    std::vector<Node> nodes;
    std::vector<Group> groups;
};
// Sorts attributes into objects; a malformed value of a known tag is an error.
Result<QueryObjects> read_objects(std::span<const Attribute> attributes);

// A target as a query shows it: where an initiator may log in to it.
struct DiscoveredPortal {
    Address address;
    uint16_t port = 0;
    std::optional<uint32_t> tpgt;  // from its portal group, when the server lists one
    std::string to_string() const; // "192.0.2.1:3260" or "[2001:db8::1]:3260"
};
struct DiscoveredTarget {
    std::string name;
    std::string alias;
    std::vector<DiscoveredPortal> portals;
};
// Target nodes with their portals: those of their portal groups (tag not nil), or, where the server
// lists no portal group for a node, every portal of the node's entity (§3.4: no PG objects means every
// portal reaches every node of the entity). Sorted by name.
std::vector<DiscoveredTarget> targets_of(const QueryObjects& objects);

// The response to a message the server sends us (ESI, SCN): ESIRsp echoes the ESI's attributes
// (§5.7.5.13), SCNRsp the SCN's destination (§5.7.5.8). Null for any other function.
std::optional<Message> answer_server_message(const Message& request, uint32_t status);

} // namespace ispace::isns
