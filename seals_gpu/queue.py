"""People as the oracle: each round's picks go out as a queue file and the answers come back as a file.

``seals-gpu run ... --oracle queue`` stops after selecting a round: the items to label are written to
``RUN/queue/round-NNNN.parquet`` (one row per (concept, id), however many strategy x mode units of the concept
asked for it) and, beside it, ``round-NNNN.labelstudio.json`` (Label Studio tasks, with the model's score as a
prediction). People answer in ``RUN/labels/round-NNNN.csv`` / ``.parquet`` (columns ``concept, id, label``,
label 0 or 1) or ``.json`` (a Label Studio JSON export), and ``--resume`` reads them. An answer file is
checked whole before anything is written: an id that was not queued for its concept in that round, a queued
item without an answer, a label other than 0/1, two rows that disagree, missing columns or an empty file are
refused in one line naming the file and the row (:class:`~seals_gpu.errors.AnswerError`, exit code 2).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_parquet
from .errors import AnswerError
from .pool import isin_sorted
from .store import Store

QUEUE_DIR = "queue"
LABELS_DIR = "labels"
ANSWER_SUFFIXES = (".csv", ".parquet", ".json")
# Label Studio: the Choices control's values and the label each one means (compared lower-cased, stripped)
CHOICE_LABELS = {"positive": 1, "yes": 1, "negative": 0, "no": 0}
LS_FROM_NAME = "label"  # the Choices control's name in the labeling config the README gives
STORE_ONLY = ("id", "embedding", "labels", "split")  # store columns never copied into a queue file


def round_name(round_no: int) -> str:
    return f"round-{round_no:04d}"


def queue_files(out: Path, round_no: int) -> tuple[Path, Path]:
    """The queue Parquet file and its Label Studio task list for a round."""
    base = out / QUEUE_DIR / round_name(round_no)
    return base.with_suffix(".parquet"), base.with_name(base.name + ".labelstudio.json")


def answer_candidates(out: Path, round_no: int) -> list[Path]:
    return [out / LABELS_DIR / f"{round_name(round_no)}{s}" for s in ANSWER_SUFFIXES]


def concept_key(c: Any) -> str:
    """How a concept is matched between the run and an answer file: its text (``3`` and ``"3"`` agree)."""
    return str(c)


@dataclass
class Pending:
    """A round selected and queued, awaiting its answers (held by the checkpoint): each unit's picks in
    selection order, and the seconds the selection took per (strategy, mode) for the round's metrics."""

    round: int
    chosen: dict[int, np.ndarray]
    seconds: dict[tuple[str, str], float]
    probe: dict[int, np.ndarray] | None = None  # --probe: which picks are probes (bool, aligned with chosen)


@dataclass(frozen=True)
class Asked:
    """One round's questions: for each unit that asked, its concept, strategy, mode and the ids it picked (in
    selection order), and the model's probability of a positive for each (NaN before the first model)."""

    round: int
    concepts: list[Any]
    strategies: list[str]
    modes: list[str]
    ids: list[np.ndarray]
    scores: list[np.ndarray]
    probe: list[np.ndarray] | None = None  # --probe: which ids each unit asked as probes (bool per id)

    def expected(self) -> dict[str, np.ndarray]:
        """Sorted unique ids queued per concept key."""
        per: dict[str, list[np.ndarray]] = {}
        for c, ids in zip(self.concepts, self.ids, strict=True):
            per.setdefault(concept_key(c), []).append(ids)
        return {k: np.unique(np.concatenate(v)).astype(np.int64) for k, v in per.items()}


def queue_table(asked: Asked, store: Store | None) -> pa.Table:
    """One row per (concept, id) asked in the round, in the order the units asked (the first unit to ask
    gives ``strategy``, ``mode`` and ``score``; ``asked_by`` lists every ``strategy/mode`` that asked), then
    the store's pass-through columns (text, uri, ...; never its labels or split)."""
    rows: dict[tuple[str, int], int] = {}
    concept, strategy, mode, ids, score, asked_by = [], [], [], [], [], []
    probe: list[bool] = []
    flags = asked.probe or [np.zeros(a.size, bool) for a in asked.ids]
    for c, s, m, picks, sc, fl in zip(
        asked.concepts, asked.strategies, asked.modes, asked.ids, asked.scores, flags, strict=True
    ):
        for i, p, f in zip(picks.tolist(), sc.tolist(), fl.tolist(), strict=True):
            key = (concept_key(c), int(i))
            if key in rows:
                asked_by[rows[key]].append(f"{s}/{m}")
                probe[rows[key]] |= bool(f)
                continue
            probe.append(bool(f))
            rows[key] = len(ids)
            concept.append(c)
            strategy.append(s)
            mode.append(m)
            ids.append(int(i))
            score.append(float(p))
            asked_by.append([f"{s}/{m}"])
    ints = all(isinstance(c, (int, np.integer)) for c in asked.concepts)
    table = pa.table(
        {
            "concept": pa.array(
                [int(c) for c in concept] if ints else [str(c) for c in concept],
                type=pa.int64() if ints else pa.string(),
            ),
            "strategy": pa.array(strategy, type=pa.string()),
            "mode": pa.array(mode, type=pa.string()),
            "round": pa.array(np.full(len(ids), asked.round, np.int64)),
            "id": pa.array(np.asarray(ids, np.int64)),
            "score": pa.array(np.asarray(score, np.float64)),
            "asked_by": pa.array([",".join(a) for a in asked_by], type=pa.string()),
        }
    )
    if asked.probe is not None:  # --probe: true where some unit asked for the item as a probe
        table = table.append_column("probe", pa.array(probe, type=pa.bool_()))
    for name, col in _passthrough(store, np.asarray(ids, np.int64)).items():
        table = table.append_column(name, col)
    return table


