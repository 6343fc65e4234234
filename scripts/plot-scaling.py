#!/usr/bin/env python3
"""Plot the results of `ferry-bench --scaling --json PATH` as a PNG.

Four panels: aggregate MB/s (upload, download, raw TCP copy) and the
server's peak RSS (upload, download; the issue's 256 MiB target as a line),
each against file size (one transfer at a time) and against the number of
transfers at once. Error bars span the min and max over the runs; RSS points
are the highest peak over the runs.

Usage:
    scripts/bench.sh --scaling --runs 3 --json target/scaling.json
    scripts/plot-scaling.py target/scaling.json [target/scaling.png]

It needs matplotlib, which the project does not install (the test setup
stays lean). Get it in a virtualenv of its own:
    python3 -m venv target/plot-env
    target/plot-env/bin/pip install matplotlib
    target/plot-env/bin/python scripts/plot-scaling.py target/scaling.json
"""

import argparse
import json
import sys
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30

UPLOAD, DOWNLOAD, RAW = "tab:blue", "tab:orange", "tab:gray"
# Line style per connection mode; "single" (one transfer) starts both lines.
STYLES = {"per-transfer": "-", "shared": "--"}


def import_pyplot():
    """matplotlib's pyplot with a file-only backend, or a clear exit."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "plot-scaling.py: matplotlib is not installed. Install it in a virtualenv:\n"
            "  python3 -m venv target/plot-env && target/plot-env/bin/pip install matplotlib\n"
            "then run: target/plot-env/bin/python scripts/plot-scaling.py RESULTS.json"
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def size_label(size):
    if size % GIB == 0:
        return f"{size // GIB} GiB"
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size} B"


def rate(series):
    """Median and (below, above) distances to min and max, for error bars."""
    r = series["mb_per_s"]
    return r["median"], (r["median"] - r["min"], r["max"] - r["median"])


def peak(series):
    return series.get("server_peak_rss_mib", {}).get("max")


def plot_rates(axis, xs, rows_by_label, raw_rows):
    """MB/s lines: upload and download per label, and the raw copies."""
    for label, rows in rows_by_label.items():
        style = STYLES.get(label, "-")
        for key, color, name in (("upload", UPLOAD, "upload"), ("download", DOWNLOAD, "download")):
            points = [(xs(row), *rate(row[key])) for row in rows]
            if not points:
                continue
            x, y, spread = zip(*points)
            below, above = zip(*spread)
            suffix = f", {label}" if label != "single" else ""
            axis.errorbar(x, y, yerr=(below, above), color=color, linestyle=style, marker="o", capsize=3,
                          label=f"ferry {name}{suffix}")
    points = [(xs(row), *rate(row["raw"])) for row in raw_rows]
    if points:
        x, y, spread = zip(*points)
        below, above = zip(*spread)
        axis.errorbar(x, y, yerr=(below, above), color=RAW, linestyle=":", marker="s", capsize=3,
                      label="raw TCP copies (as many at once)")
    axis.set_ylabel("aggregate MB/s (MB = 10⁶ bytes)")
    axis.set_ylim(bottom=0)


def plot_rss(axis, xs, rows_by_label, target):
    for label, rows in rows_by_label.items():
        style = STYLES.get(label, "-")
        for key, color, name in (("upload", UPLOAD, "upload"), ("download", DOWNLOAD, "download")):
            points = [(xs(row), peak(row[key])) for row in rows if peak(row[key]) is not None]
            if not points:
                continue
            x, y = zip(*points)
            suffix = f", {label}" if label != "single" else ""
            axis.plot(x, y, color=color, linestyle=style, marker="o", label=f"server, {name}{suffix}")
    if target:
        axis.axhline(target, color="tab:red", linewidth=1, label=f"target {target:g} MiB")
    axis.set_ylabel("server peak RSS (MiB)")
    axis.set_ylim(bottom=0)


def by_mode(rows):
    """Rows per connection mode; the one-transfer row begins every mode's line."""
    modes = sorted({row["connections"] for row in rows} - {"single"})
    single = [row for row in rows if row["connections"] == "single"]
    if not modes:
        return {"single": single} if single else {}
    return {mode: sorted(single + [r for r in rows if r["connections"] == mode], key=lambda r: r["concurrency"])
            for mode in modes}


def unique_by(rows, key):
    seen, out = set(), []
    for row in rows:
        if row[key] not in seen:
            seen.add(row[key])
            out.append(row)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the file written by ferry-bench --scaling --json PATH")
    parser.add_argument("png", type=Path, nargs="?", help="the image to write (default: RESULTS with .png)")
    args = parser.parse_args()

    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"plot-scaling.py: cannot read {args.results}: {e}")
    if not isinstance(results, dict) or results.get("mode") != "scaling":
        sys.exit(f"plot-scaling.py: {args.results} is not the JSON of `ferry-bench --scaling --json PATH`")
    pyplot = import_pyplot()

    by_size = sorted(results.get("by_size", []), key=lambda r: r["size_bytes"])
    by_concurrency = sorted(results.get("by_concurrency", []), key=lambda r: r["concurrency"])
    target = results.get("rss_target_mib")
    machine = results.get("machine", {})

    figure, ((size_rate, conc_rate), (size_rss, conc_rss)) = pyplot.subplots(2, 2, figsize=(14, 10), sharex="col")
    size_x = lambda row: row["size_bytes"]  # noqa: E731
    conc_x = lambda row: row["concurrency"]  # noqa: E731

    if by_size:
        plot_rates(size_rate, size_x, {"single": by_size}, by_size)
        plot_rss(size_rss, size_x, {"single": by_size}, target)
        sizes = [row["size_bytes"] for row in by_size]
        size_rss.set_xscale("log", base=2)
        size_rss.set_xticks(sizes, [size_label(s) for s in sizes])
        size_rss.minorticks_off()
    else:
        for axis in (size_rate, size_rss):
            axis.text(0.5, 0.5, "no file-size rows", ha="center", transform=axis.transAxes)
    size_rate.set_title("against file size (one transfer at a time)")
    size_rss.set_xlabel("file size")

    if by_concurrency:
        modes = by_mode(by_concurrency)
        plot_rates(conc_rate, conc_x, modes, unique_by(by_concurrency, "concurrency"))
        plot_rss(conc_rss, conc_x, modes, target)
        levels = sorted({row["concurrency"] for row in by_concurrency})
        conc_rss.set_xscale("log", base=2)
        conc_rss.set_xticks(levels, [str(n) for n in levels])
        conc_rss.minorticks_off()
    else:
        for axis in (conc_rate, conc_rss):
            axis.text(0.5, 0.5, "no concurrency rows", ha="center", transform=axis.transAxes)
    each = results.get("concurrency_size_bytes")
    conc_rate.set_title(f"against transfers at once ({size_label(each)} each)" if each else "against transfers at once")
    conc_rss.set_xlabel("transfers at once")

    for axis in (size_rate, conc_rate, size_rss, conc_rss):
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.suptitle(
        f"ferry-bench --scaling: {results.get('runs')} run(s) per point, nproc {machine.get('nproc')}, "
        f"kernel {machine.get('kernel')}, {machine.get('filesystem')}; error bars: min–max over the runs"
    )
    figure.tight_layout()
    output = args.png or args.results.with_suffix(".png")
    figure.savefig(output, dpi=100)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
