"""Building the model family: configs, outputs in both modes, published sizes, the info CLI."""

from __future__ import annotations

import pytest
import torch

from detector.cli import main as cli_main
from detector.core.config import ConfigError
from detector.models import (
    YOLOX,
    build_model,
    count_gflops,
    count_parameters,
    get_model_config,
    model_names,
)
from detector.models.decode import decode_outputs

# YOLOX's published table: parameters (M), GFLOPs, at input size
PUBLISHED = {
    "yolox_nano": (0.91, 1.08, 416),
    "yolox_tiny": (5.06, 6.45, 416),
    "yolox_s": (9.0, 26.8, 640),
    "yolox_m": (25.3, 73.8, 640),
    "yolox_l": (54.2, 155.6, 640),
    "yolox_x": (99.1, 281.9, 640),
    "yolox_darknet53": (63.7, 185.3, 640),
}


def test_model_names():
    assert model_names() == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameters_and_gflops(name):
    """Within 2 % of YOLOX's table (FLOPs counted on the meta device: shapes only)."""
    params, gflops, size = PUBLISHED[name]
    config = get_model_config(name)
    assert config.input_size == size
    with torch.device("meta"):  # no weights are initialised: instant even for yolox_x
        model = build_model(name)
    assert count_parameters(model) / 1e6 == pytest.approx(params, rel=0.02)
    assert count_gflops(model, size) == pytest.approx(gflops, rel=0.02)


def test_config_fields():
    nano = get_model_config("yolox_nano")
    assert (nano.depth, nano.width, nano.depthwise, nano.act) == (0.33, 0.25, True, "silu")
    assert nano.train["augment"]["mixup_prob"] == 0.0
    assert nano.train["augment"]["mosaic_scale"] == [0.5, 1.5]
    assert nano.train["multiscale_sizes"] == [320, 640]
    assert get_model_config("yolox_s").train == {}
    dark = get_model_config("yolox_darknet53")
    assert (dark.backbone, dark.act, dark.in_channels) == ("darknet53", "lrelu", (128, 256, 512))


def test_train_and_eval_outputs():
    model = build_model("yolox_nano", num_classes=3)
    assert isinstance(model, YOLOX) and model.strides == (8, 16, 32)
    assert model.num_classes == 3 and model.name == "yolox_nano"
    x = torch.rand(2, 3, 64, 96) * 255
    maps = model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 12), (2, 8, 4, 6), (2, 8, 2, 3)]
    model.eval()
    with torch.no_grad():
        out = model(x)
        raw = model.forward_raw(x)
    assert out.shape == (2, 96 + 24 + 6, 8)
    torch.testing.assert_close(out, decode_outputs(raw, (8, 16, 32)))
    assert ((out[..., 4:] > 0) & (out[..., 4:] < 1)).all()
    assert model.training is False  # forward_raw flips nothing


def test_official_key_names():
    keys = build_model("yolox_nano").state_dict().keys()
    for key in (
        "backbone.backbone.stem.conv.conv.weight",
        "backbone.backbone.dark2.0.dconv.conv.weight",
        "backbone.backbone.dark5.1.conv1.bn.running_var",
        "backbone.lateral_conv0.conv.weight",
        "backbone.C3_n4.m.0.conv2.pconv.bn.weight",
        "head.cls_convs.0.0.dconv.conv.weight",
        "head.cls_preds.0.weight",
        "head.obj_preds.2.bias",
        "head.reg_preds.1.weight",
        "head.stems.2.bn.num_batches_tracked",
    ):
        assert key in keys, key
    with torch.device("meta"):
        dark = build_model("yolox_darknet53").state_dict().keys()
    assert "backbone.backbone.dark5.7.conv2.conv.weight" in dark  # SPP inside dark5
    assert "backbone.out1_cbl.conv.weight" in dark and "backbone.out2.4.bn.bias" in dark


def test_config_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndepth: 0.33\nwidth: 0.125\ninput_size: 256\n")
    model = build_model(str(path), num_classes=2)
    assert model.name == "mine" and model.head.stems[0].conv.out_channels == 32


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'yolox_sm'.*did you mean"):
        get_model_config("yolox_sm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nwidht: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'widht' \(did you mean 'width'"):
        get_model_config(str(bad))
    bad.write_text("name: bad\nbackbone: resnet\n")
    with pytest.raises(ConfigError, match="bad.yaml: backbone 'resnet'"):
        get_model_config(str(bad))
    with pytest.raises(ConfigError, match="missing.yaml: model config file not found"):
        get_model_config(str(tmp_path / "missing.yaml"))


def test_info_cli(capsys):
    assert cli_main(["info", "yolox_s"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 8.97M" in out and "GFLOPs at 640x640: 26.81" in out
    assert cli_main(["info", "yolox_nano", "--imgsz", "320"]) == 0
    assert "GFLOPs at 320x320" in capsys.readouterr().out
    assert cli_main(["info", "yolox_q"]) == 2
    assert "unknown model 'yolox_q'" in capsys.readouterr().err


def test_count_gflops_leaves_the_model_alone_and_counts_by_hand():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.Conv2d(8, 4, 1),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # conv1: 8 x 16 x 16 outputs x 27 MACs; bn: 2 per output; conv2: 4 x 16 x 16 x (8 + bias)
    macs = 8 * 256 * 27 + 2 * 8 * 256 + 4 * 256 * 9
    assert count_gflops(model, 32) == pytest.approx(2 * macs / 1e9)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert next(model.parameters()).device.type == "cpu"
