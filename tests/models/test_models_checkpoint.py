"""Checkpoints: ours and the official format load strictly; wrong class count; bad files."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from detector.models import (
    CheckpointError,
    CheckpointSpec,
    build_model,
    checkpoint_meta,
    checkpoint_spec,
    load_checkpoint,
    load_inference_model,
    model_from_checkpoint,
    read_checkpoint,
)

NAME = "yolox_nano"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(NAME, num_classes=3).eval()


def meta(num_classes: int = 3) -> dict:
    return {
        "model_name": NAME,
        "num_classes": num_classes,
        "class_names": [f"c{i}" for i in range(num_classes)],
        "input_size": [416, 416],
        "preprocess": {"input_height": 416, "input_width": 416},
    }


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_our_checkpoint_round_trip(tmp_path, model):
    path = tmp_path / "last.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": {"lr": 0.01}, "epoch": 3, "meta": meta()}, path
    )
    fresh = build_model(NAME, num_classes=3)
    assert load_checkpoint(fresh, path) == meta()
    assert same_weights(fresh, model)

    built, got_meta = model_from_checkpoint(path)
    assert not built.training and built.name == NAME and built.num_classes == 3
    assert got_meta["class_names"] == ["c0", "c1", "c2"]
    assert same_weights(built, model)


def test_train_model_key(tmp_path, model):
    path = tmp_path / "last.pt"
    other = build_model(NAME, num_classes=3)
    torch.save({"model": model.state_dict(), "train_model": other.state_dict()}, path)
    fresh = build_model(NAME, num_classes=3)
    load_checkpoint(fresh, path, key="train_model")
    assert same_weights(fresh, other)
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        load_checkpoint(fresh, path, key="ema")


def test_official_format_needs_a_name_and_infers_classes(tmp_path, model):
    path = tmp_path / "yolox_nano.pth"
    # the official trainer stores the best AP as a NumPy float
    import numpy as np

    torch.save({"start_epoch": 300, "model": model.state_dict(), "best_ap": np.float64(25.8)}, path)
    with pytest.raises(CheckpointError, match=r"yolox_nano.pth.*pass the model name"):
        model_from_checkpoint(path)
    built, got_meta = model_from_checkpoint(path, name=NAME)
    assert got_meta == {} and built.num_classes == 3 and same_weights(built, model)


def test_bare_state_dict_is_accepted(tmp_path, model):
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    assert set(read_checkpoint(path)) == {"model"}


def test_wrong_number_of_classes_loads_all_but_class_predictions(tmp_path, model, caplog):
    path = tmp_path / "coco.pth"
    torch.save({"model": model.state_dict()}, path)
    target = build_model(NAME, num_classes=7)
    before = {k: v.clone() for k, v in target.state_dict().items() if "cls_preds" in k}
    with caplog.at_level(logging.WARNING, logger="detector.models.checkpoint"):
        load_checkpoint(target, path)
    assert "3 classes, the model 7" in caplog.text and "coco.pth" in caplog.text
    state, source = target.state_dict(), model.state_dict()
    for key in state:
        if "cls_preds" in key:
            assert torch.equal(state[key], before[key])
        else:
            assert torch.equal(state[key], source[key]), key

    built, _ = model_from_checkpoint(path, name=NAME, num_classes=7)
    assert built.num_classes == 7


def test_wrong_model_size_fails_naming_the_file(tmp_path, model):
    path = tmp_path / "nano.pt"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"nano.pt: does not fit model 'yolox_tiny'.*shape"):
        load_checkpoint(build_model("yolox_tiny", num_classes=3), path)


def test_our_checkpoint_of_another_size_says_which_it_is(tmp_path, model):
    """Our checkpoints record their model: the error says so, in one short sentence."""
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "meta": meta()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("yolox_s", num_classes=3), path)
    message = str(err.value)
    assert message.startswith(f"{path}: checkpoint is yolox_nano, not yolox_s")
    assert len(message) < 200 and "backbone." not in message
    with pytest.raises(CheckpointError, match="checkpoint is yolox_nano, not yolox_tiny"):
        model_from_checkpoint(path, name="yolox_tiny")
    built, _ = model_from_checkpoint(path, name=NAME)  # naming its own size is fine
    assert same_weights(built, model)


def test_official_file_of_another_size_names_the_sizes_that_fit(tmp_path, model):
    """Official .pth files carry no meta: the shapes tell which sizes the weights fit, whatever
    their number of classes."""
    path = tmp_path / "yolox_nano.pth"
    torch.save({"model": model.state_dict()}, path)  # nano weights, 3 classes, no meta
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("yolox_s", num_classes=80), path)
    message = str(err.value)
    assert "does not fit model 'yolox_s'" in message
    assert message.endswith("its weights fit yolox_nano (pass --model yolox_nano)")
    assert len(message) < 700
    state = dict(model.state_dict())
    state["backbone.backbone.stem.conv.conv.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"its weights fit none of yolox_darknet53, yolox_l"):
        load_checkpoint(build_model(NAME, num_classes=3), path)


def test_missing_and_unexpected_keys(tmp_path, model):
    state = dict(model.state_dict())
    state.pop("head.stems.0.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="1 missing keys: head.stems.0.conv.weight") as err:
        load_checkpoint(build_model(NAME, num_classes=3), path)
    assert "1 unexpected keys: extra.weight" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.pt: checkpoint file not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path, model):
    path = tmp_path / "cut.pt"
    torch.save({"model": model.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == (
        f"{path}: truncated or corrupt checkpoint (5,000 bytes), not a readable PyTorch file"
    )


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == (
        f"{path}: truncated or corrupt checkpoint (an empty file), not a readable PyTorch file"
    )


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        read_checkpoint(text)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="list.pt: not a checkpoint"):
        read_checkpoint(listing)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt: refused by the weights-only loader"):
        read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


# ---------------------------------------------------------------- checkpoint -> model config


def test_spec_of_our_meta(tmp_path, model):
    """Our meta names everything; an imgsz override wins and is checked."""
    spec = checkpoint_spec(checkpoint_meta(NAME, ["a", "b", "c"], (320, 416)), source="x.pt")
    assert spec == CheckpointSpec(NAME, 3, ("a", "b", "c"), (320, 416))
    assert (spec.preprocess.input_height, spec.preprocess.input_width) == (320, 416)
    assert checkpoint_spec(meta(), imgsz=96).input_size == (96, 96)
    assert checkpoint_spec(meta(), imgsz=(64, 128)).input_size == (64, 128)
    for bad in (100, 0, (64, 100), -32):
        with pytest.raises(CheckpointError, match=r"x.pt: imgsz: .*multiples of 32"):
            checkpoint_spec(meta(), imgsz=bad, source="x.pt")


def test_spec_of_meta_written_by_older_trainers():
    """Older checkpoints stored the size twice (``input_size`` and inside ``preprocess``):
    ``input_size`` is the one read; a meta with only the ``preprocess`` copy still works."""
    both = {**meta(), "input_size": [416, 416],
            "preprocess": {"input_height": 320, "input_width": 320, "pad_value": 114}}  # fmt: skip
    assert checkpoint_spec(both).input_size == (416, 416)
    only_preprocess = {k: v for k, v in both.items() if k != "input_size"}
    assert checkpoint_spec(only_preprocess).input_size == (320, 320)
    with pytest.raises(CheckpointError, match=r"x.pt: meta input_size: .*got \[100, 100\]"):
        checkpoint_spec({**meta(), "input_size": [100, 100]}, source="x.pt")


def test_new_meta_stores_the_input_size_once():
    written = checkpoint_meta(NAME, ["a", "b"], 416)
    assert written == {"model_name": NAME, "num_classes": 2, "class_names": ["a", "b"],
                       "input_size": [416, 416]}  # fmt: skip
    assert "preprocess" not in written
    with pytest.raises(ValueError, match="multiples of 32"):
        checkpoint_meta(NAME, ["a"], 100)


def test_spec_of_an_official_file_needs_a_name_and_falls_back():
    """No meta: the name is required, the class count comes from the weights, the names are
    the class ids and the input size is the model's default."""
    with pytest.raises(CheckpointError, match=r"coco.pth: .*pass the model name"):
        checkpoint_spec({}, weights_classes=80, source="coco.pth")
    spec = checkpoint_spec({}, model_name="yolox_s", weights_classes=2)
    assert spec == CheckpointSpec("yolox_s", 2, ("0", "1"), (640, 640))
    assert checkpoint_spec({}, model_name=NAME, weights_classes=2).input_size == (416, 416)
    with pytest.raises(CheckpointError, match="cannot tell the number of classes"):
        checkpoint_spec({}, model_name=NAME)


def test_spec_rejects_what_does_not_fit():
    with pytest.raises(CheckpointError, match="x.pt: checkpoint is yolox_nano, not yolox_s"):
        checkpoint_spec(meta(), model_name="yolox_s", source="x.pt")
    assert checkpoint_spec(meta(), model_name=NAME).model_name == NAME
    with pytest.raises(CheckpointError, match="meta lists 2 class names for a 3-class model"):
        checkpoint_spec({**meta(), "class_names": ["a", "b"]})


def test_load_inference_model(tmp_path, model):
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "meta": meta()}, path)
    built, spec = load_inference_model(path, imgsz=(128, 160))
    assert not built.training and same_weights(built, model)
    assert spec == CheckpointSpec(NAME, 3, ("c0", "c1", "c2"), (128, 160))
    official = tmp_path / "yolox_nano.pth"
    torch.save({"model": model.state_dict()}, official)
    built, spec = load_inference_model(official, NAME)
    assert same_weights(built, model) and spec.class_names == ("0", "1", "2")
    with pytest.raises(CheckpointError, match=r"yolox_nano.pth: .*pass the model name"):
        load_inference_model(official)
