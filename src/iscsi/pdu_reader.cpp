#include "iscsi/pdu_reader.hpp"

#include "iscsi/crc32c.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace ispace::iscsi {

size_t PduReader::feed(std::span<const uint8_t> bytes) {
    size_t pos = 0;
    while (pos < bytes.size() && !_stopped) {
        const uint8_t* p = bytes.data() + pos;
        size_t n = bytes.size() - pos;
        switch (_state) {
        case State::header:
            pos += consume_header(p, n);
            break;
        case State::data:
            pos += consume_data(p, n);
            break;
        case State::padding:
            pos += consume_padding(p, n);
            break;
        case State::data_digest:
            pos += consume_data_digest(p, n);
            break;
        }
    }
    return pos;
}

iovec PduReader::direct_read() const {
    if (_stopped || _state != State::data || _dest == nullptr) {
        return iovec{nullptr, 0};
    }
    return iovec{_dest + _data_have, size_t(_pdu.data_length - _data_have)};
}

void PduReader::direct_read_done(size_t n) {
    if (_stopped || _state != State::data || _dest == nullptr || n == 0) {
        return;
    }
    n = std::min<size_t>(n, _pdu.data_length - _data_have);
    if (_active.data_digest) {
        _crc = crc32c(_dest + _data_have, n, _crc);
    }
    _sink.data_landed(_dest + _data_have, n);
    _data_have += uint32_t(n);
    if (_data_have == _pdu.data_length) {
        data_complete();
    }
}

Bhs PduReader::current_bhs() const {
    Bhs bhs;
    std::memcpy(bhs.bytes.data(), _header.data(), bhs_size);
    return bhs;
}

size_t PduReader::consume_header(const uint8_t* p, size_t n) {
    if (_header_have == 0) {
        // A new PDU starts: the limits set so far apply to all of it.
        _active = _limits;
    }
    size_t take = std::min(n, _header_need - _header_have);
    std::memcpy(_header.data() + _header_have, p, take);
    _header_have += take;
    if (_header_have == bhs_size && _header_need == bhs_size) {
        // The BHS tells how much header follows. At most 1020 AHS bytes + 4: always fits in _header.
        _header_need = bhs_size + size_t(_header[4]) * 4 + (_active.header_digest ? digest_size : 0);
    }
    if (_header_have == _header_need) {
        header_complete();
    }
    return take;
}

void PduReader::header_complete() {
    const Bhs bhs = current_bhs();
    const size_t ahs_len = bhs.ahs_bytes();
    const uint32_t dsl = bhs.data_segment_length();

    if (_active.header_digest) {
        uint32_t computed = crc32c(_header.data(), bhs_size + ahs_len);
        uint32_t received = load_digest(_header.data() + bhs_size + ahs_len);
        if (computed != received) {
            std::string message =
                fmt::format("header digest error (received 0x{:08x}, computed 0x{:08x}): {}", received,
                            computed, describe(bhs));
            // Nothing in this header can be trusted, lengths included. With skip_bad_headers (ERL 1) the
            // PDU is skipped by the length it claims when that length is possible, and the sequence
            // numbers find what was lost (RFC 7143 §7.8). A wrong length lands the reader in the middle
            // of a PDU, whose "header" then fails its digest too: a second bad header in a row ends
            // the stream, as does a claimed length beyond the limits.
            bool plausible = dsl <= _active.max_data_segment_length && ahs_len <= _active.max_ahs_length;
            if (!_active.skip_bad_headers || !plausible || _bad_headers_in_a_row > 0) {
                _stopped = true;
                _sink.read_error(ReadError{ReadErrorKind::header_digest, true, bhs, std::move(message)});
                return;
            }
            ++_bad_headers_in_a_row;
            _pdu = ReceivedPdu{};
            _pdu.bhs = bhs;
            _pdu.data_length = dsl;
            _data_have = 0;
            _crc = 0;
            _pad_need = padding_length(dsl);
            _pad_have = 0;
            _digest_have = 0;
            skip_pdu(ReadErrorKind::header_digest, std::move(message));
            return;
        }
    }
    _bad_headers_in_a_row = 0;

    _pdu = ReceivedPdu{};
    _pdu.bhs = bhs;
    _pdu.data_length = dsl;
    _dest = nullptr;
    _data_have = 0;
    _skipping = false;
    _crc = 0;
    _pad_need = padding_length(dsl);
    _pad_have = 0;
    _digest_have = 0;

    // Limits before any allocation.
    if (ahs_len > _active.max_ahs_length) {
        skip_pdu(ReadErrorKind::ahs_too_long, fmt::format("AHS of {} bytes exceeds the limit of {}: {}",
                                                          ahs_len, _active.max_ahs_length, describe(bhs)));
        return;
    }
    if (dsl > _active.max_data_segment_length) {
        skip_pdu(ReadErrorKind::data_segment_too_long,
                 fmt::format("data segment of {} bytes exceeds MaxRecvDataSegmentLength {}: {}", dsl,
                             _active.max_data_segment_length, describe(bhs)));
        return;
    }
    if (ahs_len > 0) {
        _pdu.ahs.assign(_header.begin() + bhs_size, _header.begin() + bhs_size + ahs_len);
    }
    if (dsl == 0) {
        finish_pdu();
        return;
    }

    DataDestination dest =
        _sink.data_destination(bhs, std::span<const uint8_t>(_header.data() + bhs_size, ahs_len), dsl);
    switch (dest.kind) {
    case DataDestination::Kind::allocate:
        _pdu.data = Buffer::allocate(dsl);
        _pdu.data_offset = 0;
        _dest = _pdu.data.data();
        break;
    case DataDestination::Kind::buffer:
        if (!dest.buffer || dest.offset > dest.buffer.size() || dest.buffer.size() - dest.offset < dsl) {
            skip_pdu(
                ReadErrorKind::bad_destination,
                fmt::format("destination of {} bytes at offset {} cannot hold a {}-byte data segment: {}",
                            dest.buffer.size(), dest.offset, dsl, describe(bhs)));
            return;
        }
        _pdu.data = std::move(dest.buffer);
        _pdu.data_offset = dest.offset;
        _dest = _pdu.data.data() + dest.offset;
        break;
    case DataDestination::Kind::discard:
        _pdu.discarded = true;
        break;
    }
    _state = State::data;
}

