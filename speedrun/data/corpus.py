"""The built-in corpus of the CPU `tiny` track: language-like token streams from our own generator.

Why a generator: the tiny track must run anywhere without downloads or third-party text, yet a model must
have something worth learning, with structure at several ranges so that better architectures win:

  * word classes and a second-order grammar over them: tokens are split into classes (determiners,
    adjectives, nouns, verbs, names, punctuation, ...); the next class depends on the previous two, so a
    bigram model cannot capture it fully;
  * Zipf-like frequencies: within a class, token weights fall off as 1/(rank + 2.7)^1.07;
  * topics: each document has a hidden topic that boosts a subset of its nouns, verbs, adjectives and
    adverbs, inferable from context;
  * repetition inside a document: names are multi-token phrases introduced in a document and repeated
    later (a model that can copy predicts everything after a repeated name's first token), and content words
    recur through a per-document cache (a word already used is likely to be used again);
  * documents of varied length: each starts with BOS; after a sentence ends the document ends with a
    per-document probability, so lengths range from a few tokens to a lane's 2048 (mean about 250).

The generator knows the exact probability of every token it emits given its hidden state (topic, names,
cache, grammar history), so the mean -log p of the emitted tokens estimates the entropy rate given that
state: a lower bound on the expected loss of any model, which sees only the tokens. It is saved, for the
train stream and for the val tokens the val stream scores, in a sidecar JSON next to the shards.

Exactness: every random number comes from `numpy.random.Generator(PCG64(...)).random()` and every draw is an
inverse-CDF lookup (`searchsorted` or a count of CDF entries below the uniform), so the stream depends only on
the seed. The track pins each shard's sha256: checked right after generating, and on demand later
(`speedrun data verify --track tiny`, `track_files(..., check_sha256=True)`).

Speed: the corpus is cut into lanes of `LANE_LEN` tokens generated side by side, one position per numpy
step for all lanes at once; a lane starts with BOS and runs documents back to back (the last one cut at the
lane's end); the corpus is the lanes laid end to end. About 7-12 s for the tiny track on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from speedrun.errors import SpeedrunError

# a (re)generation is said through this logger: the CLI shows its records on stderr (`speedrun.cli.main`)
log = logging.getLogger(__name__)

GENERATORS = ("tiny-v1",)
LANE_LEN = 2048          # tokens per lane; the corpus is ceil(tokens / LANE_LEN) lanes laid end to end
META_NAME = "tiny_meta.json"

# word classes: (name, share of the non-BOS vocabulary); NOUN takes the rounding remainder
CLASSES = (("DET", 0.016), ("ADJ", 0.117), ("NOUN", 0.0), ("VERB", 0.196), ("PREP", 0.029), ("CONJ", 0.016),
           ("COMMA", 0.004), ("END", 0.006), ("NAME", 0.25), ("ADV", 0.072))
K = len(CLASSES)
C = {name: i for i, (name, _) in enumerate(CLASSES)}
START = K                # virtual class before a document's first token
TOPIC_CLASSES = ("ADJ", "NOUN", "VERB", "ADV")   # emissions depend on the document's topic
CACHE_CLASSES = ("ADJ", "NOUN", "VERB", "ADV")   # words recur through the document cache

# first-order grammar (next-class weights); the second order perturbs these per previous-previous class
GRAMMAR = {
    "START": {"DET": 35, "NAME": 25, "ADJ": 10, "NOUN": 10, "ADV": 10, "PREP": 10},
    "DET": {"ADJ": 35, "NOUN": 65},
    "ADJ": {"ADJ": 15, "NOUN": 80, "COMMA": 5},
    "NOUN": {"VERB": 40, "PREP": 20, "CONJ": 10, "COMMA": 10, "END": 15, "NOUN": 5},
    "VERB": {"DET": 30, "NAME": 15, "ADV": 15, "PREP": 15, "ADJ": 5, "END": 15, "NOUN": 5},
    "PREP": {"DET": 50, "NAME": 30, "NOUN": 20},
    "CONJ": {"DET": 30, "NAME": 30, "VERB": 20, "ADJ": 10, "ADV": 10},
    "COMMA": {"CONJ": 30, "DET": 25, "NAME": 20, "ADV": 15, "PREP": 10},
    "NAME": {"VERB": 50, "PREP": 10, "CONJ": 10, "COMMA": 10, "END": 15, "ADV": 5},
    "ADV": {"VERB": 50, "ADJ": 20, "DET": 10, "END": 10, "COMMA": 10},
}
SECOND_ORDER_SPREAD = 5.0      # log-weight noise of the second-order grammar
TOPICS = 16
TOPIC_SHARE, TOPIC_BOOST = 0.1, 30.0
CACHE_RATE = 0.5               # chance a cache-class word repeats one of the document's recent words
CACHE_WINDOW = 128             # the cache holds the last CACHE_WINDOW words of each cache class
MAX_NAMES = 4
NAME_LENGTHS = (0.25, 0.35, 0.25, 0.15)   # P(name has 1, 2, 3, 4 tokens)
NEW_NAME_RATE = 0.3            # chance a name slot introduces a new name (when 0 < names < MAX_NAMES)
SENTENCES_PER_DOC = (3.0, 150.0)  # per-document mean sentence count, log-uniform in this range


# --- file names (used by tracks.DataSource) -----------------------------------------------------------------


def train_file_names(datasource) -> list[str]:
    n = -(-datasource.train_tokens // datasource.shard_tokens)
    return [f"tiny_train_{i:06d}.bin" for i in range(1, n + 1)]


def val_file_names(datasource) -> list[str]:
    return ["tiny_val_000000.bin"]


def val_file_tokens(datasource) -> int:
    """The val file holds whole lanes: at least val_split_tokens + 1 (the last target)."""
    return -(-(datasource.val_split_tokens + 1) // LANE_LEN) * LANE_LEN


# --- the model's parameters ---------------------------------------------------------------------------------


def _zipf(n: int, rng: np.random.Generator, offset: float = 2.7, power: float = 1.07) -> np.ndarray:
    """Zipf-like weights for n items in a random rank order."""
    ranks = np.argsort(rng.random(n), kind="stable")
    return 1.0 / (ranks + offset) ** power


def _cdf(p: np.ndarray) -> np.ndarray:
    """Row-wise CDF with the last entry exactly 1, so a uniform in [0, 1) always lands on a token."""
    cdf = np.cumsum(p, axis=-1)
    cdf /= cdf[..., -1:]
    cdf[..., -1] = 1.0
    return cdf


class _Rows:
    """Exact inverse-CDF draws from many categorical rows at once (one row per lane).

    A draw returns the first index whose CDF exceeds the uniform, i.e. exactly
    `np.searchsorted(cdf[row], u, side="right")`; a guide table (the first candidate index for each of G
    equal slices of [0, 1), itself built with `searchsorted`) makes it a short vectorised walk instead of a
    binary search per lane.
    """

    def __init__(self, p: np.ndarray):
        self.rows, self.width = p.shape
        self.cdf = _cdf(p).ravel()
        self.slices = 4 * self.width
        grid = np.arange(self.slices) / self.slices
        self.guide = np.concatenate([np.searchsorted(row, grid, side="right") for row in self.cdf.reshape(p.shape)])

    def draw(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        base = rows * self.width
        idx = self.guide[rows * self.slices + (u * self.slices).astype(np.int64)]
        active = np.flatnonzero(self.cdf[base + idx] <= u)
        while len(active):
            idx[active] += 1
            active = active[self.cdf[base[active] + idx[active]] <= u[active]]
        return idx


class _Params:
    """Everything fixed by the seed: class membership, grammar, emissions per topic, name frequencies."""

    def __init__(self, vocab_size: int, bos: int, seed: int):
        if vocab_size < 128:
            raise SpeedrunError(f"tiny corpus: vocab_size {vocab_size} is too small (need at least 128)")
        rng = np.random.Generator(np.random.PCG64([seed, 0]))
        content = np.array([t for t in range(vocab_size) if t != bos])
        content = content[np.argsort(rng.random(len(content)), kind="stable")]
        sizes = [max(1, round(share * len(content))) for _, share in CLASSES]
        sizes[C["NOUN"]] = len(content) - (sum(sizes) - sizes[C["NOUN"]])
        bounds = np.cumsum([0] + sizes)
        self.members = [np.sort(content[bounds[k]:bounds[k + 1]]) for k in range(K)]
        self.vocab_size, self.bos = vocab_size, bos

        # grammar: P2[c2, c1, next]; END is followed by a new sentence (the START row)
        first = np.zeros((K + 1, K))
        for prev, row in GRAMMAR.items():
            for nxt, w in row.items():
                first[START if prev == "START" else C[prev], C[nxt]] = w
        first[C["END"]] = first[START]
        noise = np.exp(SECOND_ORDER_SPREAD * (rng.random((K + 1, K + 1, K)) - 0.5))
        p2 = first[None, :, :] * noise
        self.p2 = p2 / p2.sum(-1, keepdims=True)
        self.next_class = _Rows(self.p2.reshape(-1, K))

        # emissions E[topic, class, token] over the whole vocabulary (zero outside the class), and the same
        # over each class' members only (row topic*K + class, padded with zeros) for drawing
        width = max(len(m) for m in self.members)
        self.member_table = np.stack([np.pad(m, (0, width - len(m)), mode="edge") for m in self.members])
        emit = np.zeros((TOPICS, K, vocab_size))
        local = np.zeros((TOPICS, K, width))
        for k in range(K):
            base = _zipf(len(self.members[k]), rng) if k != C["NAME"] else np.ones(len(self.members[k]))
            for z in range(TOPICS):  # names are drawn from `name_q` (below); their row here is never used
                w = base.copy()
                if CLASSES[k][0] in TOPIC_CLASSES:
                    w[rng.random(len(w)) < TOPIC_SHARE] *= TOPIC_BOOST
                local[z, k, :len(w)] = w / w.sum()
                emit[z, k, self.members[k]] = w / w.sum()
        self.emit = emit
        self.word = _Rows(local.reshape(-1, width))

        # name tokens: a milder Zipf over the name class
        self.name_members = self.members[C["NAME"]]
        q_local = _zipf(len(self.name_members), rng, offset=10.0, power=1.0)
        self.name_q_local = q_local / q_local.sum()
        self.name_cdf = _cdf(self.name_q_local)
        self.name_index = np.zeros(vocab_size, dtype=np.int64)
        self.name_index[self.name_members] = np.arange(len(self.name_members))
        self.name_q = np.zeros(vocab_size)
        self.name_q[self.name_members] = self.name_q_local
        self.cache_slot = np.array([CACHE_CLASSES.index(name) if name in CACHE_CLASSES else -1
                                    for name, _ in CLASSES])
        self.length_cdf = _cdf(np.array(NAME_LENGTHS))


# --- generation ---------------------------------------------------------------------------------------------


class _Lanes:
    """The hidden state of `n` document streams, advanced one token per `step` for all lanes at once.

    Arrays are indexed flat (lane-major) because 1-D gathers are much faster than multi-axis fancy indexing.
    """

    NAME_MAX_LEN = len(NAME_LENGTHS)
    SLOTS = len(CACHE_CLASSES)

    def __init__(self, params: _Params, n: int):
        self.P, self.n, V = params, n, params.vocab_size
        self.lanes = np.arange(n)
        self.c1 = np.full(n, START)
        self.c2 = np.full(n, START)
        self.topic = np.zeros(n, dtype=np.int64)
        self.end_rate = np.zeros(n)
        self.names = np.zeros(n * MAX_NAMES * self.NAME_MAX_LEN, dtype=np.int64)   # [lane, name, position]
        self.name_len = np.zeros(n * MAX_NAMES, dtype=np.int64)
        self.n_names = np.zeros(n, dtype=np.int64)
        self.pend = np.full(n, -1)           # the name being emitted, -1 if none
        self.pend_pos = np.zeros(n, dtype=np.int64)
        self.pend_new = np.zeros(n, dtype=bool)
        # the document cache: the last CACHE_WINDOW words per cache class (a ring), and their counts by token
        self.ring = np.zeros(n * self.SLOTS * CACHE_WINDOW, dtype=np.int64)
        self.filled = np.zeros(n * self.SLOTS, dtype=np.int64)   # words ever added; ring position = mod
        self.counts = np.zeros(n * V, dtype=np.int32)            # occurrences inside the window
        self.log_rate = (math.log(1 / SENTENCES_PER_DOC[1]), math.log(1 / SENTENCES_PER_DOC[0]))

    def new_documents(self, lanes: np.ndarray, u_topic: np.ndarray, u_len: np.ndarray) -> None:
        lo, hi = self.log_rate
        self.c1[lanes] = START
        self.c2[lanes] = START
        self.topic[lanes] = np.minimum((u_topic * TOPICS).astype(np.int64), TOPICS - 1)
        self.end_rate[lanes] = np.exp(lo + (hi - lo) * u_len)
        self.n_names[lanes] = 0
        self.pend[lanes] = -1
        self.counts.reshape(self.n, -1)[lanes] = 0
        self.filled.reshape(self.n, -1)[lanes] = 0

    def step(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Emit one token per lane from uniforms u[5, n]; return the tokens and their probabilities."""
        tok = np.empty(self.n, dtype=np.int64)
        p = np.ones(self.n)
        busy = self.pend >= 0
        if busy.any():
            self._continue_names(self.lanes[busy], u, tok, p)
        at_end = ~busy & (self.c1 == C["END"])
        ending = at_end & (u[0] < self.end_rate)
        keep = np.where(at_end, 1.0 - self.end_rate, 1.0)   # P(the document goes on) after a sentence end
        if ending.any():
            e = self.lanes[ending]
            tok[e], p[e] = self.P.bos, self.end_rate[e]
            self.new_documents(e, u[1, e], u[2, e])
        go = self.lanes[~busy & ~ending]
        row = self.c2[go] * (K + 1) + self.c1[go]
        cls = self.P.next_class.draw(row, u[1, go])
        p_cls = self.P.p2.ravel()[row * K + cls] * keep[go]
        self.c2[go], self.c1[go] = self.c1[go], cls
        named = cls == C["NAME"]
        if named.any():
            self._start_names(go[named], p_cls[named], u, tok, p)
        if not named.all():
            self._words(go[~named], cls[~named], p_cls[~named], u, tok, p)
        return tok, p

    def _continue_names(self, b: np.ndarray, u: np.ndarray, tok: np.ndarray, p: np.ndarray) -> None:
        """Lanes inside a name: a new name draws its next token, a repeated one copies it (p = 1)."""
        P, i, pos = self.P, self.pend[b], self.pend_pos[b]
        at = (b * MAX_NAMES + i) * self.NAME_MAX_LEN + pos
        fresh = self.pend_new[b]
        drawn = P.name_members[np.searchsorted(P.name_cdf, u[2, b], side="right")]
        t = np.where(fresh, drawn, self.names[at])
        self.names[at] = t
        tok[b] = t
        p[b] = np.where(fresh, P.name_q[t], 1.0)
        self.pend_pos[b] = pos + 1
        self.pend[b] = np.where(pos + 1 >= self.name_len[b * MAX_NAMES + i], -1, i)

    def _start_names(self, g: np.ndarray, p_cls: np.ndarray, u: np.ndarray, tok: np.ndarray, p: np.ndarray) -> None:
        """Lanes entering a name: introduce a new one (first token unlike the others') or repeat one."""
        P, L = self.P, self.NAME_MAX_LEN
        k = self.n_names[g]
        p_new = np.where(k == 0, 1.0, np.where(k == MAX_NAMES, 0.0, NEW_NAME_RATE))
        is_new = u[3, g] < p_new
        p_name = np.empty(len(g))
        new, old = g[is_new], g[~is_new]
        if len(new):
            slot = self.n_names[new]
            taken = np.zeros((len(new), len(P.name_members)), dtype=bool)
            for j in range(MAX_NAMES):
                has = np.flatnonzero(slot > j)
                taken[has, P.name_index[self.names[(new[has] * MAX_NAMES + j) * L]]] = True
            q = np.where(taken, 0.0, P.name_q_local[None, :])
            total = q.sum(axis=1)
            cdf = np.cumsum(q, axis=1)
            pick = np.minimum((cdf <= (u[2, new] * total)[:, None]).sum(axis=1), len(P.name_members) - 1)
            first = P.name_members[pick]
            lengths = np.searchsorted(P.length_cdf, u[4, new], side="right") + 1
            self.names[(new * MAX_NAMES + slot) * L] = first
            self.name_len[new * MAX_NAMES + slot] = lengths
            self.n_names[new] = slot + 1
            self._pending(new, slot, lengths, True)
            tok[new] = first
            p_name[is_new] = p_new[is_new] * P.name_q_local[pick] / total
        if len(old):
            k_old = self.n_names[old]
            i = np.minimum((u[2, old] * k_old).astype(np.int64), k_old - 1)
            tok[old] = self.names[(old * MAX_NAMES + i) * L]
            self._pending(old, i, self.name_len[old * MAX_NAMES + i], False)
            p_name[~is_new] = (1.0 - p_new[~is_new]) / k_old
        p[g] = p_cls * p_name

    def _pending(self, lanes: np.ndarray, which: np.ndarray, lengths: np.ndarray, new: bool) -> None:
        multi = lengths > 1
        self.pend[lanes[multi]], self.pend_pos[lanes[multi]], self.pend_new[lanes[multi]] = which[multi], 1, new

    def _words(self, w: np.ndarray, cls: np.ndarray, p_cls: np.ndarray, u: np.ndarray, tok: np.ndarray,
               p: np.ndarray) -> None:
        """Ordinary words: drawn from the topic's emission, or (cache classes) repeated from the cache."""
        P, V, W = self.P, self.P.vocab_size, CACHE_WINDOW
        row = self.topic[w] * K + cls
        t = P.member_table.ravel()[cls * P.member_table.shape[1] + P.word.draw(row, u[2, w])]
        p_word = P.emit.ravel()[row * V + t]
        slot = P.cache_slot[cls]
        c = np.flatnonzero(slot >= 0)                  # lanes drawing a cache-class word
        if len(c):
            cw = w[c]
            f = cw * self.SLOTS + slot[c]
            size = np.minimum(self.filled[f], W)
            rate = np.where(size > 0, CACHE_RATE, 0.0)
            copy = (size > 0) & (u[3, cw] < CACHE_RATE)
            j = np.minimum((u[4, cw] * size).astype(np.int64), np.maximum(size - 1, 0))
            tc = np.where(copy, self.ring[f * W + j], t[c])
            t[c] = tc
            seen = self.counts[cw * V + tc] / np.maximum(size, 1)
            p_word[c] = (1.0 - rate) * P.emit.ravel()[row[c] * V + tc] + rate * seen
            # add the word to the window, evicting the oldest once it is full (one word per lane)
            at = f * W + self.filled[f] % W
            full = np.flatnonzero(self.filled[f] >= W)
            self.counts[cw[full] * V + self.ring[at[full]]] -= 1
            self.ring[at] = tc
            self.counts[cw * V + tc] += 1
            self.filled[f] += 1
        tok[w] = t
        p[w] = p_cls * p_word


