"""``workbench.figures`` redraws every figure from saved run records alone (synthetic records here: no training)."""

import json

import numpy as np

from workbench import figures


def _write(runs_dir, label, method, seed, gold, overrides=None, config=None, seconds=10.0):
    folder = runs_dir / label / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    buckets = [
        {
            "low": lo,
            "high": hi,
            "prompts": p,
            "delta_win_rate": gold - 0.3 if p else float("nan"),
            "win_rate": 0.5,
            "gold_gain": 0.0,
        }
        for lo, hi, p in ((0, 2, 3), (2, 4, 5), (8, float("inf"), 0))
    ]
    record = {
        "label": label,
        "method": method,
        "seed": seed,
        "overrides": overrides or {},
        "cold_cache": False,
        "train_seconds": seconds,
        "metrics": {"seconds": seconds, "config": config or {}},
        "harness": {
            "gold": {"mean": gold},
            "win_rate_vs_initial": 0.5 + gold / 4,
            "win_rate_vs_teacher": 0.4,
            "reward_accuracy": 0.7,
            "tau_student_teacher": 0.2,
            "tau_student_gold": 0.3,
            "length": 3.0,
            "length_buckets": buckets,
            # four held-out prompts at the table's setting and the others; a validation curve of three points
            "per_prompt": [gold] * 4,
            "by_temperature": {
                setting: {"gold": {"mean": gold + shift}, "per_prompt": [gold + shift] * 4}
                for setting, shift in (("greedy", 0.05), ("T=0.3", 0.03), ("T=1.0", -0.02))
            },
            "curve": {
                "split": "validation",
                "prompts": 4,
                "points": [{"step": s, "gold": gold * s / 150} for s in (50, 100, 150)],
            },
        },
    }
    (folder / "record.json").write_text(json.dumps(record))


def _synthetic_runs(runs_dir):
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        for method in ("pad-vpd", "pad-ppd", "plad", "kd", "seqkd", "reverse-kl", "dpo", "simpo", "pro"):
            _write(
                runs_dir,
                method,
                method,
                seed,
                0.3 + rng.uniform(0, 0.3),
                config={"alpha": 0.8, "real_ratio": 0.0, "data_fraction": 1.0},
            )
        for alpha in (0.0, 1.0):
            _write(runs_dir, f"pad-ppd[alpha={alpha}]", "pad-ppd", seed, 0.3, {"alpha": alpha})
        _write(runs_dir, "pad-ppd[n=8]", "pad-ppd", seed, 0.4, {"n": 8}, seconds=60.0)
        _write(runs_dir, "pad-ppd[iterations=2]", "pad-ppd", seed, 0.41, {"iterations": 2}, seconds=40.0)
        for ratio in (0.5, 1.0):
            _write(runs_dir, f"plad[real_ratio={ratio}]", "plad", seed, 0.45, {"real_ratio": ratio})
        for method in ("plad", "seqkd", "kd"):
            for fraction in (0.1, 0.5):
                _write(
                    runs_dir,
                    f"{method}[data_fraction={fraction}]",
                    method,
                    seed,
                    0.2 + fraction / 2,
                    {"data_fraction": fraction},
                )
    (runs_dir / "_references").mkdir()
    for seed in (0, 1, 2):
        ref = {
            role: {
                "gold": {"mean": gold},
                "per_prompt": [gold] * 4,
                "length": 3.0,
                "reward_accuracy": 0.7,
                "by_temperature": {s: {"per_prompt": [gold + 0.02] * 4} for s in ("greedy", "T=0.3", "T=1.0")},
            }
            for role, gold in (("student", 0.3), ("teacher", 0.8))
        }
        (runs_dir / "_references" / f"seed{seed}.json").write_text(json.dumps(ref))


def test_every_figure_regenerates_from_saved_records(tmp_path, capsys):
    runs = tmp_path / "runs"
    _synthetic_runs(runs)
    out = tmp_path / "figures"
    figures.main(["--runs-dir", str(runs), "--out", str(out)])
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(figures.FIGURES)
    assert "skipped" not in capsys.readouterr().out


