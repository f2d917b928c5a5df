"""The loader base every data set shares: per-epoch seeding, sharding of global batches across
ranks, and two loaders (in-memory tensors; a DataLoader over a map-style data set).

A loader is iterable over :class:`~kdlab.engine.types.Batch`, sized, and follows the
``Loader`` protocol of :mod:`kdlab.engine.types`:

* ``set_epoch(epoch)``: the shuffle order (and any random augmentation) of an epoch is a pure
  function of (seed, epoch) — :func:`epoch_seed` — so a resumed run sees the same batches;
* ``shard(rank, world_size)``: the loader yields this rank's contiguous part of every *global*
  batch (:func:`shard_slice`), so N processes together see exactly the batches one would.
"""

from __future__ import annotations

import attrs
import torch

from kdlab.engine.limits import torch_seed
from kdlab.engine.types import Batch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle order (and augmentation) for a recipe seed."""
    return seed * 1_000_003 + epoch


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of one batch's random augmentation within an epoch."""
    return torch_seed(epoch_seed(seed, epoch) * 100_003 + batch)


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` samples (sizes differ by at most 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shard_sizes(n: int, world_size: int) -> tuple[int, ...]:
    """Every rank's number of samples in a global batch of ``n`` (see :func:`shard_slice`)."""
    base, extra = divmod(n, world_size)
    return tuple(base + (rank < extra) for rank in range(world_size))


def batch_settings(config) -> dict:
    """A data config's settings as they enter cache and stage keys: all but ``num_workers``,
    since worker processes make the same batches as the main process."""
    return attrs.asdict(config, filter=lambda a, _: a.name != "num_workers")


class BatchLoader:
    """The bookkeeping every in-memory loader shares: the epoch (set by the loop), this rank's
    share of each global batch, and the batch count. Subclasses set ``batch_size`` and define
    ``num_samples`` and ``__iter__`` (calling :meth:`my_part` on each global batch's indices)."""

    batch_size: int
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    even: bool = False  # see even_shards

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def even_shards(self) -> None:
        """Give every rank the same number of samples in every step (``[plugins.distributed]
        even_shards``): each global batch is cut to a multiple of the number of processes, so
        an epoch's last batch loses up to N - 1 samples, and stock DDP averaging applies."""
        self.even = True

    def trimmed(self, n: int) -> int:
        """How many samples of a global batch of ``n`` are used (all, unless even shards)."""
        return n - n % self.world_size if self.even and self.world_size > 1 else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_part(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch's sample indices."""
        return idx[shard_slice(len(idx), self.rank, self.world_size)] if self.world_size > 1 else idx

    def shares(self, n: int) -> tuple[int, ...] | None:
        """Every rank's share of a global batch of ``n`` samples, for ``Batch.shards`` (None in
        one process)."""
        return shard_sizes(n, self.world_size) if self.world_size > 1 else None

    def my_first(self, n: int) -> int:
        """Where this rank's part of a global batch of ``n`` samples starts in it."""
        return shard_slice(n, self.rank, self.world_size).start if self.world_size > 1 else 0

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (self.trimmed(rest) > 0)


class TensorLoader(BatchLoader):
    """Batches straight from in-memory tensors.

    Written by hand because a DataLoader over a TensorDataset indexes and collates every sample
    on its own, which costs more than the whole forward pass of a small CNN on 8x8 images;
    indexing the tensors with a permutation does the same job in one operation.

    Images may be held as uint8 (a quarter of float32's memory): each batch is converted
    (``/ 255``) and normalised with ``mean`` and ``std`` (per channel) after augmentation.
    ``to(device)`` moves the data set to the GPU once, so that batches are cut, augmented and
    normalised there. ``augment`` (:class:`~kdlab.data.augment.CropFlip`) draws a random crop
    and flip per sample from the epoch's generator, for the *global* batch (so ``--nproc N``
    sees the views one process sees); with :meth:`fix_views` each sample instead replays one of
    a fixed set of draws (the augmentation-aware teacher cache), named by ``Batch.view``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int,
                 augment=None, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.augment = augment
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.view_table: torch.Tensor | None = None  # (samples, views, 3) fixed draws

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> TensorLoader:
        """Hold the data set on ``device`` (a GPU: batches then never cross the bus)."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def fix_views(self, views: int | None) -> None:
        """From now on each sample is shown as one of ``views`` fixed augmentation draws, chosen
        anew every epoch; ``None`` returns to fresh draws. The draws are a function of the seed."""
        if views is None or self.augment is None:
            self.view_table = None
            return
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, -1))
        self.view_table = self.augment.draw(len(self.x) * views, generator).view(len(self.x), views, 3)

    def view_batches(self, batch_size: int):
        """Every (sample, view) pair of :meth:`fix_views` once, sample-major, unsharded: what
        the teacher cache labels."""
        n, views = self.view_table.shape[:2]
        pairs = torch.arange(n * views)
        for start in range(0, n * views, batch_size):
            chunk = pairs[start : start + batch_size]
            idx, view = chunk // views, chunk % views
            yield self._batch(idx, self.view_table[idx, view], view)

    def __iter__(self):
        n = len(self.x)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            idx = idx[: self.trimmed(len(idx))]
            if len(idx) == 0:
                continue
            params = view = None
            if self.view_table is not None:
                view = torch.randint(0, self.view_table.shape[1], (len(idx),), generator=generator)
                params = self.view_table[idx, view]
            elif self.augment is not None:
                params = self.augment.draw(len(idx), generator)
            shards = self.shares(len(idx))
            if self.world_size > 1:
                part = shard_slice(len(idx), self.rank, self.world_size)
                idx = idx[part]
                params = None if params is None else params[part]
                view = None if view is None else view[part]
            yield self._batch(idx, params, view, shards)

    def _batch(self, idx: torch.Tensor, params: torch.Tensor | None, view: torch.Tensor | None,
               shards: tuple[int, ...] | None = None) -> Batch:
        on = idx.to(self.x.device, non_blocking=True)
        x = self.x[on]
        if params is not None:
            x = self.augment.apply(x, params)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return Batch(x, self.y[on], idx, view=view, shards=shards)


class WorkerBatches(BatchLoader):
    """A loader whose batch ``b`` of an epoch is a pure function ``make_batch(epoch, b)`` (its
    samples, and its augmentation drawn from a generator seeded by (seed, epoch, b)), so batches
    can be made in ``num_workers`` DataLoader worker processes, in order, while the main process
    trains: the same batches as in the main process, so resume stays exact. The workers persist
    across epochs (the main process sends them (epoch, b) keys). Subclasses define
    ``num_samples``, ``num_batches(epoch)`` and ``make_batch(epoch, b)``, and set ``num_workers``."""

    num_workers: int = 0
    even_shards = None  # make_batch cuts each rank's part itself: even shards are not offered

    def num_batches(self, epoch: int) -> int:
        return len(self)

    def make_batch(self, epoch: int, b: int) -> Batch:
        raise NotImplementedError

    def __iter__(self):
        if self.num_workers == 0:
            return (self.make_batch(self.epoch, b) for b in range(self.num_batches(self.epoch)))
        if self.__dict__.get("_workers") is None:
            self._workers = torch.utils.data.DataLoader(
                _MadeBatches(self), sampler=_BatchKeys(self), batch_size=None, num_workers=self.num_workers,
                persistent_workers=True, pin_memory=torch.cuda.is_available())
        return iter(self._workers)

    def __getstate__(self):  # what a worker process receives (spawn): the loader without its workers
        return {k: v for k, v in self.__dict__.items() if k != "_workers"}


class _BatchKeys(torch.utils.data.Sampler):
    def __init__(self, owner: WorkerBatches):
        self.owner = owner

    def __iter__(self):  # in the main process, where set_epoch was called
        epoch = self.owner.epoch
        return iter([(epoch, b) for b in range(self.owner.num_batches(epoch))])

    def __len__(self):
        return self.owner.num_batches(self.owner.epoch)


class _MadeBatches(torch.utils.data.Dataset):
    def __init__(self, owner: WorkerBatches):
        self.owner = owner

    def __getitem__(self, key):
        return self.owner.make_batch(*key)


class DatasetLoader:
    """A DataLoader over a map-style data set of ``(input, target)`` pairs whose shuffling is
    re-seeded per epoch. ``num_workers`` > 0 decodes and augments in worker processes, and
    ``pin_memory`` puts batches in page-locked memory so that ``Batch.to(cuda)``'s
    ``non_blocking`` copies overlap with compute (only useful with CUDA)."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0,
                 pin_memory: bool = False):
        self.generator = torch.Generator()
        self.seed = seed
        sampler = (torch.utils.data.RandomSampler(dataset, generator=self.generator) if shuffle
                   else torch.utils.data.SequentialSampler(dataset))
        self.batches = _ShardedBatches(sampler, batch_size)
        self.loader = torch.utils.data.DataLoader(
            _Indexed(dataset), batch_sampler=self.batches, num_workers=num_workers, collate_fn=_collate,
            persistent_workers=False, pin_memory=pin_memory and torch.cuda.is_available(),
        )
        self.set_epoch(0)

    def shard(self, rank: int, world_size: int) -> None:
        self.batches.rank, self.batches.world_size = rank, world_size

    def even_shards(self) -> None:
        """See :meth:`BatchLoader.even_shards`."""
        self.batches.even = True

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(epoch_seed(self.seed, epoch))

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __len__(self) -> int:
        if not self.batches.even or self.batches.world_size == 1:
            return len(self.loader)
        full, rest = divmod(self.num_samples, self.batches.batch_size)
        return full + (rest >= self.batches.world_size)

    def __iter__(self):
        return iter(self.loader)


class _ShardedBatches(torch.utils.data.BatchSampler):
    """Global batches from the sampler; in distributed training, this rank's part of each."""

    def __init__(self, sampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)
        self.rank, self.world_size, self.even = 0, 1, False

    def __iter__(self):
        for batch in super().__iter__():
            if self.world_size == 1:
                yield batch
                continue
            if self.even:
                batch = batch[: len(batch) - len(batch) % self.world_size]
                if not batch:
                    continue
            # each key carries the global batch's shares, for Batch.shards (see _collate)
            shards = shard_sizes(len(batch), self.world_size)
            yield [(i, shards) for i in batch[shard_slice(len(batch), self.rank, self.world_size)]]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        i, shards = key if isinstance(key, tuple) else (key, None)
        x, y = self.dataset[i]
        return x, y, i, shards


def _collate(items):
    xs, ys, idx, shards = zip(*items)
    return Batch(torch.stack(xs), torch.as_tensor(ys), torch.as_tensor(idx), shards=shards[0])
