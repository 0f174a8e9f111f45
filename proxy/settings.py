"""`Settings`: every knob of the classification service, built once at the edge from flags and environment.

Each field has a default and a help text; the CLI flags (`--max-image-bytes`), the environment variables
(`INVERTORNOT_MAX_IMAGE_BYTES`) and the README's table are all generated from this one dataclass, so they
cannot drift apart. Precedence: defaults < environment < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.backbones import usable_cpus
from proxy.corrections import parse_database_url
from proxy.fetch import FetchPolicy
from proxy.tokens import TokenRegistry

ENV_PREFIX = "INVERTORNOT_"
_MIB = 2**20
_CSS_CLASS = re.compile(r"-?[A-Za-z_][A-Za-z0-9_-]*")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Limits are named here with the reason they exist."""

    host: str = _setting("127.0.0.1", "Address to listen on. Use 0.0.0.0 to accept connections from other hosts.")
    port: int = _setting(8080, "TCP port to listen on.")
    model: Path | None = _setting(  # noqa: RUF009 -- _setting returns a dataclasses.field
        None, "Model directory written by `invertornot train`; empty means the model shipped in the package."
    )
    inference_threads: int = _setting(
        0,
        "Threads ONNX Runtime uses inside one batch (0: usable CPU cores divided by the classification "
        "threads, so 1 with the defaults).",
    )
    allow_private_networks: bool = _setting(
        False,
        "UNSAFE on a public server: lets image URLs reach loopback, private, link-local and other internal "
        "addresses (anyone could then probe your intranet). For tests and local use only.",
    )
    allowed_networks: tuple[str, ...] = _setting(
        (),
        "Comma-separated CIDR networks exempted from the address check, e.g. a trusted intranet image host.",
    )
    connect_timeout: float = _setting(5.0, "Seconds to wait for an upstream TCP/TLS connection.")
    read_timeout: float = _setting(10.0, "Longest silence, in seconds, between two reads from an upstream.")
    total_timeout: float = _setting(
        20.0, "Seconds for a whole upstream fetch, redirects and body included (stops byte-tricklers)."
    )
    max_redirects: int = _setting(5, "Redirects followed per fetch; each hop is checked again.")
    max_image_bytes: int = _setting(
        20 * _MIB, "Largest image accepted, fetched or uploaded, in bytes (counted while streaming)."
    )
    max_pixels: int = _setting(
        50_000_000, "Largest image accepted, in pixels, checked from the header before decoding (bombs)."
    )
    max_request_bytes: int = _setting(
        32 * _MIB, "Largest request body, in bytes (uploads with several files included)."
    )
    max_urls_per_batch: int = _setting(100, "URLs accepted in one batch request (POST /api/v1/classify, /api/url).")
    max_files_per_upload: int = _setting(32, "Files accepted in one multipart upload.")
    url_cache_ttl: float = _setting(
        3600.0, "Seconds a URL -> image hash mapping is trusted; the image behind a URL can change."
    )
    url_cache_size: int = _setting(100_000, "URL -> image hash entries kept in memory (about 200 bytes each).")
    verdict_cache_size: int = _setting(
        100_000, "Image hash -> verdict entries kept in memory; a verdict never goes stale for one model."
    )
    batch_size: int = _setting(
        8,
        "Most images classified in one model call (micro-batching). Several small single-threaded batches "
        "in parallel beat one large multi-threaded batch: 203 img/s with 8 images x 2 threads on 2 cores, "
        "77 img/s with 32 x 1, and less memory.",
    )
    batch_wait_ms: float = _setting(
        3.0, "Milliseconds to wait for more images before classifying a batch that is not full."
    )
    max_queued_images: int = _setting(
        2000, "Images allowed to wait for the classifier; beyond that new images get 503 (overloaded)."
    )
    executor_threads: int = _setting(
        0, "Threads running classification batches in parallel (0: one per usable CPU core)."
    )
    rate_limit_per_minute: int = _setting(
        600, "Requests per minute each client IP may make to the API (0: no limit); over it answers 429."
    )
    rate_limit_burst: int = _setting(120, "Requests a client may make at once before the per-minute rate applies.")
    trust_forwarded_for: bool = _setting(
        False,
        "Take the client IP for rate limiting from the last X-Forwarded-For entry. Enable only behind a "
        "reverse proxy that sets it, or clients can pick their own identity.",
    )
    cache_max_age: int = _setting(
        86400, "Cache-Control max-age, in seconds, on verdict responses (verdicts of one model never change)."
    )
    max_page_bytes: int = _setting(
        5 * _MIB, "Largest page (HTML or summary JSON) the page proxy fetches, in bytes; bigger pages get 413."
    )
    max_images_per_page: int = _setting(
        200, "Images of one page the page proxy classifies and marks; later ones are left as they are."
    )
    page_deadline_ms: int = _setting(
        3000,
        "Milliseconds the page proxy waits for a page's images (request deadline_ms may differ). Images not "
        "classified by then are marked invert-not + data-invertornot-pending and finish in the background.",
    )
    page_concurrency: int = _setting(
        8, "Images of one page fetched and classified at once (spares its upstream, keeps pages fair)."
    )
    max_background_images: int = _setting(
        1000,
        "Images, over all pages, still classifying after their page was answered; beyond it they are "
        "dropped (a later request for the page starts them again).",
    )
    page_cache_max_age: int = _setting(
        300, "Cache-Control max-age, in seconds, of a proxied page with every image marked (pages change)."
    )
    page_render_cache_bytes: int = _setting(
        64 * _MIB,
        "Memory for rewritten pages, reused while the upstream sends the same bytes and every image keeps "
        "its verdict (a repeat request then skips parsing); 0: off.",
    )
    invert_class: str = _setting("invert", "Class the page proxy gives images to invert in dark mode.")
    invert_not_class: str = _setting("invert-not", "Class the page proxy gives images to leave uninverted.")
    redis_url: str = field(
        default="",
        repr=False,  # it may carry a password
        metadata={
            "help": "Redis shared by several instances (redis://[:PASSWORD@]HOST:PORT/DB, rediss://, "
            "unix://PATH): a second-level verdict cache, one classification per image across instances, and "
            "label and model reload announcements. Empty: each instance on its own. When Redis is "
            "unreachable, instances keep answering from memory and reconnect by themselves."
        },
    )
    redis_timeout: float = _setting(
        0.5, "Seconds a Redis command may take before Redis counts as unreachable (requests never wait longer)."
    )
    redis_lock_seconds: float = _setting(
        10.0,
        "Seconds an instance may hold an image while classifying it before other instances classify it "
        "themselves (covers a crashed or very slow instance).",
    )
    redis_retry_seconds: float = _setting(1.0, "Seconds between attempts to reach an unreachable Redis again.")
    database_url: str = _setting(
        "sqlite:///./invertornot.db",
        "Where corrections and labels are kept: sqlite:///PATH (relative path) or sqlite:////PATH (absolute); "
        "sqlite:// keeps them in memory only, for tests. Commits are fsync'd: nothing acknowledged is lost.",
    )
    correction_images_dir: Path | None = _setting(  # noqa: RUF009 -- _setting returns a dataclasses.field
        None,
        "Folder where the images of corrections and labels are kept by SHA-256, so they stay trainable when "
        "their URLs die; empty: beside the database file (./invertornot-images for the default database).",
    )
    api_tokens: tuple[str, ...] = field(
        default=(),
        repr=False,  # secrets stay out of logs and tracebacks
        metadata={
            "help": "API tokens, TOKEN or NAME:TOKEN (16+ characters; comma-separated, or repeat --api-token). "
            "Holders' corrections apply at once; they may review, label (/label) and reload the model. "
            "NAME is recorded with each decision.",
            "aliases": ("--api-token",),
        },
    )
    correction_rate_limit_per_minute: int = _setting(
        10,
        "Corrections per minute an anonymous client IP may send (0: no limit); over it answers 429. Token "
        "holders are not limited.",
    )
    correction_rate_limit_burst: int = _setting(30, "Corrections an anonymous client may send at once.")
    max_pending_corrections: int = _setting(
        100_000, "Anonymous corrections allowed to wait for review; beyond that new ones get 503 (spam guard)."
    )
    log_level: str = _setting("info", "Logging level: debug, info, warning or error.")
    access_log: bool = _setting(
        False, "Log one line per request (off by default: it costs throughput on cached lookups)."
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be between 0 and 65535")
        for name in (
            "connect_timeout",
            "read_timeout",
            "total_timeout",
            "url_cache_ttl",
            "redis_timeout",
            "redis_lock_seconds",
            "redis_retry_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_image_bytes",
            "max_pixels",
            "max_request_bytes",
            "max_urls_per_batch",
            "max_files_per_upload",
            "url_cache_size",
            "verdict_cache_size",
            "batch_size",
            "max_queued_images",
            "max_pending_corrections",
            "max_page_bytes",
            "max_images_per_page",
            "page_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "executor_threads",
            "inference_threads",
            "max_redirects",
            "rate_limit_per_minute",
            "cache_max_age",
            "correction_rate_limit_per_minute",
            "page_deadline_ms",
            "max_background_images",
            "page_cache_max_age",
            "page_render_cache_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.batch_wait_ms < 0:
            raise ValueError("batch_wait_ms must not be negative")
        if self.rate_limit_per_minute and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be at least 1 when rate limiting is on")
        if self.correction_rate_limit_per_minute and self.correction_rate_limit_burst < 1:
            raise ValueError("correction_rate_limit_burst must be at least 1 when corrections are rate limited")
        if self.redis_url and self.redis_url.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        try:
            parse_database_url(self.database_url)
        except ValueError as error:
            raise ValueError(f"database_url: {error}") from None
        try:
            TokenRegistry(self.api_tokens)
        except ValueError as error:
            raise ValueError(f"api_tokens: {error}") from None
        for name in ("invert_class", "invert_not_class"):
            if not _CSS_CLASS.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} must be a CSS class name (letters, digits, - and _)")
        if self.invert_class == self.invert_not_class:
            raise ValueError("invert_class and invert_not_class must differ")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        try:
            self.fetch_policy()  # a malformed allowed_networks entry fails at startup, not on the first fetch
        except ValueError as error:
            raise ValueError(f"allowed_networks: {error}") from None

    def classification_threads(self) -> int:
        """`executor_threads` with 0 resolved: one per CPU core this process may use."""
        return self.executor_threads or usable_cpus()

    def onnx_threads(self) -> int:
        """`inference_threads` with 0 resolved: the cores left to each classification thread (at least 1)."""
        return self.inference_threads or max(1, usable_cpus() // self.classification_threads())

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            allow_private_networks=self.allow_private_networks,
            allowed_networks=self.allowed_networks,
            max_redirects=self.max_redirects,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            total_timeout=self.total_timeout,
            max_image_bytes=self.max_image_bytes,
            max_page_bytes=self.max_page_bytes,
        )

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overridden by `INVERTORNOT_*` variables, overridden by `overrides` (already typed)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in setting_specs():
            raw = environ.get(spec.env)
            if raw is not None:
                try:
                    values[spec.name] = spec.parse(raw)
                except ValueError as error:
                    raise ValueError(f"{spec.env}={raw!r}: {error}") from None
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from parsed flags (see `add_arguments`); flags not given fall back to the environment."""
        given = {spec.name: getattr(args, spec.name) for spec in setting_specs() if hasattr(args, spec.name)}
        # Repeated list flags (--api-token A --api-token B) arrive as lists.
        given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
        return cls.from_env(environ, **given)


# -- one description per field, for flags, environment and docs -------------------------------------------


@dataclass(frozen=True)
class SettingSpec:
    name: str
    kind: type  # int, float, str, bool, Path (optional) or tuple (of str)
    optional: bool
    default: Any
    help: str
    aliases: tuple[str, ...] = ()  # more flags for the same field, e.g. the singular --api-token

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str) -> Any:
        """A string from the environment or the command line, as this field's type."""
        text = raw.strip()
        if self.kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true/false, yes/no, on/off or 1/0")
        if self.optional and not text:
            return None
        if self.kind is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if self.kind is int:
            return int(text.replace("_", ""))
        if self.kind is float:
            return float(text)
        if self.kind is Path:
            return Path(text)
        return text

    def shown_default(self) -> str:
        if self.default is None or self.default == () or self.default == "":
            return "(empty)"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def _field_kind(annotation: Any) -> tuple[type, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _field_kind(args[0])[0], True
    if origin is tuple:
        return tuple, False
    return annotation, False


def setting_specs() -> list[SettingSpec]:
    """One `SettingSpec` per `Settings` field, in declaration order."""
    hints = typing.get_type_hints(Settings)
    specs = []
    for item in dataclasses.fields(Settings):
        kind, optional = _field_kind(hints[item.name])
        aliases = tuple(item.metadata.get("aliases", ()))
        specs.append(SettingSpec(item.name, kind, optional, item.default, item.metadata["help"], aliases))
    return specs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting. Flags not given are absent from the namespace, so the environment applies."""
    for spec in setting_specs():
        help_text = f"{spec.help} [env {spec.env}; default {spec.shown_default()}]"
        if spec.kind is bool:
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                spec.flag,
                *spec.aliases,
                dest=spec.name,
                type=spec.parse,
                # Lists accumulate over repeated flags (each may itself be comma-separated).
                action="extend" if spec.kind is tuple else "store",
                default=argparse.SUPPRESS,
                metavar=spec.name.upper(),
                help=help_text,
            )


def settings_markdown_table() -> str:
    """The README's table of settings: flag, environment variable, default, meaning."""
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for spec in setting_specs():
        meaning = spec.help.replace("|", "\\|")
        flag = f"`{spec.flag}` / `--no-{spec.flag[2:]}`" if spec.kind is bool else f"`{spec.flag}`"
        flag += "".join(f" / `{alias}`" for alias in spec.aliases)
        lines.append(f"| {flag} | `{spec.env}` | `{spec.shown_default()}` | {meaning} |")
    return "\n".join(lines) + "\n"
