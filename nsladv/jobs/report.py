"""What a person reads after a run: report.json, the robustness curve, a summary table."""

import json
import pathlib
import platform

from nsladv._files import replace_file


def package_versions():
    """Versions of the stack, for reports and export metadata."""
    import importlib.metadata as metadata

    names = ("nsladv", "tensorflow", "keras", "neural-structured-learning", "tensorflow-datasets", "keras-tuner")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def progress_line(attack, epsilon, robust, seconds):
    """One line of evaluation progress: an attack's result at one epsilon, and how long it took."""
    return f"  {attack:<8} at {epsilon:g}: {100 * robust:5.1f}% robust ({seconds:.0f} s)"


def after_each_attack_rows(result):
    """[(attack name, {epsilon key: share robust to it and every attack before it})] in run order."""
    names = list(result["attacks"])
    return [(name, {k: curve[name] for k, curve in result["after_each_attack"].items()}) for name in names]


def write_text(path, text):
    """Writes a text file atomically (a reader never sees half a file); returns its path."""
    return replace_file(path, text)


def write_json(path, content):
    """Writes JSON atomically (a reader never sees half a file)."""
    return write_text(path, json.dumps(content, indent=2, sort_keys=False) + "\n")


def plot_robustness(evaluations, path, *, title="Robust accuracy under white-box attack"):
    """Accuracy against epsilon for each model and attack, as a PNG.

    Args:
        evaluations: `{model label: evaluate_robustness result}`, e.g.
            `{"hardened": ..., "baseline": ...}`.
        path: where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = {"hardened": "#1f77b4", "without_graph": "#2ca02c", "baseline": "#d62728"}
    styles = ["--", ":", "-."]
    for i, (label, result) in enumerate(evaluations.items()):
        color = colors.get(label, f"C{i + 2}")
        epsilons = [0.0] + result["epsilons"]
        keys = [f"{e:g}" for e in result["epsilons"]]
        # Each attack that ran on every example on its own (thin), and the worst case over all of them (bold).
        curves = [(name, a["accuracy"]) for name, a in result["attacks"].items() if "accuracy" in a]
        if "worst_case" in result and len(result["attacks"]) > 1:
            curves.append(("worst case", result["worst_case"]))
        for j, (name, accuracy) in enumerate(curves):
            worst = name == "worst case"
            ax.plot(
                epsilons,
                [100 * a for a in [result["clean_accuracy"]] + [accuracy[k] for k in keys]],
                "-" if worst else styles[j % len(styles)],
                color=color,
                marker="o",
                markersize=4 if worst else 3,
                linewidth=2.2 if worst else 1.0,
                label=f"{label}: {name if worst else name.upper()}",
            )
    configs = [a["config"] for a in next(iter(evaluations.values()))["attacks"].values()]
    norm = next((c["threat"]["norm"] for c in configs if "threat" in c), "linf")
    ax.set_xlabel(f"epsilon ({'L-inf' if norm == 'linf' else norm.upper()} radius)")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_table(evaluations):
    """A plain-text table: per model, the share still robust after each attack (cumulative); one column per epsilon.

    The last row of a model is its worst case: correct clean and under
    every attack and restart, example by example.
    """
    first = next(iter(evaluations.values()))
    keys = [f"{e:g}" for e in first["epsilons"]]
    width = max(10, *(len(label) for label in evaluations))
    after_width = max(10, *(len(name) + 1 for result in evaluations.values() for name in result["attacks"]))
    header = f"{'model':<{width}} {'after':<{after_width}} {'clean':>7} " + " ".join(f"{'eps=' + k:>9}" for k in keys)
    lines = [header, "-" * len(header)]
    for label, result in evaluations.items():
        for i, (name, row) in enumerate(after_each_attack_rows(result)):
            cells = " ".join(f"{100 * row[k]:>8.1f}%" for k in keys)
            after = ("+" if i else "") + name
            lines.append(f"{label:<{width}} {after:<{after_width}} {100 * result['clean_accuracy']:>6.1f}% {cells}")
    for label, result in evaluations.items():
        lines.append(f"gradient-masking checks ({label}): {check_summary(result)}")
    return "\n".join(lines)


def check_summary(result):
    """One line on an evaluation's gradient-masking checks: "all passed", or what failed and what it means."""
    failed = [name for name, check in result.get("sanity", {}).items() if not check["passed"]]
    if not failed:
        return "all passed"
    words = []
    for name in failed:
        check = result["sanity"][name]
        if name == "black_box_finds_nothing_new" and "white_box_retry" in check:
            retry = check["white_box_retry"]
            found = ", ".join(f"{retry['found'][k]} of {n} at {k}" for k, n in check["examples_by_epsilon"].items())
            words.append(f"{name} ({retry['attack']} found {found}: {retry['reading']})")
        else:
            words.append(name)
    return "FAILED: " + "; ".join(words)
