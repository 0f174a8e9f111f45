"""The images a static site shows: found in its HTML pages (with the page proxy's parser) and in Markdown.

Pages are parsed as if served from `site_url` (by default ``http://site.invalid/``, a name that can never
resolve): an image URL under it is a file of the site folder, any other http(s) URL is a remote image.
HTML is read by `proxy.rewrite.Page`, exactly as the page proxy reads fetched pages (``srcset``,
``<picture>``, lazy placeholders, ``<base href>``, manual ``invert`` / ``invert-not`` markup). Markdown
contributes ``![alt](url "title")``, reference images ``![alt][label]`` with their ``[label]: url``
definitions, and raw ``<img>`` tags; code blocks and code spans are skipped.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import yarl

from proxy.rewrite import Page, RewriteError, RewriteOptions

DEFAULT_SITE_URL = "http://site.invalid/"
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".mkd"})
# In-place rewriting of a site: its scripts still run, so lazy placeholders stay lazy, and URLs stay as written.
SITE_OPTIONS = RewriteOptions(sanitize=False, absolutize=False, eager_images=False)
_SKIPPED_DIRECTORIES = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__"})

_FENCE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^[ ]{0,3}\1[`~]*[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_IMAGE = re.compile(
    r"!\[(?:[^\]\\]|\\.)*\]\(\s*(?:<([^>\n]*)>|([^\s()]+(?:\([^\s()]*\)[^\s()]*)*))"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_REFERENCE_IMAGE = re.compile(r"!\[((?:[^\]\\]|\\.)*)\](?:\[((?:[^\]\\]|\\.)*)\])?(?![(\[:])")
_DEFINITION = re.compile(r"^[ ]{0,3}\[((?:[^\]\\]|\\.)+)\]:[ \t]*(?:<([^>\n]*)>|(\S+))", re.MULTILINE)


@dataclass
class SiteImage:
    """One image of the site, under its labels-file key."""

    key: str  # the file's path relative to the site folder (POSIX), or a remote image's absolute URL
    path: Path | None  # the file, for a local image
    manual: bool | None = None  # what the pages' markup decides, when every use of the image is marked
    unmarked_uses: int = 0  # uses without manual markup: the image needs a label when > 0
    pages: set[str] = field(default_factory=set)

    @property
    def needs_label(self) -> bool:
        return self.unmarked_uses > 0


@dataclass
class SiteScan:
    site: Path
    site_url: str
    html_pages: list[Path] = field(default_factory=list)
    markdown_pages: list[Path] = field(default_factory=list)
    images: dict[str, SiteImage] = field(default_factory=dict)
    missing: dict[str, set[str]] = field(default_factory=dict)  # referenced local files that do not exist
    unreadable: dict[str, str] = field(default_factory=dict)  # page -> why it was skipped

    def local(self) -> list[SiteImage]:
        return [image for image in self.images.values() if image.path is not None]

    def remote(self) -> list[SiteImage]:
        return [image for image in self.images.values() if image.path is None]


class SiteMap:
    """Maps URLs on the site to files of the site folder and back."""

    def __init__(self, site: Path, site_url: str = DEFAULT_SITE_URL) -> None:
        parsed = yarl.URL(site_url if site_url.endswith("/") else site_url + "/")
        if not parsed.absolute or parsed.scheme not in ("http", "https"):
            raise ValueError(f"the site URL must be an absolute http(s) URL, got {site_url!r}")
        self.site = site.resolve()
        self.site_url = str(parsed)
        self._prefix = unquote(parsed.path)
        self._keys: dict[str, str | None] = {}  # pages share images: each URL is mapped once

    def page_url(self, page: Path) -> str:
        """Where `page` is served from: the base its relative references resolve against."""
        relative = page.resolve().relative_to(self.site).as_posix()
        return str(yarl.URL(self.site_url).join(yarl.URL(relative)))

    def local_key(self, url: str) -> str | None:
        """The site-relative path a URL on the site names (query ignored), or None when it is off the site."""
        try:
            return self._keys[url]
        except KeyError:
            pass
        key = None
        if url.startswith(self.site_url):
            path = unquote(yarl.URL(url).path)
            relative = path[len(self._prefix) :] if path.startswith(self._prefix) else ""
            # Text only, no file system calls: sites have thousands of images. An encoded "%2e%2e" that
            # would climb out of the folder is refused.
            normal = posixpath.normpath(relative) if relative and not relative.endswith("/") else ""
            if normal and normal != "." and not normal.startswith(("../", "/")) and normal != "..":
                key = normal
        self._keys[url] = key
        return key


def walk_pages(site: Path) -> Iterator[Path]:
    """HTML and Markdown files under `site`, in a stable order; version-control and dependency folders skipped."""
    for directory, subdirectories, files in os.walk(site):
        subdirectories[:] = sorted(name for name in subdirectories if name not in _SKIPPED_DIRECTORIES)
        for name in sorted(files):
            if Path(name).suffix.lower() in HTML_SUFFIXES | MARKDOWN_SUFFIXES:
                yield Path(directory) / name


def scan_site(site: Path, site_url: str = DEFAULT_SITE_URL) -> SiteScan:
    """Every image the pages under `site` show."""
    mapping = SiteMap(site, site_url)
    scan = SiteScan(mapping.site, mapping.site_url)
    for page in walk_pages(mapping.site):
        name = page.relative_to(mapping.site).as_posix()
        markdown = page.suffix.lower() in MARKDOWN_SUFFIXES
        (scan.markdown_pages if markdown else scan.html_pages).append(page)
        try:
            text = page.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            scan.unreadable[name] = str(error)
            continue
        base = mapping.page_url(page)
        try:
            found = markdown_images(text, base) if markdown else html_images(text, base)
        except RewriteError as error:
            scan.unreadable[name] = error.code
            continue
        for url, manual in found:
            _add(scan, mapping, name, url, manual)
    return scan


def html_images(html: str, base_url: str) -> list[tuple[str, bool | None]]:
    """(classification URL, manual markup) of each image of an HTML page."""
    return [(ref.url, ref.manual) for ref in Page(html, base_url, SITE_OPTIONS).images()]


def markdown_images(text: str, base_url: str) -> list[tuple[str, bool | None]]:
    """(absolute URL, manual markup) of each image of a Markdown page."""
    text = _CODE_SPAN.sub(" ", _FENCE.sub("\n", text))
    definitions: dict[str, str] = {}
    for match in _DEFINITION.finditer(text):
        definitions.setdefault(_label(match.group(1)), match.group(2) or match.group(3))
    references = [match.group(1) or match.group(2) for match in _INLINE_IMAGE.finditer(text)]
    for match in _REFERENCE_IMAGE.finditer(_INLINE_IMAGE.sub("", text)):
        label = match.group(2) or match.group(1)  # ![alt][] and ![alt] use the alt text as the label
        target = definitions.get(_label(label))
        if target is not None:
            references.append(target)
    base = yarl.URL(base_url)
    found: list[tuple[str, bool | None]] = []
    for reference in references:
        try:
            url = base.join(yarl.URL(reference.strip())).with_fragment(None)
        except (ValueError, TypeError):
            continue
        if url.scheme in ("http", "https"):
            found.append((str(url), None))
    if "<img" in text.lower():  # raw HTML is part of Markdown
        found.extend(html_images(text, base_url))
    return found


def _label(text: str) -> str:
    return " ".join(text.split()).casefold()


def _add(scan: SiteScan, mapping: SiteMap, page: str, url: str, manual: bool | None) -> None:
    key = mapping.local_key(url)
    if key is None:
        if url.startswith(mapping.site_url):
            return  # a folder, or outside the site folder
        path = None
        key = url
    else:
        path = mapping.site / key
        if not path.is_file():
            scan.missing.setdefault(key, set()).add(page)
            return
    image = scan.images.get(key)
    if image is None:
        image = scan.images[key] = SiteImage(key, path)
    image.pages.add(page)
    if manual is None:
        image.unmarked_uses += 1
    else:
        image.manual = manual
