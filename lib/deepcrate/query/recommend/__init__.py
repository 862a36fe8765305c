"""The user-facing query: songs that sound like one or more seeds, with filters; playlists; why a song.

Runs without Spark (pyarrow reads the tables, FAISS answers), so a query takes a
second or two; ``--file`` adds TensorFlow to embed a song that is not in the catalogue.

:mod:`.catalogue` (the warehouse opened for queries, seeds, filters, the nearest songs),
:mod:`.explain` (why each song: the passages that match, what they share; the printed results)
and :mod:`.playlist` (from one song to another).
"""
from deepcrate.query.recommend.catalogue import Catalogue, Filters, Mixable, Seed, parse_date
from deepcrate.query.recommend.explain import explain, write_results
from deepcrate.query.recommend.playlist import playlist, write_playlist

__all__ = ["Catalogue", "Filters", "Mixable", "Seed", "explain", "parse_date", "playlist", "write_playlist",
           "write_results"]
