"""lazymem command line: inspect, convert and verify arrays without writing Python.

    lazymem info URL [--path P] [--json]     what the format says: shape, dtype, chunks, codecs, sizes
    lazymem convert SRC DST [--path P]       anything lazymem reads -> .npy.zst, streaming
    lazymem verify URL                       decompress every frame, checking checksums and sizes

``info`` and ``convert`` are format-generic: they ask the source interface
(:func:`lazymem.sources.formats.open_array_source`, :meth:`Source.describe`), so a zarr array, an
HDF5 dataset and a ``.npy.zst`` file are handled alike; the native format keeps its own detailed
``info`` (frames, seek table). ``convert`` streams: the source is opened lazily with a bounded
``--max-resident``, and the writer reads it chunk by chunk.

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
from .errors import FormatError, LazymemError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, the shell's convention for `| head`

DESCRIPTION = ("Inspect, convert and verify arrays lazymem reads (.npy.zst, seekable zstd, .npy, zarr v2/v3 "
               "stores) at any fsspec URL.")


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

    try:
        source = open_array_source(args.url, args.path, _options(args))
    except FormatError:
        if args.path is not None:
            raise
        group = _group_or_none(args)  # a group of several arrays: list them rather than fail
        if group is None:
            raise
        return _print_facts(group, args.json)
    if isinstance(source, FlatSource):
        return _info_flat(source.reader, args)
    return _print_facts(source.describe(), args.json)


def _group_or_none(args: argparse.Namespace) -> dict[str, Any] | None:
    from .sources.formats import open_listing

    try:
        listing = open_listing(args.url, _options(args))
    except LazymemError:
        return None
    arrays = {path: {"shape": list(info.shape), "dtype": str(info.dtype)} for path, info in listing.arrays.items()}
    return {"format": listing.format, "url": args.url, "kind": "group (name an array with --path)",
            "arrays": arrays, "attrs": listing.attrs}


def _human_value(key: str, value: Any) -> str:
    """One value of a describe() dict as a terminal shows it."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and (key.endswith("bytes") or key == "nbytes"):
        return f"{value:,} ({_human(value)})"
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value) if value else "none"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


LABELS = {"nbytes": "array bytes", "stored_bytes": "stored bytes", "zarr_format": "zarr format",
          "chunk_grid": "chunk grid", "shard_grid": "shard grid", "fill_value": "fill value",
          "dimension_names": "dimensions"}


def _print_facts(facts: dict[str, Any], as_json: bool) -> int:
    """Any :meth:`Source.describe` dict: JSON, or one ``label  value`` line per key (nested dicts
    indented below their key), with the compression ratio where both sizes are known."""
    if as_json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    stored, decoded = facts.get("stored_bytes"), facts.get("nbytes")
    lines: list[tuple[str, str]] = []
    for key, value in facts.items():
        label = LABELS.get(key, key.replace("_", " "))
        if isinstance(value, dict) and value and key in ("arrays", "attrs"):
            lines.append((label, f"{len(value)}"))
            lines.extend((f"  {k}", _human_value(str(k), v)) for k, v in value.items())
        elif isinstance(value, dict) and value:
            lines.append((label, ", ".join(f"{k} {_human_value(str(k), v)}" for k, v in value.items())))
        else:
            lines.append((label, _human_value(key, value)))
        if key == "stored_bytes" and isinstance(stored, int) and stored and isinstance(decoded, int):
            lines.append(("ratio", f"{decoded / stored:.2f}x"))
    width = max(14, *(len(label) + 2 for label, _ in lines)) if lines else 14
    for label, text in lines:
        print(f"{label:<{width}}{text}")
    return 0


def _info_flat(reader: Any, args: argparse.Namespace) -> int:
    """The native format (and plain ``.npy``): frames and seek table, as ``info`` always printed."""
    h = reader.header
    table = reader.table
    if args.json:
        facts: dict[str, Any] = {
            "format": reader.format_name, "url": args.url, "shape": list(h.shape),
            "dtype": h.dtype.str if h.dtype.fields is None else str(h.dtype.descr),
            "order": "F" if h.fortran_order else "C", "nbytes": h.nbytes, "stored_bytes": reader.size,
            "frames": len(table), "chunk_bytes": reader.chunk_bytes_hint,
            "seek_table": "indexed" if table.lazy else "whole",
        }
        positions = getattr(reader, "positions", None)
        if positions is not None:
            facts["frame_places"] = positions.trust
        return _print_facts(facts, True)
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
    is_local_npy = args.src.endswith(".npy") and "://" not in args.src and "::" not in args.src
    if is_local_npy and args.path is None:
        source: Any = np.load(args.src, mmap_mode="r")  # streams: the writer reads chunk by chunk
    else:
        source = _open_streaming(args, options)
    with _Progress(source, args.progress, os.path.basename(args.dst.rstrip("/"))):
        save(args.dst, source, chunk_bytes=args.chunk_bytes, frame_bytes=args.frame_bytes, level=args.level,
             storage_options=options)
    print(f"wrote {args.dst}")
    return 0


