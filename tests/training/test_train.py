"""train.py: selections applied to real models (transformers Llama/Mixtral, plain modules), a real Trainer run."""

import logging

import pytest
import torch
from torch import nn

import streamscan
from streamscan.layout import type_key
from streamscan.records import Result
from streamscan.results.selection import Selection, select_top, yaml_text
from streamscan.training.apply import sync_optimizer
from streamscan.training.callback import SelectionSchedule
from streamscan.training.lr import snr_param_groups
from tests.fixtures.synthetic import LlamaShape, write_llama

try:
    import transformers
except ImportError:  # the plain-torch tests still run
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    """A 4-layer synthetic Llama checkpoint (planted spectra) and a streamscan scan of it."""
    root = write_llama(tmp_path_factory.mktemp("ck") / "llama", LlamaShape(layers=4), dtype="f32")
    out = root.parent / "scan"
    res = streamscan.scan(root, out, top_percent=[25])
    return root, out, res


def load_llama(root, **kw):
    return transformers.LlamaForCausalLM.from_pretrained(root, dtype=torch.float32, **kw)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


class Block(nn.Module):
    def __init__(self, h=8):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.gate = nn.Linear(h, 4, bias=False)  # a router, whose name is a prefix of gate_proj's
        self.mlp.gate_proj = nn.Linear(h, 2 * h)
        self.mlp.down_proj = nn.Linear(2 * h, h)
        self.norm = nn.LayerNorm(h)


class Tiny(nn.Module):
    """12 layers: `layers.1` is a prefix of `layers.10`/`layers.11`, `mlp.gate` of `mlp.gate_proj`."""

    def __init__(self, layers=12, h=8):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(32, h)
        self.model.layers = nn.ModuleList(Block(h) for _ in range(layers))
        self.lm_head = nn.Linear(h, 32, bias=False)


@needs_transformers
def test_scan_directory_selection_unfreezes_exactly_the_top_modules(llama_ckpt):
    root, out, res = llama_ckpt
    model = load_llama(root)
    summary = streamscan.apply_selection(model, out, top_percent=50)
    sel = select_top(res.results, 50)
    expected = {n + ".weight" for n in sel.names()} | set(sel.always)
    assert trainable(model) == expected
    assert len(sel.chosen["mlp.down_proj"]) == 2 and sel.always == ("lm_head.weight", "model.embed_tokens.weight")
    params = dict(model.named_parameters())
    assert summary.trainable == sum(params[n].numel() for n in expected)
    assert summary.total == sum(p.numel() for p in model.parameters())
    down = params["model.layers.0.mlp.down_proj.weight"].numel()
    assert summary.by_type["mlp.down_proj"] == (2 * down, 4 * down)
    assert summary.by_type["input_layernorm"] == (0, 4 * 64)
    assert set(summary.trainable_names) == expected and "of" in str(summary)
    # the default is the top 25%, and the YAML the scan wrote selects the same thing
    streamscan.apply_selection(model, out)
    by_dir = trainable(model)
    streamscan.apply_selection(model, next(out.glob("*_25percent.yaml")))
    assert trainable(model) == by_dir == {n + ".weight" for n in select_top(res.results, 25).names()} | set(sel.always)


def test_module_names_match_exactly_and_regex_lines_as_axolotl_applies_them():
    model = Tiny()
    streamscan.apply_selection(
        model,
        [
            "model.layers.1.mlp.down_proj",  # not layers.10 / layers.11 (Axolotl's prefix match would catch them)
            "model.layers.2.mlp.gate",  # not mlp.gate_proj (Axolotl's prefix match would catch it)
            "model.layers.3.mlp.gate.",  # the YAML writer's trailing-dot form
            "^lm_head.weight$",
            "model.layers.1[01].mlp.gate_proj",  # a regex: Axolotl's re.match, dots literal
            "model.layers.4.+norm.bias",  # '.+' stays a wildcard
        ],
    )
    assert trainable(model) == {
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.bias",
        "model.layers.2.mlp.gate.weight",
        "model.layers.3.mlp.gate.weight",
        "lm_head.weight",
        "model.layers.10.mlp.gate_proj.weight",
        "model.layers.10.mlp.gate_proj.bias",
        "model.layers.11.mlp.gate_proj.weight",
        "model.layers.11.mlp.gate_proj.bias",
        "model.layers.4.norm.bias",
    }
    # a module with submodules unfreezes all of them, and only them
    streamscan.apply_selection(model, ["model.layers.1"])
    assert trainable(model) == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    # a regex is anchored at the start like re.match: a middle fragment matches nothing, which is an error
    with pytest.raises(streamscan.SelectionError, match="match no parameter"):
        streamscan.apply_selection(model, ["layers.3.mlp.down_proj"])


