// `ispace bench URL`: a closed-loop load generator. --qd commands are always in flight: each completion
// (on a reactor thread) records its latency and submits the next command at once, so the library's
// reactors — all of them with several connections — do the work, not the main thread.
// --connections-churn exercises MC/S under load: a churn thread removes and adds connections of the live
// session (Session::remove_connection / add_connection) while the commands keep going.
#include "cli.hpp"

#include "common/units.hpp"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

namespace ispace::cli {

namespace {

using initiator::Response;

// Latency histogram in nanoseconds: log-linear buckets (16 per power of two, so within ~6%), lock-free.
class Histogram {
public:
    void record(uint64_t ns) {
        _buckets[index(ns)].fetch_add(1, std::memory_order_relaxed);
        uint64_t prev = _max.load(std::memory_order_relaxed);
        while (ns > prev && !_max.compare_exchange_weak(prev, ns, std::memory_order_relaxed)) {
        }
    }
    uint64_t count() const {
        uint64_t n = 0;
        for (const auto& b : _buckets) {
            n += b.load(std::memory_order_relaxed);
        }
        return n;
    }
    // The value below which `q` of the samples fall (upper edge of its bucket).
    uint64_t quantile(double q) const {
        uint64_t n = count();
        if (n == 0) {
            return 0;
        }
        auto want = uint64_t(q * double(n));
        if (want >= n) {
            want = n - 1;
        }
        uint64_t seen = 0;
        for (size_t i = 0; i < _buckets.size(); ++i) {
            seen += _buckets[i].load(std::memory_order_relaxed);
            if (seen > want) {
                return std::min(upper(i), _max.load());
            }
        }
        return _max.load();
    }
    uint64_t max() const { return _max.load(); }

private:
    static constexpr unsigned sub_bits = 4;
    static size_t index(uint64_t v) {
        if (v < (1u << sub_bits)) {
            return size_t(v);
        }
        unsigned msb = 63 - unsigned(std::countl_zero(v));
        uint64_t sub = (v >> (msb - sub_bits)) & ((1u << sub_bits) - 1);
        return size_t((msb - sub_bits + 1) << sub_bits) + size_t(sub);
    }
    static uint64_t upper(size_t i) {
        if (i < (1u << sub_bits)) {
            return i;
        }
        unsigned msb = unsigned(i >> sub_bits) + sub_bits - 1;
        uint64_t sub = i & ((1u << sub_bits) - 1);
        return ((uint64_t(1) << sub_bits | sub) + 1) << (msb - sub_bits);
    }
    std::array<std::atomic<uint64_t>, 64 << sub_bits> _buckets{};
    std::atomic<uint64_t> _max{0};
};

struct BenchOptions {
    SessionKnobs knobs;
    std::string url;
    std::string rw = "randread";
    std::string bs = "4k";
    double seconds = 5;
    unsigned rwmixread = 50;
    std::string size; // region to use; default the whole LUN
    bool json = false;
    double churn_seconds = 0; // --connections-churn; 0: off
};

// Every `period`, removes one connection of the session or adds one back, between 1 and `most`: down to
// one, then up to `most`, and so on. The connection removed rotates over the session's CIDs, the leading
// one included (once logged in it is a connection like the others). Runs on its own thread: add and
// remove block until done (a removal waits for the commands in flight on that connection).
class Churn {
public:
    Churn(Session& s, std::chrono::duration<double> period, unsigned most)
        : _session(s), _period(std::chrono::duration_cast<std::chrono::steady_clock::duration>(period)),
          _most(most) {
        _thread = std::thread([this] { loop(); });
    }
    ~Churn() { stop(); }

    void stop() {
        {
            std::lock_guard lock(_mu);
            _stop = true;
        }
        _cv.notify_all();
        if (_thread.joinable()) {
            _thread.join();
        }
    }
    unsigned refused() const { return _refused; }
    const std::string& first_refusal() const { return _first_refusal; }

private:
    void loop() {
        bool removing = true;
        size_t turn = 0;
        std::unique_lock lock(_mu);
        for (;;) {
            if (_cv.wait_for(lock, _period, [&] { return _stop; })) {
                return;
            }
            lock.unlock();
            auto info = _session.info();
            size_t now = info.connection_ids.size();
            if (now <= 1) {
                removing = false;
            } else if (now >= _most) {
                removing = true;
            }
            if (removing && now > 1) {
                uint16_t cid = info.connection_ids[turn++ % now];
                if (auto r = _session.remove_connection(cid); !r) {
                    refusal(r.error().message);
                }
            } else if (!removing && now < _most) {
                if (auto r = _session.add_connection(); !r) {
                    refusal(r.error().message);
                }
            }
            lock.lock();
        }
    }
    void refusal(const std::string& message) {
        // Not fatal: a session being logged in again after a connection loss refuses both for a moment.
        if (_refused++ == 0) {
            _first_refusal = message;
        }
        warning("--connections-churn: " + message);
    }

