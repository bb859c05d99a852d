"""Reader for CTranslate2 `model.bin` files (binary format version 6), without ctranslate2."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from synclip.errors import UserError

SUPPORTED_VERSION = 6
# CTranslate2 DataType ids; bfloat16 (5) has no numpy dtype and is refused.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class CTranslate2FormatError(UserError):
    """The file is not a CTranslate2 model.bin this reader understands."""


@dataclass(frozen=True)
class CTranslate2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]  # name -> array (scalars have shape ())
    aliases: dict[str, str]  # alias -> variable name

    def get(self, name: str) -> np.ndarray:
        """A variable by name or alias; KeyError names what is missing."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(f"variable {name!r} is not in the CTranslate2 model")
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()))


def read_ctranslate2(path: str | Path) -> CTranslate2Model:
    """Parse a CTranslate2 model.bin into numpy arrays (copies; the file is closed on return).

    Layout (little endian): u32 version, string spec name, u32 spec revision, u32 variable count,
    then per variable: string name, u8 rank, u32 dims[rank], u8 dtype id, u32 byte count, raw data;
    then u32 alias count and (alias, target) string pairs. A string is u16 length (with the NUL),
    the UTF-8 bytes and a NUL.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        try:
            return _read(file, size)
        except (struct.error, UnicodeDecodeError, ValueError) as error:
            raise CTranslate2FormatError(f"{path}: not a readable CTranslate2 model.bin ({error})") from None


def _read(file: BinaryIO, size: int) -> CTranslate2Model:
    version = _u(file, "I")
    if version != SUPPORTED_VERSION:
        raise ValueError(f"binary version {version}, this reader supports {SUPPORTED_VERSION}")
    spec = _string(file)
    revision = _u(file, "I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(_u(file, "I")):
        name = _string(file)
        shape = tuple(_u(file, "I") for _ in range(_u(file, "B")))
        dtype_id = _u(file, "B")
        if dtype_id not in DTYPES:
            raise ValueError(f"variable {name!r} has unsupported dtype id {dtype_id}")
        dtype = np.dtype(DTYPES[dtype_id]).newbyteorder("<")
        nbytes = _u(file, "I")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected or file.tell() + nbytes > size:
            raise ValueError(f"variable {name!r}: {nbytes} bytes for shape {shape} of {dtype}")
        variables[name] = np.frombuffer(file.read(nbytes), dtype=dtype).reshape(shape).copy()
    aliases = {}
    for _ in range(_u(file, "I")):
        alias = _string(file)
        aliases[alias] = _string(file)
    if file.tell() != size:
        raise ValueError(f"{size - file.tell()} trailing bytes after the aliases")
    return CTranslate2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def _u(file: BinaryIO, fmt: str) -> int:
    width = struct.calcsize(fmt)
    data = file.read(width)
    if len(data) != width:
        raise ValueError("unexpected end of file")
    return struct.unpack("<" + fmt, data)[0]


def _string(file: BinaryIO) -> str:
    length = _u(file, "H")
    data = file.read(length)
    if len(data) != length or not data.endswith(b"\0"):
        raise ValueError("malformed string")
    return data[:-1].decode("utf-8")