def _passthrough(store: Store | None, ids: np.ndarray) -> dict[str, pa.Array]:
    """The store's other columns (text, uri, ...) for ``ids``, in that order (one streaming pass over the
    store's row groups that may hold them, by their id statistics, reading only ``id`` and those columns)."""
    if store is None:
        return {}
    names = [n for n in store.schema.names if n not in STORE_ONLY]
    if not names:
        return {}
    want = np.unique(ids)
    found: list[pa.Table] = []
    for fi, f in enumerate(store.files):
        groups = store.row_groups_with(fi, want)  # row groups whose id statistics cannot hold one: skipped
        if not groups:
            continue
        for rb in pq.ParquetFile(f, pre_buffer=False).iter_batches(columns=["id", *names], row_groups=groups):
            batch_ids = np.asarray(rb.column("id").to_numpy(zero_copy_only=False), dtype=np.int64)
            hit = isin_sorted(batch_ids, want)
            if hit.any():
                found.append(pa.Table.from_batches([rb]).filter(pa.array(hit)))
    if not found:
        return {n: pa.nulls(ids.size, store.schema.field(n).type) for n in names}
    table = pa.concat_tables(found)
    all_ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
    order = np.argsort(all_ids, kind="stable")
    pos = order[np.searchsorted(all_ids[order], ids)]
    take = pa.array(pos, type=pa.int64())
    return {n: table.column(n).take(take).combine_chunks() for n in names}