def _open_streaming(args: argparse.Namespace, options: dict[str, Any] | None) -> Any:
    """SRC opened lazily, at most ``--max-resident`` of it in memory: the writer's sequential read
    is a scan the monitor serves with readahead and evicts behind."""
    from .array import open as open_lazy
    from .errors import UserfaultfdUnavailableError

    try:
        return open_lazy(args.src, path=args.path, storage_options=options, max_resident=args.max_resident)
    except UserfaultfdUnavailableError as exc:
        from .eager import load

        warnings.warn(f"{exc}; loading the whole array instead (memory is not bounded)", stacklevel=1)
        return load(args.src, path=args.path, storage_options=options)


class _Progress:
    """A tqdm bar (bytes and throughput) on stderr while ``save`` reads a lazy array: the writer
    has no callback, so a thread samples the monitor's counters (``lazymem.stats``) a few times a
    second. Quiet for arrays lazymem does not serve (an mmap'd ``.npy``, an eager load)."""

    def __init__(self, array: Any, enabled: bool | None, name: str) -> None:
        import threading

        from .array import LazyArray

        self.array = array if isinstance(array, LazyArray) else None
        self.total = int(array.nbytes)
        self.enabled = (sys.stderr.isatty() if enabled is None else enabled) and self.array is not None
        self.name = name
        self.done = threading.Event()
        self.thread: Any = None

    def _installed(self) -> int:
        from .array import stats

        assert self.array is not None
        s = stats(self.array)
        return min(self.total, s.chunks_installed * s.chunk_bytes)

    def _run(self, bar: Any) -> None:
        while not self.done.wait(0.25):  # the sampling period, not synchronization
            bar.update(self._installed() - bar.n)

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        try:
            from tqdm import tqdm
        except ImportError:
            print("lazymem: no progress bar: pip install 'lazymem[cli]' (tqdm)", file=sys.stderr)
            self.enabled = False
            return self
        import threading

        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.name,
                        file=sys.stderr, dynamic_ncols=True)
        self.thread = threading.Thread(target=self._run, args=(self.bar,), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if not self.enabled:
            return
        self.done.set()
        self.thread.join()
        if kind is None:
            self.bar.update(self.total - self.bar.n)  # all read: pages installed before the last sample
        self.bar.close()


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
                       description="Describe an array as its format records it, reading no data: shape, dtype, "
                       "sizes; frames and seek table for .npy.zst files; chunk and shard grids, codecs and chunks "
                       "present for zarr (counting chunks present lists the store: one LIST request per 1,000 "
                       "objects on S3; plain HTTP cannot list). A group without --path lists its arrays.")
    p.add_argument("url", help="any fsspec URL: a path, s3://..., https://...")
    p.add_argument("--path", "-p", default=None, help="the array's path inside a zarr group (\"t2m\", \"sub/x\")")
    p.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    p.set_defaults(run=_info)
    p = sub.add_parser("convert", parents=[common], formatter_class=formatter, help="write SRC as a .npy.zst file",
                       description="Write SRC (a zarr array, a .npy, or anything lazymem reads) as a .npy.zst file, "
                       "streaming chunk by chunk in bounded memory (--max-resident), with a progress bar. Sizes "
                       "take bytes or units: 4MiB, 512KiB, 1GB.")
    p.add_argument("src", help="the array to read (a local .npy is mapped; anything else is opened lazily)")
    p.add_argument("dst", help="where to write the .npy.zst (parent directories of a local path are created)")
    p.add_argument("--chunk-bytes", type=_size, default="4MiB",
                   help="bytes per chunk, the unit a lazy read fetches (a multiple of the page size)")
    p.add_argument("--frame-bytes", type=_size, default=None,
                   help="bytes per zstd frame within a chunk, the unit decoded and checksummed (default: "
                   "chunks cut into frames of at most 512 KiB)")
    p.add_argument("--level", type=int, default=3, help="zstd compression level")
    p.add_argument("--path", "-p", default=None, help="the array's path inside a zarr group")
    p.add_argument("--max-resident", type=_size, default="256MiB",
                   help="most bytes of SRC held in memory at once while it is read")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (bytes, throughput) on stderr (default: when stderr is a terminal)")
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
    except ImportError as exc:  # an optional dependency the input needs (its message says how to install it)
        print(f"lazymem: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
