"""Image classification data: scikit-learn's 8x8 digits (bundled, the default), and MNIST,
CIFAR-10, CIFAR-100 through torchvision's readers from a local ``root`` directory.

Nothing is downloaded unless the recipe says ``download = true``; missing files give an error
that says where to put them.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab.data.augment import CropFlip
from kdlab.data.fingerprint import files_digest
from kdlab.data.loader import DatasetLoader, TensorLoader, batch_settings
from kdlab.engine import limits
from kdlab.engine.errors import KdlabError
from kdlab.engine.types import DataBundle


@attrs.frozen(kw_only=True)
class LoaderSettings:
    # what kind of data this is: the plugins whose data_kinds meet it join a stage (kdlab.engine.plan)
    kinds: ClassVar[frozenset[str]] = frozenset({"image", "classification"})
    batch_size: int = field(default=64, validator=limits.batch_size)
    eval_batch_size: int = field(default=512, validator=limits.batch_size)


@attrs.frozen(kw_only=True)
class DigitsConfig(LoaderSettings):
    """scikit-learn's digits: 1,797 8x8 images, split stratified into train/val/test."""

    val_fraction: float = field(default=0.15, validator=[v.gt(0), v.lt(0.5)])
    test_fraction: float = field(default=0.25, validator=[v.gt(0), v.lt(0.5)])
    split_seed: int = field(default=0, validator=limits.seed)
    augment: bool = False  # random shifts of up to one pixel (pad 1 + crop) on the training split

    def augments_inputs(self, dataset: str) -> bool:
        """Whether the model inputs of the training split differ between epochs (random
        transforms): what the teacher cache needs to know before anything is built."""
        return self.augment


@attrs.frozen(kw_only=True)
class TorchvisionConfig(LoaderSettings):
    """MNIST / CIFAR files in ``root``, read by torchvision; the last ``val_size`` images of a
    seeded permutation of the training set form the validation split."""

    root: str
    download: bool = False
    val_size: int = field(default=5000, validator=v.ge(0))
    augment: bool = True  # CIFAR: random crop (pad 4) + horizontal flip on the training split
    # true: the images are held in memory as uint8 (on the GPU when training there) and cut,
    # augmented and normalised per batch; false: torchvision's per-image transforms in a
    # DataLoader with num_workers processes
    in_memory: bool = True
    num_workers: int = field(default=0, validator=v.ge(0))
    train_limit: int | None = field(default=None, validator=v.optional(v.ge(1)))  # quick runs
    split_seed: int = field(default=0, validator=limits.seed)
    verify: bool = True  # CIFAR: check each file's published md5 before reading it

    def augments_inputs(self, dataset: str) -> bool:
        """Whether the model inputs of the training split differ between epochs (random
        transforms): what the teacher cache needs to know before anything is built."""
        return self.augment and dataset != "mnist"  # MNIST is never augmented


def digits_file_digest() -> str:
    """The digits data file that scikit-learn ships (its contents name the data, not the version)."""
    from importlib.resources import files

    return files_digest([Path(str(files("sklearn.datasets") / "data" / "digits.csv.gz"))])


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


def _vision_class(name: str, verify: bool):
    import torchvision

    base = getattr(torchvision.datasets, _VISION[name][0])
    if name == "mnist":
        return base  # IDX files, parsed without pickle

    class Cifar(base):
        """torchvision's CIFAR data set, reading its pickled batches with :func:`safe_unpickle`
        (torchvision's reader runs ``pickle.load`` on whatever file sits at those paths). The
        published md5 of every file is checked first; ``verify = false`` skips that for files
        the user trusts (the tests write small files in the real format)."""

        def __init__(self, root, train=True, transform=None, download=False):
            torchvision.datasets.VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            if download:
                self.download()
            folder = Path(self.root) / self.base_folder
            files = self.train_list if train else self.test_list
            for file_name, md5 in [*files, [self.meta["filename"], self.meta["md5"]]]:
                if verify and file_md5(folder / file_name) != md5:
                    raise KdlabError(
                        f"data.root: {folder / file_name} does not have the published {name} checksum "
                        f"(md5 {md5}); replace it with the original file, or set data.verify = false "
                        "if you made or trust it")
            entries = [safe_unpickle(folder / f) for f, _ in files]
            data = [np.asarray(e["data"], dtype=np.uint8) for e in entries]
            self.targets = [int(t) for e in entries for t in e.get("labels", e.get("fine_labels", []))]
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC (checked by _check_arrays)
            self.classes = list(safe_unpickle(folder / self.meta["filename"])[self.meta["key"]])
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Cifar


