"""Reading a job's output by byte range: the safe read (owner, no symlink, bounded size) and its JSON form."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from slurm_adapters import codec
from slurm_adapters.errors import InvalidRequest
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, OutputChunk
from slurm_adapters.safety import check_chunk_request, read_owned_chunk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")

OWNER = 4242


def owned(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chown(path, OWNER, OWNER)
    return path


def test_chunks_join_to_the_files_bytes_and_stay_within_the_cap(tmp_path: Path) -> None:
    data = os.urandom(MAX_OUTPUT_CHUNK_BYTES * 2 + 12345)
    path = owned(tmp_path / "out", data)
    pieces, offset = [], 0
    while True:
        chunk = read_owned_chunk(path, offset, 10 * MAX_OUTPUT_CHUNK_BYTES, owner_uid=OWNER)
        assert (chunk.offset, chunk.size) == (offset, len(data))
        assert 0 < len(chunk.data) <= MAX_OUTPUT_CHUNK_BYTES
        pieces.append(chunk.data)
        offset += len(chunk.data)
        assert chunk.eof is (offset == len(data))
        if chunk.eof:
            break
    assert len(pieces) == 3
    assert b"".join(pieces) == data
    middle = read_owned_chunk(path, 7, 5, owner_uid=OWNER)
    assert (middle.data, middle.eof) == (data[7:12], False)


def test_an_offset_at_or_past_the_end_is_empty_and_eof(tmp_path: Path) -> None:
    path = owned(tmp_path / "out", b"0123456789")
    for offset in (10, 11, 10**12):
        assert read_owned_chunk(path, offset, 100, owner_uid=OWNER) == OutputChunk(b"", offset, 10, True)
    assert read_owned_chunk(path, 4, 100, owner_uid=OWNER) == OutputChunk(b"456789", 4, 10, True)
    empty = owned(tmp_path / "empty", b"")
    assert read_owned_chunk(empty, 0, 100, owner_uid=OWNER) == OutputChunk(b"", 0, 0, True)


def test_a_symlink_another_owner_and_a_fifo_are_refused_without_reading(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only")
    secret.chmod(0o600)
    link = tmp_path / "out"
    os.symlink(secret, link)
    os.lchown(link, OWNER, OWNER)
    with pytest.raises(PermissionError, match="symbolic link"):
        read_owned_chunk(link, 0, 100, owner_uid=OWNER)
    with pytest.raises(PermissionError, match="not owned by the job's uid"):
        read_owned_chunk(secret, 0, 100, owner_uid=OWNER)
    with pytest.raises(PermissionError, match="not owned"):
        read_owned_chunk(secret, 0, 100, owner_uid=0)  # root's files never, even for a "root" job
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chown(fifo, OWNER, OWNER)
    with pytest.raises(PermissionError, match="not a regular file"):
        read_owned_chunk(fifo, 0, 100, owner_uid=OWNER)


def test_a_bad_range_is_an_invalid_request_and_max_bytes_is_capped() -> None:
    for offset, max_bytes in ((-1, 10), (0, 0), (0, -1)):
        with pytest.raises(InvalidRequest):
            check_chunk_request(offset, max_bytes, cluster="alpha")
    assert check_chunk_request(0, 1) == 1
    assert check_chunk_request(5, 100 * MAX_OUTPUT_CHUNK_BYTES) == MAX_OUTPUT_CHUNK_BYTES


def test_a_chunk_crosses_json_as_base64_and_a_malformed_one_is_refused() -> None:
    chunk = OutputChunk(data=bytes(range(256)), offset=100, size=356, eof=True)
    wire = codec.output_chunk_to_json(chunk)
    assert base64.b64decode(wire["data"]) == chunk.data
    assert codec.output_chunk_from_json(wire) == chunk
    past = OutputChunk(b"", 400, 356, True)
    assert codec.output_chunk_from_json(codec.output_chunk_to_json(past)) == past
    bad = [
        {**wire, "data": "not base64!"},
        {**wire, "offset": True},
        {**wire, "offset": -1},
        {**wire, "eof": False},  # offset + len(data) == size: it is the end
        {**wire, "size": 300},  # the data would reach past the file's size
        {key: value for key, value in wire.items() if key != "eof"},
    ]
    for payload in bad:
        with pytest.raises(codec.ProtocolError):
            codec.output_chunk_from_json(payload)
