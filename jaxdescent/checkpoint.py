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

__all__ = ["CheckpointError", "load", "read_meta", "save"]

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
