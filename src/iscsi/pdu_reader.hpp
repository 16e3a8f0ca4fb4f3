// PduReader: the incremental, socket-free receive side of an iSCSI connection (target and initiator).
//
// A PDU on the wire is  BHS(48) · AHS(TotalAHSLength*4) · [HeaderDigest(4)] · Data(DSL) · Pad(0-3) ·
// [DataDigest(4)]  (RFC 7143 §11.1). The data digest is present only when DSL > 0 and covers the data
// and its padding; the header digest covers BHS and AHS.
//
// How a connection drives it:
//
//     PduReader reader(sink, limits);
//     uint8_t staging[16384];                          // owned by the connection, fixed size
//     for (;;) {
//         iovec direct = reader.direct_read();         // the rest of a data segment, in its destination
//         if (direct.iov_len >= 4096) {                // large remainder: read it without a copy
//             n = read(fd, direct.iov_base, direct.iov_len);
//             reader.direct_read_done(n);
//         } else {
//             n = read(fd, staging, sizeof staging);   // headers and small segments
//             reader.feed({staging, n});               // consumes everything; staging is free again
//         }
//     }
//
// (A connection may also readv() into {direct, staging} at once: pass min(n, direct.iov_len) to
// direct_read_done() and the rest of the staging bytes to feed().)
//
// What happens inside, all synchronously from feed()/direct_read_done():
//  1. The header (BHS, AHS, header digest) is gathered in a small fixed area inside the reader
//     (max_header_size bytes), then the header digest is verified.
//  2. Limits are checked before anything is allocated: AHS size and DataSegmentLength against
//     ReaderLimits. The limits in force for a PDU are those set when its first byte arrived, so a
//     sink may call set_limits() from pdu_received() (e.g. digests switch on after the final Login
//     Response) and the next PDU, even in the same feed(), is read with the new ones.
//  3. For a non-empty data segment the sink chooses its destination: data_destination() returns
//     `into(buffer, offset)` (e.g. a Data-Out lands in its task's buffer at its Buffer Offset),
//     `allocate()` (a fresh Buffer of exactly DSL bytes, bounded by the limit checked in step 2) or
//     `discard()` (the bytes are read and dropped, the digest is still checked). Staged bytes are
//     copied there; the rest can be read straight into it through direct_read().
//  4. Padding and data digest are read; the digest is computed over the data as it lands.
//  5. The sink gets pdu_received(ReceivedPdu&&), or read_error(ReadError) instead.
//
// Errors: header_digest is fatal — the framing can no longer be trusted (ERL 0: drop the connection);
// the reader stops and consumes nothing more. With ReaderLimits::skip_bad_headers (ERL 1) one bad header
// whose lengths are plausible is skipped instead (not fatal); two in a row are fatal. The others are per PDU:
// the reader skips the PDU's remaining bytes (without allocating) and carries on with the next PDU, and the
// connection decides the answer (a Reject with reason "data digest error" for a data digest error; for limit
// violations usually a Reject or dropping the connection). ReadError always carries the offending BHS.
//
// Re-entrancy: sink callbacks may call set_limits() and stop(); they must not call feed() or
// direct_read_done() nor destroy the reader.
#pragma once

#include "common/buffer.hpp"
#include "iscsi/pdu.hpp"

#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ispace::iscsi {

struct ReaderLimits {
    // Our declared MaxRecvDataSegmentLength (8192 until negotiated; login PDUs use 8192 as well).
    uint32_t max_data_segment_length = 8192;
    // Largest AHS area accepted, in bytes (at most max_ahs_size is possible on the wire).
    uint32_t max_ahs_length = max_ahs_size;
    bool header_digest = false;
    bool data_digest = false;
    // ErrorRecoveryLevel 1 and up: a header digest error skips the PDU by the length it claims, when
    // that length is within these limits, instead of ending the stream (see header_complete()).
    bool skip_bad_headers = false;
};

// Where a PDU's data segment goes; returned by PduSink::data_destination().
struct DataDestination {
    enum class Kind : uint8_t { allocate, buffer, discard };

    Kind kind = Kind::allocate;
    Buffer buffer;     // with Kind::buffer
    size_t offset = 0; // with Kind::buffer: where in `buffer` the segment starts

    // A fresh Buffer of exactly DataSegmentLength bytes.
    static DataDestination allocate() { return {}; }
    // Into `buffer` at `offset`; offset + DataSegmentLength must fit in buffer.size(), otherwise the
    // reader reports ReadErrorKind::bad_destination and discards the segment.
    static DataDestination into(Buffer buffer, size_t offset) {
        return DataDestination{Kind::buffer, std::move(buffer), offset};
    }
    // Read and drop the segment (digest still checked); pdu_received() still gets the header.
    static DataDestination discard() { return DataDestination{Kind::discard, {}, 0}; }
};

