"""Write golden outputs of the official YOLOX models for tests/models (needs ``yolox`` 0.3.0).

For each size: build the official model, fill every state-dict entry deterministically from its
key and shape (``tests/models/golden_fill.py``), run the fixed input in eval mode and save the
keys, shapes, conv gain and output to ``tests/models/golden/<name>.npz``. The tests rebuild our
model, fill it the same way, load strictly and compare, so CI needs no official package.
Also writes ``preproc.npz``: the official ``preproc`` of a fixed image, for the letterbox test.

    .venv/bin/python benchmarks/models_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from golden_fill import OFFICIAL, fill_state_dict, golden_input, key_uniform  # noqa: E402

GOLDEN = ROOT / "tests" / "models" / "golden"
GAINS = [round(0.75 + 0.025 * i, 3) for i in range(17)]  # 0.75 ... 1.15
TARGET_STD = 1.5  # std of the raw logits we aim for


def official_model(name: str) -> torch.nn.Module:
    from yolox.exp import get_exp

    return get_exp(None, OFFICIAL[name]).get_model().eval()


def raw_std(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Std of the head's logits for the golden input (the official head, decode switched off
    on a throw-away copy)."""
    model.head.decode_in_inference = False
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.head.decode_in_inference = True
    out = out.clone()
    out[..., 4:] = torch.logit(out[..., 4:].clamp(1e-7, 1 - 1e-7))
    return float(out.std()) if torch.isfinite(out).all() else float("inf")


def golden(name: str) -> dict[str, np.ndarray]:
    model = official_model(name)
    state = model.state_dict()
    x = golden_input()
    best = min(
        GAINS,
        key=lambda g: (
            model.load_state_dict(fill_state_dict(state, g)),
            abs(np.log(raw_std(model, x) / TARGET_STD)),
        )[1],
    )
    model.load_state_dict(fill_state_dict(state, best))
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{name}: non-finite golden output")
    scores = out[..., 4:]
    saturated = float(((scores < 1e-4) | (scores > 1 - 1e-4)).float().mean())
    print(f"{name}: gain {best}, raw std {raw_std(model, x):.2f}, saturated {saturated:.3f}")
    shapes = [tuple(t.shape) for t in state.values()]
    return {
        "keys": np.array(list(state), dtype=np.str_),
        "ndim": np.array([len(s) for s in shapes], dtype=np.int64),
        "dims": np.array([d for s in shapes for d in s], dtype=np.int64),
        "gain": np.array(best, dtype=np.float64),
        "input_shape": np.array(x.shape, dtype=np.int64),
        "output": out.numpy().astype(np.float32),
    }


def preproc_golden() -> dict[str, np.ndarray]:
    """Official ``preproc`` of two fixed images (wide and tall) into a 64 x 96 input."""
    from yolox.data.data_augment import preproc

    out: dict[str, np.ndarray] = {}
    for tag, (h, w) in {"wide": (45, 131), "tall": (97, 40)}.items():
        image = (key_uniform(f"image-{tag}", h * w * 3) * 256).astype(np.uint8).reshape(h, w, 3)
        padded, ratio = preproc(image, (64, 96))
        out[f"{tag}_image"] = image
        out[f"{tag}_input"] = padded.astype(np.float32)
        out[f"{tag}_ratio"] = np.array(ratio, dtype=np.float64)
    return out


def main() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # small gains make activations tiny; denormals are slow
    GOLDEN.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or list(OFFICIAL)
    for name in names:
        np.savez_compressed(GOLDEN / f"{name}.npz", **golden(name))
    np.savez_compressed(GOLDEN / "preproc.npz", **preproc_golden())
    total = sum(p.stat().st_size for p in GOLDEN.glob("*.npz"))
    print(f"wrote {GOLDEN} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
