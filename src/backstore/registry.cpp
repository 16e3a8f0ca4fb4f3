#include "backstore/registry.hpp"

#include <fmt/format.h>

namespace ispace::backstore {

Result<void> Registry::add(Kind kind) {
    std::lock_guard lock(_mutex);
    for (const Kind& k : _kinds) {
        if (k.name == kind.name) {
            return make_error(fmt::format("backstore kind '{}' is registered twice", kind.name), EEXIST);
        }
        if (k.fallback && kind.fallback) {
            return make_error(fmt::format("backstore kinds '{}' and '{}' both want to read every other spec",
                                          k.name, kind.name),
                              EEXIST);
        }
    }
    if (!kind.parse || (!kind.claims && !kind.fallback)) {
        return make_error(fmt::format("backstore kind '{}' has no parser", kind.name), EINVAL);
    }
    _kinds.push_back(std::move(kind));
    return {};
}

Result<std::unique_ptr<Spec>> Registry::parse(std::string_view text) const {
    std::lock_guard lock(_mutex);
    const Kind* fallback = nullptr;
    for (const Kind& kind : _kinds) {
        if (kind.fallback) {
            fallback = &kind;
        } else if (kind.claims(text)) {
            return kind.parse(text);
        }
    }
    if (!fallback) {
        return make_error(
            fmt::format("device '{}': no backstore kind reads it (expected {})", text, syntax_line()),
            EINVAL);
    }
    return fallback->parse(text);
}

std::vector<std::string> Registry::names() const {
    std::lock_guard lock(_mutex);
    std::vector<std::string> out;
    for (const Kind& kind : _kinds) {
        out.push_back(kind.name);
    }
    return out;
}

std::string Registry::syntax_line() const {
    std::string line;
    for (const Kind& kind : _kinds) {
        line += line.empty() ? kind.syntax : " or " + kind.syntax;
    }
    return line;
}

std::string Registry::syntax_help() const {
    std::lock_guard lock(_mutex);
    std::string out;
    for (const Kind& kind : _kinds) {
        out += fmt::format("  {}\n        {}\n", kind.syntax, kind.help);
    }
    return out;
}

} // namespace ispace::backstore
