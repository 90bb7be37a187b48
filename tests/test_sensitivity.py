"""The sensitivity analysis: every layer alone at every sparsity of the grid, measured with the run's update;
its suggestion is what the `sensitivity` allocation allocates; a cell with no effect is checked, not robust."""

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core import PruneConfig
from snows_core.prune import prune_model, sensitivity_analysis
from snows_core.runs import RunSpec
from snows_core.scan import scan_sparsities


def analyse(model, config, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.input_shape, generator=g)
    labels = model(x).argmax(1)  # the dense network scores 100%
    events = []
    suggested = sensitivity_analysis(model, x, x[:16], labels[:16], config, events.append)
    return suggested, {e.layer: e for e in events if e.kind == "layer_sensitivity"}, x


def test_every_layer_is_measured_at_every_sparsity_and_the_suggestion_is_the_allocations(tiny_resnet):
    tiny_resnet.input_shape = (3, 8, 8)
    config = PruneConfig(sparsity=0.6, reconstruction="lstsq", k=0, n_calib=32, layers=("c1", "c2"))
    before = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    suggested, cells, x = analyse(tiny_resnet, config)
    grid = scan_sparsities(config.layer_sparsity_cap)
    assert list(cells) == ["c1", "c2"] and all(cell.sparsities == grid for cell in cells.values())
    for cell in cells.values():
        assert cell.top1_dense == 1.0 and len(cell.top1) == len(grid) and cell.numel == 8 * 8 * 9
        pairs = zip(cell.window_loss, cell.window_loss_mask, strict=True)
        assert all(after <= mask * (1 + 1e-6) for after, mask in pairs)  # K=0: lstsq minimises this very loss
        assert cell.removed == sorted(cell.removed) and cell.removed[-1] > 0 and all(c > 0 for c in cell.logit_change)
    assert all(torch.equal(before[k], v) for k, v in tiny_resnet.state_dict().items())  # the model is untouched
    allocated = []
    prune_model(tiny_resnet, x, dataclasses.replace(config, allocation="sensitivity"), allocated.append)
    assert next(e for e in allocated if e.kind == "allocation").sparsities == suggested
    assert sum(suggested[n] * cells[n].numel for n in cells) / sum(c.numel for c in cells.values()) == pytest.approx(
        0.6, abs=1e-3
    )


class DeadUnits(nn.Module):
    """fc2's first two units never fire (bias -100): their small weights go first and change nothing.
    `dead` feeds the logits times zero: no weight of it can change them."""

    input_shape = (6,)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.dead, self.fc3 = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(4, 3)
        with torch.no_grad():
            self.fc2.weight.copy_(torch.randn(4, 4, generator=g).sign() * torch.tensor([[0.01], [0.01], [1.0], [1.0]]))
            self.fc2.bias.copy_(torch.tensor([-100.0, -100.0, 0.5, 0.5]))
            self.dead.weight.copy_(torch.randn(3, 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return self.fc3(F.relu(self.fc2(h))) + 0.0 * self.dead(h)


def test_a_cell_that_changes_nothing_is_checked_not_called_robust():
    config = PruneConfig(sparsity=0.5, reconstruction="none", n_calib=32, layers=("fc2", "dead"))
    _, cells, _ = analyse(DeadUnits().eval(), config)
    fc2, dead = cells["fc2"], cells["dead"]
    assert fc2.sparsities[0] == 0.5 and fc2.removed[0] == 8 and fc2.logit_change[0] == 0.0
    assert fc2.checks[0].startswith("no effect on these images, checked: zeroing the whole layer moves the logits by")
    assert fc2.checks[-1] == "" and fc2.logit_change[-1] > 0  # at 98% the live units lose weights too
    assert set(dead.checks) == {"no effect: the layer does not reach the logits (zeroing all of it changes nothing)"}


def test_a_mask_that_removes_only_zeros_is_named():
    model = DeadUnits().eval()
    with torch.no_grad():
        model.fc2.bias.zero_()
        model.fc2.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 3, 0, 4], [5, 0, 0, 6], [0, 7, 8, 0]]))
    config = PruneConfig(sparsity=0.5, reconstruction="none", n_calib=32, layers=("fc2",))
    _, cells, _ = analyse(model, config)
    assert cells["fc2"].removed[0] == 0
    assert cells["fc2"].checks[0] == "no effect: the mask removed only weights that were already zero"


def test_a_sensitivity_spec_keeps_prune_hashes_and_refuses_what_it_cannot_scan():
    prune = RunSpec(model="mlp", config=PruneConfig(sparsity=0.5))
    assert "kind" not in prune.to_dict()  # every spec from before kinds keeps its hash
    scan = dataclasses.replace(prune, kind="sensitivity")
    assert scan.to_dict()["kind"] == "sensitivity" and RunSpec.from_dict(scan.to_dict()) == scan
    assert scan.content_hash() != prune.content_hash()
    with pytest.raises(ValueError, match="kind must be one of 'prune', 'sensitivity'; got 'nosuch'"):
        dataclasses.replace(prune, kind="nosuch")
    with pytest.raises(ValueError, match="needs pattern 'unstructured'"):
        RunSpec(model="mlp", config=PruneConfig(pattern="2:4"), kind="sensitivity")


def test_every_run_kind_has_a_runner():
    from snows_core.runs.pipeline import RUNNERS
    from snows_core.runs.spec import RUN_KINDS

    assert tuple(RUNNERS.names()) == RUN_KINDS


def test_a_scan_runs_in_the_queue_and_the_run_it_suggests_allocates_exactly_that(home):
    """CLI submit --kind sensitivity, progress layer by layer, then the suggested run through the same queue."""
    from snows_core.runs import RunStore
    from tests.cli_helpers import submit, wait_for

    flags = ["--model", "mlp", "--sparsity", "0.8", "--reconstruction", "none", "--n-calib", "64", "--eval-size", "100"]
    scan = submit(*flags, "--kind", "sensitivity")
    done = wait_for(scan, lambda s: s["status"] in ("done", "failed"))
    assert done["status"] == "done", done["error"]
    assert (done["layers_done"], done["layers_total"]) == (2, 2) and set(done["suggested_sparsities"]) == {"3", "5"}
    store = RunStore(home)
    spec = RunSpec.from_dict(store.get(scan)["spec"])
    assert [e["layer"] for e in store.events(scan) if e["kind"] == "layer_sensitivity"] == ["3", "5"]
    suggested = submit(*flags, "--allocation", "sensitivity")
    assert wait_for(suggested, lambda s: s["status"] in ("done", "failed"))["status"] == "done"
    allocated = next(e for e in store.events(suggested) if e["kind"] == "allocation")["sparsities"]
    assert allocated == done["suggested_sparsities"] and spec.kind == "sensitivity"


def test_a_sensitivity_run_stops_after_any_scanned_layer_once_cancelled():
    from snows_core.events import LayerSensitivity, LayerStarted
    from snows_core.runs.process import RunCancelled, cancel_on_step

    recorded = []
    sink = cancel_on_step("run", recorded.append, lambda: True)
    sink(LayerStarted("3"))  # not a point where a run may stop
    with pytest.raises(RunCancelled):
        sink(LayerSensitivity("3"))
    assert [e.kind for e in recorded] == ["layer_started", "layer_sensitivity"]  # recorded before it stops
