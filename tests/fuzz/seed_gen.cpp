// Writes the seed corpora of the fuzzers (tests/fuzz/corpus/<fuzzer>/) from real exchanges: an
// InitiatorLogin and a TargetLogin logging in with None, CHAP and mutual CHAP, SHA-256 and MD5, normal
// and discovery sessions, long texts with the C bit; the PDUs a connection sees (logins, SCSI commands
// with immediate data and AHS, Data-Out, NOP-Out, Text, Logout; with and without digests); negotiation
// texts; the CDBs initiators send first; and iSNSP messages (registrations, queries and their answers, ESI).
// Seeds are in each fuzzer's input format (see its header).
//
// Usage: fuzz_seed_gen <corpus root>     (then commit what changed)
#include "common/bytes.hpp"
#include "iscsi/chap.hpp"
#include "iscsi/login.hpp"
#include "iscsi/pdu.hpp"
#include "isns/message.hpp"
#include "isns/objects.hpp"
#include "volume/checksum_page.hpp"
#include "volume/label.hpp"
#include "volume/thin/format.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

using Bytes = std::vector<uint8_t>;

// Must match fuzz_login.cpp.
constexpr const char* chap_user = "fuzz-user";
constexpr const char* chap_secret = "fuzz-initiator-secret";
constexpr const char* target_user = "fuzz-target";
constexpr const char* target_secret = "fuzz-target-secret!!";

std::filesystem::path g_root;

