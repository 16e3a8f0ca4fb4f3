// Fuzzes what a connection does with bytes from the network before any state machine sees them:
//  1. the first 48 bytes as a BHS of every PDU type (decode, encode of what decoded, decode again:
//     the second encoding must equal the first), describe(), and the following bytes as an AHS area;
//  2. the whole input as a byte stream through PduReader, with digests on or off, small limits, the
//     stream cut into chunks at input-derived boundaries, through feed() and the direct_read() path,
//     data landing in fresh buffers, in a sink's buffer at an offset (canaries around it are checked),
//     or discarded, and limits switched from inside the callbacks as a connection does after login.
//
// Input: [config][chunk seed][stream...]. The BHS part reads the stream bytes.
#include "fuzz_check.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi/pdu_reader.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

// decode -> encode -> decode -> encode must reach a fixed point after the first encode.
template <typename T> void round_trip(const Bhs& bhs) {
    auto decoded = T::decode(bhs);
    if (!decoded.ok()) {
        FUZZ_CHECK(!decoded.error().message.empty());
        return;
    }
    Bhs once;
    decoded->encode(once);
    auto again = T::decode(once);
    FUZZ_CHECK(again.ok());
    Bhs twice;
    again->encode(twice);
    FUZZ_CHECK(once == twice);
    (void)describe(once);
}

void decode_every_type(const uint8_t* p) {
    static constexpr Opcode opcodes[] = {
        Opcode::nop_out,       Opcode::scsi_command,  Opcode::task_mgmt_request,  Opcode::login_request,
        Opcode::text_request,  Opcode::data_out,      Opcode::logout_request,     Opcode::snack_request,
        Opcode::nop_in,        Opcode::scsi_response, Opcode::task_mgmt_response, Opcode::login_response,
        Opcode::text_response, Opcode::data_in,       Opcode::logout_response,    Opcode::r2t,
        Opcode::async_message, Opcode::reject,
    };
    Bhs raw;
    std::memcpy(raw.bytes.data(), p, bhs_size);
    (void)describe(raw);
    (void)opcode_name(raw.raw_opcode());
    for (Opcode op : opcodes) {
        Bhs bhs = raw;
        bhs.bytes[0] = uint8_t((raw.bytes[0] & 0xc0) | uint8_t(op));
        (void)describe(bhs);
        switch (op) {
        case Opcode::nop_out:
            round_trip<NopOut>(bhs);
            break;
        case Opcode::scsi_command:
            round_trip<ScsiCommand>(bhs);
            break;
        case Opcode::task_mgmt_request:
            round_trip<TaskMgmtRequest>(bhs);
            break;
        case Opcode::login_request:
            round_trip<LoginRequest>(bhs);
            break;
        case Opcode::text_request:
            round_trip<TextRequest>(bhs);
            break;
        case Opcode::data_out:
            round_trip<DataOut>(bhs);
            break;
        case Opcode::logout_request:
            round_trip<LogoutRequest>(bhs);
            break;
        case Opcode::snack_request:
            round_trip<SnackRequest>(bhs);
            break;
        case Opcode::nop_in:
            round_trip<NopIn>(bhs);
            break;
        case Opcode::scsi_response:
            round_trip<ScsiResponse>(bhs);
            break;
        case Opcode::task_mgmt_response:
            round_trip<TaskMgmtResponse>(bhs);
            break;
        case Opcode::login_response:
            round_trip<LoginResponse>(bhs);
            break;
        case Opcode::text_response:
            round_trip<TextResponse>(bhs);
            break;
        case Opcode::data_in:
            round_trip<DataIn>(bhs);
            break;
        case Opcode::logout_response:
            round_trip<LogoutResponse>(bhs);
            break;
        case Opcode::r2t:
            round_trip<R2t>(bhs);
            break;
        case Opcode::async_message:
            round_trip<AsyncMessage>(bhs);
            break;
        case Opcode::reject:
            round_trip<Reject>(bhs);
            break;
        default:
            break;
        }
    }
}