def test_sweep_points_read_defaults_from_the_saved_config(tmp_path):
    from workbench.compare import load_records

    runs = tmp_path / "runs"
    _synthetic_runs(runs)
    xs, points = figures.sweep_points(load_records(runs), "plad", "real_ratio")
    assert xs == [0.0, 0.5, 1.0] and all(p["n"] == 3 for p in points)
    xs, _ = figures.sweep_points(load_records(runs), "kd", "data_fraction")
    assert xs == [0.1, 0.5, 1.0]
    buckets = figures.length_bucket_summary(load_records(runs))
    assert set(buckets) == {"plad", "seqkd", "kd", "reverse-kl", "pad-ppd"}
    assert len(buckets["plad"]) == 2  # the empty (8, inf] bucket is dropped


def test_figures_without_runs_are_skipped_not_failed(tmp_path, capsys):
    written = figures.regenerate(tmp_path / "empty", tmp_path / "figures")
    assert set(written) == set(figures.FIGURES) and not any(written.values())


def test_claims_across_worlds_draws_each_world_of_each_claim(tmp_path, capsys):
    worlds = {}
    for name, shift in (("a", 0.0), ("b", 0.2)):
        _synthetic_runs(tmp_path / name)
        for seed in (0, 1, 2):  # world b: PLaD well above SeqKD
            _write(tmp_path / name, "plad", "plad", seed, 0.5 + shift + 0.01 * seed)
            _write(tmp_path / name, "seqkd", "seqkd", seed, 0.5)
        worlds[name] = tmp_path / name
    fig = figures.figure_claims_across_worlds(worlds)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert any(label.startswith("PLaD beats SeqKD [") for label in labels)
    assert len(ax.get_legend().get_texts()) == 2  # one marker per world
    figures.main(["--across", f"a={worlds['a']}", f"b={worlds['b']}", "--out", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "claims_across_worlds.png").stat().st_size > 10_000
    assert "claims_across_worlds: " in capsys.readouterr().out
    assert figures.figure_claims_across_worlds({"empty": tmp_path / "none"}) is None


def test_a_notebook_runs_figure_goes_to_its_output_folder_and_to_figures_only_when_published(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from workbench import plots

    monkeypatch.setenv("WORKBENCH_FIGURES", str(tmp_path / "published"))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert plots.save_run_figure(fig, "curve", tmp_path / "run") == [tmp_path / "run" / "figures" / "curve.png"]
    assert not (tmp_path / "published").exists()
    paths = plots.save_run_figure(fig, "curve", tmp_path / "run", publish=True)
    assert paths[1] == tmp_path / "published" / "curve.png" and all(p.stat().st_size > 0 for p in paths)
    plt.close(fig)


def test_training_curves_put_rounds_end_to_end_on_optimizer_steps():
    import matplotlib.pyplot as plt

    from workbench import plots

    history = [
        {"loss": 1.0, "step": 5, "round": 0},
        {"loss": 0.5, "step": 10, "round": 0},
        {"train_runtime": 1.0, "step": 10, "round": 0},
        {"loss": 0.9, "step": 5, "round": 1},
        {"loss": 0.4, "step": 10, "round": 1},
    ]
    fig, ax = plt.subplots()
    plots.plot_training_curve(ax, history)
    assert list(ax.lines[0].get_xdata()) == [5, 10, 15, 20] and ax.get_xlabel() == "optimizer step"
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [10]  # the round boundary
    plt.close(fig)
    stages = [
        {**{k: v for k, v in entry.items() if k != "round"}, "stage": "dckd" if entry["round"] == 0 else "adpa"}
        for entry in history
    ]
    assert not any("round" in entry for entry in stages)
    fig, ax = plt.subplots()
    plots.plot_training_curve(ax, stages)
    assert list(ax.lines[0].get_xdata()) == [5, 10, 15, 20]
    plt.close(fig)


def test_candidate_rewards_and_success_at_budget_draw_one_bar_per_item():
    import matplotlib.pyplot as plt

    from workbench import plots

    fig, axes = plt.subplots(1, 2)
    rewards = {"r": [-0.3, -0.5, -3.3], "log p_sel": [-1.7, -2.1, -0.5], "r_hat": [-1.4, -1.8, -1.0]}
    plots.plot_candidate_rewards(axes[0], rewards, ["A", "B", "C"], title="one set")
    assert len(axes[0].patches) == 9 and [t.get_text() for t in axes[0].get_xticklabels()] == ["A", "B", "C"]
    heights = [p.get_height() for p in axes[0].patches]
    assert heights[:3] == rewards["r"] and heights[-3:] == rewards["r_hat"]
    success = {"distribution": [1.0, 1.0, 1.0], "token": [0.25, 0.5, 1.0]}
    plots.plot_success_at_budget(axes[1], success, 1, [1, 2, 4], ci={"token": [0.0, 0.1, 0.0]})
    assert [p.get_width() for p in axes[1].patches] == [1.0, 0.5] and "budget 2" in axes[1].get_xlabel()
    plt.close(fig)


def _counting_draw(calls):
    import matplotlib.pyplot as plt

    def draw(**values):
        calls.append(values)
        fig, ax = plt.subplots()
        ax.set_title(repr(sorted(values.items())))
        return fig

    return draw


def test_an_explorer_without_a_widget_frontend_draws_once_at_the_values(monkeypatch):
    import matplotlib.pyplot as plt

    from workbench import plots

    monkeypatch.delenv("WORKBENCH_WIDGETS", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)  # what papermill and nbclient give a kernel
    assert not plots.widget_frontend()
    calls = []
    fig = plots.explore(_counting_draw(calls), {"alpha": (0.0, 1.0, 0.05)}, {"alpha": 0.8, "example": 3})
    assert calls == [{"alpha": 0.8, "example": 3}] and fig.axes[0].get_title() == "[('alpha', 0.8), ('example', 3)]"
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/02_calibration_alpha_sweep.ipynb")  # a JupyterLab kernel
    assert plots.widget_frontend()
    monkeypatch.setenv("WORKBENCH_WIDGETS", "0")
    assert not plots.widget_frontend()
    plt.close("all")


def test_an_explorer_in_a_widget_frontend_redraws_when_a_control_moves(monkeypatch):
    import ipywidgets
    import matplotlib.pyplot as plt

    from workbench import plots

    monkeypatch.setenv("WORKBENCH_WIDGETS", "1")
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    calls = []
    controls = {"alpha": (0.0, 1.0, 0.05), "example": (0, 9, 1), "budget": [1, 2, 4, 8], "scenario": ["a", "b"]}
    values = {"alpha": 0.8, "example": 3, "budget": 4, "scenario": "b", "beta": 10.0}
    fig = plots.explore(_counting_draw(calls), controls, values)
    assert calls == [values] and fig is not None  # the first draw is at the values, as without a frontend
    (widget,) = shown
    controls_by_name = {w.description: w for w in widget.kwargs_widgets if isinstance(w, ipywidgets.ValueWidget)}
    assert isinstance(controls_by_name["alpha"], ipywidgets.FloatSlider)
    assert isinstance(controls_by_name["example"], ipywidgets.IntSlider)
    assert isinstance(controls_by_name["budget"], ipywidgets.SelectionSlider)
    assert isinstance(controls_by_name["scenario"], ipywidgets.Dropdown)
    assert {name: w.value for name, w in controls_by_name.items()} == {k: v for k, v in values.items() if k in controls}
    controls_by_name["budget"].value = 8
    assert calls[-1] == {**values, "budget": 8} and len(calls) == 2  # beta stays fixed
    plt.close("all")
