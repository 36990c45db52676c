"""benchmarks/bench_models.py: the efficiency table measures each model on the published shape, and with
--tuned also on the shape benchmarks/tune.py chose for it, in the same run."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_models  # noqa: E402
from util import UsageError  # noqa: E402

TUNED = {"dcn": {"flags": ["--lr", "0.002", "--mlp-layers", "64", "32", "--dcn-cross-num", "3"]}}


def test_tuned_settings_add_a_row_beside_the_published_shape(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(TUNED))
    assert [(name, settings) for name, settings, _ in bench_models.model_configs(["dcn"])] == [("dcn", "published")]
    (_, _, published), (_, settings, tuned) = bench_models.model_configs(["dcn"], str(path))
    assert published.mlp_layers == [300, 300, 128] and settings == "tuned"
    assert (tuned.model, tuned.mlp_layers, tuned.dcn_cross_num, tuned.lr) == ("dcn", [64, 32], 3, 0.002)
    with pytest.raises(UsageError, match="no settings for inttower"):
        bench_models.model_configs(["dcn", "inttower"], str(path))


def test_a_tuned_run_measures_the_tuned_network(tmp_path, capsys):
    path, out = tmp_path / "tuned.json", tmp_path / "efficiency.json"
    path.write_text(json.dumps(TUNED))
    bench_models.main(["--quick", "--models", "dcn", "--sizes", "8", "--tuned", str(path), "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["settings"] for row in rows] == ["published", "tuned"] and "| DCN, tuned |" in capsys.readouterr().out
    schema = bench_models.ml1m_shaped_schema()
    sizes = {settings: sum(p.size for p in bench_models.train.build(schema, config, seed=0)[0].trainable_params())
             for _, settings, config in bench_models.model_configs(["dcn"], str(path))}
    assert [row["parameters"] for row in rows] == [sizes["published"], sizes["tuned"]]
    assert sizes["tuned"] < sizes["published"]
    assert all(row["latency_ms"]["8"]["max_abs_diff"] < 1e-5 for row in rows)