    Session& _session;
    std::chrono::steady_clock::duration _period;
    unsigned _most;
    std::mutex _mu;
    std::condition_variable _cv;
    bool _stop = false;
    unsigned _refused = 0; // the churn thread's, read after stop()
    std::string _first_refusal;
    std::thread _thread;
};

class Bench {
public:
    Bench(Session& s, uint64_t lun, uint32_t block_size, uint64_t region_blocks, uint32_t io_blocks,
          bool random, unsigned read_percent)
        : _session(s), _lun(lun), _block_size(block_size), _region_blocks(region_blocks),
          _io_blocks(io_blocks), _random(random), _read_percent(read_percent) {
        size_t bytes = size_t(io_blocks) * block_size;
        _write_data = Buffer::allocate(bytes);
        std::mt19937_64 rng(42);
        for (size_t i = 0; i < bytes; i += 8) {
            uint64_t v = rng();
            std::memcpy(_write_data.data() + i, &v, std::min<size_t>(8, bytes - i));
        }
    }

    void run(unsigned qd, double seconds) {
        _start = std::chrono::steady_clock::now();
        _deadline = _start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                 std::chrono::duration<double>(seconds));
        for (unsigned i = 0; i < qd; ++i) {
            _inflight.fetch_add(1);
            submit(i);
        }
        std::unique_lock lock(_mu);
        _cv.wait(lock, [&] { return _inflight.load() == 0; });
        _elapsed = std::chrono::duration<double>(_last_completion - _start).count();
    }

    const Histogram& latency() const { return _latency; }
    uint64_t reads() const { return _reads.load(); }
    uint64_t writes() const { return _writes.load(); }
    uint64_t errors() const { return _errors.load(); }
    const std::string& first_error() const { return _first_error; }
    double elapsed() const { return _elapsed; }

private:
    // Next offset and direction for slot `slot`; thread-safe.
    void submit(unsigned slot) {
        uint64_t n = _counter.fetch_add(1, std::memory_order_relaxed);
        uint64_t slots = _region_blocks / _io_blocks;
        uint64_t lba;
        if (_random) {
            // splitmix64 of the command number: cheap, thread-safe, uniformly spread.
            uint64_t z = n + 0x9e3779b97f4a7c15ull * (slot + 1);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            z ^= z >> 31;
            lba = (z % slots) * _io_blocks;
        } else {
            lba = (n % slots) * _io_blocks;
        }
        bool read =
            _read_percent >= 100 || (_read_percent > 0 && ((n * 2654435761u) >> 7) % 100 < _read_percent);
        initiator::Request request =
            read ? initiator::make_read(_lun, lba, _io_blocks, _block_size)
                 : initiator::make_write(_lun, lba, _io_blocks, _block_size, _write_data);
        auto sent = std::chrono::steady_clock::now();
        _session.submit(std::move(request), [this, slot, sent, read](Response&& r) {
            auto now = std::chrono::steady_clock::now();
            _latency.record(
                uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(now - sent).count()));
            (read ? _reads : _writes).fetch_add(1, std::memory_order_relaxed);
            if (!r.ok()) {
                if (_errors.fetch_add(1) == 0) {
                    std::lock_guard lock(_mu);
                    _first_error = r.describe();
                }
            }
            if (now < _deadline && _errors.load(std::memory_order_relaxed) == 0) {
                submit(slot);
                return;
            }
            std::lock_guard lock(_mu);
            _last_completion = std::max(_last_completion, now);
            if (_inflight.fetch_sub(1) == 1) {
                _cv.notify_all();
            }
        });
    }

    Session& _session;
    uint64_t _lun;
    uint32_t _block_size;
    uint64_t _region_blocks;
    uint32_t _io_blocks;
    bool _random;
    unsigned _read_percent;
    Buffer _write_data;
    std::chrono::steady_clock::time_point _start;
    std::chrono::steady_clock::time_point _deadline;
    std::chrono::steady_clock::time_point _last_completion{};
    std::atomic<uint64_t> _counter{0};
    std::atomic<unsigned> _inflight{0};
    std::atomic<uint64_t> _reads{0};
    std::atomic<uint64_t> _writes{0};
    std::atomic<uint64_t> _errors{0};
    Histogram _latency;
    std::mutex _mu;
    std::condition_variable _cv;
    std::string _first_error;
    double _elapsed = 0;
};

std::string usec(uint64_t ns) {
    double us = double(ns) / 1000.0;
    return us < 10     ? fmt::format("{:.2f}", us)
           : us < 1000 ? fmt::format("{:.1f}", us)
                       : fmt::format("{:.0f}", us);
}

