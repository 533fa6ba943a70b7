import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.config import Config, ConfigError, config_from_dict, documented_keys, load_config, render_example

REPO = Path(__file__).resolve().parents[2]


def test_no_file_means_defaults():
    assert load_config() == Config()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"model": {"device": "gpu"}}, "model.device"),
        ({"model": {"device": "cuda:x"}}, "model.device"),
        ({"model": {"dtype": "int4"}}, "model.dtype"),
        ({"embedder": {"batch_size": "64"}}, "embedder.batch_size"),
        ({"embedder": {"batch_size": 0}}, "embedder.batch_size"),
        ({"embedder": {"batch_size": True}}, "embedder.batch_size"),
        ({"logging": {"level": "loud"}}, "logging.level"),
        ({"model": {"devcie": "cpu"}}, "model.devcie"),
        ({"modle": {}}, "modle"),
        ({"model": "cpu"}, "model"),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    assert caught.value.key == key
    assert str(caught.value).startswith(key + ":")


def test_good_values_are_taken():
    config = config_from_dict({"model": {"device": "cpu", "dtype": "bfloat16"}, "embedder": {"batch_size": 8}})
    assert (config.model.device, config.model.dtype, config.embedder.batch_size) == ("cpu", "bfloat16", 8)


def test_invalid_toml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_search_order(tmp_path, monkeypatch):
    (tmp_path / "dreamd.toml").write_text('[logging]\nlevel = "debug"\n')
    assert load_config().logging.level == "debug"
    explicit = tmp_path / "other.toml"
    explicit.write_text('[logging]\nlevel = "error"\n')
    monkeypatch.setenv("DREAMD_CONFIG", str(explicit))
    assert load_config().logging.level == "error"
    monkeypatch.setenv("DREAMD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert caught.value.key == "DREAMD_CONFIG"


def test_example_file_is_current_and_means_the_defaults():
    example = REPO / "systemd" / "dreamd.example.toml"
    assert example.read_text() == render_example(), (
        "regenerate: dreamctl config --example > systemd/dreamd.example.toml"
    )
    assert load_config(example) == Config()


def test_readme_points_to_the_reference_that_documents_every_key():
    # The README names the generated reference instead of keeping a third copy of every help text.
    assert "systemd/dreamd.example.toml" in (REPO / "README.md").read_text()
    example = tomllib.loads((REPO / "systemd" / "dreamd.example.toml").read_text())
    missing = [key for key in documented_keys() if key.split(".", 1)[1] not in example.get(key.split(".", 1)[0], {})]
    assert not missing, f"the example config lacks keys: {missing}"


def test_dreamctl_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\ndevice = "gpu"\n')
    result = CliRunner().invoke(dreamctl, ["--config", str(bad), "config"])
    assert result.exit_code == 2
    assert "model.device" in result.output and "auto, cpu, cuda" in result.output


def test_real_dreamd_process_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[embedder]\nbatch_size = -1\n")
    dreamd = Path(sys.executable).parent / "dreamd"
    done = subprocess.run([str(dreamd), "--config", str(bad), "--check-config"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "embedder.batch_size" in done.stderr


@pytest.mark.parametrize("command", ["dreamd", "dreamctl"])
def test_console_scripts_answer_help(command):
    done = subprocess.run([str(Path(sys.executable).parent / command), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "Usage:" in done.stdout and "--config" in done.stdout
