// PduReader: framing of BHS/AHS/digests/data/padding from arbitrary chunks, destinations (allocate,
// into a buffer, discard), the direct-read path, digest and limit errors.
#include "iscsi/pdu_reader.hpp"

#include "iscsi/crc32c.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

using Bytes = std::vector<uint8_t>;

Bytes pattern(size_t n, uint8_t seed) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) {
        b[i] = uint8_t(seed + i * 13 + (i >> 8));
    }
    return b;
}

// One PDU as a sender puts it on the wire, built with the send-side helpers.
Bytes wire_pdu(Bhs bhs, const Bytes& ahs, const Bytes& data, bool header_digest, bool data_digest) {
    bhs.set_data_segment_length(uint32_t(data.size()));
    Bytes out(max_header_size);
    out.resize(build_pdu_header(bhs, ahs, header_digest, out.data()));
    out.insert(out.end(), data.begin(), data.end());
    DataTrailer t = make_data_trailer(data, data_digest);
    out.insert(out.end(), t.span().begin(), t.span().end());
    return out;
}

Bhs data_out_bhs(uint32_t itt, uint32_t offset) {
    DataOut d;
    d.itt = itt;
    d.ttt = 0x100 + itt;
    d.buffer_offset = offset;
    d.final_bit = true;
    Bhs b;
    d.encode(b);
    return b;
}

Bhs nop_out_bhs(uint32_t itt) {
    NopOut n;
    n.immediate = true;
    n.itt = itt;
    Bhs b;
    n.encode(b);
    return b;
}

struct Got {
    Bhs bhs;
    Bytes ahs;
    Bytes data;
    bool discarded = false;
    Buffer buffer;
    size_t offset = 0;
};

class RecordingSink : public PduSink {
public:
    std::function<DataDestination(const Bhs&, std::span<const uint8_t>, uint32_t)> choose;
    std::function<void(const ReceivedPdu&)> on_pdu;
    std::vector<Got> pdus;
    std::vector<ReadError> errors;
    int destination_calls = 0;

    DataDestination data_destination(const Bhs& bhs, std::span<const uint8_t> ahs, uint32_t length) override {
        ++destination_calls;
        return choose ? choose(bhs, ahs, length) : DataDestination::allocate();
    }
    void pdu_received(ReceivedPdu&& pdu) override {
        if (on_pdu) {
            on_pdu(pdu);
        }
        auto seg = pdu.segment();
        pdus.push_back(
            Got{pdu.bhs, pdu.ahs, Bytes(seg.begin(), seg.end()), pdu.discarded, pdu.data, pdu.data_offset});
        EXPECT_EQ(pdu.data_length, pdu.bhs.data_segment_length());
    }
    void read_error(const ReadError& error) override { errors.push_back(error); }
};

// A stream of assorted PDUs and what the sink must see.
struct Stream {
    Bytes bytes;
    std::vector<Bytes> datas;
    std::vector<Bytes> ahss;
    std::vector<uint32_t> itts;
};

Stream assorted(bool hd, bool dd) {
    Stream s;
    auto add = [&](Bhs bhs, Bytes ahs, Bytes data) {
        Bytes w = wire_pdu(bhs, ahs, data, hd, dd);
        s.bytes.insert(s.bytes.end(), w.begin(), w.end());
        s.datas.push_back(data);
        s.ahss.push_back(ahs);
        s.itts.push_back(bhs.itt());
    };
    add(nop_out_bhs(1), {}, {});                // no data
    add(data_out_bhs(2, 0), {}, pattern(1, 1)); // 3 bytes padding
    add(data_out_bhs(3, 0), {}, pattern(2, 2)); // 2
    add(data_out_bhs(4, 0), {}, pattern(3, 3)); // 1
    add(data_out_bhs(5, 0), {}, pattern(4, 4)); // none
    add(data_out_bhs(6, 0), {}, pattern(517, 5));
    ScsiCommand c;
    c.write = true;
    c.itt = 7;
    c.expected_data_transfer_length = 100;
    Bhs cb;
    c.encode(cb);
    Bytes ahs;
    append_bidi_read_length_ahs(ahs, 4096);
    uint8_t tail[5] = {1, 2, 3, 4, 5};
    append_extended_cdb_ahs(ahs, tail);
    add(cb, ahs, pattern(99, 7)); // AHS and data
    add(nop_out_bhs(8), {}, {});
    return s;
}

