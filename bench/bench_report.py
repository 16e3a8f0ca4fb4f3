"""What make bench prints and draws from its results: medians, ratios, the fraction of each loopback
limit, the sweeps, memory, and every failure by name. A failed run contributes no figure anywhere."""
import os
import statistics
import subprocess

KIB, MIB = 1 << 10, 1 << 20

# The rows of the main table: (workload key, label, client, metric, lower is better).
ROWS = [
    ("perf_rand_4k_qd1", "4K rand read QD1", "iscsi-perf", "iops", False),
    ("perf_rand_4k_qd32", "4K rand read QD32", "iscsi-perf", "iops", False),
    ("qemu_rand_4k_qd32", "4K rand write QD32 (scattered)", "qemu-img", "iops", False),
    ("perf_seq_1024k_qd16", "1M seq read QD16", "iscsi-perf", "mibs", False),
    ("qemu_seq_1m_qd8", "1M seq write QD8", "qemu-img", "mibs", False),
    ("ispace_mix70_4k_qd32", "4K 70/30 read/write QD32", "ispace", "iops", False),
    ("ispace_rand_4k_qd32_c1", "4K rand read QD32, 1 conn", "ispace", "iops", False),
    ("ispace_rand_4k_qd32_c2", "4K rand read QD32, 2 conn MC/S", "ispace", "iops", False),
    ("ispace_rand_4k_qd32_c4", "4K rand read QD32, 4 conn MC/S", "ispace", "iops", False),
    ("ispace_rand_4k_qd32_s4", "4K rand read, 4 sessions x QD32", "ispace", "iops", False),
]
UNITS = {"iops": "IOPS", "mibs": "MiB/s", "rate": "/s", "p99_us": "us", "cpu_us": "us"}


