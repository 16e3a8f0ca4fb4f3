// Fuzzes the SCSI engine the way the network reaches it: a scsi::TargetDevice with memory backstores,
// driven through net::Reactor::run_once, fed commands (CDB, LUN, direction bits, expected data transfer
// length, immediate and solicited data-out) as the iSCSI front end would pass them. There is no pure
// CDB parser to fuzz on its own: each handler parses and executes (cdb.hpp's table), so the engine as
// a whole is the attack surface. The pure helpers (cdb_length_for, decode_block_range,
// find_operation, check_cdb_usage, decode_lun) are fuzzed on the same bytes first.
//
// Input: a sequence of commands, each
//   [flags][cdb length][EDTL, 3 bytes big-endian][data-out length, 2 bytes][cdb...][data-out...]
//   flags bit 0 R, bit 1 W, bits 3-2 LUN (0, 1 = 4096-byte blocks, 7 = none, raw LUN field from the
//         CDB's last byte), bit 4 ABORT TASK right after submit, bit 5 the fabric loses the data-out,
//         bit 6 the first part of the data-out travels as immediate data, bit 7 LOGICAL UNIT RESET
//
// Invariants checked on every completion (what the iSCSI front end relies on): exactly one
// completion per task and never from inside submit()/data_out_done(); sense within its array and
// parseable when CHECK CONDITION; with GOOD status and R set, a buffer holds the
// min(transfer_length, EDTL) bytes the front end will send; every task completes.
#include "backstore/memory/memory_device.hpp"
#include "fuzz_check.hpp"
#include "net/reactor.hpp"
#include "scsi/cdb.hpp"
#include "scsi/sense.hpp"
#include "scsi/target.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

using namespace ispace;
using namespace ispace::scsi;

namespace {

struct FuzzTask : Task {
    std::vector<uint8_t> out; // the data-out the initiator has for this command
    bool lose_data_out = false;
    int completions = 0;
};

class FuzzFabric final : public Fabric {
public:
    void fetch_data_out(Task& task, uint32_t length) override {
        auto& t = static_cast<FuzzTask&>(task);
        FUZZ_CHECK(t.data_out);
        FUZZ_CHECK(length <= (64u << 20));
        if (t.lose_data_out) {
            t.reactor->defer([this, &t] { call_engine([&] { target->data_out_done(t, false); }); });
            return;
        }
        // As the iSCSI front end: R2Ts until min(length, EDTL) bytes are there; what the initiator
        // did not have arrives as zeros.
        uint32_t n = std::min(length, t.expected_length);
        Buffer b = Buffer::allocate_zeroed(n);
        if (size_t copy = std::min<size_t>(n, t.out.size()); copy > 0) {
            std::memcpy(b.data(), t.out.data(), copy);
        }
        t.buffer = std::move(b);
        t.data_out_length = n;
        t.reactor->defer([this, &t] { call_engine([&] { target->data_out_done(t, true); }); });
    }

    void cancel_data_out(Task& task) override {}

    void complete(Task& task) override {
        auto& t = static_cast<FuzzTask&>(task);
        FUZZ_CHECK(!inside_engine); // never from inside submit()/data_out_done()
        ++t.completions;
        FUZZ_CHECK(t.completions == 1);
        FUZZ_CHECK(t.sense_length <= Task::max_sense);
        if (t.aborted) {
            return;
        }
        if (t.status == Status::check_condition) {
            FUZZ_CHECK(t.sense_length > 0);
            FUZZ_CHECK(parse_sense({t.sense.data(), t.sense_length}).has_value());
        }
        if (t.status == Status::good && t.data_in && !t.buffer.empty()) {
            // The front end sends min(transfer_length, EDTL) bytes from the buffer. A command whose
            // direction is data-out (a WRITE sent with R and without W) ends GOOD with an empty buffer
            // and a non-zero transfer_length; src/target clamps to buffer.size() and sends no data
            // then (regressions/fuzz_cdb/write-sent-as-read). A buffer that exists must hold it all.
            size_t send = std::min<size_t>(t.transfer_length, t.expected_length);
            FUZZ_CHECK(t.buffer.size() >= send);
        }
    }

    template <typename F> void call_engine(F&& f) {
        inside_engine = true;
        f();
        inside_engine = false;
    }

