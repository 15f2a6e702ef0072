"""core.lines: every line of a plain or gzip file, damage reported, memory bounded."""
from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from core.lines import DamagedLine, InputFileError, check_input_file, iter_lines

LINES = [b'{"a": %d}' % i for i in range(2000)]


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_plain_and_gzip_give_the_same_lines(tmp_path):
    body = b"\n".join(LINES) + b"\n"
    assert list(iter_lines(_write(tmp_path / "a.jsonl", body))) == LINES
    assert list(iter_lines(_write(tmp_path / "a.jsonl.gz", gzip.compress(body)))) == LINES


def test_bom_crlf_and_missing_final_newline(tmp_path):
    path = _write(tmp_path / "a.jsonl", b"\xef\xbb\xbf{}\r\n{\"b\": 1}\r\n\n{\"c\": 2}")
    assert list(iter_lines(path)) == [b"{}", b'{"b": 1}', b"", b'{"c": 2}']
    # only the file's first line may start with a BOM
    path = _write(tmp_path / "b.jsonl", b"{}\n\xef\xbb\xbf{}\n")
    assert list(iter_lines(path)) == [b"{}", b"\xef\xbb\xbf{}"]


def test_multi_member_gzip_and_zero_padding(tmp_path):
    data = gzip.compress(b"1\n2\n") + gzip.compress(b"3\n") + b"\x00" * 512
    assert list(iter_lines(_write(tmp_path / "m.jsonl.gz", data))) == [b"1", b"2", b"3"]


def test_truncated_gzip_keeps_every_whole_line_and_reports_the_tail(tmp_path):
    body = b"\n".join(LINES) + b"\n"
    data = gzip.compress(body)
    out = list(iter_lines(_write(tmp_path / "t.jsonl.gz", data[: len(data) * 2 // 3])))
    good, damage = out[:-1], out[-1]
    assert all(isinstance(line, bytes) for line in good) and good == LINES[: len(good)]
    assert 0 < len(good) < len(LINES)
    assert isinstance(damage, DamagedLine)
    assert damage.error == (f"t.jsonl.gz: the gzip stream ends before its end marker (a truncated file): "
                            f"line {len(good) + 1} is incomplete; whatever followed is lost")
    assert LINES[len(good)].startswith(damage.raw)


def test_truncated_at_a_line_boundary_is_still_reported(tmp_path):
    compressor = zlib.compressobj(wbits=31)
    data = compressor.compress(b"1\n2\n") + compressor.flush(zlib.Z_SYNC_FLUSH)  # no end marker
    out = list(iter_lines(_write(tmp_path / "t.jsonl.gz", data)))
    assert out == [b"1", b"2", DamagedLine(b"", "t.jsonl.gz: the gzip stream ends before its end marker "
                                                "(a truncated file): after line 2; whatever followed is lost")]


def test_corrupt_and_trailing_garbage_are_reported(tmp_path):
    data = bytearray(gzip.compress(b"\n".join(LINES)))
    data[len(data) // 2] ^= 0xFF
    out = list(iter_lines(_write(tmp_path / "c.jsonl.gz", bytes(data))))
    assert isinstance(out[-1], DamagedLine) and out[-1].error.startswith("c.jsonl.gz: ")
    assert all(isinstance(line, bytes) for line in out[:-1])
    out = list(iter_lines(_write(tmp_path / "g.jsonl.gz", gzip.compress(b"1\n") + b"junk")))
    assert out == [b"1", DamagedLine(b"", "g.jsonl.gz: bytes after the end of the gzip stream are not gzip "
                                          "data: after line 1; whatever followed is lost")]


def test_not_gzip_at_all_is_an_input_file_error(tmp_path):
    path = _write(tmp_path / "p.jsonl.gz", b'{"plain": true}\n')
    with pytest.raises(InputFileError, match=r"p.jsonl.gz: named .gz but not gzip data \(it starts with 7b22"):
        check_input_file(path)
    check_input_file(_write(tmp_path / "e.jsonl.gz", b""))     # empty: no lines, no error
    assert list(iter_lines(str(tmp_path / "e.jsonl.gz"))) == []


def test_an_over_long_line_is_cut_while_reading_in_bounded_memory(tmp_path):
    limit = 1 << 20
    bomb = gzip.compress(b"1\n" + b"x" * (64 << 20) + b"\n2\n", compresslevel=1)
    path = _write(tmp_path / "bomb.jsonl.gz", bomb)
    tracemalloc.start()
    try:
        out = list(iter_lines(path, limit))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[0] == b"1" and out[2] == b"2"
    assert out[1].error == f"line 2 of {64 << 20} bytes exceeds the {limit}-byte limit (not read whole; its first bytes are kept)"
    assert out[1].raw == b"x" * (64 * 1024)
    assert peak < 8 * limit  # never the 64 MiB line


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=50), st.booleans())
def test_any_lines_read_back_exactly(tmp_path_factory, lines, zipped):
    lines = [line.rstrip(b"\r") for line in lines]
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = b"x" + lines[0]
    body = b"".join(line + b"\n" for line in lines)
    path = tmp_path_factory.mktemp("h") / ("l.jsonl.gz" if zipped else "l.jsonl")
    path.write_bytes(gzip.compress(body) if zipped else body)
    assert list(iter_lines(str(path), 30)) == [
        line if len(line) <= 31 else DamagedLine(line, f"line {i + 1} of {len(line)} bytes exceeds the 30-byte limit "
                                                       "(not read whole; its first bytes are kept)")
        for i, line in enumerate(lines)]
