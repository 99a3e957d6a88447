"""lazymem command line: inspect, convert and verify arrays without writing Python.

    lazymem info URL              shape, dtype, frames, sizes and compression ratio
    lazymem convert SRC DST       .npy (or anything lazymem reads) -> .npy.zst, streaming
    lazymem verify URL            decompress every frame, checking checksums and sizes

Exit codes: 0 success; 1 the data or the storage failed (corrupt, missing, unverifiable);
2 bad usage or input (an option's value, an array lazymem cannot write). Also ``python -m lazymem``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import numpy as np

from .config import parse_size
from .errors import LazymemError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, the shell's convention for `| head`

DESCRIPTION = "Inspect, convert and verify lazymem arrays (.npy.zst, seekable zstd, .npy) at any fsspec URL."


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _size(text: str) -> int:
    """argparse type: bytes or a size such as 4MiB (an error message argparse shows on one line)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _storage_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE; VALUE is read as JSON if it can be (true, 10, {"a": 1}), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r})")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    return dict(args.storage_option) if args.storage_option else None


def _info(args: argparse.Namespace) -> int:
    from .sources.flat import FlatSource
    from .sources.formats import open_array_source

    source = open_array_source(args.url, args.path, _options(args))
    if not isinstance(source, FlatSource):  # zarr, HDF5, NetCDF: what the source says of itself
        for key, value in source.describe().items():
            print(f"{key:<17} {json.dumps(value) if isinstance(value, list | dict) else value}")
        return 0
    reader = source.reader
    h = reader.header
    table = reader.table
    print(f"url           {args.url}")
    print(f"format        {reader.format_name}")
    print(f"shape         {h.shape}")
    print(f"dtype         {h.dtype.str if h.dtype.fields is None else h.dtype.descr}")
    print(f"order         {'F' if h.fortran_order else 'C'}")
    print(f"array bytes   {h.nbytes:,} ({_human(h.nbytes)})")
    print(f"stored bytes  {reader.size:,} ({_human(reader.size)})")
    if reader.size:
        print(f"ratio         {h.nbytes / max(reader.size, 1):.2f}x")
    print(f"frames        {len(table)}")
    if reader.chunk_bytes_hint is not None:
        print(f"chunk bytes   {_human(reader.chunk_bytes_hint)} (named by the layout frame)")
    print(f"seek table    {'indexed: read block by block' if table.lazy else 'read whole at open'}")
    positions = getattr(reader, "positions", None)
    if positions is not None:  # see lazymem.sources.positions: what places each frame
        print("frame places  " + {
            "rows": "proven by the seek table's CRCs",
            "blocks": "block sums; frames before a read in its block are checked on first use",
            "none": "unproven: the frames before a read are checked on first use (lazymem convert to avoid)",
        }[positions.trust])
    if len(table) > 1:
        sizes = np.asarray(table.decompressed_sizes)
        print(f"frame bytes   median {_human(float(np.median(sizes)))}, max {_human(float(sizes.max()))}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .writer import save

    options = _options(args)
    if args.src.endswith(".npy") and "://" not in args.src and "::" not in args.src:
        source: Any = np.load(args.src, mmap_mode="r")  # streams: the writer reads chunk by chunk
    else:
        from .eager import load

        source = load(args.src, path=args.path, storage_options=options)
    save(args.dst, source, chunk_bytes=args.chunk_bytes, frame_bytes=args.frame_bytes, level=args.level,
         storage_options=options)
    print(f"wrote {args.dst}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .sources import open_source

    reader = open_source(args.url, _options(args))
    if reader.format_name == "npy" or getattr(reader, "checksummed", None) is False:
        what = "a plain .npy file" if reader.format_name == "npy" else "its zstd frames carry no content checksums"
        if not args.sizes_only:
            print(f"lazymem: {args.url}: cannot verify: {what}; pass --sizes-only to check what can be "
                  "(frames decode to their declared sizes)", file=sys.stderr)
            return EXIT_FAILED
    sizes = np.asarray(reader.table.decompressed_sizes)

    def check(index: int) -> None:
        out = bytearray(int(sizes[index]))
        (blob,) = reader.fetch([index])
        reader.decompress_into(index, blob, out)

    with ThreadPoolExecutor() as pool:
        list(pool.map(check, [i for i in range(len(sizes)) if sizes[i]]))
    checked = "sizes only, no checksums" if args.sizes_only else "checksums and sizes"
    print(f"ok: {len(sizes)} frames, {reader.header.nbytes:,} array bytes ({checked})")
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default, except where there is none to show (its help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (the usage itself is in --help), exit code 2 as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    formatter = _Formatter
    common = _Parser(add_help=False)
    common.add_argument("--storage-option", "-o", metavar="KEY=VALUE", type=_storage_option, action="append",
                        default=[], help="passed to fsspec (repeat for several; VALUE is read as JSON if it can "
                        "be, e.g. anon=true)")
    parser = _Parser(prog="lazymem", description=DESCRIPTION, formatter_class=formatter,
                                     epilog="Exit codes: 0 ok, 1 the data or storage failed, 2 bad usage or input.")
    parser.add_argument("--version", action="version", version=f"lazymem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", parents=[common], formatter_class=formatter,
                       help="describe an array without reading its data",
                       description="Describe an array (shape, dtype, frames, sizes) reading only its header and seek "
                       "table.")
    p.add_argument("url", help="any fsspec URL: a path, s3://..., https://...")
    p.add_argument("--path", default=None, help="the array inside a group or file (zarr, HDF5, NetCDF)")
    p.set_defaults(run=_info)
    p = sub.add_parser("convert", parents=[common], formatter_class=formatter, help="write SRC as a .npy.zst file",
                       description="Write SRC (a .npy, or anything lazymem reads) as a .npy.zst file, streaming "
                       "chunk by chunk. Sizes take bytes or units: 4MiB, 512KiB, 1GB.")
    p.add_argument("src", help="the array to read (a local .npy is streamed, anything else loaded)")
    p.add_argument("--path", default=None, help="the array inside a group or file (zarr, HDF5, NetCDF)")
    p.add_argument("dst", help="where to write the .npy.zst (parent directories of a local path are created)")
    p.add_argument("--chunk-bytes", type=_size, default="4MiB",
                   help="bytes per chunk, the unit a lazy read fetches (a multiple of the page size)")
    p.add_argument("--frame-bytes", type=_size, default=None,
                   help="bytes per zstd frame within a chunk, the unit decoded and checksummed (default: "
                   "chunks cut into frames of at most 512 KiB)")
    p.add_argument("--level", type=int, default=3, help="zstd compression level")
    p.set_defaults(run=_convert)
    p = sub.add_parser("verify", parents=[common], formatter_class=formatter,
                       help="decompress everything, checking every checksum",
                       description="Decompress every frame, checking its content checksum and size. A file "
                       "without checksums cannot be verified: that is an error unless --sizes-only is given.")
    p.add_argument("url", help="any fsspec URL")
    p.add_argument("--sizes-only", action="store_true",
                   help="accept a file without checksums and check only that frames decode to their sizes")
    p.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Warnings (an unverifiable file) on one line, as the errors below.
    warnings.showwarning = lambda message, category, *_, **__: print(
        f"lazymem: warning: {message}", file=sys.stderr)
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    except BrokenPipeError:
        # `lazymem info ... | head`: the reader has gone. Say nothing, and keep Python from
        # complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except LazymemError as exc:  # corrupt, missing, unreadable: the data or storage failed
        print(f"lazymem: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, TypeError) as exc:  # an option's value, or an array we cannot write
        print(f"lazymem: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"lazymem: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
