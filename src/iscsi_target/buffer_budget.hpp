// BufferBudget: the daemon-wide bound on memory held for Data-In (limits.buffer_memory).
//
// A read's buffer is filled by the backstore and then waits until its Data-In PDUs have gone out; an
// initiator that does not read its socket keeps it forever. The CmdSN window bounds how many commands
// one session may have, not how many sessions there are, so without a global bound six sessions of
// 128 unread 8 MiB READs held 6 GB. Every command with Data-In now reserves its buffer here before it
// reaches the engine, and gives it back when its last Data-In PDU has been sent (or it ends without
// one). A session whose command cannot reserve holds it — and every command after it, in order —
// and stops advancing MaxCmdSN until the budget has room (Session): back-pressure, not allocation.
//
// So that an initiator that reads its socket is still served while others hog the budget, a session
// that holds nothing may dip into a reserve of an eighth of the budget; and a command larger than the
// whole budget may run when nothing else is held (it would wait forever otherwise).
//
// Thread-safe: one counter shared by every reactor. An Account is one session's share (reactor-local);
// a Hold is one command's reservation, released when it is destroyed, on the session's reactor.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace ispace::iscsi_target {

class BufferBudget {
public:
    explicit BufferBudget(uint64_t limit) : _limit(limit), _reserve(limit / 8) {}

    // One session's reservations: what it holds now, for the reserve's rule. Used on one reactor.
    struct Account {
        std::shared_ptr<BufferBudget> budget;
        uint64_t held = 0;
    };
    // One command's reservation; empty when nothing was reserved.
    class Hold {
    public:
        Hold() = default;
        Hold(std::shared_ptr<Account> account, uint64_t bytes)
            : _account(std::move(account)), _bytes(bytes) {}
        Hold(Hold&& other) noexcept : _account(std::move(other._account)), _bytes(other._bytes) {
            other._bytes = 0;
        }
        Hold& operator=(Hold&& other) noexcept {
            if (this != &other) {
                reset();
                _account = std::move(other._account);
                _bytes = other._bytes;
                other._bytes = 0;
            }
            return *this;
        }
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        ~Hold() { reset(); }
        void reset();
        uint64_t bytes() const { return _bytes; }
        explicit operator bool() const { return _account != nullptr; }

    private:
        std::shared_ptr<Account> _account;
        uint64_t _bytes = 0;
    };

    // Reserves `bytes` for `account`'s session; an empty Hold (and nothing reserved) when the budget
    // has no room for it now.
    static Hold reserve(const std::shared_ptr<Account>& account, uint64_t bytes);

    uint64_t limit() const { return _limit; }
    uint64_t used() const { return _used.load(std::memory_order_relaxed); }
    // Reservations refused since start (a command then waited), for metrics and tests.
    uint64_t refusals() const { return _refusals.load(std::memory_order_relaxed); }

private:
    bool take(uint64_t bytes, bool holds_nothing);
    void give_back(uint64_t bytes) { _used.fetch_sub(bytes, std::memory_order_relaxed); }

    const uint64_t _limit;
    const uint64_t _reserve;
    std::atomic<uint64_t> _used{0};
    std::atomic<uint64_t> _refusals{0};
};

} // namespace ispace::iscsi_target