void expect_stream(const RecordingSink& sink, const Stream& s) {
    ASSERT_TRUE(sink.errors.empty()) << sink.errors[0].message;
    ASSERT_EQ(sink.pdus.size(), s.datas.size());
    for (size_t i = 0; i < s.datas.size(); ++i) {
        EXPECT_EQ(sink.pdus[i].bhs.itt(), s.itts[i]) << i;
        EXPECT_EQ(sink.pdus[i].data, s.datas[i]) << i;
        EXPECT_EQ(sink.pdus[i].ahs, s.ahss[i]) << i;
    }
}

ReaderLimits limits(bool hd, bool dd, uint32_t max_dsl = 8192) {
    ReaderLimits l;
    l.header_digest = hd;
    l.data_digest = dd;
    l.max_data_segment_length = max_dsl;
    return l;
}

} // namespace

TEST(PduReader, WholeStreamInOneChunk) {
    for (int mode = 0; mode < 4; ++mode) {
        bool hd = mode & 1, dd = mode & 2;
        Stream s = assorted(hd, dd);
        RecordingSink sink;
        PduReader reader(sink, limits(hd, dd));
        EXPECT_TRUE(reader.idle());
        EXPECT_EQ(reader.feed(s.bytes), s.bytes.size());
        expect_stream(sink, s);
        EXPECT_TRUE(reader.idle());
        EXPECT_FALSE(reader.stopped());
        // data_destination is asked once per non-empty segment.
        EXPECT_EQ(sink.destination_calls, 6);
    }
}

TEST(PduReader, SplitAtEveryByteBoundary) {
    for (int mode = 0; mode < 4; ++mode) {
        bool hd = mode & 1, dd = mode & 2;
        Stream s = assorted(hd, dd);
        for (size_t split = 0; split <= s.bytes.size(); ++split) {
            RecordingSink sink;
            PduReader reader(sink, limits(hd, dd));
            std::span<const uint8_t> all(s.bytes);
            EXPECT_EQ(reader.feed(all.first(split)), split);
            EXPECT_EQ(reader.feed(all.subspan(split)), s.bytes.size() - split);
            expect_stream(sink, s);
            if (::testing::Test::HasFailure()) {
                FAIL() << "mode " << mode << " split " << split;
            }
        }
    }
}

TEST(PduReader, ByteAtATimeAndRandomChunks) {
    for (int mode = 0; mode < 4; ++mode) {
        bool hd = mode & 1, dd = mode & 2;
        Stream s = assorted(hd, dd);
        {
            RecordingSink sink;
            PduReader reader(sink, limits(hd, dd));
            for (uint8_t b : s.bytes) {
                ASSERT_EQ(reader.feed(std::span<const uint8_t>(&b, 1)), 1u);
            }
            expect_stream(sink, s);
        }
        std::mt19937 rng(mode);
        for (int round = 0; round < 50; ++round) {
            RecordingSink sink;
            PduReader reader(sink, limits(hd, dd));
            size_t pos = 0;
            while (pos < s.bytes.size()) {
                size_t n = std::min<size_t>(s.bytes.size() - pos, 1 + rng() % 97);
                reader.feed(std::span<const uint8_t>(s.bytes.data() + pos, n));
                pos += n;
            }
            expect_stream(sink, s);
        }
    }
}

