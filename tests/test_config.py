"""PruneConfig: validation names the field, JSON round-trips, N:M implies sparsity."""

import json

import pytest

from snows_core import SCHEMA_VERSION, PruneConfig


def test_json_round_trip_with_schema_version():
    cfg = PruneConfig(sparsity=0.9, mask="wanda", k=5, layers=["a.b", "c"], curvature="gauss-newton")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["schema_version"] == SCHEMA_VERSION and data["layers"] == ["a.b", "c"]
    assert PruneConfig.from_dict(data) == cfg
    assert cfg.layers == ("a.b", "c")  # stored as a tuple: the config is hashable


def test_nm_pattern_implies_sparsity():
    assert PruneConfig(sparsity=None, pattern="2:4").sparsity == 0.5
    assert PruneConfig(sparsity=0.75, pattern="1:4").nm == (1, 4)
    with pytest.raises(ValueError, match="sparsity 0.9 does not match pattern '2:4'"):
        PruneConfig(sparsity=0.9, pattern="2:4")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"sparsity": None}, "sparsity"),
        ({"pattern": "5:4"}, "pattern"),
        ({"pattern": "2-4"}, "pattern"),
        ({"pattern": "0:4"}, "pattern"),
        ({"k": -1}, "k"),
        ({"k": 1.5}, "k"),
        ({"n_calib": 0}, "n_calib"),
        ({"batch_size": 0}, "batch_size"),
        ({"cg_iters": 0}, "cg_iters"),
        ({"damping": -1.0}, "damping"),
        ({"mask": "nope"}, "mask"),
        ({"reconstruction": "sgd"}, "reconstruction"),
        ({"curvature": "fisher"}, "curvature"),
        ({"allocation": "layerwise"}, "allocation"),
        ({"targets": "teacher"}, "targets"),
        ({"device": "tpu"}, "device"),
        ({"warm_start": "yes"}, "warm_start"),
        ({"layer_sparsity_cap": 0.3, "sparsity": 0.5}, "layer_sparsity_cap"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PruneConfig(**kwargs)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="'magnitude'.*'random'.*'wanda'"):
        PruneConfig(mask="nope")
    with pytest.raises(ValueError, match="'none'.*'lstsq'.*'snows'"):
        PruneConfig(reconstruction="sgd")


def test_global_allocation_refused_with_nm():
    with pytest.raises(ValueError, match="allocation"):
        PruneConfig(sparsity=None, pattern="2:4", allocation="global")


def test_from_dict_refuses_unknown_fields_and_newer_schemas():
    with pytest.raises(ValueError, match="unknown PruneConfig field"):
        PruneConfig.from_dict({"sparsity": 0.5, "spars": 0.5})
    with pytest.raises(ValueError, match="schema_version"):
        PruneConfig.from_dict({"schema_version": SCHEMA_VERSION + 1})


def test_frozen():
    with pytest.raises(AttributeError):
        PruneConfig().k = 4


def test_every_registry_refuses_an_unknown_name_with_the_field_and_the_known_names():
    from snows_core.engine.reconstruct import get_reconstruction
    from snows_core.io.data import dataset_info
    from snows_core.masks import get_mask_method
    from snows_core.masks.allocation import get_allocation
    from snows_core.models import model_info

    for lookup, field in (
        (model_info, "model"),
        (dataset_info, "dataset"),
        (get_mask_method, "mask"),
        (get_allocation, "allocation"),
        (get_reconstruction, "reconstruction"),
    ):
        with pytest.raises(ValueError, match=rf"^{field} must be one of '.+; got 'nosuch'$"):
            lookup("nosuch")


def test_a_registry_lists_names_sorted_or_in_registration_order():
    from snows_core.registry import Registry

    alphabetical, ordered = Registry("x"), Registry("y", ordered=True, hint=" (or z)")
    for name in ("b", "a"):
        alphabetical.add(name, name.upper())
        ordered.add(name, name.upper())
    assert alphabetical.names() == ["a", "b"] and ordered.names() == ["b", "a"]
    assert ordered.get("a") == "A" and "a" in ordered and "c" not in ordered
    with pytest.raises(ValueError, match=r"^y must be one of 'b', 'a' \(or z\); got 'c'$"):
        ordered.get("c")


def test_schema_1_configs_with_newton_steps_still_load_as_newton_passes():
    old = {**PruneConfig(newton_passes=3).to_dict(), "schema_version": 1}
    old["newton_steps"] = old.pop("newton_passes")
    assert PruneConfig.from_dict(old) == PruneConfig(newton_passes=3)
    with pytest.raises(ValueError, match="newton_steps"):  # today's schema has no such field
        PruneConfig.from_dict({"schema_version": SCHEMA_VERSION, "newton_steps": 3})


def test_a_schema_2_config_without_the_solver_fields_ran_plain_cg_of_10_and_loads_so():
    old = {key: value for key, value in PruneConfig().to_dict().items() if key not in ("preconditioner", "cg_iters")}
    assert PruneConfig.from_dict({**old, "schema_version": 2}) == PruneConfig(preconditioner="none", cg_iters=10)
    assert PruneConfig.from_dict({**old, "schema_version": 2, "cg_iters": 7}).cg_iters == 7  # written: kept
    assert PruneConfig.from_dict(old) == PruneConfig()  # today's schema: today's defaults
    assert (PruneConfig().preconditioner, PruneConfig().cg_iters) == ("gram", 5)


def test_the_old_newton_steps_flag_still_sets_the_passes():
    from snows_core.cli import _parser

    args = _parser().parse_args(["submit", "--newton-steps", "4"])
    assert args.newton_passes == 4
