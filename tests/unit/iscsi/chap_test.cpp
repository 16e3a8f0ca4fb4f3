// CHAP (RFC 7143 §12.1.3): digests against known vectors, the secret policy, and a TargetLogin and an
// InitiatorLogin authenticating each other through encoded PDUs -- one-way, mutual, MD5 fallback, and
// every way an exchange must fail with 02/01. Hand-made requests reproduce what libiscsi 1.19 sends.
#include "iscsi/chap.hpp"
#include "iscsi/login.hpp"
#include "iscsi/pdu.hpp"

#include "common/log.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

using namespace ispace;
using namespace ispace::iscsi;

namespace {

constexpr const char* initiator_iqn = "iqn.2024-01.org.example:initiator";
constexpr const char* target_iqn = "iqn.2024-01.org.example:disk1";
constexpr Isid test_isid{0x40, 0x00, 0x01, 0x37, 0x00, 0x02};

constexpr const char* user = "alice";
constexpr const char* secret = "alice-secret-1234";
constexpr const char* target_user = "disk1-target";
constexpr const char* target_secret = "target-secret-5678";

std::vector<uint8_t> unhex(std::string_view hex) {
    auto r = parse_binary(std::string("0x") + std::string(hex), 4096);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : std::vector<uint8_t>{};
}

std::string lower_hex(std::span<const uint8_t> bytes) {
    std::string out;
    for (uint8_t b : bytes) {
        static constexpr char digits[] = "0123456789abcdef";
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

// Remembers what it created so tests can look at the target's authenticator after the login.
class ChapPolicy : public LoginPolicy {
public:
    ChapPolicy() {
        config.users = {{user, secret}};
        config.mutual = ChapCredentials{target_user, target_secret};
    }
    LoginTargetInfo start(const LoginIdentity&) override {
        LoginTargetInfo info;
        info.auth_methods = auth_methods;
        return info;
    }
    std::unique_ptr<Authenticator> authenticator(std::string_view method, const LoginIdentity&) override {
        if (method != auth_method_chap) {
            return nullptr;
        }
        auto a = std::make_unique<ChapTargetAuthenticator>(config);
        created = a.get();
        if (wrap) {
            return wrap(std::move(a));
        }
        return a;
    }
    LoginAdmission admit(const LoginIdentity&, const SessionParams&, const ConnectionParams&) override {
        LoginAdmission a;
        a.tsih = 0x42;
        return a;
    }

    ChapTargetConfig config;
    std::vector<std::string> auth_methods{"CHAP"};
    std::function<std::unique_ptr<Authenticator>(std::unique_ptr<Authenticator>)> wrap;
    ChapTargetAuthenticator* created = nullptr;
};

LoginRequest over_wire(const LoginRequestPdu& pdu) {
    Bhs bhs;
    pdu.header.encode(bhs);
    auto decoded = LoginRequest::decode(bhs);
    EXPECT_TRUE(decoded.ok());
    return decoded.ok() ? *decoded : pdu.header;
}

LoginResponse over_wire(const LoginResponsePdu& pdu) {
    Bhs bhs;
    pdu.header.encode(bhs);
    auto decoded = LoginResponse::decode(bhs);
    EXPECT_TRUE(decoded.ok());
    return decoded.ok() ? *decoded : pdu.header;
}

KeyValueList text_of(std::span<const uint8_t> data) {
    auto pairs = parse_text(data);
    EXPECT_TRUE(pairs.ok());
    return pairs.ok() ? *pairs : KeyValueList{};
}

ChapInitiatorConfig initiator_chap(bool mutual) {
    ChapInitiatorConfig c;
    c.credentials = {user, secret};
    if (mutual) {
        c.target = ChapCredentials{target_user, target_secret};
    }
    return c;
}

InitiatorLoginConfig initiator_config(ChapInitiatorConfig chap, std::vector<std::string> methods = {"CHAP"}) {
    InitiatorLoginConfig c;
    c.initiator_name = initiator_iqn;
    c.target_name = target_iqn;
    c.isid = test_isid;
    c.cid = 1;
    c.cmd_sn = 7;
    c.itt = 0x99;
    c.auth_methods = std::move(methods);
    c.make_authenticator = [chap](std::string_view) { return make_chap_initiator_authenticator(chap); };
    return c;
}

struct Transcript {
    std::vector<KeyValueList> requests;
    std::vector<KeyValueList> responses;
    std::vector<LoginResponse> response_headers;
};

Transcript converse(InitiatorLogin& initiator, TargetLogin& target) {
    Transcript t;
    auto first = initiator.start();
    EXPECT_TRUE(first.ok()) << (first.ok() ? "" : first.error().message);
    if (!first.ok()) {
        return t;
    }
    std::optional<LoginRequestPdu> request = std::move(*first);
    while (request && t.requests.size() < 20) {
        t.requests.push_back(text_of(request->data));
        LoginResponsePdu response = target.receive(over_wire(*request), request->data);
        t.responses.push_back(text_of(response.data));
        t.response_headers.push_back(response.header);
        request = initiator.receive(over_wire(response), response.data);
    }
    return t;
}

// The value of `key` in the first message of `list` that has it.
std::string find_in(const std::vector<KeyValueList>& list, std::string_view key) {
    for (const auto& keys : list) {
        if (const std::string* v = find_value(keys, key)) {
            return *v;
        }
    }
    return {};
}

LoginRequestPdu request(bool transit, LoginStage nsg, const KeyValueList& keys,
                        LoginStage csg = LoginStage::security) {
    LoginRequestPdu pdu;
    pdu.header.csg = csg;
    pdu.header.transit = transit;
    pdu.header.nsg = transit ? nsg : LoginStage::security;
    pdu.header.isid = test_isid;
    pdu.header.itt = 5;
    pdu.header.cid = 1;
    pdu.header.cmd_sn = 10;
    pdu.data = encode_text(keys);
    pdu.header.data_segment_length = uint32_t(pdu.data.size());
    return pdu;
}

LoginResponsePdu send(TargetLogin& target, const LoginRequestPdu& pdu) {
    return target.receive(over_wire(pdu), pdu.data);
}

// Drives a target through AuthMethod and CHAP_A by hand, as libiscsi does; returns the challenge keys.
struct Challenge {
    ChapAlgorithm algorithm = ChapAlgorithm::md5;
    uint8_t id = 0;
    std::vector<uint8_t> challenge;
};

Challenge start_chap(TargetLogin& target, const std::string& offer = "5") {
    auto r = send(target, request(true, LoginStage::operational,
                                  {{"InitiatorName", initiator_iqn},
                                   {"TargetName", target_iqn},
                                   {"SessionType", "Normal"},
                                   {"AuthMethod", "CHAP,None"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_EQ(*find_value(text_of(r.data), "AuthMethod"), "CHAP");
    EXPECT_FALSE(r.header.transit);
    r = send(target, request(false, LoginStage::security, {{"CHAP_A", offer}}));
    EXPECT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    KeyValueList keys = text_of(r.data);
    Challenge c;
    const std::string* a = find_value(keys, "CHAP_A");
    const std::string* i = find_value(keys, "CHAP_I");
    const std::string* ch = find_value(keys, "CHAP_C");
    EXPECT_TRUE(a && i && ch);
    if (a && i && ch) {
        c.algorithm = ChapAlgorithm(std::stoi(*a));
        c.id = uint8_t(std::stoi(*i)); // decimal, as libiscsi's atoi() needs
        c.challenge = *parse_binary(*ch, 1024);
    }
    return c;
}

} // namespace

// ---- Digests, secret policy, configuration ----

TEST(Chap, ResponseMatchesIndependentlyComputedVectors) {
    // id 0x2a, secret "secret-of-12", challenge 00..0f; the expected values come from
    //   printf '\x2asecret-of-12\x00\x01...\x0f' | openssl dgst -md5 / -sha256
    // (and agree with Python's hashlib), i.e. H(id || secret || challenge) as RFC 1994 §4.1 defines.
    std::vector<uint8_t> challenge(16);
    for (size_t i = 0; i < challenge.size(); ++i) {
        challenge[i] = uint8_t(i);
    }
    EXPECT_EQ(lower_hex(chap_response(ChapAlgorithm::md5, 0x2a, "secret-of-12", challenge)),
              "479ff0281a36a84b4c91706547cb2667");
    EXPECT_EQ(lower_hex(chap_response(ChapAlgorithm::sha256, 0x2a, "secret-of-12", challenge)),
              "2fd87d5eacba631a1c1c10f0dcefb8024713e336f8aabb55baa9491dff56cc79");
    EXPECT_EQ(chap_digest_size(ChapAlgorithm::md5), 16u);
    EXPECT_EQ(chap_digest_size(ChapAlgorithm::sha256), 32u);
}

TEST(Chap, SecretPolicy) {
    EXPECT_FALSE(check_chap_secret("").ok());
    EXPECT_FALSE(check_chap_secret("elevenbytes").ok());
    EXPECT_TRUE(check_chap_secret("twelve-bytes").ok());
    EXPECT_TRUE(check_chap_secret(std::string(255, 's')).ok());
    EXPECT_FALSE(check_chap_secret(std::string(256, 's')).ok());
    auto r = check_chap_secret("short-pw");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().message.find("short-pw"), std::string::npos);
    EXPECT_NE(r.error().message.find("12"), std::string::npos);
}

TEST(Chap, ParseCredentials) {
    auto c = parse_chap_credentials("alice:pass:with:colons");
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(c->user, "alice");
    EXPECT_EQ(c->secret, "pass:with:colons");

    for (std::string_view bad : {"no-colon-secret-here", "alice:tooshort", ":no-user-but-long-secret"}) {
        auto r = parse_chap_credentials(bad);
        ASSERT_FALSE(r.ok()) << bad;
        EXPECT_EQ(r.error().code, EINVAL);
        std::string_view secret_part =
            bad.substr(bad.find(':') == std::string_view::npos ? 0 : bad.find(':') + 1);
        EXPECT_EQ(r.error().message.find(secret_part), std::string::npos) << r.error().message;
    }
    EXPECT_FALSE(parse_chap_credentials(std::string(256, 'u') + ":long-enough-secret").ok());
    EXPECT_FALSE(parse_chap_credentials("bad\tuser:long-enough-secret").ok());
}

TEST(Chap, ParseAlgorithm) {
    EXPECT_EQ(*parse_chap_algorithm("md5"), ChapAlgorithm::md5);
    EXPECT_EQ(*parse_chap_algorithm("SHA256"), ChapAlgorithm::sha256);
    EXPECT_EQ(*parse_chap_algorithm("sha-256"), ChapAlgorithm::sha256);
    EXPECT_EQ(*parse_chap_algorithm("7"), ChapAlgorithm::sha256);
    EXPECT_FALSE(parse_chap_algorithm("sha1").ok());
}

TEST(Chap, ConfigValidation) {
    ChapTargetConfig t;
    EXPECT_FALSE(validate(t).ok()); // nobody may log in
    t.users = {{user, secret}};
    EXPECT_TRUE(validate(t).ok());
    t.mutual = ChapCredentials{target_user, secret};
    auto r = validate(t);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("must differ"), std::string::npos);
    EXPECT_EQ(r.error().message.find(secret), std::string::npos);
    t.mutual = ChapCredentials{target_user, target_secret};
    EXPECT_TRUE(validate(t).ok());
    t.algorithms = {};
    EXPECT_FALSE(validate(t).ok());
    t.algorithms = {ChapAlgorithm::md5, ChapAlgorithm::md5};
    EXPECT_FALSE(validate(t).ok());
    t.algorithms = {ChapAlgorithm::md5};
    t.challenge_length = 8;
    EXPECT_FALSE(validate(t).ok());
    t.challenge_length = 0;
    t.users.push_back({"bob", "short"});
    EXPECT_FALSE(validate(t).ok());
    t.users.pop_back();
    t.mutual.reset();
    t.require_mutual = true;
    EXPECT_FALSE(validate(t).ok());

    ChapInitiatorConfig i = initiator_chap(true);
    EXPECT_TRUE(validate(i).ok());
    i.target->secret = secret;
    EXPECT_FALSE(validate(i).ok());
}

// ---- Initiator and target machines through CHAP ----

TEST(ChapLogin, OneWayPrefersSha256) {
    ChapPolicy policy;
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(false)));
    Transcript t = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(find_in(t.requests, "CHAP_A"), "7,5");
    EXPECT_EQ(find_in(t.responses, "CHAP_A"), "7");
    // A SHA-256 challenge is 32 bytes; its response is 32 bytes too. Both in "0x" hex.
    std::string c = find_in(t.responses, "CHAP_C");
    EXPECT_EQ(c.substr(0, 2), "0x");
    EXPECT_EQ(c.size(), 2u + 64);
    EXPECT_EQ(find_in(t.requests, "CHAP_R").size(), 2u + 64);
    EXPECT_EQ(find_in(t.requests, "CHAP_N"), user);
    EXPECT_EQ(find_in(t.responses, "CHAP_N"), ""); // not mutual: the target does not answer
    ASSERT_NE(policy.created, nullptr);
    EXPECT_EQ(policy.created->algorithm(), ChapAlgorithm::sha256);
    EXPECT_EQ(policy.created->user(), user);
    EXPECT_FALSE(policy.created->mutual_done());
}

TEST(ChapLogin, Md5OnlyInitiatorGetsMd5) {
    ChapPolicy policy;
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.algorithms = {ChapAlgorithm::md5};
    InitiatorLogin initiator(initiator_config(chap));
    Transcript t = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(find_in(t.requests, "CHAP_A"), "5");
    EXPECT_EQ(find_in(t.responses, "CHAP_A"), "5");
    EXPECT_EQ(find_in(t.responses, "CHAP_C").size(), 2u + 32); // 16-byte challenge for MD5
    EXPECT_EQ(policy.created->algorithm(), ChapAlgorithm::md5);
}

TEST(ChapLogin, TargetPreferenceWinsOverInitiatorOrder) {
    ChapPolicy policy;
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.algorithms = {ChapAlgorithm::md5, ChapAlgorithm::sha256};
    InitiatorLogin initiator(initiator_config(chap));
    Transcript t = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    EXPECT_EQ(find_in(t.requests, "CHAP_A"), "5,7");
    EXPECT_EQ(find_in(t.responses, "CHAP_A"), "7");

    // A target configured for MD5 first picks MD5 from the same offer.
    ChapPolicy md5_first;
    md5_first.config.algorithms = {ChapAlgorithm::md5, ChapAlgorithm::sha256};
    TargetLogin target2(md5_first);
    InitiatorLogin initiator2(initiator_config(initiator_chap(false)));
    t = converse(initiator2, target2);
    ASSERT_EQ(target2.state(), LoginState::complete) << target2.reason();
    EXPECT_EQ(find_in(t.responses, "CHAP_A"), "5");
}

TEST(ChapLogin, WrongSecretIsAuthenticationFailure) {
    ChapPolicy policy;
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.credentials.secret = "not-alices-secret";
    InitiatorLogin initiator(initiator_config(chap));
    Transcript t = converse(initiator, target);
    EXPECT_EQ(target.state(), LoginState::failed);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_EQ(t.response_headers.back().status(), LoginStatus::authentication_failure);
    EXPECT_TRUE(t.responses.back().empty()); // a login reject carries no keys
    EXPECT_EQ(initiator.state(), LoginState::failed);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
    // The log line names who and why, not the secret or the response.
    EXPECT_NE(target.reason().find("'alice'"), std::string::npos) << target.reason();
    EXPECT_NE(target.reason().find("does not match"), std::string::npos) << target.reason();
    EXPECT_EQ(target.reason().find("not-alices-secret"), std::string::npos);
    EXPECT_EQ(target.reason().find(find_in(t.requests, "CHAP_R")), std::string::npos);
}

TEST(ChapLogin, UnknownUserIsAuthenticationFailure) {
    ChapPolicy policy;
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.credentials.user = "mallory";
    InitiatorLogin initiator(initiator_config(chap));
    converse(initiator, target);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_NE(target.reason().find("unknown user 'mallory'"), std::string::npos) << target.reason();
}

TEST(ChapLogin, LookupServesSeveralUsers) {
    ChapPolicy policy;
    std::map<std::string, std::string, std::less<>> users{{"alice", secret}, {"bob", "bobs-secret-9876"}};
    policy.config.users.clear();
    policy.config.lookup = [&users](std::string_view name) -> std::optional<std::string> {
        auto it = users.find(name);
        return it == users.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
    for (auto [name, pw] : users) {
        TargetLogin target(policy);
        ChapInitiatorConfig chap = initiator_chap(true);
        chap.credentials = {name, pw};
        InitiatorLogin initiator(initiator_config(chap));
        converse(initiator, target);
        ASSERT_EQ(target.state(), LoginState::complete) << name << ": " << target.reason();
        ASSERT_EQ(initiator.state(), LoginState::complete) << name << ": " << initiator.reason();
        EXPECT_EQ(policy.created->user(), name);
        EXPECT_TRUE(policy.created->mutual_done());
    }
}

TEST(ChapLogin, MutualSucceeds) {
    ChapPolicy policy;
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    Transcript t = converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_TRUE(policy.created->mutual_done());
    // Requests: AuthMethod, CHAP_A, CHAP_N/R/I/C with T=1 (answered with T=1 and the target's proof), then
    // the operational stage.
    ASSERT_GE(t.response_headers.size(), 3u);
    EXPECT_TRUE(t.response_headers[2].transit);
    EXPECT_EQ(*find_value(t.responses[2], "CHAP_N"), target_user);
    EXPECT_EQ(find_value(t.responses[2], "CHAP_R")->size(), 2u + 64);
    EXPECT_EQ(find_in(t.requests, "CHAP_C").size(), 2u + 64); // our challenge: 32 bytes for SHA-256
}

TEST(ChapLogin, MutualWithMd5) {
    ChapPolicy policy;
    policy.config.algorithms = {ChapAlgorithm::md5};
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
}

TEST(ChapLogin, WrongTargetSecretFailsTheInitiator) {
    ChapPolicy policy;
    policy.config.mutual = ChapCredentials{target_user, "an-impostor-secret"};
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    converse(initiator, target);
    EXPECT_EQ(initiator.state(), LoginState::failed);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
    EXPECT_NE(initiator.reason().find("does not match"), std::string::npos) << initiator.reason();
    EXPECT_NE(target.state(), LoginState::complete);
}

TEST(ChapLogin, WrongTargetNameFailsTheInitiator) {
    ChapPolicy policy;
    policy.config.mutual = ChapCredentials{"someone-else", target_secret};
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    converse(initiator, target);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
    EXPECT_NE(initiator.reason().find("someone-else"), std::string::npos) << initiator.reason();
}

// A target that ends the security stage without proving itself must not get past an initiator that
// asked for mutual CHAP.
TEST(ChapLogin, TargetSkippingMutualProofFailsTheInitiator) {
    class DropProof : public Authenticator {
    public:
        explicit DropProof(std::unique_ptr<Authenticator> inner) : _inner(std::move(inner)) {}
        std::string_view method() const override { return _inner->method(); }
        bool owns_key(std::string_view key) const override { return _inner->owns_key(key); }
        AuthResult step(const KeyValueList& in, KeyValueList& out) override {
            KeyValueList mine;
            AuthResult r = _inner->step(in, mine);
            for (auto& kv : mine) {
                if (kv.key != "CHAP_N" && kv.key != "CHAP_R") {
                    out.push_back(std::move(kv));
                }
            }
            return r;
        }

    private:
        std::unique_ptr<Authenticator> _inner;
    };
    ChapPolicy policy;
    policy.wrap = [](std::unique_ptr<Authenticator> a) { return std::make_unique<DropProof>(std::move(a)); };
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    converse(initiator, target);
    EXPECT_EQ(initiator.state(), LoginState::failed);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
}

TEST(ChapLogin, MutualWithoutTargetCredentialsIsRefused) {
    ChapPolicy policy;
    policy.config.mutual.reset();
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(true)));
    Transcript t = converse(initiator, target);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_NE(target.reason().find("no mutual CHAP credentials"), std::string::npos) << target.reason();
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);
}

