"""Every run's weights/README.md: a Hugging Face model card whose front matter parses and whose loading code
works as written, for every method (one tiny run each: 32 SST-5 samples, 1 epoch, 16 tokens)."""

import re

import numpy as np
import pytest
import yaml

import clearpeft
from clearpeft.backbone import resolve_model
from clearpeft.modelcard import DEFAULT_BASE_MODEL, model_card, noise_estimate_statement

METHODS = ("lora", "prompt", "adapter", "bitfit", "full")
TEXTS = ["a great movie", "the worst film of the year", "it is a film"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    made = {}

    def get(method: str):
        if method not in made:
            made[method] = clearpeft.fit(
                "sst5", peft=method, routing="none" if method == "full" else "clean",
                noise="clean" if method == "full" else "symmetric:0.4", max_train_samples=32, max_eval_samples=32,
                epochs=1, warmup_epochs=0, max_length=16, batch_size=16, seed=0,
                out=tmp_path_factory.mktemp(method) / "run", progress=False, log=lambda m: None)
        return made[method]

    return get


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_run_has_a_model_card_that_parses(runs, method):
    run = runs(method)
    card = (run.folder / "weights" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "clearpeft" and meta["base_model"] == DEFAULT_BASE_MODEL
    assert meta["pipeline_tag"] == "text-classification" and meta["metrics"] == ["accuracy"]
    assert {"clearpeft", "noisy-labels", method} <= set(meta["tags"]) and meta["datasets"] == ["SetFit/sst5"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == round(run.summary["last_acc"], 4)
    summary = run.summary
    assert f"{100 * summary['peak_acc']:.1f}% | {100 * summary['avg_acc']:.1f}% | {100 * summary['last_acc']:.1f}%" \
        in card
    assert "estimated noise rate: " in card and all(f"| {name} |" in card for name in run.label_names)
    assert ("no noise injected" in card) == (method == "full")
    assert "32 training samples" in card

    # the loading code of the card, as written (the hub name of the backbone swapped for its packaged copy)
    blocks = [b.replace("RUN_DIR", str(run.folder)).replace(DEFAULT_BASE_MODEL, resolve_model("default"))
              for b in code_blocks(card)]
    expected = run.predict_proba(TEXTS)
    if method == "lora":
        namespace = {}
        exec(blocks[0], namespace)  # PeftModel.from_pretrained on weights/peft
        import torch

        batch = namespace["tokenizer"](TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(namespace["model"](**batch).logits, -1).numpy()
        assert np.allclose(probs, expected, atol=1e-5)
    if method == "prompt":  # what the card says: peft reads the folder, but its forward is not the run's model
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        base = AutoModelForSequenceClassification.from_pretrained(resolve_model("default"), num_labels=5)
        model = PeftModel.from_pretrained(base, str(run.folder / "weights" / "peft")).eval()
        batch = AutoTokenizer.from_pretrained(resolve_model("default"))(TEXTS, padding=True, return_tensors="pt")
        try:
            with torch.no_grad():
                probs = torch.softmax(model(**batch).logits, -1).numpy()
        except Exception as exc:  # peft <= 0.21
            assert "past key values" in str(exc)
        else:  # peft >= 0.22: it runs, with other outputs
            assert not np.allclose(probs, expected, atol=1e-3)
    namespace = {}
    exec(blocks[-1], namespace)  # clearpeft.load_run, every method
    assert np.allclose(namespace["run"].predict_proba(TEXTS), expected)


def test_card_without_test_split_or_estimate():
    config = {"label_names": ["a|b", "c"], "max_length": 32, "model": "/models/mine"}
    summary = {"method": "bitfit", "dataset": "in-memory:abc", "routing": "clean-auto", "noise": "clean",
               "peak_acc": None, "avg_acc": None, "last_acc": None, "estimated_noise_rate": None, "epochs": 3,
               "seed": 0, "trainable_params": 1000}
    card = model_card(config, summary)
    meta = front_matter(card)
    assert meta["base_model"] == "/models/mine" and "model-index" not in meta and "datasets" not in meta
    assert "No test split" in card and "No estimate" in card and "| 0 | a/b |" in card


def test_noise_statement_follows_the_estimates_source():
    config = {"label_names": ["a", "b", "c"], "max_length": 32, "model": "/models/mine"}
    summary = {"method": "lora", "dataset": "in-memory:abc", "routing": "clean-auto", "noise": "symmetric:0.4",
               "realized_noise_rate": 0.41, "peak_acc": None, "avg_acc": None, "last_acc": None, "epochs": 3,
               "seed": 0, "trainable_params": 1000, "estimated_noise_rate": 0.384, "noise_rate_source": "confusion floor"}
    card = model_card(config, summary)
    assert "estimated noise rate: 0.384. The confusion floor read more than the loss fit" in card
    sources = ("loss fit", "confusion floor", "confusion floor + one-way flows", "confident learning")
    said = {source: noise_estimate_statement(0.3, source) for source in sources}
    assert len(set(said.values())) == 4 and "lower bound" in said["confusion floor"]
    assert "one way" in said["confusion floor + one-way flows"]
    assert noise_estimate_statement(0.0, "loss fit").startswith("0 means the loss fit found no mode")
