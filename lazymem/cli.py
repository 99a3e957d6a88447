"""``lazymem`` command line: inspect, convert and verify arrays without writing Python.

    lazymem info URL              shape, dtype, frames, sizes and compression ratio
    lazymem convert SRC DST       .npy (or anything lazymem reads) -> .npy.zst, streaming
    lazymem verify URL            decompress every frame, checking checksums and sizes
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import LazymemError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _info(args: argparse.Namespace) -> int:
    from .sources import open_source

    reader = open_source(args.url)
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
    if len(table) > 1:
        sizes = np.asarray(table.decompressed_sizes)
        print(f"frame bytes   median {_human(float(np.median(sizes)))}, max {_human(float(sizes.max()))}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .writer import save

    if args.src.endswith(".npy"):
        source: Any = np.load(args.src, mmap_mode="r")  # streams: the writer reads chunk by chunk
    else:
        from .eager import load

        source = load(args.src)
    save(args.dst, source, chunk_bytes=args.chunk_bytes, level=args.level)
    print(f"wrote {args.dst}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .sources import open_source

    reader = open_source(args.url)
    sizes = np.asarray(reader.table.decompressed_sizes)

    def check(index: int) -> None:
        out = bytearray(int(sizes[index]))
        (blob,) = reader.fetch([index])
        reader.decompress_into(index, blob, out)

    with ThreadPoolExecutor() as pool:
        list(pool.map(check, [i for i in range(len(sizes)) if sizes[i]]))
    print(f"ok: {len(sizes)} frames, {reader.header.nbytes:,} array bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lazymem", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe an array without reading its data")
    p.add_argument("url")
    p.set_defaults(run=_info)
    p = sub.add_parser("convert", help="write SRC as a .npy.zst file")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--chunk-bytes", type=int, default=4 * 2**20)
    p.add_argument("--level", type=int, default=3)
    p.set_defaults(run=_convert)
    p = sub.add_parser("verify", help="decompress everything, checking every checksum")
    p.add_argument("url")
    p.set_defaults(run=_verify)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (LazymemError, OSError) as exc:
        print(f"lazymem: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
