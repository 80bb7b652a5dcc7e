"""The placement policy as a pure function: jobs + device states -> assignments."""

import heapq

import pytest

from streamscan.compute.placement import DeviceState, Task, assign, cpu_threads, margin

G = 1 << 30


def gpu(name, free_gb, total_gb=80, idle=1, speed=1e12, running=0):
    return DeviceState(name, "cuda", int(free_gb * G), int(total_gb * G), idle, speed, running)


def cpu(idle=2, free_gb=16, total_gb=16, speed=1e10, running=0):
    return DeviceState("cpu", "cpu", int(free_gb * G), int(total_gb * G), idle, speed, running)


def task(key, gb, cost=None, excluded=(), cpu_gb=None):
    return Task(
        key,
        cost if cost is not None else gb * 1e12,
        {"cuda": int(gb * G), "cpu": int((cpu_gb or gb) * G)},
        frozenset(excluded),
    )


def placed(assignments):
    return {a.key: a.device for a in assignments}


def test_largest_first_to_the_tightest_gpu_that_fits():
    tasks = [task("big", 30), task("mid", 12), task("small", 1)]
    out = placed(assign(tasks, [gpu("cuda:0", 20), gpu("cuda:1", 40)]))
    # big only fits cuda:1; mid then fits cuda:0; small waits: both GPUs are busy
    assert out == {"big": "cuda:1", "mid": "cuda:0"}


def test_best_fit_keeps_the_roomy_gpu_for_a_bigger_job():
    out = placed(assign([task("a", 5)], [gpu("cuda:0", 70), gpu("cuda:1", 10)]))
    assert out == {"a": "cuda:1"}


def test_margin_is_respected():
    state = gpu("cuda:0", 20, total_gb=20)
    assert margin(state) == 1 * G  # 5% of 20 GiB
    assert placed(assign([task("a", 19.5)], [state])) == {"a": "cpu"}  # never fits: CPU fallback
    assert placed(assign([task("a", 18.9)], [state])) == {"a": "cuda:0"}


def test_a_gpu_filled_by_another_process_is_skipped_and_the_job_waits():
    tasks = [task("a", 30), task("b", 2)]
    # cuda:0 has 78 GiB total but another process took all but 10: "a" cannot run there now
    out = assign(tasks, [gpu("cuda:0", 10), cpu(idle=1)])
    assert placed(out) == {"b": "cuda:0"}  # a waits for cuda:0 (it fits once the other process leaves)
    # the CPU would take 30e12 / 1e10 = 3000 s for "a", longer than the GPU queue: it is not given to it
    assert all(a.key != "a" for a in out)


def test_a_job_bigger_than_every_gpu_runs_on_cpu_and_says_why():
    out = assign(
        [task("huge", 200), task("ok", 10)],
        [gpu("cuda:0", 80), gpu("cuda:1", 40), cpu(idle=1, free_gb=400, total_gb=400)],
    )
    by = {a.key: a for a in out}
    assert by["huge"].device == "cpu" and "more than any GPU" in by["huge"].note
    assert by["ok"].device == "cuda:1" and by["ok"].note is None


def test_fallback_cpu_when_the_pool_has_no_cpu():
    (a,) = assign([task("huge", 200)], [gpu("cuda:0", 80)])
    assert a.device == "cpu" and "200.0 GiB" in a.note
    assert assign([task("huge", 200)], [gpu("cuda:0", 80)], fallback_cpu=False) == []


def test_out_of_memory_on_one_gpu_retries_on_another_then_on_cpu():
    devices = [gpu("cuda:0", 80), gpu("cuda:1", 80)]
    assert placed(assign([task("a", 10, excluded={"cuda:0"})], devices)) == {"a": "cuda:1"}
    (a,) = assign([task("a", 10, excluded={"cuda:0", "cuda:1"})], devices)
    assert a.device == "cpu" and "ran out of memory on cuda:0, cuda:1" in a.note


def test_cpu_helps_from_the_small_end_without_stretching_the_tail():
    tasks = [task(f"big{i}", 1, cost=1e12) for i in range(10)] + [
        task("mid", 0.1, cost=2e11),
        task("tiny", 0.01, cost=1e9),
    ]
    out = placed(assign(tasks, [gpu("cuda:0", 80), cpu(idle=2, speed=1e10)]))
    # GPU queue: ~10.2 s. tiny on CPU: 0.1 s -> yes; mid on CPU: 20 s -> no, it would end after the GPUs
    assert out == {"big0": "cuda:0", "tiny": "cpu"}


def test_cpu_only_pool_takes_largest_first_within_the_ram_budget():
    tasks = [task("a", 6), task("b", 5), task("c", 4)]
    assert placed(assign(tasks, [cpu(idle=2, free_gb=12, total_gb=12)])) == {"a": "cpu", "b": "cpu"}
    # budget nearly used by running jobs: "a" waits
    assert assign(tasks[:1], [cpu(idle=1, free_gb=2, total_gb=12, running=1)]) == []
    # a job bigger than the whole budget runs when nothing else of ours is running
    assert placed(assign([task("giant", 50)], [cpu(idle=2, free_gb=12, total_gb=12)])) == {"giant": "cpu"}


