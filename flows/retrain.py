"""Scheduled retraining: run the chain on the data as it is now, then let the newcomer replace `champion` only
if it beats it on today's test split and fits the budget (the spec's `promotion` section).

`kdchain schedule CONFIG --cron EXPR` serves this flow as a Prefect deployment; prefect.yaml declares the same
for a process work pool. Every decision lands on the chain's MLflow run (tags kdchain.promotion.*, artifact
promotion.md), on the model version (tags) and in Prefect (a markdown artifact). A chain that fails raises
before any alias is touched. (No `from __future__ import annotations`: Prefect reads the real annotations.)
"""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows import progress
from flows.chain import ChainResult, chain_run_name, distill_chain
from flows.generation import GenerationResult
from kdchain import tracking
from kdchain.checkpoints import warm_source
from kdchain.data import data_fingerprint
from kdchain.promotion import (CHALLENGER, PROMOTED, Candidate, Decision, GenerationDecision, decide, decision_markdown,
                               decision_tags, family_markdown, generation_decision, vs_champion)
from kdchain.resolve import chain_digest
from kdchain.scoring import score_checkpoint
from kdchain.spec import ChainSpec, load_spec
from kdchain.warm import warm_chain


class RetrainResult(BaseModel):
    chain_run_id: str
    model_name: str
    new_version: str
    outcome: str  # promoted | challenger | unchanged | skipped (nothing new since the champion: nothing trained)
    reason: str
    new_test_accuracy: float  # promotion.metric: fp32 test accuracy, or the int8 model's
    champion_before: str | None  # version compared against
    champion_test_accuracy: float | None
    champion_after: str | None


@task(name="score-candidates")
def score_candidates(spec: ChainSpec, uri: str, name: str, version: str, run_id: str,
                     checkpoint: str) -> tuple[Candidate, Candidate | None]:
    """The newcomer and the current champion, scored side by side on the same current test split and machine."""
    new = Candidate(version, run_id, _scores(spec, uri, Path(checkpoint), run_id))
    held = tracking.alias_version(uri, name, tracking.CHAMPION)
    if held is None:
        return new, None
    held_version, held_run = held
    path = tracking.fetch_checkpoint(f"models:/{name}/{held_version}", uri, Path(spec.workdir) / "sources")
    return new, Candidate(held_version, held_run, _scores(spec, uri, path, held_run))


def _scores(spec: ChainSpec, uri: str, checkpoint: Path, run_id: str) -> dict[str, float]:
    """kdchain.scoring's figures of a generation; a rule on int8 figures scores the int8 file its run shipped."""
    shipped = tracking.shipped_int8(uri, run_id, Path(spec.workdir) / "sources") if spec.promotion.needs_int8 \
        else None
    return score_checkpoint(spec, checkpoint, shipped)


@task(name="apply-decision")
def apply_decision(spec: ChainSpec, uri: str, name: str, new: Candidate, champion: Candidate | None,
                   decision: Decision) -> tuple[Decision, str | None]:
    """Move the aliases. `champion` moves only if it still points at the version compared against (under a lock:
    two concurrent retrains cannot both promote); the loser of that race becomes challenger."""
    lock_dir = Path(spec.workdir)
    if decision.outcome == PROMOTED:
        try:
            tracking.move_alias(uri, name, tracking.CHAMPION, new.version,
                                expected=champion.version if champion else None, lock_dir=lock_dir)
        except tracking.AliasMoved as e:
            decision = Decision(CHALLENGER, decision.reasons + [f"not promoted: {e} (another retrain promoted "
                                                                "meanwhile; the next retrain compares against it)"],
                                decision.gain)
    if decision.outcome == CHALLENGER:
        tracking.set_alias(uri, name, tracking.CHALLENGER, new.version, lock_dir=lock_dir)
    after = tracking.alias_version(uri, name, tracking.CHAMPION)
    return decision, after[0] if after else None


@task(name="anything-new")
def nothing_new(spec: ChainSpec, uri: str, name: str) -> dict | None:
    """The champion's origin when neither the data (its fingerprint: contents, not only the spec) nor the config
    changed since its chain run: a retrain would train the same family again. None: something is new."""
    origin = tracking.champion_origin(uri, name)
    same = origin and origin["data_fingerprint"] == data_fingerprint(spec.data) \
        and origin["chain_digest"] == chain_digest(spec)
    return origin if same else None


def warm_spec(spec: ChainSpec, uri: str, name: str) -> ChainSpec:
    """The chain a warm retrain trains (kdchain.warm), or `spec` itself when no champion family fits it."""
    warm, why = warm_chain(spec, tracking.champion_family(uri, name))
    if warm is None:
        get_run_logger().info("%s: warm retrain not possible: %s", name, why)
        progress.note(f"{name}: warm retrain not possible: {why}")
        return spec
    for index in range(len(warm.generations) + 1):  # fetched from this store now; later look-ups find the files
        warm_source(warm, index, uri)
    epochs = ", ".join(f"{n} {e}" for n, e in zip(warm.generation_names(), [warm.teacher.train.epochs]
                                                   + [g.train.epochs for g in warm.generations]))
    get_run_logger().info("%s: warm retrain from champion family (epochs: %s)", name, epochs)
    return warm


