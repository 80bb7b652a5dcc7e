"""distributed: one scan spread over processes and machines, under torchrun or as independent shards.

Two ways to split a scan, with the same deterministic, cost-balanced assignment:

- ``torchrun … -m streamscan run MODEL --out SHARED_DIR`` (or ``--distributed`` with a launcher that
  sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, or Slurm's ``srun``): torch.distributed
  (gloo) only at the start (every rank present, same checkpoint, rank 0's view of what is done) and at
  the end (a monitored barrier that names a rank that died or hangs). The jobs still missing are split
  greedily, largest first, onto the least-loaded rank (longest-processing-time by ``Job.cost``).
- ``--shard i/N``: no torch.distributed at all (separate Slurm jobs, other queues, other days). The split
  is over every target, so shards started at different times agree without talking; each shard does
  the part of its share that is still missing.

Each rank or shard appends to its own journal in the shared output directory (see journal.py); rank 0
(or ``streamscan merge DIR``) folds them into the single-process journal and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamscan import errors
from streamscan.errors import DistributedError, StreamscanError, UsageError
from streamscan.records import DEFAULT_RANK_TIMEOUT, Job, Result

log = logging.getLogger(__name__)


class _Dist:
    """torch.distributed, imported on first use: an independent shard and `merge` never load torch."""

    def __getattr__(self, name: str):
        import torch.distributed

        return getattr(torch.distributed, name)


dist = _Dist()

DEFAULT_TIMEOUT = DEFAULT_RANK_TIMEOUT
START_TIMEOUT = 600.0  # at least this long for every rank to come up (imports, headers, downloads)


@dataclass(frozen=True)
class Rank:
    """This process's place in a split scan."""

    rank: int
    world: int
    local_rank: int = 0
    local_world: int = 1
    coordinated: bool = False  # True under torch.distributed; False for an independent --shard run

    @property
    def label(self) -> str:
        return f"rank{self.rank}" if self.coordinated else f"shard{self.rank}"

    def tag(self, result: Result) -> Result:
        """RESULT with its worker named after the rank (``rank1/cpu0``); the outputs do not show it."""
        return dataclasses.replace(result, worker=f"{self.label}/{result.worker}")

    def cpu_workers(self) -> int:
        """Default CPU workers: this node's physical cores shared among the ranks on it."""
        from streamscan.compute.devices import default_workers  # torch: only where a scan runs

        return max(1, default_workers() // max(1, self.local_world))


def local_devices(spec: str | None, devices: list[str], rank: Rank) -> list[str]:
    """The devices of RANK: for ``auto``, its share of the node's GPUs (GPU g to local rank g mod ranks per
    node: the LOCAL_RANK GPU when there is one rank per GPU; ranks outnumbering GPUs share them); named
    devices stay as given (CUDA_VISIBLE_DEVICES per rank works too)."""
    gpus = [d for d in devices if d.startswith("cuda")]
    if (spec or "auto").strip().lower() != "auto" or not gpus:
        return devices
    mine = [g for i, g in enumerate(gpus) if i % rank.local_world == rank.local_rank]
    return mine or [gpus[rank.local_rank % len(gpus)]]


def parse_shard(text: str) -> Rank:
    """``i/N`` (0 <= i < N) -> an uncoordinated Rank."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not int(match[1]) < int(match[2]):
        raise UsageError(f"--shard {text}: expected i/N with 0 <= i < N, e.g. --shard 0/4")
    return Rank(int(match[1]), int(match[2]))


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "")
        match = re.match(r"\d+", value)
        if match:
            return int(match[0])
    return None


def from_env(env: Mapping[str, str] = os.environ, *, slurm: bool = False) -> Rank | None:
    """The torchrun rank of this process (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), else None.

    With SLURM, also a task started by ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID).
    """
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local, local_world = _int(env, "LOCAL_RANK"), _int(env, "LOCAL_WORLD_SIZE")
    if (rank is None or world is None) and slurm:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local, local_world = _int(env, "SLURM_LOCALID"), _int(env, "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if rank is None or world is None:
        return None
    if not 0 <= rank < world:
        raise UsageError(
            f"RANK={rank} with WORLD_SIZE={world}: the rank must be below the world size; check the launcher"
        )
    return Rank(rank, world, local or 0, local_world or 1, coordinated=True)


def assign(jobs: Sequence[Job], world: int) -> list[list[Job]]:
    """Split JOBS into WORLD shares of near-equal total cost: largest first onto the least-loaded share.

    Deterministic (ties broken by name, then by rank), so every rank computes the same split alone.
    """
    shares: list[list[Job]] = [[] for _ in range(world)]
    heap = [(0.0, r) for r in range(world)]
    for job in sorted(jobs, key=lambda j: (-j.cost, j.name)):
        load, r = heapq.heappop(heap)
        shares[r].append(job)
        heapq.heappush(heap, (load + job.cost, r))
    return shares


def share(rank: Rank, missing: Sequence[Job], targets: Sequence[Job]) -> list[Job]:
    """This rank's jobs, largest first.

    Coordinated ranks split what is MISSING (they all start from rank 0's view of it). Independent
    shards split every target (the same split whenever each shard starts) and keep what is missing.
    """
    if rank.coordinated:
        return assign(missing, rank.world)[rank.rank]
    todo = {j.name for j in missing}
    return [j for j in assign(targets, rank.world)[rank.rank] if j.name in todo]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _failed_ranks(message: str) -> list[int]:
    """Rank ids named by gloo's monitored_barrier error ('Ranks 1, 3 failed to pass monitoredBarrier')."""
    match = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", message)
    return [int(r) for r in re.findall(r"\d+", match[1])] if match else []


def _first_sentence(message: str) -> str:
    return re.split(r"(?<=\.)\s", message.strip(), maxsplit=1)[0]


class Group:
    """The torch.distributed side of a coordinated scan: set up, start collective, final barrier."""

    def __init__(self, rank: Rank, timeout: float = DEFAULT_TIMEOUT):
        self.rank = rank
        self.timeout = timeout
        self.start_timeout = max(timeout, START_TIMEOUT)
        self.peers: list[dict] = []
        self.waited = 0.0  # seconds the final barrier took
        self._owned = False
        self._group = None

    def __enter__(self) -> Group:
        if not dist.is_available():
            raise UsageError("this torch build has no torch.distributed; use --shard i/N and `streamscan merge`")
        if not dist.is_initialized():
            if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
                raise UsageError(
                    "--distributed: MASTER_ADDR/MASTER_PORT are not set; launch with torchrun, or export "
                    "them (Slurm: MASTER_ADDR=first host of $SLURM_JOB_NODELIST, any free MASTER_PORT)"
                )
            dist.init_process_group(
                "gloo",
                init_method="env://",
                rank=self.rank.rank,
                world_size=self.rank.world,
                timeout=datetime.timedelta(seconds=self.start_timeout),
            )
            self._owned = True
        elif (dist.get_rank(), dist.get_world_size()) != (self.rank.rank, self.rank.world):
            raise UsageError(
                f"torch.distributed is rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"the environment says {self.rank.rank} of {self.rank.world}"
            )
        # The scan exchanges no tensors: a gloo group is all it needs, and gloo's monitored barrier names
        # the rank that is missing (an NCCL default group gets a gloo side group for this).
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc) -> None:
        if self._owned and dist.is_initialized():
            dist.destroy_process_group()

    def _barrier(self, timeout: float, where: str) -> list[int] | str | None:
        """None when every rank arrived; else the missing ranks (rank 0) or the error text (others)."""
        try:
            dist.monitored_barrier(self._group, timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True)
        except RuntimeError as err:
            log.debug("%s barrier: %s", where, err)
            return (_failed_ranks(str(err)) or ["?"]) if self.rank.rank == 0 else _first_sentence(str(err))
        return None

    def who(self, rank: int | str) -> str:
        peer = self.peers[rank] if isinstance(rank, int) and rank < len(self.peers) else {}
        return f"rank {rank}" + (f" (pid {peer['pid']} on {peer['host']})" if peer else "")

    def start(self, mine: str, lead: Callable[[], object]) -> object:
        """Every rank present, then everyone gets rank 0's LEAD() and checks MINE agrees across ranks.

        MINE is this rank's fingerprint digest; LEAD runs on rank 0 only (reads what is done) and its
        value, or the error it raised, reaches every rank, so all of them go on or stop together.
        """
        failed = self._barrier(self.start_timeout, "start")
        if failed:
            raise DistributedError(
                self.late(failed, "the start", self.start_timeout)
                if self.rank.rank == 0
                else f"rank {self.rank.rank}: the start barrier failed ({failed})"
            )
        info = {"fingerprint": mine, "host": socket.gethostname(), "pid": os.getpid()}
        if self.rank.rank == 0:
            try:
                info["lead"] = lead()
            except StreamscanError as err:
                info["error"] = [type(err).__name__, str(err)]
        self.peers = [{}] * self.rank.world
        dist.all_gather_object(self.peers, info, group=self._group)
        if "error" in self.peers[0]:
            name, message = self.peers[0]["error"]
            raise getattr(errors, name, StreamscanError)(message)
        differ = [r for r, p in enumerate(self.peers) if p["fingerprint"] != self.peers[0]["fingerprint"]]
        if differ:
            raise DistributedError(
                f"{', '.join(self.who(r) for r in differ)} read other checkpoint files or scan options than "
                f"{self.who(0)}; give every rank the same MODEL revision and options"
            )
        return self.peers[0]["lead"]

    def finish(self) -> list[int | str] | None:
        """Final barrier. Rank 0 gets the ranks that did not arrive within the timeout (None if all did).

        Other ranks wait twice as long, so that rank 0 is the one to judge and report a missing rank.
        """
        since = time.monotonic()
        failed = self._barrier(self.timeout if self.rank.rank == 0 else 2 * self.timeout, "final")
        self.waited = time.monotonic() - since
        if failed and self.rank.rank != 0:
            raise DistributedError(
                f"rank {self.rank.rank}: lost rank 0 at the final barrier ({failed}); this rank's "
                "results are journaled, see rank 0's message and rerun to finish"
            )
        return failed  # type: ignore[return-value]

    def late(self, failed: Sequence[int | str], where: str, timeout: float | None = None) -> str:
        return f"{', '.join(self.who(r) for r in failed)} did not reach {where} within {timeout or self.timeout:g} s"