def size_name(n):
    for unit, div in (("G", 1 << 30), ("M", MIB), ("K", KIB)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B"


def median(runs, metric):
    values = [r[metric] for r in runs if r.get("ok") and r.get(metric) is not None]
    return statistics.median(values) if values else None


def fmt(v, metric):
    if v is None:
        return "-"
    if metric in ("mibs",):
        return f"{v:,.1f}"
    if metric in ("cpu_us",):
        return f"{v:,.2f}"
    if metric in ("cycles",):
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def run_summary(w, r):
    if r.get("na"):
        return f"n/a: {r['error']}"
    if not r.get("ok"):
        return f"FAILED: {r['error']}"
    m = w["metric"]
    text = f"{fmt(r[m], m)} {UNITS[m]}"
    if "p99_us" in r:
        text += f", p99 {r['p99_us']:,.0f} us"
    if "target_cpu_s" in r and r.get("ios"):
        text += f", target CPU {1e6 * r['target_cpu_s'] / r['ios']:.2f} us/IO"
    return text


def rss_summary(r):
    if not r.get("ok"):
        return f"FAILED: {r['error']}"
    return (f"{r['rss_kib'] / 1024:,.1f} MiB (idle {r['rss_idle_kib'] / 1024:,.1f} MiB, "
            f"{r['per_kib']:,.1f} KiB each)")


def cell(runs, metric):
    """The median of the runs that succeeded, FAILED when none did, n/a when the target cannot."""
    if not runs:
        return None, "-"
    if all(r.get("na") for r in runs):
        return None, "n/a"
    ok = [r for r in runs if r.get("ok")]
    v = median(runs, metric)
    if v is None:
        return None, "FAILED"
    text = fmt(v, metric)
    if len(ok) < len(runs):
        text += f" [{len(ok)}/{len(runs)}]"
    return v, text


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def cpu_per_io(runs, cycles):
    """The target's CPU per I/O over the runs that succeeded: cycles (perf) or microseconds (task-clock)."""
    values = []
    for r in runs:
        if not r.get("ok") or not r.get("ios"):
            continue
        if cycles:
            if r.get("target_cycles"):
                values.append(r["target_cycles"] / r["ios"])
        elif r.get("target_cpu_s") is not None:
            values.append(1e6 * r["target_cpu_s"] / r["ios"])
    return statistics.median(values) if values else None


def summary(doc, cpu_workload):
    names = [t["name"] for t in doc["targets"]]
    w = doc["workloads"]
    cycles = doc["machine"]["cpu_per_io_source"].startswith("perf")
    out = {"targets": names, "rows": [], "failures": [], "own_failures": []}
    for key, label, client, metric, lower in ROWS:
        if key not in w:
            continue
        row = {"key": key, "label": label, "client": client, "metric": metric, "median": {}, "cell": {}}
        for n in names:
            row["median"][n], row["cell"][n] = cell(w[key]["runs"].get(n, []), metric)
        out["rows"].append(row)
    if "ispace_rand_4k_qd32_c1" in w:
        row = {"key": "ispace_rand_4k_qd32_c1", "label": "p99 latency, 4K rand read QD32", "client": "ispace",
               "metric": "p99_us", "lower_is_better": True, "median": {}, "cell": {}}
        for n in names:
            row["median"][n], row["cell"][n] = cell(w["ispace_rand_4k_qd32_c1"]["runs"].get(n, []), "p99_us")
        out["rows"].append(row)
    if cpu_workload in w:
        metric = "cycles" if cycles else "cpu_us"
        row = {"key": cpu_workload, "label": "target CPU per 4K read" + (" (cycles)" if cycles else " (task-clock)"),
               "client": "iscsi-perf", "metric": metric, "lower_is_better": True, "median": {}, "cell": {}}
        for n in names:
            v = cpu_per_io(w[cpu_workload]["runs"].get(n, []), cycles)
            row["median"][n], row["cell"][n] = v, fmt(v, metric) if v is not None else "FAILED"
        out["rows"].append(row)

    limits = {}
    if "limit_iperf3" in w:
        limits["iperf3_mibs"] = median(w["limit_iperf3"]["runs"].get("limit", []), "mibs")
    if "limit_pingpong" in w:
        limits["pingpong_rate"] = median(w["limit_pingpong"]["runs"].get("limit", []), "rate")
    out["limits"] = limits
    fr = {}
    for key, limit, metric, label in (("perf_rand_4k_qd1", "pingpong_rate", "iops", "4K rand read QD1 / ping-pong"),
                                      ("perf_seq_1024k_qd16", "iperf3_mibs", "mibs", "1M seq read QD16 / iperf3"),
                                      ("qemu_seq_1m_qd8", "iperf3_mibs", "mibs", "1M seq write QD8 / iperf3")):
        if key in w and limits.get(limit):
            fr[label] = {n: (v / limits[limit] if (v := median(w[key]["runs"].get(n, []), metric)) else None)
                         for n in names}
    out["fraction_of_limit"] = fr

    def sweep(prefix, param):
        table = {}
        for key, wl in w.items():
            if key.startswith(prefix):
                table[wl["params"][param]] = {n: median(wl["runs"].get(n, []), wl["metric"]) for n in names}
        return dict(sorted(table.items()))

    out["qd_sweep_iops"] = sweep("perf_rand_4k_qd", "qd")
    out["bs_sweep_mibs"] = sweep("perf_seq_", "bs")
    for key, wl in w.items():
        for n, runs in wl["runs"].items():
            for r in runs:
                if not r.get("ok") and not r.get("na"):
                    f = {"workload": wl["label"], "target": n, "round": r.get("round"), "error": r.get("error")}
                    out["failures"].append(f)
                    if n in ("ispaced", "baseline", "limit"):
                        out["own_failures"].append(f)
    for n, rss in doc["rss"].items():
        for label, r in rss.items():
            if not r.get("ok"):
                f = {"workload": f"RSS, idle {label}", "target": n, "round": None, "error": r.get("error")}
                out["failures"].append(f)
                out["own_failures"].append(f)
    return out


def table(doc):
    s = doc["summary"]
    m = doc["machine"]
    st = doc["settings"]
    names = s["targets"]
    has_base = "baseline" in names
    lines = []
    kind = "QUICK smoke run" if st["quick"] else "full run"
    lines.append(f"ispace bench ({kind}): {', '.join(names)}; median of {st['rounds']} alternating round(s) x "
                 f"{st['seconds']} s; LUN files of {size_name(st['size'])} on {m['lun_dir']} ({m['lun_dir_fstype']}), "
                 "page-cache hot")
    lines.append(f"machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, load "
                 f"{m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}, {m['date']}, commit "
                 f"{(m['git_commit'] or '?')[:12]}{' (dirty)' if m['git_dirty'] else ''}")
    if doc.get("interrupted"):
        lines.append("INTERRUPTED: the figures below cover only the runs that finished")
    lines.append("")
    head = f"{'workload':<40} {'client':<10} {'unit':<6}" + "".join(f"{n:>13}" for n in names)
    head += f"{'ispaced/tgt':>13}" + (f"{'isp/baseline':>13}" if has_base else "")
    lines.append(head)
    lines.append("-" * len(head))
    for row in s["rows"]:
        unit = UNITS.get(row["metric"], row["metric"])
        label = row["label"] + (" *" if row.get("lower_is_better") else "")
        line = f"{label:<40} {row['client']:<10} {unit:<6}" + "".join(f"{row['cell'][n]:>13}" for n in names)
        line += f"{ratio(row['median'].get('ispaced'), row['median'].get('tgt')):>13}"
        if has_base:
            line += f"{ratio(row['median'].get('ispaced'), row['median'].get('baseline')):>13}"
        lines.append(line)
    lines.append("* lower is better. [k/n]: only k of n rounds succeeded (the median is theirs); FAILED: none did;")
    lines.append("  n/a: the target cannot (tgt allows one connection per session). Ratios are of medians.")

    lim = s["limits"]
    lines.append("")
    lines.append("limits measured in the same run (medians)")
    ip, pp = lim.get("iperf3_mibs"), lim.get("pingpong_rate")
    lines.append(f"  iperf3, one TCP stream over loopback      "
                 + (f"{ip:,.0f} MiB/s ({ip * 8 * MIB / 1e9:.1f} Gbit/s)" if ip else "FAILED"))
    lines.append(f"  ping-pong, 48-byte request/4,144-byte answer "
                 + (f"{pp:,.0f} round trips/s ({1e6 / pp:.1f} us each)" if pp else "FAILED"))
    if s["fraction_of_limit"]:
        lines.append("")
        lines.append(f"{'fraction of the limit':<40}" + "".join(f"{n:>13}" for n in names))
        for label, per in s["fraction_of_limit"].items():
            lines.append(f"{label:<40}" + "".join(f"{(f'{v:.2f}' if v is not None else '-'):>13}" for n in names
                                                  for v in [per.get(n)]))

    for title, data, metric in (("4K rand read IOPS by queue depth (iscsi-perf)", s["qd_sweep_iops"], "iops"),
                                ("seq read MiB/s by block size, QD16 (iscsi-perf)", s["bs_sweep_mibs"], "mibs")):
        if not data:
            continue
        lines.append("")
        lines.append(f"{title:<50}" + "".join(f"{n:>13}" for n in names) + f"{'ispaced/tgt':>13}")
        for x, per in data.items():
            label = f"QD{x}" if metric == "iops" else size_name(int(x))
            lines.append(f"  {label:<48}" + "".join(f"{(fmt(per.get(n), metric) if per.get(n) else 'FAILED'):>13}"
                                                   for n in names) + f"{ratio(per.get('ispaced'), per.get('tgt')):>13}")

    if doc["rss"]:
        lines.append("")
        lines.append("memory (VmRSS) of a fresh ispaced with idle logged-in connections (raw logins that then sit)")
        for n, rss in doc["rss"].items():
            for label, r in rss.items():
                count = r.get("count", "?")
                lines.append(f"  {n:<9} {count:>5} idle {label:<12} {rss_summary(r)}")

    if doc["notes"]:
        lines.append("")
        lines.extend(f"note: {n}" for n in doc["notes"])
    if s["failures"]:
        lines.append("")
        lines.append(f"{len(s['failures'])} failed run(s) (no figure taken from them):")
        for f in s["failures"]:
            lines.append(f"  {f['workload']} / {f['target']} / round {f['round']}: {f['error']}")
    return "\n".join(lines)


def plot(doc, out_dir, script):
    """latest.png: IOPS by queue depth and MiB/s by block size, one line per target (gnuplot)."""
    s = doc["summary"]
    names = s["targets"]
    qd_dat, bs_dat = os.path.join(out_dir, "qd_sweep.dat"), os.path.join(out_dir, "bs_sweep.dat")
    for path, data, scale in ((qd_dat, s["qd_sweep_iops"], 1), (bs_dat, s["bs_sweep_mibs"], KIB)):
        with open(path, "w") as f:
            f.write("x " + " ".join(names) + "\n")
            for x, per in data.items():
                # A failed point is left out of its line ('?' is gnuplot's missing value here).
                f.write(f"{int(x) // scale} " + " ".join(f"{per[n]:.1f}" if per.get(n) else "?" for n in names) + "\n")
    png = os.path.join(out_dir, "latest.png")
    st, m = doc["settings"], doc["machine"]
    title = (f"{'QUICK smoke run, ' if st['quick'] else ''}median of {st['rounds']} x {st['seconds']} s, "
             f"{m['cores']} cores, {m['date'][:10]}, {(m['git_commit'] or '?')[:10]}")
    try:
        r = subprocess.run(["gnuplot", "-e", f"qd_file='{qd_dat}'; bs_file='{bs_dat}'; out='{png}'; "
                            f"ncols={len(names) + 1}; subtitle='{title}'", script],
                           capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    if r.returncode != 0:
        print(f"gnuplot failed: {r.stderr.strip()}")
        return None
    return png