int run_bench(GlobalOptions& global, BenchOptions& o) {
    auto url = parse_lun_url(o.url);
    if (!url) {
        error(url.error().message);
        return exit_usage;
    }
    bool random = o.rw == "randread" || o.rw == "randwrite" || o.rw == "randrw";
    unsigned read_percent = o.rw == "randread" || o.rw == "read" ? 100 : o.rw == "randrw" ? o.rwmixread : 0;
    auto bs = parse_size(o.bs);
    if (!bs || *bs == 0 || *bs > Buffer::max_size) {
        error(fmt::format("--bs {}: expected a size such as 4k or 1M (at most 64M)", o.bs));
        return exit_usage;
    }
    if (o.seconds <= 0) {
        error("--time must be positive");
        return exit_usage;
    }
    if (o.churn_seconds < 0 || (o.churn_seconds > 0 && o.knobs.connections < 2)) {
        error("--connections-churn SECONDS: a positive period, with --connections 2 or more (it removes and "
              "adds connections between 1 and --connections)");
        return exit_usage;
    }
    if (auto d = parse_digest_option(o.knobs.digest); !d) {
        error(d.error().message);
        return exit_usage;
    }
    Initiator ini(initiator_options(global));
    auto session = open_session(ini, *url, o.knobs);
    if (!session) {
        error(session.error().message);
        return exit_failure;
    }
    Session& s = **session;
    auto cap = s.read_capacity(*url->lun);
    if (!cap) {
        error(cap.error().message);
        return exit_failure;
    }
    if (*bs % cap->block_size != 0) {
        error(fmt::format("--bs {}: not a multiple of the LUN's {}-byte block size", o.bs, cap->block_size));
        return exit_usage;
    }
    uint64_t region_blocks = cap->blocks;
    if (!o.size.empty()) {
        auto size = parse_size(o.size);
        if (!size || *size < *bs) {
            error(fmt::format("--size {}: expected a size of at least --bs", o.size));
            return exit_usage;
        }
        region_blocks = std::min(region_blocks, *size / cap->block_size);
    }
    auto io_blocks = uint32_t(*bs / cap->block_size);
    if (region_blocks < io_blocks) {
        error("the LUN is smaller than one I/O");
        return exit_failure;
    }
    if (read_percent < 100) {
        // Said before the run, not after it: every write would be refused, and the run would measure
        // nothing but the refusals.
        if (auto wp = s.write_protected(*url->lun); wp && *wp) {
            error(fmt::format("LUN {} of {} is read-only (write protected); --rw {} writes. Nothing was run.",
                              *url->lun, url->target_name, o.rw));
            return exit_failure;
        }
    }
    Bench bench(s, *url->lun, cap->block_size, region_blocks, io_blocks, random, read_percent);
    std::optional<Churn> churn;
    if (o.churn_seconds > 0) {
        // Up to what the session got at login: the target may allow fewer than --connections.
        unsigned most = std::max(2u, s.info().connections);
        churn.emplace(s, std::chrono::duration<double>(o.churn_seconds), most);
    }
    bench.run(o.knobs.queue_depth, o.seconds);
    if (churn) {
        churn->stop();
    }
    auto info = s.info();
    s.close();

    double secs = bench.elapsed() > 0 ? bench.elapsed() : o.seconds;
    uint64_t ios = bench.reads() + bench.writes();
    if (bench.errors() > 0) {
        // No figure for a run that failed: a bandwidth computed from commands that returned an error
        // (every 16M command refused, a write to a read-only LUN) measured nothing but the refusal.
        error(fmt::format("{} of {} command(s) failed; the first: {}. No figures are reported for a run "
                          "that failed.",
                          bench.errors(), ios, bench.first_error()));
        return exit_failure;
    }
    double iops = double(ios) / secs;
    double mib = double(ios) * double(*bs) / secs / (1024.0 * 1024.0);
    const Histogram& h = bench.latency();
    std::string digest = info.data_digest ? "crc32c" : "none";
    // On any stderr, not only a terminal (as `cp` does): a cron job or CI log that keeps stderr sees the
    // figure even when stdout goes elsewhere.
    fmt::print(stderr, "bench {}: {:.0f} IOPS, {:.1f} MiB/s, p99 {} us, {} commands in {:.1f} s\n", o.rw,
               iops, mib, usec(h.quantile(0.99)), ios, secs);
    if (o.json) {
        auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
        nlohmann::json d = {{"rw", o.rw},
                            {"bs", *bs},
                            {"qd", o.knobs.queue_depth},
                            {"connections", info.connections},
                            {"threads", ini.threads()},
                            {"seconds", secs},
                            {"digest", digest},
                            {"reads", bench.reads()},
                            {"writes", bench.writes()},
                            {"iops", iops},
                            {"read_iops", double(bench.reads()) / secs},
                            {"write_iops", double(bench.writes()) / secs},
                            {"bytes_per_second", double(ios) * double(*bs) / secs},
                            {"latency_us",
                             {{"p50", us(h.quantile(0.50))},
                              {"p99", us(h.quantile(0.99))},
                              {"p99_9", us(h.quantile(0.999))},
                              {"max", us(h.max())}}},
                            {"reconnects", info.reconnects},
                            {"retries", info.retries},
                            {"unit_attentions", info.unit_attentions},
                            {"connections_added", info.connections_added},
                            {"connections_removed", info.connections_removed},
                            {"churn_refusals", churn ? churn->refused() : 0u}};
        fmt::print("{}\n", d.dump(2));
        return exit_ok;
    }
    fmt::print("{}: bs={} qd={} connections={} threads={} time={:.1f}s digest={}\n", o.rw,
               human_bytes(double(*bs)), o.knobs.queue_depth, info.connections, ini.threads(), secs, digest);
    fmt::print("  IOPS:      {:.0f}", iops);
    if (read_percent > 0 && read_percent < 100) {
        fmt::print(" (read {:.0f}, write {:.0f})", double(bench.reads()) / secs,
                   double(bench.writes()) / secs);
    }
    fmt::print("\n  bandwidth: {:.1f} MiB/s\n", mib);
    fmt::print("  latency:   p50 {} us   p99 {} us   p99.9 {} us   max {} us\n", usec(h.quantile(0.50)),
               usec(h.quantile(0.99)), usec(h.quantile(0.999)), usec(h.max()));
    if (info.reconnects || info.retries) {
        fmt::print("  recovery:  {} reconnects, {} retries\n", info.reconnects, info.retries);
    }
    if (churn) {
        fmt::print("  churn:     every {} s: {} connection(s) removed, {} added", o.churn_seconds,
                   info.connections_removed, info.connections_added);
        if (churn->refused() > 0) {
            fmt::print(", {} refused (the first: {})", churn->refused(), churn->first_refusal());
        }
        fmt::print("\n");
    }
    return exit_ok;
}

} // namespace