void check_ahs(std::span<const uint8_t> ahs) {
    auto parsed = parse_ahs(ahs);
    if (!parsed.ok()) {
        return;
    }
    FUZZ_CHECK(parsed->extended_cdb_length <= parsed->extended_cdb.size());
    // What parsed must encode back to an AHS that parses to the same thing.
    std::vector<uint8_t> again;
    if (parsed->extended_cdb_length > 0) {
        FUZZ_CHECK(
            append_extended_cdb_ahs(again, {parsed->extended_cdb.data(), parsed->extended_cdb_length}));
    }
    if (parsed->has_bidi_read_length) {
        append_bidi_read_length_ahs(again, parsed->bidi_read_expected_data_transfer_length);
    }
    auto reparsed = parse_ahs(again);
    FUZZ_CHECK(reparsed.ok());
    FUZZ_CHECK(reparsed->extended_cdb_length == parsed->extended_cdb_length);
    FUZZ_CHECK(std::memcmp(reparsed->extended_cdb.data(), parsed->extended_cdb.data(),
                           parsed->extended_cdb_length) == 0);
    FUZZ_CHECK(reparsed->has_bidi_read_length == parsed->has_bidi_read_length);
    FUZZ_CHECK(reparsed->bidi_read_expected_data_transfer_length ==
               parsed->bidi_read_expected_data_transfer_length);
}

constexpr uint8_t canary = 0xa5;

class Sink : public PduSink {
public:
    Sink(PduReader& reader, uint8_t config) : _reader(reader), _config(config) {}

    DataDestination data_destination(const Bhs& bhs, std::span<const uint8_t> ahs, uint32_t length) override {
        FUZZ_CHECK(length > 0 && length == bhs.data_segment_length());
        FUZZ_CHECK(length <= _reader.limits().max_data_segment_length || _limits_changed);
        FUZZ_CHECK(ahs.size() == bhs.ahs_bytes());
        uint32_t choice = bhs.itt();
        switch (choice & 3) {
        case 0:
            return DataDestination::allocate();
        case 1:
            return DataDestination::discard();
        default: {
            // Into a canary-filled buffer at an offset; sometimes one too small (bad_destination).
            size_t offset = (choice >> 8) & 0x3ff;
            size_t size = offset + length + ((choice >> 20) & 0x3f);
            if ((choice & 3) == 3 && (choice & 0x80) != 0) {
                size = (choice >> 4) & 0xfff; // whatever it is; the reader must check it
            }
            Buffer buffer = Buffer::allocate(size);
            std::memset(buffer.data(), canary, size);
            _expect_offset = offset;
            _expect_size = size;
            return DataDestination::into(std::move(buffer), offset);
        }
        }
    }

    void pdu_received(ReceivedPdu&& pdu) override {
        ++_pdus;
        FUZZ_CHECK(pdu.data_length == pdu.bhs.data_segment_length());
        FUZZ_CHECK(pdu.ahs.size() == pdu.bhs.ahs_bytes());
        check_ahs(pdu.ahs);
        (void)describe(pdu.bhs);
        if (pdu.discarded || pdu.data_length == 0) {
            FUZZ_CHECK(pdu.segment().empty());
        } else {
            FUZZ_CHECK(pdu.data);
            FUZZ_CHECK(pdu.segment().size() == pdu.data_length);
            FUZZ_CHECK(pdu.data_offset + pdu.data_length <= pdu.data.size());
            if (pdu.data_offset != 0 || pdu.data.size() != pdu.data_length) {
                // A sink buffer: nothing outside the segment may have been touched.
                FUZZ_CHECK(pdu.data_offset == _expect_offset && pdu.data.size() == _expect_size);
                const uint8_t* d = pdu.data.data();
                for (size_t i = 0; i < pdu.data_offset; ++i) {
                    FUZZ_CHECK(d[i] == canary);
                }
                for (size_t i = pdu.data_offset + pdu.data_length; i < pdu.data.size(); ++i) {
                    FUZZ_CHECK(d[i] == canary);
                }
            }
        }
        if (_config & 0x20) {
            // As after the final Login Response: digests switch for the next PDU.
            ReaderLimits l = _reader.limits();
            l.header_digest = !l.header_digest;
            l.data_digest = (_pdus & 1) != 0;
            l.max_data_segment_length = 1u << (9 + (_pdus % 10));
            _reader.set_limits(l);
            _limits_changed = true;
        }
        if ((_config & 0x40) && _pdus >= 3) {
            _reader.stop();
        }
    }