TEST(PduReader, WireFormatMatchesRfcLayout) {
    // Assemble a PDU by hand (not with the send helpers): BHS, 8-byte AHS, header digest, 5 bytes of
    // data, 3 zero bytes, data digest over data + padding, LSB first.
    ScsiCommand c;
    c.write = true;
    c.itt = 0x42;
    c.expected_data_transfer_length = 5;
    c.data_segment_length = 5;
    c.total_ahs_length = 2;
    Bhs b;
    c.encode(b);
    Bytes w(b.bytes.begin(), b.bytes.end());
    Bytes ahs;
    append_bidi_read_length_ahs(ahs, 7);
    w.insert(w.end(), ahs.begin(), ahs.end());
    uint32_t hd = crc32c(w.data(), w.size());
    w.push_back(uint8_t(hd));
    w.push_back(uint8_t(hd >> 8));
    w.push_back(uint8_t(hd >> 16));
    w.push_back(uint8_t(hd >> 24));
    Bytes data = {'h', 'e', 'l', 'l', 'o'};
    Bytes padded = data;
    padded.resize(8, 0);
    w.insert(w.end(), padded.begin(), padded.end());
    uint32_t dd = crc32c(padded.data(), padded.size());
    w.push_back(uint8_t(dd));
    w.push_back(uint8_t(dd >> 8));
    w.push_back(uint8_t(dd >> 16));
    w.push_back(uint8_t(dd >> 24));
    // The send helpers produce exactly the same bytes.
    EXPECT_EQ(wire_pdu(b, ahs, data, true, true), w);

    RecordingSink sink;
    PduReader reader(sink, limits(true, true));
    reader.feed(w);
    ASSERT_TRUE(sink.errors.empty()) << sink.errors[0].message;
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].data, data);
    EXPECT_EQ(sink.pdus[0].ahs, ahs);
    auto parsed = parse_ahs(sink.pdus[0].ahs);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->bidi_read_expected_data_transfer_length, 7u);
}

TEST(PduReader, ZeroLengthSegmentHasNoPaddingOrDataDigest) {
    RecordingSink sink;
    PduReader reader(sink, limits(false, true));
    Bytes w = wire_pdu(nop_out_bhs(1), {}, {}, false, true);
    EXPECT_EQ(w.size(), 48u);
    Bytes two = w;
    two.insert(two.end(), w.begin(), w.end());
    reader.feed(two);
    ASSERT_EQ(sink.pdus.size(), 2u);
    EXPECT_TRUE(sink.pdus[0].data.empty());
    EXPECT_FALSE(sink.pdus[0].buffer);
    EXPECT_EQ(sink.destination_calls, 0);
}

TEST(PduReader, HeaderDigestErrorIsFatal) {
    Stream s = assorted(true, false);
    s.bytes[19] ^= 0x02; // low byte of the first PDU's ITT
    RecordingSink sink;
    PduReader reader(sink, limits(true, false));
    size_t consumed = reader.feed(s.bytes);
    EXPECT_EQ(consumed, 52u); // stopped right after the bad header
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::header_digest);
    EXPECT_TRUE(sink.errors[0].fatal);
    EXPECT_EQ(sink.errors[0].bhs.itt(), 3u); // the header as received
    EXPECT_NE(sink.errors[0].message.find("header digest"), std::string::npos);
    EXPECT_TRUE(sink.pdus.empty());
    EXPECT_TRUE(reader.stopped());
    EXPECT_EQ(reader.feed(s.bytes), 0u);
    EXPECT_EQ(reader.direct_read().iov_len, 0u);
    // The digest itself corrupted.
    Stream t = assorted(true, false);
    t.bytes[49] ^= 0x80;
    RecordingSink sink2;
    PduReader reader2(sink2, limits(true, false));
    reader2.feed(t.bytes);
    ASSERT_EQ(sink2.errors.size(), 1u);
    EXPECT_EQ(sink2.errors[0].kind, ReadErrorKind::header_digest);
}

