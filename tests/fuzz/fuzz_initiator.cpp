// Fuzzes the initiator's full-feature receive paths: what a hostile or broken target may answer to the
// commands of a logged-in session (Data-In offsets, lengths and DataSNs, R2Ts, SCSI Responses with
// their sense and residuals, NOP-Ins, Rejects, Asynchronous Messages, ITTs of other tasks, ...). The
// holder of a data-space reaches its members through this code, so a member target is as untrusted
// as any peer on the wire.
//
// The target answers correctly: the initiator unit tests' FakeTarget (tests/unit/initiator, ERL 0), or
// ispaced's own target in this process (mgmt::Runtime, a memory LUN, ErrorRecoveryLevel 2 granted, so
// that SNACKs and connection recovery with TASK REASSIGN run too), both on 127.0.0.1:0. Between it and
// the initiator a FaultInjector (src/initiator/fault_transport.hpp) rewrites, drops, delays or cuts the
// inbound PDUs the input names, counted after the login on the session's first connection.
// Reconnections go through untouched, so a session can always recover.
//
// Input:
//   byte 0     options: bit 0 DataDigest CRC32C (a header digest would reject every header edit, so
//              headers go without one); bit 1 InitialR2T=Yes and no immediate data (R2T paths);
//              bit 2 a smaller MaxRecvDataSegmentLength (4 KiB: more Data-In PDUs per read);
//              bit 3 ispaced's target at ERL 2 instead of the FakeTarget
//   byte 1     commands: 1 + (byte & 7)
//   4 bytes per command: bit 0 of the first: write (else read); LBA (2 bytes, big-endian, modulo the
//              disk); blocks: 1 + (byte & 127) of 512 bytes, cut to the disk's end
//   the rest, 4 bytes each, up to 64: inbound PDU number (after the login), byte offset in that PDU
//              (header first), value, and what to do: 0-3 set the byte, 4-5 XOR it, 6 drop the PDU, 7
//              delay it 30 ms, 8 cut the connection there (mod 9)
//
// Checked beyond "no crash, no sanitizer report":
//  - every command completes exactly once, and within a bound (the session's command, task management
//    and recovery timeouts are short here: a command that never completes is a hang);
//  - a read never writes outside its buffer (the buffer's slack up to its capacity keeps a pattern),
//    and nothing writes into a read's buffer after its completion ran (compared after the session is
//    closed);
//  - the session closes.
#include "common/log.hpp"
#include "fake_target.hpp"
#include "fuzz_check.hpp"
#include "initiator/fault_transport.hpp"
#include "initiator/internals.hpp"
#include "ispace/initiator.hpp"
#include "mgmt/manager.hpp"
#include "mgmt/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

using namespace ispace;
using namespace ispace::initiator;
using namespace std::chrono_literals;

