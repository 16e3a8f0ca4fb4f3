// SANITIZE (SBC-4 5.30, 4.11) with the service actions that fit a file or memory backstore:
//   OVERWRITE            the initialization pattern (repeated to fill each block, INVERT between
//                        passes) written over the whole medium, each pass through to the medium, paced
//                        to LuOptions::sanitize_bytes_per_second;
//   BLOCK ERASE          every block deallocated: afterwards each reads as zeroes and GET LBA STATUS
//                        reports it deallocated;
//   CRYPTOGRAPHIC ERASE  a file or memory backstore has no media encryption key to change, so it does
//                        what BLOCK ERASE does: every block deallocated, so that the old data cannot be
//                        read back through the logical unit (reads return zeroes);
//   EXIT FAILURE MODE    leave the failure mode a failed sanitize left behind, when its AUSE allowed it.
// The operation table offers the two erases only where the device deallocates (cdb.cpp): a thick
// logical unit offers OVERWRITE alone. Neither erase scrubs the host: the blocks a thin file gives back
// keep their old bytes in the host filesystem's free space until something overwrites them; OVERWRITE
// writes through the file itself.
//
// A sanitize operation belongs to the logical unit, not to the command that started it: it runs in
// the background on the reactor of that command (chunked I/O, bounded memory), survives aborts,
// resets and the loss of the session (SBC-4 4.11.2), and meanwhile the logical unit refuses medium
// access with NOT READY, SANITIZE IN PROGRESS. With IMMED=0 the command waits for the end; a task
// management function that aborts it ends the wait, not the operation.
//
// OVERWRITE is paced (pacer.hpp): at full speed it would take the whole disk from every other logical
// unit on it for as long as it runs. After each chunk the operation waits on a reactor timer until the
// rate allows the next one; progress (REQUEST SENSE) counts the blocks written, so it stays exact. The
// erases are one fallocate (or freeing memory) and are not paced.
#include "common/bytes.hpp"
#include "common/log.hpp"
#include "net/reactor.hpp"
#include "scsi/cdb.hpp"
#include "scsi/execution.hpp"
#include "scsi/lu.hpp"
#include "scsi/pacer.hpp"
#include "scsi/sbc.hpp"
#include "scsi/sbc_util.hpp"
#include "scsi_spec/sense.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fmt/format.h>
#include <memory>
#include <string>

namespace ispace::scsi::sbc {
namespace {

using backstore::IoOp;

constexpr uint32_t overwrite_header = 4;

// A paced chunk is at most what this much time writes at the rate: the waiting command learns of a
// task management function that aborts it between chunks, so waits stay short at slow rates.
constexpr std::chrono::milliseconds pacing_period{125};

std::string rate_text(uint64_t bytes_per_second) {
    if (bytes_per_second == 0) {
        return "not paced";
    }
    if (bytes_per_second % (1u << 20) == 0) {
        return fmt::format("paced to {} MiB/s", bytes_per_second >> 20);
    }
    if (bytes_per_second >= 1024) {
        return fmt::format("paced to {} KiB/s", bytes_per_second / 1024);
    }
    return fmt::format("paced to {} bytes/s", bytes_per_second);
}

const char* action_name(uint8_t action) {
    switch (action) {
    case sa::sanitize_overwrite:
        return "overwrite";
    case sa::sanitize_block_erase:
        return "block erase";
    default:
        return "cryptographic erase";
    }
}

} // namespace

// One sanitize operation, alive from the SANITIZE command's validation to the last flush. Outside the
// anonymous namespace only so that SanitizeState can point at it (block_state.hpp).
class SanitizeOp {
public:
    SanitizeOp(LogicalUnit& lu, net::Reactor* reactor, uint8_t action, bool ause)
        : _lu(lu), _reactor(reactor), _action(action), _ause(ause),
          _pacer(lu.options().sanitize_bytes_per_second) {}

    // Destroyed before finish() only when ispaced stops mid-operation: the reactor's timer or queue
    // that owned it went away before the logical unit did (otherwise abandon() already ran).
    ~SanitizeOp() { abandon(); }

    // Shutdown cut the operation short; nothing will resume it. Says how far it got and leaves the
    // logical unit as if it had ended, touching it for the last time.
    void abandon() {
        if (!_began || _finished) {
            return;
        }
        _finished = true;
        SanitizeState& state = _lu.block_state().sanitize;
        log_warn("lun {}: sanitize ({}) interrupted by shutdown after {} of {} blocks; the medium is only "
                 "partly sanitized: run SANITIZE again",
                 _lu.lun(), action_name(_action), state.done_blocks.load(), state.total_blocks.load());
        _lu.block_state().range_lock.abandon(_range);
        state.op = nullptr;
        state.in_progress.store(false);
    }

