"""What a scan will do, from headers only: matrices per type (experts folded), bytes to read and fetch, ETA."""

from __future__ import annotations

import re
from collections import defaultdict

from streamscan.checkpoint.index import CheckpointIndex
from streamscan.compute.scheduler import PRIOR_SPEED
from streamscan.planning.plan import Plan

_EXPERT = re.compile(r"(experts?)\.(\d+)\.")


def overview(index: CheckpointIndex, plan: Plan, cpu_workers: int) -> dict:
    """Plan totals for ``streamscan inspect``; times are rough priors (scheduler.PRIOR_SPEED), not measurements."""
    groups: dict[str, dict] = defaultdict(lambda: {"matrices": 0, "shapes": set(), "dtypes": set(), "experts": set()})
    for job in plan.jobs:
        m = _EXPERT.search(job.type)
        key = _EXPERT.sub(r"\1.*.", job.type) if m else job.type
        g = groups[key]
        g["matrices"] += 1
        g["shapes"].add("x".join(map(str, job.shape)))
        g["dtypes"].add(job.tensor.dtype)
        if m:
            g["experts"].add(int(m.group(2)))
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
        "flops": flops,
        "eta_seconds": {
            f"cpu x{cpu_workers}": flops / (PRIOR_SPEED["cpu"] * cpu_workers),
            "one GPU": flops / PRIOR_SPEED["cuda"],
        },
    }
