"""The routing gates of every PEFT method on the real default backbone ."""

import json
import subprocess
import sys

import pytest
import torch

from clearpeft.backbone import load_classifier, load_tokenizer
from clearpeft.peft import ROUTABLE, build_model, load_model

TOL = 1e-5
TEXTS = ["a gorgeous , witty , seductive movie .",
         "the film is n't funny .",
         "it 's a long , slow and ultimately pointless affair that nobody asked for .",
         "fine ."]


@pytest.fixture(scope="module")
def batch():
    return dict(load_tokenizer(None)(TEXTS, padding=True, return_tensors="pt"))


def randomised(method, seed=1):
    model = build_model(method, num_labels=5).eval()
    gen = torch.Generator().manual_seed(seed)
    for _, param in model.named_parameters():
        if param.requires_grad:
            param.data = torch.randn(param.shape, generator=gen) * 0.05
    return model


def frozen_logits(model, batch):
    """The pre-trained encoder with the routed model's own (trained) head and no PEFT at all."""
    reference = load_classifier(None, num_labels=5).eval()
    head = {k.split("classifier.")[-1].replace("modules_to_save.default.", ""): v
            for k, v in model.trainable_state().items() if "classifier." in k and "original_module" not in k}
    reference.classifier.load_state_dict(head)
    with torch.no_grad():
        return reference(**batch).logits


def sample_alone(batch, i):
    length = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :length] for k, v in batch.items()}


@pytest.mark.parametrize("method", ROUTABLE)
def test_gates_zero_one_and_mixed(method, batch):
    model = randomised(method)
    layers, n = model.num_layers, len(TEXTS)
    with torch.no_grad():
        plain = model(**batch)
        with model.routing(torch.ones(layers, n)):
            ones = model(**batch)
        with model.routing(torch.zeros(layers, n)):
            zeros = model(**batch)
        gates = (torch.rand(layers, n, generator=torch.Generator().manual_seed(3)) > 0.5).float()
        gates[:, 0] = torch.tensor([1.0, 0.0] * (layers // 2))  # a sample with a known mix
        with model.routing(gates):
            mixed = model(**batch)
        alone = []
        for i in range(n):
            with model.routing(gates[:, i : i + 1]):
                alone.append(model(**sample_alone(batch, i)))
    frozen = frozen_logits(model, batch)
    assert (plain - frozen).abs().max() > 1e-2, "randomised PEFT weights must change the logits"
    assert (zeros - frozen).abs().max() < TOL
    assert (ones - plain).abs().max() < TOL
    assert (mixed - torch.cat(alone)).abs().max() < TOL
    assert (mixed[0] - plain[0]).abs().max() > 1e-4 and (mixed[0] - zeros[0]).abs().max() > 1e-4


@pytest.mark.parametrize("method", ROUTABLE)
def test_no_gradient_through_closed_gates(method, batch):
    model = randomised(method).train()
    labels = torch.tensor([0, 1, 2, 3])
    with model.routing(torch.zeros(model.num_layers, len(TEXTS))):
        torch.nn.functional.cross_entropy(model(**batch), labels).backward()
    for name, param in model.named_parameters():
        if param.requires_grad and "classifier" not in name:
            assert param.grad is None or param.grad.abs().max() == 0, name
    # ... and an open gate of one layer for one sample reaches that layer's modules.
    model.zero_grad()
    gates = torch.zeros(model.num_layers, len(TEXTS))
    gates[2, 1] = 1.0
    with model.routing(gates):
        torch.nn.functional.cross_entropy(model(**batch), labels).backward()
    touched = [n for n, p in model.named_parameters()
               if p.requires_grad and "classifier" not in n and p.grad is not None and p.grad.abs().max() > 0]
    assert touched
    if method != "prompt":  # the prompt table holds every layer in one tensor
        assert all(".2." in n or "__2__" in n for n in touched), touched


def test_fractional_gate_and_shape_errors(batch):
    model = randomised("lora")
    with torch.no_grad():
        plain = model(**batch)
        with model.routing(torch.zeros(model.num_layers, 4)):
            zeros = model(**batch)
        with model.routing(torch.full((model.num_layers, 4), 0.5)):
            half = model(**batch)
    assert (half - plain).abs().max() > 1e-4 and (half - zeros).abs().max() > 1e-4
    with pytest.raises(ValueError):
        with model.routing(torch.zeros(model.num_layers, 3)):
            model(**batch)
    with pytest.raises(ValueError):
        model.gates.set(torch.full((model.num_layers, 4), 2.0))
    with pytest.raises(ValueError, match="no PEFT modules"):
        with build_model("full", 5).routing(torch.zeros(6, 4)):
            pass


@pytest.mark.parametrize("method", ["lora", "prompt", "adapter", "bitfit", "full"])
def test_save_and_load_round_trip(method, batch, tmp_path):
    model = randomised(method)
    model.save_trained(tmp_path)
    again = load_model(tmp_path)
    with torch.no_grad():
        assert (model(**batch) - again.eval()(**batch)).abs().max() < TOL


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_peft_format_loads_with_peft(method, batch, tmp_path):
    from peft import PeftModel

    model = randomised(method)
    model.save_trained(tmp_path)
    base = load_classifier(None, num_labels=5)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    if method == "lora":
        with torch.no_grad():
            assert (peft_model(**batch).logits - model(**batch)).abs().max() < TOL
    else:  # prefix tuning: same trained prompt table
        ours = model.peft_model().prompt_encoder["default"].embedding.weight
        theirs = peft_model.prompt_encoder["default"].embedding.weight
        assert torch.equal(ours, theirs)


def test_trainable_counts():
    counts = {m: build_model(m, 5).num_trainable() for m in ["lora", "prompt", "adapter", "bitfit", "full"]}
    head = 384 * 5 + 5
    assert counts["lora"] == head + 6 * 2 * (384 * 4 + 4 * 384)
    assert counts["prompt"] == head + 20 * 6 * 2 * 384
    assert counts["adapter"] == head + 6 * 2 * (384 * 16 + 16 + 16 * 384 + 384)
    assert counts["bitfit"] == head + 6 * (4 * 384 + 1536 + 384 + 2 * 384)
    assert counts["full"] == 22_713_216 + head


def test_methods_command():
    out = subprocess.run([sys.executable, "-m", "clearpeft", "methods", "--model", "default", "--num-labels", "5",
                          "--json"], capture_output=True, text=True, check=True)
    rows = {r["method"]: r for r in json.loads(out.stdout)}
    assert rows["lora"]["trainable_params"] == 38789
    assert rows["bitfit"]["trainable_params"] == 27269
    assert rows["full"]["routable"] is False
