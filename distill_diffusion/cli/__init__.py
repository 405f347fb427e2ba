"""The ``distill-diffusion`` command: train, generate, eval, bench, quickstart, toy, inspect-student and
prepare-synthetic (teacher-generated latents for ``data.source: latents``).

User errors (bad path, bad config value, unknown method, unsupported model) print one line naming the
problem and the fix and exit with code 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from distill_diffusion.errors import UserError
from distill_diffusion.threads import enable_adaptive_threads

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a distillation method: train METHOD [--config FILE] [--section.option VALUE ...]",
        add_help=False,
    )
    p.add_argument("-h", "--help", action="store_true", dest="train_help")
    p.add_argument("method", nargs="?", help="method name (see `distill-diffusion train --help`)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from distill_diffusion.config import build_run_config, load_config, parse_overrides
    from distill_diffusion.trainers.methods.registry import METHODS, get_method_class

    rest = list(args.rest)
    if args.method is None or (args.train_help and not rest):
        print(_train_usage(METHODS))
        return 0
    method_cls = get_method_class(args.method)
    if "-h" in rest or "--help" in rest:
        print(method_help(args.method, method_cls))
        return 0
    config: dict = {}
    if "--config" in rest:
        i = rest.index("--config")
        if i + 1 >= len(rest):
            raise UserError("--config needs a YAML file path or a shipped config's name; pass --config FILE.yaml or e.g. --config tiny/lcm_lora")
        config = load_config(rest[i + 1])
        del rest[i : i + 2]
    run = build_run_config(args.method, method_cls, config, parse_overrides(rest))
    from distill_diffusion.trainers.engine.build import train

    out = train(run)
    print(f"done: {out}")
    return 0


def _train_usage(methods: dict[str, str]) -> str:
    from distill_diffusion.config import config_names

    return (
        "usage: distill-diffusion train METHOD [--config FILE.yaml|CONFIG] [--section.option VALUE ...]\n\n"
        f"methods: {', '.join(sorted(methods))}\n"
        f"shipped configs: {', '.join(config_names())}\n"
        "`distill-diffusion train METHOD --help` lists every option with its default.\n"
        "Options are --model.*, --data.*, --train.*, --phases.PHASE.*, --method.*; diffusers-style bare names such as\n"
        "--learning_rate, --mixed_precision or --resume_from_checkpoint latest work where unambiguous."
    )


def _option_lines(prefix: str, cls: type) -> list[str]:
    """``--prefix.field (default: ...)  help`` for each field of ``cls``, nested dataclass fields expanded."""
    from distill_diffusion.config_types import choices, field_help, field_types

    lines, helps, types_ = [], field_help(cls), field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += _option_lines(f"{prefix}.{f.name}", type(default))
            continue
        valid = choices(types_[f.name])
        text = f"  --{prefix}.{f.name} (default: {default!r}{'; one of: ' + ', '.join(map(str, valid)) if valid else ''})"
        lines.append(f"{text}  {helps[f.name]}" if f.name in helps else text)
    return lines


def method_help(method: str, method_cls: type) -> str:
    """Every option of every section (phases: one block per phase of the method), with defaults and the first
    line of the ``#:`` comment above the field."""
    from distill_diffusion.config import SECTIONS, PhaseConfig

    lines = [f"usage: distill-diffusion train {method} [--config FILE.yaml|CONFIG] [--section.option VALUE ...]", ""]
    blocks = {**SECTIONS, **{f"phases.{p}": PhaseConfig for p in getattr(method_cls, "phase_names", ("unet",))},
              "method": method_cls.config_class}
    for section, cls in blocks.items():
        lines += [f"{section} ({cls.__name__}):", *_option_lines(section, cls), ""]
    return "\n".join(lines)


