"""The sans-IO record search: every split position, every limit, every branch."""

from __future__ import annotations

import itertools

import pytest

from greenflow.records import RecordBuffer, Search

STREAM = b"ab\r\ncd\r\n\r\nlonger line\r\n"


def records_by_reference(stream: bytes, delimiter: bytes, limit: int) -> list[bytes | Search]:
    """What a search over the whole stream at once finds, record after record."""
    out: list[bytes | Search] = []
    position = 0
    while position < len(stream):
        index = stream.find(delimiter, position, position + limit)
        if index < 0:
            out.append(Search.OVERRUN if len(stream) - position >= limit else Search.NEED_MORE)
            return out
        end = index + len(delimiter)
        out.append(stream[position:end])
        position = end
    out.append(Search.NEED_MORE)
    return out


def records_fed(pieces: list[bytes], delimiter: bytes, limit: int) -> list[bytes | Search]:
    """The same, with the stream fed to a RecordBuffer piece by piece."""
    buffer = RecordBuffer()
    out: list[bytes | Search] = []
    for piece in pieces:
        buffer.feed(piece)
        while True:
            found = buffer.find(delimiter, limit)
            if found is Search.OVERRUN:
                out.append(found)
                return out
            if found is Search.NEED_MORE:
                break
            assert isinstance(found, int)
            out.append(buffer.take(found))
    out.append(Search.NEED_MORE)
    return out


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"\r\n\r\n"])
@pytest.mark.parametrize("limit", [4, 5, 6, 13, 100])
def test_every_pair_of_split_points_gives_the_same_records(delimiter: bytes, limit: int) -> None:
    if limit < len(delimiter):
        pytest.skip("a limit shorter than the delimiter is refused by the callers")
    expected = records_by_reference(STREAM, delimiter, limit)
    for first, second in itertools.combinations(range(len(STREAM) + 1), 2):
        pieces = [STREAM[:first], STREAM[first:second], STREAM[second:]]
        assert records_fed(pieces, delimiter, limit) == expected, (first, second)


def test_one_byte_pieces_give_the_same_records() -> None:
    for limit in range(2, len(STREAM) + 2):
        pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
        assert records_fed(pieces, b"\r\n", limit) == records_by_reference(STREAM, b"\r\n", limit)


def test_a_limit_exactly_at_the_delimiter() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"abc\n")
    assert buffer.find(b"\n", 4) == 4  # the record is exactly the limit: found
    assert buffer.find(b"\n", 3) is Search.OVERRUN  # one byte less: too long
    buffer.feed(b"more")
    assert buffer.find(b"\n", 3) is Search.OVERRUN
    assert buffer.take(4) == b"abc\n"
    assert buffer.find(b"\n", 5) is Search.NEED_MORE  # b"more" could still end in time
    assert buffer.find(b"\n", 4) is Search.OVERRUN


def test_a_delimiter_that_straddles_pieces_after_a_fruitless_search() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"xx\r")
    assert buffer.find(b"\r\n", 100) is Search.NEED_MORE
    buffer.feed(b"\n")
    assert buffer.find(b"\r\n", 100) == 4


def test_switching_delimiters_forgets_the_mark() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"a;b,c")
    assert buffer.find(b"!", 100) is Search.NEED_MORE
    assert buffer.find(b",", 100) == 4
    assert buffer.find(b";", 100) == 2


def test_unread_puts_bytes_in_front_and_forgets_the_mark() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"world")
    assert buffer.find(b"\n", 100) is Search.NEED_MORE
    buffer.unread(b"hi\nhello ")
    assert len(buffer) == 14
    assert buffer.find(b"\n", 100) == 3
    assert buffer.take(3) == b"hi\n"
    assert buffer.peek(5) == b"hello"
    assert buffer.take_all() == b"hello world"
    assert len(buffer) == 0


def test_take_moves_the_mark_back() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"abcdef")
    assert buffer.find(b"\n", 100) is Search.NEED_MORE
    assert buffer.take(2) == b"ab"
    buffer.feed(b"\n")
    assert buffer.find(b"\n", 100) == 5
    assert buffer.take(10) == b"cdef\n"
    assert buffer.take(10) == b""


def test_take_into() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"abcdef")
    target = bytearray(4)
    assert buffer.take_into(memoryview(target)) == 4
    assert target == b"abcd"
    assert buffer.take_into(memoryview(target)) == 2
    assert target[:2] == b"ef"
    assert repr(buffer) == "<RecordBuffer 0 bytes>"


def test_clear() -> None:
    buffer = RecordBuffer()
    buffer.feed(b"abc")
    buffer.find(b"\n", 100)
    buffer.clear()
    assert len(buffer) == 0
    buffer.feed(b"\n")
    assert buffer.find(b"\n", 100) == 1
