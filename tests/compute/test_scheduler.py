import pytest
import torch

import streamscan
import streamscan.compute.reading as reading
import streamscan.compute.scheduler as scheduler
import streamscan.compute.staging as staging
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.errors import UsageError
from streamscan.planning.plan import make_plan
from tests.fixtures.simulated import SimulatedGpu, simulated


def test_parallel_workers_give_identical_results_to_one_worker(sharded_llama):
    jobs = make_plan(build_index(resolve(sharded_llama))).jobs
    one = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    three = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=3)}
    assert one == three and len(one) == len(jobs)
    workers = {r.worker for r in scheduler.run_jobs(jobs, "gram64", workers=2)}
    assert workers == {"cpu0", "cpu1"}


def test_a_failing_job_is_recorded_and_retried_on_resume(sharded_llama, tmp_path, monkeypatch):
    real, real_many = staging.read_tensor, reading.read_many
    bad = "model.layers.1.mlp.up_proj.weight"

    def flaky(info):
        if info.name == bad:
            raise OSError("simulated I/O error")
        return real(info)

    def flaky_many(infos, stored=False):  # a batch with the bad tensor fails whole: its members are read one by one
        if any(i.name == bad for i in infos):
            raise OSError("simulated I/O error")
        return real_many(infos, stored)

    monkeypatch.setattr(staging, "read_tensor", flaky)
    monkeypatch.setattr(reading, "read_many", flaky_many)
    first = streamscan.scan(sharded_llama, tmp_path)
    failed = [r for r in first.results if r.status == "error"]
    assert [r.name for r in failed] == ["model.layers.1.mlp.up_proj"] and "simulated I/O error" in failed[0].reason
    assert first.summary["failed"] == 1 and first.summary["scored"] == 29
    monkeypatch.setattr(staging, "read_tensor", real)
    monkeypatch.setattr(reading, "read_many", real_many)
    second = streamscan.scan(sharded_llama, tmp_path)
    assert second.summary["failed"] == 0 and second.summary["resumed_from_journal"] == 29
    assert second.snr["model.layers.1.mlp.up_proj"] is not None


def test_devices():
    from streamscan.compute.devices import parse_devices, parse_size

    assert parse_devices("cpu", gpus=0) == ["cpu"] and parse_devices("auto", gpus=0) == ["cpu"]
    assert parse_devices("auto", gpus=2) == ["cuda:0", "cuda:1"]
    assert parse_devices("0,1,cpu", gpus=4) == ["cuda:0", "cuda:1", "cpu"]
    assert parse_devices("cuda:3, 3,cpu,cpu", gpus=4) == ["cuda:3", "cpu"]
    with pytest.raises(UsageError, match="--devices 0,1: no CUDA GPU is visible here; use --devices cpu"):
        parse_devices("0,1", gpus=0)
    with pytest.raises(UsageError, match="GPU 2 does not exist .visible: 0-1"):
        parse_devices("0,2", gpus=2)
    with pytest.raises(UsageError, match="'gpu' is not a GPU index"):
        parse_devices("gpu", gpus=2)
    assert parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29 and parse_size("1024") == 1024
    with pytest.raises(UsageError, match="--max-memory 12x: write it as bytes"):
        parse_size("12x")


def _jobs(path):
    return make_plan(build_index(resolve(path))).jobs


def _need(job, kind="cuda"):
    from streamscan.compute.spectrum import memory_bytes
    from streamscan.records import DTYPE_BYTES

    return memory_bytes(job.shape, DTYPE_BYTES[job.tensor.dtype], "gram64", kind)


