"""Named recipes: each builds a valid config, overrides win, unknown names are clear errors, the CLI reads them."""

import pytest

from snows_core import PruneConfig
from snows_core.cli import _parser, config_from_args
from snows_core.recipes import get_recipe, list_recipes


def cli_config(*flags: str) -> PruneConfig:
    return config_from_args(_parser().parse_args(["prune", *flags]))


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_builds_a_valid_config_at_every_target(name):
    for target in ({}, {"sparsity": 0.95}, {"pattern": "2:4"}):
        config = get_recipe(name, **target)
        assert PruneConfig.from_dict(config.to_dict()) == config
        if "pattern" in target:
            assert config.pattern == "2:4" and config.sparsity == 0.5


def test_the_best_recipe_is_gradual_obc_unstructured_and_one_pass_at_two_four():
    best = get_recipe("best", sparsity=0.95)
    assert (best.sparsity, best.mask, best.stages, best.k, best.reconstruction) == (0.95, "obc", 5, 3, "snows")
    assert best.n_calib <= 1024
    two_four = get_recipe("best", pattern="2:4")
    assert (two_four.mask, two_four.stages) == ("magnitude", 1)


def test_overrides_win_over_the_recipe():
    config = get_recipe("official", sparsity=0.8, cg_iters=7, warm_start=True)
    assert (config.sparsity, config.cg_iters, config.warm_start, config.targets) == (0.8, 7, True, "official")


def test_unknown_names_and_fields_are_clear_errors():
    with pytest.raises(ValueError, match=r"recipe must be one of 'default', 'teaching', 'best', .*; got 'bset'"):
        get_recipe("bset")
    with pytest.raises(ValueError, match=r"recipe 'best': unknown PruneConfig field\(s\) \['sparsty'\]"):
        get_recipe("best", sparsty=0.9)
    with pytest.raises(ValueError, match="sparsity must be in"):
        get_recipe("best", sparsity=1.5)


def test_the_cli_recipe_is_the_recipe_and_a_flag_wins():
    assert cli_config("--recipe", "best", "--sparsity", "0.95") == get_recipe("best", sparsity=0.95)
    assert cli_config("--recipe", "official", "--warm-start").warm_start
    teaching = cli_config("--recipe", "teaching", "--mask", "wanda", "--k", "0")
    assert teaching == get_recipe("teaching", mask="wanda", k=0)
    assert cli_config() == PruneConfig() and not cli_config("--no-warm-start").warm_start
    assert cli_config("--pattern", "2:4").sparsity == 0.5


def test_a_sweep_starts_from_the_recipe():
    args = _parser().parse_args(["sweep", "--recipe", "official", "--sparsity", "0.8,0.9"])
    assert config_from_args(argparse_first(args)) == get_recipe("official", sparsity=0.8)


def argparse_first(args):
    """The sweep's first grid point, as `_sweep` builds its base spec."""
    values = {name: value[0] for name, value in vars(args).items() if isinstance(value, list)}
    return type(args)(**{**vars(args), **values})
