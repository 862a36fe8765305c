"""The default (musicnn) rebuild before and after the features stage, on the development corpus.

Each run is ``deepcrate rebuild`` with the packaged defaults in a fresh process and a
fresh warehouse, on the same audio (``bench/real_corpus.py``'s corpus):

1. ``baseline``: the code of ``--baseline`` (default: the last commit before the features
   stage), its ``lib`` first on ``PYTHONPATH``, same virtualenv: train computed the
   musicnn features of the train and validation slices, embed all of them again;
2. ``features``: this checkout, from scratch (ingest, features, train, embed, index, evaluate);
3. ``train-setting``: this checkout again on the same warehouse with one ``train.*``
   setting changed (``train.head_patience``): a new head, no feature computed;
4. ``new-files``: this checkout after adding ~5% more files (copies of corpus tracks,
   re-encoded so their bytes are new songs): the features of their slices only.

Stage times come from the rebuild's own summary. Goals (issue "features once"):
features/baseline <= 1/3, train-setting <= 60 s with 0 features computed, new-files
computing only the new files' slices.

    python bench/feature_rebuild.py                       # ~25 min on 2 cores
    python bench/feature_rebuild.py --skip-baseline       # this checkout only
    python bench/feature_rebuild.py --train-setting-only --baseline COMMIT   # ~5 min

``--train-setting-only`` reuses the warehouse and audio of an earlier full run and measures
run 3 alone, for ``--baseline`` (e.g. the commit before a change to training) and this
checkout, each on its own copy of that warehouse (``train.head_patience=18``: a setting
that warehouse was not built with); it writes bench/results/feature_rebuild_train_setting.json.

Writes bench/results/feature_rebuild.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from baseline_checkout import ROOT, baseline_checkout, env_running

CORPUS = Path.home() / ".cache" / "deepcrate-bench" / "real-corpus" / "audio"
WORK = Path.home() / ".cache" / "deepcrate-bench" / "feature-rebuild"
BASELINE = "63c1b2c"  # main before the features stage
STAGE_LINE = re.compile(r"^\s+(\w+)\s+(ran|skipped|given|unused)\s+([\d.]+) s\s*(.*)$")
TOTAL = re.compile(r"rebuild finished in ([\d.]+) s: (\d+) songs, (\d+) slices")
QUALITY = re.compile(r"model ([\d.]+) / ([\d.]+)%")


def run_rebuild(lib: Path, *, audio: Path, warehouse: Path, extra: list[str], log: Path) -> dict:
    env = env_running(lib)
    args = [sys.executable, "-m", "deepcrate.cli", "rebuild", "--audio", str(audio), "--manifest",
            str(audio / "manifest.csv"), "--warehouse", str(warehouse)]
    for setting in extra:
        args += ["--set", setting]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"rebuild failed ({lib}); see {log}")
    stages = {m.group(1): {"status": m.group(2), "seconds": float(m.group(3)), "detail": m.group(4)}
              for m in map(STAGE_LINE.match, result.stdout.splitlines()) if m}
    total = TOTAL.search(result.stdout)
    quality = QUALITY.search(result.stdout)
    return {"wall_s": round(wall, 1), "stages_s": float(total.group(1)), "songs": int(total.group(2)),
            "slices": int(total.group(3)), "stages": stages,
            "precision_at_10": float(quality.group(1)) if quality else None,
            "song_accuracy": float(quality.group(2)) / 100 if quality else None}


def with_new_files(audio: Path, target: Path, *, share: float) -> int:
    """A copy of ``audio`` plus ``share`` more files: corpus tracks cut to their second half, so
    their bytes (and song ids) are new. Returns how many were added."""
    import librosa
    import soundfile as sf

    shutil.copytree(audio, target)
    rows = (audio / "manifest.csv").read_text().splitlines()
    header, body = rows[0], rows[1:]
    step = max(1, round(1 / share))
    added = []
    for row in body[::step]:
        path = row.split(",", 1)[0]
        samples, rate = librosa.load(str(audio / path), sr=None, mono=True)
        new_path = str(Path(path).with_name(Path(path).stem + "-second-half.wav"))
        sf.write(str(target / new_path), samples[len(samples) // 2:], rate)
        added.append(new_path + "," + row.split(",", 1)[1])
    (target / "manifest.csv").write_text("\n".join([header, *body, *added]) + "\n")
    return len(added)


def train_setting_only(baseline: str, out: Path) -> int:
    """Run 3 alone, at ``baseline`` and at this checkout, each on a copy of the last full run's warehouse."""
    if not (WORK / "wh").is_dir() or not (WORK / "audio-grown").is_dir():
        raise SystemExit(f"{WORK}: no warehouse of an earlier full run: run this script without "
                         "--train-setting-only first")
    results: dict = {"audio": str(WORK / "audio-grown"), "cores": os.cpu_count(), "baseline_commit": baseline,
                     "runs": {}}
    with baseline_checkout(baseline) as checkout:
        for name, lib in (("baseline", checkout / "lib"), ("this checkout", ROOT / "lib")):
            copy = WORK / f"train-setting-{name.replace(' ', '-')}-wh"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(WORK / "wh", copy)
            results["runs"][name] = run_rebuild(lib, audio=WORK / "audio-grown", warehouse=copy,
                                                extra=["train.head_patience=18"],
                                                log=WORK / f"train-setting-{name.replace(' ', '-')}.log")
            shutil.rmtree(copy, ignore_errors=True)
            print(name, json.dumps(results["runs"][name]), flush=True)
    runs = results["runs"]
    results["wall_over_baseline"] = round(runs["this checkout"]["wall_s"] / runs["baseline"]["wall_s"], 3)
    results["train_over_baseline"] = round(runs["this checkout"]["stages"]["train"]["seconds"]
                                           / runs["baseline"]["stages"]["train"]["seconds"], 3)
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"this checkout / baseline: wall {results['wall_over_baseline']}, train {results['train_over_baseline']}; "
          f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=CORPUS)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-result", type=Path, metavar="JSON",
                        help="the baseline's run as this script printed it earlier on this machine (it takes ~1 h "
                             "on 2 cores): not run again")
    parser.add_argument("--train-setting-only", action="store_true",
                        help="only the train-setting rebuild, at --baseline and here, on copies of the last run's "
                             "warehouse")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.train_setting_only:
        return train_setting_only(args.baseline, args.out or ROOT / "bench" / "results"
                                  / "feature_rebuild_train_setting.json")
    args.out = args.out or ROOT / "bench" / "results" / "feature_rebuild.json"
    for name in ("wh", "audio-grown", "baseline-wh"):
        shutil.rmtree(WORK / name, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"audio": str(args.audio), "cores": os.cpu_count(), "runs": {}}
    here = ROOT / "lib"
    if args.baseline_result:
        results["baseline_commit"] = args.baseline
        results["runs"]["baseline"] = json.loads(args.baseline_result.read_text())
        results["baseline_note"] = f"measured earlier in this session ({args.baseline_result})"
    elif not args.skip_baseline:
        with baseline_checkout(args.baseline) as checkout:
            results["baseline_commit"] = args.baseline
            results["runs"]["baseline"] = run_rebuild(checkout / "lib", audio=args.audio,
                                                      warehouse=WORK / "baseline-wh", extra=[],
                                                      log=WORK / "baseline.log")
            print("baseline", json.dumps(results["runs"]["baseline"]), flush=True)
    wh = WORK / "wh"
    results["runs"]["features"] = run_rebuild(here, audio=args.audio, warehouse=wh, extra=[],
                                              log=WORK / "features.log")
    print("features", json.dumps(results["runs"]["features"]), flush=True)
    results["runs"]["train-setting"] = run_rebuild(here, audio=args.audio, warehouse=wh,
                                                   extra=["train.head_patience=19"], log=WORK / "train-setting.log")
    print("train-setting", json.dumps(results["runs"]["train-setting"]), flush=True)
    grown = WORK / "audio-grown"
    results["new_files"] = with_new_files(args.audio, grown, share=0.05)
    results["runs"]["new-files"] = run_rebuild(here, audio=grown, warehouse=wh, extra=["train.head_patience=19"],
                                               log=WORK / "new-files.log")
    print("new-files", json.dumps(results["runs"]["new-files"]), flush=True)
    if "baseline" in results["runs"]:
        results["features_over_baseline"] = round(results["runs"]["features"]["wall_s"]
                                                  / results["runs"]["baseline"]["wall_s"], 3)
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
