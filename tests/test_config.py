"""Config: recipes, dotted overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clusterfit.config import RunConfig, load_config, resolved_fit_train, smoke
from clusterfit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_recipe_equals_defaults() -> None:
    assert load_config(ROOT / "configs" / "demo.yaml") == load_config()
    assert load_config() == RunConfig()


def test_every_recipe_loads() -> None:
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_config(path)


def test_overrides_are_typed_and_merged() -> None:
    cfg = load_config(overrides=["cluster.k=7", "pretrain.arch_kwargs.width=32", "seed=3"])
    assert cfg.cluster.k == 7
    assert cfg.seed == 3
    assert cfg.pretrain.arch_kwargs == {"width": 32}


def test_arch_kwargs_mapping_replaces_the_recipes() -> None:
    recipe = load_config(overrides=["pretrain.arch_kwargs={depth: 18, width: 32}"])
    assert recipe.pretrain.arch_kwargs == {"depth": 18, "width": 32}
    cleared = load_config(overrides=["pretrain.arch_kwargs={depth: 18}", "pretrain.arch_kwargs={}"])
    assert cleared.pretrain.arch_kwargs == {}
    other = load_config(
        overrides=["pretrain.arch_kwargs={depth: 18}", "pretrain.arch_kwargs={width: 8}"]
    )
    assert other.pretrain.arch_kwargs == {"width": 8}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("cluster.kk=3", "cluster.kk"),
        ("cluster.k=abc", "cluster.k"),
        ("nope=1", "nope"),
        ("cluster.method=foo", "cluster.method"),
        ("pretrain.label_noise=1.5", "pretrain.label_noise"),
    ],
)
def test_bad_override_names_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["cluster.k"])


def test_bad_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  kay: 3\n")
    with pytest.raises(ConfigError, match=r"cluster\.kay"):
        load_config(bad)


def test_fit_inherits_pretrain_recipe() -> None:
    cfg = load_config(overrides=["pretrain.train.epochs=9", "fit.train.lr=0.05"])
    fit = resolved_fit_train(cfg)
    assert fit.epochs == 9
    assert fit.lr == 0.05
    assert fit.batch_size == cfg.pretrain.train.batch_size


def test_smoke_is_tiny_and_separate() -> None:
    cfg = load_config(overrides=["cluster.k=500"])
    tiny = smoke(cfg)
    assert tiny.name == "demo-smoke"
    assert tiny.pretrain.train.epochs == 1 and resolved_fit_train(tiny).epochs == 1
    assert tiny.cluster.k <= 16 and tiny.data.limit is not None and tiny.data.limit <= 256
    assert dataclasses.asdict(cfg) != dataclasses.asdict(tiny)


def test_pretrain_settings_leave_out_a_default_input_size() -> None:
    """Runs made before ``pretrain.input_size`` existed keep their fingerprints: the setting is
    left out of N_pre's settings while null, and counts once set."""
    from dataclasses import asdict

    from clusterfit.config import PretrainConfig, pretrain_settings

    plain = pretrain_settings(PretrainConfig())
    assert "input_size" not in plain
    assert plain == {k: v for k, v in asdict(PretrainConfig()).items() if k != "input_size"}
    assert pretrain_settings(PretrainConfig(input_size=224))["input_size"] == 224
