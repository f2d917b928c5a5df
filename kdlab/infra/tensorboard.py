"""TensorBoard logging under ``<run>/tb/<stage>/``: every loss term and the total loss (every
``log_every`` steps), learning rate and evaluation metrics (every epoch), the resolved recipe as
text, optional weight histograms, and hparams with the final metrics so that stages and runs
compare in the HParams tab.
"""

from __future__ import annotations

import threading

import attrs
import tomli_w
import torch
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.engine.errors import writing
from kdlab.engine.recipe import recipe_to_dict


@attrs.frozen(kw_only=True)
class TensorBoardConfig:
    log_every: int = field(default=10, validator=v.ge(1))  # steps between loss scalars
    histograms: bool = False  # weight histograms every epoch


def flat_hparams(table: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested table as ``{"a.b.c": value}`` (lists become strings)."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TensorBoard:
    """Every scalar is logged against the stage's optimizer step (``epoch`` is a scalar of its
    own), so that after a resume one ``purge_step`` drops whatever the interrupted process logged
    after its last checkpoint and no step appears twice."""

    default_enabled = True
    config_class = TensorBoardConfig

    def __init__(self, config):
        self.config = config
        self.writer = None
        self.pending: list[tuple[int, list[str], torch.Tensor]] = []  # (step, names, values on the device)

    def _writer(self, stage):
        # opened on first use, after the loop has restored a checkpoint: stage.step is then the
        # step the checkpoint was taken at, and TensorBoard discards events from there on
        if self.writer is None and stage.is_main:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_threads()
            log_dir = stage.run_dir / "tb" / stage.name
            with writing(log_dir):
                # a stage restarted from scratch purges everything
                writer = SummaryWriter(log_dir=str(log_dir), purge_step=stage.step + 1 if stage.step else 0)
            self.writer = _Guarded(log_dir, writer)
            if stage.step == 0:
                text = tomli_w.dumps(recipe_to_dict(stage.recipe))
                self.writer.add_text("recipe", "```\n" + text + "\n```", 0)
        return self.writer

    @hookimpl
    def kdlab_epoch_start(self, stage):
        self._writer(stage)  # the first epoch start comes after the resume: open here

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        if not stage.is_main or stage.step % self.config.log_every:
            return
        # kept on the device and written at the epoch's end: reading a value here (.item())
        # would make the host wait for the GPU every log_every steps
        names = ["loss/total", *(f"loss/{name}" for name in terms)]
        self.pending.append((stage.step, names, torch.stack([loss.float(), *(t.float() for t in terms.values())])))

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        writer = self._writer(stage)
        if writer is None:
            return
        if self.pending:
            values = iter(torch.cat([v for _, _, v in self.pending]).tolist())  # one transfer per epoch
            for step, names, _ in self.pending:
                for name in names:
                    writer.add_scalar(name, next(values), step)
            self.pending.clear()
        writer.add_scalar("epoch", stage.epoch, stage.step)
        for i, group in enumerate(stage.optimizer.param_groups):
            writer.add_scalar("lr" if i == 0 else f"lr/{i}", group["lr"], stage.step)
        for name, value in metrics.items():
            writer.add_scalar(name, value, stage.step)
        if self.config.histograms:
            for name, param in stage.student.named_parameters():
                writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), stage.step)

    @hookimpl
    def kdlab_stage_summary(self, stage, metrics):
        writer = self._writer(stage)
        if writer is None:
            return
        resolved = recipe_to_dict(stage.recipe)
        hparams = {"stage": stage.name, "seed": stage.recipe.seed, **flat_hparams(resolved["data"], "data."),
                   **flat_hparams(resolved["stages"][stage.name])}
        writer.add_hparams(hparams, {f"final/{k}": v for k, v in metrics.items()}, run_name=".")
        writer.close()


class _Guarded:
    """A SummaryWriter whose failed writes (a full disk) are one error naming its directory:
    TensorBoard's own errors carry no file name. A resume purges the steps after the last
    checkpoint, so nothing logged twice or half is left."""

    def __init__(self, log_dir, writer):
        self.log_dir, self.writer = log_dir, writer

    def __getattr__(self, name):
        method = getattr(self.writer, name)

        def call(*args, **kwargs):
            with writing(self.log_dir):
                return method(*args, **kwargs)
        return call


def _quiet_writer_threads() -> None:
    """TensorBoard writes in a background thread; a failed write there (a full disk) is raised
    again by the writer's next call in the main thread, which :class:`_Guarded` turns into one
    error line. Python would also print the thread's traceback: this hook leaves that out."""
    previous = threading.excepthook
    if getattr(previous, "kdlab_quiet", False):
        return

    def hook(args):
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)
    hook.kdlab_quiet = True
    threading.excepthook = hook
