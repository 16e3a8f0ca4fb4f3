#include "backstore/spec_parse.hpp"

#include "backstore/detail.hpp"
#include "common/units.hpp"

#include <fmt/format.h>

namespace ispace::backstore {
namespace {

struct Option {
    std::string_view text; // "size=1G"
    std::string_view key;
    std::optional<std::string_view> value;
};

std::vector<std::string_view> split(std::string_view text, char sep) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (;;) {
        size_t at = text.find(sep, start);
        parts.push_back(
            text.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
        if (at == std::string_view::npos) {
            return parts;
        }
        start = at + 1;
    }
}

// Reads the options after the head, once each. `error` formats a message quoting the whole spec.
template <typename OnOption>
Result<void> for_each_option(const std::vector<std::string_view>& parts, OnOption&& on_option) {
    std::vector<std::string_view> seen;
    for (size_t i = 1; i < parts.size(); ++i) {
        std::string_view option = parts[i];
        if (option.empty()) {
            return make_error("empty option (a stray comma?)", EINVAL);
        }
        size_t eq = option.find('=');
        Option o{option, option.substr(0, eq), std::nullopt};
        if (eq != std::string_view::npos) {
            o.value = option.substr(eq + 1);
        }
        for (std::string_view key : seen) {
            if (key == o.key) {
                return make_error(fmt::format("option '{}' given twice", o.key), EINVAL);
            }
        }
        seen.push_back(o.key);
        if (auto ok = on_option(o); !ok) {
            return ok;
        }
    }
    return {};
}

Result<uint32_t> read_block_size(const Option& o) {
    if (!o.value || o.value->empty()) {
        return make_error("block= needs a value: 512 or 4096", EINVAL);
    }
    auto bs = parse_size(*o.value);
    if (!bs || (*bs != 512 && *bs != 4096)) {
        return make_error(fmt::format("block={}: the block size must be 512 or 4096", *o.value), EINVAL);
    }
    return uint32_t(*bs);
}

Result<void> check_whole_blocks(uint64_t size, uint32_t block_size) {
    if (size % block_size != 0) {
        return make_error(fmt::format("size {} ({} bytes) is not a multiple of the {}-byte block size",
                                      detail::compact_size(size), size, block_size),
                          EINVAL);
    }
    return {};
}

Error quoted(std::string_view text, const Error& why) {
    return make_error(fmt::format("device '{}': {}", text, why.message), why.code ? why.code : EINVAL);
}

} // namespace

bool has_prefix(std::string_view text, std::string_view prefix) {
    std::string_view head = text.substr(0, text.find(','));
    return head == prefix ||
           (head.size() > prefix.size() && head.starts_with(prefix) && head[prefix.size()] == ':');
}

Result<PathSpec> parse_path_spec(std::string_view text) {
    if (text.empty()) {
        return quoted(text, make_error("empty; expected PATH[,options], memory:SIZE or null:SIZE"));
    }
    auto parts = split(text, ',');
    PathSpec spec;
    if (parts[0].empty()) {
        return quoted(text, make_error("empty path"));
    }
    spec.path = std::string(parts[0]);
    auto read = for_each_option(parts, [&](const Option& o) -> Result<void> {
        if (o.key == "block") {
            auto bs = read_block_size(o);
            if (!bs) {
                return bs.error();
            }
            spec.block_size = *bs;
            return {};
        }
        if (o.key == "size") {
            if (!o.value || o.value->empty()) {
                return make_error("size= needs a value, e.g. size=10G", EINVAL);
            }
            auto size = parse_size(*o.value);
            if (!size) {
                return make_error(fmt::format("bad size '{}': {}", *o.value, size.error().message), EINVAL);
            }
            if (*size == 0) {
                return make_error("size=0: the size must be at least one block", EINVAL);
            }
            spec.size = *size;
            return {};
        }
        if (o.key == "thin" || o.key == "ro" || o.key == "direct" || o.key == "grow") {
            if (o.value) {
                return make_error(fmt::format("option '{}' takes no value", o.key), EINVAL);
            }
            (o.key == "thin"     ? spec.thin
             : o.key == "ro"     ? spec.read_only
             : o.key == "direct" ? spec.direct
                                 : spec.grow) = true;
            return {};
        }
        return make_error(
            fmt::format("unknown option '{}' (expected size=, block=, thin, ro, direct or grow)", o.text),
            EINVAL);
    });
    if (!read) {
        return quoted(text, read.error());
    }
    if (auto whole = check_whole_blocks(spec.size, spec.block_size); !whole) {
        return quoted(text, whole.error());
    }
    return spec;
}

Result<SizedSpec> parse_sized_spec(std::string_view text, std::string_view prefix) {
    auto parts = split(text, ',');
    std::string_view head = parts[0];
    std::string_view size_text = head.size() > prefix.size() ? head.substr(prefix.size() + 1) : "";
    if (size_text.empty()) {
        return quoted(text, make_error(fmt::format("{} needs a size, e.g. {}:1G (a file named '{}' is ./{})",
                                                   prefix, prefix, prefix, prefix)));
    }
    auto size = parse_size(size_text);
    if (!size) {
        return quoted(text, make_error(fmt::format("bad size '{}': {}", size_text, size.error().message)));
    }
    if (*size == 0) {
        return quoted(text, make_error(fmt::format("{} size must be greater than 0", prefix)));
    }
    SizedSpec spec;
    spec.size = *size;
    auto read = for_each_option(parts, [&](const Option& o) -> Result<void> {
        if (o.key == "block") {
            auto bs = read_block_size(o);
            if (!bs) {
                return bs.error();
            }
            spec.block_size = *bs;
            return {};
        }
        if (o.key == "size" || o.key == "thin" || o.key == "ro" || o.key == "direct" || o.key == "grow") {
            return make_error(
                fmt::format("option '{}' applies to files and block devices, not to {}:", o.key, prefix),
                EINVAL);
        }
        return make_error(fmt::format("unknown option '{}' (expected block=)", o.text), EINVAL);
    });
    if (!read) {
        return quoted(text, read.error());
    }
    if (auto whole = check_whole_blocks(spec.size, spec.block_size); !whole) {
        return quoted(text, whole.error());
    }
    return spec;
}

std::string replace_spec_size(std::string_view text, uint64_t bytes, bool sized_head) {
    std::string size;
    const char* suffixes = "KMGT";
    int unit = -1;
    while (unit < 3 && bytes != 0 && bytes % (uint64_t(1024) << (10 * (unit + 1))) == 0) {
        ++unit;
    }
    size =
        unit < 0 ? fmt::format("{}", bytes) : fmt::format("{}{}", bytes >> (10 * (unit + 1)), suffixes[unit]);
    auto parts = split(text, ',');
    std::string out;
    bool replaced = false;
    for (size_t i = 0; i < parts.size(); ++i) {
        std::string part(parts[i]);
        if (i == 0 && sized_head) {
            part = part.substr(0, part.find(':')) + ":" + size;
            replaced = true;
        } else if (i > 0 && part.starts_with("size=")) {
            part = "size=" + size;
            replaced = true;
        }
        out += (i ? "," : "") + part;
    }
    if (!replaced) {
        out += ",size=" + size;
    }
    return out;
}

} // namespace ispace::backstore
