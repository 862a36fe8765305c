"""deepcrate: content-based music recommendations as a Spark batch job."""
from pathlib import Path

from setuptools import find_packages, setup

# Pinned to a set that installs together on Python 3.11 (see ../shared/FIELD-NOTES.md).
# TensorFlow lives in extras: a CPU machine takes `cpu`, a GPU node takes `gpu`;
# installing both would put two TensorFlow builds into one environment.
TENSORFLOW = "2.21.0"

setup(
    name="deepcrate",
    version="0.1.0",
    description="Content-based music recommender: MP3s -> spectrogram slices -> CNN "
    "embeddings -> FAISS cosine neighbours, as Spark batch jobs.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"deepcrate": ["local.yaml"], "deepcrate.query": ["spark_functions.json"], "deepcrate.query.report": ["assets/*"]},  # local.yaml: the defaults, a link to conf/local.yaml
    install_requires=[
        "pyspark==4.3.0",
        "numpy==2.4.6",
        "pandas==2.3.3",  # pyspark 4.3 warns on every call with pandas 3
        "pyarrow==26.0.1",
        "deltalake==1.6.6",  # delta-rs: the tables' Delta logs, no JVM jars
        "librosa==0.11.0",
        "soundfile==0.14.0",
        "soxr==1.1.0",
        "faiss-cpu==1.15.1",
        "pyyaml==6.0.3",
        "scipy==1.17.1",
        "matplotlib==3.11.2",  # evaluation plots (PNG, no display needed)
        "scikit-learn==1.9.1",  # the logistic regression on MFCC statistics (evaluate's baseline)
        "threadpoolctl==3.8.0",  # one BLAS thread per head while training heads side by side
        "openvino==2026.4.1",  # the features stage runs the pretrained networks on it (~3x Keras per core)
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]=={TENSORFLOW}"],
        "notebook": ["jupytext==1.19.6", "ipykernel==7.4.0"],
        "report": ["umap-learn==0.5.12"],  # the report's map; without it t-SNE or PCA draws it
        "test": ["pytest==9.2.0", "ruff==0.17.6", "import-linter==2.17", "jupytext==1.19.6", "ipykernel==7.4.0", "nbclient==0.11.0",
                 "nbformat==5.11.1", "selenium==4.51.0"],  # selenium: the report's browser tests
        "bench": ["tf2onnx==1.17.0", "onnxruntime==1.31.1"],  # bench/pretrained_runtime.py's other runtimes
    },
    entry_points={"console_scripts": ["deepcrate=deepcrate.cli:main"]},
)
