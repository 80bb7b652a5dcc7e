"""render: the lines the commands print, from the library's records (no I/O here)."""

from __future__ import annotations

from pathlib import Path

from streamscan.layout import natural_key


def run_lines(s, out_dir: Path, paths: list[Path], shard: str | None) -> list[str]:
    """What `run` prints after a scan: counts and time, devices, Hub traffic, the MoE report (S: a ScanSummary)."""
    lines = []
    if "rank" in s:  # one rank or shard of a split scan: its own share
        who = f"rank {s.rank}" if shard is None else f"shard {s.rank}/{s.world_size}"
        then = (
            "rank 0 writes the outputs"
            if shard is None
            else f"`streamscan merge {out_dir}` writes the outputs once every shard is done"
        )
        lines.append(
            f"streamscan: {who}: {s.matrices} matrices ({s.scored} scored, {s.no_snr} without SNR, "
            f"{s.failed} failed), {s.seconds:.1f} s -> {out_dir}; {then}"
        )
    else:
        lines.append(
            f"streamscan: {s.matrices} matrices ({s.scored} scored, {s.no_snr} without SNR, "
            f"{s.failed} failed, {s.resumed_from_journal} from a previous run), {s.skipped} tensors skipped, "
            + (f"{len(s.consumed_tensors)} scale tensors read with their weights, " if s.consumed_tensors else "")
            + f"{s.seconds:.1f} s, peak RSS {s.peak_rss_mb:.0f} MB -> {out_dir}"
        )
    if s.get("run"):
        r = s.run
        per = ", ".join(
            f"{d}: {v['jobs']} jobs, {v['busy_seconds']:.1f} s busy ({100 * v['utilisation']:.0f}%)"
            + (f", {v['oom_retries']} OOM retries" if v["oom_retries"] else "")
            for d, v in r["devices"].items()
        )
        lines.append(f"streamscan: {per}; overlap {100 * r['overlap']:.0f}% (busy / wall)")
        lines += [f"streamscan: {name}: {note}" for name, note in s.placement_notes.items()]
    if s.get("hub"):
        h = s.hub
        lines.append(
            f"streamscan: {h['repo']}@{h['commit'][:12]}: {len(h['shards_scanned_from_cache'])} shard(s) from the "
            f"HF cache, {h['shards_downloaded']} downloaded ({h['downloaded_bytes'] / 2**30:.2f} GiB in "
            f"{h['download_seconds']:.1f} s, scan waited {h['waited_for_download_seconds']:.1f} s), "
            f"{len(h['deleted_after_scan'])} deleted after scanning, disk peak {h['peak_disk_bytes'] / 2**30:.2f} GiB"
        )
    lines += [f"streamscan: per-expert report: {p}" for p in paths if p.name.startswith("moe_report")]
    return lines


def finished_line(s, out_dir: Path) -> str:
    """What `run` prints when the scan in OUT_DIR was already finished (S: the summary it keeps)."""
    return (
        f"streamscan: nothing left to scan: {s.matrices} matrices ({s.scored} scored, {s.no_snr} without SNR) "
        f"already in the journal; outputs rewritten, the summary of the run that scanned them kept -> {out_dir}"
    )


def status_line(st: dict) -> str:
    state = "running" if st["running"] else ("complete" if st["remaining"] == 0 else "stopped")
    return (
        f"{st['model']} ({st['method']}): {st['done']}/{st['total']} matrices done, {st['remaining']} remaining, "
        f"{st['failed']} failed, {st['no_snr']} without SNR; {state}"
    )


def merge_line(s, n_results: int, out_dir: Path) -> str:
    return (
        f"streamscan: merged {n_results} of {s.matrices} matrices from {s.ranks} rank(s) "
        f"({s.scored} scored, {s.no_snr} without SNR, {s.failed} failed) -> {out_dir}"
    )


def inspect_lines(index, plan, ov: dict) -> list[str]:
    """`inspect`: every matrix scored, every tensor skipped, scale tensors and matrices per type (experts
    folded), totals and the time estimate."""
    jobs = sorted(plan.jobs, key=lambda j: natural_key(j.name))  # layers.2 before layers.10
    lines = [f"score  {j.name:60s} {'x'.join(map(str, j.shape)):>14s} {j.tensor.dtype}" for j in jobs]
    lines += [f"skip   {s.name:60s} {s.reason}" for s in sorted(plan.skipped, key=lambda s: natural_key(s.name))]
    # scale tensors folded per type (45k of them in DeepSeek-V3); `inspect --json` lists each
    lines += [f"scale  {key:60s} {n:5d} scale tensors, read with their weights" for key, n in ov["scales"].items()]
    for key, t in ov["types"].items():
        experts = f", {t['experts']} experts" if t["experts"] else ""
        lines.append(
            f"type   {key:60s} {t['matrices']:5d} matrices{experts}, {' '.join(t['shapes'])} {' '.join(t['dtypes'])}"
        )
    gib = 2**30
    used = f", {len(plan.consumed)} scale tensors read with their weights" if plan.consumed else ""
    where = f" at commit {ov['commit']}" if ov["commit"] else ""
    lines.append(
        f"{len(jobs)} matrices to score, {len(plan.skipped)} tensors skipped{used}, {len(index.shards)} shard(s)"
        f"{where}, {index.total_bytes / gib:.2f} GiB; {ov['bytes_to_read'] / gib:.2f} GiB to read, "
        f"{ov['bytes_to_download'] / gib:.2f} GiB to download ({len(ov['shards_to_download'])} shard(s))"
    )
    eta = ", ".join(f"{d} ~{duration(sec)}" for d, sec in ov["eta_seconds"].items())
    lines.append(f"estimated time ({ov['flops'] / 1e12:.2f} TFLOP, start-up included): {eta} (GPU: unmeasured prior)")
    return lines


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
