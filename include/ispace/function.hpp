// Function<R(Args...)>: a move-only callable with inline storage.
//
// Completions on the data path (an I/O finished, a PDU was sent) are created per command. std::function
// must be copyable and allocates for captures over 16 bytes; this type holds captures of up to
// `inline_size` bytes in place (a few pointers and a Buffer), and move-only captures are allowed.
#pragma once

#include <cassert>
#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace ispace {

template <typename Signature> class Function;

template <typename R, typename... Args> class Function<R(Args...)> {
public:
    static constexpr size_t inline_size = 56;

    Function() = default;
    Function(std::nullptr_t) {}

    template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Function> &&
                                                      std::is_invocable_r_v<R, std::decay_t<F>&, Args...>>>
    Function(F&& f) {
        using Fn = std::decay_t<F>;
        if constexpr (sizeof(Fn) <= inline_size && alignof(Fn) <= alignof(std::max_align_t) &&
                      std::is_nothrow_move_constructible_v<Fn>) {
            ::new (static_cast<void*>(_storage)) Fn(std::forward<F>(f));
            _ops = &inline_ops<Fn>;
        } else {
            *reinterpret_cast<Fn**>(_storage) = new Fn(std::forward<F>(f));
            _ops = &heap_ops<Fn>;
        }
    }

    Function(Function&& other) noexcept { move_from(other); }
    Function& operator=(Function&& other) noexcept {
        if (this != &other) {
            reset();
            move_from(other);
        }
        return *this;
    }
    Function& operator=(std::nullptr_t) {
        reset();
        return *this;
    }
    Function(const Function&) = delete;
    Function& operator=(const Function&) = delete;
    ~Function() { reset(); }

    explicit operator bool() const { return _ops != nullptr; }

    R operator()(Args... args) {
        assert(_ops);
        return _ops->invoke(_storage, std::forward<Args>(args)...);
    }

    void reset() {
        if (_ops) {
            _ops->destroy(_storage);
            _ops = nullptr;
        }
    }

private:
    struct Ops {
        R (*invoke)(void*, Args&&...);
        void (*move)(void* dst, void* src); // move-constructs dst from src and destroys src
        void (*destroy)(void*);
    };

    template <typename Fn>
    static constexpr Ops inline_ops = {
        [](void* s, Args&&... args) -> R { return (*static_cast<Fn*>(s))(std::forward<Args>(args)...); },
        [](void* dst, void* src) {
            ::new (dst) Fn(std::move(*static_cast<Fn*>(src)));
            static_cast<Fn*>(src)->~Fn();
        },
        [](void* s) { static_cast<Fn*>(s)->~Fn(); },
    };
    template <typename Fn>
    static constexpr Ops heap_ops = {
        [](void* s, Args&&... args) -> R { return (**static_cast<Fn**>(s))(std::forward<Args>(args)...); },
        [](void* dst, void* src) { *static_cast<Fn**>(dst) = *static_cast<Fn**>(src); },
        [](void* s) { delete *static_cast<Fn**>(s); },
    };

    void move_from(Function& other) {
        if (other._ops) {
            other._ops->move(_storage, other._storage);
            _ops = std::exchange(other._ops, nullptr);
        }
    }

    alignas(std::max_align_t) unsigned char _storage[inline_size];
    const Ops* _ops = nullptr;
};

} // namespace ispace
