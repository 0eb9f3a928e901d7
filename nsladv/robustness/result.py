"""The result of `evaluate_robustness`: a JSON-ready dict that also reads the worst case and writes a Markdown card."""

import pathlib


class RobustnessResult(dict):
    """What `evaluate_robustness` returns: its dict (see there for the keys), plus readers.

    >>> result.worst_case_at(0.3)       # the share robust to every attack, example by example
    >>> result.write_card("card.md")    # a Markdown summary
    """

    def worst_case_at(self, epsilon):
        """The worst-case robust accuracy at `epsilon` (one of the evaluated radii)."""
        key = f"{float(epsilon):g}"
        if key not in self["worst_case"]:
            raise KeyError(f"Not evaluated at epsilon {key}. Evaluated: {', '.join(self['worst_case'])}")
        return self["worst_case"][key]

    def to_markdown(self, title="Robustness"):
        """A Markdown card: clean accuracy, the worst case per radius with its 95% interval, and each attack's share."""
        keys = list(self["worst_case"])
        lines = [
            f"# {title}",
            "",
            f"White-box attacks on {self['examples']} examples, against the model being evaluated; an example counts "
            "as robust only if it is classified correctly clean and under every attack and restart.",
            "",
            f"Clean accuracy: **{100 * self['clean_accuracy']:.2f}%**",
            "",
            "| after | " + " | ".join(f"eps={k}" for k in keys) + " |",
            "| --- | " + " | ".join("---:" for _ in keys) + " |",
        ]
        for name in self["attacks"]:
            cells = [f"{100 * self['after_each_attack'][k][name]:.2f}%" for k in keys]
            lines.append(f"| +{name} | " + " | ".join(cells) + " |")
        worst = [f"**{100 * self['worst_case'][k]:.2f}%**" for k in keys]
        lines.append("| worst case | " + " | ".join(worst) + " |")
        intervals = [f"{100 * low:.1f}-{100 * high:.1f}%" for low, high in (self["confidence_95"][k] for k in keys)]
        lines.append("| 95% interval | " + " | ".join(intervals) + " |")
        failed = [name for name, check in self.get("sanity", {}).items() if not check["passed"]]
        lines += ["", "Gradient-masking checks: " + ("all passed." if not failed else f"failed: {', '.join(failed)}.")]
        return "\n".join(lines) + "\n"

    def write_card(self, path, title="Robustness"):
        """Writes `to_markdown()` to `path`; returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown(title))
        return path
