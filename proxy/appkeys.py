"""Typed keys for everything the app holds (`app[SERVICE]`), shared by the app factory and the handlers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web

from classifier.verdict import ImageClassifier
from proxy.fetch import SafeFetcher
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.verdicts import VerdictService

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
# Set by the cleanup contexts at startup, in this order; gone again after shutdown.
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
CLASSIFIER = web.AppKey[ImageClassifier]("classifier")
SESSION = web.AppKey("client_session", aiohttp.ClientSession)
FETCHER = web.AppKey("fetcher", SafeFetcher)
SERVICE = web.AppKey("verdict_service", VerdictService)
STARTED = web.AppKey("started_monotonic", float)
OPENAPI = web.AppKey("openapi_document", dict[str, Any])