namespace {

constexpr uint32_t block_size = 512;
constexpr uint8_t canary = 0xa5;
constexpr const char* ispaced_iqn = "iqn.2026-12.org.ispace.fuzz:target";
constexpr uint64_t ispaced_blocks = 4096; // memory:2M

struct Harness {
    std::unique_ptr<test::FakeTarget> target;
    std::unique_ptr<mgmt::Runtime> runtime; // ispaced's target
    uint16_t runtime_port = 0;
    std::shared_ptr<FaultInjector> faults;
    std::unique_ptr<Initiator> initiator;
};

Harness& harness() {
    static Harness* h = [] {
        // ISPACE_FUZZ_VERBOSE=1: the initiator's and the target's logs, to see what an input did.
        set_log_level(std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr ? LogLevel::debug : LogLevel::off);
        auto* made = new Harness;
        made->target = std::make_unique<test::FakeTarget>();
        mgmt::RuntimeOptions options;
        options.reactors = 1;
        made->runtime = std::make_unique<mgmt::Runtime>(options);
        iscsi_target::ConfigOverlay overlay;
        overlay.listen = {"127.0.0.1:0"};
        overlay.iqn = ispaced_iqn;
        overlay.luns = {"memory:2M"};
        overlay.max_erl = 2;
        auto config = mgmt::load_configuration({}, overlay, made->runtime->backstores());
        if (config) {
            // No pause before a lost connection is logged in again (ERL 2 recovery waits Time2Wait,
            // 2 s by default): an input stays well inside its time bound.
            config->params["DefaultTime2Wait"] = "0";
        }
        if (!config || !iscsi_target::resolve_negotiation(*config) || !made->runtime->serve(*config)) {
            __builtin_trap();
        }
        made->runtime_port = made->runtime->target_server()->portal_endpoints().at(0).port();
        made->faults = std::make_shared<FaultInjector>();
        InitiatorOptions o;
        o.threads = 1;
        o.initiator_name = "iqn.2026-12.org.ispace.fuzz:initiator";
        set_transport_factory(o, made->faults);
        made->initiator = std::make_unique<Initiator>(std::move(o));
        return made;
    }();
    return *h;
}

struct Command {
    bool write = false;
    uint64_t lba = 0;
    uint32_t blocks = 1;
};

// What the rule does with the n-th inbound PDU after the login.
struct PduFault {
    FaultAction action = FaultAction::pass;
    std::vector<ByteEdit> edits;
};

struct Outcome {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<unsigned> completions;               // per command
    std::vector<std::vector<uint8_t>> at_completion; // a read buffer's bytes when its completion ran
    size_t done = 0;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    Harness& h = harness();
    uint8_t flags = data[0];
    const bool ispaced = (flags & 8) != 0;
    const uint64_t disk_blocks = ispaced ? ispaced_blocks : h.target->options().blocks;

    size_t count = 1 + (data[1] & 7);
    size_t pos = 2;
    std::vector<Command> commands;
    for (size_t i = 0; i < count && pos + 4 <= size; ++i, pos += 4) {
        Command c;
        c.write = (data[pos] & 1) != 0;
        c.lba = ((uint64_t(data[pos + 1]) << 8) | data[pos + 2]) % disk_blocks;
        c.blocks = uint32_t(std::min<uint64_t>(1 + (data[pos + 3] & 127), disk_blocks - c.lba));
        commands.push_back(c);
    }
    if (commands.empty()) {
        return 0;
    }
    std::map<uint64_t, PduFault> plan;
    for (size_t n = 0; pos + 4 <= size && n < 64; pos += 4, ++n) {
        PduFault& f = plan[data[pos]];
        uint8_t what = data[pos + 3] % 9;
        if (what <= 5) {
            if (f.action == FaultAction::pass || f.action == FaultAction::edit) {
                f.action = FaultAction::edit;
                f.edits.push_back({data[pos + 1], uint8_t(what <= 3 ? 0x00 : 0xff), data[pos + 2]});
            }
        } else {
            f.action = what == 6   ? FaultAction::drop
                       : what == 7 ? FaultAction::delay
                                   : FaultAction::disconnect;
        }
    }

    // Only the first connection this input opens is edited, and only after its login.
    struct RuleState {
        unsigned connection = 0;
        std::atomic<uint64_t> seen{0};
        std::map<uint64_t, PduFault> plan;
    };
    auto state = std::make_shared<RuleState>();
    state->connection = unsigned(h.faults->stats().connections.load());
    state->plan = std::move(plan);
    h.faults->set_rule([state](const FaultPdu& pdu) {
        Fault f;
        if (pdu.direction != FaultDirection::inbound || pdu.connection != state->connection ||
            pdu.opcode() == iscsi::Opcode::login_response) {
            return f;
        }
        auto it = state->plan.find(state->seen.fetch_add(1));
        if (it == state->plan.end()) {
            return f;
        }
        f.action = it->second.action;
        f.edits = it->second.edits;
        f.delay = 30ms;
        return f;
    });

