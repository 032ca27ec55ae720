"""Whether a retrained model replaces the champion: a pure rule over two score sheets, and its record.

Both models are scored by `kdchain.scoring.score_checkpoint` on the same current test split; the rule is the chain
spec's `promotion` section. Applying the decision (moving aliases) is kdchain.tracking's job, under a lock.
"""

from dataclasses import dataclass, field

from kdchain.spec import PromotionSpec

PROMOTED, CHALLENGER, UNCHANGED = "promoted", "challenger", "unchanged"


@dataclass
class Candidate:
    version: str  # registered model version
    run_id: str  # the generation run that produced it
    scores: dict[str, float]  # test_accuracy, latency_ms, size_bytes, params, flops (+ the int8 ones if the rule asks)


@dataclass
class Decision:
    outcome: str  # promoted | challenger | unchanged
    reasons: list[str] = field(default_factory=list)
    gain: float | None = None  # newcomer - champion test accuracy; None without a champion

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def describe_rule(rule: PromotionSpec) -> str:
    parts = [f"{rule.metric.replace('_', ' ')} >= champion + {rule.min_gain:g} (and higher)"]
    if rule.max_latency_ms is not None:
        parts.append(f"latency <= {rule.max_latency_ms:g} ms")
    if rule.max_size_bytes is not None:
        parts.append(f"size <= {rule.max_size_bytes:,} B")
    if rule.max_latency_ms_int8 is not None:
        parts.append(f"int8 latency <= {rule.max_latency_ms_int8:g} ms")
    if rule.max_size_bytes_int8 is not None:
        parts.append(f"int8 size <= {rule.max_size_bytes_int8:,} B")
    return "promote if " + " and ".join(parts) + "; the first model within the budget becomes champion"


def budget_problems(scores: dict[str, float], rule: PromotionSpec) -> list[str]:
    problems = []
    if rule.max_latency_ms is not None and scores["latency_ms"] > rule.max_latency_ms:
        problems.append(f"latency {scores['latency_ms']:.3f} ms exceeds the budget of {rule.max_latency_ms:g} ms")
    if rule.max_size_bytes is not None and scores["size_bytes"] > rule.max_size_bytes:
        problems.append(f"size {scores['size_bytes']:,.0f} B exceeds the budget of {rule.max_size_bytes:,} B")
    if rule.max_latency_ms_int8 is not None and scores["latency_ms_int8"] > rule.max_latency_ms_int8:
        problems.append(f"int8 latency {scores['latency_ms_int8']:.3f} ms exceeds the budget of "
                        f"{rule.max_latency_ms_int8:g} ms")
    if rule.max_size_bytes_int8 is not None and scores["size_bytes_int8"] > rule.max_size_bytes_int8:
        problems.append(f"int8 size {scores['size_bytes_int8']:,.0f} B exceeds the budget of "
                        f"{rule.max_size_bytes_int8:,} B")
    return problems


def decide(new: Candidate, champion: Candidate | None, rule: PromotionSpec) -> Decision:
    if champion is not None and champion.version == new.version:
        return Decision(UNCHANGED, [f"version {new.version} already is the champion"], 0.0)
    problems = budget_problems(new.scores, rule)
    if champion is None:
        if problems:
            return Decision(CHALLENGER, ["no champion yet, but " + "; ".join(problems)])
        return Decision(PROMOTED, ["no champion yet and the newcomer meets the budget"])
    metric, label = rule.metric, rule.metric.replace("_", " ")
    gain = new.scores[metric] - champion.scores[metric]
    # a gain within float noise of min_gain counts as reaching it (accuracies are ratios of small counts)
    if gain <= 0 or gain < rule.min_gain - 1e-9:
        problems.insert(0, f"{label} {new.scores[metric]:.4f} vs champion {champion.scores[metric]:.4f}: "
                           f"gain {gain:+.4f} is below the required {rule.min_gain:g}")
    if problems:
        return Decision(CHALLENGER, problems, gain)
    return Decision(PROMOTED, [f"{label} {new.scores[metric]:.4f} beats champion {champion.scores[metric]:.4f} "
                               f"by {gain:+.4f} (>= {rule.min_gain:g}) within the budget"], gain)


