"""Hub models through huggingface_hub against a local Hub server (tests/hubserver.py): the real client, real HTTP.

In-process tests point huggingface_hub's constants at the server and a temporary cache; the kill test runs
the CLI in a subprocess with HF_ENDPOINT / HF_HUB_CACHE in its environment.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamscan import SourceError, UsageError, scan
from streamscan.api import inspect_model
from streamscan.cli import main
from streamscan.errors import JournalError
from streamscan.records import HubNetwork
from tests.fixtures.synthetic import LlamaShape, write_llama

from .hubserver import FakeHub

REPO = "acme/tiny-llama"
SHARDS = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """4 shards of one layer each (~198 KB), the last also holding the embedding and head (~395 KB)."""
    return write_llama(
        tmp_path_factory.mktemp("hubck") / "tiny-llama",
        LlamaShape(layers=4, hidden=96, ffn=256, kv=32, vocab=512),
        layers_per_shard=1,
    )


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> dict:
    """SNRs of the same checkpoint scanned from its local directory."""
    return scan(checkpoint, tmp_path_factory.mktemp("ref"), devices="cpu", cpu_workers=1).snr


@pytest.fixture
def hub(tmp_path, monkeypatch, checkpoint):
    """A running local Hub serving REPO, with huggingface_hub pointed at it and at an empty cache."""
    from huggingface_hub import constants

    with FakeHub() as server:
        server.commit = server.add_commit(REPO, checkpoint)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        server.cache = tmp_path / "hf-cache"
        yield server


def shard_bodies(server: FakeHub) -> list[tuple[str, str | None]]:
    """(shard, Range) of every GET that downloaded shard data (header probes of the first 100 kB excluded)."""
    return [(p.rsplit("/", 1)[-1], r) for m, p, r in server.gets(".safetensors") if r != "bytes=0-99999"]


def snapshot(server: FakeHub) -> Path:
    return server.cache / "models--acme--tiny-llama" / "snapshots" / server.commit


def shard_blob_bytes(cache: Path) -> int:
    """Bytes of shard data in the cache's blobs, partial downloads included (LFS blobs are sha256 names)."""
    total = 0
    for p in cache.glob("models--*/blobs/*"):
        if len(p.name.split(".")[0]) == 64:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
    return total


def assert_cache_consistent(cache: Path) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    for link in cache.glob("models--*/snapshots/*/*"):
        assert link.exists(), f"dangling snapshot link {link}"
    assert not list(cache.glob("models--*/blobs/*.incomplete"))


def test_cold_scan_downloads_shard_by_shard_and_matches_a_local_scan(hub, reference, tmp_path):
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)
    assert res.snr == reference
    h = res.summary["hub"]
    assert h["commit"] == hub.commit and h["shards_downloaded"] == 4 and h["shards_scanned_from_cache"] == []
    assert sorted(s for s, _ in shard_bodies(hub)) == SHARDS  # each shard fetched once, whole
    header = json.loads((tmp_path / "out" / "streamscan.journal.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"]["revision"] == hub.commit
    assert_cache_consistent(hub.cache)


def test_plan_is_known_before_any_download(hub):
    result = CliRunner().invoke(main, ["inspect", REPO, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["matrices"] == 30 and plan["commit"] == hub.commit
    assert plan["shards_to_download"] == SHARDS and plan["bytes_to_download"] == sum(
        hub.repos[REPO].commits[hub.commit][s].__len__() for s in SHARDS
    )
    assert plan["types"]["mlp.down_proj"] == {"matrices": 4, "shapes": ["96x256"], "dtypes": ["BF16"], "experts": 0}
    assert all(sec > 0 for sec in plan["eta_seconds"].values())
    assert shard_bodies(hub) == []  # headers only: Range reads of the first 100 kB
    assert not list(hub.cache.glob("models--*/blobs/*.incomplete")) and not (snapshot(hub) / SHARDS[0]).exists()
    text = CliRunner().invoke(main, ["inspect", REPO]).output
    assert f"4 shard(s) at commit {hub.commit}" in text and "estimated time" in text


def test_warm_cache_is_used_in_place_without_downloading(hub, reference, tmp_path):
    scan(REPO, tmp_path / "cold", devices="cpu", cpu_workers=1)
    hub.requests.clear()
    res = scan(REPO, tmp_path / "warm", devices="cpu", cpu_workers=1, max_disk=1)
    assert res.snr == reference
    assert shard_bodies(hub) == [] and not hub.gets(".safetensors")  # not even a header probe
    h = res.summary["hub"]
    assert h["shards_scanned_from_cache"] == SHARDS and h["shards_downloaded"] == 0 and h["deleted_after_scan"] == []
    assert all((snapshot(hub) / s).exists() for s in SHARDS)  # pre-cached shards are never deleted


def test_max_disk_smaller_than_the_model_bounds_the_disk(hub, reference, tmp_path):
    sizes = {s: len(hub.repos[REPO].commits[hub.commit][s]) for s in SHARDS}
    budget = 600_000
    assert max(sizes.values()) < budget < sum(sizes.values())
    hub.rate = 4e6  # slow enough for the sampler to see every download
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], shard_blob_bytes(hub.cache))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, max_disk=budget)
    finally:
        stop.set()
        sampler.join()
    assert res.snr == reference
    h = res.summary["hub"]
    assert 0 < peak[0] <= budget and h["peak_disk_bytes"] <= budget
    assert h["deleted_after_scan"][:2] == SHARDS[:2] and h["shards_downloaded"] == 4
    assert shard_blob_bytes(hub.cache) <= budget
    assert_cache_consistent(hub.cache)
    assert not (snapshot(hub) / SHARDS[0]).exists() and (snapshot(hub) / SHARDS[3]).exists()


