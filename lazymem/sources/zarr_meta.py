"""Zarr metadata read raw and checked *before* zarr-python parses it.

Store metadata is untrusted input, and zarr-python instantiates every codec it names while it
parses (``parse_array_metadata``, and a group's consolidated metadata at ``open_group``). Some
numcodecs codecs run code when they decode: ``Pickle`` calls ``pickle.loads`` on a chunk's bytes;
the object codecs (``JSON``, ``MsgPack``, ``VLen*``) build Python objects and serve only object
dtypes, which lazymem refuses anyway. So this module fetches the JSON documents itself (through
zarr's own store layer, the same requests zarr would make), refuses what it must, and only then
hands the parsed-by-us document to zarr (``AsyncArray(metadata=dict, ...)``), so that nothing is
fetched twice. The monitor receives the checked document with the pickled source and checks it
again before zarr sees it: no request, no trust.

What is checked (:func:`check_array_metadata`, pure, fuzzed by ``tests/test_zarr_fuzz.py``):

* the document is a JSON object of a known ``zarr_format`` and node type;
* no codec is on :data:`DENIED` (refused: they run code or serve object dtypes);
* every codec is installed (numcodecs' registry for v2 and ``numcodecs.*`` v3 names, zarr's codec
  registry for v3), else :class:`~lazymem.errors.UnsupportedCodecError` naming the codec and the
  package to install (:data:`INSTALL_HINTS`);
* v2 object dtypes (``|O``) are refused before zarr builds them.

Requests: one array's metadata costs 3 concurrent GETs (``zarr.json``, ``.zarray``, ``.zattrs``:
what ``zarr.open_array`` sends); listing a group's arrays reads the consolidated metadata if the
group has it, else walks the store (a listing per group, 3 GETs per node).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ArrayNotFoundError, FormatError, UnsupportedCodecError, UnsupportedDtypeError

ZARR_JSON = "zarr.json"
ZARRAY = ".zarray"
ZATTRS = ".zattrs"
ZGROUP = ".zgroup"
ZMETADATA = ".zmetadata"
METADATA_KEYS = frozenset({ZARR_JSON, ZARRAY, ZATTRS, ZGROUP, ZMETADATA})

DENIED = {
    "pickle": "it runs pickle.loads on the stored bytes, which executes code the store chooses",
    "json2": "it decodes Python objects (object dtypes are refused)",
    "json": "it decodes Python objects (object dtypes are refused)",
    "msgpack2": "it decodes Python objects (object dtypes are refused)",
    "msgpack": "it decodes Python objects (object dtypes are refused)",
    "vlen-utf8": "it decodes Python objects (object dtypes are refused)",
    "vlen-bytes": "it decodes Python objects (object dtypes are refused)",
    "vlen-array": "it decodes Python objects (object dtypes are refused)",
}
"""Codec names (v2 ids; v3 names with any ``numcodecs.`` prefix removed) refused at open."""

INSTALL_HINTS = {
    "zfpy": "zfpy (pip install 'numcodecs[zfpy]')",
    "pcodec": "pcodec (pip install 'numcodecs[pcodec]')",
    "crc32c": "crc32c (pip install 'numcodecs[crc32c]')",
    "msgpack2": "msgpack",
}
"""Codecs shipped by numcodecs whose code needs another package."""

ZARR_V3_CODECS = frozenset({"bytes", "endian", "transpose", "zstd", "gzip", "blosc", "crc32c", "sharding_indexed"})
"""Codecs zarr-python itself implements (``zarr.codecs``)."""

OBJECT_DATA_TYPES = frozenset({"string", "variable_length_utf8", "variable_length_bytes", "bytes", "object"})
"""v3 data types that hold Python objects."""


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise ImportError("reading zarr stores needs zarr-python: pip install 'lazymem[zarr]'") from None
    return zarr


# -- checking a document (pure) ---------------------------------------------------------------------


def _package_for(name: str, zarr_format: int) -> str:
    """The package to install for codec ``name``, as a user would type it."""
    base = name.removeprefix("numcodecs.")
    if base in INSTALL_HINTS:
        return INSTALL_HINTS[base]
    if base.startswith("imagecodecs_") or name.startswith("imagecodecs"):
        return "imagecodecs (pip install imagecodecs)"
    if zarr_format == 3 and name in ZARR_V3_CODECS:
        return "zarr (pip install 'lazymem[zarr]')"
    if zarr_format == 3 and not name.startswith("numcodecs."):
        return f"a package registering the zarr v3 codec {name!r} (an entry point in group 'zarr.codecs')"
    return f"numcodecs, or a package registering the codec id {base!r} (pip install numcodecs)"


def _numcodecs_has(codec_id: str) -> bool:
    try:
        from numcodecs import registry
    except ImportError:
        return False
    if codec_id in registry.codec_registry:
        return True
    registry.run_entrypoints()  # third-party codecs: entry points, imported, never instantiated here
    return codec_id in registry.entries or codec_id in registry.codec_registry


def _zarr_v3_has(name: str) -> bool:
    if name.startswith("numcodecs."):
        # zarr registers a wrapper for every numcodecs codec, usable only where numcodecs has it
        return _numcodecs_has(name.removeprefix("numcodecs."))
    try:
        from zarr.registry import get_codec_class

        get_codec_class(name)  # the class only: importing a registered module, no instance
    except (KeyError, ImportError):
        return False
    return True


def _refuse(name: str, where: str, zarr_format: int) -> None:
    base = name.removeprefix("numcodecs.")
    if base in DENIED:
        raise UnsupportedCodecError(f"{where}: codec {name!r} refused: {DENIED[base]}")
    available = _numcodecs_has(base) if zarr_format == 2 else _zarr_v3_has(name)
    if not available:
        raise UnsupportedCodecError(f"{where}: codec {name!r} is not installed; it needs "
                                    f"{_package_for(name, zarr_format)}")


def _v2_codecs(doc: dict[str, Any], where: str) -> Iterator[str]:
    compressor, filters = doc.get("compressor"), doc.get("filters")
    if filters is None:
        filters = []
    if not isinstance(filters, list):
        raise FormatError(f"{where}: .zarray filters must be a list or null (got {type(filters).__name__})")
    for codec in [*filters, *([compressor] if compressor is not None else [])]:
        if not isinstance(codec, dict) or not isinstance(codec.get("id"), str):
            raise FormatError(f"{where}: a v2 codec must be an object with a string 'id' (got {codec!r:.80})")
        yield codec["id"]


def _v3_codecs(codecs: Any, where: str, depth: int = 0) -> Iterator[str]:
    if depth > 8:
        raise FormatError(f"{where}: codecs nested more than 8 deep")
    if not isinstance(codecs, list):
        raise FormatError(f"{where}: zarr.json codecs must be a list (got {type(codecs).__name__})")
    for codec in codecs:
        if isinstance(codec, str):
            yield codec
            continue
        if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
            raise FormatError(f"{where}: a v3 codec must be a name or an object with a string 'name' "
                              f"(got {codec!r:.80})")
        yield codec["name"]
        config = codec.get("configuration")
        if isinstance(config, dict):  # sharding_indexed: its inner codecs and its index codecs
            for key in ("codecs", "index_codecs"):
                if key in config:
                    yield from _v3_codecs(config[key], where, depth + 1)


def codec_names(doc: dict[str, Any], where: str = "zarr array") -> list[str]:
    """Every codec an array document names, nested ones (sharding) included, in order."""
    if doc.get("zarr_format") == 2:
        return list(_v2_codecs(doc, where))
    return list(_v3_codecs(doc.get("codecs", []), where))


def _v2_holds_objects(dtype: Any, depth: int = 0) -> bool:
    """A v2 dtype (``"|O"``, or a structured ``[[name, type, shape?], ...]``) with an object field."""
    if isinstance(dtype, str):
        return dtype.lstrip("<>|=").startswith("O")
    if isinstance(dtype, list) and depth < 8:
        return any(isinstance(field, list) and len(field) >= 2 and _v2_holds_objects(field[1], depth + 1)
                   for field in dtype)
    return False


def check_array_metadata(doc: Any, where: str = "zarr array") -> None:
    """Refuse an array document zarr-python must not parse (see the module's docstring).

    Raises
    ------
    UnsupportedCodecError
        A codec is denied, unknown or not installed.
    UnsupportedDtypeError
        A v2 object dtype.
    FormatError
        Not an array document lazymem understands.
    """
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: array metadata must be a JSON object (got {type(doc).__name__})")
    zarr_format = doc.get("zarr_format")
    if zarr_format in (2, 3):  # codecs first: a denied one is the clearer message
        for codec in codec_names(doc, where):
            _refuse(codec, where, zarr_format)
    if zarr_format == 2:
        dtype = doc.get("dtype")
        if _v2_holds_objects(dtype):
            raise UnsupportedDtypeError(f"{where}: dtype {dtype!r} holds Python objects, not fixed-size data")
    elif zarr_format == 3:
        if doc.get("node_type") != "array":
            raise FormatError(f"{where}: zarr.json node_type is {doc.get('node_type')!r}, not 'array'")
        data_type = doc.get("data_type")
        name = data_type.get("name") if isinstance(data_type, dict) else data_type
        if isinstance(name, str) and name in OBJECT_DATA_TYPES:
            raise UnsupportedDtypeError(f"{where}: data type {name!r} holds Python objects, not fixed-size data")
    else:
        raise FormatError(f"{where}: zarr_format must be 2 or 3 (got {zarr_format!r:.40})")


def consolidated_arrays(doc: Any, zarr_format: int) -> dict[str, dict[str, Any]] | None:
    """Array documents (by relative path) in a group's consolidated metadata: v3 ``zarr.json``
    ``consolidated_metadata``, or v2 ``.zmetadata``; None if there is none."""
    if not isinstance(doc, dict):
        return None
    if zarr_format == 3:
        consolidated = doc.get("consolidated_metadata")
        entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
        if not isinstance(entries, dict):
            return None
        return {str(k).strip("/"): v for k, v in entries.items()
                if isinstance(v, dict) and v.get("node_type") != "group"}
    entries = doc.get("metadata")
    if not isinstance(entries, dict):
        return None
    arrays: dict[str, dict[str, Any]] = {}
    for key, value in entries.items():
        if isinstance(key, str) and (key == ZARRAY or key.endswith("/" + ZARRAY)):
            path = key[: -len(ZARRAY)].strip("/")
            arrays[path] = dict(value) if isinstance(value, dict) else value
    return arrays


# -- fetching documents through zarr's store layer ---------------------------------------------------


def _json(raw: Any, where: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw.to_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: metadata is not JSON ({exc})") from exc


@dataclass(frozen=True)
class _Node:
    """What the metadata at one path of a store says it is."""

    kind: str  # "array", "group" or "none"
    doc: dict[str, Any] | None  # an array's document (v2: .zarray with "attributes" from .zattrs)
    zarr_format: int | None


async def _get(store_path: Any) -> Any:
    """The object at ``store_path`` (a zarr Buffer), or None if there is none.

    Asked as the range ``bytes=0-``: a whole-object read through s3fs first asks the size (a
    HEAD), and a missing object then costs a LIST as well; a range read is one GET either way."""
    from zarr.abc.store import OffsetByteRequest
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    try:
        return await store_path.get(prototype=proto, byte_range=OffsetByteRequest(0))
    except FileNotFoundError:
        return None
    except OSError:  # an empty object has no byte 0 (HTTP 416): read it whole
        return await store_path.get(prototype=proto)


async def _read_node(store_path: Any, where: str, *, group_too: bool = False) -> _Node:
    import asyncio

    keys = [ZARR_JSON, ZARRAY, ZATTRS] + ([ZGROUP] if group_too else [])
    raws = await asyncio.gather(*(_get(store_path / key) for key in keys))
    docs = [_json(raw, f"{where}/{key}") for raw, key in zip(raws, keys)]
    v3, zarray, zattrs = docs[:3]
    if v3 is not None:
        if not isinstance(v3, dict):
            raise FormatError(f"{where}/zarr.json: not a JSON object")
        if v3.get("node_type") == "group":
            return _Node("group", None, 3)
        return _Node("array", v3, 3)
    if zarray is not None:
        if not isinstance(zarray, dict):
            raise FormatError(f"{where}/.zarray: not a JSON object")
        if zattrs is not None and not isinstance(zattrs, dict):
            raise FormatError(f"{where}/.zattrs: not a JSON object")
        return _Node("array", {**zarray, "attributes": zattrs or {}}, 2)
    if group_too and docs[3] is not None:
        return _Node("group", None, 2)
    return _Node("none", None, None)


async def _walk(store_path: Any, where: str, prefix: str, zarr_format: int, depth: int = 0) -> dict[str, Any]:
    """Array documents under the group at ``store_path / prefix``, read as zarr's ``members``
    would: the consolidated metadata if the group has it, else a listing per group."""
    import asyncio

    here = store_path / prefix if prefix else store_path
    if depth == 0:
        key = ZARR_JSON if zarr_format == 3 else ZMETADATA
        root_doc = _json(await _get(here / key), f"{where}/{key}")
        consolidated = consolidated_arrays(root_doc, zarr_format)
        if consolidated is not None:
            if zarr_format == 2:  # v2 keeps attributes beside each .zarray: merge them as zarr does
                for path, doc in consolidated.items():
                    if isinstance(doc, dict):
                        attrs = root_doc["metadata"].get(f"{path}/{ZATTRS}" if path else ZATTRS)
                        doc["attributes"] = attrs if isinstance(attrs, dict) else {}
            return consolidated
    if depth > 32:
        raise FormatError(f"{where}: groups nested more than 32 deep")
    try:
        children = [name async for name in here.store.list_dir(here.path)]
    except (FileNotFoundError, NotImplementedError, OSError):  # HTTP has no listing: no children seen
        return {}
    children = sorted(c.strip("/") for c in children if c.strip("/") and c.strip("/") not in METADATA_KEYS)
    nodes = await asyncio.gather(*(_read_node(here / c, f"{where}/{prefix}{c}", group_too=True) for c in children))
    arrays: dict[str, Any] = {}
    for child, node in zip(children, nodes):
        path = f"{prefix}{child}"
        if node.kind == "array":
            arrays[path] = node.doc
        elif node.kind == "group":
            arrays.update(await _walk(store_path, where, path + "/", node.zarr_format or zarr_format, depth + 1))
    return arrays


def _sync(coroutine: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coroutine)


def _store_path(url: str, storage_options: dict[str, Any] | None) -> Any:
    from zarr.storage._common import make_store_path

    options = storage_options if storage_options and "://" in url else None
    try:
        return _sync(make_store_path(url, mode="r", storage_options=options))
    except FileNotFoundError as exc:
        raise ArrayNotFoundError(f"{url}: no zarr store ({exc})") from exc


def _group_arrays(store_path: Any, url: str) -> dict[str, Any] | None:
    """The array documents of the group at ``store_path``, or None if it holds no group."""
    node = _sync(_read_node(store_path, url, group_too=True))
    if node.kind != "group":
        return None
    return dict(sorted(_sync(_walk(store_path, url, "", node.zarr_format or 3)).items()))


def check_group(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse a group whose arrays zarr-python must not parse (``open_group`` parses them all:
    consolidated metadata at open, every array's own document when listing members)."""
    _zarr()
    store_path = _store_path(url, storage_options)
    arrays = _group_arrays(store_path, url)
    for path, doc in (arrays or {}).items():
        check_array_metadata(doc, f"{url} (array {path})")


def _listed(paths: list[str]) -> str:
    return ", ".join(paths) if paths else "none"


def open_checked_array(url: str, path: str | None, storage_options: dict[str, Any] | None,
                       known: dict[str, Any] | None = None) -> tuple[str | None, Any, dict[str, Any]]:
    """``(path, zarr.Array, document)`` of the array at ``url`` (and ``path``), its metadata
    checked before zarr parses it. ``known`` is a document read before (the pickled source's): it
    is checked again and used without a request.

    ``path`` may be None where ``url`` is an array, or a group holding exactly one array.

    Raises
    ------
    ArrayNotFoundError
        No zarr store at ``url``, or no array at ``path`` (the message lists the arrays there are).
    FormatError
        A group of several arrays and no ``path`` (the message lists them), or damaged metadata.
    UnsupportedCodecError
        See :func:`check_array_metadata`.
    """
    zarr = _zarr()
    from zarr.core.array import AsyncArray

    root = _store_path(url, storage_options)
    where = f"{url} (array {path})" if path else url
    try:
        target = root / path if path else root
    except ValueError as exc:  # zarr refuses "." and ".." segments: nothing outside the store is named
        raise ArrayNotFoundError(f"{url}: no zarr array at path {path!r} ({exc})") from exc
    doc = known
    if doc is None:
        node = _sync(_read_node(target, where))
        if node.kind != "array":
            arrays = _group_arrays(root, url)
            if arrays is None:
                raise ArrayNotFoundError(f"{url}: no zarr array or group" + (f" (looked for path {path!r})"
                                                                            if path else ""))
            if path or len(arrays) != 1:
                if path:
                    raise ArrayNotFoundError(f"{url}: no zarr array at path {path!r}; the group holds "
                                             f"{len(arrays)} arrays: {_listed(list(arrays))}")
                raise FormatError(f"{url} is a zarr group holding {len(arrays)} arrays ({_listed(list(arrays))}): "
                                  "name one with path=")
            path, doc = next(iter(arrays.items()))
            where = f"{url} (array {path})"
        else:
            doc = node.doc
    check_array_metadata(doc, where)
    assert doc is not None
    try:
        array = zarr.Array(AsyncArray(metadata=json.loads(json.dumps(doc)), store_path=root / path if path else root))
    except Exception as exc:  # zarr's parse raises anything on bad metadata: all of it is ours to name
        raise FormatError(f"{where}: zarr metadata zarr-python cannot read ({type(exc).__name__}: {exc})") from exc
    return path, array, doc


# -- what ``lazymem info`` says ----------------------------------------------------------------------


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[int]:
    return [-(-n // c) if c else 0 for n, c in zip(shape, chunks)]


def _stored_objects(source: Any) -> tuple[int, int] | None:
    """``(objects, bytes)`` of the chunk (or shard) objects stored for the array: one store
    listing (on S3 one LIST request per 1,000 objects; None where the store cannot list, as
    plain HTTP)."""
    import fsspec

    array = source.array
    store = array.store_path.store
    prefix = array.store_path.path
    fs = getattr(store, "fs", None)
    base = str(getattr(store, "path", "") if fs is not None else getattr(store, "root", ""))
    root = "/".join(p for p in (base.rstrip("/"), prefix.strip("/")) if p)
    try:
        if fs is None:  # a LocalStore: list it through fsspec's local filesystem
            found = fsspec.filesystem("file").find(root, detail=True)
        else:  # zarr's fsspec filesystems are asynchronous, on zarr's event loop
            found = _sync(fs._find(root, detail=True))
    except (OSError, NotImplementedError, ValueError):
        return None
    if not found and root.startswith(("http://", "https://")):
        return None
    count = size = 0
    for name, info in found.items():
        if name.rsplit("/", 1)[-1] in METADATA_KEYS or info.get("type") == "directory":
            continue
        count += 1
        size += int(info.get("size") or 0)
    return count, size


def describe_array(source: Any, *, list_store: bool = True) -> dict[str, Any]:
    """The facts ``lazymem info`` prints for a zarr array (a JSON-able dict)."""
    array, doc = source.array, source._zarr_doc
    shape = tuple(int(n) for n in array.shape)
    chunks = tuple(int(c) for c in array.chunks)
    shards = getattr(array, "shards", None)
    stored_shape = tuple(int(s) for s in shards) if shards else chunks
    facts: dict[str, Any] = {
        "format": "zarr",
        "zarr_format": int(doc.get("zarr_format", 0)),
        "url": source.url,
        "path": source.path,
        "shape": list(shape),
        "dtype": source.dtype.str if source.dtype.fields is None else str(source.dtype.descr),
        "order": source.order,
        "chunks": list(chunks),
        "chunk_grid": _grid(shape, chunks),
    }
    codecs: list[Any] = doc.get("codecs") or [] if doc.get("zarr_format") == 3 else []
    first = codecs[0] if codecs else None
    sharding = first if isinstance(first, dict) and first.get("name") == "sharding_indexed" else None
    if shards:
        facts["shards"] = list(stored_shape)
        facts["shard_grid"] = _grid(shape, stored_shape)
    if sharding is not None:
        config = sharding.get("configuration") or {}
        facts["codecs"] = ["sharding_indexed", *codec_names({"codecs": codecs[1:]}, source.url)]
        facts["shard_codecs"] = list(_v3_codecs(config.get("codecs", []), source.url))
        facts["shard_index"] = {"location": config.get("index_location", "end"),
                                "codecs": list(_v3_codecs(config.get("index_codecs", []), source.url))}
    else:
        facts["codecs"] = codec_names(doc, source.url)
    facts["fill_value"] = doc.get("fill_value")
    facts["nbytes"] = source.nbytes
    unit = "shards" if shards else "chunks"  # the objects a store holds: a shard holds many chunks
    facts[f"{unit}_total"] = int(_prod(_grid(shape, stored_shape)))
    if list_store:
        listed = _stored_objects(source)
        facts[f"{unit}_present"] = None if listed is None else listed[0]
        facts["stored_bytes"] = None if listed is None else listed[1]
        facts["listing"] = ("one store listing (S3: a LIST request per 1,000 objects)" if listed is not None
                            else "the store cannot list (plain HTTP): objects present and stored bytes unknown")
    if source.dimension_names:
        facts["dimension_names"] = list(source.dimension_names)
    if source.attrs:
        facts["attrs"] = source.attrs
    return facts


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
