"""Streaming matrices to a GPU (staging.stream): every byte arrives whatever the chunk size, a ring buffer is
reused only once the copy from it is done, the CUDA stream protocol, a GPU's two slots (one computes while the
other streams), one stream per core, and a shard truncated after indexing fails only its own matrices."""

import threading
from itertools import groupby

import pytest
import torch

import streamscan.compute.scheduler as scheduler
import streamscan.compute.staging as staging
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import Stored, read_stored, read_tensor
from streamscan.checkpoint.source import resolve
from streamscan.compute.reading import batch_key
from streamscan.planning.plan import make_plan
from tests.fixtures.simulated import SimulatedGpu
from tests.fixtures.synthetic import LlamaShape, write_llama
from tests.fixtures.synthetic_quant import write_fp8_llama


def _jobs(path):
    return make_plan(build_index(resolve(path))).jobs


def _batches(jobs):
    """The jobs grouped as the scheduler batches them (same shape, dtype and quantization)."""
    return [list(g) for _, g in groupby(sorted(jobs, key=lambda j: repr(batch_key(j))), key=batch_key)]


@pytest.mark.parametrize("chunk", [1000, 4096, 1 << 20])  # 1000 bytes: chunks end inside elements and tensors
def test_streamed_batches_are_what_read_tensor_gives_bit_for_bit(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(staging, "CHUNK_BYTES", chunk)
    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1))
    ring, dev = staging.Ring(), SimulatedGpu()
    assert all(b.numel() == chunk for b in ring.buffers)
    batches = _batches(jobs)
    assert any(len(b) > 1 for b in batches) and any(len({j.tensor.shard for j in b}) > 1 for b in batches)
    for batch in batches:
        got = staging.stream(batch, dev, ring)
        want = [read_tensor(j.tensor) for j in batch]
        assert torch.equal(got, torch.stack(want) if len(batch) > 1 else want[0])


@pytest.mark.parametrize("block", [(128, 128), None])
def test_streamed_fp8_weights_come_as_stored_with_their_scales(tmp_path, monkeypatch, block):
    monkeypatch.setattr(staging, "CHUNK_BYTES", 1000)
    model, _ = write_fp8_llama(tmp_path / "fp8", LlamaShape(hidden=256, ffn=512, kv=64, vocab=128), block=block)
    quantized = [b for b in _batches(_jobs(model)) if b[0].tensor.quant is not None]
    assert quantized
    for batch in quantized:
        got = staging.stream(batch, SimulatedGpu(), staging.Ring())
        assert isinstance(got, Stored) and got.weight.element_size() == 1
        weights, scales = (got.weight, got.scale) if len(batch) > 1 else (got.weight[None], got.scale[None])
        for i, j in enumerate(batch):
            want = read_stored(j.tensor)
            assert torch.equal(weights[i].view(torch.uint8), want.weight.view(torch.uint8))
            assert torch.equal(scales[i], want.scale)
            assert torch.equal(Stored(weights[i], scales[i], got.scheme, got.block).dequantize(), read_tensor(j.tensor))


class _Fence:
    def __init__(self, log, k):
        self.log, self.k = log, k

    def synchronize(self):
        self.log.append(("wait", self.k))


class _FencedGpu(SimulatedGpu):
    """copy_in returns a fence per copy, as a CUDA event; the log records copies (with their buffer) and waits."""

    def __init__(self):
        super().__init__()
        self.log, self.copies = [], 0

    def copy_in(self, dest, chunk):
        dest.copy_(chunk)
        self.log.append(("copy", self.copies, chunk.data_ptr()))
        self.copies += 1
        return _Fence(self.log, self.copies - 1)


def test_a_ring_buffer_is_overwritten_only_after_the_copy_from_it_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "CHUNK_BYTES", 4096)
    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=1)))
    ring, dev = staging.Ring(), _FencedGpu()
    for job in jobs:
        assert torch.equal(staging.stream([job], dev, ring), read_tensor(job.tensor))
    copies = [e for e in dev.log if e[0] == "copy"]
    assert len(copies) > 3 * staging.RING
    for k, (_, _, buffer) in enumerate(copies):
        if k >= staging.RING:  # the buffer of copy k - RING again, and that copy waited for first
            assert buffer == copies[k - staging.RING][2]
            assert dev.log.index(("wait", k - staging.RING)) < dev.log.index(copies[k])
    waited = [e[1] for e in dev.log if e[0] == "wait"]
    assert waited == list(range(len(copies) - staging.RING))  # each once, in order; the last RING never


