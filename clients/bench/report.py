"""The benchmark's report: the table of figures, each beside its target.

``table_rows`` turns the figures of a run (the JSON's) into rows of figure, value
and target, a dash for a figure the run did not measure (a phase that failed);
``print_table`` lines them up. The targets are those of issues 6, 10, 14 and 16,
shown and never asserted. ``batch_sizes`` and ``describe_batches`` make and word the
batching figures of the pipelined phases from the servers' ``status``.
"""
from __future__ import annotations


TARGETS = {  # issues 6 and 10, shown next to the figures; tests assert none of them
    "ratio": "≥ 0.5", "posts_per_s": "≥ 5,000", "p99_half_load_ms": "≤ 10 ms",
    "cpu_us_per_post": "≤ 450 µs",
    "growth_ratio": "≥ 0.8", "feed_p99_ms": "≤ 20 ms", "catchup_s": "≤ 10 s",
    "failover_s": "≤ 3 s",
    "http_posts_per_s": "≥ 1,000", "http_p99_half_load_ms": "≤ 20 ms",  # issue 14
    "posts_per_s_pipelined": "≥ 12,000", "posts_per_s_fsync_pipelined": "≥ 6,000",  # issue 16
    "p99_half_load_ms_pipelined": "≤ 20 ms", "pipelined_cpu_us_per_post": "≤ 150 µs"}


def table_rows(f: dict) -> list[tuple[str, str, str]]:
    def num(key, fmt="{:,.0f}", unit=""):
        value = f.get(key)
        return "—" if value is None else fmt.format(value) + unit
    def cpu(prefix, per, label):
        """CPU per request: the sum (and CPUs busy), then a row split by process."""
        key = f"{prefix}cpu_us_per_{per}"
        split = f.get(f"{key}_by_process")
        target = TARGETS.get(key, "")
        if not split:
            return [(f"CPU per {label}", "—", target)]
        return [(f"CPU per {label}", f"{f[key]:,.0f} µs ({f[prefix + 'cpu_cores_busy']:.2f} "
                                     f"CPUs busy)", target),
                ("  " + " / ".join(split), " / ".join(f"{us:,.0f}" for us in split.values())
                 + " µs", "")]
    lag = f.get("replication_lag_ms") or {}
    lag_text = (f"<= {lag['p50']:g} / <= {lag['p99']:g} ms" if lag else "—")
    return [
        ("baseline: echo servers, 8 clients", num("baseline_rps", unit=" req/s"), ""),
        *cpu("baseline_", "req", "request, broker + echo servers"),
        ("acked posts, 8 clients", num("posts_per_s", unit=" /s"), TARGETS["posts_per_s"]),
        *cpu("", "post", "acked post, broker + servers"),
        ("acked posts, 8 clients, --fsync",
         f"{num('posts_per_s_fsync', unit=' /s')} ({num('fsync_ratio', '{:.2f}')} of the rate "
         f"without), p50 / p99 {num('p50_ms_fsync', '{:.2f}')} / "
         f"{num('p99_ms_fsync', '{:.2f}')} ms", ""),
        ("ratio to baseline", num("ratio", "{:.2f}"), TARGETS["ratio"]),
        ("latency p50 / p95 / p99",
         f"{num('p50_ms', '{:.2f}')} / {num('p95_ms', '{:.2f}')} / {num('p99_ms', '{:.2f}')} ms", ""),
        ("acked posts, 8 clients x 32 in flight", f"{num('posts_per_s_pipelined', unit=' /s')}, "
         f"p50 / p99 {num('p50_ms_pipelined', '{:.2f}')} / {num('p99_ms_pipelined', '{:.2f}')} ms",
         TARGETS["posts_per_s_pipelined"]),
        *cpu("pipelined_", "post", "acked post pipelined, broker + servers"),
        ("  batch sizes (own events per EVENT)", describe_batches(f.get("batch")), ""),
        ("p99 at half the pipelined load", num("p99_half_load_ms_pipelined", "{:.2f}", " ms"),
         TARGETS["p99_half_load_ms_pipelined"]),
        ("acked posts, 8 x 32 in flight, --fsync",
         f"{num('posts_per_s_fsync_pipelined', unit=' /s')}, "
         f"{describe_batches(f.get('batch_fsync'))}", TARGETS["posts_per_s_fsync_pipelined"]),
        ("acked posts, 1 client", num("posts_per_s_1_client", unit=" /s"), ""),
        ("direct messages, 8 clients", num("dms_per_s", unit=" /s"), ""),
        ("p99 at half load", num("p99_half_load_ms", "{:.2f}", " ms"), TARGETS["p99_half_load_ms"]),
        ("acked posts via HTTP (web gateway), 8 clients",
         f"{num('http_posts_per_s', unit=' /s')}, p50 / p99 {num('http_p50_ms', '{:.2f}')} / "
         f"{num('http_p99_ms', '{:.2f}')} ms", TARGETS["http_posts_per_s"]),
        *cpu("http_", "post", "acked post via HTTP, gateway + broker + servers"),
        ("HTTP p99 at half load", num("http_p99_half_load_ms", "{:.2f}", " ms"),
         TARGETS["http_p99_half_load_ms"]),
        ("writes at 1k / large store",
         f"{num('rate_small_store')} / {num('rate_large_store')} /s", ""),
        ("growth ratio", num("growth_ratio", "{:.2f}"), TARGETS["growth_ratio"]),
        ("feed reads", f"{num('feed_rps', unit=' req/s')}, p99 {num('feed_p99_ms', '{:.2f}', ' ms')}",
         TARGETS["feed_p99_ms"]),
        ("chat reads", f"{num('chat_rps', unit=' req/s')}, p99 {num('chat_p99_ms', '{:.2f}', ' ms')}", ""),
        ("replication lag p50 / p99", lag_text, ""),
        ("catch-up of a new server", f"{num('catchup_s', '{:.2f}', ' s')} "
                                     f"({num('catchup_events')} events)", TARGETS["catchup_s"]),
        ("new coordinator after kill", num("failover_s", "{:.2f}", " s"), TARGETS["failover_s"]),
        ("killed server left in pool", num("pool_residency_s", "{:.2f}", " s"), ""),
    ]


def batch_sizes(before: dict[int, dict], after: dict[int, dict]) -> dict:
    """The servers' batches between two ``status`` readings (``batched``: turns, events,
    largest): the mean and largest number of own events per EVENT, over every server."""
    turns = events = largest = 0
    for server_id, row in after.items():
        now, then = row.get("batched") or [0, 0, 0], \
            (before.get(server_id) or {}).get("batched") or [0, 0, 0]
        turns += now[0] - then[0]
        events += now[1] - then[1]
        largest = max(largest, now[2])
    return {"turns": turns, "events": events, "mean": events / turns if turns else None,
            "largest": largest}


def describe_batches(batch: dict | None) -> str:
    if not batch or not batch.get("mean"):
        return "—"
    return f"batches of {batch['mean']:.1f} on average, {batch['largest']} at most"


def print_table(f: dict) -> None:
    rows = [("figure", "value", "target")] + table_rows(f)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
