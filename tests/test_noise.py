"""Label noise: spec parsing, realized rates on the real SST-5 training labels, reproducibility."""

import time
from pathlib import Path

import numpy as np
import pytest

from clearpeft.errors import UserError
from clearpeft.noise import KINDS, NoiseSpec, apply_noise, transition_matrix

K = 5


@pytest.fixture(scope="module")
def labels(sst5):
    return sst5.train.labels


def random_features(n, dim=64, seed=123):
    return np.random.default_rng(seed).standard_normal((n, dim))


# ---------------------------------------------------------------- NoiseSpec

@pytest.mark.parametrize("text,kind,rate", [("clean", "clean", 0.0), ("none", "clean", 0.0), (" CLEAN ", "clean", 0.0),
                                            ("clean:0", "clean", 0.0), ("symmetric:0.6", "symmetric", 0.6),
                                            ("Asymmetric:0.4", "asymmetric", 0.4), ("instance:1", "instance", 1.0),
                                            ("symmetric-exclusive: 0.2", "symmetric-exclusive", 0.2),
                                            ("symmetric:0", "symmetric", 0.0)])
def test_parse(text, kind, rate):
    assert NoiseSpec.parse(text) == NoiseSpec(kind, rate)


def test_str_round_trips():
    assert str(NoiseSpec.parse("symmetric:0.6")) == "symmetric:0.6"
    assert str(NoiseSpec.parse("none")) == "clean"
    for kind in KINDS[1:]:
        spec = NoiseSpec(kind, 0.35)
        assert NoiseSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text,pattern", [("gaussian:0.3", "unknown noise kind"), ("symmetric:abc", "not a number"),
                                          ("symmetric:1.5", r"outside \[0, 1\]"), ("asymmetric:-0.1", "outside"),
                                          ("symmetric:nan", "outside"), ("instance:inf", "outside"),
                                          ("symmetric", "no rate"), ("clean:0.5", "no noise rate"),
                                          ("symmetric:", "not a number")])
def test_parse_errors(text, pattern):
    with pytest.raises(UserError, match=pattern):
        NoiseSpec.parse(text)


def test_direct_construction_is_validated():
    with pytest.raises(UserError):
        NoiseSpec("uniform", 0.1)
    with pytest.raises(UserError):
        NoiseSpec("symmetric", 2.0)


# ---------------------------------------------------------------- realized rates on SST-5 train

def test_symmetric_keeps_some_draws_on_the_true_class(labels):
    result = apply_noise(labels, K, NoiseSpec.parse("symmetric:0.6"), seed=0)
    assert abs(result.realized_rate - 0.6 * (K - 1) / K) <= 0.02  # 0.48


def test_symmetric_exclusive_realizes_the_full_rate(labels):
    result = apply_noise(labels, K, NoiseSpec.parse("symmetric-exclusive:0.6"), seed=0)
    assert abs(result.realized_rate - 0.6) <= 0.02
    off_diagonal = result.transition - np.diag(np.diag(result.transition))
    assert np.allclose(np.diag(result.transition), 0.4, atol=0.04)
    assert np.allclose(off_diagonal.sum(1), 0.6, atol=0.04)


def test_asymmetric_flips_to_the_previous_class(labels):
    result = apply_noise(labels, K, NoiseSpec.parse("asymmetric:0.4"), seed=0)
    assert abs(result.realized_rate - 0.4) <= 0.02
    c = result.corrupted
    assert np.array_equal(result.noisy[c], (labels[c] - 1) % K)
    assert np.array_equal(result.noisy[~c], labels[~c])


def test_instance_with_seeded_features(labels):
    result = apply_noise(labels, K, NoiseSpec.parse("instance:0.4"), seed=0, features=random_features(len(labels)))
    assert abs(result.realized_rate - 0.4) <= 0.03
    probs = result.sample_probs
    assert probs.shape == (len(labels), K)
    assert np.allclose(probs.sum(1), 1.0) and probs.min() >= 0
    # Every class receives flips, not just one neighbour.
    assert (result.transition[np.eye(K, dtype=bool) == 0] > 0.03).all()


def test_instance_needs_matching_features(labels):
    with pytest.raises(UserError, match="needs features"):
        apply_noise(labels, K, NoiseSpec.parse("instance:0.4"), seed=0)
    with pytest.raises(UserError, match="shape"):
        apply_noise(labels, K, NoiseSpec.parse("instance:0.4"), seed=0, features=random_features(10))
    bad = random_features(len(labels))
    bad[3, 3] = np.nan
    with pytest.raises(UserError, match="NaN"):
        apply_noise(labels, K, NoiseSpec.parse("instance:0.4"), seed=0, features=bad)