def test_cuda_streams_in_on_the_copy_stream_and_the_compute_stream_waits(tmp_path, monkeypatch):
    """CudaDevice's receive/copy_in/received, run on the CPU with torch.cuda's stream calls recorded: the
    tensor is allocated on the copy stream and marked as used on the compute stream, each chunk is copied on
    the copy stream and returns that stream's event, and the compute stream waits for the copies."""
    from streamscan.compute.backends import CudaDevice
    from tests.fixtures.cuda_calls import record_cuda_calls

    monkeypatch.setattr(staging, "CHUNK_BYTES", 4096)
    job = max(_jobs(write_llama(tmp_path / "m", LlamaShape(layers=1))), key=lambda j: j.tensor.nbytes)
    ring, want = staging.Ring(), read_tensor(job.tensor)
    calls = record_cuda_calls(monkeypatch)
    got = staging.stream([job], CudaDevice("cuda:0"), ring)
    assert torch.equal(got, want)
    chunks = -(-job.tensor.nbytes // 4096)
    assert chunks > staging.RING
    assert calls[:3] == ["on copies", "allocated on copies", "used on compute"]
    assert calls[-1] == "compute waits copies"
    middle = calls[3:-1]
    assert middle.count("on copies") == middle.count("event on copies") == chunks
    assert middle.count("event (blocking=True)") == chunks
    assert middle.count("event waited") == max(0, chunks - staging.RING)


def _overlapping_gpu(on_overlap):
    """(a SimulatedGpu, its STATE) where a stream meets a computation: the second stream starts once the first
    computation runs, and the first computation lasts until a stream found it running (60 s timeouts: a hang,
    not a pace). ON_OVERLAP() is called by each stream that finds a computation running, and may raise. STATE:
    "most" computations at once, "overlaps" (streams that found one running)."""
    from streamscan.compute.spectrum import score

    lock, state = threading.Lock(), {"computing": 0, "most": 0, "receives": 0, "overlaps": 0}
    computing, overlapped = threading.Event(), threading.Event()

    class Gpu(SimulatedGpu):
        def receive(self, shape, dtype):
            with lock:
                state["receives"] += 1
                second = state["receives"] == 2
            if second:
                computing.wait(timeout=60)
            with lock:
                during = state["computing"] > 0
                state["overlaps"] += during
            if during:
                overlapped.set()
                on_overlap()
            return super().receive(shape, dtype)

    def compute(W, method, device):
        with lock:
            state["computing"] += 1
            state["most"] = max(state["most"], state["computing"])
            first = not computing.is_set()
            computing.set()
        try:
            if first:
                overlapped.wait(timeout=60)
            return score(W, method)
        finally:
            with lock:
                state["computing"] -= 1

    return Gpu(compute=compute), state


def test_a_gpu_computes_one_job_at_a_time_while_its_other_slot_streams_the_next(tmp_path):
    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1))
    gpu, state = _overlapping_gpu(lambda: None)
    results = list(scheduler.run_jobs(jobs, "gram64", devices=[gpu]))
    assert state["overlaps"] > 0 and state["most"] == 1
    assert len(results) == len(jobs) and all(r.status == "ok" and r.worker == "cuda:0" for r in results)
    cpu = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    assert {r.name: r.snr for r in results} == cpu


