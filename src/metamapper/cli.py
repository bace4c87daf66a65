"""The ``metamapper`` command: thin subcommands over the library.

    metamapper train --config configs/fashion.yaml --out runs/fashion [train.updates=100 ...]
    metamapper evaluate --checkpoint runs/fashion --dataset fashion-open-ended --ways 2 --shots 1
    metamapper report results/a.json results/b.json [--plot compare.png]
    metamapper predict --checkpoint runs/fashion --support a.jpg="This is a dax." ... --query q.jpg
    metamapper export --checkpoint runs/fashion --out export/fashion
    metamapper push --checkpoint runs/fashion --repo owner/name [--revision BRANCH]
    metamapper prepare --dataset fashion-open-ended
    metamapper datasets
    metamapper corpus icons [--root DIR] [--rebuild]
    metamapper export-fashion DIR --variant open_ended --ways 2 --shots 1 --tasks 500
    metamapper demo [--quick] [--config configs/fashion.yaml]
    metamapper download [smollm2] [fashion-mnist] [--dir DIR]
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
from typing import Any


def _cmd_train(a: argparse.Namespace) -> None:
    from metamapper.config import load_config

    config = a.config
    if config is None and a.resume and (Path(a.out) / "config.yaml").is_file():
        config = Path(a.out) / "config.yaml"  # resuming: the run's own config (plus any overrides)
    report_to = [f"train.report_to=[{','.join(a.report_to)}]"] if a.report_to else []
    cfg = load_config(config, [*(a.overrides or []), *_device_override(a), *report_to])
    from metamapper.methods import get_method

    out = get_method(cfg.train.method).train(cfg, a.out, resume=a.resume, overwrite=a.overwrite)
    from metamapper.distributed import is_main

    if is_main():
        print(f"run written to {out}")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from metamapper.data.sources import check_task_induction, evaluation_tasks
    from metamapper.distributed import init_from_env
    from metamapper.eval.report import results_table
    from metamapper.eval.run import (
        check_trained_tasks,
        default_split,
        evaluate_run,
        read_run_config,
    )
    from metamapper.loading import load_run

    rank, _ = init_from_env(a.device)  # under torchrun, ranks share the tasks; rank 0 reports
    # check the cheap things (flags, the run's config, the tasks) before loading the backbones
    if a.tasks is not None and a.tasks < 0:
        raise ValueError(f"the number of tasks must be >= 0, got {a.tasks}")
    if a.task_induction:
        check_task_induction(a.dataset)
    _check_method(a)
    if a.repeats < 0:
        raise ValueError(f"--repeats must be >= 0, got {a.repeats}")
    # the checkpoint is resolved and checked once: its config now, its weights after the checks
    ckpt, cfg = read_run_config(a.checkpoint, step=a.step, revision=a.revision, allow_fallback=a.allow_fallback)
    a.split = a.split or default_split(cfg, a.dataset)
    n_tasks = cfg.eval.tasks if a.tasks is None else a.tasks
    ts = evaluation_tasks(a.dataset, data=a.data, ways=a.ways, shots=a.shots, n_tasks=n_tasks,
                          seed=a.seed, split=a.split)
    overlap = check_trained_tasks(cfg, a.dataset, ts, split=a.split, data=a.data)
    if overlap and rank == 0:
        print(f"metamapper: warning: {overlap} of the {len(ts.tasks)} tasks are tasks this run "
              "meta-trained on (--split all)", file=sys.stderr)
    if a.dataset.startswith("fashion-all-") and "fashion-mnist" in (cfg.data.source, *cfg.data.mixture) \
            and rank == 0:
        print("metamapper: note: this run meta-trained on Fashion-MNIST classes 0-5 (other images); "
              f"{a.dataset} scores them beside the held-out classes, so it is not a domain the run "
              "has not seen (fashion-open-ended scores the held-out classes only)", file=sys.stderr)
    run = load_run(a.checkpoint, checkpoint=ckpt, device=a.device)
    res = evaluate_run(run, ts, method=a.method, steps=a.steps, repeats=a.repeats,
                       induction=a.task_induction, feature_cache=a.feature_cache,
                       progress=rank == 0, log_samples=a.log_samples, support_fit=a.support_fit)
    # --checkpoint as given (a run folder or a Hub id); the checkpoint record has the resolved path
    res.update(trained_overlap=overlap, source=a.checkpoint,
               **({"revision": a.revision} if a.revision else {}))
    if rank != 0:
        return
    print(results_table([res]))
    if res.get("support_fit") is not None:
        print(f"support fit: {100 * res['support_fit']:.1f}% of the support images named with their own "
              "word after adaptation")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"results written to {a.out}")
    if a.log_samples:
        print(f"per-query samples written to {a.log_samples}")


def _cmd_report(a: argparse.Namespace) -> None:
    from metamapper.eval.report import load_results, plot_accuracy_vs_shots, results_table

    rows = load_results(a.results)
    print(results_table(rows, compare=True))
    if a.plot:
        ways = {r.get("ways") for r in rows}
        only = ways.pop() if len(ways) == 1 else None
        chance = 1 / only if isinstance(only, int) and only > 0 else None  # a line only if shared
        print(f"plot written to {plot_accuracy_vs_shots(rows, a.plot, chance=chance)}")


def _check_method(a: argparse.Namespace) -> None:
    """``--method`` and ``--steps`` checked before anything loads: an unknown method or steps it
    cannot take are refused; an old spelling is replaced by today's (with a note)."""
    if a.method is None:
        return
    from metamapper.methods import get_method

    method = get_method(a.method)
    method.steps(a.steps)
    a.method = method.name


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
    from metamapper.loading import load_run
    from metamapper.pretrained import adapt_to_support

    _check_method(a)  # before anything loads
    paths, captions = _parse_support(a.support)
    support, queries = [load_image(p) for p in paths], [load_image(q) for q in a.query]
    run = load_run(a.checkpoint, step=a.step, revision=a.revision, allow_fallback=a.allow_fallback,
                   device=a.device)
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
    import metamapper.methods  # noqa: F401  (registered: the model card describes the run's method)
    from metamapper.hub import export_checkpoint, resolve_checkpoint

    ckpt = resolve_checkpoint(a.checkpoint, step=a.step, revision=a.revision, allow_fallback=a.allow_fallback)
    print(f"exported {ckpt.path} to {export_checkpoint(ckpt, a.out, repo_id=a.repo)}")


