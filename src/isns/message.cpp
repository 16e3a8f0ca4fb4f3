#include "isns/message.hpp"

#include "common/bytes.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <fmt/format.h>

namespace ispace::isns {

Result<PduHeader> decode_header(std::span<const uint8_t> bytes) {
    if (bytes.size() < header_size) {
        return make_error(fmt::format("iSNS PDU header: {} bytes, need {}", bytes.size(), header_size),
                          EPROTO);
    }
    PduHeader h;
    h.version = load_be16(bytes.data());
    h.function = load_be16(bytes.data() + 2);
    h.length = load_be16(bytes.data() + 4);
    h.flags = load_be16(bytes.data() + 6);
    h.xid = load_be16(bytes.data() + 8);
    h.sequence = load_be16(bytes.data() + 10);
    if (h.version != protocol_version) {
        return make_error(
            fmt::format("iSNS PDU: version {} (only version 1 is defined, RFC 4171 §5.1.1)", h.version),
            EPROTO);
    }
    if (h.flags & flag::auth) {
        return make_error(fmt::format("iSNS PDU ({}): an authentication block, which is not supported",
                                      function_name(h.function)),
                          EPROTO);
    }
    return h;
}

void encode_header(const PduHeader& h, uint8_t* out) {
    store_be16(out, h.version);
    store_be16(out + 2, h.function);
    store_be16(out + 4, h.length);
    store_be16(out + 6, h.flags);
    store_be16(out + 8, h.xid);
    store_be16(out + 10, h.sequence);
}

std::span<const Attribute> Message::before_delimiter() const {
    auto it = std::find_if(attributes.begin(), attributes.end(),
                           [](const Attribute& a) { return a.tag == tag::delimiter; });
    return {attributes.data(), size_t(it - attributes.begin())};
}

std::span<const Attribute> Message::after_delimiter() const {
    size_t before = before_delimiter().size();
    if (before == attributes.size()) {
        return {};
    }
    return std::span<const Attribute>(attributes).subspan(before + 1);
}

const Attribute* Message::find(uint32_t t) const {
    for (const Attribute& a : attributes) {
        if (a.tag == t) {
            return &a;
        }
    }
    return nullptr;
}

std::vector<uint8_t> encode(const Message& m, uint16_t sender, size_t pdu_payload) {
    assert(pdu_payload >= 4 && pdu_payload % 4 == 0 && pdu_payload <= max_pdu_payload);
    std::vector<uint8_t> payload;
    if (m.is_response()) {
        payload.resize(4);
        store_be32(payload.data(), m.status);
    }
    for (const Attribute& a : m.attributes) {
        size_t at = payload.size();
        payload.resize(at + 8 + a.value.size());
        store_be32(payload.data() + at, a.tag);
        store_be32(payload.data() + at + 4, uint32_t(a.value.size()));
        std::copy(a.value.begin(), a.value.end(), payload.begin() + ptrdiff_t(at + 8));
    }
    size_t pdus = std::max<size_t>(1, (payload.size() + pdu_payload - 1) / pdu_payload);
    std::vector<uint8_t> out;
    out.reserve(payload.size() + pdus * header_size);
    uint16_t base_flags =
        uint16_t((m.flags & ~(flag::client | flag::server | flag::first | flag::last)) | sender);
    for (size_t i = 0; i < pdus; ++i) {
        size_t begin = i * pdu_payload;
        size_t length = std::min(pdu_payload, payload.size() - std::min(begin, payload.size()));
        PduHeader h;
        h.function = m.function;
        h.length = uint16_t(length);
        h.flags = uint16_t(base_flags | (i == 0 ? flag::first : 0) | (i + 1 == pdus ? flag::last : 0));
        h.xid = m.xid;
        h.sequence = uint16_t(i);
        size_t at = out.size();
        out.resize(at + header_size);
        encode_header(h, out.data() + at);
        out.insert(out.end(), payload.begin() + ptrdiff_t(begin),
                   payload.begin() + ptrdiff_t(begin + length));
    }
    return out;
}

Result<std::vector<Attribute>> decode_attributes(std::span<const uint8_t> payload) {
    std::vector<Attribute> out;
    size_t at = 0;
    while (at < payload.size()) {
        if (payload.size() - at < 8) {
            return make_error(fmt::format("iSNS attribute at offset {}: {} bytes left, a header needs 8", at,
                                          payload.size() - at),
                              EPROTO);
        }
        uint32_t t = load_be32(payload.data() + at);
        uint32_t length = load_be32(payload.data() + at + 4);
        if (length % 4 != 0) {
            return make_error(fmt::format("iSNS attribute {} at offset {}: length {} is not a multiple of 4 "
                                          "(RFC 4171 §5.5)",
                                          tag_name(t), at, length),
                              EPROTO);
        }
        if (length > payload.size() - at - 8) {
            return make_error(fmt::format("iSNS attribute {} at offset {}: length {} runs past the message's "
                                          "end ({} bytes left)",
                                          tag_name(t), at, length, payload.size() - at - 8),
                              EPROTO);
        }
        if (t == tag::delimiter && length != 0) {
            return make_error(
                fmt::format("iSNS delimiter at offset {} has length {} (must be 0)", at, length), EPROTO);
        }
        const uint8_t* value = payload.data() + at + 8;
        out.push_back(Attribute{t, std::vector<uint8_t>(value, value + length)});
        at += 8 + length;
    }
    return out;
}

Result<Message> decode_message(uint16_t function, uint16_t flags, uint16_t xid,
                               std::span<const uint8_t> payload) {
    Message m;
    m.function = function;
    m.flags = flags;
    m.xid = xid;
    if (m.is_response()) {
        if (payload.size() < 4) {
            return make_error(fmt::format("iSNS {}: {} payload bytes, too short for the status word",
                                          function_name(function), payload.size()),
                              EPROTO);
        }
        m.status = load_be32(payload.data());
        payload = payload.subspan(4);
    }
    auto attributes = decode_attributes(payload);
    if (!attributes) {
        return make_error(fmt::format("iSNS {}: {}", function_name(function), attributes.error().message),
                          EPROTO);
    }
    m.attributes = std::move(*attributes);
    return m;
}

MessageReader::MessageReader(size_t max_message_bytes, size_t max_ready)
    : _max_message(max_message_bytes), _max_ready(max_ready) {}

Result<void> MessageReader::feed(std::span<const uint8_t> bytes) {
    if (_error) {
        return *_error;
    }
    while (!bytes.empty()) {
        // Fill the header first, then exactly the payload it announces: never more than one PDU staged.
        size_t want = _header ? header_size + _header->length - _staged.size() : header_size - _staged.size();
        size_t take = std::min(want, bytes.size());
        _staged.insert(_staged.end(), bytes.begin(), bytes.begin() + ptrdiff_t(take));
        bytes = bytes.subspan(take);
        if (!_header && _staged.size() == header_size) {
            auto h = decode_header(_staged);
            if (!h) {
                _error = h.error();
                return *_error;
            }
            _header = *h;
        }
        if (_header && _staged.size() == header_size + _header->length) {
            if (auto done = pdu_complete(); !done) {
                _error = done.error();
                return *_error;
            }
        }
    }
    return {};
}

Result<void> MessageReader::pdu_complete() {
    PduHeader h = *_header;
    _header.reset();
    std::span<const uint8_t> payload(_staged.data() + header_size, h.length);
    if (!_assembling) {
        // §5.1.6: the first PDU of a message has Sequence ID 0.
        if (h.sequence != 0) {
            return make_error(fmt::format("iSNS {} xid {}: a message starts at sequence {}, not 0",
                                          function_name(h.function), h.xid, h.sequence),
                              EPROTO);
        }
        _assembling = true;
        _first = h;
        _next_sequence = 0;
        _payload.clear();
    } else if (h.xid != _first.xid || h.function != _first.function) {
        // Why no interleaving: a server answers one request at a time on our connection, and an ESI
        // or SCN arrives on a connection of its own; accepting interleaved messages would only add
        // state a hostile peer could grow.
        return make_error(fmt::format("iSNS {} xid {} arrived inside {} xid {}, which is not complete",
                                      function_name(h.function), h.xid, function_name(_first.function),
                                      _first.xid),
                          EPROTO);
    } else if (h.sequence != _next_sequence) {
        return make_error(fmt::format("iSNS {} xid {}: PDU sequence {} where {} was due",
                                      function_name(h.function), h.xid, h.sequence, _next_sequence),
                          EPROTO);
    }
    if (_payload.size() + payload.size() > _max_message) {
        return make_error(fmt::format("iSNS {} xid {}: the message passes {} bytes, more than this client "
                                      "accepts",
                                      function_name(h.function), h.xid, _max_message),
                          EMSGSIZE);
    }
    _payload.insert(_payload.end(), payload.begin(), payload.end());
    _staged.clear();
    ++_next_sequence;
    if (!(h.flags & flag::last)) {
        if (_next_sequence == 0) { // 65536 PDUs: the sequence would wrap
            return make_error(
                fmt::format("iSNS {} xid {}: more than 65535 PDUs", function_name(h.function), h.xid),
                EMSGSIZE);
        }
        return {};
    }
    _assembling = false;
    if (_ready.size() >= _max_ready) {
        return make_error("iSNS: too many messages received and not read", ENOBUFS);
    }
    auto message = decode_message(_first.function, uint16_t(_first.flags | h.flags), _first.xid, _payload);
    _payload.clear();
    if (!message) {
        return message.error();
    }
    _ready.push_back(std::move(*message));
    return {};
}

std::optional<Message> MessageReader::next() {
    if (_ready.empty()) {
        return std::nullopt;
    }
    Message m = std::move(_ready.front());
    _ready.pop_front();
    return m;
}

} // namespace ispace::isns
