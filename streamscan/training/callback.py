"""callback: a selection applied when training starts and, optionally, re-selected every k epochs."""

from __future__ import annotations

import logging

import torch

from streamscan.compute.spectrum import DEFAULT_METHOD
from streamscan.errors import UsageError
from streamscan.training.apply import TrainableSummary, apply_selection, sync_optimizer
from streamscan.training.match import DEFAULT_TOP_PERCENT
from streamscan.training.rescan import Rescan, rescan

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- during training


class SelectionSchedule:
    """What :class:`SpectrumCallback` does, for any training loop: ``start(model, optimizer)`` before the
    first step, ``epoch_end(model, epoch, optimizer)`` after each epoch.

    SELECTION as in :func:`apply_selection`; None scans the model in memory and selects its top
    ``top_percent``%. ``rescan_every`` > 0 re-selects the top ``rescan_percent``% (default: top_percent, else
    25) from the current weights every that many epochs; ``history`` keeps (epoch, Rescan) records.
    """

    def __init__(
        self,
        selection=None,
        top_percent: float | None = None,
        *,
        rescan_every: int = 0,
        rescan_percent: float | None = None,
        method: str = DEFAULT_METHOD,
        replace_prefix: tuple[str, str] | None = None,
        strict: bool = True,
        names: str = "auto",
    ):
        if rescan_every < 0:
            raise UsageError(f"rescan_every {rescan_every}: must be 0 (never) or a number of epochs")
        self.selection, self.top_percent, self.rescan_every = selection, top_percent, rescan_every
        self.rescan_percent = rescan_percent or top_percent or DEFAULT_TOP_PERCENT
        self.method, self.replace_prefix, self.strict, self.names = method, replace_prefix, strict, names
        self.summary: TrainableSummary | None = None
        self.history: list[tuple[int, Rescan]] = []

    @property
    def started(self) -> bool:
        return self.summary is not None

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainableSummary:
        if self.selection is None:
            self.summary = rescan(model, self.top_percent or DEFAULT_TOP_PERCENT, self.method).summary
        else:
            self.summary = apply_selection(
                model,
                self.selection,
                self.top_percent,
                replace_prefix=self.replace_prefix,
                strict=self.strict,
                names=self.names,
            )
        if optimizer is not None:
            sync_optimizer(optimizer, model)
        return self.summary

    def epoch_end(
        self, model: torch.nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Rescan | None:
        if not self.rescan_every or epoch % self.rescan_every:
            return None
        result = rescan(model, self.rescan_percent, self.method)
        if optimizer is not None:
            sync_optimizer(optimizer, model)
        self.summary = result.summary
        self.history.append((epoch, result))
        log.info("rescan after epoch %d: %s; %s", epoch, result.describe(), result.summary)
        return result


def _callback_class():
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("SpectrumCallback needs transformers: pip install 'streamscan[train]'") from None

    class SpectrumCallback(TrainerCallback):
        """A transformers ``TrainerCallback`` (TRL's trainers too): applies the selection when the Trainer
        is built (so its optimizer holds only the selected parameters) or, if added later, when training
        starts; logs the trainable share; with ``rescan_every=k`` re-selects from the current weights every
        k epochs and adds/removes parameters in the optimizer. Arguments as :class:`SelectionSchedule`."""

        def __init__(self, selection=None, top_percent: float | None = None, **kwargs):
            self.schedule = SelectionSchedule(selection, top_percent, **kwargs)

        @property
        def summary(self) -> TrainableSummary | None:
            return self.schedule.summary

        @property
        def history(self) -> list[tuple[int, Rescan]]:
            return self.schedule.history

        def on_init_end(self, args, state, control, model=None, **kwargs):
            if model is not None and not self.schedule.started:
                self.schedule.start(model)

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if self.schedule.rescan_every and getattr(args, "world_size", 1) > 1:
                raise UsageError(
                    "rescan_every: a rescan changes which parameters train, which distributed "
                    "training (DDP/FSDP/DeepSpeed) cannot follow; use rescan_every=0 with more than one process"
                )
            if not self.schedule.started:
                self.schedule.start(model, optimizer)
            elif optimizer is not None:
                sync_optimizer(optimizer, model)
            log.info("training with the Spectrum selection: %s", self.schedule.summary)

        def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                return  # the last epoch: nothing left to train
            self.schedule.epoch_end(model, round(state.epoch or 0), optimizer)

    return SpectrumCallback


def __getattr__(name: str):
    if name == "SpectrumCallback":  # built on first use: transformers stays an optional dependency
        cls = _callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
