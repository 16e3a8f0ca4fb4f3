#include "common/units.hpp"

#include <fmt/format.h>

#include <cctype>

namespace ispace {

Result<uint64_t> parse_size(std::string_view text) {
    std::string_view original = text;
    if (text.empty()) {
        return make_error("empty size");
    }
    uint64_t value = 0;
    size_t i = 0;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
        uint64_t digit = uint64_t(text[i] - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return make_error(fmt::format("size '{}' is too large", original));
        }
        value = value * 10 + digit;
    }
    if (i == 0) {
        return make_error(fmt::format("size '{}' does not start with a number", original));
    }
    std::string_view suffix = text.substr(i);
    unsigned shift = 0;
    if (!suffix.empty()) {
        switch (std::tolower(static_cast<unsigned char>(suffix[0]))) {
        case 'k':
            shift = 10;
            break;
        case 'm':
            shift = 20;
            break;
        case 'g':
            shift = 30;
            break;
        case 't':
            shift = 40;
            break;
        case 'b':
            shift = 0;
            break;
        default:
            return make_error(fmt::format("size '{}' has an unknown unit (use K, M, G or T)", original));
        }
        std::string_view rest = suffix.substr(1);
        if (std::tolower(static_cast<unsigned char>(suffix[0])) == 'b') {
            if (!rest.empty()) {
                return make_error(fmt::format("size '{}' has trailing characters", original));
            }
        } else if (!(rest.empty() || rest == "i" || rest == "iB" || rest == "ib" || rest == "B" ||
                     rest == "b")) {
            return make_error(fmt::format("size '{}' has trailing characters", original));
        }
    }
    if (shift && value > (UINT64_MAX >> shift)) {
        return make_error(fmt::format("size '{}' is too large", original));
    }
    return value << shift;
}

std::string format_size(uint64_t bytes) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    unsigned u = 0;
    while (u < 5 && bytes >= 1024 && bytes % 1024 == 0) {
        bytes /= 1024;
        ++u;
    }
    return fmt::format("{} {}", bytes, units[u]);
}

} // namespace ispace