TEST(PduReader, HeaderDigestCoversAhs) {
    ScsiCommand c;
    c.itt = 9;
    Bhs b;
    c.encode(b);
    Bytes ahs;
    append_bidi_read_length_ahs(ahs, 7);
    Bytes w = wire_pdu(b, ahs, {}, true, false);
    w[48 + 7] ^= 0xff; // inside the AHS
    RecordingSink sink;
    PduReader reader(sink, limits(true, false));
    reader.feed(w);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::header_digest);
}

TEST(PduReader, DataDigestErrorSkipsOnlyThatPdu) {
    Bytes first = wire_pdu(data_out_bhs(1, 0), {}, pattern(100, 1), false, true);
    Bytes second = wire_pdu(data_out_bhs(2, 0), {}, pattern(10, 2), false, true);
    first[48 + 50] ^= 0x10; // corrupt the data
    Bytes w = first;
    w.insert(w.end(), second.begin(), second.end());
    RecordingSink sink;
    PduReader reader(sink, limits(false, true));
    EXPECT_EQ(reader.feed(w), w.size());
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_digest);
    EXPECT_FALSE(sink.errors[0].fatal);
    EXPECT_EQ(sink.errors[0].bhs.itt(), 1u); // the connection can Reject that Data-Out
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].bhs.itt(), 2u);
    EXPECT_EQ(sink.pdus[0].data, pattern(10, 2));
    EXPECT_FALSE(reader.stopped());
}

TEST(PduReader, DataDigestCoversPadding) {
    // A non-zero padding byte changes the digest; without data digests it is simply ignored.
    Bytes w = wire_pdu(data_out_bhs(1, 0), {}, pattern(5, 1), false, true);
    w[48 + 6] = 0x7f;
    RecordingSink sink;
    PduReader reader(sink, limits(false, true));
    reader.feed(w);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_digest);

    Bytes v = wire_pdu(data_out_bhs(1, 0), {}, pattern(5, 1), false, false);
    v[48 + 6] = 0x7f;
    RecordingSink sink2;
    PduReader reader2(sink2, limits(false, false));
    reader2.feed(v);
    ASSERT_TRUE(sink2.errors.empty());
    ASSERT_EQ(sink2.pdus.size(), 1u);
    EXPECT_EQ(sink2.pdus[0].data, pattern(5, 1));

    // A sender that pads with non-zero bytes and digests them correctly is accepted.
    Bytes u = wire_pdu(data_out_bhs(1, 0), {}, pattern(5, 1), false, false);
    u[48 + 5] = 1;
    u[48 + 6] = 2;
    u[48 + 7] = 3;
    uint32_t crc = crc32c(u.data() + 48, 8);
    u.resize(u.size() + 4);
    store_digest(u.data() + 56, crc);
    RecordingSink sink3;
    PduReader reader3(sink3, limits(false, true));
    reader3.feed(u);
    ASSERT_TRUE(sink3.errors.empty());
    ASSERT_EQ(sink3.pdus.size(), 1u);
}

TEST(PduReader, DataSegmentTooLongIsSkippedWithoutAllocation) {
    Bytes big = wire_pdu(data_out_bhs(1, 0), {}, pattern(9000, 1), false, false);
    Bytes small = wire_pdu(data_out_bhs(2, 0), {}, pattern(100, 2), false, false);
    Bytes w = big;
    w.insert(w.end(), small.begin(), small.end());
    RecordingSink sink;
    PduReader reader(sink, limits(false, false, 8192));
    Buffer::Stats before = Buffer::thread_stats();
    reader.feed(std::span<const uint8_t>(w).first(48));
    Buffer::Stats after = Buffer::thread_stats();
    EXPECT_EQ(after.allocations + after.reuses, before.allocations + before.reuses);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_segment_too_long);
    EXPECT_FALSE(sink.errors[0].fatal);
    EXPECT_EQ(sink.destination_calls, 0);
    EXPECT_EQ(reader.direct_read().iov_len, 0u); // skipped bytes go through staging
    reader.feed(std::span<const uint8_t>(w).subspan(48));
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].bhs.itt(), 2u);
    EXPECT_EQ(sink.errors.size(), 1u);
}

