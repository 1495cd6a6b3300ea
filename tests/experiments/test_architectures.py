"""experiment architectures: resumable runs over (architecture, seed), the verdict table."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.experiments import architectures as arch
from hessian_spectra.experiments import main
from hessian_spectra.experiments.architectures import zoo
from hessian_spectra.experiments.compare_methods.config import CompareConfig

# a cheap compare-methods configuration for an operator of n = 92
SMALL = CompareConfig(
    k=4,
    sketch_sizes=(10, 20),
    trace_matvecs=12,
    density_steps=20,
    plain_steps=20,
    probe_compare=20,
    power_max_iter=30,
)


def _tiny(seed: int) -> zoo.Problem:
    """A 6-10-2 tanh MLP on 40 random points, float64: n = 92."""
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    metrics = {"train_accuracy": 0.5, "test_accuracy": 0.5 + 0.1 * seed}
    return zoo.Problem(model.eval(), (x, y), nn.CrossEntropyLoss(), None, metrics, "tiny MLP")


@pytest.fixture
def tiny_zoo(monkeypatch):
    calls = []

    def build(seed):
        calls.append(seed)
        return _tiny(seed)

    monkeypatch.setitem(zoo.ARCHITECTURES, "tiny", build)
    return calls


def test_runs_are_written_resumed_and_redone_when_settings_change(tiny_zoo, tmp_path):
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0, 1), compare=SMALL)
    summary = arch.run(cfg, tmp_path, plots=False)
    assert tiny_zoo == [0, 1]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "tiny-seed0.json",
        "tiny-seed1.json",
    ]
    # the reference is exact: the dense Hessian's top eigenvalue
    rec = json.loads((tmp_path / "runs" / "tiny-seed1.json").read_text())
    p = _tiny(1)
    op = hs.HessianOperator(p.model, p.criterion, p.data)
    dense = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    assert rec["reference"]["max"] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), 1e-10)
    assert rec["problem"]["seed"] == 1 and rec["config"]["seed"] == 1
    # a second call reuses both runs
    again = arch.run(cfg, tmp_path, plots=False)
    assert tiny_zoo == [0, 1]
    assert again["claims"] == summary["claims"]
    # other settings: the runs are redone
    arch.run(
        arch.ArchitecturesConfig(("tiny",), (0, 1), CompareConfig(**{**SMALL.__dict__, "k": 3})),
        tmp_path,
        plots=False,
    )
    assert tiny_zoo == [0, 1, 0, 1]


def test_summary_counts_each_claims_verdicts_over_seeds(tiny_zoo, tmp_path):
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0, 1, 2), compare=SMALL)
    summary = arch.run(cfg, tmp_path, plots=True)
    assert (tmp_path / "architectures-methods.png").is_file()
    # the figure's data beside it, not over the summary of the same folder
    drawn = json.loads((tmp_path / "architectures-methods.json").read_text())
    assert drawn["figure"] == "architectures-methods.png" and drawn["architectures"] == ["tiny"]
    assert json.loads((tmp_path / "architectures.json").read_text())["num_runs"] == 3
    runs = [json.loads((tmp_path / "runs" / f"tiny-seed{s}.json").read_text()) for s in range(3)]
    for key, entry in summary["claims"].items():
        counts = entry["by"]["tiny"]
        assert sum(counts.values()) == 3
        for verdict, c in counts.items():
            assert c == sum(
                1
                for r in runs
                for cl in r["claims"]
                if cl["key"] == key and cl["verdict"] == verdict
            )
        # and the numbers each seed's verdict rests on, as the run wrote them
        assert entry["numbers"]["tiny"] == [
            {"seed": s, "verdict": cl["verdict"], "numbers": cl["numbers"]}
            for s, r in enumerate(runs)
            for cl in r["claims"]
            if cl["key"] == key
        ]
    acc = summary["architectures"]["tiny"]["test_accuracy"]
    assert (acc["min"], acc["median"], acc["max"]) == pytest.approx((0.5, 0.6, 0.7))
    hvps = [r["methods"]["lanczos"]["num_matvecs"] for r in runs]
    assert summary["architectures"]["tiny"]["lanczos_hvps"]["median"] == np.median(hvps)


def test_verdict_cells_and_table():
    assert arch.verdict_cell({"holds": 5, "holds partly": 0, "does not hold": 0}) == "holds 5/5"
    cell = arch.verdict_cell({"holds": 3, "holds partly": 2, "does not hold": 0})
    assert cell == "3 holds, 2 partly"
    summary = {
        "architectures": {"a": {}, "b": {}},
        "claims": {"c1": {"source": "study", "by": {"a": {"holds": 1, "does not hold": 1}}}},
    }
    table = arch.claims_table(summary)
    assert "| `c1` (study) | 1 holds, 1 not | - |" in table


def test_summarize_only_trains_nothing_and_covers_the_finished_runs(tiny_zoo, tmp_path):
    arch.run(arch.ArchitecturesConfig(("tiny",), (0,), SMALL), tmp_path, plots=False)
    # seed 1 is not finished (another process may still be running it)
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0, 1), compare=SMALL)
    summary = arch.run(cfg, tmp_path, plots=False, new_runs=False)
    assert tiny_zoo == [0]
    assert summary["num_runs"] == 1 and summary["architectures"]["tiny"]["seeds"] == [0]
    with pytest.raises(ValueError, match="no finished run"):
        arch.run(arch.ArchitecturesConfig(("tiny",), (5,), SMALL), tmp_path, new_runs=False)


def test_summary_judges_every_run_by_the_current_rules(tiny_zoo, tmp_path):
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0,), compare=SMALL)
    first = arch.run(cfg, tmp_path, plots=False)
    path = tmp_path / "runs" / "tiny-seed0.json"
    rec = json.loads(path.read_text())
    # a run written under another rule: its stored verdicts differ, its measurements not
    for c in rec["claims"]:
        c["verdict"], c["numbers"] = "does not hold", "old rule"
    path.write_text(json.dumps(rec))
    again = arch.run(cfg, tmp_path, plots=False, new_runs=False)
    assert again["claims"] == first["claims"]
    assert [c["verdict"] for c in arch.current_claims(rec)] == [
        first["claims"][c["key"]]["numbers"]["tiny"][0]["verdict"] for c in rec["claims"]
    ]


def test_command_line_checks_its_options(tmp_path, capsys):
    code = main(["architectures", "--architectures", "nope", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown architecture(s) ['nope']" in capsys.readouterr().err
    assert main(["architectures", "--seeds", "0", "--out", str(tmp_path)]) == 2


def test_every_architecture_is_in_the_zoo_with_its_documented_size():
    assert list(zoo.ARCHITECTURES) == [
        "mlp-cancer",
        "digits-cnn",
        "resnet8-digits",
        "lstm-text",
        "gpt2-text",
        "vit-digits",
    ]


def test_a_zoo_problem_is_trained_and_weighs_its_tokens():
    pytest.importorskip("sklearn", reason="the MLP trains on scikit-learn's breast-cancer set")
    p = zoo.mlp_cancer(0)
    assert p.metrics["train_accuracy"] > 0.97 and p.metrics["test_accuracy"] > 0.9
    assert p.data[0].dtype == torch.float64 and len(p.data[1]) == 455
    assert not p.model.training
    q = zoo.mlp_cancer(0)
    for a, b in zip(p.model.parameters(), q.model.parameters(), strict=True):
        assert torch.equal(a, b)  # a seed gives the same weights


def test_markdown_tables_give_medians_and_ranges_over_seeds(tiny_zoo, tmp_path):
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0, 1), compare=SMALL)
    summary = arch.run(cfg, tmp_path, plots=False)
    text = (tmp_path / "architectures.md").read_text()
    assert arch.numbers_table(summary) in text and arch.claims_table(summary) in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "92" and cells[2] == "2"
    assert cells[3] == "0.550 (0.500 to 0.600)"
    lan = [
        json.loads((tmp_path / "runs" / f"tiny-seed{s}.json").read_text())["methods"]["lanczos"]
        for s in (0, 1)
    ]
    hvps = sorted(r["num_matvecs"] for r in lan)
    expected = f"{np.median(hvps):.0f}" if hvps[0] == hvps[1] else f"{np.median(hvps):.0f} ("
    assert cells[5].startswith(expected)


def test_summary_adds_up_what_the_runs_cost(tiny_zoo, tmp_path):
    cfg = arch.ArchitecturesConfig(architectures=("tiny",), seeds=(0, 1), compare=SMALL)
    summary = arch.run(cfg, tmp_path, plots=False)
    costs = [json.loads((tmp_path / "runs" / f"tiny-seed{s}.json").read_text())["seconds"]
             for s in (0, 1)]  # fmt: skip
    assert summary["run_seconds"]["total"] == pytest.approx(sum(costs), rel=1e-12)
    assert summary["run_seconds"]["by_architecture"]["tiny"]["max"] == max(costs)
    # a resumed experiment still reports what its runs cost when they ran
    again = arch.run(cfg, tmp_path, plots=False)
    assert again["run_seconds"]["total"] == summary["run_seconds"]["total"]
    assert tiny_zoo == [0, 1]  # the resumed call trained nothing


DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduction.md"
SUMMARY = DOC.parent / "figures" / "architectures-summary.json"


def _block(text: str, name: str) -> str:
    start = text.index(f"<!-- architectures:{name} -->") + len(f"<!-- architectures:{name} -->")
    return text[start : text.index(f"<!-- /architectures:{name} -->")].strip()


def test_robustness_section_is_the_committed_summary():
    # docs/reproduction.md's robustness tables are those of the committed summary,
    # as printed, so that they cannot drift from the runs they come from
    summary = json.loads(SUMMARY.read_text())
    doc = DOC.read_text()
    assert _block(doc, "numbers") == arch.numbers_table(summary).strip()
    assert _block(doc, "claims") == arch.claims_table(summary).strip()
    seeds = {len(a["seeds"]) for a in summary["architectures"].values()}
    runs = summary["num_runs"]
    assert f"{len(summary['architectures'])} networks" in doc
    assert f"{runs} trained models" in doc
    assert all(f"{s} seeds" in doc or f"{s} seed" in doc for s in seeds)
    assert f"{summary['run_seconds']['total'] / 3600:.1f} hours" in doc or (
        f"{summary['run_seconds']['total'] / 60:.0f} minutes" in doc
    )
    # a network whose Hessian is over part of its training set says how much
    # part, in the doc as in the runs
    for name, a in summary["architectures"].items():
        match = re.search(r"Hessian over (\d+) of the (\d+) training samples", a["about"])
        if match:
            row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` |"))
            assert f"{match[1]} of the training samples" in row