    SessionOptions o;
    o.host = "127.0.0.1";
    o.port = ispaced ? h.runtime_port : h.target->port();
    o.target_name = ispaced ? ispaced_iqn : h.target->options().target_name;
    o.data_digest = (flags & 1) ? DigestMode::crc32c : DigestMode::none;
    if (flags & 2) {
        o.initial_r2t = true;
        o.immediate_data = false;
    }
    if (flags & 4) {
        o.max_recv_data_segment_length = 4096;
    }
    o.timeouts.connect = 1s;
    o.timeouts.login = 1s;
    o.timeouts.command = 200ms;
    o.timeouts.task_management = 200ms;
    o.timeouts.nop_interval = 0ms;
    o.timeouts.recovery = 1s;
    o.timeouts.reconnect_min = 5ms;
    o.timeouts.reconnect_max = 20ms;
    o.timeouts.logout = 300ms;
    o.command_retries = 1;
    auto session = h.initiator->connect(o);
    if (!session) {
        h.faults->clear_rule();
        return 0; // the login itself is not edited; the fake target may refuse a session now and then
    }

    auto outcome = std::make_shared<Outcome>();
    outcome->completions.assign(commands.size(), 0);
    outcome->at_completion.resize(commands.size());
    std::vector<Buffer> buffers;
    for (size_t i = 0; i < commands.size(); ++i) {
        const Command& c = commands[i];
        size_t bytes = size_t(c.blocks) * block_size;
        Buffer b = Buffer::allocate(bytes + 1); // a size class with slack after the command's bytes
        std::memset(b.data(), c.write ? uint8_t(i) : 0, bytes);
        std::memset(b.data() + bytes, canary, b.capacity() - bytes);
        b.resize(bytes);
        buffers.push_back(b);
        Request r = c.write ? make_write(0, c.lba, c.blocks, block_size, b)
                            : make_read(0, c.lba, c.blocks, block_size, b);
        (*session)->submit(std::move(r), [outcome, i, b, write = c.write](Response&&) {
            std::lock_guard lock(outcome->mu);
            FUZZ_CHECK(++outcome->completions[i] == 1);
            if (!write) {
                outcome->at_completion[i].assign(b.data(), b.data() + b.size());
            }
            ++outcome->done;
            outcome->cv.notify_all();
        });
    }
    {
        // A command is bounded by its timeout, ABORT TASK's and LUN RESET's, the recovery timeout and
        // one retry (about 3.2 s; the faults touch the first connection only, so the retry goes through):
        // longer is a hang. With the login's and the logout's limits this stays under the 10 s in which
        // libFuzzer (-timeout=10, scripts/fuzz-smoke.sh) calls an input a hang itself.
        std::unique_lock lock(outcome->mu);
        if (!outcome->cv.wait_for(lock, 6s, [&] { return outcome->done == commands.size(); })) {
            // Say what hung before the trap: which commands, and what the session went through.
            SessionInfo info = (*session)->info();
            std::fprintf(
                stderr,
                "fuzz_initiator: %zu of %zu commands not completed after 6 s (ERL %u, %u connections, "
                "reconnects %llu, connection recoveries %llu, reassignments %llu, SNACKs %llu)\n",
                commands.size() - outcome->done, commands.size(), unsigned(info.error_recovery_level),
                unsigned(info.connections), (unsigned long long)info.reconnects,
                (unsigned long long)info.connection_recoveries, (unsigned long long)info.reassignments,
                (unsigned long long)info.snacks);
            for (size_t i = 0; i < commands.size(); ++i) {
                if (outcome->completions[i] == 0) {
                    std::fprintf(stderr, "  command %zu: %s LBA %llu, %u blocks\n", i,
                                 commands[i].write ? "write" : "read", (unsigned long long)commands[i].lba,
                                 commands[i].blocks);
                }
            }
            FUZZ_CHECK(false);
        }
    }
    (*session)->close();
    session->reset();
    h.faults->clear_rule();

    std::lock_guard lock(outcome->mu);
    for (size_t i = 0; i < commands.size(); ++i) {
        const Buffer& b = buffers[i];
        for (size_t at = b.size(); at < b.capacity(); ++at) {
            FUZZ_CHECK(b.data()[at] == canary);
        }
        if (!commands[i].write) {
            FUZZ_CHECK(std::memcmp(outcome->at_completion[i].data(), b.data(), b.size()) == 0);
        }
    }
    return 0;
}