    // OVERWRITE: the pattern and how to apply it.
    void set_overwrite(std::span<const uint8_t> pattern, uint8_t passes, bool invert) {
        _pattern.assign(pattern.begin(), pattern.end());
        _passes = passes;
        _invert = invert;
    }
    unsigned passes() const { return _action == sa::sanitize_overwrite ? _passes : 1; }
    uint64_t bytes_per_second() const { return _lu.options().sanitize_bytes_per_second; }
    // The IMMED=0 command that waits for the end (at most one; it may leave early when aborted).
    void set_waiter(Execution* cmd) { _waiter = cmd; }

    // Takes the whole medium exclusively (in-flight commands finish first), then runs.
    void start() {
        SanitizeState& state = _lu.block_state().sanitize;
        _began = true;
        state.op = this;
        _started = Pacer::Clock::now();
        state.done_blocks.store(0);
        state.total_blocks.store(_lu.block_count() * passes());
        _range.first = 0;
        _range.end = _lu.block_count();
        _range.exclusive = true;
        _range.reactor = _reactor;
        _range.resume = [](void* self) { static_cast<SanitizeOp*>(self)->run(); };
        _range.context = this;
        if (_lu.block_state().range_lock.acquire(_range)) {
            run();
        }
    }

private:
    uint32_t bs() const { return _lu.block_size(); }

    void run() {
        if (_action != sa::sanitize_overwrite) {
            erase();
            return;
        }
        _pass = 1;
        _next = 0;
        fill_chunk();
        write_chunk();
    }

    // BLOCK ERASE and CRYPTOGRAPHIC ERASE (routed only where the device deallocates): every block
    // deallocated, reading as zeroes afterwards (WABEREQ=01b).
    void erase() {
        submit(IoOp::unmap, 0, _lu.block_count() * uint64_t(bs()), nullptr, [](SanitizeOp& self) {
            self.progress(self._lu.block_count());
            self.flush();
        });
    }

    // The chunk buffer holds the pattern of the current pass, repeated: each block starts with the
    // pattern and repeats it to the block's end (SBC-4 5.30.3).
    void fill_chunk() {
        uint64_t chunk_bytes = _pacer.chunk_bytes(bs(), _lu.max_transfer_bytes(), pacing_period);
        uint64_t chunk_blocks = std::min<uint64_t>(_lu.block_count(), chunk_bytes / bs());
        if (!_chunk) {
            _chunk = Buffer::allocate(chunk_blocks * bs());
        }
        // INVERT: alternate passes write the inverted pattern, the last one the pattern itself.
        bool inverted = _invert && ((_passes - _pass) % 2 == 1);
        uint8_t* p = _chunk.data();
        for (uint32_t i = 0; i < bs(); ++i) {
            uint8_t v = _pattern[i % _pattern.size()];
            p[i] = inverted ? uint8_t(~v) : v;
        }
        for (uint64_t b = 1; b < chunk_blocks; ++b) {
            std::memcpy(p + b * bs(), p, bs());
        }
    }

    void write_chunk() {
        if (_next == _lu.block_count()) {
            // A pass is complete when it is on the medium; the next pass may only then overwrite it.
            submit(IoOp::flush, 0, 0, nullptr, [](SanitizeOp& self) {
                if (self._pass == self._passes) {
                    self.finish(0);
                    return;
                }
                ++self._pass;
                self._next = 0;
                self.fill_chunk();
                self.write_chunk();
            });
            return;
        }
        _in_flight = std::min<uint64_t>(_lu.block_count() - _next, _chunk.size() / bs());
        _chunk_started = Pacer::Clock::now();
        submit(IoOp::write, _next * bs(), _in_flight * bs(), _chunk.data(), [](SanitizeOp& self) {
            self._next += self._in_flight;
            self.progress(self._in_flight);
            self.pace();
        });
    }

    // Between two chunks: on at once, or after a timer when the chunk ran ahead of the rate.
    void pace() {
        Pacer::Clock::duration wait =
            _pacer.wait_after(_in_flight * bs(), _chunk_started, Pacer::Clock::now());
        if (wait <= Pacer::Clock::duration::zero() || !_reactor) {
            write_chunk();
            return;
        }
        // While it waits, the timer owns the operation: a reactor torn down first (shutdown) frees it.
        std::unique_ptr<SanitizeOp> self(this);
        _reactor->add_timer(wait, [self = std::move(self)]() mutable { self.release()->write_chunk(); });
    }

    void flush() {
        submit(IoOp::flush, 0, 0, nullptr, [](SanitizeOp& self) { self.finish(0); });
    }

