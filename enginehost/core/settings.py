"""Host settings: read once at boot from the environment, validated, then frozen.

Sources, highest priority first:

1. environment variables prefixed ``ENGINEHOST_`` (nested keys with ``__``, e.g.
   ``ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS=2``);
2. a ``.env`` file in the working directory, if present;
3. a TOML file named by ``ENGINEHOST_CONFIG``, if set (it must exist);
4. the defaults below.

A bad value is reported by :class:`SettingsError` naming the environment variable it
came from. Settings never change while the host runs; an API that cannot apply a change
says so instead of pretending.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from enginehost.core.net.guard import AddressPolicy

__all__ = [
    "ENV_PREFIX",
    "MASK",
    "Settings",
    "SettingsError",
    "is_secret_key",
    "load_settings",
    "mask_url_password",
    "redact",
]

ENV_PREFIX = "ENGINEHOST_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["auto", "json", "console"]

MASK = "**********"

# Keys whose values are masked wherever settings or plugin config blobs are shown.
_SECRET_KEY_MARKERS = ("secret", "password", "passwd", "token", "key", "pepper", "credential")


def _split_names(value: Any) -> Any:
    """Accept a comma list (``a, b``) for the plugin selection settings; keep lists as-is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the host reads from its environment. Frozen after validation."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(2785, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    data_dir: Path = Field(Path("data"), description="Where the host keeps its files.")
    log_level: LogLevel = Field("info", description="Lowest level logged.")
    log_format: LogFormat = Field(
        "auto", description="auto: readable on a terminal, JSON lines otherwise."
    )
    load_plugins: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Comma list of plugins to load (unset: all installed; empty: none).",
    )
    disable_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma list of plugins not to load."
    )
    engines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-engine config blobs, by engine name (ENGINEHOST_ENGINES__<NAME>__<KEY>).",
    )
    database_url: SecretStr | None = Field(
        None,
        description="The data database (sessions, messages, templates, webhooks): "
        "postgresql://user:password@host:5432/name or sqlite:///path "
        "(unset: SQLite at <data dir>/enginehost.sqlite).",
    )
    main_database_url: SecretStr | None = Field(
        None,
        description="The main database (API keys, audit log); may be PostgreSQL for "
        "multi-node deployments (unset: SQLite at <data dir>/main.sqlite).",
    )
    db_auto_migrate: bool = Field(
        True, description="Migrate both databases at boot; false: refuse to start when behind."
    )
    db_pool_size: int = Field(5, ge=1, le=100, description="PostgreSQL connections kept open.")
    db_max_overflow: int = Field(
        10, ge=0, le=100, description="PostgreSQL connections opened beyond the pool at peaks."
    )
    db_pool_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for a free database connection."
    )
    db_connect_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds to wait for a PostgreSQL server to answer."
    )
    sqlite_busy_timeout: float = Field(
        5.0, ge=0, le=600, description="Seconds SQLite waits for a lock before failing."
    )
    api_key_pepper: SecretStr | None = Field(
        None,
        description="Server-side secret keyed into every API key hash (unset: generated "
        "once into <data dir>/api-key-pepper). Set the same value on every node.",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="An admin API key to accept (created at boot if missing; at least "
        "32 characters). Unset: the first boot generates one.",
    )
    audit_retention_days: int = Field(
        90, ge=1, le=3650, description="Days audit entries are kept (pruned at boot and daily)."
    )
    http_fast_path: bool = Field(
        True,
        description="Serve well-formed send-text requests without FastAPI's per-request "
        "machinery (same checks and answers; anything else takes the normal route).",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body accepted; larger is answered 413.",
    )
    media_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest media a send may carry (base64 or fetched from a URL).",
    )
    media_fetch_private_networks: bool = Field(
        False,
        description="Let sends fetch media from loopback, private and link-local "
        "addresses (off: only public addresses, so a key cannot probe internal hosts).",
    )
    template_render_max_bytes: int = Field(
        65536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest rendered template (UTF-8 bytes); larger is an error, never cut.",
    )
    default_engine: str = Field(
        "baileys", description="The engine of a session created without one."
    )
    session_teardown_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds an engine may take to stop before it is abandoned (and reported).",
    )
    session_init_deadline: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds a starting engine has to show a QR or "
        "become ready; past it the session fails.",
    )
    session_restore_concurrency: int = Field(
        10, ge=1, le=1000, description="Sessions started at once when restoring at boot."
    )
    session_restore_stagger: float = Field(
        0.2, ge=0, le=60, description="Seconds between session starts at boot (0: none)."
    )
    reconnect_base: float = Field(
        1.0, ge=0.1, le=60, description="First reconnect delay (s), doubled per attempt."
    )
    reconnect_cap: float = Field(60.0, ge=1, le=3600, description="Longest reconnect delay (s).")
    reconnect_stable_seconds: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="Seconds a session must stay ready before its reconnect attempts reset.",
    )
    session_status_history: int = Field(
        20, ge=1, le=1000, description="Status transitions kept per session."
    )
    shutdown_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds a graceful shutdown may take before forcing."
    )
    plugin_enable_timeout: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds an engine plugin's enable may take; past it the plugin is 'retrying'.",
    )
    plugin_retry_base: float = Field(
        1.0, gt=0, le=600, description="First delay (s) before retrying a not-ready plugin."
    )
    plugin_retry_cap: float = Field(
        60.0, gt=0, le=3600, description="Longest delay (s) between plugin enable retries."
    )

    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names and CIDR ranges (comma list) webhooks may reach although "
        "they resolve to loopback, private, link-local or metadata addresses.",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds one webhook delivery attempt may take."
    )
    webhook_concurrency: int = Field(
        32, ge=1, le=1000, description="Webhook deliveries in flight at once, in all."
    )
    webhook_concurrency_per_webhook: int = Field(
        8,
        ge=1,
        le=1000,
        description="Deliveries in flight at once to one webhook (a slow receiver "
        "cannot take every slot).",
    )
    webhook_max_attempts: int = Field(
        10,
        ge=1,
        le=100,
        description="Attempts per delivery before it becomes a dead letter (a webhook's "
        "retryCount overrides it).",
    )
    webhook_retry_base: float = Field(
        5.0, gt=0, le=3600, description="First delay (s) before retrying a failed delivery."
    )
    webhook_retry_cap: float = Field(
        300.0, gt=0, le=86400, description="Longest delay (s) between delivery attempts."
    )
    webhook_max_payload_bytes: int = Field(
        256 * 1024,
        ge=4096,
        le=64 * 1024 * 1024,
        description="Largest webhook body; a larger event is trimmed with a marker, "
        "never cut silently.",
    )
    webhook_response_max_bytes: int = Field(
        4096,
        ge=0,
        le=1024 * 1024,
        description="Bytes of a receiver's answer kept (for the error of a failed attempt).",
    )
    events_stream_buffer: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Events buffered per live-stream client; a client that falls this "
        "far behind is disconnected.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token for GET /metrics (any admin API key works too).",
    )

    _split_load = field_validator(
        "load_plugins", "disable_plugins", "webhook_allowed_hosts", mode="before"
    )(_split_names)

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _check_allow_list(cls, value: list[str]) -> list[str]:
        AddressPolicy.from_allow_list(value)  # a ValueError names the bad entry
        return value

    @field_validator("engines", mode="before")
    @classmethod
    def _lowercase_engine_names(cls, value: Any) -> Any:
        # Environment variables arrive upper- or mixed-case; engine names are lower-case.
        if isinstance(value, Mapping):
            return {str(name).lower(): blob for name, blob in value.items()}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise SettingsError([f"{CONFIG_FILE_VARIABLE}: no such file: {config_file}"])
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def engine_config(self, engine_name: str) -> dict[str, Any]:
        """The config blob for ``engine_name`` (empty when the operator set none)."""
        return dict(self.engines.get(engine_name, {}))

    def plugin_selected(self, plugin_name: str) -> bool:
        """Whether the operator's selection lets ``plugin_name`` load."""
        if plugin_name in self.disable_plugins:
            return False
        return self.load_plugins is None or plugin_name in self.load_plugins

    def redacted(self) -> dict[str, Any]:
        """The settings as plain JSON-able data with every secret masked."""
        redacted: dict[str, Any] = redact(self.model_dump(mode="python"))
        return redacted


