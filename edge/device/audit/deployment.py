"""Deployment records: what one run of the appliance did, in counts, built from the audit log.

A deployment is one service run, from its `service_start` record to its `service_stop` (or, after a
crash, its last record). The pipeline's counters reach the log at stop (and at watchlist expiry) as
a `deployment_stop` record; the report sums nothing about people, only counts. The published record
(`deployment_record`, also sent to `<prefix>/audit`) follows the format in docs/PRIVACY.md, in the
spirit of the deployment records UK police forces publish after each live facial recognition use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge.core.audit import log as al
from edge.core.audit.log import AuditLog, Record, iter_records, iter_segment, list_segments, parse_iso
from edge.core.config import Config
from edge.core.timefmt import format_utc
from edge.core.types import Counters
from edge.device.audit.service import thresholds, watchlist_fields

FORMAT = "lfr-edge-deployment-record/1"
_COUNTER_KEYS = (
    "frames", "frames_dropped", "faces_seen", "embeddings", "matches", "non_match_discarded", "source_reconnects",
)  # fmt: skip


def counter_fields(counters: Counters) -> dict[str, Any]:
    d = asdict(counters)
    return {k: int(d[k]) for k in _COUNTER_KEYS} | {"rejections": {k: int(v) for k, v in d["rejections"].items()}}


def _new(start: Record) -> dict[str, Any]:
    f = start.fields
    return {
        "format": FORMAT,
        "device_id": f.get("device_id", ""),
        "location": f.get("location", ""),
        "camera": f.get("camera", ""),
        "software_version": f.get("version", ""),
        "start": start.time,
        "end": None,
        "duration_s": 0.0,
        "ended": "running",
        "config_hash": "",
        "models": {},
        "thresholds": {},
        "below_floor_override": None,
        "data_protection": None,
        "threshold_changes": 0,
        "watchlist_version": None,
        "watchlist_size": 0,
        "watchlists": [],
        "watchlist_events": {"installed": 0, "refused": 0, "expired": 0, "wiped": 0},
        "frames_processed": 0,
        "frames_dropped": 0,
        "faces_detected": 0,
        "faces_rejected_quality": {},
        "faces_compared": 0,
        "alerts_raised": 0,
        "alert_records": 0,
        "non_match_templates_discarded": 0,
        "non_match_templates_retained": 0,
        "spool_drops": 0,
        "counters_at": None,
        "audit_first_seq": start.seq,
        "audit_last_seq": start.seq,
        "audit_last_hash": start.hash,
    }


def _note_watchlist(dep: dict[str, Any], f: dict[str, Any], event: str) -> None:
    if f.get("version") is None:
        return
    entry = {k: f.get(k) for k in ("version", "subjects", "templates", "signer", "expires_at")}
    entry["event"] = event
    if not dep["watchlists"] or dep["watchlists"][-1]["version"] != entry["version"]:
        dep["watchlists"].append(entry)
    dep["watchlist_version"] = f.get("version")
    dep["watchlist_size"] = int(f.get("subjects") or 0)


def _apply(dep: dict[str, Any], r: Record) -> None:
    f, k = r.fields, r.kind
    dep["end"] = r.time
    dep["audit_last_seq"], dep["audit_last_hash"] = r.seq, r.hash
    if k == al.CONFIG:
        dep["config_hash"] = f.get("config_hash", "")
    elif k == al.MODELS:
        dep["models"] = dict(f)
    elif k == al.THRESHOLDS:
        dep["thresholds"] = dict(f)
    elif k == al.BELOW_FLOOR_OVERRIDE and f.get("in_use"):
        dep["below_floor_override"] = {"below": f.get("below"), "reason": f.get("reason")}
    elif k == "data_protection":
        dep["data_protection"] = dict(f)
    elif k == al.THRESHOLD_CHANGE:
        dep["threshold_changes"] += 1
        if isinstance(f.get("new"), dict):
            dep["thresholds"] = dict(f["new"])
    elif k in ("watchlist_loaded", al.WATCHLIST_INSTALLED):
        if k == al.WATCHLIST_INSTALLED:
            dep["watchlist_events"]["installed"] += 1
        _note_watchlist(dep, f, "installed" if k == al.WATCHLIST_INSTALLED else "loaded")
    elif k in (al.WATCHLIST_REFUSED, al.WATCHLIST_EXPIRED, al.WATCHLIST_WIPED):
        dep["watchlist_events"][k.removeprefix("watchlist_")] += 1
    elif k == al.ALERT:
        dep["alert_records"] += 1
    elif k == al.SPOOL_DROP:
        dep["spool_drops"] += int(f.get("count") or 0)
    elif k == al.DEPLOYMENT_STOP:
        # Counters are cumulative over the run: the latest snapshot supersedes earlier ones.
        dep["frames_processed"] = int(f.get("frames") or 0)
        dep["frames_dropped"] = int(f.get("frames_dropped") or 0)
        dep["faces_detected"] = int(f.get("faces_seen") or 0)
        dep["faces_rejected_quality"] = dict(f.get("rejections") or {})
        dep["faces_compared"] = int(f.get("embeddings") or 0)
        dep["alerts_raised"] = int(f.get("matches") or 0)
        dep["non_match_templates_discarded"] = int(f.get("non_match_discarded") or 0)
        dep["counters_at"] = r.time
        if isinstance(f.get("watchlist"), dict):
            _note_watchlist(dep, f["watchlist"], "in force")
    elif k == al.SERVICE_STOP:
        dep["ended"] = "stopped"


def _finish(dep: dict[str, Any]) -> dict[str, Any]:
    if dep["end"] is not None:
        dep["duration_s"] = round(parse_iso(dep["end"]) - parse_iso(dep["start"]), 3)
    return dep


def deployments(records: Iterable[Record], since: float | None = None) -> list[dict[str, Any]]:
    """One record per service run, oldest first; `since` keeps runs that were still going at that time."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for r in records:
        if r.kind == al.SERVICE_START:
            if cur is not None:
                if cur["ended"] == "running":
                    cur["ended"] = "unclean (no stop record)"
                out.append(_finish(cur))
            cur = _new(r)
            continue
        if cur is None or r.kind in (al.CHECKPOINT, al.SEGMENT_START, al.AUDIT_PRUNED):
            if cur is not None and r.kind == al.CHECKPOINT:
                cur["audit_last_seq"], cur["audit_last_hash"] = r.seq, r.hash
            continue
        if cur["ended"] == "stopped" and r.kind not in (al.DEPLOYMENT_RECORD,):
            continue  # records between a stop and the next start belong to no run (e.g. a wipe)
        if r.kind != al.DEPLOYMENT_RECORD:
            _apply(cur, r)
    if cur is not None:
        out.append(_finish(cur))
    if since is not None:
        out = [d for d in out if d["end"] is None or parse_iso(d["end"]) >= since]
    return out


