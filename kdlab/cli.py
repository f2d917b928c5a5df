"""The ``kdlab`` command line: run, validate, plugins, report.

User errors (a bad recipe, a missing file) print one message per problem and exit with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import tomli_w

from kdlab.engine import report
from kdlab.engine.errors import KdlabError, RecipeError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Knowledge-distillation experiments from TOML recipes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, recipe=True):
        if recipe:
            p.add_argument("recipe", help="recipe file (TOML)")
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a recipe key, e.g. --set stages.student.epochs=5 (repeatable)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    p = sub.add_parser("run", help="train every stage of a recipe")
    common(p)
    p.add_argument("--out", default="runs", help="parent directory of run directories (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="train with N processes on this machine (data parallel; gloo on the CPU, nccl on CUDA)")
    p.add_argument("--run-id", metavar="ID", help="name the run directory OUT/<recipe name>/ID; if it exists, "
                   "continue it (a finished run is not trained again)")
    p.add_argument("--stages", metavar="A,B", type=lambda s: [x for x in s.split(",") if x],
                   help="train only these stages (comma-separated); the others are read from the run directory "
                        "(--resume, --run-id) or the stage store, or left out when nothing here needs them")
    p.add_argument("--stage-store", metavar="DIR", help="reuse a stage filed in DIR by an earlier run with the same "
                   "settings and inputs instead of training it, and file the stages trained here")

    p = sub.add_parser("label", help="run a stage's teachers once over the corpus into its teacher cache's store "
                       "(methods.teacher_cache with dir; compact = true for a language model's sharded top-k store), "
                       "training first only the stages it reads; later runs of any recipe with the same teacher, "
                       "tokenizer and corpus read the store")
    common(p)
    p.add_argument("--stage", required=True, help="the stage whose teacher cache is filled")
    p.add_argument("--splits", default="train", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated splits to label (default: train, the one training reads)")
    p.add_argument("--out", default="runs", help="parent directory of run directories, for the teachers' stages "
                   "if they train (default: runs)")
    p.add_argument("--run-id", metavar="ID", help="the run directory OUT/<recipe name>/ID (continued if it exists): "
                   "`kdlab run RECIPE --run-id ID` then trains the stage from the store")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="label with N processes on this machine, each writing its own shards")

    p = sub.add_parser("sweep", help="run every combination of a recipe's [sweep] table")
    common(p)
    p.add_argument("--out", default="runs", help="parent directory of run directories (default: runs)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs and their state")
    p.add_argument("--print-commands", action="store_true",
                   help="print one `kdlab run` command per run, for an external scheduler")
    p.add_argument("--no-shared-stages", action="store_true", help="train every stage of every run, even one "
                   "that is the same in several runs (default: such a stage trains once, in OUT/.kdlab-stages)")

    p = sub.add_parser("search", help="search a recipe's [search] space with Optuna (pruning, Pareto objectives, "
                       "workers on one study)")
    common(p)
    p.add_argument("--out", default="runs", help="parent directory of run directories (default: runs); the study "
                   "is OUT/<recipe name>")
    p.add_argument("--storage", metavar="URL", help="Optuna storage shared by workers: a database URL "
                   "(postgresql://..., mysql://..., sqlite:///...) or journal:PATH (default: sqlite OUT/<name>/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the recipe's name)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine, each running trials "
                   "(default 1); start more on other machines with the same --storage and --study")
    p.add_argument("--dry-run", action="store_true", help="validate the search and show the study's state")

    p = sub.add_parser("validate", help="check a recipe and show the plugins and hook order, without training")
    common(p)

    p = sub.add_parser("plugins", help="list installed plugins, their hooks and settings")
    common(p, recipe=False)

    p = sub.add_parser("report", help="one comparison table over runs and stages; runs differing only by "
                       "seed are aggregated (mean ± std, best and last epoch)")
    common(p, recipe=False)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or directories holding them")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument("--per-run", action="store_true", help="one row per run and stage, no aggregation")
    p.add_argument("--metric", default="test/accuracy", help="metric for the Pareto front and plots")
    p.add_argument("--stages", help="comma-separated stages to show (and to put on the Pareto front and plots)")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots (metric vs MACs, params, bytes; curves) "
                   "and the same as TensorBoard images to DIR")
    p.add_argument("--published", metavar="FILE", help="the runs as a published table (rows: teacher -> student "
                   "pairs, columns: methods) with the published values beside (e.g. docs/published/cifar100.toml)")
    p.add_argument("--rows", metavar="KEYS", help="the paper layout for any sweep: comma-separated recipe keys "
                   "that make the rows (e.g. stages.teacher.model.arch,stages.student.model.arch); with --columns")
    p.add_argument("--columns", metavar="KEY", help="the recipe key that makes the columns of the paper layout "
                   "(e.g. stages.student.methods, named by the methods)")
    p.add_argument("--stage", default="student", help="the stage whose --metric the paper layout shows (default: student)")
    p = sub.add_parser("store", help="the stage store: list its entries, verify their checksums, remove entries")
    common(p, recipe=False)
    store = p.add_subparsers(dest="action", required=True)
    q = store.add_parser("list", help="every entry: key, stage, size, age, the run that filed it and what made it")
    q.add_argument("dir", help="the store (kdlab sweep / search: OUT/.kdlab-stages)")
    q.add_argument("--verbose", "-v", action="store_true", help="also what the key hashes (code, settings, data)")
    q = store.add_parser("verify", help="check every entry's files against their checksums (exit 1 if one is damaged)")
    q.add_argument("dir")
    q.add_argument("--remove-damaged", action="store_true", help="delete the damaged entries")
    q = store.add_parser("remove", help="delete entries: by key, all, or those filed before a date")
    q.add_argument("dir")
    q.add_argument("keys", nargs="*", metavar="KEY", help="entries to delete (a unique prefix is enough)")
    q.add_argument("--all", action="store_true", help="every entry")
    q.add_argument("--older-than", metavar="DATE", help="entries filed before DATE (YYYY-MM-DD or an ISO time)")

    p = sub.add_parser("data", help="generate a synthetic corpus (speech data sets cannot be downloaded here)")
    common(p, recipe=False)
    data = p.add_subparsers(dest="corpus", required=True)
    q = data.add_parser("kws", help="keyword-spotting clips in the Speech Commands layout (espeak-ng voices)")
    q.add_argument("--out", required=True, help="corpus directory (created)")
    q.add_argument("--keyword", default="sheila")
    q.add_argument("--clips", type=int, default=8000, help="number of 1-second clips (default 8000)")
    q.add_argument("--keyword-fraction", type=float, default=0.05, help="share of keyword clips (default 0.05)")
    q.add_argument("--seed", type=int, default=0)

    q = data.add_parser("ru-phonemes", help="Russian utterances with IPA phoneme labels (espeak-ng voices)")
    q.add_argument("--out", required=True, help="corpus directory (created)")
    q.add_argument("--utterances", type=int, default=3000, help="number of utterances (default 3000)")
    q.add_argument("--min-words", type=int, default=2)
    q.add_argument("--max-words", type=int, default=6)
    q.add_argument("--seed", type=int, default=0)
    q = data.add_parser("dialogues", help="personalised dialogues with long-term-memory questions (Russian, English)")
    q.add_argument("--out", required=True, help="corpus directory (created): train/val/test.jsonl")
    q.add_argument("--dialogues", type=int, default=2000, help="number of dialogues (default 2000)")
    q.add_argument("--langs", default="ru,en", help="comma-separated languages, alternating (default ru,en)")
    q.add_argument("--seed", type=int, default=0)
    q = data.add_parser("common-voice", help="convert a Common Voice folder (TSV files + clips/) to a manifest")
    q.add_argument("root", help="the Common Voice language folder (train.tsv, dev.tsv, test.tsv, clips/)")
    q.add_argument("--out", required=True, help="directory for manifest.jsonl and phonemes.txt")
    q.add_argument("--voice", default="ru", help="espeak-ng voice that phonemises the sentences (default ru)")

    p = sub.add_parser("export", help="an exported language model as a Hugging Face transformers directory "
                       "(weights, configuration, tokenizer, generation settings)")
    common(p, recipe=False)
    p.add_argument("model", help="an exported transformer_lm (RUN_DIR/models/<stage>.pt)")
    p.add_argument("--out", required=True, help="the directory to write (AutoModelForCausalLM / AutoTokenizer read it)")
    p.add_argument("--format", choices=["transformers"], default="transformers")
    p.add_argument("--tokenizer", help="the tokenizer.json it was trained with (default: RUN_DIR/tokenizer.json)")
    p.add_argument("--adapter", action="store_true", help="a LoRA student: write its adapter alone (peft), "
                   "not the merged model")

    p = sub.add_parser("kws-stream", help="keyword probability over time for an audio file, chunk by chunk")
    common(p, recipe=False)
    p.add_argument("model", help="an exported CRNN (RUN_DIR/models/<stage>.pt)")
    p.add_argument("audio", help="16 kHz audio file")
    p.add_argument("--chunk-ms", type=int, default=100, help="chunk length in milliseconds (default 100)")
    p.add_argument("--window-s", type=float, default=1.0, help="attention window in seconds (default 1.0)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability that counts as a detection")
    p.add_argument("--mode", choices=["window", "carry"], default="window",
                   help="window: the GRU reruns over the last window's conv outputs each chunk (equals the offline "
                        "model on that window); carry: the GRU state is carried (cheaper, drifts on long audio)")
    p.add_argument("--plot", metavar="PNG", help="write the probability curve here (default: next to the audio)")
    p.add_argument("--export", metavar="PT", help="also save the streaming detector as TorchScript here")
    p = sub.add_parser("transcribe", help="phonemes of audio files with an exported CTC model")
    common(p, recipe=False)
    p.add_argument("model", help="an exported wav2vec2_ctc or conformer_ctc (RUN_DIR/models/<stage>.pt)")
    p.add_argument("audio", nargs="+", help="audio files (any rate; resampled to 16 kHz)")
    p.add_argument("--beam", type=int, default=0, help="beam size (flashlight-text); 0: greedy (default)")
    return parser


def cmd_transcribe(args) -> int:
    from kdlab.speech import transcribe

    return transcribe.cli(args)


def cmd_data(args) -> int:
    if args.corpus == "dialogues":
        from kdlab.data import dialogue_corpus

        if args.dialogues < 10:
            raise KdlabError("--dialogues must be >= 10 (80/10/10 split)")
        try:
            summary = dialogue_corpus.generate(args.out, dialogues=args.dialogues, seed=args.seed,
                                               langs=tuple(x.strip() for x in args.langs.split(",") if x.strip()))
        except ValueError as exc:
            raise KdlabError(f"--langs: {exc}") from None
        for split, info in summary.items():
            print(f"{split:5}: {info['dialogues']} dialogues, {info['turns']} turns")
        print(f"corpus written to {args.out}")
        return 0
    if args.corpus == "ru-phonemes":
        from kdlab.speech import ru_corpus

        if args.utterances < 1 or not 1 <= args.min_words <= args.max_words:
            raise KdlabError("--utterances must be >= 1 and 1 <= --min-words <= --max-words")
        summary = ru_corpus.generate(args.out, utterances=args.utterances, seed=args.seed, min_words=args.min_words,
                                     max_words=args.max_words, progress=sys.stderr.isatty())
        for split, info in summary["splits"].items():
            print(f"{split:5}: {info['utterances']} utterances, {info['hours']} h, {len(info['voices'])} voices")
        print(f"{summary['phonemes']} phonemes; manifest: {args.out}/manifest.jsonl")
        return 0
    if args.corpus == "common-voice":
        from kdlab.speech.common_voice import convert_common_voice

        summary = convert_common_voice(args.root, args.out, voice=args.voice)
        for line in summary["skipped"]:
            print(f"kdlab: skipped {line}", file=sys.stderr)
        print(f"{summary['utterances']} utterances ({len(summary['skipped'])} skipped), {summary['phonemes']} "
              f"phonemes; manifest: {args.out}/manifest.jsonl")
        return 0
    if args.clips < 1 or not 0 < args.keyword_fraction < 1:
        raise KdlabError("--clips must be >= 1 and --keyword-fraction in (0, 1)")
    from kdlab.speech import kws_corpus

    summary = kws_corpus.generate(args.out, args.keyword, clips=args.clips, keyword_fraction=args.keyword_fraction,
                                  seed=args.seed, progress=sys.stderr.isatty())
    for split, info in summary["splits"].items():
        print(f"{split:5}: {info['clips']} clips, {info['keyword']} '{args.keyword}', {len(info['voices'])} voices")
    print(f"corpus written to {args.out}")
    return 0


def cmd_run(args) -> int:
    import os

    from kdlab.engine.runner import run

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    result = run(args.recipe, overrides=args.overrides, out=args.out, resume=args.resume, run_id=args.run_id,
                 stage_store=args.stage_store, stages=args.stages)
    if os.environ.get("RANK", "0") != "0":
        return 0
    rows = [{"stage": s, **m} for s, m in result.metrics.items()]
    print(report.markdown(rows, with_run=False, preferred_only=True))
    print(f"\nall metrics: {result.run_dir / 'metrics.json'} (or kdlab report {result.run_dir} --per-run)")
    print(f"run directory: {result.run_dir}")
    if (result.run_dir / "tb").is_dir():  # not when TensorBoard was switched off
        print(f"tensorboard --logdir {result.run_dir / 'tb'}")
    return 0


def cmd_label(args) -> int:
    import os

    from kdlab.engine.runner import run

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    result = run(args.recipe, overrides=args.overrides, out=args.out, run_id=args.run_id,
                 label=(args.stage, args.splits))
    if os.environ.get("RANK", "0") == "0":
        print(f"stage {args.stage}: its teachers' outputs over {', '.join(args.splits)} are in its teacher cache "
              f"(the log names the store); train from it with: kdlab run {args.recipe} --resume {result.run_dir}")
    return 0


def _relaunch(args) -> int:
    """``--nproc N`` of ``kdlab run`` and ``kdlab label``: this command again in N processes."""
    from kdlab.engine.preflight import check_requirements
    from kdlab.engine.processes import die_with_parent
    from kdlab.engine.recipe import load_recipe
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import check_gpus, resolve_device

    # what would fail in every process fails here once, before any is started
    catalogue = discover()
    recipe = load_recipe(args.recipe, catalogue, args.overrides)
    check_requirements(recipe, catalogue, args.recipe)
    check_gpus(resolve_device(recipe), args.nproc)
    # relaunch through torchrun, which starts N copies of this command with their ranks
    argv, skip = [], False
    for a in args.argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        skip = a == "--nproc"
        if not skip:
            argv.append(a)
    cmd = [sys.executable, "-m", "kdlab.engine.launch", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "kdlab", *argv]
    # killed (even with SIGKILL), this launcher takes torchrun with it, and torchrun its workers
    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers save and stop, rank 0 says how to continue
        try:  # a terminal's Ctrl-C or a scheduler's killpg reached them too; they stop within a step
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the signal was for this process alone: pass it on
            proc.send_signal(signal.SIGTERM)
            return proc.wait()


def cmd_sweep(args) -> int:
    from pathlib import Path

    from kdlab.engine.registry import discover
    from kdlab.studies import sweep

    catalogue = discover()
    plan = sweep.plan(args.recipe, catalogue, args.overrides, shared_stages=not args.no_shared_stages)
    out = Path(args.out)
    if args.print_commands:
        print(sweep.print_commands(plan, out))
        return 0
    if args.dry_run:
        for r in plan.runs:
            print(f"{sweep.status(plan.run_dir(out, r), plan.stages):12} {r.run_id}  " +
                  " ".join(r.overrides))
        print(f"{len(plan.runs)} runs; nothing was trained (--dry-run)")
        return 0
    results = sweep.execute(plan, out=out, jobs=args.jobs, catalogue=catalogue)
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    for run_id, state in failed.items():
        print(f"kdlab: sweep run {run_id} {state}", file=sys.stderr)
    print(f"sweep {plan.name}: {len(results) - len(failed)} of {len(results)} runs complete under {out / plan.name}")
    print(f"compare them: kdlab report {out / plan.name}")
    return 1 if failed else 0


def cmd_search(args) -> int:
    from pathlib import Path

    from kdlab.engine.registry import discover
    from kdlab.studies import search

    catalogue = discover()
    plan = search.plan(args.recipe, catalogue, args.overrides)
    out = Path(args.out)
    if args.workers < 1:
        raise KdlabError(f"--workers must be >= 1, got {args.workers}")
    if args.dry_run:
        study = search.open_study(plan, out / plan.name, args.storage, args.study)
        print(f"search {study.study_name}: {len(plan.config.params)} keys, objectives "
              + ", ".join(f"{o.stage} {o.metric} ({o.direction})" for o in plan.objectives)
              + f", {len(plan.config.seeds)} seed(s) per trial; {search.counted(study)} trials done of "
              f"{plan.config.trials or 'unlimited'}; nothing was trained (--dry-run)")
        return 0
    if args.workers > 1:
        argv, skip = [], False
        for a in args.argv:  # this command without --workers N
            if skip or a.startswith("--workers="):
                skip = False
                continue
            skip = a == "--workers"
            if not skip:
                argv.append(a)
        code = search.spawn_workers(argv, args.workers, out / plan.name)
    else:
        search.execute(plan, out=out, storage_url=args.storage, study_name=args.study, catalogue=catalogue)
        code = 0
    print(search.report(out / plan.name), end="")
    print(f"\nstudy directory: {out / plan.name}; plots: kdlab report {out / plan.name} --plots DIR")
    return code


def cmd_validate(args) -> int:
    from kdlab.engine.recipe import load_recipe, read_toml, recipe_to_dict
    from kdlab.engine.plan import stage_manager, stage_plugins
    from kdlab.engine.registry import call_order, discover

    catalogue = discover()
    recipe = load_recipe(args.recipe, catalogue, args.overrides)
    from kdlab.engine.preflight import check_requirements, check_taps

    check_requirements(recipe, catalogue, args.recipe)
    check_taps(recipe, catalogue, args.recipe)
    print(f"# {args.recipe}: valid\n# resolved recipe\n")
    from kdlab.engine.recipe import pending_files

    for stage, key, ref in pending_files(recipe):
        print(f"# note: stages.{stage}.{key} = '{ref}' does not exist yet; it must exist when stage {stage} starts "
              "(a model another run exports)")
    print(tomli_w.dumps(recipe_to_dict(recipe)))
    from kdlab.studies import sweep

    if sweep.read_sweep(args.recipe):
        print(f"# sweep: {len(sweep.plan(args.recipe, catalogue, args.overrides).runs)} runs, every one valid\n")
    if "search" in read_toml(args.recipe)[1]:
        from kdlab.studies import search

        found = search.plan(args.recipe, catalogue, args.overrides)
        print(f"# search: {len(found.config.params)} keys, every range end and choice valid; objectives "
              + ", ".join(f"{o.stage} {o.metric} ({o.direction})" for o in found.objectives) + "\n")
    for name in recipe.stages:
        names = stage_plugins(recipe, catalogue, name, world_size=1)
        several = [n for n in stage_plugins(recipe, catalogue, name) if n not in names]
        print(f"# stage {name}: plugins {', '.join(names)}"
              + (f" (and under --nproc N: {', '.join(several)})" if several else ""))
        for hook, order in call_order(stage_manager(recipe, catalogue, name)).items():
            print(f"#   {hook}: {' -> '.join(order)}")
        print()
    return 0


def _fields(cls) -> list[str]:
    out = []
    for a in attrs.fields(cls):
        t = a.type if isinstance(a.type, str) else getattr(a.type, "__name__", str(a.type))
        if a.default is attrs.NOTHING:
            default = "required"
        elif isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
            default = f"default {a.default.factory()!r}"
        else:
            default = f"default {a.default!r}"
        out.append(f"{a.name}: {t} ({default})")
    return out


def cmd_plugins(args) -> int:
    from kdlab.engine.registry import discover

    catalogue = discover()
    for name, info in catalogue.plugins.items():
        kind = "on by default, table [plugins.%s]" % name if info.default_enabled else "method, table [stages.<s>.methods.%s]" % name
        print(f"{name}  ({kind})\n  from: {info.origin}\n  hooks: {', '.join(info.hooks)}")
        if info.config_class is not None:
            for line in _fields(info.config_class):
                print(f"  - {line}")
        print()
    for name, why in sorted(catalogue.broken.items()):
        print(f"{name}  (BROKEN, skipped)\n  {why}\n")
    for title, registry in (("data sets", catalogue.datasets), ("model architectures", catalogue.models)):
        print(f"{title}:")
        for key in sorted(registry):
            try:  # imports the module: a broken one is listed with its reason, the others still
                entry = registry[key]
            except KdlabError as exc:
                print(f"  {key} (BROKEN): {exc}")
                continue
            print(f"  {key} (from {entry.plugin}): " + "; ".join(_fields(entry.config_class)))
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from kdlab.studies import aggregate

    from kdlab.studies import search

    if len(args.run_dirs) == 1 and search.is_study_dir(Path(args.run_dirs[0])) and not args.per_run:
        print(search.report(Path(args.run_dirs[0])), end="")
        if args.plots:
            for path in search.plots(Path(args.run_dirs[0]), Path(args.plots)):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    runs = aggregate.find_runs(args.run_dirs)
    if args.published or args.rows or args.columns:
        from kdlab.studies import published

        command = shlex.join(["kdlab", *sys.argv[1:]]) if sys.argv[1:2] == ["report"] else None
        if args.published:
            print(published.compare(runs, published.load_table(args.published), command=command), end="")
            return 0
        if not (args.rows and args.columns):
            raise KdlabError("kdlab report: the paper layout needs both --rows and --columns")
        print(published.paper_table(runs, rows=args.rows.split(","), column=args.columns, stage=args.stage,
                                    metric=args.metric, command=command), end="")
        return 0
    if args.per_run:
        rows = [{"run": str(r.run_dir), "stage": s, **m} for r in runs for s, m in r.metrics.items()]
        print(report.markdown(rows) if args.format == "md" else report.to_csv(rows), end="\n" if args.format == "md" else "")
        return 0
    rows = aggregate.aggregate(aggregate.group_by_seed(runs), extra=(args.metric,))
    stages = set(args.stages.split(",")) if args.stages else None
    if stages is not None:
        rows = [r for r in rows if r["stage"] in stages]
    costs = [c for c in ("macs", "params", "nonzero_params", "bytes") if any(c in r["values"] for r in rows)]
    marks = aggregate.pareto_marks(rows, args.metric, costs, stages)
    print(aggregate.markdown(rows, marks) if args.format == "md" else aggregate.to_csv(rows), end="\n" if args.format == "md" else "")
    if args.plots:
        from kdlab.studies import plots

        figures = {f"{args.metric.replace('/', '_')}_vs_{c}": plots.metric_vs_cost(rows, args.metric, c, stages) for c in costs}
        figures["curves"] = plots.curves(runs, args.metric.replace("test/", "val/", 1), stages)
        for path in plots.write(figures, Path(args.plots)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def cmd_store(args) -> int:
    import datetime
    import shutil
    import time
    from pathlib import Path

    from kdlab.engine.stage_store import StageStore, check_entry

    root = Path(args.dir)
    if not root.is_dir():
        raise KdlabError(f"{root}: no such stage store (a folder that kdlab run --stage-store, sweep or search filled)")
    store = StageStore(root)
    entries = store.entries()
    if args.action == "list":
        now = time.time()
        print(f"{len(entries)} entries, {sum(e.size for e in entries) / 1e6:.1f} MB in {root}")
        for e in entries:
            code = e.about.get("code", {})
            made = ", ".join(f"{k} {str(v)[:12]}" for k, v in sorted(code.items())) if isinstance(code, dict) else "?"
            print(f"{e.key}  {e.stage:<12} {e.size / 1e6:8.2f} MB  {_age(now - e.filed):>7} ago  from {e.run_dir}")
            print(f"    made by: {made or '?'}")
            if args.verbose:
                for k in ("table", "inputs", "data", "data_key", "seed", "device_kind"):
                    if k in e.about:
                        print(f"    {k}: {json.dumps(e.about[k], sort_keys=True, default=str)}")
        return 0
    if args.action == "verify":
        damaged = 0
        for e in entries:
            problem, _, _ = check_entry(e.path)
            print(f"{e.key}  {e.stage:<12} {'ok' if problem is None else 'DAMAGED: ' + problem}")
            if problem is not None:
                damaged += 1
                if args.remove_damaged:
                    store.remove(e.key)
                    print(f"    removed (the stage trains again when a run needs it)")
        print(f"{len(entries) - damaged} ok, {damaged} damaged" + (" (removed)" if damaged and args.remove_damaged else ""))
        return 1 if damaged and not args.remove_damaged else 0
    # remove
    chosen = []
    if args.all:
        chosen = entries
    elif args.older_than:
        try:
            when = datetime.datetime.fromisoformat(args.older_than)
        except ValueError:
            raise KdlabError(f"--older-than: {args.older_than!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
        cut = when.timestamp()
        chosen = [e for e in entries if e.filed < cut]
    for prefix in args.keys:
        hits = [e for e in entries if e.key.startswith(prefix)]
        if len(hits) != 1:
            raise KdlabError(f"{prefix}: {'no entry' if not hits else f'{len(hits)} entries'} in {root} "
                             f"start{'s' if len(hits) == 1 else ''} with it (kdlab store list {root})")
        chosen.append(hits[0])
    if not (args.all or args.older_than or args.keys):
        raise KdlabError("kdlab store remove: name entries, or give --all or --older-than DATE")
    for e in {e.key: e for e in chosen}.values():
        store.remove(e.key)
        print(f"removed {e.key} ({e.stage}, {e.size / 1e6:.2f} MB)")
    for junk in root.glob(".*.*"):  # folders of publishes that a killed process left half-written
        if junk.is_dir() and time.time() - junk.stat().st_mtime > 3600:
            shutil.rmtree(junk, ignore_errors=True)
    print(f"{len({e.key for e in chosen})} entries removed, {len(entries) - len({e.key for e in chosen})} left")
    return 0


def cmd_export(args) -> int:
    from kdlab.data.text import END, PAD
    from kdlab.engine.checkpoint import load_model_file
    from kdlab.engine.loop import rebuild_exported
    from kdlab.models.hf_files import save_transformers

    model_file = Path(args.model)
    arch = load_model_file(model_file)["arch"]
    if arch != "transformer_lm":
        raise KdlabError(f"{model_file}: a '{arch}' model; only transformer_lm exports as a transformers directory")
    tokenizer = Path(args.tokenizer) if args.tokenizer else model_file.resolve().parent.parent / "tokenizer.json"
    if not tokenizer.is_file():
        raise KdlabError(f"{tokenizer}: no tokenizer there; name the run's tokenizer.json with --tokenizer")
    out = save_transformers(rebuild_exported(model_file), tokenizer.read_text(encoding="utf-8"), args.out, pad=PAD, end=END,
                            adapter=args.adapter)
    print(f"{out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer.from_pretrained({str(out)!r})")
    return 0


def cmd_kws_stream(args) -> int:
    from kdlab.speech import streaming

    return streaming.cli(args)


COMMANDS = {"data": cmd_data, "kws-stream": cmd_kws_stream, "transcribe": cmd_transcribe, "run": cmd_run, "label": cmd_label, "export": cmd_export, "sweep": cmd_sweep, "search": cmd_search, "validate": cmd_validate, "plugins": cmd_plugins, "report": cmd_report, "store": cmd_store}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        try:
            return _main(argv)
        finally:
            # the command is over: a SIGTERM or SIGINT that arrives now (or arrived while a
            # collective blocked, and is handled only now) must not raise into the exit
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    if hasattr(signal, "SIGPIPE") and argv is None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `kdlab ... | head` ends quietly
    if argv is None:
        signal.signal(signal.SIGTERM, _terminate)
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except RecipeError as exc:
        if args.debug:
            raise
        return _error(exc.messages)
    except KdlabError as exc:
        if args.debug:
            raise
        return _error([f"{exc}{_resume_hint(args, exc)}"])
    except OSError as exc:  # the environment: a read-only or full disk, a missing permission
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else "a write or read failed: "
        return _error([f"{where}{exc.strerror or exc}{_resume_hint(args, exc)}"])
    except RuntimeError as exc:
        if args.debug or not _peer_stopped(exc):
            raise
        return 1  # under --nproc: another process failed first, and the launcher prints its error
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        if os.environ.get("RANK", "0") != "0":
            pass  # another process of a --nproc run: rank 0 says it, once
        elif args.command == "run" and run_dir is not None:
            again = ["kdlab", "run", args.recipe, *[f"--set={o}" for o in args.overrides], "--resume", str(run_dir)]
            print(f"kdlab: interrupted; the last checkpoint is kept; continue with: {shlex.join(again)}",
                  file=sys.stderr)
        else:
            print(f"kdlab: interrupted ({args.command})", file=sys.stderr)
        return EXIT_SIGTERM if _terminated else EXIT_SIGINT


def _error(messages: list[str]) -> int:
    """Print the error (under ``--nproc``: hand it to the launcher, which prints the first
    process's, once)."""
    from kdlab.engine.launch import hand_over

    lines = [f"kdlab: error: {m}" for m in messages]
    if not hand_over(lines):
        for line in lines:
            print(line, file=sys.stderr)
    return EXIT_USAGE


def _peer_stopped(exc: RuntimeError) -> bool:
    """A collective that failed because another process of the run exited."""
    import torch.distributed as dist

    return (isinstance(exc, dist.DistError) or "Connection closed by peer" in str(exc)) and dist.is_initialized()


def _resume_hint(args, exc) -> str:
    """After a failed write in a run (a full disk): how to continue it once there is room."""
    run_dir = getattr(exc, "run_dir", None)
    if args.command != "run" or run_dir is None or not (Path(run_dir) / "recipe.toml").is_file():
        return ""
    again = ["kdlab", "run", args.recipe, *[f"--set={o}" for o in args.overrides], "--resume", str(run_dir)]
    return f"; make room, then continue with: {shlex.join(again)}"


EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, as a shell reports them
_terminated = False


def _terminate(signum, _frame):
    """SIGTERM (a scheduler's stop, `kill`) ends a command the way Ctrl-C does (the last
    checkpoint is kept), but exits 143, so that a scheduler sees which signal stopped it. A
    second SIGTERM while it stops is ignored (SIGKILL still ends it), so that it cannot
    interrupt the saving or the exit."""
    global _terminated
    if _terminated:  # already stopping (a scheduler, then torchrun, signal every process): let it finish
        return
    _terminated = True
    raise KeyboardInterrupt(f"signal {signum}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
