"""Batched small matrices: score_batch == score one by one, the batch-size policy, batches in the
scheduler (one Result per member, OOM'd batches split in halves) and byte-identical scan outputs."""

import pytest
import torch

import streamscan
import streamscan.compute.placement as placement
import streamscan.compute.scheduler as scheduler
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.compute.spectrum import gram, gram_batch, score, score_batch
from streamscan.planning.plan import make_plan
from tests.fixtures.simulated import SimulatedGpu
from tests.fixtures.synthetic_moe import MoeShape, write_moe


@pytest.mark.parametrize("shape", [(32, 32), (64, 256), (128, 3000), (3000, 128), (600, 520), (520, 600)])
@pytest.mark.parametrize("method", ["gram64", "svdvals32", "svdvals64"])
def test_score_batch_is_bit_identical_to_one_by_one_on_cpu(shape, method):
    if method != "gram64" and max(shape) > 1000:
        pytest.skip("svdvals64 of the tall shapes is slow and adds nothing")
    g = torch.Generator().manual_seed(sum(shape))
    Ws = torch.randn(5, *shape, generator=g).to(torch.bfloat16)
    Ws[1, : min(shape) // 4] *= 8  # a different spectrum in each member
    assert score_batch(Ws, method) == [score(W, method) for W in Ws]


def test_unscored_and_degenerate_members_get_what_score_gives():
    Ws = torch.randn(4, 40, 60, dtype=torch.float64)
    Ws[1] = 0.0
    Ws[2, 3, 4] = float("nan")
    Ws[3] = torch.outer(torch.randn(40, dtype=torch.float64), torch.randn(60, dtype=torch.float64))
    out = score_batch(Ws)
    assert out == [score(W) for W in Ws]
    assert out[0].snr is not None and out[1].reason == "all-zero matrix"
    assert out[2].reason == "weights contain NaN or Inf" and out[3].degenerate == "rank-deficient"
    assert score_batch([]) == [] and score_batch(list(Ws[:2])) == out[:2]
    with pytest.raises(ValueError):
        score_batch(torch.zeros(3, 3))


@pytest.mark.parametrize("shape", [(96, 700), (700, 96), (600, 1100)])
def test_stacked_gram_the_gpu_path_agrees_to_1e12(shape):
    """gram_batch (what a GPU runs) against gram: the same chunks and blocks, another summation order at most."""
    Ws = torch.randn(3, *shape).to(torch.bfloat16)
    G = gram_batch(Ws)
    for i, W in enumerate(Ws):
        ref = gram(W)
        assert torch.allclose(G[i], ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def test_batch_size_policy_measured_limits_and_room():
    assert placement.batch_size((256, 1024), "cpu", need=10, room=10_000) == placement.BATCH_MAX["cpu"]
    # tiny matrices: as many as fill SMALL_BATCH_ELEMENTS, up to SMALL_BATCH_MAX
    assert placement.batch_size((64, 256), "cpu", need=10, room=10_000) == (1 << 20) // (64 * 256) == 64
    assert placement.batch_size((32, 64), "cpu", need=10, room=10_000) == placement.SMALL_BATCH_MAX == 256
    assert placement.batch_size((32, 64), "cpu", need=10, room=1_000) == 100  # room still bounds it
    assert placement.batch_size((512, 1792), "cpu", need=10, room=10_000) == 1  # large: batching does not pay
    assert placement.batch_size((2048, 7168), "cuda", need=100, room=1000) == 10  # bounded by free memory
    assert placement.batch_size((2048, 7168), "cuda", need=100, room=10**9, cap=8) == 8  # halved after an OOM
    assert placement.batch_size((4096, 4096), "cuda", need=1, room=10**9) == 1
    assert placement.batch_size((64, 64), "cuda", need=100, room=50) == 1


def _moe_jobs(tmp_path, experts=8):
    ck = write_moe(tmp_path / "moe", "mixtral", MoeShape(experts=experts))
    return ck, make_plan(build_index(resolve(ck))).jobs


def test_scheduler_batches_same_shape_jobs_and_returns_one_result_each(tmp_path):
    ck, jobs = _moe_jobs(tmp_path)
    sizes = []

    def compute(stack, method, device):
        sizes.append(stack.shape[0] if stack.ndim == 3 else 1)
        return score_batch(stack, method) if stack.ndim == 3 else score(stack, method)

    batched = list(scheduler.run_jobs(jobs, "gram64", devices=[SimulatedGpu(compute=compute, batched=True)]))
    one = {r.name: r for r in scheduler.run_jobs(jobs, "gram64", workers=1, batch=False)}
    assert sorted(r.name for r in batched) == sorted(one) and len(batched) == len(jobs)
    assert {r.name: r.snr for r in batched} == {n: r.snr for n, r in one.items()}
    assert max(sizes) > 1 and sum(sizes) == len(jobs) and len(sizes) < len(jobs)


def test_an_out_of_memory_batch_is_split_in_halves_and_retried(tmp_path):
    ck, jobs = _moe_jobs(tmp_path)
    sizes = []

    def compute(stack, method, device):
        b = stack.shape[0] if stack.ndim == 3 else 1
        sizes.append(b)
        if b > 2:
            raise torch.OutOfMemoryError(f"simulated: {b} matrices do not fit")
        return score_batch(stack, method) if stack.ndim == 3 else score(stack, method)

    stats = scheduler.PoolStats()
    results = list(
        scheduler.run_jobs(jobs, "gram64", devices=[SimulatedGpu(compute=compute, batched=True)], stats=stats)
    )
    assert len(results) == len(jobs) and all(r.status == "ok" for r in results)
    assert all(r.worker == "cuda:0" for r in results)  # split and retried there, not sent to the CPU
    failed = [b for b in sizes if b > 2]
    assert failed and stats.devices["cuda:0"].oom == len(failed)
    assert any(b == 2 for b in sizes)  # 8 -> 4 -> 2 members


def test_batched_cpu_scan_writes_byte_identical_outputs(tmp_path, monkeypatch):
    ck = write_moe(tmp_path / "moe", "qwen2_moe", MoeShape(experts=8))
    batched = streamscan.scan(ck, tmp_path / "b", devices="cpu", cpu_workers=1, top_percent=(25,))
    monkeypatch.setitem(placement.BATCH_MAX, "cpu", 1)
    single = streamscan.scan(ck, tmp_path / "s", devices="cpu", cpu_workers=1, top_percent=(25,))
    assert batched.summary["scored"] == single.summary["scored"] > 0
    outs = sorted(p.name for p in (tmp_path / "s").rglob("*") if p.is_file() and "summary" not in p.name)
    assert outs
    for name in outs:
        if name.endswith(".jsonl"):  # the journal: same records (timings differ)
            continue
        a = next((tmp_path / "b").rglob(name)).read_bytes()
        b = next((tmp_path / "s").rglob(name)).read_bytes()
        assert a == b, name


@pytest.mark.parametrize("block", [(32, 48), None])
def test_fp8_read_as_stored_and_dequantized_on_the_device_equals_the_cpu_path(tmp_path, block):
    """A GPU pool reads FP8 weights as stored (1 byte a value) and dequantizes them where the job runs;
    on CPU stand-ins that gives exactly the float32 matrix and the SNRs of a CPU scan."""
    from streamscan.checkpoint.reader import Stored, read_stored, read_tensor
    from tests.fixtures.synthetic import LlamaShape
    from tests.fixtures.synthetic_quant import write_fp8_llama

    model, _ = write_fp8_llama(tmp_path / "fp8", LlamaShape(hidden=96, ffn=192, kv=32, vocab=128), block=block)
    jobs = make_plan(build_index(resolve(model))).jobs
    quantized = [j for j in jobs if j.tensor.quant is not None]
    assert quantized
    for j in quantized:
        stored = read_stored(j.tensor)
        assert isinstance(stored, Stored) and stored.weight.element_size() == 1
        assert torch.equal(stored.dequantize("cpu"), read_tensor(j.tensor))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU workers' fixed thread count (placement.cpu_threads): same bits
    try:
        fake = list(
            scheduler.run_jobs(
                jobs,
                "gram64",
                devices=[SimulatedGpu()],
            )
        )
    finally:
        torch.set_num_threads(threads)
    cpu = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    assert {r.name: r.snr for r in fake} == cpu and all(r.status == "ok" for r in fake)


def test_cuda_copies_go_on_their_own_stream_and_the_compute_stream_waits_for_them(monkeypatch):
    """CudaDevice.upload's stream protocol, run on the CPU with torch.cuda's stream calls recorded: the copy
    is issued (and its destination allocated) on the device's copy stream, the compute stream waits for it,
    and the result is marked as used there (its memory is not reused before)."""
    from streamscan.compute.backends import CudaDevice
    from tests.fixtures.cuda_calls import record_cuda_calls

    calls = record_cuda_calls(monkeypatch)
    dev = CudaDevice("cuda:0")
    dev.name = "cpu"  # the copy's destination here (the protocol is the same)
    staged = torch.ones(4, 4, dtype=torch.bfloat16)
    out = dev.upload(staged)
    assert torch.equal(out, staged)
    assert calls == ["on copies", "compute waits copies", "used on compute"]
    dev.upload(staged)
    assert calls.count("on copies") == 2  # the same copy stream again