def decision_tags(new: Candidate, champion: Candidate | None, decision: Decision, rule: PromotionSpec,
                  data_fingerprint: str, test_data: str = "") -> dict[str, str]:
    """What the chain run carries (MLflow tags), so the UI's run table shows every decision. `test_data`: the
    test split both models were scored on, as its dataset is named on the runs (`digits/test@<digest>`)."""
    tags = {"kdchain.promotion.outcome": decision.outcome, "kdchain.promotion.reason": decision.reason,
            "kdchain.promotion.rule": describe_rule(rule), "kdchain.promotion.new_version": new.version,
            "kdchain.promotion.new_test_accuracy": f"{new.scores['test_accuracy']:.6f}",
            "kdchain.promotion.metric": rule.metric,
            "kdchain.promotion.data_fingerprint": data_fingerprint,
            "kdchain.promotion.test_data": test_data or "unknown",
            "kdchain.promotion.champion_version": champion.version if champion else "none",
            "kdchain.promotion.champion_test_accuracy":
                f"{champion.scores['test_accuracy']:.6f}" if champion else "none"}
    if decision.gain is not None:
        tags["kdchain.promotion.gain"] = f"{decision.gain:+.6f}"
    return tags


def decision_markdown(model_name: str, new: Candidate, champion: Candidate | None, decision: Decision,
                      rule: PromotionSpec, champion_after: str | None) -> str:
    def row(label: str, c: Candidate | None) -> str:
        if c is None:
            return f"| {label} | - | - | - | - | - |"
        s = c.scores
        return (f"| {label} | {c.version} | {s['test_accuracy']:.4f} | {s['latency_ms']:.3f} | "
                f"{s['size_bytes']:,.0f} | {s['params']:,.0f} |")

    return "\n".join([
        f"# Promotion decision: {model_name}",
        "",
        f"**Outcome: {decision.outcome}** — {decision.reason}",
        "",
        "| model | version | test accuracy | latency ms | size B | params |",
        "|---|---|---|---|---|---|",
        row("newcomer", new),
        row("champion (compared against)", champion),
        "",
        f"Rule: {describe_rule(rule)}.",
        "",
        f"`models:/{model_name}@champion` is now version {champion_after or 'unset'}"
        + (f"; `@challenger` is version {new.version}." if decision.outcome == CHALLENGER else "."),
        "",
    ])


@dataclass
class GenerationDecision:
    """One generation of the retrained family against the same generation of the champion family."""

    name: str
    new: Candidate
    old: Candidate | None  # None: the champion family has no such generation
    decision: Decision


def generation_decision(name: str, new: Candidate, old: Candidate | None, rule: PromotionSpec) -> GenerationDecision:
    """The promotion rule applied to one generation; the same run on both sides (reused) is `unchanged`."""
    if old is not None and old.run_id == new.run_id:
        return GenerationDecision(name, new, old, Decision(UNCHANGED, ["the same model (reused, not retrained)"], 0.0))
    return GenerationDecision(name, new, old, decide(new, old, rule))


def vs_champion(d: GenerationDecision, metric: str) -> str:
    """One line for the generation's run: how it compares with the champion family's generation of its name."""
    if d.old is None:
        return f"the champion family has no {d.name}: {d.decision.reason}"
    verdict = {PROMOTED: "beats", CHALLENGER: "does not beat", UNCHANGED: "is"}[d.decision.outcome]
    return (f"{d.decision.gain:+.4f}: {verdict} the champion's {d.name} ({metric.replace('_', ' ')} "
            f"{d.old.scores[metric]:.4f} -> {d.new.scores[metric]:.4f}); {d.decision.reason}")


def family_markdown(decisions: list[GenerationDecision], rule: PromotionSpec) -> str:
    """The decision table of a retrain: generation x champion's / newcomer's figures x the rule's verdict. The
    family moves as one (its final student's decision moves `champion`): its generations taught each other."""
    metric = rule.metric

    def cell(c: Candidate | None, key: str, fmt: str) -> str:
        return "-" if c is None or key not in c.scores else format(c.scores[key], fmt)

    rows = ["| generation | champion's | newcomer | gain | champion's latency ms | newcomer's latency ms | rule |",
            "|---|---|---|---|---|---|---|"]
    for d in decisions:
        gain = "-" if d.decision.gain is None else f"{d.decision.gain:+.4f}"
        verdict = {PROMOTED: "beats", CHALLENGER: "does not beat", UNCHANGED: "unchanged"}[d.decision.outcome]
        rows.append(f"| {d.name} | {cell(d.old, metric, '.4f')} | {cell(d.new, metric, '.4f')} | {gain} | "
                    f"{cell(d.old, 'latency_ms', '.3f')} | {cell(d.new, 'latency_ms', '.3f')} | {verdict} |")
    return "\n".join(["## Generation by generation", "",
                      f"Each generation against the champion family's, {metric.replace('_', ' ')} on the same test "
                      "split, by the same rule; the family moves as one, by its final student's decision.", "",
                      *rows, ""])