def test_at_most_one_stream_per_core_runs_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "RINGS", staging.Rings(1))
    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1))
    lock, state = threading.Lock(), {"active": 0, "most": 0, "streams": 0}
    inside = threading.local()

    class Gpu(SimulatedGpu):
        def receive(self, shape, dtype):
            if not getattr(inside, "on", False):
                inside.on = True
                with lock:
                    state["active"] += 1
                    state["streams"] += 1
                    state["most"] = max(state["most"], state["active"])
            return super().receive(shape, dtype)

        def received(self):
            inside.on = False
            with lock:
                state["active"] -= 1

    results = list(scheduler.run_jobs(jobs, "gram64", devices=[Gpu(f"cuda:{i}") for i in range(4)]))
    assert len(results) == len(jobs) and all(r.status == "ok" for r in results)
    assert state["streams"] > 4 and state["most"] == 1


def test_a_shard_truncated_after_indexing_fails_only_its_matrices_on_a_gpu(tmp_path):
    ck = write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1)
    jobs = _jobs(ck)
    shard = max({j.tensor.shard for j in jobs}, key=lambda p: sum(j.tensor.shard == p for j in jobs))
    size = shard.stat().st_size
    last = max((j for j in jobs if j.tensor.shard == shard), key=lambda j: j.tensor.start)
    with open(shard, "r+b") as fh:
        fh.truncate(last.tensor.start + last.tensor.nbytes // 2)
    assert shard.stat().st_size < size
    results = {r.name: r for r in scheduler.run_jobs(jobs, "gram64", devices=[SimulatedGpu()])}
    assert set(results) == {j.name for j in jobs}
    assert {n for n, r in results.items() if r.status == "error"} == {last.name}
    assert "truncated" in results[last.name].reason and str(shard) in results[last.name].reason


def test_out_of_device_memory_while_streaming_beside_a_computation_waits_for_it_instead_of_leaving(tmp_path):
    """The other slot's computation holds the memory a stream needs: the stream is retried once that is done
    (holding the device), so the job stays on the GPU -- an OOM would send it to the CPU for good."""
    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1))

    def refuse():
        raise torch.OutOfMemoryError("simulated: the other slot's computation holds the memory")

    gpu, state = _overlapping_gpu(refuse)
    stats = scheduler.PoolStats()
    results = list(scheduler.run_jobs(jobs, "gram64", devices=[gpu], stats=stats))
    assert len(results) == len(jobs) and all(r.status == "ok" and r.worker == "cuda:0" for r in results)
    assert stats.devices["cuda:0"].oom == 0 and state["overlaps"] > 0


def test_a_gpus_two_slots_never_hold_more_than_its_memory_between_them(tmp_path):
    """Placement counts the job of a GPU's other slot, which may be streaming in with its working memory not
    allocated yet: with room for 1.5 of the largest job's estimate, the jobs the two slots hold from their
    stream to the end of their computation never add up to more than that room."""
    from streamscan.compute.placement import GPU_MARGIN_MIN
    from streamscan.compute.spectrum import memory_bytes

    jobs = _jobs(write_llama(tmp_path / "m", LlamaShape(layers=2), layers_per_shard=1))

    def need(shape, size):
        *lead, m, n = shape
        return (lead[0] if lead else 1) * memory_bytes((m, n), size, "gram64", "cuda")

    room = int(1.5 * max(need(j.shape, j.tensor.element_size) for j in jobs))
    lock, state = threading.Lock(), {"held": 0, "most": 0}
    mine = threading.local()

    class Gpu(SimulatedGpu):
        def receive(self, shape, dtype):
            mine.need = need(shape, torch.empty((), dtype=dtype).element_size())
            with lock:
                state["held"] += mine.need
                state["most"] = max(state["most"], state["held"])
            return super().receive(shape, dtype)

        def score(self, matrix, method, path):
            try:
                return super().score(matrix, method, path)
            finally:
                self._done()

        def score_batch(self, stack, method, path):
            try:
                return super().score_batch(stack, method, path)
            finally:
                self._done()

        def _done(self):
            with lock:
                state["held"] -= mine.need

    total = GPU_MARGIN_MIN + room  # the margin (placement.margin) is GPU_MARGIN_MIN at this size
    results = list(scheduler.run_jobs(jobs, "gram64", devices=[Gpu(memory=(total, total))]))
    assert len(results) == len(jobs) and all(r.status == "ok" and r.worker == "cuda:0" for r in results)
    assert 0 < state["most"] <= room and state["held"] == 0
