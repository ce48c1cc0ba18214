#!/usr/bin/env python3
"""Parity of tmoe's annotation-agreement statistics with scikit-learn and statsmodels.

Writes seeded random label sets as JSON lines, runs kappa_dump on them and checks, to
1e-12, every kappa it prints against sklearn.metrics.cohen_kappa_score (weights None /
"linear" / "quadratic") and statsmodels.stats.inter_rater.fleiss_kappa, following the rules
of include/tmoe/data/annotation.hpp: a scope (all items, one batch) with exactly two
annotators uses Cohen, otherwise Fleiss; pairs use the items both labelled; labels are
ordered numerically when all are integers (scikit-learn on ints), else as strings. It also
recomputes the default batch filter (threshold 0.8, majority vote, ties to the first label).

Exit 77 (CTest SKIP_RETURN_CODE) when numpy, scikit-learn or statsmodels is missing.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import warnings

try:
    import numpy as np
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIPPED: needs numpy, scikit-learn and statsmodels ({e})")
    sys.exit(77)

TOL = 1e-12
SEED = 20240607


# ---------------------------------------------------------------------------------------
# Label sets: lists of dicts {item, annotator, label[, batch]}; label is a str or an int.

def noisy_copy(rng, truth, cats, keep):
    """truth with probability keep, else a uniform draw from cats."""
    return truth if rng.random() < keep else cats[rng.integers(len(cats))]


def two_annotators(rng, n, cats, batches, keep, as_string_share=0.0):
    recs = []
    for i in range(n):
        batch = batches[rng.integers(len(batches))] if batches else None
        b_keep = keep[batch] if isinstance(keep, dict) else keep
        truth = cats[rng.integers(len(cats))]
        for who in ("alice", "bob"):
            lab = noisy_copy(rng, truth, cats, b_keep)
            r = {"item": f"r{i}", "annotator": who, "label": lab}
            if batch is not None:
                r["batch"] = batch
            if isinstance(lab, int) and rng.random() < as_string_share:
                r["_write_as_string"] = True
            recs.append(r)
    return recs


def pooled(rng, n, cats, annotators, per_item, batches, keep):
    recs = []
    for i in range(n):
        batch = batches[rng.integers(len(batches))] if batches else None
        b_keep = keep[batch] if isinstance(keep, dict) else keep
        truth = cats[rng.integers(len(cats))]
        who = rng.choice(len(annotators), size=per_item, replace=False)
        for w in who:
            r = {"item": f"x{i}", "annotator": annotators[w], "label": noisy_copy(rng, truth, cats, b_keep)}
            if batch is not None:
                r["batch"] = batch
            recs.append(r)
    return recs


def label_sets():
    rng = np.random.default_rng(SEED)
    words = ["awful", "bad", "good", "great", "ok"]
    sets = {}
    sets["cohen_strings"] = two_annotators(rng, 300, words, [f"b{k}" for k in range(6)],
                                           {"b0": 0.98, "b1": 0.9, "b2": 0.7, "b3": 0.5, "b4": 0.3, "b5": 0.0})
    sets["cohen_ints"] = two_annotators(rng, 250, [-3, 0, 2, 10, 11], ["hi", "mid", "lo"],
                                        {"hi": 0.97, "mid": 0.7, "lo": 0.2}, as_string_share=0.3)
    sets["fleiss_pool"] = pooled(rng, 250, ["a", "b", "c", "d"], [f"ann{k}" for k in range(6)], 3,
                                 [f"p{k}" for k in range(5)], {"p0": 0.99, "p1": 0.8, "p2": 0.6, "p3": 0.4, "p4": 0.1})
    sets["fleiss_full"] = pooled(rng, 120, [1, 2, 3, 4, 5], ["u1", "u2", "u3", "u4", "u5"], 5, None, 0.6)
    sets["many_raters"] = pooled(rng, 80, ["neg", "neu", "pos"], [f"w{k:02d}" for k in range(12)], 7,
                                 ["only"], 0.95)
    sets["tiny"] = [
        {"item": "t1", "annotator": "p", "label": "y"}, {"item": "t1", "annotator": "q", "label": "y"},
        {"item": "t2", "annotator": "p", "label": "n"}, {"item": "t2", "annotator": "q", "label": "y"},
        {"item": "t3", "annotator": "p", "label": "n"}, {"item": "t3", "annotator": "q", "label": "n"},
    ]
    sets["degenerate"] = [{"item": f"d{i}", "annotator": w, "label": "same"} for i in range(4) for w in ("p", "q")]
    for name, recs in sets.items():
        order = rng.permutation(len(recs))  # lines in random order: tmoe must not care
        sets[name] = [recs[i] for i in order]
    return sets


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            out = {k: v for k, v in r.items() if not k.startswith("_")}
            if r.get("_write_as_string"):
                out["label"] = str(out["label"])
            f.write(json.dumps(out) + "\n")


# ---------------------------------------------------------------------------------------
# Reference statistics

def sorted_labels(labels):
    return sorted(set(labels))  # ints numerically, strings by code point (as NumPy)


def ref_scope(items, votes, weights):
    """Kappa of one scope: Cohen for exactly two annotators, else Fleiss (statsmodels)."""
    annotators = sorted({a for it in items for a in votes[it]})
    if len(annotators) == 2:
        a, b = annotators
        y1 = [votes[it][a] for it in items]
        y2 = [votes[it][b] for it in items]
        return "cohen", cohen_kappa_score(y1, y2, weights=weights)
    cats = sorted_labels([lab for it in items for lab in votes[it].values()])
    table = np.array([[list(votes[it].values()).count(c) for c in cats] for it in items], dtype=float)
    return "fleiss", fleiss_kappa(table, method="fleiss")


def same(x, y):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return y is None or (isinstance(y, float) and math.isnan(y))
    if y is None:
        return False
    return abs(x - y) <= TOL


class Checker:
    def __init__(self):
        self.failures = []
        self.checks = 0
        self.worst = 0.0

    def kappa(self, what, got, want):
        self.checks += 1
        if got is not None and want is not None and not math.isnan(want):
            self.worst = max(self.worst, abs(got - want))
        if not same(got, want):
            self.failures.append(f"{what}: tmoe {got!r}, reference {want!r}")

    def equal(self, what, got, want):
        self.checks += 1
        if got != want:
            self.failures.append(f"{what}: tmoe {got!r}, reference {want!r}")


def check_set(name, recs, dump, chk):
    votes, batch_of, items = {}, {}, []
    for r in recs:
        if r["item"] not in votes:
            votes[r["item"]] = {}
            items.append(r["item"])
        votes[r["item"]][r["annotator"]] = r["label"]
        batch_of[r["item"]] = r.get("batch", "")
    has_batches = any(b != "" for b in batch_of.values())
    batches = {}
    for it in items:
        batches.setdefault(batch_of[it], []).append(it)
    annotators = sorted({a for v in votes.values() for a in v})

    chk.equal(f"{name}: items", dump["items"], len(items))
    chk.equal(f"{name}: categories", dump["categories"],
              [str(c) for c in sorted_labels([r["label"] for r in recs])])
    for wname, w in (("none", None), ("linear", "linear"), ("quadratic", "quadratic")):
        rep = dump["report"][wname]
        method, k = ref_scope(items, votes, w)
        chk.equal(f"{name}/{wname}: overall method", rep["overall"]["method"], method)
        chk.kappa(f"{name}/{wname}: overall kappa", rep["overall"]["kappa"], k)

        want_pairs = {}
        for i, a in enumerate(annotators):
            for b in annotators[i + 1:]:
                shared = [it for it in items if a in votes[it] and b in votes[it]]
                if shared:
                    want_pairs[(a, b)] = (len(shared), cohen_kappa_score(
                        [votes[it][a] for it in shared], [votes[it][b] for it in shared], weights=w))
        got_pairs = {tuple(sorted((p["a"], p["b"]))): (p["items"], p["kappa"]) for p in rep["pairs"]}
        chk.equal(f"{name}/{wname}: annotator pairs", sorted(got_pairs), sorted(want_pairs))
        for ab in set(got_pairs) & set(want_pairs):
            chk.equal(f"{name}/{wname}: shared items of {ab}", got_pairs[ab][0], want_pairs[ab][0])
            chk.kappa(f"{name}/{wname}: pair {ab}", got_pairs[ab][1], want_pairs[ab][1])

        got_batches = {b["name"]: b for b in rep["batches"]}
        chk.equal(f"{name}/{wname}: batches", sorted(got_batches), sorted(batches) if has_batches else [])
        if has_batches:
            for bname, bitems in batches.items():
                if bname not in got_batches:
                    continue
                method, k = ref_scope(bitems, votes, w)
                chk.equal(f"{name}/{wname}: batch {bname} method", got_batches[bname]["method"], method)
                chk.kappa(f"{name}/{wname}: batch {bname} kappa", got_batches[bname]["kappa"], k)

    cats = sorted_labels([r["label"] for r in recs])
    table = np.array([[list(votes[it].values()).count(c) for c in cats] for it in items], dtype=float)
    chk.kappa(f"{name}: fleiss over all items", dump["fleiss_all"], fleiss_kappa(table, method="fleiss"))

    # Default filter: batch kappa (unweighted) >= 0.8 keeps the batch; majority label,
    # ties to the first label in label order.
    kept, dropped = [], []
    passes = {}
    for bname, bitems in batches.items():
        _, k = ref_scope(bitems, votes, None)
        passes[bname] = "ok" if not math.isnan(k) and k >= 0.8 else (
            "batch kappa undefined" if math.isnan(k) else "batch kappa below threshold")
    for it in items:
        if passes[batch_of[it]] != "ok":
            dropped.append([it, passes[batch_of[it]]])
            continue
        labs = list(votes[it].values())
        top = max(labs.count(c) for c in set(labs))
        winner = min(c for c in set(labs) if labs.count(c) == top)
        kept.append([it, str(winner)])
    chk.equal(f"{name}: filter kept", sorted(dump["kept"]), sorted(kept))
    chk.equal(f"{name}: filter dropped", sorted(dump["dropped"]), sorted(dropped))
    print(f"{name}: {len(items)} items, {len(annotators)} annotators, {len(batches)} batch(es), "
          f"kept {len(kept)}, overall kappa {dump['report']['none']['overall']['kappa']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True, help="the kappa_dump executable")
    ap.add_argument("--workdir", required=True, help="folder for the generated label files")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    sets = label_sets()
    paths = []
    for name, recs in sets.items():
        p = os.path.join(args.workdir, f"{name}.jsonl")
        write_jsonl(p, recs)
        paths.append(p)
    run = subprocess.run([args.dump, *paths], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(run.stdout + run.stderr)
        print(f"FAILED: kappa_dump exited with {run.returncode}")
        return 1
    dumps = json.loads(run.stdout)
    chk = Checker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sklearn/statsmodels warn on 0/0 -> nan
        for (name, recs), dump in zip(sets.items(), dumps):
            check_set(name, recs, dump, chk)
    print(f"{chk.checks} checks, largest kappa difference {chk.worst:.3g} (tolerance {TOL:g})")
    if chk.failures:
        print("\n".join(chk.failures[:50]))
        print(f"FAILED: {len(chk.failures)} mismatch(es)")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