TEST(PduReader, MaximalDataSegmentLengthOnTheWire) {
    // DSL 0xffffff with a small limit: rejected from the header alone.
    Bhs b = data_out_bhs(1, 0);
    b.set_data_segment_length(max_data_segment_length);
    RecordingSink sink;
    PduReader reader(sink, limits(false, false, 262144));
    reader.feed(b.bytes);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_segment_too_long);
}

TEST(PduReader, AhsTooLong) {
    ScsiCommand c;
    c.itt = 3;
    Bhs b;
    c.encode(b);
    Bytes ahs(max_ahs_size, 0); // the largest the wire allows: 255 words
    Bytes w = wire_pdu(b, ahs, {}, true, false);
    EXPECT_EQ(w[4], 255);
    Bytes next = wire_pdu(nop_out_bhs(4), {}, {}, true, false);
    w.insert(w.end(), next.begin(), next.end());
    ReaderLimits l = limits(true, false);
    l.max_ahs_length = 256;
    RecordingSink sink;
    PduReader reader(sink, l);
    reader.feed(w);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::ahs_too_long);
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].bhs.itt(), 4u);
    // With the default limit it is accepted (and the digest covers all of it).
    RecordingSink sink2;
    PduReader reader2(sink2, limits(true, false));
    reader2.feed(w);
    ASSERT_TRUE(sink2.errors.empty());
    ASSERT_EQ(sink2.pdus.size(), 2u);
    EXPECT_EQ(sink2.pdus[0].ahs.size(), max_ahs_size);
}

TEST(PduReader, IntoTaskBufferAtOffsetWithDirectRead) {
    // A 64 KiB Data-Out landing in a 128 KiB task buffer at offset 32 KiB: the bytes that came
    // with the header are copied, the rest is read straight into the task buffer.
    const uint32_t offset = 32768;
    Buffer task = Buffer::allocate_zeroed(131072);
    Bytes data = pattern(65536 + 3, 9); // not a multiple of 4: padding follows
    for (int mode = 0; mode < 2; ++mode) {
        bool dd = mode == 1;
        std::memset(task.data(), 0, task.size());
        Bytes w = wire_pdu(data_out_bhs(5, offset), {}, data, true, dd);
        RecordingSink sink;
        sink.choose = [&](const Bhs& bhs, std::span<const uint8_t>, uint32_t length) {
            auto d = DataOut::decode(bhs);
            EXPECT_TRUE(d.ok());
            EXPECT_EQ(length, data.size());
            return DataDestination::into(task, d->buffer_offset);
        };
        PduReader reader(sink, limits(true, dd, 262144));
        // Staging holds the header and 1000 data bytes.
        const size_t staged = 52 + 1000;
        EXPECT_EQ(reader.feed(std::span<const uint8_t>(w).first(staged)), staged);
        iovec d = reader.direct_read();
        ASSERT_EQ(d.iov_len, data.size() - 1000);
        EXPECT_EQ(d.iov_base, task.data() + offset + 1000);
        // The socket delivers in two reads.
        std::memcpy(d.iov_base, w.data() + staged, 20000);
        reader.direct_read_done(20000);
        d = reader.direct_read();
        ASSERT_EQ(d.iov_len, data.size() - 21000);
        EXPECT_EQ(d.iov_base, task.data() + offset + 21000);
        std::memcpy(d.iov_base, w.data() + staged + 20000, d.iov_len);
        reader.direct_read_done(d.iov_len);
        EXPECT_EQ(reader.direct_read().iov_len, 0u); // padding and digest come through staging
        EXPECT_TRUE(sink.pdus.empty());
        size_t tail = w.size() - (52 + data.size());
        EXPECT_EQ(tail, dd ? 5u : 1u);
        reader.feed(std::span<const uint8_t>(w).last(tail));
        ASSERT_TRUE(sink.errors.empty()) << sink.errors[0].message;
        ASSERT_EQ(sink.pdus.size(), 1u);
        EXPECT_EQ(sink.pdus[0].data, data);
        EXPECT_EQ(sink.pdus[0].buffer.data(), task.data()); // landed in the task buffer itself
        EXPECT_EQ(sink.pdus[0].offset, offset);
        EXPECT_EQ(std::memcmp(task.data() + offset, data.data(), data.size()), 0);
        // Nothing outside the segment was touched.
        for (size_t i = 0; i < offset; ++i) {
            ASSERT_EQ(task.data()[i], 0) << i;
        }
        for (size_t i = offset + data.size(); i < task.size(); ++i) {
            ASSERT_EQ(task.data()[i], 0) << i;
        }
    }
}

