"""Check an audit log: the hash chain, the segment links, the prune records and the signed checkpoints.

Every problem names the record (seq), where it is (segment file and line) and what broke, so a
reviewer can go straight to it. One broken record does not hide the rest: after a problem the check
resynchronises on the record as stored and goes on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.core.audit.log import (
    AUDIT_PRUNED,
    CHECKPOINT,
    GENESIS_HASH,
    RECORD_KEYS,
    SEGMENT_RE,
    SEGMENT_START,
    canonical,
    legacy_canonical,
    list_segments,
    record_hash,
    verify_signature,
)
from edge.core.keys import key_id


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int | None  # the record's seq as stored (None when the line cannot be read)
    segment: str
    line: int  # 1-based line in the segment file
    what: str


@dataclass(slots=True)
class VerifyReport:
    directory: str
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    checkpoints_verified: int = 0
    signatures_checked: bool = False
    key_id: str = ""
    unsigned_tail: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass(slots=True)
class _State:
    expected: int | None = None  # seq the next record must carry
    last_hash: str | None = None  # hash of the record before (None: unreadable, skip the link check)
    since_checkpoint: int = 0
    run_flagged: bool = False
    head: tuple[int, str, str, int] | None = None  # first record: seq, prev_hash, segment, line
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)
    prunes: dict[int, str] = field(default_factory=dict)  # last pruned seq -> its hash
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # problem index, first, last missing


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not valid JSON: the line was edited or corrupted"
    if not isinstance(d, dict) or set(d) != RECORD_KEYS:
        return None, "not an audit record (fields missing or added): the line was edited"
    types = {"seq": int, "time": str, "kind": str, "fields": dict, "prev_hash": str, "hash": str}
    for k, t in types.items():
        if not isinstance(d[k], t) or (t is int and isinstance(d[k], bool)):
            return None, f"field {k!r} has the wrong type: the line was edited"
    return d, ""


def _check_checkpoint(
    d: dict[str, Any], pub: Ed25519PublicKey | None, rep: VerifyReport, errs: list[str]
) -> None:
    rep.checkpoints += 1
    f = d["fields"]
    covers_seq, covers_hash, sig = f.get("covers_seq"), f.get("covers_hash"), f.get("signature")
    if covers_seq != d["seq"] - 1 or covers_hash != d["prev_hash"]:
        errs.append("checkpoint does not cover the record before it (moved or edited)")
        return
    if pub is None:
        return
    if not isinstance(sig, str) or not isinstance(covers_seq, int) or not isinstance(covers_hash, str):
        errs.append("checkpoint has no signature")
        return
    if verify_signature(pub, covers_seq, covers_hash, sig):
        rep.checkpoints_verified += 1
        return
    signer = f.get("key_id")
    who = f" (claims key {signer}, device key is {rep.key_id})" if signer and signer != rep.key_id else ""
    errs.append(
        "checkpoint signature does not verify with the device key" + who
        + ": a forged checkpoint, or the records it covers were rewritten"
    )


def _check_record(
    d: dict[str, Any],
    raw: bytes,
    seg: str,
    line: int,
    first_in_segment: int | None,
    st: _State,
    rep: VerifyReport,
    pub: Ed25519PublicKey | None,
    checkpoint_every: int | None,
) -> list[str]:
    errs: list[str] = []
    seq = d["seq"]
    # Records are written in edge.core.signing's canonical form; logs from releases before it used
    # Python's sort_keys form. Either is accepted, and the hash is checked over the form the line is in.
    form = canonical
    if canonical(d) != raw:
        if legacy_canonical(d) == raw:
            form = legacy_canonical
        else:
            errs.append("bytes differ from the record's canonical form: the line was edited")
    if record_hash(seq, d["time"], d["kind"], d["fields"], d["prev_hash"], form) != d["hash"]:
        errs.append("hash does not match the record's content: the record was edited")
    if st.expected is None:
        st.head = (seq, d["prev_hash"], seg, line)
        if seq == 0 and d["prev_hash"] != GENESIS_HASH:
            errs.append("the first record does not start the chain (prev_hash is not the genesis hash)")
    elif seq > st.expected:
        st.gaps.append((len(rep.problems), st.expected, seq - 1))
        missing = f"seq {st.expected}" if seq - 1 == st.expected else f"seq {st.expected}..{seq - 1}"
        errs.append(f"expected seq {st.expected}, found {seq}: {missing} missing here (deleted)")
    elif seq < st.expected:
        if seq in st.seen:
            s, ln = st.seen[seq]
            errs.append(f"seq {seq} already appeared at {s} line {ln}: a record was inserted or duplicated")
        else:
            errs.append(f"expected seq {st.expected}, found {seq}: records reordered")
    if st.expected is not None and st.last_hash is not None and d["prev_hash"] != st.last_hash:
        errs.append("prev_hash does not match the record before it: a record was deleted, inserted or moved")
    if first_in_segment is not None:
        if seq != first_in_segment:
            errs.append(f"segment file name says it starts at seq {first_in_segment}, its first record is {seq}")
        if rep.segments > 1 or (st.expected is None and seq > 0):
            f = d["fields"]
            if d["kind"] != SEGMENT_START:
                errs.append("a segment must start with a segment_start record: records before it were deleted")
            elif f.get("previous_last_hash") != d["prev_hash"] or f.get("previous_last_seq") != seq - 1:
                errs.append("segment_start does not name the previous segment's last record")
    if d["kind"] == CHECKPOINT:
        _check_checkpoint(d, pub, rep, errs)
        st.since_checkpoint, st.run_flagged = 0, False
    else:
        st.since_checkpoint += 1
        # +2: a segment_start and an audit_pruned may sit between a checkpoint and its successor
        if checkpoint_every and st.since_checkpoint > checkpoint_every + 2 and not st.run_flagged:
            st.run_flagged = True
            errs.append(f"more than {checkpoint_every} records without a signed checkpoint: checkpoints removed")
    if d["kind"] == AUDIT_PRUNED:
        f = d["fields"]
        if isinstance(f.get("last_seq"), int) and isinstance(f.get("last_hash"), str):
            st.prunes[f["last_seq"]] = f["last_hash"]
    return errs


def verify_log(
    directory: str | Path, public_key: Ed25519PublicKey | None, checkpoint_every: int | None = None
) -> VerifyReport:
    """Check every segment in order; `public_key` None checks the chain but not the signatures."""
    directory = Path(directory)
    rep = VerifyReport(str(directory), signatures_checked=public_key is not None)
    if public_key is not None:
        rep.key_id = key_id(public_key)
    segments = list_segments(directory)
    st = _State()
    for si, path in enumerate(segments):
        rep.segments += 1
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # bytes after the final newline: empty unless a write was cut short
        m = SEGMENT_RE.match(path.name)
        first_name_seq = int(m.group(1)) if m else None
        for ln, raw in enumerate(lines, 1):
            d, why = _parse(raw)
            if d is None:
                guess = st.expected
                rep.problems.append(Problem(guess, path.name, ln, why))
                st.last_hash = None
                st.expected = None if guess is None else guess + 1
                continue
            errs = _check_record(
                d, raw, path.name, ln, first_name_seq if ln == 1 else None, st, rep, public_key,
                checkpoint_every,
            )
            seq = d["seq"]
            if errs:
                rep.problems.append(Problem(seq, path.name, ln, "; ".join(errs)))
            st.seen.setdefault(seq, (path.name, ln))
            st.expected, st.last_hash = seq + 1, d["hash"]
            rep.records += 1
            rep.first_seq = seq if rep.first_seq is None else rep.first_seq
            rep.last_seq = seq
        if torn:
            where = Problem(st.expected, path.name, len(lines) + 1, "")
            if si == len(segments) - 1:
                rep.warnings.append(
                    f"{path.name} line {where.line}: incomplete last line ({len(torn)} bytes, an interrupted "
                    "write); the service discards it at its next start"
                )
            else:
                rep.problems.append(
                    Problem(where.seq, where.segment, where.line, "segment ends in an incomplete line (truncated)")
                )
    _explain_gaps(st, rep)
    _check_head(st, rep)
    rep.unsigned_tail = st.since_checkpoint
    if rep.records == 0:
        rep.warnings.append(f"{directory}: the audit log holds no records")
    elif st.since_checkpoint:
        rep.warnings.append(
            f"the last {st.since_checkpoint} record(s) are not yet covered by a signed checkpoint "
            "(normal while the service runs; the service signs the head at stop)"
        )
    if public_key is None and rep.checkpoints:
        rep.warnings.append("no device public key given: checkpoint signatures were not checked")
    return rep


def _explain_gaps(st: _State, rep: VerifyReport) -> None:
    """A 'missing' record that turns up later was moved, not deleted: say so."""
    for idx, first, last in st.gaps:
        if all(s in st.seen for s in range(first, last + 1)):
            p = rep.problems[idx]
            moved = [f"seq {s} at {st.seen[s][0]} line {st.seen[s][1]}" for s in range(first, min(last, first + 3) + 1)]
            what = p.what.replace("missing here (deleted)", "out of place (records reordered; " + ", ".join(moved) + ")")
            rep.problems[idx] = Problem(p.seq, p.segment, p.line, what)


def _check_head(st: _State, rep: VerifyReport) -> None:
    """A log that does not start at seq 0 must record, later on, that its head was pruned."""
    if st.head is None or st.head[0] == 0:
        return
    seq, prev_hash, seg, line = st.head
    if st.prunes.get(seq - 1) != prev_hash:
        rep.problems.insert(
            0,
            Problem(
                seq, seg, line,
                f"the log starts at seq {seq} but no audit_pruned record accounts for seq 0..{seq - 1}: "
                "the oldest records were deleted",
            ),
        )