def _check_arrays(name: str, split: str, ds) -> None:
    """The images have the format's size and every image has a label in range."""
    _, classes, (channels, height, width), *_ = _VISION[name]
    want = (height, width) if name == "mnist" else (height, width, channels)
    targets = torch.as_tensor(ds.targets)
    if tuple(ds.data.shape[1:]) != want:
        raise ValueError(f"{split} images are {tuple(ds.data.shape[1:])}, the format has {want}")
    if len(targets) != len(ds.data):
        raise ValueError(f"{split}: {len(ds.data)} images but {len(targets)} labels")
    if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < classes):
        raise ValueError(f"{split}: labels must lie in 0..{classes - 1}, found {int(targets.min())}..{int(targets.max())}")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What CIFAR's pickles contain: dicts, lists, strings, numbers and numpy arrays. The numpy
# names below only rebuild arrays, dtypes and scalars; anything else (os.system, eval, a class
# with __reduce__) is refused before it is called.
_SAFE_GLOBALS = {
    (module, attr)
    for prefix in ("numpy.core", "numpy._core")
    for module, attr in [(f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer")]
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR format")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def safe_unpickle(path: Path) -> dict:
    """A CIFAR batch or meta file as a dict, without running code a crafted file may hold."""
    with open(path, "rb") as f:
        entry = _SafeUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: val for k, val in entry.items()}


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
    cls = _vision_class(name, config.verify)
    try:
        train_aug = cls(str(root), train=True, transform=train_tf, download=config.download)
        train_clean = copy.copy(train_aug)  # the same files, read once, without augmentation
        train_clean.transform = eval_tf
        test = cls(str(root), train=False, transform=eval_tf)
        for split, ds in (("train", train_aug), ("test", test)):
            _check_arrays(name, split, ds)
    except KdlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable files: say which data set and where
        raise KdlabError(f"data.root: cannot read {name} from {root}: {exc}") from exc

    order = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(config.split_seed)).tolist()
    val_size = min(config.val_size, len(order) // 2)
    train_idx, val_idx = order[: len(order) - val_size], order[len(order) - val_size :]
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    augmented = config.augments_inputs(name)
    key = {"dataset": name, "root": str(root.resolve()),  # and the files' contents
           "files": files_digest(sorted({root / Path(f).parent for f in files}), root=root), **batch_settings(config)}
    if config.in_memory:
        images, labels = _as_tensors(train_aug)
        test_images, test_labels = _as_tensors(test)
        tensors = lambda ids, bs, shuffle, augment=None: TensorLoader(  # noqa: E731
            images[ids], labels[ids], bs, shuffle=shuffle, seed=seed, augment=augment, mean=mean, std=std)
        return DataBundle(
            train=tensors(torch.tensor(train_idx), config.batch_size, True, CropFlip(4, True) if augmented else None),
            val=tensors(torch.tensor(val_idx), config.eval_batch_size, False) if val_idx else None,
            test=TensorLoader(test_images, test_labels, config.eval_batch_size, shuffle=False, seed=seed, mean=mean, std=std),
            num_classes=classes, input_shape=shape, augmented=augmented, key=key)
    subset = torch.utils.data.Subset
    make = lambda ds, bs, shuffle: DatasetLoader(ds, bs, shuffle=shuffle, seed=seed, num_workers=config.num_workers,
                                                   pin_memory=config.num_workers > 0)  # noqa: E731
    return DataBundle(
        train=make(subset(train_aug, train_idx), config.batch_size, True),
        val=make(subset(train_clean, val_idx), config.eval_batch_size, False) if val_idx else None,
        test=make(test, config.eval_batch_size, False),
        num_classes=classes,
        input_shape=shape,
        augmented=augmented,
        key=key,
    )


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision MNIST/CIFAR data set's images as one uint8 tensor (N, C, H, W), and labels."""
    images = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)  # MNIST (N,H,W); CIFAR HWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def build_digits(config: DigitsConfig, seed: int) -> DataBundle:
    (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(config)
    return DataBundle(
        train=TensorLoader(xtr, ytr, config.batch_size, shuffle=True, seed=seed,
                           augment=CropFlip(1, False) if config.augment else None),
        val=TensorLoader(xva, yva, config.eval_batch_size, shuffle=False, seed=seed),
        test=TensorLoader(xte, yte, config.eval_batch_size, shuffle=False, seed=seed),
        num_classes=10,
        input_shape=(1, 8, 8),
        augmented=config.augment,
        key={"dataset": "digits", **attrs.asdict(config), "files": digits_file_digest()},
    )


def builder(name: str):
    """The build function of one torchvision data set (``mnist``, ``cifar10``, ``cifar100``)."""
    return lambda config, seed: build_vision(name, config, seed)


# the `kdlab.datasets` entry points: config class, builder
DIGITS = (DigitsConfig, build_digits)


def torchvision_dataset(name: str):
    """The entry point of ``mnist``, ``cifar10`` and ``cifar100``."""
    return TorchvisionConfig, builder(name)
