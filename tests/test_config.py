import tomllib
from pathlib import Path

import pytest

from odsmedia import config as configmod
from odsmedia.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_match_config_default_toml():
    # config/default.toml documents the defaults; it must say what the code does.
    table = tomllib.loads((REPO / "config" / "default.toml").read_text())
    table.pop("plans", None)
    flat = configmod._flatten(table)
    for setting in configmod.SETTINGS:
        assert setting.key in flat, f"{setting.key} missing from config/default.toml"
        assert setting.parse(flat[setting.key]) == setting.default, setting.key
    assert set(flat) == {s.key for s in configmod.SETTINGS}


def test_environment_overrides_file(tmp_path):
    path = tmp_path / "ods.toml"
    path.write_text('[http]\nport = 9000\nhost = "0.0.0.0"\n[ice]\naddresses = ["10.0.0.5"]\n')
    cfg = configmod.load(environ={"ODS_HTTP_PORT": "9100"}, file=path)
    assert cfg["http.port"] == 9100
    assert cfg["http.host"] == "0.0.0.0"
    assert cfg["ice.addresses"] == ("10.0.0.5",)


def test_ice_addresses_from_environment_list():
    cfg = configmod.load(environ={"ODS_ICE_ADDRESSES": "127.0.0.1, ::1"})
    assert cfg["ice.addresses"] == ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"ODS_HTTP_PORT": "eighty"}, "ODS_HTTP_PORT='eighty': expected an integer"),
        ({"ODS_HTTP_PORT": "70000"}, "ODS_HTTP_PORT='70000': expected a port number"),
        ({"ODS_ICE_ADDRESSES": "localhost"}, "ODS_ICE_ADDRESSES"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"ODS_RECORDING_ENABLED": "maybe"}, "ODS_RECORDING_ENABLED='maybe': expected a boolean"),
        ({"ODS_SECRET_KEY": "short"}, "ODS_SECRET_KEY"),
    ],
)
def test_bad_values_name_the_key(env, fragment):
    with pytest.raises(ConfigError) as info:
        configmod.load(environ=env)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_file_key_is_rejected(tmp_path):
    path = tmp_path / "ods.toml"
    path.write_text("[http]\nprot = 1\n")
    with pytest.raises(ConfigError, match="http.prot"):
        configmod.load(environ={}, file=path)


def test_no_secret_has_a_usable_default():
    for setting in configmod.SETTINGS:
        if setting.secret:
            assert setting.default == "", setting.key


def test_configuration_doc_lists_every_setting():
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert configmod.markdown_table() in doc, "regenerate with `odsmedia config --docs`"
