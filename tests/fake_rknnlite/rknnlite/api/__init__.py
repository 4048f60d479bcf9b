"""A stand-in for rknn-toolkit-lite2's ``rknnlite.api.RKNNLite``, for testing rwkvprobe's plumbing on
x86 only. It has the real class's signatures and ``NPU_CORE_*`` constants exactly (rknn-toolkit-lite2
2.5.0; CI's emulated-aarch64 step, ``.ci/aarch64.sh`` with ``tests/aarch64/probe.py``, compares them with
the real wheel and fails on any difference), and its return conventions: 0 / -1, None instead of
raising, errors logged through the ``acuityLogger`` logger on stderr. Its "NPU" is numpy: it times
nothing of an NPU, and no figure it produces may appear in a report.

A fake .rknn file here is a numpy .npy file of the fp16 weight. FAKE_STATE lets a test make
init_runtime or inference fail the way the real library does (a logged traceback, -1 / None).
"""

import logging
import os
import sys

import numpy as np

FAKE_STATE = {"init_ok": True, "inference_ok": True}
_log = logging.getLogger("acuityLogger")


def _set_up_log():
    """As the real library does: its own stream handler on stderr (as sys.stderr is at construction),
    not propagated to the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _log.handlers = [handler]
    _log.propagate = False
    _log.setLevel(logging.DEBUG)


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, verbose=False, verbose_file=None):
        _set_up_log()
        _log.warning("W rknn-toolkit-lite2 version: 2.5.0 (fake)")
        self.verbose = verbose
        self._weight = None
        self._ready = False

    def load_rknn(self, path, key_path=None):
        try:
            self._weight = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            _log.error("E Invalid RKNN model path: %s", path)
            return -1
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        if self._weight is None:
            _log.error("E Model is not loaded yet, this interface should be called after load_rknn!")
            return -1
        if not FAKE_STATE["init_ok"]:
            _log.error("E Catch exception when init runtime!")
            _log.error("E Traceback (most recent call last):\n  File \"fake\", line 1, in init_runtime\n"
                       "Exception: Can not find dynamic library on RK3588!")
            return -1
        os.write(1, b"I RKNN: fake runtime started (the C runtime prints on fd 1)\n")
        self._ready = True
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False,
                  reuse_outputs=False):
        if not self._ready or not FAKE_STATE["inference_ok"]:
            _log.error("E Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        a = np.asarray(inputs[0]).astype(np.float16)
        return [(a.astype(np.float32) @ self._weight.astype(np.float32)).astype(np.float16).astype(np.float32)]

    def release(self):
        self._weight = None
        self._ready = False
