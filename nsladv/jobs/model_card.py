"""The model card: what a model is, how it was hardened, how robust it measured, and the limits of that claim."""

import pathlib

from nsladv._extras import available
from nsladv.jobs import report as report_lib


def model_card(*, title, model, dataset, evaluations, hardening=None, versions=None):
    """The card's Markdown text.

    Args:
        title: the card's heading (the model's name).
        model: a dict describing the model (`source`, `inputs`, `classes`, `parameters`).
        dataset: the evaluation data (`name`, `split`, `examples`).
        evaluations: `{label: evaluate_robustness result}`.
        hardening: the threat model and regularization it was trained with, or None.
        versions: package versions (default: this process's).
    """
    lines = [f"# Model card: {title}", "", "## The model", ""]
    lines += [f"- **{key}**: {value}" for key, value in model.items()]
    lines += ["", "## How it was hardened", ""]
    if hardening:
        threat, regularization = hardening.get("threat", {}), hardening.get("regularization", {})
        lines.append(
            f"Adversarial training with nsladv: neighbors in the {threat.get('norm')} ball of radius "
            f"{threat.get('epsilon')} ({threat.get('steps')} step(s), random start {threat.get('random_start')}), "
            f"{regularization.get('distance')} distance, multiplier {regularization.get('multiplier')}."
        )
        precision = hardening.get("precision")
        if precision:
            lines[-1] += (
                f" Trained in {precision['training']}; evaluated and exported in {precision['evaluation_and_export']}."
            )
    else:
        lines.append("Unknown: no nsladv hardening metadata came with the model.")
    lines += ["", "## Robustness", ""]
    lines += [
        f"White-box attacks on {dataset.get('examples')} examples of {dataset.get('name')} ({dataset.get('split')}), "
        "against the model being evaluated. The attacks run in the order listed; each row is the share of "
        "examples still robust after that attack and every one above it (after the reference attacks, an "
        "attack only runs on the examples still robust, one named *-closest* on the share of them the attacks "
        "before it came closest to fooling). *Worst case* counts an example robust only if it "
        "is classified correctly clean and under every attack and restart.",
        "",
    ]
    for label, result in evaluations.items():
        keys = [f"{e:g}" for e in result["epsilons"]]
        lines.append(f"**{label}** (clean accuracy {100 * result['clean_accuracy']:.1f}%)")
        lines.append("")
        lines.append("| robust after | " + " | ".join(f"ε = {k}" for k in keys) + " | seed |")
        lines.append("| --- | " + " | ".join("---" for _ in keys) + " | --- |")
        for i, (name, row) in enumerate(report_lib.after_each_attack_rows(result)):
            cells = " | ".join(f"{100 * row[k]:.1f}%" for k in keys)
            lines.append(f"| {'+ ' if i else ''}{name} | {cells} | {result['attacks'][name].get('seed', '')} |")
        if "worst_case" in result:
            cells = []
            for k in keys:
                low, high = result["confidence_95"][k]
                cells.append(f"**{100 * result['worst_case'][k]:.1f}%** ({100 * low:.1f}–{100 * high:.1f})")
            lines.append("| worst case (95% interval) | " + " | ".join(cells) + " |")
        lines += ["", f"Gradient-masking checks: {report_lib.check_summary(result)}.", ""]
    lines += [
        "## Limits of the claim",
        "",
        "- These are empirical upper bounds on robust accuracy: stronger or adaptive attacks may find more "
        "adversarial examples. No certificate is claimed.",
        "- Only the listed attacks, norm and radii were tried, on the examples counted above; other "
        "perturbations (rotations, patches, other norms) are outside the claim.",
        "",
        *_anchors(dataset.get("name")),
        "## Versions",
        "",
    ]
    lines += [f"- {name}: {version}" for name, version in (versions or report_lib.package_versions()).items()]
    return "\n".join(lines) + "\n"


# Published figures belong to a dataset: {TFDS name: (what they measured, [(model, clean %, PGD %, AutoAttack %)])}.
# MNIST's, on its standard test set at L-inf 0.3 (Croce & Hein 2020; Wong et al. 2020).
_MNIST = (
    "Standard MNIST test set (10,000 digits), L∞ ε = 0.3, AutoAttack (APGD-CE, APGD-T, FAB-T, Square)",
    (
        ("Madry et al. PGD-AT", "98.53", "89.62", "88.50"),
        ("TRADES (Zhang et al.)", "99.48", "96.07", "92.81"),
        ("Wong et al. FGSM-RS, 10 epochs", "98.50", "88.77", "82.93"),
    ),
)
PUBLISHED_ANCHORS = {"mnist": _MNIST, "mnist_offline": _MNIST}


def _anchors(dataset_name):
    """The card's section of published figures for the evaluated dataset, or nothing when none are recorded."""
    name = str(dataset_name or "").split("@")[0].split(":")[0]
    if name not in PUBLISHED_ANCHORS:
        return []
    what, rows = PUBLISHED_ANCHORS[name]
    return [
        "## Published anchors (not measured here)",
        "",
        f"{what}, as published; compare with the worst case above only when the evaluation ran on the same test "
        "set with the same attacks.",
        "",
        "| model (published) | clean | PGD | AutoAttack |",
        "| --- | --- | --- | --- |",
        *(f"| {model} | {clean} | {pgd} | {aa} |" for model, clean, pgd, aa in rows),
        "",
    ]


def write_model_card(path, **card):
    """Writes `model_card(**card)` to `path` (atomically); returns the path."""
    return report_lib.write_text(path, model_card(**card))


def write_run_files(out_dir, report, evaluations, *, title, plot_title, model, dataset, hardening=None, log=print):
    """A run's report.json, robustness.png and model_card.md; the summary table and the paths go to `log`."""
    out_dir = pathlib.Path(out_dir)
    report_lib.write_json(out_dir / "report.json", report)
    plot = out_dir / "robustness.png"
    if available("matplotlib"):
        report_lib.plot_robustness(evaluations, plot, title=plot_title)
        plotted = str(plot)
    else:  # The figures are all in report.json and the card; the plot is an extra's.
        plotted = "not drawn: matplotlib is not installed (pip install 'nsladv[plot]')"
    write_model_card(
        out_dir / "model_card.md",
        title=title,
        model=model,
        dataset=dataset,
        evaluations=evaluations,
        hardening=hardening,
        versions=report["versions"],
    )
    log("\n" + report_lib.summary_table(evaluations))
    log(f"report: {out_dir / 'report.json'}\nplot:   {plotted}\ncard:   {out_dir / 'model_card.md'}")