    void progress(uint64_t blocks) {
        _lu.block_state().sanitize.done_blocks.fetch_add(blocks, std::memory_order_relaxed);
        release_aborted_waiter();
    }

    // An IMMED=0 command that a TMF aborted stops waiting now; the operation goes on.
    void release_aborted_waiter() {
        if (_waiter && _waiter->abort_requested()) {
            Execution* waiter = std::exchange(_waiter, nullptr);
            waiter->wait_end([](Execution&) {});
        }
    }

    using Then = void (*)(SanitizeOp&);

    void submit(IoOp op, uint64_t offset, uint64_t length, uint8_t* data, Then then) {
        _iov = {data, data ? length : 0};
        _io.op = op;
        _io.offset = offset;
        _io.length = length;
        _io.iov = data ? &_iov : nullptr;
        _io.iovcnt = data ? 1 : 0;
        _io.fua = false;
        _io.done = [this, then](int error) {
            if (error) {
                finish(error);
                return;
            }
            then(*this);
        };
        _lu.device().submit(_io);
    }

    void finish(int error) {
        _finished = true;
        SanitizeState& state = _lu.block_state().sanitize;
        state.op = nullptr;
        if (error) {
            log_error("lun {}: sanitize failed: {}; the logical unit is in the sanitize failure mode",
                      _lu.lun(), std::strerror(-error));
        } else {
            std::chrono::duration<double> took = Pacer::Clock::now() - _started;
            log_info("lun {}: sanitize complete ({:.1f} s)", _lu.lun(), took.count());
        }
        state.failed.store(error != 0);
        state.exit_allowed.store(error != 0 && _ause);
        _lu.block_state().range_lock.release(_range);
        state.in_progress.store(false);
        if (Execution* waiter = std::exchange(_waiter, nullptr)) {
            waiter->chunk = uint32_t(-error);
            waiter->wait_end([](Execution& cmd) {
                if (cmd.chunk) {
                    cmd.complete_check(Sense::make(SenseKey::medium_error, asc::sanitize_command_failed));
                    return;
                }
                cmd.complete_good();
            });
        }
        // Not inside the device's completion that called us.
        if (_reactor) {
            _reactor->defer([this] { delete this; });
        } else {
            delete this;
        }
    }

    LogicalUnit& _lu;
    net::Reactor* _reactor;
    uint8_t _action;
    bool _ause;
    std::vector<uint8_t> _pattern;
    uint8_t _passes = 1;
    uint8_t _pass = 1;
    bool _invert = false;
    uint64_t _next = 0;      // next block of the pass
    uint64_t _in_flight = 0; // blocks of the write in flight
    Pacer _pacer;
    bool _began = false;    // start() ran: the operation holds (or waits for) the whole medium
    bool _finished = false; // finish() ran
    Pacer::Clock::time_point _started{};
    Pacer::Clock::time_point _chunk_started{};
    Buffer _chunk;
    Execution* _waiter = nullptr;
    RangeLock::Entry _range;
    backstore::IoRequest _io;
    iovec _iov{};
};

namespace {

// Validated: claims the logical unit for the operation and starts it.
void begin(Execution& cmd, SanitizeOp* op) {
    SanitizeState& state = cmd.lu()->block_state().sanitize;
    bool expected = false;
    if (!state.in_progress.compare_exchange_strong(expected, true)) {
        // Another SANITIZE got there between the gate and here.
        delete op;
        cmd.complete_check(Sense::make(SenseKey::not_ready, asc::lu_not_ready_sanitize_in_progress));
        return;
    }
    state.failed.store(false);
    uint8_t action = cmd.op().service_action;
    if (action == sa::sanitize_overwrite) {
        log_info("lun {}: sanitize started (overwrite, {} pass{}, {})", cmd.lu()->lun(), op->passes(),
                 op->passes() == 1 ? "" : "es", rate_text(op->bytes_per_second()));
    } else {
        log_info("lun {}: sanitize started ({}: deallocating every block)", cmd.lu()->lun(),
                 action_name(action));
    }
    bool immed = cmd.cdb()[1] & 0x80;
    if (immed) {
        op->start();
        cmd.complete_good();
        return;
    }
    op->set_waiter(&cmd);
    cmd.wait_begin();
    op->start();
}

void overwrite_parameters(Execution& cmd) {
    uint32_t length = cmd.task().transfer_length;
    if (cmd.data_out_available(length) < length) {
        cmd.complete_check(Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error));
        return;
    }
    const uint8_t* p = cmd.task().buffer.data();
    bool invert = p[0] & 0x80;
    uint8_t test = (p[0] >> 5) & 0x03;
    uint8_t passes = p[0] & 0x1f;
    uint16_t pattern_length = load_be16(p + 2);
    if (test != 0) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(0, 6));
        return;
    }
    if (passes == 0) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(0, 4));
        return;
    }
    if (pattern_length == 0 || pattern_length > cmd.lu()->block_size() ||
        pattern_length != length - overwrite_header) {
        cmd.complete_check(Sense::invalid_field_in_parameter_list(2));
        return;
    }
    bool ause = cmd.cdb()[1] & 0x20;
    auto* op = new SanitizeOp(*cmd.lu(), cmd.task().reactor, sa::sanitize_overwrite, ause);
    op->set_overwrite(std::span<const uint8_t>(p + overwrite_header, pattern_length), passes, invert);
    begin(cmd, op);
}

} // namespace

