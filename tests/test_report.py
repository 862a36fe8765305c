"""`deepcrate report`: the page's data checked against the tables it came from, bad input, 100k
songs under 20 MB, and the page driven in a real headless Chromium."""
import base64
import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from deepcrate.cli import main
from deepcrate.query.report import ReportPage, render_report
from deepcrate.vectors.projection import choose_method, project, umap_installed

from helpers import delta_table

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
HOSTILE = ['<script>window.pwned = 1</script>', 'Rock & "Roll" </script><b>', "<img src=x onerror=window.pwned=2>"]


class _Page(HTMLParser):
    """The tags and the map's data of a report, as a browser's parser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.cells: dict[tuple[str, str, str], str] = {}
        self._script: dict | None = None
        self._cell: tuple[str, str, str] | None = None
        self.tags: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "script":
            self._script = {"attrs": attrs, "text": ""}
        if tag == "td" and "data-metric" in attrs:
            self._cell = (attrs["data-method"], attrs["data-genre"], attrs["data-metric"])

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append(self._script)
            self._script = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._script is not None:
            self._script["text"] += data
        if self._cell is not None:
            self.cells[self._cell] = self.cells.get(self._cell, "") + data

    @property
    def data(self) -> dict:
        return json.loads(next(s["text"] for s in self.scripts if s["attrs"].get("id") == "report-data"))


def _decode(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def _synthetic_page(songs: int, *, k: int = 10, seed: int = 0) -> tuple[ReportPage, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    genres = [f"genre{g}" for g in range(12)]
    frame = pd.DataFrame({
        "song_id": [f"{i:016x}" for i in range(songs)],
        "artist": [f"Artist {i % 5000}" for i in range(songs)],
        "title": [f"Song number {i}" for i in range(songs)],
        "genre": [genres[i % len(genres)] for i in range(songs)],
        "split": rng.choice(["train", "validation", "test"], size=songs, p=[0.7, 0.15, 0.15]),
        "duration_s": rng.uniform(30, 400, size=songs),
        "predicted_genre": [genres[(i + (i % 7 == 0)) % len(genres)] for i in range(songs)],
        "tempo_bpm": rng.uniform(70, 180, size=songs).round(1),
        "tempo_confidence": rng.uniform(0.2, 1, size=songs),
        "key": [("A minor", "C major", "F# minor")[i % 3] for i in range(songs)],
        "camelot": [("8A", "8B", "11A")[i % 3] for i in range(songs)],
        "key_confidence": rng.uniform(0.4, 1, size=songs),
        "url": [f"../audio/genre{i % 12}/artist {i % 5000}/song number {i}.mp3" for i in range(songs)],
        "found": np.ones(songs, dtype=bool),
    })
    neighbours = rng.integers(0, songs, size=(songs, k), dtype=np.int32)
    similarity = np.sort(rng.uniform(0.5, 1.0, size=(songs, k)), axis=1)[:, ::-1]
    page = ReportPage(warehouse="file:/catalogue/wh", songs=frame, points=rng.uniform(size=(songs, 2)),
                      projection="PCA (first two components)", neighbours=neighbours, similarity=similarity)
    return page, neighbours, similarity


# -- the map's projection ---------------------------------------------------------------------
@pytest.mark.unit
def test_the_projection_keeps_clusters_apart_and_is_repeatable():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 32)) * 5
    vectors = np.concatenate([centres[0] + rng.normal(size=(40, 32)), centres[1] + rng.normal(size=(40, 32))])
    points, name = project(vectors, method="pca")
    assert name.startswith("PCA") and points.shape == (80, 2)
    assert points.min() >= 0 and points.max() <= 1
    first, second = points[:40].mean(axis=0), points[40:].mean(axis=0)
    spread = max(points[:40].std(axis=0).max(), points[40:].std(axis=0).max())
    assert np.linalg.norm(first - second) > 4 * spread  # two clusters, two separate clouds
    assert np.array_equal(points, project(vectors, method="pca")[0])
    tsne, name = project(vectors, method="tsne")
    assert name.startswith("t-SNE")
    assert np.linalg.norm(tsne[:40].mean(axis=0) - tsne[40:].mean(axis=0)) > 0.3


@pytest.mark.unit
def test_auto_projection_falls_back_by_size():
    assert choose_method("auto", songs=10) == "pca"  # too few points for neighbourhoods
    assert choose_method("pca", songs=500) == "pca"
    assert choose_method("auto", songs=500) == ("umap" if umap_installed() else "tsne")
    if not umap_installed():
        assert choose_method("auto", songs=50_000) == "pca"
    with pytest.raises(Exception, match="choose one of"):
        choose_method("mds", songs=100)


# -- the page, from data --------------------------------------------------------------------
@pytest.mark.unit
def test_titles_that_look_like_html_stay_text():
    page, _, _ = _synthetic_page(30)
    page.songs.loc[:2, "title"] = HOSTILE
    page.songs.loc[3, "artist"] = HOSTILE[1]
    page.songs.loc[4, "genre"] = "<i>genre</i> & co"
    page.missing = ['a "reason" with <tags>']
    text = render_report(page)
    parsed = _Page(text)
    assert len(parsed.scripts) == 2  # the data and our script: nothing from the catalogue became a script
    assert "img" not in parsed.tags and "i" not in parsed.tags
    data = parsed.data
    assert data["titles"][:3] == HOSTILE and data["artists"][3] == HOSTILE[1]  # shown literally, not lost
    assert "<i>genre</i> & co" in data["genres"] and "&lt;i&gt;genre&lt;/i&gt; &amp; co" in text
    assert "a &quot;reason&quot; with &lt;tags&gt;" in text


@pytest.mark.unit
def test_a_catalogue_of_100k_songs_stays_under_20_mb_and_round_trips():
    page, neighbours, similarity = _synthetic_page(100_000)
    text = render_report(page)
    assert len(text.encode("utf-8")) < 20e6
    data = _Page(text).data
    assert data["count"] == 100_000 and data["k"] == 10
    assert np.array_equal(_decode(data["neighbours"], "<i4").reshape(-1, 10), neighbours)
    assert np.allclose(_decode(data["similarity"], "<i2").reshape(-1, 10) / 10000, similarity, atol=5e-5)
    x = _decode(data["x"], "<u2") / 65534
    assert np.allclose(x, page.points[:, 0], atol=1e-4)
    urls = [data["folders"][f] + name for f, name in zip(data["folder"], data["files"])]
    assert urls == page.songs["url"].tolist()


# -- the page of a real warehouse ----------------------------------------------------------------
@pytest.fixture(scope="module")
def report(rebuilt, tmp_path_factory):
    """`deepcrate report` of the rebuilt demo warehouse, with the map drawn by PCA."""
    root = rebuilt[0]
    out = tmp_path_factory.mktemp("report") / "pages" / "report.html"
    assert main(["report", "--warehouse", str(root / "wh"), "--out", str(out), "--projection", "pca"]) == 0
    return root, out


def test_the_page_gets_the_mode_the_umask_gives_like_any_programs_output(rebuilt, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        assert main(["report", "--warehouse", str(rebuilt[0] / "wh"), "--out", str(tmp_path / "r.html"),
                     "--projection", "pca"]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644  # a web server can read it
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no draft left beside it


def test_a_page_that_cannot_be_written_there_is_one_line(rebuilt, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["report", "--warehouse", str(rebuilt[0] / "wh"), "--out", str(tmp_path / "afile" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deepcrate report: error: report {tmp_path / 'afile' / 'r.html'}: cannot be written there")
    assert len(err.splitlines()) == 1


def test_the_page_holds_the_tables_numbers(report):
    root, out = report
    parsed = _Page(out.read_text(encoding="utf-8"))
    data = parsed.data
    songs = delta_table(root / "wh" / "songs").to_pandas()
    assert sorted(data["ids"]) == sorted(songs["song_id"]) and data["count"] == 35
    by_id = songs.set_index("song_id")
    assert [by_id.loc[i, "title"] for i in data["ids"]] == data["titles"]
    tempo = _decode(data["bpm"], "<u2") / 10
    expected = by_id.loc[data["ids"], "tempo_bpm"].fillna(0).to_numpy()
    assert np.allclose(tempo, expected, atol=0.051)  # tenths of a BPM; 0: no clear beat
    keys = [data["keys"][k] if k < 255 else None for k in _decode(data["key"], "u1")]
    assert keys == [f"{by_id.loc[i, 'key']} ({by_id.loc[i, 'camelot']})" if by_id.loc[i, "key"] else None
                    for i in data["ids"]]
    weak = _decode(data["weak"], "u1")  # 1: tempo confidence under 0.5, 2: key confidence under 0.6, 3: both
    assert weak.tolist() == [int(by_id.loc[i, "tempo_confidence"] < 0.5) + 2 * int(by_id.loc[i, "key_confidence"] < 0.6)
                             for i in data["ids"]]
    test_ids = set(songs.loc[songs["split"] == "test", "song_id"])
    assert {data["ids"][i] for i in data["test"]} == test_ids
    # every song's URL, relative to the page, is its file
    for i, song_id in enumerate(data["ids"]):
        url = data["folders"][data["folder"][i]] + data["files"][i]
        assert (out.parent / unquote(url)).resolve() == Path(by_id.loc[song_id, "path"][5:]).resolve()
    # the recommendations, in order, with their similarity
    recs = delta_table(root / "wh" / "recommendations").to_pandas()
    k = data["k"]
    neighbours = _decode(data["neighbours"], "<i4").reshape(-1, k)
    similarity = _decode(data["similarity"], "<i2").reshape(-1, k) / 10000
    for i, song_id in enumerate(data["ids"]):
        expected = recs[recs["song_id"] == song_id].sort_values("rank")
        assert [data["ids"][j] for j in neighbours[i] if j >= 0] == expected["neighbor_id"].tolist()
        assert np.allclose(similarity[i, :len(expected)], expected["similarity"], atol=5e-5)
    # the evaluation, cell by cell
    evaluation = delta_table(root / "wh" / "evaluation").to_pandas()
    for row in evaluation.itertuples():
        genre = "" if row.genre is None else row.genre
        for metric in ("precision_at_10", "song_accuracy") if row.genre is None else ("precision_at_10",):
            value = getattr(row, metric)
            assert parsed.cells[(row.method, genre, metric)] == ("–" if pd.isna(value) else f"{value:.3f}")
    text = out.read_text(encoding="utf-8")
    assert 'data-reason="not_audio">1<' in text and "broken.mp3" in text
    assert '<td id="song-count">35</td>' in text
    assert "PCA (first two components)" in text and 'id="missing"' not in text


def test_rebuild_writes_the_report_at_its_end(rebuilt):
    root, _, _, out = rebuilt
    page = root / "report.html"
    assert f"report written: {page}" in out
    data = _Page(page.read_text(encoding="utf-8")).data
    assert data["count"] == 35 and data["projection"] == ("UMAP (umap-learn, cosine)" if umap_installed()
                                                            else "t-SNE (scikit-learn, cosine)")


def test_what_the_warehouse_lacks_is_said_on_the_page(spark, tmp_path, capsys):
    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.config import resolve_settings
    from deepcrate.stages.ingest.job import ingest

    manifest = write_demo_catalogue(tmp_path / "audio", songs_per_genre=1, seconds=6.0, seed=2)
    ingest(spark, audio=str(tmp_path / "audio"), manifest=str(manifest), warehouse=str(tmp_path / "wh"),
           settings=resolve_settings())
    moved = min((tmp_path / "audio").rglob("*.mp3"))
    moved.rename(tmp_path / "elsewhere.mp3")
    out = tmp_path / "report.html"
    assert main(["report", "--warehouse", str(tmp_path / "wh"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not shown: no song embeddings" in printed and "not shown: no evaluation table" in printed
    parsed = _Page(out.read_text(encoding="utf-8"))
    data = parsed.data
    lost = [unquote(data["files"][i]) for i in data["lost"]]
    assert lost == [moved.name]
    assert "x" not in data and data["k"] == 0
    text = out.read_text(encoding="utf-8")
    assert f"1 songs&#x27; audio files are not where the catalogue says (moved or deleted?), so they cannot be " \
           f"played: {html.escape(str(moved))}" in text
    assert "No song embeddings yet" in text and "No evaluation yet" in text

    assert main(["report", "--warehouse", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", "--warehouse", str(tmp_path / "wh"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------------
def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium here (make test installs Debian's chromium and chromium-driver where it can); "
                    "the DOM-level tests above still check the page")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _severe(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
            and not re.search(r"\.mp3|favicon", entry["message"])]


def test_the_report_in_a_browser(report, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, out = report
    browser.get(out.as_uri())
    assert _severe(browser) == []
    songs = delta_table(root / "wh" / "songs").to_pandas()
    canvas = browser.find_element(By.ID, "map")
    assert canvas.get_attribute("data-points") == str(len(songs))  # one point per song
    # click the song drawn farthest from any other, where it is drawn
    positions = browser.execute_script("return Array.from({length: deepcrate.count}, (_, i) => deepcrate.position(i))")
    xy = np.array([[p["x"], p["y"]] for p in positions])
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e9
    target = int(gaps.min(axis=1).argmax())
    song_id = browser.execute_script(f"return JSON.parse(document.getElementById('report-data').textContent)"
                                     f".ids[{target}]")
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(
        canvas, int(xy[target, 0] - size["width"] / 2), int(xy[target, 1] - size["height"] / 2)).perform()
    assert browser.find_element(By.ID, "tooltip").is_displayed()
    ActionChains(browser).click().perform()
    WebDriverWait(browser, 5).until(
        lambda d: d.find_element(By.ID, "song").get_attribute("data-song-id") == song_id)
    shown = [li.get_attribute("data-song-id") for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li")]
    recs = delta_table(root / "wh" / "recommendations").to_pandas()
    assert shown == recs[recs["song_id"] == song_id].sort_values("rank")["neighbor_id"].tolist()
    song = songs.set_index("song_id").loc[song_id]
    assert browser.find_element(By.ID, "song-title").text == song["title"]
    # its tempo and key as the table has them, a weak one marked so
    musical = ", ".join(
        ([] if pd.isna(song["tempo_bpm"]) else
         [f"{song['tempo_bpm']:.1f} BPM{' (weak)' if song['tempo_confidence'] < 0.5 else ''}"])
        + ([f"{song['key']} ({song['camelot']}){' (weak)' if song['key_confidence'] < 0.6 else ''}"] if song["key"] else []))
    assert musical in browser.find_element(By.CSS_SELECTOR, "#song .facts").text.split(" · ")
    # a recommendation's play button plays that song's file
    browser.find_element(By.CSS_SELECTOR, "#recommendations li .play").click()
    src = browser.execute_script("return document.getElementById('player').src")
    assert src.endswith(".mp3") and src.startswith("file://")
    # the search finds a song by its title, and selects it
    other = songs[songs["song_id"] != song_id].iloc[0]
    box = browser.find_element(By.ID, "search")
    box.send_keys(other["title"])
    found = [li.get_attribute("data-song-id") for li in browser.find_elements(By.CSS_SELECTOR, "#search-results li")]
    assert other["song_id"] in found
    browser.find_element(By.CSS_SELECTOR, f"#search-results li[data-song-id='{other['song_id']}'] a").click()
    assert browser.find_element(By.ID, "song").get_attribute("data-song-id") == other["song_id"]
    # the evaluation as the page shows it
    evaluation = delta_table(root / "wh" / "evaluation").to_pandas()
    model = evaluation[(evaluation["method"] == "model") & evaluation["genre"].isna()].iloc[0]
    cell = browser.find_element(By.CSS_SELECTOR, "#evaluation td[data-method='model'][data-metric='precision_at_10']")
    assert cell.text == f"{model['precision_at_10']:.3f}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    assert _severe(browser) == []


def test_hostile_titles_do_not_run_in_a_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page, _, _ = _synthetic_page(40)
    page.songs.loc[:2, "title"] = HOSTILE
    out = tmp_path / "report.html"
    out.write_text(render_report(page), encoding="utf-8")
    browser.get(out.as_uri())
    assert _severe(browser) == []
    browser.execute_script("deepcrate.select(0)")
    assert browser.find_element(By.ID, "song-title").text == HOSTILE[0]
    browser.find_element(By.ID, "search").send_keys("onerror")
    assert browser.find_element(By.CSS_SELECTOR, "#search-results li").text.startswith(HOSTILE[2])
    assert browser.execute_script("return window.pwned") is None


def test_a_weak_tempo_or_key_is_marked_on_the_page(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page, _, _ = _synthetic_page(40)  # confidences drawn across the weak thresholds
    out = tmp_path / "report.html"
    out.write_text(render_report(page), encoding="utf-8")
    browser.get(out.as_uri())
    songs = page.songs
    weak_tempi = songs["tempo_confidence"] < 0.5
    assert 0 < weak_tempi.sum() < len(songs) and 0 < (songs["key_confidence"] < 0.6).sum() < len(songs)
    for i, song in songs.iterrows():
        browser.execute_script(f"deepcrate.select({i})")
        facts = browser.find_element(By.CSS_SELECTOR, "#song .facts").text.split(" · ")
        assert (f"{song['tempo_bpm']:.1f} BPM{' (weak)' if song['tempo_confidence'] < 0.5 else ''}, {song['key']} "
                f"({song['camelot']}){' (weak)' if song['key_confidence'] < 0.6 else ''}") in facts, i
    assert _severe(browser) == []