void PduReader::skip_pdu(ReadErrorKind kind, std::string message) {
    const uint32_t dsl = _pdu.data_length;
    const Bhs bhs = _pdu.bhs;
    // Set up skipping before the callback, so a sink that stops the reader finds it consistent.
    _skipping = true;
    _dest = nullptr;
    _pdu.data.reset();
    if (dsl == 0) {
        reset_for_next_pdu();
    } else {
        _state = State::data;
    }
    _sink.read_error(ReadError{kind, false, bhs, std::move(message)});
}

size_t PduReader::consume_data(const uint8_t* p, size_t n) {
    size_t take = std::min<size_t>(n, _pdu.data_length - _data_have);
    if (_dest != nullptr) {
        std::memcpy(_dest + _data_have, p, take);
        _sink.data_landed(_dest + _data_have, take);
    }
    if (_active.data_digest && !_skipping) {
        _crc = crc32c(p, take, _crc);
    }
    _data_have += uint32_t(take);
    if (_data_have == _pdu.data_length) {
        data_complete();
    }
    return take;
}

void PduReader::data_complete() {
    if (_pad_need > 0) {
        _state = State::padding;
    } else if (_active.data_digest) {
        _state = State::data_digest;
    } else {
        finish_pdu();
    }
}

size_t PduReader::consume_padding(const uint8_t* p, size_t n) {
    size_t take = std::min(n, _pad_need - _pad_have);
    // The digest covers the padding bytes as received (RFC 7143 §13.1), whatever their value.
    if (_active.data_digest && !_skipping) {
        _crc = crc32c(p, take, _crc);
    }
    _pad_have += take;
    if (_pad_have == _pad_need) {
        if (_active.data_digest) {
            _state = State::data_digest;
        } else {
            finish_pdu();
        }
    }
    return take;
}

size_t PduReader::consume_data_digest(const uint8_t* p, size_t n) {
    size_t take = std::min(n, digest_size - _digest_have);
    std::memcpy(_digest.data() + _digest_have, p, take);
    _digest_have += take;
    if (_digest_have == digest_size) {
        if (!_skipping) {
            uint32_t received = load_digest(_digest.data());
            const uint32_t computed = _crc;
            if (received != computed) {
                const Bhs bhs = _pdu.bhs;
                reset_for_next_pdu();
                _sink.read_error(
                    ReadError{ReadErrorKind::data_digest, false, bhs,
                              fmt::format("data digest error (received 0x{:08x}, computed 0x{:08x}): {}",
                                          received, computed, describe(bhs))});
                return take;
            }
        }
        finish_pdu();
    }
    return take;
}

void PduReader::finish_pdu() {
    if (_skipping) {
        reset_for_next_pdu();
        return;
    }
    ReceivedPdu pdu = std::move(_pdu);
    // Ready for the next PDU before the callback: the sink may change limits or stop the reader.
    reset_for_next_pdu();
    _sink.pdu_received(std::move(pdu));
}

void PduReader::reset_for_next_pdu() {
    _state = State::header;
    _header_have = 0;
    _header_need = bhs_size;
    _pdu = ReceivedPdu{};
    _dest = nullptr;
    _data_have = 0;
    _skipping = false;
    _crc = 0;
    _pad_need = 0;
    _pad_have = 0;
    _digest_have = 0;
}

} // namespace ispace::iscsi