def test_what_the_yaml_writer_emits_selects_exactly_the_chosen_modules(tmp_path):
    model = Tiny()
    mods = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] + ["model.embed_tokens"]
    results = [
        Result(
            n,
            type_key(n),
            (8, 8),
            "F32",
            float(i % 7) + 1.0,
            role={"model.embed_tokens": "embedding", "lm_head": "head"}.get(n),
        )
        for i, n in enumerate(mods)
    ]
    sel = select_top(results, 25)
    text = yaml_text(sel, mods)
    gates = sel.chosen["mlp.gate"]
    assert len(gates) == 3 and all(f"- {n}.\n" in text for n in gates)  # trailing dot: gate vs gate_proj
    path = tmp_path / "sel.yaml"
    path.write_text(text)
    streamscan.apply_selection(model, path)
    params = {n for n, _ in model.named_parameters()}
    assert (
        trainable(model)
        == set(sel.always) | {f"{n}.{leaf}" for n in sel.names() for leaf in ("weight", "bias")} & params
    )
    with pytest.raises(streamscan.UsageError, match="already fixes"):
        streamscan.apply_selection(model, path, top_percent=50)


@needs_transformers
def test_tied_embedding_answers_to_both_names_and_counts_once():
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # the reference writes both lines even for tied models
    summary = streamscan.apply_selection(
        model, ["^lm_head.weight$", "^model.embed_tokens.weight$", "model.layers.1.mlp.down_proj"]
    )
    emb, down = 64 * 32, 32 * 48
    assert summary.trainable == emb + down
    assert summary.total == sum(p.numel() for p in model.parameters())  # lm_head not counted again
    assert set(summary.trainable_names) == {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"}
    streamscan.apply_selection(model, ["^lm_head.weight$"])  # the alias alone unfreezes the shared tensor
    assert model.model.embed_tokens.weight.requires_grad and trainable(model) == {"model.embed_tokens.weight"}


@needs_transformers
def test_unmatched_names_are_an_error_with_closest_names_and_the_prefix_fix(llama_ckpt, caplog):
    root, out, _ = llama_ckpt
    wrapped = nn.Module()
    wrapped.language_model = load_llama(root)  # modules are language_model.model.layers…, the scan's model.layers…
    with pytest.raises(streamscan.SelectionError) as err:
        streamscan.apply_selection(wrapped, out)
    msg = str(err.value)
    assert "\n" not in msg and "9 of 9 selection entries match no parameter" in msg
    assert "closest in the model: language_model.lm_head.weight" in msg
    assert "pass replace_prefix=('', 'language_model.')" in msg
    summary = streamscan.apply_selection(wrapped, out, replace_prefix=("", "language_model."))
    assert "language_model.model.embed_tokens.weight" in trainable(wrapped) and summary.trainable > 0
    base = load_llama(root).model  # LlamaModel: no `model.` prefix and no lm_head
    with pytest.raises(streamscan.SelectionError, match=r"replace_prefix=\('model\.', ''\)"):
        streamscan.apply_selection(base, out)
    with pytest.raises(streamscan.SelectionError, match="1 of 9 .*'lm_head.weight'"):
        streamscan.apply_selection(base, out, replace_prefix=("model.", ""))
    with caplog.at_level(logging.WARNING, logger="streamscan.training"):
        summary = streamscan.apply_selection(base, out, replace_prefix=("model.", ""), strict=False)
    assert summary.unmatched == ("lm_head.weight",) and "lm_head.weight" in caplog.text
    with pytest.raises(streamscan.SelectionError, match=r"closest in the model: model\.layers\.0\.mlp\.down_proj"):
        streamscan.apply_selection(wrapped.language_model, ["model.layers.0.mlp.down"])
    rows = streamscan.apply_selection(wrapped.language_model, ["^model.embed_tokens.weight$[:32]"])  # Axolotl's
    assert rows.trainable == 32 * wrapped.language_model.model.embed_tokens.weight.shape[1]  # dim-0 range
    with pytest.raises(streamscan.SelectionError, match="neither a streamscan scan directory"):
        streamscan.apply_selection(base, root / "config.json")


@needs_transformers
def test_fused_expert_parameters_are_unfrozen_whole():
    cfg = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
    )
    model = transformers.MixtralForCausalLM(cfg)
    params = dict(model.named_parameters())
    assert params["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 96, 32)  # fused 3-D, no .weight
    summary = streamscan.apply_selection(
        model,
        [
            "model.layers.0.mlp.experts.2.gate_proj",  # one expert's gate, named as in unfused layouts
            "model.layers.0.mlp.experts.3.up_proj",
            "model.layers.1.mlp.experts.down_proj.1",  # a slice named after the fused parameter
            "model.layers.1.mlp.gate",  # the router, exactly
        ],
    )
    assert trainable(model) == {
        "model.layers.0.mlp.experts.gate_up_proj",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.gate.weight",
    }
    assert summary.fused == {
        "model.layers.0.mlp.experts.gate_up_proj": (
            "model.layers.0.mlp.experts.2.gate_proj",
            "model.layers.0.mlp.experts.3.up_proj",
        ),
        "model.layers.1.mlp.experts.down_proj": ("model.layers.1.mlp.experts.down_proj.1",),
    }
    assert summary.trainable == 4 * 96 * 32 + 4 * 32 * 48 + 4 * 32
    assert summary.by_type["mlp.experts.gate_up_proj"] == (4 * 96 * 32, 2 * 4 * 96 * 32)
    # the MoE scan's slice names (`tensor[expert].projection`), as names in a list or in a Selection
    streamscan.apply_selection(model, ["model.layers.1.mlp.experts.gate_up_proj[2].up"])
    assert trainable(model) == {"model.layers.1.mlp.experts.gate_up_proj"}
    sel = Selection(
        25,
        (),
        {"mlp.experts.down_proj[3]": ("model.layers.0.mlp.experts.down_proj[3]",)},
        {"mlp.experts.down_proj[3]": 2},
        {},
    )
    assert streamscan.apply_selection(model, sel).fused == {
        "model.layers.0.mlp.experts.down_proj": ("model.layers.0.mlp.experts.down_proj[3]",)
    }
    # `x.weight[1]` is Axolotl's row range: row 1 of the router trains, its gradient elsewhere is zeroed
    assert streamscan.apply_selection(model, ["model.layers.1.mlp.gate.weight[1]"]).trainable == 32


@needs_transformers
def test_score_model_equals_a_file_scan_of_the_same_weights(llama_ckpt):
    root, _, res = llama_ckpt
    model = load_llama(root)
    mem = streamscan.score_model(model)
    assert [(r.name, r.type, r.role, r.shape) for r in mem] == [(r.name, r.type, r.role, r.shape) for r in res.results]
    assert [r.snr for r in mem] == pytest.approx([r.snr for r in res.results], rel=1e-12)
    assert select_top(mem, 25) == select_top(res.results, 25)
    assert {r.name for r in streamscan.score_model(model, include=["*mlp*"])} == {
        r.name for r in res.results if ".mlp." in r.name
    }


@needs_transformers
def test_rescan_follows_the_weights_and_reports_changes(llama_ckpt):
    root, out, res = llama_ckpt
    model = load_llama(root)
    streamscan.apply_selection(model, out)  # top 25%: one module per type
    (old,) = select_top(res.results, 25).chosen["mlp.down_proj"]
    ranked = sorted((r for r in res.results if r.type == "mlp.down_proj"), key=lambda r: r.snr)
    weakest = ranked[0].name
    W = dict(model.named_parameters())[weakest + ".weight"]
    with torch.no_grad():  # orthonormal rows: every singular value is signal, the highest SNR there is (64)
        W.copy_(torch.linalg.qr(torch.randn(W.shape[1], W.shape[0])).Q.T)
    r = streamscan.rescan(model, 25)
    assert r.added == {"mlp.down_proj": (weakest,)} and r.removed == {"mlp.down_proj": (old,)}
    assert r.changed == 2 and "mlp.down_proj +1 -1" in r.describe()
    assert W.requires_grad and not dict(model.named_parameters())[old + ".weight"].requires_grad
    assert streamscan.rescan(model, 25).changed == 0


def test_snr_learning_rates_follow_rank_within_type():
    model = Tiny(layers=4)
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    snrs = [3.0, 9.0, 1.0, 5.0]  # rank among the trainable: layers 1 (9), 3 (5), 0 (3); layer 2 frozen
    results = [Result(n, "mlp.down_proj", (8, 16), "F32", s) for n, s in zip(names, snrs)]
    streamscan.apply_selection(model, [names[0], names[1], names[3], "model.layers.0.norm"])
    groups = snr_param_groups(model, results, 1e-3, min_scale=0.5, max_scale=1.0, weight_decay=0.1)
    lr = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert lr["model.layers.1.mlp.down_proj.weight"] == pytest.approx((1e-3, 0.1))
    assert lr["model.layers.3.mlp.down_proj.weight"] == pytest.approx((0.75e-3, 0.1))
    assert lr["model.layers.0.mlp.down_proj.weight"] == pytest.approx((0.5e-3, 0.1))
    assert lr["model.layers.0.mlp.down_proj.bias"] == pytest.approx((0.5e-3, 0.0))  # the module's scale, no decay
    assert lr["model.layers.0.norm.weight"] == pytest.approx((1e-3, 0.0))  # no SNR: base rate
    assert set(lr) == trainable(model)
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
    with pytest.raises(streamscan.SelectionError, match="none of the model's trainable modules"):
        snr_param_groups(model, [Result("other.layers.0.x", "x", (8, 8), "F32", 1.0)], 1e-3)
    with pytest.raises(streamscan.UsageError):
        snr_param_groups(model, results, 1e-3, min_scale=2.0, max_scale=1.0)


def test_sync_optimizer_adds_new_and_drops_frozen_state():
    model = Tiny(layers=2)
    streamscan.apply_selection(model, ["model.layers.0.mlp.down_proj"])
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.requires_grad and p.ndim < 2], "weight_decay": 0.0},
        ]
    )
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    assert len(opt.state) == 2
    streamscan.apply_selection(model, ["model.layers.1.mlp.down_proj"])
    assert sync_optimizer(opt, model) == (2, 2)
    new = model.model.layers[1].mlp.down_proj
    assert any(p is new.weight for p in opt.param_groups[0]["params"])
    assert any(p is new.bias for p in opt.param_groups[1]["params"])
    assert not opt.state and model.model.layers[0].mlp.down_proj.weight.grad is None


