"""The gate identities on other BERT-family encoders, built locally from configs (random weights, no download):
bert-base-uncased's shape, RoBERTa and DeBERTa-v2."""

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

from clearpeft.peft import RoutedClassifier, method_config

TOL = 1e-5


def bert_base():
    return BertForSequenceClassification(BertConfig(num_labels=3))  # bert-base-uncased dimensions


def roberta():
    return RobertaForSequenceClassification(RobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3,
                                                          num_attention_heads=4, intermediate_size=128,
                                                          num_labels=3, pad_token_id=1))


def deberta():
    return DebertaV2ForSequenceClassification(DebertaV2Config(vocab_size=300, hidden_size=64, num_hidden_layers=3,
                                                              num_attention_heads=4, intermediate_size=128,
                                                              num_labels=3))


def batch(pad_id):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad_id, 0
    ids[2, 4:], mask[2, 4:] = pad_id, 0
    return ids, mask


CASES = [(bert_base, m, 0) for m in ("lora", "adapter", "bitfit", "prompt")] + \
        [(roberta, m, 1) for m in ("lora", "adapter", "bitfit", "prompt")] + \
        [(deberta, m, 0) for m in ("lora", "adapter", "bitfit")]


@pytest.mark.parametrize("build,method,pad_id", CASES, ids=[f"{b.__name__}-{m}" for b, m, _ in CASES])
def test_gate_identities(build, method, pad_id):
    torch.manual_seed(0)
    hf = build().eval()
    frozen_model = build().eval()
    frozen_model.load_state_dict(hf.state_dict())
    model = RoutedClassifier(hf, method, method_config(method)).eval()
    gen = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if param.requires_grad and "classifier" not in name and "pooler" not in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.2  # big enough to show in logits
    ids, mask = batch(pad_id)
    layers = model.num_layers
    gates = (torch.rand(layers, 3, generator=gen) > 0.5).float()
    with torch.no_grad():
        plain = model(ids, mask)
        with model.routing(torch.ones(layers, 3)):
            ones = model(ids, mask)
        with model.routing(torch.zeros(layers, 3)):
            zeros = model(ids, mask)
        with model.routing(gates):
            mixed = model(ids, mask)
        alone = []
        for i in range(3):
            n = int(mask[i].sum())
            with model.routing(gates[:, i : i + 1]):
                alone.append(model(ids[i : i + 1, :n], mask[i : i + 1, :n]))
        frozen = frozen_model(input_ids=ids, attention_mask=mask).logits
    assert (plain - frozen).abs().max() > 1e-3
    assert (zeros - frozen).abs().max() < TOL
    assert (ones - plain).abs().max() < TOL
    assert (mixed - torch.cat(alone)).abs().max() < TOL


def test_prompt_refuses_deberta():
    with pytest.raises(ValueError, match="BERT/RoBERTa"):
        RoutedClassifier(deberta(), "prompt", method_config("prompt"))
