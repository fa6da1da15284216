"""The memtrace stream format: every record round-trips; bad streams give clear errors.

The encoder and decoder are sans-IO (bytes in, records out), so these tests
need no socket; they cover every branch of ``greenflow/memtrace/_format.py``.
"""

from __future__ import annotations

import struct

import pytest

from greenflow import FlowError
from greenflow.memtrace import (
    FORMAT_VERSION,
    MAX_FRAME,
    Decoder,
    End,
    GreenletUsage,
    Hello,
    Sample,
    Site,
    TraceFormatError,
    TraceVersionError,
    encode,
    preamble,
)
from greenflow.memtrace._format import MAX_TEXT

HELLO = Hello(pid=4242, started=1_700_000_000.25, interval=0.5, frames=3, top=10, program="app.py --serve é")
SITE = Site(
    frames=(("/srv/app/handlers.py", 42), ("/srv/app/server.py", 7)),
    size=4096,
    growth=-512,
    count=3,
    count_growth=-1,
)
SAMPLE = Sample(
    seq=7,
    elapsed=3.5,
    rss=50 * 2**20,
    current=2**31 + 5,
    peak=2**32 + 9,
    dropped=2,
    sites=(SITE, Site(frames=(), size=0, growth=0, count=0, count_growth=0)),
    greenlets=(
        GreenletUsage("handlers.chat from 127.0.0.1:5555", 1000, -20),
        GreenletUsage("gevent hub", -5, 5),
    ),
)
END = End("tracing stopped")


def _stream(*records: Hello | Sample | End) -> bytes:
    return preamble() + b"".join(encode(record) for record in records)


def test_every_record_type_round_trips() -> None:
    assert Decoder().feed(_stream(HELLO, SAMPLE, Sample(1, 0.0, 0, 0, 0), END)) == [
        HELLO,
        SAMPLE,
        Sample(1, 0.0, 0, 0, 0),
        END,
    ]


def test_bytes_may_arrive_one_at_a_time() -> None:
    data = _stream(HELLO, SAMPLE, END)
    decoder = Decoder()
    records = []
    for index in range(len(data)):
        records += decoder.feed(data[index : index + 1])
    decoder.end()
    assert records == [HELLO, SAMPLE, END]


def test_a_saved_file_may_hold_several_sessions() -> None:
    other = Hello(1, 2.0, 1.0, 1, 5, "")
    assert Decoder().feed(_stream(HELLO, SAMPLE) + _stream(other, END) + preamble()) == [
        HELLO,
        SAMPLE,
        other,
        END,
    ]


def test_the_preamble_names_the_version() -> None:
    assert preamble() == b"GFMTRACE" + struct.pack(">H", FORMAT_VERSION)


def test_an_unknown_version_is_a_clear_error() -> None:
    decoder = Decoder()
    with pytest.raises(TraceVersionError, match="format version 9; this reader knows only version 1"):
        decoder.feed(b"GFMTRACE\x00\x09" + encode(HELLO))
    with pytest.raises(TraceVersionError):  # and stays so
        decoder.feed(b"")
    with pytest.raises(TraceVersionError):
        decoder.end()
    assert issubclass(TraceVersionError, TraceFormatError)
    assert issubclass(TraceFormatError, FlowError)


@pytest.mark.parametrize("start", [b"HTTP/1.1 200 OK\r\n", b"GFMTRACX\x00\x01", b"\x00\x00", b"GFX"])
def test_a_stream_that_is_not_memtrace_says_so(start: bytes) -> None:
    decoder = Decoder()
    with pytest.raises(TraceFormatError, match="not a memtrace stream") as caught:
        decoder.feed(start)
        decoder.feed(b"\x00" * 16)
    assert not isinstance(caught.value, TraceVersionError)


def test_a_partial_preamble_waits_for_more() -> None:
    decoder = Decoder()
    assert decoder.feed(b"GFMT") == []
    assert decoder.feed(b"RACE\x00") == []
    assert decoder.feed(b"\x01") == []
    assert decoder.feed(encode(HELLO)) == [HELLO]


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 20, -1])
def test_a_truncated_stream_is_an_error_at_its_end(cut: int) -> None:
    data = _stream(HELLO, SAMPLE)
    decoder = Decoder()
    decoder.feed(data[:cut])
    with pytest.raises(TraceFormatError, match=r"the stream ends .* bytes into a frame or preamble"):
        decoder.end()
    with pytest.raises(TraceFormatError):
        decoder.feed(b"")


