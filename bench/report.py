#!/usr/bin/env python3
"""Writes BENCHMARKS.md from bench/results.jsonl (after bench/run.sh and
bench/plot.py). Standard library only."""
import json
import pathlib

here = pathlib.Path(__file__).parent
rows = {}
for line in (here / "results.jsonl").read_text().splitlines():
    if line.strip():
        run = json.loads(line)
        rows[run["label"]] = run


def lat(run, key):
    value = run["latency_ms"][key]
    return ">2000" if value >= 2000 else f"{value:.1f}"


def kib(run):
    return f"{run['server_bytes_per_connection'] / 1024:.1f}"


def cpu(run):
    value = run.get("server_cpu_us_per_delivery")
    return "—" if value is None else f"{value:.2f}"


def row(name, run):
    return (
        f"| {name} | {run['deliveries']:,} / {run['deliveries_expected']:,} | {run['deliveries_per_second']:,.0f} "
        f"| {cpu(run)} | {lat(run, 'p50')} | {lat(run, 'p99')} | {run['missing']} / {run['duplicates_or_out_of_order']} "
        f"| {kib(run)} |"
    )


c = lambda n: rows[f"curve-{n}"]
h, l1, l2, l3 = rows["hold-19000"], rows["latency-1000x1000"], rows["latency-100x1000"], rows["latency-1000x100"]
w, wd, ch = rows["writes-8"], rows["writes-8-durable"], rows["churn-10000"]
met = lambda ok: "yes" if ok else "**no**"
curve_rows = "\n".join(row(f"{n:,}", c(n)) for n in [1000, 5000, 10000, 19000])
anon, signed = rows["fanout-10000-anonymous"], rows["fanout-10000-signed-in"]
signed_rows = "\n".join([row("10,000 anonymous", anon), row("10,000 signed in (10,000 users)", signed)])
chat_rows = "\n".join(
    row(name, rows[label])
    for name, label in [
        ("`chatRoom`, 5,000 members (5,000 users)", "chat-room-5000"),
        ("`changes`, 5,000 signed in (5,000 users)", "changes-5000-signed-in"),
    ]
    if label in rows
)
def snapshot_row(n):
    run = rows.get(f"snapshot-{n}")
    if run is None:
        return f"| {n:,} | — | — | — |"
    cpu = run.get("server_cpu_seconds") or []
    cpu_text = f"{sorted(cpu)[len(cpu) // 2]:.2f}" if cpu else "—"
    return (f"| {n:,} | {run['seconds_to_ready']['median']:.3f} | {run['rows_per_second']:,.0f} "
            f"| {cpu_text} |")


snapshot_rows = "\n".join(snapshot_row(n) for n in [1000, 10000, 100000])
live_rows = "\n".join(
    row(name, rows[label])
    for name, label in [
        ("`liveRows`, 1,000 subscribers × 100 rows/s", "live-1000x100"),
        ("`changes`, 1,000 subscribers × 100 commits/s", "changes-1000x100"),
    ]
    if label in rows
)
ing, up = rows.get("ingest-2000000"), rows.get("upload-1024")
mib = lambda b: f"{b / (1 << 20):.1f}"
stream_values = dict(
    ingest_rate=f"{ing['rows_per_second']:,.0f}" if ing else "—",
    ingest_rows=f"{ing['rows']:,}" if ing else "—",
    ingest_seconds=f"{ing['seconds']:.1f}" if ing else "—",
    ingest_ok=met(ing and ing["rows_per_second"] >= 200000),
    ingest_cpu=f"{ing['server_cpu_us_per_row']:.2f}" if ing and ing.get("server_cpu_us_per_row") else "—",
    upload_rate=f"{up['mebibytes_per_second']:.1f}" if up else "—",
    upload_rss_before=mib(up["server_rss_before_bytes"]) if up else "—",
    upload_rss_peak=mib(up["server_rss_peak_bytes"]) if up else "—",
)
template = (here / "BENCHMARKS.template.md").read_text()
values = dict(
    hold_kib=kib(h), hold_ok=met(h["server_bytes_per_connection"] <= 8192 and h["failed_connections"] == 0),
    c19_rate=f"{c(19000)['deliveries_per_second']:,.0f}", c19_n=f"{c(19000)['deliveries']:,}",
    c10_rate=f"{c(10000)['deliveries_per_second']:,.0f}", l1_rate=f"{l1['deliveries_per_second']:,.0f}",
    fan_ok=met(max(c(19000)["deliveries_per_second"], l1["deliveries_per_second"]) >= 200000),
    l1_p99=lat(l1, "p99"), l1_p50=lat(l1, "p50"), l2_p99=lat(l2, "p99"), l3_p99=lat(l3, "p99"),
    l1_ok=met(l1["latency_ms"]["p99"] <= 10),
    c10_p99=lat(c(10000), "p99"), c10_p50=lat(c(10000), "p50"), c1_p99=lat(c(1000), "p99"),
    c10_ok=met(c(10000)["latency_ms"]["p99"] <= 25),
    w_rate=f"{w['commits_per_second']:,.0f}", w_n=f"{w['delivered']:,}", wd_rate=f"{wd['commits_per_second']:,.0f}",
    w_ok=met(w["commits_per_second"] >= 10000),
    ch_rate=f"{ch['connect_init_subscribe_per_second']:,.0f}", ch_ok=met(ch["connect_init_subscribe_per_second"] >= 5000),
    curve_rows=curve_rows,
    signed_rows=signed_rows,
    chat_rows=chat_rows,
    snapshot_rows=snapshot_rows,
    live_rows=live_rows,
    **stream_values,
    signed_ratio=f"{signed['deliveries_per_second'] / anon['deliveries_per_second']:.0%}",
    signed_kib=kib(signed),
)
(here.parent / "BENCHMARKS.md").write_text(template.format(**values))
print("wrote BENCHMARKS.md")
