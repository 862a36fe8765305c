# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring a deepcrate warehouse
#
# What the rebuild produced: the spectrogram slices the network sees, how well it
# tells the genres apart, how the songs lie in its embedding space, and what it
# recommends (with players, to listen for yourself).
#
# Point `DEEPCRATE_WAREHOUSE` at a warehouse before starting Jupyter; the default is
# the one `make demo` writes. This file is the notebook's source (jupytext pairs it
# with `explore.ipynb`): edit either, and `jupytext --sync notebooks/explore.py`.

# %%
import json
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Audio, Markdown, display

from deepcrate.config import resolve_settings
from deepcrate.models.store import latest_model, read_model_folder
from deepcrate.spark.session import spark_session
from deepcrate.storage.warehouse import Warehouse
from deepcrate.uris import local_path

WAREHOUSE = os.environ.get("DEEPCRATE_WAREHOUSE", "../demo/warehouse")
spark = spark_session(resolve_settings(overrides=["spark.master=local[2]", "spark.log_level=ERROR"]).spark)
store = Warehouse(spark, WAREHOUSE)
print("tables:", ", ".join(store.register()))

# %% [markdown]
# ## The catalogue
# Songs per genre and split (unlabelled songs have no genre), and why files were rejected.

# %%
songs = spark.sql("SELECT coalesce(genre, '(unlabelled)') AS genre, split, count(*) AS songs "
                  "FROM songs GROUP BY 1, 2").toPandas()
display(songs.pivot(index="genre", columns="split", values="songs").fillna(0).astype(int))
display(spark.sql("SELECT reason, count(*) AS files FROM rejects GROUP BY reason ORDER BY files DESC").toPandas())

# %% [markdown]
# ## Spectrogram slices, per genre
# Each slice is one image of the spectrogram preset (musicnn: 96 mel bands x 187 columns of 16 ms, 2.99 s; seed: 256 x 256 columns of 20 ms, 5.12 s); row 0 is the highest frequency.

# %%
settings = store.metadata("slices").spectrogram
examples = spark.sql("""
    SELECT genre, song_id, slice_idx, spectrogram FROM (
        SELECT *, row_number() OVER (PARTITION BY genre ORDER BY song_id, slice_idx) AS n
        FROM slices WHERE genre IS NOT NULL)
    WHERE n <= 3 ORDER BY genre, n""").toPandas()
genres = sorted(examples["genre"].unique())
fig, axes = plt.subplots(len(genres), 3, figsize=(9, 2.2 * len(genres)), squeeze=False)
for row, genre in enumerate(genres):
    images = examples[examples["genre"] == genre]
    for col in range(3):
        axis = axes[row][col]
        axis.set_xticks([])
        axis.set_yticks([])
        if col < len(images):
            image = np.frombuffer(images["spectrogram"].iloc[col], np.uint8)
            axis.imshow(image.reshape(settings.n_rows, settings.slice_frames), cmap="gray", aspect="auto")
            axis.set_title(f"{genre} {images['song_id'].iloc[col][:8]} #{images['slice_idx'].iloc[col]}", fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## How good are the recommendations, and how well the model tells the genres apart
# Each test-split song asks for its 10 nearest songs: the share of the same genre
# (precision@10), for the model's embeddings and for three baselines (MFCC statistics,
# the timbre Gaussian, random songs), beside the ideal row: what a perfect ranking
# scores with these labels. Song accuracy: the model's genre vote (sum of its slices'
# probabilities).

# %%
display(spark.sql("""
    SELECT method, round(song_accuracy, 3) AS song_accuracy, round(precision_at_5, 3) AS p_at_5,
           round(precision_at_10, 3) AS p_at_10, round(map_at_10, 3) AS map_at_10
    FROM evaluation WHERE genre IS NULL ORDER BY method""").toPandas())
display(spark.sql("""
    SELECT genre, songs, slices, song_accuracy, slice_accuracy, most_confused_with, precision_at_10
    FROM evaluation WHERE method = 'model' ORDER BY genre NULLS FIRST""").toPandas())
model = read_model_folder(latest_model(store))
with open(os.path.join(model.path, "metrics.json"), encoding="utf-8") as stream:
    metrics = json.load(stream)
matrix = np.array(metrics["confusion"]["matrix"])
fig, axis = plt.subplots(figsize=(5, 4.5))
axis.imshow(matrix, cmap="Blues")
axis.set_xticks(range(len(model.labels)), model.labels, rotation=60, ha="right")
axis.set_yticks(range(len(model.labels)), model.labels)
axis.set_xlabel("predicted genre")
axis.set_ylabel("true genre")
for (i, j), count in np.ndenumerate(matrix):
    axis.text(j, i, int(count), ha="center", va="center", fontsize=8)
axis.set_title(f"model {model.version}")
fig.tight_layout()

# %% [markdown]
# ## The songs in embedding space
# The 128-d song vectors projected on their first two principal components.

# %%
vectors = spark.sql("""
    SELECT e.song_id, e.embedding, coalesce(s.genre, concat(e.predicted_genre, ' (predicted)')) AS genre
    FROM song_embeddings e JOIN songs s USING (song_id)""").toPandas()
points = np.stack(vectors["embedding"].to_numpy()).astype(np.float64)
points -= points.mean(axis=0)
_, _, components = np.linalg.svd(points, full_matrices=False)
xy = points @ components[:2].T
fig, axis = plt.subplots(figsize=(7, 5))
for genre in sorted(vectors["genre"].unique()):
    mask = (vectors["genre"] == genre).to_numpy()
    axis.scatter(xy[mask, 0], xy[mask, 1], s=14, label=genre)
axis.legend(fontsize=7, loc="best")
axis.set_title("song embeddings, PCA")
fig.tight_layout()

# %% [markdown]
# ## Recommendations, to listen to
# For one song of a few genres: the song, then its nearest neighbours.

# %%
seeds = spark.sql("""
    SELECT song_id FROM (SELECT song_id, row_number() OVER (PARTITION BY genre ORDER BY song_id) AS n
                         FROM songs WHERE genre IS NOT NULL)
    WHERE n = 1 ORDER BY song_id LIMIT 3""").toPandas()["song_id"]
for seed in seeds:
    rows = spark.sql(f"""
        SELECT r.rank, r.neighbor_id, round(r.similarity, 3) AS similarity, s.genre, s.title, s.path
        FROM recommendations r JOIN songs s ON s.song_id = r.neighbor_id
        WHERE r.song_id = '{seed}' ORDER BY r.rank LIMIT 3""").toPandas()
    song = spark.sql(f"SELECT genre, title, path FROM songs WHERE song_id = '{seed}'").first()
    display(Markdown(f"### {song['title'] or seed} ({song['genre']})"))
    display(Audio(filename=local_path(song["path"])))
    display(rows.drop(columns="path"))
    for path in rows["path"]:
        display(Audio(filename=local_path(path)))
