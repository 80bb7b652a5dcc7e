"""trainer_names: where each scanned checkpoint matrix lives in the model the user's transformers builds.

transformers >= 5 renames checkpoint keys when it loads them (Mixtral ``block_sparse_moe`` -> ``mlp``, the text
tower of a multimodal model ``language_model.model.`` -> ``model.language_model.``) and fuses per-expert
matrices into 3-D parameters (``mlp.experts.gate_up_proj`` [E, 2I, H]). Nothing here copies those rules: the
model is built from config.json on the meta device (no weights), and transformers' own conversion mapping
(``get_model_conversion_mapping``, ``rename_source_key``, each ``WeightConverter``'s operations) is run on
*probes*: per checkpoint tensor, a small float64 tensor of its shape with the last axis cut to 1, each row
holding its own id. Where the ids land in the converted parameter says which expert (dim 0) and which rows
(gate or up half) each checkpoint matrix became. A tensor whose conversion cannot be traced keeps no trainer
name and says why (``unmapped``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

Span = tuple[int, int, int]  # (start, stop, step) along one axis


@dataclass(frozen=True)
class Region:
    """A scanned matrix inside a trainer parameter: ``param[key]``, one span per axis of the parameter."""

    param: str
    key: tuple[Span, ...]

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(*s) for s in self.key)

    def numel(self) -> int:
        return math.prod(len(range(*s)) for s in self.key)

    def whole(self, shape: tuple[int, ...]) -> bool:
        return all(s == (0, n, 1) for s, n in zip(self.key, shape))

    def dim0(self, shape: tuple[int, ...]) -> Span | None:
        """The rows (dim-0 span) this region covers whole, all other axes full, else None."""
        if all(s == (0, n, 1) for s, n in zip(self.key[1:], shape[1:])) and self.key[0][2] == 1:
            return self.key[0]
        return None


@dataclass(frozen=True)
class TrainerNames:
    """Per scanned name (a ``Result.name``), its regions in the trainer's parameters."""

    transformers: str  # the version the names are for
    model_class: str
    shapes: dict[str, tuple[int, ...]]  # every parameter of the trainer's model
    regions: dict[str, tuple[Region, ...]]
    unmapped: dict[str, str]  # scanned name -> why it has no trainer name

    def line(self) -> str:
        return f"parameter names of transformers {self.transformers} ({self.model_class})"


def _meta_model(config: dict):
    """The model class config.json names (``architectures``), built on the meta device: names and shapes only."""
    import torch
    import transformers
    from transformers import AutoConfig, PreTrainedModel

    from streamscan.errors import UsageError

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise UsageError("config.json has no model_type; trainer names need the model's config.json")
    cfg = AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs and isinstance(archs[0], str) else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        cls = transformers.AutoModelForCausalLM
        try:
            cls = cls._model_mapping[type(cfg)]
        except KeyError:
            cls = transformers.AutoModel._model_mapping[type(cfg)]
    with torch.device("meta"):
        return cls._from_config(cfg)


def _spans(coords, size: int) -> Span | None:
    """The arithmetic progression COORDS (sorted unique ints) form, or None."""
    n = len(coords)
    start = int(coords[0])
    if n == 1:
        return (start, start + 1, 1)
    step = int(coords[1] - coords[0])
    if any(int(coords[i + 1] - coords[i]) != step for i in range(n - 1)):
        return None
    return (start, start + step * (n - 1) + 1, step) if step > 1 else (start, start + n, 1)


def _locate(out, lo: int, hi: int, rows: int, shape: tuple[int, ...]) -> Span | tuple[Span, ...] | None:
    """Where the ids lo..hi-1 landed in OUT (the converted probe of a parameter of SHAPE): one span per axis."""
    import torch

    if out.dim() != len(shape):
        return None
    hit = torch.nonzero((out >= lo) & (out < hi))
    if hit.shape[0] != hi - lo:
        return None
    key = []
    size = 1
    for d, n in enumerate(shape):
        if out.shape[d] == n and n != 1:
            span = _spans(torch.unique(hit[:, d]).tolist(), n)
            if span is None:
                return None
            key.append(span)
            size *= len(range(*span))
        elif out.shape[d] == 1:
            key.append((0, n, 1))
        else:
            return None
    return tuple(key) if size == hi - lo else None


