"""Reading a many-shard Hub model's headers (``inspect``): one at a time against several at once, side by side
in one run, through the local Hub server (tests/checkpoint/hubserver.py) with a network's round trip.

Run: python -m bench.hub_headers [SHARDS [LATENCY_S]]   (default 163 shards, DeepSeek-V3's count, and 50 ms:
a tiny one-layer-per-shard checkpoint; the server waits LATENCY_S before each answer). Prints one JSON line:
the header Range requests, their wall time and the most answered at once, for workers=1 and workers=8.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tests.checkpoint.hubserver import FakeHub
from tests.fixtures.synthetic import LlamaShape, write_llama


def main(shards: int = 163, latency: float = 0.05) -> dict:
    from huggingface_hub import constants

    from streamscan.pipeline import inspect_model
    from streamscan.records import HubNetwork

    with tempfile.TemporaryDirectory() as tmp, FakeHub() as hub:
        ck = write_llama(
            Path(tmp) / "ck", LlamaShape(layers=shards, hidden=32, ffn=64, kv=32, vocab=64), layers_per_shard=1
        )
        hub.add_commit("bench/many", ck)
        constants.ENDPOINT = hub.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_CACHE = str(Path(tmp) / "hf-cache")
        hub.latency = latency
        out = {"shards": len(list(ck.glob("*.safetensors"))), "latency_s": latency}
        for workers in (1, 8):
            hub.requests.clear()
            hub.max_in_flight = 0
            started = time.perf_counter()
            index, _ = inspect_model("bench/many", network=HubNetwork(workers=workers))
            seconds = time.perf_counter() - started
            probes = [r for r in hub.requests if r[0] == "GET" and r[2] and r[1].endswith(".safetensors")]
            out[f"workers_{workers}"] = {
                "header_requests": len(probes),
                "all_requests": len(hub.requests),
                "seconds": round(seconds, 2),
                "max_in_flight": hub.max_in_flight,
                "tensors": len(index.tensors),
            }
        return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(int(args[0]) if args else 163, float(args[1]) if len(args) > 1 else 0.05)))
