"""TrainConfig: the shipped configs and presets, strict validation and `--set` overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xkd_core.config import ConfigError, load_yaml, to_dict
from xkd_core.training.config import (
    TrainConfig,
    load_train_config,
    resolve_train_dict,
    train_config_from_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "train"
XKD = CONFIGS / "xmodel_kd.yaml"
BASE = CONFIGS / "baseline_lidar.yaml"
#: Model fields that only exist for the camera branch (unused by the LiDAR-only baseline), by section.
CAMERA_ONLY = {
    "architecture": {"image_backbone", "image_pretrained", "image_out_indices", "fpn_dim", "embed_dim",
                     "scales", "fusion_hidden"},
    "losses": {"w2d", "w_fused", "wc", "tau", "max_pairs", "fused_detach_3d"},
    "distillation": {"wkd", "kd_T", "kd_teacher", "kd_average"},
}


@pytest.mark.parametrize("path", [XKD, BASE])
@pytest.mark.parametrize("preset", ["semantickitti", "synth_small"])
def test_shipped_configs_load(path: Path, preset: str) -> None:
    cfg = load_train_config(path, preset)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.use_camera == (path == XKD)
    if preset == "synth_small":
        assert cfg.device == "cpu" and cfg.amp == "none"
        assert cfg.model.architecture.image_pretrained == "none"  # no downloads on the CPU preset
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
        d["model"].pop("use_camera")
        for section, keys in CAMERA_ONLY.items():
            for key in keys:
                d["model"][section].pop(key)
    assert xkd == base
    assert set(load_yaml(BASE)) == {"base", "model", "out_dir", "presets"}  # it states only the differences


def test_preset_merges_deeply_and_overrides_win() -> None:
    raw = resolve_train_dict(XKD, "synth_small", ["data.batch_size=5", "model.architecture.voxel_size=0.2"])
    assert "presets" not in raw
    assert raw["data"]["batch_size"] == 5  # override beats preset (2) and base (4)
    assert raw["data"]["cameras"] == [2]  # untouched base key survives the preset's `data:` mapping
    assert raw["model"]["architecture"]["voxel_size"] == 0.2
    assert raw["model"]["architecture"]["image_backbone"] == "resnet18"  # the preset's, beside the override
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
        ("model.architecture.voxel_size=-1", "model.architecture: voxel_size must be > 0"),
        ("model.voxel_size=-1", "model.architecture: voxel_size must be > 0"),  # the flat spelling
        ("model.distillation.kd_T=0", "model.distillation: kd_T must be > 0"),
        ("model.architecture.image_pretrained=imagenet", "image_pretrained: imagenet .* efficientnet_lite0"),
        ("model.kd_groups=[[road, parking]]", "model.kd_groups = .* was removed"),
        ("init_skip=[unet.]", "init_skip = .* was removed"),
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
    available = r"available: \['semantickitti', 'synth_small', 'synth_surround'\]"
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


def _flat(model: dict) -> dict:
    """A `model:` mapping in the layout before sections: every section's keys at the top."""
    out = {k: v for k, v in model.items() if not isinstance(v, dict)}
    for section in ("architecture", "losses", "distillation"):
        out.update(model.get(section, {}))
    return out


def test_a_config_in_the_flat_layout_resolves_to_the_same_run(tmp_path: Path) -> None:
    """YAML files written before the model sections (every key under `model:`) still mean the same run."""
    import yaml

    data = load_yaml(XKD)
    data["model"] = _flat(data["model"])
    for preset in data["presets"].values():
        if "model" in preset:
            preset["model"] = _flat(preset["model"])
    assert "wkd" in data["model"] and "voxel_size" in data["presets"]["synth_small"]["model"]
    old = tmp_path / "xmodel_kd.yaml"
    old.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "baseline_lidar.yaml").write_text(BASE.read_text())
    for preset in ("semantickitti", "synth_small"):
        for name, new in (("xmodel_kd.yaml", XKD), ("baseline_lidar.yaml", BASE)):
            old_cfg, new_cfg = load_train_config(tmp_path / name, preset), load_train_config(new, preset)
            assert to_dict(old_cfg) == to_dict(new_cfg)


def test_overrides_reach_the_sections_in_either_spelling() -> None:
    new = load_train_config(XKD, "synth_small", ["model.distillation.wkd=0.5", "model.losses.wc=0.2"])
    old = load_train_config(XKD, "synth_small", ["model.wkd=0.5", "model.wc=0.2", "model.nce_negatives=all"])
    assert new.model.distillation.wkd == old.model.distillation.wkd == 0.5
    assert new.model.losses.wc == old.model.losses.wc == 0.2
    assert to_dict(new) == to_dict(old)
    # a whole mapping replaced by an override in the flat layout is migrated too
    whole = load_train_config(XKD, "synth_small", ["model={use_camera: false, voxel_size: 0.2}"])
    assert whole.model.use_camera is False and whole.model.architecture.voxel_size == 0.2