    TargetDevice* target = nullptr;
    bool inside_engine = false;
};

net::Reactor& reactor() {
    static net::Reactor* r = new net::Reactor(0); // one for the process: io_uring setup is slow
    return *r;
}

// The pure CDB helpers on the raw bytes.
void pure_helpers(const uint8_t* cdb, size_t length) {
    uint8_t padded[16] = {};
    std::memcpy(padded, cdb, std::min<size_t>(length, 16));
    (void)cdb_length_for(padded[0]);
    (void)decode_block_range(padded);
    (void)transfer_length_offset(padded);
    Sense error;
    if (const Operation* op = find_operation({padded, std::max<size_t>(length, 1)}, error)) {
        FUZZ_CHECK(op->opcode == padded[0]);
        (void)check_cdb_usage(*op, padded);
    }
    BlockRange r = decode_block_range(padded);
    (void)check_lba_range(r.lba, r.blocks, 1000);
    uint64_t field = 0;
    std::memcpy(&field, padded + 8, 8);
    if (auto lun = decode_lun(field)) {
        FUZZ_CHECK(*lun <= max_lun);
        FUZZ_CHECK(decode_lun(encode_lun(*lun)) == lun);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    net::Reactor& r = reactor();
    FuzzFabric fabric;
    auto target = std::make_unique<TargetDevice>("iqn.2026-11.org.ispace:fuzz");
    fabric.target = target.get();
    LuOptions options;
    options.max_transfer_bytes = 256 * 1024; // bounds what one command allocates, as the daemon does
    options.optimal_transfer_bytes = 64 * 1024;
    // Unpaced: a paced SANITIZE OVERWRITE of many passes outlasts the wait for each command below, and
    // pacing is timing, which the unit tests cover (pacer.hpp); here every command must complete.
    options.sanitize_bytes_per_second = 0;
    FUZZ_CHECK(target->add_lu(0, std::make_unique<backstore::MemoryDevice>(1 << 20, 512), options).ok());
    FUZZ_CHECK(target->add_lu(1, std::make_unique<backstore::MemoryDevice>(1 << 20, 4096), options).ok());
    Nexus nexus;
    nexus.id = 1;
    nexus.initiator_name = "iqn.1994-05.com.example:fuzz";
    nexus.initiator_port = nexus.initiator_name + ",i,0x23d000000001";
    nexus.target_name = target->name();
    nexus.target_port = target->name() + ",t,0x0001";
    target->nexus_added(nexus);
    bool verbose = std::getenv("ISPACE_FUZZ_VERBOSE") != nullptr;

    std::vector<std::unique_ptr<FuzzTask>> tasks;
    uint64_t tag = 1;
    // Consume the power-on unit attentions, so the fuzzer's first command reaches its handler.
    for (uint64_t lun : {0, 1}) {
        auto tur = std::make_unique<FuzzTask>();
        tur->fabric = &fabric;
        tur->reactor = &r;
        tur->nexus = &nexus;
        tur->tag = tag++;
        tur->lun = encode_lun(lun);
        tur->cdb_length = 16;
        FuzzTask& t = *tur;
        tasks.push_back(std::move(tur));
        r.post([&] { fabric.call_engine([&] { target->submit(t); }); });
        for (int i = 0; i < 200 && t.completions == 0; ++i) {
            r.run_once(std::chrono::milliseconds(i < 10 ? 0 : 1));
        }
        FUZZ_CHECK(t.completions == 1);
    }
    size_t pos = 0;
    while (pos + 7 <= size && tasks.size() < 32) {
        uint8_t flags = data[pos];
        size_t cdb_length = std::clamp<size_t>(data[pos + 1], 1, Task::max_cdb);
        uint32_t edtl = uint32_t(data[pos + 2]) << 16 | uint32_t(data[pos + 3]) << 8 | data[pos + 4];
        size_t out_length = size_t(data[pos + 5]) << 8 | data[pos + 6];
        pos += 7;
        cdb_length = std::min(cdb_length, size - pos);
        if (cdb_length == 0) {
            break;
        }
        const uint8_t* cdb = data + pos;
        pos += cdb_length;
        out_length = std::min(out_length, size - pos);
        pure_helpers(cdb, cdb_length);

        auto t = std::make_unique<FuzzTask>();
        t->fabric = &fabric;
        t->reactor = &r;
        t->nexus = &nexus;
        t->tag = tag++;
        std::memcpy(t->cdb.data(), cdb, cdb_length);
        t->cdb_length = uint16_t(std::max<size_t>(cdb_length, 16));
        switch ((flags >> 2) & 3) {
        case 0:
            t->lun = encode_lun(0);
            break;
        case 1:
            t->lun = encode_lun(1);
            break;
        case 2:
            t->lun = encode_lun(7);
            break;
        case 3:
            t->lun = uint64_t(cdb[cdb_length - 1]) << 56 | uint64_t(cdb[0]) << 48;
            break;
        }
        t->data_in = (flags & 0x01) != 0;
        t->data_out = (flags & 0x02) != 0;
        t->expected_length = edtl;
        t->out.assign(data + pos, data + pos + out_length);
        pos += out_length;
        t->lose_data_out = (flags & 0x20) != 0;
        if ((flags & 0x40) && t->data_out) {
            // Immediate data: at most EDTL, as the iSCSI layer guarantees.
            uint32_t n = uint32_t(std::min<size_t>({t->out.size(), edtl, 65536}));
            t->buffer = Buffer::allocate(std::max<uint32_t>(n, 1));
            t->buffer.resize(n);
            if (n > 0) {
                std::memcpy(t->buffer.data(), t->out.data(), n);
            }
            t->data_out_length = n;
        }
        FuzzTask& task = *t;
        tasks.push_back(std::move(t));
        r.post([&] {
            fabric.call_engine([&] { target->submit(task); });
            if (flags & 0x10) {
                target->abort_task(nexus, task.lun, task.tag, [](TmfResult) {});
            }
            if (flags & 0x80) {
                target->logical_unit_reset(nexus, 0, [](TmfResult) {});
            }
        });
        for (int i = 0; i < 200 && task.completions == 0; ++i) {
            r.run_once(std::chrono::milliseconds(i < 10 ? 0 : 1));
        }
        FUZZ_CHECK(task.completions == 1);
        if (verbose) {
            auto sense = parse_sense({task.sense.data(), task.sense_length});
            std::fprintf(stderr, "cdb %02x: status %02x sense %x/%04x transfer %u aborted %d\n", cdb[0],
                         unsigned(task.status), sense ? unsigned(sense->key) : 0u,
                         sense ? unsigned(sense->code) : 0u, task.transfer_length, int(task.aborted));
        }
    }
    for (int i = 0; i < 20; ++i) {
        r.run_once(std::chrono::milliseconds(0));
    }
    for (const auto& t : tasks) {
        FUZZ_CHECK(t->completions == 1);
    }
    target->nexus_removed(nexus);
    for (int i = 0; i < 5; ++i) {
        r.run_once(std::chrono::milliseconds(0));
    }
    return 0;
}
