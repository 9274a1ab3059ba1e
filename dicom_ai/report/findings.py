"""A job's findings as people read them: one line for the worklist, the log and the CLI.

``findings`` is the JSON the worker stores on a job (:attr:`dicom_ai.cache.db.Job.findings`):
label or finding name -> dict. A segmentation label has ``volume_ml`` (mL), ``mean_hu`` (HU) and,
when the result is implausible, ``implausible`` (a list of reasons, from
:func:`dicom_ai.report.plausibility.check_plausibility`); a classification finding has
``class``, ``probability`` (0..1) and ``attention`` (bool). :class:`Findings` reads that JSON
(:meth:`Findings.from_json`) into typed :class:`Finding` entries and writes it back
(:meth:`Findings.to_json`) unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One entry of a job's findings: a segmentation label (``volume_ml``, ``mean_hu``,
    ``implausible``) or a classification finding (``klass``, JSON ``class``; ``probability``,
    ``attention``, ``probabilities``). Numbers are kept as stored."""

    volume_ml: float | None = None
    mean_hu: float | None = None
    implausible: tuple[str, ...] = ()
    klass: str | None = None
    probability: float | None = None
    attention: bool = False
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def is_classification(self) -> bool:
        """A classification finding (it names a class)."""
        return self.klass is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        """The finding of one stored JSON object; ``implausible`` may be a list or one line."""
        given = data.get("implausible") or []
        reasons = tuple(str(r) for r in ([given] if isinstance(given, str) else given) if r)
        return cls(volume_ml=data.get("volume_ml"), mean_hu=data.get("mean_hu"), implausible=reasons,
                   klass=data.get("class"), probability=data.get("probability"),
                   attention=bool(data.get("attention")), probabilities=dict(data.get("probabilities") or {}))

    def to_json(self) -> dict[str, Any]:
        """The JSON object the worker stores for this finding."""
        if self.is_classification:
            return {"class": self.klass, "probability": self.probability, "attention": self.attention,
                    "probabilities": dict(self.probabilities)}
        out: dict[str, Any] = {"volume_ml": self.volume_ml, "mean_hu": self.mean_hu}
        if self.implausible:
            out["implausible"] = list(self.implausible)
        return out


@dataclass(frozen=True)
class Findings:
    """A job's findings: label or finding name -> :class:`Finding`, in stored order."""

    items: dict[str, Finding] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Findings | Mapping[str, Any] | None) -> Findings:
        """The findings of :attr:`dicom_ai.cache.db.Job.findings` (None or empty: none); an entry
        that is not a JSON object is left out."""
        if isinstance(data, Findings):
            return data
        return cls({name: Finding.from_json(f) for name, f in (data or {}).items() if isinstance(f, dict)})

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The JSON the worker stores on the job."""
        return {name: f.to_json() for name, f in self.items.items()}

    def __iter__(self) -> Iterator[tuple[str, Finding]]:
        return iter(self.items.items())

    def reasons(self) -> list[str]:
        """The distinct reasons the result is implausible, in order; empty when plausible."""
        reasons: list[str] = []
        for _, f in self:
            for reason in f.implausible:
                if reason not in reasons:
                    reasons.append(reason)
        return reasons

    def needs_attention(self) -> bool:
        """A finding asks for attention, or the result is implausible."""
        return any(f.attention for _, f in self) or bool(self.reasons())

    def text(self) -> str:
        """See :func:`findings_text`."""
        parts = []
        for name, f in self:
            if f.volume_ml is not None:
                parts.append(f"{name} {f.volume_ml:.0f} mL")
            elif f.klass is not None:
                parts.append(f"{name}: {f.klass} ({f.probability or 0:.2f})"
                             + (" (attention)" if f.attention else ""))
        text = ", ".join(parts)
        reasons = self.reasons()
        if reasons:
            text += f" (implausible: {'; '.join(reasons)})"
        return text


def findings_reasons(findings: Findings | dict[str, Any] | None) -> list[str]:
    """Why a segmentation job's result is implausible: the distinct reasons in its findings
    (``findings[<label>]["implausible"]``, a list of lines, written by the worker from
    :func:`dicom_ai.report.plausibility.check_plausibility`), in order; empty when plausible."""
    return Findings.from_json(findings).reasons()


def findings_text(findings: Findings | dict[str, Any] | None) -> str:
    """A job's findings in one line: ``Left lung 1850 mL, Right lung 913 mL`` (segmentation;
    followed by ``(implausible: <reasons>)`` when the result is implausible) or
    ``Target Region: Chest (0.97)`` (classification; ``(attention)`` when it asks for it)."""
    return Findings.from_json(findings).text()
