"""bench.py's summary: Markdown tables of medians, ratios to OpenSSH and server CPU."""

import os
import statistics


def fmt(v):
    if v is None:
        return "-"
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    return f"{v:.{digits}f}"


def fx(x):
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def report(b, names, results, algos, header, workloads):
    """Markdown: algorithms; medians with the ratio to OpenSSH (ratio of medians) and the
    range of the per-round ratios; server CPU per unit of work; W8 detail; failures.
    ``workloads``: bench.py's WORKLOADS (title, unit, higher is better, CPU unit)."""
    ref = "openssh" if "openssh" in names else None
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    L = [*header, "", "| target | kex | cipher+MAC (server->client) | server version |"]
    L += ["|---|---|---|---|"]
    L += [f"| {t} | {a['kex']} | {a['s2c']} | {a['version']} |" for t, a in algos.items()]
    L += ["", f"Load average at the end: {load}", "", "Medians of the rounds; in brackets: "]
    L[-1] += "ratio to OpenSSH (ratio of medians), range of the per-round ratios."
    cols = " | ".join(names) + " |"
    L += ["", f"| workload | unit | better | {cols}", "|---|---|---|" + "---|" * len(names)]
    wls = [w for w in workloads if any(k[0] == w for k in results)]

    def med(w, t, i):
        vals = [r[i] for r in results.get((w, t), []) if not r[0]["err"] and r[i] is not None]
        return statistics.median(vals) if vals else None

    def cell(w, t, i):
        v, rs = med(w, t, i), results.get((w, t), [])
        nok = sum(1 for r in rs if not r[0]["err"])
        if v is None:
            return f"FAILED {len(rs) - nok}/{len(rs)}" if rs else "n/a"
        c, vr = fmt(v), (med(w, ref, i) if ref and t != ref else None)
        if vr:
            pairs = zip(rs, results.get((w, ref), []), strict=False)
            per = [a[i] / o[i] for a, o in pairs if not a[0]["err"] and not o[0]["err"] and o[i]]
            rng = f", {fx(min(per))[:-1]}-{fx(max(per))}" if len(per) > 1 else ""
            c += f" ({fx(v / vr)}{rng})"
        return c + (f" [{nok}/{len(rs)} ok]" if nok < len(rs) else "")

    for w in wls:
        title, unit, hib, _ = workloads[w]
        cells = " | ".join(cell(w, t, 1) for t in names)
        L.append(
            f"| {w} {title.format(**b.p)} | {unit} | {'higher' if hib else 'lower'} | {cells} |"
        )
    L += ["", "Server CPU per unit of work (all server processes; lower is better):", ""]
    L += [f"| workload | unit | {cols}", "|---|---|" + "---|" * len(names)]
    for w in wls:
        if workloads[w][3]:
            cells = " | ".join(cell(w, t, 2) for t in names)
            L.append(f"| {w} | {workloads[w][3]} | {cells} |")
    L.append("")
    for (w, t), rs in results.items():
        for i, (r, _v, _c) in enumerate(rs):
            if r.get("detail"):
                L.append(f"- {w} {t} round {i + 1}: {r['detail']}")
            if r["err"]:
                L.append(f"- {w} {t} round {i + 1} FAILED: {r['err'][:300]}")
    return L


def latency_table(names, results, ids, windows, size_mib):
    """W9: MB/s against window / RTT, the bound each run has (uploads: the server's receive
    window; downloads: the `ssh` client's 2 MiB). ``ids``: {id: (direction, rtt_ms)};
    ``windows``: {target: (upload window in bytes or None, where it came from)}."""
    ref = "openssh" if "openssh" in names else None

    def med(w, t, net=False):
        ok = [r for r in results.get((w, t), []) if not r[0]["err"] and r[1] is not None]
        if net:  # MB/s with the set-up time of a session over this RTT taken off
            ok = [
                (r[0], r[1] * r[0]["wall"] / (r[0]["wall"] - r[0]["setup"]))
                for r in ok
                if r[0].get("setup") and r[0]["wall"] > r[0]["setup"]
            ]
        vals = [r[1] for r in ok]
        return statistics.median(vals) if vals else None

    L = ["", f"W9, {size_mib} MiB through delayproxy.py: medians in MB/s; in brackets: the"]
    L[-1] += " ratio to OpenSSH, then the median as a fraction of window / RTT."
    L += ["Gross: the whole `sftp` run, as above. Net: the same run less the time of a session"]
    L[-1] += " that only lists / through the same proxy (the median set-up time is given)."
    L += ["Window / RTT in MB/s (10^6 B/s): uploads use the server's receive window, downloads"]
    L[-1] += " the `ssh` client's 2 MiB (OpenSSH CHAN_SES_WINDOW_DEFAULT)."
    L += ["", "Upload windows used:"]
    L += [
        f"- {t}: {fmt(w / (1 << 20)) if w else '?'} MiB ({note})"
        for t, (w, note) in windows.items()
    ]
    cols = " | ".join(names)
    gross = " | ".join(f"{t} gross" for t in names)
    net = " | ".join(f"{t} net (set-up s)" for t in names)
    L += ["", f"| W9 | RTT | {gross} | {net} | window / RTT: {cols} |"]
    L += ["|---|---|" + "---|" * (3 * len(names))]

    def cell(w, t, bound, net):
        v, vr = med(w, t, net), (med(w, ref, net) if ref and t != ref else None)
        extra = [fx(v / vr)] if v and vr else []
        extra += [f"{v / bound:.2f} of bound"] if v and bound else []
        if net:
            setups = [r[0]["setup"] for r in results.get((w, t), []) if r[0].get("setup")]
            extra += [f"{statistics.median(setups):.2f} s"] if setups else []
        return fmt(v) + (f" ({', '.join(extra)})" if extra else "")

    for w, (d, rtt) in ids.items():
        cells, bnds = [], []
        for t in names:
            win = windows.get(t, (None, ""))[0] if d == "up" else 2 << 20
            bnds.append(win / (rtt / 1000) / 1e6 if win and rtt > 0 else None)
        cells = [cell(w, t, bd, False) for t, bd in zip(names, bnds, strict=True)]
        cells += [cell(w, t, bd, True) for t, bd in zip(names, bnds, strict=True)]
        bcells = [fmt(x) if x else "-" for x in bnds]
        L.append(f"| {w} {d}load | {rtt:g} ms | {' | '.join(cells + bcells)} |")
    return L
