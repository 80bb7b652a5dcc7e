"""Huge matrices read in pieces: the Gram accumulates from row bands / column strips read from the file."""

import pytest
import torch

import streamscan.compute.reading as reading
import streamscan.compute.scheduler as scheduler
import streamscan.compute.spectrum as sp
from streamscan.checkpoint.formats.safetensors import read_pieces
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import Pieces
from streamscan.checkpoint.source import resolve
from streamscan.planning.plan import make_plan
from tests.conftest import write_tensors


@pytest.fixture
def wide_and_tall(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "CHUNK_ELEMENTS", 64 * 40)  # several chunks per piece, several pieces
    g = torch.Generator().manual_seed(3)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(300, 64, generator=g).to(torch.bfloat16),  # tall: bands
        "model.layers.0.mlp.down_proj.weight": torch.randn(64, 300, generator=g).to(torch.bfloat16),  # wide: strips
        "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g),  # square, float32
    }
    return write_tensors(tmp_path / "m" / "model.safetensors", tensors), tensors


def _info(path, name):
    return next(t for t in build_index(resolve(path.parent)).tensors if t.name == name)


@pytest.mark.parametrize("piece_bytes", [1, 5000, 1 << 20])
def test_pieces_concatenate_to_the_tensor_and_score_bit_identically(wide_and_tall, piece_bytes):
    path, tensors = wide_and_tall
    for name, W in tensors.items():
        info = _info(path, name)
        step = sp.chunk_step(W.shape)
        pieces = list(read_pieces(info, step, piece_bytes))
        axis = 0 if W.shape[0] > W.shape[1] else 1
        assert torch.equal(torch.cat(pieces, axis), W)
        assert all(p.shape[axis] % step == 0 for p in pieces[:-1])
        if piece_bytes == 1:
            assert len(pieces) > 1
        got, want = sp.score_pieces(Pieces(info, step, piece_bytes), tuple(W.shape)), sp.score(W, "gram64")
        assert got == want and torch.equal(got.singular_values, want.singular_values)
        assert got.snr == pytest.approx(sp.score(W.double(), "svdvals64").snr, rel=1e-12)


def test_nan_in_a_later_piece_is_found(tmp_path):
    W = torch.randn(400, 8)
    W[390, 3] = float("nan")
    path = write_tensors(tmp_path / "m" / "model.safetensors", {"x.weight": W})
    info = _info(path, "x.weight")
    assert sp.score_pieces(Pieces(info, 4, 8 * 4 * 4), (400, 8)).reason == "weights contain NaN or Inf"


def test_memory_estimate_counts_one_piece_not_the_tensor():
    whole = sp.memory_bytes((128256, 16384), 2)
    pieced = sp.memory_bytes((128256, 16384), 2, piece=64 << 20)
    assert whole - pieced == 128256 * 16384 * 2 - (64 << 20)
    gram_and_copy = 2 * 16384**2 * 8
    assert gram_and_copy < pieced < gram_and_copy + (1 << 30)


def test_a_scan_above_the_threshold_reads_in_pieces_with_the_same_results(wide_and_tall, monkeypatch):
    path, tensors = wide_and_tall
    jobs = make_plan(build_index(resolve(path.parent))).jobs
    whole_stats = scheduler.PoolStats()
    whole = {r.name: r for r in scheduler.run_jobs(jobs, "gram64", workers=1, stats=whole_stats)}
    seen = []
    real = sp.score_pieces
    monkeypatch.setattr(
        "streamscan.compute.backends.score_pieces", lambda p, shape, device=None: seen.append(shape) or real(p, shape)
    )
    monkeypatch.setattr(reading, "PIECE_BYTES", 64 * 8)
    stats = scheduler.PoolStats()
    above = 64 * 64 * 4  # the two bf16 ones, not the float32 64x64
    pieced = {r.name: r for r in scheduler.run_jobs(jobs, "gram64", workers=1, stats=stats, pieces_above=above)}
    assert sorted(seen) == [(64, 300), (300, 64)]
    assert {n: (r.snr, r.sigma_max, r.n_signal) for n, r in pieced.items()} == {
        n: (r.snr, r.sigma_max, r.n_signal) for n, r in whole.items()
    }
    # what the budget holds for a pieced job: one piece (and its float64 work), never the tensor
    assert stats.peak_held < whole_stats.peak_held
    tall = next(j for j in jobs if j.shape == (300, 64))
    piece = Pieces(tall.tensor, sp.chunk_step(tall.shape), 64 * 8).nbytes
    assert piece < tall.nbytes and stats.peak_held - whole_stats.peak_held <= piece - tall.nbytes