void sanitize(Execution& cmd) {
    LogicalUnit& lu = *cmd.lu();
    const uint8_t* cdb = cmd.cdb();
    uint8_t action = cmd.op().service_action;
    bool ause = cdb[1] & 0x20;
    uint32_t length = parameter_list_length(cdb);
    cmd.task().transfer_length = length;
    switch (action) {
    case sa::sanitize_overwrite:
        // A header and a pattern of 1 to one block's length.
        if (length <= overwrite_header || length > overwrite_header + lu.block_size()) {
            cmd.complete_check(Sense::invalid_field_in_cdb(7));
            return;
        }
        cmd.fetch_data_out(length, overwrite_parameters);
        return;
    case sa::sanitize_block_erase:
    case sa::sanitize_crypto_erase:
        // The operation table routes both only where the device deallocates.
        if (length != 0) {
            cmd.complete_check(Sense::invalid_field_in_cdb(7));
            return;
        }
        begin(cmd, new SanitizeOp(lu, cmd.task().reactor, action, ause));
        return;
    case sa::sanitize_exit_failure_mode: {
        if (length != 0) {
            cmd.complete_check(Sense::invalid_field_in_cdb(7));
            return;
        }
        SanitizeState& state = lu.block_state().sanitize;
        // Only a failure that allowed an unrestricted exit (AUSE=1) may be left this way; with no
        // failure there is nothing to leave.
        if (state.failed.load() && !state.exit_allowed.load()) {
            cmd.complete_check(Sense::invalid_field_in_cdb(1, 5));
            return;
        }
        state.failed.store(false);
        state.exit_allowed.store(false);
        cmd.complete_good();
        return;
    }
    default:
        // The operation table routes only the service actions above here.
        cmd.complete_check(Sense::invalid_field_in_cdb(1, 4));
        return;
    }
}

std::optional<Sense> sanitize_refuses(const LogicalUnit& lu, const Operation& op) {
    const SanitizeState& state = lu.block_state().sanitize;
    bool in_progress = state.in_progress.load(std::memory_order_acquire);
    bool failed = state.failed.load(std::memory_order_acquire);
    if (!in_progress && !failed) {
        return std::nullopt;
    }
    // SBC-4 4.11: what reports on the device (INQUIRY, REPORT LUNS, REQUEST SENSE, the MAINTENANCE IN
    // reports) still runs; after a failure, so does SANITIZE, to try again or exit.
    if ((op.flags & op_ua_exempt) || op.opcode == op::maintenance_in) {
        return std::nullopt;
    }
    if (in_progress) {
        return Sense::make(SenseKey::not_ready, asc::lu_not_ready_sanitize_in_progress);
    }
    if (op.opcode == op::sanitize) {
        return std::nullopt;
    }
    return Sense::make(SenseKey::medium_error, asc::sanitize_command_failed);
}

std::optional<Sense> sanitize_status(const LogicalUnit& lu) {
    const SanitizeState& state = lu.block_state().sanitize;
    if (state.in_progress.load(std::memory_order_acquire)) {
        Sense s = Sense::make(SenseKey::not_ready, asc::lu_not_ready_sanitize_in_progress);
        // The progress indication shares the sense-key-specific bytes with the field pointer
        // (SPC-4 4.5.2.4.4): SKSV, then the 16-bit fraction done.
        uint64_t total = std::max<uint64_t>(1, state.total_blocks.load(std::memory_order_relaxed));
        uint64_t done = std::min(total, state.done_blocks.load(std::memory_order_relaxed));
        s.field_pointer_valid = true;
        s.in_cdb = false;
        s.field_pointer = uint16_t(std::min<uint64_t>(0xffff, done * 65536 / total));
        return s;
    }
    if (state.failed.load(std::memory_order_acquire)) {
        return Sense::make(SenseKey::medium_error, asc::sanitize_command_failed);
    }
    return std::nullopt;
}

void abandon_sanitize(LogicalUnit& lu) {
    if (SanitizeOp* op = lu.block_state().sanitize.op) {
        op->abandon();
    }
}

} // namespace ispace::scsi::sbc
