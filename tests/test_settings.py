"""Settings: environment, .env, TOML, validation messages, selection lists, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from enginehost.core.settings import Settings, SettingsError, load_settings, redact


def test_defaults() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 2785, Path("data"))
    assert settings.load_plugins is None and settings.disable_plugins == []
    assert settings.plugin_selected("anything")


def test_environment_with_nested_engine_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINEHOST_PORT", "9000")
    monkeypatch.setenv("ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS", "2")
    monkeypatch.setenv("ENGINEHOST_ENGINES__Baileys__AUTH_DIR", "/srv/auth")
    settings = load_settings()
    assert settings.port == 9000
    assert settings.engine_config("sandbox") == {"auto_scan_seconds": "2"}
    assert settings.engine_config("baileys") == {"auth_dir": "/srv/auth"}
    assert settings.engine_config("webjs") == {}


@pytest.mark.parametrize(
    ("load", "disable", "selected", "rejected"),
    [
        ("a, b", "", {"a", "b"}, {"c"}),
        ("", "", set(), {"a", "b"}),
        (None, "b,c", {"a"}, {"b", "c"}),
        ("a,b", "b", {"a"}, {"b"}),
    ],
)
def test_plugin_selection(
    monkeypatch: pytest.MonkeyPatch,
    load: str | None,
    disable: str,
    selected: set[str],
    rejected: set[str],
) -> None:
    if load is not None:
        monkeypatch.setenv("ENGINEHOST_LOAD_PLUGINS", load)
    monkeypatch.setenv("ENGINEHOST_DISABLE_PLUGINS", disable)
    settings = load_settings()
    assert {n for n in selected | rejected if settings.plugin_selected(n)} == selected


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINEHOST_PORT", "eighty")
    monkeypatch.setenv("ENGINEHOST_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value)
    assert "ENGINEHOST_PORT: Input should be a valid integer" in text
    assert "(got 'eighty')" in text
    assert "ENGINEHOST_LOG_LEVEL:" in text
    assert len(caught.value.problems) == 2


def test_port_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINEHOST_PORT", "70000")
    with pytest.raises(SettingsError, match="ENGINEHOST_PORT: Input should be less than or equal"):
        load_settings()


def test_toml_file_and_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "enginehost.toml"
    config.write_text('port = 3000\nhost = "0.0.0.0"\n[engines.sandbox]\nauto_scan_seconds = 1.5\n')
    monkeypatch.setenv("ENGINEHOST_CONFIG", str(config))
    monkeypatch.setenv("ENGINEHOST_PORT", "4000")  # the environment wins over the file
    settings = load_settings()
    assert settings.port == 4000
    assert settings.host == "0.0.0.0"
    assert settings.engine_config("sandbox") == {"auto_scan_seconds": 1.5}


def test_missing_toml_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENGINEHOST_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="ENGINEHOST_CONFIG: no such file"):
        load_settings()


def test_dotenv_file_in_working_directory(tmp_path: Path) -> None:
    # The autouse fixture made tmp_path the working directory.
    (tmp_path / ".env").write_text("ENGINEHOST_PORT=5055\nENGINEHOST_DISABLE_PLUGINS=x,y\n")
    settings = load_settings()
    assert settings.port == 5055
    assert settings.disable_plugins == ["x", "y"]


def test_settings_are_read_only() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINEHOST_ENGINES__BAILEYS__PROXY_PASSWORD", "hunter2")
    monkeypatch.setenv("ENGINEHOST_ENGINES__BAILEYS__AUTH_DIR", "/srv/auth")
    settings = load_settings()
    shown = settings.redacted()
    assert shown["engines"]["baileys"] == {"proxy_password": "**********", "auth_dir": "/srv/auth"}
    assert "hunter2" not in repr(shown)
    assert redact(
        {"api_key": SecretStr("s3cret"), "nested": [{"token": "t"}], "empty_secret": ""}
    ) == {
        "api_key": "**********",
        "nested": [{"token": "**********"}],
        "empty_secret": "",
    }


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    class WithSecret(Settings):
        admin_key: SecretStr | None = None
        api_key_pepper: int = 0

    monkeypatch.setenv("ENGINEHOST_PORT", "x")
    monkeypatch.setenv("ENGINEHOST_API_KEY_PEPPER", "do-not-echo-me")
    with pytest.raises(SettingsError) as caught:
        load_settings(WithSecret)
    text = str(caught.value)
    assert "(got 'x')" in text
    assert "ENGINEHOST_API_KEY_PEPPER: Input should be a valid integer" in text
    assert "do-not-echo-me" not in text
    monkeypatch.delenv("ENGINEHOST_PORT")
    monkeypatch.delenv("ENGINEHOST_API_KEY_PEPPER")
    monkeypatch.setenv("ENGINEHOST_ADMIN_KEY", "zzz-secret")
    settings = load_settings(WithSecret)
    assert settings.redacted()["admin_key"] == "**********"
    assert "zzz-secret" not in repr(settings)
