"""Loaders on small files in the real formats (IDX for MNIST, pickled batches for CIFAR)."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from kdlab import KdlabError
from kdlab.data.vision import DigitsConfig, TorchvisionConfig, build_vision, load_digits_tensors

rng = np.random.default_rng(0)


def write_idx_images(path, images: np.ndarray):
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path, labels: np.ndarray):
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_mnist(root, n_train=30, n_test=12):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train = rng.integers(0, 256, (n_train, 28, 28))
    train_labels = np.arange(n_train) % 10
    write_idx_images(raw / "train-images-idx3-ubyte", train)
    write_idx_labels(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx_images(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return train, train_labels


def make_cifar(root, hundred=False, per_batch=6):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    classes = 100 if hundred else 10

    def batch(name, n):
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: list(rng.integers(0, classes, n))}, f)
        return data

    if hundred:
        first = batch("train", 5 * per_batch)
        batch("test", per_batch)
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        first = batch("data_batch_1", per_batch)
        for i in range(2, 6):
            batch(f"data_batch_{i}", per_batch)
        batch("test_batch", per_batch)
        meta = {"label_names": [f"c{i}" for i in range(10)]}
        meta_name = "batches.meta"
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return first


def build(name, **kw):
    return build_vision(name, TorchvisionConfig(**kw), seed=0)


def test_mnist_reads_idx_files(tmp_path):
    images, labels = make_mnist(tmp_path)
    data = build("mnist", root=str(tmp_path), val_size=6, batch_size=8)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    train = list(data.train)
    assert sum(len(b.targets) for b in train) == 24
    assert sum(len(b.targets) for b in data.val) == 6 and sum(len(b.targets) for b in data.test) == 12
    b = train[0]
    assert b.inputs.shape[1:] == (1, 28, 28) and b.inputs.dtype == torch.float32
    # each sample is the file's image, normalised with MNIST's mean and std
    i = int(b.index[0])
    # the training split is the start of a permutation seeded by split_seed (0)
    j = int(torch.randperm(30, generator=torch.Generator().manual_seed(0))[i])
    expected = (torch.from_numpy(images[j]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(b.inputs[0, 0], expected, atol=1e-5)
    assert int(b.targets[0]) == labels[j]


def test_cifar10_and_cifar100_read_pickled_batches(tmp_path):
    make_cifar(tmp_path / "c10")
    make_cifar(tmp_path / "c100", hundred=True)
    c10 = build("cifar10", root=str(tmp_path / "c10"), val_size=5, batch_size=4, verify=False)
    c100 = build("cifar100", root=str(tmp_path / "c100"), val_size=5, batch_size=4, augment=False, verify=False)
    assert c10.num_classes == 10 and c100.num_classes == 100
    assert sum(len(b.targets) for b in c10.train) == 25 and sum(len(b.targets) for b in c10.test) == 6
    batch = next(iter(c100.train))
    assert batch.inputs.shape == (4, 3, 32, 32)
    assert int(batch.targets.max()) < 100


def test_shuffle_is_a_function_of_seed_and_epoch(tmp_path):
    make_mnist(tmp_path)
    data = build("mnist", root=str(tmp_path), val_size=6, batch_size=8)
    order = lambda: torch.cat([b.index for b in data.train]).tolist()  # noqa: E731
    data.train.set_epoch(3)
    first = order()
    data.train.set_epoch(4)
    assert order() != first
    data.train.set_epoch(3)
    assert order() == first


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(KdlabError, match=r"mnist files not found under .* set data.download = true"):
        build("mnist", root=str(tmp_path))


def test_corrupt_file_is_a_clear_error(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(KdlabError, match="cannot read cifar10"):
        build("cifar10", root=str(tmp_path), verify=False)


class _Payload:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["data_batch_1", "batches.meta", "test_batch"])
def test_a_crafted_pickle_is_refused_without_running(tmp_path, target):
    make_cifar(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "cifar-10-batches-py" / target).write_bytes(pickle.dumps({"data": _Payload(marker)}))
    with pytest.raises(KdlabError, match=f"cannot read cifar10 .*refusing to load posix.system"):
        build("cifar10", root=str(tmp_path), verify=False)
    assert not marker.exists()


def test_cifar100_train_payload_is_refused(tmp_path):
    make_cifar(tmp_path, hundred=True)
    marker = tmp_path / "ran"
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(KdlabError, match="refusing to load"):
        build("cifar100", root=str(tmp_path), verify=False)
    assert not marker.exists()


def test_files_without_the_published_checksum_are_refused_by_default(tmp_path):
    make_cifar(tmp_path)
    with pytest.raises(KdlabError, match=r"data_batch_1 does not have the published cifar10 checksum .*data.verify = false"):
        build("cifar10", root=str(tmp_path))


@pytest.mark.parametrize(("change", "message"), [
    ("size", r"train images are \(16, 16\), the format has \(28, 28\)"),
    ("labels", "labels must lie in 0..9"),
    ("count", "30 images but 20 labels"),
])
def test_mnist_files_that_do_not_hold_the_format_are_refused(tmp_path, change, message):
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    if change == "size":
        write_idx_images(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 16, 16)))
    elif change == "labels":
        write_idx_labels(raw / "train-labels-idx1-ubyte", np.full(30, 12))
    else:
        write_idx_labels(raw / "train-labels-idx1-ubyte", np.arange(20) % 10)
    with pytest.raises(KdlabError, match=message):
        build("mnist", root=str(tmp_path))


def test_digits_split_is_stratified_and_normalised():
    (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(DigitsConfig())
    assert len(xtr) + len(xva) + len(xte) == 1797
    assert len(xte) == pytest.approx(0.25 * 1797, abs=2) and len(xva) == pytest.approx(0.15 * 1797, abs=2)
    assert set(ytr.tolist()) == set(range(10)) and set(yte.tolist()) == set(range(10))
    assert abs(float(xtr.mean())) < 1e-4 and float(xtr.std()) == pytest.approx(1.0, abs=1e-3)


def test_in_memory_batches_equal_torchvision_transforms(tmp_path):
    """The in-memory path (uint8 tensors, per-batch conversion) gives the exact tensors that
    torchvision's ToTensor + Normalize give per image, and the same split."""
    make_cifar(tmp_path, hundred=True)
    kw = dict(root=str(tmp_path), val_size=5, batch_size=4, eval_batch_size=7, augment=False, verify=False)
    fast, slow = build("cifar100", **kw), build("cifar100", in_memory=False, **kw)
    for split in ("train", "val", "test"):
        a, b = getattr(fast, split), getattr(slow, split)
        a.set_epoch(2), b.set_epoch(2)
        ba, bb = list(a), list(b)
        assert torch.equal(torch.cat([x.inputs for x in ba]), torch.cat([x.inputs for x in bb])), split
        assert torch.equal(torch.cat([x.targets for x in ba]), torch.cat([x.targets for x in bb]))


