#include "mgmt/json_rpc.hpp"

#include <fmt/format.h>

#include <cerrno>

namespace ispace::mgmt {

using json = nlohmann::json;

RpcError rpc_error_from(const Error& error) {
    int code = rpc_error::failed;
    switch (error.code) {
    case ENOENT:
        code = rpc_error::not_found;
        break;
    case EEXIST:
    case EBUSY:
        code = rpc_error::conflict;
        break;
    case EINVAL:
    case ERANGE:
        code = rpc_error::invalid_params;
        break;
    default:
        break;
    }
    return {code, error.message};
}

Result<RpcRequest> parse_rpc_request(std::string_view line, RpcParseFailure* failure) {
    auto fail = [&](json id, int code, std::string message) -> Result<RpcRequest> {
        if (failure != nullptr) {
            failure->id = std::move(id);
            failure->error = {code, message};
        }
        return make_error(std::move(message), EINVAL);
    };
    if (line.size() > max_request_bytes) {
        return fail(nullptr, rpc_error::too_large,
                    fmt::format("the request is {} bytes; the control socket reads at most {} (split a "
                                "large configuration into several `apply` calls)",
                                line.size(), max_request_bytes));
    }
    // No exceptions: a syntax error is a discarded value. Nesting is bounded: no method takes input
    // deeper than a configuration document, and a deep value would cost stack in code that walks it.
    size_t depth = 0;
    size_t max_depth = 0;
    json root = json::parse(
        line.begin(), line.end(),
        [&](int, json::parse_event_t event, json&) {
            if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) {
                max_depth = std::max(max_depth, ++depth);
            } else if (event == json::parse_event_t::object_end || event == json::parse_event_t::array_end) {
                --depth;
            }
            return max_depth <= 64;
        },
        false);
    if (max_depth > 64) {
        return fail(nullptr, rpc_error::invalid_request,
                    "the request nests objects or arrays more than 64 deep; no method takes such input");
    }
    if (root.is_discarded()) {
        return fail(nullptr, rpc_error::parse_error,
                    "the request is not valid JSON; send one JSON-RPC 2.0 object per line, e.g. "
                    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}");
    }
    if (!root.is_object()) {
        return fail(nullptr, rpc_error::invalid_request,
                    "the request must be a JSON object (batches are not supported)");
    }
    json id = nullptr;
    bool notification = true;
    if (auto it = root.find("id"); it != root.end()) {
        if (!it->is_null() && !it->is_string() && !it->is_number_integer() && !it->is_number_unsigned()) {
            return fail(nullptr, rpc_error::invalid_request, "\"id\" must be a string, an integer or null");
        }
        id = *it;
        notification = false;
    }
    for (const auto& [key, value] : root.items()) {
        (void)value;
        if (key != "jsonrpc" && key != "id" && key != "method" && key != "params") {
            return fail(id, rpc_error::invalid_request,
                        fmt::format("unknown member \"{}\" (a request has jsonrpc, id, method and params)",
                                    key.substr(0, 64)));
        }
    }
    if (auto it = root.find("jsonrpc"); it == root.end() || !it->is_string() || *it != "2.0") {
        return fail(id, rpc_error::invalid_request, "\"jsonrpc\" must be \"2.0\"");
    }
    auto method = root.find("method");
    if (method == root.end() || !method->is_string() || method->get_ref<const std::string&>().empty()) {
        return fail(id, rpc_error::invalid_request, "\"method\" must be a non-empty string");
    }
    json params = json::object();
    if (auto it = root.find("params"); it != root.end()) {
        if (!it->is_object()) {
            return fail(id, rpc_error::invalid_params,
                        "\"params\" must be an object of named parameters (positional ones are not taken)");
        }
        params = std::move(*it);
    }
    RpcRequest request;
    request.id = std::move(id);
    request.notification = notification;
    request.method = method->get<std::string>();
    request.params = std::move(params);
    return request;
}

namespace {
std::string dump(const json& value) {
    // Replace: a string from the outside that is not UTF-8 must not make dump() throw.
    return value.dump(-1, ' ', false, json::error_handler_t::replace);
}
} // namespace

std::string rpc_result_line(const json& id, const json& result) {
    return dump(json{{"jsonrpc", "2.0"}, {"id", id}, {"result", result}}) + "\n";
}

std::string rpc_error_line(const json& id, const RpcError& error) {
    return dump(json{{"jsonrpc", "2.0"},
                     {"id", id},
                     {"error", {{"code", error.code}, {"message", error.message}}}}) +
           "\n";
}

std::optional<RpcError> Params::only(std::initializer_list<std::string_view> allowed) const {
    for (const auto& [key, value] : _params.items()) {
        (void)value;
        bool known = false;
        std::string names;
        for (std::string_view name : allowed) {
            known = known || key == name;
            names += names.empty() ? "" : ", ";
            names += name;
        }
        if (!known) {
            return RpcError{rpc_error::invalid_params,
                            fmt::format("unknown parameter \"{}\" (this method takes: {})", key.substr(0, 64),
                                        names.empty() ? "none" : names)};
        }
    }
    return std::nullopt;
}

bool Params::has(std::string_view key) const {
    return _params.contains(key);
}

const json& Params::raw(std::string_view key) const {
    return _params.at(std::string(key));
}

Result<std::string> Params::string(std::string_view key) const {
    auto it = _params.find(key);
    if (it == _params.end()) {
        return make_error(fmt::format("parameter \"{}\" is missing", key), EINVAL);
    }
    if (!it->is_string() || it->get_ref<const std::string&>().empty()) {
        return make_error(fmt::format("parameter \"{}\" must be a non-empty string", key), EINVAL);
    }
    return it->get<std::string>();
}

std::optional<std::string> Params::optional_string(std::string_view key,
                                                   std::optional<RpcError>& error) const {
    if (!has(key) || _params.at(std::string(key)).is_null()) {
        return std::nullopt;
    }
    auto value = string(key);
    if (!value) {
        error = RpcError{rpc_error::invalid_params, value.error().message};
        return std::nullopt;
    }
    return *value;
}

Result<uint64_t> Params::unsigned_integer(std::string_view key, uint64_t max) const {
    auto it = _params.find(key);
    if (it == _params.end()) {
        return make_error(fmt::format("parameter \"{}\" is missing", key), EINVAL);
    }
    if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
        return make_error(fmt::format("parameter \"{}\" must be a whole number from 0 to {}", key, max),
                          EINVAL);
    }
    uint64_t value = it->get<uint64_t>();
    if (value > max) {
        return make_error(fmt::format("parameter \"{}\" is {}; the most it may be is {}", key, value, max),
                          EINVAL);
    }
    return value;
}

std::optional<uint64_t> Params::optional_unsigned(std::string_view key, uint64_t max,
                                                  std::optional<RpcError>& error) const {
    if (!has(key) || _params.at(std::string(key)).is_null()) {
        return std::nullopt;
    }
    auto value = unsigned_integer(key, max);
    if (!value) {
        error = RpcError{rpc_error::invalid_params, value.error().message};
        return std::nullopt;
    }
    return *value;
}

bool Params::flag(std::string_view key, std::optional<RpcError>& error) const {
    auto it = _params.find(key);
    if (it == _params.end() || it->is_null()) {
        return false;
    }
    if (!it->is_boolean()) {
        error =
            RpcError{rpc_error::invalid_params, fmt::format("parameter \"{}\" must be true or false", key)};
        return false;
    }
    return it->get<bool>();
}

} // namespace ispace::mgmt