def test_a_run_embedded_in_an_old_checkpoint_still_resumes_its_config() -> None:
    """A checkpoint of the flat layout (the model shipped until 2026-12-04): its training config loads,
    overrides apply."""
    from model_fixtures import FLAT_LAYOUT_CHECKPOINT

    stored = json.loads(FLAT_LAYOUT_CHECKPOINT.read_text())["train_config"]
    assert "voxel_size" in stored["model"] and "architecture" not in stored["model"]
    cfg = train_config_from_dict(stored, ["model.wkd=0.5", "optim.steps=10"])
    assert cfg.model.distillation.wkd == 0.5 and cfg.optim.steps == 10
    assert cfg.model.distillation.kd_average == "all" and cfg.model.losses.fused_detach_3d is True
    preset = load_train_config(XKD, "synth_small")
    assert to_dict(cfg.model.architecture) == to_dict(preset.model.architecture)
    assert stored["model"]["voxel_size"] == 0.1  # the input is not modified


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_chain_relative_to_each_file(tmp_path: Path) -> None:
    _write(tmp_path / "shared" / "xmodel_kd.yaml", XKD.read_text())
    _write(tmp_path / "shared" / "small.yaml", "base: xmodel_kd.yaml\nmodel:\n  distillation: {wkd: 0.5}\n"
           "presets:\n  synth_small:\n    data: {batch_size: 3}\n")
    child = _write(tmp_path / "mine" / "run.yaml",
                   "base: ../shared/small.yaml\nmodel:\n  losses: {tau: 0.2}\n"
                   "out_dir: runs/mine\n")
    cfg = load_train_config(child, "synth_small")
    assert cfg.model.distillation.wkd == 0.5 and cfg.model.losses.tau == 0.2  # both layers
    assert cfg.model.losses.wc == 0.0  # the preset sets it, after every file
    assert cfg.data.batch_size == 3 and cfg.data.max_points == 20000  # preset layers merged deeply
    assert cfg.model.distillation.kd_average == "all"  # the first file's preset survives
    assert cfg.out_dir == "runs/synth_small/xmodel_kd"  # a preset applies after every file
    assert load_train_config(child, "semantickitti").out_dir == "runs/mine"


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, r"cycle: a\.yaml -> b\.yaml -> a\.yaml"),
    ({"a.yaml": "base: a.yaml\n"}, r"cycle: a\.yaml -> a\.yaml"),
    ({"a.yaml": "base: nope.yaml\n"}, r"a\.yaml: base file 'nope\.yaml' not found"),
    ({"a.yaml": "base: [b.yaml]\n"}, r"a\.yaml: 'base' must name another config file"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "model: {kd_loss: pseudo_label}\n"},
     r"b\.yaml: model\.kd_loss = 'pseudo_label': this switch was removed"),
])
def test_bad_base_chains_are_refused_by_name(tmp_path: Path, files: dict, message: str) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message):
        load_train_config(tmp_path / "a.yaml")


def test_the_surround_stages_share_one_network_and_the_baseline_its_3d_part() -> None:
    """synth_surround: the camera teacher, contrastive pretraining and the student build the same model
    (a checkpoint of one stage loads into the next), and the baseline is its 3D network."""
    cfgs = {name: load_train_config(CONFIGS / f"{name}.yaml", "synth_surround")
            for name in ("camera_teacher", "contrastive_pretrain", "xmodel_kd", "baseline_lidar")}
    teacher = cfgs["camera_teacher"]
    assert teacher.stage == "camera" and not teacher.model.distillation.freeze_camera
    student = cfgs["xmodel_kd"]
    assert student.stage == "lidar" and student.model.distillation.freeze_camera
    assert student.model.distillation.kd_teacher == "2d" and student.init_modules == ["image_net"]
    assert student.init_checkpoint == str(Path(cfgs["camera_teacher"].out_dir) / "last.pt")
    assert student.model.architecture.image_pretrained == "imagenet" and student.data.cameras == ["all"]
    # the KL only where labels are missing; the fleet fine-tune on this preset keeps its measured "all"
    assert student.model.distillation.kd_labeled == "none"
    fleet = load_train_config(CONFIGS / "fleet_finetune.yaml", "synth_surround",
                              ["init_checkpoint=deployed.pt"])
    assert fleet.model.distillation.kd_labeled == "all"
    pre = cfgs["contrastive_pretrain"]
    assert pre.data.labeled_scans == 0 and pre.model.losses.wc > 0 and pre.model.distillation.wkd == 0
    for name in ("camera_teacher", "contrastive_pretrain"):
        assert cfgs[name].model.architecture == student.model.architecture
    base = to_dict(cfgs["baseline_lidar"])
    assert base["init_checkpoint"] is None and base["init_modules"] is None
    xkd = to_dict(student)
    for d in (xkd, base):
        for key in ("out_dir", "init_checkpoint", "init_modules"):
            d.pop(key)
        d["model"].pop("use_camera")
        for section, keys in {**CAMERA_ONLY, "distillation": CAMERA_ONLY["distillation"] | {"freeze_camera"}
                              }.items():
            for key in keys:
                d["model"][section].pop(key)
    assert xkd == base