def _cmd_push(a: argparse.Namespace) -> None:
    import metamapper.methods  # noqa: F401  (registered: the model card describes the run's method)
    from metamapper.hub import push_checkpoint, resolve_checkpoint

    ckpt = resolve_checkpoint(a.checkpoint, step=a.step, allow_fallback=a.allow_fallback)
    url = push_checkpoint(ckpt, a.repo, revision=a.revision, private=a.private or None,
                          commit_message=a.message)
    print(f"pushed {ckpt.path} to {a.repo}: {url}")


def _cmd_export_fashion(a: argparse.Namespace) -> None:
    from metamapper.data.export import export_fashion

    path = export_fashion(a.dir, variant=a.variant, ways=a.ways, shots=a.shots, n_tasks=a.tasks,
                          seed=a.seed)
    print(f"wrote {path}")


def _cmd_download(a: argparse.Namespace) -> None:
    unknown = [w for w in a.what if w not in DOWNLOADS]
    if unknown:
        raise ValueError(f"cannot download {', '.join(unknown)}: choose from {', '.join(DOWNLOADS)}")
    for what in a.what or DOWNLOADS:
        if what == "smollm2":
            from metamapper.models.backbones import SMOLLM2_GGUF, download_smollm2, smollm2_gguf

            if a.dir is None:
                path = smollm2_gguf()
            else:
                path = Path(a.dir) / "smollm2" / SMOLLM2_GGUF
                if not path.is_file():
                    path = download_smollm2(a.dir)
        else:
            from metamapper.data.fashion import download_fashion, fashion_root

            path = fashion_root() if a.dir is None else download_fashion(a.dir)
        print(f"{what}: {path}")


DOWNLOADS = ("smollm2", "fashion-mnist")


def _cmd_demo(a: argparse.Namespace) -> None:
    from metamapper.demo import run_demo

    run_demo(quick=a.quick, out=a.out or ("runs/demo-quick" if a.quick else "runs/demo"), device=a.device,
             config=a.config)