def _records_of_last_run(directory: Path) -> list[Record]:
    """The records since the last service_start, reading segments newest first (no full scan)."""
    chunks: list[list[Record]] = []
    for seg in reversed(list_segments(directory)):
        recs = list(iter_segment(seg))
        starts = [i for i, r in enumerate(recs) if r.kind == al.SERVICE_START]
        if starts:
            chunks.append(recs[starts[-1]:])
            break
        chunks.append(recs)
    return [r for chunk in reversed(chunks) for r in chunk]


def record_deployment(
    audit: AuditLog, counters: Counters, cfg: Config, watchlist: Any = None, trigger: str = "stop"
) -> dict[str, Any]:
    """Write the run's counters and its deployment record (published through the audit hook).

    Call at stop (trigger "stop", before `audit_stop`) and when the watchlist expires (trigger
    "watchlist_expired"); the latest counters supersede earlier ones in the report.
    """
    fields = counter_fields(counters) | {"trigger": trigger, "watchlist": watchlist_fields(watchlist)}
    audit.append(al.DEPLOYMENT_STOP, fields)
    runs = deployments(_records_of_last_run(audit.dir))
    if runs:
        dep = runs[-1]
    else:  # no start record (audit_config_start not called): still report the counts
        now = format_utc(time.time())
        dep = _new(Record(audit.next_seq - 1, now, al.SERVICE_START, {}, "", audit.last_hash))
        _apply(dep, Record(audit.next_seq - 1, now, al.DEPLOYMENT_STOP, fields, "", audit.last_hash))
        dep["ended"] = "unknown (no start record)"
    if not dep["location"]:
        dep["location"] = cfg.device.location
    if not dep["device_id"]:
        dep["device_id"] = cfg.device.id
    if not dep["thresholds"]:
        dep["thresholds"] = thresholds(cfg)
    dep["trigger"] = trigger
    audit.append(al.DEPLOYMENT_RECORD, _publishable(dep))
    return dep


