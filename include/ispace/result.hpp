// Result<T>: the value-or-error type used on every path that can fail at run time.
//
// Why our own and not std::expected: the fuzzers are built with clang 14, whose concepts level makes
// libstdc++ 12 hide <expected>. This type is deliberately small: a value or an Error, nothing more.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ispace {

struct Error {
    int code = 0;        // an errno value when one applies, otherwise 0
    std::string message; // names what was wrong and, where it can, what to do
};

inline Error make_error(std::string message, int code = 0) {
    return Error{code, std::move(message)};
}

template <typename T> class [[nodiscard]] Result {
public:
    Result(T value) : _v(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : _v(std::in_place_index<1>, std::move(error)) {}

    bool ok() const { return _v.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & {
        assert(ok());
        return std::get<0>(_v);
    }
    const T& value() const& {
        assert(ok());
        return std::get<0>(_v);
    }
    T&& value() && {
        assert(ok());
        return std::get<0>(std::move(_v));
    }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    const Error& error() const& {
        assert(!ok());
        return std::get<1>(_v);
    }
    Error&& error() && {
        assert(!ok());
        return std::get<1>(std::move(_v));
    }

private:
    std::variant<T, Error> _v;
};

template <> class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : _error(std::move(error)), _ok(false) {}

    bool ok() const { return _ok; }
    explicit operator bool() const { return _ok; }
    const Error& error() const& {
        assert(!_ok);
        return _error;
    }
    Error&& error() && {
        assert(!_ok);
        return std::move(_error);
    }

private:
    Error _error;
    bool _ok = true;
};

} // namespace ispace
