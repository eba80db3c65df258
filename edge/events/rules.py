"""Watch-list rules: whether an event raises an alert — a pure function of the event and config."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from edge.events.bursts import Event


class WatchRule(BaseModel):
    """One watch-listed label (e.g. an invasive species)."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(title="Classifier label, as in the bundle's manifest")
    threshold: float = Field(0.5, ge=0, le=1, title="Aggregated event probability needed to alert")
    min_count: int = Field(1, ge=1, title="Crops of this label needed in one frame")


class RulesConfig(BaseModel):
    """The watch-list and its per-site overrides."""

    model_config = ConfigDict(extra="forbid")
    watch: list[WatchRule] = Field(default_factory=list, title="Labels that raise alerts")
    sites: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, title="Per site: label -> threshold override (null switches the label off there)"
    )


@dataclass(frozen=True)
class AlertDecision:
    """Why an event alerts."""

    label: str
    score: float
    threshold: float


def thresholds_for(rules: RulesConfig, site: str | None) -> dict[str, tuple[float, int]]:
    """Label -> (threshold, min_count) in force at ``site``."""
    active = {rule.label: (rule.threshold, rule.min_count) for rule in rules.watch}
    for label, threshold in rules.sites.get(site or "", {}).items():
        if threshold is None:
            active.pop(label, None)
        else:
            active[label] = (threshold, active.get(label, (threshold, 1))[1])
    return active


def decide_alert(event: Event, rules: RulesConfig, site: str | None, already_alerted: bool) -> AlertDecision | None:
    """The alert this event raises now, if any: at most one per event.

    A watch-listed label alerts when its aggregated probability in the event reaches its
    threshold and enough crops of it were seen in one frame; the highest-scoring such label wins.
    """
    if already_alerted:
        return None
    candidates = [
        AlertDecision(label, score, threshold)
        for label, (threshold, min_count) in thresholds_for(rules, site).items()
        if (score := event.probs.get(label, 0.0)) >= threshold and event.counts.get(label, 0) >= min_count
    ]
    return max(candidates, key=lambda d: d.score, default=None)


def alert_reason(event: Event, rules: RulesConfig, site: str | None, alerted: bool) -> str:
    """Why this event did or did not alert, in a few words (the event message's ``alert_reason``)."""
    active = thresholds_for(rules, site)
    if not active:
        return "no watch-list"
    seen = [(label, event.probs.get(label, 0.0), threshold, min_count, event.counts.get(label, 0))
            for label, (threshold, min_count) in active.items() if event.probs.get(label, 0.0) > 0]
    if not seen:
        return f"no watch-listed label ({', '.join(sorted(active))}) in this event"
    label, score, threshold, min_count, count = max(seen, key=lambda s: s[1] - s[2])
    if score >= threshold and count >= min_count:
        return f"{label} {score:.2f} >= threshold {threshold:.2f}"
    if alerted:  # the open burst met the rule on an earlier frame; the frames after it pulled the mean down
        return (f"alerted mid-burst (the burst so far met {label}'s threshold {threshold:.2f}); "
                f"the whole burst ends at {label} {score:.2f}")
    if score < threshold:
        return f"{label} {score:.2f} < threshold {threshold:.2f}"
    return f"{label}: {count} crops in one frame < min_count {min_count}"
