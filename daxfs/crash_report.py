"""crashcheck report: a summary and a chart of a results file (``crashcheck --json``).

    crashcheck report RESULTS.json [-o CHART.png]

The summary has one line per workload family (seq-1, seq-2, each shipped workload) and
crash model; the chart shows the states checked and the states failed per family, one
bar per model (log: a disk with a write cache; fences: adr pmem).
"""
import argparse
import json
import sys

PROG = "crashcheck report"


def load(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a crashcheck results file ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or not all(
            isinstance(r, dict) and {"family", "mode", "states", "failures"} <= set(r)
            for r in doc["runs"]):
        raise ValueError(f"{path} is not a crashcheck results file (no runs); "
                         "make one with crashcheck --json FILE")
    return doc


def summarize(doc: dict) -> dict:
    """{(family, mode): {"workloads", "states", "failed", "repaired", "seconds"}}"""
    out = {}
    for r in doc["runs"]:
        s = out.setdefault((str(r["family"]), str(r["mode"])),
                           {"workloads": 0, "states": 0, "failed": 0, "repaired": 0,
                            "seconds": 0.0})
        s["workloads"] += 1
        s["states"] += int(r["states"])
        s["failed"] += len(r["failures"])
        s["repaired"] += int(r.get("repaired", 0))
        s["seconds"] += float(r.get("check_seconds", 0.0))
    return out


def chart(summary: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = sorted({f for f, _ in summary}, key=lambda f: (not f.startswith("seq-"), f))
    modes = sorted({m for _, m in summary})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(families) + 2), 6.5),
                                      sharex=True)
    width = 0.8 / max(len(modes), 1)
    colors = {"log": "#4c72b0", "fences": "#dd8452"}
    for i, mode in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(families))]
        states = [summary.get((f, mode), {}).get("states", 0) for f in families]
        failed = [summary.get((f, mode), {}).get("failed", 0) for f in families]
        label = {"log": "log (disk with a write cache)", "fences": "fences (adr pmem)"}.get(mode, mode)
        top.bar(xs, states, width, label=label, color=colors.get(mode))
        bottom.bar(xs, failed, width, label=label, color=colors.get(mode))
        for x, n in zip(xs, states):
            if n:
                top.annotate(f"{n:,}", (x, n), ha="center", va="bottom", fontsize=7)
        for x, n in zip(xs, failed):
            bottom.annotate(str(n), (x, n), ha="center", va="bottom", fontsize=7)
    top.set_yscale("log")
    top.set_ylabel("crash states checked")
    top.legend(fontsize=8)
    top.set_title(title, fontsize=10)
    from matplotlib.ticker import MaxNLocator
    most = max([v.get("failed", 0) for v in summary.values()] + [1])
    bottom.set_ylim(0, most * 1.25)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("states failed")
    bottom.set_xticks(range(len(families)))
    bottom.set_xticklabels(families, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("results", help="a results file written by crashcheck --json")
    p.add_argument("-o", "--output", help="the chart (PNG; default: RESULTS with .png)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        doc = load(args.results)
    except ValueError as e:
        print(f"crashcheck: {e}", file=sys.stderr)
        return 2
    summary = summarize(doc)
    total = {"states": 0, "failed": 0, "repaired": 0}
    print(f"{'family':<24} {'mode':<7} {'workloads':>9} {'states':>9} {'failed':>7} "
          f"{'repaired':>8} {'s/state':>8}")
    for (fam, mode), s in sorted(summary.items()):
        # checking time of one worker per state (the wall-clock rate is in the total)
        cost = s["seconds"] / s["states"] if s["states"] else 0
        print(f"{fam:<24} {mode:<7} {s['workloads']:>9} {s['states']:>9} {s['failed']:>7} "
              f"{s['repaired']:>8} {cost:>8.3f}")
        for k in total:
            total[k] += s[k]
    secs = float(doc.get("seconds", 0))
    print(f"total: {total['states']} states, {total['failed']} failed, {total['repaired']} "
          f"repaired by fsck, in {secs:.0f} s on {doc.get('workers', '?')} workers "
          f"({total['states'] / secs if secs else 0:.0f} states/s)"
          + (", interrupted" if doc.get("interrupted") else ""))
    out = args.output or (args.results[:-5] if args.results.endswith(".json")
                          else args.results) + ".png"
    title = (f"crashcheck: {total['states']:,} crash states, {total['failed']} failed "
             f"(seed {doc.get('seed', '?')})")
    try:
        chart(summary, out, title)
    except OSError as e:
        print(f"crashcheck: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"chart: {out}")
    return 0
