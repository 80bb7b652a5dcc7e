"""solver.py: the path policy, the rate probe, every path forced on the CPU against float64 SVD, the summary entry."""

import pytest
import torch

import streamscan.compute.scheduler as scheduler
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.compute import solver
from streamscan.compute.solver import Rates, choose
from streamscan.compute.spectrum import score, score_batch, snr_from_singular_values
from streamscan.planning.plan import make_plan
from tests.fixtures.simulated import SimulatedGpu

H100 = Rates(fp64_tflops=60.0, fp32_tflops=60.0)  # fp64 tensor cores: ratio 1
L40S = Rates(fp64_tflops=1.4, fp32_tflops=90.0)  # 1/64


def planted(m, n, outlier=300.0, seed=0):
    """bf16 noise with some strong and some weak rows and one outlier direction 300x the noise level (where fp32
    Grams fail)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn((m, n), generator=g, dtype=torch.float64) / n**0.5
    u = torch.randn(m, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, n, generator=g, dtype=torch.float64)
    W += outlier * (u / u.norm()) @ (v / v.norm())
    W[: min(m, n) // 8] *= 4
    W[-min(m, n) // 4 :] *= 0.1  # weak rows: values below the threshold (without them no value is: an SNR of inf)
    return W.to(torch.bfloat16)


def test_policy_strong_fp64_runs_on_the_device_weak_fp64_sends_eigenvalues_to_the_host():
    assert choose((8192, 28672), 1, H100, "cuda") == "gram64"
    assert choose((2048, 7168), 64, L40S, "cuda") == "gram64-host-eig"
    assert choose((8192, 8192), 1, Rates(1.0, 15.9), "cuda") == "gram64"  # just above 1/16
    assert choose((8192, 8192), 1, Rates(1.0, 16.1), "cuda") == "gram64-host-eig"
    assert choose((8192, 8192), 1, None, "cuda") == "gram64"  # no probe: the default
    assert choose((8192, 8192), 1, L40S, "cpu") == "gram64"  # the CPU is the host


def test_a_forced_path_wins_and_an_unknown_one_is_refused():
    assert choose((8192, 8192), 1, H100, "cuda", forced="gram64-host-eig") == "gram64-host-eig"
    assert choose((64, 64), 1, None, "cpu", forced="gram64-host-eig") == "gram64-host-eig"
    with pytest.raises(ValueError, match="unknown solver path"):
        choose((64, 64), 1, None, "cpu", forced="fp32")


def test_probe_measures_positive_rates_once_per_device_name(monkeypatch):
    monkeypatch.setattr(solver, "_cache", {})
    calls = []
    real = solver._rate
    monkeypatch.setattr(solver, "_rate", lambda *a: calls.append(a[1]) or real(*a))
    first = solver.probe("cpu", n=128, repeat=1)
    assert first.fp64_tflops > 0 and first.fp32_tflops > 0
    assert solver.probe("cpu", n=128, repeat=1) is first
    assert calls == [torch.float64, torch.float32]


@pytest.mark.parametrize("shape", [(512, 2048), (1536, 512)])
@pytest.mark.parametrize("path", solver.PATHS)
def test_every_path_holds_1e6_snr_error_where_an_fp32_gram_does_not(shape, path):
    W = planted(*shape)
    exact = score(W, "svdvals64").snr
    got = score(W, "gram64", "cpu", path).snr
    assert abs(got - exact) / exact <= 1e-6
    X = W.float() if shape[0] <= shape[1] else W.float().T  # the cheap weak-fp64 idea this policy rejects
    S = torch.sqrt(torch.clamp(torch.linalg.eigvalsh((X @ X.T).double()), min=0))
    fp32_gram = snr_from_singular_values(S, shape).snr
    assert abs(fp32_gram - exact) / exact > 1e-5


def test_batched_host_eig_equals_one_by_one():
    Ws = torch.stack([planted(256, 1024, seed=s) for s in range(3)])
    one = [score(W, "gram64", "cpu", "gram64-host-eig").snr for W in Ws]
    assert [r.snr for r in score_batch(Ws, "gram64", "cpu", "gram64-host-eig")] == one
    exact = [score(W, "svdvals64").snr for W in Ws]
    assert max(abs(a - b) / b for a, b in zip(one, exact)) <= 1e-6


def test_cpu_scan_summary_says_gram64(single_llama):
    stats = scheduler.PoolStats()
    jobs = make_plan(build_index(resolve(single_llama))).jobs
    assert len(list(scheduler.run_jobs(jobs, "gram64", 1, stats=stats))) == len(jobs)
    assert stats.summary()["solver"] == {"cpu": {"path": "gram64"}}


def test_forced_path_and_simulated_gpu_are_reported(single_llama):
    stats = scheduler.PoolStats()
    jobs = make_plan(build_index(resolve(single_llama))).jobs
    results = list(
        scheduler.run_jobs(
            jobs, "gram64", 1, devices=[SimulatedGpu("cuda:0"), "cpu"], stats=stats, solver_path="gram64-host-eig"
        )
    )
    assert len(results) == len(jobs)
    run = stats.summary()["solver"]
    assert run["cuda:0"] == {"path": "simulated"}
    assert run.get("cpu", {"path": "gram64-host-eig"}) == {"path": "gram64-host-eig"}
