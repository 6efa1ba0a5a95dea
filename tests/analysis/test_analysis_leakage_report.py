"""A real sweep whose training set holds copies of test examples: leakage finds them; the report renders."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import invoke

from orchestrator.api import run_sweep
from orchestrator.spec import parse_spec
from regression.config import SolverConfig
from regression.fit import fit_datamodels
from workers.recipes.digits_mlp import digits_split

N_TRAIN, N_TEST, N_LEAK = 200, 60, 5
FAST = SolverConfig(n_alphas=25, eps=1e-3, lr="auto", batch_size=200)


def atypical_test_examples(n: int) -> list[int]:
    """Test examples farthest from their own class relative to other classes (a copy of them matters most).

    A duplicate of an easy test example barely changes any model, so it leaves
    no trace in any datamodel; leakage matters, and is detectable, for atypical
    examples.
    """
    data = digits_split(0)
    x_train, y_train = data.x_train[:N_TRAIN], data.y_train[:N_TRAIN]
    x_test, y_test = data.x_test[:N_TEST], data.y_test[:N_TEST]
    d = ((x_test[:, None] - x_train[None]) ** 2).sum(-1)
    same = np.where(y_test[:, None] == y_train[None], d, np.inf).min(1)
    other = np.where(y_test[:, None] != y_train[None], d, np.inf).min(1)
    return np.argsort(-(same / other), kind="stable")[:n].tolist()


@pytest.fixture(scope="module")
def leaky(ray_session, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    leak = atypical_test_examples(N_LEAK)
    path = tmp_path_factory.mktemp("leaky") / "leaky.zarr"
    spec = parse_spec({
        "store": str(path),
        "recipe": {"name": "tests.analysis.leaky_recipe:LeakyDigits",
                   "params": {"n_train": N_TRAIN, "n_test": N_TEST, "leak": leak, "epochs": 40, "hidden": 32,
                              "lr": 0.02}},
        "alpha": 0.5, "num_models": 512, "block": 64,
    })
    assert run_sweep(spec, progress=False).done
    fit_datamodels(path, name="leaky", rows=slice(0, 448), config=FAST)  # rows 448..511 are held out
    return path, [(N_TRAIN + i, t) for i, t in enumerate(leak)]


def test_leakage_ranks_the_planted_duplicates_first(leaky, tmp_path: Path) -> None:
    path, planted = leaky
    result = invoke("analyze", "leakage", path, "--top", "10", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    pairs = json.loads(result.stdout)["pairs"]
    assert {(p["train_index"], p["target"]) for p in pairs[:N_LEAK]} == set(planted)
    for p in pairs[:N_LEAK]:
        assert p["distance"] == 0.0 and p["distance_rank"] == 0 and p["train_label"] == p["target_label"]
    assert all(p["distance"] > 0 for p in pairs[N_LEAK:])
    figure = tmp_path / "leakage_pairs.png"
    assert figure.read_bytes().startswith(b"\x89PNG") and (tmp_path / "leakage.json").is_file()


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("src", "href"):
            if values.get(key) and not str(values[key]).startswith("data:"):
                self.external.append(str(values[key]))


def test_report_is_self_contained_html(leaky, tmp_path: Path) -> None:
    path, _ = leaky
    curve = invoke("analyze", "lds-curve", path, "--points", "128", "--out", tmp_path / "curve", "--json")
    assert curve.exit_code == 0, curve.stderr
    points = json.loads(curve.stdout)["points"]
    assert [p["n_models"] for p in points] == [128, 448]
    assert points[1]["lds"] > points[0]["lds"] > 0  # more models, better datamodels
    out = tmp_path / "report" / "leaky.html"
    result = invoke("report", path, "--out", out, "--lds-curve", "stored", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["notes"] == []
    assert data["sections"] == ["Sweep", "Datamodels", "LDS curve", "Brittleness", "Nearest training examples",
                                "Train–test leakage", "Datamodel embeddings"]
    parser = _Images()
    parser.feed(out.read_text(encoding="utf-8"))
    parser.close()
    assert parser.external == [] and "script" not in parser.tags
    assert len(parser.images) == data["images"] >= 7
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix):], validate=True)
        assert png.startswith(b"\x89PNG") and len(png) > 1000
