"""The ``metamapper`` command: thin subcommands over the library.

    metamapper train --config configs/fashion.yaml --out runs/fashion [train.updates=100 ...]
    metamapper evaluate --checkpoint runs/fashion --dataset fashion-open-ended --ways 2 --shots 1
    metamapper predict --checkpoint runs/fashion --support a.jpg="This is a dax." ... --query q.jpg
    metamapper prepare --dataset fashion-open-ended
    metamapper datasets
    metamapper corpus icons [--root DIR] [--rebuild]
    metamapper export-fashion DIR --variant open_ended --ways 2 --shots 1 --tasks 500
    metamapper demo [--quick]
    metamapper serve [--checkpoint runs/demo] [--host 127.0.0.1] [--port 7860]
    metamapper config show [--config configs/paper_coco.yaml] [train.updates=100 ...]
"""

from __future__ import annotations

# Each subcommand imports what it needs when it runs: `metamapper --help` and `metamapper config
# show` answer without loading torch.
import argparse
import json
import sys
from pathlib import Path


def _cmd_train(a: argparse.Namespace) -> None:
    from metamapper.config import load_config

    config = a.config
    if config is None and a.resume and (Path(a.out) / "config.yaml").is_file():
        config = Path(a.out) / "config.yaml"  # resuming: the run's own config (plus any overrides)
    cfg = load_config(config, [*(a.overrides or []), *_device_override(a)])
    if cfg.train.method == "standard":
        from metamapper.train.standard import train
    else:
        from metamapper.train.episodic import train
    out = train(cfg, a.out, resume=a.resume, overwrite=a.overwrite)
    from metamapper.distributed import is_main

    if is_main():
        print(f"run written to {out}")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from metamapper.data.sources import check_task_induction, evaluation_tasks
    from metamapper.distributed import init_from_env
    from metamapper.eval.fewshot import adaptation_steps
    from metamapper.eval.report import results_table
    from metamapper.eval.run import (
        check_trained_tasks,
        default_split,
        evaluate_run,
        read_run_config,
    )
    from metamapper.pretrained import load_run

    rank, _ = init_from_env(a.device)  # under torchrun, ranks share the tasks; rank 0 reports
    # check the cheap things (flags, the run's config, the tasks) before loading the backbones
    if a.tasks is not None and a.tasks < 0:
        raise ValueError(f"the number of tasks must be >= 0, got {a.tasks}")
    if a.task_induction:
        check_task_induction(a.dataset)
    if a.method is not None:
        adaptation_steps(a.method, a.steps, 0)
    if a.repeats < 0:
        raise ValueError(f"--repeats must be >= 0, got {a.repeats}")
    cfg = read_run_config(a.checkpoint, step=a.step, allow_fallback=a.allow_fallback)
    a.split = a.split or default_split(cfg, a.dataset)
    n_tasks = cfg.eval.tasks if a.tasks is None else a.tasks
    ts = evaluation_tasks(a.dataset, data=a.data, ways=a.ways, shots=a.shots, n_tasks=n_tasks,
                          seed=a.seed, split=a.split)
    overlap = check_trained_tasks(cfg, a.dataset, ts, split=a.split, data=a.data)
    if overlap and rank == 0:
        print(f"metamapper: warning: {overlap} of the {len(ts.tasks)} tasks are tasks this run "
              "meta-trained on (--split all)", file=sys.stderr)
    run = load_run(a.checkpoint, step=a.step, allow_fallback=a.allow_fallback, device=a.device)
    res = evaluate_run(run, ts, method=a.method, steps=a.steps, repeats=a.repeats,
                       induction=a.task_induction, feature_cache=a.feature_cache,
                       progress=rank == 0)
    res.update(dataset=a.dataset, split=a.split, seed=a.seed, trained_overlap=overlap)
    if rank != 0:
        return
    print(results_table([res]))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"results written to {a.out}")


def _parse_support(items: list[str]) -> tuple[list[str], list[str]]:
    paths, captions = [], []
    for it in items:
        if "=" not in it:
            raise ValueError(f"--support {it!r} must be IMAGE=CAPTION")
        p, c = it.split("=", 1)
        paths.append(p)
        captions.append(c)
    return paths, captions


def _cmd_predict(a: argparse.Namespace) -> None:
    from metamapper.data.images import load_image
    from metamapper.pretrained import adapt_to_support, load_run

    paths, captions = _parse_support(a.support)
    support, queries = [load_image(p) for p in paths], [load_image(q) for q in a.query]
    run = load_run(a.checkpoint, step=a.step, allow_fallback=a.allow_fallback, device=a.device)
    adapted = adapt_to_support(run, support, captions, steps=a.steps, method=a.method)
    answers = adapted.answer(queries, question=a.question)
    if a.json:
        from metamapper.checkpoint import checkpoint_record

        print(json.dumps({"answers": [{"query": q, "answer": ans.strip()} for q, ans in
                                      zip(a.query, answers, strict=True)],
                          "question": a.question, "checkpoint": checkpoint_record(run)}, indent=2))
        return
    for q, ans in zip(a.query, answers, strict=True):
        print(ans.strip() if len(a.query) == 1 else f"{q}\t{ans.strip()}")


