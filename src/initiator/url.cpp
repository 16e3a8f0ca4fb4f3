// iscsi:// URLs: iscsi://[user%secret@]HOST[:PORT][/IQN[/LUN]][?key=value&...]
#include "ispace/initiator.hpp"

#include "common/bytes.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>

namespace ispace::initiator {

namespace {

// Every message quotes the URL through redact_url(): a typo next to a secret must not print it.
Error url_error(std::string_view url, std::string what) {
    return make_error(fmt::format("URL '{}': {} (expected iscsi://[user%secret@]HOST[:PORT]/IQN/LUN)",
                                  redact_url(url), what),
                      EINVAL);
}

// A secret the URL leaves out (iscsi://alice@host/..., target_user=bob without target_password) comes
// from the environment, as libiscsi does with LIBISCSI_CHAP_PASSWORD: neither `ps` nor a shell history
// shows it.
std::optional<std::string> secret_from_environment(const char* variable) {
    const char* value = std::getenv(variable);
    if (value == nullptr || *value == '\0') {
        return std::nullopt;
    }
    return std::string(value);
}

// %XX escapes, so a secret may contain '@', '%', '/' or ':'.
std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        int hi = i + 1 < s.size() ? hex_digit_value(s[i + 1]) : -1;
        int lo = i + 2 < s.size() ? hex_digit_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            return std::nullopt;
        }
        out += char(hi << 4 | lo);
        i += 2;
    }
    return out;
}

std::optional<DigestMode> parse_digest(std::string_view v) {
    if (v == "crc32c" || v == "CRC32C") {
        return DigestMode::crc32c;
    }
    if (v == "CRC32C,None" || v == "crc32c,none") {
        return DigestMode::crc32c_or_none;
    }
    if (v == "none" || v == "None" || v == "None,CRC32C" || v == "none,crc32c") {
        return DigestMode::none;
    }
    return std::nullopt;
}

} // namespace

std::string Url::portal() const {
    if (host.find(':') != std::string::npos) {
        return fmt::format("[{}]:{}", host, port);
    }
    return fmt::format("{}:{}", host, port);
}

Result<Url> parse_url(std::string_view text) {
    constexpr std::string_view scheme = "iscsi://";
    if (text.substr(0, scheme.size()) != scheme) {
        return url_error(text, "it does not start with iscsi://");
    }
    Url url;
    std::string_view rest = text.substr(scheme.size());
    std::string_view query;
    if (size_t q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    std::string_view authority = rest.substr(0, rest.find('/'));
    std::string_view path =
        authority.size() < rest.size() ? rest.substr(authority.size() + 1) : std::string_view{};

    // libiscsi's form: user%secret@ (a '%' separates user and secret; further %XX in the secret are escapes).
    if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
        std::string_view userinfo = authority.substr(0, at);
        authority = authority.substr(at + 1);
        size_t sep = userinfo.find('%');
        if (sep == std::string_view::npos) {
            auto secret = secret_from_environment(chap_secret_variable);
            if (!secret) {
                return url_error(text, fmt::format("the CHAP user has no secret: write user%secret, or set "
                                                   "{} to keep it off the command line",
                                                   chap_secret_variable));
            }
            auto user = percent_decode(userinfo);
            if (!user || user->empty()) {
                return url_error(text, "bad escape or empty user name in the credentials");
            }
            url.chap.user = *user;
            url.chap.secret = *secret;
        } else {
            auto user = percent_decode(userinfo.substr(0, sep));
            auto secret = percent_decode(userinfo.substr(sep + 1));
            if (!user || !secret || user->empty()) {
                return url_error(text, "bad escape or empty user name in the credentials");
            }
            url.chap.user = *user;
            url.chap.secret = *secret;
        }
    }
    if (authority.empty()) {
        return url_error(text, "no host");
    }
    std::string_view port_text;
    if (authority.front() == '[') {
        size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            return url_error(text, "missing ']' after the IPv6 address");
        }
        url.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') {
                return url_error(text, "junk after the IPv6 address");
            }
            port_text = after.substr(1);
        }
    } else {
        size_t colon = authority.find(':');
        url.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
        }
    }
    if (url.host.empty()) {
        return url_error(text, "no host");
    }
    if (authority.front() != '[' && url.host.find('%') != std::string::npos) {
        // "user%secret" with no "@HOST" after it (or a secret holding a raw '/'): never a host name,
        // and a message or a DNS lookup would show the secret.
        return url_error(text, "credentials without '@HOST' (escape '/' in a secret as %2F)");
    }
    bool has_port = authority.front() == '[' ? authority.find("]:") != std::string_view::npos
                                             : authority.find(':') != std::string_view::npos;
    if (has_port) {
        unsigned port = 0;
        auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
        if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
            port == 0 || port > 65535) {
            return url_error(text, fmt::format("bad port '{}'", port_text));
        }
        url.port = uint16_t(port);
    }

    if (!path.empty()) {
        size_t slash = path.find('/');
        url.target_name = std::string(path.substr(0, slash));
        if (slash != std::string_view::npos) {
            std::string_view lun = path.substr(slash + 1);
            if (!lun.empty() && lun.back() == '/') {
                lun.remove_suffix(1);
            }
            if (!lun.empty()) {
                uint64_t value = 0;
                auto [end, ec] = std::from_chars(lun.data(), lun.data() + lun.size(), value);
                if (ec != std::errc() || end != lun.data() + lun.size() || value > 16383) {
                    return url_error(text, fmt::format("bad LUN '{}' (a number from 0 to 16383)", lun));
                }
                url.lun = value;
            }
        }
        if (url.target_name.empty() && url.lun) {
            return url_error(text, "a LUN without a target name");
        }
    }

    while (!query.empty()) {
        std::string_view item = query.substr(0, query.find('&'));
        query = item.size() < query.size() ? query.substr(item.size() + 1) : std::string_view{};
        size_t eq = item.find('=');
        std::string_view key = item.substr(0, eq);
        std::string_view value = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
        if (key == "header_digest" || key == "data_digest") {
            auto d = parse_digest(value);
            if (!d) {
                return url_error(text, fmt::format("{} must be crc32c, none or crc32c,none", key));
            }
            (key == "header_digest" ? url.header_digest : url.data_digest) = *d;
        } else if (key == "target_user") {
            auto v = percent_decode(value);
            if (!v) {
                return url_error(text, "bad escape in target_user");
            }
            url.chap.target_user = *v;
        } else if (key == "target_password") {
            auto v = percent_decode(value);
            if (!v) {
                return url_error(text, "bad escape in target_password");
            }
            url.chap.target_secret = *v;
        } else if (!key.empty()) {
            return url_error(
                text, fmt::format("unknown option '{}' (known: header_digest, data_digest, target_user, "
                                  "target_password)",
                                  key));
        }
    }
    if (!url.chap.target_user.empty() && url.chap.target_secret.empty()) {
        auto secret = secret_from_environment(chap_target_secret_variable);
        if (!secret) {
            return url_error(text, fmt::format("target_user has no target_password: give it, or set {}",
                                               chap_target_secret_variable));
        }
        url.chap.target_secret = *secret;
    }
    if (!url.chap.target_user.empty() && url.chap.user.empty()) {
        return url_error(text, "target_user (mutual CHAP) needs a CHAP user and secret too");
    }
    return url;
}