def _add_toy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="the embedded tiny text-to-image world")
    toy = p.add_subparsers(dest="toy_cmd", required=True, parser_class=_Parser)
    init = toy.add_parser("init", help="write the toy dataset and a random-initialised tiny SD pipeline (seconds)")
    init.add_argument("dir", help="output folder (gets data/ and teacher/)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--sdxl", action="store_true", help="also write a random-initialised tiny SDXL pipeline to teacher_xl/")
    init.set_defaults(func=_cmd_toy_init)
    build = toy.add_parser("build", help="train the toy teacher (VAE, UNet) and a tiny CLIP, cached (minutes on a CPU)")
    build.add_argument("--force", action="store_true", help="rebuild even when a finished build is cached")
    build.add_argument("--cache_dir", default=None, help="cache folder (default: $DISTILL_DIFFUSION_CACHE or ~/.cache/distill-diffusion)")
    build.add_argument("--budget", choices=("full", "small"), default="full", help="full: the benchmark world; small: a quick try")
    build.add_argument("--sdxl", action="store_true",
                       help="also build the toy SDXL teacher into xl/ (about 10 more minutes on 2 cores); with --force, "
                            "rebuild only the XL teacher")
    build.set_defaults(func=_cmd_toy_build)


def _cmd_toy_init(args: argparse.Namespace) -> int:
    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(args.dir, seed=args.seed, sdxl=args.sdxl)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_toy_build(args: argparse.Namespace) -> int:
    from distill_diffusion.toy.build import ensure_toy_world, summary_lines

    if args.sdxl:
        from distill_diffusion.toy.build_xl import ensure_toy_xl_teacher, xl_summary_lines

        world = ensure_toy_xl_teacher(force=args.force, cache_dir=args.cache_dir, budget=args.budget)
        print("\n".join([*summary_lines(world), *xl_summary_lines(world)]))
        return 0
    world = ensure_toy_world(force=args.force, cache_dir=args.cache_dir, budget=args.budget)
    print("\n".join(summary_lines(world)))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """``bench NAME``: one subcommand per registered benchmark (generic ones and each method's)."""
    import importlib

    from distill_diffusion.bench.registry import benchmarks

    p = sub.add_parser("bench", help="benchmarks that print a table and write a results file")
    bench = p.add_subparsers(dest="bench_cmd", required=True, parser_class=_Parser)
    for name, module_path in benchmarks().items():
        module = importlib.import_module(module_path)
        command = bench.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(func=module.run)


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="toy world -> LCM-LoRA distillation -> FID/CLIP vs steps table, plot and grids (CPU)")
    p.add_argument("--output_dir", default="quickstart", help="where the LoRA and the benchmark go")
    p.add_argument("--cache_dir", default=None, help="toy-world cache (default: $DISTILL_DIFFUSION_CACHE or ~/.cache/distill-diffusion)")
    p.add_argument("--num_images", type=int, default=1024, help="images per (pipeline, steps) row (FID is biased upward at small N; compare rows at equal N)")
    p.add_argument("--lcm_steps", type=int, default=None, help="LCM training steps (default: the tiny/lcm_lora config's 500)")
    p.add_argument("--budget", default="full", help="toy-world build budget: full, or small for a quick try")
    p.add_argument("--sdxl", action="store_true", help="the same on the toy SDXL teacher (built once, ~11 min more) with tiny/lcm_lora_xl")
    p.add_argument("--fresh", action="store_true", help="measure the teacher's rows here instead of reading the toy world's reference rows")
    p.set_defaults(func=_cmd_quickstart)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from distill_diffusion.quickstart import run_quickstart

    run_quickstart(args.output_dir, args.cache_dir, args.num_images, args.lcm_steps, args.budget, sdxl=args.sdxl, fresh=args.fresh)
    return 0


def _add_inspect_student(sub: argparse._SubParsersAction) -> None:
    from distill_diffusion.trainers.methods.bksdm import inspect_student

    p = sub.add_parser("inspect-student", help=inspect_student.HELP)
    inspect_student.add_arguments(p)
    p.set_defaults(func=inspect_student.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distill-diffusion", description="Make Stable Diffusion fast by distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_toy(sub)
    _add_bench(sub)
    from distill_diffusion.cli.evaluation import add_eval, add_generate
    from distill_diffusion.cli.synthetic import add_prepare_synthetic

    add_generate(sub)
    add_eval(sub)
    _add_quickstart(sub)
    _add_inspect_student(sub)
    add_prepare_synthetic(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    enable_adaptive_threads()  # torch's CPU threads follow the cores other processes leave free
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", "resume with --resume_from_checkpoint latest")
        print(f"interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
