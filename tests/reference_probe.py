"""Run in a subprocess by test_reference.py: load a random checkpoint built from our layout into
BlinkDL's reference ``rwkv`` package, decode a few tokens, and record every weight matmul it runs.

Usage: python reference_probe.py PROFILE_JSON OUT_JSON. A separate process per version because the
package picks its RWKV-7 class from RWKV_V7_ON at import time.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")
profile_data = json.loads(open(sys.argv[1]).read())
if profile_data["version"] == 7:
    os.environ["RWKV_V7_ON"] = "1"

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from rwkvprobe.model.profile import parse_profile, state_dict_shapes  # noqa: E402

torch.manual_seed(0)
profile = parse_profile(profile_data)
shapes = state_dict_shapes(profile)
state_dict = {k: torch.rand(s) * 0.2 - 0.1 for k, s in shapes.items()}
folder = tempfile.mkdtemp()
path = os.path.join(folder, "model.pth")
torch.save(state_dict, path)

from rwkv.model import RWKV  # noqa: E402

kwargs = {} if profile.version == 7 else {"verbose": False}
model = RWKV(model=path[:-4], strategy="cpu fp32", **kwargs)
weights = model.z if profile.version == 7 else model.w
weight_ptrs = {t.data_ptr(): name for name, t in weights.items() if isinstance(t, torch.Tensor) and t.dim() >= 2}


class RecordWeightMatmuls(TorchDispatchMode):
    """Every matmul-family op whose operand is a stored weight: (weight name, K, N, matrices)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("mm", "mv", "bmm", "addmm", "matmul", "addmv", "baddbmm"):
            for a in args:
                if isinstance(a, torch.Tensor) and a.data_ptr() in weight_ptrs and a.dim() >= 2:
                    k, n = a.shape[-2], a.shape[-1]
                    self.ops.append((weight_ptrs[a.data_ptr()], int(k), int(n), int(a.shape[0]) if a.dim() == 3 else 1))
        return func(*args, **(kwargs or {}))


with torch.no_grad():
    logits, state = model.forward([11, 12, 13], None)  # a prefill chunk
    with RecordWeightMatmuls() as rec:
        logits1, state = model.forward([14], state)  # one decoded token
result = {
    "version": float(getattr(model, "version", 7)),
    "logits_shape": list(logits.shape),
    "logits1_shape": list(logits1.shape),
    "finite": bool(torch.isfinite(logits).all() and torch.isfinite(logits1).all()),
    "weight_matmuls": rec.ops,
    "loaded_tensors": len(shapes),
}
with open(sys.argv[2], "w") as f:
    json.dump(result, f)