def test_a_stalled_head_job_goes_to_cpu_instead_of_waiting_forever():
    tasks = [task("a", 30), task("b", 20)]
    devices = [gpu("cuda:0", 10), cpu(idle=1)]
    assert assign(tasks, devices) == []
    (a,) = assign(tasks, devices, stalled=True)
    assert a.key == "a" and a.device == "cpu" and "other processes hold on cuda:0" in a.note


def test_cpu_threads_rule_is_fixed_whatever_the_workers_and_load():
    assert cpu_threads((4096, 4096)) == cpu_threads((64, 64)) == 1
    assert cpu_threads((4096, 4096), configured=4) == 4  # STREAMSCAN_THREADS_PER_JOB, e.g. to match a reference


def simulate(costs_gb, gpus, cpu_slots=0, oom=None, fill=None, speed=None):
    """Event-driven run of the policy: durations = cost / speed; returns (finish order, makespan, log).

    ``oom``: {(job, device)} pairs that fail with out-of-memory (after taking their time).
    ``fill``: (time, device, free_gb) another process takes memory at that time, for good.
    """
    speed = speed or {"cuda": 1e12, "cpu": 1e10}
    jobs = {f"j{i}": (gb, gb * 1e12) for i, gb in enumerate(costs_gb)}
    waiting = sorted(jobs, key=lambda k: -jobs[k][1])
    excluded: dict[str, set] = {}
    other = {g: 0.0 for g in gpus}  # memory other processes hold
    busy: dict[str, list] = {g: [] for g in gpus} | {"cpu": []}
    done, events, now, log = [], [], 0.0, []
    while waiting or events:
        if fill and now >= fill[0]:
            other[fill[1]] = gpus[fill[1]] - fill[2]
        states = [
            DeviceState(
                g,
                "cuda",
                int((gpus[g] - other[g] - sum(jobs[k][0] for k in busy[g])) * G),
                int(gpus[g] * G),
                1 - len(busy[g]),
                speed["cuda"],
                len(busy[g]),
            )
            for g in gpus
        ]
        if cpu_slots:
            states.append(
                DeviceState(
                    "cpu", "cpu", 1 << 50, 1 << 50, cpu_slots - len(busy["cpu"]), speed["cpu"], len(busy["cpu"])
                )
            )
        tasks = [
            Task(
                k, jobs[k][1], {"cuda": int(jobs[k][0] * G), "cpu": int(jobs[k][0] * G)}, frozenset(excluded.get(k, ()))
            )
            for k in waiting
        ]
        for a in assign(tasks, states, stalled=not any(busy.values())):
            waiting.remove(a.key)
            busy.setdefault(a.device, []).append(a.key)
            kind = "cpu" if a.device == "cpu" else "cuda"
            heapq.heappush(events, (now + jobs[a.key][1] / speed[kind], a.key, a.device))
            log.append((round(now, 3), a.key, a.device, a.note))
        if not events:
            raise AssertionError(f"deadlock: {waiting} can never be placed")
        now, key, device = heapq.heappop(events)
        busy[device].remove(key)
        if oom and (key, device) in oom:
            excluded.setdefault(key, set()).add(device)
            waiting.append(key)
            waiting.sort(key=lambda k: -jobs[k][1])
        else:
            done.append(key)
    return done, now, log


def test_simulated_run_finishes_every_job_once_near_the_lower_bound():
    costs = [8, 8, 7, 5, 5, 4, 3, 3, 2, 2, 1, 1, 1, 0.5, 0.5, 0.25] * 3
    done, makespan, _ = simulate(costs, {"cuda:0": 80, "cuda:1": 80, "cuda:2": 40, "cuda:3": 40})
    assert sorted(done) == sorted(f"j{i}" for i in range(len(costs)))
    bound = max(sum(costs) / 4, max(costs))
    assert makespan <= 1.15 * bound


def test_simulated_oom_and_a_gpu_filled_mid_run_lose_nothing():
    costs = [30, 20, 20, 10, 10, 5, 5, 2, 1, 1, 100]
    oom = {("j1", "cuda:0"), ("j1", "cuda:1"), ("j3", "cuda:1")}
    done, _, log = simulate(costs, {"cuda:0": 40, "cuda:1": 40}, cpu_slots=1, oom=oom, fill=(5.0, "cuda:0", 4))
    assert sorted(done) == sorted(f"j{i}" for i in range(len(costs)))
    where = {}
    for _, key, device, note in log:
        where.setdefault(key, []).append((device, note))
    assert where["j10"] == [("cpu", pytest.approx(where["j10"][0][1]))] and "more than any GPU" in where["j10"][0][1]
    # j1: out of memory on cuda:1, then cuda:0 is held by another process: it ends on the CPU, saying why
    assert [d for d, _ in where["j1"]][-1] == "cpu"
    assert where["j1"][-1][1] == "waited for GPU memory that other processes hold on cuda:0; scored on CPU"
    assert [d for d, _ in where["j3"]] in (["cuda:1", "cuda:0"], ["cuda:1", "cpu"])
    # after t=5 another process leaves only 4 GiB on cuda:0: nothing larger starts there
    late = [(t, key, d) for t, key, d, _ in log if t >= 5.0 and d == "cuda:0"]
    assert all(costs[int(key[1:])] <= 4 - 0 for _, key, _ in late)
