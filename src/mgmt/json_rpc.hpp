// JSON-RPC 2.0 (jsonrpc.org/specification) as the control socket speaks it: one request per line, one
// response per line. This part only reads and writes the envelope, so that it can be fuzzed without a
// daemon: a request is checked for size, syntax and shape before any method sees it, and every failure
// becomes an error response (never an exception out of here, never a crash).
#pragma once

#include "common/result.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace ispace::mgmt {

// The largest request line the socket reads. Configuration documents (`apply`) are the largest
// requests; 1 MiB holds thousands of targets and keeps a hostile client from making the daemon buffer
// without bound.
inline constexpr size_t max_request_bytes = size_t(1) << 20;

// JSON-RPC error codes: the specification's, and ours (-32000..-32099 are for the application).
namespace rpc_error {
inline constexpr int parse_error = -32700;
inline constexpr int invalid_request = -32600;
inline constexpr int method_not_found = -32601;
inline constexpr int invalid_params = -32602;
inline constexpr int internal_error = -32603;
inline constexpr int failed = -32000;    // the method ran and could not do what was asked
inline constexpr int too_large = -32001; // the request exceeds max_request_bytes
inline constexpr int not_found = -32002; // an object the request names does not exist
inline constexpr int conflict = -32003;  // the object exists already / is in use
inline constexpr int not_saved = -32004; // applied to the running daemon, but not written to the file
} // namespace rpc_error

// A method's failure: the JSON-RPC code and a message that says what was wrong and what to do.
struct RpcError {
    int code = rpc_error::failed;
    std::string message;
};
// The code for an Error from the layers below, by its errno.
RpcError rpc_error_from(const Error& error);

struct RpcRequest {
    nlohmann::json id; // null for a notification (no response is wanted)
    bool notification = false;
    std::string method;
    nlohmann::json params; // always an object (an absent "params" is {})
};

// Reads one request line. On failure, the error response to send (with the request's id when it could
// be read).
struct RpcParseFailure {
    nlohmann::json id;
    RpcError error;
};
Result<RpcRequest> parse_rpc_request(std::string_view line, RpcParseFailure* failure);

std::string rpc_result_line(const nlohmann::json& id, const nlohmann::json& result);
std::string rpc_error_line(const nlohmann::json& id, const RpcError& error);

// Checking a method's parameters: each helper names the parameter and what it must be, so that every
// method rejects bad input with the same kind of message.
class Params {
public:
    explicit Params(const nlohmann::json& params) : _params(params) {}
    // Fails when `params` holds a key not in `allowed`.
    std::optional<RpcError> only(std::initializer_list<std::string_view> allowed) const;
    Result<std::string> string(std::string_view key) const;
    std::optional<std::string> optional_string(std::string_view key, std::optional<RpcError>& error) const;
    Result<uint64_t> unsigned_integer(std::string_view key, uint64_t max) const;
    std::optional<uint64_t> optional_unsigned(std::string_view key, uint64_t max,
                                              std::optional<RpcError>& error) const;
    bool flag(std::string_view key, std::optional<RpcError>& error) const;
    bool has(std::string_view key) const;
    const nlohmann::json& raw(std::string_view key) const;

private:
    const nlohmann::json& _params;
};

} // namespace ispace::mgmt
