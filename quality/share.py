"""How much of a corpus is synthetic: the share a of the mixture (1 - a) P + a Q.

The candidate corpus is modelled as a mixture of a human reference distribution P and a
synthetic reference distribution Q, and a is estimated by maximum likelihood over the
candidate's documents, as the distributional estimator of Liang et al. 2024 ("Monitoring
AI-Modified Content at Scale", arXiv 2403.07183) does:

    a_hat = argmax_a  sum_i log((1 - a) p_P(x_i) + a p_Q(x_i))

(concave in a; solved by bisection on its derivative). The densities p_P and p_Q are fit
on the two references only, never on the candidate: a candidate document that is also in
a reference (same ``doc_hash``) is left out of that reference's fit, and the token types
the occurrence feature can use are those of the references.

Features of a document x_i, and why:

- ``log_ppl``: the log-perplexity under the prior (the score files' ``ppl``). The ToEdit
  paper's strongest signal: the prior's own text sits in the low quarter of the human
  range and lacks its long tail.
- ``token_occurrence``: which token types occur among the document's first ``window``
  scored tokens (a fixed window, so that occurrence does not grow with a document's
  length), Liang et al.'s occurrence profile. Per-type occurrence probabilities under P
  and Q (add-``alpha`` smoothed) over the ``vocabulary`` types that separate the two
  references most (largest Bernoulli J-divergence, among types occurring in at least
  ``min_docs`` reference documents) give each document a naive-Bayes log-likelihood ratio.
  Used as a likelihood directly, that ratio is badly overconfident: hundreds of
  dependent types are multiplied as if independent, every document looks certainly human
  or certainly synthetic, and the interval no longer covers. So the ratio is used as a
  one-dimensional *statistic* whose density under P and Q is itself estimated from the
  references, cross-fitted (``folds`` folds: a reference document's statistic comes from
  occurrence probabilities fit without it; a candidate document's density is the mean
  over the fold models), which calibrates it however dependent the types are.

The densities of the feature vector (log_ppl, occurrence statistic) under P and under Q
are Gaussian kernel density estimates over the references' documents, with a bandwidth
matrix of Scott's rule (the reference's weighted covariance times n^(-2/(d+4)); n
documents, d features); a joint density, so the two features need not be independent.

The 95% interval is a percentile bootstrap: each replicate resamples the candidate's
documents and both references' documents (with replacement) and refits everything that
is fit (vocabulary, occurrence probabilities, fold models, kernel densities) on the
resampled references, so the interval carries the references' sampling error too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse

from semisynth.errors import InputError
from semisynth.quality.sample import ScoreFiles, Stream

FEATURES = ("log_ppl", "token_occurrence")
METRIC = "synthetic_share"
# A document's log-likelihood ratio is clipped to this many nats only to keep the
# arithmetic finite: at e^50 its class is certain either way.
LOG_RATIO_CLIP = 50.0
MIN_REFERENCE_DOCS = 10
KDE_CHUNK = 2048  # query points per block of a kernel density evaluation


@dataclass(frozen=True)
class ScoredDocs:
    """Per-document inputs of one corpus: perplexity under the prior, scored token ids,
    content hash (rows of the score files, in order)."""

    ppl: np.ndarray
    tokens: list[np.ndarray]
    hashes: np.ndarray

    def __post_init__(self):
        n = len(self.ppl)
        if len(self.tokens) != n or len(self.hashes) != n:
            raise ValueError(f"ppl ({n}), tokens ({len(self.tokens)}) and hashes "
                             f"({len(self.hashes)}) must have one entry per document")

    def __len__(self) -> int:
        return len(self.ppl)

    def take(self, rows) -> ScoredDocs:
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, int)
        return ScoredDocs(self.ppl[rows], [self.tokens[i] for i in rows], self.hashes[rows])

    def scored(self) -> np.ndarray:
        """Which documents have a perplexity (a document of one token has none)."""
        return np.isfinite(self.ppl) & (self.ppl > 0)


def scored_docs(sample) -> ScoredDocs:
    """The share's inputs from a ``quality.sample.Sample`` (its documents in its order)."""
    return ScoredDocs(ppl=np.asarray(sample.ppl, float), tokens=sample.token_arrays(),
                      hashes=np.asarray(sample.hashes, dtype=object))


