// iSNSP messages (RFC 4171 §5): encoding a message into PDUs, and reading PDUs from a byte stream back
// into messages. Pure code: no sockets, no clocks, so the fuzzer drives all of it.
//
// A message is one or more PDUs with the same Function ID and Transaction ID, Sequence IDs counting
// from 0, the first flagged FIRST and the last LAST (§5.1.4-5.1.6). Its payload — for a response, a
// status word first — is a list of attributes (§5.5). Requests from a client carry the Source
// attribute, the Message Key attributes, a delimiter (tag 0, length 0), then the Operating
// Attributes (§5.6.1); messages from the server (ESI, SCN) and responses carry no source.
#pragma once

#include "common/result.hpp"
#include "isns/attribute.hpp"
#include "isns/protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

namespace ispace::isns {

struct PduHeader {
    uint16_t version = protocol_version;
    uint16_t function = 0;
    uint16_t length = 0; // payload bytes after the header
    uint16_t flags = 0;
    uint16_t xid = 0;
    uint16_t sequence = 0;
};

// Reads the 12-byte header. Fails for a version other than 1 (§5.1.1: "Version Not Supported") and for
// a PDU with an authentication block, which this implementation neither sends nor checks (§5.5.3:
// its length cannot be trusted to resynchronise a stream we cannot verify).
Result<PduHeader> decode_header(std::span<const uint8_t> bytes);
void encode_header(const PduHeader& header, uint8_t* out);

struct Message {
    uint16_t function = 0; // a request's Function ID, or a response's (with response_bit)
    uint16_t flags = 0;    // flag::replace for DevAttrReg; sender and FIRST/LAST are set by encode()
    uint16_t xid = 0;
    uint32_t status = 0;               // responses only: the word before the attributes
    std::vector<Attribute> attributes; // in wire order; a delimiter is an attribute of tag 0

    bool is_response() const { return (function & response_bit) != 0; }
    // The attributes before the first delimiter (all of them when there is none), and those after it.
    std::span<const Attribute> before_delimiter() const;
    std::span<const Attribute> after_delimiter() const;
    // The first attribute with `tag` in `attributes`, or null.
    const Attribute* find(uint32_t tag) const;
};

// The PDU payload size encode() uses unless told: small enough for every server we know of
// (open-isns reads messages of up to 8 KiB) and a multiple of 4, so no attribute header is split.
constexpr size_t default_pdu_payload = 8192;

// The message as PDUs, back to back, ready to send. `sender` is flag::client or flag::server.
// `pdu_payload` (a multiple of 4, at most 65532) bounds each PDU's payload.
std::vector<uint8_t> encode(const Message& message, uint16_t sender,
                            size_t pdu_payload = default_pdu_payload);

// The attributes of a payload (§5.5): each header complete, each length a multiple of 4 and within
// the payload. Errors name the offset.
Result<std::vector<Attribute>> decode_attributes(std::span<const uint8_t> payload);
// A whole message's payload (the PDUs' payloads joined) into a Message.
Result<Message> decode_message(uint16_t function, uint16_t flags, uint16_t xid,
                               std::span<const uint8_t> payload);

// Frames PDUs from a byte stream and joins them into messages. Everything it holds is bounded: one
// PDU's header and payload (at most 12 + 65535 bytes), one message being assembled (at most
// `max_message_bytes`), and at most `max_ready` complete messages not yet taken. An error is sticky:
// after one, the stream cannot be trusted and the connection should be closed.
class MessageReader {
public:
    explicit MessageReader(size_t max_message_bytes = 256 * 1024, size_t max_ready = 16);

    // Consumes all of `bytes`. Fails on a malformed PDU, a message out of sequence, or a bound passed.
    Result<void> feed(std::span<const uint8_t> bytes);
    // The next complete message, if one is ready.
    std::optional<Message> next();
    // Bytes of a PDU or message received but not yet complete (0 between messages).
    bool idle() const { return _staged.empty() && !_assembling; }
    const std::optional<Error>& failed() const { return _error; }

private:
    Result<void> pdu_complete();

    size_t _max_message;
    size_t _max_ready;
    std::vector<uint8_t> _staged; // the current PDU: header, then payload
    std::optional<PduHeader> _header;
    bool _assembling = false;
    PduHeader _first; // the message's first PDU
    uint16_t _next_sequence = 0;
    std::vector<uint8_t> _payload; // the message's payload so far
    std::deque<Message> _ready;
    std::optional<Error> _error;
};

} // namespace ispace::isns
