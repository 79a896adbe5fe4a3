"""Crash-safe checkpoints of a training run's state.

Format: one file, ``MAGIC`` line, the SHA-256 of the payload as hex, then the payload, a
NumPy ``.npz`` archive holding every leaf of the state (in ``jax.tree`` order) and a JSON
metadata record. NumPy's format is stable, documented and dependency-free; the checksum
catches truncated or corrupted files, which are never loaded silently. Writes are atomic:
the file is written under a temporary name in the same folder, flushed to disk with
``fsync`` and moved over the old one with ``os.replace``, so a crash at any moment leaves
either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "load", "load_params", "params_record", "read_meta", "save"]

MAGIC = b"JAXDESCENT-CHECKPOINT-1\n"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not fit the run."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf: Any) -> np.ndarray:
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def _storable(leaf: np.ndarray) -> np.ndarray:
    """``leaf`` as NumPy can store it: dtypes NumPy lacks (bfloat16, float8) go as raw bits."""
    if leaf.dtype.isbuiltin:
        return leaf
    return leaf.view(np.dtype(f"u{leaf.dtype.itemsize}"))


def _restored(saved: np.ndarray, name: str | None) -> np.ndarray:
    """Undo :func:`_storable` with the dtype name recorded at save time."""
    if name is None or saved.dtype.name == name:
        return saved
    dtype = jax.numpy.dtype(name)
    if dtype.itemsize != saved.dtype.itemsize:
        return saved  # not a raw-bits leaf: let the caller report the mismatch
    return saved.view(dtype)


def save(path: str | os.PathLike, state: Any, meta: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (any pytree of arrays, PRNG keys included) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for where, leaf in jax.tree_util.tree_leaves_with_path(state):
        kind = np.asarray(leaf).dtype.kind if not _is_key(leaf) else "V"
        if isinstance(leaf, (str, bytes)) or kind in "USOM":
            raise TypeError(
                f"checkpoint.save stores arrays of numbers, bools and PRNG keys; leaf "
                f"{jax.tree_util.keystr(where) or '(the root)'} is {type(leaf).__name__} "
                f"{leaf!r:.60}"
            )
    leaves = [_to_numpy(leaf) for leaf in jax.tree.leaves(state)]
    record = dict(meta or {})
    record["num_leaves"] = len(leaves)
    record["dtypes"] = [leaf.dtype.name for leaf in leaves]
    buffer = io.BytesIO()
    arrays = {f"leaf_{i:05d}": _storable(leaf) for i, leaf in enumerate(leaves)}
    arrays["__meta__"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _payload(path: Path) -> bytes:
    """The checked ``.npz`` bytes of the checkpoint at ``path``."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    head = len(MAGIC)
    if not blob.startswith(MAGIC) or len(blob) < head + 65 or blob[head + 64 : head + 65] != b"\n":
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a jaxdescent checkpoint or is truncated "
            f"({len(blob)} bytes)"
        )
    digest = blob[head : head + 64].decode(errors="replace")
    payload = blob[head + 65 :]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or truncated: its SHA-256 checksum does not "
            "match its contents; refusing to load it"
        )
    return payload


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata record of a checkpoint (e.g. ``steps_done``), checksum verified."""
    with np.load(io.BytesIO(_payload(Path(path))), allow_pickle=False) as archive:
        return json.loads(archive["__meta__"].tobytes().decode())


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the tree structure of ``template``; return ``(state, meta)``.

    ``template`` is a pytree of arrays like the saved state, or a function ``meta -> pytree``
    for states whose shapes depend on what was saved (such as a loss history).

    Raises :class:`CheckpointError` if the file is truncated or corrupted (checksum), or if
    its leaves do not match the template's number, shapes and dtypes.
    """
    path = Path(path)
    with np.load(io.BytesIO(_payload(path)), allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes().decode())
        names = meta.get("dtypes") or [None] * meta["num_leaves"]
        stored = [_restored(archive[f"leaf_{i:05d}"], names[i]) for i in range(meta["num_leaves"])]
    if callable(template):
        template = template(meta)
    template_leaves, treedef = jax.tree.flatten(template)
    if len(stored) != len(template_leaves):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {len(stored)} arrays; this run's state has "
            f"{len(template_leaves)}: it was written by a different model or optimizer"
        )
    restored = []
    for i, (saved, like) in enumerate(zip(stored, template_leaves)):
        if _is_key(like):
            expected = jax.random.key_data(like)
            if saved.shape != expected.shape or saved.dtype != expected.dtype:
                raise CheckpointError(f"checkpoint leaf {i}: PRNG key data does not match")
            restored.append(jax.random.wrap_key_data(saved, impl=jax.random.key_impl(like)))
            continue
        shape, dtype = np.shape(like), np.dtype(like.dtype)
        if saved.shape != shape or saved.dtype != dtype:
            raise CheckpointError(
                f"checkpoint leaf {i} has shape {saved.shape} and dtype {saved.dtype}; this "
                f"run expects shape {shape} and dtype {dtype}"
            )
        restored.append(jax.numpy.asarray(saved))
    return jax.tree.unflatten(treedef, restored), meta