def read_scored_docs(paths: Sequence[Path]) -> ScoredDocs:
    """Every document of a corpus's score files (``tasks/score.py``), in order."""
    whole = ScoreFiles(paths).scan({"all": Stream(0)}, None).samples["all"]
    return scored_docs(whole.in_corpus_order())


# -----------------------------------------------------------------------------
# token occurrence


def reference_types(corpora: Sequence[ScoredDocs], window: int) -> np.ndarray:
    """The sorted token types occurring in the references' windows."""
    parts = [t[:window] for docs in corpora for t in docs.tokens]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def occurrence_matrix(tokens: Sequence[np.ndarray], types: np.ndarray, window: int) -> sparse.csr_matrix:
    """Documents x types, 1 where the type occurs among the document's first ``window``
    tokens; tokens of other types are ignored."""
    heads = [t[:window] for t in tokens]
    flat = np.concatenate(heads).astype(np.int64) if heads else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(heads)), [len(h) for h in heads])
    cols = np.searchsorted(types, flat)
    known = cols < len(types)
    known[known] = types[cols[known]] == flat[known]
    pairs = np.unique(rows[known] * len(types) + cols[known])
    return sparse.csr_matrix((np.ones(len(pairs)), (pairs // max(len(types), 1),
                                                    pairs % max(len(types), 1))),
                             shape=(len(heads), len(types)))


@dataclass(frozen=True)
class OccurrenceModel:
    """A naive-Bayes log-likelihood ratio log q(o) / p(o) of a document's occurrence
    vector o, as one weight per type (zero outside the vocabulary) and an offset."""

    weights: np.ndarray
    offset: float

    def statistic(self, occurrence: sparse.csr_matrix) -> np.ndarray:
        return occurrence @ self.weights + self.offset


def fit_occurrence(df_p: np.ndarray, n_p: float, df_q: np.ndarray, n_q: float,
                   vocabulary: int, min_docs: float, alpha: float) -> OccurrenceModel:
    """Occurrence probabilities per type under P and Q from the (weighted) numbers of
    reference documents each type occurs in, over the ``vocabulary`` types of largest
    J-divergence between the two."""
    p = (df_p + alpha) / (n_p + 2 * alpha)
    q = (df_q + alpha) / (n_q + 2 * alpha)
    log_odds = np.log(q) - np.log1p(-q) - np.log(p) + np.log1p(-p)
    divergence = np.where(df_p + df_q >= min_docs, (q - p) * log_odds, -np.inf)
    k = min(vocabulary, int(np.isfinite(divergence).sum()))
    chosen = np.argpartition(-divergence, k - 1)[:k] if k else np.zeros(0, int)
    weights = np.zeros(len(p))
    weights[chosen] = log_odds[chosen]
    offset = float((np.log1p(-q[chosen]) - np.log1p(-p[chosen])).sum())
    return OccurrenceModel(weights, offset)


# -----------------------------------------------------------------------------
# kernel densities


