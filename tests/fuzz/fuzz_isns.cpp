// Fuzzes the iSNSP reader (RFC 4171 §5) as a hostile iSNS server, or whatever answers on an ESI port,
// would drive it:
//  - MessageReader fed the input as a byte stream in input-derived pieces, under a small or large
//    message bound and a small or large ready queue, taken from at input-derived moments. An error
//    must be sticky; what is held must stay within the bounds;
//  - every message read goes through everything that reads messages: the attribute readers and
//    describe(), read_objects and targets_of (query answers), read_registration_response, and
//    answer_server_message, whose answer must encode and read back;
//  - every message read must re-encode, in PDUs of an input-derived size, to a stream that reads back
//    to the same message (a fixed point);
//  - decode_header and decode_attributes on the raw input too.
//
// Input: [config][chunking seed][stream...]
//   config bits 0-1: message bound (64 B, 1 KiB, 64 KiB, 1 MiB); 2-3: ready queue (1-4);
//   bit 4: take messages only at the end (fills the queue); bits 5-7: PDU payload size for re-encoding.
#include "fuzz_check.hpp"
#include "isns/attribute.hpp"
#include "isns/message.hpp"
#include "isns/objects.hpp"
#include "isns/protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

using namespace ispace;
using namespace ispace::isns;

namespace {

void read_attributes(std::span<const Attribute> attributes) {
    for (const Attribute& a : attributes) {
        FUZZ_CHECK(a.value.size() % 4 == 0);
        (void)describe(a);
        (void)tag_name(a.tag);
        (void)read_string(a);
        (void)read_u32(a);
        (void)read_u64(a);
        if (auto address = read_address(a)) {
            (void)address->to_string();
            (void)address->to_endpoint(3260);
            (void)address->is_ipv4();
        }
        if (auto port = read_port(a)) {
            (void)port->number;
        }
    }
}

// The message, encoded again and read back, must be the same message.
void check_fixed_point(const Message& m, size_t pdu_payload) {
    size_t payload = 4;
    for (const Attribute& a : m.attributes) {
        payload += 8 + a.value.size();
    }
    if (payload / pdu_payload > 60000) {
        pdu_payload = default_pdu_payload; // Sequence IDs are 16 bits: keep to fewer PDUs than that
    }
    uint16_t sender = (m.flags & flag::server) ? flag::server : flag::client;
    std::vector<uint8_t> bytes = encode(m, sender, pdu_payload);
    MessageReader again(bytes.size() + 16, 1);
    auto fed = again.feed(bytes);
    FUZZ_CHECK(fed.ok());
    auto back = again.next();
    FUZZ_CHECK(back.has_value());
    FUZZ_CHECK(back->function == m.function);
    FUZZ_CHECK(back->xid == m.xid);
    FUZZ_CHECK(back->attributes == m.attributes);
    FUZZ_CHECK(!m.is_response() || back->status == m.status);
    FUZZ_CHECK((back->flags & flag::replace) == (m.flags & flag::replace));
    FUZZ_CHECK(!again.next().has_value() && again.idle());
}

void use_message(const Message& m, size_t pdu_payload) {
    (void)function_name(m.function);
    (void)status_name(m.status);
    read_attributes(m.attributes);
    FUZZ_CHECK(m.before_delimiter().size() + m.after_delimiter().size() <= m.attributes.size());
    if (auto objects = read_objects(m.attributes)) {
        for (const DiscoveredTarget& t : targets_of(*objects)) {
            for (const DiscoveredPortal& p : t.portals) {
                (void)p.to_string();
            }
        }
    }
    if (auto ack = read_registration_response(m)) {
        (void)ack->entity_id;
    }
    if (auto answer = answer_server_message(m, uint32_t(Status::success))) {
        FUZZ_CHECK(answer->is_response());
        auto bytes = encode(*answer, flag::client);
        MessageReader reader(bytes.size() + 16, 1);
        FUZZ_CHECK(reader.feed(bytes).ok());
        FUZZ_CHECK(reader.next().has_value());
    }
    check_fixed_point(m, pdu_payload);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    const uint8_t config = data[0];
    uint32_t chunking = data[1] | 1u;
    std::span<const uint8_t> stream(data + 2, size - 2);

    static constexpr size_t bounds[] = {64, 1024, 64 * 1024, 1024 * 1024};
    const size_t max_message = bounds[config & 3];
    const size_t max_ready = 1 + ((config >> 2) & 3);
    const bool take_at_end = (config >> 4) & 1;
    const size_t pdu_payload = size_t(4) << ((config >> 5) & 7); // 4 B .. 512 B: many PDUs per message

    (void)decode_header(stream);
    (void)decode_attributes(stream);

    MessageReader reader(max_message, max_ready);
    size_t taken = 0;
    bool failed = false;
    size_t offset = 0;
    while (offset < stream.size()) {
        chunking = chunking * 1103515245u + 12345u;
        size_t piece = std::min<size_t>(stream.size() - offset, 1 + (chunking >> 16) % 97);
        auto fed = reader.feed(stream.subspan(offset, piece));
        offset += piece;
        if (!fed) {
            FUZZ_CHECK(reader.failed().has_value());
            failed = true;
            break;
        }
        if (!take_at_end) {
            while (auto m = reader.next()) {
                ++taken;
                use_message(*m, pdu_payload);
            }
        }
    }
    if (failed) {
        // Sticky: nothing more is accepted once the stream went wrong.
        const uint8_t more[16] = {};
        FUZZ_CHECK(!reader.feed(more).ok());
    }
    size_t queued = 0;
    while (auto m = reader.next()) {
        ++queued;
        ++taken;
        use_message(*m, pdu_payload);
    }
    FUZZ_CHECK(!take_at_end || queued <= max_ready);
    (void)taken;
    return 0;
}
