// Fuzzes the control socket's request reading (mgmt/json_rpc.hpp): the input is one request line as a
// client could send it. Checked beyond "no crash, no sanitizer report":
//  - a request is accepted only with "jsonrpc":"2.0", a non-empty string method, an object of params
//    and an id that is a string, an integer or null;
//  - a refused request yields an error with a JSON-RPC code and a message, and the error line is JSON
//    that parses back (whatever bytes the request held: a non-UTF-8 id or method cannot break it);
//  - every parameter helper a method uses (only, string, unsigned_integer, flag, optional_*) answers a
//    value or an error for any params, never throws.
#include "fuzz_check.hpp"
#include "mgmt/json_rpc.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

using namespace ispace;
using namespace ispace::mgmt;
using json = nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view line(reinterpret_cast<const char*>(data), size);
    RpcParseFailure failure;
    auto request = parse_rpc_request(line, &failure);
    if (!request) {
        FUZZ_CHECK(failure.error.code <= -32000 && !failure.error.message.empty());
        std::string out = rpc_error_line(failure.id, failure.error);
        FUZZ_CHECK(!out.empty() && out.back() == '\n');
        json back = json::parse(out, nullptr, false);
        FUZZ_CHECK(!back.is_discarded() && back.contains("error"));
        return 0;
    }
    FUZZ_CHECK(!request->method.empty());
    FUZZ_CHECK(request->params.is_object());
    FUZZ_CHECK(request->id.is_null() || request->id.is_string() || request->id.is_number_integer() ||
               request->id.is_number_unsigned());
    Params p(request->params);
    std::optional<RpcError> bad;
    (void)p.only({"iqn", "lun", "spec", "size", "shrink", "luns", "read_only"});
    (void)p.string("iqn");
    (void)p.string("spec");
    (void)p.unsigned_integer("lun", 16383);
    (void)p.optional_unsigned("session", 65535, bad);
    (void)p.optional_string("alias", bad);
    (void)p.flag("shrink", bad);
    std::string out = rpc_result_line(request->id, request->params);
    json back = json::parse(out, nullptr, false);
    FUZZ_CHECK(!back.is_discarded() && back.contains("result"));
    std::string error = rpc_error_line(request->id, {rpc_error::failed, request->method});
    FUZZ_CHECK(!json::parse(error, nullptr, false).is_discarded());
    return 0;
}