def test_a_whole_stream_ends_cleanly() -> None:
    decoder = Decoder()
    decoder.feed(_stream(HELLO))
    decoder.end()


@pytest.mark.parametrize("length", [0, MAX_FRAME - 3, 2**31])
def test_a_frame_length_out_of_bounds_is_refused(length: int) -> None:
    with pytest.raises(TraceFormatError, match=f"a frame of {length} bytes: frames hold 1 to 32764 bytes"):
        Decoder().feed(preamble() + struct.pack(">I", length) + b"\x01")


def test_an_unknown_record_type_is_refused() -> None:
    with pytest.raises(TraceFormatError, match="record type 200 is unknown to format version 1"):
        Decoder().feed(preamble() + encode(HELLO) + b"\x00\x00\x00\x01\xc8")


def test_records_come_after_a_hello_and_a_hello_only_first() -> None:
    with pytest.raises(
        TraceFormatError, match="the SAMPLE record arrived where the stream was awaiting a HELLO record"
    ):
        Decoder().feed(preamble() + encode(SAMPLE))
    with pytest.raises(
        TraceFormatError, match="the HELLO record arrived where the stream was reading records"
    ):
        Decoder().feed(_stream(HELLO, HELLO))


def _corrupt(record: Hello | Sample | End, keep: int, extra: bytes = b"") -> bytes:
    """The record's frame with its payload cut to ``keep`` bytes (plus ``extra``), length fixed up."""
    frame = encode(record)
    body = frame[4 : 5 + keep] + extra
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("record", "keep", "where"),
    [
        (HELLO, 3, "is cut short"),  # inside the fixed fields
        (HELLO, 24, "is cut short"),  # inside the program string's length
        (HELLO, 30, "is cut short inside a string"),
        (SAMPLE, 40, "is cut short"),
        (SAMPLE, 70, "is cut short"),  # inside the first site
        (SAMPLE, 80, "is cut short inside a string"),
    ],
)
def test_a_record_cut_short_is_refused(record: Hello | Sample, keep: int, where: str) -> None:
    stream = preamble() + (encode(HELLO) if record is not HELLO else b"") + _corrupt(record, keep)
    with pytest.raises(TraceFormatError, match=f"the {type(record).__name__.upper()} record {where}"):
        Decoder().feed(stream)


def test_a_record_with_bytes_to_spare_is_refused() -> None:
    stream = preamble() + encode(HELLO) + _corrupt(END, len(encode(END)) - 5, b"!!")
    with pytest.raises(TraceFormatError, match="the END record has 2 bytes too many"):
        Decoder().feed(stream)


def test_a_string_that_is_not_utf8_is_refused() -> None:
    body = b"\x03" + struct.pack(">H", 2) + b"\xff\xfe"
    with pytest.raises(TraceFormatError, match="the END record holds a string that is not UTF-8"):
        Decoder().feed(preamble() + encode(HELLO) + struct.pack(">I", len(body)) + body)


def test_long_strings_are_cut_on_a_character_boundary() -> None:
    [hello] = Decoder().feed(preamble() + encode(Hello(1, 0.0, 1.0, 1, 1, "é" * 1000)))
    assert isinstance(hello, Hello)
    assert hello.program == "é" * (MAX_TEXT // 2)


def test_a_sample_too_big_for_one_frame_keeps_its_first_entries() -> None:
    long_name = "/very/long/path/" + "x" * 480 + ".py"
    sites = tuple(Site(((long_name, n),), n, n, 1, 1) for n in range(200))
    usages = tuple(GreenletUsage(f"greenlet {n} " + "y" * 400, n, n) for n in range(100))
    frame = encode(Sample(1, 1.0, 1, 1, 1, 0, sites, usages))
    assert len(frame) <= MAX_FRAME
    [_, sample] = Decoder().feed(preamble() + encode(HELLO) + frame)
    assert isinstance(sample, Sample)
    assert 0 < len(sample.sites) < 200 and sample.sites == sites[: len(sample.sites)]
    assert 0 < len(sample.greenlets) < 100 and sample.greenlets == usages[: len(sample.greenlets)]


def test_a_site_keeps_at_most_255_frames() -> None:
    deep = Site(tuple(("f.py", n) for n in range(300)), 1, 1, 1, 1)
    [_, sample] = Decoder().feed(preamble() + encode(HELLO) + encode(Sample(1, 0.0, 0, 0, 0, 0, (deep,))))
    assert isinstance(sample, Sample)
    assert sample.sites[0].frames == deep.frames[:255]