def _cmd_study(a: argparse.Namespace) -> None:
    from metamapper.study import CLAIMS, run_study

    claims = [] if a.report_only else a.claim or list(CLAIMS)
    path = run_study(claims, seeds=a.seeds, tasks=a.tasks, slow_tasks=a.slow_tasks, out=a.out,
                     results=a.results, device=a.device, overrides=a.overrides or (), only=a.trainings,
                     only_seeds=a.only_seeds)
    print(f"wrote {path}")


def _cmd_serve(a: argparse.Namespace) -> None:
    try:
        from metamapper.web.server import serve
    except ImportError as e:  # the web libraries are an optional extra
        raise ValueError(f"the web demo needs pip install 'metamapper-fewshot[web]' ({e})") from None

    serve(a.checkpoint, host=a.host, port=a.port, step=a.step, allow_fallback=a.allow_fallback,
          device=a.device, revision=a.revision)


def _cmd_config_show(a: argparse.Namespace) -> None:
    from metamapper.config import dump_config, load_config

    print(dump_config(load_config(a.config, a.overrides), comments=True), end="")


CHECKPOINT_HELP = ("a run folder (or a checkpoint folder in it), a folder written by `metamapper "
                   "export`, or a Hugging Face Hub id owner/name (HF_HUB_OFFLINE=1: the cache only)")
STEPS_HELP = ("adaptation steps (default: the steps the run was trained with if it was trained with "
              "this method, else the method's own: maml 5, in_context 0; standard never adapts)")


def _device_override(a: argparse.Namespace) -> list[str]:
    """``--device X`` as the config override ``runtime.device=X`` (none without the flag)."""
    return [f"runtime.device={a.device}"] if a.device else []


def add_device_arg(sp: argparse.ArgumentParser, *, default_from: str = "auto") -> None:
    """The ``--device`` option every computing subcommand shares."""
    sp.add_argument("--device", metavar="DEVICE",
                    help="auto (cuda:LOCAL_RANK if CUDA is available, else mps, else cpu), cpu, "
                         f"cuda, cuda:N or mps (default: {default_from})")


def add_method_arg(sp: argparse.ArgumentParser) -> None:
    """``--method``: a registered method (checked when the command runs, so that an old
    spelling is accepted with a note)."""
    from metamapper.methods import method_names

    sp.add_argument("--method", metavar="METHOD",
                    help=f"{', '.join(method_names())} (default: the method the run was trained with)")


def task_args(sp: argparse.ArgumentParser) -> None:
    """The options that choose evaluation tasks (``evaluate``, ``prepare``)."""
    from metamapper.data.sources import TEST_SEED
    from metamapper.data.tasks import EVAL_SPLITS

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
    sp.add_argument("--seed", type=int, default=TEST_SEED,
                    help="seed of sampled tasks (fixed: every run is scored on the same tasks)")


def step_args(sp: argparse.ArgumentParser, *, revision: bool = True) -> None:
    """The options that choose a checkpoint of a run, an export or a Hub model."""
    sp.add_argument("--step", help="which checkpoint of a run folder: latest (default), best "
                                   "(validation accuracy) or a step number")
    sp.add_argument("--allow-fallback", action="store_true",
                    help="if the newest checkpoint is corrupt, use the newest valid one")
    if revision:
        sp.add_argument("--revision", help="with a Hub id: a branch, tag or commit (default: main)")


def _add_train(sub: Any) -> None:
    from metamapper.config import REPORT_TO

    t = sub.add_parser("train", help="meta-train a mapper from a YAML config")
    t.add_argument("--config", help="YAML config (default: the run's config.yaml with --resume, else the "
                                    "built-in default; see `metamapper config show`)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, config)")
    t.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="OUT may hold a run: move its config, metrics and checkpoints into "
                        "OUT/replaced-<time>/ and start again")
    add_device_arg(t, default_from="the config's runtime.device, auto")
    t.add_argument("--report-to", action="append", choices=REPORT_TO,
                   help="also write the training scalars as TensorBoard events in OUT/tensorboard/ "
                        "(train.report_to; needs pip install 'metamapper-fewshot[tensorboard]')")
    t.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    t.set_defaults(fn=_cmd_train)


