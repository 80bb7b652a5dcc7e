"""Random and mutated safetensors checkpoints for the memory-bound property test (test_header_memory.py).

``python -m tests.checkpoint.header_fuzz N`` runs N hypothesis examples in this process: each one writes a
checkpoint directory (a safetensors file with a random or mutated header, sometimes thousands of entries,
shapes claiming huge sizes, an FP8 weight with a config.json whose ``weight_block_size`` is huge or bad),
then runs ``build_index`` + ``make_plan`` and, when accepted, reads the largest matrix. Each must succeed
or refuse in one line (CheckpointError/SourceError); anything else propagates. It prints one JSON line:
the examples run, how many were accepted, the largest file and the growth of the peak RSS (VmHWM) over a
warm-up example.
"""

import json
import struct
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import read_tensor
from streamscan.checkpoint.source import resolve
from streamscan.errors import CheckpointError, SourceError
from streamscan.planning.plan import make_plan

SIZES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "I8": 1, "U8": 1, "I64": 8, "BOOL": 1}
HUGE = [2**31, 2**32 + 1, 1_500_000_000, 2**40, 2**62, 2**64 - 1, 2**64, -1, 1.5, True, "64", None]
NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "lm_head.weight",
    "model.norm.weight",
]
MANY = [int(x) for x in __import__("os").environ.get("FUZZ_MANY", "0,0,10,3000,40000").split(",")]
FP8 = "model.layers.0.mlp.gate_proj.weight"

dims = st.one_of(st.integers(0, 96), st.sampled_from(HUGE))
tensor = st.tuples(
    st.sampled_from(NAMES),
    st.one_of(st.sampled_from(sorted(SIZES)), st.sampled_from(["bf16", "Q7", "", 3])),
    st.lists(dims, max_size=3),
)
block = st.one_of(st.integers(-1, 2**63), st.sampled_from(HUGE), st.just(0))
case = st.fixed_dictionaries(
    {
        "tensors": st.lists(tensor, max_size=5),
        "many": st.sampled_from(MANY),  # extra 1-element entries (a long header)
        "fp8": st.one_of(st.none(), st.tuples(block, block)),  # an FP8 weight, its scales and a block size
        "offsets": st.sampled_from(["tile", "tile", "random", "huge"]),
        "mutate": st.sampled_from([None, None, "flip", "truncate", "length"]),
        "where": st.floats(0, 1),
        "byte": st.integers(0, 255),
    }
)


def _count(shape) -> int | None:
    n = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            return None
        n *= d
    return n


def build(c: dict) -> tuple[bytes, dict | None]:
    """The file's bytes and the config.json beside it (or None)."""
    entries: list[tuple[str, object, list]] = list(c["tensors"])
    entries += [(f"model.layers.{i}.input_layernorm.weight", "F32", [1]) for i in range(c["many"])]
    config = None
    if c["fp8"] is not None:
        entries += [(FP8, "F8_E4M3", [64, 96]), (FP8 + "_scale_inv", "F32", [1, 1])]
        config = {
            "model_type": "llama",
            "quantization_config": {"quant_method": "fp8", "weight_block_size": list(c["fp8"])},
        }
    header: dict = {}
    data = bytearray()
    for name, dtype, shape in entries:
        n = _count(shape)
        size = SIZES.get(dtype, 1) * n if isinstance(dtype, str) and n is not None else 0
        start = len(data)
        if c["offsets"] == "random":
            start, size = int(c["where"] * 4096), c["byte"] * 7
        elif c["offsets"] == "huge":
            size = 2**63
        end = start + size
        if c["offsets"] == "tile" and size <= 1 << 20:
            data += bytes(size)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
    raw = json.dumps(header).encode()
    blob = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(data))
    if c["mutate"] == "flip" and len(raw):
        blob[8 + int(c["where"] * (len(raw) - 1))] = c["byte"]
    elif c["mutate"] == "truncate":
        blob = blob[: int(c["where"] * len(blob))]
    elif c["mutate"] == "length":
        blob[:8] = struct.pack("<Q", int(c["where"] * 2**63))
    return bytes(blob), config


def check(c: dict, stats: dict) -> None:
    blob, config = build(c)
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ck"
        ck.mkdir()
        (ck / "model.safetensors").write_bytes(blob)
        if config is not None:
            (ck / "config.json").write_text(json.dumps(config))
        stats["largest_file"] = max(stats["largest_file"], len(blob))
        try:
            plan = make_plan(build_index(resolve(ck)))
            jobs = sorted(plan.jobs, key=lambda j: j.nbytes)
            if jobs:
                read_tensor(jobs[-1].tensor, jobs[-1].part)
            stats["accepted"] += 1
        except (CheckpointError, SourceError) as err:
            assert "\n" not in str(err).strip(), str(err)
        stats["examples"] += 1


def peak_rss() -> int:
    """This process's high-water RSS in bytes (VmHWM: ru_maxrss would carry the parent's peak over the exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def main(examples: int) -> dict:
    stats = {"examples": 0, "accepted": 0, "largest_file": 0}
    warm = dict(tensors=[(NAMES[1], "BF16", [64, 64])], many=10, fp8=(32, 32), offsets="tile", mutate=None)
    check(dict(warm, where=0.0, byte=0), dict(stats))  # imports and first-call caches before the baseline
    base = peak_rss()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case)
    def run(c):
        check(c, stats)

    run()
    stats["rss_growth"] = peak_rss() - base
    return stats


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
