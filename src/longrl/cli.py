"""The ``longrl`` command.

    longrl quickstart [--task video|math|omni|sd3|wan] [--out DIR] [--algorithm NAME] [--sft-model DIR] [key=value ...]
    longrl data synth --out DIR [--task video|arithmetic|image] [--train N] [--test N] [--frames F] [--size PX] [--seed S]
    longrl train sft|rl [--config YAML] [key=value ...]
    longrl eval [--config YAML] [--benchmark longvideo-reason DIR] [key=value ...]
    longrl cache-embeds [--config YAML] [key=value ...]
    longrl config [--config YAML] [key=value ...]
    longrl export --ckpt DIR --out HF_DIR [--overwrite]
    longrl report RUN_DIR
    longrl bench rollout|train|step|gen ...
    longrl datagen --videos DIR|ROWS --out DIR [--config YAML] [key=value ...]
    longrl serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key-env NAME] ...

``key=value`` overrides may stand anywhere after the subcommand (before or after its options).
A known kind of bad input ends as one line, ``error: ...``, with exit code 2 for a config error and 1
otherwise; ``--debug`` (anywhere before ``bench``'s own arguments) adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
from pathlib import Path


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides in dotted form, e.g. rollout.n=8 rl.steps=100; any position",
    )


def _config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="settings file (keys of configs/reference.yaml); key=value overrides win over it",
    )


def _debug_flag(default) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the traceback of an error, not just its one-line message",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longrl", description="RL for vision-language models on long videos", parents=[_debug_flag(False)]
    )
    # Every subcommand takes --debug too; SUPPRESS keeps it from resetting `longrl --debug train ...`.
    common = [_debug_flag(argparse.SUPPRESS)]
    sub = parser.add_subparsers(dest="command", required=True)

    qs = sub.add_parser(
        "quickstart", parents=common, help="offline end-to-end run: synthetic videos -> SFT -> RL -> eval"
    )
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument(
        "--task",
        default="video",
        choices=["video", "math", "omni", "sd3", "wan"],
        help="video: tiny Qwen2.5-VL on synthetic long videos; math: tiny Qwen2 text model on arithmetic; "
        "omni: a tiny Qwen2.5-Omni thinker on the videos with a sound track (data synth --audio); "
        "sd3: tiny Stable Diffusion 3, Flow-GRPO under a brightness reward (longrl.gen); "
        "wan: tiny Wan 2.1 text to video, the same on 5-frame clips",
    )
    qs.add_argument("--algorithm", default="grpo", help="grpo | dapo | reinforce_pp | rloo | drgrpo | gspo")
    qs.add_argument("--train-rows", type=int, default=None, help="RL pool (default: 2400 videos, 4000 problems)")
    qs.add_argument(
        "--sft-rows", type=int, default=None, help="the pool's first rows, with reasoning, for SFT (default 600 / 2000)"
    )
    qs.add_argument("--test-rows", type=int, default=400)
    qs.add_argument("--frames", type=int, default=32, help="frames per synthetic video file")
    qs.add_argument(
        "--sft-model",
        default=None,
        help="start RL from this SFT model (an earlier run's OUT/sft_model) instead of training one",
    )
    qs.add_argument(
        "--reasoning",
        default="evidence",
        choices=["evidence", "timeline"],
        help="SFT reasoning chains: the events the answer rests on, or every event first",
    )
    qs.add_argument("--seed", type=int, default=None, help="drives data, initialization and sampling (trainer.seed)")
    qs.add_argument(
        "--seeds",
        default=None,
        help="run once per seed (e.g. 0-4) into OUT/seed_S and print a table with mean and spread",
    )
    _overrides(qs)

    data = sub.add_parser("data", parents=common, help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser(
        "synth", parents=common, help="write a synthetic task: long videos, arithmetic or images"
    )
    synth.add_argument("--out", required=True)
    synth.add_argument(
        "--task",
        default="video",
        choices=["video", "arithmetic", "image"],
        help="video: the long-video reasoning task; arithmetic: math and word problems (free-text answers); "
        "image: a coloured square's colour or position (image rows)",
    )
    synth.add_argument("--train", type=int, default=600)
    synth.add_argument("--test", type=int, default=200)
    synth.add_argument("--frames", type=int, default=32, help="frames per video: tens to thousands")
    synth.add_argument("--fps", type=float, default=4.0)
    synth.add_argument("--size", type=int, default=56, help="frame or image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--audio",
        action="store_true",
        help="video task only: the audio-visual variant (a sound track with one beep of four pitches; half "
        "the questions need it; the fixed-options form)",
    )

    train = sub.add_parser("train", parents=common, help="SFT or RL from a config")
    train.add_argument("stage", choices=["sft", "rl"])
    _config_file(train)
    _overrides(train)

    ev = sub.add_parser("eval", parents=common, help="accuracy per category on data.test_path")
    _config_file(ev)
    ev.add_argument("--out", default=None, help="where report.json goes (default: trainer.out_dir/eval)")
    ev.add_argument(
        "--benchmark",
        nargs=2,
        metavar=("NAME", "PATH"),
        default=None,
        help="longvideo-reason DIR (LongVideo-Reason-eval files) or rows FILE: strict and lenient "
        "accuracy per category, per-item predictions",
    )
    _overrides(ev)

    cache = sub.add_parser("cache-embeds", parents=common, help="precompute video embeddings into data.embed_cache_dir")
    _config_file(cache)
    _overrides(cache)

    show = sub.add_parser(
        "config", parents=common, help="print the resolved config as commented YAML (no arguments: the defaults)"
    )
    _config_file(show)
    _overrides(show)

    export = sub.add_parser("export", parents=common, help="checkpoint -> Hugging Face directory")
    export.add_argument("--ckpt", required=True, help="a step_N checkpoint, or a run directory (its newest)")
    export.add_argument("--out", required=True)
    export.add_argument("--overwrite", action="store_true", help="replace --out when it already holds files")

    report = sub.add_parser("report", parents=common, help="plots + HTML summary of a run directory")
    report.add_argument("run_dir")

    bench = sub.add_parser("bench", parents=common, help="benchmarks against plain transformers")
    bench.add_argument("which", choices=["rollout", "train", "step", "gen"])
    bench.add_argument("args", nargs=argparse.REMAINDER)

    datagen = sub.add_parser(
        "datagen", parents=common, help="LongVideo-Reason-style questions from clip captions (resumable)"
    )
    datagen.add_argument("--videos", default=None, help="a directory of videos or a .jsonl/.parquet of rows")
    datagen.add_argument("--out", default=None, help="output directory (datagen.out_dir)")
    _config_file(datagen)
    _overrides(datagen)

    serve = sub.add_parser(
        "serve", parents=common, help="an OpenAI-compatible HTTP server of a model (POST /v1/chat/completions)"
    )
    from longrl.serve.config import ServeConfig, field_help

    helps = field_help()
    for f in dataclasses.fields(ServeConfig):
        serve.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=f.default,
            required=f.name == "model",
            help=helps.get(f.name),
        )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse like argparse, but ``key=value`` overrides may also follow a subcommand's options
    (``train rl --config my.yaml rollout.n=8``); argparse alone takes positionals in one run."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # a word without "=" goes on to load_config too, which says what an override must look like
    stray = [a for a in extra if a.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _user_errors() -> dict[type, int]:
    """Bad input the user can fix, and its exit code; anything else is a bug and keeps its traceback."""
    from longrl.config_utils import ConfigError
    from longrl.data.rows import RowError
    from longrl.data.video import VideoError
    from longrl.infra.checkpoint import CheckpointError
    from longrl.infra.guard import NonFiniteError
    from longrl.rewards.model import JudgeFailureError

    return {
        ConfigError: 2,
        RowError: 1,
        VideoError: 1,
        CheckpointError: 1,
        JudgeFailureError: 1,
        NonFiniteError: 1,
        OSError: 1,
        ValueError: 1,
    }


def find_benchmarks() -> None:
    """Put the source checkout's ``benchmarks/`` first on the import path: the benchmarks live beside
    the library, not in it (they are not installed with the package)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):  # the checkout of src/longrl, or here
        if (root / "benchmarks" / "rollout.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return
    raise ValueError(
        "longrl bench runs from a source checkout: its benchmarks/ folder is not installed with the "
        "package; clone the repository and run longrl bench from it"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as err:
        code = next((c for kind, c in _user_errors().items() if isinstance(err, kind)), None)
        if code is None:
            raise
        if args.debug:
            traceback.print_exc()
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return code


def _dispatch(args) -> int:
    if args.command == "quickstart" and args.task in ("sd3", "wan"):
        from longrl.gen.quickstart import gen_quickstart
        from longrl.quickstart import parse_seeds

        seeds = parse_seeds(args.seeds) if args.seeds is not None else [0 if args.seed is None else args.seed]
        gen_quickstart(args.out, seeds, args.overrides, kind=args.task)
        print(f"report: {args.out}/report.json")
        return 0
    if args.command == "quickstart":
        from longrl.quickstart import QuickstartData, parse_seeds, quickstart, sweep

        data = QuickstartData.for_task(
            args.task,
            num_train=args.train_rows,
            sft_rows=args.sft_rows,
            num_test=args.test_rows,
            frames=args.frames,
            reasoning=args.reasoning,
        )
        if args.seeds is not None:
            if args.seed is not None or args.sft_model:
                raise ValueError("--seeds runs whole quickstarts: drop --seed and --sft-model")
            sweep(args.out, parse_seeds(args.seeds), args.algorithm, args.overrides, data)
            print(f"table: {args.out}/sweep.md")
            return 0
        seed = [] if args.seed is None else [f"trainer.seed={args.seed}"]
        quickstart(args.out, args.algorithm, [*args.overrides, *seed], data, sft_model=args.sft_model)
        print(f"report: {args.out}/report.json")
        return 0
    if args.command == "data" and getattr(args, "audio", False) and args.task != "video":
        raise ValueError(f"--audio gives the video task a sound track; --task {args.task} has none: drop --audio")
    if args.command == "data" and args.task == "arithmetic":
        from longrl.data.arithmetic import ArithmeticConfig, generate_arithmetic

        train, test = generate_arithmetic(
            ArithmeticConfig(out_dir=args.out, num_train=args.train, num_test=args.test, seed=args.seed)
        )
        print(f"wrote {train} and {test}")
        return 0
    if args.command == "data" and args.task == "image":
        from longrl.data.shapes import ShapesConfig, generate_shapes

        train, test = generate_shapes(
            ShapesConfig(out_dir=args.out, num_train=args.train, num_test=args.test, size=args.size, seed=args.seed)
        )
        print(f"wrote {train} and {test}")
        return 0
    if args.command == "data":
        from longrl.data.synth import SynthConfig, generate_synth

        train, test = generate_synth(
            SynthConfig(
                out_dir=args.out,
                num_train=args.train,
                num_test=args.test,
                frames=args.frames,
                fps=args.fps,
                size=args.size,
                seed=args.seed,
                audio=args.audio,
                options="fixed" if args.audio else "shuffled",
            )
        )
        print(f"wrote {train} and {test}")
        return 0
    if args.command == "train":
        from longrl.train.run import run_training

        run_training(args.stage, args.config, args.overrides)
        return 0
    if args.command == "eval" and args.benchmark:
        from longrl.eval.benchmark import run_benchmark

        kind, path = args.benchmark
        run_benchmark(args.config, args.overrides, kind, path, args.out)
        return 0
    if args.command == "eval":
        from longrl.eval.run import run_eval

        run_eval(args.config, args.overrides, args.out)
        return 0
    if args.command == "cache-embeds":
        from longrl.cache_embeds import run_cache_embeds

        run_cache_embeds(args.config, args.overrides)
        return 0
    if args.command == "config":
        from longrl.config import Config, load_config
        from longrl.config_doc import render

        sys.stdout.write(render(load_config(args.config, args.overrides), Config()))
        return 0
    if args.command == "export":
        from longrl.infra.export import export_hf

        print(f"exported to {export_hf(args.ckpt, args.out, overwrite=args.overwrite)}")
        return 0
    if args.command == "report":
        from longrl.infra.report import render_report

        print(f"report: {render_report(args.run_dir)}")
        return 0
    if args.command == "bench":
        import importlib

        from longrl.dist.env import world_size_from_env

        find_benchmarks()
        if args.which in ("train", "rollout") and world_size_from_env() > 1:  # under torchrun: over a dp x sp mesh
            importlib.import_module("benchmarks.dist").main(args.which, args.args)
            return 0
        status = importlib.import_module(f"benchmarks.{args.which}").main(args.args)
        return status if isinstance(status, int) else 0  # train and step return their result rows
    if args.command == "datagen":
        from longrl import config_utils
        from longrl.datagen.config import DatagenConfig
        from longrl.datagen.run import report_table, run_datagen

        cfg = config_utils.load(DatagenConfig, args.config, args.overrides)
        cfg.videos, cfg.out_dir = args.videos or cfg.videos, args.out or cfg.out_dir
        print(report_table(run_datagen(cfg)), end="")
        return 0
    if args.command == "serve":
        from longrl.serve.app import run_server
        from longrl.serve.config import ServeConfig

        run_server(ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
