#include "isns/discovery.hpp"

#include "common/log.hpp"

#include <cerrno>
#include <fmt/format.h>

namespace ispace::isns {
namespace {

bool refuses_unknown_source(uint32_t status) {
    return status == uint32_t(Status::source_unknown) || status == uint32_t(Status::source_absent) ||
           status == uint32_t(Status::source_unauthorized);
}

Result<std::vector<DiscoveredTarget>> read_targets(const Message& response) {
    // §5.7.5.2: the Message Key, a delimiter, then the objects; a server that sends no delimiter
    // sends objects only.
    bool delimited = response.before_delimiter().size() != response.attributes.size();
    auto objects = read_objects(delimited ? response.after_delimiter()
                                          : std::span<const Attribute>(response.attributes));
    if (!objects) {
        return objects.error();
    }
    return targets_of(*objects);
}

} // namespace

Result<DiscoveryResult> discover_targets(const ClientOptions& options, const std::string& initiator_name) {
    Client client(options);
    auto response = client.call(target_query(initiator_name));
    if (!response) {
        return response.error();
    }
    DiscoveryResult result;
    if (refuses_unknown_source(response->status)) {
        log_debug("iSNS server {} refused the query ({}): registering {} first", options.server,
                  status_name(response->status), initiator_name);
        Registration self;
        self.nodes.push_back({initiator_name, node_type::initiator, {}});
        auto registered = client.call(dev_attr_reg(self, initiator_name, false));
        if (!registered) {
            return registered.error();
        }
        auto ack = read_registration_response(*registered);
        if (!ack) {
            return make_error(fmt::format("iSNS server {}: registering {} for the query: {}", options.server,
                                          initiator_name, ack.error().message),
                              ack.error().code);
        }
        result.registered = true;
        response = client.call(target_query(initiator_name));
        // Deregistered whatever the query gave: the registration was only for it.
        auto gone = client.call(dev_dereg_entity(initiator_name, ack->entity_id));
        if (!gone || gone->status != uint32_t(Status::success)) {
            log_warn("iSNS server {}: deregistering {} after the query: {}", options.server, initiator_name,
                     gone ? status_name(gone->status) : gone.error().message);
        }
        if (!response) {
            return response.error();
        }
    }
    if (response->status == uint32_t(Status::no_such_entry)) {
        return result; // nothing this initiator may see
    }
    if (response->status != uint32_t(Status::success)) {
        return make_error(fmt::format("iSNS server {}: the query for targets was refused: {}", options.server,
                                      status_name(response->status)),
                          EPROTO);
    }
    auto targets = read_targets(*response);
    if (!targets) {
        return make_error(fmt::format("iSNS server {}: {}", options.server, targets.error().message), EPROTO);
    }
    result.targets = std::move(*targets);
    return result;
}

} // namespace ispace::isns
