"""Shapes against BlinkDL's reference implementation (PyPI ``rwkv``, ``rwkv/model.py``).

For each version, a random checkpoint laid out by ``state_dict_shapes`` is loaded into the reference
``RWKV`` class on CPU fp32, decodes tokens, and every weight matmul it runs for one token is recorded.
The recorded (K, N, runs) must equal our layer list exactly. Dimensions are small and all different,
so a transposed or mis-sized matrix cannot pass by accident.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rwkvprobe.model.profile import layer_list, parse_profile

HERE = Path(__file__).resolve().parent

if os.environ.get("RWKVPROBE_REQUIRE_REFERENCE") != "1":  # CI sets it: there a missing package is a failure
    pytest.importorskip("torch")
    pytest.importorskip("rwkv")

SMALL = {
    4: {},
    5: {"head_size": 32},
    6: {"head_size": 32, "lora": {"mix": 16, "decay": 48}},
    7: {"head_size": 32, "lora": {"decay": 24, "aaa": 16, "mv": 40, "gate": 56}},
}


def _probe(version, tmp_path):
    data = {"name": f"small v{version}", "source": "test", "version": version, "n_layer": 3, "n_embd": 96,
            "vocab_size": 301, **SMALL[version]}
    spec, out = tmp_path / "profile.json", tmp_path / "out.json"
    spec.write_text(json.dumps(data))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "reference_probe.py"), str(spec), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parse_profile(data), json.loads(out.read_text())


@pytest.mark.parametrize("version", [4, 5, 6, 7])
def test_reference_runs_our_layout_and_matmuls_match_layer_list(version, tmp_path):
    profile, result = _probe(version, tmp_path)
    assert int(result["version"]) == version
    if version in (5, 6):
        assert result["version"] in (5.2, 6.0)
    assert result["logits_shape"] == [301] and result["logits1_shape"] == [301]
    assert result["finite"]
    ours = collections.Counter()
    for layer in layer_list(profile).layers:
        ours[(layer.k, layer.n)] += layer.count
    theirs = collections.Counter()
    for _name, k, n, mats in result["weight_matmuls"]:
        theirs[(k, n)] += mats
    assert theirs == ours
