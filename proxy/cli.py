"""The `invertornot` command: classify, train, eval, serve, export-labels, annotate."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classifier.dataset import DEFAULT_DATASET_DIR, DatasetError
from classifier.decode import ImageError
from classifier.model import ModelError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _progress_bar(total: int, description: str) -> Any:
    from tqdm import tqdm

    # On stderr, so stdout stays machine-readable; disabled automatically when not a terminal.
    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None)


# -- classify ----------------------------------------------------------------------------------------


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


async def _fetch_all(urls: Sequence[str], allow_private: bool) -> dict[str, bytes | dict[str, str]]:
    from proxy.errors import ApiError
    from proxy.fetch import FetchPolicy, SafeFetcher, create_client_session

    policy = FetchPolicy(allow_private_networks=allow_private)
    results: dict[str, bytes | dict[str, str]] = {}
    async with create_client_session(policy) as session:
        fetcher = SafeFetcher(session, policy)

        async def one(url: str) -> None:
            try:
                results[url] = (await fetcher.fetch_image(url)).body
            except ApiError as error:
                results[url] = {"code": error.code, "message": error.message}

        await asyncio.gather(*(one(url) for url in urls))
    return results


def _read_input(item: str, fetched: dict[str, bytes | dict[str, str]]) -> bytes | dict[str, str]:
    if _is_url(item):
        return fetched[item]
    try:
        return Path(item).read_bytes()
    except FileNotFoundError:
        return {"code": "not_found", "message": f"no such file: {item}"}
    except OSError as error:
        return {"code": "unreadable", "message": f"cannot read {item}: {error.strerror}"}


def cmd_classify(args: argparse.Namespace) -> int:
    from classifier.model import InvertModel

    model = InvertModel.load(args.model)
    urls = [item for item in args.inputs if _is_url(item)]
    fetched = asyncio.run(_fetch_all(urls, args.allow_private_networks)) if urls else {}
    failed = False
    for start in range(0, len(args.inputs), args.batch_size):
        batch = args.inputs[start : start + args.batch_size]
        loaded = [_read_input(item, fetched) for item in batch]
        blobs = [data for data in loaded if isinstance(data, bytes)]
        verdicts = iter(model.classify_bytes(blobs))
        for item, data in zip(batch, loaded, strict=True):
            record: dict[str, Any] = {"input": item}
            result = next(verdicts) if isinstance(data, bytes) else data
            if isinstance(result, ImageError):
                record["error"] = {"code": result.code, "message": result.message}
            elif isinstance(result, dict):
                record["error"] = result
            else:
                record.update(
                    invert=result.invert,
                    p_invert=result.p_invert,
                    confidence=result.confidence,
                    sha256=result.sha256,
                    model=result.model,
                )
            failed = failed or "error" in record
            print(json.dumps(record), flush=True)
    return EXIT_FAILED if failed else EXIT_OK


# -- train / eval ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from classifier.dataset import read_labels
    from classifier.train import TRAINING_BACKBONE, train

    images = read_labels(args.labels, args.images)
    if args.database_url:
        from proxy.labelset import merge_labels, read_people_labels

        merged = merge_labels(images, read_people_labels(args.database_url, args.correction_images))
        images = merged.images
        print(f"merged the labels of {args.database_url}: {merged.summary()}", file=sys.stderr)
    backbone = args.backbone or TRAINING_BACKBONE
    print(f"training on {len(images)} labelled images with backbone {backbone}", file=sys.stderr)
    with _progress_bar(len(images), "embedding") as bar:
        result = train(images, backbone_spec=backbone, out_dir=args.out, progress=bar.update, screen=not args.no_screen)
    cv, half = result.cv, result.cv_at_half
    screen = result.screen
    screen_line = (
        "colour screen: off\n"
        if screen is None
        else f"colour screen: p <= {screen.below:.2f} or >= {screen.above:.2f} skips the backbone "
        f"({screen.decided_share:.0%} of CV images; {screen.changed} CV verdict(s) changed)\n"
    )
    print(
        f"package-grouped 5-fold CV at threshold {cv.threshold:.3f}: accuracy {cv.accuracy:.3f}, "
        f"false-invert rate {cv.false_invert_rate:.3f}, missed-invert rate {cv.missed_invert_rate:.3f}, "
        f"AUC {cv.auc or 0:.3f}\n"
        f"  (at threshold 0.5: accuracy {half.accuracy:.3f}, false-invert rate {half.false_invert_rate:.3f})\n"
        f"{screen_line}"
        f"training set fit: 100% ({result.n_overrides} image(s) pinned by exact hash)\n"
        f"wrote model {result.model.version} to {args.out}"
    )
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from classifier.dataset import read_labels
    from classifier.evaluate import evaluate, write_report
    from classifier.model import InvertModel

    model = InvertModel.load(args.model)
    images = read_labels(args.labels, args.images)
    with _progress_bar(len(images), "evaluating") as bar:
        evaluation = evaluate(model, images, progress=bar.update)
    if args.report:
        write_report(evaluation, args.report)
    summary = evaluation.to_json()
    if args.json:
        print(json.dumps(summary))
    else:
        h = summary["heuristic"]
        print(
            f"model {summary['model']} on {summary['n']} images: accuracy {summary['accuracy']:.3f}, "
            f"false-invert rate {summary['false_invert_rate']:.3f}, "
            f"missed-invert rate {summary['missed_invert_rate']:.3f}, AUC {summary['auc'] or 0:.3f}\n"
            f"saturation heuristic: accuracy {h['accuracy']:.3f}, false-invert rate {h['false_invert_rate']:.3f}, "
            f"missed-invert rate {h['missed_invert_rate']:.3f}" + (f"\nreport: {args.report}" if args.report else "")
        )
    return EXIT_OK


def cmd_export_labels(args: argparse.Namespace) -> int:
    from proxy.labelset import export_labels, read_people_labels

    people = read_people_labels(args.database_url, args.correction_images)
    dataset = (None, None) if args.no_dataset else (args.labels, args.images)
    summary = export_labels(args.out, people, labels_csv=dataset[0], images_dir=dataset[1])
    print(
        f"wrote {summary.rows} rows to {args.out / 'labels.csv'} with their images: {summary.added} image(s) "
        f"added and {summary.relabelled} relabelled by people ({summary.unavailable} label(s) without a stored image)"
    )
    return EXIT_OK


# -- annotate ----------------------------------------------------------------------------------------


def cmd_annotate(args: argparse.Namespace) -> int:
    from proxy.annotate import AnnotateError, AnnotateOptions, Annotator

    if args.check and args.write:
        print("invertornot: error: --check only reads; run without it to --write", file=sys.stderr)
        return EXIT_USAGE
    options = AnnotateOptions(
        write=args.write,
        check=args.check,
        fetch=args.fetch,
        site_url=args.site_url,
        labels_path=args.labels,
        workers=args.workers,
        batch_size=args.batch_size,
        allow_private_networks=args.allow_private_networks,
    )
    try:
        summary = Annotator(args.site, options, model_dir=args.model, progress=_progress_bar).run()
    except (AnnotateError, ValueError) as error:
        print(f"invertornot: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(summary.table())
    for key, pages in sorted(summary.missing.items()):
        print(f"missing: {key} (referenced by {', '.join(pages)})", file=sys.stderr)
    for key in summary.unlabelled:
        print(f"no label: {key}", file=sys.stderr)
    return EXIT_FAILED if summary.unlabelled else EXIT_OK


# -- serve -------------------------------------------------------------------------------------------


def _tune_malloc(arenas: int = 2) -> None:
    """glibc malloc settings for the server, each unless the environment already chose it (a no-op off glibc).

    * Arenas capped (as MALLOC_ARENA_MAX would): glibc gives each thread that allocates its own arena; the
      classification threads' large, short-lived batch buffers then stay mapped beside the event loop's.
      Measured on the default model with batches of 32: peak RSS 250-330 MiB by default, 210 MiB with 2.
    * Freed blocks kept for reuse (as MALLOC_MMAP_THRESHOLD_=32 MiB and MALLOC_TRIM_THRESHOLD_=64 MiB
      would): parsing a 900 KB page allocates and frees megabyte blocks, which glibc by default maps and
      unmaps each time, so every parsed page faulted its memory in again (1,000-1,400 page faults a
      request). Measured on the parsed Dog page, old and new server alternated: server CPU 63.5 -> 51.1 ms a
      request, page faults ~1,200 -> ~330. The cost: up to 64 MiB of freed memory stays with the process.

    Must run before any thread is started.
    """
    import ctypes
    import os

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    # Parameter numbers from glibc's malloc.h.
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(m_arena_max, arenas)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(m_trim_threshold, 64 * 2**20)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from proxy.app import create_app
    from proxy.settings import Settings

    try:
        settings = Settings.from_args(args)
    except ValueError as error:  # a bad INVERTORNOT_* value or an inconsistent combination
        print(f"invertornot: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    _tune_malloc()
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level.upper(), format=log_format)
    if settings.allow_private_networks:
        logging.getLogger("proxy").warning("--allow-private-networks is on: never expose this server publicly")
    access_log = None
    if settings.access_log:
        access_log = logging.getLogger("aiohttp.access")
        access_log.setLevel(logging.INFO)  # asked for explicitly: shown whatever the general log level
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=access_log,
        print=lambda message: print(message, file=sys.stderr, flush=True),
    )
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invertornot", description="Decide which images to invert in dark mode.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser("classify", help="classify image files or URLs; one JSON line each")
    classify.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="image files or http(s) URLs")
    classify.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    classify.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    classify.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="let URLs point at loopback/private addresses (refused by default, as in the server)",
    )
    classify.set_defaults(handler=cmd_classify)

    dataset_labels = DEFAULT_DATASET_DIR / "labels.csv"
    dataset_images = DEFAULT_DATASET_DIR / "images"
    train = commands.add_parser("train", help="train a model; prints package-grouped CV metrics")
    train.add_argument("--labels", type=Path, default=dataset_labels, help="labels.csv (default: the dev set)")
    train.add_argument("--images", type=Path, default=dataset_images, help="images folder (default: the dev set)")
    train.add_argument("--out", type=Path, required=True, help="model directory to write")
    train.add_argument(
        "--backbone",
        default=None,
        help="effnet-lite0[@SIZE][+stages] or clip:ARCH@PRETRAINED (default: effnet-lite0@128+stages, as shipped)",
    )
    train.add_argument(
        "--no-screen",
        action="store_true",
        help="no colour screen: run the backbone for every image (slower; same verdicts on CV)",
    )
    _add_database_arguments(train, required=False)
    train.set_defaults(handler=cmd_train)

    export = commands.add_parser(
        "export-labels", help="write the dataset plus people's accepted labels as labels.csv + images/"
    )
    export.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    _add_database_arguments(export, required=True)
    export.add_argument("--labels", type=Path, default=dataset_labels, help="labels.csv (default: the dev set)")
    export.add_argument("--images", type=Path, default=dataset_images, help="images folder (default: the dev set)")
    export.add_argument("--no-dataset", action="store_true", help="export only the images people labelled")
    export.set_defaults(handler=cmd_export_labels)

    evaluate = commands.add_parser("eval", help="score a model and the saturation heuristic on a labelled set")
    evaluate.add_argument("--labels", type=Path, required=True, help="labels.csv (empty label = skipped)")
    evaluate.add_argument("--images", type=Path, required=True, help="images folder")
    evaluate.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--report", type=Path, default=None, help="write an HTML report here")
    evaluate.set_defaults(handler=cmd_eval)

    from proxy.settings import add_arguments

    serve = commands.add_parser(
        "serve", help="run the classification HTTP service; every flag also reads INVERTORNOT_<NAME>"
    )
    add_arguments(serve)  # one flag per Settings field, generated so flags and settings cannot drift
    serve.set_defaults(handler=cmd_serve)

    annotate = commands.add_parser(
        "annotate", help="label the images of a static site (HTML and Markdown) into invertornot-labels.json"
    )
    annotate.add_argument("site", type=Path, metavar="SITE_DIR", help="the site's folder")
    annotate.add_argument(
        "--write", action="store_true", help="add invert / invert-not classes to the HTML pages (manual markup wins)"
    )
    annotate.add_argument(
        "--check", action="store_true", help="classify nothing; exit 1 if an image lacks a label for its contents"
    )
    annotate.add_argument("--fetch", action="store_true", help="fetch and label remote images too")
    annotate.add_argument(
        "--site-url",
        default="http://site.invalid/",
        help="where the site is served (e.g. https://example.org/blog/): absolute URLs under it are local files",
    )
    annotate.add_argument(
        "--labels", type=Path, default=None, help="labels file (default: SITE_DIR/invertornot-labels.json)"
    )
    annotate.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    annotate.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads hashing and decoding")
    annotate.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    annotate.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="with --fetch: let URLs point at loopback/private addresses (refused by default, as in the server)",
    )
    annotate.set_defaults(handler=cmd_annotate)
    return parser


def _add_database_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The server's --database-url and --correction-images-dir, under the same meaning."""
    parser.add_argument(
        "--database-url",
        required=required,
        default=None,
        help="the server's corrections database, e.g. sqlite:///./invertornot.db"
        + ("" if required else "; its accepted labels are merged into the training set (people's labels win)"),
    )
    parser.add_argument(
        "--correction-images",
        type=Path,
        default=None,
        help="the server's --correction-images-dir (default: beside the database file)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ModelError, DatasetError) as error:
        print(f"invertornot: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
