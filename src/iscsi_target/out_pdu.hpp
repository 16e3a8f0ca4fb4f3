// OutPdu: one PDU queued on a connection's Transport, written with a single writev:
//   { BHS [+ header digest] } { data segment, a slice of a reference-counted Buffer } { pad [+ digest] }
// The data is not copied: a Data-In PDU points into the buffer the backstore filled, and holds a
// reference to it until the bytes are on the wire.
#pragma once

#include "common/buffer.hpp"
#include "iscsi/crc32c.hpp"
#include "iscsi/pdu.hpp"
#include "iscsi_target/buffer_budget.hpp"
#include "net/tcp_stream.hpp"

#include <array>
#include <memory>
#include <vector>

namespace ispace::iscsi_target {

class OutPdu final : public net::OutItem {
public:
    class Pool;

    // Lays out iov[] for `bhs` followed by data[offset, offset+length) with padding and digests.
    void build(const iscsi::Bhs& bhs, Buffer data, size_t offset, uint32_t length, bool header_digest,
               bool data_digest) {
        size_t header_length = iscsi::bhs_size;
        std::copy(bhs.bytes.begin(), bhs.bytes.end(), _header.begin());
        if (header_digest) {
            iscsi::store_digest(_header.data() + iscsi::bhs_size,
                                iscsi::crc32c(_header.data(), iscsi::bhs_size));
            header_length += iscsi::digest_size;
        }
        iovcnt = 0;
        iov[iovcnt++] = {_header.data(), header_length};
        _bytes = header_length;
        _data = std::move(data);
        if (length > 0) {
            uint8_t* p = _data.data() + offset;
            iov[iovcnt++] = {p, length};
            _trailer =
                iscsi::make_data_trailer(length, data_digest, data_digest ? iscsi::crc32c(p, length) : 0);
            if (_trailer.size > 0) {
                iov[iovcnt++] = {_trailer.bytes.data(), _trailer.size};
            }
            _bytes += length + _trailer.size;
        }
    }
    // Bytes on the wire, header and data.
    size_t bytes() const { return _bytes; }
    // The command's reservation of Data-In memory, given back once this PDU (its last) is sent.
    void hold(BufferBudget::Hold hold) { _hold = std::move(hold); }

    void on_sent(bool written) override;

private:
    friend class Pool;
    std::array<uint8_t, iscsi::bhs_size + iscsi::digest_size> _header{};
    Buffer _data;
    iscsi::DataTrailer _trailer;
    size_t _bytes = 0;
    BufferBudget::Hold _hold;
    Pool* _pool = nullptr;
};

// A connection's free list of OutPdus: steady-state sending allocates nothing. It tells its listener
// about every PDU that comes back (sent, or failed with the transport), which is how a connection
// knows what it still has queued.
class OutPdu::Pool {
public:
    class Listener {
    public:
        virtual void pdu_returned(size_t bytes) = 0;

    protected:
        ~Listener() = default;
    };
    explicit Pool(Listener* listener = nullptr) : _listener(listener) {}
    ~Pool() = default;
    OutPdu& get() {
        if (_free.empty()) {
            auto pdu = std::make_unique<OutPdu>();
            pdu->_pool = this;
            _all.push_back(std::move(pdu));
            return *_all.back();
        }
        OutPdu* pdu = _free.back();
        _free.pop_back();
        return *pdu;
    }
    void put(OutPdu& pdu) {
        pdu._data.reset();
        pdu._hold.reset();
        _free.push_back(&pdu);
        if (_listener) {
            _listener->pdu_returned(pdu._bytes);
        }
    }

private:
    Listener* _listener;
    std::vector<std::unique_ptr<OutPdu>> _all;
    std::vector<OutPdu*> _free;
};

inline void OutPdu::on_sent(bool) {
    _pool->put(*this);
}

} // namespace ispace::iscsi_target