def scan_targets(
    names: Iterable[str], tensors: Mapping[str, tuple[int, ...]], config: dict
) -> list[tuple[str, str, object]]:
    """(scanned name, checkpoint tensor, Part or None) for each scanned NAME (module names, expert slices)."""
    from streamscan.planning.experts import MoeConfig, fused_tensor, split_experts

    cfg = MoeConfig.from_config(config)
    parts: dict[str, dict] = {}
    out = []
    for name in names:
        module = fused_tensor(name) or name
        tensor = module + ".weight" if module + ".weight" in tensors else module
        part = None
        if module != name and tensor in tensors:
            if tensor not in parts:
                split = split_experts(tensor, tuple(tensors[tensor]), cfg)
                parts[tensor] = dict(split) if isinstance(split, list) else {}
            part = parts[tensor].get(name)
        out.append((name, tensor, part))
    return out


def trainer_names(
    config: dict | None,
    tensors: Mapping[str, tuple[int, ...]],
    targets: Iterable[tuple[str, str, object]],
    model=None,
) -> TrainerNames:
    """TARGETS: (scanned name, checkpoint tensor, Part or None). TENSORS: every checkpoint tensor's shape
    (the sources of a fused parameter must all be there). MODEL: the user's model (else built from CONFIG
    on the meta device). Raises ImportError without transformers."""
    import torch
    import transformers
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    if model is None:
        model = _meta_model(config or {})
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    prefix = model.base_model_prefix

    where: dict[str, tuple[Region, ...] | str] = {}  # checkpoint tensor -> its regions, or why none
    groups: dict[str, WeightConverter] = {}
    probes: dict[str, list[tuple[str, int, int]]] = {}  # parameter -> (tensor, first id, stop id)
    next_id = 1.0
    for key in sorted(tensors):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, shapes)
        if renamed not in shapes and key in shapes:
            renamed, pattern = key, None
        if renamed not in shapes:
            where[key] = f"transformers {transformers.__version__} loads no parameter from it"
            continue
        if pattern is None:
            if tuple(tensors[key]) == shapes[renamed]:
                where[key] = (Region(renamed, tuple((0, n, 1) for n in shapes[renamed])),)
            else:
                where[key] = f"loaded as {renamed} of shape {list(shapes[renamed])}, stored {list(tensors[key])}"
            continue
        import copy

        conv = groups.setdefault(renamed, copy.deepcopy(by_pattern[pattern]))
        shape = tuple(tensors[key])
        probe_shape = (*shape[:-1], 1) if len(shape) > 1 else shape
        rows = math.prod(probe_shape)
        probe = torch.arange(next_id, next_id + rows, dtype=torch.float64).reshape(probe_shape)
        conv.add_tensor(renamed, key, pattern, probe)
        probes.setdefault(renamed, []).append((key, int(next_id), int(next_id) + rows))
        next_id += rows
    for first, conv in groups.items():
        members = probes[first]
        try:
            with torch.no_grad():
                out = conv.convert(first, model=model, config=model.config)
        except Exception as err:  # any op that cannot run on a probe: those tensors keep no trainer name
            for key, _, _ in members:
                where[key] = f"transformers' conversion to {first} could not be traced ({type(err).__name__})"
            continue
        for key, lo, hi in members:
            found = []
            for param, tensor in out.items():
                tensor = tensor[0] if isinstance(tensor, list) else tensor
                if param not in shapes or not bool(((tensor >= lo) & (tensor < hi)).any()):
                    continue
                span = _locate(tensor, lo, hi, hi - lo, shapes[param])
                if span is None:
                    found = None
                    break
                found.append(Region(param, span))
            ok = found and sum(r.numel() for r in found) == math.prod(tensors[key])
            where[key] = tuple(found) if ok else f"transformers' conversion to {first} is not a slice of it"
    regions: dict[str, tuple[Region, ...]] = {}
    unmapped: dict[str, str] = {}
    for name, tensor, part in targets:
        got = where.get(tensor, f"{tensor}: not in the checkpoint's tensors")
        if isinstance(got, str):
            unmapped[name] = got
        elif part is None:
            regions[name] = got
        elif len(got) == 1 and got[0].whole(tuple(tensors[tensor])) and len(shapes[got[0].param]) == len(part.key):
            key = tuple((k, k + 1, 1) if isinstance(k, int) else (k.start, k.stop, k.step or 1) for k in part.key)
            regions[name] = (Region(got[0].param, key),)
        else:
            unmapped[name] = f"{tensor} is converted by transformers; its expert slices cannot be followed"
    return TrainerNames(transformers.__version__, type(model).__name__, shapes, regions, unmapped)


