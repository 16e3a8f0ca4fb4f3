#include "iscsi_target/buffer_budget.hpp"

namespace ispace::iscsi_target {

bool BufferBudget::take(uint64_t bytes, bool holds_nothing) {
    uint64_t used = _used.load(std::memory_order_relaxed);
    uint64_t cap = holds_nothing ? _limit + _reserve : _limit;
    do {
        if (used != 0 && used + bytes > cap) {
            _refusals.fetch_add(1, std::memory_order_relaxed);
            return false;
        }
    } while (!_used.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
    return true;
}

BufferBudget::Hold BufferBudget::reserve(const std::shared_ptr<Account>& account, uint64_t bytes) {
    if (!account->budget->take(bytes, account->held == 0)) {
        return {};
    }
    account->held += bytes;
    return Hold(account, bytes);
}

void BufferBudget::Hold::reset() {
    if (_account) {
        _account->held -= _bytes;
        _account->budget->give_back(_bytes);
        _account.reset();
        _bytes = 0;
    }
}

} // namespace ispace::iscsi_target