TEST(ChapLogin, MutualWithEqualSecretsIsRefused) {
    ChapPolicy policy;
    // Through a lookup, so the configuration check cannot catch it beforehand.
    policy.config.users.clear();
    policy.config.lookup = [](std::string_view) { return std::optional<std::string>(target_secret); };
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.credentials.secret = target_secret;
    Challenge c = start_chap(target);
    auto r = send(
        target, request(true, LoginStage::operational,
                        {{"CHAP_N", user},
                         {"CHAP_R", format_hex(chap_response(c.algorithm, c.id, target_secret, c.challenge))},
                         {"CHAP_I", "3"},
                         {"CHAP_C", "0x00112233445566778899AABBCCDDEEFF"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    EXPECT_EQ(find_value(text_of(r.data), "CHAP_R"), nullptr);
    EXPECT_NE(target.reason().find("must differ"), std::string::npos) << target.reason();
}

TEST(ChapLogin, RequireMutualRefusesOneWay) {
    ChapPolicy policy;
    policy.config.require_mutual = true;
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(false)));
    converse(initiator, target);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_NE(target.reason().find("requires"), std::string::npos) << target.reason();
}

TEST(ChapLogin, NoCommonAlgorithmIsAuthenticationFailure) {
    ChapPolicy policy;
    policy.config.algorithms = {ChapAlgorithm::sha256};
    TargetLogin target(policy);
    ChapInitiatorConfig chap = initiator_chap(false);
    chap.algorithms = {ChapAlgorithm::md5};
    InitiatorLogin initiator(initiator_config(chap));
    converse(initiator, target);
    EXPECT_EQ(target.status(), LoginStatus::authentication_failure);
    EXPECT_EQ(initiator.status(), LoginStatus::authentication_failure);

    // SHA-1 (6) and nonsense only.
    TargetLogin target2(policy);
    send(target2,
         request(false, LoginStage::security,
                 {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "CHAP"}}));
    auto r =
        send(target2, request(false, LoginStage::security, {{"CHAP_A", "6,banana,0x7fffffffffffffffff"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    EXPECT_NE(target2.reason().find("accepts 7 (SHA-256)"), std::string::npos) << target2.reason();
}

TEST(ChapLogin, ChapAlgorithmsMayBeWrittenInHex) {
    ChapPolicy policy;
    TargetLogin target(policy);
    Challenge c = start_chap(target, "0x07");
    EXPECT_EQ(c.algorithm, ChapAlgorithm::sha256);
}

TEST(ChapLogin, MissingNameOrResponseIsAuthenticationFailure) {
    ChapPolicy policy;
    for (const char* missing : {"CHAP_N", "CHAP_R"}) {
        TargetLogin target(policy);
        Challenge c = start_chap(target);
        KeyValueList keys{{"CHAP_N", user},
                          {"CHAP_R", format_hex(chap_response(c.algorithm, c.id, secret, c.challenge))}};
        std::erase_if(keys, [&](const KeyValue& kv) { return kv.key == missing; });
        auto r = send(target, request(true, LoginStage::operational, keys));
        EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure) << missing;
        EXPECT_NE(target.reason().find(missing), std::string::npos) << target.reason();
    }
    // Asking to leave the stage with no CHAP keys at all after the challenge keeps the login in the
    // security stage (T=0): nothing is authenticated.
    TargetLogin target(policy);
    start_chap(target);
    auto r = send(target, request(true, LoginStage::operational, {}));
    EXPECT_FALSE(r.header.transit);
    EXPECT_EQ(target.stage(), LoginStage::security);
}

TEST(ChapLogin, KeysOutOfOrderAreAuthenticationFailure) {
    ChapPolicy policy;
    TargetLogin target(policy);
    send(target,
         request(false, LoginStage::security,
                 {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "CHAP"}}));
    auto r = send(target, request(false, LoginStage::security, {{"CHAP_N", user}, {"CHAP_R", "0x00"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);

    TargetLogin target2(policy);
    start_chap(target2);
    r = send(target2, request(false, LoginStage::security, {{"CHAP_A", "5"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
}

TEST(ChapLogin, MalformedAndOversizedResponses) {
    ChapPolicy policy;
    const std::vector<std::string> bad_responses{
        "0x" + std::string(200, 'A'), // 100 bytes: over the 64-byte bound
        "0x" + std::string(40, 'A'),  // 20 bytes: the wrong size for either digest
        "12345678901234567890",       // decimal is not a binary value
        "0xZZ",                       // not hex
        "0b!!!!",                     // not base64
        "0x",                         // no digits
    };
    for (const auto& bad : bad_responses) {
        TargetLogin target(policy);
        start_chap(target);
        auto r = send(target, request(true, LoginStage::operational, {{"CHAP_N", user}, {"CHAP_R", bad}}));
        EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure) << bad;
        EXPECT_EQ(target.reason().find(bad), std::string::npos) << target.reason();
    }
    // CHAP_R longer than the text layer's 8192-byte value bound never reaches the authenticator.
    TargetLogin target(policy);
    start_chap(target);
    auto r = send(target, request(true, LoginStage::operational,
                                  {{"CHAP_N", user}, {"CHAP_R", "0x" + std::string(8200, 'A')}}));
    EXPECT_EQ(status_class(r.header.status()), LoginStatusClass::initiator_error);
    // A mutual challenge over 1024 bytes.
    TargetLogin target2(policy);
    Challenge c = start_chap(target2);
    r = send(target2, request(true, LoginStage::operational,
                              {{"CHAP_N", user},
                               {"CHAP_R", format_hex(chap_response(c.algorithm, c.id, secret, c.challenge))},
                               {"CHAP_I", "1"},
                               {"CHAP_C", "0x" + std::string(2050, 'B')}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    // CHAP_I out of range, and CHAP_I without CHAP_C.
    for (KeyValueList extra :
         {KeyValueList{{"CHAP_I", "256"}, {"CHAP_C", "0x0102"}}, KeyValueList{{"CHAP_I", "1"}}}) {
        TargetLogin t3(policy);
        c = start_chap(t3);
        KeyValueList keys{{"CHAP_N", user},
                          {"CHAP_R", format_hex(chap_response(c.algorithm, c.id, secret, c.challenge))}};
        keys.insert(keys.end(), extra.begin(), extra.end());
        r = send(t3, request(true, LoginStage::operational, keys));
        EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure) << t3.reason();
    }
}

TEST(ChapLogin, Base64ResponseIsAccepted) {
    ChapPolicy policy;
    TargetLogin target(policy);
    Challenge c = start_chap(target);
    auto r = send(
        target, request(true, LoginStage::operational,
                        {{"CHAP_N", user},
                         {"CHAP_R", format_base64(chap_response(c.algorithm, c.id, secret, c.challenge))}}));
    EXPECT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_TRUE(r.header.transit);
}

TEST(ChapLogin, ReflectedChallengeIsRefused) {
    ChapPolicy policy;
    TargetLogin target(policy);
    Challenge c = start_chap(target);
    std::string response = format_hex(chap_response(c.algorithm, c.id, secret, c.challenge));
    auto r = send(
        target,
        request(
            true, LoginStage::operational,
            {{"CHAP_N", user}, {"CHAP_R", response}, {"CHAP_I", "9"}, {"CHAP_C", format_hex(c.challenge)}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    EXPECT_NE(target.reason().find("reflection"), std::string::npos) << target.reason();
    EXPECT_EQ(find_value(text_of(r.data), "CHAP_R"), nullptr);

    // The challenge of connection A sent back on connection B is caught as well.
    TargetLogin a(policy);
    Challenge ca = start_chap(a);
    EXPECT_TRUE(chap_challenge_recently_issued(ca.challenge, Role::target));
    EXPECT_FALSE(chap_challenge_recently_issued(ca.challenge, Role::initiator));
    TargetLogin b(policy);
    Challenge cb = start_chap(b);
    EXPECT_NE(ca.challenge, cb.challenge);
    r = send(b, request(true, LoginStage::operational,
                        {{"CHAP_N", user},
                         {"CHAP_R", format_hex(chap_response(cb.algorithm, cb.id, secret, cb.challenge))},
                         {"CHAP_I", "9"},
                         {"CHAP_C", format_base64(ca.challenge)}}));
    EXPECT_EQ(r.header.status(), LoginStatus::authentication_failure);
    EXPECT_NE(b.reason().find("reflection"), std::string::npos) << b.reason();
}

TEST(ChapLogin, InitiatorRefusesATargetReflectingItsChallenge) {
    // Initiator A sends its mutual challenge; a malicious target replays it as its own challenge to B.
    ChapInitiatorAuthenticator a(initiator_chap(true));
    KeyValueList out;
    ASSERT_EQ(a.step({}, out).status, AuthStatus::in_progress);
    EXPECT_EQ(*find_value(out, "CHAP_A"), "7,5");
    out.clear();
    AuthResult r = a.step({{"CHAP_A", "7"}, {"CHAP_I", "1"}, {"CHAP_C", "0x" + std::string(64, '5')}}, out);
    ASSERT_EQ(r.status, AuthStatus::awaiting_proof) << r.message;
    ASSERT_NE(find_value(out, "CHAP_C"), nullptr);
    std::string ours = *find_value(out, "CHAP_C");

    ChapInitiatorAuthenticator b(initiator_chap(false));
    out.clear();
    b.step({}, out);
    out.clear();
    r = b.step({{"CHAP_A", "7"}, {"CHAP_I", "2"}, {"CHAP_C", ours}}, out);
    EXPECT_EQ(r.status, AuthStatus::failed);
    EXPECT_NE(r.message.find("reflection"), std::string::npos) << r.message;
    EXPECT_TRUE(out.empty()); // no response computed for it
}

TEST(ChapLogin, InitiatorRefusesBadChallenges) {
    const std::vector<KeyValueList> bad{
        {{"CHAP_A", "6"}, {"CHAP_I", "1"}, {"CHAP_C", "0x0102"}},                      // not offered
        {{"CHAP_A", "Reject"}},                                                        // no common algorithm
        {{"CHAP_A", "7"}, {"CHAP_C", "0x0102"}},                                       // no CHAP_I
        {{"CHAP_A", "7"}, {"CHAP_I", "300"}, {"CHAP_C", "0x0102"}},                    // CHAP_I out of range
        {{"CHAP_A", "7"}, {"CHAP_I", "1"}, {"CHAP_C", "258"}},                         // decimal challenge
        {{"CHAP_A", "7"}, {"CHAP_I", "1"}, {"CHAP_C", "0x" + std::string(2050, '1')}}, // > 1024 bytes
        {{"CHAP_A", "7"}, {"CHAP_I", "1"}, {"CHAP_C", "0x01"}, {"CHAP_R", "0x01"}},    // unexpected key
    };
    for (const auto& keys : bad) {
        ChapInitiatorAuthenticator a(initiator_chap(false));
        KeyValueList out;
        a.step({}, out);
        out.clear();
        EXPECT_EQ(a.step(keys, out).status, AuthStatus::failed) << keys.front().value;
    }
}

TEST(ChapLogin, DiscoverySessionWithMutualChap) {
    ChapPolicy policy;
    TargetLogin target(policy);
    InitiatorLoginConfig ic = initiator_config(initiator_chap(true));
    ic.session_type = SessionType::discovery;
    ic.target_name.clear();
    InitiatorLogin initiator(ic);
    converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    ASSERT_EQ(initiator.state(), LoginState::complete) << initiator.reason();
    EXPECT_EQ(target.session_params().session_type, SessionType::discovery);
    EXPECT_TRUE(policy.created->mutual_done());
}

TEST(ChapLogin, ChapOptionalWithNoneAllowed) {
    ChapPolicy policy;
    policy.auth_methods = {"CHAP", "None"};
    // An initiator offering CHAP first authenticates.
    TargetLogin target(policy);
    InitiatorLogin initiator(initiator_config(initiator_chap(false), {"CHAP", "None"}));
    converse(initiator, target);
    ASSERT_EQ(target.state(), LoginState::complete) << target.reason();
    EXPECT_NE(policy.created, nullptr);
    // One without CHAP gets in without it: that is what listing None means.
    policy.created = nullptr;
    TargetLogin target2(policy);
    InitiatorLoginConfig ic = initiator_config(initiator_chap(false), {"None"});
    InitiatorLogin initiator2(ic);
    converse(initiator2, target2);
    ASSERT_EQ(target2.state(), LoginState::complete) << target2.reason();
    EXPECT_EQ(policy.created, nullptr);
}

// Exactly the PDUs libiscsi 1.19 sends (lib/login.c): InitiatorName, TargetName, SessionType and
// AuthMethod=CHAP,None with T=1 (operational keys only once in the operational stage); CHAP_A=5 alone
// with T=0; CHAP_N, CHAP_R (upper-case hex) and, for mutual CHAP, CHAP_I (decimal) and a 32-byte
// CHAP_C, with T=1. libiscsi reads our CHAP_I with atoi(), needs CHAP_C to start with "0x", and
// requires CHAP_N and a "0x" CHAP_R of exactly 32 hex digits in the response with T=1.
TEST(ChapLogin, LibiscsiShapedExchange) {
    ChapPolicy policy;
    TargetLogin target(policy);
    auto r = send(target, request(true, LoginStage::operational,
                                  {{"InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq"},
                                   {"TargetName", target_iqn},
                                   {"SessionType", "Normal"},
                                   {"AuthMethod", "CHAP,None"}}));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    KeyValueList keys = text_of(r.data);
    EXPECT_EQ(*find_value(keys, "AuthMethod"), "CHAP");
    EXPECT_FALSE(r.header.transit);

    r = send(target, request(false, LoginStage::security, {{"CHAP_A", "5"}}));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    keys = text_of(r.data);
    ASSERT_EQ(*find_value(keys, "CHAP_A"), "5");
    const std::string& id_text = *find_value(keys, "CHAP_I");
    EXPECT_TRUE(std::all_of(id_text.begin(), id_text.end(), [](char ch) { return ch >= '0' && ch <= '9'; }));
    const std::string& c_text = *find_value(keys, "CHAP_C");
    ASSERT_EQ(c_text.substr(0, 2), "0x");
    EXPECT_EQ(c_text.size() % 2, 0u);   // libiscsi decodes digit pairs
    EXPECT_LE(c_text.size() - 2, 255u); // its chap_c buffer holds MAX_STRING_SIZE characters
    uint8_t id = uint8_t(std::stoi(id_text));
    std::vector<uint8_t> challenge = unhex(c_text.substr(2));

    std::vector<uint8_t> mutual_challenge(32);
    for (size_t i = 0; i < mutual_challenge.size(); ++i) {
        mutual_challenge[i] = uint8_t(i * 7 + 1);
    }
    r = send(target,
             request(true, LoginStage::operational,
                     {{"CHAP_N", user},
                      {"CHAP_R", format_hex(chap_response(ChapAlgorithm::md5, id, secret, challenge))},
                      {"CHAP_I", "1"},
                      {"CHAP_C", format_hex(mutual_challenge)}}));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_TRUE(r.header.transit);
    EXPECT_EQ(r.header.csg, LoginStage::security);
    EXPECT_EQ(r.header.nsg, LoginStage::operational);
    keys = text_of(r.data);
    ASSERT_NE(find_value(keys, "CHAP_N"), nullptr);
    EXPECT_EQ(*find_value(keys, "CHAP_N"), target_user);
    const std::string& proof = *find_value(keys, "CHAP_R");
    ASSERT_EQ(proof.size(), 2u + 32);
    EXPECT_EQ(proof, format_hex(chap_response(ChapAlgorithm::md5, 1, target_secret, mutual_challenge)));

    r = send(target, request(true, LoginStage::full_feature,
                             {{"HeaderDigest", "None,CRC32C"},
                              {"DataDigest", "None"},
                              {"InitialR2T", "Yes"},
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
                              {"DataSequenceInOrder", "Yes"}},
                             LoginStage::operational));
    ASSERT_EQ(r.header.status(), LoginStatus::success) << target.reason();
    EXPECT_EQ(target.state(), LoginState::complete) << target.reason();
}

TEST(ChapLogin, DeterministicRandomSourceShapesTheChallenge) {
    ChapPolicy policy;
    policy.config.random = [](std::span<uint8_t> out) {
        for (size_t i = 0; i < out.size(); ++i) {
            out[i] = uint8_t(0xa0 + i);
        }
        return true;
    };
    TargetLogin target(policy);
    Challenge c = start_chap(target, "7,5");
    EXPECT_EQ(c.id, 0xa0);
    ASSERT_EQ(c.challenge.size(), 32u);
    EXPECT_EQ(c.challenge[31], 0xa0 + 31);
    // A random source that fails is a target error, not an authentication failure.
    policy.config.random = [](std::span<uint8_t>) { return false; };
    TargetLogin target2(policy);
    send(target2,
         request(false, LoginStage::security,
                 {{"InitiatorName", initiator_iqn}, {"TargetName", target_iqn}, {"AuthMethod", "CHAP"}}));
    auto r = send(target2, request(false, LoginStage::security, {{"CHAP_A", "5"}}));
    EXPECT_EQ(r.header.status(), LoginStatus::target_error);
}

TEST(ChapLogin, ChallengesAreNotReused) {
    std::set<std::vector<uint8_t>> seen;
    ChapPolicy policy;
    for (int i = 0; i < 200; ++i) {
        TargetLogin target(policy);
        Challenge c = start_chap(target, i % 2 ? "5" : "7");
        EXPECT_TRUE(seen.insert(c.challenge).second);
    }
}

TEST(ChapLogin, NothingSecretReachesTheLog) {
    LogLevel saved = log_level();
    set_log_level(LogLevel::trace);
    testing::internal::CaptureStderr();
    std::string reasons;
    {
        ChapPolicy policy;
        TargetLogin target(policy);
        InitiatorLogin initiator(initiator_config(initiator_chap(true)));
        converse(initiator, target);
        reasons += target.reason() + initiator.reason();
    }
    {
        ChapPolicy policy;
        policy.config.mutual = ChapCredentials{target_user, "impostor-secret-00"};
        TargetLogin target(policy);
        ChapInitiatorConfig chap = initiator_chap(true);
        InitiatorLogin initiator(initiator_config(chap));
        converse(initiator, target);
        reasons += target.reason() + initiator.reason();
        TargetLogin target2(policy);
        chap.credentials.secret = "wrong-secret-abcdef";
        InitiatorLogin initiator2(initiator_config(chap));
        converse(initiator2, target2);
        reasons += target2.reason() + initiator2.reason();
    }
    std::string logged = testing::internal::GetCapturedStderr();
    set_log_level(saved);
    for (const char* s : {secret, target_secret, "impostor-secret-00", "wrong-secret-abcdef"}) {
        EXPECT_EQ(logged.find(s), std::string::npos) << s;
        EXPECT_EQ(reasons.find(s), std::string::npos) << s;
    }
    EXPECT_NE(reasons.find("does not match"), std::string::npos) << reasons;
}