NAMES = ("auto", "transformers", "checkpoint")
STORED = "parameter names of the checkpoint as stored"


def _differs(names: TrainerNames) -> bool:
    """Whether any scanned matrix is loaded under another name, or as a slice of a larger parameter."""
    for name, regions in names.regions.items():
        if len(regions) != 1:
            return True
        region = regions[0]
        if not region.whole(names.shapes[region.param]) or region.param not in (name, name + ".weight"):
            return True
    return False


def names_for(checkpoint: str, targets: list[str], mode: str = "auto", model=None) -> tuple[TrainerNames | None, str]:
    """The trainer names of the scanned TARGETS of CHECKPOINT (a directory, or a Hub id in the HF cache) in
    MODEL (the user's; default: built from its config.json on the meta device),
    and a one-line note saying whose names a selection uses. MODE ``checkpoint``: none (the checkpoint's own
    names, for transformers < 5 and trainers that load them as stored); ``transformers``: transformers'
    names, or a UsageError saying why not; ``auto``: transformers' names where they differ from the
    checkpoint's and every scanned matrix has one, else the checkpoint's."""
    from streamscan.errors import StreamscanError, UsageError

    if mode not in NAMES:
        raise UsageError(f"--names {mode}: choose one of {', '.join(NAMES)}")
    if mode == "checkpoint":
        return None, "parameter names of the checkpoint as stored (--names checkpoint; transformers < 5)"

    def fallback(why: str) -> tuple[None, str]:
        if mode == "transformers":
            raise UsageError(f"--names transformers: {why}; use --names checkpoint")
        return None, f"parameter names of the checkpoint as stored: {why}"

    try:
        import transformers
    except ImportError:
        return fallback("transformers is not installed (pip install 'transformers>=5' for its names)")
    if int(transformers.__version__.split(".")[0]) < 5:
        return fallback(f"transformers {transformers.__version__} loads checkpoints under their stored names")
    from streamscan.checkpoint.index import build_index
    from streamscan.checkpoint.source import resolve

    try:
        index = build_index(resolve(checkpoint, offline=True))
    except StreamscanError as err:
        why = f"the checkpoint {checkpoint} cannot be read here ({str(err).split(';')[0]}); select --model PATH"
        if mode == "transformers":
            fallback(why)
        # where the checkpoint is must not change the YAML's bytes (a merge elsewhere writes the same file)
        log.info("parameter names of the checkpoint as stored: %s", why)
        return None, STORED
    config = index.source.config
    tensors = {t.name: t.shape for t in index.tensors}
    try:
        names = trainer_names(config, tensors, scan_targets(targets, tensors, config), model)
    except Exception as err:  # a config transformers cannot build, an unknown architecture: say so, keep going
        return fallback(
            f"transformers {transformers.__version__} cannot build this model ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''})"
        )
    if mode == "auto":
        if names.unmapped:
            first, why = next(iter(names.unmapped.items()))
            return fallback(f"{len(names.unmapped)} scanned matrices have no transformers name (e.g. {first}: {why})")
        if not _differs(names):
            log.info("transformers %s loads every scanned matrix under its stored name", transformers.__version__)
            return None, STORED
    return names, names.line()
