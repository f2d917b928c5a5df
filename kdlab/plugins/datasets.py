"""Image classification data: scikit-learn's 8x8 digits (bundled, the default), and MNIST,
CIFAR-10, CIFAR-100 through torchvision's readers from a local ``root`` directory.

Nothing is downloaded unless the recipe says ``download = true``; missing files give an error
that says where to put them.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab import Batch, DataBundle, KdlabError, hookimpl
from kdlab.engine.types import BatchLoader, shard_slice


@attrs.frozen(kw_only=True)
class LoaderSettings:
    batch_size: int = field(default=64, validator=v.ge(1))
    eval_batch_size: int = field(default=512, validator=v.ge(1))


@attrs.frozen(kw_only=True)
class DigitsConfig(LoaderSettings):
    """scikit-learn's digits: 1,797 8x8 images, split stratified into train/val/test."""

    val_fraction: float = field(default=0.15, validator=[v.gt(0), v.lt(0.5)])
    test_fraction: float = field(default=0.25, validator=[v.gt(0), v.lt(0.5)])
    split_seed: int = field(default=0, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class TorchvisionConfig(LoaderSettings):
    """MNIST / CIFAR files in ``root``, read by torchvision; the last ``val_size`` images of a
    seeded permutation of the training set form the validation split."""

    root: str
    download: bool = False
    val_size: int = field(default=5000, validator=v.ge(0))
    augment: bool = True  # CIFAR: random crop (pad 4) + horizontal flip on the training split
    num_workers: int = field(default=0, validator=v.ge(0))
    train_limit: int | None = field(default=None, validator=v.optional(v.ge(1)))  # quick runs
    split_seed: int = field(default=0, validator=v.ge(0))


class TensorLoader(BatchLoader):
    """Batches straight from in-memory tensors.

    Written by hand because a DataLoader over a TensorDataset indexes and collates every sample
    on its own, which costs more than the whole forward pass of a small CNN on 8x8 images;
    indexing the tensors with a permutation does the same job in one operation.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.world_size > 1:
                idx = idx[shard_slice(len(idx), self.rank, self.world_size)]
            yield Batch(self.x[idx], self.y[idx], idx)


class VisionLoader:
    """A DataLoader over a torchvision data set whose shuffling is re-seeded per epoch."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int):
        self.generator = torch.Generator()
        self.seed = seed
        sampler = (torch.utils.data.RandomSampler(dataset, generator=self.generator) if shuffle
                   else torch.utils.data.SequentialSampler(dataset))
        self.batches = _ShardedBatches(sampler, batch_size)
        self.loader = torch.utils.data.DataLoader(
            _Indexed(dataset), batch_sampler=self.batches, num_workers=num_workers, collate_fn=_collate,
            persistent_workers=False,
        )
        self.set_epoch(0)

    def shard(self, rank: int, world_size: int) -> None:
        self.batches.rank, self.batches.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


class _ShardedBatches(torch.utils.data.BatchSampler):
    """Global batches from the sampler; in distributed training, this rank's part of each."""

    def __init__(self, sampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)
        self.rank, self.world_size = 0, 1

    def __iter__(self):
        for batch in super().__iter__():
            yield batch[shard_slice(len(batch), self.rank, self.world_size)] if self.world_size > 1 else batch


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, y, i


def _collate(items):
    xs, ys, idx = zip(*items)
    return Batch(torch.stack(xs), torch.as_tensor(ys), torch.as_tensor(idx))


def load_digits_tensors(config: DigitsConfig):
    """(x, y) splits of the digits data as float tensors of shape (N, 1, 8, 8), normalised with
    the training split's mean and std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    idx = np.arange(len(x))
    rest, test = train_test_split(idx, test_size=config.test_fraction, stratify=y, random_state=config.split_seed)
    val_share = config.val_fraction / (1 - config.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=config.split_seed)
    mean, std = x[train].mean(), x[train].std()
    to_t = lambda ids: (torch.from_numpy((x[ids] - mean) / std)[:, None], torch.from_numpy(y[ids]))  # noqa: E731
    return to_t(train), to_t(val), to_t(test)


_VISION = {
    # name: (torchvision class name, classes, input shape, mean, std, expected files under root)
    "mnist": ("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,),
              ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
               "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]),
    "cifar10": ("CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch",
                 "cifar-10-batches-py/batches.meta"]),
    "cifar100": ("CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                 ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
}


def _vision_class(name: str):
    import torchvision

    base = getattr(torchvision.datasets, _VISION[name][0])
    if name == "mnist":
        return base

    class Cifar(base):
        # torchvision checks the md5 of each file, which only detects a corrupted download;
        # with md5 None its check_integrity tests that the file exists and the reader validates
        # the content, so that the real reader can be tested on small files in the real format.
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return Cifar


def build_vision(name: str, config: TorchvisionConfig, seed: int) -> DataBundle:
    from torchvision import transforms as T

    cls_name, classes, shape, mean, std, files = _VISION[name]
    root = Path(config.root)
    missing = [f for f in files if not (root / f).is_file()]
    if missing and not config.download:
        raise KdlabError(
            f"data.root: {name} files not found under {root} (missing {', '.join(missing)}); "
            f"put the original files there or set data.download = true"
        )
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    train_tf = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if name != "mnist" and config.augment else []) + normalize)
    eval_tf = T.Compose(normalize)
    cls = _vision_class(name)
    try:
        train_aug = cls(str(root), train=True, transform=train_tf, download=config.download)
        train_clean = cls(str(root), train=True, transform=eval_tf)
        test = cls(str(root), train=False, transform=eval_tf)
    except Exception as exc:  # noqa: BLE001 - unreadable files: say which data set and where
        raise KdlabError(f"data.root: cannot read {name} from {root}: {exc}") from exc

    order = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(config.split_seed)).tolist()
    val_size = min(config.val_size, len(order) // 2)
    train_idx, val_idx = order[: len(order) - val_size], order[len(order) - val_size :]
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    subset = torch.utils.data.Subset
    make = lambda ds, bs, shuffle: VisionLoader(ds, bs, shuffle=shuffle, seed=seed, num_workers=config.num_workers)  # noqa: E731
    return DataBundle(
        train=make(subset(train_aug, train_idx), config.batch_size, True),
        val=make(subset(train_clean, val_idx), config.eval_batch_size, False) if val_idx else None,
        test=make(test, config.eval_batch_size, False),
        num_classes=classes,
        input_shape=shape,
        augmented=name != "mnist" and config.augment,
        key={"dataset": name, "root": str(root.resolve()), **attrs.asdict(config)},
    )


class Datasets:
    default_enabled = True

    @hookimpl
    def kdlab_dataset_configs(self):
        return {"digits": DigitsConfig, "mnist": TorchvisionConfig, "cifar10": TorchvisionConfig,
                "cifar100": TorchvisionConfig}

    @hookimpl(trylast=True)
    def kdlab_build_data(self, spec, seed):
        config = spec.config
        if spec.name == "digits":
            (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(config)
            return DataBundle(
                train=TensorLoader(xtr, ytr, config.batch_size, shuffle=True, seed=seed),
                val=TensorLoader(xva, yva, config.eval_batch_size, shuffle=False, seed=seed),
                test=TensorLoader(xte, yte, config.eval_batch_size, shuffle=False, seed=seed),
                num_classes=10,
                input_shape=(1, 8, 8),
                key={"dataset": "digits", **attrs.asdict(config)},
            )
        if spec.name in _VISION:
            return build_vision(spec.name, config, seed)
        return None
