"""The `simd` command. Imports stay light here: TensorFlow loads only in commands that embed.

Errors become one line on stderr: exit 2 for usage and configuration, 1 for other failures.
"""

from __future__ import annotations

import argparse
import logging
import sys

from simd import __version__
from simd import config as cfg
from simd.errors import ConfigError, SimdError

log = logging.getLogger("simd")


def _common(p: argparse.ArgumentParser, *, library: bool = False, model: bool = False) -> None:
    if library:
        p.add_argument("library", nargs="?", help="the image folder (or `library` in the config file)")
    p.add_argument("--state-dir", dest="state_dir", help="where the index lives (default: derived from the library)")
    p.add_argument("--config", help="TOML config file (also SIMD_CONFIG)")
    p.add_argument("--log-level", dest="log_level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    if model:
        p.add_argument("--model", choices=cfg.MODELS, help="backbone (default auto)")
        p.add_argument("--descriptor", choices=cfg.DESCRIPTORS, help="default, or seed (the original method)")
        p.add_argument("--runtime", choices=cfg.RUNTIMES, help="what runs the network (default onnxruntime)")
        p.add_argument(
            "--precision", choices=cfg.PRECISIONS, help="fp32 (default) or int8: faster, another model id (README)"
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="simd",
        description="simd, the similar-image daemon: index a photo folder by what its pictures "
        "look like and ask which images look most like one.",
        epilog="Settings (config file key, environment variable, default):\n" + cfg.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"simd {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="index, watch and serve the search page and JSON API")
    _common(p, library=True, model=True)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8765)")

    p = sub.add_parser("index", help="bring the index up to date once, then exit")
    _common(p, library=True, model=True)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--allow-mass-delete",
        dest="allow_mass_delete",
        action="store_true",
        help="most of the library was really deleted: drop it from the index (otherwise refused as an unmounted disk)",
    )

    p = sub.add_parser("query", help="the k indexed images most similar to IMAGE")
    p.add_argument("image", help="an image file, inside the library or not")
    _common(p)
    p.add_argument("--library", help="which library's index (when several exist)")
    p.add_argument("-k", type=int, default=10, help="how many results, 1-100 (default 10)")
    p.add_argument("--json", action="store_true", help="print the same object as GET /api/similar")

    p = sub.add_parser("status", help="counts, model and state of an index")
    _common(p)
    p.add_argument("--library", help="which library's index (when several exist)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("errors", help="files that could not be indexed, and why")
    _common(p)
    p.add_argument("--library", help="which library's index (when several exist)")
    p.add_argument("--json", action="store_true", help="print the same object as GET /api/errors (no links)")

    p = sub.add_parser(
        "duplicates",
        help="groups of copies, the suggested keeper first (simd never deletes)",
        description="Groups of identical and near-duplicate images, read from the index (no daemon needed). "
        "simd never deletes: act on the list yourself, e.g. `simd duplicates --print0 | xargs -0 gio trash`.",
    )
    _common(p)
    p.add_argument("--library", help="which library's index (when several exist)")
    p.add_argument("--threshold", help="cosine from which two images are near-duplicates (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the same object as GET /api/duplicates, all groups")
    p.add_argument(
        "--print0",
        action="store_true",
        help="print the absolute paths of the copies not kept, NUL-separated (for xargs -0)",
    )

    sub.add_parser("models", help="the backbones and whether their weights are available")

    p = sub.add_parser("weights", help="manage model weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    f = wsub.add_parser("fetch", help="download weights into the Keras cache (for services without network)")
    f.add_argument("--model", default="resnet50", choices=("resnet50",))
    return ap


def load_config(args: argparse.Namespace) -> cfg.Config:
    flags = {}
    for name in ("library", "state_dir", "host", "port", "model", "descriptor", "runtime", "precision", "log_level"):
        value = getattr(args, name, None)
        if value is not None:
            flags[name] = value
    config = cfg.load(getattr(args, "config", None), flags)
    from simd.keeprules import parse_keep_rules

    try:
        parse_keep_rules(config.keep_rules)
    except ConfigError as e:
        raise ConfigError(f"keep_rules: {e.message}") from None
    return config


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command == "weights" and not getattr(args, "weights_command", None):
        parser.parse_args(["weights", "--help"])
    try:
        if args.command == "models":
            return cmd_models()
        if args.command == "weights":
            return cmd_weights_fetch(args)
        config = load_config(args)
        setup_logging(config.log_level)
        from simd import commands  # heavier imports (numpy, sqlite) only once a command runs

        return getattr(commands, f"cmd_{args.command}")(config, args)
    except ConfigError as e:
        print(f"simd: {e.message}", file=sys.stderr)
        return 2
    except SimdError as e:
        print(f"simd: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("simd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `simd status | head -2`: the reader left; say nothing more
        sys.stdout = None
        return 0


def cmd_models() -> int:
    from simd.backbones import models_report
    from simd.descriptors import resolve_descriptor, vector_dim

    config = cfg.load()
    for m in models_report(weights=config.weights):
        mark = "yes" if m["weights_available"] else "no "
        # What the index stores with this backbone and the configured descriptor, which may project
        # the features (Lite0's default: onto its 1000 ImageNet logits) or enlarge the input.
        desc = resolve_descriptor(config.descriptor, m["id"])
        dim = vector_dim(desc, m["dim"], m["classes"])
        sizes = "+".join(f"{round(m['input_size'] * s)}" for s in desc.scales)
        print(f"{m['id']:<20} vectors {dim}-d  input {sizes}px  weights: {mark} ({m['weights_source']})")
    if config.runtime == "onnxruntime":
        from simd.backbones.onnx import cache_dir, ort_version

        print(f"runtime: onnxruntime {ort_version()} (converted once, cached in {cache_dir(config.model_cache)})")
    else:
        print("runtime: tensorflow")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from simd.backbones import fetch_weights

    path = fetch_weights(args.model)
    print(f"{args.model} weights are in {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