void write_seed(const std::string& fuzzer, const std::string& name, const Bytes& bytes) {
    std::filesystem::path dir = g_root / fuzzer;
    std::filesystem::create_directories(dir);
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

void append(Bytes& out, const Bytes& more) {
    out.insert(out.end(), more.begin(), more.end());
}

// ---- Login conversations -----------------------------------------------------------------------------

class SeedPolicy : public LoginPolicy {
public:
    std::vector<std::string> methods{"None"};
    bool mutual = false;
    bool md5_only = false;
    NegotiationConfig negotiation;

    LoginTargetInfo start(const LoginIdentity&) override {
        LoginTargetInfo info;
        info.auth_methods = methods;
        info.negotiation = negotiation;
        return info;
    }
    std::unique_ptr<Authenticator> authenticator(std::string_view, const LoginIdentity&) override {
        ChapTargetConfig c;
        c.users = {{chap_user, chap_secret}};
        if (mutual) {
            c.mutual = ChapCredentials{target_user, target_secret};
        }
        if (md5_only) {
            c.algorithms = {ChapAlgorithm::md5};
        }
        return make_chap_target_authenticator(c);
    }
    LoginAdmission admit(const LoginIdentity&, const SessionParams&, const ConnectionParams&) override {
        LoginAdmission a;
        a.tsih = 0x77;
        return a;
    }
};

struct Conversation {
    std::vector<LoginRequestPdu> requests;
    std::vector<LoginResponsePdu> responses;
};

Conversation converse(InitiatorLoginConfig config, SeedPolicy& policy) {
    Conversation c;
    TargetLogin target(policy);
    InitiatorLogin initiator(std::move(config));
    auto first = initiator.start();
    if (!first.ok()) {
        std::fprintf(stderr, "seed_gen: %s\n", first.error().message.c_str());
        std::exit(1);
    }
    std::optional<LoginRequestPdu> request = std::move(*first);
    while (request && c.requests.size() < 40) {
        c.requests.push_back(*request);
        LoginResponsePdu response = target.receive(request->header, request->data);
        c.responses.push_back(response);
        request = initiator.receive(response.header, response.data);
    }
    if (target.state() != LoginState::complete || initiator.state() != LoginState::complete) {
        std::fprintf(stderr, "seed_gen: login did not complete: %s / %s\n", target.reason().c_str(),
                     initiator.reason().c_str());
        std::exit(1);
    }
    return c;
}

// CHAP_R values depend on the challenge: the fuzzer harness fills in "?".
Bytes blank_responses(const Bytes& data) {
    auto pairs = parse_text(data);
    if (!pairs.ok()) {
        return data;
    }
    for (auto& kv : *pairs) {
        if (kv.key == "CHAP_R") {
            kv.value = "?";
        }
    }
    return encode_text(*pairs);
}

Bytes chunk(uint8_t flags, uint8_t fields, const Bytes& data) {
    Bytes out{flags, fields, uint8_t(data.size()), uint8_t(data.size() >> 8)};
    append(out, data);
    return out;
}

uint8_t stage_flags(bool transit, bool cont, LoginStage csg, LoginStage nsg) {
    return uint8_t((transit ? 0x80 : 0) | (cont ? 0x40 : 0) | (uint8_t(csg) << 2) |
                   (transit ? uint8_t(nsg) : 0));
}

// fuzz_login target role: the initiator's requests.
Bytes target_role_seed(uint8_t mode, const Conversation& c) {
    Bytes out{mode};
    for (const auto& r : c.requests) {
        const LoginRequest& h = r.header;
        append(out, chunk(stage_flags(h.transit, h.continue_bit, h.csg, h.nsg), 0, blank_responses(r.data)));
    }
    return out;
}

// fuzz_login initiator role: the target's responses.
Bytes initiator_role_seed(uint8_t mode, const Conversation& c) {
    Bytes out{mode};
    for (const auto& r : c.responses) {
        const LoginResponse& h = r.header;
        uint8_t fields = h.tsih != 0 ? 0x04 : 0;
        append(out,
               chunk(stage_flags(h.transit, h.continue_bit, h.csg, h.nsg), fields, blank_responses(r.data)));
    }
    return out;
}

// fuzz_login's initiator with mode bit 5: digests offered, larger bursts, vendor keys (must match).
NegotiationConfig fuzz_initiator_negotiation() {
    NegotiationConfig n;
    n.header_digests = {Digest::crc32c, Digest::none};
    n.data_digests = {Digest::crc32c, Digest::none};
    n.initial_r2t = false;
    n.max_burst_length = 1 << 20;
    n.first_burst_length = 1 << 18;
    return n;
}

InitiatorLoginConfig initiator_config(std::vector<std::string> methods, bool mutual, bool md5_only = false) {
    InitiatorLoginConfig c;
    c.initiator_name = "iqn.2024-01.org.ispace:fuzz";
    c.target_name = "iqn.2024-01.org.ispace:target";
    c.isid = {0x40, 0, 0, 1, 0, 2};
    c.itt = 5;
    c.cid = 1;
    c.cmd_sn = 10;
    c.auth_methods = std::move(methods);
    ChapInitiatorConfig chap;
    chap.credentials = {chap_user, chap_secret};
    if (mutual) {
        chap.target = ChapCredentials{target_user, target_secret};
    }
    if (md5_only) {
        chap.algorithms = {ChapAlgorithm::md5};
    }
    c.make_authenticator = [chap](std::string_view) { return make_chap_initiator_authenticator(chap); };
    return c;
}

std::vector<Conversation> login_seeds() {
    std::vector<Conversation> all;
    // `mode` is the target-role mode byte of fuzz_login; the initiator-role byte (bit 3 set) describes
    // the initiator's configuration instead, which differs where the two sides' settings do.
    auto both = [&](const std::string& name, uint8_t mode, InitiatorLoginConfig config, SeedPolicy& policy,
                    std::optional<uint8_t> initiator_mode = std::nullopt) {
        Conversation c = converse(std::move(config), policy);
        write_seed("fuzz_login", "target-" + name, target_role_seed(mode, c));
        if (initiator_mode != 0xff) { // 0xff: the harness has no initiator configuration to match
            write_seed("fuzz_login", "initiator-" + name,
                       initiator_role_seed(initiator_mode.value_or(uint8_t(mode | 0x08)), c));
        }
        all.push_back(std::move(c));
    };
    {
        SeedPolicy p;
        both("none", 0x00, initiator_config({"None"}, false), p);
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP"};
        both("chap-sha256", 0x01, initiator_config({"CHAP"}, false), p);
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP"};
        p.mutual = true;
        both("chap-mutual", 0x05, initiator_config({"CHAP"}, true), p);
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP"};
        p.md5_only = true;
        both("chap-md5", 0x41, initiator_config({"CHAP"}, false, true), p);
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP", "None"};
        p.mutual = true;
        both("chap-none-mutual", 0x06, initiator_config({"CHAP", "None"}, true), p);
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP", "None"};
        both("chap-optional-none", 0x02, initiator_config({"None"}, false), p, 0x08);
    }
    {
        SeedPolicy p;
        p.negotiation.header_digests = {Digest::crc32c, Digest::none};
        p.negotiation.initial_r2t = false;
        p.negotiation.max_recv_data_segment_length = 8192;
        InitiatorLoginConfig c = initiator_config({"None"}, false);
        c.negotiation = fuzz_initiator_negotiation();
        both("digests", 0x10, c, p, 0xff); // the initiator side is covered by "continued"
    }
    {
        SeedPolicy p;
        p.methods = {"CHAP"};
        p.mutual = true;
        InitiatorLoginConfig c = initiator_config({"CHAP"}, true);
        c.session_type = SessionType::discovery;
        c.target_name.clear();
        Conversation conv = converse(c, p);
        write_seed("fuzz_login", "target-discovery-chap-mutual", target_role_seed(0x05, conv));
        write_seed("fuzz_login", "initiator-discovery-chap-mutual", initiator_role_seed(0x1d, conv));
        all.push_back(std::move(conv));
    }
    {
        // Long texts: the C bit in both directions.
        SeedPolicy p;
        InitiatorLoginConfig c = initiator_config({"None"}, false);
        c.negotiation = fuzz_initiator_negotiation();
        for (int i = 0; i < 70; ++i) {
            c.extra_keys.push_back({"X-org.ispace.seed-key-" + std::to_string(i), std::string(120, 'v')});
        }
        both("continued", 0x00, c, p, 0x28);
    }
    return all;
}

// libiscsi 1.19 exactly (lib/login.c): operational keys only in the operational stage.
void libiscsi_seed() {
    Bytes out{0x05};
    KeyValueList first{{"InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq"},
                       {"TargetName", "iqn.2024-01.org.ispace:target"},
                       {"SessionType", "Normal"},
                       {"AuthMethod", "CHAP,None"}};
    append(out, chunk(stage_flags(true, false, LoginStage::security, LoginStage::operational), 0,
                      encode_text(first)));
    append(out, chunk(stage_flags(false, false, LoginStage::security, LoginStage::security), 0,
                      encode_text({{"CHAP_A", "5"}})));
    append(out, chunk(stage_flags(true, false, LoginStage::security, LoginStage::operational), 0,
                      encode_text({{"CHAP_N", chap_user},
                                   {"CHAP_R", "?"},
                                   {"CHAP_I", "1"},
                                   {"CHAP_C", "0x" + std::string(64, 'A')}})));
    KeyValueList op{{"HeaderDigest", "None,CRC32C"},
                    {"DataDigest", "None"},
                    {"InitialR2T", "No"},
                    {"ImmediateData", "Yes"},
                    {"MaxBurstLength", "262144"},
                    {"FirstBurstLength", "262144"},
                    {"DefaultTime2Wait", "2"},
                    {"DefaultTime2Retain", "0"},
                    {"MaxOutstandingR2T", "1"},
                    {"ErrorRecoveryLevel", "0"},
                    {"IFMarker", "No"},
                    {"OFMarker", "No"},
                    {"MaxConnections", "1"},
                    {"MaxRecvDataSegmentLength", "262144"},
                    {"DataPDUInOrder", "Yes"},
                    {"DataSequenceInOrder", "Yes"}};
    append(out, chunk(stage_flags(true, false, LoginStage::operational, LoginStage::full_feature), 0,
                      encode_text(op)));
    write_seed("fuzz_login", "target-libiscsi-mutual-md5", out);

    // The same keys as negotiation text for fuzz_text (target role, operational stage).
    Bytes text{0x10, 0, 0};
    append(text, encode_text(op));
    write_seed("fuzz_text", "libiscsi-operational", text);
}

// ---- fuzz_text --------------------------------------------------------------------------------------

Bytes padded_text(const KeyValueList& keys) {
    Bytes t = encode_text(keys);
    while (t.size() % 4 != 0) {
        t.push_back(0); // empty entries are skipped: lets the fuzzer's cut land on a pair boundary
    }
    return t;
}

void text_seeds(const std::vector<Conversation>& conversations) {
    int n = 0;
    for (const auto& c : conversations) {
        // Each request text as the target's Negotiator sees it (operational stage), and each response
        // as the initiator's does.
        for (const auto& r : c.requests) {
            if (r.data.empty() || r.header.csg != LoginStage::operational) {
                continue;
            }
            Bytes seed{0x10, 0, 0};
            append(seed, r.data);
            write_seed("fuzz_text", "request-" + std::to_string(n++), seed);
        }
        for (const auto& r : c.responses) {
            if (r.data.empty() || r.header.csg != LoginStage::operational) {
                continue;
            }
            Bytes seed{0x11, 0, 0};
            append(seed, r.data);
            write_seed("fuzz_text", "response-" + std::to_string(n++), seed);
        }
    }
    // A login in three sequences: security-stage declarations, then two operational exchanges.
    Bytes security = padded_text({{"InitiatorName", "iqn.2024-01.org.ispace:fuzz"},
                                  {"TargetName", "iqn.2024-01.org.ispace:target"},
                                  {"SessionType", "Normal"},
                                  {"InitiatorAlias", "seed host"}});
    Bytes op1 = padded_text({{"HeaderDigest", "CRC32C,None"},
                             {"DataDigest", "None"},
                             {"MaxRecvDataSegmentLength", "65536"},
                             {"MaxBurstLength", "1048576"},
                             {"FirstBurstLength", "262144"},
                             {"ErrorRecoveryLevel", "0"},
                             {"iSCSIProtocolLevel", "1"},
                             {"TaskReporting", "RFC3720"}});
    Bytes op2 = padded_text({{"X-com.example.vendor", "1"}, {"MaxConnections", "1"}, {"IFMarker", "No"}});
    Bytes seed{0x00, uint8_t(security.size() / 4), uint8_t(op1.size() / 4)};
    append(seed, security);
    append(seed, op1);
    append(seed, op2);
    write_seed("fuzz_text", "login-three-sequences", seed);
    seed[0] = 0x41; // initiator role, other config
    write_seed("fuzz_text", "login-three-sequences-initiator", seed);

    // Full feature phase Text negotiations.
    Bytes ffp{0x04, 0, 0};
    append(ffp, encode_text({{"SendTargets", "All"}, {"MaxRecvDataSegmentLength", "131072"}}));
    write_seed("fuzz_text", "text-sendtargets", ffp);
    Bytes ffp_i{0x05, 0, 0};
    append(ffp_i, encode_text({{"TargetName", "iqn.2024-01.org.ispace:target"},
                               {"TargetAddress", "192.0.2.1:3260,1"},
                               {"TargetAddress", "[2001:db8::1]:3260,2"}}));
    write_seed("fuzz_text", "text-sendtargets-answer", ffp_i);

    // Value grammars: numbers, binary values, ranges, reserved answers, CHAP keys.
    Bytes values{0x10, 0, 0};
    append(values, encode_text({{"CHAP_A", "7,5"},
                                {"CHAP_I", "0x2a"},
                                {"CHAP_C", "0x00112233445566778899AABBCCDDEEFF"},
                                {"CHAP_R", "0bABEiM0RVZneImaq7zN3u/w=="},
                                {"MaxBurstLength", "0x40000"},
                                {"FirstBurstLength", "0b AAQAAA=="},
                                {"DefaultTime2Wait", "0002"},
                                {"X#org.example.range", "1~65535"},
                                {"ImmediateData", "Reject"},
                                {"InitialR2T", "NotUnderstood"}}));
    write_seed("fuzz_text", "value-grammars", values);
}

// ---- fuzz_pdu ---------------------------------------------------------------------------------------

Bytes wire(const Bhs& bhs_in, const Bytes& ahs, const Bytes& data, bool header_digest, bool data_digest) {
    Bhs bhs = bhs_in;
    bhs.set_data_segment_length(uint32_t(data.size()));
    Bytes out(max_header_size);
    out.resize(build_pdu_header(bhs, ahs, header_digest, out.data()));
    append(out, data);
    DataTrailer t = make_data_trailer(data, data_digest);
    out.insert(out.end(), t.span().begin(), t.span().end());
    return out;
}

void pdu_seeds(const std::vector<Conversation>& conversations) {
    for (int digests = 0; digests < 4; ++digests) {
        bool hd = digests & 1;
        bool dd = digests & 2;
        // A whole login as one stream (the first conversation with CHAP).
        Bytes login{uint8_t(digests), 0x07};
        for (const auto& r : conversations[2].requests) {
            Bhs bhs;
            r.header.encode(bhs);
            append(login, wire(bhs, {}, r.data, hd, dd));
        }
        write_seed("fuzz_pdu", "login-stream-digests" + std::to_string(digests), login);

        // Full feature phase traffic: READ(10), WRITE(10) with immediate data and a Data-Out, a
        // 32-byte CDB in an Extended CDB AHS with a bidi AHS, NOP-Out ping, Text, Logout.
        Bytes ffp{uint8_t(digests | 0x10), 0x0c};
        ScsiCommand read;
        read.read = true;
        read.itt = 0x10; // allocate
        read.expected_data_transfer_length = 4096;
        read.cmd_sn = 1;
        read.cdb = {0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0};
        Bhs bhs;
        read.encode(bhs);
        append(ffp, wire(bhs, {}, {}, hd, dd));

        ScsiCommand write;
        write.write = true;
        write.final_bit = false;
        write.itt = 0x0102; // into a buffer at offset 1
        write.expected_data_transfer_length = 8192;
        write.cmd_sn = 2;
        write.cdb = {0x2a, 0, 0, 0, 0, 16, 0, 0, 16, 0};
        write.encode(bhs);
        append(ffp, wire(bhs, {}, Bytes(1024, 0x5a), hd, dd));
        DataOut dout;
        dout.itt = 0x0102;
        dout.ttt = 0xffffffff;
        dout.buffer_offset = 1024;
        dout.final_bit = true;
        dout.encode(bhs);
        append(ffp, wire(bhs, {}, Bytes(7168, 0xa5), hd, dd));

        ScsiCommand big;
        big.read = true;
        big.write = true;
        big.itt = 0x11; // discard
        big.cmd_sn = 3;
        big.expected_data_transfer_length = 512;
        big.cdb = {0x7f, 0, 0, 0, 0, 0, 0, 24, 0x00, 0x0b};
        Bytes ahs;
        Bytes tail(16, 0x33);
        append_extended_cdb_ahs(ahs, tail);
        append_bidi_read_length_ahs(ahs, 4096);
        big.total_ahs_length = uint8_t(ahs.size() / 4);
        big.encode(bhs);
        append(ffp, wire(bhs, ahs, {}, hd, dd));

        NopOut nop;
        nop.itt = 0x20;
        nop.cmd_sn = 4;
        nop.encode(bhs);
        append(ffp, wire(bhs, {}, Bytes{'p', 'i', 'n', 'g'}, hd, dd));

        TextRequest text;
        text.itt = 0x21;
        text.cmd_sn = 4;
        text.encode(bhs);
        append(ffp, wire(bhs, {}, encode_text({{"SendTargets", "All"}}), hd, dd));

        LogoutRequest logout;
        logout.immediate = true;
        logout.itt = 0x22;
        logout.cmd_sn = 5;
        logout.encode(bhs);
        append(ffp, wire(bhs, {}, {}, hd, dd));
        write_seed("fuzz_pdu", "full-feature-stream-digests" + std::to_string(digests), ffp);
    }
    // Target-side PDUs (what an initiator reads).
    Bytes target_side{0x00, 0x03};
    for (const auto& r : conversations[2].responses) {
        Bhs bhs;
        r.header.encode(bhs);
        append(target_side, wire(bhs, {}, r.data, false, false));
    }
    DataIn din;
    din.final_bit = true;
    din.status_present = true;
    din.itt = 0x10;
    din.underflow = true;
    din.residual_count = 512;
    Bhs bhs;
    din.encode(bhs);
    append(target_side, wire(bhs, {}, Bytes(3584, 1), false, false));
    R2t r2t;
    r2t.itt = 0x0102;
    r2t.ttt = 7;
    r2t.buffer_offset = 1024;
    r2t.desired_data_transfer_length = 7168;
    r2t.encode(bhs);
    append(target_side, wire(bhs, {}, {}, false, false));
    Reject reject;
    reject.encode(bhs);
    append(target_side, wire(bhs, {}, Bytes(48, 0), false, false));
    write_seed("fuzz_pdu", "target-side-stream", target_side);
}

// ---- fuzz_cdb ---------------------------------------------------------------------------------------

struct CdbSeed {
    uint8_t flags;
    uint32_t edtl;
    Bytes cdb;
    Bytes out;
};

Bytes cdb_command(const CdbSeed& s) {
    Bytes out{s.flags,         uint8_t(s.cdb.size()),      uint8_t(s.edtl >> 16), uint8_t(s.edtl >> 8),
              uint8_t(s.edtl), uint8_t(s.out.size() >> 8), uint8_t(s.out.size())};
    append(out, s.cdb);
    append(out, s.out);
    return out;
}

void cdb_seeds() {
    constexpr uint8_t R = 0x01, W = 0x02, LUN1 = 0x04, IMM = 0x40;
    Bytes unmap_list(24, 0);
    store_be16(&unmap_list[0], 22);
    store_be16(&unmap_list[2], 16);
    store_be64(&unmap_list[8], 8);
    store_be32(&unmap_list[16], 8);
    // MODE SELECT(10): an 8-byte header without block descriptors, then the Caching page with WCE.
    Bytes mode_select(28, 0);
    mode_select[8] = 0x08;
    mode_select[9] = 0x12;
    mode_select[10] = 0x04;
    const std::vector<std::pair<std::string, std::vector<CdbSeed>>> seeds{
        {"test-unit-ready", {{0, 0, {0x00, 0, 0, 0, 0, 0}, {}}}},
        {"inquiry", {{R, 96, {0x12, 0, 0, 0, 96, 0}, {}}}},
        {"inquiry-vpd-pages",
         {{R, 255, {0x12, 1, 0x00, 0, 255, 0}, {}},
          {R, 255, {0x12, 1, 0x80, 0, 255, 0}, {}},
          {R, 255, {0x12, 1, 0x83, 0, 255, 0}, {}},
          {R, 255, {0x12, 1, 0xb0, 0, 255, 0}, {}},
          {R, 255, {0x12, 1, 0xb1, 0, 255, 0}, {}},
          {R, 255, {0x12, 1, 0xb2, 0, 255, 0}, {}}}},
        {"read-capacity",
         {{R, 8, {0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {}},
          {R, 32, {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, {}}}},
        {"report-luns", {{R, 256, {0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, {}}}},
        {"request-sense", {{R, 252, {0x03, 0, 0, 0, 252, 0}, {}}}},
        {"mode-sense",
         {{R, 255, {0x1a, 0, 0x3f, 0, 255, 0}, {}}, {R, 1024, {0x5a, 0, 0x3f, 0, 0, 0, 0, 4, 0, 0}, {}}}},
        {"mode-select", {{W, 28, {0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0}, mode_select}}},
        {"write-read-10",
         {{W, 4096, {0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, Bytes(4096, 0xab)},
          {R, 4096, {0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}, {}}}},
        {"write-immediate-16",
         {{W | IMM, 8192, {0x8a, 0x08, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 16, 0, 0}, Bytes(8192, 0x11)}}},
        {"read-write-6-12",
         {{R, 512, {0x08, 0, 0, 2, 1, 0}, {}},
          {W, 512, {0x0a, 0, 0, 3, 1, 0}, Bytes(512, 7)},
          {R | LUN1, 4096, {0xa8, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0}, {}},
          {W | LUN1, 4096, {0xaa, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0}, Bytes(4096, 9)}}},
        {"verify",
         {{W, 512, {0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0}, Bytes(512, 0)},
          {0, 0, {0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, {}}}},
        {"synchronize-cache",
         {{0, 0, {0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {}},
          {0, 0, {0x91, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, {}}}},
        {"write-same-unmap",
         {{W, 512, {0x41, 0x08, 0, 0, 0, 0, 0, 0, 8, 0}, Bytes(512, 0)},
          {W, 512, {0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, Bytes(512, 0)}}},
        {"unmap", {{W, 24, {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, unmap_list}}},
        {"get-lba-status", {{R, 64, {0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, {}}}},
        {"start-stop", {{0, 0, {0x1b, 0, 0, 0, 1, 0}, {}}}},
        {"report-supported-opcodes", {{R, 4096, {0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, {}}}},
        {"out-of-range-and-residuals",
         {{R, 512, {0x28, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0}, {}},
          {R, 100, {0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, {}},
          {W, 100, {0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, Bytes(100, 1)}}},
        {"aborted-and-lost-data-out",
         {{W | 0x10, 4096, {0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0}, Bytes(4096, 3)},
          {W | 0x20, 4096, {0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0}, {}},
          {0x80, 0, {0x00, 0, 0, 0, 0, 0}, {}}}},
    };
    for (const auto& [name, commands] : seeds) {
        Bytes seed;
        for (const auto& c : commands) {
            append(seed, cdb_command(c));
        }
        write_seed("fuzz_cdb", name, seed);
    }
}

// ---- iSNSP (fuzz_isns) -----------------------------------------------------------------------------

void isns_seeds() {
    using namespace ispace::isns;
    Registration r;
    r.entity_id = "ispaced:seed:192.0.2.1:3260";
    Address a = Address::from_ipv4(0xc0000201);
    r.portals.push_back({a, 3260, uint16_t(40000), 60});
    r.portals.push_back({Address::from_ipv4(0xc0000202), 3261, std::nullopt, 0});
    r.nodes.push_back({"iqn.2026-11.org.example:disk1", node_type::target, "disk one"});
    r.nodes.push_back({"iqn.2026-11.org.example:disk2", node_type::target, ""});
    for (const NodeEntry& n : r.nodes) {
        r.groups.push_back({n.name, a, 3260, 1});
    }
    const std::string source = r.nodes.front().name;

    // A query answer as a server sends it: entity, portals, nodes and portal groups (§5.7.5.2).
    Message answer;
    answer.function = response_id(Function::dev_attr_qry);
    answer.xid = 7;
    answer.attributes = {string_attribute(tag::entity_identifier, r.entity_id),
                         address_attribute(tag::portal_ip_address, a),
                         port_attribute(tag::portal_port, {3260, false}),
                         string_attribute(tag::iscsi_name, r.nodes[0].name),
                         u32_attribute(tag::iscsi_node_type, node_type::target),
                         string_attribute(tag::iscsi_alias, "disk one"),
                         string_attribute(tag::pg_iscsi_name, r.nodes[0].name),
                         address_attribute(tag::pg_portal_ip_address, a),
                         port_attribute(tag::pg_portal_port, {3260, false}),
                         u32_attribute(tag::pg_tag, 1)};
    Message registered;
    registered.function = response_id(Function::dev_attr_reg);
    registered.xid = 3;
    registered.attributes = {string_attribute(tag::entity_identifier, r.entity_id),
                             u32_attribute(tag::registration_period, 900)};
    Message esi;
    esi.function = function_id(Function::esi);
    esi.xid = 9;
    esi.attributes = {string_attribute(tag::entity_identifier, r.entity_id),
                      address_attribute(tag::portal_ip_address, a),
                      port_attribute(tag::portal_port, {3260, false})};

    struct Seed {
        const char* name;
        uint8_t config;
        Bytes stream;
    };
    std::vector<Seed> seeds = {
        {"dev-attr-reg", 0x02, encode(dev_attr_reg(r, source, true), flag::client)},
        {"dev-attr-reg-small-pdus", 0x22, encode(dev_attr_reg(r, source, false), flag::client, 16)},
        {"dev-dereg", 0x01, encode(dev_dereg_entity(source, r.entity_id), flag::client)},
        {"entity-query", 0x01, encode(entity_query(source, r.entity_id), flag::client)},
        {"target-query", 0x01, encode(target_query("iqn.2026-11.org.example:host"), flag::client)},
        {"query-answer", 0x02, encode(answer, flag::server)},
        {"query-answer-in-pdus-of-8", 0x16, encode(answer, flag::server, 8)},
        {"registration-answer", 0x01, encode(registered, flag::server)},
        {"esi", 0x01, encode(esi, flag::server)},
    };
    Bytes two = encode(esi, flag::server);
    append(two, encode(registered, flag::server));
    seeds.push_back({"esi-then-answer", 0x0d, two});
    for (const Seed& s : seeds) {
        Bytes seed{s.config, 0x35};
        append(seed, s.stream);
        write_seed("fuzz_isns", s.name, seed);
    }
}

} // namespace

// ---- Data-space labels -------------------------------------------------------------------------------

// Valid labels of every layout (mode 0: the bytes as they are; mode 4: four copies for choose_label),
// and the mutation modes over the built-in labels (mode 1: XOR, 3: XOR with the checksum recomputed; 9
// and 11: the same over the checksummed label with a scrub record).
void label_seeds() {
    using namespace ispace::volume;
    struct Shape {
        const char* name;
        LayoutKind kind;
        unsigned members;
        uint32_t copies;
        uint64_t chunk;
        uint32_t block;
    };
    const Shape shapes[] = {{"mirror2", LayoutKind::mirror, 2, 2, 0, 512},
                            {"mirror3-4k", LayoutKind::mirror, 3, 3, 0, 4096},
                            {"stripe4", LayoutKind::stripe, 4, 1, 128 << 10, 512},
                            {"concat3", LayoutKind::concat, 3, 1, 0, 512},
                            {"stripe-mirror4", LayoutKind::stripe_mirror, 4, 2, 64 << 10, 4096}};
    for (const Shape& shape : shapes) {
        uint64_t member = 256 << 20;
        auto plan = plan_member(member, shape.block, member * shape.members, 1 << 20);
        Label l;
        l.space_uuid = make_uuid();
        l.name = std::string("seed-") + shape.name;
        l.layout = shape.kind;
        l.copies = shape.copies;
        l.block_size = shape.block;
        l.chunk = shape.chunk;
        l.member_size = member;
        l.data_offset = plan->data_offset;
        l.data_size = plan->data_size;
        l.region_size = shape.copies > 1 ? 1 << 20 : 0;
        if (l.region_size) {
            l.compat = feature::compat::bitmap;
            l.areas.push_back(plan->bitmap);
        }
        for (unsigned i = 0; i < shape.members; ++i) {
            MemberEntry m;
            m.uuid = make_uuid();
            m.data_bytes = plan->data_size;
            m.url = "iscsi://192.0.2." + std::to_string(i + 1) + "/iqn.2026-11.org.example:m/0";
            l.members.push_back(m);
        }
        l.members.back().state = MemberState::rebuilding;
        l.members.back().rebuild = RebuildMode::delta;
        l.slot = 0;
        l.member_uuid = l.members[0].uuid;
        auto layout = l.layout_of();
        l.space_size = capacity(*layout);
        l.epoch = 3;
        l.sequence = 9;
        Bytes one(label_size + 1, 0);
        encode_label(l, 0, std::span<uint8_t>(one.data() + 1, label_size));
        write_seed("fuzz_label", std::string("valid-") + shape.name, one);
        Bytes four(1, 0x04);
        for (unsigned c = 0; c < label_copies; ++c) {
            Bytes copy(label_size);
            encode_label(l, c, copy);
            if (c == 1) {
                copy[100] ^= 0xff; // one damaged copy
            }
            append(four, copy);
        }
        write_seed("fuzz_label", std::string("copies-") + shape.name, four);
    }
    // A checksummed mirror with a scrub record and checksum error counts (compat scrub).
    {
        uint64_t member = 256 << 20;
        auto plan = plan_member(member, 512, member, 1 << 20, 0,
                                checksum_area_bytes(member, ChecksumPageFormat::bare));
        Label l;
        l.space_uuid = make_uuid();
        l.name = "seed-scrubbed";
        l.layout = LayoutKind::mirror;
        l.copies = 2;
        l.member_size = member;
        l.data_offset = plan->data_offset;
        l.data_size = plan->data_size;
        l.region_size = 1 << 20;
        l.incompat = feature::incompat::checksums;
        l.compat = feature::compat::bitmap | feature::compat::scrub;
        l.areas = {plan->bitmap, plan->checksums};
        for (unsigned i = 0; i < 2; ++i) {
            MemberEntry m;
            m.uuid = make_uuid();
            m.data_bytes = plan->data_size;
            m.url = "iscsi://192.0.2." + std::to_string(i + 1) + "/iqn.2026-11.org.example:m/0";
            l.members.push_back(m);
        }
        l.member_uuid = l.members[0].uuid;
        l.space_size = plan->data_size;
        l.scrub.state = ScrubState::paused;
        l.scrub.position = 96 << 20;
        l.scrub.started = 1765000000;
        l.scrub.checked = 20000;
        l.scrub.bad = 4;
        l.scrub.repaired = 3;
        l.scrub.unrepairable = 1;
        l.scrub.lost = {12 << 20};
        l.checksum_errors = {4, 0};
        Bytes one(label_size + 1, 0);
        encode_label(l, 0, std::span<uint8_t>(one.data() + 1, label_size));
        write_seed("fuzz_label", "valid-mirror2-scrubbed", one);
    }
    write_seed("fuzz_label", "xor-nothing", Bytes{0x01});
    write_seed("fuzz_label", "xor-scrubbed-nothing", Bytes{0x09});
    Bytes moved(1 + 5136, 0);
    moved[0] = 0x0b;
    moved[1 + 5120] = 0x01; // done -> paused with a finish time: refused, the checksum made right
    moved[1 + 5135] = 0x01; // the position past the layout
    write_seed("fuzz_label", "xor-scrub-record-checksum-fixed", moved);
    Bytes later(1 + 7001, 0);
    later[0] = 0x03;
    later[1 + 42] = 0x04;   // a compat bit no version knows yet (bit 18)
    later[1 + 7000] = 0x42; // and a byte of its fields: the label still reads
    write_seed("fuzz_label", "xor-unknown-compat-checksum-fixed", later);
    Bytes bumped(1 + 210, 0);
    bumped[0] = 0x03;
    bumped[1 + 146] = 0x07; // the member count, with the checksum made right
    write_seed("fuzz_label", "xor-members-checksum-fixed", bumped);
}

// ---- Thin pool metadata pages ------------------------------------------------------------------------

// A valid page of each type as it is (modes 0-3), the fuzzer's built-in pages unchanged (modes 4-7, XOR
// with nothing), and its real pool opened unchanged and with two sealed edits (modes 0x10, 0x18).
void thin_page_seeds() {
    using namespace ispace::volume::thin;
    const uint64_t pool_id = 0x0123456789abcdefULL; // as fuzz_thin_page.cpp expects
    const char* names[] = {"superblock", "device-table", "interior", "leaf"};
    for (uint8_t type = 0; type < 4; ++type) {
        Bytes seed(1 + page_size, 0);
        seed[0] = type;
        std::span<uint8_t> page(seed.data() + 1, page_size);
        if (type == 0) {
            Superblock sb;
            sb.sequence = 3;
            sb.pool_id = pool_id;
            sb.pool_clusters = 32;
            sb.metadata_pages = 64;
            sb.device_table_page = 9;
            encode_superblock(sb, 5, page);
        } else if (type == 1) {
            std::vector<DeviceRecord> d(1);
            d[0] = {1, 0, 0, 0, 64, 8, 1, "vol"};
            encode_device_table(d, 5, 3, pool_id, page);
        } else if (type == 2) {
            Interior node;
            node.children[1] = 8;
            encode_interior(node, 5, 3, pool_id, page);
        } else {
            Leaf leaf;
            leaf.entries[2].physical = 7;
            mask_set_range(leaf.entries[2].written, 0, 4);
            encode_leaf(leaf, 5, 3, pool_id, page);
        }
        write_seed("fuzz_thin_page", std::string("raw-") + names[type], seed);
        write_seed("fuzz_thin_page", std::string("xor-nothing-") + names[type], Bytes{uint8_t(0x04 | type)});
    }
    write_seed("fuzz_thin_page", "pool-unchanged", Bytes{0x10});
    write_seed("fuzz_thin_page", "pool-two-sealed-edits",
               Bytes{0x18, 0x05, 0x40, 0x00, 0x01, 0x09, 0x48, 0x00, 0x02});
}

// ---- Block checksum table pages -------------------------------------------------------------------------

// A sealed page alone in each format (mode 2, 3); the real mirror opened unchanged, with one damaged page on
// one member, the same page damaged on both (made again from the data), with its only in-sync member's page
// damaged, with a forged (resealed) entry, and in the bare format with a flipped entry. Edits: member,
// page, offset (2 bytes, little-endian), xor; as fuzz_checksum_page.cpp reads them.
void checksum_page_seeds() {
    using namespace ispace::volume;
    for (auto format : {ChecksumPageFormat::checked, ChecksumPageFormat::bare}) {
        Bytes seed(1 + 4 + checksum_page_bytes, 0);
        seed[0] = format == ChecksumPageFormat::bare ? 0x03 : 0x02;
        seed[1] = 1; // page 1
        for (uint64_t e = 0; e < 8; ++e) {
            set_checksum_page_entry(seed.data() + 5, e, uint32_t(0x1000 + e));
        }
        seal_checksum_page(format, 1, seed.data() + 5);
        write_seed("fuzz_checksum_page",
                   std::string("page-") + (format == ChecksumPageFormat::bare ? "bare" : "checked"), seed);
    }
    write_seed("fuzz_checksum_page", "mirror-unchanged", Bytes{0x00});
    write_seed("fuzz_checksum_page", "mirror-one-page-on-one-member",
               Bytes{0x00, 0x00, 0x00, 0x10, 0x01, 0x04});
    write_seed("fuzz_checksum_page", "mirror-one-page-on-both",
               Bytes{0x00, 0x00, 0x01, 0x00, 0x08, 0x20, 0x01, 0x01, 0x00, 0x02, 0x01});
    write_seed("fuzz_checksum_page", "mirror-only-in-sync-member", Bytes{0x04, 0x00, 0x00, 0x10, 0x01, 0x04});
    write_seed("fuzz_checksum_page", "mirror-forged-entry", Bytes{0x08, 0x00, 0x00, 0x10, 0x01, 0x04});
    write_seed("fuzz_checksum_page", "bare-mirror-flipped-entry", Bytes{0x01, 0x01, 0x00, 0x10, 0x01, 0x04});
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <corpus root>\n", argv[0]);
        return 2;
    }
    g_root = argv[1];
    std::vector<Conversation> conversations = login_seeds();
    libiscsi_seed();
    text_seeds(conversations);
    pdu_seeds(conversations);
    cdb_seeds();
    label_seeds();
    thin_page_seeds();
    checksum_page_seeds();
    isns_seeds();
    return 0;
}
