"""The pretrained networks' features per core: Keras (the baseline) vs ONNX Runtime vs OpenVINO.

The same real slices (musicnn preset: 96 bands x 187 frames) go through the default
``train.pretrained`` towers (MTT_musicnn + MSD_musicnn, 400 features) on each runtime,
each in its own process with 1 thread (per core: what one Spark task gets) and then
2 threads:

- ``keras``: ``predict_on_batch`` on the Keras towers, what train and embed ran before
  the features stage (the baseline);
- ``onnxruntime``: the towers converted by tf2onnx (opset 17), fp32; and ``onnxruntime-int8``:
  the same model with dynamically quantized weights (onnxruntime.quantization);
- ``openvino-as-converted``: the towers converted by OpenVINO itself, fp32; and ``openvino``: the
  same with the front-end's single-channel convolutions unfolded over time
  (deepcrate.models.openvino_graph), what the features stage runs; ``openvino-int8``: that
  graph quantized to int8 by NNCF's post-training quantisation, calibrated on the measured
  slices themselves (which flatters it).

Quality: per slice, the cosine of each runtime's features with Keras' (the minimum over
slices is reported, goal >= 1 - 1e-3), and the features stored as float16.

    python bench/pretrained_runtime.py                      # slices of the development corpus
    python bench/pretrained_runtime.py --audio DIR --slices 512 --batch 16

Needs the optional runtimes onnxruntime, tf2onnx and nncf (``pip install tf2onnx onnxruntime nncf``);
one that is missing is reported, not measured. Writes bench/results/pretrained_runtime.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path.home() / ".cache" / "deepcrate-bench" / "real-corpus" / "audio"
RUNTIMES = ("keras", "onnxruntime", "onnxruntime-int8", "openvino-as-converted", "openvino", "openvino-int8")
CHECKPOINTS = "MTT_musicnn+MSD_musicnn"


def real_slices(audio: Path, *, count: int) -> np.ndarray:
    """``count`` slices of the musicnn preset, a few from each of many files (sorted, so every run
    takes the same)."""
    from deepcrate.audio.slicing import slice_audio_file
    from deepcrate.audio.spectrogram import SpectrogramSettings
    from deepcrate.config import resolve_settings

    defaults = resolve_settings()
    settings = SpectrogramSettings.of(defaults.spectrogram)
    limits = defaults.ingest.limits
    files = sorted(p for p in audio.rglob("*") if p.suffix.lower() in (".mp3", ".ogg", ".wav", ".flac"))
    images: list[np.ndarray] = []
    for path in files[:: max(1, len(files) // max(1, count // 8))]:
        song = slice_audio_file(path.read_bytes(), name=path.name, settings=settings, limits=limits)
        for data in song.slices[:8]:
            images.append(np.frombuffer(data, np.uint8).reshape(settings.n_rows, settings.slice_frames))
        if len(images) >= count:
            break
    return np.stack(images[:count])


WORKER = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
runtime, threads, slices_file, out_file, BATCH = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
images = np.load(slices_file)
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from deepcrate.models.pretrained_runtime import Extractor, Network, export, keras_extractor
network = Network(checkpoints=%(checkpoints)r, image_shape=images.shape[1:], level_range=8.0)
if runtime in ("keras", "openvino", "openvino-as-converted"):
    payload = export(network, runtime=runtime.split("-")[0], unfold_time=runtime == "openvino")
    extractor = Extractor(payload, threads=threads)
    run = lambda batch: extractor(batch, batch_size=BATCH)
elif runtime == "openvino-int8":
    import io, tarfile, tempfile
    import nncf, openvino as ov
    with tempfile.TemporaryDirectory() as tmp:
        tarfile.open(fileobj=io.BytesIO(export(network, runtime="openvino"))).extractall(tmp, filter="data")
        model = ov.Core().read_model(os.path.join(tmp, "extractor.xml"))
    calibration = nncf.Dataset([images[i:i + 16] for i in range(0, len(images), 16)])
    quantized = nncf.quantize(model, calibration, subset_size=len(images))
    compiled = ov.Core().compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": "NO",
                                                          "INFERENCE_NUM_THREADS": str(threads)})
    run = lambda batch: np.concatenate([np.asarray(compiled(batch[i:i + BATCH])[0], np.float32)
                                        for i in range(0, len(batch), BATCH)])
else:
    import onnxruntime as ort
    import tf2onnx
    model = keras_extractor(network)
    spec = (tf.TensorSpec((None, *images.shape[1:]), tf.uint8, name="slice"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    data = proto.SerializeToString()
    if runtime == "onnxruntime-int8":
        import tempfile
        from onnxruntime.quantization import QuantType, quantize_dynamic
        with tempfile.TemporaryDirectory() as tmp:
            open(os.path.join(tmp, "f.onnx"), "wb").write(data)
            quantize_dynamic(os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx"), weight_type=QuantType.QInt8)
            data = open(os.path.join(tmp, "q.onnx"), "rb").read()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda batch: np.concatenate([session.run(None, {name: batch[i:i + BATCH]})[0]
                                        for i in range(0, len(batch), BATCH)])
run(images[:BATCH])  # warm-up: graph compilation, first allocations
started = time.perf_counter()
features = run(images)
seconds = time.perf_counter() - started
np.save(out_file, np.asarray(features, np.float32))
print(json.dumps({"seconds": seconds, "slices_per_s": len(images) / seconds}))
"""


def measure(runtime: str, threads: int, slices_file: Path, out_file: Path, *, batch: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", WORKER % {"checkpoints": CHECKPOINTS}, runtime, str(threads),
                           str(slices_file), str(out_file), str(batch)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=CORPUS)
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64, help="slices a call (the features stage: features.batch_size)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pretrained_runtime.json")
    args = parser.parse_args(argv)
    work = Path.home() / ".cache" / "deepcrate-bench" / "pretrained-runtime"
    work.mkdir(parents=True, exist_ok=True)
    images = real_slices(args.audio, count=args.slices)
    slices_file = work / "slices.npy"
    np.save(slices_file, images)
    print(f"{len(images)} slices of {args.audio}", flush=True)
    results: dict = {"slices": len(images), "audio": str(args.audio), "checkpoints": CHECKPOINTS,
                     "batch": args.batch, "runs": {}}
    for threads in args.threads:
        reference = None
        for runtime in ["keras", *(r for r in args.runtimes if r != "keras")]:
            out_file = work / f"{runtime}-{threads}.npy"
            result = measure(runtime, threads, slices_file, out_file, batch=args.batch)
            if "error" not in result:
                features = np.load(out_file)
                if runtime == "keras":
                    reference = features
                    stored = features.astype(np.float16).astype(np.float32)
                    result["float16_min_cosine"] = float(cosines(features, stored).min())
                elif reference is not None:
                    result["min_cosine"] = float(cosines(reference, features).min())
                    result["max_abs_difference"] = float(np.abs(reference - features).max())
                    result["vs_keras"] = results["runs"][f"keras-{threads}"]["seconds"] / result["seconds"]
            results["runs"][f"{runtime}-{threads}"] = result
            shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}
            print(f"{runtime:17s} {threads} thread(s): {shown}", flush=True)
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