def labelstudio_tasks(table: pa.Table, model_version: str) -> list[dict[str, Any]]:
    """Label Studio tasks for a queue table: ``data`` holds the item (``text``, or ``image`` when the store
    has a ``uri`` column), its ``id`` (as a string: JSON numbers lose int64 precision in a browser), its
    ``concept`` and round, and every other scalar pass-through column; ``predictions`` holds the model's
    probability of a positive as the ``score`` the Data Manager sorts by, and its guess as a choice."""
    cols = table.to_pydict()
    extra = [
        n for n in table.column_names if n not in ("concept", "id", "round", "score", "strategy", "mode")
    ]
    obj = "image" if "uri" in cols else "text"
    tasks = []
    for r in range(table.num_rows):
        data: dict[str, Any] = {}
        for n in extra:
            v = cols[n][r]
            if v is None or isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v)):
                data[n] = v
        data["id"] = str(cols["id"][r])
        data["concept"] = cols["concept"][r]
        data["round"] = cols["round"][r]
        if obj == "image":
            data["image"] = cols["uri"][r]
        elif "text" not in data or data["text"] is None:
            data["text"] = f"item {cols['id'][r]} (concept {cols['concept'][r]})"
        task: dict[str, Any] = {"data": data}
        p = cols["score"][r]
        if p is not None and math.isfinite(p):
            task["predictions"] = [
                {
                    "model_version": model_version,
                    "score": float(p),
                    "result": [
                        {
                            "from_name": LS_FROM_NAME,
                            "to_name": obj,
                            "type": "choices",
                            "value": {"choices": ["positive" if p >= 0.5 else "negative"]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    return tasks


def write_queue(out: Path, asked: Asked, store: Store | None) -> tuple[Path, Path]:
    """Write the round's queue file and Label Studio task list (each atomically); return their paths."""
    table = queue_table(asked, store)
    qpath, lspath = queue_files(out, asked.round)
    write_parquet(qpath, table)
    tasks = labelstudio_tasks(table, f"seals-gpu round {asked.round}")
    with atomic_path(lspath) as tmp:
        tmp.write_text(json.dumps(tasks, indent=1) + "\n")
    return qpath, lspath


# ---------------------------------------------------------------------------------------------- answers
def find_answers(out: Path, round_no: int) -> Path:
    """The one answer file of a round; refused when there is none (saying where it goes) or more than one."""
    present = [p for p in answer_candidates(out, round_no) if p.exists()]
    if len(present) > 1:
        raise AnswerError(
            f"round {round_no} has {len(present)} answer files ({', '.join(str(p) for p in present)}); "
            "keep exactly one"
        )
    if not present:
        q, ls = queue_files(out, round_no)
        raise AnswerError(
            f"round {round_no} awaits answers: label the items of {q} (or import {ls} into Label Studio) and "
            f"save the answers as {out / LABELS_DIR / round_name(round_no)}.csv or .parquet (columns concept, "
            "id, label; label 1 or 0) or .json (a Label Studio export), then run the same command again"
        )
    if not present[0].is_file():
        raise AnswerError(f"answer file {present[0]} is not a file; replace it with the round's answers")
    return present[0]


def read_answers(path: Path, round_no: int, expected: dict[str, np.ndarray]) -> dict[tuple[str, int], bool]:
    """Every queued ``(concept key, id)`` of the round with its answer, from ``path``: refused in one line
    naming the file and the row unless each queued item has exactly one answer (agreeing duplicates merge)
    and nothing else is answered."""
    if path.suffix == ".csv":
        rows = _csv_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _labelstudio_rows(path)
    if not rows:
        raise AnswerError(f"{path} holds no answers; answer every item of the round's queue file")
    answers: dict[tuple[str, int], bool] = {}
    where: dict[tuple[str, int], str] = {}
    for at, concept, item, label in rows:
        key = (concept_key(concept), item)
        queued = expected.get(key[0])
        if queued is None:
            raise AnswerError(
                f"{path} {at}: concept {concept!r} is not a concept of this run; answer only the queued items"
            )
        if not isin_sorted(np.array([item], np.int64), queued)[0]:
            raise AnswerError(
                f"{path} {at}: id {item} was not queued for concept {concept!r} in round {round_no}; "
                "answer only the items of the round's queue file"
            )
        if key in answers and answers[key] != label:
            raise AnswerError(
                f"{path} {at}: concept {concept!r} id {item} is labeled {int(label)} here but "
                f"{int(answers[key])} at {where[key]}; keep one answer per item"
            )
        answers[key] = label
        where.setdefault(key, at)
    missing = [(c, int(i)) for c, ids in expected.items() for i in ids.tolist() if (c, int(i)) not in answers]
    if missing:
        c, i = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise AnswerError(
            f"{path}: no answer for concept {c} id {i}{more} queued in round {round_no}; answer every item "
            "of the round's queue file"
        )
    return answers


Row = tuple[str, Any, int, bool]  # (where: "line 3" / "row 2" / "task 5", concept, id, label)


def _id_of(v: Any, path: Path, at: str) -> int:
    try:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        i = int(v.strip()) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        raise AnswerError(f"{path} {at}: id {v!r} is not an integer id; copy the id from the queue") from None
    if not -(2**63) <= i < 2**63:
        raise AnswerError(f"{path} {at}: id {i} is outside int64; copy the id from the queue")
    return i


def _label_of(v: Any, path: Path, at: str) -> bool:
    if isinstance(v, str):
        v = v.strip()
    if v in (0, 1, "0", "1") and not isinstance(v, float):
        return bool(int(v))
    raise AnswerError(f"{path} {at}: label {v!r} is not 0 or 1; write 1 (positive) or 0 (negative)")


def _need_columns(path: Path, names: Sequence[str]) -> None:
    missing = [c for c in ("concept", "id", "label") if c not in names]
    if missing:
        raise AnswerError(
            f"{path}: missing column(s) {', '.join(missing)} (found {list(names)}); an answer file needs "
            "the columns concept, id and label"
        )


def _csv_rows(path: Path) -> list[Row]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise AnswerError(f"{path} is empty; write a header concept,id,label and one row per item")
            header = [h.strip() for h in header]
            _need_columns(path, header)
            ci, ii, li = header.index("concept"), header.index("id"), header.index("label")
            rows: list[Row] = []
            for line_no, rec in enumerate(reader, start=2):
                if not any(x.strip() for x in rec):
                    continue  # a blank line
                at = f"line {line_no}"
                if len(rec) < len(header):
                    raise AnswerError(f"{path} {at}: {len(rec)} fields, the header has {len(header)}")
                rows.append((at, rec[ci].strip(), _id_of(rec[ii], path, at), _label_of(rec[li], path, at)))
            return rows
    except UnicodeDecodeError as e:
        raise AnswerError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise AnswerError(f"{path} is not a readable CSV file ({e}); save it as CSV") from None


def _parquet_rows(path: Path) -> list[Row]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise AnswerError(f"{path} is not a readable Parquet file ({' '.join(str(e).split())})") from None
    _need_columns(path, table.column_names)
    cols = table.select(["concept", "id", "label"]).to_pydict()
    rows: list[Row] = []
    for r in range(table.num_rows):
        at = f"row {r + 1}"
        c, i, lab = cols["concept"][r], cols["id"][r], cols["label"][r]
        if c is None:
            raise AnswerError(f"{path} {at}: no concept; copy it from the queue")
        if isinstance(lab, bool):
            lab = int(lab)
        rows.append((at, c, _id_of(i, path, at), _label_of(lab, path, at)))
    return rows


def _labelstudio_rows(path: Path) -> list[Row]:
    """A Label Studio JSON export: a list of tasks, each with ``data.concept``, ``data.id`` and annotations
    whose ``choices`` results (one choice of ``CHOICE_LABELS``) give the label; cancelled annotations are
    skipped; a task's annotations must agree."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise AnswerError(
            f"{path} is not JSON ({' '.join(str(e).split())}); export the project as JSON"
        ) from None
    if not isinstance(tasks, list):
        raise AnswerError(
            f"{path}: a Label Studio JSON export is a list of tasks; export the project as JSON"
        )
    rows: list[Row] = []
    for n, task in enumerate(tasks, start=1):
        data = task.get("data") if isinstance(task, dict) else None
        tid = task.get("id", "?") if isinstance(task, dict) else "?"
        at = f"task {n} (Label Studio id {tid})"
        if not isinstance(data, dict) or "concept" not in data or "id" not in data:
            raise AnswerError(
                f"{path} {at}: no data.concept and data.id; import the tasks from the run's "
                ".labelstudio.json file so that they carry them"
            )
        labels: set[int] = set()
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            for res in ann.get("result") or []:
                if not isinstance(res, dict) or res.get("type") != "choices":
                    continue
                choices = (res.get("value") or {}).get("choices")
                if not isinstance(choices, list) or len(choices) != 1:
                    raise AnswerError(
                        f"{path} {at}: a choices result holds {choices!r}; pick exactly one choice"
                    )
                choice = str(choices[0]).strip().lower()
                if choice not in CHOICE_LABELS:
                    raise AnswerError(
                        f"{path} {at}: choice {choices[0]!r} is not one of {', '.join(CHOICE_LABELS)}; use "
                        "the labeling config of the README (Choice values positive/negative or yes/no)"
                    )
                labels.add(CHOICE_LABELS[choice])
        if not labels:
            raise AnswerError(f"{path} {at}: no annotation with a choice; label the task or remove nothing")
        if len(labels) > 1:
            raise AnswerError(
                f"{path} {at}: its annotations disagree (positive and negative); keep one answer"
            )
        rows.append((at, data["concept"], _id_of(data["id"], path, at), bool(labels.pop())))
    return rows


class AnswerOracle:
    """The oracle of a queue round: the answers people gave, by (concept, id)."""

    def __init__(self, answers: dict[tuple[str, int], bool]):
        self.answers = answers

    def label(self, concept: Any, ids: np.ndarray) -> np.ndarray:
        key = concept_key(concept)
        flat = np.asarray(ids, dtype=np.int64).ravel()
        return np.array([self.answers[(key, int(i))] for i in flat.tolist()], dtype=bool).reshape(
            np.shape(ids)
        )


def pending_answers(
    out: Path,
    arrays: dict[str, np.ndarray] | None,
    units: Sequence[Any],
    known: dict[tuple[str, int], bool] | None = None,
) -> dict | None:
    """The checked answers to the round a checkpoint (``arrays``) holds as pending, read from ``out``'s
    answer file (None when nothing is pending); the ``known`` labels (--seed-ids) are not asked. Reads only:
    a refusal leaves the run folder as it was."""
    if arrays is None or int(arrays.get("pending_round", -1)) < 0:
        return None
    r = int(arrays["pending_round"])
    pu, pid = arrays["pending_unit"].astype(np.int64), arrays["pending_id"].astype(np.int64)
    per: dict[str, list[np.ndarray]] = {concept_key(u.concept): [] for u in units}
    for u in units:
        per[concept_key(u.concept)].append(pid[pu == u.index])
    expected = {c: np.unique(np.concatenate(v)).astype(np.int64) for c, v in per.items()}
    if known:
        expected = {
            c: np.array([i for i in v.tolist() if (c, i) not in known], np.int64) for c, v in expected.items()
        }
    return read_answers(find_answers(out, r), r, expected)
