"""Outputs are byte-identical whatever --workers: a CPU job's thread count depends on nothing but the job."""

from streamscan.pipeline import scan
from tests.fixtures.synthetic import LlamaShape, write_llama


def test_cpu_workers_1_and_2_give_byte_identical_outputs(tmp_path):
    model = write_llama(tmp_path / "m", LlamaShape(layers=2, hidden=512, ffn=1024, kv=128, vocab=1024))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        scan(model, out, devices="cpu", cpu_workers=workers, top_percent=[50])
        outs.append({p.name: p.read_bytes() for p in sorted(out.glob("snr_results_*"))})
    assert len(outs[0]) == 3 and outs[0] == outs[1]