def _cmd_prepare(a: argparse.Namespace) -> None:
    from metamapper.config import load_config
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.device import resolve_device, setup_device
    from metamapper.eval.run import default_split
    from metamapper.models.factory import build_vision

    cfg = load_config(a.config, [*(a.overrides or []), *_device_override(a)])
    ts = evaluation_tasks(a.dataset, data=a.data, ways=a.ways, shots=a.shots,
                          n_tasks=cfg.eval.tasks if a.tasks is None else a.tasks, seed=a.seed,
                          split=a.split or default_split(cfg, a.dataset))
    device = setup_device(resolve_device(cfg.runtime.device))
    vision = build_vision(cfg.backbones, device=device, precision=cfg.runtime.precision)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(vision, ts.images, keys, root=cfg.data.feature_cache)
    print(f"{len(table.index)} images cached for {vision.identity}; {len(table.skipped)} skipped")
    for k, why in table.skipped:
        print(f"  skipped {k}: {why}")


def _cmd_datasets(a: argparse.Namespace) -> None:
    from metamapper.data.sources import describe_sources

    for name, (datasets, line) in describe_sources().items():
        print(f"{name}: {line}")
        if datasets:
            print(f"    --dataset {', '.join(datasets)}")


def _cmd_corpus(a: argparse.Namespace) -> None:
    import metamapper.data.sources  # noqa: F401  (registers the corpus builders)
    from metamapper.data.corpora import describe_corpus, ensure_corpus

    corpus = ensure_corpus(a.name, a.root, rebuild=a.rebuild)
    print(f"{a.name}: {describe_corpus(a.name, a.root)}")
    print(f"    built in {corpus.stats.get('build_s')} s from {corpus.stats.get('candidates')} "
          f"candidate pictures; {len(corpus.skipped)} inputs skipped (listed in index.json)")


def _cmd_export(a: argparse.Namespace) -> None:
    from metamapper.data.export import export_fashion

    path = export_fashion(a.dir, variant=a.variant, ways=a.ways, shots=a.shots, n_tasks=a.tasks,
                          seed=a.seed)
    print(f"wrote {path}")


def _cmd_demo(a: argparse.Namespace) -> None:
    from metamapper.demo import run_demo

    run_demo(quick=a.quick, out=a.out or ("runs/demo-quick" if a.quick else "runs/demo"), device=a.device)


def _cmd_serve(a: argparse.Namespace) -> None:
    try:
        from metamapper.web.server import serve
    except ImportError as e:  # the web libraries are an optional extra
        raise ValueError(f"the web demo needs pip install 'metamapper[web]' ({e})") from None

    serve(a.checkpoint, host=a.host, port=a.port, step=a.step, allow_fallback=a.allow_fallback,
          device=a.device)


def _cmd_config_show(a: argparse.Namespace) -> None:
    from metamapper.config import dump_config, load_config

    print(dump_config(load_config(a.config, a.overrides)), end="")


STEPS_HELP = ("adaptation steps (default: no-adapt 0, in-context 0, else the steps the run was "
              "trained with, else 5)")


def _device_override(a: argparse.Namespace) -> list[str]:
    """``--device X`` as the config override ``runtime.device=X`` (none without the flag)."""
    return [f"runtime.device={a.device}"] if a.device else []


def add_device_arg(sp: argparse.ArgumentParser, *, default_from: str = "auto") -> None:
    """The ``--device`` option every computing subcommand shares."""
    sp.add_argument("--device", metavar="DEVICE",
                    help="auto (cuda:LOCAL_RANK if CUDA is available, else mps, else cpu), cpu, "
                         f"cuda, cuda:N or mps (default: {default_from})")


