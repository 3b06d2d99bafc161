"""keras.distribution on JAX: the same numbers as one device, and a head-sharded penalty that never gathers.

Each case runs in a process of its own on 4 host CPU devices
(`--xla_force_host_platform_device_count`, which must be set before JAX starts).
"""

import ast
import json
import os

import numpy as np
import pytest
from backends import only_on, run_fresh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
RUN_FILE = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"

# Distribution belongs to the full suite (`pytest -m slow`), not the default one.
pytestmark = [pytest.mark.slow, only_on("jax", why="keras.distribution is implemented for JAX only")]


def run_on_four_devices(script, *args):
    flags = f"{os.environ.get('XLA_FLAGS', '')} {FOUR_DEVICES}".strip()
    run_fresh(RUN_FILE, os.path.join(ROOT, script), *args, timeout=600, env={"XLA_FLAGS": flags})


EXPECTED_SPECS = {
    "data_parallel": {"attention/query/kernel": "P(None, None, None)", "head/kernel": "P(None, None)"},
    "heads": {
        "attention/query/kernel": "P(None, 'model', None)",
        "attention/key/kernel": "P(None, 'model', None)",
        "attention/value/kernel": "P(None, 'model', None)",
        "attention/attention_output/kernel": "P('model', None, None)",
    },
    "dense": {"rows/kernel": "P('model', None)", "columns/kernel": "P(None, 'model')"},
}


@pytest.fixture(scope="module", params=sorted(EXPECTED_SPECS))
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "records.npz"
    run_on_four_devices("tests/jax_distribution_train.py", request.param, out)
    return request.param, dict(np.load(out))


def test_the_layout_applied(trained):
    case, records = trained
    specs = ast.literal_eval(str(records["specs"]))
    for path, spec in EXPECTED_SPECS[case].items():
        assert specs[path] == spec, (path, specs)


def test_penalty_and_loss_match_one_device(trained):
    _, records = trained
    np.testing.assert_allclose(records["penalty"], records["single_penalty"], rtol=1e-5)
    np.testing.assert_allclose(records["loss"], records["single_loss"], rtol=1e-5)


def test_training_trajectory_matches_one_device(trained):
    _, records = trained
    weights = [k for k in records if k.startswith("weight_")]
    assert len(weights) >= 3 * 4  # every weight after each of the 3 epochs
    for key in weights:
        np.testing.assert_allclose(records[key], records[f"single_{key}"], rtol=1e-5, atol=1e-5, err_msg=key)


def test_logger_records_match_one_device_and_gather_no_weight(trained):
    _, records = trained
    errors = [k for k in records if k.startswith("errors_")]
    assert len(errors) == len(records["paths"]) >= 2
    for key in errors:
        np.testing.assert_allclose(records[key], records[f"single_{key}"], rtol=1e-5, err_msg=key)
    # The probe brings the per-slice errors together, never a weight.
    assert records["probe_gathered_bytes"] <= 2 * records["probe_errors_bytes"]


def test_head_sharded_penalty_compiles_without_gathers_or_permutes(tmp_path):
    out = tmp_path / "collectives.json"
    run_fresh(RUN_FILE, os.path.join(ROOT, "benchmarks", "collectives.py"), "--quick", "--json", out, timeout=600)
    rows = {row["layout"]: row["collectives"] for row in json.loads(out.read_text())["rows"]}
    for layout in ("heads, q/k/v", "heads, output"):
        assert set(rows[layout]) == {"all-reduce"}, rows[layout]
        assert rows[layout]["all-reduce"] == {"count": 1, "bytes": 4}  # the scalar penalty
    # A row-sharded Dense kernel: one all-reduce of the Gram (64 x 64 here), nothing else.
    assert rows["Dense rows"] == {"all-reduce": {"count": 1, "bytes": 4 * 64 * 64}}
    # A column-sharded one: one all-gather of the kernel, and the scalar's all-reduce.
    assert rows["Dense columns"] == {
        "all-gather": {"count": 1, "bytes": 4 * 64 * 64},
        "all-reduce": {"count": 1, "bytes": 4},
    }


def test_schedule_and_target_under_data_parallel_train_like_one_device(tmp_path):
    out = tmp_path / "scales.json"
    run_on_four_devices("tests/jax_scale_parallel.py", out)
    results = json.loads(out.read_text())
    assert sorted(results) == ["schedule", "target"]
    for callback, runs in results.items():
        one, parallel = runs["one"], runs["parallel"]
        assert len(one["scales"]) == 3 and len(set(one["scales"])) > 1, (callback, one["scales"])  # it acts
        np.testing.assert_allclose(parallel["scales"], one["scales"], rtol=1e-5, err_msg=callback)
        np.testing.assert_allclose(parallel["kernel"], one["kernel"], rtol=1e-5, atol=1e-6, err_msg=callback)


@pytest.mark.parametrize("case", ["data_parallel", "model_parallel"])
def test_the_lipschitz_constraint_under_keras_distribution_steps_like_one_device(case, tmp_path):
    out = tmp_path / "weights.npz"
    run_on_four_devices("tests/jax_lipschitz_train.py", case, out)
    records = dict(np.load(out))
    if case == "model_parallel":
        specs = ast.literal_eval(str(records["specs"]))
        assert [spec for path, spec in specs.items() if path.endswith("dense/kernel")] == ["P(None, 'model')"], specs
    count = sum(key.startswith("single_") and key != "single_bound" for key in records)
    assert count == 4  # two kernels, two biases
    for i in range(count):
        np.testing.assert_allclose(records[f"sharded_{i}"], records[f"single_{i}"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(records["bound"], records["single_bound"], rtol=1e-5)
    assert records["bound"] <= 0.25 * (1 + 1e-5)  # two kernels held at 0.5
