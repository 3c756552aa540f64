#!/usr/bin/env python3
"""Draws bench/history.csv as an SVG (tokens/s per version, one panel per model and test,
the competition's figure as a dashed line). Python's standard library only, so it runs on any
machine that has the repository. Usage: bench/plot.py [--out bench/trajectory.svg]"""
import argparse
import csv
import io
import os
import sys
import xml.etree.ElementTree as ET
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
W, H = 450, 230  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 56, 14, 30, 46


def read(path):
    """The rows of the history, each checked: a malformed row is an error naming its line."""
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f if not l.startswith("#")]
    rows = []
    for n, r in enumerate(csv.DictReader(io.StringIO("".join(lines))), start=2):
        try:
            r["tokens_per_s"] = float(r["tokens_per_s"])
        except (TypeError, ValueError):
            sys.exit(f"{path}: data row {n}: tokens_per_s is not a number: {r}")
        if r["kind"] not in ("llorch", "anchor") or r["tokens_per_s"] <= 0 or not r["date"]:
            sys.exit(f"{path}: data row {n}: bad kind, date or figure: {r}")
        rows.append(r)
    return rows


def series(rows):
    """(device, model, test) -> {"llorch": [...], "anchor": [...]}, each sorted by date."""
    out = OrderedDict()
    for r in rows:
        key = (r["device"], r["model"], r["test"])
        out.setdefault(key, {"llorch": [], "anchor": []})[r["kind"]].append(r)
    for s in out.values():
        for k in s:
            s[k].sort(key=lambda r: r["date"])
    return out


def num(v):
    """A figure as the tables print it: no decimals from 100 up."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(key, s, ox, oy):
    """SVG elements of one panel at (ox, oy)."""
    pts = s["llorch"]
    dates = sorted({r["date"] for r in pts + s["anchor"]})
    xs = {d: i for i, d in enumerate(dates)}
    top = max(r["tokens_per_s"] for r in pts + s["anchor"]) * 1.12
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(d):
        return ox + PAD_L + (xs[d] + 0.5) * pw / len(dates)

    def y(v):
        return oy + PAD_T + ph * (1 - v / top)

    e = [f'<text x="{ox + PAD_L}" y="{oy + 18}" font-size="13" font-weight="bold">'
         f'{esc(key[1])}: {esc(key[2])} ({esc(key[0])})</text>',
         f'<rect x="{ox + PAD_L}" y="{oy + PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for i in range(5):  # horizontal grid and its labels
        v = top * i / 4
        e.append(f'<line x1="{ox + PAD_L}" x2="{ox + PAD_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        e.append(f'<text x="{ox + PAD_L - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{num(v)}</text>')
    if s["anchor"]:
        a = s["anchor"]
        e.append(f'<polyline fill="none" stroke="#c33" stroke-dasharray="5,4" points="'
                 + " ".join(f"{x(r['date']):.1f},{y(r['tokens_per_s']):.1f}" for r in a) + '"/>')
        e.append(f'<text x="{ox + PAD_L + pw - 2}" y="{y(a[-1]["tokens_per_s"]) - 4:.1f}" font-size="10" '
                 f'fill="#c33" text-anchor="end">competition {num(a[-1]["tokens_per_s"])}</text>')
    e.append('<polyline fill="none" stroke="#2563eb" stroke-width="2" points="'
             + " ".join(f"{x(r['date']):.1f},{y(r['tokens_per_s']):.1f}" for r in pts) + '"/>')
    for r in pts:
        e.append(f'<circle cx="{x(r["date"]):.1f}" cy="{y(r["tokens_per_s"]):.1f}" r="3" fill="#2563eb">'
                 f'<title>{esc(r["commit"])} {esc(r["date"])}: {r["tokens_per_s"]:,} t/s ({esc(r["source"])})</title></circle>')
        e.append(f'<text x="{x(r["date"]):.1f}" y="{oy + H - PAD_B + 14}" font-size="9" text-anchor="middle">'
                 f'{esc(r["commit"])}</text>')
    last = pts[-1]
    e.append(f'<text x="{x(last["date"]) - 4:.1f}" y="{y(last["tokens_per_s"]) - 7:.1f}" font-size="10" '
             f'fill="#2563eb" text-anchor="end">{num(last["tokens_per_s"])}</text>')
    return e


def render(rows):
    ss = [(k, s) for k, s in series(rows).items() if s["llorch"]]
    cols = 2
    nrows = (len(ss) + cols - 1) // cols
    e = []
    for i, (k, s) in enumerate(ss):
        e += panel(k, s, (i % cols) * W, (i // cols) * H + 24)
    head = ('<text x="8" y="16" font-size="14" font-weight="bold">llorch tokens/s per version '
            '(bench/history.csv; blue: llorch, dashed red: the competition)</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * W}" height="{nrows * H + 24}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{head}'
            + "".join(e) + "</svg>\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--csv", default=os.path.join(HERE, "history.csv"))
    ap.add_argument("--out", default=os.path.join(HERE, "trajectory.svg"))
    a = ap.parse_args()
    svg = render(read(a.csv))
    ET.fromstring(svg)  # well-formed, or this raises
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
