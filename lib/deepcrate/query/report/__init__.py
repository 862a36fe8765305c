"""``deepcrate report``: the catalogue as one self-contained HTML page to look at and listen to.

The page holds a map of the song embeddings (every song a point, coloured by genre;
hover names it, a click plays it and lists its recommendations, each playable), how good
the recommendations are (the ``evaluation`` table, the confusion matrix, the training
curves), and the catalogue itself (genres and splits, durations, rejects, the runs that
wrote the warehouse). It needs no server, no CDN and no Spark: pyarrow reads the tables,
the page's own script draws the map on a canvas from compactly embedded arrays
(about 150 bytes a song with 10 recommendations), so 100,000 songs stay under 20 MB.

Whatever the warehouse lacks (embeddings, an evaluation, a model, audio files that
moved) the page says, instead of failing.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from deepcrate.errors import InputError, WarehouseError
from deepcrate.query.report.html import render_report
from deepcrate.query.report.page import ReportPage, read_report_page

__all__ = ["ReportPage", "ReportSummary", "read_report_page", "render_report", "write_report"]


@dataclass
class ReportSummary:
    path: str
    songs: int
    projection: str
    size_bytes: int
    missing: list[str]

    def lines(self) -> list[str]:
        lines = [f"report written: {self.path} ({self.songs} songs, {self.size_bytes / 1e6:.1f} MB"
                 + (f"; map: {self.projection})" if self.projection else ")")]
        lines += [f"  not shown: {reason}" for reason in self.missing]
        return lines


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_report(warehouse: str, *, out: str, audio_base: str | None = None, projection: str = "auto") -> ReportSummary:
    """Write the report of ``warehouse`` to the local file ``out`` (replaced whole, never half-written).

    Parameters
    ----------
    warehouse : str
        A local warehouse folder (or ``file:`` URI).
    out : str
        The HTML file to write; audio links are relative to its folder unless ``audio_base`` is given.
    audio_base : str, optional
        A URL or path under which the audio folder's files are found (the songs' common folder
        is replaced by it), for a report served beside the music.
    projection : str
        ``auto``, ``umap``, ``tsne`` or ``pca`` (:func:`deepcrate.vectors.projection.project`).
    """
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.isdir(out):
        raise WarehouseError(f"report {out}: is a folder; give the HTML file to write")
    try:  # the place is tried before the page is built (a projection can take minutes)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        draft = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(out), prefix=".report-",  # noqa: SIM115 (closed below, after the page is built)
                                            suffix=".html", delete=False)
    except OSError as exc:
        raise InputError(f"report {out}: cannot be written there ({exc.strerror})") from None
    try:
        with draft:
            page = read_report_page(warehouse, out_dir=os.path.dirname(out), audio_base=audio_base,
                                    projection=projection)
            text = render_report(page)
            draft.write(text)
        os.chmod(draft.name, 0o666 & ~_umask())  # a page for people: the mode any program's output gets
        os.replace(draft.name, out)
    except OSError as exc:
        raise InputError(f"report {out}: cannot be written there ({exc.strerror})") from None
    finally:
        if os.path.exists(draft.name):
            os.unlink(draft.name)
    return ReportSummary(path=out, songs=len(page.songs), projection=page.projection,
                         size_bytes=len(text.encode("utf-8")), missing=page.missing)