def _skipped(name: str, origin: dict) -> RetrainResult:
    reason = (f"nothing to do: the data and the config are those champion version {origin['version']} was trained "
              f"on (data fingerprint {origin['data_fingerprint'][:12]}); --force retrains anyway")
    get_run_logger().info("%s: %s", name, reason)
    create_markdown_artifact(markdown=f"**{name}**: {reason}", key=f"{_slug(name)}-promotion",
                             description=f"Retrain of {name} skipped: nothing new since the champion")
    return RetrainResult(chain_run_id="", model_name=name, new_version=origin["version"], outcome="skipped",
                         reason=reason, new_test_accuracy=origin["test_accuracy"],
                         champion_before=origin["version"], champion_test_accuracy=origin["test_accuracy"],
                         champion_after=origin["version"])


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def _retrain_run_name() -> str:
    return f"retrain · {chain_run_name()}"  # `retrain · digits-chain · seed 0` in the Prefect UI


@flow(name="retrain", log_prints=False, flow_run_name=_retrain_run_name)
def retrain(config: ChainSpec | str, overrides: list[str] = [], tracking_uri: str | None = None,
            fresh: bool = True, force: bool = False) -> RetrainResult:
    """Retrain the chain, score newcomer vs champion on today's test split, promote or mark challenger.

    `fresh=True` by default: a scheduled retrain trains every generation again and gets its own chain run (with its
    own decision tags). The cache key does include the data's fingerprint, so `fresh=False` reuses generations only
    when neither config nor data changed, and then the newcomer is the champion itself (outcome: unchanged).
    Unless `force`, a retrain whose data and config are the champion's trains nothing (outcome: skipped).
    """
    logger = get_run_logger()
    spec = config if isinstance(config, ChainSpec) else load_spec(config, overrides)
    uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri)
    name = spec.registered_name()
    origin = None if force else nothing_new(spec, uri, name)
    if origin is not None:
        return _skipped(name, origin)
    given = spec  # the config as given: a warm retrain trains another spec, recorded beside it
    if spec.retrain.mode == "warm":
        spec = warm_spec(spec, uri, name)
    # a failure anywhere in the chain raises here: no alias has been touched
    warm = spec is not given
    chain: ChainResult = distill_chain(spec, tracking_uri=uri, fresh=fresh, marker="warm retrain" if warm else
                                       "retrain")
    final = chain.generations[-1]
    version = chain.registered.rsplit("/", 1)[1]

    family = tracking.champion_family(uri, name)  # read before any alias moves
    new, champion = score_candidates(spec, uri, name, version, final.reused_from or final.run_id, final.checkpoint)
    decision = decide(new, champion, spec.promotion)
    earlier = score_family(spec, uri, version, chain.generations[:-1], family)
    decision, champion_after = apply_decision(spec, uri, name, new, champion, decision)
    decisions = earlier + [GenerationDecision(final.name, new, champion, decision)]

    tags = decision_tags(new, champion, decision, spec.promotion, data_fingerprint(spec.data),
                         tracking.test_data_name(spec.data, spec.seed))
    tags |= {tracking.CONFIG_DIGEST: chain_digest(given), "kdchain.retrain.mode": "warm" if warm else "full"}
    markdown = "\n".join([decision_markdown(name, new, champion, decision, spec.promotion, champion_after),
                          family_markdown(decisions, spec.promotion)])
    _record(spec, uri, name, version, chain, tags, markdown, decisions)
    logger.info("%s version %s: %s (%s)", name, version, decision.outcome, decision.reason)
    return RetrainResult(chain_run_id=chain.chain_run_id, model_name=name, new_version=version,
                         outcome=decision.outcome, reason=decision.reason,
                         new_test_accuracy=new.scores[spec.promotion.metric],
                         champion_before=champion.version if champion else None,
                         champion_test_accuracy=champion.scores[spec.promotion.metric] if champion else None,
                         champion_after=champion_after)


@task(name="score-family")
def score_family(spec: ChainSpec, uri: str, version: str, generations: list[GenerationResult],
                 family: dict[str, str]) -> list[GenerationDecision]:
    """Every generation but the final one against the champion family's generation of its name, scored side by
    side on the same current test split and judged by the same rule."""
    out = []
    for g in generations:
        run_id = g.reused_from or g.run_id
        new = Candidate(version, run_id, _scores(spec, uri, Path(g.checkpoint), run_id))
        old = None
        if g.name in family:
            path = tracking.fetch_checkpoint(family[g.name], uri, Path(spec.workdir) / "sources")
            old_run = family[g.name].removeprefix("runs:/")
            old = Candidate("champion", old_run, _scores(spec, uri, path, old_run))
        out.append(generation_decision(g.name, new, old, spec.promotion))
    return out


def _record(spec: ChainSpec, uri: str, name: str, version: str, chain: ChainResult, tags: dict[str, str],
            markdown: str, decisions: list[GenerationDecision]) -> None:
    """The decision on the chain run, the model version and in Prefect; each generation's verdict on its run in
    this chain run (a reused generation's too: `kdchain compare` reads this chain run's)."""
    tracking.record_decision(uri, chain.chain_run_id, name, version, tags, markdown)
    tracker = tracking.Tracker(uri, spec.experiment_name())
    runs = {g.name: g.run_id for g in chain.generations}
    for d in decisions:
        if d.old is not None or d is decisions[-1]:
            tracker.tag_run(runs[d.name], {tracking.VS_CHAMPION: vs_champion(d, spec.promotion.metric)[:5000]})
    create_markdown_artifact(markdown=markdown, key=f"{_slug(name)}-promotion",
                             description=f"Promotion decision for {name} version {version}: {decisions[-1].decision.outcome}")
