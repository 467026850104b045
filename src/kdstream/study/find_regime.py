"""`kdstream reproduce --find-regime`: search the epochs (then the KD temperature) for the first
point where the study is in the paper's regime, then run the whole study there.

A point is the base StudyConfig with its own ``teacher_epochs``, ``student_epochs`` and
``temperature``, run by the study's protocol up to the memorization counts as ``--calibrate``
runs a grid point (``run_seed(calibration=True)``). The search stops at the first point where,
over the seeds' mean counts, teacher > baseline > student, every rate is in TARGET_BAND, and
every seed's student memorizes at least MIN_CLASS windows (what the classifier needs).

The knobs, chosen because each moves memorization one way (more passes, more recall):

- ``teacher_epochs`` first: the teacher sets the ceiling (its student inherits from it). While
  the teacher is outside its band, the student's epochs move with it at the base config's ratio
  (the paper's models see the data about as often).
- then ``student_epochs``: the baseline (CE) depends on it alone, the student on it and the
  teacher; it is moved until the student has its windows with the baseline still below the teacher.
- the teacher's epochs again when no student count fits under this teacher (a teacher that
  memorizes more passes more on), and last the temperature: T = 1 instead of the base's (2, the
  paper's), only when at the base's T no point fits (the student, distilled from the softened
  distribution, lags a baseline trained as long).

Every move bisects between the counts already seen (doubling or halving where one side is open).
``examples`` is not searched: it is the run's cost and the classifier's sample, the user's to
set; a corpus (or ``examples``) with fewer than MIN_WINDOWS windows is refused before anything
trains. Layout::

    OUT/find_regime.yaml        the base config of the search (a rerun with other settings is refused)
    OUT/tokenizer/              the corpus's BPE (tiny models), shared by every point and the study
    OUT/search/NAME/            a point: a reproduce directory up to the counts (as --calibrate's)
    OUT/search/search.json .md  every point's settings, counts, rates and the reason for the next
    OUT/config.yaml, seed-S/, study.md, study.json   the whole study at the found point

A point that differs from an earlier one on the student's side only (student epochs, temperature)
starts from hard links to that point's planted corpus, teacher, store and teacher evaluation, so
the teacher trains once; the study at the found point starts from hard links to its seeds.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from kdstream.errors import KdError
from kdstream.study.calibrate import ROLES, TARGET_BAND, point_name
from kdstream.study.config import TINY_ARCHS, StudyConfig
from kdstream.study.protocol import MIN_CLASS

SEARCH_YAML = "find_regime.yaml"
SEARCH_DIR = "search"
SEARCH_JSON = "search.json"
SEARCH_MD = "search.md"
KNOBS = ("teacher_epochs", "student_epochs")  # the flags the search owns
MAX_EPOCHS = 64
# a student of MIN_CLASS windows below a baseline below a teacher, the teacher within the band's top
MIN_WINDOWS = math.ceil((MIN_CLASS + 2) / TARGET_BAND[1])
FALLBACK_TEMPERATURE = 1.0
# what a point's seed directory shares with an earlier point of the same teacher
_TEACHER_SIDE = ("corpus.jsonl", "canaries.jsonl", "canaries.json", "teacher", "teacher.zarr", "eval/teacher")


@dataclass(frozen=True)
class Point:
    teacher_epochs: int
    student_epochs: int
    temperature: float

    def values(self) -> dict:
        return {"teacher_epochs": self.teacher_epochs, "student_epochs": self.student_epochs,
                "temperature": self.temperature}

    @property
    def name(self) -> str:
        return point_name(self.values())


@dataclass(frozen=True)
class Decision:
    reason: str
    next: Point | None = None  # None: stop (found when ``found``)
    found: bool = False


class Facts:
    """What the finished points showed: mean counts per knob value (the baseline depends on the
    student's epochs only, the teacher on its own, the student on all three)."""

    def __init__(self, n: int, base_temperature: float) -> None:
        self.n = n
        self.base_temperature = base_temperature
        self.hi = TARGET_BAND[1] * n  # the band's top, in windows
        self.need_student = max(MIN_CLASS, math.ceil(TARGET_BAND[0] * n))
        self.teacher: dict[int, float] = {}
        self.baseline: dict[int, float] = {}
        self.student: dict[Point, float] = {}
        self.seen: set[Point] = set()
        self.weak: set[Point] = set()  # points whose teacher, in the band, was too weak for its student
        self.strong: set[Point] = set()  # points whose student matched the baseline

    def add(self, p: Point, counts: dict[str, float]) -> None:
        self.teacher[p.teacher_epochs] = counts["teacher"]
        self.baseline[p.student_epochs] = counts["baseline"]
        self.student[p] = counts["student"]
        self.seen.add(p)

    def teacher_low(self, t: float) -> bool:  # no room for a baseline above a student of its minimum
        return t < self.need_student + 2

    def teacher_high(self, t: float) -> bool:
        return t > self.hi


def _up(value: int, low: set[int], high: set[int], good: set[int] = frozenset(), grow: float = 2.0) -> int | None:
    """The next value above ``value``: the greatest ``good`` one (known to fit) inside the
    bracket, else bisect up to the least known-too-high one, else ``grow`` times it."""
    lo = max({value} | {e for e in low if e > value})
    above = [e for e in high if e > lo]
    hi = min(above) if above else MAX_EPOCHS + 1
    fits = [e for e in good if lo < e < hi]
    if fits:
        return max(fits)
    if not above:
        return min(max(lo + 1, round(grow * lo)), MAX_EPOCHS) if lo < MAX_EPOCHS else None
    return (lo + hi) // 2 if hi - lo > 1 else None


def _down(value: int, low: set[int], high: set[int], good: set[int] = frozenset()) -> int | None:
    """The next value below ``value``: the greatest ``good`` one inside the bracket, else bisect
    down to the greatest known-too-low one, else halve."""
    hi = min({value} | {e for e in high if e < value})
    lo = max([e for e in low if e < hi], default=0)
    fits = [e for e in good if lo < e < hi]
    if fits:
        return max(fits)
    return (lo + hi) // 2 if hi - lo > 1 else None


def _pct(count: float, n: int) -> str:
    return f"{100 * count / n:.2f}% ({count:g})"


def decide(f: Facts, p: Point, counts: dict[str, float], student_min: int) -> Decision:
    """The next point after ``p`` (mean ``counts`` over seeds, the fewest student windows of a
    seed ``student_min``), with the reason in words; or the stop."""
    t, b, s = (counts[r] for r in ROLES)
    n = f.n
    t_low = {e for e, c in f.teacher.items() if f.teacher_low(c)}
    # above the band, or in it but so strong that the student matched the baseline (at this T)
    t_high = {e for e, c in f.teacher.items() if f.teacher_high(c)}
    t_high |= {q.teacher_epochs for q in f.strong if q.temperature == p.temperature}
    # teachers in the band too weak for their student at this T: the floor of a teacher bracket
    weak = {q.teacher_epochs: q for q in f.weak if q.temperature == p.temperature}
    t_floor = t_low | set(weak)
    in_band_seen = any(not f.teacher_low(c) and not f.teacher_high(c) for c in f.teacher.values())

    def fallback(why: str) -> Decision:
        if p.temperature > FALLBACK_TEMPERATURE:
            # the strongest teacher that was still too weak for its student, at the lower T, with
            # the most student epochs whose baseline is known to fit under it
            q = weak[max(weak)] if weak else p
            tq = f.teacher[q.teacher_epochs]
            fits = [e for e, c in f.baseline.items() if f.need_student + 1 <= c < tq and c <= f.hi]
            q = replace(q, student_epochs=max(fits, default=q.student_epochs))
            return _new(f, replace(q, temperature=FALLBACK_TEMPERATURE),
                        f"{why}: at T = {p.temperature:g} the band is out of reach (the student, distilled from "
                        f"the softened distribution, stays below {f.need_student} windows under every teacher "
                        f"in the band); T = {FALLBACK_TEMPERATURE:g}, the teacher's own distribution, at "
                        f"{q.name.replace('__', ', ')}")
        return Decision(f"{why}, at T = {p.temperature:g}: the band is out of reach here; use more examples (the "
                        f"student's {f.need_student} windows are then a smaller share) or another model size")

    def move_teacher(e: int | None, why: str) -> Decision:
        if e is None:
            return fallback(f"{why}, and no teacher epoch count is left between those tried")
        if in_band_seen:  # the student's side was searched under a teacher in the band: it stays
            return _new(f, replace(p, teacher_epochs=e), f"{why}: teacher epochs {p.teacher_epochs} -> {e}")
        ratio = p.student_epochs / p.teacher_epochs
        return _new(f, replace(p, teacher_epochs=e, student_epochs=max(1, round(e * ratio))),
                    f"{why}: teacher epochs {p.teacher_epochs} -> {e}, student's with it")

    if f.teacher_high(t):
        return move_teacher(_down(p.teacher_epochs, t_floor, t_high), f"teacher {_pct(t, n)} is above the band")
    if f.teacher_low(t):
        return move_teacher(_up(p.teacher_epochs, t_floor, t_high),
                            f"teacher {_pct(t, n)} leaves no room for a baseline above a student of "
                            f"{f.need_student} windows")
    # the teacher is in its band: the student's side moves
    b_high = {e for e, c in f.baseline.items() if c >= t or c > f.hi}
    b_low = {e for e, c in f.baseline.items() if c < f.need_student + 1}
    here = {q: c for q, c in f.student.items() if (q.teacher_epochs, q.temperature) == (p.teacher_epochs, p.temperature)}
    s_low = {q.student_epochs for q, c in here.items() if c < f.need_student}
    # student epochs whose baseline is known to fit under this teacher, not yet tried with it
    b_good = {e for e in set(f.baseline) - b_high - b_low if replace(p, student_epochs=e) not in here}

    def teacher_up(why: str) -> Decision:
        f.weak.add(p)
        # small steps: this teacher is in the band already, and memorization switches on fast
        e = _up(p.teacher_epochs, t_floor | {p.teacher_epochs}, t_high, grow=1.25)
        if e is not None:
            return _new(f, replace(p, teacher_epochs=e),
                        f"{why}: a teacher that memorizes more (teacher epochs {p.teacher_epochs} -> {e})")
        return fallback(f"{why}, and the teacher cannot memorize more within the band")

    if b >= t or b > f.hi:
        e = _down(p.student_epochs, b_low | s_low, b_high, b_good)
        what = f"baseline {_pct(b, n)} is not below the teacher's {_pct(t, n)} and the band's top"
        if e is not None:
            return _new(f, replace(p, student_epochs=e), f"{what}: student epochs {p.student_epochs} -> {e}")
        return teacher_up(what)
    if b < f.need_student + 1:
        e = _up(p.student_epochs, b_low | s_low, b_high, b_good)
        what = f"baseline {_pct(b, n)} leaves no room for a student of {f.need_student} windows"
        if e is not None:
            return _new(f, replace(p, student_epochs=e), f"{what}: student epochs {p.student_epochs} -> {e}")
        return teacher_up(what)
    if s < f.need_student or student_min < MIN_CLASS:
        what = (f"student {_pct(s, n)}, {student_min} windows in its worst seed, below the "
                f"{f.need_student} the classifier needs")
        e = _up(p.student_epochs, b_low | s_low, b_high, b_good)
        if e is not None:
            return _new(f, replace(p, student_epochs=e), f"{what}: student epochs {p.student_epochs} -> {e}")
        return teacher_up(what + " while the baseline stays below the teacher")
    if s >= b:
        what = f"student {_pct(s, n)} is not below the baseline's {_pct(b, n)}"
        f.strong.add(p)
        e = _down(p.teacher_epochs, t_floor | {q for q, c in f.teacher.items() if c <= b}, t_high | {p.teacher_epochs})
        if e is not None:
            return _new(f, replace(p, teacher_epochs=e),
                        f"{what}: a teacher that memorizes less (teacher epochs {p.teacher_epochs} -> {e})")
        return Decision(f"{what}, and a teacher that memorizes less falls to the baseline: stop")
    return Decision(f"in the regime: teacher {_pct(t, n)} > baseline {_pct(b, n)} > student {_pct(s, n)}, "
                    f"every rate in the band, at least {student_min} student windows in every seed", found=True)


def _new(f: Facts, q: Point, reason: str) -> Decision:
    if q in f.seen:  # the facts disagree with themselves (e.g. a count that is not monotone)
        return Decision(f"{reason}, but {q.name} was tried already: stop")
    return Decision(reason, q)


def _score(row: dict) -> tuple:
    """For the best point when the search stops: conditions met, then the student's windows."""
    n, c = row["examples"], row["memorized"]
    met = sum(TARGET_BAND[0] <= c[r] / n <= TARGET_BAND[1] for r in ROLES)
    met += (c["teacher"] > c["baseline"]) + (c["baseline"] > c["student"]) + (row["student_min"] >= MIN_CLASS)
    return met, min(row["student_min"], MIN_CLASS)


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` whose files are hard links (a copy across devices), but for
    the small JSON/YAML files a later stage may rewrite in place."""
    def link(s: str, d: str) -> None:
        if s.endswith((".json", ".yaml", ".md")):
            shutil.copy2(s, d)
            return
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        link(str(src), str(dst))


def _share(src: Path, dst: Path, parts) -> None:
    """Link ``parts`` of seed directory ``src`` into ``dst`` (each through a temporary name
    renamed at the end, so an interrupted copy is never taken for a finished stage)."""
    for part in parts:
        if (dst / part).exists() or not (src / part).exists():
            continue
        tmp = dst / (part + ".linking")
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        _link_tree(src / part, tmp)
        tmp.rename(dst / part)


def _tokenizer(cfg: StudyConfig, root: Path, texts: list[str]) -> tuple[object, Path | None]:
    """The teacher's tokenizer (what the windows are cut with): given, the teacher's, or the
    corpus's BPE (trained once, then kept as OUT/tokenizer, as reproduce's _models would) ->
    (tokenizer, the temporary directory of a BPE trained just now)."""
    from kdstream.text.tokenizers import load_tokenizer, train_bpe_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer), None
    if cfg.teacher_model not in TINY_ARCHS:
        return load_tokenizer(cfg.teacher_model), None
    if (root / "tokenizer" / "tokenizer.json").exists():
        return load_tokenizer(root / "tokenizer"), None
    trained = Path(tempfile.mkdtemp(prefix="kdstream-tokenizer-"))
    return train_bpe_tokenizer(texts, cfg.tokenizer_vocab, trained), trained


def _check_windows(cfg: StudyConfig, texts: list[str], tokenizer) -> int:
    from kdstream.data import pack_examples

    n = len(pack_examples(texts, tokenizer, cfg.seq_len, cfg.examples))
    if n < MIN_WINDOWS:
        why = (f"--find-regime needs at least {MIN_WINDOWS} windows (a student memorizing {MIN_CLASS}, the "
               f"classifier's minimum, below a baseline below a teacher, all within the band's {TARGET_BAND[1]:.0%})")
        if n == cfg.examples:
            raise KdError(f"examples {n}: {why}: set examples to {MIN_WINDOWS} or more")
        raise KdError(f"the corpus {cfg.dataset} gives {n} windows of {cfg.seq_len} tokens; {why}: use a larger corpus")
    return n


def run_find_regime(base: StudyConfig, out: str, max_points: int) -> dict:
    """Search from ``base`` (at most ``max_points`` points), then the whole study at the found
    point -> the search's record (``found``: the point's name, or None with ``stopped``)."""
    from kdstream.data import load_corpus
    from kdstream.study.conversations import holds_conversations
    from kdstream.study.reproduce import claim_out_dir, resolved_config

    if holds_conversations(base.dataset, base.split):
        raise KdError(f"dataset {base.dataset} holds conversations: --find-regime plans its points on a text "
                      "corpus's windows; run kdstream reproduce (or --calibrate with a --grid) on it instead")
    root = Path(out)
    if root.exists() or root.is_symlink():  # refused before any work
        claim_out_dir(root, SEARCH_YAML, "kdstream reproduce --find-regime")
    texts = load_corpus(base.dataset, base.text_field, base.split).texts
    tokenizer, trained = _tokenizer(base, root, texts)
    try:
        n = _check_windows(base, texts, tokenizer)
    except KdError:
        if trained is not None:
            shutil.rmtree(trained, ignore_errors=True)
        raise
    claim_out_dir(root, SEARCH_YAML, "kdstream reproduce --find-regime")
    resolved = resolved_config(base)
    saved = root / SEARCH_YAML
    if saved.exists() and (yaml.safe_load(saved.read_text()) or {}).get("base") != resolved:
        raise KdError(f"{root} holds a --find-regime search from other settings: choose another --out or delete it")
    saved.write_text(yaml.safe_dump({"base": resolved}, sort_keys=False))
    if trained is not None:
        shutil.rmtree(root / "tokenizer.partial", ignore_errors=True)  # an interrupted move's
        shutil.move(str(trained), str(root / "tokenizer.partial"))  # renamed once whole
        (root / "tokenizer.partial").rename(root / "tokenizer")

    record = {"base": resolved, "target_band": list(TARGET_BAND), "min_student_windows": MIN_CLASS,
              "examples": n, "points": [], "found": None, "stopped": None}
    start = Point(base.teacher_epochs, base.student_epochs, base.temperature)

    def written(rec: dict) -> None:
        _write(root, rec)

    search(record, start, lambda p: _run_point(base, root, p, record["points"]), max_points, written,
           where=lambda name: root / SEARCH_DIR / name / "config.yaml")
    _write(root, record)
    if record["found"] is None:
        print(f"[find-regime] no point in the regime: {record['stopped']}", flush=True)
        return record
    found = replace(base, **_point_of(record["points"][-1]).values())
    print(f"[find-regime] the whole study at {record['found']} (settings in {root / 'config.yaml'})", flush=True)
    _run_study(found, root, root / SEARCH_DIR / record["found"])
    return record


def search(record: dict, start: Point, run_point, max_points: int, written=lambda rec: None,
           where=lambda name: name) -> dict:
    """The search loop: ``run_point(p)`` -> p's row (mean counts, fewest student windows), each
    point's line printed with the reason for the next, ``written(record)`` after each; fills
    ``record``'s points and its ``found`` (a point's name) or ``stopped`` (why, and the best point)."""
    facts = Facts(record["examples"], start.temperature)
    p: Point | None = start
    while p is not None:
        if len(record["points"]) >= max_points:
            best = max(record["points"], key=_score)
            record["stopped"] = (f"stopped after {max_points} points (--max-points), the next being {p.name}; "
                                 f"best point {best['point']}: {_rates(best)} (config {where(best['point'])})")
            break
        row = run_point(p)
        facts.add(p, row["memorized"])
        decision = decide(facts, p, row["memorized"], row["student_min"])
        row["next"] = decision.reason
        record["points"].append(row)
        print(f"[find-regime] point {len(record['points'])}: {p.name}: {_rates(row)} -> {decision.reason}", flush=True)
        if decision.found:
            record["found"] = p.name
        elif decision.next is None:
            best = max(record["points"], key=_score)
            record["stopped"] = f"{decision.reason}; best point {best['point']}: {_rates(best)} (config {where(best['point'])})"
        written(record)
        p = decision.next
    return record


def _point_of(row: dict) -> Point:
    return Point(**row["settings"])


def _run_point(base: StudyConfig, root: Path, p: Point, rows: list[dict]) -> dict:
    """Run (or resume) point ``p`` for every seed, its teacher shared with an earlier point of the
    same teacher epochs -> its row: settings, per-seed and mean counts, rates."""
    from kdstream.study.protocol import run_seed
    from kdstream.study.reproduce import prepare_study_dir, resolved_config

    cfg = replace(base, **p.values())
    pdir = root / SEARCH_DIR / p.name
    if (root / "tokenizer").is_dir() and not (pdir / "tokenizer").exists():
        pdir.mkdir(parents=True, exist_ok=True)
        # written first, as reproduce writes it (prepare_study_dir then finds its own directory)
        (pdir / "config.yaml").write_text(yaml.safe_dump(resolved_config(cfg), sort_keys=False))
        _share(root, pdir, ["tokenizer"])
    _, models, texts = prepare_study_dir(cfg, pdir)
    donor = next((root / SEARCH_DIR / r["point"] for r in rows
                  if r["settings"]["teacher_epochs"] == p.teacher_epochs and r["point"] != p.name), None)
    seeds = []
    for seed in cfg.seed_list:
        sdir = pdir / f"seed-{seed}"
        sdir.mkdir(parents=True, exist_ok=True)
        if donor is not None:
            _share(donor / f"seed-{seed}", sdir, _TEACHER_SIDE)
        seeds.append(run_seed(cfg, sdir, seed, models, texts, calibration=True))
    n = seeds[0]["examples"]
    mean = {r: sum(s["memorized"][r] for s in seeds) / len(seeds) for r in ROLES}
    return {"point": p.name, "settings": p.values(), "examples": n, "memorized": mean,
            "rate": {r: mean[r] / n for r in ROLES}, "student_min": min(s["memorized"]["student"] for s in seeds),
            "seeds": [{"seed": seed, **fig} for seed, fig in zip(cfg.seed_list, seeds)],
            "shared_teacher_with": donor.name if donor is not None else None}


def _run_study(cfg: StudyConfig, root: Path, pdir: Path) -> None:
    """The whole study in OUT at the found point: config.yaml written as reproduce writes it, the
    seeds started from links to the point's stages, then `reproduce` itself."""
    from kdstream.study.reproduce import resolved_config, run_reproduce

    config = root / "config.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(resolved_config(cfg), sort_keys=False))
    for seed in cfg.seed_list:
        _share(pdir, root, [f"seed-{seed}"])
    run_reproduce(cfg, str(root))


def _rates(row: dict) -> str:
    return " / ".join(f"{r} {_pct(row['memorized'][r], row['examples'])}" for r in ROLES)


def _write(root: Path, record: dict) -> None:
    import json

    d = root / SEARCH_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (SEARCH_JSON + ".partial")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(d / SEARCH_JSON)
    (d / SEARCH_MD).write_text(search_markdown(record))


def search_markdown(record: dict) -> str:
    lo, hi = record["target_band"]
    lines = ["# --find-regime: the points searched", "",
             (f"Target: every rate in {100 * lo:.2f}%–{100 * hi:.2f}%, teacher > baseline > student, at least "
              f"{record['min_student_windows']} student windows in every seed; {record['examples']} windows."), "",
             "| # | point | teacher | baseline | student | fewest student windows | next |", "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(record["points"], 1):
        cells = [_pct(row["memorized"][r], row["examples"]) for r in ROLES]
        lines.append(f"| {i} | {row['point']} | {' | '.join(cells)} | {row['student_min']} | {row['next']} |")
    lines.append("")
    if record["found"]:
        lines.append(f"Found: {record['found']}; the whole study ran there (study.md, config.yaml).")
    elif record["stopped"]:
        lines.append(record["stopped"][0].upper() + record["stopped"][1:] + ".")
    return "\n".join(lines) + "\n"
