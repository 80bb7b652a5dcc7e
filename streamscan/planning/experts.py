"""experts: Mixture-of-Experts layouts, read from the checkpoint's own names, shapes and config.json.

- Which scored matrices are experts (layer, expert, projection), shared experts and routers.
- How a flattened (DBRX) or fused 3-D expert tensor (Llama-4, transformers v5, gpt-oss) splits into one
  2-D matrix per expert and projection: a ``Part`` says which rows and columns of which dim-0 entry.
  Shapes are checked against config.json; a mismatch is a skip reason, never a guessed split.
- The groupings a selection can rank experts by (``--moe-grouping``).

Names of slices say the slice: ``model.layers.0.mlp.experts.gate_up_proj[3].gate`` (expert 3's gate
rows of the fused tensor), ``transformer.blocks.0.ffn.experts.mlp.w2[3]`` (expert 3's block of DBRX w2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamscan.layout import LANGUAGE, layer_index, tower
from streamscan.records import GROUPINGS, ExpertRow, Part

# Leaf name of a per-expert matrix -> projection (exact components: `linear` is not `linear_1`).
PROJECTIONS = {
    "w1": "gate",
    "w3": "up",
    "w2": "down",  # Mixtral, Arctic
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",  # Qwen-MoE, DeepSeek, OLMoE, Llama-4 shared
    "linear": "gate",
    "linear_v": "up",
    "linear_1": "down",  # Grok-1 ports
}
DBRX_PROJECTIONS = {"w1": "gate", "v1": "up", "w2": "down"}  # DBRX flattened experts; w2 stored transposed
FUSED_LEAVES = {"gate_up_proj": "gate_up", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
SHARED = {"shared_expert", "shared_experts"}
ROUTER_PARENTS = {"block_sparse_moe", "mlp", "moe_block", "moe", "feed_forward", "ffn"}
# Stacked per-expert linear layers stored as ``X.input_linear.weight`` [E, out, in] / ``X.output_linear.weight``
# (GraniteMoE's ``block_sparse_moe``, JetMoE's ``mlp``: gate rows then up rows, as ``.chunk(2, dim=-1)`` of
# the product takes them; JetMoE's attention experts ``self_attention.experts``: one query and one output
# projection per expert).
LINEAR_LEAVES = {"input_linear": "gate_up", "output_linear": "down"}
ATTENTION_LEAVES = {"input_linear": "query", "output_linear": "output"}
# Families whose fused gate_up is stored [E, hidden, 2I] (x @ W); the rest store [E, 2I, hidden] (linear).
IN_MAJOR = ("llama4", "gpt_oss")
INTERLEAVED = ("gpt_oss",)  # gate and up alternate along the 2I axis (gate = 0::2, up = 1::2)


@dataclass(frozen=True)
class MoeConfig:
    num_experts: int | None
    expert_ffn: int | None  # one expert's intermediate size
    hidden: int | None
    model_type: str
    zero_experts: int = 0  # LongCat-Flash's zero-computation (identity) experts, after the routed ones
    attention_width: int | None = None  # JetMoE: kv_channels x num_key_value_heads, one attention expert's width

    @classmethod
    def from_config(cls, config: dict) -> MoeConfig:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        ffn = text.get("ffn_config") if isinstance(text.get("ffn_config"), dict) else {}

        def first(*pairs):
            return next((int(d[k]) for d, k in pairs if isinstance(d.get(k), int) and d[k] > 0), None)

        return cls(
            num_experts=first(
                (text, "num_local_experts"), (text, "num_experts"), (text, "n_routed_experts"), (ffn, "moe_num_experts")
            ),
            expert_ffn=first(
                (ffn, "ffn_hidden_size"),
                (text, "expert_ffn_hidden_size"),  # LongCat-Flash (its ffn_hidden_size is the dense MLP's)
                (text, "moe_intermediate_size"),
                (text, "intermediate_size"),
            ),
            hidden=first((text, "hidden_size"), (text, "d_model")),
            model_type=str(config.get("model_type") or text.get("model_type") or ""),
            zero_experts=first((text, "zero_expert_num")) or 0,
            attention_width=(first((text, "kv_channels")) or 0) * (first((text, "num_key_value_heads")) or 0) or None,
        )


def _split_axis(n: int, size: int, parts: int, interleaved: bool) -> list[tuple[int, int, int]]:
    """`parts` equal ranges of an axis of length n = parts * size, contiguous or interleaved."""
    if interleaved:
        return [(p, n, parts) for p in range(parts)]
    return [(p * size, (p + 1) * size, 1) for p in range(parts)]


def split_experts(name: str, shape: tuple[int, ...], cfg: MoeConfig) -> list[tuple[str, Part | str]] | str | None:
    """None if the tensor is not a flattened or fused expert tensor; else its (slice name, Part)s in
    expert order, or why it cannot be split (a one-line reason naming what config.json must say). A slot
    the model never uses (LongCat-Flash's zero experts) comes with the reason it is skipped in place of a Part."""
    parts = name.split(".")
    leaf = parts[-1]
    if len(shape) == 2 and len(parts) >= 3 and parts[-3:-1] == ["experts", "mlp"] and leaf in DBRX_PROJECTIONS:
        return _split_dbrx(name, shape, cfg)
    if len(shape) == 3 and len(parts) >= 2 and parts[-2] == "experts" and leaf in FUSED_LEAVES:
        return _split_fused(name, shape, cfg, FUSED_LEAVES[leaf])
    if len(shape) == 3 and len(parts) >= 3 and leaf == "weight" and parts[-2] in LINEAR_LEAVES:
        module = name[: -len(".weight")]
        if parts[-3] == "experts":  # JetMoE's attention experts (self_attention.experts)
            return _split_fused(module, shape, cfg, ATTENTION_LEAVES[parts[-2]])
        return _split_fused(module, shape, cfg, LINEAR_LEAVES[parts[-2]])
    return None


def zero_expert_reason(name: str, cfg: MoeConfig) -> str | None:
    """Why a per-expert matrix of a zero-computation expert (LongCat-Flash: experts n_routed_experts and up,
    identity functions whose weights the model never reads) is not scored; None for any other matrix."""
    if not cfg.zero_experts or not cfg.num_experts:
        return None
    parts = name.split(".")
    for i, comp in enumerate(parts[:-1]):
        if comp == "experts" and parts[i + 1].isdigit() and int(parts[i + 1]) >= cfg.num_experts:
            return _zero_reason(int(parts[i + 1]), cfg)
    return None


def _zero_reason(e: int, cfg: MoeConfig) -> str:
    return (
        f"zero-computation expert {e} (identity; config.json: n_routed_experts {cfg.num_experts}, zero_expert_num "
        f"{cfg.zero_experts}): the model never uses its weights"
    )


def _split_dbrx(name: str, shape: tuple[int, ...], cfg: MoeConfig) -> list[tuple[str, Part]] | str:
    E, F, H = cfg.num_experts, cfg.expert_ffn, cfg.hidden
    if not E or not F:
        return "flattened experts: config.json needs ffn_config.moe_num_experts and ffn_hidden_size to split them"
    if shape[0] != E * F or (H and shape[1] != H):
        return (
            f"flattened experts of shape {list(shape)} do not match config.json "
            f"({E} experts x ffn_hidden_size {F} by d_model {H}); fix config.json"
        )
    proj = DBRX_PROJECTIONS[name.rsplit(".", 1)[-1]]
    return [(f"{name}[{e}]", Part(e, proj, None, (e * F, (e + 1) * F, 1), (0, shape[1], 1))) for e in range(E)]


def _split_fused(name: str, shape: tuple[int, ...], cfg: MoeConfig, kind: str) -> list[tuple[str, Part | str]] | str:
    """A fused [E, a, b] tensor of KIND (gate_up | gate | up | down | query | output) split per expert, its
    matrix axis found from config.json's sizes; NAME is the module name the slice names start with."""
    E, I, H = cfg.num_experts, cfg.expert_ffn, cfg.hidden
    attention = kind in ("query", "output")
    width = cfg.attention_width if attention else (2 * I if kind == "gate_up" and I else I)
    if not width or not H:
        need = "kv_channels and num_key_value_heads" if attention else "intermediate_size (or moe_intermediate_size)"
        return f"fused experts: config.json needs {need} and hidden_size to split them"
    slots = shape[0]
    zero = cfg.zero_experts if kind in ("gate_up", "gate", "up") else 0  # LongCat allocates gate_up for them too
    if E and slots not in (E, E + zero):
        expected = f"{E}" + (f" (or {E + zero} with the zero experts)" if zero else "")
        return f"fused experts of shape {list(shape)}: {slots} experts, config.json says {expected}; fix config.json"
    a, b = shape[1], shape[2]
    in_major = cfg.model_type.startswith(IN_MAJOR)
    fits = [axis for axis, ok in ((2, a == H and b == width), (1, a == width and b == H)) if ok]
    if not fits:
        what = "kv_channels x num_key_value_heads" if attention else "intermediate"
        return (
            f"fused experts of shape {list(shape)} do not match config.json (hidden {H}, "
            f"{'2 x ' if kind == 'gate_up' else ''}{what} {width // 2 if kind == 'gate_up' else width}); fix config.json"
        )
    axis = fits[0] if len(fits) == 1 else (2 if in_major else 1)  # hidden == 2I: the family's convention
    if kind == "gate_up":
        ranges = list(zip(("gate", "up"), _split_axis(width, width // 2, 2, cfg.model_type.startswith(INTERLEAVED))))
    else:
        ranges = [(kind, (0, width, 1))]
    out: list[tuple[str, Part | str]] = []
    for e in range(slots):
        for proj, rng in ranges:
            rows, cols = ((0, a, 1), rng) if axis == 2 else (rng, (0, b, 1))
            label = f"{name}[{e}].{proj}" if kind == "gate_up" else f"{name}[{e}]"
            out.append((label, _zero_reason(e, cfg) if E and e >= E else Part(e, proj, e, rows, cols)))
    return out


def classify_moe(name: str, tensor: str, shape: tuple[int, ...], part: Part | None, cfg: MoeConfig) -> ExpertRow | None:
    """The MoE role of one scored matrix (module name `name` of stored tensor `tensor`), or None."""
    layer = layer_index(name)
    if part is not None:
        return ExpertRow(name, layer, part.expert, part.projection, tensor, "expert")
    parts = name.split(".")
    for i, comp in enumerate(parts[:-1]):
        if comp == "experts" and parts[i + 1].isascii() and parts[i + 1].isdigit() and i + 2 < len(parts):
            leaf = ".".join(parts[i + 2 :])
            return ExpertRow(name, layer, int(parts[i + 1]), PROJECTIONS.get(leaf, leaf), tensor, "expert")
        if comp in SHARED:
            leaf = ".".join(parts[i + 1 :])
            return ExpertRow(name, layer, "shared", PROJECTIONS.get(leaf, leaf), tensor, "shared")
    leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    routing = (
        (leaf == "gate" and parent in ROUTER_PARENTS)
        or leaf == "router"
        or (leaf in ("layer", "classifier") and parent == "router")  # JetMoE/GraniteMoE, LongCat-Flash
    )
    routes = (cfg.num_experts, cfg.num_experts + cfg.zero_experts) if cfg.num_experts else ()
    if routing and len(shape) == 2 and (cfg.num_experts is None or shape[0] in routes):
        return ExpertRow(name, layer, "", "router", tensor, "router")
    if leaf == "shared_expert_gate" and len(shape) == 2:
        return ExpertRow(name, layer, "", "shared_expert_gate", tensor, "router")
    return None


def moe_rows(items: Iterable[tuple[str, str, tuple[int, ...], Part | None]], config: dict) -> list[ExpertRow]:
    """MoE roles of scored matrices given as (name, tensor name, shape, part); empty for a dense model."""
    cfg = MoeConfig.from_config(config)
    rows = [r for name, tensor, shape, part in items if (r := classify_moe(name, tensor, shape, part, cfg))]
    return rows if any(r.kind == "expert" for r in rows) else []


_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+(?=\.|$)")
_SLICE_INDEX = re.compile(r"\[\d+\]")


def pooled_type(type_: str) -> str:
    """The reference type with the expert index replaced by '*': all experts of a projection together."""
    return _SLICE_INDEX.sub("[*]", _EXPERT_INDEX.sub(r"\1experts.*", type_))


def group_function(mode: str, rows: Iterable[ExpertRow], names: Iterable[str] = ()) -> Callable[[str, str], str] | None:
    """(name, reference type) -> selection group for --moe-grouping MODE; None for the reference's own
    ranking of a text-only model (and for a dense one, whatever the mode). Matrices of a multimodal model's
    vision (or audio) tower among NAMES rank apart from the language tower's of the same type key: their group
    is ``"vision tower: <group>"`` (the JSON's ``type`` stays the reference's)."""
    if mode not in GROUPINGS:
        raise ValueError(f"unknown MoE grouping {mode!r}; choose one of {', '.join(GROUPINGS)}")
    experts = {r.name: r for r in rows if r.kind == "expert"}
    inner = None if mode == "reference" or not experts else _moe_group(mode, experts)
    if all(tower(n) == LANGUAGE for n in names):
        return inner

    def group(name: str, type_: str) -> str:
        key = inner(name, type_) if inner is not None else type_
        where = tower(name)
        return key if where == LANGUAGE else f"{where} tower: {key}"

    group.towers = True  # type: ignore[attr-defined]  # the YAML's header says so
    return group


def _moe_group(mode: str, experts: dict[str, ExpertRow]) -> Callable[[str, str], str]:
    def group(name: str, type_: str) -> str:
        row = experts.get(name)
        if row is None:
            return type_
        if mode == "pooled":
            return pooled_type(type_)
        return f"layer {row.layer}: {pooled_type(type_)}"

    return group


def fused_tensor(name: str) -> str | None:
    """The stored tensor a slice name belongs to (`a.experts.down_proj[3]` -> `a.experts.down_proj`)."""
    return name.split("[", 1)[0] if "[" in name else None