def _add_evaluate(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="meta-test a trained run")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    step_args(e)
    task_args(e)
    e.add_argument("--repeats", type=int, default=0, help="show each support pair R more times")
    e.add_argument("--task-induction", action="store_true",
                   help="open each task with 'Answer with dax or blicket.', before its support (not on the VQA sets)")
    e.add_argument("--steps", type=int, help=STEPS_HELP)
    add_method_arg(e)
    e.add_argument("--feature-cache", help="feature cache folder")
    e.add_argument("--out", help="write the results JSON here")
    e.add_argument("--log-samples", metavar="FILE.jsonl",
                   help="write one JSON line per query: task, support captions, question, "
                        "prediction, target, correct")
    e.add_argument("--support-fit", action="store_true",
                   help="also score whether the adapted model names its own support images (can the "
                        "adaptation write the support words at all?)")
    add_device_arg(e)
    e.set_defaults(fn=_cmd_evaluate)


def _add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="compare results files side by side (a Markdown table)")
    rp.add_argument("results", nargs="+", metavar="RESULTS",
                    help="results JSON files (evaluate --out, or the demo's results.json)")
    rp.add_argument("--plot", metavar="FILE.png", help="also plot accuracy against shots")
    rp.set_defaults(fn=_cmd_report)


def _add_predict(sub: Any) -> None:
    pr = sub.add_parser("predict", help="adapt to a few captioned images and answer a query")
    pr.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    step_args(pr)
    pr.add_argument("--json", action="store_true",
                    help="print the answers and the checkpoint (run, step, checksum, config) as JSON")
    pr.add_argument("--support", nargs="+", required=True, metavar="IMG=CAPTION")
    pr.add_argument("--query", nargs="+", required=True, metavar="IMG")
    pr.add_argument("--question", default="This is a", help="text after the query image")
    pr.add_argument("--steps", type=int, help=STEPS_HELP)
    add_method_arg(pr)
    add_device_arg(pr)
    pr.set_defaults(fn=_cmd_predict)


def _add_prepare(sub: Any) -> None:
    pp = sub.add_parser("prepare", help="fill the feature cache for a dataset")
    task_args(pp)
    pp.add_argument("--config", help="YAML config naming the backbones")
    pp.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    add_device_arg(pp, default_from="the config's runtime.device, auto")
    pp.set_defaults(fn=_cmd_prepare)


def _add_datasets(sub: Any) -> None:
    ds = sub.add_parser("datasets", help="the task sources and evaluation datasets, with their classes")
    ds.set_defaults(fn=_cmd_datasets)


def _add_corpus(sub: Any) -> None:
    from metamapper.data.corpora import BUILDERS

    cp = sub.add_parser("corpus", help="build a rendered concept corpus (icons, emoji, glyphs) "
                                       "from the installed Debian packages")
    cp.add_argument("name", choices=sorted(BUILDERS))  # the registered corpora (data.sources loads them)
    cp.add_argument("--root", help="corpus folder (default: $METAMAPPER_CACHE/corpora/NAME)")
    cp.add_argument("--rebuild", action="store_true", help="render it again even if it exists")
    cp.set_defaults(fn=_cmd_corpus)


def _add_export_fashion(sub: Any) -> None:
    x = sub.add_parser("export-fashion", help="write the Fashion-MNIST benchmark in the Frozen layout")
    x.add_argument("dir")
    x.add_argument("--variant", choices=["open_ended", "real_name"], default="open_ended")
    x.add_argument("--ways", type=int, default=2)
    x.add_argument("--shots", type=int, default=1)
    x.add_argument("--tasks", type=int, default=500)
    x.add_argument("--seed", type=int, default=0)
    x.set_defaults(fn=_cmd_export_fashion)


def _add_export(sub: Any) -> None:
    ex = sub.add_parser("export", help="write a run's mapper as a Hub-style folder (config.json, "
                                       "model.safetensors, README.md model card)")
    ex.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    step_args(ex)
    ex.add_argument("--out", required=True, help="the folder to write (a new one, or an earlier export)")
    ex.add_argument("--repo", help="the Hub id owner/name the model card's usage snippet names")
    ex.set_defaults(fn=_cmd_export)