struct ReceivedPdu {
    Bhs bhs;
    std::vector<uint8_t> ahs; // TotalAHSLength*4 bytes, empty when there is none
    // The buffer holding the data segment: the fresh buffer (data_offset 0) for allocate(), the sink's
    // buffer for into(); empty for discard() and for an empty segment.
    Buffer data;
    size_t data_offset = 0;
    uint32_t data_length = 0; // DataSegmentLength, without padding
    bool discarded = false;   // the sink asked for the segment to be dropped

    std::span<const uint8_t> segment() const {
        if (discarded || !data) {
            return {};
        }
        return {data.data() + data_offset, data_length};
    }
};

enum class ReadErrorKind : uint8_t {
    header_digest,         // fatal
    data_digest,           // the PDU was read completely and dropped
    data_segment_too_long, // DSL above max_data_segment_length; the PDU is skipped
    ahs_too_long,          // AHS above max_ahs_length; the PDU is skipped
    bad_destination,       // the sink's buffer cannot hold the segment; the PDU is skipped
};

struct ReadError {
    ReadErrorKind kind = ReadErrorKind::header_digest;
    bool fatal = false; // the reader has stopped; drop the connection
    Bhs bhs;            // the offending PDU's header (possibly corrupt for header_digest)
    std::string message;
};

// Implemented by the connection.
class PduSink {
public:
    // Called once per PDU with a non-empty data segment, after the header digest and the limits
    // passed. `ahs` is valid for the call only.
    virtual DataDestination data_destination(const Bhs& bhs, std::span<const uint8_t> ahs, uint32_t length) {
        return DataDestination::allocate();
    }
    // `n` bytes of the current PDU's data segment were just put at `dest` (inside the destination that
    // data_destination() returned), before the PDU is complete: called in order, before pdu_received().
    virtual void data_landed(const uint8_t* dest, size_t n) {}
    virtual void pdu_received(ReceivedPdu&& pdu) = 0;
    virtual void read_error(const ReadError& error) = 0;

protected:
    ~PduSink() = default;
};

class PduReader {
public:
    explicit PduReader(PduSink& sink, ReaderLimits limits = {})
        : _sink(sink), _limits(limits), _active(limits) {}
    PduReader(const PduReader&) = delete;
    PduReader& operator=(const PduReader&) = delete;

    // Takes effect from the next PDU whose first byte has not yet arrived.
    void set_limits(const ReaderLimits& limits) { _limits = limits; }
    const ReaderLimits& limits() const { return _limits; }

    // Consumes bytes received from the socket. Returns how many were consumed: all of them, unless
    // the reader stopped (fatal error or stop()) part-way. The caller's buffer is not referenced after
    // the call returns.
    size_t feed(std::span<const uint8_t> bytes);

    // The part of the current data segment not yet received, in its destination: read socket bytes
    // straight into it, then call direct_read_done(). Empty (iov_len 0) when the reader expects
    // anything else (header, padding, digest, a discarded segment) or has stopped.
    iovec direct_read() const;
    // `n` bytes arrived at direct_read().iov_base. More than direct_read().iov_len is a caller bug
    // and is clamped.
    void direct_read_done(size_t n);

    // Stops consuming: feed() returns at once and consumes nothing more. Callable from callbacks.
    void stop() { _stopped = true; }
    bool stopped() const { return _stopped; }
    // True between PDUs: a connection closed now ended cleanly rather than in the middle of a PDU.
    bool idle() const { return _state == State::header && _header_have == 0; }

private:
    enum class State : uint8_t { header, data, padding, data_digest };

    size_t consume_header(const uint8_t* p, size_t n);
    size_t consume_data(const uint8_t* p, size_t n);
    size_t consume_padding(const uint8_t* p, size_t n);
    size_t consume_data_digest(const uint8_t* p, size_t n);
    void header_complete();
    void data_complete();
    void finish_pdu();
    void skip_pdu(ReadErrorKind kind, std::string message);
    void reset_for_next_pdu();
    Bhs current_bhs() const;

    PduSink& _sink;
    ReaderLimits _limits; // as last set
    ReaderLimits _active; // in force for the PDU being read
    State _state = State::header;
    bool _stopped = false;

    // Header gathering: BHS, then AHS and header digest once the BHS tells their size.
    std::array<uint8_t, max_header_size> _header{};
    size_t _header_have = 0;
    size_t _header_need = bhs_size;

    // Data segment.
    ReceivedPdu _pdu;
    uint8_t* _dest = nullptr; // start of the segment in its destination; null when discarding
    uint32_t _data_have = 0;
    bool _skipping = false; // a per-PDU error was reported: read the rest and deliver nothing
    uint32_t _bad_headers_in_a_row = 0;
    uint32_t _crc = 0;
    size_t _pad_need = 0;
    size_t _pad_have = 0;
    std::array<uint8_t, digest_size> _digest{};
    size_t _digest_have = 0;
};

} // namespace ispace::iscsi