@dataclass(frozen=True)
class GaussianKde:
    """A weighted Gaussian kernel density with a full bandwidth matrix (Scott's rule),
    kept in whitened coordinates (the bandwidth matrix is the identity there)."""

    whiten: np.ndarray  # (d, d): the inverse of the bandwidth matrix's Cholesky factor
    points: np.ndarray  # (n, d) whitened
    log_weights: np.ndarray  # (n,)
    log_norm: float

    @classmethod
    def fit(cls, points: np.ndarray, weights: np.ndarray) -> GaussianKde:
        keep = weights > 0
        points, weights = points[keep], weights[keep].astype(float)
        total, d = weights.sum(), points.shape[1]
        centred = points - weights @ points / total
        cov = (centred * weights[:, None]).T @ centred / max(total - 1, 1)
        bandwidth = cov * total ** (-2 / (d + 4))
        # a feature constant over the reference would make the matrix singular
        bandwidth += np.eye(d) * (1e-12 * np.trace(bandwidth) + 1e-300)
        chol = np.linalg.cholesky(bandwidth)
        whiten = np.linalg.inv(chol)
        log_norm = -np.log(total) - 0.5 * d * np.log(2 * np.pi) - np.log(np.diag(chol)).sum()
        return cls(whiten, _apply(whiten, points), np.log(weights), float(log_norm))

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        white = _apply(self.whiten, x)
        out = np.empty(len(x))
        for lo in range(0, len(x), KDE_CHUNK):
            block = white[lo:lo + KDE_CHUNK]
            sq = sum((block[:, j, None] - self.points[None, :, j]) ** 2 for j in range(block.shape[1]))
            out[lo:lo + KDE_CHUNK] = _logsumexp_rows(self.log_weights - 0.5 * sq)
        return out + self.log_norm