def _expected(th: dict[str, Any]) -> str:
    rate = th.get("expected_false_alerts_per_10k_faces")
    if rate is None:
        return "not stated by this device version"
    return f"{rate} per 10,000 faces with a {th.get('expected_for_list_size')}-subject list (model estimate)"


def _publishable(dep: dict[str, Any]) -> dict[str, Any]:
    """The record as an audit record: bounded lists (a run may see many watchlists)."""
    out = dict(dep)
    out["watchlists"] = dep["watchlists"][-8:]
    return out


def load_deployments(directory: Path, since: float | None = None) -> list[dict[str, Any]]:
    return deployments(iter_records(directory), since)


def format_text(deps: list[dict[str, Any]]) -> str:
    """What a force would publish: one block per deployment, counts only."""
    if not deps:
        return "no deployments in the audit log"
    blocks = []
    for d in deps:
        models = ", ".join(f"{role} {m.get('id')}" for role, m in d["models"].items() if isinstance(m, dict))
        th = d["thresholds"]
        cats = th.get("category_thresholds") or {}
        thr = (
            f"{th.get('threshold')} {th.get('units', 'cosine')} ({th.get('operating_point', 'explicit')}; "
            f"floor {th.get('floor')})"
            if th
            else "unknown"
        )
        if cats:
            thr += "; " + ", ".join(f"{k} {v}" for k, v in cats.items())
        wl = (
            f"version {d['watchlist_version']}, {d['watchlist_size']} subject{'' if d['watchlist_size'] == 1 else 's'}"
            if d["watchlist_version"] is not None
            else "none in force"
        )
        rej = d["faces_rejected_quality"]
        rej_total = sum(int(v) for v in rej.values())
        lines = [
            f"Deployment of {d['device_id']} at {d['location'] or '(no location label)'}",
            f"  start                 {d['start']}",
            f"  end                   {d['end']} ({d['ended']}, {d['duration_s'] / 60:.1f} min)",
            f"  watchlist             {wl}",
            f"  frames processed      {d['frames_processed']} (dropped {d['frames_dropped']})",
            f"  faces detected        {d['faces_detected']} (not good enough to compare: {rej_total})",
            f"  faces compared        {d['faces_compared']}",
            f"  alerts raised         {d['alerts_raised']}",
            f"  threshold             {thr}",
            f"  expected false alerts {_expected(th)}",
            f"  models                {models or 'unknown'}",
            f"  non-match templates   {d['non_match_templates_discarded']} discarded at once, "
            f"{d['non_match_templates_retained']} retained",
        ]
        if d["below_floor_override"]:
            lines.append(f"  BELOW-FLOOR OVERRIDE  {d['below_floor_override'].get('reason')}")
        protection = d.get("data_protection") or {}
        if protection.get("alerts_sealed") is False:
            lines.append(f"  ALERTS NOT SEALED     {protection.get('unsealed_reason')}")
        if protection.get("watchlist_at_rest"):
            lines.append("  WATCHLIST AT REST     kept on the device's card (watchlist.at_rest)")
        if d["spool_drops"]:
            lines.append(f"  alerts dropped        {d['spool_drops']} (spool full or expired)")
        if d["counters_at"] is None:
            lines.append("  counts                not recorded (the run ended without a stop record)")
        lines.append(f"  audit                 seq {d['audit_first_seq']}..{d['audit_last_seq']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