def test_budget_smaller_than_a_shard_and_keep_shards_over_budget_are_refused(hub, tmp_path):
    with pytest.raises(UsageError, match="smaller than shard model-00004-of-00004"):
        scan(REPO, tmp_path / "a", devices="cpu", max_disk="200K")
    with pytest.raises(UsageError, match="--keep-shards needs"):
        scan(REPO, tmp_path / "b", devices="cpu", max_disk=600_000, keep_shards=True)
    assert shard_bodies(hub) == []


def test_keep_shards_keeps_every_download(hub, reference, tmp_path):
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, max_disk="10M", keep_shards=True)
    assert res.snr == reference and res.summary["hub"]["deleted_after_scan"] == []
    assert all((snapshot(hub) / s).exists() for s in SHARDS)


def test_dropped_connection_mid_shard_is_resumed_by_huggingface_hub(hub, reference, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # The client writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MiB) and resumes from the last one
    # written; our shards are smaller than one chunk, so use 16 KiB chunks to see a mid-shard resume.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    hub.drop = {SHARDS[1]: [120_000]}
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)
    assert res.snr == reference
    resumed = [int(r[6:-1]) for s, r in shard_bodies(hub) if s == SHARDS[1] and r]
    assert len(resumed) == 1 and 100_000 <= resumed[0] <= 120_000  # the client asked for the rest only
    assert hub.drop[SHARDS[1]] == []  # the drop happened
    assert_cache_consistent(hub.cache)


def test_a_failed_download_keeps_the_finished_work_and_a_rerun_resumes(hub, reference, tmp_path):
    hub.fail = {SHARDS[2]: 403}
    with pytest.raises(SourceError) as err:
        scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)
    msg = str(err.value)
    assert "cannot reach" in msg and "403" in msg and "\n" not in msg
    assert "14 matrices scanned before it are saved; rerun to resume" in msg  # shards 1 and 2: 7 matrices each
    hub.fail = {}
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)
    assert res.summary["resumed_from_journal"] == 14 and res.snr == reference
    assert res.summary["hub"]["shards_scanned_from_cache"] == []  # shards 1 and 2 were done: not even opened
    assert res.summary["hub"]["shards_downloaded"] == 2


def test_offline_with_a_partial_cache_names_the_missing_shards(hub, reference, tmp_path):
    from huggingface_hub import constants

    scan(REPO, tmp_path / "first", devices="cpu", cpu_workers=1, max_disk=600_000)  # leaves shards 3 and 4
    hub.requests.clear()
    with pytest.raises(SourceError) as err:
        scan(REPO, tmp_path / "off", devices="cpu", offline=True)
    msg = str(err.value)
    assert f"2 of 4 shards are not in the HF cache: {SHARDS[0]}, {SHARDS[1]};" in msg and "\n" not in msg
    constants.HF_HUB_OFFLINE = True  # HF_HUB_OFFLINE=1 (monkeypatch restores it)
    result = CliRunner().invoke(main, ["run", REPO, "--out", str(tmp_path / "off2"), "-q"])
    assert result.exit_code == 2 and f"{SHARDS[0]}, {SHARDS[1]}" in result.output
    assert hub.requests == []  # offline means no request at all


