// TaskTable: a connection's Initiator Task Tag → outstanding request map, indexed by the ITT itself.
//
// An ITT is  [31..24] connection tag · [23..16] generation · [15..0] slot.  The connection tag keeps
// ITTs unique across the connections of a session (RFC 7143 §11.2.1.8: unique within the session); the
// slot makes lookup an array index; the generation, bumped whenever a slot is freed, makes a late PDU
// for a finished request (after an abort, or a duplicate from a broken target) miss instead of landing
// on the slot's next user. The reserved tag 0xffffffff can never be produced: tag 0xff is refused. Nor
// can 0 (generations run 1..255): a task's or an abort's ITT of 0 means "none" (PendingRequest).
#pragma once

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

namespace ispace::initiator {

struct PendingRequest;

class TaskTable {
public:
    enum class Kind : uint8_t { free, scsi, tmf, nop, text, logout };

    struct Entry {
        Kind kind = Kind::free;
        PendingRequest* task = nullptr; // scsi: the command; tmf: the task an ABORT TASK refers to (or null)
        uint64_t lun = 0;               // tmf: the LUN
        uint32_t aux = 0;               // tmf: the function
        uint64_t order = 0;             // the connection's send counter when the request went out
        std::chrono::steady_clock::time_point deadline{}; // tmf, nop, text, logout: when to give up
        uint8_t generation = 1;                           // never 0: see the top
    };

    static constexpr unsigned max_slots = 65536;

    explicit TaskTable(uint8_t connection_tag) : _tag(connection_tag) { assert(connection_tag != 0xff); }

    // A free ITT for an entry of `kind`, or 0xffffffff when all slots are in use.
    uint32_t allocate(Kind kind, PendingRequest* task) {
        uint32_t slot;
        if (!_free.empty()) {
            slot = _free.back();
            _free.pop_back();
        } else if (_entries.size() < max_slots) {
            slot = uint32_t(_entries.size());
            _entries.emplace_back();
        } else {
            return 0xffffffff;
        }
        Entry& e = _entries[slot];
        e.kind = kind;
        e.task = task;
        e.lun = 0;
        e.aux = 0;
        e.order = 0;
        e.deadline = {};
        ++_used;
        return itt_of(slot, e.generation);
    }

    // ERL 2 connection reinstatement: a new table for the CID of `old` goes on from its generations, so
    // that the new connection does not hand out again, at once, the ITTs the failed one used last: the
    // target may still keep an answer for one of them (RFC 7143 §6.2.2; see Connection::restarts).
    // Called on an empty table, before anything is allocated or adopted.
    void continue_generations(const TaskTable& old) {
        assert(_used == 0);
        _entries.assign(old._entries.size(), Entry{});
        _free.clear();
        for (uint32_t slot = 0; slot < _entries.size(); ++slot) {
            uint8_t g = old._entries[slot].generation;
            if (old._entries[slot].kind != Kind::free && ++g == 0) {
                g = 1; // still in use when the old connection went: its next generation
            }
            _entries[slot].generation = g;
        }
        // Handed out from the back: lowest slot first, as a fresh table does.
        for (uint32_t slot = uint32_t(_entries.size()); slot-- > 0;) {
            _free.push_back(slot);
        }
    }

    // ERL 2 connection reinstatement: the task keeps the ITT it had on the failed connection with the
    // same CID (and so the same tag), so that TASK REASSIGN names it. False if the ITT is not ours or its
    // slot is taken. Called before the new connection allocates anything.
    //
    // Or a task of another connection of the session (another tag) that failed and was removed for
    // recovery (RFC 7143 §11.14.1): it keeps its ITT here too, in a short side list (the ITT stays
    // unique in the session: no connection hands out ITTs with that tag meanwhile).
    bool adopt(uint32_t itt, Kind kind, PendingRequest* task) {
        if ((itt >> 24) != _tag) {
            if (itt == 0xffffffff || foreign(itt) != nullptr) {
                return false;
            }
            Entry e;
            e.kind = kind;
            e.task = task;
            e.generation = uint8_t(itt >> 16);
            _foreign.emplace_back(itt, e);
            ++_used;
            return true;
        }
        uint32_t slot = itt & 0xffff;
        while (_entries.size() <= slot) {
            _free.push_back(uint32_t(_entries.size()));
            _entries.emplace_back();
        }
        Entry& e = _entries[slot];
        if (e.kind != Kind::free) {
            return false;
        }
        _free.erase(std::find(_free.begin(), _free.end(), slot));
        e = Entry{};
        e.kind = kind;
        e.task = task;
        e.generation = uint8_t(itt >> 16);
        ++_used;
        return true;
    }

    // The entry of a live ITT, or nullptr (unknown, stale generation, or another connection's tag).
    Entry* find(uint32_t itt) {
        if ((itt >> 24) != _tag) {
            return foreign(itt);
        }
        uint32_t slot = itt & 0xffff;
        if (slot >= _entries.size()) {
            return nullptr;
        }
        Entry& e = _entries[slot];
        if (e.kind == Kind::free || e.generation != uint8_t(itt >> 16)) {
            return nullptr;
        }
        return &e;
    }

    void release(uint32_t itt) {
        if ((itt >> 24) != _tag) {
            auto it = std::find_if(_foreign.begin(), _foreign.end(),
                                   [itt](const auto& f) { return f.first == itt; });
            if (it != _foreign.end()) {
                _foreign.erase(it);
                --_used;
            }
            return;
        }
        Entry* e = find(itt);
        if (e == nullptr) {
            return;
        }
        e->kind = Kind::free;
        e->task = nullptr;
        if (++e->generation == 0) {
            e->generation = 1;
        }
        _free.push_back(itt & 0xffff);
        --_used;
    }

    size_t size() const { return _used; }

    // Calls fn(itt, entry) for every live entry. fn may release the entry it is given.
    template <typename Fn> void for_each(Fn&& fn) {
        for (uint32_t slot = 0; slot < _entries.size(); ++slot) {
            Entry& e = _entries[slot];
            if (e.kind != Kind::free) {
                fn(itt_of(slot, e.generation), e);
            }
        }
        std::vector<std::pair<uint32_t, Entry>> adopted = _foreign; // fn may release
        for (auto& [itt, e] : adopted) {
            if (Entry* live = foreign(itt)) {
                fn(itt, *live);
            }
        }
    }

private:
    Entry* foreign(uint32_t itt) {
        for (auto& [tag, e] : _foreign) {
            if (tag == itt) {
                return &e;
            }
        }
        return nullptr;
    }

    uint32_t itt_of(uint32_t slot, uint8_t generation) const {
        return uint32_t(_tag) << 24 | uint32_t(generation) << 16 | slot;
    }

    uint8_t _tag;
    std::vector<Entry> _entries;
    std::vector<uint32_t> _free;
    std::vector<std::pair<uint32_t, Entry>> _foreign; // adopted from a connection removed for recovery
    size_t _used = 0;
};

} // namespace ispace::initiator
