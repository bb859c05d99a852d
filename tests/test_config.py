"""params.yaml -> strict dataclasses: unknown keys, wrong types, profiles and overrides."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from synclip.config import ConfigError, Params, load_params, to_dict


@pytest.fixture
def params_file(root, tmp_path):
    """A copy of the repository's params.yaml and profiles, safe to edit."""
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "params", tmp_path / "params")
    return tmp_path / "params.yaml"


def edit(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_the_repository_params_load_as_the_tiny_profile(root):
    params = load_params(root / "params.yaml")
    assert isinstance(params, Params)
    assert params.profile == "tiny"
    assert params.pretrained.whisper.endswith("whisper-tiny.en")


def test_params_are_frozen(root):
    params = load_params(root / "params.yaml")
    with pytest.raises(AttributeError):
        params.seed = 3  # type: ignore[misc]


def test_unknown_key_is_an_error_naming_it(params_file):
    edit(params_file, lambda d: d["runtime"].update(devise="cpu"))
    with pytest.raises(ConfigError, match=r"unknown key 'runtime\.devise'"):
        load_params(params_file)


def test_unknown_section_is_an_error_naming_it(params_file):
    edit(params_file, lambda d: d.update(trainer={"lr": 1}))
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_params(params_file)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threads", "two", r"'runtime\.threads' must be an integer, got str 'two'"),
        ("threads", True, r"'runtime\.threads' must be an integer, got bool"),
        ("threads", 1.5, r"'runtime\.threads' must be an integer"),
        ("log_level", "LOUD", r"'runtime\.log_level' must be one of"),
        ("device", 3, r"'runtime\.device' must be a string"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(params_file, key, value, message):
    edit(params_file, lambda d: d["runtime"].update({key: value}))
    with pytest.raises(ConfigError, match=message):
        load_params(params_file)


def test_missing_key_is_an_error_naming_it(params_file):
    edit(params_file, lambda d: d["pretrained"].pop("whisper"))
    with pytest.raises(ConfigError, match=r"missing key 'pretrained\.whisper'"):
        load_params(params_file)


def test_cross_field_rules_run_after_types(params_file):
    edit(params_file, lambda d: d["runtime"].update(device="gpu0"))
    with pytest.raises(ConfigError, match=r"runtime\.device must be"):
        load_params(params_file)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sample_every": 150},
            r"train_unet\.stage1: sample_every \(150\) must be 0 or a multiple of val_every",
        ),
        ({"sample_frames": 20}, r"train_unet\.stage1\.sample_frames \(20\) must be at least .* = 46"),
    ],
)
def test_validation_samples_must_fit_the_validations_and_the_sync_scoring(params_file, change, message):
    edit(params_file, lambda d: d["train_unet"]["stage1"].update(change))
    with pytest.raises(ConfigError, match=message):
        load_params(params_file)


def test_stage_two_may_not_inherit_the_lower_face_jitter_with_pixel_losses(params_file):
    """Stage 2 compares decoded frames with the real pixels, which a jittered latent no longer shows."""
    edit(params_file, lambda d: d["train_unet"]["stage2"].pop("lower_face_jitter"))
    with pytest.raises(
        ConfigError, match=r"train_unet\.stage2: lower_face_jitter \[0\.1, 0\.25\] with the pixel"
    ):
        load_params(params_file)
    edit(params_file, lambda d: d["train_unet"]["stage1"].update(lower_face_jitter=[-0.1, 0.5]))
    with pytest.raises(ConfigError, match=r"lower_face_jitter must be >= 0"):
        load_params(params_file)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"batch_size": 30, "windows_per_clip": 4},
            r"windows_per_clip \(4\) must be >= 1 and divide syncnet\.batch_size \(30\)",
        ),
        ({"contrastive_offsets": [0, 2]}, r"contrastive_offsets must be >= 1 frame"),
        (
            {"bce_negatives": "same_clip", "windows_per_clip": 1},
            r"same_clip needs windows_per_clip >= 2 and no contrastive_offsets",
        ),
    ],
)
def test_syncnet_batches_must_be_drawable(params_file, change, message):
    edit(params_file, lambda d: d["syncnet"].update(change))
    with pytest.raises(ConfigError, match=message):
        load_params(params_file)


def test_overrides_parse_yaml_values_and_win_over_the_file(params_file):
    params = load_params(params_file, ["runtime.threads=3", "pretrained.sd_vae=/weights/vae", "seed=7"])
    assert params.runtime.threads == 3
    assert params.pretrained.sd_vae == "/weights/vae"
    assert params.seed == 7


def test_override_of_an_unknown_key_is_refused(params_file):
    with pytest.raises(ConfigError, match=r"unknown key 'runtime\.thread'"):
        load_params(params_file, ["runtime.thread=3"])


def test_override_without_equals_is_refused(params_file):
    with pytest.raises(ConfigError, match=r"key\.subkey=value"):
        load_params(params_file, ["runtime.threads"])


def test_full_profile_applies_its_overrides_only(params_file):
    tiny = to_dict(load_params(params_file))
    full = to_dict(load_params(params_file, profile="full"))
    profile = yaml.safe_load((params_file.parent / "params" / "full.yaml").read_text())
    assert full["profile"] == "full"

    def check(resolved: dict, overrides: dict, unchanged: dict, where: str) -> None:
        """`overrides` applied, every key they do not name as in `unchanged` (the tiny profile)."""
        for key, value in resolved.items():
            if key not in overrides:
                assert value == unchanged[key], f"{where}{key}"
            elif isinstance(overrides[key], dict):
                check(value, overrides[key], unchanged[key], f"{where}{key}.")
            else:
                assert value == overrides[key], f"{where}{key}"

    for section, values in profile.items():
        check(full[section], values, tiny[section], f"{section}.")
    untouched = {k: v for k, v in tiny.items() if k not in profile and k != "profile"}
    assert all(full[k] == v for k, v in untouched.items())


def test_profile_can_be_chosen_by_override_and_command_line_wins(params_file):
    params = load_params(params_file, ["profile=full", "pretrained.sd_vae=/mine"])
    assert params.profile == "full"
    assert params.pretrained.sd_vae == "/mine"


def test_profile_with_an_unknown_key_is_refused(params_file):
    (params_file.parent / "params" / "bad.yaml").write_text("runtime:\n  gpus: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'runtime\.gpus'"):
        load_params(params_file, profile="bad")


def test_missing_profile_file_is_refused(params_file):
    with pytest.raises(ConfigError, match=r"profile 'huge'.*does not exist"):
        load_params(params_file, profile="huge")


def test_cli_reports_a_bad_key_in_one_line_with_exit_code_2(params_file):
    edit(params_file, lambda d: d["runtime"].update(devise="cpu"))
    result = subprocess.run(
        [sys.executable, "-m", "synclip", "params", "show", "--params", str(params_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'runtime.devise'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_prints_the_resolved_params(params_file):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synclip",
            "params",
            "show",
            "--params",
            str(params_file),
            "--json",
            "-S",
            "runtime.threads=2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    assert json.loads(result.stdout)["runtime"]["threads"] == 2


def test_exponent_notation_is_a_number_even_without_a_dot(params_file):
    assert load_params(params_file, ["syncnet.lr=1e-3"]).syncnet.lr == 0.001
    with pytest.raises(ConfigError, match=r"'syncnet\.lr' must be a number, got str 'fast'"):
        load_params(params_file, ["syncnet.lr=fast"])
