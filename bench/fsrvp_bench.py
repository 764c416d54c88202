"""FSRVP commit latency (client-timed CommitShadowCopySet) and fence hold time (from the
coordinator's "commit decided" log lines: held_us is the longest any participant held writes),
for sets of several shares, with writers running, against Umbra and against Samba's FSRVP.

Driven by bench/fsrvp.sh; prints one JSON object per measured case on stdout.
usage: fsrvp_bench.py --system umbra|samba --port P --user U --password W --shares S1,S2,...
                      --rounds N --label L [--coordinator-log PATH]
"""
import argparse
import json
import os
import re
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "clients"))
import fsrvp_codes  # noqa: E402  (the same NDR client the result-code tests use)


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def decided_lines(path):
    if not path:
        return []
    with open(path, errors="replace") as f:
        return [l for l in f if "commit decided" in l]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--shares", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--label", required=True)
    ap.add_argument("--coordinator-log")
    a = ap.parse_args()
    shares = a.shares.split(",")
    args = types.SimpleNamespace(host="127.0.0.1", port=a.port, user=a.user, password=a.password)
    client = fsrvp_codes.Client(args)
    commits_ms, totals_ms = [], []
    before = len(decided_lines(a.coordinator_log))
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        assert client.set_context(0) == 0
        res, set_id = client.start()
        assert res == 0, hex(res)
        mappings = []
        for s in shares:
            res, copy = client.add(set_id, "\\\\127.0.0.1\\%s\\" % s)
            assert res == 0, (s, hex(res))
            mappings.append((copy, s))
        assert client.prepare(set_id) == 0
        c0 = time.perf_counter()
        res = client.commit(set_id)
        c1 = time.perf_counter()
        assert res == 0, "commit: " + hex(res)
        assert client.expose(set_id) == 0
        for copy, s in mappings:
            assert client.delete_mapping(set_id, copy, "\\\\127.0.0.1\\%s\\" % s) == 0
        commits_ms.append((c1 - c0) * 1000)
        totals_ms.append((time.perf_counter() - t0) * 1000)
    client.close()
    held_us = []
    for line in decided_lines(a.coordinator_log)[before:]:
        m = re.search(r"held_us=(\d+)", line)
        if m:
            held_us.append(int(m.group(1)))
    out = {
        "system": a.system,
        "case": a.label,
        "shares": len(shares),
        "rounds": a.rounds,
        "commit_p50_ms": round(percentile(commits_ms, 50), 2),
        "commit_p99_ms": round(percentile(commits_ms, 99), 2),
        "cycle_p50_ms": round(percentile(totals_ms, 50), 2),
    }
    if held_us:
        out["fence_p50_ms"] = round(percentile(held_us, 50) / 1000, 2)
        out["fence_p99_ms"] = round(percentile(held_us, 99) / 1000, 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