def interrupt_after(monkeypatch, n: int):
    """Make the next scan stop (KeyboardInterrupt, as Ctrl-C) after N results are journaled; returns the undo."""
    scan_mod = importlib.import_module("streamscan.compute.scheduler")  # the pipeline imports run_jobs from it per scan
    real = scan_mod.run_jobs

    def interrupted(jobs, *args, **kwargs):
        gen = real(jobs, *args, **kwargs)
        for i, r in enumerate(gen):
            if i == n:
                gen.close()
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(scan_mod, "run_jobs", interrupted)
    return lambda: monkeypatch.setattr(scan_mod, "run_jobs", real)


def test_offline_resume_from_the_cache_matches_the_online_scan(hub, reference, tmp_path, monkeypatch):
    from huggingface_hub import constants

    out = tmp_path / "out"
    undo = interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        scan(REPO, out, devices="cpu", cpu_workers=1, max_disk="10M")
    undo()
    scan(REPO, tmp_path / "fill", devices="cpu", cpu_workers=1)  # the rest of the shards reach the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    res = scan(REPO, out, devices="cpu", cpu_workers=1)  # same fingerprint offline: resumes
    assert res.summary["resumed_from_journal"] == 5 and res.snr == reference
    assert hub.requests == []


def test_resumed_scan_counts_what_the_interrupted_one_downloaded(hub, reference, tmp_path, monkeypatch):
    budget = 600_000
    undo = interrupt_after(monkeypatch, 9)  # shard 1 done (7 matrices), shard 2 begun, 3 fetched, 4 waits for room
    with pytest.raises(KeyboardInterrupt):
        scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, max_disk=budget)
    undo()
    time.sleep(0.2)  # let the interrupted run's download thread see that it was stopped
    left = sorted(p.name for p in snapshot(hub).glob("*.safetensors"))
    assert left in (SHARDS[:3], SHARDS[1:3])  # shard 1 deleted already, or not yet when it stopped
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, max_disk=budget)
    assert res.snr == reference
    h = res.summary["hub"]
    # the earlier run's shards are this scan's to delete, so shard 4 fits within the budget
    assert h["deleted_after_scan"] == [n for n in left if n != SHARDS[2]] and h["shards_downloaded"] == 1
    assert h["peak_disk_bytes"] <= budget and shard_blob_bytes(hub.cache) <= budget
    assert_cache_consistent(hub.cache)


