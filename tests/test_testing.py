"""kdlab.testing.check_method: passes a sound method, and catches the mistakes it is for."""

from __future__ import annotations

import pytest
import torch

from kdlab import hookimpl
from kdlab.testing import check_method


class LogitL2:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"l2": 0.01 * student_out.logits.pow(2).mean()}


class ForgetsItsState:
    """A schedule kept in the instance but not in kdlab_state_dict: a resume restarts it."""

    def __init__(self):
        self.calls = 0

    @hookimpl
    def kdlab_loss_terms(self, student_out):
        self.calls += 1
        return {"ramp": 0.01 * self.calls * student_out.logits.pow(2).mean()}


class ZeroTerm:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"zero": 0.0 * student_out.logits.sum()}


class ReachesOnlyItsOwnModule:
    """A loss on the method's own projection of detached logits: the student never learns from it."""

    @hookimpl
    def kdlab_extra_modules(self):
        return {"own_proj": torch.nn.Linear(10, 10)}

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {"own": stage.extra["own_proj"](student_out.logits.detach()).pow(2).mean()}


class AddsATermItSaysItDoesNot(LogitL2):
    pass


class CountsItsSteps:
    """A loss that grows with the steps taken, its count kept in kdlab_state_dict."""

    def __init__(self):
        self.steps = 0

    @hookimpl
    def kdlab_step_end(self):
        self.steps += 1

    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"ramp": 0.01 * (1 + self.steps) * student_out.logits.pow(2).mean()}

    @hookimpl
    def kdlab_state_dict(self):
        return {"steps": self.steps}

    @hookimpl
    def kdlab_load_state_dict(self, state):
        self.steps = state["steps"]


class ClashesWithLogitKD:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"kd": student_out.logits.pow(2).mean()}


class SavesItsState(ForgetsItsState):
    @hookimpl
    def kdlab_state_dict(self):
        return {"calls": self.calls}

    @hookimpl
    def kdlab_load_state_dict(self, state):
        self.calls = state["calls"]


def test_a_sound_method_passes(tmp_path):
    check_method("logit_l2", plugin=LogitL2, workdir=tmp_path)
    check_method("ramp", plugin=SavesItsState, workdir=tmp_path)


def test_an_installed_method_with_taps_passes(tmp_path):
    check_method("feature_kd", {}, taps={"student": {"feat": "embed"}, "teacher": {"feat": "embed"}}, workdir=tmp_path)


def test_state_lost_on_resume_is_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"method 'ramp': a run stopped \(Ctrl-C\) after epoch 1 and resumed ends "
                                             "with student tensor"):
        check_method("ramp", plugin=ForgetsItsState, workdir=tmp_path)


def test_a_clash_with_logit_kd_is_caught(tmp_path):
    from kdlab import KdlabError

    with pytest.raises(KdlabError, match="two methods return the loss term 'kd'"):
        check_method("clash", plugin=ClashesWithLogitKD, workdir=tmp_path)


def test_the_thread_count_is_restored(tmp_path):
    torch.set_num_threads(2)
    check_method("logit_l2", plugin=LogitL2, workdir=tmp_path)
    assert torch.get_num_threads() == 2


def test_a_term_that_is_zero_is_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"method 'zero' \(alone\): its loss terms are zero or not finite at the "
                                             r"first step: \{'zero': 0.0\}"):
        check_method("zero", plugin=ZeroTerm, workdir=tmp_path)


def test_a_term_that_does_not_reach_the_student_is_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"method 'own' \(alone\): its loss terms \['own'\] do not change the "
                                             "student's gradient"):
        check_method("own", plugin=ReachesOnlyItsOwnModule, workdir=tmp_path)


def test_a_method_without_terms_is_checked_beside_supervised(tmp_path):
    # gradual pruning: its mask schedule must survive every kind of stop
    check_method("pruning", {"sparsity": 0.5, "schedule": "gradual", "start_epoch": 0, "end_epoch": 2}, terms=False,
                 workdir=tmp_path)
    with pytest.raises(AssertionError, match=r"method 'l2' \(alone\): checked with terms=False, but it adds the "
                                             r"terms \['l2'\]"):
        check_method("l2", plugin=AddsATermItSaysItDoesNot, terms=False, workdir=tmp_path)


def test_sound_state_passes_every_kind_of_stop(tmp_path):
    # its count is in kdlab_state_dict, which the checkpoint holds: every stop resumes exactly
    check_method("count", plugin=CountsItsSteps, workdir=tmp_path)