def _dataset(n=8, seq=16, vocab=256):
    g = torch.Generator().manual_seed(0)
    return [
        {"input_ids": (ids := torch.randint(0, vocab, (seq,), generator=g)), "labels": ids.clone()} for _ in range(n)
    ]


def _args(tmp_path, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
        **kw,
    )


@needs_transformers
def test_trainer_callback_selects_trains_only_the_selection_and_rescans(llama_ckpt, tmp_path):
    from streamscan.training.callback import SpectrumCallback

    root, _, _ = llama_ckpt
    other = write_llama(tmp_path / "other", LlamaShape(layers=4), dtype="f32", seed=7)  # same names, other SNRs
    scan_other = streamscan.scan(other, tmp_path / "scan_other")
    model = load_llama(root)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snapshot = {}

    class Snapshot(transformers.TrainerCallback):  # records the weights right after the epoch-1 rescan
        def on_epoch_end(self, args, state, control, model=None, **kw):
            if not snapshot:
                snapshot.update({n: p.detach().clone() for n, p in model.named_parameters()})

    cb = SpectrumCallback(scan_other.out_dir, 25, rescan_every=1)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, num_train_epochs=2), train_dataset=_dataset(), callbacks=[cb, Snapshot()]
    )
    first = trainable(model)  # applied when the Trainer was built
    assert first == {n + ".weight" for n in select_top(scan_other.results, 25).names()} | {
        "lm_head.weight",
        "model.embed_tokens.weight",
    }
    trainer.train()
    assert trainer.state.global_step == 4
    assert len(cb.history) == 1 and cb.history[0][0] == 1  # one rescan, between the two epochs
    rescan = cb.history[0][1]
    assert rescan.changed > 0 and rescan.selection == select_top(rescan.results, 25)
    second = trainable(model)
    assert second == {n + ".weight" for n in rescan.selection.names()} | {"lm_head.weight", "model.embed_tokens.weight"}
    added = {n + ".weight" for names in rescan.added.values() for n in names}
    removed = {n + ".weight" for names in rescan.removed.values() for n in names}
    assert added == second - first and removed == first - second
    after = dict(model.named_parameters())
    for n in before:
        moved = not torch.equal(before[n], after[n].detach())
        assert moved == (n in first | second), n  # never-selected weights are untouched
        if n in added:  # trained in epoch 2 only
            assert torch.equal(before[n], snapshot[n]) and not torch.equal(snapshot[n], after[n].detach())
        if n in removed:  # trained in epoch 1 only
            assert torch.equal(snapshot[n], after[n].detach())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(after[n]) for n in second} <= opt_params
    assert {id(p) for p in trainer.optimizer.state} == {id(after[n]) for n in second}  # Adam state: trainable only
    assert cb.summary.trainable == sum(after[n].numel() for n in second)