TEST(PduReader, DirectReadIntoAllocatedBufferDetectsCorruption) {
    Bytes data = pattern(20000, 3);
    Bytes w = wire_pdu(data_out_bhs(5, 0), {}, data, false, true);
    w[48 + 15000] ^= 1; // corrupted in the part that is read directly
    RecordingSink sink;
    PduReader reader(sink, limits(false, true, 65536));
    reader.feed(std::span<const uint8_t>(w).first(48));
    iovec d = reader.direct_read();
    ASSERT_EQ(d.iov_len, data.size());
    std::memcpy(d.iov_base, w.data() + 48, d.iov_len);
    // More than asked for is clamped.
    reader.direct_read_done(d.iov_len + 100);
    reader.feed(std::span<const uint8_t>(w).subspan(48 + data.size()));
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_digest);
    EXPECT_TRUE(sink.pdus.empty());
    EXPECT_TRUE(reader.idle());
}

TEST(PduReader, DirectReadThenNextPduThroughStaging) {
    // readv-style: a direct read completes the segment; padding, digest and the next PDU arrive in
    // one staging chunk.
    Bytes data = pattern(10001, 4);
    Bytes w = wire_pdu(data_out_bhs(1, 0), {}, data, true, true);
    Bytes next = wire_pdu(nop_out_bhs(2), {}, {}, true, true);
    RecordingSink sink;
    PduReader reader(sink, limits(true, true, 65536));
    reader.feed(std::span<const uint8_t>(w).first(52));
    iovec d = reader.direct_read();
    ASSERT_EQ(d.iov_len, data.size());
    std::memcpy(d.iov_base, data.data(), data.size());
    reader.direct_read_done(data.size());
    Bytes rest(w.begin() + 52 + data.size(), w.end());
    rest.insert(rest.end(), next.begin(), next.end());
    EXPECT_EQ(reader.feed(rest), rest.size());
    ASSERT_TRUE(sink.errors.empty()) << sink.errors[0].message;
    ASSERT_EQ(sink.pdus.size(), 2u);
    EXPECT_EQ(sink.pdus[0].data, data);
    EXPECT_EQ(sink.pdus[1].bhs.itt(), 2u);
}

TEST(PduReader, DiscardReadsAndChecksDigest) {
    Bytes data = pattern(3000, 5);
    Bytes good = wire_pdu(data_out_bhs(1, 0), {}, data, false, true);
    Bytes bad = good;
    bad[48 + 10] ^= 4;
    RecordingSink sink;
    sink.choose = [](const Bhs&, std::span<const uint8_t>, uint32_t) { return DataDestination::discard(); };
    PduReader reader(sink, limits(false, true));
    reader.feed(std::span<const uint8_t>(good).first(100));
    EXPECT_EQ(reader.direct_read().iov_len, 0u); // nothing to read into
    reader.feed(std::span<const uint8_t>(good).subspan(100));
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_TRUE(sink.pdus[0].discarded);
    EXPECT_TRUE(sink.pdus[0].data.empty());
    EXPECT_EQ(sink.pdus[0].bhs.data_segment_length(), 3000u);
    reader.feed(bad);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_digest);
    EXPECT_EQ(sink.pdus.size(), 1u);
}

