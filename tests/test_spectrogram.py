"""Slice geometry and pixel values against independent computations."""
import numpy as np
import pytest
import scipy.signal

from deepcrate.audio.spectrogram import SpectrogramSettings, count_slices, grey_to_db, iter_slices
from deepcrate.config import resolve_settings
from deepcrate.errors import ConfigError

from helpers import make_signal, reference_grey, reference_seed_slice


def settings_for(preset: str) -> SpectrogramSettings:
    return SpectrogramSettings.of(resolve_settings(overrides=[f"spectrogram.preset={preset}"]).spectrogram)


def test_seed_geometry_is_the_original_recipe():
    s = settings_for("seed")
    assert (s.sample_rate, s.n_fft, s.hop_length, s.n_rows, s.slice_frames) == (44100, 512, 882, 256, 256)
    assert s.slice_seconds == pytest.approx(5.12)
    # 120 s at 44.1 kHz: 1 + (5292000 - 512) // 882 = 5999 columns -> 23 whole slices
    assert count_slices(120 * 44100, settings=s) == 23
    assert count_slices(s.min_samples, settings=s) == 1
    assert count_slices(s.min_samples - 1, settings=s) == 0


def test_overlapping_slices_start_every_hop_and_show_the_same_pixels():
    s = SpectrogramSettings.of(resolve_settings(overrides=["spectrogram.slice_hop_frames=128"]).spectrogram)
    assert (s.slice_frames, s.slice_hop_frames, s.slice_hop_seconds) == (256, 128, pytest.approx(2.56))
    # 5999 columns: slices start at columns 0, 128, ..., 5632 (the last ends at 5888)
    assert count_slices(120 * 44100, settings=s) == 1 + (5999 - 256) // 128 == 45
    assert count_slices(s.min_samples, settings=s) == 1
    assert count_slices(s.min_samples + 127 * 882, settings=s) == 1
    assert count_slices(s.min_samples + 128 * 882, settings=s) == 2
    x = make_signal(11.0, seed=3)  # 550 columns: 2 slices end to end, 3 half-overlapping
    slices = list(iter_slices(x, settings=s))
    assert len(slices) == 3
    for k, image in enumerate(slices):  # slice k is the first end-to-end slice of the audio from column 128 k
        assert np.abs(image.astype(int) - reference_seed_slice(x[k * 128 * 882 :], 0)).max() <= 1


def test_settings_stored_before_the_slice_hop_existed_still_match():
    default = settings_for("seed")
    assert default.slice_hop_frames == default.slice_frames
    stored = default.to_dict()
    assert "slice_hop_frames" not in stored  # tables and models written end to end keep their fingerprint
    assert SpectrogramSettings(**stored) == default
    overlapping = SpectrogramSettings.of(resolve_settings(overrides=["spectrogram.slice_hop_frames=64"]).spectrogram)
    assert overlapping.to_dict()["slice_hop_frames"] == 64
    assert SpectrogramSettings(**overlapping.to_dict()) == overlapping
    assert default.differences(overlapping) == {"slice_hop_frames": (256, 64)}
    assert default.differences(overlapping, pixels_only=True) == {}


@pytest.mark.parametrize("hop, message", [
    (-1, "spectrogram.slice_hop_frames must be >= 0, got -1"),  # the config's sign check, before any work
    (257, "slice_hop_frames must be 0 \\(= slice_frames\\) or 1..256, got 257"),
])
def test_a_slice_hop_outside_the_slice_is_refused(hop, message):
    with pytest.raises(ConfigError, match=message):
        SpectrogramSettings.of(resolve_settings(overrides=[f"spectrogram.slice_hop_frames={hop}"]).spectrogram)


def test_seed_slices_match_a_plain_numpy_stft():
    s = settings_for("seed")
    x = make_signal(11.0, seed=3)
    slices = list(iter_slices(x, settings=s))
    assert len(slices) == 2
    assert all(img.shape == (256, 256) and img.dtype == np.uint8 for img in slices)
    for k, image in enumerate(slices):
        assert np.abs(image.astype(int) - reference_seed_slice(x, k)).max() <= 1


def test_seed_full_scale_sine_lands_on_its_row_at_full_brightness():
    s = settings_for("seed")
    bin_index = 40
    freq = bin_index * 44100 / 512
    x = np.sin(2 * np.pi * freq * np.arange(s.min_samples) / 44100).astype(np.float32)
    (image,) = list(iter_slices(x, settings=s))
    row = 256 - bin_index
    assert (image.argmax(axis=0) == row).all()
    assert grey_to_db(image[row], db_range=120).mean() == pytest.approx(0.0, abs=0.5)


def test_mel_slices_match_librosa_melspectrogram():
    import librosa

    s = settings_for("mel")
    assert (s.sample_rate, s.n_fft, s.hop_length, s.n_rows) == (22050, 2048, 441, 256)
    x = make_signal(12.0, sample_rate=22050, seed=5)
    slices = list(iter_slices(x, settings=s))
    assert len(slices) == 2
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=22050, n_fft=2048, hop_length=441, center=False, window="hann",
        power=2.0, n_mels=256, fmin=0.0, fmax=11025.0, norm=None,
    )
    full_scale = (scipy.signal.get_window("hann", 2048).sum() / 2) ** 2
    db = 10 * np.log10(np.maximum(mel / full_scale, 1e-12))
    for k, image in enumerate(slices):
        expected = reference_grey(db[::-1, k * 256 : (k + 1) * 256], 100.0)
        assert np.abs(image.astype(int) - expected).max() <= 1


def test_silence_is_black_and_clipping_is_white():
    s = settings_for("seed")
    (black,) = list(iter_slices(np.zeros(s.min_samples, np.float32), settings=s))
    assert black.max() == 0
    loud = 4.0 * np.sign(np.sin(np.arange(s.min_samples) * 0.3)).astype(np.float32)
    (white,) = list(iter_slices(loud, settings=s))
    assert white.max() == 255
