"""Runs a recipe: makes (or reopens) the run directory, builds the data, fits each stage in turn.

Run directory layout::

    <out>/<recipe name>/<run id>/
        recipe.toml              the resolved recipe (defaults merged, --set applied)
        metrics.json             stage -> metric -> final value, rewritten after each stage
        tb/<stage>/              TensorBoard event files
        checkpoints/<stage>/     last.pt and best.pt (resume state)
        models/<stage>.pt        the exported student of each finished stage
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path

import attrs
import tomli_w
import torch
import torch.distributed as dist

from kdlab.engine import checkpoint, rundir
from kdlab.engine.errors import KdlabError, WriteError
from kdlab.engine.loop import fit, label_stage
from kdlab.engine.plan import build_data, stage_configs, stage_manager, stage_plugins
from kdlab.engine.preflight import check_requirements, check_taps
from kdlab.engine.recipe import Recipe, load_recipe, pending_files, recipe_to_dict
from kdlab.engine.registry import Catalogue, discover
from kdlab.engine.stage_store import StageStore, stage_key_contents
from kdlab.engine.types import Stage

log = logging.getLogger("kdlab")


@attrs.frozen
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]


def resolve_device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise KdlabError("device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def _new_run_dir(out: Path, recipe: Recipe) -> Path:
    base = out / recipe.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        run_dir = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise KdlabError(f"{base}: cannot create a new run directory")


def _reopen(run_dir: Path, recipe: Recipe, catalogue: Catalogue) -> None:
    saved_path = run_dir / "recipe.toml"
    if not saved_path.is_file():
        raise KdlabError(f"{run_dir}: not a kdlab run directory (no recipe.toml)")
    saved = recipe_to_dict(load_recipe(saved_path, catalogue))
    now = recipe_to_dict(recipe)
    if saved != now:
        keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise KdlabError(
            f"{run_dir}: the recipe differs from the one this run started with (in: {', '.join(keys)}); "
            "resume with the same recipe and --set options"
        )
    _check_plugins(run_dir, recipe, catalogue)


PLUGINS_FILE = "plugins.json"


def _plugins_by_stage(recipe: Recipe, catalogue: Catalogue) -> dict[str, dict[str, str]]:
    """Stage -> {plugin: where it comes from (module, distribution, version)}."""
    return {name: {n: catalogue.plugins[n].origin for n in stage_plugins(recipe, catalogue, name) if n in catalogue.plugins}
            for name in recipe.stages}


def _check_plugins(run_dir: Path, recipe: Recipe, catalogue: Catalogue) -> None:
    """A resumed run's stages that are not finished run the plugins they started with: one that
    is no longer installed (a default-on one the recipe does not name, too) would change what
    the rest of the run computes without a word, so the resume stops before writing anything."""
    try:
        started = json.loads((run_dir / PLUGINS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a run directory of an older kdlab: nothing recorded
    metrics_path = run_dir / "metrics.json"
    finished = set(json.loads(metrics_path.read_text())) if metrics_path.is_file() else set()
    now = _plugins_by_stage(recipe, catalogue)
    for stage, plugins in started.items():
        if stage in finished or not isinstance(plugins, dict):
            continue
        current = now.get(stage, {})
        # a plugin registered in-process (discover(extra=...), a test's) was never installed
        for name in sorted(n for n in set(plugins) - set(current) if "(registered in-process)" not in plugins[n]):
            raise KdlabError(f"{run_dir}: stage '{stage}' was started with the plugin '{name}' ({plugins[name]}), "
                             "which is not installed now; install it again to continue this run, or start a new one")
        for name in sorted(set(current) - set(plugins)):
            log.warning("stage %s: plugin '%s' (%s) was installed after the run started; it runs from here on",
                        stage, name, current[name])
        for name in sorted(n for n in set(current) & set(plugins) if current[n] != plugins[n]):
            log.warning("stage %s: plugin '%s' is now %s (the run started with %s)", stage, name, current[name],
                        plugins[name])


def run(
    recipe_path: str | Path,
    *,
    overrides: list[str] = (),
    out: str | Path = "runs",
    resume: str | Path | None = None,
    run_id: str | None = None,
    catalogue: Catalogue | None = None,
    stage_store: str | Path | None = None,
    wait: bool = False,
    stages: list[str] | None = None,
    label: tuple[str, list[str]] | None = None,
) -> RunResult:
    """Train every stage of a recipe. ``resume`` continues the run in that directory;
    ``run_id`` names the run directory ``<out>/<recipe name>/<run_id>``, continuing it if it
    exists, so that the same command can be repeated until the run is complete.
    ``stage_store``: a directory of shared stages (see :mod:`kdlab.engine.stage_store`); a stage
    filed there is reused instead of trained. ``wait``: if another process holds the run
    directory, wait for it instead of failing. ``stages``: train only these; the others are read
    from the run directory (``resume``) or the stage store, and a named stage that needs one
    found in neither (its teacher, its ``init``) is an error before anything trains.
    ``label = (stage, splits)`` (``kdlab label``): train only the stages that stage reads (its
    teachers, its ``init``, and theirs) unless done, then fill its teacher cache's store over
    ``splits`` (:func:`kdlab.engine.loop.label`) and stop; the stage itself does not train."""
    catalogue = catalogue or discover()
    recipe = load_recipe(recipe_path, catalogue, overrides)
    if label is not None:
        stages = _check_label(recipe, recipe_path, *label)
    if stages is not None:
        unknown = [s for s in stages if s not in recipe.stages]
        if unknown or not (stages or label):
            raise KdlabError(f"--stages: {'no stage ' + ', '.join(repr(s) for s in unknown) if unknown else 'empty'} "
                             f"in {recipe_path} (its stages: {', '.join(recipe.stages)})")
    check_requirements(recipe, catalogue, recipe_path)  # what validate checks, before anything is written
    for stage_name, key, ref in pending_files(recipe):
        log.warning("stages.%s.%s = '%s' does not exist yet; it must exist when stage %s starts", stage_name, key, ref,
                    stage_name)
    rank, world_size = _init_distributed(resolve_device(recipe))
    if rank == 0:
        try:
            run_dir = _open_run_dir(recipe, catalogue, out, resume, run_id)
        except KdlabError as exc:
            _share(exc)
            raise
        _share(run_dir)
    else:  # the other ranks use the directory rank 0 made (or fail with its error)
        shared = _share(None)
        if isinstance(shared, KdlabError):
            raise shared
        run_dir = shared
    lock = rundir.RunLock(run_dir)
    if rank == 0:  # rank 0 writes the directory, so it holds the lock
        lock.acquire(wait=wait)
        for path in rundir.clean_stale_temp_files(run_dir):
            log.info("removed %s (left by an interrupted write)", path)
    try:
        with _determinism(recipe.deterministic):
            store = StageStore(stage_store) if stage_store is not None else None
            return _run_stages(recipe, catalogue, run_dir, rank, world_size, recipe_path, store,
                               None if stages is None else set(stages), label)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say where the run can be continued
        raise Interrupted(run_dir) from exc
    except (WriteError, OSError) as exc:  # a full disk: the same, once there is room
        exc.run_dir = run_dir
        raise
    finally:
        lock.release()


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; its last checkpoint stays valid in ``run_dir``."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def check_gpus(device: torch.device, nproc: int) -> None:
    """Training on CUDA takes one GPU per process (NCCL refuses two ranks on one GPU)."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise KdlabError(f"--nproc {nproc}: training on CUDA takes one GPU per process and this machine has "
                         f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --set device=cpu")


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size) from the environment torchrun sets; the process group is started here:
    nccl when the recipe trains on CUDA (one GPU per process), gloo on the CPU, also on a machine
    that has GPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        check_gpus(device, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        from kdlab.engine.processes import die_with_parent

        die_with_parent()  # a worker whose torchrun agent was killed stops (SIGTERM: saves, exits 143)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world_size > 1 else 0), world_size


def _share(obj):
    """Rank 0's ``obj`` on every rank (a no-op without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _open_run_dir(recipe, catalogue, out, resume, run_id) -> Path:
    if run_id is not None and resume is None:
        if not re.fullmatch(r"[A-Za-z0-9_.=-]+", run_id) or set(run_id) == {"."}:
            # one path component inside OUT/<recipe>: "." or ".." would put the run elsewhere
            raise KdlabError(f"--run-id {run_id!r}: use letters, digits and _ . = - only, and not . or ..")
        if (Path(out) / recipe.name / run_id / "recipe.toml").is_file():
            resume = Path(out) / recipe.name / run_id
        else:
            (Path(out) / recipe.name / run_id).mkdir(parents=True, exist_ok=True)
    if resume is not None:
        run_dir = Path(resume)
        _reopen(run_dir, recipe, catalogue)
        log.info("resuming %s", run_dir)
    else:
        run_dir = Path(out) / recipe.name / run_id if run_id is not None else _new_run_dir(Path(out), recipe)
        checkpoint.save_json(_plugins_by_stage(recipe, catalogue), run_dir / PLUGINS_FILE)
        checkpoint.save_text(tomli_w.dumps(recipe_to_dict(recipe)), run_dir / "recipe.toml")  # last: "a run"
        log.info("run directory: %s", run_dir)
    return run_dir


@contextlib.contextmanager
def _determinism(on: bool):
    """Deterministic kernels for the run, and the process's previous settings back afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new tensor with NaN finds reads of uninitialised memory; it does not
        # change results, and costs time on every allocation.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]
        torch.backends.cudnn.benchmark = before[3]


def _run_stages(recipe: Recipe, catalogue: Catalogue, run_dir: Path, rank: int, world_size: int,
                recipe_path: str | Path, store: StageStore | None = None, only: set[str] | None = None,
                label: tuple[str, list[str]] | None = None) -> RunResult:
    device = resolve_device(recipe)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    data = build_data(catalogue, recipe)
    check_taps(recipe, catalogue, recipe_path, data)  # before any stage trains
    for loader in (data.train, data.val, data.test):
        if loader is not None and hasattr(loader, "to"):  # in-memory data sets live on the device
            loader.to(device)
    if world_size > 1:
        data.train.shard(rank, world_size)

    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    done = {name for name in metrics if (run_dir / "models" / f"{name}.pt").is_file()}
    # rank 0's view, taken before anyone writes: another rank looking later could see a stage
    # that rank 0 has just finished and skip it, leaving rank 0 alone in the stage's barrier
    metrics, done = _share((metrics, done))
    keys = stage_key_contents(recipe, catalogue, data.key) if store is not None else {}
    if only is not None:  # rank 0 decides (it reads the store), every rank follows
        filed = _share({n for n in recipe.stages if n not in only and n not in done and store is not None
                        and store.has(keys[n][0])} if rank == 0 else None)
        _check_subset(recipe, only, done | filed, run_dir, store)
    for index, (name, config) in enumerate(recipe.stages.items()):
        if label is not None and name == label[0]:  # its upstream stages are done: label, then stop
            _fit_stage(recipe, catalogue, run_dir, rank, world_size, device, data, index, name, config, label[1])
            break
        if name in done:
            log.info("stage %s: already complete, skipped", name)
            continue
        if only is not None and name not in only and name not in filed:
            log.info("stage %s: not in --stages, and neither the run directory nor the stage store has it: "
                     "not trained", name)
            continue
        if store is not None and any(str(v).startswith("missing:") for v in keys[name][1]["inputs"].values()):
            # a teacher file that did not exist when the run started may exist now: key it by its bytes
            keys = stage_key_contents(recipe, catalogue, data.key)
        # rank 0 alone holds the store's lock on the stage; every rank follows its decision
        with store.claim(keys[name][0], name, keys[name][1]) if store is not None and rank == 0 else contextlib.nullcontext() as claim:
            if _share(claim is not None and claim.metrics is not None):
                if rank == 0:
                    metrics[name] = claim.restore(run_dir, name)
                    checkpoint.save_json(metrics, metrics_path)
                if world_size > 1:
                    dist.barrier()
                continue
            if only is not None and name not in only:  # its entry was removed since the check above
                raise KdlabError(f"stage {name}: its stage store entry went away while this run started; "
                                 f"add {name} to --stages to train it")
            metrics[name] = _fit_stage(recipe, catalogue, run_dir, rank, world_size, device, data, index, name,
                                       config)
            if rank == 0:
                checkpoint.save_json(metrics, metrics_path)
                if claim is not None:
                    claim.publish(run_dir, name, metrics[name])
            if world_size > 1:
                dist.barrier()  # the next stage may load this stage's exported model
    return RunResult(run_dir=run_dir, metrics=metrics)


def _check_subset(recipe: Recipe, only: set[str], present: set[str], run_dir: Path, store) -> None:
    """Each stage to train under ``--stages`` finds the earlier stages it reads (its teachers, its
    ``init``) trained now, in the run directory or in the stage store."""
    for name in (n for n in recipe.stages if n in only):
        cfg = recipe.stages[name]
        reads = [(ref, "a teacher") for ref in cfg.teachers if ref in recipe.stages]
        reads += [(cfg.init, "the init")] if cfg.init in recipe.stages else []
        for ref, role in reads:
            if ref not in only and ref not in present:
                where = f"the run directory {run_dir}" + (f" or the stage store {store.root}" if store else "")
                raise KdlabError(f"--stages {','.join(n for n in recipe.stages if n in only)}: stage '{name}' reads "
                                 f"stage '{ref}' ({role}), which is not trained in this command and is not in {where}; "
                                 f"add {ref} to --stages, or resume a run that finished it (--resume RUN_DIR)"
                                 + ("" if store else ", or give the --stage-store that filed it"))


def _check_label(recipe: Recipe, recipe_path, name: str, splits: list[str]) -> list[str]:
    """``kdlab label``'s stage and splits checked; the stages it reads, to train first."""
    if name not in recipe.stages:
        raise KdlabError(f"--stage: no stage '{name}' in {recipe_path} (its stages: {', '.join(recipe.stages)})")
    cfg = recipe.stages[name]
    cache = cfg.methods.get("teacher_cache")
    if cache is None or getattr(cache, "dir", None) is None:
        raise KdlabError(f"stages.{name}.methods.teacher_cache{'.dir' if cache is not None else ''}: kdlab label "
                         f"fills a teacher cache kept on disk, and stage '{name}' has none; add e.g. "
                         "methods.teacher_cache = { topk = 64, compact = true, dir = \"cache\" }")
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad or not splits:
        raise KdlabError(f"--splits: {', '.join(repr(s) for s in bad) or 'empty'}; the splits are train, val and test")
    upstream, todo = [], [name]
    while todo:
        stage = recipe.stages[todo.pop()]
        for ref in [*stage.teachers, stage.init]:
            if ref in recipe.stages and ref not in upstream:
                upstream.append(ref)
                todo.append(ref)
    return [s for s in recipe.stages if s in upstream]


def _fit_stage(recipe, catalogue, run_dir, rank, world_size, device, data, index, name, config,
               label_splits: list[str] | None = None) -> dict:
    names = stage_plugins(recipe, catalogue, name, world_size)
    stage = Stage(
        name=name,
        index=index,
        config=config,
        recipe=recipe,
        run_dir=run_dir,
        device=device,
        data=data,
        pm=stage_manager(recipe, catalogue, name, world_size),
        catalogue=catalogue,
        method_configs=stage_configs(recipe, name),
        rank=rank,
        world_size=world_size,
    )
    if rank == 0:
        log.info("stage %s: plugins %s", name, ", ".join(names))
    if label_splits is not None:
        label_stage(stage, label_splits)
        return {}
    return fit(stage)
