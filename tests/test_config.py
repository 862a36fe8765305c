from pathlib import Path

import pytest
import yaml

from deepcrate.config import Settings, default_config, resolve_settings, settings_from_mapping, to_mapping
from deepcrate.errors import ConfigError


def test_defaults_are_the_packaged_local_yaml():
    config = default_config()  # the packaged function itself (conftest pins the seed recipe for resolve_settings)
    assert config == yaml.safe_load((Path(__file__).parents[1] / "conf" / "local.yaml").read_text(encoding="utf-8"))
    assert (config["spectrogram"]["preset"], config["train"]["model"]) == ("musicnn", "musicnn")
    assert config["spectrogram"]["seed"]["n_fft"] == 512
    assert config["split"] == {"train": 0.65, "validation": 0.25, "test": 0.10, "seed": 0}


def test_set_overrides_parse_yaml_values():
    settings = resolve_settings(
        overrides=["spectrogram.preset=mel", "ingest.max_file_mb=12", "split.seed=7",
                   "spark.options.spark.executor.memory=8g"]
    )
    assert settings.spectrogram.preset == "mel"
    assert settings.ingest.max_file_mb == 12
    assert settings.split.seed == 7
    assert settings.spark.options["spark.executor.memory"] == "8g"


def test_conf_file_overlays_defaults_and_set_wins(tmp_path):
    overlay = tmp_path / "x.yaml"
    overlay.write_text("ingest:\n  max_duration_s: 30\n  partition_mb: 4\n")
    settings = resolve_settings(conf_files=[overlay], overrides=["ingest.partition_mb=8"])
    assert settings.ingest.max_duration_s == 30
    assert settings.ingest.partition_mb == 8
    assert settings.ingest.max_file_mb == 400  # untouched default


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
        resolve_settings(overrides=[override])


def test_missing_conf_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        resolve_settings(conf_files=[tmp_path / "nope.yaml"])


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
        resolve_settings(overrides=[override])
    assert str(refused.value) == message


@pytest.mark.parametrize("override", ["acquire.retries=0", "acquire.per_host_delay_s=0", "spectrogram.slice_frames=0",
                                      "train.learning_rate=0", "index.exact_max_songs=0", "ingest.silence_dbfs=-80"])
def test_zero_and_negative_numbers_are_accepted_where_they_mean_something(override):
    key, value = override.split("=")
    section, name = key.split(".")
    assert getattr(getattr(resolve_settings(overrides=[override]), section), name) == float(value)


def test_a_yaml_bomb_is_refused_in_one_line_before_it_expands(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 strings once expanded
    bomb.write_text("spark:\n  options:\n" + "".join(f"    {line}\n" for line in lines))
    with pytest.raises(ConfigError, match=r"^config file .*bomb.yaml: YAML aliases \(\*name\) are not allowed"):
        resolve_settings(conf_files=[bomb])
    with pytest.raises(ConfigError, match="YAML aliases"):
        resolve_settings(overrides=["spark.options.x=[&a [1, 2], *a]"])


def test_a_list_of_the_wrong_kind_is_refused():
    with pytest.raises(ConfigError, match=r"ingest.extensions must be a list of str like \['mp3'"):
        resolve_settings(overrides=["ingest.extensions=[[mp3], ogg]"])
    assert resolve_settings(overrides=["ingest.extensions=[mp3]"]).ingest.extensions == ("mp3",)


@pytest.mark.parametrize("content, message", [
    (b"spark: [\n", "not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1"),
    (b"\xff\xfe spark:", "not UTF-8 text (byte 0xff at offset 0)"),
])
def test_an_unreadable_conf_file_is_one_line(tmp_path, content, message):
    conf = tmp_path / "bad.yaml"
    conf.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        resolve_settings(conf_files=[conf])
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
        resolve_settings(overrides=[override])


def test_a_log_level_is_taken_in_any_case():
    assert resolve_settings(overrides=["spark.log_level=error"]).spark.log_level == "ERROR"


@pytest.mark.parametrize("override, message", [
    ("spectrogram.preset=png", "spectrogram.preset must be one of seed, mel, musicnn, got 'png'"),
    ("spectrogram.slice_hop_frames=300", "spectrogram.slice_hop_frames must be 0 (= slice_frames) or 1..256, got 300"),
    ("train.model=vgg", "train.model must be one of seed, improved, musicnn, got 'vgg'"),
    ("train.objective=supcon", "train.objective=supcon trains the head on a pretrained network's features"),
    ("features.runtime=onnx", "features.runtime must be one of openvino, keras, got 'onnx'"),
    ("index.approximate=lsh", "index.approximate must be one of hnsw, ivf, got 'lsh'"),
    ("index.hnsw_m=0", "index.hnsw_m must be > 0, got 0"),
])
def test_every_section_is_checked_where_the_settings_are_built(override, message):
    with pytest.raises(ConfigError) as refused:
        resolve_settings(overrides=[override])
    assert str(refused.value).startswith(message)


def test_the_settings_are_typed_and_give_back_the_yaml_they_came_from():
    settings = resolve_settings(overrides=["index.k=7", "ingest.extensions=[mp3, flac]"])
    assert isinstance(settings, Settings)
    assert settings.index.k == 7 and settings.ingest.suffixes == (".mp3", ".flac")
    assert settings.spectrogram.front_end.n_fft == 512 and settings.spectrogram.hop_length == 882  # seed: 20 ms at 44.1 kHz
    expected = default_config()
    expected["spectrogram"].update(preset="seed")
    expected["train"].update(model="seed", objective="classify")  # conftest's seed recipe
    expected["index"]["k"], expected["ingest"]["extensions"] = 7, ["mp3", "flac"]
    assert to_mapping(settings) == expected
    assert settings_from_mapping(to_mapping(settings)) == settings  # what a training run keeps reads back the same


def test_settings_kept_as_a_mapping_take_the_defaults_for_what_they_lack_and_refuse_unknown_keys():
    assert settings_from_mapping({"index": {"k": 3}}).index.k == 3
    with pytest.raises(ConfigError, match=r"^run.yaml: unknown key 'index.kk'"):
        settings_from_mapping({"index": {"kk": 3}}, where="run.yaml")
