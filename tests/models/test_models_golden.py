"""Official YOLOX weights give the same numbers in our models.

Golden files (``benchmarks/models_golden.py``, made with yolox 0.3.0) hold, per size, the official
state-dict keys and shapes and the official eval output for deterministic weights
(``golden_fill.py``) and a fixed 64 x 96 input. Here our model must have exactly those keys and
shapes, load the same weights strictly and give the same output to 1e-4 of the output's scale.

The tolerance is scaled, not absolute, because float32 kernels round differently from one CPU to
the next (AVX-512 on AMD EPYC against AMX on Xeon; deep darknet53 moves a box centre of 0.69 px by
8e-5). Boxes are compared against 1e-4 of the largest box value (pixels), probabilities against
1e-4 of 1, each plus 1e-4 relative: a wrong layer or weight moves outputs by orders of magnitude
more. A live test compares with the official package directly when it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_fill import OFFICIAL, fill_state_dict, golden_input

from detector.models import build_model, model_names

GOLDEN = Path(__file__).parent / "golden"
NAMES = [
    "yolox_nano",
    "yolox_tiny",
    "yolox_s",
    "yolox_m",
    "yolox_l",
    "yolox_x",
    "yolox_darknet53",
]
RTOL = 1e-4  # relative to each value
SCALE_TOL = 1e-4  # absolute, as a fraction of the output's scale


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``[B, N, 5 + C]`` outputs agree within ``RTOL`` of each value plus ``SCALE_TOL`` of the
    column group's scale: the largest ``|cx, cy, w, h|`` for boxes, 1 for probabilities."""
    box_scale = float(expected[..., :4].abs().max())
    torch.testing.assert_close(
        actual[..., :4], expected[..., :4], rtol=RTOL, atol=SCALE_TOL * box_scale
    )
    torch.testing.assert_close(actual[..., 4:], expected[..., 4:], rtol=RTOL, atol=SCALE_TOL)


HAVE_YOLOX = importlib.util.find_spec("yolox") is not None


def test_every_model_has_a_golden_file():
    assert sorted(NAMES) == model_names()
    assert sum(p.stat().st_size for p in GOLDEN.glob("*.npz")) < 1_000_000


@pytest.mark.parametrize("name", NAMES)
def test_golden_official_outputs(name):
    torch.set_num_threads(2)
    golden = np.load(GOLDEN / f"{name}.npz")
    keys = [str(k) for k in golden["keys"]]
    dims, shapes, at = golden["dims"].tolist(), [], 0
    for n in golden["ndim"].tolist():
        shapes.append(tuple(dims[at : at + n]))
        at += n

    model = build_model(name).eval()
    state = model.state_dict()
    assert list(state) == keys  # same names, same order
    assert [tuple(t.shape) for t in state.values()] == shapes

    model.load_state_dict(fill_state_dict(state, float(golden["gain"])), strict=True)
    with torch.no_grad():
        out = model(golden_input(tuple(golden["input_shape"].tolist())))
    assert_close_to_scale(out, torch.from_numpy(golden["output"]))


@pytest.mark.skipif(not HAVE_YOLOX, reason="official yolox package not installed (optional)")
@pytest.mark.parametrize("name", NAMES)
def test_live_official_state_dict_loads_strictly_and_agrees(name):
    from yolox.exp import get_exp

    torch.set_num_threads(2)
    official = get_exp(None, OFFICIAL[name]).get_model().eval()
    gain = float(np.load(GOLDEN / f"{name}.npz")["gain"])
    official.load_state_dict(fill_state_dict(official.state_dict(), gain))
    ours = build_model(name).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = golden_input((2, 3, 96, 64))  # a batch of two, portrait this time
    with torch.no_grad():
        assert_close_to_scale(ours(x), official(x))
