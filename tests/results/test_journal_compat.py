"""A journal written by streamscan 0.1 (the flat package, before "the house") still resumes.

JOURNAL_0_1 is what 0.1.0 wrote after scoring two of the 15 matrices of the ``single_llama`` fixture (copied
from a real run of 0.1.0, commit ed5125d); only the shard's size and header hash are filled in from the file,
so the fingerprint is the one 0.1 computed: the sha256 of the safetensors header JSON (the bytes after its
8-byte length), as ``streamscan.checkpoint.formats.safetensors.parse_header`` computes it.
"""

import hashlib
import json
import math
import struct
import sys

import streamscan
from streamscan.results.journal import JOURNAL_NAME

# fmt: off
JOURNAL_0_1 = (
    '{"streamscan_journal":1,"version":"0.1.0","fingerprint":{"model":"single_llama","shards":[["model.sa'
    'fetensors",{size},"{sha256}"]],"method":"gram64","include":[],"exclude":[]},"model":"single_llama","'
    'slug":"single-llama","targets":["model.embed_tokens","model.layers.0.mlp.down_proj","model.layers.0.'
    'mlp.gate_proj","model.layers.0.mlp.up_proj","model.layers.0.self_attn.k_proj","model.layers.0.self_a'
    'ttn.o_proj","model.layers.0.self_attn.q_proj","model.layers.0.self_attn.v_proj","model.layers.1.mlp.'
    'down_proj","model.layers.1.mlp.gate_proj","model.layers.1.mlp.up_proj","model.layers.1.self_attn.k_p'
    'roj","model.layers.1.self_attn.o_proj","model.layers.1.self_attn.q_proj","model.layers.1.self_attn.v'
    '_proj"],"skipped":[["model.layers.0.input_layernorm","1-D tensor (norm or bias): no matrix spectrum"'
    '],["model.layers.0.post_attention_layernorm","1-D tensor (norm or bias): no matrix spectrum"],["mode'
    'l.layers.1.input_layernorm","1-D tensor (norm or bias): no matrix spectrum"],["model.layers.1.post_a'
    'ttention_layernorm","1-D tensor (norm or bias): no matrix spectrum"],["model.norm","1-D tensor (norm'
    ' or bias): no matrix spectrum"]]}'
    '\n'
    '{"name":"model.embed_tokens","type":"model.embed_tokens","shape":[256,64],"dtype":"BF16","snr":15.44'
    '1641729356222,"reason":null,"status":"ok","role":"embedding","method":"gram64","seconds":0.014996179'
    '000036136,"worker":"cpu0","sigma_max":9.321404230051678,"threshold":0.9500933059863368,"n_signal":64'
    ',"read_seconds":0.00040669700001672027,"note":null}'
    '\n'
    '{"name":"model.layers.0.mlp.down_proj","type":"mlp.down_proj","shape":[64,176],"dtype":"BF16","snr":'
    '2.2782296699309486,"reason":null,"status":"ok","role":null,"method":"gram64","seconds":0.01111873300'
    '010302,"worker":"cpu0","sigma_max":8.049406290172398,"threshold":0.5896901990633355,"n_signal":56,"r'
    'ead_seconds":0.00018855600001188577,"note":null}'
    '\n'
)
# fmt: on
JOURNALED = {"model.embed_tokens": 15.441641729356222, "model.layers.0.mlp.down_proj": 2.2782296699309486}
OUTPUTS = (
    "snr_results_single-llama.json",
    "snr_results_single-llama_sorted.json",
    "snr_results_single-llama_unfrozenparameters_25percent.yaml",
)


def header_sha256(path) -> str:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 : 8 + length]).hexdigest()


def scan(model, out):
    return streamscan.scan(model, out, top_percent=[25], devices="cpu", cpu_workers=1)


def test_a_journal_of_streamscan_0_1_resumes_and_gives_a_fresh_scans_outputs(single_llama, tmp_path):
    shard = single_llama / "model.safetensors"
    text = JOURNAL_0_1.replace("{size}", str(shard.stat().st_size)).replace("{sha256}", header_sha256(shard))
    out = tmp_path / "old"
    out.mkdir()
    (out / JOURNAL_NAME).write_text(text)

    res = scan(single_llama, out)
    assert res.summary.resumed_from_journal == 2
    assert (res.summary.matrices, res.summary.scored, res.summary.failed) == (15, 15, 0)
    kept = {r.name: r for r in res.results if r.name in JOURNALED}
    # taken from the journal, not recomputed; the embedding's 64 of 64 values above the threshold (no noise) were
    # scored signal/1/S[0] before D2, and read now as the reference's Infinity, as a fresh scan scores it
    assert {n: r.snr for n, r in kept.items()} == {**JOURNALED, "model.embed_tokens": math.inf}
    assert kept["model.embed_tokens"].degenerate == "noise-sum-0" and kept["model.embed_tokens"].status == "ok"
    assert kept["model.embed_tokens"].seconds == 0.014996179000036136 and kept["model.embed_tokens"].role == "embedding"
    lines = (out / JOURNAL_NAME).read_text().splitlines(keepends=True)
    assert "".join(lines[:3]) == text and len(lines) == 16  # appended to, header untouched

    fresh = scan(single_llama, tmp_path / "fresh")
    assert fresh.summary.resumed_from_journal == 0
    old = {name: json.loads((out / name).read_text()) for name in OUTPUTS[:2]}
    new = {name: json.loads((tmp_path / "fresh" / name).read_text()) for name in OUTPUTS[:2]}
    for name, snr in JOURNALED.items():
        # the resumed scan's outputs hold the 0.1 journal's values exactly; they were computed on another machine,
        # so they are not compared with this machine's fresh ones (their last bits are that machine's)
        assert old[OUTPUTS[0]][name]["snr"] == (sys.float_info.max if name == "model.embed_tokens" else snr)
        old[OUTPUTS[0]][name]["snr"] = new[OUTPUTS[0]][name]["snr"]
        kind = new[OUTPUTS[0]][name]["type"]
        old[OUTPUTS[1]][kind][name] = new[OUTPUTS[1]][kind][name]
    assert old == new
    # same ranking (the SNRs of the type lie far further apart than two machines' roundings)
    assert list(old[OUTPUTS[1]]["mlp.down_proj"]) == list(new[OUTPUTS[1]]["mlp.down_proj"])
    assert (out / OUTPUTS[2]).read_bytes() == (tmp_path / "fresh" / OUTPUTS[2]).read_bytes()
