"""GPU checks: run on a machine with CUDA (`pytest -m gpu`); skipped elsewhere."""

import pytest
import torch

import streamscan
import streamscan.compute.scheduler as scheduler
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.compute.spectrum import memory_bytes, score
from streamscan.planning.plan import make_plan
from tests.fixtures.synthetic import LlamaShape, write_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("shape", [(512, 2048), (3000, 1024), (2048, 2048)])
def test_gpu_scores_match_cpu_and_memory_estimate_is_an_upper_bound(shape):
    W = torch.randn(shape).to(torch.bfloat16)
    cpu = score(W, "gram64")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu = score(W.to("cuda"), "gram64", "cuda")
    peak = torch.cuda.max_memory_allocated() - base
    assert gpu.snr == pytest.approx(cpu.snr, rel=1e-10)
    assert peak <= memory_bytes(shape, 2, "gram64", "cuda")


def test_real_out_of_memory_is_retried_on_cpu(tmp_path):
    ck = write_llama(tmp_path / "m", LlamaShape(layers=1, hidden=1024, ffn=2816, kv=256, vocab=32000))
    jobs = make_plan(build_index(resolve(ck))).jobs
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.empty_cache()
    # our process may use only ~64 MiB: the 32000x1024 embedding's Gram work does not fit, the rest does
    torch.cuda.set_per_process_memory_fraction((64 << 20) / total)
    try:
        results = list(scheduler.run_jobs(jobs, "gram64", devices=["cuda:0"]))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    by = {r.name: r for r in results}
    assert len(results) == len(jobs) and all(r.status == "ok" for r in results)
    assert by["model.embed_tokens"].worker == "cpu0" and "ran out of memory on cuda:0" in by["model.embed_tokens"].note
    expected = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    assert {n: pytest.approx(r.snr, rel=1e-9) for n, r in by.items()} == expected


def test_mixed_pool_scan_equals_cpu_scan(sharded_llama, tmp_path):
    gpu = streamscan.scan(sharded_llama, tmp_path / "gpu", devices="0,cpu")
    cpu = streamscan.scan(sharded_llama, tmp_path / "cpu", devices="cpu")
    assert gpu.snr.keys() == cpu.snr.keys()
    assert all(gpu.snr[n] == pytest.approx(cpu.snr[n], rel=1e-9) for n in cpu.snr)
    assert gpu.summary["run"]["devices"]["cuda:0"]["jobs"] > 0


def test_matrices_streamed_to_the_gpu_are_the_bytes_read_on_the_host(tmp_path, monkeypatch):
    """staging.stream on a real GPU: pinned ring buffers, copies on the copy stream, events before reuse;
    small chunks so that every ring buffer is reused many times while copies may still be in flight."""
    from itertools import groupby

    from streamscan.checkpoint.reader import Stored, read_stored, read_tensor
    from streamscan.compute import staging
    from streamscan.compute.backends import CudaDevice
    from streamscan.compute.reading import batch_key
    from tests.fixtures.synthetic_quant import write_fp8_llama

    monkeypatch.setattr(staging, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(staging, "RINGS", staging.Rings(1))
    dev = CudaDevice("cuda:0")
    bf16 = make_plan(build_index(resolve(write_llama(tmp_path / "m", LlamaShape(layers=2))))).jobs
    fp8, _ = write_fp8_llama(tmp_path / "fp8", LlamaShape(hidden=256, ffn=512, kv=64, vocab=128))
    jobs = bf16 + make_plan(build_index(resolve(fp8))).jobs
    for _, group in groupby(sorted(jobs, key=lambda j: repr(batch_key(j))), key=batch_key):
        batch = list(group)
        got = staging.stream(batch, dev)  # no device-wide sync: .cpu() on the compute stream relies on received()
        for i, j in enumerate(batch):
            if isinstance(got, Stored):
                want = read_stored(j.tensor)
                w, s = (got.weight[i], got.scale[i]) if len(batch) > 1 else (got.weight, got.scale)
                assert torch.equal(w.cpu().view(torch.uint8), want.weight.view(torch.uint8))
                assert torch.equal(s.cpu(), want.scale)
            else:
                assert torch.equal((got[i] if len(batch) > 1 else got).cpu(), read_tensor(j.tensor))
    with staging.RINGS.lend(True) as ring:
        assert all(b.is_pinned() for b in ring.buffers)


def test_two_threads_streaming_into_one_fresh_gpu_get_their_own_bytes(tmp_path, monkeypatch):
    """A GPU's two worker slots stream at once from their first job (one copy stream, made once)."""
    import threading

    from streamscan.checkpoint.reader import read_tensor
    from streamscan.compute import staging
    from streamscan.compute.backends import CudaDevice

    monkeypatch.setattr(staging, "CHUNK_BYTES", 4096)
    jobs = make_plan(build_index(resolve(write_llama(tmp_path / "m", LlamaShape(layers=2))))).jobs
    dev, errors, start = CudaDevice("cuda:0"), [], threading.Barrier(2)

    def worker(part):
        try:
            dev.enter()
            start.wait()
            for job in part:
                got = staging.stream([job], dev)
                assert torch.equal(got.cpu(), read_tensor(job.tensor)), job.name
        except Exception as err:  # the test thread reports it
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(jobs[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