def test_clean_and_extreme_rates(labels):
    clean = apply_noise(labels, K, NoiseSpec.parse("clean"), seed=0)
    assert np.array_equal(clean.noisy, labels) and clean.realized_rate == 0.0
    assert np.array_equal(clean.transition, np.eye(K))
    assert clean.noisy is not labels and clean.noisy.dtype == np.int64 and clean.corrupted.dtype == bool
    assert apply_noise(labels, K, NoiseSpec("symmetric", 0.0), seed=0).realized_rate == 0.0
    assert apply_noise(labels, K, NoiseSpec("asymmetric", 1.0), seed=0).realized_rate == 1.0
    assert apply_noise(labels, K, NoiseSpec("symmetric-exclusive", 1.0), seed=0).realized_rate == 1.0


@pytest.mark.parametrize("spec", ["symmetric:0.6", "symmetric-exclusive:0.6", "asymmetric:0.4", "instance:0.4"])
def test_same_seed_same_noise_other_seed_other_noise(labels, spec):
    spec = NoiseSpec.parse(spec)
    features = random_features(len(labels))
    a = apply_noise(labels, K, spec, seed=7, features=features)
    b = apply_noise(labels, K, spec, seed=7, features=features)
    c = apply_noise(labels, K, spec, seed=8, features=features)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.transition, b.transition)
    assert not np.array_equal(a.noisy, c.noisy)


@pytest.mark.parametrize("spec", ["clean", "symmetric:0.6", "symmetric-exclusive:0.6", "asymmetric:0.4",
                                  "instance:0.4"])
def test_result_fields_are_consistent(labels, spec):
    result = apply_noise(labels, K, NoiseSpec.parse(spec), seed=0, features=random_features(len(labels)))
    assert result.noisy.dtype == np.int64 and result.noisy.min() >= 0 and result.noisy.max() < K
    assert np.array_equal(result.corrupted, result.noisy != labels)
    assert result.realized_rate == pytest.approx(result.corrupted.mean())
    assert np.allclose(result.transition.sum(1), 1.0)
    assert np.array_equal(result.transition, transition_matrix(labels, result.noisy, K))


def test_transition_matrix_by_hand():
    m = transition_matrix(np.array([0, 0, 0, 0, 2]), np.array([0, 1, 1, 0, 0]), 3)
    assert np.array_equal(m, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def test_bad_labels_are_user_errors():
    with pytest.raises(UserError, match="0..2"):
        apply_noise(np.array([0, 3]), 3, NoiseSpec.parse("symmetric:0.2"), seed=0)
    with pytest.raises(UserError, match="two classes"):
        apply_noise(np.array([0, 0]), 1, NoiseSpec.parse("symmetric:0.2"), seed=0)


# ---------------------------------------------------------------- instance noise on real embeddings

@pytest.mark.slow
def test_instance_noise_on_real_sst5_embeddings(sst5):
    from clearpeft.backbone import embed_texts

    start = time.monotonic()
    features = embed_texts(sst5.train.texts[:1500])  # a sixth of SST-5's training split: a shorter pass
    labels = sst5.train.labels[:1500]
    result = apply_noise(labels, K, NoiseSpec.parse("instance:0.4"), seed=0, features=features)
    seconds = time.monotonic() - start
    print(f"embedding + instance noise on {len(labels)} SST-5 train texts: {seconds:.1f} s")
    assert abs(result.realized_rate - 0.4) <= 0.03
    probs = result.sample_probs
    for c in range(K):
        rows = probs[labels == c]
        flip = 1.0 - rows[:, c]  # q_i
        others = np.delete(rows, c, axis=1) / flip[:, None]  # where a flip goes: depends on the embedding
        assert flip.std() > 0.05, c
        assert (others.std(axis=0) > 0.05).all(), c


def test_embedding_cache_is_keyed_by_the_model_content(tmp_path, monkeypatch):
    """The same model in another folder (a fresh clone's environment) reuses the cached embeddings; a model
    whose files differ does not."""
    import shutil

    from clearpeft import backbone

    monkeypatch.setenv("CLEARPEFT_CACHE", str(tmp_path / "cache"))
    installed = Path(backbone.resolve_model(None))
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(installed, copy)
    texts = ["a great movie", "the worst film of the year", "it is a film"]
    first = backbone.embed_texts(texts)
    assert first.shape == (3, 384) and len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    assert backbone.model_fingerprint(str(copy)) == backbone.model_fingerprint(None)

    def refuse(*args):
        raise AssertionError("embedded again although the same model's embeddings are cached")

    monkeypatch.setattr(backbone, "_embed", refuse)
    assert np.array_equal(backbone.embed_texts(texts, model=str(copy)), first)
    with open(copy / "config.json", "a") as handle:
        handle.write("\n")  # the same weights, another file: another model as far as the cache knows
    assert backbone.model_fingerprint(str(copy)) != backbone.model_fingerprint(None)
    with pytest.raises(AssertionError, match="embedded again"):
        backbone.embed_texts(texts, model=str(copy))
