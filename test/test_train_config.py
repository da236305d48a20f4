"""TrainConfig: the shipped configs and presets, strict validation and `--set` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from xkd_core.config import ConfigError, to_dict
from xkd_core.training.config import TrainConfig, load_train_config, resolve_train_dict

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "train"
XKD = CONFIGS / "xmodel_kd.yaml"
BASE = CONFIGS / "baseline_lidar.yaml"
#: Model fields that only exist for the camera branch (unused by the LiDAR-only baseline).
CAMERA_ONLY = {
    "use_camera", "image_backbone", "image_pretrained", "image_out_indices", "fpn_dim", "embed_dim",
    "scales", "fusion_hidden", "w2d", "w_fused", "wc", "wkd", "tau", "kd_T", "kd_teacher", "max_pairs",
    "nce_negatives", "fused_detach_3d", "kd_average",
}


@pytest.mark.parametrize("path", [XKD, BASE])
@pytest.mark.parametrize("preset", ["semantickitti", "synth_small"])
def test_shipped_configs_load(path: Path, preset: str) -> None:
    cfg = load_train_config(path, preset)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.use_camera == (path == XKD)
    if preset == "synth_small":
        assert cfg.device == "cpu" and cfg.amp == "none"
        assert cfg.model.image_pretrained == "none"  # no downloads on the CPU preset
        assert cfg.optim.steps is not None and cfg.optim.epochs is None  # the preset replaced the budget
    else:
        assert cfg.device == "auto" and cfg.amp in ("bf16", "fp16")


@pytest.mark.parametrize("preset", ["semantickitti", "synth_small"])
def test_baseline_is_the_same_network_and_budget_without_camera(preset: str) -> None:
    xkd = to_dict(load_train_config(XKD, preset))
    base = to_dict(load_train_config(BASE, preset))
    assert xkd["model"]["use_camera"] is True and base["model"]["use_camera"] is False
    for d in (xkd, base):
        d.pop("out_dir")
        for key in CAMERA_ONLY:
            d["model"].pop(key)
    assert xkd == base


def test_preset_merges_deeply_and_overrides_win() -> None:
    raw = resolve_train_dict(XKD, "synth_small", ["data.batch_size=5", "model.voxel_size=0.2"])
    assert "presets" not in raw
    assert raw["data"]["batch_size"] == 5  # override beats preset (2) and base (4)
    assert raw["data"]["cameras"] == [2]  # untouched base key survives the preset's `data:` mapping
    assert raw["model"]["voxel_size"] == 0.2
    cfg = load_train_config(XKD, "synth_small", ["optim.schedule=onecycle", "init_checkpoint=a/b.pt"])
    assert cfg.optim.schedule == "onecycle" and cfg.init_checkpoint == "a/b.pt"
    assert cfg.data.point_aug.rotate_z is True  # nested dataclasses are built


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("data.point_aug.rotate=true", "data.point_aug.rotate"),
        ("modell.use_camera=false", "modell"),
        ("optim.lr=fast", "optim.lr"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("model.use_camera=maybe", "model.use_camera"),
        ("amp=fp8", "amp"),
        ("data.source=lidarbag", "data.source"),
        ("data.image_hw=[1, 2, 3]", "data.image_hw"),
    ],
)
def test_unknown_key_or_wrong_type_names_the_key(override: str, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_train_config(XKD, "synth_small", [override])
    assert names in str(err.value)
    assert "xmodel_kd.yaml" in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.steps=100", "exactly one of optim.steps and optim.epochs"),  # base has epochs too
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.max_points=0", "data.max_points"),
        ("data.label_fraction=0", "data.label_fraction"),
        ("data.label_fraction=1.5", "data.label_fraction"),
        ("data.val_sequences=[a8]", "data.val_sequences"),
        ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("log_every=0", "log_every"),
        ("model.voxel_size=-1", "voxel_size"),
        ("model.backend=spconv_triton", "sparse_backend"),
        ("data.cameras=[]", "data.cameras is empty"),
    ],
)
def test_values_out_of_range_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_train_config(XKD, "semantickitti", [override])


def test_sequence_ids_accept_yaml_ints_and_strings() -> None:
    # YAML reads 07 as int 7 and 08 as the string "08"; both must name the same folders.
    cfg = load_train_config(XKD, "semantickitti", ["data.train_sequences=[0, 07, 08, '10']"])
    assert cfg.data.train_sequences == ["00", "07", "08", "10"]
    assert cfg.data.val_sequences is None  # official split


def test_unknown_preset_and_missing_file() -> None:
    available = r"available: \['semantickitti', 'synth_small'\]"
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; " + available):
        load_train_config(XKD, "nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(CONFIGS / "missing.yaml", None)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        load_train_config(XKD, "synth_small", ["optim.lr"])


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from xkd_core.training.cli import main

    assert main(["--config", str(XKD), "--preset", "synth_small", "--set", "optim.warmup=3"]) == 2
    err = capsys.readouterr().err
    assert "xkd-train: error:" in err and "optim.warmup" in err
    assert main([]) == 2
    assert "give --config" in capsys.readouterr().err


def test_label_fraction_keeps_the_same_labeled_points_every_time() -> None:
    import numpy as np

    from xkd_core.data.frame import Frame
    from xkd_core.training.data import keep_label_fraction

    rng = np.random.default_rng(0)
    frame = Frame(points=rng.normal(size=(20000, 4)).astype(np.float32),
                  labels=rng.integers(1, 20, 20000), sequence="00", frame_id="000007")
    a = keep_label_fraction(frame, 0.1, 7)
    assert keep_label_fraction(frame, 1.0, 7) is frame
    labeled = a.labels != 0
    assert 0.09 < labeled.mean() < 0.11
    assert np.array_equal(a.labels[labeled], frame.labels[labeled])
    assert np.array_equal(keep_label_fraction(frame, 0.1, 7).labels, a.labels)  # fixed subset
    assert not np.array_equal(keep_label_fraction(frame, 0.1, 8).labels != 0, labeled)  # per scan
    assert np.all(frame.labels != 0)  # the input frame is not modified


def test_label_frustum_adds_every_point_a_camera_sees() -> None:
    import numpy as np
    from model_fixtures import camera

    from xkd_core.data.frame import Frame
    from xkd_core.geometry.projection import in_any_view, views_of
    from xkd_core.training.data import keep_label_fraction

    rng = np.random.default_rng(1)
    pts = rng.uniform(-30, 30, size=(20000, 4)).astype(np.float32)
    view = camera(rng, hw=(80, 100))  # looking along LiDAR +x
    frame = Frame(points=pts, labels=rng.integers(1, 20, 20000), views=[view], sequence="00", frame_id="1")
    seen = in_any_view(pts[:, :3], views_of([view]))
    assert 0.01 < seen.mean() < 0.5
    plain = keep_label_fraction(frame, 0.02, 3)
    both = keep_label_fraction(frame, 0.02, 3, keep_frustum=True)
    assert np.array_equal(both.labels != 0, (plain.labels != 0) | seen)  # the subset plus the frustum
    assert np.array_equal(both.labels[both.labels != 0], frame.labels[both.labels != 0])
    assert keep_label_fraction(frame, 1.0, 3, keep_frustum=True) is frame  # dense labels: nothing to add
    with pytest.raises(ValueError, match="label_frustum.*no camera view"):
        keep_label_fraction(Frame(points=pts, labels=frame.labels), 0.02, 3, keep_frustum=True)
