"""Decoding: every file type and failure mode, on real encoded files."""
import io

import numpy as np
import pytest
import soundfile as sf

from deepcrate.audio.decode import decode_audio
from deepcrate.config import DecodeLimits
from deepcrate.errors import AudioError

from helpers import make_signal

LIMITS = DecodeLimits(max_duration_s=600, truncated_ratio=0.9, silence_dbfs=-60)


def encoded(samples, sample_rate=44100, fmt="MP3"):
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype="VORBIS" if fmt == "OGG" else None)
    return buffer.getvalue()


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_mp3_any_rate_and_channels_decodes_to_mono_at_target_rate(sample_rate, channels):
    x = make_signal(6.0, sample_rate=sample_rate, channels=channels)
    audio = decode_audio(encoded(x, sample_rate), name="a.mp3", target_rate=44100, limits=LIMITS)
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert audio.sample_rate == sample_rate and audio.channels == channels
    assert audio.duration_s == pytest.approx(6.0, abs=0.1)
    assert len(audio.samples) == pytest.approx(6.0 * 44100, rel=0.02)
    assert audio.cut_at_s is None


def test_one_decode_serves_every_rate_as_a_decode_at_that_rate_would():
    data = encoded(make_signal(5.0, sample_rate=44100, channels=2, seed=1))
    audio = decode_audio(data, name="a.mp3", target_rate=16000, limits=LIMITS, keep_native=True)
    for rate in (16000, 22050, 44100):
        alone = decode_audio(data, name="a.mp3", target_rate=rate, limits=LIMITS).samples
        np.testing.assert_array_equal(audio.at_rate(rate), alone)
    with pytest.raises(ValueError, match="keep_native"):
        decode_audio(data, name="a.mp3", target_rate=16000, limits=LIMITS).at_rate(22050)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_other_formats_decode_to_the_channel_mean(fmt):
    x = make_signal(4.0, channels=2)
    audio = decode_audio(encoded(x, fmt=fmt), name=f"a.{fmt}", target_rate=44100, limits=LIMITS)
    if fmt == "OGG":  # lossy: compare loudness, not samples
        assert np.std(audio.samples) == pytest.approx(np.std(x.mean(axis=1)), rel=0.05)
    else:
        np.testing.assert_allclose(audio.samples, x.mean(axis=1), atol=1e-3)


def test_long_file_is_cut_at_max_duration_without_decoding_the_rest():
    x = make_signal(20.0)
    limits = DecodeLimits(max_duration_s=7.5, truncated_ratio=0.9, silence_dbfs=-60)
    audio = decode_audio(encoded(x), name="mix.mp3", target_rate=44100, limits=limits)
    assert audio.cut_at_s == 7.5
    assert len(audio.samples) == int(np.ceil(7.5 * 44100))
    assert audio.duration_s == pytest.approx(20.0, abs=0.1)


def test_wav_named_mp3_decodes():
    x = make_signal(3.0)
    audio = decode_audio(encoded(x, fmt="WAV"), name="really-a-wav.mp3", target_rate=44100, limits=LIMITS)
    np.testing.assert_allclose(audio.samples, x, atol=1e-4)


def corrupt_flac() -> bytes:
    data = bytearray(encoded(make_signal(12.0), fmt="FLAC"))
    for i in range(len(data) // 3, len(data) // 3 + 2000):
        data[i] = (data[i] * 7 + 13) % 256
    return bytes(data)


@pytest.mark.parametrize(
    "data, reason, fragment",
    [
        (b"", "empty", "x.mp3: file is empty"),
        (b"these are not the bytes you are looking for\n" * 20, "not_audio", "x.mp3: not a recognised audio format"),
        (np.random.default_rng(1).bytes(5000), "not_audio", "x.mp3: not a recognised"),
        (None, "truncated", "x.mp3: truncated"),
        (corrupt_flac(), "decode_error", "x.mp3: decoding failed"),
        (encoded(np.zeros(0, np.float32), fmt="WAV"), "decode_error", "x.mp3: decoded 0 samples"),
        (encoded(np.zeros(44100 * 8, np.float32)), "silent", "x.mp3: silent"),
    ],
)
def test_bad_files_fail_with_reason_and_name(data, reason, fragment):
    if data is None:  # the first half of a good MP3
        whole = encoded(make_signal(12.0))
        data = whole[: len(whole) // 2]
    with pytest.raises(AudioError) as failure:
        decode_audio(data, name="x.mp3", target_rate=44100, limits=LIMITS)
    assert failure.value.reason == reason
    assert fragment in failure.value.message
    assert "BytesIO" not in failure.value.message


@pytest.mark.parametrize("fmt", ["MP3", "FLAC", "WAV"])
def test_check_whole_tells_a_file_cut_short_from_a_whole_one(fmt):
    from deepcrate.audio.decode import DECODE_ERROR, TRUNCATED, check_whole

    out = io.BytesIO()
    sf.write(out, make_signal(6.0), 44100, format=fmt)
    data = out.getvalue()
    assert check_whole(data, name="x", truncated_ratio=0.9) == pytest.approx(6.0, abs=0.1)
    with pytest.raises(AudioError) as cut:
        check_whole(data[: len(data) // 2], name="x.cut", truncated_ratio=0.9)
    # FLAC's decoder fails on the cut frame instead; acquire treats both as cut short
    assert cut.value.reason in ((DECODE_ERROR,) if fmt == "FLAC" else (TRUNCATED,)), cut.value
    assert str(cut.value).startswith("x.cut: ")
