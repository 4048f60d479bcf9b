"""The head of a script (run with ``python -c SCRIPT PROFILE_JSON``) that counts the top-level ATen calls of one
decoded token in BlinkDL's reference package, for 2 and 3 layers of a profile: ``three - two`` is what one more
layer adds. test_nonmatmul and test_layerpass append what they compare it with, and print both as JSON."""

HEAD = r"""
import json, os, sys
data = json.loads(sys.argv[1])
os.environ["RWKV_V7_ON"] = "1" if data["version"] == 7 else "0"
from collections import Counter
import torch
from torch.profiler import profile, ProfilerActivity
from rwkvprobe.measure import forward_worker as fw
from rwkvprobe.model.profile import parse_profile, state_dict_shapes

def top_level_ops(prof):
    c = Counter()
    for e in prof.events():
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            c[e.name] += 1
    return c

def reference_ops(n_layer):
    p = parse_profile({**data, "n_layer": n_layer})
    m = fw.load_reference(fw.random_state_dict(state_dict_shapes(p), 0), p.version, "fp32")
    with torch.no_grad():
        _, st = m.forward([1, 2], None)
        for _ in range(4):
            _, st = m.forward([3], st)
        with profile(activities=[ProfilerActivity.CPU]) as pr:
            m.forward([3], st)
    return top_level_ops(pr), p

two, _ = reference_ops(2)
three, p = reference_ops(3)
"""


def run(script: str, profile: dict) -> dict:
    """Run ``script`` (HEAD plus its tail) for ``profile`` in a fresh interpreter (the reference picks its RWKV-7
    class at import); the JSON it printed last."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", script, json.dumps(profile)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
