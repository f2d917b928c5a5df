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
    with pytest.raises(AssertionError, match="method 'ramp': after an interrupted run is resumed, student tensor"):
        check_method("ramp", plugin=ForgetsItsState, workdir=tmp_path)


def test_a_clash_with_logit_kd_is_caught(tmp_path):
    from kdlab import KdlabError

    with pytest.raises(KdlabError, match="two methods return the loss term 'kd'"):
        check_method("clash", plugin=ClashesWithLogitKD, workdir=tmp_path)


def test_the_thread_count_is_restored(tmp_path):
    torch.set_num_threads(2)
    check_method("logit_l2", plugin=LogitL2, workdir=tmp_path)
    assert torch.get_num_threads() == 2
