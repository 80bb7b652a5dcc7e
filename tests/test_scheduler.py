import pytest

import streamscan
import streamscan.scheduler as scheduler
from streamscan.errors import UsageError
from streamscan.index import build_index
from streamscan.plan import make_plan
from streamscan.source import resolve


def test_parallel_workers_give_identical_results_to_one_worker(sharded_llama):
    jobs = make_plan(build_index(resolve(sharded_llama))).jobs
    one = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=1)}
    three = {r.name: r.snr for r in scheduler.run_jobs(jobs, "gram64", workers=3)}
    assert one == three and len(one) == len(jobs)
    workers = {r.worker for r in scheduler.run_jobs(jobs, "gram64", workers=2)}
    assert workers == {"cpu0", "cpu1"}


def test_a_failing_job_is_recorded_and_retried_on_resume(sharded_llama, tmp_path, monkeypatch):
    real = scheduler.read_tensor

    def flaky(info):
        if info.name == "model.layers.1.mlp.up_proj.weight":
            raise OSError("simulated I/O error")
        return real(info)

    monkeypatch.setattr(scheduler, "read_tensor", flaky)
    first = streamscan.scan(sharded_llama, tmp_path)
    failed = [r for r in first.results if r.status == "error"]
    assert [r.name for r in failed] == ["model.layers.1.mlp.up_proj"] and "simulated I/O error" in failed[0].reason
    assert first.summary["failed"] == 1 and first.summary["scored"] == 29
    monkeypatch.setattr(scheduler, "read_tensor", real)
    second = streamscan.scan(sharded_llama, tmp_path)
    assert second.summary["failed"] == 0 and second.summary["resumed_from_journal"] == 29
    assert second.snr["model.layers.1.mlp.up_proj"] is not None


def test_devices():
    assert scheduler.parse_devices("cpu") == ["cpu"] and scheduler.parse_devices("auto") == ["cpu"]
    with pytest.raises(UsageError, match="--devices 0,1"):
        scheduler.parse_devices("0,1")