class SettingsError(Exception):
    """Settings failed validation; ``problems`` has one line per bad setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


def _variable_name(location: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in location)


SettingsT = TypeVar("SettingsT", bound=Settings)


def load_settings(cls: type[SettingsT] = Settings, **overrides: Any) -> SettingsT:  # type: ignore[assignment]
    """Read and validate the settings; raise :class:`SettingsError` with readable lines.

    A secret's rejected value is never repeated in the message.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = [
            f"{_variable_name(error['loc'])}: {error['msg']}"
            + (f" (got {error['input']!r})" if _showable(error) else "")
            for error in exc.errors()
        ]
        raise SettingsError(problems) from None


def _showable(error: Any) -> bool:
    location = "_".join(str(part) for part in error["loc"]).lower()
    return not isinstance(error.get("input"), dict) and not is_secret_key(location)


def is_secret_key(key: str) -> bool:
    """Whether a setting or config key names a secret (its value is masked when shown)."""
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_KEY_MARKERS)


def mask_url_password(url: str) -> str:
    """``scheme://user:***@host/db`` for a URL with a password; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    credentials = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{netloc[1]}"))


class MaskedValueError(ValueError):
    """A masked value came back where no stored secret stands behind it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: {MASK!r} stands for a stored secret, but none is stored here")
        self.path = path