def test_revision_is_pinned_and_a_resume_never_mixes_revisions(hub, checkpoint, tmp_path, reference):
    first = hub.commit
    v2 = tmp_path / "v2"
    write_llama(v2, LlamaShape(layers=4, hidden=96, ffn=256, kv=32, vocab=512), layers_per_shard=1, seed=7)
    second = hub.add_commit(REPO, v2)  # main moves on
    hub.repos[REPO].refs["v1"] = first
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, revision="v1")
    assert res.summary["hub"]["commit"] == first and res.snr == reference
    with pytest.raises(JournalError, match="a different revision"):
        scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)  # main is now `second`
    assert scan(REPO, tmp_path / "main", devices="cpu", cpu_workers=1).summary["hub"]["commit"] == second


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--revision", "nope"], {}, "no revision 'nope'; give an existing branch, tag or commit with --revision"),
        ([], {"repo": "acme/missing"}, "acme/missing: no such model on"),
        ([], {"gated": True}, "gated repo; accept its terms"),
    ],
)
def test_hub_errors_are_one_clear_line(hub, tmp_path, monkeypatch, args, env, expected):
    repo = env.get("repo", REPO)
    if env.get("gated"):
        hub.repos[REPO].gated = True
    result = CliRunner().invoke(main, ["run", repo, "--out", str(tmp_path / "o"), "-q", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("\n") == 1, result.output
    if env.get("gated"):  # with the token of an account that accepted the terms, it works
        monkeypatch.setenv("HF_TOKEN", hub.token)
        ok = CliRunner().invoke(main, ["run", repo, "--out", str(tmp_path / "o"), "-q", "--devices", "cpu"])
        assert ok.exit_code == 0, ok.output


def test_split_scan_of_a_hub_model(hub, reference, tmp_path):
    from streamscan import merge

    out = tmp_path / "out"
    first = scan(REPO, out, devices="cpu", cpu_workers=1, shard="0/2")
    scan(REPO, out, devices="cpu", cpu_workers=1, shard="1/2")  # the same HF cache: shards fetched once
    assert merge(out).snr == reference and 0 < len(first.results) < 30
    assert sorted(s for s, _ in shard_bodies(hub)) == SHARDS
    with pytest.raises(UsageError, match="whole scans only"):
        scan(REPO, tmp_path / "o2", devices="cpu", shard="0/2", max_disk="10M")


def test_local_path_rejects_hub_only_options(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="--revision v1: only for Hub ids"):
        scan(checkpoint, tmp_path / "o", revision="v1")
    with pytest.raises(UsageError, match="--max-disk/--keep-shards: only for Hub ids"):
        scan(checkpoint, tmp_path / "o", max_disk="1G")


# a real kill during a download -------------------------------------------------------------------------
def test_kill_during_download_then_resume(hub, reference, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(hub.cache),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    args = [
        sys.executable,
        "-m",
        "streamscan",
        "run",
        REPO,
        "--out",
        str(out),
        "-q",
        "--devices",
        "cpu",
        "--workers",
        "1",
    ]
    hub.rate = 100e3  # 100 kB/s: ~2 s a shard
    proc = subprocess.Popen(args, env=env)
    journal = out / "streamscan.journal.jsonl"
    blobs = hub.cache / "models--acme--tiny-llama" / "blobs"
    deadline = time.monotonic() + 120
    partial = []
    while time.monotonic() < deadline and proc.poll() is None:
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        partial = list(blobs.glob("*.incomplete")) if blobs.exists() else []  # written in 10 MiB chunks: may be empty
        if lines >= 3 and partial:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial and proc.returncode == -signal.SIGKILL, "the run was not killed during a download"
    assert list(blobs.glob("*.incomplete"))  # what huggingface_hub leaves behind a kill
    done_before = journal.read_bytes().count(b"\n") - 1
    assert 0 < done_before < 30

    hub.rate = None
    subprocess.run(args, env=env, check=True, timeout=300)
    results = json.loads((out / "snr_results_acme-tiny-llama.json").read_text())
    # the JSON holds a degenerate matrix's inf as the largest double (D2)
    assert {k: v["snr"] for k, v in results.items()} == {k: min(v, sys.float_info.max) for k, v in reference.items()}
    names = [json.loads(line)["name"] for line in journal.read_text().splitlines()[1:]]
    assert len(names) == len(set(names)) == 30  # nothing lost, nothing counted twice
    assert [s for s, r in shard_bodies(hub)].count(SHARDS[0]) == 1  # the finished shard was not fetched again
    assert_cache_consistent(hub.cache)  # the killed download's partial file was cleaned up


@pytest.mark.parametrize("sizes", ["blobs", "never"])
def test_model_info_without_sizes_gets_them_by_head(hub, checkpoint, reference, tmp_path, sizes):
    hub.sizes = sizes  # "blobs": as the real Hub; "never": a mirror or proxy that lists no sizes
    index, _ = inspect_model(REPO)
    assert index.total_bytes == sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    assert not shard_bodies(hub)  # sizes came from HEAD requests, not downloads
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1)
    assert res.snr == reference


def test_mistyped_local_path_is_not_reported_as_a_hub_error(hub, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as err:
        scan("models/tiny-lama", tmp_path / "out", devices="cpu")
    msg = str(err.value)
    assert msg.startswith("models/tiny-lama: no such file or directory") and "not a Hub id that exists" in msg
    assert "\n" not in msg and "cannot reach" not in msg


# faults: timeouts, retries, short bodies ----------------------------------------------------------------
FAST = HubNetwork(timeout=0.5, retries=2, backoff=0.01, max_wait=0.02)  # what the CLI's defaults do, quicker


def retries_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]


@pytest.mark.parametrize(
    "kind",
    ["info", "head:config.json", "get:model.safetensors.index.json", "get:config.json", f"range:{SHARDS[2]}"],
)
def test_one_transient_500_is_retried(hub, kind, caplog):
    hub.errors = {kind: [500]}
    index, plan = inspect_model(REPO, network=FAST)  # before: "cannot reach ..." (huggingface_hub retries only HEAD)
    assert len(plan.jobs) == 30 and hub.errors[kind] == []
    assert len(retries_logged(caplog)) == (0 if kind.startswith("head:") else 1)  # HEADs: huggingface_hub retries


def test_a_500_on_a_shard_download_is_retried(hub, reference, tmp_path, caplog):
    hub.errors = {f"get:{SHARDS[1]}": [503]}
    res = scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, network=FAST)
    assert res.snr == reference and hub.errors[f"get:{SHARDS[1]}"] == []
    assert [m.split(":")[0] for m in retries_logged(caplog)] == [f"{REPO}/{SHARDS[1]}"]


def test_a_header_probe_that_stalls_mid_body_times_out_and_is_retried(hub, caplog):
    hub.stall = {f"range:{SHARDS[0]}": [100]}  # 100 bytes, then nothing: before, inspect and run hung forever
    started = time.monotonic()
    index, plan = inspect_model(REPO, network=FAST)
    assert len(plan.jobs) == 30 and hub.stall[f"range:{SHARDS[0]}"] == []
    assert "ReadTimeout" in " ".join(retries_logged(caplog)) and time.monotonic() - started < 60


def test_a_server_that_keeps_stalling_fails_in_one_line_after_the_retries(hub):
    hub.stall = {f"range:{SHARDS[3]}": [100] * 3}
    with pytest.raises(SourceError) as err:
        inspect_model(REPO, network=FAST)
    msg = str(err.value)
    assert msg.startswith(f"{REPO}: cannot reach http://127.0.0.1:") and "ReadTimeout" in msg and "\n" not in msg
    assert hub.stall[f"range:{SHARDS[3]}"] == []  # 1 try + 2 retries


def test_a_short_body_is_retried_then_named_as_one(hub):
    hub.short = {f"range:{SHARDS[1]}": [50]}  # declares 100000 bytes, sends 50, closes: a dropped connection
    assert len(inspect_model(REPO, network=FAST)[1].jobs) == 30
    hub.short = {f"range:{SHARDS[1]}": [50] * 3}
    with pytest.raises(SourceError) as err:
        inspect_model(REPO, network=FAST)
    msg = str(err.value)
    assert msg.startswith(f"{REPO}/{SHARDS[1]}: the server sent fewer bytes than it declared (")
    assert "cannot reach" not in msg and "retry later, and report it" in msg and "\n" not in msg


def test_a_file_shorter_than_listed_is_named_as_one(hub, tmp_path):
    hub.truncate = {SHARDS[0]: 20}  # model info lists the full size; every GET serves 20 bytes
    with pytest.raises(SourceError) as err:
        inspect_model(REPO, network=FAST)
    assert str(err.value).startswith(f"{REPO}/{SHARDS[0]}: the server sent 20 of the 100000 bytes asked for")
    hub.truncate = {SHARDS[2]: 150_000}  # the header reads fine; the download is short
    with pytest.raises(SourceError) as err:
        scan(REPO, tmp_path / "out", devices="cpu", cpu_workers=1, network=FAST)
    msg = str(err.value)
    assert msg.startswith(f"{REPO}/{SHARDS[2]}: the server sent fewer bytes than it declared (Consistency check")
    assert "cannot reach" not in msg and "14 matrices scanned before it are saved" in msg


def test_the_network_being_down_is_one_line_after_bounded_retries(hub, tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(SourceError) as err:
        scan(REPO, tmp_path / "o", devices="cpu", network=FAST)
    msg = str(err.value)
    assert msg.startswith(f"{REPO}: cannot reach {dead} (ConnectError") and "\n" not in msg
    assert len(retries_logged(caplog)) == 2


def test_headers_are_read_concurrently(hub, checkpoint, tmp_path):
    """A many-shard repo: the header probes overlap (the server sees several at once)."""
    from tests.fixtures.synthetic import LlamaShape, write_llama

    many = write_llama(tmp_path / "many", LlamaShape(layers=16, hidden=32, ffn=64, kv=32, vocab=64), layers_per_shard=1)
    hub.add_commit("acme/many", many)
    hub.latency = 0.05  # each answer waits a round trip, so that concurrent probes overlap
    sequential = inspect_model("acme/many", network=HubNetwork(workers=1))[0]
    one_at_a_time, hub.max_in_flight = hub.max_in_flight, 0
    concurrent = inspect_model("acme/many", network=HubNetwork(workers=8))[0]
    assert concurrent.tensors == sequential.tensors and concurrent.shards == sequential.shards
    assert one_at_a_time == 1 and hub.max_in_flight > 1


def test_each_retry_message_is_printed_once(hub, tmp_path):
    """huggingface_hub's own retry warnings (its HEAD) and ours reach the terminal once each."""
    hub.errors = {"head:config.json": [500, 500], "info": [500]}
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(hub.cache),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    run = subprocess.run(
        [sys.executable, "-m", "streamscan", "inspect", REPO], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len([line for line in lines if "HTTP Error 500 thrown while requesting HEAD" in line]) == 1, lines
    assert len([line for line in lines if f"{REPO}: model info: HfHubHTTPError" in line]) == 1, lines
