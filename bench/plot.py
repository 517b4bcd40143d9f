#!/usr/bin/env python3
"""Draws bench/curves.svg from bench/results.jsonl (the curve-N runs):
deliveries/s and p99 latency against subscribers. Standard library only."""
import json
import pathlib

here = pathlib.Path(__file__).parent
runs = [json.loads(line) for line in (here / "results.jsonl").read_text().splitlines() if line.strip()]
curve = sorted((r for r in runs if r.get("label", "").startswith("curve-")), key=lambda r: r["subscribers"])
xs = [r["subscribers"] for r in curve]
rate = [r["deliveries_per_second"] / 1000 for r in curve]
p99 = [r["latency_ms"]["p99"] for r in curve]

W, H, L, R, T, B = 760, 420, 70, 70, 40, 60
pw, ph = W - L - R, H - T - B
xmax = max(xs) * 1.05
ymax_rate = max(rate) * 1.15
ymax_lat = max(p99) * 1.15


def x(v):
    return L + pw * v / xmax


def y(v, top):
    return T + ph - ph * v / top


def path(values, top):
    return " ".join(f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b, top):.1f}" for i, (a, b) in enumerate(zip(xs, values)))


out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">Tidewire fan-out, 20 commits/s, one table, 2-core machine (server + clients)</text>',
       f'<line x1="{L}" y1="{T+ph}" x2="{L+pw}" y2="{T+ph}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T+ph}" stroke="#1f77b4"/>',
       f'<line x1="{L+pw}" y1="{T}" x2="{L+pw}" y2="{T+ph}" stroke="#d62728"/>']
for i in range(6):
    v = ymax_rate * i / 5
    out.append(f'<text x="{L-8}" y="{y(v, ymax_rate)+4:.1f}" text-anchor="end" fill="#1f77b4">{v:.0f}</text>')
    w = ymax_lat * i / 5
    out.append(f'<text x="{L+pw+8}" y="{y(w, ymax_lat)+4:.1f}" fill="#d62728">{w:.0f}</text>')
    out.append(f'<line x1="{L}" y1="{y(v, ymax_rate):.1f}" x2="{L+pw}" y2="{y(v, ymax_rate):.1f}" stroke="#eee"/>')
for v in xs:
    out.append(f'<text x="{x(v):.1f}" y="{T+ph+18}" text-anchor="middle">{v}</text>')
out.append(f'<text x="{L+pw/2}" y="{H-18}" text-anchor="middle">subscribers (one WebSocket each)</text>')
out.append(f'<text transform="translate(18,{T+ph/2}) rotate(-90)" text-anchor="middle" fill="#1f77b4">deliveries/s (thousands)</text>')
out.append(f'<text transform="translate({W-14},{T+ph/2}) rotate(90)" text-anchor="middle" fill="#d62728">p99 commit→client latency (ms)</text>')
out.append(f'<path d="{path(rate, ymax_rate)}" fill="none" stroke="#1f77b4" stroke-width="2.5"/>')
out.append(f'<path d="{path(p99, ymax_lat)}" fill="none" stroke="#d62728" stroke-width="2.5" stroke-dasharray="6 4"/>')
for a, b, c in zip(xs, rate, p99):
    out.append(f'<circle cx="{x(a):.1f}" cy="{y(b, ymax_rate):.1f}" r="4" fill="#1f77b4"/>')
    out.append(f'<circle cx="{x(a):.1f}" cy="{y(c, ymax_lat):.1f}" r="4" fill="#d62728"/>')
out.append('</svg>')
(here / "curves.svg").write_text("\n".join(out))
print("wrote", here / "curves.svg")
