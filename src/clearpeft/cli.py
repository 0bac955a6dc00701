"""The ``clearpeft`` command line. Parsing, printing and one-line errors live here, not in the core."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import RunStopped, UserError, WriteError

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the usage block otherwise)
        raise UserError(f"{self.prog}: {message} (see --help)")


def _dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=_field_help("data_dir"))
    p.add_argument("--text-column", default=_field_default("text_column"), help=_field_help("text_column"))
    p.add_argument("--label-column", default=_field_default("label_column"), help=_field_help("label_column"))
    p.add_argument("--test-file", help=_field_help("test_file").replace("%", "%%"))
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _load(args):
    from .data import load_data

    return load_data(args.dataset, args.data_dir, text_column=args.text_column, label_column=args.label_column,
                     test_file=args.test_file)


def cmd_data(args) -> int:
    import numpy as np

    bundle = _load(args)
    counts = np.bincount(bundle.train.labels, minlength=bundle.num_labels)
    info = {
        "name": bundle.name,
        "train": len(bundle.train), "dev": len(bundle.dev) if bundle.dev is not None else None,
        "test": len(bundle.test), "num_labels": bundle.num_labels,
        "label_names": list(bundle.label_names),
        "train_histogram": {name: int(c) for name, c in zip(bundle.label_names, counts)},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}: train {info['train']}, dev {info['dev'] if info['dev'] is not None else '-'}, "
          f"test {info['test']}, {info['num_labels']} classes")
    width = max(len(n) for n in bundle.label_names)
    for i, name in enumerate(bundle.label_names):
        print(f"  {i:>3}  {name:<{width}}  {counts[i]:>6}")
    return 0


def cmd_noise(args) -> int:
    from .noise import NoiseSpec, apply_noise, noisy_labels_csv
    from .runs import atomic_write_text

    spec = NoiseSpec.parse(args.noise)
    bundle = _load(args)
    features = None
    if spec.kind == "instance":
        from .backbone import embed_texts

        features = embed_texts(bundle.train.texts, args.model)
    noisy = apply_noise(bundle.train.labels, bundle.num_labels, spec, args.seed, features=features)
    if args.out:
        try:
            atomic_write_text(args.out, noisy_labels_csv(bundle.train.texts, bundle.train.labels, noisy.noisy))
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    result = {"dataset": bundle.name, "noise": str(spec), "seed": args.seed, "samples": len(noisy.noisy),
              "realized_noise_rate": noisy.realized_rate, "transition_matrix": noisy.transition.round(4).tolist(),
              "out": args.out}
    if noisy.sample_probs is not None:  # instance noise: how much the flip rate varies inside each class
        import numpy as np

        flip = 1.0 - noisy.sample_probs[np.arange(len(noisy.noisy)), bundle.train.labels]
        result["flip_probability_std_within_class"] = {
            name: float(flip[bundle.train.labels == c].std()) for c, name in enumerate(bundle.label_names)
            if (bundle.train.labels == c).any()}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{bundle.name} {spec} seed {args.seed}: realized noise rate {noisy.realized_rate:.4f} "
          f"({int(noisy.corrupted.sum())} of {len(noisy.noisy)} labels changed)")
    if "flip_probability_std_within_class" in result:
        spread = result["flip_probability_std_within_class"].values()
        print(f"per-sample flip probability varies within each class: std {min(spread):.3f} to {max(spread):.3f}")
    if bundle.num_labels <= 20:
        print("empirical transition matrix P(noisy | true):")
        for i, row in enumerate(noisy.transition):
            print(f"  {i:>2} " + " ".join(f"{v:.3f}" for v in row))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_methods(args) -> int:
    from .peft import METHODS, ROUTABLE, build_model

    rows = []
    for method in METHODS:
        model = build_model(method, args.num_labels, args.model)
        rows.append({"method": method, "trainable_params": model.num_trainable(), "total_params": model.num_total(),
                     "trainable_percent": 100.0 * model.num_trainable() / model.num_total(),
                     "routable": method in ROUTABLE})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'method':<8} {'trainable':>12} {'total':>12} {'%':>8}  routable")
    for r in rows:
        print(f"{r['method']:<8} {r['trainable_params']:>12,} {r['total_params']:>12,} "
              f"{r['trainable_percent']:>7.3f}%  {'yes' if r['routable'] else 'no'}")
    return 0


def _train_config(args):
    """Defaults, then the YAML file, then the flags given on the command line, each checked as its field says."""
    from .config import TrainConfig

    values = {}
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read config {args.config}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, dict):
            raise UserError(f"config {args.config} must be a mapping of option: value")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        TrainConfig.from_mapping(values, f"config {args.config}")  # names the file in its errors
    values.update({k: v for k, v in vars(args).items() if k in TrainConfig.field_names()})
    return TrainConfig.from_mapping(values)


def cmd_train(args) -> int:
    cfg = _train_config(args)
    from . import runs

    # A folder that cannot take a new run is refused before torch loads (seconds); one another run holds is
    # left to train(), which says who holds it.
    if not args.resume and not (Path(cfg.out) / runs.LOCK).exists():
        runs.check_run_dir(cfg.out, {}, resume=False, overwrite=args.overwrite, defaults={})
    from .api import fit

    options = {k: v for k, v in vars(cfg).items() if k not in ("dataset", "text_column", "label_column", "out")}
    run = fit(cfg.dataset, text_column=cfg.text_column, label_column=cfg.label_column, out=cfg.out,
              resume=args.resume, overwrite=args.overwrite, progress=not args.json,
              log=(lambda m: print(m, file=sys.stderr)) if args.json else print, **options)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch only rank 0 reports
        return 0
    summary = run.summary
    if args.json:
        print(json.dumps(summary))
        return 0
    print()
    print(f"{'run':<22} {cfg.out}")
    for key in ("method", "routing", "noise", "realized_noise_rate", "estimated_noise_rate", "noise_rate_source",
                "epochs", "keep", "kept_epoch", "delivered_acc", "peak_acc", "avg_acc", "last_acc", "peak_acc_routed",
                "avg_acc_routed", "trainable_params", "train_seconds"):
        value = summary[key]
        print(f"{key:<22} {value:.4f}" if isinstance(value, float) else f"{key:<22} {value}")
    for key in ("refit", "handed_over", "kept_samples") if summary.get("refit", "none") != "none" else ():
        print(f"{key:<22} {summary[key]}")
    return 0


def _file_texts(path: str):
    """The non-empty lines of a text file, stripped, read as they are used (a file of a million texts is never
    held in memory); the file is read through once first, so a bad byte fails before any output."""
    def lines():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line.strip()

    try:
        count = sum(1 for _ in lines())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return lines() if count else iter(())


def cmd_predict(args) -> int:
    from .api import load_run

    run = load_run(args.run_dir)
    texts = iter(args.text) if args.text is not None else _file_texts(args.file)
    first = next(texts, None)
    if first is None:
        raise UserError("nothing to predict: give --text or a --file with one text per line")
    out, count = sys.stdout, 0
    # one batch at a time: memory stays that of a batch however many texts come (benchmarks/load.py)
    for batch, probs in run.predict_proba_batches(_chain(first, texts)):
        for text, row in zip(batch, probs):
            k = int(row.argmax())
            if args.json:
                result = {"text": text, "label": k, "label_name": run.label_names[k], "probability": float(row[k]),
                          "probabilities": [round(float(v), 6) for v in row]}
                out.write(("[" if count == 0 else ", ") + json.dumps(result))
            else:
                out.write(f"{run.label_names[k]}\t{float(row[k]):.3f}\t{text}\n")
            count += 1
    if args.json:
        out.write("]\n")
    return 0


def _chain(first, rest):
    yield first
    yield from rest


def cmd_label_issues(args) -> int:
    from .api import load_run

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    frame = load_run(args.run_dir).label_issues(top=args.top)
    if args.json:
        print(frame.to_json(orient="records"))
        return 0
    print(f"{'score':>6}  {'given label':<24} {'predicted label':<24} text")
    for row in frame.itertuples():
        text = row.text if len(row.text) <= 100 else row.text[:97] + "..."
        print(f"{row.label_score:>6.3f}  {row.given_label[:24]:<24} {row.predicted_label[:24]:<24} {text}")
    return 0


def cmd_review(args) -> int:
    from .api import load_run

    path = load_run(args.run_dir).review(args.out)
    print(json.dumps({"review": str(path)}) if args.json else f"wrote {path}: open it in a browser")
    return 0


def cmd_grid(args) -> int:
    from .study.grid import run_grid

    out = args.out or str(Path("results") / Path(args.config).stem)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    result = run_grid(args.config, out, log=log, progress=not args.json and args.workers == 1, workers=args.workers)
    done = f"{result['finished']}/{result['runs']} runs finished; results in {result['results']}"
    print(json.dumps(result) if args.json else done)
    return 0


def cmd_report(args) -> int:
    from .study.report import write_report

    result = write_report(args.results_dirs, args.out, args.figures)
    print(json.dumps(result) if args.json else f"wrote {result['report']} ({result['runs']} runs, "
          f"{len(result['figures'])} figures in {args.figures})")
    return 0


def _field_help(name: str) -> str:
    from dataclasses import fields

    from .config import TrainConfig

    return next(f.metadata["help"] for f in fields(TrainConfig) if f.name == name)


def _field_default(name: str):
    from .config import config_defaults

    return config_defaults()[name]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help and default from the field itself. Values stay text here:
    TrainConfig.from_mapping converts and checks them, as it does a YAML file's."""
    from dataclasses import fields

    from .config import TrainConfig, flag
    from .peft import METHODS, TRAINING_DEFAULTS

    for f in fields(TrainConfig):
        text, constraint = f.metadata["help"].replace("%", "%%"), f.metadata["constraint"]
        if isinstance(constraint, tuple) and not all(c in text for c in constraint):
            text = f"{' | '.join(constraint)}: {text}"
        if isinstance(f.default, bool):
            p.add_argument(flag(f.name), action="store_true", default=argparse.SUPPRESS, help=text)
            continue
        if f.metadata["per_method"]:
            own = {m: METHODS[m][0].training_defaults[f.name] for m in METHODS
                   if f.name in METHODS[m][0].training_defaults}
            default = ", ".join(f"{m} {v:g}" for m, v in own.items())
            if len(own) < len(METHODS) and TRAINING_DEFAULTS[f.name] is not None:
                default += f", others {TRAINING_DEFAULTS[f.name]:g}"
            text += f" (default per method: {default})"
        elif f.default is not None:
            text += f" (default: {f.default})"
        p.add_argument(flag(f.name), default=argparse.SUPPRESS, help=text)
    p.add_argument("--config", help="YAML file of options; flags given here override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clearpeft", description="Parameter-efficient fine-tuning on noisy labels with CleaR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("data", help="split sizes, classes and class histogram of a data set")
    p.add_argument("dataset", metavar="DATASET")
    _dataset_options(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("noise", help="inject label noise into the training split and report it")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--noise", required=True, help=_field_help("noise"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the training split as index,text,label,noisy_label CSV")
    p.add_argument("--model", default="default", help="encoder for instance-dependent noise features")
    _dataset_options(p)
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("methods", help="trainable-parameter counts of every method on a backbone")
    p.add_argument("--model", default="default")
    p.add_argument("--num-labels", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="fine-tune with a PEFT method, with or without CleaR")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="labels and probabilities from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text", action="append", help="a text to classify (repeatable)")
    group.add_argument("--file", help="a file with one text per line")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("label-issues", help="the training samples most likely mislabelled, from a finished run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--top", type=int, default=20, help="how many to show (default: 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_label_issues)

    p = sub.add_parser("review", help="one HTML page to review the suspicious labels and export corrected data")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.html", help="the page (default: review.html in RUN_DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("grid", help="run every cell of a YAML experiment grid (skips finished, resumes killed)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--out", help="folder for the run folders and results.csv (default: results/<config stem>)")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once, each in its own process (a GPU: 4-8; a CPU: 1, which already uses every core)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON (progress goes to stderr)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("report", help="Markdown tables beside the paper's, and figures, from a grid's results")
    p.add_argument("results_dirs", metavar="RESULTS_DIR", nargs="+",
                   help="a grid's results folder; several (one per protocol) get a section each")
    p.add_argument("--out", default="docs/results.md", help="the Markdown file (default: docs/results.md)")
    p.add_argument("--figures", default="docs/figures", help="folder for the PNG figures (default: docs/figures)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"clearpeft: error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # not bad input: the command was right, the disk was not (docs/runs.md)
        print(f"clearpeft: error: {exc}", file=sys.stderr)
        return 1
    except RunStopped as exc:
        print(f"clearpeft: {exc.cli_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clearpeft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
