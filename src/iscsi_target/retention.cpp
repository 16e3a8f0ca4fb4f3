#include "iscsi_target/retention.hpp"

#include "common/bytes.hpp"

#include <algorithm>

namespace ispace::iscsi_target {

namespace {

constexpr uint8_t data_in_status_bit = 0x01;
// A reassigned read resumes at most this far into its Data-In (a 16 MiB read in 512-byte PDUs):
// the placeholders for what came before cost a few bytes each.
constexpr uint32_t max_reassigned_data_sn = 32768;

// A PDU that carries a StatSN of its own, which the initiator acknowledges with ExpStatSN. A NOP-In ping
// (ITT reserved) repeats the current StatSN without taking it; R2Ts and Data-In without status likewise.
bool numbered_response(const iscsi::Bhs& bhs) {
    switch (bhs.opcode()) {
    case iscsi::Opcode::scsi_response:
    case iscsi::Opcode::task_mgmt_response:
    case iscsi::Opcode::text_response:
    case iscsi::Opcode::logout_response:
    case iscsi::Opcode::reject:
    case iscsi::Opcode::async_message:
        return true;
    case iscsi::Opcode::nop_in:
        return bhs.itt() != iscsi::reserved_tag;
    case iscsi::Opcode::data_in:
        return (bhs.bytes[1] & data_in_status_bit) != 0;
    default:
        return false;
    }
}

uint32_t field(const iscsi::Bhs& bhs, size_t at) {
    return load_be32(bhs.bytes.data() + at);
}

// Which of the run [beg, beg + run) (run 0: through the end) lies in [first, end); the refusal says
// why none does.
Retention::Refusal check_run(uint32_t first, uint32_t end, uint32_t beg, uint32_t run) {
    if (iscsi::sn_lt(beg, first)) {
        return Retention::Refusal::acknowledged;
    }
    if (!iscsi::sn_lt(beg, end)) {
        return Retention::Refusal::not_sent;
    }
    if (run != 0 && uint64_t(beg - first) + run > uint64_t(end - first)) {
        return Retention::Refusal::not_sent;
    }
    return Retention::Refusal::none;
}

} // namespace

Retention::Task& Retention::task(uint32_t itt, net::Clock::time_point now) {
    auto [it, inserted] = _tasks.try_emplace(itt);
    if (inserted) {
        it->second.order = _next_order++;
        it->second.created = now;
        _task_order.emplace_back(itt, it->second.order);
    }
    return it->second;
}

void Retention::sent(const iscsi::Bhs& bhs, const Buffer& data, size_t offset, uint32_t length,
                     net::Clock::time_point now) {
    if (bhs.opcode() == iscsi::Opcode::data_in) {
        Task& t = task(bhs.itt(), now);
        uint32_t data_sn = field(bhs, 36);
        if (t.data_in.empty() && t.acked == 0 && data_sn > 0 && data_sn <= max_reassigned_data_sn) {
            // ERL 2: a task reassigned here sends its Data-In from the DataSN the initiator expects;
            // those before it count as acknowledged (the initiator said it has them).
            t.data_in.resize(data_sn);
            t.acked = data_sn;
        }
        // Data-In of one command goes out once, in DataSN order: anything else is a retransmission,
        // which is already kept.
        if (data_sn == t.data_in.size()) {
            t.data_in.push_back(Pdu{bhs, data, offset, length});
            t.bytes += length;
            _bytes += length;
            if ((bhs.bytes[1] & 0x40) != 0) {
                t.ack_ttt = field(bhs, 20);
            }
        }
    } else if (bhs.opcode() == iscsi::Opcode::r2t) {
        Task& t = task(bhs.itt(), now);
        if (field(bhs, 36) == t.r2ts.size()) {
            t.r2ts.push_back(Pdu{bhs, {}, 0, 0});
        }
    }
    if (numbered_response(bhs)) {
        uint32_t stat_sn = field(bhs, 24);
        if (!_next_stat_sn || stat_sn == *_next_stat_sn) {
            Response r;
            r.stat_sn = stat_sn;
            r.sent = now;
            r.pdu.bhs = bhs;
            if (bhs.opcode() != iscsi::Opcode::data_in) {
                // Sense data, a Text Response, the rejected header: small, owned by the PDU.
                r.pdu.data = data;
                r.pdu.offset = offset;
                r.pdu.length = length;
                r.bytes = length;
                _bytes += length;
            }
            _responses.push_back(std::move(r));
            _next_stat_sn = stat_sn + 1;
            if (bhs.opcode() == iscsi::Opcode::scsi_response || bhs.opcode() == iscsi::Opcode::data_in) {
                if (auto it = _tasks.find(bhs.itt()); it != _tasks.end()) {
                    it->second.stat_sn = stat_sn;
                }
            }
        }
    }
    enforce(now);
}

void Retention::erase_task(uint32_t itt) {
    auto it = _tasks.find(itt);
    if (it == _tasks.end()) {
        return;
    }
    _bytes -= it->second.bytes;
    _tasks.erase(it);
}

void Retention::acknowledge(uint32_t exp_stat_sn) {
    if (_exp_stat_sn && !iscsi::sn_gt(exp_stat_sn, *_exp_stat_sn)) {
        return;
    }
    if (_next_stat_sn && iscsi::sn_gt(exp_stat_sn, *_next_stat_sn)) {
        return; // acknowledges what was never sent: not to be trusted
    }
    _exp_stat_sn = exp_stat_sn;
    while (!_responses.empty() && iscsi::sn_lt(_responses.front().stat_sn, exp_stat_sn)) {
        _bytes -= _responses.front().bytes;
        _responses.pop_front();
    }
    for (auto it = _tasks.begin(); it != _tasks.end();) {
        if (it->second.stat_sn && iscsi::sn_lt(*it->second.stat_sn, exp_stat_sn)) {
            _bytes -= it->second.bytes;
            it = _tasks.erase(it);
        } else {
            ++it;
        }
    }
}

void Retention::enforce(net::Clock::time_point now) {
    auto too_much = [&] { return _bytes > _limits.max_bytes || _tasks.size() > _limits.max_tasks; };
    while (!_task_order.empty()) {
        auto [itt, order] = _task_order.front();
        auto it = _tasks.find(itt);
        if (it == _tasks.end() || it->second.order != order) {
            _task_order.pop_front(); // released already
            continue;
        }
        if (!too_much() && now - it->second.created < _limits.max_age) {
            break;
        }
        _task_order.pop_front();
        ++_evicted;
        erase_task(itt);
    }
    while (!_responses.empty() && (_responses.size() > _limits.max_responses || _bytes > _limits.max_bytes ||
                                   now - _responses.front().sent >= _limits.max_age)) {
        _bytes -= _responses.front().bytes;
        _responses.pop_front();
        ++_evicted;
    }
}

Retention::Lookup Retention::data_or_r2t(uint32_t itt, uint32_t beg_run, uint32_t run_length) const {
    Lookup out;
    auto it = _tasks.find(itt);
    if (it == _tasks.end()) {
        out.refusal = Refusal::unknown_task;
        return out;
    }
    const Task& t = it->second;
    bool read = !t.data_in.empty();
    const std::vector<Pdu>& list = read ? t.data_in : t.r2ts;
    uint32_t first = read ? t.acked : 0;
    uint32_t end = uint32_t(list.size());
    out.next_sn = end;
    out.refusal = check_run(first, end, beg_run, run_length);
    if (out.refusal != Refusal::none) {
        return out;
    }
    uint32_t last = run_length == 0 ? end : beg_run + run_length;
    for (uint32_t sn = beg_run; sn != last; ++sn) {
        out.pdus.push_back(&list[sn]);
    }
    return out;
}

Retention::Lookup Retention::status(uint32_t beg_run, uint32_t run_length) const {
    Lookup out;
    if (!_next_stat_sn) {
        out.refusal = Refusal::not_sent;
        return out;
    }
    out.next_sn = *_next_stat_sn;
    uint32_t acked = _exp_stat_sn.value_or(_responses.empty() ? *_next_stat_sn : _responses.front().stat_sn);
    out.refusal = check_run(acked, *_next_stat_sn, beg_run, run_length);
    if (out.refusal != Refusal::none) {
        return out;
    }
    uint32_t last = run_length == 0 ? *_next_stat_sn : beg_run + run_length;
    for (uint32_t sn = beg_run; sn != last; ++sn) {
        auto r = std::find_if(_responses.begin(), _responses.end(),
                              [&](const Response& response) { return response.stat_sn == sn; });
        if (r == _responses.end()) {
            out.refusal = Refusal::no_longer_kept;
            out.pdus.clear();
            return out;
        }
        out.pdus.push_back(&r->pdu);
    }
    return out;
}

const Retention::Pdu* Retention::status_data_in(uint32_t stat_sn) const {
    for (const auto& [itt, t] : _tasks) {
        if (t.stat_sn == stat_sn && !t.data_in.empty() && t.acked < t.data_in.size()) {
            const Pdu& last = t.data_in.back();
            if ((last.bhs.bytes[1] & data_in_status_bit) != 0) {
                return &last;
            }
        }
    }
    return nullptr;
}

Retention::Refusal Retention::data_ack(uint32_t itt, uint32_t ttt, uint32_t beg_run) {
    auto it = _tasks.find(itt);
    if (it == _tasks.end()) {
        return Refusal::unknown_task;
    }
    Task& t = it->second;
    if (t.ack_ttt == iscsi::reserved_tag || ttt != t.ack_ttt) {
        return Refusal::unknown_task; // no Data-In of this task asked for an acknowledgement with it
    }
    if (iscsi::sn_lt(beg_run, t.acked)) {
        return Refusal::acknowledged;
    }
    if (iscsi::sn_gt(beg_run, uint32_t(t.data_in.size()))) {
        return Refusal::not_sent;
    }
    for (uint32_t sn = t.acked; sn != beg_run; ++sn) {
        Pdu& pdu = t.data_in[sn];
        t.bytes -= pdu.length;
        _bytes -= pdu.length;
        pdu.data.reset();
        pdu.length = 0;
    }
    t.acked = beg_run;
    return Refusal::none;
}

void Retention::forget_task(uint32_t itt) {
    erase_task(itt);
    for (Response& r : _responses) {
        if (r.pdu.bhs.itt() == itt) {
            r.superseded = true;
        }
    }
}

Retention::Answer Retention::take_answer(uint32_t itt, uint32_t exp_data_sn) {
    Answer out;
    auto response = std::find_if(_responses.begin(), _responses.end(), [&](const Response& r) {
        return r.pdu.bhs.itt() == itt && !r.superseded &&
               (r.pdu.bhs.opcode() == iscsi::Opcode::scsi_response ||
                r.pdu.bhs.opcode() == iscsi::Opcode::data_in);
    });
    if (response == _responses.end()) {
        out.refusal = Refusal::unknown_task;
        return out;
    }
    auto task = _tasks.find(itt);
    bool status_on_data_in = response->pdu.bhs.opcode() == iscsi::Opcode::data_in;
    if (task != _tasks.end() && !task->second.data_in.empty()) {
        const Task& t = task->second;
        uint32_t first = exp_data_sn != 0 ? exp_data_sn : t.acked;
        if (iscsi::sn_lt(first, t.acked)) {
            out.refusal = Refusal::acknowledged;
            return out;
        }
        // The status Data-In must go again, so the initiator can never have acknowledged all of them.
        uint32_t end = uint32_t(t.data_in.size());
        if (!iscsi::sn_lt(first, end) && (status_on_data_in || first != end)) {
            out.refusal = Refusal::not_sent;
            return out;
        }
        for (uint32_t sn = first; sn != end; ++sn) {
            out.data_in.push_back(t.data_in[sn]);
        }
    } else if (status_on_data_in) {
        out.refusal = Refusal::no_longer_kept; // the status is kept but its data went at a bound
        return out;
    }
    if (!status_on_data_in) {
        out.response = response->pdu;
    }
    out.found = true;
    _bytes -= response->bytes;
    _responses.erase(response);
    erase_task(itt);
    return out;
}

} // namespace ispace::iscsi_target