std::string redact_url(std::string_view text) {
    // Written for malformed text too, since error messages quote what did not parse: whatever sits
    // between "://" and the last '@' before the path or query is credentials, and so is anything after
    // a '%' in an authority without '@' (a forgotten "@host" leaves "user%secret" where the host goes).
    std::string out;
    size_t scheme = text.find("://");
    size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
    out.append(text.substr(0, start));
    std::string_view rest = text.substr(start);
    size_t query_at = rest.find('?');
    std::string_view before_query = rest.substr(0, query_at);
    size_t at = before_query.rfind('@');
    std::string_view authority_end = before_query.substr(0, before_query.find('/'));
    if (at != std::string_view::npos) {
        std::string_view userinfo = before_query.substr(0, at);
        size_t sep = userinfo.find('%');
        out.append(userinfo.substr(0, sep));
        if (sep != std::string_view::npos) {
            out.append("%***");
        }
        rest = rest.substr(at);
    } else if (size_t sep = authority_end.find('%');
               sep != std::string_view::npos && authority_end.find('[') == std::string_view::npos) {
        out.append(authority_end.substr(0, sep));
        out.append("%***");
        rest = rest.substr(authority_end.size());
    }
    query_at = rest.find('?');
    out.append(rest.substr(0, query_at));
    if (query_at == std::string_view::npos) {
        return out;
    }
    std::string_view query = rest.substr(query_at + 1);
    out += '?';
    bool first = true;
    while (true) {
        size_t amp = query.find('&');
        std::string_view item = query.substr(0, amp);
        if (!first) {
            out += '&';
        }
        first = false;
        std::string_view key = item.substr(0, item.find('='));
        if (key == "target_password" && key.size() < item.size()) {
            out.append(key);
            out.append("=***");
        } else {
            out.append(item);
        }
        if (amp == std::string_view::npos) {
            break;
        }
        query = query.substr(amp + 1);
    }
    return out;
}

std::string to_string(const Url& url) {
    std::string s = "iscsi://";
    if (!url.chap.user.empty()) {
        s += url.chap.user + "@";
    }
    s += url.portal();
    if (!url.target_name.empty()) {
        s += "/" + url.target_name;
        if (url.lun) {
            s += fmt::format("/{}", *url.lun);
        }
    }
    return s;
}

} // namespace ispace::initiator
