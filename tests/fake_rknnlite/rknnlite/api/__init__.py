"""A stand-in for rknn-toolkit-lite2's ``rknnlite.api.RKNNLite``, for testing rwkvprobe's plumbing on
x86 only. It reproduces the real signatures, return conventions (0 / -1, None instead of raising) and
core-mask constants of rknn-toolkit-lite2 2.5.0. Its "NPU" is numpy: it times nothing of an NPU, and
no figure it produces may appear in a report.

A fake .rknn file here is a numpy .npy file of the fp16 weight. FAKE_STATE lets a test make
init_runtime or inference fail the way the real library does.
"""

import logging

import numpy as np

FAKE_STATE = {"init_ok": True, "inference_ok": True}
_log = logging.getLogger("acuityLogger")


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, verbose=False, verbose_file=None):
        self.verbose = verbose
        self._weight = None
        self._ready = False

    def load_rknn(self, path):
        try:
            self._weight = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            _log.error("Invalid RKNN model path: %s", path)
            return -1
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        if not FAKE_STATE["init_ok"] or self._weight is None:
            _log.error("Can not find dynamic library on RK3588!")
            return -1
        self._ready = True
        return 0

    def inference(self, inputs=None, data_format=None, inputs_pass_through=None, get_frame_id=False):
        if not self._ready or not FAKE_STATE["inference_ok"]:
            _log.error("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        a = np.asarray(inputs[0]).astype(np.float16)
        return [(a.astype(np.float32) @ self._weight.astype(np.float32)).astype(np.float16).astype(np.float32)]

    def release(self):
        self._weight = None
        self._ready = False