def _generate_lanes(params: _Params, lanes: int, length: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`lanes` independent streams of `length` tokens each and each token's -log p given the hidden state."""
    state = _Lanes(params, lanes)
    out = np.empty((length, lanes), dtype=np.uint16)
    nll = np.empty((length, lanes), dtype=np.float64)
    for t in range(length):
        u = rng.random((5, lanes))
        if t == 0:  # every lane opens with a document (a lane boundary is not a generator decision: p = 1)
            state.new_documents(state.lanes, u[1], u[2])
            out[0], nll[0] = params.bos, 0.0
            continue
        tok, p = state.step(u)
        out[t] = tok
        nll[t] = -np.log(p)
    return np.ascontiguousarray(out.T), np.ascontiguousarray(nll.T)


def _stream(params: _Params, tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lanes = -(-tokens // LANE_LEN)
    out, nll = _generate_lanes(params, lanes, LANE_LEN, rng)
    return out.reshape(-1)[:tokens], nll.reshape(-1)[:tokens]


def _check_source(track) -> None:
    ds = track.data
    if ds.generator not in GENERATORS:
        raise SpeedrunError(f"{track.path}: field 'data.generator': unknown generator {ds.generator!r} "
                            f"(known: {', '.join(GENERATORS)})")


def _unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def generate(track, out_dir: str | os.PathLike) -> dict:
    """Generate the track's corpus into `out_dir` (shards written atomically, sidecar last); return the sidecar."""
    from speedrun.data import shards

    _check_source(track)
    ds, out_dir = track.data, Path(out_dir)
    params = _Params(track.vocab_size, track.bos_token, ds.seed)
    train, train_nll = _stream(params, ds.train_tokens, np.random.Generator(np.random.PCG64([ds.seed, 1])))
    val, val_nll = _stream(params, val_file_tokens(ds), np.random.Generator(np.random.PCG64([ds.seed, 2])))

    files = {}
    for i, name in enumerate(train_file_names(ds)):
        files[name] = train[i * ds.shard_tokens:(i + 1) * ds.shard_tokens]
    files[val_file_names(ds)[0]] = val
    digests = {}
    for name, tokens in files.items():
        shards.write_shard(out_dir / name, tokens)
        digests[name] = shards.sha256_file(out_dir / name)
    scored = slice(1, ds.val_split_tokens + 1)   # the val stream's targets
    meta = {
        "generator": ds.generator, "seed": ds.seed, "vocab_size": track.vocab_size, "bos_token": track.bos_token,
        "train_tokens": ds.train_tokens, "shard_tokens": ds.shard_tokens, "val_split_tokens": ds.val_split_tokens,
        "val_file_tokens": int(len(val)),
        "entropy_nats": {"train": float(train_nll.mean()), "val": float(val_nll[scored].mean())},
        "unigram_entropy_nats": _unigram_entropy(train, track.vocab_size),
        "mean_doc_tokens": float(len(train) / max(1, int((train == track.bos_token).sum()))),
        "sha256": digests,
    }
    from speedrun.evidence.rundir import write_json_atomic

    write_json_atomic(out_dir / META_NAME, meta)
    return meta


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def _meta_matches(meta: dict | None, track) -> bool:
    ds = track.data
    want = {"generator": ds.generator, "seed": ds.seed, "vocab_size": track.vocab_size,
            "bos_token": track.bos_token, "train_tokens": ds.train_tokens, "shard_tokens": ds.shard_tokens,
            "val_split_tokens": ds.val_split_tokens}
    return meta is not None and all(meta.get(k) == v for k, v in want.items())


def _expected_sizes(track) -> dict[str, int]:
    from speedrun.data import shards

    ds = track.data
    sizes = {}
    for i, name in enumerate(train_file_names(ds)):
        sizes[name] = shards.shard_bytes(min(ds.shard_tokens, ds.train_tokens - i * ds.shard_tokens))
    sizes[val_file_names(ds)[0]] = shards.shard_bytes(val_file_tokens(ds))
    return sizes


def _present(track, folder: Path) -> bool:
    """The corpus is there, made for these parameters and (when pinned) by a generator producing the pins."""
    return _why_absent(track, folder) is None


def _why_absent(track, folder: Path) -> str | None:
    """Why the corpus in `folder` cannot be used as it is (one phrase), or None when it can.

    Cheap: compares the sidecar's recorded digests with the pins, and file sizes; hashing waits for
    `check_sha256`.
    """
    meta = _read_meta(folder)
    if meta is None:
        return f"{folder / META_NAME} is missing or unreadable"
    if not _meta_matches(meta, track):
        return f"{folder / META_NAME} was made for other track parameters"
    if any(meta.get("sha256", {}).get(name) != pin for name, pin in track.data.sha256.items()):
        return f"{folder / META_NAME} records digests other than the track's pins"
    for name, size in _expected_sizes(track).items():
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
        if (folder / name).stat().st_size != size:
            return f"{folder / name} has {(folder / name).stat().st_size} bytes, expected {size}"
    return None


def _check_pins(track, folder: Path, meta: dict, fresh: bool = False) -> None:
    """Compare each file with the track's pin (or, unpinned, with the digest recorded at generation)."""
    from speedrun.data import shards

    for name in _expected_sizes(track):
        want = track.data.sha256.get(name) or meta["sha256"].get(name)
        got = shards.sha256_file(folder / name)
        if got != want:
            source = f"the track's pin in {track.path}" if track.data.sha256.get(name) else "the sidecar"
            hint = (f"this generator or numpy {np.__version__} differs from the one that made the pins" if fresh
                    else f"delete {folder} to regenerate")
            raise SpeedrunError(f"{folder / name}: sha256 {got} does not match {source} ({want}); {hint}")


def ensure(track, folder: str | os.PathLike, allow_generate: bool = True, check_sha256: bool = False
           ) -> tuple[list[Path], list[Path]]:
    """The corpus' (train, val) paths in `folder`, generating it first if absent (one process at a time)."""
    from filelock import FileLock

    from speedrun.data import shards

    _check_source(track)
    folder = Path(folder)
    made = None
    if not _present(track, folder):
        if not allow_generate:
            raise SpeedrunError(f"missing tiny corpus in {folder}; run `speedrun data fetch {track.name}`")
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".generate.lock")):
            why = _why_absent(track, folder)  # another process may have made it while we waited
            if why is not None:
                first_use = not any(p.suffix in (".bin", ".json") for p in folder.iterdir())
                if first_use:
                    log.info("generating the %s corpus in %s (first use)", track.name, folder)
                else:
                    log.warning("regenerating the %s corpus in %s: %s", track.name, folder, why)
                made = generate(track, folder)
    if made is not None and track.data.sha256:
        _check_pins(track, folder, made, fresh=True)  # a different numpy or generator changes the corpus
    elif check_sha256:
        _check_pins(track, folder, _read_meta(folder) or {"sha256": {}})
    for name in _expected_sizes(track):
        shards.shard_tokens(folder / name)  # header and size
    ds = track.data
    return [folder / n for n in train_file_names(ds)], [folder / n for n in val_file_names(ds)]


def entropy(track, data_dir: str | os.PathLike | None = None) -> dict | None:
    """The generated corpus' sidecar (entropy per token etc.) if it exists and matches the track, else None."""
    from speedrun import paths

    folder = Path(data_dir or paths.data_dir()) / track.name
    meta = _read_meta(folder)
    return meta if _meta_matches(meta, track) else None
