// RangeLock: per-logical-unit LBA range locking, so that a read-modify-write command (COMPARE AND
// WRITE, ORWRITE, WRITE ATOMIC) is atomic against every other command of every session.
//
// Ordinary reads and writes take the range they touch in shared mode; read-modify-write commands
// take theirs exclusively. Shared holders never wait for each other (SIMPLE tasks may run in any
// order anyway); an exclusive holder excludes everything that overlaps it. Requests that overlap and
// conflict are granted in arrival order, so a stream of reads cannot starve a COMPARE AND WRITE.
//
// Threads: tasks of every reactor share one logical unit. A request that cannot be granted at once is
// queued and never blocks its thread: when it is granted, its `resume` runs on its own reactor (by
// post()). Lock waits are short because nothing waits for the lock while holding one: a command holds
// at most one range, and only while its backstore I/O runs.
//
// The fast path: while no exclusive request exists, a shared request is two atomic operations on a
// counter and takes no mutex, so READ and WRITE pay nearly nothing for COMPARE AND WRITE's
// atomicity. The counter and the exclusive count form a Dekker-style handshake (both sequentially
// consistent): a shared request increments `_fast` and then looks for exclusive requests; an
// exclusive request is counted first and then waits for `_fast` to drain. Shared requests that find
// an exclusive one back out and queue by range under the mutex.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace ispace::net {
class Reactor;
}

namespace ispace::scsi {

class RangeLock {
public:
    // One request: owned by its user (an Execution, a background operation), linked into the lock while
    // it waits or holds. Fill in the public part, then acquire(); release() exactly once after a
    // grant.
    struct Entry {
        uint64_t first = 0; // first block
        uint64_t end = 0;   // one past the last block; first == end locks nothing but still queues
        bool exclusive = false;
        net::Reactor* reactor = nullptr; // where `resume` runs
        void (*resume)(void* context) = nullptr;
        void* context = nullptr;

        bool held() const { return _state == State::held_fast || _state == State::held; }

    private:
        friend class RangeLock;
        enum class State : uint8_t { idle, held_fast, waiting, held };
        State _state = State::idle;
        Entry* _prev = nullptr;
        Entry* _next = nullptr;
    };

    RangeLock() = default;
    RangeLock(const RangeLock&) = delete;
    RangeLock& operator=(const RangeLock&) = delete;
    ~RangeLock();

    // True: granted now, go on. False: queued; entry.resume(entry.context) will be posted to
    // entry.reactor when granted.
    bool acquire(Entry& entry);
    // Gives a granted range back and grants what was waiting for it.
    void release(Entry& entry);
    // Forgets a granted or waiting entry without granting anything: for teardown, when the reactors
    // that would resume waiters are gone (a sanitize cut short by ispaced stopping).
    void abandon(Entry& entry);

    // For tests and diagnostics.
    size_t queued() const;
    size_t fast_holders() const { return size_t(_fast.load()); }

private:
    void append(Entry& entry);
    void unlink(Entry& entry);
    // Under _mutex: whether `entry` conflicts with nothing queued before it (nor with fast holders).
    bool grantable(const Entry& entry) const;
    // Under _mutex: marks every waiter that became grantable held and collects it.
    void grant_waiting(std::vector<Entry*>& granted);
    static void resume_all(const std::vector<Entry*>& granted);
    void fast_drained();

    std::atomic<int64_t> _fast{0};      // shared holders that took the fast path
    std::atomic<int64_t> _exclusive{0}; // exclusive entries queued or held
    mutable std::mutex _mutex;
    Entry* _head = nullptr; // under _mutex: entries in arrival order, waiting or held
    Entry* _tail = nullptr;
    size_t _count = 0;
};

} // namespace ispace::scsi