Runner add_bench(CLI::App& app, GlobalOptions& global) {
    auto o = std::make_shared<BenchOptions>();
    o->knobs.queue_depth = 32;
    auto* cmd = app.add_subcommand("bench", "Measure a LUN: IOPS, bandwidth and latency percentiles");
    cmd->add_option("URL", o->url, "iscsi://[user%secret@]HOST[:PORT]/IQN/LUN")->required();
    cmd->add_option("--rw", o->rw, "Pattern: randread, randwrite, read, write or randrw")
        ->default_val("randread")
        ->check(CLI::IsMember({"randread", "randwrite", "read", "write", "randrw"}));
    cmd->add_option("--bs", o->bs, "I/O size (a multiple of the block size)")->default_val("4k");
    cmd->add_option("--qd", o->knobs.queue_depth, "Commands in flight")
        ->default_val(32)
        ->check(CLI::Range(1, 4096));
    cmd->add_option("--time", o->seconds, "Seconds to run")->default_val(5);
    cmd->add_option("--connections", o->knobs.connections, "TCP connections per session (MC/S)")
        ->default_val(1)
        ->check(CLI::Range(1, 64));
    cmd->add_option("--digest", o->knobs.digest,
                    "Header and data digests: crc32c (when the target does them), crc32c-only or none")
        ->check(CLI::IsMember({"crc32c", "crc32c-only", "none"}));
    cmd->add_option("--rwmixread", o->rwmixread, "With randrw: percentage of reads")
        ->default_val(50)
        ->check(CLI::Range(0, 100));
    cmd->add_option("--size", o->size, "Use only the first SIZE bytes of the LUN (default: all of it)");
    cmd->add_option("--connections-churn", o->churn_seconds,
                    "MC/S under load: every SECONDS remove one connection of the running session (its "
                    "commands in flight finish first, then it logs out) or add one back, between 1 and "
                    "--connections; the counts are printed at the end")
        ->type_name("SECONDS");
    cmd->add_flag("--json", o->json, "Print the figures as JSON (fields in docs/cli.md)");
    cmd->footer(R"(Examples:
  ispace bench iscsi://192.0.2.10/iqn.2026-01.com.example:store/1
  ispace bench iscsi://h/iqn.2026-01.com.example:a/1 --rw randwrite --bs 64k --qd 16 --time 10 --connections 2
  ispace bench iscsi://h/iqn.2026-01.com.example:a/1 --connections 4 --connections-churn 0.5 --time 10
    (connections leave and join the session every half second while the load runs: any failed
    command fails the run)

Write patterns overwrite the LUN's data. Latency is from submit() to the completion, per command.
A one-line summary goes to stderr as well; a run in which any command failed reports no figure.)");
    return [&global, o] { return run_bench(global, *o); };
}

} // namespace ispace::cli