def restore_masked(value: Any, stored: Any, path: str = "config") -> Any:
    """``value`` with the masks :func:`redact` put in replaced by what ``stored`` has.

    So a client can send back what it read, changing only what it means to change: a
    :data:`MASK` takes the stored value at the same place, a URL whose password reads
    ``***`` takes the stored URL's password when the rest of the URL is unchanged.
    A mask with nothing stored behind it is :class:`MaskedValueError` (storing the
    mask itself as the secret would silently break the session).
    """
    if isinstance(value, Mapping):
        stored_map = stored if isinstance(stored, Mapping) else {}
        return {k: restore_masked(v, stored_map.get(k), f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        stored_list = stored if isinstance(stored, list) else []
        return [
            restore_masked(v, stored_list[i] if i < len(stored_list) else None, f"{path}[{i}]")
            for i, v in enumerate(value)
        ]
    if value == MASK:
        if stored is None or stored == MASK:
            raise MaskedValueError(path)
        return stored
    if (
        isinstance(value, str)
        and isinstance(stored, str)
        and ":***@" in value
        and "://" in stored
        and value != stored
    ):
        try:
            if mask_url_password(stored) == value:
                return stored
        except ValueError:
            pass
    return value


def redact(value: Any, *, key: str = "", secret: bool = False) -> Any:
    """Mask secrets in nested settings data, for showing settings anywhere.

    Masked: ``SecretStr`` values; everything under a secret-named key, however deeply
    nested; and the password of any URL-looking string. Database URLs keep everything
    but their password, which operators need to see.
    """
    if isinstance(value, SecretStr):
        if key.endswith("database_url"):
            return mask_url_password(value.get_secret_value())
        return MASK if value.get_secret_value() else ""
    secret = secret or (bool(key) and is_secret_key(key))
    if isinstance(value, Mapping):
        return {k: redact(v, key=str(k), secret=secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key=key, secret=secret) for v in value]
    if secret and value not in (None, ""):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        try:
            return mask_url_password(value)
        except ValueError:  # not a well-formed URL: show nothing of what might be one
            return MASK
    return value
