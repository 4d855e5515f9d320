#!/usr/bin/env python3
"""Summary of a scripts/soak run: reads samples.csv and clients.csv, prints per process the RSS
growth after the warm-up, fd, thread and task ranges, and the load that flowed; exits 1 when
the broker's or the gateway's RSS grew more than the allowed amount after the warm-up, their
fds or tasks drifted, or the load did not get through."""

import argparse
import csv
import sys
from collections import defaultdict

# The processes under test; the node simulators and the web clients are the load.
UNDER_TEST = ("broker", "gateway")


def number(text):
    return None if text in ("", None) else float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--warmup", type=float, required=True, help="seconds")
    parser.add_argument("--rate", type=float, required=True, help="offered updates/s")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rss-limit-kib", type=float, default=1024)
    parser.add_argument("--slack", type=int, default=10, help="fds/tasks allowed to drift")
    args = parser.parse_args()

    rows = defaultdict(list)
    loads = []
    with open(f"{args.dir}/samples.csv") as f:
        for row in csv.DictReader(f):
            rows[row["process"]].append(row)
            if row["process"] == "gateway":
                loads.append(float(row["load1"]))
    failures = []
    print(f"{'process':<14}{'RSS at warm-up':>15}{'RSS at end':>12}{'growth':>10}"
          f"{'range after':>13}{'fds min-max':>13}{'threads':>9}{'tasks min-max':>15}")
    for process, samples in rows.items():
        after = [s for s in samples if float(s["time_s"]) >= args.warmup]
        if len(after) < 2:
            failures.append(f"{process}: fewer than two samples after the warm-up")
            continue
        rss = [float(s["rss_kib"]) for s in after]
        growth = rss[-1] - rss[0]
        fds = [int(s["fds"]) for s in samples]
        fds_after = [int(s["fds"]) for s in after]
        threads = sorted({int(s["threads"]) for s in samples})
        tasks = [number(s["tasks"]) for s in samples]
        tasks_after = [number(s["tasks"]) for s in after]
        task_text = "-"
        if None not in tasks:
            task_text = f"{int(min(tasks))}-{int(max(tasks))}"
        print(f"{process:<14}{rss[0] / 1024:>11.2f} MiB{rss[-1] / 1024:>8.2f} MiB"
              f"{growth:>+7.0f} KiB{(max(rss) - min(rss)):>8.0f} KiB"
              f"{min(fds):>8}-{max(fds):<4}{'/'.join(map(str, threads)):>9}{task_text:>15}")
        if process not in UNDER_TEST:
            continue
        if growth > args.rss_limit_kib:
            failures.append(f"{process}: RSS grew {growth:.0f} KiB after the warm-up "
                            f"(limit {args.rss_limit_kib:.0f})")
        if fds_after[-1] - fds_after[0] > args.slack:
            failures.append(f"{process}: open fds drifted {fds_after[0]} -> {fds_after[-1]}")
        if None in tasks_after:
            failures.append(f"{process}: no aiot_tokio_tasks in /metrics")
        elif tasks_after[-1] - tasks_after[0] > args.slack:
            failures.append(f"{process}: tasks drifted {tasks_after[0]:.0f} -> "
                            f"{tasks_after[-1]:.0f}")

    for process in UNDER_TEST:
        samples = rows.get(process, [])
        if not samples:
            failures.append(f"{process}: no samples")
            continue
        last = samples[-1]
        if number(last["nodes"]) != args.nodes:
            failures.append(f"{process}: {last['nodes']} nodes at the end, not {args.nodes}")

    # The load: what each web client received in the measured window (after the warm-up).
    per_client = defaultdict(list)
    with open(f"{args.dir}/clients.csv") as f:
        for row in csv.DictReader(f):
            per_client[row["client"]].append(row)
    print()
    for client, samples in sorted(per_client.items(), key=lambda kv: int(kv[0])):
        after = [s for s in samples if float(s["time_s"]) >= args.warmup]
        if len(after) < 2:
            failures.append(f"web client {client}: fewer than two samples after the warm-up")
            continue
        seconds = float(after[-1]["time_s"]) - float(after[0]["time_s"])
        updates = int(after[-1]["updates"]) - int(after[0]["updates"])
        offered = args.rate * seconds
        reconnects = int(after[-1]["reconnects"])
        print(f"web client {client:>2} {after[-1]['url']:<28} {updates:>9,} updates in "
              f"{seconds:.0f} s = {updates / seconds:6.1f}/s ({updates / offered:6.1%} of "
              f"the offered {args.rate:g}/s), {after[-1]['uids']} nodes seen, "
              f"{reconnects} reconnects")
        if updates < 0.95 * offered:
            failures.append(f"web client {client}: received {updates} updates, "
                            f"offered {offered:.0f}")
        if reconnects:
            failures.append(f"web client {client}: reconnected {reconnects} times")

    if loads:
        print(f"\nload average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}, "
              f"mean {sum(loads) / len(loads):.2f}")
    if failures:
        print("\nFAIL")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print("\nPASS: the broker's and the gateway's RSS, fds and tasks stayed flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