TEST(PduReader, BadDestinationIsSkipped) {
    Buffer small = Buffer::allocate(1024);
    Bytes w = wire_pdu(data_out_bhs(1, 512), {}, pattern(600, 1), false, false);
    Bytes next = wire_pdu(data_out_bhs(2, 0), {}, pattern(6, 2), false, false);
    w.insert(w.end(), next.begin(), next.end());
    RecordingSink sink;
    sink.choose = [&](const Bhs& bhs, std::span<const uint8_t>, uint32_t) {
        if (bhs.itt() == 1) {
            return DataDestination::into(small, 512); // 512 + 600 > 1024
        }
        return DataDestination::allocate();
    };
    PduReader reader(sink, limits(false, false));
    reader.feed(w);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::bad_destination);
    EXPECT_EQ(sink.errors[0].bhs.itt(), 1u);
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].data, pattern(6, 2));
    // An offset past the end, and an empty buffer.
    for (auto dest : {DataDestination::into(small, 2000), DataDestination::into(Buffer(), 0)}) {
        RecordingSink s2;
        s2.choose = [&](const Bhs&, std::span<const uint8_t>, uint32_t) { return dest; };
        PduReader r2(s2, limits(false, false));
        r2.feed(next);
        ASSERT_EQ(s2.errors.size(), 1u);
        EXPECT_EQ(s2.errors[0].kind, ReadErrorKind::bad_destination);
        EXPECT_TRUE(r2.idle());
    }
}

TEST(PduReader, DestinationSeesAhs) {
    ScsiCommand c;
    c.write = true;
    c.itt = 1;
    c.expected_data_transfer_length = 8;
    Bhs b;
    c.encode(b);
    Bytes ahs;
    append_bidi_read_length_ahs(ahs, 512);
    Bytes w = wire_pdu(b, ahs, pattern(8, 1), false, false);
    RecordingSink sink;
    Bytes seen;
    sink.choose = [&](const Bhs&, std::span<const uint8_t> a, uint32_t) {
        seen.assign(a.begin(), a.end());
        return DataDestination::allocate();
    };
    PduReader reader(sink, limits(false, false));
    reader.feed(w);
    EXPECT_EQ(seen, ahs);
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].ahs, ahs);
}

TEST(PduReader, LimitsChangeBetweenPdusFromCallback) {
    // The final Login Response is processed, digests switch on, and the very next PDU in the same
    // chunk already carries them.
    LoginRequest l;
    l.transit = true;
    l.csg = LoginStage::operational;
    l.nsg = LoginStage::full_feature;
    Bhs lb;
    l.encode(lb);
    Bytes w = wire_pdu(lb, {}, pattern(37, 1), false, false);
    Bytes next = wire_pdu(data_out_bhs(2, 0), {}, pattern(37, 2), true, true);
    w.insert(w.end(), next.begin(), next.end());
    for (size_t split = 0; split <= w.size(); ++split) {
        RecordingSink sink;
        PduReader reader(sink, limits(false, false));
        sink.on_pdu = [&](const ReceivedPdu& pdu) {
            if (pdu.bhs.opcode() == Opcode::login_request) {
                reader.set_limits(limits(true, true, 262144));
            }
        };
        reader.feed(std::span<const uint8_t>(w).first(split));
        reader.feed(std::span<const uint8_t>(w).subspan(split));
        ASSERT_TRUE(sink.errors.empty()) << "split " << split << ": " << sink.errors[0].message;
        ASSERT_EQ(sink.pdus.size(), 2u) << split;
        EXPECT_EQ(sink.pdus[1].data, pattern(37, 2));
        EXPECT_TRUE(reader.limits().header_digest);
    }
}