    void read_error(const ReadError& error) override {
        ++_errors;
        FUZZ_CHECK(!error.message.empty());
        FUZZ_CHECK(error.fatal == (error.kind == ReadErrorKind::header_digest));
        if (error.fatal) {
            FUZZ_CHECK(_reader.stopped());
        }
    }

    size_t pdus() const { return _pdus; }

private:
    PduReader& _reader;
    uint8_t _config;
    bool _limits_changed = false;
    size_t _expect_offset = 0;
    size_t _expect_size = 0;
    size_t _pdus = 0;
    size_t _errors = 0;
};

uint32_t next_random(uint32_t& state) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

void read_stream(uint8_t config, uint8_t chunk_seed, const uint8_t* data, size_t size) {
    static constexpr uint32_t segment_limits[] = {8192, 0, 512, 262144};
    ReaderLimits limits;
    limits.header_digest = (config & 0x01) != 0;
    limits.data_digest = (config & 0x02) != 0;
    limits.max_data_segment_length = segment_limits[(config >> 2) & 3];
    limits.max_ahs_length = (config & 0x80) ? 16 : max_ahs_size;
    bool direct = (config & 0x10) != 0;

    // The sink needs the reader (for set_limits/stop from callbacks) and the reader the sink; the sink
    // only stores the reference, so declaring it first is safe.
    class Pair {
    public:
        Pair(ReaderLimits l, uint8_t c) : sink(reader, c), reader(sink, l) {}
        Sink sink;
        PduReader reader;
    };
    Pair pair(limits, config);
    PduReader& reader = pair.reader;

    uint32_t rng = 0x9e3779b9u ^ (uint32_t(chunk_seed) * 0x01000193u);
    size_t max_chunk = size_t(1) << (chunk_seed & 15); // 1 byte .. 32 KiB
    size_t pos = 0;
    while (pos < size && !reader.stopped()) {
        size_t chunk = 1 + next_random(rng) % max_chunk;
        chunk = std::min(chunk, size - pos);
        iovec iov = reader.direct_read();
        if (direct && iov.iov_len > 0) {
            size_t n = std::min(chunk, iov.iov_len);
            std::memcpy(iov.iov_base, data + pos, n);
            reader.direct_read_done(n);
            pos += n;
            continue;
        }
        size_t consumed = reader.feed({data + pos, chunk});
        FUZZ_CHECK(consumed <= chunk);
        FUZZ_CHECK(consumed == chunk || reader.stopped());
        pos += consumed;
        if (consumed < chunk) {
            break;
        }
    }
    // Once stopped, nothing more is consumed.
    if (reader.stopped() && size > 0) {
        FUZZ_CHECK(reader.feed({data, size}) == 0);
        FUZZ_CHECK(reader.direct_read().iov_len == 0);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    uint8_t config = data[0];
    uint8_t chunk_seed = data[1];
    const uint8_t* stream = data + 2;
    size_t stream_size = size - 2;
    if (stream_size >= bhs_size) {
        decode_every_type(stream);
        size_t ahs = std::min(stream_size - bhs_size, max_ahs_size);
        check_ahs({stream + bhs_size, ahs & ~size_t(3)});
        check_ahs({stream + bhs_size, ahs}); // not a multiple of 4: must be refused, not misread
    }
    read_stream(config, chunk_seed, stream, stream_size);
    return 0;
}