def _add_push(sub: Any) -> None:
    pu = sub.add_parser("push", help="export a run's mapper and upload it to the Hugging Face Hub")
    pu.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    step_args(pu, revision=False)
    pu.add_argument("--repo", required=True, help="the Hub model owner/name (created if missing)")
    pu.add_argument("--revision", help="the branch to push to (created if missing; default: main)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--message", help="the commit message")
    pu.set_defaults(fn=_cmd_push)


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="the main job on the embedded default: train, evaluate, report")
    d.add_argument("--quick", action="store_true", help="a smaller run (about 5 minutes)")
    d.add_argument("--out", help="run folder (default: runs/demo, with --quick runs/demo-quick)")
    d.add_argument("--config", help="the same job on this YAML config instead of the default (e.g. "
                   "configs/fashion.yaml: Fashion-MNIST only, without the Debian-rendered corpora)")
    add_device_arg(d)
    d.set_defaults(fn=_cmd_demo)


def _add_study(sub: Any) -> None:
    from metamapper.study import CLAIMS, TRAININGS

    st = sub.add_parser("study", help="the paper's claims on the Fashion-MNIST recipe, and the choice of the default's data (docs/RESULTS.md)")
    st.add_argument("--claim", action="extend", nargs="+", choices=list(CLAIMS), metavar="CLAIM",
                    help=f"claims to measure ({', '.join(CLAIMS)}; default: all)")
    st.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default: 3)")
    st.add_argument("--tasks", type=int, default=1000, help="test tasks per row (default: 1000)")
    st.add_argument("--slow-tasks", type=int, default=300,
                    help="test tasks per row that adapts at test time (default: 300)")
    st.add_argument("--trainings", nargs="+", choices=list(TRAININGS), metavar="NAME",
                    help=f"run only these trainings ({', '.join(TRAININGS)}); rows of the others "
                         "stay unmeasured (default: all the claims need)")
    st.add_argument("--only-seeds", type=int, nargs="+", metavar="SEED",
                    help="train and score only these seeds of 0..N-1, e.g. one process per seed "
                         "(default: all)")
    st.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the measurements so far; train and score nothing")
    st.add_argument("--out", default="runs/study", help="the trainings (resumable; the measurements are kept beside --results)")
    st.add_argument("--results", default="docs/RESULTS.md", help="the report to rewrite")
    st.add_argument("overrides", nargs="*", help="config overrides for every training key.sub=value")
    add_device_arg(st)
    st.set_defaults(fn=_cmd_study)


def _add_download(sub: Any) -> None:
    dl = sub.add_parser("download", help="fetch the default LM's weights and Fashion-MNIST now, "
                        "checked, instead of at first use")
    dl.add_argument("what", nargs="*", metavar="WHAT",
                    help=f"any of {', '.join(DOWNLOADS)} (default: both)")
    dl.add_argument("--dir", help="put them under DIR/smollm2, DIR/fashion-mnist (default: use "
                    "what is found: Debian's Fashion-MNIST, the environment's or the cache's "
                    "copies, else download into the cache); metamapper looks in "
                    "<environment>/share/metamapper and in the cache")
    dl.set_defaults(fn=_cmd_download)


def _add_serve(sub: Any) -> None:
    sv = sub.add_parser("serve", help="the local web demo: adapt to captioned images in a browser")
    sv.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (default: runs/demo, trained first if missing)")
    step_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=7860)
    add_device_arg(sv)
    sv.set_defaults(fn=_cmd_serve)


def _add_config(sub: Any) -> None:
    c = sub.add_parser("config", help="the resolved config")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the config a run would use, as YAML, each setting under its comment")
    cs.add_argument("--config", help="YAML config (default: the built-in default)")
    cs.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    cs.set_defaults(fn=_cmd_config_show)


SUBCOMMANDS = (_add_train, _add_evaluate, _add_report, _add_predict, _add_prepare, _add_datasets, _add_corpus, _add_export_fashion, _add_export, _add_push, _add_demo, _add_study, _add_download, _add_serve, _add_config)


def build_parser() -> argparse.ArgumentParser:
    """The ``metamapper`` parser: one ``_add_*`` function per subcommand."""
    p = argparse.ArgumentParser(prog="metamapper", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """Warnings on the command line as one line each (a deprecated spelling, a retired key)."""
    print(f"metamapper: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _one_line_warning
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
        if "metamapper.distributed" in sys.modules:  # (commands that never touch torch stay light)
            sys.modules["metamapper.distributed"].shutdown()  # under torchrun: leave together
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