@needs_transformers
def test_callback_added_after_init_applies_at_train_begin_with_an_in_memory_scan(llama_ckpt, tmp_path, caplog):
    from streamscan.training.callback import SpectrumCallback

    root, _, res = llama_ckpt
    model = load_llama(root)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_dataset())
    assert all(p.requires_grad for p in model.parameters())  # its optimizer will hold every parameter
    cb = SpectrumCallback(top_percent=50)  # no selection: scan the model in memory at train start
    trainer.add_callback(cb)
    with caplog.at_level(logging.INFO, logger="streamscan.training"):
        trainer.train()
    sel = select_top(res.results, 50)
    assert trainable(model) == {n + ".weight" for n in sel.names()} | set(sel.always)
    assert {id(p) for p in trainer.optimizer.state} == {id(p) for p in model.parameters() if p.requires_grad}
    assert "training with the Spectrum selection: trainable" in caplog.text and cb.history == []


@needs_transformers
def test_selection_schedule_in_a_plain_training_loop(llama_ckpt):
    root, out, _ = llama_ckpt
    model = load_llama(root)
    schedule = SelectionSchedule(out, 25, rescan_every=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    summary = schedule.start(model, opt)
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) < summary.total
    assert schedule.epoch_end(model, 1, opt) is None and schedule.epoch_end(model, 2, opt) is not None
    with pytest.raises(streamscan.UsageError):
        SelectionSchedule(out, rescan_every=-1)


def test_score_model_records_unscorable_weights_and_refuses_unknown_methods():
    model = nn.Module()
    model.a = nn.Linear(16, 8)
    model.b = nn.Linear(16, 8, device="meta")  # offloaded / never loaded
    model.c = nn.Linear(16, 1)  # 1 x 16: one singular value, no noise: the reference's Infinity
    a, b, c = streamscan.score_model(model)
    assert a.name == "a" and a.status == "ok" and a.snr == pytest.approx(streamscan.score(model.a.weight.detach()).snr)
    assert b.snr is None and b.status == "null" and "meta device" in b.reason
    assert c.snr == float("inf") and c.degenerate == "noise-sum-0" and c.status == "ok"
    assert select_top([a, b, c], 100).names() == ["a", "c"]
    with pytest.raises(streamscan.UsageError, match="unknown"):
        streamscan.score_model(model, "svd16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_score_model_scores_weights_on_their_gpu():
    model = Tiny(layers=2)
    cpu = streamscan.score_model(model)
    gpu = streamscan.score_model(model.to("cuda"))
    assert {r.worker for r in gpu} == {"cuda:0"}
    assert [r.snr for r in gpu] == pytest.approx([r.snr for r in cpu], rel=1e-9)