def test_augmented_epochs_differ_and_replay(tmp_path):
    make_cifar(tmp_path)
    data = build("cifar10", root=str(tmp_path), val_size=5, batch_size=5, verify=False)
    assert data.augmented

    def epoch(e):
        data.train.set_epoch(e)
        return torch.cat([b.inputs for b in data.train]), torch.cat([b.index for b in data.train])

    (x3, i3), (x4, _) = epoch(3), epoch(4)
    assert torch.equal(epoch(3)[0], x3)  # a function of (seed, epoch): resumable
    order = i3.argsort()
    assert not torch.equal(x3[order], x4[epoch(4)[1].argsort()])


def test_fixed_views_replay_the_draws_the_cache_labels(tmp_path):
    make_cifar(tmp_path)
    data = build("cifar10", root=str(tmp_path), val_size=5, batch_size=5, verify=False)
    train = data.train
    train.fix_views(3)
    labelled = {(int(i), int(k)): x for b in train.view_batches(4) for i, k, x in zip(b.index, b.view, b.inputs)}
    assert len(labelled) == 25 * 3
    seen = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        for b in train:
            for i, k, x in zip(b.index, b.view, b.inputs):
                assert torch.equal(x, labelled[int(i), int(k)])
                seen.add((int(i), int(k)))
    assert len(seen) > 25  # several views of a sample over the epochs
    train.fix_views(None)
    assert next(iter(train)).view is None


def test_digits_augmentation_shifts_by_at_most_one_pixel():
    from kdlab.data.vision import build_digits

    plain = build_digits(DigitsConfig(), seed=0)
    shifted = build_digits(DigitsConfig(augment=True), seed=0)
    assert shifted.augmented and not plain.augmented
    a, b = next(iter(plain.train)), next(iter(shifted.train))
    assert torch.equal(a.index, b.index)  # same order: only the views differ
    assert not torch.equal(a.inputs, b.inputs)
    # every augmented image is its original moved by dy, dx in -1..1 (zero fill)
    for x, y in zip(a.inputs, b.inputs):
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        assert any(torch.equal(padded[:, r : r + 8, c : c + 8], y) for r in range(3) for c in range(3))
