#include "scsi/range_lock.hpp"

#include "common/log.hpp"
#include "net/reactor.hpp"

#include <cassert>
#include <vector>

namespace ispace::scsi {
namespace {

bool empty(const RangeLock::Entry& e) {
    return e.first >= e.end;
}

// Empty ranges overlap nothing: a zero-length request never waits.
bool overlap(const RangeLock::Entry& a, const RangeLock::Entry& b) {
    return !empty(a) && !empty(b) && a.first < b.end && b.first < a.end;
}

} // namespace

RangeLock::~RangeLock() {
    if (_head || _fast.load() != 0) {
        log_error("range lock destroyed with {} queued and {} fast holders", _count, _fast.load());
    }
}

bool RangeLock::acquire(Entry& entry) {
    assert(entry._state == Entry::State::idle);
    if (!entry.exclusive) {
        _fast.fetch_add(1, std::memory_order_seq_cst);
        if (_exclusive.load(std::memory_order_seq_cst) == 0) {
            entry._state = Entry::State::held_fast;
            return true;
        }
        // An exclusive request exists: back out (which may be what it waits for) and queue by range.
        fast_drained();
    }
    std::lock_guard lock(_mutex);
    if (entry.exclusive) {
        _exclusive.fetch_add(1, std::memory_order_seq_cst);
    }
    append(entry);
    if (grantable(entry)) {
        entry._state = Entry::State::held;
        return true;
    }
    entry._state = Entry::State::waiting;
    return false;
}

void RangeLock::release(Entry& entry) {
    if (entry._state == Entry::State::held_fast) {
        entry._state = Entry::State::idle;
        fast_drained();
        return;
    }
    assert(entry._state == Entry::State::held);
    std::vector<Entry*> granted;
    {
        std::lock_guard lock(_mutex);
        unlink(entry);
        if (entry.exclusive) {
            _exclusive.fetch_sub(1, std::memory_order_seq_cst);
        }
        entry._state = Entry::State::idle;
        grant_waiting(granted);
    }
    resume_all(granted);
}

void RangeLock::abandon(Entry& entry) {
    if (entry._state == Entry::State::idle) {
        return;
    }
    if (entry._state == Entry::State::held_fast) {
        entry._state = Entry::State::idle;
        _fast.fetch_sub(1, std::memory_order_seq_cst);
        return;
    }
    std::lock_guard lock(_mutex);
    unlink(entry);
    if (entry.exclusive) {
        _exclusive.fetch_sub(1, std::memory_order_seq_cst);
    }
    entry._state = Entry::State::idle;
}

// A fast-path holder left (or backed out). If that was the last one and an exclusive request waits,
// it may now be grantable: the exclusive request saw _fast != 0 under the mutex and queued, so someone
// must look again, and the last one out is the one who knows.
void RangeLock::fast_drained() {
    if (_fast.fetch_sub(1, std::memory_order_seq_cst) != 1) {
        return;
    }
    if (_exclusive.load(std::memory_order_seq_cst) == 0) {
        return;
    }
    std::vector<Entry*> granted;
    {
        std::lock_guard lock(_mutex);
        grant_waiting(granted);
    }
    resume_all(granted);
}

void RangeLock::grant_waiting(std::vector<Entry*>& granted) {
    for (Entry* e = _head; e; e = e->_next) {
        if (e->_state == Entry::State::waiting && grantable(*e)) {
            e->_state = Entry::State::held;
            granted.push_back(e);
        }
    }
}

// Outside the mutex: a resume may run inline (no reactor: tests) and acquire again.
void RangeLock::resume_all(const std::vector<Entry*>& granted) {
    for (Entry* e : granted) {
        if (e->reactor) {
            e->reactor->post([resume = e->resume, context = e->context] { resume(context); });
        } else {
            e->resume(e->context);
        }
    }
}

void RangeLock::append(Entry& entry) {
    entry._prev = _tail;
    entry._next = nullptr;
    if (_tail) {
        _tail->_next = &entry;
    } else {
        _head = &entry;
    }
    _tail = &entry;
    ++_count;
}

void RangeLock::unlink(Entry& entry) {
    if (entry._prev) {
        entry._prev->_next = entry._next;
    } else {
        _head = entry._next;
    }
    if (entry._next) {
        entry._next->_prev = entry._prev;
    } else {
        _tail = entry._prev;
    }
    entry._prev = entry._next = nullptr;
    --_count;
}

bool RangeLock::grantable(const Entry& entry) const {
    // Fast-path holders have no recorded range, so an exclusive request waits for all of them. New
    // ones cannot arrive while it is counted in _exclusive; the ones in flight finish their I/O.
    if (entry.exclusive && !empty(entry) && _fast.load(std::memory_order_seq_cst) != 0) {
        return false;
    }
    for (const Entry* e = _head; e && e != &entry; e = e->_next) {
        if ((entry.exclusive || e->exclusive) && overlap(*e, entry)) {
            return false;
        }
    }
    return true;
}

size_t RangeLock::queued() const {
    std::lock_guard lock(_mutex);
    return _count;
}

} // namespace ispace::scsi