def test_simulated_gpus_place_by_memory_retry_out_of_memory_and_fall_back_to_cpu(single_llama):
    """Two fake GPUs (memory from a probe, compute on this CPU): the largest job fits only cuda:1 and runs
    out of memory there, so it ends on a fallback CPU worker; another job's OOM on cuda:0 is retried."""
    from streamscan.checkpoint.reader import read_tensor
    from streamscan.compute.placement import GPU_MARGIN_MIN
    from streamscan.compute.spectrum import score

    jobs = _jobs(single_llama)
    big, second = jobs[0], next(j for j in jobs if _need(j) < _need(jobs[0]))
    totals = {"cuda:0": GPU_MARGIN_MIN + _need(big) - 1, "cuda:1": GPU_MARGIN_MIN + _need(big) + 1}
    which = {read_tensor(j.tensor).flatten()[:8].float().sum().item(): j.name for j in jobs}  # tensor -> job
    failed = set()

    def compute(tensor, method, device):
        key = (which[tensor.flatten()[:8].float().sum().item()], device)
        if key in {(big.name, "cuda:1"), (second.name, "cuda:0")} and key not in failed:
            failed.add(key)
            raise torch.OutOfMemoryError(f"simulated: {device} is full")
        return score(tensor, method)

    stats = scheduler.PoolStats()
    results = list(
        scheduler.run_jobs(
            jobs,
            "gram64",
            devices=simulated(["cuda:0", "cuda:1"], memory=lambda d: (totals[d], totals[d]), compute=compute),
            stats=stats,
        )
    )
    by = {r.name: r for r in results}
    assert all(r.status == "ok" for r in results)
    assert sorted(by) == sorted(j.name for j in jobs) and len(results) == len(jobs)  # nothing lost, nothing twice
    assert by[big.name].worker == "cpu0" and by[big.name].note.startswith("ran out of memory on cuda:1; needs")
    assert len(which) == len(jobs)
    assert failed == {(big.name, "cuda:1"), (second.name, "cuda:0")} or failed == {(big.name, "cuda:1")}
    assert by[second.name].worker in {"cuda:0", "cuda:1"} and by[second.name].status == "ok"
    assert stats.devices["cuda:0"].oom + stats.devices["cuda:1"].oom == 2
    # the fallback CPU worker (--devices named no CPU) took only the job no GPU could hold
    assert (
        stats.devices["cpu"].jobs == 1 and stats.devices["cuda:0"].jobs + stats.devices["cuda:1"].jobs == len(jobs) - 1
    )
    single = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    assert {r.name: r.snr for r in results} == single  # placement does not change a single number


def test_ram_budget_bounds_what_is_held(sharded_llama):
    jobs = _jobs(sharded_llama)
    biggest = max(_need(j, "cpu") for j in jobs)
    budget = 2 * biggest
    stats = scheduler.PoolStats()
    out = list(scheduler.run_jobs(jobs, "gram64", workers=2, max_memory=budget, stats=stats))
    assert len(out) == len(jobs) and stats.peak_held <= budget and stats.peak_held >= biggest
    assert stats.prefetched > 0  # reading ran ahead of the workers
    tiny = scheduler.PoolStats()
    out = list(scheduler.run_jobs(jobs, "gram64", workers=2, max_memory=1, stats=tiny))
    assert len(out) == len(jobs)  # a budget smaller than any job still finishes: one job at a time
    assert tiny.peak_held <= biggest + max(j.tensor.nbytes for j in jobs)


def test_jobs_from_a_lazy_source_and_closing_early(sharded_llama):
    import threading
    import time

    jobs = _jobs(sharded_llama)

    def arriving():
        for job in jobs:
            time.sleep(0.01)
            yield job

    lazy = {r.name: r.snr for r in scheduler.run_jobs(arriving(), "gram64", workers=2)}
    assert lazy == {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    it = scheduler.run_jobs(jobs, "gram64", workers=2)
    next(it)
    it.close()
    deadline = time.time() + 10
    while any(t.name.startswith("streamscan-") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("streamscan-")]


def test_gpu_memory_held_by_another_process_sends_the_waiting_job_to_cpu(single_llama, monkeypatch):
    """A simulated GPU whose memory another process holds (free < need <= total): jobs wait, then, once nothing
    of ours has run for STALL_SECONDS, go to the CPU one at a time with a note; nothing hangs or is lost."""
    from streamscan.compute.placement import GPU_MARGIN_MIN
    from streamscan.compute.spectrum import score

    monkeypatch.setattr(scheduler, "STALL_SECONDS", 0.2)
    jobs = _jobs(single_llama)
    total = GPU_MARGIN_MIN + 2 * max(_need(j) for j in jobs)
    used = []
    results = list(
        scheduler.run_jobs(
            jobs,
            "gram64",
            devices=[SimulatedGpu("cuda:0", (GPU_MARGIN_MIN, total), lambda t, m, d: used.append(d) or score(t, m))],
        )
    )
    assert sorted(r.name for r in results) == sorted(j.name for j in jobs) and not used
    assert {r.worker for r in results} == {"cpu0"}
    assert all(r.note == "waited for GPU memory that other processes hold on cuda:0; scored on CPU" for r in results)
