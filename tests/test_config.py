from pathlib import Path

import pytest
import yaml

from deepcrate.config import default_config, resolve_config
from deepcrate.errors import ConfigError


def test_defaults_are_the_packaged_local_yaml():
    config = default_config()  # the packaged function itself (conftest pins the seed recipe for resolve_config)
    assert config == yaml.safe_load((Path(__file__).parents[1] / "conf" / "local.yaml").read_text(encoding="utf-8"))
    assert (config["spectrogram"]["preset"], config["train"]["model"]) == ("musicnn", "musicnn")
    assert config["spectrogram"]["seed"]["n_fft"] == 512
    assert config["split"] == {"train": 0.65, "validation": 0.25, "test": 0.10, "seed": 0}


def test_set_overrides_parse_yaml_values():
    config = resolve_config(
        overrides=["spectrogram.preset=mel", "ingest.max_file_mb=12", "split.seed=7",
                   "spark.options.spark.executor.memory=8g"]
    )
    assert config["spectrogram"]["preset"] == "mel"
    assert config["ingest"]["max_file_mb"] == 12
    assert config["split"]["seed"] == 7
    assert config["spark"]["options"]["spark.executor.memory"] == "8g"


def test_conf_file_overlays_defaults_and_set_wins(tmp_path):
    overlay = tmp_path / "x.yaml"
    overlay.write_text("ingest:\n  max_duration_s: 30\n  partition_mb: 4\n")
    config = resolve_config(conf_files=[overlay], overrides=["ingest.partition_mb=8"])
    assert config["ingest"]["max_duration_s"] == 30
    assert config["ingest"]["partition_mb"] == 8
    assert config["ingest"]["max_file_mb"] == 400  # untouched default


@pytest.mark.parametrize(
    "override, message",
    [
        ("spectrogram.presett=mel", "unknown key 'spectrogram.presett'"),
        ("ingest.max_file_mb=lots", "must be a int"),
        ("spectrogram=mel", "is a section"),
        ("novalue", "expected section.key=value"),
        ("split.train=0.9", "sum to 1"),
    ],
)
def test_bad_overrides_are_refused_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=[override])


def test_missing_conf_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        resolve_config(conf_files=[tmp_path / "nope.yaml"])


@pytest.mark.parametrize("override, message", [
    ("ingest.max_duration_s=-1", "ingest.max_duration_s must be > 0, got -1"),
    ("train.batch_size=0", "train.batch_size must be > 0, got 0"),
    ("index.k=-5", "index.k must be > 0, got -5"),
    ("ingest.silence_dbfs=10", "ingest.silence_dbfs must be <= 0, got 10"),
    ("spectrogram.slice_frames=-1", "spectrogram.slice_frames must be >= 0, got -1"),
    ("evaluate.random_draws=0", "evaluate.random_draws must be > 0, got 0"),
])
def test_a_number_of_the_wrong_sign_is_refused_before_any_work(override, message):
    with pytest.raises(ConfigError) as refused:
        resolve_config(overrides=[override])
    assert str(refused.value) == message


@pytest.mark.parametrize("override", ["acquire.retries=0", "acquire.per_host_delay_s=0", "spectrogram.slice_frames=0",
                                      "train.learning_rate=0", "index.exact_max_songs=0", "ingest.silence_dbfs=-80"])
def test_zero_and_negative_numbers_are_accepted_where_they_mean_something(override):
    key, value = override.split("=")
    section, name = key.split(".")
    assert resolve_config(overrides=[override])[section][name] == float(value)


def test_a_yaml_bomb_is_refused_in_one_line_before_it_expands(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 strings once expanded
    bomb.write_text("spark:\n  options:\n" + "".join(f"    {line}\n" for line in lines))
    with pytest.raises(ConfigError, match=r"^config file .*bomb.yaml: YAML aliases \(\*name\) are not allowed"):
        resolve_config(conf_files=[bomb])
    with pytest.raises(ConfigError, match="YAML aliases"):
        resolve_config(overrides=["spark.options.x=[&a [1, 2], *a]"])


def test_a_list_of_the_wrong_kind_is_refused():
    with pytest.raises(ConfigError, match=r"ingest.extensions must be a list of str like \['mp3'"):
        resolve_config(overrides=["ingest.extensions=[[mp3], ogg]"])
    assert resolve_config(overrides=["ingest.extensions=[mp3]"])["ingest"]["extensions"] == ["mp3"]


@pytest.mark.parametrize("content, message", [
    (b"spark: [\n", "not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1"),
    (b"\xff\xfe spark:", "not UTF-8 text (byte 0xff at offset 0)"),
])
def test_an_unreadable_conf_file_is_one_line(tmp_path, content, message):
    conf = tmp_path / "bad.yaml"
    conf.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        resolve_config(conf_files=[conf])
    assert str(refused.value) == f"config file {conf}: {message}" or str(refused.value).startswith(
        f"config file {conf}: {message}")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("override, message", [
    ("spark.log_level=NOPE", "spark.log_level must be one of ALL, TRACE, DEBUG, INFO, WARN, ERROR, FATAL, OFF"),
    ("ingest.extensions=[]", "ingest.extensions must list at least one file extension"),
    ("ingest.extensions=['']", "ingest.extensions must list at least one file extension"),
    ("ingest.truncated_ratio=5", "ingest.truncated_ratio must be > 0 and <= 1"),
])
def test_settings_that_would_make_nonsense_of_a_job_are_refused(override, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        resolve_config(overrides=[override])


def test_a_log_level_is_taken_in_any_case():
    assert resolve_config(overrides=["spark.log_level=error"])["spark"]["log_level"] == "ERROR"
