"""Messages between the grader and its runner, over a Unix socket.

The grader trusts what it sends (models and tensors, pickled by ``torch.save``) but not what comes
back: replies hold only plain data (tensors, numbers, strings, lists, dicts), are read with
``torch.load(weights_only=True)``, which unpickles no other object, and are limited in size.
"""

from __future__ import annotations

import io
import socket
import struct

import numpy as np
import torch

MAX_REPLY_BYTES = 256 * 2**20
_HEADER = struct.Struct("!Q")


def send(sock: socket.socket, message: object) -> None:
    buffer = io.BytesIO()
    torch.save(message, buffer)
    data = buffer.getvalue()
    sock.sendall(_HEADER.pack(len(data)) + data)


def receive(sock: socket.socket, trusted: bool, limit: int = MAX_REPLY_BYTES) -> object:
    """The next message; ``EOFError`` when the other side has gone. Untrusted messages load as
    plain data only."""
    (size,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    if size > limit:
        raise ValueError(f"a reply of {size} bytes is over the limit of {limit}")
    return torch.load(io.BytesIO(_read_exactly(sock, size)), weights_only=not trusted)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 2**20))
        if not chunk:
            raise EOFError("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Opaque:
    """Stands for an object of a type that cannot cross as plain data; its class is named after
    the original type, so that a check can say "got <type>"."""


def portable(value: object) -> object:
    """``value`` as plain data: tensors (detached, with their requires_grad flag), numpy arrays,
    numbers, strings, and lists, tuples and dicts of them; anything else becomes its type's name."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().clone(), "requires_grad": value.requires_grad}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return {"__sequence__": [portable(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {"__dict__": {k: portable(v) for k, v in value.items()}}
    return {"__opaque__": type(value).__name__}


def restore(value: object) -> object:
    """The inverse of ``portable``, on the grader's side."""
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        tensor = value["__tensor__"]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError("a malformed tensor in a reply")
        return tensor.requires_grad_(bool(value["requires_grad"]) and tensor.is_floating_point())
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if "__sequence__" in value:
        items = [restore(v) for v in value["__sequence__"]]
        return tuple(items) if value.get("tuple") else items
    if "__dict__" in value:
        return {k: restore(v) for k, v in value["__dict__"].items()}
    if "__opaque__" in value:
        return type(str(value["__opaque__"]), (Opaque,), {})()
    raise TypeError("a malformed value in a reply")
