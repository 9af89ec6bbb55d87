"""The ``longrl`` command.

    longrl quickstart [--out DIR] [--algorithm NAME] [--sft-model DIR] [key=value ...]
    longrl data synth --out DIR [--train N] [--test N] [--frames F] [--size PX] [--seed S]
    longrl train sft|rl [--config YAML] [key=value ...]
    longrl eval [--config YAML] [--benchmark longvideo-reason DIR] [key=value ...]
    longrl cache-embeds [--config YAML] [key=value ...]
    longrl export --ckpt DIR --out HF_DIR
    longrl report RUN_DIR
    longrl bench rollout|train ...
    longrl datagen --videos DIR|ROWS --out DIR [--config YAML] [key=value ...]
    longrl serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key-env NAME] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides in dotted form, e.g. rollout.n=8 rl.steps=100")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longrl", description="RL for vision-language models on long videos")
    sub = parser.add_subparsers(dest="command", required=True)

    qs = sub.add_parser("quickstart", help="offline end-to-end run: synthetic videos -> SFT -> RL -> eval")
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--algorithm", default="grpo", help="grpo | dapo | reinforce_pp | rloo | drgrpo | gspo")
    qs.add_argument("--train-rows", type=int, default=2400, help="RL pool of synthetic videos")
    qs.add_argument("--sft-rows", type=int, default=600, help="the pool's first rows, with reasoning, for SFT")
    qs.add_argument("--test-rows", type=int, default=400)
    qs.add_argument("--frames", type=int, default=32, help="frames per synthetic video file")
    qs.add_argument("--sft-model", default=None,
                    help="start RL from this SFT model (an earlier run's OUT/sft_model) instead of training one")
    qs.add_argument("--seed", type=int, default=None, help="drives data, initialization and sampling (trainer.seed)")
    qs.add_argument("--seeds", default=None,
                    help="run once per seed (e.g. 0-4) into OUT/seed_S and print a table with mean and spread")
    _overrides(qs)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the synthetic long-video reasoning task")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, default=600)
    synth.add_argument("--test", type=int, default=200)
    synth.add_argument("--frames", type=int, default=32, help="frames per video: tens to thousands")
    synth.add_argument("--fps", type=float, default=4.0)
    synth.add_argument("--size", type=int, default=56)
    synth.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="SFT or RL from a config")
    train.add_argument("stage", choices=["sft", "rl"])
    train.add_argument("--config", default=None)
    _overrides(train)

    ev = sub.add_parser("eval", help="accuracy per category on data.test_path")
    ev.add_argument("--config", default=None)
    ev.add_argument("--out", default=None, help="where report.json goes (default: trainer.out_dir/eval)")
    ev.add_argument("--benchmark", nargs=2, metavar=("NAME", "PATH"), default=None,
                    help="longvideo-reason DIR (LongVideo-Reason-eval files) or rows FILE: strict and lenient "
                         "accuracy per category, per-item predictions")
    _overrides(ev)

    cache = sub.add_parser("cache-embeds", help="precompute video embeddings into data.embed_cache_dir")
    cache.add_argument("--config", default=None)
    _overrides(cache)

    export = sub.add_parser("export", help="checkpoint -> Hugging Face directory")
    export.add_argument("--ckpt", required=True)
    export.add_argument("--out", required=True)

    report = sub.add_parser("report", help="plots + HTML summary of a run directory")
    report.add_argument("run_dir")

    bench = sub.add_parser("bench", help="benchmarks against plain transformers")
    bench.add_argument("which", choices=["rollout", "train"])
    bench.add_argument("args", nargs=argparse.REMAINDER)

    datagen = sub.add_parser("datagen", help="LongVideo-Reason-style questions from clip captions (resumable)")
    datagen.add_argument("--videos", default=None, help="a directory of videos or a .jsonl/.parquet of rows")
    datagen.add_argument("--out", default=None, help="output directory (datagen.out_dir)")
    datagen.add_argument("--config", default=None)
    _overrides(datagen)

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server of a model (POST /v1/chat/completions)")
    from longrl.serve.config import ServeConfig, field_help

    helps = field_help()
    for f in dataclasses.fields(ServeConfig):
        serve.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                           required=f.name == "model", help=helps.get(f.name))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from longrl.config_utils import ConfigError
    from longrl.data.rows import RowError
    from longrl.data.video import VideoError
    from longrl.train.checkpoint import CheckpointError

    try:
        return _dispatch(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (RowError, VideoError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    if args.command == "quickstart":
        from longrl.quickstart import QuickstartData, parse_seeds, quickstart, sweep

        data = QuickstartData(num_train=args.train_rows, sft_rows=args.sft_rows, num_test=args.test_rows,
                              frames=args.frames)
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
    if args.command == "data":
        from longrl.data.synth import SynthConfig, generate_synth

        train, test = generate_synth(SynthConfig(out_dir=args.out, num_train=args.train, num_test=args.test,
                                                 frames=args.frames, fps=args.fps, size=args.size, seed=args.seed))
        print(f"wrote {train} and {test}")
        return 0
    if args.command == "train":
        from longrl.train.run import run_training

        run_training(args.stage, args.config, args.overrides)
        return 0
    if args.command == "eval" and args.benchmark:
        from longrl.eval.benchmark import run_benchmark

        run_benchmark(args.config, args.overrides, *args.benchmark, args.out)
        return 0
    if args.command == "eval":
        from longrl.train.run import run_eval

        run_eval(args.config, args.overrides, args.out)
        return 0
    if args.command == "cache-embeds":
        from longrl.train.run import run_cache_embeds

        run_cache_embeds(args.config, args.overrides)
        return 0
    if args.command == "export":
        from longrl.train.export import export_hf

        print(f"exported to {export_hf(args.ckpt, args.out)}")
        return 0
    if args.command == "report":
        from longrl.train.report import render_report

        print(f"report: {render_report(args.run_dir)}")
        return 0
    if args.command == "bench":
        if args.which == "rollout":
            from longrl.bench.rollout import main as bench_main
        else:
            from longrl.bench.train import main as bench_main
        return bench_main(args.args) or 0
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