def _entry(key: Any) -> list:
    if isinstance(key, jax.tree_util.DictKey):
        return ["key", str(key.key)]
    if isinstance(key, jax.tree_util.SequenceKey):
        return ["index", int(key.idx)]
    if isinstance(key, jax.tree_util.GetAttrKey):
        return ["key", key.name]
    return ["key", str(key)]


def params_record(params: Any) -> dict[str, Any]:
    """The metadata that lets :func:`load_params` read ``params`` back on its own: their
    number of leaves (they come first in a run's checkpoint) and each leaf's path."""
    paths = jax.tree_util.tree_leaves_with_path(params)
    return {
        "params_leaves": len(paths),
        "params_paths": [[_entry(k) for k in path] for path, _ in paths],
    }


def _rebuild(paths: list, leaves: list) -> Any:
    """Nested dicts (dict keys, attributes) and lists (sequence indices) from leaf paths."""
    if len(paths) == 1 and not paths[0]:
        return leaves[0]
    root: dict | list = {} if paths[0][0][0] == "key" else []
    for path, leaf in zip(paths, leaves):
        node = root
        for depth, (_kind, name) in enumerate(path):
            last = depth == len(path) - 1
            nxt_kind = None if last else path[depth + 1][0]
            if isinstance(node, list):
                while len(node) <= name:
                    node.append(None)
            if last:
                node[name] = leaf
                break
            child = (
                node[name]
                if (isinstance(node, dict) and name in node)
                or (isinstance(node, list) and node[name] is not None)
                else None
            )
            if child is None:
                child = {} if nxt_kind == "key" else []
                node[name] = child
            node = child
    return root


def load_params(path: str | os.PathLike, like: Any = None) -> Any:
    """The params of a run saved by ``fit(..., checkpoint_dir=...)``, without its state.

    Args:
      path: the checkpoint file, or the folder holding ``checkpoint.jdc``.
      like: optional params of the same structure (e.g. the model's ``init`` output): the
        result then has exactly that structure. Without it, dict keys and attributes become
        nested dicts and sequence positions lists (a bare array stays an array).

    Raises :class:`CheckpointError` for a file that is not a run's checkpoint or whose params
    do not fit ``like``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.jdc"
    with np.load(io.BytesIO(_payload(path)), allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes().decode())
        if "params_leaves" not in meta:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not record its params (it was not written by "
                "jaxdescent.fit or multistart, or by an older version); use load(path, template)"
            )
        count = int(meta["params_leaves"])
        names = meta.get("dtypes") or [None] * meta["num_leaves"]
        leaves = [
            jax.numpy.asarray(_restored(archive[f"leaf_{i:05d}"], names[i])) for i in range(count)
        ]
    if like is None:
        return _rebuild(meta["params_paths"], leaves)
    expected, treedef = jax.tree.flatten(like)
    if len(expected) != count or any(np.shape(e) != np.shape(a) for e, a in zip(expected, leaves)):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds params with shapes "
            f"{[tuple(np.shape(a)) for a in leaves]}; like has "
            f"{[tuple(np.shape(e)) for e in expected]}"
        )
    return jax.tree.unflatten(treedef, leaves)
