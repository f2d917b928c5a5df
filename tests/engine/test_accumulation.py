"""Gradient accumulation: k micro-batches of b samples train like one batch of k x b, token
losses averaged over the tokens of the whole accumulated batch, in one process and in two."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.engine.types import Accumulation
from tests.engine.test_distributed import RECIPE, _worst


def _student(result, stage="student"):
    return torch.load(result.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]


class StepTerms:
    """Records every training step's loss terms."""

    default_enabled = True
    seen: list[tuple[str, dict[str, float]]] = []

    @hookimpl
    def kdlab_step_end(self, stage, terms):
        StepTerms.seen.append((stage.name, {k: float(t) for k, t in terms.items()}))


def test_four_micro_batches_of_sixteen_train_like_one_batch_of_sixty_four(write_recipe, tmp_path, catalogue):
    whole = run(write_recipe(RECIPE, "whole.toml"), out=tmp_path / "a", catalogue=catalogue)
    micro = RECIPE.replace("batch_size = 64", "batch_size = 16").replace(
        "[stages.student]", "[stages.student]\naccumulate = 4").replace(
        "[stages.teacher]", "[stages.teacher]\naccumulate = 4")
    accumulated = run(write_recipe(micro, "micro.toml"), out=tmp_path / "b", catalogue=catalogue)
    for stage in ("teacher", "student"):
        assert _worst(_student(whole, stage), _student(accumulated, stage)) < 1e-4, stage
    # without accumulation the same micro-batches take four times the steps and train differently
    plain = run(write_recipe(RECIPE.replace("batch_size = 64", "batch_size = 16"), "plain.toml"),
                out=tmp_path / "c", catalogue=catalogue)
    assert _worst(_student(whole), _student(plain)) > 1e-2
    # the scheduler and the step counter count optimizer steps
    assert accumulated.metrics["student"]["test/accuracy"] == pytest.approx(whole.metrics["student"]["test/accuracy"])


def _dialogue_recipe(tmp_path, batch: int, accumulate: int) -> str:
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"),
                              methods="methods.lm = {}\nmethods.token_kd = {}")
    text = text.replace("batch_size = 16 ", f"batch_size = {batch} ").replace("epochs = 1", "epochs = 2")
    return text.replace("[defaults]", f"[defaults]\naccumulate = {accumulate}")


def test_token_losses_are_means_over_the_tokens_of_the_whole_accumulated_batch(write_recipe, tmp_path, catalogue):
    """Dialogues train on their responses only, so micro-batches hold different numbers of
    target tokens: 4 x 4 equals 1 x 16 only if every token of the 16 weighs alike (a mean of
    the four micro-batch means would not: the known accumulation bug)."""
    pytest.importorskip("transformers")
    cat = discover(extra={"step_terms": StepTerms})
    terms = []
    for name, batch, accumulate in (("w", 16, 1), ("m", 4, 4)):
        StepTerms.seen = []
        result = run(write_recipe(_dialogue_recipe(tmp_path, batch, accumulate), f"{name}.toml"),
                     out=tmp_path / name, catalogue=cat)
        terms.append(([t for s, t in StepTerms.seen if s == "student"], _student(result)))
    (whole, whole_weights), (micro, micro_weights) = terms
    assert _worst(whole_weights, micro_weights) < 1e-5
    # the step's terms (what the logs and TensorBoard show) are the whole batch's means too
    assert len(whole) == len(micro) == 4  # 32 dialogues, 16 a step, 2 epochs
    for x, y in zip(whole, micro):
        assert y["lm"] == pytest.approx(x["lm"], rel=1e-5)
        assert y["token_kd"] == pytest.approx(x["token_kd"], rel=1e-4, abs=1e-7)


def test_the_divisor_counts_the_whole_accumulated_batch():
    """Stage.mean_divisor: the step's valid targets times the micro-batch's share of its samples."""
    from types import SimpleNamespace

    from kdlab.engine.types import Stage

    stage = SimpleNamespace(world_size=1, shard_sizes=None, accumulation=None)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)  # 3 valid of 2 samples
    assert float(Stage.mean_divisor(stage, mask)) == 3
    # this micro-batch: 2 of the step's 8 samples, 3 of its 20 valid targets
    stage.accumulation = Accumulation(share=0.25, valid=3, valid_total=20)
    assert float(Stage.mean_divisor(stage, mask)) == pytest.approx(20 * 0.25)
    # a micro-batch of prompts only (no valid target) divides by its share of the step's count
    stage.accumulation = Accumulation(share=0.25, valid=0, valid_total=20)
    assert float(Stage.mean_divisor(stage, torch.zeros(2, 3))) == pytest.approx(1e-8 * 0.25)


def test_two_processes_accumulating_train_like_one_process_with_the_whole_batch(write_recipe, tmp_path, catalogue):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = run(write_recipe(RECIPE, "whole.toml"), out=tmp_path / "a", catalogue=catalogue)
    micro = RECIPE.replace("batch_size = 64", "batch_size = 32").replace(
        "[stages.student]", "[stages.student]\naccumulate = 2").replace(
        "[stages.teacher]", "[stages.teacher]\naccumulate = 2")
    cmd = [sys.executable, "-m", "kdlab", "run", str(write_recipe(micro, "micro.toml")), "--out", str(tmp_path / "b"),
           "--run-id", "r", "--nproc", "2"]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    for stage in ("teacher", "student"):
        other = torch.load(tmp_path / "b/tiny/r/models" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert _worst(_student(whole, stage), other) < 1e-4, stage