def build_parser() -> argparse.ArgumentParser:
    from metamapper.data.tasks import EVAL_SPLITS
    from metamapper.eval.fewshot import METHODS

    p = argparse.ArgumentParser(prog="metamapper", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a mapper from a YAML config")
    t.add_argument("--config", help="YAML config (default: the run's config.yaml with --resume, else the "
                                    "built-in default; see `metamapper config show`)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, config)")
    t.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="OUT may hold a run: move its config, metrics and checkpoints into "
                        "OUT/replaced-<time>/ and start again")
    add_device_arg(t, default_from="the config's runtime.device, auto")
    t.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    t.set_defaults(fn=_cmd_train)

    def task_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", required=True,
                        help="a Frozen benchmark name (open_ended_mi, real_name_mi, fast_vqa, "
                             "guided_vqa; needs --data), fashion-open-ended, fashion-real-name, "
                             "icons-open-ended, ... (metamapper datasets lists them)")
        sp.add_argument("--data", help="dataset folder (benchmark JSON + images; Fashion IDX files)")
        sp.add_argument("--ways", type=int, default=2)
        sp.add_argument("--shots", type=int, default=1)
        sp.add_argument("--tasks", type=int,
                        help="tasks to use (0: all; default: the run's / config's eval.tasks, 1000)")
        sp.add_argument("--split", choices=EVAL_SPLITS,
                        help="test: a benchmark file's seeded test part, or the held-out test "
                             "tasks; val: its validation part / a validation stream of held-out "
                             "tasks; train, all: a benchmark file's training part or all of it "
                             "(refused for tasks the run meta-trained on, unless all). Default: "
                             "test, except all of a benchmark file the run did not train on")
        sp.add_argument("--seed", type=int, default=1234,
                        help="seed of sampled tasks (fixed: every run is scored on the same tasks)")

    def step_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--step", help="which checkpoint of the run: latest (default), best "
                                       "(validation accuracy) or a step number")
        sp.add_argument("--allow-fallback", action="store_true",
                        help="if the newest checkpoint is corrupt, use the newest valid one")

    e = sub.add_parser("evaluate", help="meta-test a trained run")
    e.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    step_args(e)
    task_args(e)
    e.add_argument("--repeats", type=int, default=0, help="show each support pair R more times")
    e.add_argument("--task-induction", action="store_true",
                   help="'Answer with dax or blicket.' before each question (not on the VQA sets)")
    e.add_argument("--steps", type=int, help=STEPS_HELP)
    e.add_argument("--method", choices=sorted(METHODS), help="default: the method the run was trained for")
    e.add_argument("--feature-cache", help="feature cache folder")
    e.add_argument("--out", help="write the results JSON here")
    add_device_arg(e)
    e.set_defaults(fn=_cmd_evaluate)

    pr = sub.add_parser("predict", help="adapt to a few captioned images and answer a query")
    pr.add_argument("--checkpoint", required=True)
    step_args(pr)
    pr.add_argument("--json", action="store_true",
                    help="print the answers and the checkpoint (run, step, checksum, config) as JSON")
    pr.add_argument("--support", nargs="+", required=True, metavar="IMG=CAPTION")
    pr.add_argument("--query", nargs="+", required=True, metavar="IMG")
    pr.add_argument("--question", default="This is a", help="text after the query image")
    pr.add_argument("--steps", type=int, help=STEPS_HELP)
    pr.add_argument("--method", choices=sorted(METHODS), help="default: the method the run was trained for")
    add_device_arg(pr)
    pr.set_defaults(fn=_cmd_predict)

    pp = sub.add_parser("prepare", help="fill the feature cache for a dataset")
    task_args(pp)
    pp.add_argument("--config", help="YAML config naming the backbones")
    pp.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    add_device_arg(pp, default_from="the config's runtime.device, auto")
    pp.set_defaults(fn=_cmd_prepare)

    ds = sub.add_parser("datasets", help="the task sources and evaluation datasets, with their classes")
    ds.set_defaults(fn=_cmd_datasets)

    cp = sub.add_parser("corpus", help="build a rendered concept corpus (icons, emoji, glyphs) "
                                       "from the installed Debian packages")
    cp.add_argument("name", choices=["icons", "emoji", "glyphs"])
    cp.add_argument("--root", help="corpus folder (default: $METAMAPPER_CACHE/corpora/NAME)")
    cp.add_argument("--rebuild", action="store_true", help="render it again even if it exists")
    cp.set_defaults(fn=_cmd_corpus)

    x = sub.add_parser("export-fashion", help="write the Fashion-MNIST benchmark in the Frozen layout")
    x.add_argument("dir")
    x.add_argument("--variant", choices=["open_ended", "real_name"], default="open_ended")
    x.add_argument("--ways", type=int, default=2)
    x.add_argument("--shots", type=int, default=1)
    x.add_argument("--tasks", type=int, default=500)
    x.add_argument("--seed", type=int, default=0)
    x.set_defaults(fn=_cmd_export)

    d = sub.add_parser("demo", help="the main job on the embedded default: train, evaluate, report")
    d.add_argument("--quick", action="store_true", help="a smaller run (about 5 minutes)")
    d.add_argument("--out", help="run folder (default: runs/demo, with --quick runs/demo-quick)")
    add_device_arg(d)
    d.set_defaults(fn=_cmd_demo)

    sv = sub.add_parser("serve", help="the local web demo: adapt to captioned images in a browser")
    sv.add_argument("--checkpoint", help="run folder (default: runs/demo, trained first if missing)")
    step_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=7860)
    add_device_arg(sv)
    sv.set_defaults(fn=_cmd_serve)

    c = sub.add_parser("config", help="the resolved config")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the config a run would use, as YAML")
    cs.add_argument("--config", help="YAML config (default: the built-in default)")
    cs.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    cs.set_defaults(fn=_cmd_config_show)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # config overrides (key.sub=value) may stand anywhere on the line, before or after options
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("metamapper: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from metamapper.train.common import TrainingDiverged

        # user mistakes (bad paths, configs, checkpoints, data) end with one line, no traceback
        # OSError: a missing file, a full disk, no permission (the message names the path)
        if not isinstance(e, (ValueError, KeyError, OSError, TrainingDiverged)):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metamapper: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