TEST(PduReader, LimitsApplyFromTheNextPdu) {
    // Changing limits while a PDU is half read does not affect that PDU.
    Bytes w = wire_pdu(data_out_bhs(1, 0), {}, pattern(100, 1), false, false);
    RecordingSink sink;
    PduReader reader(sink, limits(false, false));
    reader.feed(std::span<const uint8_t>(w).first(30));
    reader.set_limits(limits(true, true, 16));
    reader.feed(std::span<const uint8_t>(w).subspan(30));
    ASSERT_TRUE(sink.errors.empty());
    ASSERT_EQ(sink.pdus.size(), 1u);
    // The next PDU is held to the new ones.
    Bytes v = wire_pdu(data_out_bhs(2, 0), {}, pattern(100, 1), true, true);
    reader.feed(v);
    ASSERT_EQ(sink.errors.size(), 1u);
    EXPECT_EQ(sink.errors[0].kind, ReadErrorKind::data_segment_too_long);
}

TEST(PduReader, StopFromCallback) {
    Stream s = assorted(false, false);
    RecordingSink sink;
    PduReader reader(sink, limits(false, false));
    sink.on_pdu = [&](const ReceivedPdu& pdu) {
        if (pdu.bhs.itt() == 2) {
            reader.stop();
        }
    };
    size_t consumed = reader.feed(s.bytes);
    // NOP-Out (48) and the first Data-Out (48 + 1 + 3 padding).
    EXPECT_EQ(consumed, 48u + 52u);
    EXPECT_EQ(sink.pdus.size(), 2u);
    EXPECT_TRUE(reader.stopped());
    EXPECT_EQ(reader.feed(s.bytes), 0u);
}

TEST(PduReader, IdleOnlyBetweenPdus) {
    Bytes w = wire_pdu(data_out_bhs(1, 0), {}, pattern(10, 1), false, true);
    RecordingSink sink;
    PduReader reader(sink, limits(false, true));
    for (size_t i = 0; i < w.size(); ++i) {
        EXPECT_EQ(reader.idle(), i == 0) << i;
        reader.feed(std::span<const uint8_t>(w).subspan(i, 1));
    }
    EXPECT_TRUE(reader.idle());
    EXPECT_EQ(sink.pdus.size(), 1u);
}

TEST(PduReader, UnknownOpcodesAreFramedNotJudged) {
    // Framing does not depend on the opcode: the connection answers unknown ones with a Reject.
    Bhs b;
    b.bytes[0] = 0x0b;
    Bytes w = wire_pdu(b, {}, pattern(9, 1), false, false);
    RecordingSink sink;
    PduReader reader(sink, limits(false, false));
    reader.feed(w);
    ASSERT_EQ(sink.pdus.size(), 1u);
    EXPECT_EQ(sink.pdus[0].bhs.raw_opcode(), 0x0b);
    EXPECT_EQ(sink.pdus[0].data, pattern(9, 1));
}

TEST(PduReader, GarbageNeverCrashes) {
    // Random bytes with all limits small: the reader must only report errors or PDUs within limits.
    std::mt19937 rng(99);
    for (int round = 0; round < 200; ++round) {
        Bytes junk(4096);
        for (auto& b : junk) {
            b = uint8_t(rng());
        }
        RecordingSink sink;
        ReaderLimits l = limits(round & 1, round & 2, 512);
        l.max_ahs_length = 64;
        PduReader reader(sink, l);
        size_t pos = 0;
        while (pos < junk.size() && !reader.stopped()) {
            iovec d = reader.direct_read();
            size_t n = std::min<size_t>(junk.size() - pos, 1 + rng() % 300);
            if (d.iov_len > 0 && (rng() & 1)) {
                n = std::min(n, d.iov_len);
                std::memcpy(d.iov_base, junk.data() + pos, n);
                reader.direct_read_done(n);
            } else {
                reader.feed(std::span<const uint8_t>(junk.data() + pos, n));
            }
            pos += n;
        }
        for (auto& p : sink.pdus) {
            EXPECT_LE(p.data.size(), 512u);
            EXPECT_LE(p.ahs.size(), 64u);
        }
    }
}
