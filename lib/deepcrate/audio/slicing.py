"""One audio file in, its spectrogram slices out: the per-song work of ingest.

The Spark executors and the plain single-process benchmark loop both call
:func:`slice_audio_file`, so the two measure the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

from deepcrate.audio.decode import TOO_SHORT, DecodedAudio, decode_audio
from deepcrate.audio.spectrogram import SpectrogramSettings, count_slices, iter_slices
from deepcrate.config.sections import DecodeLimits
from deepcrate.errors import AudioError


@dataclass
class SlicedSong:
    """A decoded song's facts and samples, and its slices (each ``n_rows * slice_frames`` uint8 bytes)."""

    audio: DecodedAudio
    slices: list[bytes]


def slice_audio_file(
    data: bytes, *, name: str, settings: SpectrogramSettings, limits: DecodeLimits, keep_native: bool = False
) -> SlicedSong:
    """Decode one file and cut its spectrogram into whole slices.

    Raises
    ------
    AudioError
        Whatever :func:`~deepcrate.audio.decode.decode_audio` raises, or ``too_short`` when
        the song does not fill one slice.

    ``keep_native`` keeps the file's own samples, for analyses at other rates
    (:meth:`~deepcrate.audio.decode.DecodedAudio.at_rate`).
    """
    audio = decode_audio(data, name=name, target_rate=settings.sample_rate, limits=limits, keep_native=keep_native)
    if count_slices(len(audio.samples), settings=settings) == 0:
        raise AudioError(
            TOO_SHORT,
            f"{name}: too short: {len(audio.samples) / settings.sample_rate:.2f} s, one slice "
            f"needs {settings.min_samples / settings.sample_rate:.2f} s",
        )
    slices = [image.tobytes() for image in iter_slices(audio.samples, settings=settings)]
    return SlicedSong(audio=audio, slices=slices)
