"""The compact teacher store: bytes per token, decoding error, resumable labelling, checksums,
and training through it at GPT-2's vocabulary."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kdlab import KdlabError
from kdlab.engine.runner import run
from kdlab.infra import teacher_store


def _topk(n, vocab, k, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * scale, -1)
    return logp.topk(k, -1)


@pytest.mark.parametrize("vocab, expected", [(50_257, 200), (151_936, 216), (262_144, 216)])
def test_a_token_takes_at_most_220_bytes_at_k_64_and_decodes_within_1e_3_nats(vocab, expected):
    values, index = _topk(64, vocab, 64)
    raw = teacher_store.encode(values, index, vocab)
    assert raw.shape == (64, expected) == (64, teacher_store.row_bytes(64, vocab))
    got_values, got_index = teacher_store.decode(raw, 64, vocab)
    assert torch.equal(got_index, index)  # bit-packed indices are exact
    # KL(exact top-k + tail || decoded top-k + tail), per token
    tail = lambda v: torch.log(-torch.expm1(torch.logsumexp(v.double(), -1)))  # noqa: E731
    p = torch.cat([values.double(), tail(values)[:, None]], -1)
    q = torch.cat([got_values.double(), tail(got_values)[:, None]], -1)
    kl = (p.exp() * (p - q)).sum(-1)
    assert 0 <= kl.min() and kl.max() < 1e-3
    assert 0.2 < float(values.exp().sum(-1).mean()) < 0.9  # a tail of real weight, as on real text


def _labelled(tmp_path, sequences=7, seq_len=5, k=4, vocab=300, fail_at=None):
    calls = []

    def topk_of(rows):
        calls.append(rows.tolist())
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("killed")
        values, index = _topk(len(rows) * seq_len, vocab, k, seed=int(rows[0]))
        return values.reshape(len(rows), seq_len, k), index.reshape(len(rows), seq_len, k)

    teacher_store.label(tmp_path, sequences, seq_len, k, vocab, topk_of, batch_size=2)
    teacher_store.finish(tmp_path, sequences, seq_len, k, vocab, {})
    return calls


def test_labelling_resumes_at_the_first_missing_shard_and_reads_back_row_by_row(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_store, "SHARD_BYTES", 3 * 5 * teacher_store.row_bytes(4, 300))  # 3 rows a shard
    with pytest.raises(RuntimeError, match="killed"):
        _labelled(tmp_path, fail_at=3)  # batches [0, 1], [2] (shard 0 written), then [3, 4] dies
    assert sorted(p.name for p in tmp_path.glob("shard-*.bin")) == ["shard-00000.bin"]
    assert not (tmp_path / "meta.json").exists()
    calls = _labelled(tmp_path)
    assert calls == [[3, 4], [5], [6]]  # shard 0 kept, shards 1 and 2 labelled
    store = teacher_store.CompactStore(tmp_path)
    values, index = store.rows(torch.tensor([6, 0, 4]))
    assert values.shape == index.shape == (3, 5, 4)
    for row, got_v, got_i in zip((6, 0, 4), values, index):
        # each row's batch was labelled from the seed of its batch's first row: recompute it
        first = {6: 6, 0: 0, 4: 3}[row]
        ref_v, ref_i = _topk((2 if row in (0, 4) else 1) * 5, 300, 4, seed=first)
        offset = (row - first) * 5
        assert torch.equal(got_i, ref_i[offset: offset + 5])
        torch.testing.assert_close(got_v, ref_v[offset: offset + 5], atol=0.05, rtol=0)


def test_a_damaged_shard_is_an_error_that_names_it(tmp_path):
    _labelled(tmp_path)
    shard = tmp_path / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(KdlabError, match=r"shard-00000.bin: does not match its checksum"):
        teacher_store.CompactStore(tmp_path).rows(torch.tensor([0]))


RECIPE = """
name = "store"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{root}"
tokenizer = "{root}/tokenizer.json"
seq_len = 16
batch_size = 4
eval_batch_size = 8
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
optimizer = {{ name = "adam", lr = 0.01 }}
model = {{ arch = "conv_lm", width = 8, layers = 1, receptive_field = 2, dropout = 0.0 }}
[stages.teacher]
epochs = 1
methods.lm = {{}}
[stages.student]
epochs = 1
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
methods.teacher_cache = {{ topk = 8, dir = "{cache}"{compact} }}
"""


def test_a_student_trains_at_gpt2s_vocabulary_through_the_store_and_a_second_run_reuses_it(tmp_path, catalogue,
                                                                                          caplog):
    from kdlab.data.word_corpus import generate

    root = generate(tmp_path / "corpus", 50_257, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    results = {}
    for name, compact in (("memory", ""), ("store", ", compact = true"), ("again", ", compact = true")):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(RECIPE.format(root=root, cache=tmp_path / "cache", compact=compact))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kdlab"):
            results[name] = run(recipe, out=tmp_path / name, catalogue=catalogue)
        results[name + "_log"] = [r.getMessage() for r in caplog.records]
    stores = list((tmp_path / "cache").glob("compact-*"))
    assert len(stores) == 1  # the train split (evaluation runs no teacher: no metric reads one)
    assert any("labelling the train split" in m for m in results["store_log"])
    assert not any("labelling" in m for m in results["again_log"])  # the second recipe run reads the stores
    weights = {n: torch.load(results[n].run_dir / "models" / "student.pt", weights_only=True)["state_dict"]
               for n in ("memory", "store", "again")}
    for key in weights["memory"]:
        assert torch.equal(weights["store"][key], weights["again"][key])
        # the store's 8-bit log-probabilities train (almost) as the in-memory float16 ones
        torch.testing.assert_close(weights["store"][key], weights["memory"][key], atol=2e-3, rtol=0)
    m = results["store"].metrics["student"]
    assert m["teacher_cache/train_topk_mass"] == pytest.approx(results["memory"].metrics["student"][
        "teacher_cache/train_topk_mass"], rel=1e-2)
    per_token = teacher_store.row_bytes(8, 50_257)
    (train,) = stores
    assert sum(f.stat().st_size for f in train.glob("shard-*.bin")) == 8 * 16 * per_token
    assert np.isfinite(m["test/perplexity"])


def test_two_processes_label_the_same_store_and_train_like_one(tmp_path):
    import os
    import subprocess
    import sys

    from kdlab.data.word_corpus import generate

    root = generate(tmp_path / "corpus", 2_000, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stores = {}
    for name, nproc in (("one", "1"), ("two", "2")):
        recipe = tmp_path / f"{name}.toml"
        # a teacher of zero epochs (its seeded initial weights): the same file in both runs
        text = RECIPE.format(root=root, cache=tmp_path / f"cache_{name}", compact=", compact = true")
        recipe.write_text(text.replace("[stages.teacher]\nepochs = 1", "[stages.teacher]\nepochs = 0"))
        done = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path / name),
                               "--run-id", "r", "--nproc", nproc], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        (store,) = (tmp_path / f"cache_{name}").glob("compact-*")
        stores[name] = store
    assert (stores["one"] / "shard-00000.bin").read_bytes() == (stores["two"] / "shard-00000.bin").read_bytes()
    assert stores["one"].name == stores["two"].name  # keyed by teacher, tokenizer and corpus, not by process count
    a, b = (torch.load(tmp_path / n / "store/r/models/student.pt", weights_only=True)["state_dict"] for n in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_kdlab_label_fills_the_store_that_a_later_run_reads_and_refuses_a_stage_without_one(tmp_path, capsys,
                                                                                           caplog):
    import os
    import subprocess
    import sys

    from kdlab.cli import main
    from kdlab.data.word_corpus import generate

    root = generate(tmp_path / "corpus", 2_000, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    for name in ("labelled", "plain", "two"):
        (tmp_path / f"{name}.toml").write_text(RECIPE.format(root=root, cache=tmp_path / f"cache_{name}",
                                                             compact=", compact = true"))
    out = str(tmp_path / "runs")
    assert main(["label", str(tmp_path / "labelled.toml"), "--stage", "student", "--splits", "train,test",
                 "--out", out, "--run-id", "r"]) == 0
    run_dir = tmp_path / "runs/store/r"
    assert (run_dir / "models/teacher.pt").is_file()  # the stage it reads trained first
    assert not (run_dir / "models/student.pt").exists()  # the labelled stage itself did not train
    stores = sorted((tmp_path / "cache_labelled").glob("compact-*"))
    assert len(stores) == 2 and all((s / "meta.json").is_file() for s in stores)  # train and test
    assert f"--resume {run_dir}" in capsys.readouterr().out

    with caplog.at_level(logging.INFO, logger="kdlab"):
        assert main(["run", str(tmp_path / "labelled.toml"), "--resume", str(run_dir)]) == 0
    assert not any("labelling" in r.getMessage() for r in caplog.records)  # read, not labelled again
    # the same as a run that labels its own store as it starts the stage
    assert main(["run", str(tmp_path / "plain.toml"), "--out", out, "--run-id", "p"]) == 0
    (plain,) = (tmp_path / "cache_plain").glob("compact-*")
    assert plain.name in {s.name for s in stores}
    assert (plain / "shard-00000.bin").read_bytes() == (tmp_path / "cache_labelled" / plain.name /
                                                         "shard-00000.bin").read_bytes()
    a, b = (torch.load(tmp_path / f"runs/store/{r}/models/student.pt", weights_only=True)["state_dict"]
            for r in ("r", "p"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # two processes, each writing its shards, fill the same store; the teacher is the first run's file,
    # so nothing trains before the labelling
    two = tmp_path / "two.toml"
    two.write_text(two.read_text().replace('teachers = ["teacher"]', f'teachers = ["{run_dir}/models/teacher.pt"]'))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kdlab", "label", str(two), "--stage", "student",
                           "--out", out, "--run-id", "t", "--nproc", "2"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (two,) = (tmp_path / "cache_two").glob("compact-*")
    assert (two / "shard-00000.bin").read_bytes() == (plain / "shard-00000.bin").read_bytes()

    capsys.readouterr()
    assert main(["label", str(tmp_path / "plain.toml"), "--stage", "teacher", "--out", out]) == 2
    assert "stages.teacher.methods.teacher_cache: kdlab label fills a teacher cache" in capsys.readouterr().err