def _apply(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ matrix.T for a handful of features (einsum: no BLAS call for tiny matrices)."""
    return np.einsum("ij,kj->ik", x, matrix)


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return np.log(np.exp(a - top[:, None]).sum(axis=1)) + top


# -----------------------------------------------------------------------------
# the fitted densities


@dataclass(frozen=True)
class ShareModel:
    """The densities of the features under P and Q, fit on the references alone."""

    features: tuple[str, ...]
    human: GaussianKde
    synthetic: GaussianKde
    fold_models: tuple[OccurrenceModel, ...]  # empty without token_occurrence
    types: np.ndarray  # the references' token types: the occurrence matrix's columns
    window: int
    human_hashes: tuple[str, ...]  # the reference documents it was fit on (with weight)
    synthetic_hashes: tuple[str, ...]

    def log_likelihoods(self, docs: ScoredDocs) -> tuple[np.ndarray, np.ndarray]:
        """log p_P(x_i) and log p_Q(x_i) of every document."""
        occurrence = (occurrence_matrix(docs.tokens, self.types, self.window)
                      if self.fold_models else None)
        return self._log_likelihoods(np.log(docs.ppl), occurrence)

    def _log_likelihoods(self, log_ppl: np.ndarray, occurrence) -> tuple[np.ndarray, np.ndarray]:
        views = [feature_matrix(self.features, log_ppl, m.statistic(occurrence))
                 for m in self.fold_models] or [feature_matrix(self.features, log_ppl, None)]
        # the mean density over the fold models (each a valid view of the document)
        stacked = np.concatenate(views)
        n, k = len(log_ppl), len(views)
        lp = _logsumexp_rows(self.human.logpdf(stacked).reshape(k, n).T) - np.log(k)
        lq = _logsumexp_rows(self.synthetic.logpdf(stacked).reshape(k, n).T) - np.log(k)
        return lp, lq


def feature_matrix(features: Sequence[str], log_ppl: np.ndarray, statistic) -> np.ndarray:
    columns = {"log_ppl": log_ppl, "token_occurrence": statistic}
    return np.column_stack([columns[f] for f in features])


class ReferenceFit:
    """Both references prepared once (occurrence matrices, folds), then refit under any
    document weights (the bootstrap's resamples). Nothing of a candidate enters here."""

    def __init__(self, human: ScoredDocs, synthetic: ScoredDocs,
                 features: Sequence[str] = FEATURES, window: int = 256, vocabulary: int = 500,
                 min_docs: float = 5, alpha: float = 0.5, folds: int = 5, seed: int = 0):
        features = tuple(features)
        if not features or set(features) - set(FEATURES):
            raise InputError(f"features must be a non-empty subset of {FEATURES}, got {features}")
        for name, docs in (("human", human), ("synthetic", synthetic)):
            if len(docs) < MIN_REFERENCE_DOCS:
                raise InputError(f"the {name} reference has {len(docs)} usable documents; "
                                 f"the share estimate needs at least {MIN_REFERENCE_DOCS}")
        self.human, self.synthetic, self.features = human, synthetic, features
        self.window, self.vocabulary, self.min_docs = window, vocabulary, min_docs
        self.alpha, self.folds = alpha, folds
        self.occurrence = "token_occurrence" in features
        self.log_ppl = (np.log(human.ppl), np.log(synthetic.ppl))
        rng = np.random.default_rng(seed)
        self.fold_of = tuple(rng.permutation(len(d)) % folds for d in (human, synthetic))
        self.types = (reference_types([human, synthetic], window) if self.occurrence
                      else np.zeros(0, np.int64))
        self.held = [[f == k for f in self.fold_of] for k in range(folds)]
        if self.occurrence:
            x = [occurrence_matrix(d.tokens, self.types, window) for d in (human, synthetic)]
            # each fold's rows of each reference, sliced (and transposed for the document
            # frequencies) once
            self.x_held = [[m[h] for m, h in zip(x, held, strict=True)] for held in self.held]
            self.xt_held = [[m.T.tocsr() for m in ms] for ms in self.x_held]

    def fit(self, w_human: np.ndarray | None = None, w_synthetic: np.ndarray | None = None) -> ShareModel:
        """The densities under reference document weights (default: each document once)."""
        w = (np.ones(len(self.human)) if w_human is None else np.asarray(w_human, float),
             np.ones(len(self.synthetic)) if w_synthetic is None else np.asarray(w_synthetic, float))
        fold_models, statistics = self._cross_fit(w) if self.occurrence else ((), (None, None))
        kdes = [GaussianKde.fit(feature_matrix(self.features, lp, s), wi)
                for lp, s, wi in zip(self.log_ppl, statistics, w, strict=True)]
        return ShareModel(self.features, kdes[0], kdes[1], fold_models, self.types, self.window,
                          tuple(self.human.hashes[w[0] > 0]), tuple(self.synthetic.hashes[w[1] > 0]))

    def _cross_fit(self, w):
        """One occurrence model per fold, fit without that fold's documents, and each
        reference document's statistic from the model that did not see it."""
        # per fold and reference: the weighted number of the fold's documents with each type
        df = [[xt @ wi[h] for xt, wi, h in zip(xts, w, held, strict=True)]
              for xts, held in zip(self.xt_held, self.held, strict=True)]
        total_df = [sum(d[r] for d in df) for r in range(2)]
        total_n = [wi.sum() for wi in w]
        models, statistics = [], [np.zeros(len(self.human)), np.zeros(len(self.synthetic))]
        for held, x_held, df_held in zip(self.held, self.x_held, df, strict=True):
            n_out = [n - wi[h].sum() for n, wi, h in zip(total_n, w, held, strict=True)]
            model = fit_occurrence(total_df[0] - df_held[0], n_out[0], total_df[1] - df_held[1],
                                   n_out[1], self.vocabulary, self.min_docs, self.alpha)
            models.append(model)
            for stat, x, h in zip(statistics, x_held, held, strict=True):
                stat[h] = model.statistic(x)
        return tuple(models), tuple(statistics)


# -----------------------------------------------------------------------------
# the estimate


def mixture_mle(log_ratio: np.ndarray, weights: np.ndarray | None = None,
                iterations: int = 60) -> np.ndarray:
    """argmax over a in [0, 1] of sum_i w_i log(1 - a + a r_i), r_i = q_i / p_i, for each
    row of ``log_ratio`` (replicates x documents); bisection on the decreasing derivative
    sum_i w_i (r_i - 1) / (1 - a + a r_i)."""
    lr = np.clip(np.atleast_2d(log_ratio), -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    w = np.ones_like(lr) if weights is None else np.atleast_2d(weights).astype(float)
    r = np.exp(lr)

    def slope(a):
        return (w * (r - 1) / (1 - a[:, None] + a[:, None] * r)).sum(axis=1)

    lo, hi = np.zeros(len(lr)), np.ones(len(lr))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        up = slope(mid) > 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    a = 0.5 * (lo + hi)
    a[slope(np.zeros(len(lr))) <= 0] = 0.0
    a[slope(np.ones(len(lr))) >= 0] = 1.0
    return a


@dataclass(frozen=True)
class ShareEstimate:
    synthetic_share: float
    ci_low: float
    ci_high: float
    confidence: float
    documents: int  # candidate documents the estimate is over
    documents_unscored: int  # candidate documents without a perplexity (skipped)
    documents_left_out: dict[str, int]  # reference documents left out: also in the candidate
    reference_documents: dict[str, int]  # reference documents the densities were fit on
    features: tuple[str, ...]
    bootstrap: int
    model: ShareModel = field(repr=False)

    def metric_row(self) -> dict:
        """The estimate as a row of the ``metrics`` table (``measure``'s row shape)."""
        return {"metric": METRIC, "n": None, "budget": None, "value": self.synthetic_share,
                "ci_low": self.ci_low, "ci_high": self.ci_high}


def estimate_share(candidate: ScoredDocs, human: ScoredDocs, synthetic: ScoredDocs, *,
                   features: Sequence[str] = FEATURES, bootstrap: int = 200,
                   confidence: float = 0.95, seed: int = 0, **fit_options) -> ShareEstimate:
    """The synthetic share of ``candidate`` against a human and a synthetic reference,
    with a percentile-bootstrap interval. ``fit_options`` go to ``ReferenceFit``
    (window, vocabulary, min_docs, alpha, folds)."""
    scored = candidate.scored()
    candidate = candidate.take(scored)
    if len(candidate) == 0:
        raise InputError("the candidate has no scored documents")
    shared = set(candidate.hashes.tolist())
    refs, left_out = {}, {}
    for name, docs in (("human", human), ("synthetic", synthetic)):
        docs = docs.take(docs.scored())
        in_candidate = np.isin(docs.hashes, list(shared))
        refs[name], left_out[name] = docs.take(~in_candidate), int(in_candidate.sum())
    fit = ReferenceFit(refs["human"], refs["synthetic"], tuple(features), seed=seed, **fit_options)
    model = fit.fit()
    log_ppl = np.log(candidate.ppl)
    occurrence = occurrence_matrix(candidate.tokens, fit.types, fit.window) if fit.occurrence else None

    def log_ratio(m: ShareModel) -> np.ndarray:
        lp, lq = m._log_likelihoods(log_ppl, occurrence)
        return lq - lp

    share = float(mixture_mle(log_ratio(model))[0])
    rng = np.random.default_rng(seed)
    n_h, n_s, n_c = len(refs["human"]), len(refs["synthetic"]), len(candidate)
    ratios, weights = [], []
    for _ in range(bootstrap):
        resampled = fit.fit(rng.multinomial(n_h, np.full(n_h, 1 / n_h)),
                            rng.multinomial(n_s, np.full(n_s, 1 / n_s)))
        ratios.append(log_ratio(resampled))
        weights.append(rng.multinomial(n_c, np.full(n_c, 1 / n_c)))
    if bootstrap:
        draws = mixture_mle(np.array(ratios), np.array(weights))
        tail = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(draws, [tail, 1 - tail]))
    else:
        low = high = float("nan")
    return ShareEstimate(share, low, high, confidence, n_c, int((~scored).sum()), left_out,
                         {"human": n_h, "synthetic": n_s}, tuple(features), bootstrap, model)
