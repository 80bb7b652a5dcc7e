"""What a scan will do, from headers only: matrices per type (experts folded), scale tensors per type (folded
alike), bytes to read and fetch, ETA.

The CPU time estimate is calibrated on a measured scan, end to end (reading, dequantizing, scoring, start-up
and outputs): the demo's (scripts/demo.sh: SmolLM2-135M-Instruct, Q4_1 GGUF, 211 matrices, 0.114 TFLOP by
``Job.cost``) took 41 s on the 2-core development machine under load, 60.1 s busy over its 2 workers
(``run.devices.cpu.busy_seconds`` in streamscan_summary.json): 1.9 GFLOP/s per worker, and 9 s besides the
scan (``time streamscan run`` minus the summary's ``seconds``). To recalibrate on other hardware, scan any
model and divide ``streamscan inspect MODEL --json``'s ``flops`` by that busy time. The GPU figure is the
scheduler's prior (placement.PRIOR_SPEED), not a measurement.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict

from streamscan.checkpoint.index import CheckpointIndex
from streamscan.compute.placement import PRIOR_SPEED  # not scheduler: inspect never loads torch
from streamscan.planning.plan import Plan

CPU_FLOPS_PER_WORKER = 1.9e9  # measured end to end, see above
START_SECONDS = 9.0  # importing torch, reading the headers, writing the outputs (measured, see above)
_EXPERT = re.compile(r"(experts?)\.(\d+)\.")


@functools.lru_cache(maxsize=1 << 14)  # a type repeats in every layer: a few thousand distinct at 70k matrices
def folded(type_: str) -> tuple[str, int | None]:
    """(the type with its expert index as ``*``, that index or None): ``mlp.experts.17.down_proj`` ->
    ``mlp.experts.*.down_proj``."""
    m = _EXPERT.search(type_)
    return (_EXPERT.sub(r"\1.*.", type_), int(m.group(2))) if m else (type_, None)


def scale_types(plan: Plan) -> dict[str, int]:
    """Scale tensors (read with their weights, not scored) per folded type, with counts."""
    counts: dict[str, int] = defaultdict(int)
    for s in plan.consumed:
        counts[folded(s.type)[0]] += 1
    return dict(sorted(counts.items()))


def overview(index: CheckpointIndex, plan: Plan, cpu_workers: int) -> dict:
    """Plan totals for ``streamscan inspect``; the CPU time is calibrated on a measured scan (see above)."""
    groups: dict[str, dict] = defaultdict(lambda: {"matrices": 0, "shapes": set(), "dtypes": set(), "experts": set()})
    for job in plan.jobs:
        key, expert = folded(job.type)
        g = groups[key]
        g["matrices"] += 1
        g["shapes"].add("x".join(map(str, job.shape)))
        g["dtypes"].add(job.tensor.dtype)
        if expert is not None:
            g["experts"].add(expert)
    flops = sum(j.cost for j in plan.jobs)
    hub = index.source.hub
    shards_with_jobs = {j.tensor.shard.name for j in plan.jobs}
    to_fetch = [s for s in index.shards if hub is not None and not s.path.exists() and s.path.name in shards_with_jobs]
    return {
        "matrices": len(plan.jobs),
        "skipped": len(plan.skipped),
        "shards": len(index.shards),
        "checkpoint_bytes": index.total_bytes,
        "bytes_to_read": sum(j.tensor.nbytes for j in plan.jobs),
        "bytes_to_download": sum(s.size for s in to_fetch),
        "shards_to_download": [s.path.name for s in to_fetch],
        "commit": hub.commit if hub is not None else None,
        "types": {
            k: {
                "matrices": g["matrices"],
                "shapes": sorted(g["shapes"]),
                "dtypes": sorted(g["dtypes"]),
                "experts": len(g["experts"]),
            }
            for k, g in sorted(groups.items())
        },
        "scales": scale_types(plan),
        "scale_tensors": {s.name: s.reason for s in plan.consumed},
        "flops": flops,
        "eta_seconds": {
            f"cpu x{cpu_workers}": START_SECONDS + flops / (CPU_FLOPS_PER_WORKER * cpu_workers),
            "one GPU": START_SECONDS + flops / PRIOR_SPEED["cuda"],
        },
    }
